//! Storage SCU: send Part 10 files to a remote AE with C-STORE (PS3.4
//! Annex B), one association per batch.
//!
//! For each SOP class in the batch one presentation context is proposed
//! per transfer syntax (the file's own, then Explicit and Implicit VR
//! Little Endian). A file goes as stored when the peer accepted its
//! transfer syntax; otherwise a native-encoded file is re-encoded into the
//! accepted native syntax. Compressed files the peer does not accept fail
//! individually; the batch goes on.
//!
//! The socket has Nagle's algorithm off (`TCP_NODELAY`) and acknowledges
//! the responses at once (`TCP_QUICKACK`), so that no instance waits on a
//! delayed-acknowledgement timer, ours or the peer's.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTable, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{PDataValueType, Pdu, PresentationContextResultReason};
use thiserror::Error;

use super::message::{MessageAssembler, Step, fragment};
use super::tls::{DicomStream, TlsDestination};
use super::ul::{self, Connection, Proposal};
use crate::dimse::{Command, field, status};

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// A remote AE to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAe {
    /// Its AE title (called AE title).
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS, or `None` for DICOM in clear.
    pub tls: Option<TlsDestination>,
}

/// Settings of the SCU side.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScuOptions {
    /// Our AE title (calling AE title).
    pub calling_ae_title: String,
    /// Connection and association timeout, and the wait for each response.
    pub timeout: Duration,
    /// Maximum PDU length we announce.
    pub max_pdu_length: u32,
}

impl ScuOptions {
    /// Options with this calling AE title and a 30 s timeout.
    pub fn new(calling_ae_title: &str) -> Self {
        Self {
            calling_ae_title: calling_ae_title.into(),
            timeout: Duration::from_secs(30),
            max_pdu_length: super::scp::DEFAULT_MAX_PDU_LENGTH,
        }
    }
}

/// Why a whole batch could not be sent (nothing was, or the association
/// broke); the caller retries later.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ScuError {
    /// A file of the batch cannot be read.
    #[error("cannot read {path} for sending: {reason}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The association could not be established.
    #[error("cannot associate with {ae_title}@{host}:{port}: {reason}")]
    Associate {
        /// Called AE title.
        ae_title: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What failed (connection refused, rejected, timeout).
        reason: String,
    },
    /// The association broke while sending.
    #[error("association with {ae_title} failed while sending {sop_instance_uid}: {reason}")]
    Transfer {
        /// Called AE title.
        ae_title: String,
        /// Instance being sent.
        sop_instance_uid: String,
        /// What failed.
        reason: String,
    },
}

/// The answer to one file of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The file.
    pub path: PathBuf,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// The C-STORE-RSP status, or `None` when the file could not be offered
    /// (no accepted presentation context).
    pub status: Option<u16>,
    /// Error comment of the response, or why it was not sent.
    pub comment: Option<String>,
}

impl SendOutcome {
    /// Whether the peer took the instance (Success or Warning).
    pub fn delivered(&self) -> bool {
        self.status
            .is_some_and(|s| s == status::SUCCESS || status::category(s) == "warning")
    }
}

/// A Part 10 file read for sending: its meta and its data set bytes.
pub(crate) struct Outgoing {
    pub(crate) path: PathBuf,
    pub(crate) meta: FileMetaTable,
    dataset: Vec<u8>,
}

pub(crate) fn read_part10(path: &Path) -> Result<Outgoing, ScuError> {
    let err = |reason: String| ScuError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| err(e.to_string()))?;
    let mut cursor = Cursor::new(bytes);
    // Preamble is optional in what we read.
    let start = if cursor.get_ref().get(128..132) == Some(b"DICM") {
        128
    } else {
        0
    };
    cursor
        .seek(SeekFrom::Start(start))
        .map_err(|e| err(e.to_string()))?;
    let meta = FileMetaTable::from_reader(&mut cursor).map_err(|e| err(e.to_string()))?;
    let position = usize::try_from(cursor.position()).map_err(|e| err(e.to_string()))?;
    let mut bytes = cursor.into_inner();
    let dataset = bytes.split_off(position);
    Ok(Outgoing {
        path: path.to_path_buf(),
        meta,
        dataset,
    })
}

