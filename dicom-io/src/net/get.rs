//! Retrieve SCU: C-GET (PS3.4 C.4.3) in the Study Root Query/Retrieve
//! Information Model, for what Vigie fetches from a PACS (today: the prior
//! studies a model compares with).
//!
//! The instances come back on the same association, as C-STORE
//! sub-operations on the storage contexts this side proposed with the SCP
//! role (SCP/SCU Role Selection, PS3.7 D.3.3.4). Everything the peer sends
//! is outside input: each instance is bounded, their number and total size
//! too ([`GetLimits`]); an instance beyond a bound, on a context that is not
//! one of ours, of another class than its context, or with malformed UIDs
//! is answered with a failure status and never kept. Kept instances are
//! written as Part 10 files into the caller's folder; the caller decides
//! what to do with them (they are not ingested).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{AbortRQSource, Pdu, PresentationContextResultReason};

use super::find::STUDY_ROOT_GET;
use super::message::{Reader, Received};
use super::scu::{RemoteAe, ScuError, ScuOptions, associate_with_roles};
use super::tls::DicomStream;
use super::ul::{self, Connection, Negotiated};
use crate::dimse::{Command, field, status};
use crate::pixels::DECODABLE_TRANSFER_SYNTAXES;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// C-CANCEL-RQ (PS3.7 9.3.2.3): sent once a bound is reached.
const C_CANCEL_RQ: u16 = 0x0FFF;

/// Refused sub-operations named one by one in [`GetOutcome::refused`];
/// beyond, only counted.
const MAX_NAMED_REFUSALS: usize = 64;

/// Refused sub-operations after which the association is aborted: a peer
/// that goes on sending after a C-CANCEL would otherwise hold it for the
/// caller's whole deadline.
const MAX_REFUSALS: usize = 1000;

/// Bounds on what one C-GET may bring back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLimits {
    /// Most instances kept; the others are answered Out of Resources.
    pub max_instances: usize,
    /// Largest data set kept, in bytes.
    pub max_instance_bytes: usize,
    /// Most bytes kept in all.
    pub max_total_bytes: u64,
}

impl Default for GetLimits {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_instance_bytes: 256 << 20,
            max_total_bytes: 1 << 30,
        }
    }
}

/// An instance received by a C-GET and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievedFile {
    /// The Part 10 file written.
    pub path: PathBuf,
    /// Affected SOP Class UID of its C-STORE-RQ.
    pub sop_class_uid: String,
    /// Affected SOP Instance UID of its C-STORE-RQ.
    pub sop_instance_uid: String,
    /// Transfer syntax of its data set.
    pub transfer_syntax: String,
    /// Size of its data set.
    pub bytes: u64,
}

/// What a C-GET came to.
#[derive(Debug, Clone)]
pub struct GetOutcome {
    /// The instances kept, in the order they came.
    pub files: Vec<RetrievedFile>,
    /// Sub-operations this side answered with a failure: SOP Instance UID
    /// (when it had one) and why (the first 64).
    pub refused: Vec<(String, String)>,
    /// How many sub-operations this side answered with a failure.
    pub refused_count: usize,
    /// Whether this side sent a C-CANCEL-GET-RQ (a bound was reached).
    pub cancelled: bool,
    /// Why this side aborted the association after its cancel (the peer
    /// went on sending), if it did: the instances kept stand, `status` is
    /// then `0110` (no final response).
    pub aborted: Option<String>,
    /// The final C-GET-RSP status (`0000`, `B000` when some sub-operations
    /// failed, `FE00`, or a failure).
    pub status: u16,
    /// The final response's Error Comment, if any.
    pub comment: Option<String>,
    /// Number of Failed Sub-operations the final response reported.
    pub failed: u16,
}

