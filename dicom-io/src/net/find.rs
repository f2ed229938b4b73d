//! Query SCU: C-FIND (PS3.4 C.4.1) in the Study Root Query/Retrieve
//! Information Model, for what Vigie asks a PACS (today: how many
//! instances it holds for a study, `NumberOfStudyRelatedInstances`).
//!
//! The peer's answers are outside input: each identifier is bounded
//! ([`MAX_IDENTIFIER_BYTES`]), their number too ([`MAX_MATCHES`]), and they
//! are parsed by [`decode_identifier`] (fuzzed) in the negotiated transfer
//! syntax.

use std::io::Cursor;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{Pdu, PresentationContextResultReason};

use super::message::{MessageAssembler, Step};
use super::scu::{RemoteAe, ScuError, ScuOptions, associate};
use super::ul;
use crate::dimse::{Command, field, status};

/// Study Root Query/Retrieve Information Model - FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

/// Patient Root Query/Retrieve Information Model - FIND.
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";

/// Patient Root Query/Retrieve Information Model - MOVE.
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";

/// Study Root Query/Retrieve Information Model - MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

/// Patient Root Query/Retrieve Information Model - GET.
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";

/// Study Root Query/Retrieve Information Model - GET.
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// Largest identifier accepted in a C-FIND-RSP.
pub const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

/// Most matches read from one query; the rest are refused (the query is
/// cancelled by releasing the association).
pub const MAX_MATCHES: usize = 1000;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// What a C-FIND returned.
#[derive(Debug, Clone)]
pub struct FindOutcome {
    /// The identifiers of the pending responses, in order.
    pub matches: Vec<InMemDicomObject>,
    /// The final status (`0000` when the query completed).
    pub status: u16,
    /// The final response's Error Comment, if any.
    pub comment: Option<String>,
}

/// Parse a C-FIND identifier received in `transfer_syntax`.
pub fn decode_identifier(bytes: &[u8], transfer_syntax: &str) -> Result<InMemDicomObject, String> {
    if bytes.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "identifier of {} bytes, more than {MAX_IDENTIFIER_BYTES}",
            bytes.len()
        ));
    }
    let transfer_syntax = transfer_syntax.trim_end_matches('\0');
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
    crate::scan::scan_dataset(
        bytes,
        transfer_syntax,
        &crate::scan::limits(),
        std::path::Path::new("C-FIND identifier"),
    )
    .map_err(|e| e.to_string())?;
    InMemDicomObject::read_dataset_with_ts(Cursor::new(bytes), ts).map_err(|e| e.to_string())
}

/// The identifier of a STUDY level query for one study, asking for
/// `return_keys` (empty values, as PS3.4 C.2.2.1.2 asks).
pub fn study_query(study_instance_uid: &str, return_keys: &[(Tag, VR)]) -> InMemDicomObject {
    let mut identifier = InMemDicomObject::new_empty();
    identifier.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from("STUDY"),
    ));
    identifier.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(study_instance_uid),
    ));
    for (tag, vr) in return_keys {
        identifier.put(DataElement::new(*tag, *vr, PrimitiveValue::Empty));
    }
    identifier
}

/// Run one C-FIND of `identifier` in the Study Root model against
/// `remote`, then release the association; more than `max_matches`
/// matches (at most [`MAX_MATCHES`]) is an error. Each PDU is bounded by
/// the options' timeout; the caller bounds the whole.
pub async fn find(
    remote: &RemoteAe,
    options: &ScuOptions,
    identifier: &InMemDicomObject,
    max_matches: usize,
) -> Result<FindOutcome, ScuError> {
    let contexts = vec![(
        STUDY_ROOT_FIND.to_string(),
        vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
    )];
    let (mut association, negotiated) = associate(remote, options, contexts).await?;
    let failed = |reason: String| ScuError::Associate {
        ae_title: remote.ae_title.clone(),
        host: remote.host.clone(),
        port: remote.port,
        reason,
    };
    let Some(context) = negotiated
        .contexts
        .iter()
        .find(|c| c.reason == PresentationContextResultReason::Acceptance)
    else {
        let _ = tokio::time::timeout(options.timeout, ul::release(&mut association)).await;
        return Err(failed(
            "the peer accepted no presentation context for Study Root C-FIND".into(),
        ));
    };
    let (id, ts) = (context.id, context.transfer_syntax.clone());
    let syntax = TransferSyntaxRegistry
        .get(ts.trim_end_matches('\0'))
        .ok_or_else(|| failed(format!("unknown transfer syntax {ts}")))?;
    let mut encoded = Vec::new();
    identifier
        .write_dataset_with_ts(&mut encoded, syntax)
        .map_err(|e| failed(format!("cannot encode the query: {e}")))?;
    let request = Command::find_request(1, STUDY_ROOT_FIND);
    let peer_max = negotiated.peer_max_pdu_length;
    let transfer = |reason: String| ScuError::Transfer {
        ae_title: remote.ae_title.clone(),
        sop_instance_uid: String::new(),
        reason,
    };
    super::scu::send_message(
        &mut association,
        id,
        &request,
        &encoded,
        peer_max,
        options.timeout,
    )
    .await
    .map_err(|e| transfer(format!("C-FIND-RQ: {e}")))?;
    let outcome = read_responses(
        &mut association,
        &ts,
        options.timeout,
        max_matches.min(MAX_MATCHES),
    )
    .await;
    let _ = tokio::time::timeout(options.timeout, ul::release(&mut association)).await;
    outcome.map_err(transfer)
}

