//! Durable ingest: what happens to each instance the SCP receives.
//!
//! The SCP has streamed the data set into a staged Part 10 file. Here it is
//! checked (parsable, matches the command, UIDs safe as path names), the
//! file is fsynced and renamed into `studies/<Study>/<Series>/<SOP>.dcm`,
//! the folder fsynced, and the instance recorded in the catalog (a durable
//! transaction). Only then is Success returned to the peer.
//!
//! Statuses: A700 out of resources (free space below the configured
//! reserve, write or index failure), A900 data set does not match the SOP
//! class (other SOP Class/Instance UID than the command, required
//! attribute missing or invalid), C000 cannot understand (not parsable,
//! UIDs unusable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::scp::{ReceivedInstance, ScpEvent, StoreHandler, StoreOutcome};
use vigie_dicom_io::{DicomFile, Error as DicomError};

use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;
use crate::store::layout::{Layout, commit_file_then};
use crate::store::{Catalog, InstanceRecord, now_ms};

/// Counters of the ingest side.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Instances stored.
    pub stored: AtomicU64,
    /// C-STORE requests refused.
    pub refused: AtomicU64,
    /// Bytes stored.
    pub bytes: AtomicU64,
}

/// How an instance reached the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// C-STORE on the DICOM listener.
    Dimse,
    /// STOW-RS on the HTTP listener.
    Stow,
}

impl Source {
    /// Its name in metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dimse => "dimse",
            Self::Stow => "stow-rs",
        }
    }
}

/// The store handler of `vigie serve`.
pub struct Ingest {
    layout: Layout,
    catalog: Arc<dyn Catalog>,
    audit: Audit,
    pixels: std::sync::mpsc::Sender<InstanceRecord>,
    min_free_bytes: u64,
    metrics: Arc<Metrics>,
    backlog: Arc<crate::pipeline::Backlog>,
    /// Counters.
    pub stats: Arc<IngestStats>,
}

const STORED: &str = "vigie_instances_stored_total";
const STORED_HELP: &str = "Instances stored durably and acknowledged, by source.";
const REFUSED: &str = "vigie_instances_refused_total";
const REFUSED_HELP: &str = "Instances refused, by source and DICOM status (A700 out of resources, A900 mismatch, C000 cannot understand, 0122 SOP class, C122 transfer syntax).";
const ASSOCIATIONS: &str = "vigie_dicom_associations_total";
const ASSOCIATIONS_HELP: &str =
    "DICOM associations by outcome (accepted, rejected, released, aborted).";