/// Run one C-GET of `identifier` in the Study Root model against `remote`,
/// proposing the SCP role for `storage_classes` (at most 127), keeping the
/// instances as Part 10 files in `dir` within `limits`, then release the
/// association. Each PDU is bounded by the options' timeout; the caller
/// bounds the whole.
pub async fn get(
    remote: &RemoteAe,
    options: &ScuOptions,
    identifier: &InMemDicomObject,
    storage_classes: &[&str],
    dir: &Path,
    limits: GetLimits,
) -> Result<GetOutcome, ScuError> {
    let failed = |reason: String| ScuError::Associate {
        ae_title: remote.ae_title.clone(),
        host: remote.host.clone(),
        port: remote.port,
        reason,
    };
    if storage_classes.is_empty() || storage_classes.len() > 127 {
        return Err(failed(format!(
            "{} storage classes for a C-GET: 1 to 127",
            storage_classes.len()
        )));
    }
    // Native first, then what Vigie decodes (Big Endian, retired, left
    // out): the peer chooses among them.
    let mut syntaxes = vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()];
    for ts in DECODABLE_TRANSFER_SYNTAXES {
        if !syntaxes.iter().any(|s| s == ts) && *ts != "1.2.840.10008.1.2.2" {
            syntaxes.push(ts.to_string());
        }
    }
    let mut contexts = vec![(
        STUDY_ROOT_GET.to_string(),
        vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
    )];
    contexts.extend(
        storage_classes
            .iter()
            .map(|class| (class.to_string(), syntaxes.clone())),
    );
    let roles = storage_classes.iter().map(|c| c.to_string()).collect();
    let (mut association, negotiated) =
        associate_with_roles(remote, options, contexts, roles).await?;
    let Some(query) = negotiated
        .contexts
        .iter()
        .find(|c| {
            c.reason == PresentationContextResultReason::Acceptance
                && c.abstract_syntax == STUDY_ROOT_GET
        })
        .map(|c| (c.id, c.transfer_syntax.clone()))
    else {
        let _ = tokio::time::timeout(options.timeout, ul::release(&mut association)).await;
        return Err(failed(
            "the peer accepted no presentation context for Study Root C-GET".into(),
        ));
    };
    // Without the SCP role for a storage class, the peer may not send
    // instances of it on this association (PS3.7 D.3.3.4): at least one
    // accepted storage context must have it.
    let usable = negotiated.contexts.iter().any(|c| {
        c.reason == PresentationContextResultReason::Acceptance
            && c.abstract_syntax != STUDY_ROOT_GET
            && negotiated.requester_scp.contains(&c.abstract_syntax)
    });
    if !usable {
        let _ = tokio::time::timeout(options.timeout, ul::release(&mut association)).await;
        return Err(failed(
            "the peer granted the SCP role on no accepted storage context: a C-GET cannot bring anything back"
                .into(),
        ));
    }
    let transfer = |reason: String| ScuError::Transfer {
        ae_title: remote.ae_title.clone(),
        sop_instance_uid: String::new(),
        reason,
    };
    let mut session = Session {
        negotiated: &negotiated,
        dir,
        limits,
        timeout: options.timeout,
        files: Vec::new(),
        refused: Vec::new(),
        refused_count: 0,
        cancelled: false,
        bound_reached: false,
        kept_bytes: 0,
    };
    let outcome = session.run(&mut association, query, identifier).await;
    let (status, comment, failed, aborted) = match outcome {
        Ok(ReadEnd::Final(status, comment, failed)) => {
            let _ = tokio::time::timeout(options.timeout, ul::release(&mut association)).await;
            (status, comment, failed, None)
        }
        // Mid-operation: no release, an abort (PS3.8 7.3.4).
        Ok(ReadEnd::Aborted(reason)) => {
            abort(&mut association, options.timeout).await;
            (status::PROCESSING_FAILURE, None, 0, Some(reason))
        }
        Err(e) => {
            abort(&mut association, options.timeout).await;
            session.remove_files();
            return Err(transfer(e));
        }
    };
    Ok(GetOutcome {
        files: session.files,
        refused: session.refused,
        refused_count: session.refused_count,
        cancelled: session.cancelled,
        aborted,
        status,
        comment,
        failed,
    })
}

/// A-ABORT (this side, as service user: PS3.8 9.3.8), then close.
async fn abort(association: &mut Connection<DicomStream>, timeout: Duration) {
    let abort = Pdu::AbortRQ {
        source: AbortRQSource::ServiceUser,
    };
    let _ = tokio::time::timeout(timeout, association.send(&abort)).await;
    association.shutdown().await;
}

/// How the responses of a C-GET ended.
enum ReadEnd {
    /// The final C-GET-RSP: status, Error Comment, failed count.
    Final(u16, Option<String>, u16),
    /// This side stopped a peer that went on after its C-CANCEL: what was
    /// kept stands.
    Aborted(String),
}

