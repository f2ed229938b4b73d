//! What the pipeline's parts report, as typed events. Each event is turned
//! into its audit record, its metrics and its log line here, in one place
//! (as `vigie_dicom_io::net::scp::ScpEvent` is for the DICOM listener), so
//! that the three never drift apart and the parts keep to their work.
//!
//! Most records are noted (group commit, a failure logged); those that
//! must be durable before the pipeline goes on (an analysis and the result
//! objects it made, before the job is done) are returned by
//! [`Pipeline::emit_durable`] for the caller to write together.

use std::time::Duration;

use vigie_audit::{AuditEvent, EventKind};
use vigie_dicom_io::net::scu::RemoteAe;
use vigie_inference::postprocess::Finding;
use vigie_store::{InstanceRecord, Job, NewJob, OutboxItem, StableStudy};

use super::Pipeline;

/// Raw outputs are recorded in full up to this many values; longer ones
/// (segmentation maps) by SHA-256 and length.
const RAW_OUTPUT_IN_FULL: usize = 256;

const JOBS_FINISHED: &str = "vigie_job_attempts_total";
const JOBS_FINISHED_HELP: &str = "Job attempts ended, by model and outcome (done, retry: failed and will retry, failed: gave up).";
const DELIVERIES: &str = "vigie_deliveries_total";
const DELIVERIES_HELP: &str = "Result instances sent, by destination and outcome (delivered, refused by the peer, failed to send).";
const COMMITMENTS: &str = "vigie_result_commitments_total";
const COMMITMENTS_HELP: &str = "Storage commitment of result instances, by destination and outcome (committed; failed: the destination did not commit it, it is sent again; requested; request_failed: the request could not be made, it is asked again).";
const STAGES: &str = "vigie_stage_duration_seconds";
const STAGES_HELP: &str = "Time per analysed image and stage (decode per instance; preprocess, inference, postprocess per frame), by model.";

/// The model that ran, as the records name it.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Its package.
    pub package: vigie_inference::ModelPackage,
    /// What ran it.
    pub execution: vigie_inference::backend::Execution,
}

/// What became of one result instance sent to a destination.
#[derive(Debug, Clone, Copy)]
pub enum Sent<'a> {
    /// The peer answered; `delivered` when with Success or a warning.
    Answered {
        /// Stored.
        delivered: bool,
        /// Its status.
        status: Option<u16>,
        /// Its comment.
        comment: Option<&'a str>,
    },
    /// The association or the send failed.
    Failed {
        /// Why.
        error: &'a str,
    },
}

