//! Result delivery: due outbox items sent by C-STORE, a batch per
//! destination and association; transient failures retried with
//! exponential backoff (`delivery.retry_initial_s` to `retry_max_s`) until
//! `give_up_after_h`, permanent refusals failed at once. A destination with
//! `commitment = true` must then commit what it stored ([`super::commitment`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::scu::{RemoteAe, ScuOptions, send_files};
use vigie_dicom_io::net::tls::TlsDestination;
use vigie_store::{OutboxItem, now_ms};

use super::events::{Event, Sent};
use super::{Pipeline, seconds_ms};

impl Pipeline {
    /// Send what is due once; returns the number of items delivered.
    pub async fn deliver_once(&self) -> anyhow::Result<usize> {
        let catalog = self.catalog.clone();
        let batch = self.config.delivery.batch_size;
        let due =
            tokio::task::spawn_blocking(move || catalog.due_outbox(now_ms(), batch * 8)).await??;
        let by_destination = by_destination(due);
        let mut delivered = 0;
        let scu = self.scu_options();
        for (name, items) in by_destination {
            let Some(destination) = self.config.destinations.get(&name) else {
                for item in &items {
                    self.catalog.outbox_failed(
                        item.id,
                        &format!("destination {name:?} is no longer configured"),
                        None,
                        now_ms(),
                    )?;
                }
                continue;
            };
            let Some(remote) = self.remote(destination) else {
                // Never in clear to a destination that asked for TLS.
                for item in &items {
                    self.catalog.outbox_failed(
                        item.id,
                        &format!("destination {name:?} needs TLS, which is not configured"),
                        None,
                        now_ms(),
                    )?;
                }
                continue;
            };
            for chunk in items.chunks(batch) {
                let paths: Vec<PathBuf> = chunk.iter().map(|i| i.path.clone()).collect();
                let sending = Instant::now();
                let sent = send_files(&remote, &scu, &paths).await;
                let took = sending.elapsed();
                match sent {
                    Ok(outcomes) => {
                        for (item, outcome) in chunk.iter().zip(&outcomes) {
                            self.emit(Event::Delivery {
                                item,
                                destination: &name,
                                remote: &remote,
                                sent: Sent::Answered {
                                    delivered: outcome.delivered(),
                                    status: outcome.status,
                                    comment: outcome.comment.as_deref(),
                                },
                            });
                            if outcome.delivered() {
                                if destination.commitment {
                                    // Delivered once committed (commitment.rs).
                                    self.catalog.outbox_stored(item.id, now_ms())?;
                                } else {
                                    self.catalog.outbox_sent(item.id, now_ms())?;
                                }
                                delivered += 1;
                                continue;
                            }
                            let status = outcome
                                .status
                                .map(|s| format!("0x{s:04X}"))
                                .unwrap_or_else(|| "nothing".into());
                            let comment = outcome.comment.as_deref().unwrap_or("");
                            let why = format!("{name} answered {status}: {comment}");
                            let permanent = outcome
                                .status
                                .is_some_and(|s| !status::is_transient_failure(s));
                            if permanent {
                                // The same answer would come at every try:
                                // given up now, and visible at once.
                                self.emit(Event::RefusedForGood {
                                    item,
                                    destination: &name,
                                    status: &status,
                                    comment,
                                });
                                self.catalog.outbox_failed(
                                    item.id,
                                    &format!("{why} (permanent refusal, not retried)"),
                                    None,
                                    now_ms(),
                                )?;
                            } else {
                                self.emit(Event::RefusedForNow {
                                    item,
                                    destination: &name,
                                    status: &status,
                                    comment,
                                });
                                self.retry_item(item, &why)?;
                            }
                        }
                        for item in chunk.iter().skip(outcomes.len()) {
                            self.retry_item(item, "not sent")?;
                        }
                        self.emit(Event::BatchSent {
                            destination: &name,
                            took,
                            delivered: outcomes.iter().filter(|o| o.delivered()).count(),
                            of: chunk.len(),
                        });
                    }
                    Err(e) => {
                        let error = e.to_string();
                        for item in chunk {
                            self.emit(Event::Delivery {
                                item,
                                destination: &name,
                                remote: &remote,
                                sent: Sent::Failed { error: &error },
                            });
                            self.retry_item(item, &error)?;
                        }
                        self.emit(Event::BatchFailed {
                            destination: &name,
                            error: &error,
                            of: chunk.len(),
                        });
                        break;
                    }
                }
            }
        }
        Ok(delivered)
    }

