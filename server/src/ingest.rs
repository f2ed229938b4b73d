//! Durable ingest: what happens to each instance the SCP receives. This
//! is where a received instance becomes durable and acknowledged; the rest
//! of its way, to a job and a delivered result, is in `docs/crates.md`.
//!
//! The SCP has streamed the data set into a staged Part 10 file. Here it is
//! checked (parsable, matches the command, UIDs safe as path names) while
//! its data is fdatasynced, then renamed into
//! `studies/<Study>/<Series>/<SOP>.dcm`; the folder's fsync, the catalog
//! transaction and the audit record (each durable) then run at the same
//! time. Only once all are done is Success returned to the peer. Because
//! the last three overlap, a catalog failure can follow an `instance_stored`
//! audit record: the trail then also has the instance's refusal (A700), as
//! the peer was told.
//!
//! A reviewer's SR (a radiologist's verdict on one of Vigie's results,
//! `docs/results.md`) is checked before it is stored: one that cannot be
//! read or that references no result of this appliance is refused (C000,
//! with the reason, and a `review_refused` record); the review of one that
//! is stored is recorded once the instance is durable, before Success.
//!
//! Statuses: A700 out of resources (free space below the configured
//! reserve, write or index failure), A900 data set does not match the SOP
//! class (other SOP Class/Instance UID than the command, required
//! attribute missing or invalid), C000 cannot understand (not parsable,
//! UIDs unusable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vigie_dicom_io::DicomFile;
use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::admission;
use vigie_dicom_io::net::scp::{ReceivedInstance, ScpEvent, StoreHandler, StoreOutcome};

use crate::config::DuplicatePolicy;
use crate::metrics::Metrics;
use crate::reviews::{Checked, ReviewDesk, ReviewError, ReviewRequest};
use vigie_audit::{Audit, AuditEvent, EventKind};
use vigie_store::layout::{Layout, Reserve, commit_synced_file_then, is_disk_full};
use vigie_store::{InstanceIndex, InstanceRecord, now_ms};

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

/// What [`Ingest::store_checked`] did.
#[derive(Debug)]
pub struct Stored {
    /// What to answer.
    pub outcome: StoreOutcome,
    /// Study Instance UID from the header, when it could be read.
    pub study_instance_uid: Option<String>,
    /// Series Instance UID from the header, when it could be read.
    pub series_instance_uid: Option<String>,
}

/// The store handler of `vigie serve`.
pub struct Ingest {
    layout: Layout,
    catalog: Arc<dyn InstanceIndex>,
    reviews: Arc<ReviewDesk>,
    audit: Audit,
    /// Queue of the pixel-hash thread; `None` once [`Ingest::close`] ran.
    pixels: std::sync::Mutex<Option<std::sync::mpsc::Sender<InstanceRecord>>>,
    pixel_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    min_free_bytes: u64,
    metrics: Arc<Metrics>,
    backlog: Arc<crate::backlog::Backlog>,
    reserve: Arc<Reserve>,
    duplicates: DuplicatePolicy,
    /// One lock per stripe of SOP Instance UIDs: two receptions of one
    /// UID at once are stored one after the other (the duplicate policy
    /// compares each with what is held when it is its turn).
    stripes: [std::sync::Mutex<()>; 64],
    /// With `pipeline.release_grace_s`: how long after its carrier ended a
    /// study may close.
    release_grace: Option<std::time::Duration>,
    /// The index C-FIND answers from (`dicom.query`); `None`: no query
    /// service.
    web: Option<Arc<dyn vigie_store::WebIndex>>,
    /// Where C-MOVE may send, by AE title: the configured destinations.
    move_destinations: std::collections::BTreeMap<String, vigie_dicom_io::net::scu::RemoteAe>,
    /// Where storage commitment reports go (destinations with
    /// `commitment = true`); `None`: refused.
    commitment: Option<crate::pipeline::Pipeline>,
    /// The studies each open association has stored instances of.
    carried: std::sync::Mutex<std::collections::HashMap<u64, std::collections::BTreeSet<String>>>,
    /// Counters.
    pub stats: Arc<IngestStats>,
}

/// What [`Ingest::check`] admits: the catalog record and the audit event
/// of the instance's storage, the review a reviewer's SR carries, and the
/// file of the copy it replaces when that is elsewhere (policy `replace`,
/// another study or series).
struct Admitted {
    record: InstanceRecord,
    event: AuditEvent,
    review: Option<Checked>,
    replaces: Option<std::path::PathBuf>,
    /// The copy held that this one replaces (policy `replace`).
    replaced: Option<vigie_store::HeldInstance>,
}

/// STOW-RS carrier numbers, far above the DICOM listener's association
/// numbers.
static STOW_CARRIERS: AtomicU64 = AtomicU64::new(1 << 48);

