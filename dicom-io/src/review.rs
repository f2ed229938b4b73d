//! A reviewer's SR: a radiologist's verdict on one of Vigie's results,
//! sent back as DICOM (C-STORE or STOW-RS).
//!
//! IHE's AI Result Assessment profile (AIRA) describes this record, but
//! its SR encoding is not public in a form we could follow, and PS3.16 has
//! no codes for accepting, rejecting or correcting an AI result. Vigie
//! reads a documented pattern on TID 1500 instead (`docs/results.md`,
//! "Reviews sent as DICOM SR"):
//!
//! ```text
//! SR (Enhanced, Comprehensive or Comprehensive 3D SR)
//!   Current Requested Procedure Evidence Sequence (or Pertinent Other
//!   Evidence): the reviewed result, by SOP Class and Instance UID
//! CONTAINER (126000, DCM, "Imaging Measurement Report")      TID 1500
//!   HAS OBS CONTEXT PNAME (121008, DCM, "Person Observer Name")  TID 1002
//!   CONTAINS COMPOSITE (AIRESULT, 99VIGIE, "Assessed AI result")  optional
//!   CONTAINS CODE (AIRESULTASSESS, 99VIGIE, "AI result assessment")
//!            = (ACCEPT | REJECT | CORRECT, 99VIGIE, …)
//!   CONTAINS TEXT (AICORRECTED, 99VIGIE, "Corrected finding")    correct only
//!   CONTAINS TEXT (121106, DCM, "Comment")                       optional
//! ```
//!
//! Content items are looked for anywhere in the tree (a nested Imaging
//! Measurements container is fine), to a bounded depth. An SR without the
//! assessment item is not a review ([`read_review`] gives `None`).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::file::{DicomFile, items};
use crate::results::PRIVATE_SCHEME;

/// Concept name of the verdict: (AIRESULTASSESS, 99VIGIE).
pub const ASSESSMENT: &str = "AIRESULTASSESS";
/// Concept name of the corrected finding: (AICORRECTED, 99VIGIE).
pub const CORRECTED: &str = "AICORRECTED";
/// Concept name of the reference to the result: (AIRESULT, 99VIGIE).
pub const ASSESSED_RESULT: &str = "AIRESULT";

/// Deepest content tree read.
const MAX_DEPTH: usize = 16;
/// Longest free text kept (characters).
pub const MAX_TEXT: usize = 4096;

/// What the reviewer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewedVerdict {
    /// (ACCEPT, 99VIGIE, "AI result accepted").
    Accept,
    /// (REJECT, 99VIGIE, "AI result rejected").
    Reject,
    /// (CORRECT, 99VIGIE, "AI result corrected").
    Correct,
}

/// A review read from an SR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDocument {
    /// The SR's SOP Instance UID.
    pub sop_instance_uid: String,
    /// Its Study Instance UID.
    pub study_instance_uid: String,
    /// The verdict.
    pub verdict: ReviewedVerdict,
    /// The corrected finding (`correct`).
    pub corrected: Option<String>,
    /// The comment.
    pub comment: Option<String>,
    /// The reviewer: Person Observer Name, else the Verifying Observer
    /// Name, else the Author Observer's Person Name.
    pub reviewer: Option<String>,
    /// Every SOP Instance UID the SR references (evidence sequences and
    /// COMPOSITE/IMAGE items), in order, without repeats.
    pub referenced: Vec<String>,
}

/// Why an SR that carries an assessment cannot be read as a review.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewSrError {
    /// The assessment's value is not one of the three codes.
    #[error(
        "reviewer SR {sop_instance_uid}: the assessment value {value} is not ACCEPT, REJECT or CORRECT ({PRIVATE_SCHEME})"
    )]
    UnknownVerdict {
        /// The SR.
        sop_instance_uid: String,
        /// Code value and scheme found.
        value: String,
    },
    /// Several assessment items.
    #[error("review SR: {count} assessments, one per SR")]
    SeveralVerdicts {
        /// The SR.
        sop_instance_uid: String,
        /// How many.
        count: usize,
    },
    /// A correction without the corrected finding, or a finding without a
    /// correction.
    #[error("review SR: {reason}")]
    Inconsistent {
        /// The SR.
        sop_instance_uid: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// It references nothing.
    #[error(
        "reviewer SR {sop_instance_uid}: references no instance (Current Requested Procedure Evidence Sequence)"
    )]
    NoReference {
        /// The SR.
        sop_instance_uid: String,
    },
}

