//! Storage commitment of delivered results (PS3.4 Annex J), for the
//! destinations with `commitment = true`.
//!
//! A result such a destination stored by C-STORE is `stored`, not yet
//! delivered. [`Pipeline::commit_once`] asks the destination to commit
//! the stored results (N-ACTION, one transaction per destination and up to
//! [`MAX_REFERENCES`] results), after recording the transaction
//! (`committing`, with a deadline of `delivery.commitment_timeout_s`): the
//! report may come on another association before the request returns. The
//! report, on the same association or on one the destination opens to
//! Vigie's SCP, goes to [`Pipeline::apply_report`]: a committed result is
//! delivered (`sent`), one the destination did not commit is sent again
//! (with the delivery backoff, until `delivery.give_up_after_h`). No report
//! by the deadline: the commitment is asked again, in a new transaction.
//! Every request and every result's outcome is an audit record
//! (`result_commitment`).

use std::time::Duration;

use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::commitment::{
    CommitmentReport, MAX_REFERENCES, describe_failure_reason, reference_of, request_commitment,
};
use vigie_store::{OutboxItem, now_ms};

use super::events::Event;
use super::{Pipeline, seconds_ms};

/// A new transaction UID (UUID-derived, PS3.5 B.2).
fn transaction_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

impl Pipeline {
    /// Ask for the commitments that are due; returns the number of
    /// requests made.
    pub async fn commit_once(&self) -> anyhow::Result<usize> {
        let catalog = self.catalog.clone();
        let due = tokio::task::spawn_blocking(move || {
            catalog.commitment_due(now_ms(), 4 * MAX_REFERENCES)
        })
        .await??;
        let by_destination = super::delivery::by_destination(due);
        let scu = self.scu_options();
        let give_up_ms = seconds_ms(self.config.delivery.give_up_after_h * 3600.0);
        let mut requests = 0;
        for (name, items) in by_destination {
            let destination = self.config.destinations.get(&name);
            let remote = destination.and_then(|d| self.remote(d));
            let (Some(destination), Some(remote)) = (destination, remote) else {
                let why = if destination.is_none() {
                    format!("destination {name:?} is no longer configured")
                } else {
                    format!("destination {name:?} needs TLS, which is not configured")
                };
                for item in &items {
                    self.catalog
                        .commitment_failed(item.id, &why, None, now_ms())?;
                }
                continue;
            };
            if !destination.commitment {
                // Commitment was turned off for it: what it stored counts
                // as delivered, as for any destination without it.
                for item in &items {
                    self.catalog.outbox_committed(item.id, now_ms())?;
                }
                continue;
            }
            let mut ready = Vec::new();
            for item in items {
                if now_ms() - item.created_ms > give_up_ms {
                    let error = "not committed within delivery.give_up_after_h";
                    self.emit(Event::Undeliverable { item: &item, error });
                    self.catalog
                        .commitment_failed(item.id, error, None, now_ms())?;
                    continue;
                }
                match reference_of(&item.path) {
                    Ok(reference) => ready.push((item, reference)),
                    Err(e) => {
                        let error = format!("result file unreadable: {e}");
                        self.emit(Event::Undeliverable {
                            item: &item,
                            error: &error,
                        });
                        self.catalog
                            .commitment_failed(item.id, &error, None, now_ms())?;
                    }
                }
            }
            let wait = Duration::from_secs_f64(destination.commitment_wait_s.clamp(0.0, 60.0));
            for chunk in ready.chunks(MAX_REFERENCES) {
                let transaction = transaction_uid();
                let items: Vec<OutboxItem> = chunk.iter().map(|(i, _)| i.clone()).collect();
                let references: Vec<_> = chunk.iter().map(|(_, r)| r.clone()).collect();
                let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
                let now = now_ms();
                let deadline = now + seconds_ms(self.config.delivery.commitment_timeout_s.max(1.0));
                self.catalog
                    .commitment_requested(&ids, &transaction, deadline, now)?;
                self.emit(Event::CommitmentRequested {
                    destination: &name,
                    remote: &remote,
                    transaction: &transaction,
                    items: &items,
                });
                requests += 1;
                match request_commitment(&remote, &scu, &transaction, &references, wait).await {
                    Ok(Some(report)) => {
                        let pipeline = self.clone();
                        tokio::task::spawn_blocking(move || pipeline.apply_report(&report)).await?;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let error = e.to_string();
                        self.emit(Event::CommitmentRequestFailed {
                            destination: &name,
                            transaction: &transaction,
                            error: &error,
                            items: items.len(),
                        });
                        for item in &items {
                            self.retry_commitment(item, &error)?;
                        }
                    }
                }
            }
        }
        Ok(requests)
    }

