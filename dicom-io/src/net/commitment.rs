//! Storage Commitment Push Model (PS3.4 Annex J), the SCU side: Vigie asks
//! a PACS to commit to the safekeeping of the results it stored there.
//!
//! - [`request_commitment`] sends the N-ACTION-RQ (Action Type 1, "Request
//!   Storage Commitment", PS3.4 J.3.2) naming a transaction and the SOP
//!   instances, and reads the N-ACTION-RSP. The SCP answers with an
//!   N-EVENT-REPORT (J.3.3) once it has decided: on the same association
//!   while it is open, or on one it opens to Vigie's SCP later (with the
//!   SCP/SCU Role Selection that makes it the SCP, PS3.7 D.3.3.4). Both are
//!   handled: the association is kept open for `wait` after the N-ACTION-RSP
//!   (and during the release) for a report on it; a later one reaches the
//!   Storage SCP's handler ([`super::scp::StoreHandler::commitment_report`]).
//! - [`decode_report`] reads the event information a peer sends (outside
//!   input: bounded and scanned by [`super::find::decode_identifier`],
//!   fuzzed), [`action_information`] and [`event_information`] write the
//!   two data sets.
//!
//! A transaction names at most [`MAX_REFERENCES`] instances, so that the
//! report of any transaction fits the SCP's 64 KiB bound on a data set of
//! a DIMSE-N request.

use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR, value::DataSetSequence};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{Pdu, PresentationContextResultReason};
use thiserror::Error;

use super::message::{Reader, Received};
use super::scu::{RemoteAe, ScuError, ScuOptions, associate};
use super::tls::DicomStream;
use super::ul::Connection;
use crate::dimse::{Command, field, status};

/// Storage Commitment Push Model SOP Class.
pub const STORAGE_COMMITMENT_PUSH_MODEL: &str = "1.2.840.10008.1.20.1";

/// The well-known Storage Commitment Push Model SOP Instance.
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Action Type ID of the N-ACTION: Request Storage Commitment.
pub const REQUEST_STORAGE_COMMITMENT: u16 = 1;

/// Event Type ID: Storage Commitment Request Successful.
pub const EVENT_SUCCESSFUL: u16 = 1;

/// Event Type ID: Storage Commitment Request Complete - Failures Exist.
pub const EVENT_FAILURES_EXIST: u16 = 2;

/// Most SOP instances one transaction names.
pub const MAX_REFERENCES: usize = 128;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// A SOP instance named in a commitment request or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Referenced SOP Class UID (0008,1150).
    pub sop_class_uid: String,
    /// Referenced SOP Instance UID (0008,1155).
    pub sop_instance_uid: String,
}

/// An instance the SCP did not commit, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The instance.
    pub reference: Reference,
    /// Failure Reason (0008,1197), PS3.3 C.14.1.1 (`0112` no such object
    /// instance, `0110` processing failure…); `None` when the SCP gave none.
    pub reason: Option<u16>,
}

/// An N-EVENT-REPORT of a Storage Commitment SCP: what it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentReport {
    /// Transaction UID (0008,1195) of the request it answers.
    pub transaction_uid: String,
    /// Event Type ID (1: all committed, 2: failures exist).
    pub event_type_id: u16,
    /// Calling AE title of the association it came on (the SCP's, when it
    /// opened its own; ours read back when it came on our association).
    pub calling_ae_title: String,
    /// The address it came from, when the SCP opened the association;
    /// `None` on the association Vigie opened to the destination.
    pub peer: Option<std::net::IpAddr>,
    /// Committed instances (Referenced SOP Sequence).
    pub committed: Vec<Reference>,
    /// Instances not committed (Failed SOP Sequence).
    pub failed: Vec<Failed>,
}

/// What a failure reason means (PS3.3 C.14.1.1), for records and logs.
pub fn describe_failure_reason(reason: Option<u16>) -> String {
    let Some(code) = reason else {
        return "no failure reason given".into();
    };
    let what = match code {
        0x0110 => "processing failure",
        0x0112 => "no such object instance",
        0x0213 => "resource limitation",
        0x0122 => "referenced SOP class not supported",
        0x0119 => "class / instance conflict",
        0x0131 => "duplicate transaction UID",
        _ => "unknown reason",
    };
    format!("{what} (0x{code:04X})")
}