/// Something the pipeline did.
#[derive(Debug)]
pub enum Event<'a> {
    /// The wall clock was set back: studies received "later than now"
    /// count from now.
    ClockWentBack {
        /// Studies clamped.
        studies: usize,
    },
    /// A study (or a late batch of it) is complete and routed.
    StudyComplete {
        /// The study.
        study: &'a StableStudy,
        /// The jobs created for it.
        jobs: &'a [NewJob],
        /// Why nothing applies, when nothing does.
        note: Option<&'a str>,
        /// The stable age it was quiet for.
        stable_age_s: f64,
        /// What closed it: `stable_age`, or `carrier_ended` (its
        /// association or STOW-RS request ended, plus the grace).
        closed_by: &'static str,
    },
    /// A worker loaded a model.
    ModelLoaded {
        /// The model.
        model: &'a vigie_inference::Model,
    },
    /// A worker could not load a job's model.
    ModelRefused {
        /// The job.
        job: &'a Job,
        /// Why.
        error: &'a str,
    },
    /// An analysed instance (its record written with its results').
    Analysed {
        /// The job.
        job: &'a Job,
        /// The instance.
        instance: &'a InstanceRecord,
        /// What the model found.
        analysis: &'a vigie_analysis::InstanceAnalysis,
        /// Its subgroup attributes (post-market surveillance).
        subgroups: &'a vigie_analysis::population::Subgroups,
        /// Instances in its model run.
        batch: usize,
        /// The model.
        model: &'a Ran,
        /// For a model comparing with prior studies: the images of those
        /// given to it (`None` for a model that takes none).
        priors: Option<&'a [super::priors::PriorUsed]>,
    },
    /// The search for a job's prior studies is over (a model that compares
    /// with them).
    PriorSearched {
        /// The job.
        job: &'a Job,
        /// What was asked and retrieved, the priors used and why not more.
        search: &'a super::priors::PriorSearch,
    },
    /// A result object written (its record goes with its analysis').
    ResultCreated {
        /// The job.
        job: &'a Job,
        /// SR, SEG or summary.
        kind: vigie_analysis::ResultKind,
        /// Its study.
        study_instance_uid: &'a str,
        /// Its series.
        series_instance_uid: &'a str,
        /// Its SOP Instance UID.
        sop_instance_uid: &'a str,
        /// The instance it is the result of.
        source: &'a InstanceRecord,
        /// The frame.
        frame: usize,
        /// Where it is.
        path: &'a std::path::Path,
        /// Its SHA-256.
        file_sha256: &'a str,
        /// The model.
        model: &'a Ran,
    },
    /// An instance of a job that could not be analysed (the others run).
    NotAnalysed {
        /// The job.
        job: &'a Job,
        /// The instance.
        instance: &'a InstanceRecord,
        /// Why.
        error: &'a str,
        /// The model that was to analyse it.
        model: &'a Ran,
    },
    /// A panic caught in a worker: the attempt fails, the worker goes on.
    WorkerPanicked {
        /// The job.
        job: &'a Job,
        /// The panic's message.
        message: &'a str,
    },
    /// A job attempt finished.
    JobDone {
        /// The job.
        job: &'a Job,
        /// Result objects.
        results: usize,
        /// Instances not analysed, if any.
        notes: Option<&'a str>,
        /// Time spent.
        took: Duration,
    },
    /// A job attempt failed.
    JobFailed {
        /// The job.
        job: &'a Job,
        /// Why.
        error: &'a str,
        /// It will be retried.
        will_retry: bool,
        /// The limit.
        max_attempts: u32,
    },
    /// A batch of results was sent to a destination.
    BatchSent {
        /// Destination name.
        destination: &'a str,
        /// Time the send took (association included).
        took: Duration,
        /// Instances stored by the peer.
        delivered: usize,
        /// Instances in the batch.
        of: usize,
    },
    /// A batch could not be sent (association refused, connection lost):
    /// its items are retried.
    BatchFailed {
        /// Destination name.
        destination: &'a str,
        /// Why.
        error: &'a str,
        /// Instances in the batch.
        of: usize,
    },
    /// One result instance sent (or not) to a destination.
    Delivery {
        /// The outbox item.
        item: &'a OutboxItem,
        /// Destination name.
        destination: &'a str,
        /// Its AE.
        remote: &'a RemoteAe,
        /// What became of it.
        sent: Sent<'a>,
    },
    /// A refusal the destination would repeat: the item is failed at once.
    RefusedForGood {
        /// The outbox item.
        item: &'a OutboxItem,
        /// Destination name.
        destination: &'a str,
        /// Status.
        status: &'a str,
        /// Comment.
        comment: &'a str,
    },
    /// A refusal worth retrying.
    RefusedForNow {
        /// The outbox item.
        item: &'a OutboxItem,
        /// Destination name.
        destination: &'a str,
        /// Status.
        status: &'a str,
        /// Comment.
        comment: &'a str,
    },
    /// A storage commitment request was made (recorded before it went
    /// out) for these items.
    CommitmentRequested {
        /// Destination name.
        destination: &'a str,
        /// Its AE.
        remote: &'a RemoteAe,
        /// Transaction UID.
        transaction: &'a str,
        /// The items named.
        items: &'a [OutboxItem],
    },
    /// A storage commitment request could not be made or was refused: it
    /// is made again later.
    CommitmentRequestFailed {
        /// Destination name.
        destination: &'a str,
        /// Transaction UID.
        transaction: &'a str,
        /// Why.
        error: &'a str,
        /// Items it named.
        items: usize,
    },
    /// The destination committed a result: delivered.
    Committed {
        /// The outbox item.
        item: &'a OutboxItem,
        /// Destination name.
        destination: &'a str,
        /// Transaction UID.
        transaction: &'a str,
    },
    /// The destination did not commit a result: it is sent again, or
    /// given up.
    NotCommitted {
        /// The outbox item.
        item: &'a OutboxItem,
        /// Destination name.
        destination: &'a str,
        /// Transaction UID.
        transaction: &'a str,
        /// Why (the failure reason, or not named in the report).
        reason: &'a str,
        /// Whether it is sent again (false: given up).
        sent_again: bool,
    },
    /// A storage commitment report that changes nothing: from another AE
    /// than the transaction's destination (`refused`), or for a transaction
    /// that awaits no report (`ignored`: superseded, already reported, or
    /// unknown).
    ReportNotApplied {
        /// `refused` or `ignored`.
        outcome: &'static str,
        /// Calling AE title it came from.
        calling_ae_title: &'a str,
        /// Transaction UID.
        transaction: &'a str,
        /// Why.
        why: &'a str,
    },
    /// An item past `delivery.give_up_after_h`.
    Undeliverable {
        /// The outbox item.
        item: &'a OutboxItem,
        /// The last error.
        error: &'a str,
    },
}