    /// Ask again later (the delivery backoff), or give up past
    /// `delivery.give_up_after_h`.
    fn retry_commitment(&self, item: &OutboxItem, error: &str) -> anyhow::Result<()> {
        let (retry, now) = self.next_try(item, error);
        self.catalog.commitment_failed(item.id, error, retry, now)?;
        Ok(())
    }

    /// Apply a storage commitment report (from the SCP, or received on
    /// the requesting association); returns the status of the
    /// N-EVENT-REPORT-RSP and its comment. Blocking (the catalog).
    pub fn apply_report(&self, report: &CommitmentReport) -> (u16, Option<String>) {
        match self.try_apply_report(report) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, transaction = %report.transaction_uid, "storage commitment report not recorded");
                (
                    status::PROCESSING_FAILURE,
                    Some("the report could not be recorded; send it again".into()),
                )
            }
        }
    }

    fn try_apply_report(&self, report: &CommitmentReport) -> anyhow::Result<(u16, Option<String>)> {
        let transaction = report.transaction_uid.as_str();
        let items = self.catalog.in_commitment(transaction)?;
        let Some(first) = items.first() else {
            let why = "no result awaits a report of this transaction (superseded by a later request, already reported, or unknown)";
            self.emit(Event::ReportNotApplied {
                outcome: "ignored",
                calling_ae_title: &report.calling_ae_title,
                transaction,
                why,
            });
            // The SCP did its work; nothing for it to send again.
            return Ok((status::SUCCESS, None));
        };
        // Reports are taken from the destination the transaction went to,
        // by AE title (the transaction UID, random, is not guessable either).
        let expected = self
            .config
            .destinations
            .get(&first.destination)
            .map(|d| d.ae_title.trim().to_string());
        if expected.as_deref() != Some(report.calling_ae_title.trim()) {
            let why = format!(
                "the transaction went to {}, not to this AE",
                expected
                    .as_deref()
                    .unwrap_or("a destination no longer configured")
            );
            self.emit(Event::ReportNotApplied {
                outcome: "refused",
                calling_ae_title: &report.calling_ae_title,
                transaction,
                why: &why,
            });
            return Ok((
                status::NOT_AUTHORIZED,
                Some("not the AE this transaction was requested from".into()),
            ));
        }
        for item in &items {
            let failed = report
                .failed
                .iter()
                .find(|f| f.reference.sop_instance_uid == item.sop_instance_uid);
            let committed = report
                .committed
                .iter()
                .any(|r| r.sop_instance_uid == item.sop_instance_uid);
            if committed && failed.is_none() {
                self.catalog.outbox_committed(item.id, now_ms())?;
                self.emit(Event::Committed {
                    item,
                    destination: &item.destination,
                    transaction,
                });
                continue;
            }
            let reason = match failed {
                Some(f) => format!("not committed: {}", describe_failure_reason(f.reason)),
                None => "not named in the commitment report".to_string(),
            };
            self.emit(Event::NotCommitted {
                item,
                destination: &item.destination,
                transaction,
                reason: &reason,
            });
            self.retry_item(item, &reason)?;
        }
        Ok((status::SUCCESS, None))
    }
}
