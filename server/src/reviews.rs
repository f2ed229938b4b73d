//! Reviews: a radiologist's verdict on a result, from whichever way it
//! came (the JSON API, the review page, a reviewer's SR received by C-STORE
//! or STOW-RS), checked, recorded in the catalog and in the audit trail
//! in one place, [`ReviewDesk::submit`]. A refused review is audited too
//! (`review_refused`, with its reason), and counted.
//!
//! What is checked: the job exists and is done, the result is one of its
//! result objects (named, or the job's one SR or SEG), a correction names
//! the corrected finding (one of a classifier's labels), accept and reject
//! name none, the free text fits. A comment is kept in the catalog and
//! only its SHA-256 and length go into the audit trail: people type what
//! they like into a comment, patient names included, and the audit trail
//! and the logs never hold them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::http::ModelInfo;
use crate::metrics::Metrics;
use vigie_audit::{Audit, AuditError, AuditEvent, EventKind};
use vigie_store::{Catalog, JobState, NewReview, RecordedReview, ReviewVia, StoreError, Verdict};

/// Longest reviewer name or corrected label (characters; LO is 64).
pub const MAX_NAME: usize = 64;
/// Longest comment (characters).
pub const MAX_COMMENT: usize = 4096;

/// SOP classes of a job's result objects that carry its finding (SR, SEG):
/// the result a review concerns when it names none.
const FINDING_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR (TID 1500)
    "1.2.840.10008.5.1.4.1.1.66.4",  // Segmentation
];

/// Whether a result object of this SOP class carries the job's finding
/// (SR, SEG), as opposed to the summary image.
pub fn carries_finding(sop_class_uid: &str) -> bool {
    FINDING_CLASSES.contains(&sop_class_uid)
}

/// A review as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewRequest {
    /// The job (API, page); `None` for a reviewer's SR, which names the
    /// result only.
    pub job_id: Option<i64>,
    /// The result object (SOP Instance UIDs the SR references, or the one
    /// the API names); empty: the job's one SR or SEG.
    pub results: Vec<String>,
    /// The verdict.
    pub verdict: Verdict,
    /// The corrected class or finding.
    pub label: Option<String>,
    /// Free text.
    pub comment: Option<String>,
    /// Who reviewed.
    pub reviewer: String,
    /// How it came.
    pub via: ReviewVia,
    /// What authenticated it (token name, `AE <title>`).
    pub authenticated_as: String,
    /// The reviewer's SR.
    pub source_sop_instance_uid: Option<String>,
}

/// A review that passed [`ReviewDesk::check`], ready to record: the row,
/// and the study and model of its job.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    review: NewReview,
    study: String,
    model: String,
}

/// Why a review was refused: each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No such job.
    #[error("no job {0}")]
    UnknownJob(i64),
    /// The SR references none of this appliance's results.
    #[error(
        "the reviewer's SR references no result of this appliance ({0} instance(s) referenced)"
    )]
    UnknownResult(usize),
    /// The SR references results of several jobs.
    #[error("the reviewer's SR references results of several jobs ({0:?}); one review per SR")]
    SeveralJobs(Vec<i64>),
    /// The job has no results to review yet.
    #[error("job {job_id} is {state}: only a done job's results can be reviewed")]
    NotDone {
        /// The job.
        job_id: i64,
        /// Its state.
        state: &'static str,
    },
    /// The job is done but no result object of it is known.
    #[error("job {0} has no result objects to review")]
    NoResults(i64),
    /// The named result is not one of the job's.
    #[error("{result} is not a result of job {job_id}")]
    NotOfJob {
        /// The job.
        job_id: i64,
        /// The UID named.
        result: String,
    },
    /// Several results could be meant.
    #[error("job {job_id} has {} results carrying a finding ({}): name one in \"result\"", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// The job.
        job_id: i64,
        /// Its SR and SEG objects.
        candidates: Vec<String>,
    },
    /// A correction without the corrected finding.
    #[error("a \"correct\" verdict needs \"label\", the corrected class or finding")]
    LabelRequired,
    /// A label with accept or reject.
    #[error("\"label\" comes only with the \"correct\" verdict")]
    LabelNotAllowed,
    /// Not one of the classifier's labels.
    #[error("{label:?} is not one of model {model}'s labels ({})", labels.join(", "))]
    UnknownLabel {
        /// The label given.
        label: String,
        /// The model.
        model: String,
        /// Its labels.
        labels: Vec<String>,
    },
    /// A text field that does not fit.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Refusal {
    /// A short name for metrics and the audit record.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownJob(_) => "unknown_job",
            Self::UnknownResult(_) => "unknown_result",
            Self::SeveralJobs(_) => "several_jobs",
            Self::NotDone { .. } => "not_done",
            Self::NoResults(_) => "no_results",
            Self::NotOfJob { .. } => "not_of_job",
            Self::Ambiguous { .. } => "ambiguous_result",
            Self::LabelRequired => "label_required",
            Self::LabelNotAllowed => "label_not_allowed",
            Self::UnknownLabel { .. } => "unknown_label",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// Why [`ReviewDesk::submit`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The review itself is not acceptable (audited as `review_refused`).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The catalog failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The review was recorded in the catalog (`review_id`) but its audit
    /// record could not be written.
    #[error("review {review_id} recorded but not audited")]
    Audit {
        /// The review recorded.
        review_id: i64,
        /// Why.
        #[source]
        source: Box<AuditError>,
    },
}