impl Pipeline {
    /// Log and count `event`, and note its audit records.
    pub fn emit(&self, event: Event<'_>) {
        for record in self.emit_durable(event) {
            self.audit.note(record);
        }
    }

    /// Log and count `event`, and return its audit records for the caller
    /// to write durably (with others, in one transaction).
    pub fn emit_durable(&self, event: Event<'_>) -> Vec<AuditEvent> {
        self.observe(&event);
        audit_records(&event)
    }

    /// The metrics and the log line of an event.
    fn observe(&self, event: &Event<'_>) {
        let m = &self.metrics;
        match *event {
            Event::ClockWentBack { studies } => tracing::warn!(
                studies,
                "the clock went back: studies received later than now by the clock wait the stable age from now (check NTP)"
            ),
            Event::StudyComplete {
                study,
                jobs,
                note,
                closed_by,
                ..
            } => {
                let instances: usize = study.series.iter().map(|s| s.instances).sum();
                match note {
                    Some(note) => tracing::warn!(
                        study = %study.study_instance_uid,
                        generation = study.generation,
                        instances,
                        %note,
                        "study complete, nothing to run"
                    ),
                    None => tracing::info!(
                        study = %study.study_instance_uid,
                        generation = study.generation,
                        instances,
                        closed_by,
                        jobs = jobs.len(),
                        models = ?jobs.iter().map(|j| j.model.as_str()).collect::<Vec<_>>(),
                        "study complete, jobs queued"
                    ),
                }
            }
            Event::ModelLoaded { model } => {
                let package = model.package();
                m.add(
                    "vigie_model_loads_total",
                    "Models loaded by a worker (one warm session per worker and model), by model, version and execution provider.",
                    &[
                        ("model", package.id()),
                        ("version", package.version()),
                        ("provider", &model.execution().provider),
                    ],
                    1,
                );
            }
            Event::ModelRefused { job, .. } => m.inc(
                "vigie_model_load_failures_total",
                "Models a worker could not load (the job fails or retries), by model.",
                &[("model", &job.model)],
            ),
            Event::Analysed {
                job,
                analysis,
                instance,
                ..
            } => {
                let observe = |stage: &str, ms: f64| {
                    m.observe(
                        STAGES,
                        STAGES_HELP,
                        &[("model", &job.model), ("stage", stage)],
                        ms / 1000.0,
                    );
                };
                observe("decode", analysis.decode_ms);
                for (frame, result) in analysis.results.iter().enumerate() {
                    observe("preprocess", result.timings.preprocess_ms);
                    observe("inference", result.timings.inference_ms);
                    observe("postprocess", result.timings.postprocess_ms);
                    log_finding(job, &instance.sop_instance_uid, frame, &result.finding);
                }
            }
            Event::ResultCreated { .. } | Event::NotAnalysed { .. } => {}
            Event::PriorSearched { job, search } => {
                let outcome = search.outcome();
                m.inc(
                    "vigie_prior_searches_total",
                    "Searches for a job's prior studies (models comparing with them), by model and outcome (used: one for each prior input, partial, missing).",
                    &[("model", &job.model), ("outcome", outcome)],
                );
                // UIDs and reasons only: the query's Patient ID is never logged.
                match &search.missing {
                    None => tracing::info!(
                        job = job.id,
                        candidates = search.candidates,
                        retrieved = search.retrieved.len(),
                        used = search.used.len(),
                        "prior studies found for the job"
                    ),
                    Some(reason) => tracing::warn!(
                        job = job.id,
                        candidates = search.candidates,
                        retrieved = search.retrieved.len(),
                        used = search.used.len(),
                        %reason,
                        "fewer prior studies than the model takes"
                    ),
                }
            }
            Event::WorkerPanicked { job, message } => {
                tracing::error!(job = job.id, panic = %message, "analysis panicked; the attempt fails and the worker goes on");
                m.inc(
                    "vigie_worker_panics_total",
                    "Panics caught in worker threads (each failed one job attempt; the worker went on).",
                    &[("model", &job.model)],
                );
            }
            Event::JobDone {
                job,
                results,
                notes,
                took,
            } => {
                m.inc(
                    JOBS_FINISHED,
                    JOBS_FINISHED_HELP,
                    &[("model", &job.model), ("outcome", "done")],
                );
                m.observe(
                    "vigie_job_duration_seconds",
                    "Time a worker spent on a job (all its instances, results written), by model.",
                    &[("model", &job.model)],
                    took.as_secs_f64(),
                );
                tracing::info!(
                    job = job.id,
                    study = %job.study_instance_uid,
                    model = %job.model,
                    results,
                    destinations = ?job.destinations,
                    ms = took.as_millis() as u64,
                    notes = notes.unwrap_or(""),
                    "job done"
                );
            }
            Event::JobFailed {
                job,
                error,
                will_retry,
                ..
            } => {
                m.inc(
                    JOBS_FINISHED,
                    JOBS_FINISHED_HELP,
                    &[
                        ("model", &job.model),
                        ("outcome", if will_retry { "retry" } else { "failed" }),
                    ],
                );
                if will_retry {
                    tracing::warn!(job = job.id, attempt = job.attempts, %error, "job attempt failed, will retry");
                } else {
                    tracing::error!(job = job.id, attempts = job.attempts, %error, "job failed, giving up");
                }
            }
            Event::BatchSent {
                destination,
                took,
                delivered,
                of,
            } => {
                m.observe(
                    "vigie_delivery_duration_seconds",
                    "Time to send one batch of results by C-STORE (association included), by destination.",
                    &[("destination", destination)],
                    took.as_secs_f64(),
                );
                if delivered == of {
                    tracing::info!(destination, sent = delivered, of, "results delivered");
                } else {
                    tracing::warn!(
                        destination,
                        sent = delivered,
                        of,
                        "results not all delivered"
                    );
                }
            }
            Event::BatchFailed {
                destination,
                error,
                of,
            } => tracing::warn!(destination, %error, of, "delivery failed, will retry"),
            Event::Delivery {
                destination, sent, ..
            } => {
                let outcome = match sent {
                    Sent::Answered {
                        delivered: true, ..
                    } => "delivered",
                    Sent::Answered { .. } => "refused",
                    Sent::Failed { .. } => "failed",
                };
                m.inc(
                    DELIVERIES,
                    DELIVERIES_HELP,
                    &[("destination", destination), ("outcome", outcome)],
                );
            }
            Event::RefusedForGood {
                item,
                destination,
                status,
                comment,
            } => tracing::error!(
                destination,
                job = item.job_id,
                sop_instance_uid = %item.sop_instance_uid,
                %status,
                comment,
                "result refused by the destination (permanent): not retried; GET /api/v1/jobs?delivery=failed"
            ),
            Event::RefusedForNow {
                item,
                destination,
                status,
                comment,
            } => tracing::warn!(
                destination,
                job = item.job_id,
                sop_instance_uid = %item.sop_instance_uid,
                %status,
                comment,
                "result refused by the destination (transient): will retry"
            ),
            Event::CommitmentRequested {
                destination,
                transaction,
                items,
                ..
            } => {
                m.inc(
                    COMMITMENTS,
                    COMMITMENTS_HELP,
                    &[("destination", destination), ("outcome", "requested")],
                );
                tracing::info!(
                    destination,
                    transaction,
                    instances = items.len(),
                    "storage commitment requested"
                );
            }
            Event::CommitmentRequestFailed {
                destination,
                transaction,
                error,
                items,
            } => {
                m.inc(
                    COMMITMENTS,
                    COMMITMENTS_HELP,
                    &[("destination", destination), ("outcome", "request_failed")],
                );
                tracing::warn!(
                    destination,
                    transaction,
                    instances = items,
                    %error,
                    "storage commitment request failed, will ask again"
                );
            }
            Event::Committed {
                item, destination, ..
            } => {
                m.inc(
                    COMMITMENTS,
                    COMMITMENTS_HELP,
                    &[("destination", destination), ("outcome", "committed")],
                );
                tracing::debug!(destination, job = item.job_id, sop_instance_uid = %item.sop_instance_uid, "result committed");
            }
            Event::NotCommitted {
                item,
                destination,
                transaction,
                reason,
                sent_again,
            } => {
                m.inc(
                    COMMITMENTS,
                    COMMITMENTS_HELP,
                    &[("destination", destination), ("outcome", "failed")],
                );
                tracing::warn!(
                    destination,
                    job = item.job_id,
                    sop_instance_uid = %item.sop_instance_uid,
                    transaction,
                    reason,
                    sent_again,
                    "result not committed by the destination"
                );
            }
            Event::ReportNotApplied {
                outcome,
                calling_ae_title,
                transaction,
                why,
            } => tracing::warn!(
                calling = calling_ae_title,
                transaction,
                outcome,
                why,
                "storage commitment report not applied"
            ),
            Event::Undeliverable { item, error } => tracing::error!(
                item = item.id,
                destination = %item.destination,
                %error,
                "result undeliverable, giving up"
            ),
        }
    }
}

