//! Storage commitment of delivered results (PS3.4 Annex J), for the
//! destinations with `commitment = true`.
//!
//! A result such a destination stored by C-STORE is `stored`, not yet
//! delivered. [`Pipeline::commit_once`] (its own loop, apart from delivery)
//! asks the destination to commit the stored results (N-ACTION, one
//! transaction per [`MAX_REFERENCES`] results), after recording the transaction
//! (`committing`, with a deadline of `delivery.commitment_timeout_s`): the
//! report may come on another association before the request returns. The
//! report, on the same association or on one the destination opens to
//! Vigie's SCP, goes to [`Pipeline::apply_report`]: a committed result is
//! delivered (`sent`), one the destination did not commit is sent again
//! (with the delivery backoff, until `delivery.give_up_after_h`; at once
//! failed for a reason it would give again: SOP class not supported,
//! class/instance conflict). No report by the deadline: the commitment is
//! asked again, in a new transaction, each time waiting longer (up to 8 ×
//! the timeout); a late report of an earlier transaction still counts.
//! Every state change is guarded: an item delivered stays delivered.
//! Every request and every result's outcome is an audit record
//! (`result_commitment`).

use std::time::Duration;

use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::commitment::{
    CommitmentError, CommitmentReport, MAX_REFERENCES, describe_failure_reason, reference_of,
    request_commitment,
};
use vigie_store::{OutboxItem, now_ms};

use super::events::Event;
use super::{Pipeline, seconds_ms};

/// A new transaction UID (UUID-derived, PS3.5 B.2).
fn transaction_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// Failure reasons (PS3.3 C.14.1.1) the destination would give again for
/// the same object: not sent again, failed at once.
fn permanent_reason(reason: Option<u16>) -> bool {
    // 0122: referenced SOP class not supported; 0119: class / instance
    // conflict.
    matches!(reason, Some(0x0122 | 0x0119))
}