/// What the desk knows of a model package.
#[derive(Debug, Clone, Default, PartialEq)]
struct ModelFacts {
    version: String,
    /// A classifier's labels (`None` for other kinds).
    labels: Option<Vec<String>>,
}

/// Checks and records reviews.
pub struct ReviewDesk {
    catalog: Arc<dyn Catalog>,
    audit: Audit,
    metrics: Arc<Metrics>,
    models: BTreeMap<String, ModelFacts>,
    senders: Vec<String>,
}

impl std::fmt::Debug for ReviewDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewDesk").finish_non_exhaustive()
    }
}

/// A name from outside as the audit record keeps it: at most
/// [`MAX_NAME`] characters, control characters dropped.
fn bounded(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect()
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        return Err(Refusal::Invalid {
            field,
            reason: "empty".into(),
        });
    }
    let chars = text.chars().count();
    if chars > max {
        return Err(Refusal::Invalid {
            field,
            reason: format!("{chars} characters, at most {max}"),
        });
    }
    if field != "comment" && text.chars().any(char::is_control) {
        return Err(Refusal::Invalid {
            field,
            reason: "control characters".into(),
        });
    }
    Ok(())
}

impl ReviewDesk {
    /// A desk over `catalog`, recording into `audit`; `models` are the
    /// installed packages (for versions and a classifier's labels).
    pub fn new(
        catalog: Arc<dyn Catalog>,
        audit: Audit,
        metrics: Arc<Metrics>,
        models: &[ModelInfo],
        senders: &[String],
    ) -> Self {
        let models = models
            .iter()
            .map(|m| {
                let manifest = m.manifest.as_ref();
                let version = manifest
                    .and_then(|v| v["model"]["version"].as_str())
                    .unwrap_or_default()
                    .to_string();
                let labels = manifest
                    .filter(|v| v["output"]["kind"] == "classification")
                    .and_then(|v| v["output"]["labels"].as_array())
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    });
                (m.id.clone(), ModelFacts { version, labels })
            })
            .collect();
        Self {
            catalog,
            audit,
            metrics,
            models,
            senders: senders.iter().map(|s| s.trim().to_string()).collect(),
        }
    }

    /// Whether `sop_instance_uid` is one of this appliance's own result
    /// objects (a PACS forwarding a study back sends them again).
    pub fn is_own_result(&self, sop_instance_uid: &str) -> bool {
        matches!(self.catalog.result_job(sop_instance_uid), Ok(Some(_)))
    }

    /// Whether `name` (a calling AE title, a STOW-RS token's name) may send
    /// reviewers' SRs (`results.review_senders`).
    pub fn may_send_reviews(&self, name: &str) -> bool {
        self.senders.iter().any(|s| s == name.trim())
    }

    /// A classifier's labels, for the review page's correction list.
    pub fn labels(&self, model: &str) -> Option<&[String]> {
        self.models.get(model)?.labels.as_deref()
    }

    /// Check, record and audit `request`. A refusal is audited
    /// (`review_refused`) before it is returned.
    pub fn submit(&self, request: &ReviewRequest) -> Result<RecordedReview, ReviewError> {
        self.record(self.check(request)?)
    }

    /// Check `request` without recording it (a reviewer's SR is checked
    /// before the instance is stored, and [`ReviewDesk::record`]ed once it
    /// is durable); a refusal is audited.
    pub fn check(&self, request: &ReviewRequest) -> Result<Checked, ReviewError> {
        match self.checked(request) {
            Err(ReviewError::Refused(refusal)) => {
                self.refused(request, &refusal);
                Err(ReviewError::Refused(refusal))
            }
            other => other,
        }
    }

    /// Audit a review refused before it could be read (`malformed`: a
    /// body or a reviewer's SR that does not parse; `sender_not_allowed`):
    /// `message` is ours, the sender's text in it bounded.
    pub fn refused_unread(
        &self,
        job_id: Option<i64>,
        via: ReviewVia,
        who: &str,
        code: &str,
        message: &str,
    ) {
        self.count_refusal(code, via);
        tracing::warn!(job = ?job_id, via = via.as_str(), reason = code, "review refused");
        self.audit.note(AuditEvent::new(
            EventKind::ReviewRefused,
            "refused",
            json!({
                "job_id": job_id,
                "via": via.as_str(),
                "authenticated_as": bounded(who),
                "reason": code,
                "message": message.chars().take(200).collect::<String>(),
            }),
        ));
    }

    fn count_refusal(&self, code: &str, via: ReviewVia) {
        self.metrics.inc(
            "vigie_reviews_refused_total",
            "Reviews refused (unknown job or result, a verdict or label that does not fit, malformed), by reason and way in.",
            &[("reason", code), ("via", via.as_str())],
        );
    }

    fn refused(&self, request: &ReviewRequest, refusal: &Refusal) {
        self.count_refusal(refusal.code(), request.via);
        // The code only: the message may quote what the sender typed.
        tracing::warn!(
            job = ?request.job_id,
            via = request.via.as_str(),
            reason = refusal.code(),
            "review refused"
        );
        self.audit.note(
            AuditEvent::new(
                EventKind::ReviewRefused,
                "refused",
                json!({
                    "job_id": request.job_id,
                    "results": request.results,
                    "verdict": request.verdict.as_str(),
                    "via": request.via.as_str(),
                    "authenticated_as": bounded(&request.authenticated_as),
                    "reviewer": bounded(&request.reviewer),
                    "source_sop_instance_uid": request.source_sop_instance_uid,
                    "reason": refusal.code(),
                    "message": refusal.to_string().chars().take(200).collect::<String>(),
                }),
            )
            .instance(None, request.source_sop_instance_uid.as_deref()),
        );
    }

    fn checked(&self, request: &ReviewRequest) -> Result<Checked, ReviewError> {
        check_text("reviewer", &request.reviewer, MAX_NAME)?;
        if let Some(label) = &request.label {
            check_text("label", label, MAX_NAME)?;
        }
        if let Some(comment) = &request.comment {
            check_text("comment", comment, MAX_COMMENT)?;
        }
        let job_id = match request.job_id {
            Some(id) => id,
            None => {
                let mut jobs = Vec::new();
                for uid in &request.results {
                    if let Some(job) = self.catalog.result_job(uid)?
                        && !jobs.contains(&job)
                    {
                        jobs.push(job);
                    }
                }
                match jobs.as_slice() {
                    [] => return Err(Refusal::UnknownResult(request.results.len()).into()),
                    [one] => *one,
                    _ => return Err(Refusal::SeveralJobs(jobs).into()),
                }
            }
        };
        let job = self
            .catalog
            .job(job_id)?
            .ok_or(Refusal::UnknownJob(job_id))?;
        if job.state != JobState::Done {
            return Err(Refusal::NotDone {
                job_id,
                state: job.state.as_str(),
            }
            .into());
        }
        let results = self.catalog.job_results(job_id)?;
        if results.is_empty() {
            return Err(Refusal::NoResults(job_id).into());
        }
        let named: Vec<&vigie_store::WebInstance> = if request.results.is_empty() {
            results.iter().collect()
        } else {
            let named: Vec<_> = results
                .iter()
                .filter(|r| request.results.contains(&r.sop_instance_uid))
                .collect();
            if named.is_empty() {
                return Err(Refusal::NotOfJob {
                    job_id,
                    result: request.results.join(", "),
                }
                .into());
            }
            named
        };
        let result = match named.as_slice() {
            [one] => one.sop_instance_uid.clone(),
            many => {
                let findings: Vec<String> = many
                    .iter()
                    .filter(|r| carries_finding(&r.sop_class_uid))
                    .map(|r| r.sop_instance_uid.clone())
                    .collect();
                match findings.as_slice() {
                    [one] => one.clone(),
                    _ => {
                        return Err(Refusal::Ambiguous {
                            job_id,
                            candidates: if findings.is_empty() {
                                many.iter().map(|r| r.sop_instance_uid.clone()).collect()
                            } else {
                                findings
                            },
                        }
                        .into());
                    }
                }
            }
        };
        match (request.verdict, &request.label) {
            (Verdict::Correct, None) => return Err(Refusal::LabelRequired.into()),
            (Verdict::Accept | Verdict::Reject, Some(_)) => {
                return Err(Refusal::LabelNotAllowed.into());
            }
            (Verdict::Correct, Some(label)) => {
                if let Some(labels) = self.labels(&job.model)
                    && !labels.contains(label)
                {
                    return Err(Refusal::UnknownLabel {
                        label: label.clone(),
                        model: job.model.clone(),
                        labels: labels.to_vec(),
                    }
                    .into());
                }
            }
            _ => {}
        }
        Ok(Checked {
            review: NewReview {
                job_id,
                result_sop_instance_uid: result,
                verdict: request.verdict,
                label: request.label.clone(),
                comment: request.comment.clone(),
                reviewer: request.reviewer.trim().to_string(),
                via: request.via,
                authenticated_as: request.authenticated_as.clone(),
                source_sop_instance_uid: request.source_sop_instance_uid.clone(),
            },
            study: job.study_instance_uid,
            model: job.model,
        })
    }

    /// Record and audit a checked review.
    pub fn record(&self, checked: Checked) -> Result<RecordedReview, ReviewError> {
        let Checked {
            review,
            study,
            model,
        } = checked;
        let recorded = self.catalog.record_review(&review, vigie_store::now_ms())?;
        let stored = &recorded.review;
        let r = &stored.review;
        let outcome = if recorded.already_recorded {
            "duplicate"
        } else if stored.supersedes.is_some() {
            "superseding"
        } else {
            "ok"
        };
        let comment = r.comment.as_ref().map(|c| {
            json!({
                "sha256": hex::encode(Sha256::digest(c.as_bytes())),
                "characters": c.chars().count(),
            })
        });
        let version = self
            .models
            .get(&model)
            .map(|m| m.version.clone())
            .unwrap_or_default();
        self.audit
            .record(
                AuditEvent::new(
                    EventKind::ReviewRecorded,
                    outcome,
                    json!({
                        "review_id": stored.id,
                        "job_id": r.job_id,
                        "verdict": r.verdict.as_str(),
                        "label": r.label,
                        "reviewer": r.reviewer,
                        "via": r.via.as_str(),
                        "authenticated_as": r.authenticated_as,
                        "source_sop_instance_uid": r.source_sop_instance_uid,
                        "supersedes": stored.supersedes,
                        "comment": comment,
                    }),
                )
                .instance(Some(&study), Some(&r.result_sop_instance_uid))
                .model(&model, &version),
            )
            .map_err(|source| ReviewError::Audit {
                review_id: stored.id,
                source: Box::new(source),
            })?;
        if !recorded.already_recorded {
            self.metrics.inc(
                "vigie_reviews_total",
                "Reviews recorded, by verdict and way in (api, page, dicom).",
                &[("verdict", r.verdict.as_str()), ("via", r.via.as_str())],
            );
        }
        tracing::info!(
            review = stored.id,
            job = r.job_id,
            result = %r.result_sop_instance_uid,
            verdict = r.verdict.as_str(),
            via = r.via.as_str(),
            outcome,
            "review recorded"
        );
        Ok(recorded)
    }
}