/// The audit records of an event (none for those only logged and
/// counted).
fn audit_records(event: &Event<'_>) -> Vec<AuditEvent> {
    vec![match *event {
        // The completion, then the routing decision.
        Event::StudyComplete {
            study,
            jobs,
            note,
            stable_age_s,
            closed_by,
        } => return study_records(study, jobs, note, stable_age_s, closed_by).to_vec(),
        Event::ModelLoaded { model } => {
            let package = model.package();
            AuditEvent::new(
                EventKind::ModelLoaded,
                "ok",
                serde_json::json!({
                    "sha256": package.sha256(),
                    "package": package.dir(),
                    "execution": model.execution(),
                    "regulatory_status": package.manifest().model.regulatory_status,
                }),
            )
            .model(package.id(), package.version())
        }
        Event::ModelRefused { job, error } => {
            let mut event = AuditEvent::new(
                EventKind::ModelRefused,
                "failed",
                serde_json::json!({ "error": error, "job_id": job.id }),
            );
            event.model_id = Some(job.model.clone());
            event
        }
        Event::Analysed {
            job,
            instance,
            analysis,
            subgroups,
            batch,
            model,
            priors,
        } => inference_record(job, instance, analysis, subgroups, batch, model, priors),
        Event::PriorSearched { job, search } => AuditEvent::new(
            EventKind::PriorSearch,
            search.outcome(),
            serde_json::json!({
                "job_id": job.id,
                "attempt": job.attempts,
                "model": job.model,
                "candidates": search.candidates,
                "retrieved": search
                    .retrieved
                    .iter()
                    .map(|(study, instances)| serde_json::json!({
                        "study_instance_uid": study,
                        "instances": instances,
                    }))
                    .collect::<Vec<_>>(),
                "priors": search.used,
                "reason": search.missing,
                "error": search.error,
            }),
        )
        .instance(Some(&job.study_instance_uid), None),
        Event::ResultCreated {
            job,
            kind,
            study_instance_uid,
            series_instance_uid,
            sop_instance_uid,
            source,
            frame,
            path,
            file_sha256,
            model,
        } => {
            let manifest = model.package.manifest();
            AuditEvent::new(
                EventKind::ResultCreated,
                "ok",
                serde_json::json!({
                    "job_id": job.id,
                    "kind": kind,
                    "series_instance_uid": series_instance_uid,
                    "source_sop_instance_uid": source.sop_instance_uid,
                    "frame": frame,
                    "path": path,
                    "file_sha256": file_sha256,
                }),
            )
            .instance(Some(study_instance_uid), Some(sop_instance_uid))
            .model(&manifest.model.id, &manifest.model.version)
        }
        Event::NotAnalysed {
            job,
            instance,
            error,
            model,
        } => AuditEvent::new(
            EventKind::Inference,
            "failed",
            serde_json::json!({
                "job_id": job.id,
                "attempt": job.attempts,
                "rule": job.rule,
                "input": { "file_sha256": instance.sha256 },
                "error": error,
            }),
        )
        .instance(
            Some(&instance.study_instance_uid),
            Some(&instance.sop_instance_uid),
        )
        .model(model.package.id(), model.package.version()),
        Event::JobDone {
            job,
            results,
            notes,
            took,
        } => AuditEvent::new(
            EventKind::JobDone,
            "ok",
            serde_json::json!({
                "job_id": job.id,
                "rule": job.rule,
                "attempt": job.attempts,
                "results": results,
                "destinations": job.destinations,
                "notes": notes,
                "ms": took.as_millis() as u64,
            }),
        )
        .instance(Some(&job.study_instance_uid), None),
        Event::JobFailed {
            job,
            error,
            will_retry,
            max_attempts,
        } => AuditEvent::new(
            EventKind::JobFailed,
            if will_retry { "will_retry" } else { "gave_up" },
            serde_json::json!({
                "job_id": job.id,
                "rule": job.rule,
                "model": job.model,
                "attempt": job.attempts,
                "max_attempts": max_attempts,
                "error": error,
            }),
        )
        .instance(Some(&job.study_instance_uid), None),
        Event::Delivery {
            item,
            destination,
            remote,
            sent,
        } => {
            let address = format!("{}:{}", remote.host, remote.port);
            let (outcome, details) = match sent {
                Sent::Answered {
                    delivered,
                    status,
                    comment,
                } => (
                    if delivered { "delivered" } else { "refused" },
                    serde_json::json!({
                        "destination": destination,
                        "ae_title": remote.ae_title,
                        "address": address,
                        "tls": remote.tls.is_some(),
                        "status": status.map(|s| format!("0x{s:04X}")),
                        "comment": comment,
                        "attempt": item.attempts + 1,
                        "job_id": item.job_id,
                    }),
                ),
                Sent::Failed { error } => (
                    "failed",
                    serde_json::json!({
                        "destination": destination,
                        "ae_title": remote.ae_title,
                        "address": address,
                        "tls": remote.tls.is_some(),
                        "error": error,
                        "attempt": item.attempts + 1,
                        "job_id": item.job_id,
                    }),
                ),
            };
            AuditEvent::new(EventKind::ResultDelivery, outcome, details)
                .instance(Some(&item.study_instance_uid), Some(&item.sop_instance_uid))
        }
        Event::CommitmentRequested {
            destination,
            remote,
            transaction,
            items,
        } => AuditEvent::new(
            EventKind::ResultCommitment,
            "requested",
            serde_json::json!({
                "destination": destination,
                "ae_title": remote.ae_title,
                "address": format!("{}:{}", remote.host, remote.port),
                "tls": remote.tls.is_some(),
                "transaction_uid": transaction,
                "sop_instance_uids": items.iter().map(|i| i.sop_instance_uid.as_str()).collect::<Vec<_>>(),
                "jobs": items.iter().map(|i| i.job_id).collect::<std::collections::BTreeSet<_>>(),
            }),
        ),
        Event::CommitmentRequestFailed {
            destination,
            transaction,
            error,
            items,
        } => AuditEvent::new(
            EventKind::ResultCommitment,
            "request_failed",
            serde_json::json!({
                "destination": destination,
                "transaction_uid": transaction,
                "instances": items,
                "error": error,
            }),
        ),
        Event::Committed {
            item,
            destination,
            transaction,
        } => AuditEvent::new(
            EventKind::ResultCommitment,
            "committed",
            serde_json::json!({
                "destination": destination,
                "transaction_uid": transaction,
                "job_id": item.job_id,
            }),
        )
        .instance(Some(&item.study_instance_uid), Some(&item.sop_instance_uid)),
        Event::NotCommitted {
            item,
            destination,
            transaction,
            reason,
            sent_again,
        } => AuditEvent::new(
            EventKind::ResultCommitment,
            "failed",
            serde_json::json!({
                "destination": destination,
                "transaction_uid": transaction,
                "job_id": item.job_id,
                "reason": reason,
                "then": if sent_again { "sent again" } else { "given up" },
            }),
        )
        .instance(Some(&item.study_instance_uid), Some(&item.sop_instance_uid)),
        Event::ReportNotApplied {
            outcome,
            calling_ae_title,
            transaction,
            why,
        } => AuditEvent::new(
            EventKind::ResultCommitment,
            outcome,
            serde_json::json!({
                "calling_ae_title": calling_ae_title,
                "transaction_uid": transaction,
                "reason": why,
            }),
        ),
        Event::ClockWentBack { .. }
        | Event::WorkerPanicked { .. }
        | Event::BatchSent { .. }
        | Event::BatchFailed { .. }
        | Event::RefusedForGood { .. }
        | Event::RefusedForNow { .. }
        | Event::Undeliverable { .. } => return Vec::new(),
    }]
}