/// Why a commitment could not be requested; the caller asks again later.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommitmentError {
    /// The association could not be established, or broke.
    #[error(transparent)]
    Association(#[from] ScuError),
    /// The peer accepted no Storage Commitment Push Model context.
    #[error("{ae_title} accepted no presentation context for Storage Commitment Push Model")]
    NotSupported {
        /// Called AE title.
        ae_title: String,
    },
    /// The N-ACTION-RSP was a failure.
    #[error(
        "{ae_title} refused the storage commitment request {transaction_uid}: status 0x{status:04X} {comment}"
    )]
    Refused {
        /// Called AE title.
        ae_title: String,
        /// Transaction UID.
        transaction_uid: String,
        /// Status of the N-ACTION-RSP.
        status: u16,
        /// Its Error Comment, or empty.
        comment: String,
    },
    /// The request names no instance or too many.
    #[error("a storage commitment request names 1 to {MAX_REFERENCES} instances, not {0}")]
    Size(usize),
}

fn put_text(object: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn references_sequence(
    references: impl Iterator<Item = InMemDicomObject>,
) -> DataSetSequence<InMemDicomObject> {
    DataSetSequence::from(references.collect::<Vec<_>>())
}

fn reference_item(reference: &Reference) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_text(
        &mut item,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &reference.sop_class_uid,
    );
    put_text(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &reference.sop_instance_uid,
    );
    item
}

/// The SOP class and instance of a Part 10 file, from its file meta
/// information only.
pub fn reference_of(path: &std::path::Path) -> Result<Reference, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::io::BufReader::new(
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?,
    );
    let mut head = [0u8; 132];
    let start = match file.read_exact(&mut head) {
        Ok(()) if &head[128..132] == b"DICM" => 128,
        _ => 0,
    };
    file.seek(SeekFrom::Start(start))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = dicom_object::FileMetaTable::from_reader(&mut file)
        .map_err(|e| format!("cannot read the file meta of {}: {e}", path.display()))?;
    Ok(Reference {
        sop_class_uid: meta
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string(),
        sop_instance_uid: meta
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string(),
    })
}

/// The Action Information of an N-ACTION-RQ (PS3.4 J.3.2.1.1): the
/// transaction and the instances to commit.
pub fn action_information(transaction_uid: &str, references: &[Reference]) -> InMemDicomObject {
    let mut object = InMemDicomObject::new_empty();
    put_text(&mut object, tags::TRANSACTION_UID, VR::UI, transaction_uid);
    object.put(DataElement::new(
        tags::REFERENCED_SOP_SEQUENCE,
        VR::SQ,
        references_sequence(references.iter().map(reference_item)),
    ));
    object
}

/// The Event Information of an N-EVENT-REPORT-RQ (PS3.4 J.3.3.1.1), as an
/// SCP writes it (Vigie's tests play the SCP with it).
pub fn event_information(report: &CommitmentReport) -> InMemDicomObject {
    let mut object = InMemDicomObject::new_empty();
    put_text(
        &mut object,
        tags::TRANSACTION_UID,
        VR::UI,
        &report.transaction_uid,
    );
    if !report.committed.is_empty() {
        object.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            references_sequence(report.committed.iter().map(reference_item)),
        ));
    }
    if !report.failed.is_empty() {
        object.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            references_sequence(report.failed.iter().map(|f| {
                let mut item = reference_item(&f.reference);
                if let Some(reason) = f.reason {
                    item.put(DataElement::new(
                        tags::FAILURE_REASON,
                        VR::US,
                        PrimitiveValue::from(reason),
                    ));
                }
                item
            })),
        ));
    }
    object
}