const STORED: &str = "vigie_instances_stored_total";
const STORED_HELP: &str = "Instances stored durably and acknowledged, by source.";
const REFUSED: &str = "vigie_instances_refused_total";
const REFUSED_HELP: &str = "Instances refused, by source and DICOM status (A700 out of resources, A900 mismatch, C000 cannot understand, 0122 SOP class, C122 transfer syntax).";
const DUPLICATES: &str = "vigie_instances_duplicate_total";
const DUPLICATES_HELP: &str = "Instances received with the SOP Instance UID of one held but other content, by what the duplicate policy did (kept_first, replaced, kept_both).";
const ASSOCIATIONS: &str = "vigie_dicom_associations_total";
const ASSOCIATIONS_HELP: &str = "DICOM associations by outcome (accepted, rejected, released, aborted, refused_before_request: connections closed before a whole A-ASSOCIATE-RQ).";

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("data_dir", &self.layout.root())
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Ingest into `layout`, indexing in `catalog`, refusing instances when
    /// less than `min_free_bytes` are free.
    // Each part is a distinct shared service of the wiring; a struct of
    // them would only be built to be taken apart here.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        layout: Layout,
        catalog: Arc<dyn InstanceIndex>,
        reviews: Arc<ReviewDesk>,
        audit: Audit,
        min_free_bytes: u64,
        metrics: Arc<Metrics>,
        backlog: Arc<crate::backlog::Backlog>,
        reserve: Arc<Reserve>,
    ) -> Self {
        let (pixels, queue) = std::sync::mpsc::channel();
        let hasher = audit.clone();
        let spawned = std::thread::Builder::new()
            .name("vigie-pixel-hash".into())
            .spawn(move || hash_pixels(&hasher, &queue, PIXEL_RECORDS_LINGER));
        let pixel_thread = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the pixel hashing thread");
                None
            }
        };
        Self {
            layout,
            catalog,
            reviews,
            audit,
            pixels: std::sync::Mutex::new(Some(pixels)),
            pixel_thread: std::sync::Mutex::new(pixel_thread),
            min_free_bytes,
            metrics,
            backlog,
            reserve,
            duplicates: DuplicatePolicy::default(),
            stripes: std::array::from_fn(|_| std::sync::Mutex::new(())),
            release_grace: None,
            web: None,
            move_destinations: std::collections::BTreeMap::new(),
            commitment: None,
            carried: std::sync::Mutex::new(std::collections::HashMap::new()),
            stats: Arc::default(),
        }
    }

    /// Apply `policy` to instances received again with other content
    /// (`storage.duplicates`; keep the first by default).
    pub fn with_duplicate_policy(mut self, policy: DuplicatePolicy) -> Self {
        self.duplicates = policy;
        self
    }

    /// Answer C-FIND and C-MOVE from `web` (`dicom.query`), C-MOVE sending
    /// only to `destinations` (by AE title).
    pub fn with_query(
        mut self,
        web: Option<Arc<dyn vigie_store::WebIndex>>,
        destinations: std::collections::BTreeMap<String, vigie_dicom_io::net::scu::RemoteAe>,
    ) -> Self {
        self.web = web;
        self.move_destinations = destinations;
        self
    }

    /// Take storage commitment reports for `pipeline` (some destination
    /// has `commitment = true`).
    pub fn with_commitment(mut self, pipeline: Option<crate::pipeline::Pipeline>) -> Self {
        self.commitment = pipeline;
        self
    }

    /// Let a study close `grace` after the association or STOW-RS request
    /// that carried it ended normally (`pipeline.release_grace_s`).
    pub fn with_release_grace(mut self, grace: Option<std::time::Duration>) -> Self {
        self.release_grace = grace;
        self
    }

    fn carried(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, std::collections::BTreeSet<String>>>
    {
        self.carried.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A number for a STOW-RS request, as [`ReceivedInstance::association`]
    /// of what it carries (apart from the DICOM listener's numbers); end it
    /// with [`Ingest::carrier_ended`].
    pub fn stow_carrier(&self) -> u64 {
        STOW_CARRIERS.fetch_add(1, Ordering::Relaxed)
    }

    /// The STOW-RS request `carrier` ended: answered (`normally`), or cut
    /// (an error, the client gone). With `pipeline.release_grace_s`, the
    /// studies it carried that nothing else carries may close after the
    /// grace when it was answered.
    pub fn carrier_ended(&self, carrier: u64, normally: bool) {
        self.association_ended(carrier, normally);
    }

    /// Association `number` was released normally: with
    /// `pipeline.release_grace_s`, each study it carried that no other open
    /// association is carrying may close after the grace.
    fn association_ended(&self, number: u64, released: bool) {
        let mut carried = self.carried();
        let Some(studies) = carried.remove(&number) else {
            return;
        };
        let (true, Some(grace)) = (released, self.release_grace) else {
            return;
        };
        for study in &studies {
            if !carried.values().any(|others| others.contains(study)) {
                self.backlog.released(study, grace);
            }
        }
    }

    /// At shutdown, once no instance can arrive any more: the pixel-hash
    /// thread records what it still holds, then stops. Returns when its
    /// records are in the audit trail. Instances stored after this get no
    /// `instance_pixels` record.
    pub fn close(&self) {
        if let Ok(mut pixels) = self.pixels.lock() {
            pixels.take();
        }
        let handle = self
            .pixel_thread
            .lock()
            .map(|mut t| t.take())
            .ok()
            .flatten();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the pixel hashing thread panicked");
        }
    }

    /// Whether there is room for another instance, asked before a byte of
    /// it is written (C-STORE-RQ, each STOW-RS part): A700 while free space
    /// is below `storage.min_free_mib`, and while the reserve is released
    /// (the disk filled) until there is room to allocate it again.
    pub fn space_admission(&self) -> Option<StoreOutcome> {
        let free = match self.free_bytes() {
            Ok(free) => free,
            Err(e) => {
                return Some(StoreOutcome::failure(
                    status::OUT_OF_RESOURCES,
                    format!("cannot read the free space: {e}"),
                ));
            }
        };
        if self.reserve.is_released() {
            let enough = self
                .min_free_bytes
                .saturating_add(self.reserve.bytes().saturating_mul(2));
            if free > enough && self.reserve.allocate() {
                return None;
            }
            return Some(StoreOutcome::failure(
                status::OUT_OF_RESOURCES,
                format!(
                    "storage full: {} MiB free, the reserve is in use; free space on the appliance",
                    free >> 20
                ),
            ));
        }
        (free < self.min_free_bytes).then(|| {
            StoreOutcome::failure(
                status::OUT_OF_RESOURCES,
                format!(
                    "storage full: {} MiB free, {} MiB reserved",
                    free >> 20,
                    self.min_free_bytes >> 20
                ),
            )
        })
    }

    /// A write failed for lack of space: release the reserve, so that the
    /// refusal can still be indexed and recorded.
    fn out_of_space(&self, reason: &str) {
        if is_disk_full(reason) && self.reserve.release() {
            self.metrics.inc(
                "vigie_store_reserve_released_total",
                "Times the storage reserve was released because the disk filled (alarm).",
                &[],
            );
        }
    }

    fn free_bytes(&self) -> std::io::Result<u64> {
        let stat = rustix::fs::statvfs(self.layout.root()).map_err(std::io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    fn try_store(
        &self,
        received: &ReceivedInstance,
        source: Source,
        study: Option<&str>,
        uids: &mut Option<(String, String)>,
    ) -> Result<InstanceRecord, StoreOutcome> {
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            received.sop_instance_uid.hash(&mut hasher);
            (hasher.finish() % self.stripes.len() as u64) as usize
        };
        let _one_at_a_time = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Taking more studies than the workers can analyse would only grow
        // the backlog: the sender keeps them and retries.
        if let Some(reason) = self.backlog.full() {
            return Err(StoreOutcome::failure(status::OUT_OF_RESOURCES, reason));
        }
        // Asked again: space may have gone while the data set arrived.
        if let Some(refusal) = self.space_admission() {
            return Err(refusal);
        }
        // The data's fdatasync (the longest wait) overlaps the checks; an
        // instance the checks refuse has only cost a flush.
        let cannot_store = |e: std::io::Error| {
            let reason = format!("cannot store instance: {e}");
            self.out_of_space(&reason);
            StoreOutcome::failure(status::OUT_OF_RESOURCES, reason)
        };
        let (checked, synced) = std::thread::scope(|scope| {
            let synced = scope.spawn(|| std::fs::File::open(&received.path)?.sync_data());
            let checked = self.check(received, source, study, uids);
            let synced = synced
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("fdatasync thread panicked")));
            (checked, synced)
        });
        let Admitted {
            record,
            event,
            review,
            replaces,
            replaced,
        } = checked?;
        // A new study only while jobs and receiving studies leave room.
        let refused = self.backlog.admit(&record.study_instance_uid);
        if refused.is_none()
            && let (Some(carrier), Some(_)) = (received.association, self.release_grace)
        {
            // Carried from its admission on (kept if the store then
            // fails: that only keeps the study open a little longer).
            self.carried()
                .entry(carrier)
                .or_default()
                .insert(record.study_instance_uid.clone());
        }
        if let Some(reason) = refused {
            return Err(StoreOutcome::failure(status::OUT_OF_RESOURCES, reason));
        }
        synced.map_err(cannot_store)?;
        // A copy held at the same place (received again, or replaced) is
        // kept under a second name until the new one is indexed: restored
        // if indexing fails, so that an acknowledged instance is never lost
        // (left by a crash, the orphan scan moves it aside).
        let kept = record.path.with_extension("dcm.held");
        let _ = std::fs::remove_file(&kept);
        let keeping = record.path.is_file();
        if keeping && let Err(e) = std::fs::hard_link(&record.path, &kept) {
            // Without the second name a failed index commit would lose the
            // copy held: refused, the sender sends it again.
            return Err(cannot_store(std::io::Error::other(format!(
                "cannot keep the copy held while it is replaced: {e}"
            ))));
        }
        // Not indexed, not acknowledged: the file must not stay in the
        // store unknown to the index (the sender sends it again); the copy
        // held before, if any, goes back in its place.
        let undo = || {
            if keeping {
                let _ = std::fs::rename(&kept, &record.path);
            } else {
                let _ = std::fs::remove_file(&record.path);
            }
        };
        // The folder's fsync, the index commit and the audit record overlap;
        // Success is answered only once all three are durable. What the
        // index said is kept apart: a folder that fails after the commit
        // must not undo an indexed instance.
        let index_outcome = std::sync::Mutex::new(None);
        let committed = commit_synced_file_then(&received.path, &record.path, || {
            Ok(std::thread::scope(|scope| {
                let indexed = scope.spawn(|| self.catalog.record_instance(&record, now_ms()));
                let audited = self.audit.record(event);
                let indexed = match indexed.join() {
                    Ok(done) => done.map_err(|e| e.to_string()),
                    Err(_) => Err("index thread panicked".to_string()),
                };
                *index_outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(indexed.is_ok());
                (indexed, audited)
            }))
        });
        let (indexed, audited) = match committed {
            Ok(both) => both,
            Err(e) => {
                let indexed = *index_outcome.lock().unwrap_or_else(|p| p.into_inner());
                if indexed == Some(true) {
                    if keeping {
                        let _ = std::fs::remove_file(&kept);
                    }
                } else if record.path.is_file() {
                    undo();
                }
                return Err(cannot_store(e));
            }
        };
        if let Err(e) = indexed {
            undo();
            let reason = format!("cannot index instance: {e}");
            self.out_of_space(&reason);
            return Err(StoreOutcome::failure(status::OUT_OF_RESOURCES, reason));
        }
        if keeping {
            let _ = std::fs::remove_file(&kept);
        }
        if let Some(held) = &replaced {
            self.warn_duplicate(&record.sop_instance_uid, held, received, "replaced");
        }
        if let Some(earlier) = replaces {
            // The index now points at the new copy: the earlier one's file,
            // in another study or series, goes (left behind by a crash
            // here, the orphan scan moves it aside at the next start).
            if let Err(e) = std::fs::remove_file(&earlier) {
                tracing::warn!(
                    sop_instance_uid = %record.sop_instance_uid,
                    error = %e,
                    "cannot remove the replaced copy's file"
                );
            }
        }
        audited.map_err(|e| {
            let reason = format!("audit trail unavailable: {e}");
            self.out_of_space(&reason);
            StoreOutcome::failure(status::OUT_OF_RESOURCES, reason)
        })?;
        if let Some(review) = review {
            // Durable first, then the review; a failure here is answered
            // as one (the sender sends the SR again, and a review already
            // recorded from it is not recorded twice).
            self.reviews.record(review).map_err(|e| match e {
                ReviewError::Refused(refusal) => {
                    StoreOutcome::failure(status::CANNOT_UNDERSTAND, refusal.to_string())
                }
                other => StoreOutcome::failure(
                    status::OUT_OF_RESOURCES,
                    format!("review not recorded: {other}"),
                ),
            })?;
        }
        self.stats.bytes.fetch_add(record.size, Ordering::Relaxed);
        // Space is back: hold the reserve again.
        if self.reserve.is_released()
            && self
                .free_bytes()
                .is_ok_and(|free| free > self.min_free_bytes.saturating_mul(2).max(256 << 20))
        {
            self.reserve.allocate();
        }
        Ok(record)
    }

    /// Parse the staged instance's header and check it against the command
    /// and, for STOW-RS with a study in its URL, that study; give the
    /// catalog record and the audit event of its storage. `uids` gets the
    /// study and series UIDs as soon as they are known.
    fn check(
        &self,
        received: &ReceivedInstance,
        source: Source,
        study: Option<&str>,
        uids: &mut Option<(String, String)>,
    ) -> Result<Admitted, StoreOutcome> {
        let file = admission::open_checked(&received.path)?;
        let header = file.header();
        let patient_id = file.string(dicom_dictionary_std::tags::PATIENT_ID);
        *uids = Some((
            header.study_instance_uid.clone(),
            header.series_instance_uid.clone(),
        ));
        admission::matches_request(&file, received, study)?;
        if self.reviews.is_own_result(&header.sop_instance_uid) {
            // One of our results, sent back (a PACS forwarding the study):
            // already held, indexed with its job; stored again it would be
            // taken for a received instance and reopen the study.
            self.audit.note(
                AuditEvent::new(
                    EventKind::InstanceStored,
                    "already_held",
                    serde_json::json!({
                        "source": source.as_str(),
                        "calling_ae_title": received.calling_ae_title,
                        "sop_class_uid": header.sop_class_uid,
                        "file_sha256": received.sha256,
                        "reason": "a result object of this appliance, already held",
                    }),
                )
                .instance(
                    Some(&header.study_instance_uid),
                    Some(&header.sop_instance_uid),
                ),
            );
            return Err(StoreOutcome::success());
        }
        let held = self
            .catalog
            .held_instance(&header.sop_instance_uid)
            .map_err(|e| {
                StoreOutcome::failure(
                    status::OUT_OF_RESOURCES,
                    format!("cannot look the instance up in the index: {e}"),
                )
            })?;
        // Received again with other content: the duplicate policy.
        let duplicate = held.filter(|h| h.sha256 != received.sha256);
        if let Some(held) = &duplicate
            && self.duplicates != DuplicatePolicy::Replace
        {
            return Err(self.keep_held(received, source, &file, held));
        }
        let review = self.review_in(&file, received, source)?;
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
        let mut details = serde_json::json!({
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
        });
        let mut outcome = "ok";
        let mut replaces = None;
        if let Some(held) = &duplicate {
            outcome = "duplicate_replaced";
            details["policy"] = DuplicatePolicy::Replace.as_str().into();
            details["replaced"] = held_details(held);
            replaces = Some(held.path.clone()).filter(|p| *p != record.path);
        }
        let event = AuditEvent::new(EventKind::InstanceStored, outcome, details).instance(
            Some(&record.study_instance_uid),
            Some(&record.sop_instance_uid),
        );
        Ok(Admitted {
            record,
            event,
            review,
            replaces,
            replaced: duplicate,
        })
    }

    /// Policies `keep_first` and `keep_both` for an instance received
    /// with the SOP Instance UID of `held` but other content: the copy held
    /// stays the instance of record; under `keep_both` the new one is kept
    /// durably in `duplicates/`. Recorded durably, then answered Success;
    /// A700 when the record or the copy cannot be written (the sender
    /// sends it again).
    fn keep_held(
        &self,
        received: &ReceivedInstance,
        source: Source,
        file: &DicomFile,
        held: &vigie_store::HeldInstance,
    ) -> StoreOutcome {
        let header = file.header();
        let sop = &header.sop_instance_uid;
        let mut details = serde_json::json!({
            "source": source.as_str(),
            "calling_ae_title": received.calling_ae_title,
            "peer": received.peer.to_string(),
            "sop_class_uid": header.sop_class_uid,
            "series_instance_uid": header.series_instance_uid,
            "policy": self.duplicates.as_str(),
            "file_sha256": received.sha256,
            "bytes": received.bytes,
            "held": held_details(held),
        });
        let event = |outcome: &str, details: serde_json::Value| {
            AuditEvent::new(EventKind::InstanceStored, outcome, details)
                .instance(Some(&header.study_instance_uid), Some(sop))
        };
        let recorded = if self.duplicates == DuplicatePolicy::KeepBoth {
            let to = match self.layout.duplicate(sop, &received.sha256) {
                Ok(to) => to,
                Err(e) => return StoreOutcome::failure(status::CANNOT_UNDERSTAND, e.to_string()),
            };
            details["kept_at"] = serde_json::json!(to);
            vigie_store::layout::commit_file_then(&received.path, &to, || {
                self.audit
                    .record(event("duplicate_kept_both", details))
                    .map_err(std::io::Error::other)
            })
        } else {
            self.audit
                .record(event("duplicate_kept_first", details))
                .map_err(std::io::Error::other)
        };
        match recorded {
            Ok(_) => {
                let what = if self.duplicates == DuplicatePolicy::KeepBoth {
                    "kept_both"
                } else {
                    "kept_first"
                };
                self.warn_duplicate(sop, held, received, what);
                StoreOutcome::success()
            }
            Err(e) => {
                let reason = format!("duplicate not recorded: {e}");
                self.out_of_space(&reason);
                StoreOutcome::failure(status::OUT_OF_RESOURCES, reason)
            }
        }
    }

    /// The warning and the metric of a duplicate (UIDs, AE titles and
    /// hashes only: no patient identifiers in the log).
    fn warn_duplicate(
        &self,
        sop_instance_uid: &str,
        held: &vigie_store::HeldInstance,
        received: &ReceivedInstance,
        what: &str,
    ) {
        tracing::warn!(
            sop_instance_uid,
            policy = self.duplicates.as_str(),
            outcome = what,
            held_from = %held.calling_ae_title,
            held_sha256 = %held.sha256,
            received_from = %received.calling_ae_title,
            received_sha256 = %received.sha256,
            "instance received again with other content"
        );
        self.metrics
            .inc(DUPLICATES, DUPLICATES_HELP, &[("outcome", what)]);
    }

    /// The review a reviewer's SR carries, checked against the catalog
    /// (the job and result it names, the verdict and label); `None` for
    /// any other instance. A refusal is audited by the desk.
    fn review_in(
        &self,
        file: &DicomFile,
        received: &ReceivedInstance,
        source: Source,
    ) -> Result<Option<Checked>, StoreOutcome> {
        let caller = &received.calling_ae_title;
        let authenticated_as = match source {
            Source::Dimse => format!("AE {caller}"),
            Source::Stow => format!("token {caller}"),
        };
        let document = match vigie_dicom_io::review::read_review(file) {
            Ok(None) => return Ok(None),
            Ok(Some(document)) => document,
            Err(e) => {
                let reason = e.to_string();
                self.reviews.refused_unread(
                    None,
                    vigie_store::ReviewVia::Dicom,
                    &authenticated_as,
                    "malformed",
                    &reason,
                );
                return Err(StoreOutcome::failure(status::CANNOT_UNDERSTAND, reason));
            }
        };
        if !self.reviews.may_send_reviews(caller) {
            let reason = "this sender may not send reviews (results.review_senders)";
            self.reviews.refused_unread(
                None,
                vigie_store::ReviewVia::Dicom,
                &authenticated_as,
                "sender_not_allowed",
                reason,
            );
            return Err(StoreOutcome::failure(status::NOT_AUTHORIZED, reason));
        }
        use vigie_dicom_io::review::ReviewedVerdict;
        let request = ReviewRequest {
            job_id: None,
            results: document.referenced,
            verdict: match document.verdict {
                ReviewedVerdict::Accept => vigie_store::Verdict::Accept,
                ReviewedVerdict::Reject => vigie_store::Verdict::Reject,
                ReviewedVerdict::Correct => vigie_store::Verdict::Correct,
            },
            label: document.corrected,
            comment: document.comment,
            reviewer: document.reviewer.unwrap_or_else(|| caller.clone()),
            via: vigie_store::ReviewVia::Dicom,
            authenticated_as,
            source_sop_instance_uid: Some(document.sop_instance_uid),
        };
        match self.reviews.check(&request) {
            Ok(checked) => Ok(Some(checked)),
            Err(ReviewError::Refused(refusal)) => Err(StoreOutcome::failure(
                status::CANNOT_UNDERSTAND,
                refusal.to_string(),
            )),
            Err(other) => Err(StoreOutcome::failure(
                status::OUT_OF_RESOURCES,
                format!("review not checked: {other}"),
            )),
        }
    }
}