impl Ingest {
    /// Ingest into `layout`, indexing in `catalog`, refusing instances when
    /// less than `min_free_bytes` are free.
    pub fn new(
        layout: Layout,
        catalog: Arc<dyn Catalog>,
        audit: Audit,
        min_free_bytes: u64,
        metrics: Arc<Metrics>,
        backlog: Arc<crate::pipeline::Backlog>,
    ) -> Self {
        let (pixels, queue) = std::sync::mpsc::channel();
        let hasher = audit.clone();
        let spawned = std::thread::Builder::new()
            .name("vigie-pixel-hash".into())
            .spawn(move || hash_pixels(&hasher, &queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the pixel hashing thread");
        }
        Self {
            layout,
            catalog,
            audit,
            pixels,
            min_free_bytes,
            metrics,
            backlog,
            stats: Arc::default(),
        }
    }

    fn free_bytes(&self) -> std::io::Result<u64> {
        let stat = rustix::fs::statvfs(self.layout.root()).map_err(std::io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    fn try_store(
        &self,
        received: &ReceivedInstance,
    ) -> Result<(InstanceRecord, Option<String>), StoreOutcome> {
        // Taking more studies than the workers can analyse would only grow
        // the backlog: the sender keeps them and retries.
        if let Some(reason) = self.backlog.full() {
            return Err(StoreOutcome::failure(status::OUT_OF_RESOURCES, reason));
        }
        let free = self
            .free_bytes()
            .map_err(|e| StoreOutcome::failure(status::OUT_OF_RESOURCES, e.to_string()))?;
        if free < self.min_free_bytes {
            return Err(StoreOutcome::failure(
                status::OUT_OF_RESOURCES,
                format!(
                    "storage full: {} MiB free, {} MiB reserved",
                    free >> 20,
                    self.min_free_bytes >> 20
                ),
            ));
        }
        let file = DicomFile::open_header(&received.path).map_err(|e| match e {
            DicomError::MissingAttribute { attribute, .. } => StoreOutcome::failure(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                format!("required attribute {attribute} missing"),
            ),
            DicomError::InvalidAttribute { attribute, .. } => StoreOutcome::failure(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                format!("attribute {attribute} invalid"),
            ),
            other => StoreOutcome::failure(
                status::CANNOT_UNDERSTAND,
                format!("data set not parsable: {}", short(&other.to_string())),
            ),
        })?;
        let header = file.header();
        let patient_id = file.string(dicom_dictionary_std::tags::PATIENT_ID);
        if header.sop_class_uid != received.sop_class_uid {
            return Err(StoreOutcome::failure(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID of the data set differs from the command",
            ));
        }
        if header.sop_instance_uid != received.sop_instance_uid {
            return Err(StoreOutcome::failure(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Instance UID of the data set differs from the command",
            ));
        }
        let to = self
            .layout
            .instance(
                &header.study_instance_uid,
                &header.series_instance_uid,
                &header.sop_instance_uid,
            )
            .map_err(|e| StoreOutcome::failure(status::CANNOT_UNDERSTAND, e.to_string()))?;
        let size = std::fs::metadata(&received.path)
            .map(|m| m.len())
            .unwrap_or(0);
        let record = InstanceRecord {
            sop_instance_uid: header.sop_instance_uid.clone(),
            sop_class_uid: header.sop_class_uid.clone(),
            study_instance_uid: header.study_instance_uid.clone(),
            series_instance_uid: header.series_instance_uid.clone(),
            modality: header.modality.clone(),
            body_part: header.body_part_examined.clone(),
            series_description: header.series_description.clone(),
            transfer_syntax: received.transfer_syntax.clone(),
            calling_ae_title: received.calling_ae_title.clone(),
            path: to.clone(),
            size,
            sha256: received.sha256.clone(),
            attributes: vigie_dicom_io::web::index_attributes(&file),
        };
        // The index commit (its own fsync) overlaps the folder's fsync;
        // Success is answered only once both are durable.
        let indexed = commit_file_then(&received.path, &to, || {
            Ok(self.catalog.record_instance(&record, now_ms()))
        })
        .map_err(|e| {
            StoreOutcome::failure(
                status::OUT_OF_RESOURCES,
                format!("cannot store instance: {e}"),
            )
        })?;
        indexed.map_err(|e| StoreOutcome::failure(status::OUT_OF_RESOURCES, e.to_string()))?;
        self.stats.bytes.fetch_add(size, Ordering::Relaxed);
        Ok((record, patient_id))
    }
}

/// Instances larger than this get no decoded-pixel hash at reception.
const PIXEL_HASH_MAX_BYTES: u64 = 64 << 20;

/// The decoded-pixel records, off the acknowledgement path: for each stored
/// instance, decode the stored sample values (no LUT) and record their
/// SHA-256 (`f32` little endian, `[frame][row][column][sample]`), which
/// does not depend on the transfer syntax of a lossless transfer.
fn hash_pixels(audit: &Audit, queue: &std::sync::mpsc::Receiver<InstanceRecord>) {
    while let Ok(record) = queue.recv() {
        let started = std::time::Instant::now();
        if record.size > PIXEL_HASH_MAX_BYTES {
            // Decoding needs the whole instance in memory, twice over as
            // floats: not in the background of a receiving appliance.
            audit.note(
                AuditEvent::new(
                    "instance_pixels",
                    "skipped",
                    serde_json::json!({
                        "reason": format!(
                            "instance of {} MiB, above the {} MiB limit of the background pixel hash; its file SHA-256 is recorded",
                            record.size >> 20,
                            PIXEL_HASH_MAX_BYTES >> 20
                        ),
                        "file_sha256": record.sha256,
                    }),
                )
                .instance(
                    Some(&record.study_instance_uid),
                    Some(&record.sop_instance_uid),
                ),
            );
            continue;
        }
        let decoded = DicomFile::open(&record.path).and_then(|f| f.decode_stored());
        let event = match decoded {
            Ok(pixels) => AuditEvent::new(
                "instance_pixels",
                "ok",
                serde_json::json!({
                    "pixels_sha256": vigie_validation::pipeline::hash_samples(&pixels.data),
                    "frames": pixels.frames,
                    "rows": pixels.rows,
                    "columns": pixels.columns,
                    "samples_per_pixel": pixels.samples_per_pixel,
                    "file_sha256": record.sha256,
                    "decode_ms": started.elapsed().as_secs_f64() * 1000.0,
                }),
            ),
            Err(e) => AuditEvent::new(
                "instance_pixels",
                "failed",
                serde_json::json!({ "error": e.to_string(), "file_sha256": record.sha256 }),
            ),
        };
        audit.note(event.instance(
            Some(&record.study_instance_uid),
            Some(&record.sop_instance_uid),
        ));
    }
}

/// Error comments go on the wire (64 characters) and in logs: keep the
/// head, which says what failed.
fn short(text: &str) -> String {
    text.chars().take(160).collect()
}

impl Ingest {
    /// Store a staged instance (checks, durable commit, index, audit
    /// record) and say what to answer. Refusals are not audited here: the
    /// caller knows its protocol's context and calls [`Ingest::refused`].
    pub fn store_from(&self, received: ReceivedInstance, source: Source) -> StoreOutcome {
        match self.try_store(&received) {
            Ok((record, patient_id)) => {
                // The audit record is durable before Success is answered.
                let event = AuditEvent::new(
                    "instance_stored",
                    "ok",
                    serde_json::json!({
                        "source": source.as_str(),
                        "calling_ae_title": received.calling_ae_title,
                        "peer": received.peer.to_string(),
                        "sop_class_uid": record.sop_class_uid,
                        "series_instance_uid": record.series_instance_uid,
                        "transfer_syntax": record.transfer_syntax,
                        "modality": record.modality,
                        "file_sha256": record.sha256,
                        "bytes": record.size,
                        "path": record.path,
                        "patient_id": self.audit.patient_id(patient_id.as_deref()),
                    }),
                )
                .instance(
                    Some(&record.study_instance_uid),
                    Some(&record.sop_instance_uid),
                );
                if let Err(e) = self.audit.record(event) {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return StoreOutcome::failure(
                        status::OUT_OF_RESOURCES,
                        format!("audit trail unavailable: {e}"),
                    );
                }
                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .inc(STORED, STORED_HELP, &[("source", source.as_str())]);
                let _ = self.pixels.send(record);
                StoreOutcome::success()
            }
            Err(outcome) => {
                let _ = std::fs::remove_file(&received.path);
                outcome
            }
        }
    }

    /// Account for and audit a refused instance: `caller` is the calling AE
    /// title or the HTTP token name.
    pub fn refused(
        &self,
        source: Source,
        caller: &str,
        sop_instance_uid: &str,
        code: u16,
        reason: &str,
    ) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        let status = format!("{code:04X}");
        self.metrics.inc(
            REFUSED,
            REFUSED_HELP,
            &[("source", source.as_str()), ("status", &status)],
        );
        tracing::warn!(
            source = source.as_str(),
            caller,
            sop_instance_uid,
            status = format!("0x{status}"),
            reason,
            "instance refused"
        );
        self.audit.note(
            AuditEvent::new(
                "instance_refused",
                "refused",
                serde_json::json!({
                    "source": source.as_str(),
                    "calling_ae_title": caller,
                    "status": format!("0x{status}"),
                    "reason": reason,
                }),
            )
            .instance(None, Some(sop_instance_uid).filter(|s| !s.is_empty())),
        );
    }
}

impl StoreHandler for Ingest {
    fn store(&self, received: ReceivedInstance) -> StoreOutcome {
        self.store_from(received, Source::Dimse)
    }

    fn event(&self, event: ScpEvent) {
        // UIDs and AE titles only: no patient identifiers in the log.
        match event {
            ScpEvent::Accepted {
                peer,
                calling_ae_title,
                contexts,
            } => {
                tracing::info!(%peer, calling = %calling_ae_title, contexts, "association accepted");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "accepted")]);
                self.audit.note(AuditEvent::new(
                    "association",
                    "accepted",
                    serde_json::json!({
                        "calling_ae_title": calling_ae_title,
                        "peer": peer.to_string(),
                        "presentation_contexts": contexts,
                    }),
                ));
            }
            ScpEvent::Rejected { peer, reason } => {
                tracing::warn!(%peer, %reason, "association rejected");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "rejected")]);
                self.audit.note(AuditEvent::new(
                    "association",
                    "rejected",
                    serde_json::json!({ "peer": peer.to_string(), "reason": reason }),
                ));
            }
            ScpEvent::Echoed { calling_ae_title } => {
                tracing::info!(calling = %calling_ae_title, "C-ECHO answered");
                self.audit.note(AuditEvent::new(
                    "echo",
                    "ok",
                    serde_json::json!({ "calling_ae_title": calling_ae_title }),
                ));
            }
            ScpEvent::StoreAnswered {
                calling_ae_title,
                sop_instance_uid,
                status: code,
                comment,
            } => {
                if code == status::SUCCESS {
                    tracing::debug!(calling = %calling_ae_title, sop_instance_uid, "instance stored");
                } else {
                    self.refused(
                        Source::Dimse,
                        &calling_ae_title,
                        &sop_instance_uid,
                        code,
                        &comment.unwrap_or_default(),
                    );
                }
            }
            ScpEvent::Released {
                calling_ae_title,
                stores,
            } => {
                tracing::info!(calling = %calling_ae_title, stores, "association released");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "released")]);
                self.audit.note(AuditEvent::new(
                    "association",
                    "released",
                    serde_json::json!({ "calling_ae_title": calling_ae_title, "stores": stores }),
                ));
            }
            ScpEvent::Aborted {
                calling_ae_title,
                reason,
            } => {
                tracing::warn!(calling = %calling_ae_title, %reason, "association aborted");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "aborted")]);
                self.audit.note(AuditEvent::new(
                    "association",
                    "aborted",
                    serde_json::json!({ "calling_ae_title": calling_ae_title, "reason": reason }),
                ));
            }
            _ => {}
        }
    }
}