fn text_of(item: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    item.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn references_in(
    object: &InMemDicomObject,
    tag: dicom_core::Tag,
) -> Result<Vec<(Reference, Option<u16>)>, String> {
    let Some(element) = object.get(tag) else {
        return Ok(Vec::new());
    };
    let Some(items) = element.items() else {
        return Err(format!("{tag} is not a sequence"));
    };
    if items.len() > MAX_REFERENCES {
        return Err(format!(
            "{tag} names {} instances, more than {MAX_REFERENCES}",
            items.len()
        ));
    }
    items
        .iter()
        .map(|item| {
            let sop_instance_uid = text_of(item, tags::REFERENCED_SOP_INSTANCE_UID)
                .ok_or_else(|| format!("an item of {tag} has no Referenced SOP Instance UID"))?;
            let reason = item
                .get(tags::FAILURE_REASON)
                .and_then(|e| e.to_int::<u16>().ok());
            Ok((
                Reference {
                    sop_class_uid: text_of(item, tags::REFERENCED_SOP_CLASS_UID)
                        .unwrap_or_default(),
                    sop_instance_uid,
                },
                reason,
            ))
        })
        .collect()
}

/// Read the Event Information of an N-EVENT-REPORT-RQ received in
/// `transfer_syntax` (outside input: bounded, scanned, then parsed).
pub fn decode_report(
    bytes: &[u8],
    transfer_syntax: &str,
    event_type_id: u16,
    calling_ae_title: &str,
) -> Result<CommitmentReport, String> {
    let object = super::find::decode_identifier(bytes, transfer_syntax)?;
    let transaction_uid = text_of(&object, tags::TRANSACTION_UID)
        .ok_or("the report has no Transaction UID (0008,1195)")?;
    let committed = references_in(&object, tags::REFERENCED_SOP_SEQUENCE)?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let failed = references_in(&object, tags::FAILED_SOP_SEQUENCE)?
        .into_iter()
        .map(|(reference, reason)| Failed { reference, reason })
        .collect();
    Ok(CommitmentReport {
        transaction_uid,
        event_type_id,
        calling_ae_title: calling_ae_title.to_string(),
        peer: None,
        committed,
        failed,
    })
}

/// What answering a report on our association needs to know of it.
#[derive(Clone, Copy)]
struct Peer<'a> {
    transfer_syntax: &'a str,
    calling_ae_title: &'a str,
    peer_max: u32,
    timeout: Duration,
}

/// Answer an N-EVENT-REPORT-RQ received on our own association: the
/// report, and Success; an unreadable one is answered Processing Failure.
async fn answer_report(
    association: &mut Connection<DicomStream>,
    peer: &Peer<'_>,
    context: u8,
    command: &Command,
    data: &[u8],
) -> Result<Option<CommitmentReport>, String> {
    let decoded =
        if command.affected_sop_class_uid.as_deref() == Some(STORAGE_COMMITMENT_PUSH_MODEL) {
            decode_report(
                data,
                peer.transfer_syntax,
                command.event_type_id.unwrap_or(0),
                peer.calling_ae_title,
            )
        } else {
            Err("N-EVENT-REPORT of another SOP class".to_string())
        };
    let code = if decoded.is_ok() {
        status::SUCCESS
    } else {
        status::PROCESSING_FAILURE
    };
    let response = command.response(code, decoded.as_ref().err().map(String::as_str));
    super::scu::send_message(
        association,
        context,
        &response,
        &[],
        peer.peer_max,
        peer.timeout,
    )
    .await
    .map_err(|e| format!("N-EVENT-REPORT-RSP: {e}"))?;
    match decoded {
        Ok(report) => Ok(Some(report)),
        Err(e) => {
            tracing::warn!(error = %e, "storage commitment report unreadable; answered 0110");
            Ok(None)
        }
    }
}

/// Handle one message received after the request: a report is answered
/// and kept; anything else ends the exchange (`Err`).
async fn take_report(
    association: &mut Connection<DicomStream>,
    peer: &Peer<'_>,
    (context, command, data): (u8, Command, Vec<u8>),
    reports: &mut Vec<CommitmentReport>,
) -> Result<(), String> {
    if command.field != field::N_EVENT_REPORT_RQ {
        return Err(format!(
            "unexpected message (command 0x{:04X})",
            command.field
        ));
    }
    if let Some(report) = answer_report(association, peer, context, &command, &data).await? {
        reports.push(report);
    }
    Ok(())
}

/// What a storage commitment request came to: the reports that came on
/// its association (each already answered Success: apply them whatever
/// the outcome), and whether the request itself was accepted.
#[derive(Debug)]
pub struct Exchange {
    /// Reports received on the requesting association.
    pub reports: Vec<CommitmentReport>,
    /// `Ok` once the N-ACTION-RSP accepted the request.
    pub outcome: Result<(), CommitmentError>,
}

/// Ask `remote` to commit `references` under `transaction_uid` (record the
/// transaction first: the report may come on another association before
/// this returns). `wait` is how long the association stays open after the
/// N-ACTION-RSP for a report on it. Returns the reports that came on it
/// (each already answered Success); once the N-ACTION-RSP accepted the
/// request, whatever goes wrong afterwards (a silent or aborting peer)
/// only ends the wait: the request stands.
pub async fn request_commitment(
    remote: &RemoteAe,
    options: &ScuOptions,
    transaction_uid: &str,
    references: &[Reference],
    wait: Duration,
) -> Exchange {
    let mut reports = Vec::new();
    let outcome = exchange(
        remote,
        options,
        transaction_uid,
        references,
        wait,
        &mut reports,
    )
    .await;
    Exchange { reports, outcome }
}