/// The state of one C-GET's responses and sub-operations.
struct Session<'a> {
    negotiated: &'a Negotiated,
    dir: &'a Path,
    limits: GetLimits,
    timeout: Duration,
    files: Vec<RetrievedFile>,
    refused: Vec<(String, String)>,
    refused_count: usize,
    cancelled: bool,
    /// A bound on what is kept refused an instance: time to cancel.
    bound_reached: bool,
    kept_bytes: u64,
}

impl Session<'_> {
    /// Send the C-GET-RQ of `identifier` on the query context, then read
    /// until the final C-GET-RSP.
    async fn run(
        &mut self,
        association: &mut Connection<DicomStream>,
        (query_context, transfer_syntax): (u8, String),
        identifier: &InMemDicomObject,
    ) -> Result<ReadEnd, String> {
        let syntax = TransferSyntaxRegistry
            .get(transfer_syntax.trim_end_matches('\0'))
            .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
        let mut encoded = Vec::new();
        identifier
            .write_dataset_with_ts(&mut encoded, syntax)
            .map_err(|e| format!("cannot encode the query: {e}"))?;
        let request = Command::get_request(1, STUDY_ROOT_GET);
        super::scu::send_message(
            association,
            query_context,
            &request,
            &encoded,
            self.negotiated.peer_max_pdu_length,
            self.timeout,
        )
        .await
        .map_err(|e| format!("C-GET-RQ: {e}"))?;
        self.read(association, query_context).await
    }

    /// Read until the final C-GET-RSP.
    async fn read(
        &mut self,
        association: &mut Connection<DicomStream>,
        query_context: u8,
    ) -> Result<ReadEnd, String> {
        // A data set beyond the bound ends the exchange: the reader cannot
        // skip it (PDVs are not length-prefixed as a whole).
        let mut reader = Reader::new(self.limits.max_instance_bytes);
        loop {
            let deadline = tokio::time::Instant::now() + self.timeout;
            let (context, command, data) = match reader.next(association, deadline).await? {
                Received::Message(context, command, data) => (context, command, data),
                Received::Released => return Err("the peer released during the C-GET".into()),
            };
            match command.field {
                field::C_STORE_RQ => {
                    let (code, comment) = self.keep(context, &command, &data);
                    let response = command.response(code, comment.as_deref());
                    super::scu::send_message(
                        association,
                        context,
                        &response,
                        &[],
                        self.negotiated.peer_max_pdu_length,
                        self.timeout,
                    )
                    .await
                    .map_err(|e| format!("C-STORE-RSP: {e}"))?;
                    if self.refused_count > MAX_REFUSALS {
                        let reason = format!(
                            "more than {MAX_REFUSALS} sub-operations refused: the peer goes on sending"
                        );
                        return if self.files.is_empty() {
                            Err(reason)
                        } else {
                            Ok(ReadEnd::Aborted(reason))
                        };
                    }
                    // A bound reached: ask the peer to stop (it answers
                    // FE00 once the sub-operation in flight is done).
                    if self.bound_reached && !self.cancelled {
                        self.cancelled = true;
                        let cancel = Command {
                            field: C_CANCEL_RQ,
                            responding_to: Some(1),
                            ..Command::default()
                        };
                        super::scu::send_message(
                            association,
                            query_context,
                            &cancel,
                            &[],
                            self.negotiated.peer_max_pdu_length,
                            self.timeout,
                        )
                        .await
                        .map_err(|e| format!("C-CANCEL-GET-RQ: {e}"))?;
                    }
                }
                field::C_GET_RSP
                    if context == query_context && command.responding_to == Some(1) =>
                {
                    let code = command.status.unwrap_or(status::PROCESSING_FAILURE);
                    if status::category(code) == "pending" {
                        continue;
                    }
                    let failed = command.sub_operations.map(|s| s.failed).unwrap_or(0);
                    return Ok(ReadEnd::Final(code, command.error_comment, failed));
                }
                other => return Err(format!("unexpected message (command 0x{other:04X})")),
            }
        }
    }

    /// Keep one C-STORE sub-operation's instance, or say why not: the
    /// status and comment to answer.
    fn keep(&mut self, context: u8, command: &Command, data: &[u8]) -> (u16, Option<String>) {
        let instance = command
            .affected_sop_instance_uid
            .clone()
            .unwrap_or_default();
        match self.check_and_write(context, command, data) {
            Ok(file) => {
                self.kept_bytes += file.bytes;
                self.files.push(file);
                if self.files.len() >= self.limits.max_instances
                    || self.kept_bytes >= self.limits.max_total_bytes
                {
                    self.bound_reached = true;
                }
                (status::SUCCESS, None)
            }
            Err((code, reason)) => {
                // Refused for a bound on what is kept (not for what the
                // instance is): cancel the rest.
                if code == status::OUT_OF_RESOURCES && reason.starts_with("more than") {
                    self.bound_reached = true;
                }
                self.refused_count += 1;
                if self.refused.len() < MAX_NAMED_REFUSALS {
                    self.refused.push((instance, reason.clone()));
                }
                (code, Some(reason))
            }
        }
    }

    fn check_and_write(
        &self,
        context: u8,
        command: &Command,
        data: &[u8],
    ) -> Result<RetrievedFile, (u16, String)> {
        let Some(ctx) = self.negotiated.contexts.iter().find(|c| {
            c.id == context
                && c.reason == PresentationContextResultReason::Acceptance
                && c.abstract_syntax != STUDY_ROOT_GET
        }) else {
            return Err((
                status::SOP_CLASS_NOT_SUPPORTED,
                "not a storage context of this association".into(),
            ));
        };
        if !self.negotiated.requester_scp.contains(&ctx.abstract_syntax) {
            return Err((
                status::SOP_CLASS_NOT_SUPPORTED,
                format!(
                    "the SCP role for {} was not granted on this association",
                    ctx.abstract_syntax
                ),
            ));
        }
        let (Some(class), Some(instance)) = (
            command.affected_sop_class_uid.as_deref(),
            command.affected_sop_instance_uid.as_deref(),
        ) else {
            return Err((
                status::CANNOT_UNDERSTAND,
                "C-STORE-RQ without Affected SOP Class/Instance UID".into(),
            ));
        };
        if let Err(e) = crate::uid::validate(class).and_then(|_| crate::uid::validate(instance)) {
            return Err((status::CANNOT_UNDERSTAND, e.to_string()));
        }
        if class != ctx.abstract_syntax {
            return Err((
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                format!("SOP class {class} on a context of {}", ctx.abstract_syntax),
            ));
        }
        if !command.has_data_set || data.is_empty() {
            return Err((
                status::CANNOT_UNDERSTAND,
                "C-STORE-RQ without a data set".into(),
            ));
        }
        if self.files.len() >= self.limits.max_instances {
            return Err((
                status::OUT_OF_RESOURCES,
                format!("more than {} instances", self.limits.max_instances),
            ));
        }
        if self.kept_bytes + data.len() as u64 > self.limits.max_total_bytes {
            return Err((
                status::OUT_OF_RESOURCES,
                format!("more than {} bytes in all", self.limits.max_total_bytes),
            ));
        }
        let transfer_syntax = ctx.transfer_syntax.trim_end_matches('\0').to_string();
        let path = self.dir.join(format!("{:04}.dcm", self.files.len() + 1));
        write_part10(&path, class, instance, &transfer_syntax, data).map_err(|e| {
            (
                status::OUT_OF_RESOURCES,
                format!("cannot keep the instance: {e}"),
            )
        })?;
        Ok(RetrievedFile {
            path,
            sop_class_uid: class.to_string(),
            sop_instance_uid: instance.to_string(),
            transfer_syntax,
            bytes: data.len() as u64,
        })
    }

    fn remove_files(&mut self) {
        for file in self.files.drain(..) {
            let _ = std::fs::remove_file(&file.path);
        }
    }
}

/// Write a data set received in `transfer_syntax` as a Part 10 file (a
/// working copy, not fsynced: nothing is acknowledged on its strength).
fn write_part10(
    path: &Path,
    class: &str,
    instance: &str,
    transfer_syntax: &str,
    data: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(crate::write::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::write::IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(std::io::Error::other)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&[0u8; 128])?;
    file.write_all(b"DICM")?;
    meta.write(&mut file).map_err(std::io::Error::other)?;
    file.write_all(data)?;
    file.into_inner().map_err(|e| e.into_error())?;
    Ok(())
}