/// A text value, bounded to [`MAX_TEXT`] characters.
fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    crate::file::text(object, tag).map(|t| t.chars().take(MAX_TEXT).collect())
}

/// (value, scheme) of the first item of a code sequence.
fn code(object: &InMemDicomObject, tag: Tag) -> Option<(String, String)> {
    let item = items(object, tag).first()?;
    Some((
        text(item, tags::CODE_VALUE).unwrap_or_default(),
        text(item, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default(),
    ))
}

fn is(concept: &Option<(String, String)>, value: &str, scheme: &str) -> bool {
    concept
        .as_ref()
        .is_some_and(|(v, s)| v == value && s == scheme)
}

/// The content items of the tree under `object`, depth first, bounded.
fn content<'a>(object: &'a InMemDicomObject, depth: usize, out: &mut Vec<&'a InMemDicomObject>) {
    if depth >= MAX_DEPTH {
        return;
    }
    for item in items(object, tags::CONTENT_SEQUENCE) {
        out.push(item);
        content(item, depth + 1, out);
    }
}

fn referenced_instances(object: &InMemDicomObject, out: &mut Vec<String>) {
    for item in items(object, tags::REFERENCED_SOP_SEQUENCE) {
        if let Some(uid) = text(item, tags::REFERENCED_SOP_INSTANCE_UID)
            && !out.contains(&uid)
        {
            out.push(uid);
        }
    }
}