/// Whether `peer` is an address of `host` (a literal, or what it
/// resolves to). Blocking (name resolution).
fn is_address_of(peer: std::net::IpAddr, host: &str) -> bool {
    use std::net::ToSocketAddrs;
    let peer = peer.to_canonical();
    (host, 0)
        .to_socket_addrs()
        .map(|mut addresses| addresses.any(|a| a.ip().to_canonical() == peer))
        .unwrap_or(false)
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
        let scu = self.scu_options();
        let give_up_ms = seconds_ms(self.config.delivery.give_up_after_h * 3600.0);
        let mut requests = 0;
        for (name, items) in super::delivery::by_destination(due) {
            let destination = self.config.destinations.get(&name);
            let remote = destination.and_then(|d| self.remote(d));
            let (Some(destination), Some(remote)) = (destination, remote) else {
                let why = if destination.is_none() {
                    format!("destination {name:?} is no longer configured")
                } else {
                    format!("destination {name:?} needs TLS, which is not configured")
                };
                for item in &items {
                    if self
                        .catalog
                        .commitment_failed(item.id, &why, None, now_ms())?
                    {
                        self.emit(Event::Undeliverable { item, error: &why });
                    }
                }
                continue;
            };
            if !destination.commitment {
                // Commitment was turned off for it: what it stored counts
                // as delivered, as for any destination without it (not
                // committed: no commit time).
                tracing::info!(
                    destination = %name,
                    items = items.len(),
                    "commitment turned off: results stored there count as delivered"
                );
                for item in &items {
                    self.catalog.outbox_sent(item.id, now_ms())?;
                }
                continue;
            }
            let mut ready = Vec::new();
            for item in items {
                if now_ms() - item.created_ms > give_up_ms {
                    let error = "not committed within delivery.give_up_after_h";
                    if self
                        .catalog
                        .commitment_failed(item.id, error, None, now_ms())?
                    {
                        self.emit(Event::Undeliverable { item: &item, error });
                    }
                    continue;
                }
                match reference_of(&item.path) {
                    Ok(reference) => ready.push((item, reference)),
                    Err(e) => {
                        let error = format!("result file unreadable: {e}");
                        if self
                            .catalog
                            .commitment_failed(item.id, &error, None, now_ms())?
                        {
                            self.emit(Event::Undeliverable {
                                item: &item,
                                error: &error,
                            });
                        }
                    }
                }
            }
            let wait = Duration::from_secs_f64(destination.commitment_wait_s.clamp(0.0, 60.0));
            for chunk in ready.chunks(MAX_REFERENCES) {
                let transaction = transaction_uid();
                let ids: Vec<i64> = chunk.iter().map(|(i, _)| i.id).collect();
                // Asked again and again without a report: each time
                // longer (up to 8 × the timeout).
                let attempts = chunk.iter().map(|(i, _)| i.attempts).max().unwrap_or(0);
                let factor = f64::from(1u32 << attempts.saturating_sub(1).min(3));
                let now = now_ms();
                let deadline =
                    now + seconds_ms(self.config.delivery.commitment_timeout_s.max(1.0) * factor);
                let requested =
                    self.catalog
                        .commitment_requested(&ids, &transaction, deadline, now)?;
                let (items, references): (Vec<OutboxItem>, Vec<_>) = chunk
                    .iter()
                    .filter(|(i, _)| requested.contains(&i.id))
                    .cloned()
                    .unzip();
                if items.is_empty() {
                    continue;
                }
                self.emit(Event::CommitmentRequested {
                    destination: &name,
                    remote: &remote,
                    transaction: &transaction,
                    items: &items,
                });
                requests += 1;
                let exchange =
                    request_commitment(&remote, &scu, &transaction, &references, wait).await;
                // The reports answered on the association count, whatever
                // became of the request itself.
                for report in exchange.reports {
                    let pipeline = self.clone();
                    // One report that cannot be applied does not keep the
                    // others from it.
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || pipeline.apply_report(&report)).await
                    {
                        tracing::error!(error = %e, destination = %name, "storage commitment report not applied");
                    }
                }
                match exchange.outcome {
                    Ok(()) => {}
                    Err(e) => {
                        let error = e.to_string();
                        // A destination that offers no Storage Commitment
                        // will not offer it at the next try.
                        let permanent = matches!(e, CommitmentError::NotSupported { .. });
                        self.emit(Event::CommitmentRequestFailed {
                            destination: &name,
                            transaction: &transaction,
                            error: &error,
                            items: items.len(),
                        });
                        for item in &items {
                            if permanent {
                                if self.catalog.commitment_failed(
                                    item.id,
                                    &error,
                                    None,
                                    now_ms(),
                                )? {
                                    self.emit(Event::Undeliverable {
                                        item,
                                        error: &error,
                                    });
                                }
                            } else {
                                self.retry_commitment(item, &error)?;
                            }
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
        let (retry, now) = self.next_try(item);
        if self.catalog.commitment_failed(item.id, error, retry, now)? && retry.is_none() {
            self.emit(Event::Undeliverable { item, error });
        }
        Ok(())
    }

    /// The commitment loop, until the pipeline stops: apart from the
    /// delivery loop, so that a slow destination's commitment never holds
    /// results for the others.
    pub async fn commitment_loop(self) {
        while !self.stop.is_cancelled() {
            if let Err(e) = self.commit_once().await {
                tracing::error!(error = %e, "storage commitment requests failed");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = self.stop.cancelled() => {}
            }
        }
    }

    /// Apply a storage commitment report (from the SCP, or received on
    /// the requesting association); returns the status of the
    /// N-EVENT-REPORT-RSP and its comment. Blocking (the catalog, name
    /// resolution).
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
            let why =
                "no result awaits a report of this transaction (already reported, or unknown)";
            self.emit(Event::ReportNotApplied {
                outcome: "ignored",
                calling_ae_title: &report.calling_ae_title,
                transaction,
                why,
            });
            // The SCP did its work; nothing for it to send again.
            return Ok((status::SUCCESS, None));
        };
        // Reports are taken from the destination the transaction went to:
        // its AE title, and, on an association it opened, an address of its
        // host.
        let destination = self.config.destinations.get(&first.destination);
        let refusal = match destination {
            None => Some("the transaction's destination is no longer configured".to_string()),
            Some(d) if d.ae_title.trim() != report.calling_ae_title.trim() => Some(format!(
                "the transaction went to {}, not to this AE title",
                d.ae_title.trim()
            )),
            Some(d) => match report.peer {
                Some(peer) if !is_address_of(peer, &d.host) => Some(format!(
                    "the report came from {peer}, not from an address of {}",
                    d.host
                )),
                _ => None,
            },
        };
        if let Some(why) = refusal {
            self.emit(Event::ReportNotApplied {
                outcome: "refused",
                calling_ae_title: &report.calling_ae_title,
                transaction,
                why: &why,
            });
            return Ok((
                status::PROCESSING_FAILURE,
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
                if self
                    .catalog
                    .outbox_committed(item.id, transaction, now_ms())?
                {
                    self.emit(Event::Committed {
                        item,
                        destination: &item.destination,
                        transaction,
                    });
                }
                continue;
            }
            let reason = match failed {
                Some(f) => format!("not committed: {}", describe_failure_reason(f.reason)),
                None => "not named in the commitment report".to_string(),
            };
            let (retry, now) = if failed.is_some_and(|f| permanent_reason(f.reason)) {
                (None, now_ms())
            } else {
                self.next_try(item)
            };
            if self
                .catalog
                .commitment_refused(item.id, &reason, retry, now)?
            {
                if retry.is_none() {
                    self.emit(Event::Undeliverable {
                        item,
                        error: &reason,
                    });
                }
                self.emit(Event::NotCommitted {
                    item,
                    destination: &item.destination,
                    transaction,
                    reason: &reason,
                    sent_again: retry.is_some(),
                });
            }
        }
        Ok((status::SUCCESS, None))
    }
}
