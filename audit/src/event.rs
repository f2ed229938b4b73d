//! What the audit trail records: the kinds of event, as a closed set.
//!
//! Records keep their kind as text (a trail written by another release may
//! hold kinds this one does not know, and still verifies); what this
//! release appends is always one of [`EventKind`], so a kind cannot be
//! misspelt at one call site and drift from `docs/traceability.md`.

use std::fmt;

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// The kind of an audit record (`docs/traceability.md` says when
        /// each is written and what it holds).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every kind, in the order of the docs.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The kind as stored (`instance_stored`, …).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $text,)*
                }
            }
        }

        impl std::str::FromStr for EventKind {
            type Err = UnknownKind;

            fn from_str(text: &str) -> Result<Self, UnknownKind> {
                match text {
                    $($text => Ok(EventKind::$variant),)*
                    _ => Err(UnknownKind(text.to_string())),
                }
            }
        }
    };
}

event_kinds! {
    /// The effective configuration at start.
    ConfigurationLoaded => "configuration_loaded",
    /// The service started.
    ServiceStarted => "service_started",
    /// The service stopped cleanly.
    ServiceStopped => "service_stopped",
    /// A stored schema (catalog, audit trail) was migrated forward.
    SchemaMigrated => "schema_migrated",
    /// A routed model package passed its hash check.
    ModelVerified => "model_verified",
    /// A model package failed its check or could not load.
    ModelRefused => "model_refused",
    /// A worker loaded a model.
    ModelLoaded => "model_loaded",
    /// A DICOM association (accepted, rejected, released, aborted).
    Association => "association",
    /// Connections closed before any association, summarised.
    ConnectionsRefused => "connections_refused",
    /// The DICOM TLS certificate and trust loaded at start or reloaded.
    TlsCertificate => "tls_certificate",
    /// A C-FIND answered (Query SCP).
    DicomQuery => "dicom_query",
    /// A C-MOVE answered and its sub-operations done (Retrieve SCP).
    DicomRetrieve => "dicom_retrieve",
    /// A C-ECHO.
    Echo => "echo",
    /// An instance acknowledged (C-STORE or STOW-RS).
    InstanceStored => "instance_stored",
    /// The decoded pixels of an acknowledged instance.
    InstancePixels => "instance_pixels",
    /// An instance refused.
    InstanceRefused => "instance_refused",
    /// An HTTP request refused for want of a token or role.
    HttpAccess => "http_access",
    /// A QIDO-RS search.
    DicomwebQuery => "dicomweb_query",
    /// A WADO-RS retrieval.
    DicomwebRetrieve => "dicomweb_retrieve",
    /// A job retry asked over the API.
    JobRetryRequested => "job_retry_requested",
    /// An analysis asked over the API.
    AnalysisRequested => "analysis_requested",
    /// A study (or a late batch of it) is complete.
    StudyComplete => "study_complete",
    /// What routing decided for a complete study.
    RoutingDecision => "routing_decision",
    /// The search for a job's prior study (a model comparing with one):
    /// what was asked and retrieved, and the prior used with its pixel
    /// hash, or why none was.
    PriorSearch => "prior_search",
    /// One analysed instance.
    Inference => "inference",
    /// One result object written.
    ResultCreated => "result_created",
    /// A job attempt finished.
    JobDone => "job_done",
    /// A job attempt failed.
    JobFailed => "job_failed",
    /// A job that kept dying was stopped.
    JobQuarantined => "job_quarantined",
    /// One attempt to send a result.
    ResultDelivery => "result_delivery",
    /// Storage commitment of delivered results: a request, or what a
    /// destination's report said of one result.
    ResultCommitment => "result_commitment",
    /// The audit data was read, verified, exported or queried.
    AuditAccessed => "audit_accessed",
    /// Retention pruned old records.
    AuditPruned => "audit_pruned",
    /// A restored or truncated trail was accepted.
    AuditRestoreAccepted => "audit_restore_accepted",
    /// A file unknown to the catalog was moved aside at start.
    OrphanMoved => "orphan_moved",
    /// A validation run started.
    ValidationStarted => "validation_started",
    /// A validation run finished.
    ValidationFinished => "validation_finished",
    /// Received studies were copied into a validation dataset
    /// (`vigie validate import-dicom --from-store`).
    DatasetExported => "dataset_exported",
    /// A radiologist's review of a result was recorded (outcome `ok`, or
    /// `superseding` when it supersedes the same reviewer's earlier review
    /// of that result, or `duplicate` for a reviewer's SR received again).
    ReviewRecorded => "review_recorded",
    /// A review was refused (unknown job or result, a verdict or label that
    /// does not fit, a malformed body or reviewer's SR).
    ReviewRefused => "review_refused",
    /// A post-market surveillance report was made (`vigie pms report`).
    PmsReported => "pms_reported",
    /// An indicator of a post-market surveillance report passed its
    /// threshold.
    PmsAlarm => "pms_alarm",
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A kind this release does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit event kind `{0}`")]
pub struct UnknownKind(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_text_and_the_texts_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(*kind));
            assert!(seen.insert(kind.as_str()), "{kind}");
        }
        assert!("instance_storred".parse::<EventKind>().is_err());
    }

    #[test]
    fn every_kind_is_documented_in_the_traceability_guide() {
        let guide = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/traceability.md"),
        )
        .unwrap();
        for kind in EventKind::ALL {
            assert!(
                guide.contains(&format!("`{kind}`")),
                "`{kind}` is missing from docs/traceability.md"
            );
        }
    }
}