/// Release, answering the reports that cross the A-RELEASE-RQ (PS3.8
/// state Sta7 allows P-DATA both ways), all within `timeout`.
async fn release_reading(
    association: &mut Connection<DicomStream>,
    reader: &mut Reader,
    peer: &Peer<'_>,
    reports: &mut Vec<CommitmentReport>,
    timeout: Duration,
) -> Result<(), String> {
    let release = async {
        association
            .send(&Pdu::ReleaseRQ)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match reader
                .next(association, tokio::time::Instant::now() + timeout)
                .await?
            {
                Received::Released => break,
                Received::Message(ctx, command, body) => {
                    take_report(association, peer, (ctx, command, body), reports).await?;
                }
            }
        }
        Ok::<_, String>(())
    };
    let result = tokio::time::timeout(timeout, release)
        .await
        .unwrap_or_else(|_| Err("timeout releasing".into()));
    association.shutdown().await;
    result
}

async fn exchange(
    remote: &RemoteAe,
    options: &ScuOptions,
    transaction_uid: &str,
    references: &[Reference],
    wait: Duration,
    reports: &mut Vec<CommitmentReport>,
) -> Result<(), CommitmentError> {
    if references.is_empty() || references.len() > MAX_REFERENCES {
        return Err(CommitmentError::Size(references.len()));
    }
    let contexts = vec![(
        STORAGE_COMMITMENT_PUSH_MODEL.to_string(),
        vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
    )];
    let (mut association, negotiated) = associate(remote, options, contexts).await?;
    let transfer = |reason: String| {
        CommitmentError::Association(ScuError::Transfer {
            ae_title: remote.ae_title.clone(),
            sop_instance_uid: String::new(),
            reason: format!("storage commitment {transaction_uid}: {reason}"),
        })
    };
    let accepted = negotiated
        .contexts
        .iter()
        .find(|c| c.reason == PresentationContextResultReason::Acceptance)
        .map(|c| (c.id, c.transfer_syntax.trim_end_matches('\0').to_string()));
    let Some((context, ts)) = accepted else {
        let _ = tokio::time::timeout(options.timeout, super::ul::release(&mut association)).await;
        return Err(CommitmentError::NotSupported {
            ae_title: remote.ae_title.clone(),
        });
    };
    let syntax = TransferSyntaxRegistry
        .get(&ts)
        .ok_or_else(|| transfer(format!("unknown transfer syntax {ts}")))?;
    let mut data = Vec::new();
    action_information(transaction_uid, references)
        .write_dataset_with_ts(&mut data, syntax)
        .map_err(|e| transfer(format!("cannot encode the request: {e}")))?;
    let request = Command::action_request(
        1,
        STORAGE_COMMITMENT_PUSH_MODEL,
        STORAGE_COMMITMENT_INSTANCE,
        REQUEST_STORAGE_COMMITMENT,
    );
    let peer_max = negotiated.peer_max_pdu_length;
    super::scu::send_message(
        &mut association,
        context,
        &request,
        &data,
        peer_max,
        options.timeout,
    )
    .await
    .map_err(|e| transfer(format!("N-ACTION-RQ: {e}")))?;
    let peer = Peer {
        transfer_syntax: &ts,
        calling_ae_title: &remote.ae_title,
        peer_max,
        timeout: options.timeout,
    };
    let mut reader = Reader::new(super::scp::MAX_FIND_IDENTIFIER);
    // The N-ACTION-RSP (a quick SCP may report first), within the timeout
    // however many reports come first.
    let answer_by = tokio::time::Instant::now() + options.timeout;
    loop {
        let received = reader
            .next(&mut association, answer_by)
            .await
            .map_err(transfer)?;
        let Received::Message(ctx, command, body) = received else {
            return Err(transfer(
                "the peer ended the association before answering".into(),
            ));
        };
        if command.field == field::N_ACTION_RSP && command.responding_to == Some(1) {
            let code = command.status.unwrap_or(status::PROCESSING_FAILURE);
            if code != status::SUCCESS && status::category(code) != "warning" {
                let _ = release_reading(
                    &mut association,
                    &mut reader,
                    &peer,
                    reports,
                    options.timeout,
                )
                .await;
                return Err(CommitmentError::Refused {
                    ae_title: remote.ae_title.clone(),
                    transaction_uid: transaction_uid.to_string(),
                    status: code,
                    comment: command.error_comment.unwrap_or_default(),
                });
            }
            break;
        }
        take_report(&mut association, &peer, (ctx, command, body), reports)
            .await
            .map_err(transfer)?;
    }
    // Accepted: from here on a failure only ends the exchange.
    let ended = |e: String| {
        tracing::debug!(error = %e, transaction = transaction_uid, "after the storage commitment request");
    };
    // Reports on this association, within `wait`.
    let deadline = tokio::time::Instant::now() + wait;
    let mut open = true;
    // Until this transaction's report (a late one of an earlier
    // transaction may come first).
    while !reports.iter().any(|r| r.transaction_uid == transaction_uid) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match reader.next(&mut association, deadline).await {
            Ok(Received::Message(ctx, command, body)) => {
                if let Err(e) =
                    take_report(&mut association, &peer, (ctx, command, body), reports).await
                {
                    ended(e);
                    open = false;
                    break;
                }
            }
            // A timeout ends the wait, nothing else.
            Err(e) if e.starts_with("timeout") => {}
            Ok(Received::Released) | Err(_) => {
                open = false;
                break;
            }
        }
    }
    if !open {
        association.shutdown().await;
        return Ok(());
    }
    if let Err(e) = release_reading(
        &mut association,
        &mut reader,
        &peer,
        reports,
        options.timeout,
    )
    .await
    {
        ended(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> CommitmentReport {
        CommitmentReport {
            transaction_uid: "2.25.1234".into(),
            event_type_id: EVENT_FAILURES_EXIST,
            calling_ae_title: "PACS".into(),
            peer: None,
            committed: vec![Reference {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.22".into(),
                sop_instance_uid: "2.25.1".into(),
            }],
            failed: vec![Failed {
                reference: Reference {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4".into(),
                    sop_instance_uid: "2.25.2".into(),
                },
                reason: Some(0x0112),
            }],
        }
    }

    fn encoded(object: &InMemDicomObject, ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        object
            .write_dataset_with_ts(&mut out, TransferSyntaxRegistry.get(ts).expect("ts"))
            .expect("encodes");
        out
    }

    #[test]
    fn a_report_round_trips_in_both_little_endian_syntaxes() {
        for ts in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
            let bytes = encoded(&event_information(&report()), ts);
            let decoded = decode_report(&bytes, ts, EVENT_FAILURES_EXIST, "PACS").expect("reads");
            assert_eq!(decoded, report());
        }
        assert_eq!(
            describe_failure_reason(Some(0x0112)),
            "no such object instance (0x0112)"
        );
    }

    #[test]
    fn a_report_without_transaction_or_with_too_many_items_is_refused() {
        let mut object = event_information(&report());
        object.remove_element(tags::TRANSACTION_UID);
        let bytes = encoded(&object, EXPLICIT_VR_LE);
        assert!(
            decode_report(&bytes, EXPLICIT_VR_LE, 1, "PACS")
                .unwrap_err()
                .contains("Transaction UID")
        );
        let many: Vec<Reference> = (0..=MAX_REFERENCES)
            .map(|i| Reference {
                sop_class_uid: "1.2.3".into(),
                sop_instance_uid: format!("2.25.{i}"),
            })
            .collect();
        let bytes = encoded(&action_information("2.25.9", &many), EXPLICIT_VR_LE);
        assert!(
            decode_report(&bytes, EXPLICIT_VR_LE, 1, "PACS")
                .unwrap_err()
                .contains("more than 128")
        );
    }

    #[test]
    fn the_action_information_names_the_transaction_and_each_instance() {
        let refs = report().committed;
        let object = action_information("2.25.77", &refs);
        assert_eq!(
            text_of(&object, tags::TRANSACTION_UID).as_deref(),
            Some("2.25.77")
        );
        let items = object
            .get(tags::REFERENCED_SOP_SEQUENCE)
            .and_then(|e| e.items())
            .expect("sequence");
        assert_eq!(items.len(), 1);
        assert_eq!(
            text_of(&items[0], tags::REFERENCED_SOP_INSTANCE_UID).as_deref(),
            Some("2.25.1")
        );
    }

    /// The report parser against arbitrary bytes: never a panic, always
    /// within its bounds.
    #[test]
    fn fuzz_commitment_reports() {
        use vigie_test_support::fuzz;
        let seeds = vec![encoded(&event_information(&report()), EXPLICIT_VR_LE)];
        let summary = fuzz::run(
            "commitment-report",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(6),
            |bytes| {
                let _ = decode_report(bytes, EXPLICIT_VR_LE, 2, "PACS");
                let _ = decode_report(bytes, IMPLICIT_VR_LE, 1, "PACS");
            },
        );
        assert!(summary.executions > 4, "{summary:?}");
    }
}