/// The two records of a completed study: `study_complete`, then
/// `routing_decision`.
fn study_records(
    study: &StableStudy,
    jobs: &[NewJob],
    note: Option<&str>,
    stable_age_s: f64,
    closed_by: &str,
) -> [AuditEvent; 2] {
    let instances: usize = study.series.iter().map(|s| s.instances).sum();
    let uid = Some(study.study_instance_uid.as_str());
    [
        AuditEvent::new(
            EventKind::StudyComplete,
            "ok",
            serde_json::json!({
                "generation": study.generation,
                "instances": instances,
                "series": study.series,
                "stable_age_s": stable_age_s,
                "closed_by": closed_by,
            }),
        )
        .instance(uid, None),
        AuditEvent::new(
            EventKind::RoutingDecision,
            if jobs.is_empty() { "none" } else { "routed" },
            serde_json::json!({
                "generation": study.generation,
                "jobs": jobs,
                "reason": note,
            }),
        )
        .instance(uid, None),
    ]
}

/// The audit record of one analysed instance.
fn inference_record(
    job: &Job,
    instance: &InstanceRecord,
    analysis: &vigie_analysis::InstanceAnalysis,
    subgroups: &vigie_analysis::population::Subgroups,
    batch: usize,
    model: &Ran,
    priors: Option<&[super::priors::PriorUsed]>,
) -> AuditEvent {
    let package = &model.package;
    let frames: Vec<serde_json::Value> = analysis
        .results
        .iter()
        .enumerate()
        .map(|(frame, r)| {
            let raw = if r.raw_output.len() <= RAW_OUTPUT_IN_FULL {
                serde_json::json!(r.raw_output)
            } else {
                serde_json::json!({
                    "sha256": vigie_analysis::hash_samples(&r.raw_output),
                    "values": r.raw_output.len(),
                })
            };
            serde_json::json!({
                "frame": frame,
                "raw_output": raw,
                "finding": r.finding,
                "preprocess": r.preprocess,
                "timings_ms": r.timings,
            })
        })
        .collect();
    let decision = analysis.results.first().map(|r| match &r.finding {
        Finding::Classification(c) => c.decision.clone(),
        Finding::Segmentation(_) => "segmentation".to_string(),
    });
    let mut details = serde_json::json!({
        "job_id": job.id,
        "attempt": job.attempts,
        "rule": job.rule,
        "input": {
            "sop_class_uid": instance.sop_class_uid,
            "series_instance_uid": instance.series_instance_uid,
            "transfer_syntax": instance.transfer_syntax,
            "file_sha256": instance.sha256,
            "pixels_sha256": analysis.pixels_sha256,
            "frames": analysis.results.len(),
        },
        "model_sha256": package.sha256(),
        "execution": model.execution,
        "preprocessing": package.manifest().preprocess,
        "decode_ms": analysis.decode_ms,
        "batch_instances": batch,
        "decision": decision,
        "frames": frames,
        "population": {
            "calling_ae_title": instance.calling_ae_title,
            "manufacturer": subgroups.manufacturer,
            "model_name": subgroups.model_name,
            "body_part": subgroups.body_part,
            "sex": subgroups.sex,
            "age_band": subgroups.age_band,
            "intensity": analysis.intensity,
        },
    });
    // The priors the model compared with, for a model that takes them.
    if let (Some(priors), Some(map)) = (priors, details.as_object_mut()) {
        map.insert("priors".into(), serde_json::json!(priors));
    }
    AuditEvent::new(EventKind::Inference, "ok", details)
        .instance(
            Some(&instance.study_instance_uid),
            Some(&instance.sop_instance_uid),
        )
        .model(package.id(), package.version())
}

/// Say what the model found, in plain words (UIDs only, no patient data).
fn log_finding(job: &Job, sop_instance_uid: &str, frame: usize, finding: &Finding) {
    match finding {
        Finding::Classification(c) => {
            let p = c
                .labels
                .iter()
                .position(|l| *l == c.decision)
                .and_then(|i| c.probabilities.get(i))
                .copied()
                .unwrap_or(f32::NAN);
            tracing::info!(
                job = job.id,
                model = %job.model,
                sop_instance_uid,
                frame,
                "finding: {} (probability {p:.3}, rule {})",
                c.decision,
                c.rule
            );
        }
        Finding::Segmentation(s) => {
            let foreground = s.mask.iter().filter(|v| **v != 0).count();
            tracing::info!(
                job = job.id,
                model = %job.model,
                sop_instance_uid,
                frame,
                "finding: segmentation with {foreground} foreground pixels"
            );
        }
    }
}