/// The data set bytes of `file` in `transfer_syntax` (as stored or
/// re-encoded from one native syntax to another).
pub(crate) fn encode_for(file: &Outgoing, transfer_syntax: &str) -> Result<Vec<u8>, String> {
    if file.meta.transfer_syntax() == transfer_syntax {
        return Ok(file.dataset.clone());
    }
    let registry = TransferSyntaxRegistry;
    let from = registry
        .get(file.meta.transfer_syntax())
        .ok_or("unknown transfer syntax")?;
    let to = registry
        .get(transfer_syntax)
        .ok_or("unknown transfer syntax")?;
    if from.is_encapsulated_pixel_data() || to.is_encapsulated_pixel_data() {
        return Err(format!(
            "peer does not accept {} and re-encoding compressed pixel data is not done",
            file.meta.transfer_syntax()
        ));
    }
    let object = InMemDicomObject::read_dataset_with_ts(Cursor::new(&file.dataset), from)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    object
        .write_dataset_with_ts(&mut out, to)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Send `files` to `remote` on one association. Per-file failures are in
/// the outcomes; an `Err` means the association itself failed, and files
/// without an outcome were not sent.
pub async fn send_files(
    remote: &RemoteAe,
    options: &ScuOptions,
    files: &[PathBuf],
) -> Result<Vec<SendOutcome>, ScuError> {
    let outgoing: Vec<Outgoing> = files
        .iter()
        .map(|p| read_part10(p))
        .collect::<Result<_, _>>()?;
    let mut proposals: Vec<(String, Vec<String>)> = Vec::new();
    for file in &outgoing {
        let class = file.meta.media_storage_sop_class_uid().to_string();
        let syntaxes = [file.meta.transfer_syntax(), EXPLICIT_VR_LE, IMPLICIT_VR_LE];
        for ts in syntaxes {
            let proposal = (class.clone(), vec![ts.to_string()]);
            if !proposals.contains(&proposal) {
                proposals.push(proposal);
            }
        }
    }
    let (mut association, negotiated) = associate(remote, options, proposals).await?;
    let accepted: Vec<(u8, String, String)> = negotiated
        .contexts
        .iter()
        .filter(|c| c.reason == PresentationContextResultReason::Acceptance)
        .map(|c| (c.id, c.abstract_syntax.clone(), c.transfer_syntax.clone()))
        .collect();
    let peer_max = negotiated.peer_max_pdu_length;
    let mut outcomes = Vec::new();
    for (index, file) in outgoing.iter().enumerate() {
        let class = file.meta.media_storage_sop_class_uid();
        let instance = file.meta.media_storage_sop_instance_uid().to_string();
        let own = file.meta.transfer_syntax();
        // Prefer a context in the file's own syntax.
        let context = accepted
            .iter()
            .filter(|(_, a, _)| a.trim_end_matches('\0') == class)
            .min_by_key(|(_, _, ts)| usize::from(ts.trim_end_matches('\0') != own));
        let encoded = context.map(|(id, _, ts)| (*id, encode_for(file, ts.trim_end_matches('\0'))));
        let (context, dataset) = match encoded {
            None => {
                outcomes.push(SendOutcome {
                    path: file.path.clone(),
                    sop_instance_uid: instance,
                    status: None,
                    comment: Some(format!("peer accepted no presentation context for {class}")),
                });
                continue;
            }
            Some((_, Err(reason))) => {
                outcomes.push(SendOutcome {
                    path: file.path.clone(),
                    sop_instance_uid: instance,
                    status: None,
                    comment: Some(reason),
                });
                continue;
            }
            Some((id, Ok(dataset))) => (id, dataset),
        };
        let transfer_err = |reason: String| ScuError::Transfer {
            ae_title: remote.ae_title.clone(),
            sop_instance_uid: instance.clone(),
            reason,
        };
        let message_id = u16::try_from(index % usize::from(u16::MAX)).unwrap_or(0) + 1;
        let request = Command::store_request(message_id, class, &instance);
        send_message(
            &mut association,
            context,
            &request,
            &dataset,
            peer_max,
            options.timeout,
        )
        .await
        .map_err(transfer_err)?;
        let response = receive_response(&mut association, options.timeout)
            .await
            .map_err(transfer_err)?;
        if response.field != field::C_STORE_RSP || response.responding_to != Some(message_id) {
            return Err(transfer_err(format!(
                "unexpected response (command 0x{:04X})",
                response.field
            )));
        }
        outcomes.push(SendOutcome {
            path: file.path.clone(),
            sop_instance_uid: instance,
            status: response.status,
            comment: response.error_comment,
        });
    }
    let _ = tokio::time::timeout(options.timeout, ul::release(&mut association)).await;
    Ok(outcomes)
}

/// Send one DIMSE message, its command then its data set (none when
/// empty), in PDUs of at most `peer_max` bytes, each within `timeout`.
pub(crate) async fn send_message(
    association: &mut Connection<DicomStream>,
    context: u8,
    command: &Command,
    data: &[u8],
    peer_max: u32,
    timeout: Duration,
) -> Result<(), String> {
    let mut pdus = fragment(
        context,
        PDataValueType::Command,
        &command.encode(),
        peer_max,
    );
    if command.has_data_set {
        pdus.extend(fragment(context, PDataValueType::Data, data, peer_max));
    }
    for pdu in pdus {
        tokio::time::timeout(timeout, association.send(&pdu))
            .await
            .map_err(|_| "timeout sending".to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Open an association with `remote` proposing `contexts` (abstract
/// syntax, transfer syntaxes), over TLS when the remote asks for it, within
/// the options' timeout.
pub(crate) async fn associate(
    remote: &RemoteAe,
    options: &ScuOptions,
    contexts: Vec<(String, Vec<String>)>,
) -> Result<(Connection<DicomStream>, ul::Negotiated), ScuError> {
    associate_with_roles(remote, options, contexts, Vec::new()).await
}

/// [`associate`], proposing this side as SCP for `scp_roles` (the storage
/// classes of a C-GET).
pub(crate) async fn associate_with_roles(
    remote: &RemoteAe,
    options: &ScuOptions,
    contexts: Vec<(String, Vec<String>)>,
    scp_roles: Vec<String>,
) -> Result<(Connection<DicomStream>, ul::Negotiated), ScuError> {
    let associate_err = |reason: String| ScuError::Associate {
        ae_title: remote.ae_title.clone(),
        host: remote.host.clone(),
        port: remote.port,
        reason,
    };
    let proposal = Proposal {
        calling_ae_title: options.calling_ae_title.clone(),
        called_ae_title: remote.ae_title.clone(),
        contexts,
        max_pdu_length: options.max_pdu_length,
        scp_roles,
    };
    let establish = async {
        let socket = tokio::net::TcpStream::connect((remote.host.as_str(), remote.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        // Each C-STORE is a command PDU then the data set's PDUs: with
        // Nagle's algorithm on, the data set's last segment waits for the
        // peer to acknowledge the command, and a peer that delays its
        // acknowledgements (DCMTK, hence Orthanc, as installed) makes every
        // instance cost 40 ms or more. Best effort: a socket that refuses
        // the option still works.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on the SCU socket");
        }
        let stream = match &remote.tls {
            None => DicomStream::Plain(socket),
            Some(tls) => tls.connect(socket).await?,
        };
        let mut connection = Connection::new(stream, options.max_pdu_length);
        let negotiated = ul::request(&mut connection, &proposal)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((connection, negotiated))
    };
    tokio::time::timeout(options.timeout, establish)
        .await
        .map_err(|_| associate_err("timeout".into()))?
        .map_err(associate_err)
}

async fn receive_response(
    association: &mut Connection<DicomStream>,
    timeout: Duration,
) -> Result<Command, String> {
    let mut assembler = MessageAssembler::new();
    loop {
        super::quick_ack(association.stream().tcp());
        let pdu = tokio::time::timeout(timeout, association.receive())
            .await
            .map_err(|_| "timeout waiting for C-STORE-RSP".to_string())?
            .map_err(|e| e.to_string())?;
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    if let Step::Command { command, .. } =
                        assembler.push(value).map_err(|e| e.to_string())?
                    {
                        return Ok(command);
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(format!("aborted by peer ({source:?})")),
            other => return Err(format!("unexpected PDU {other:?}")),
        }
    }
}
