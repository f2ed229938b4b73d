//! Whether a received instance may be stored: the DICOM side of a
//! C-STORE's (or a STOW-RS part's) admission, with the status each refusal
//! gets (PS3.4 B.2.3; PS3.18 10.5.3 maps them to STOW-RS failure reasons).
//! A900 "data set does not match SOP class" for a required attribute
//! missing or invalid and for UIDs that contradict the request; C000
//! "cannot understand" for a data set that cannot be parsed, beyond the
//! limits or with inconsistent pixel data. Reasons name no file path,
//! which stays internal. The store itself (space, durability, the index) is
//! the caller's.

use std::path::Path;

use crate::dimse::status;
use crate::net::scp::{ReceivedInstance, StoreOutcome};
use crate::{DicomFile, Error};

/// Open the staged data set's header and check its content
/// ([`check_content`]).
pub fn open_checked(path: &Path) -> Result<DicomFile, StoreOutcome> {
    let file = DicomFile::open_header(path).map_err(|e| refusal(&e))?;
    check_content(&file)?;
    Ok(file)
}

/// Check `file` against the request: the command's SOP Class and Instance
/// UIDs and, for STOW-RS with a study in its URL, that study.
pub fn matches_request(
    file: &DicomFile,
    received: &ReceivedInstance,
    study: Option<&str>,
) -> Result<(), StoreOutcome> {
    let header = file.header();
    let mismatch = |reason: &str| {
        Err(StoreOutcome::failure(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            reason,
        ))
    };
    if study.is_some_and(|study| header.study_instance_uid != study) {
        return mismatch("instance of another study than the one in the request URL");
    }
    if header.sop_class_uid != received.sop_class_uid {
        return mismatch("SOP Class UID of the data set differs from the command");
    }
    if header.sop_instance_uid != received.sop_instance_uid {
        return mismatch("SOP Instance UID of the data set differs from the command");
    }
    Ok(())
}

/// The status and reason (without file paths, which stay internal) for a
/// data set that cannot be opened.
pub fn refusal(e: &Error) -> StoreOutcome {
    match e {
        Error::MissingAttribute { attribute, .. } => StoreOutcome::failure(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!("required attribute {attribute} missing"),
        ),
        Error::InvalidAttribute {
            attribute, reason, ..
        } => StoreOutcome::failure(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!("attribute {attribute} invalid: {}", short(reason)),
        ),
        Error::Malformed { offset, reason, .. } => StoreOutcome::failure(
            status::CANNOT_UNDERSTAND,
            format!("malformed data set: {} (byte {offset})", short(reason)),
        ),
        Error::Limit { reason, .. } => StoreOutcome::failure(
            status::CANNOT_UNDERSTAND,
            format!("beyond limits: {}", short(reason)),
        ),
        Error::Open { reason, .. } => StoreOutcome::failure(
            status::CANNOT_UNDERSTAND,
            format!("data set not parsable: {}", short(reason)),
        ),
        other => StoreOutcome::failure(
            status::CANNOT_UNDERSTAND,
            format!("data set not parsable: {}", short(&other.to_string())),
        ),
    }
}

/// An SR document (the SR classes accepted, for reviewers' SRs): Modality
/// SR (SR Document Series, PS3.3 C.17.1), the SR Document General module's
/// Type 1 attributes (C.17.2: Instance Number, Content Date and Time,
/// Completion Flag PARTIAL or COMPLETE, Verification Flag UNVERIFIED or
/// VERIFIED), the SR Document Content module's at the root (C.17.3: Value
/// Type CONTAINER, Concept Name Code Sequence, Continuity of Content
/// SEPARATE or CONTINUOUS) and the Content Sequence (Type 1C, present for
/// any report with content; its absence is also how a data set truncated
/// before it shows). No pixel data.
fn check_sr(file: &DicomFile) -> Result<(), StoreOutcome> {
    use dicom_dictionary_std::tags;
    let object = file.object();
    let missing = |attribute: &str| {
        StoreOutcome::failure(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!("required attribute {attribute} missing or invalid"),
        )
    };
    let is = |tag, values: &[&str]| file.string(tag).is_some_and(|v| values.contains(&v.trim()));
    for (tag, name, values) in [
        (tags::MODALITY, "Modality SR", &["SR"][..]),
        (tags::VALUE_TYPE, "ValueType CONTAINER", &["CONTAINER"][..]),
        (
            tags::COMPLETION_FLAG,
            "CompletionFlag",
            &["PARTIAL", "COMPLETE"][..],
        ),
        (
            tags::VERIFICATION_FLAG,
            "VerificationFlag",
            &["UNVERIFIED", "VERIFIED"][..],
        ),
        (
            tags::CONTINUITY_OF_CONTENT,
            "ContinuityOfContent",
            &["SEPARATE", "CONTINUOUS"][..],
        ),
    ] {
        if !is(tag, values) {
            return Err(missing(name));
        }
    }
    for (tag, name) in [
        (tags::CONCEPT_NAME_CODE_SEQUENCE, "ConceptNameCodeSequence"),
        (tags::CONTENT_SEQUENCE, "ContentSequence"),
    ] {
        if object
            .get(tag)
            .and_then(|e| e.items())
            .is_none_or(|i| i.is_empty())
        {
            return Err(missing(name));
        }
    }
    for (tag, name) in [
        (tags::INSTANCE_NUMBER, "InstanceNumber"),
        (tags::CONTENT_DATE, "ContentDate"),
        (tags::CONTENT_TIME, "ContentTime"),
    ] {
        if file.string(tag).is_none() {
            return Err(missing(name));
        }
    }
    Ok(())
}