/// Read C-FIND-RSPs until the final one.
async fn read_responses(
    association: &mut ul::Connection<super::tls::DicomStream>,
    transfer_syntax: &str,
    timeout: Duration,
    max_matches: usize,
) -> Result<FindOutcome, String> {
    let mut assembler = MessageAssembler::new();
    let mut matches = Vec::new();
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let pdu = tokio::time::timeout(timeout, association.receive())
            .await
            .map_err(|_| "timeout waiting for a C-FIND-RSP".to_string())?
            .map_err(|e| e.to_string())?;
        let data = match pdu {
            Pdu::PData { data } => data,
            Pdu::AbortRQ { source } => return Err(format!("aborted by the peer ({source:?})")),
            other => return Err(format!("unexpected PDU {other:?}")),
        };
        for value in data {
            match assembler.push(value).map_err(|e| e.to_string())? {
                Step::Pending => {}
                Step::Command { command, .. } => {
                    if command.field != field::C_FIND_RSP || command.responding_to != Some(1) {
                        return Err(format!(
                            "unexpected response (command 0x{:04X})",
                            command.field
                        ));
                    }
                    let code = command.status.unwrap_or(status::PROCESSING_FAILURE);
                    if status::category(code) == "pending" {
                        if !command.has_data_set {
                            return Err("pending C-FIND-RSP without an identifier".into());
                        }
                        pending = Some(Vec::new());
                        continue;
                    }
                    return Ok(FindOutcome {
                        matches,
                        status: code,
                        comment: command.error_comment,
                    });
                }
                Step::Data { bytes, last, .. } => {
                    let Some(buffer) = pending.as_mut() else {
                        return Err("identifier without a pending C-FIND-RSP".into());
                    };
                    if buffer.len() + bytes.len() > MAX_IDENTIFIER_BYTES {
                        return Err(format!(
                            "identifier longer than {MAX_IDENTIFIER_BYTES} bytes"
                        ));
                    }
                    buffer.extend_from_slice(&bytes);
                    if last {
                        let bytes = pending.take().unwrap_or_default();
                        matches.push(decode_identifier(&bytes, transfer_syntax)?);
                        if matches.len() > max_matches {
                            return Err(format!("more than {max_matches} matches"));
                        }
                    }
                }
            }
        }
    }
}

/// How many instances `remote` holds for a study
/// (`NumberOfStudyRelatedInstances` of its STUDY level match): `None` when
/// it does not know the study or does not say.
pub async fn study_instance_count(
    remote: &RemoteAe,
    options: &ScuOptions,
    study_instance_uid: &str,
) -> Result<Option<u64>, ScuError> {
    let query = study_query(
        study_instance_uid,
        &[(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS)],
    );
    // One deadline for the whole query, whatever the peer sends: a study
    // has one match, a few are tolerated.
    let outcome = tokio::time::timeout(options.timeout, find(remote, options, &query, 16))
        .await
        .map_err(|_| ScuError::Associate {
            ae_title: remote.ae_title.clone(),
            host: remote.host.clone(),
            port: remote.port,
            reason: "C-FIND not answered within the timeout".into(),
        })??;
    if outcome.status != status::SUCCESS {
        return Err(ScuError::Associate {
            ae_title: remote.ae_title.clone(),
            host: remote.host.clone(),
            port: remote.port,
            reason: format!(
                "C-FIND answered 0x{:04X}{}",
                outcome.status,
                outcome
                    .comment
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(outcome.matches.iter().find_map(|m| {
        let uid = m.element(tags::STUDY_INSTANCE_UID).ok()?.to_str().ok()?;
        if uid.trim_end_matches(['\0', ' ']) != study_instance_uid {
            return None;
        }
        m.element(tags::NUMBER_OF_STUDY_RELATED_INSTANCES)
            .ok()?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer() -> Vec<u8> {
        let mut identifier = study_query("1.2.3.4", &[]);
        identifier.put(DataElement::new(
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            VR::IS,
            PrimitiveValue::from("12"),
        ));
        let mut bytes = Vec::new();
        identifier
            .write_dataset_with_ts(
                &mut bytes,
                TransferSyntaxRegistry.get(EXPLICIT_VR_LE).unwrap(),
            )
            .unwrap();
        bytes
    }

    #[test]
    fn an_identifier_reads_back_and_hostile_ones_are_refused() {
        let decoded = decode_identifier(&answer(), EXPLICIT_VR_LE).unwrap();
        let count = decoded
            .element(tags::NUMBER_OF_STUDY_RELATED_INSTANCES)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(count.trim(), "12");
        assert!(decode_identifier(&answer(), "1.2.3.unknown").is_err());
        assert!(decode_identifier(&vec![0u8; MAX_IDENTIFIER_BYTES + 1], IMPLICIT_VR_LE).is_err());
        let mut truncated = answer();
        truncated.truncate(truncated.len() - 3);
        assert!(decode_identifier(&truncated, EXPLICIT_VR_LE).is_err());
    }

    /// Bounded, seeded fuzzing of the C-FIND identifier reader
    /// (docs/fuzzing.md): a PACS's answers are outside input.
    #[test]
    fn fuzz_find_identifiers() {
        use vigie_test_support::fuzz;
        let seeds = vec![answer()];
        let summary = fuzz::run(
            "find-identifier",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(6),
            |bytes| {
                let _ = decode_identifier(bytes, EXPLICIT_VR_LE);
                let _ = decode_identifier(bytes, IMPLICIT_VR_LE);
            },
        );
        assert!(summary.executions > 0);
    }
}