    /// The SCU settings of delivery: our AE title, `dicom.scu_timeout_s`.
    pub(super) fn scu_options(&self) -> ScuOptions {
        let mut scu = ScuOptions::new(&self.config.dicom.ae_title);
        scu.timeout = Duration::from_secs(self.config.dicom.scu_timeout_s.max(1));
        scu
    }

    /// The remote AE of a destination ([`remote_ae`] with this
    /// pipeline's TLS settings).
    pub(crate) fn remote(
        &self,
        destination: &crate::config::DestinationConfig,
    ) -> Option<RemoteAe> {
        remote_ae(destination, self.dicom_tls.as_ref())
    }

    /// Send `item` again later (exponential backoff), or give up past
    /// `delivery.give_up_after_h`.
    pub(super) fn retry_item(&self, item: &OutboxItem, error: &str) -> anyhow::Result<()> {
        let (retry, now) = self.next_try(item);
        self.catalog.outbox_failed(item.id, error, retry, now)?;
        if retry.is_none() {
            self.emit(Event::Undeliverable { item, error });
        }
        Ok(())
    }

    /// When to try `item` again (exponential backoff from its attempts),
    /// with the time now; `None` past `delivery.give_up_after_h`.
    pub(super) fn next_try(&self, item: &OutboxItem) -> (Option<i64>, i64) {
        let d = &self.config.delivery;
        let now = now_ms();
        let give_up = now - item.created_ms > seconds_ms(d.give_up_after_h * 3600.0);
        let delay =
            (d.retry_initial_s * 2f64.powi(item.attempts.min(30) as i32)).min(d.retry_max_s);
        ((!give_up).then(|| now + seconds_ms(delay)), now)
    }

    /// The delivery loop, until the pipeline stops.
    pub async fn delivery_loop(self) {
        while !self.stop.is_cancelled() {
            if let Err(e) = self.deliver_once().await {
                tracing::error!(error = %e, "result delivery failed");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = self.wake.results.notified() => {}
                () = self.stop.cancelled() => {}
            }
        }
    }
}

/// Outbox items grouped by destination name.
pub(super) fn by_destination(items: Vec<OutboxItem>) -> BTreeMap<String, Vec<OutboxItem>> {
    let mut grouped: BTreeMap<String, Vec<OutboxItem>> = BTreeMap::new();
    for item in items {
        grouped
            .entry(item.destination.clone())
            .or_default()
            .push(item);
    }
    grouped
}

/// The remote AE of a destination, over TLS when it says `tls = true`;
/// `None` when it asks for TLS and `[dicom.tls]` is not loaded (never in
/// clear then).
pub(crate) fn remote_ae(
    destination: &crate::config::DestinationConfig,
    dicom_tls: Option<&std::sync::Arc<vigie_dicom_io::net::tls::DicomTls>>,
) -> Option<RemoteAe> {
    let tls = if destination.tls {
        let name = destination
            .server_name
            .as_deref()
            .unwrap_or(&destination.host);
        // Checked with the configuration: a valid name.
        let server_name = vigie_dicom_io::net::tls::server_name(name).ok()?;
        Some(TlsDestination {
            tls: dicom_tls?.clone(),
            server_name,
        })
    } else {
        None
    };
    Some(RemoteAe {
        ae_title: destination.ae_title.clone(),
        host: destination.host.clone(),
        port: destination.port,
        tls,
    })
}