/// Instances larger than this get no decoded-pixel hash at reception.
const PIXEL_HASH_MAX_BYTES: u64 = 64 << 20;

/// How long the pixel-hash thread gathers records before writing them.
const PIXEL_RECORDS_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Most records written in one transaction.
const PIXEL_RECORDS_BATCH: usize = 64;

/// The copy held, as an audit record names it.
fn held_details(held: &vigie_store::HeldInstance) -> serde_json::Value {
    serde_json::json!({
        "file_sha256": held.sha256,
        "calling_ae_title": held.calling_ae_title,
        "study_instance_uid": held.study_instance_uid,
        "series_instance_uid": held.series_instance_uid,
        "path": held.path,
    })
}

/// The decoded-pixel records, off the acknowledgement path: for each stored
/// instance, decode the stored sample values (no LUT) and record their
/// SHA-256 (`f32` little endian, `[frame][row][column][sample]`), which
/// does not depend on the transfer syntax of a lossless transfer.
///
/// Instances are gathered for up to `linger` after the first one (or until
/// [`PIXEL_RECORDS_BATCH`] have arrived), then decoded and their records
/// written in one transaction: one fsync for many instances. Written one by
/// one, they would add a flush of the disk and a turn at the audit log per
/// instance, both of which the acknowledgement of the next instance waits
/// behind. When the queue closes, what was gathered is written at once.
fn hash_pixels(
    audit: &Audit,
    queue: &std::sync::mpsc::Receiver<InstanceRecord>,
    linger: std::time::Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Ok(first) = queue.recv() {
        let deadline = std::time::Instant::now() + linger;
        let mut records = vec![first];
        while records.len() < PIXEL_RECORDS_BATCH {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match queue.recv_timeout(left) {
                Ok(record) => records.push(record),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // A panic in a decoder fails that instance's record only: the
        // thread keeps hashing the next ones.
        let events: Vec<AuditEvent> = records
            .iter()
            .map(|record| {
                std::panic::catch_unwind(|| pixel_event(record)).unwrap_or_else(|panic| {
                    AuditEvent::new(
                        EventKind::InstancePixels,
                        "failed",
                        serde_json::json!({
                            "error": format!("decoder panicked: {}", vigie_dicom_io::pixels::panic_message(&panic)),
                            "file_sha256": record.sha256,
                        }),
                    )
                    .instance(
                        Some(&record.study_instance_uid),
                        Some(&record.sop_instance_uid),
                    )
                })
            })
            .collect();
        // A failure is logged by the audit trail; the instances are stored.
        let _ = audit.record_all(&events);
    }
}

/// The `instance_pixels` audit event of a stored instance.
fn pixel_event(record: &InstanceRecord) -> AuditEvent {
    let started = std::time::Instant::now();
    let event = if record.size > PIXEL_HASH_MAX_BYTES {
        // Decoding needs the whole instance in memory, twice over as
        // floats: not in the background of a receiving appliance.
        AuditEvent::new(
            EventKind::InstancePixels,
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
    } else {
        match DicomFile::open(&record.path).and_then(|f| f.decode_stored()) {
            Ok(pixels) => AuditEvent::new(
                EventKind::InstancePixels,
                "ok",
                serde_json::json!({
                    "pixels_sha256": vigie_analysis::hash_samples(&pixels.data),
                    "frames": pixels.frames,
                    "rows": pixels.rows,
                    "columns": pixels.columns,
                    "samples_per_pixel": pixels.samples_per_pixel,
                    "file_sha256": record.sha256,
                    "decode_ms": started.elapsed().as_secs_f64() * 1000.0,
                }),
            ),
            Err(e) => AuditEvent::new(
                EventKind::InstancePixels,
                "failed",
                serde_json::json!({ "error": e.to_string(), "file_sha256": record.sha256 }),
            ),
        }
    };
    event.instance(
        Some(&record.study_instance_uid),
        Some(&record.sop_instance_uid),
    )
}

/// Error comments go on the wire (64 characters) and in logs: keep the
/// head, which says what failed.
impl Ingest {
    /// Store a staged instance (checks, durable commit, index, audit
    /// record) and say what to answer. Refusals are not audited here: the
    /// caller knows its protocol's context and calls [`Ingest::refused`].
    pub fn store_from(&self, received: ReceivedInstance, source: Source) -> StoreOutcome {
        self.store_checked(received, source, None).outcome
    }

    /// [`Ingest::store_from`], refusing with A900 an instance of another
    /// study than `study` (STOW-RS to `/studies/{study}`), with the study
    /// and series UIDs read from the instance's header (one parse).
    pub fn store_checked(
        &self,
        received: ReceivedInstance,
        source: Source,
        study: Option<&str>,
    ) -> Stored {
        let mut uids = None;
        let outcome = match self.try_store(&received, source, study, &mut uids) {
            Ok(record) => {
                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                self.backlog.stored(&record.study_instance_uid);
                self.metrics
                    .inc(STORED, STORED_HELP, &[("source", source.as_str())]);
                if let Ok(pixels) = self.pixels.lock()
                    && let Some(pixels) = pixels.as_ref()
                {
                    let _ = pixels.send(record);
                }
                StoreOutcome::success()
            }
            Err(outcome) => {
                let _ = std::fs::remove_file(&received.path);
                outcome
            }
        };
        let (study_instance_uid, series_instance_uid) = uids.unzip();
        Stored {
            outcome,
            study_instance_uid,
            series_instance_uid,
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
        // A staging write that failed for lack of space: the refusal must
        // still reach the audit trail.
        self.out_of_space(reason);
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
                EventKind::InstanceRefused,
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

    fn admission(&self) -> Option<StoreOutcome> {
        self.space_admission()
    }

    fn find(
        &self,
        request: vigie_dicom_io::net::scp::FindRequest,
    ) -> vigie_dicom_io::net::scp::FindAnswer {
        let Some(web) = &self.web else {
            return vigie_dicom_io::net::scp::FindAnswer {
                matches: Vec::new(),
                status: status::SOP_CLASS_NOT_SUPPORTED,
                comment: Some("no query service (dicom.query)".into()),
                unsupported_keys: false,
            };
        };
        let (answer, asked) = crate::query_scp::answer(web.as_ref(), &request);
        // Keywords only, never the values (patient identifiers).
        tracing::info!(
            calling = %request.calling_ae_title,
            level = %asked.level,
            keys = ?asked.keys,
            matches = answer.matches.len(),
            status = format!("0x{:04X}", answer.status),
            "C-FIND answered"
        );
        self.metrics.inc(
            "vigie_dicom_queries_total",
            "C-FIND requests answered, by outcome (ok, failed).",
            &[(
                "outcome",
                if answer.status == status::SUCCESS {
                    "ok"
                } else {
                    "failed"
                },
            )],
        );
        self.audit.note(AuditEvent::new(
            EventKind::DicomQuery,
            if answer.status == status::SUCCESS {
                "ok"
            } else {
                "failed"
            },
            serde_json::json!({
                "calling_ae_title": request.calling_ae_title,
                "model": request.model,
                "level": asked.level,
                "keys": asked.keys,
                "matches": answer.matches.len(),
                "status": format!("0x{:04X}", answer.status),
                "comment": answer.comment,
            }),
        ));
        answer
    }

    fn commitment_report(
        &self,
        report: vigie_dicom_io::net::commitment::CommitmentReport,
    ) -> (u16, Option<String>) {
        match &self.commitment {
            Some(pipeline) => pipeline.apply_report(&report),
            None => (
                status::PROCESSING_FAILURE,
                Some("no storage commitment requested by this AE".into()),
            ),
        }
    }

    fn get(
        &self,
        request: vigie_dicom_io::net::scp::RetrieveRequest,
    ) -> vigie_dicom_io::net::scp::RetrieveAnswer {
        use vigie_dicom_io::net::scp::RetrieveAnswer;
        let Some(web) = &self.web else {
            return RetrieveAnswer::refused(
                status::SOP_CLASS_NOT_SUPPORTED,
                "no retrieve service (dicom.query)",
            );
        };
        match crate::query_scp::instances(web.as_ref(), &request.identifier, &request.model) {
            Ok((files, asked)) => {
                tracing::info!(
                    calling = %request.calling_ae_title,
                    level = %asked.level,
                    keys = ?asked.keys,
                    instances = files.len(),
                    "C-GET: sending back"
                );
                RetrieveAnswer {
                    files,
                    destination: None,
                    status: status::SUCCESS,
                    comment: None,
                }
            }
            Err((code, comment, _)) => RetrieveAnswer::refused(code, comment),
        }
    }

    fn retrieve(
        &self,
        request: vigie_dicom_io::net::scp::RetrieveRequest,
    ) -> vigie_dicom_io::net::scp::RetrieveAnswer {
        use vigie_dicom_io::net::scp::{MOVE_DESTINATION_UNKNOWN, RetrieveAnswer};
        let refuse = |status: u16, comment: String| RetrieveAnswer::refused(status, comment);
        let Some(web) = &self.web else {
            return refuse(
                status::SOP_CLASS_NOT_SUPPORTED,
                "no retrieve service (dicom.query)".into(),
            );
        };
        let Some(remote) = self.move_destinations.get(request.destination.trim()) else {
            self.audit.note(AuditEvent::new(
                EventKind::DicomRetrieve,
                "refused",
                serde_json::json!({
                    "calling_ae_title": request.calling_ae_title,
                    "destination": request.destination,
                    "status": format!("0x{MOVE_DESTINATION_UNKNOWN:04X}"),
                    "reason": "move destination unknown (not a [destinations.*] AE title)",
                }),
            ));
            return refuse(
                MOVE_DESTINATION_UNKNOWN,
                format!("move destination {} unknown", request.destination.trim()),
            );
        };
        match crate::query_scp::instances(web.as_ref(), &request.identifier, &request.model) {
            Ok((files, asked)) => {
                tracing::info!(
                    calling = %request.calling_ae_title,
                    destination = %request.destination,
                    level = %asked.level,
                    keys = ?asked.keys,
                    instances = files.len(),
                    "C-MOVE: sending"
                );
                RetrieveAnswer {
                    files,
                    destination: Some(remote.clone()),
                    status: status::SUCCESS,
                    comment: None,
                }
            }
            Err((code, comment, _)) => refuse(code, comment),
        }
    }

    fn event(&self, event: ScpEvent) {
        // UIDs and AE titles only: no patient identifiers in the log.
        match event {
            ScpEvent::Accepted {
                association: _,
                peer,
                calling_ae_title,
                contexts,
                tls,
            } => {
                let protocol = tls.as_ref().map_or("none", |t| t.protocol.as_str());
                tracing::info!(%peer, calling = %calling_ae_title, contexts, tls = protocol, "association accepted");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "accepted")]);
                self.audit.note(AuditEvent::new(
                    EventKind::Association,
                    "accepted",
                    serde_json::json!({
                        "calling_ae_title": calling_ae_title,
                        "peer": peer.to_string(),
                        "presentation_contexts": contexts,
                        "tls": tls,
                    }),
                ));
            }
            ScpEvent::Rejected { peer, reason } => {
                tracing::warn!(%peer, %reason, "association rejected");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "rejected")]);
                self.audit.note(AuditEvent::new(
                    EventKind::Association,
                    "rejected",
                    serde_json::json!({ "peer": peer.to_string(), "reason": reason }),
                ));
            }
            ScpEvent::Echoed { calling_ae_title } => {
                tracing::info!(calling = %calling_ae_title, "C-ECHO answered");
                self.audit.note(AuditEvent::new(
                    EventKind::Echo,
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
                association,
                calling_ae_title,
                stores,
            } => {
                self.association_ended(association, true);
                tracing::info!(calling = %calling_ae_title, stores, "association released");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "released")]);
                self.audit.note(AuditEvent::new(
                    EventKind::Association,
                    "released",
                    serde_json::json!({ "calling_ae_title": calling_ae_title, "stores": stores }),
                ));
            }
            ScpEvent::ConnectionsRefused {
                total,
                reasons,
                addresses,
                sample,
                period_s,
            } => {
                let summary: Vec<String> =
                    reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                tracing::warn!(
                    total,
                    addresses,
                    period_s,
                    reasons = %summary.join("; "),
                    "connections closed before association (summary)"
                );
                self.metrics.add(
                    ASSOCIATIONS,
                    ASSOCIATIONS_HELP,
                    &[("outcome", "refused_before_request")],
                    total,
                );
                self.audit.note(AuditEvent::new(
                    EventKind::ConnectionsRefused,
                    "refused",
                    serde_json::json!({
                        "total": total,
                        "addresses": addresses,
                        "sample_addresses": sample.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "period_s": period_s,
                        "reasons": reasons.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                    }),
                ));
            }
            ScpEvent::Queried {
                calling_ae_title,
                status: code,
                handled: false,
                ..
            } => {
                // Refused before the handler (identifier too long or
                // unreadable): on record here.
                tracing::warn!(calling = %calling_ae_title, status = format!("0x{code:04X}"), "C-FIND refused");
                self.metrics.inc(
                    "vigie_dicom_queries_total",
                    "C-FIND requests answered, by outcome (ok, failed).",
                    &[("outcome", "failed")],
                );
                self.audit.note(AuditEvent::new(
                    EventKind::DicomQuery,
                    "failed",
                    serde_json::json!({
                        "calling_ae_title": calling_ae_title,
                        "matches": 0,
                        "status": format!("0x{code:04X}"),
                        "reason": "refused before matching (identifier too long or unreadable)",
                    }),
                ));
            }
            ScpEvent::Moved {
                calling_ae_title,
                service,
                destination,
                completed,
                failed,
                warning,
                status: code,
                ..
            } => {
                tracing::info!(calling = %calling_ae_title, %destination, completed, failed, warning, status = format!("0x{code:04X}"), "{service} answered");
                self.metrics.inc(
                    "vigie_dicom_retrieves_total",
                    "C-MOVE and C-GET requests answered, by service and outcome (ok, failed).",
                    &[
                        ("service", service),
                        (
                            "outcome",
                            if code == status::SUCCESS {
                                "ok"
                            } else {
                                "failed"
                            },
                        ),
                    ],
                );
                self.audit.note(AuditEvent::new(
                    EventKind::DicomRetrieve,
                    if code == status::SUCCESS {
                        "ok"
                    } else {
                        "failed"
                    },
                    serde_json::json!({
                        "calling_ae_title": calling_ae_title,
                        "service": service,
                        "destination": destination,
                        "completed": completed,
                        "failed": failed,
                        "warning": warning,
                        "status": format!("0x{code:04X}"),
                    }),
                ));
            }
            ScpEvent::Aborted {
                association,
                calling_ae_title,
                reason,
            } => {
                self.association_ended(association, false);
                tracing::warn!(calling = %calling_ae_title, %reason, "association aborted");
                self.metrics
                    .inc(ASSOCIATIONS, ASSOCIATIONS_HELP, &[("outcome", "aborted")]);
                self.audit.note(AuditEvent::new(
                    EventKind::Association,
                    "aborted",
                    serde_json::json!({ "calling_ae_title": calling_ae_title, "reason": reason }),
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(dir: &std::path::Path, n: usize) -> InstanceRecord {
        let path = dir.join(format!("{n}.dcm"));
        std::fs::write(&path, b"not DICOM").unwrap();
        InstanceRecord {
            sop_instance_uid: format!("1.2.3.{n}"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: "1.2.3.0".into(),
            modality: Some("MR".into()),
            body_part: None,
            series_description: None,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae_title: "TEST".into(),
            path,
            size: 9,
            sha256: "00".repeat(32),
            attributes: Default::default(),
        }
    }

    fn pixel_records(audit: &Audit) -> Vec<vigie_audit::AuditRecord> {
        audit
            .records(&vigie_audit::Query {
                kind: Some("instance_pixels".into()),
                ..Default::default()
            })
            .unwrap()
    }

    #[test]
    fn pixel_records_are_gathered_then_written_together_and_at_once_when_the_queue_closes() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), "test", &Default::default()).unwrap();
        let (sender, queue) = std::sync::mpsc::channel();
        let hasher = audit.clone();
        // A linger far longer than the test: only the closing queue can
        // make the thread write before it.
        let thread =
            std::thread::spawn(move || hash_pixels(&hasher, &queue, Duration::from_secs(60)));
        for n in 0..3 {
            sender.send(record(dir.path(), n)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(pixel_records(&audit).is_empty(), "still gathering");
        let started = std::time::Instant::now();
        drop(sender);
        thread.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no linger at close"
        );
        let written = pixel_records(&audit);
        assert_eq!(written.len(), 3);
        let instances: Vec<_> = written
            .iter()
            .map(|r| r.sop_instance_uid.clone().unwrap())
            .collect();
        assert_eq!(instances, ["1.2.3.0", "1.2.3.1", "1.2.3.2"]);
        // Not DICOM: the record says why there is no pixel hash.
        assert!(written.iter().all(|r| r.outcome == "failed"));
    }
}