/// What ingest checks beyond parsing to the end (PS3.3 Type 1 attributes
/// an AI node relies on, PS3.5 pixel data consistency): the SOP Instance
/// UID in the data set itself (not only in the file meta group built from
/// the command), Modality (General Series, Type 1 for every image storage
/// class), pixel data (Type 1 in every image IOD), and the Image Pixel
/// module's Type 1
/// attributes, a native length that covers them and a decoded size within
/// `limits.max_decoded_mib`. A data set refused here would only have
/// failed later, in silence.
pub fn check_content(file: &DicomFile) -> Result<(), StoreOutcome> {
    use dicom_dictionary_std::tags;
    let missing = |attribute: &str| {
        StoreOutcome::failure(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!("required attribute {attribute} missing"),
        )
    };
    if file.string(tags::SOP_INSTANCE_UID).is_none() {
        return Err(missing("SOPInstanceUID"));
    }
    if file.header().modality.is_none() {
        return Err(missing("Modality"));
    }
    if crate::net::storage_classes::is_sr(&file.header().sop_class_uid) {
        return check_sr(file);
    }
    if let Some(scanned) = file.scanned() {
        use crate::scan::{PixelDataLayout, PixelDataProblem};
        // Every other storage class the node accepts is an image IOD, whose
        // Image Pixel module has pixel data of Type 1: its absence is also
        // how a data set truncated between two elements shows.
        if scanned.pixel_data == PixelDataLayout::Absent {
            return Err(missing("PixelData"));
        }
        scanned
            .check_pixel_data(&crate::scan::limits())
            .map_err(|problem| match problem {
                PixelDataProblem::Missing(attribute) => missing(attribute),
                PixelDataProblem::Inconsistent(reason) => StoreOutcome::failure(
                    status::CANNOT_UNDERSTAND,
                    format!("pixel data inconsistent: {}", short(&reason)),
                ),
                other => StoreOutcome::failure(
                    status::CANNOT_UNDERSTAND,
                    format!("beyond limits: {other}"),
                ),
            })?;
    }
    Ok(())
}

/// At most 160 characters of a reason, for an Error Comment.
fn short(text: &str) -> String {
    text.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn received(sop_class_uid: &str, sop_instance_uid: &str) -> ReceivedInstance {
        ReceivedInstance {
            path: PathBuf::from("staged.dcm"),
            sop_class_uid: sop_class_uid.into(),
            sop_instance_uid: sop_instance_uid.into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae_title: "PACS".into(),
            peer: "127.0.0.1:104".parse().unwrap(),
            bytes: 0,
            sha256: String::new(),
            association: Some(1),
        }
    }

    /// Every refusal gets the status its kind has in PS3.4 B.2.3, and a
    /// reason without the file's path.
    #[test]
    fn refusals_get_the_status_of_their_kind_and_no_path() {
        let path = PathBuf::from("/data/staging/secret-name.dcm");
        let missing = Error::MissingAttribute {
            path: path.clone(),
            sop_instance_uid: "1.2".into(),
            attribute: "Modality",
        };
        let outcome = refusal(&missing);
        assert_eq!(outcome.status, status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
        assert_eq!(
            outcome.comment.as_deref(),
            Some("required attribute Modality missing")
        );
        let malformed = Error::Malformed {
            path: path.clone(),
            offset: 132,
            reason: "x".repeat(500),
        };
        let outcome = refusal(&malformed);
        assert_eq!(outcome.status, status::CANNOT_UNDERSTAND);
        let comment = outcome.comment.unwrap();
        assert!(
            comment.contains("byte 132") && comment.len() < 220,
            "{comment}"
        );
        assert!(!comment.contains("secret-name"), "{comment}");
    }

    /// The synthetic MR image matches its own command and no other.
    #[test]
    fn a_data_set_must_match_its_command_and_the_study_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let uids = crate::uid::UidGenerator::default();
        let pixels = vec![0u8; 16];
        let mr = crate::write::MrImage::new(4, 4, &pixels, &uids);
        let (study, class, sop) = (
            mr.study_instance_uid.clone(),
            dicom_dictionary_std::uids::MR_IMAGE_STORAGE.to_string(),
            mr.sop_instance_uid.clone(),
        );
        let path = dir.path().join("mr.dcm");
        crate::write::write_part10(mr.build().unwrap(), &path).unwrap();
        let file = open_checked(&path).unwrap();
        assert!(matches_request(&file, &received(&class, &sop), Some(&study)).is_ok());
        assert!(matches_request(&file, &received(&class, &sop), None).is_ok());
        for (class, sop, study) in [
            ("1.2.840.10008.5.1.4.1.1.2", sop.as_str(), None),
            (class.as_str(), "1.2.3", None),
            (class.as_str(), sop.as_str(), Some("1.2.3")),
        ] {
            let outcome = matches_request(&file, &received(class, sop), study).unwrap_err();
            assert_eq!(outcome.status, status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
        }
        // Not DICOM at all: cannot understand.
        std::fs::write(&path, b"not a DICOM file").unwrap();
        assert_eq!(
            open_checked(&path).unwrap_err().status,
            status::CANNOT_UNDERSTAND
        );
    }
}