/// Read `file` as a reviewer's SR: `Ok(None)` when it is not one (another
/// SOP class, or no assessment item), an error when it carries an
/// assessment that cannot be read.
pub fn read_review(file: &DicomFile) -> Result<Option<ReviewDocument>, ReviewSrError> {
    let header = file.header();
    if !crate::net::storage_classes::is_sr(&header.sop_class_uid) {
        return Ok(None);
    }
    let root: &InMemDicomObject = file.object();
    let sop_instance_uid = header.sop_instance_uid.clone();
    let mut tree = Vec::new();
    content(root, 0, &mut tree);
    let concept = |item: &InMemDicomObject| code(item, tags::CONCEPT_NAME_CODE_SEQUENCE);
    let assessments: Vec<&&InMemDicomObject> = tree
        .iter()
        .filter(|i| is(&concept(i), ASSESSMENT, PRIVATE_SCHEME))
        .collect();
    let assessment = match assessments.as_slice() {
        [] => return Ok(None),
        [one] => one,
        many => {
            return Err(ReviewSrError::SeveralVerdicts {
                sop_instance_uid,
                count: many.len(),
            });
        }
    };
    let value = code(assessment, tags::CONCEPT_CODE_SEQUENCE);
    let verdict = match &value {
        Some((v, s)) if s == PRIVATE_SCHEME && v == "ACCEPT" => ReviewedVerdict::Accept,
        Some((v, s)) if s == PRIVATE_SCHEME && v == "REJECT" => ReviewedVerdict::Reject,
        Some((v, s)) if s == PRIVATE_SCHEME && v == "CORRECT" => ReviewedVerdict::Correct,
        other => {
            return Err(ReviewSrError::UnknownVerdict {
                sop_instance_uid,
                // Code values are SH, schemes SH: 16 characters each.
                value: other
                    .as_ref()
                    .map(|(v, s)| {
                        format!(
                            "({}, {})",
                            v.chars().take(16).collect::<String>(),
                            s.chars().take(16).collect::<String>()
                        )
                    })
                    .unwrap_or_else(|| "(none)".into()),
            });
        }
    };
    let text_of = |value: &str, scheme: &str| {
        tree.iter()
            .find(|i| is(&concept(i), value, scheme))
            .and_then(|i| text(i, tags::TEXT_VALUE))
    };
    let corrected = text_of(CORRECTED, PRIVATE_SCHEME);
    match (verdict, &corrected) {
        (ReviewedVerdict::Correct, None) => {
            return Err(ReviewSrError::Inconsistent {
                sop_instance_uid,
                reason: "CORRECT without AICORRECTED finding",
            });
        }
        (ReviewedVerdict::Accept | ReviewedVerdict::Reject, Some(_)) => {
            return Err(ReviewSrError::Inconsistent {
                sop_instance_uid,
                reason: "AICORRECTED finding without CORRECT",
            });
        }
        _ => {}
    }
    if text(root, tags::COMPLETION_FLAG).as_deref() != Some("COMPLETE") {
        return Err(ReviewSrError::Inconsistent {
            sop_instance_uid,
            reason: "Completion Flag not COMPLETE",
        });
    }
    let comment = text_of("121106", "DCM");
    let reviewer = tree
        .iter()
        .find(|i| is(&concept(i), "121008", "DCM"))
        .and_then(|i| text(i, tags::PERSON_NAME))
        .or_else(|| {
            items(root, tags::VERIFYING_OBSERVER_SEQUENCE)
                .iter()
                .find_map(|o| text(o, tags::VERIFYING_OBSERVER_NAME))
        })
        .or_else(|| {
            items(root, tags::AUTHOR_OBSERVER_SEQUENCE)
                .iter()
                .find_map(|o| text(o, tags::PERSON_NAME))
        });
    let mut referenced = Vec::new();
    for tag in [
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
    ] {
        for study in items(root, tag) {
            for series in items(study, tags::REFERENCED_SERIES_SEQUENCE) {
                referenced_instances(series, &mut referenced);
            }
        }
    }
    for item in &tree {
        if matches!(
            text(item, tags::VALUE_TYPE).as_deref(),
            Some("COMPOSITE" | "IMAGE")
        ) {
            referenced_instances(item, &mut referenced);
        }
    }
    if referenced.is_empty() {
        return Err(ReviewSrError::NoReference { sop_instance_uid });
    }
    Ok(Some(ReviewDocument {
        sop_instance_uid,
        study_instance_uid: header.study_instance_uid.clone(),
        verdict,
        corrected,
        comment,
        reviewer,
        referenced,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Code, put_sequence};
    use crate::write::{put_str, write_part10};
    use dicom_core::VR;

    fn item(relationship: &str, value_type: &str, concept: &Code) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        put_str(&mut obj, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
        put_str(&mut obj, tags::VALUE_TYPE, VR::CS, value_type);
        put_sequence(
            &mut obj,
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![concept.item()],
        );
        obj
    }

    fn text_item(concept: &Code, value: &str) -> InMemDicomObject {
        let mut obj = item("CONTAINS", "TEXT", concept);
        put_str(&mut obj, tags::TEXT_VALUE, VR::UT, value);
        obj
    }

    /// A reviewer's SR in the documented pattern, its items nested one
    /// container down, written as a Part 10 file.
    fn review_sr(
        dir: &std::path::Path,
        verdict: &str,
        corrected: Option<&str>,
    ) -> std::path::PathBuf {
        let mut obj = InMemDicomObject::new_empty();
        put_str(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.88.33",
        );
        put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.9.1");
        put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.9");
        put_str(&mut obj, tags::MODALITY, VR::CS, "SR");
        put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
        put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
        put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "VERIFIED");
        let mut reference = InMemDicomObject::new_empty();
        put_str(
            &mut reference,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.88.33",
        );
        put_str(
            &mut reference,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            "1.2.3.8.1",
        );
        let mut series = InMemDicomObject::new_empty();
        put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.8");
        put_sequence(&mut series, tags::REFERENCED_SOP_SEQUENCE, vec![reference]);
        let mut study = InMemDicomObject::new_empty();
        put_str(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        put_sequence(&mut study, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
        put_sequence(
            &mut obj,
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![study],
        );
        let mut observer = item(
            "HAS OBS CONTEXT",
            "PNAME",
            &Code::new("121008", "DCM", "Person Observer Name"),
        );
        put_str(&mut observer, tags::PERSON_NAME, VR::PN, "Curie^Marie");
        let mut assessment = item(
            "CONTAINS",
            "CODE",
            &Code::new(ASSESSMENT, PRIVATE_SCHEME, "AI result assessment"),
        );
        put_sequence(
            &mut assessment,
            tags::CONCEPT_CODE_SEQUENCE,
            vec![Code::new(verdict, PRIVATE_SCHEME, "verdict").item()],
        );
        let mut children = vec![
            assessment,
            text_item(&Code::new("121106", "DCM", "Comment"), "ok"),
        ];
        if let Some(c) = corrected {
            children.push(text_item(
                &Code::new(CORRECTED, PRIVATE_SCHEME, "Corrected finding"),
                c,
            ));
        }
        let mut group = item(
            "CONTAINS",
            "CONTAINER",
            &Code::new("126010", "DCM", "Imaging Measurements"),
        );
        put_sequence(&mut group, tags::CONTENT_SEQUENCE, children);
        put_sequence(&mut obj, tags::CONTENT_SEQUENCE, vec![observer, group]);
        let path = dir.join(format!("{verdict}-{}.dcm", corrected.unwrap_or("none")));
        write_part10(obj, &path).unwrap();
        path
    }

    fn read(path: &std::path::Path) -> Result<Option<ReviewDocument>, ReviewSrError> {
        read_review(&DicomFile::open(path).unwrap())
    }

    #[test]
    fn a_reviewers_sr_is_read_with_its_verdict_reference_reviewer_and_texts() {
        let dir = tempfile::tempdir().unwrap();
        let review = read(&review_sr(dir.path(), "CORRECT", Some("glioma")))
            .unwrap()
            .unwrap();
        assert_eq!(review.verdict, ReviewedVerdict::Correct);
        assert_eq!(review.corrected.as_deref(), Some("glioma"));
        assert_eq!(review.comment.as_deref(), Some("ok"));
        assert_eq!(review.reviewer.as_deref(), Some("Curie^Marie"));
        assert_eq!(review.referenced, ["1.2.3.8.1"]);
        assert_eq!(review.sop_instance_uid, "1.2.3.9.1");
        let accept = read(&review_sr(dir.path(), "ACCEPT", None))
            .unwrap()
            .unwrap();
        assert_eq!(accept.verdict, ReviewedVerdict::Accept);
    }

    #[test]
    fn assessments_that_do_not_fit_are_errors_and_other_instances_are_not_reviews() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(&review_sr(dir.path(), "MAYBE", None)),
            Err(ReviewSrError::UnknownVerdict { .. })
        ));
        assert!(matches!(
            read(&review_sr(dir.path(), "CORRECT", None)),
            Err(ReviewSrError::Inconsistent { .. })
        ));
        assert!(matches!(
            read(&review_sr(dir.path(), "REJECT", Some("glioma"))),
            Err(ReviewSrError::Inconsistent { .. })
        ));
        // An image is not a review.
        let uids = crate::uid::UidGenerator::new(crate::uid::UUID_ROOT).unwrap();
        let pixels = vec![0u8; 16];
        let mr = crate::write::MrImage::new(4, 4, &pixels, &uids)
            .build()
            .unwrap();
        let image = dir.path().join("mr.dcm");
        write_part10(mr, &image).unwrap();
        assert_eq!(read(&image).unwrap(), None);
    }

    #[test]
    fn fuzz_review_srs() {
        use vigie_test_support::fuzz;
        let dir = tempfile::tempdir().unwrap();
        let seeds = vec![
            std::fs::read(review_sr(dir.path(), "CORRECT", Some("glioma"))).unwrap(),
            std::fs::read(review_sr(dir.path(), "ACCEPT", None)).unwrap(),
        ];
        let path = dir.path().join("fuzzed.dcm");
        let summary = fuzz::run(
            "review-sr",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(3),
            |bytes| {
                std::fs::write(&path, bytes).unwrap();
                if let Ok(file) = DicomFile::open(&path) {
                    let _ = read_review(&file);
                }
            },
        );
        assert!(summary.executions > 3);
    }
}
