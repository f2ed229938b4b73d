//! The appliance's service class provider: Verification (C-ECHO, PS3.4
//! Annex A) and Storage (C-STORE, PS3.4 Annex B) on one listener.
//!
//! Each association runs on its own tokio task. A C-STORE data set is
//! streamed, fragment by fragment, into a Part 10 file in the staging
//! folder (file meta group first, built from the command and the
//! negotiated transfer syntax); only then is the [`StoreHandler`] called,
//! on a blocking thread, to validate, persist and index the instance. Its
//! answer becomes the C-STORE-RSP status, so the peer hears Success only
//! when the handler says the instance is safe.
//!
//! Connection and association limits (PS3.8 §9.1.4 ARTIM, and what a
//! hostile network needs beyond it):
//! - a connection holds no association slot until a whole A-ASSOCIATE-RQ
//!   has arrived; until then it waits in a pool of its own
//!   (`max_pending_connections`), for at most the ARTIM time, and a first
//!   PDU that is not an A-ASSOCIATE-RQ or is longer than
//!   `max_request_length` closes it;
//! - `max_connections_per_address` connections per IP address at once;
//! - beyond `max_associations`, a request is answered with A-ASSOCIATE-RJ
//!   (transient, local limit exceeded) rather than left waiting;
//! - the idle timeout bounds the wait for the next PDU, the PDU timeout the
//!   time from a PDU's first bytes to its end;
//! - connections closed before association are counted and reported once
//!   per `refusal_summary_period` ([`ScpEvent::ConnectionsRefused`]), never
//!   one event each.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_object::FileMetaTableBuilder;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, PDataValueType, Pdu, UserIdentity,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::message::{MessageAssembler, Step, fragment};
use super::storage_classes::IMAGE_STORAGE;
use super::tls::{CertificateSummary, DicomStream, DicomTls, TlsSession, describe_handshake_error};
use super::ul::{self, Connection, Negotiated, Offer};
use crate::dimse::{Command, field, status};
use crate::pixels::DECODABLE_TRANSFER_SYNTAXES;
use crate::uid;
use crate::write::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Verification SOP Class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Status FF00: pending (a C-FIND match follows, C-MOVE sub-operations go
/// on).
const PENDING: u16 = 0xFF00;
/// C-CANCEL-RQ (Command Field 0FFFH).
const C_CANCEL_RQ: u16 = 0x0FFF;

/// Status FF01: pending, one or more optional keys not supported.
const PENDING_UNSUPPORTED_KEYS: u16 = 0xFF01;
/// Status B000: sub-operations complete, one or more failures or warnings.
const SUB_OPERATIONS_WITH_FAILURES: u16 = 0xB000;
/// Status A702: refused, unable to perform sub-operations.
const UNABLE_TO_PERFORM_SUB_OPERATIONS: u16 = 0xA702;

/// Status FE00: sub-operations terminated by a C-CANCEL.
const CANCELLED: u16 = 0xFE00;

/// How a C-MOVE or C-GET ended, for its final response and its event.
struct Retrieved {
    service: &'static str,
    destination: String,
    code: u16,
    comment: Option<String>,
    ops: crate::dimse::SubOperations,
    failed_uids: Vec<String>,
}

/// What the C-GET requester sent that is not yet used: PDVs of a PDU
/// read, a message half assembled.
#[derive(Default)]
struct Inbound {
    assembler: MessageAssembler,
    values: std::collections::VecDeque<dicom_ul::pdu::PDataValue>,
}

/// What became of one C-GET sub-operation.
enum SubOperation {
    /// The requester answered with this status.
    Done(u16),
    /// Not sent: unreadable, or no context the requester accepted for it.
    NotSent,
}

/// The SOP Instance UID of a Part 10 file, for a failed list ("" when it
/// cannot be read).
fn sop_instance_of(path: &Path) -> String {
    super::commitment::reference_of(path)
        .map(|r| r.sop_instance_uid)
        .unwrap_or_default()
}

/// Default maximum PDU length we announce (bytes).
pub const DEFAULT_MAX_PDU_LENGTH: u32 = 116_794;

/// A peer allowed to open associations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCaller {
    /// Its calling AE title.
    pub ae_title: String,
    /// Its IP address, when the title alone is not trusted.
    pub address: Option<IpAddr>,
    /// A name its TLS client certificate must carry (matched as
    /// [`CertificateSummary::carries`] says); set, the title is accepted
    /// only over TLS with a verified certificate that carries it, by every
    /// entry of that title.
    pub certificate: Option<String>,
}

/// A socket to accept associations on: in clear, or TLS with the
/// appliance's certificate ([`DicomTls`], read again at each connection so
/// that a reload applies to the next one).
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS, or `None` for DICOM in clear.
    pub tls: Option<Arc<DicomTls>>,
}

/// Settings of the listener.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScpOptions {
    /// Our AE title; associations calling another title are rejected.
    pub ae_title: String,
    /// Peers allowed to associate; empty accepts any calling AE title.
    pub allowed_callers: Vec<AllowedCaller>,
    /// Storage SOP classes accepted (Verification is always accepted).
    pub sop_classes: Vec<String>,
    /// Transfer syntaxes accepted, in order of preference.
    pub transfer_syntaxes: Vec<String>,
    /// Query/Retrieve information models whose C-FIND is answered (the
    /// handler's [`StoreHandler::find`]); empty: no query service.
    pub query_models: Vec<String>,
    /// Query/Retrieve information models whose C-MOVE is answered (the
    /// handler's [`StoreHandler::retrieve`]); empty: no retrieve service.
    pub retrieve_models: Vec<String>,
    /// Query/Retrieve information models whose C-GET is answered (the
    /// handler's [`StoreHandler::get`]), the instances sent back on the
    /// requester's association; empty: no C-GET service.
    pub get_models: Vec<String>,
    /// Accept Storage Commitment reports (N-EVENT-REPORT of the Storage
    /// Commitment Push Model, from a requester that takes the SCP role),
    /// handed to [`StoreHandler::commitment_report`]; false: the context is
    /// refused.
    pub commitment_reports: bool,
    /// Maximum PDU length we announce.
    pub max_pdu_length: u32,
    /// How long a peer has to send its A-ASSOCIATE-RQ after connecting.
    pub artim_timeout: Duration,
    /// How long an established association may stay silent.
    pub idle_timeout: Duration,
    /// Associations served at once; beyond, new ones are rejected (transient).
    pub max_associations: usize,
    /// How long a peer may take to send a whole PDU once its first bytes
    /// have arrived (a trickle cannot hold an association).
    pub pdu_timeout: Duration,
    /// Connections from one IP address at once; more are closed at once.
    pub max_connections_per_address: usize,
    /// Connections at once that have not yet sent a whole A-ASSOCIATE-RQ
    /// (they hold no association slot); more are closed at once.
    pub max_pending_connections: usize,
    /// Longest A-ASSOCIATE-RQ accepted, in bytes.
    pub max_request_length: usize,
    /// How often connections refused before association are summarised
    /// ([`ScpEvent::ConnectionsRefused`]).
    pub refusal_summary_period: Duration,
    /// Folder for data sets being received (same file system as the store,
    /// so the handler can rename them into place).
    pub staging_dir: PathBuf,
}

impl ScpOptions {
    /// Defaults: every non-retired image storage SOP class, every transfer
    /// syntax the pixel decoder handles, 30 s ARTIM, 5 min idle, 16
    /// associations.
    pub fn new(ae_title: &str, staging_dir: impl Into<PathBuf>) -> Self {
        Self {
            ae_title: ae_title.into(),
            allowed_callers: Vec::new(),
            sop_classes: default_sop_classes(),
            transfer_syntaxes: default_transfer_syntaxes(),
            query_models: Vec::new(),
            retrieve_models: Vec::new(),
            get_models: Vec::new(),
            commitment_reports: false,
            max_pdu_length: DEFAULT_MAX_PDU_LENGTH,
            artim_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_associations: 16,
            pdu_timeout: Duration::from_secs(30),
            max_connections_per_address: 32,
            max_pending_connections: 64,
            max_request_length: 64 * 1024,
            refusal_summary_period: Duration::from_secs(60),
            staging_dir: staging_dir.into(),
        }
    }
}

/// Every non-retired image storage SOP class UID, and the SR classes of
/// reviewers' SRs.
pub fn default_sop_classes() -> Vec<String> {
    IMAGE_STORAGE
        .iter()
        .chain(super::storage_classes::SR_STORAGE)
        .map(|(u, _)| (*u).to_string())
        .collect()
}

/// Explicit VR Little Endian.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Deflated Explicit VR Little Endian.
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
/// Explicit VR Big Endian (retired).
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// Every transfer syntax the pixel decoder handles, in the order of
/// preference the acceptor applies to each presentation context: Explicit
/// VR Little Endian (keeps every VR), Implicit VR Little Endian, then the
/// compressed ones in the decoder's order (a context that proposes one is
/// taken as sent), Deflated, and the retired Explicit VR Big Endian last.
pub fn default_transfer_syntaxes() -> Vec<String> {
    let first = [EXPLICIT_VR_LE, IMPLICIT_VR_LE];
    let last = [DEFLATED_LE, EXPLICIT_VR_BE];
    let middle = DECODABLE_TRANSFER_SYNTAXES
        .iter()
        .copied()
        .filter(|ts| !first.contains(ts) && !last.contains(ts));
    let order: Vec<&str> = first
        .into_iter()
        .chain(middle)
        .chain(last)
        .filter(|ts| DECODABLE_TRANSFER_SYNTAXES.contains(ts))
        .collect();
    order.into_iter().map(str::to_string).collect()
}

/// A data set received by C-STORE, written as a Part 10 file in the
/// staging folder. The handler owns the file: it must move it into the
/// store or delete it.
#[derive(Debug, Clone)]
pub struct ReceivedInstance {
    /// The staged Part 10 file (not yet fsynced).
    pub path: PathBuf,
    /// Affected SOP Class UID of the command.
    pub sop_class_uid: String,
    /// Affected SOP Instance UID of the command.
    pub sop_instance_uid: String,
    /// Negotiated transfer syntax (that of the data set).
    pub transfer_syntax: String,
    /// Calling AE title of the sender.
    pub calling_ae_title: String,
    /// Network address of the sender.
    pub peer: SocketAddr,
    /// Size of the data set in bytes.
    pub bytes: u64,
    /// SHA-256 (hex) of the staged Part 10 file as written, computed while
    /// receiving.
    pub sha256: String,
    /// The association that carried it (its number in [`ScpEvent`]s);
    /// `None` when it did not come by C-STORE (STOW-RS).
    pub association: Option<u64>,
}

/// A C-FIND received: the information model of its presentation context
/// and its identifier, parsed.
#[derive(Debug, Clone)]
pub struct FindRequest {
    /// The information model (abstract syntax) it came on.
    pub model: String,
    /// The request identifier.
    pub identifier: dicom_object::InMemDicomObject,
    /// Calling AE title of the sender.
    pub calling_ae_title: String,
}

/// The handler's answer to a C-FIND.
#[derive(Debug, Clone)]
pub struct FindAnswer {
    /// The matches, each a response identifier, sent as pending responses.
    pub matches: Vec<dicom_object::InMemDicomObject>,
    /// The final status.
    pub status: u16,
    /// Error Comment of a failure.
    pub comment: Option<String>,
    /// Some keys were not matched (not supported): the pending responses
    /// say so (`FF01` instead of `FF00`).
    pub unsupported_keys: bool,
}

/// A C-MOVE received: the information model, its identifier, and the AE
/// title the matches are to be sent to.
#[derive(Debug, Clone)]
pub struct RetrieveRequest {
    /// The information model (abstract syntax) it came on.
    pub model: String,
    /// The request identifier.
    pub identifier: dicom_object::InMemDicomObject,
    /// Calling AE title of the requester.
    pub calling_ae_title: String,
    /// Move Destination: the AE title to send to.
    pub destination: String,
}

/// The handler's answer to a C-MOVE: the files to send and where, or the
/// failure status.
#[derive(Debug, Clone)]
pub struct RetrieveAnswer {
    /// The Part 10 files of the matching instances.
    pub files: Vec<PathBuf>,
    /// The destination's address (`None` with a failure status).
    pub destination: Option<super::scu::RemoteAe>,
    /// `0000` to go on, or the failure status to answer at once (`A801`
    /// move destination unknown, `A900`, `C000`).
    pub status: u16,
    /// Error Comment of a failure.
    pub comment: Option<String>,
}

impl RetrieveAnswer {
    /// A refusal: nothing sent, this status and reason.
    pub fn refused(status: u16, comment: impl Into<String>) -> Self {
        Self {
            files: Vec::new(),
            destination: None,
            status,
            comment: Some(comment.into()),
        }
    }
}

/// Status A801: move destination unknown.
pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;

/// Longest C-FIND identifier accepted from a peer.
pub const MAX_FIND_IDENTIFIER: usize = 64 * 1024;

/// The handler's answer to a C-STORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    /// DIMSE status for the C-STORE-RSP.
    pub status: u16,
    /// Error Comment, for failures (64 characters at most are sent).
    pub comment: Option<String>,
}

impl StoreOutcome {
    /// Success.
    pub fn success() -> Self {
        Self {
            status: status::SUCCESS,
            comment: None,
        }
    }

    /// A failure or warning status with its reason.
    pub fn failure(status: u16, comment: impl Into<String>) -> Self {
        Self {
            status,
            comment: Some(comment.into()),
        }
    }
}

/// What happened on the listener, for the caller's log and audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScpEvent {
    /// An association was accepted.
    Accepted {
        /// The association's number, unique for the life of the listener.
        association: u64,
        /// Peer address.
        peer: SocketAddr,
        /// Calling AE title.
        calling_ae_title: String,
        /// Presentation contexts accepted.
        contexts: usize,
        /// The TLS session (protocol, suite, the caller's certificate);
        /// `None` in clear.
        tls: Option<Box<TlsSession>>,
    },
    /// An association request was rejected or failed before being
    /// established.
    Rejected {
        /// Peer address.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A C-ECHO was answered with Success.
    Echoed {
        /// Calling AE title.
        calling_ae_title: String,
    },
    /// A C-STORE was answered.
    StoreAnswered {
        /// Calling AE title.
        calling_ae_title: String,
        /// Affected SOP Instance UID (as sent).
        sop_instance_uid: String,
        /// Status sent.
        status: u16,
        /// Error comment sent, if any.
        comment: Option<String>,
    },
    /// The association was released normally.
    Released {
        /// The association's number.
        association: u64,
        /// Calling AE title.
        calling_ae_title: String,
        /// C-STORE requests answered on it.
        stores: usize,
    },
    /// Connections closed before any association was requested (silent,
    /// too slow, not an A-ASSOCIATE-RQ, over the per-address or pending
    /// limits), summarised at most once a minute so that a flood cannot
    /// flood the log and the audit trail.
    ConnectionsRefused {
        /// Connections closed in the period.
        total: u64,
        /// How many for each reason.
        reasons: Vec<(String, u64)>,
        /// Distinct peer addresses among them.
        addresses: usize,
        /// The first of those addresses (16 at most), for the audit trail.
        sample: Vec<IpAddr>,
        /// Seconds the summary covers.
        period_s: u64,
    },
    /// A C-FIND was answered.
    Queried {
        /// The association's number.
        association: u64,
        /// Calling AE title.
        calling_ae_title: String,
        /// Matches sent.
        matches: usize,
        /// Final status sent.
        status: u16,
        /// Whether the handler answered it ([`StoreHandler::find`]); false
        /// when the SCP refused it first (identifier too long, unreadable).
        handled: bool,
    },
    /// A C-MOVE was answered, its sub-operations done.
    Moved {
        /// The association's number.
        association: u64,
        /// Calling AE title.
        calling_ae_title: String,
        /// Move Destination.
        destination: String,
        /// `C-MOVE`, or `C-GET` (the destination is then the requester).
        service: &'static str,
        /// Sub-operations: completed, failed, completed with a warning.
        completed: u16,
        /// Failed.
        failed: u16,
        /// With a warning.
        warning: u16,
        /// Final status sent.
        status: u16,
    },
    /// The association ended abnormally (abort, protocol error, timeout,
    /// connection lost); an instance being received is discarded, never
    /// acknowledged.
    Aborted {
        /// The association's number.
        association: u64,
        /// Calling AE title.
        calling_ae_title: String,
        /// Why.
        reason: String,
    },
}

/// What the service does with received instances.
pub trait StoreHandler: Send + Sync + 'static {
    /// Validate and persist a received instance; runs on a blocking thread.
    /// Return Success only once the instance is durably stored.
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome;

    /// Observe an event (logging, audit). Must not block for long.
    fn event(&self, event: ScpEvent);

    /// Whether to receive a data set at all, asked when its C-STORE-RQ
    /// arrives, before anything is written: a failure outcome (the store
    /// is out of space, say) makes the SCP discard the data set as it comes
    /// and answer with that outcome. Must not block for long.
    fn admission(&self) -> Option<StoreOutcome> {
        None
    }

    /// Answer a C-FIND on one of [`ScpOptions::query_models`]; runs on a
    /// blocking thread. Without an implementation: SOP class not
    /// supported.
    fn find(&self, request: FindRequest) -> FindAnswer {
        let _ = request;
        FindAnswer {
            matches: Vec::new(),
            status: status::SOP_CLASS_NOT_SUPPORTED,
            comment: Some("no query service".into()),
            unsupported_keys: false,
        }
    }

    /// Take a Storage Commitment report (an N-EVENT-REPORT-RQ, with
    /// [`ScpOptions::commitment_reports`]); runs on a blocking thread.
    /// Returns the status of the N-EVENT-REPORT-RSP and its Error Comment.
    /// Without an implementation: processing failure.
    fn commitment_report(
        &self,
        report: super::commitment::CommitmentReport,
    ) -> (u16, Option<String>) {
        let _ = report;
        (
            status::PROCESSING_FAILURE,
            Some("no storage commitment service".into()),
        )
    }

    /// Answer a C-GET on one of [`ScpOptions::get_models`]: which files to
    /// send back to the requester (its `destination` is its own calling AE
    /// title); runs on a blocking thread. The SCP sends them on the same
    /// association (C-STORE sub-operations) and answers with the counts.
    /// Without an implementation: SOP class not supported.
    fn get(&self, request: RetrieveRequest) -> RetrieveAnswer {
        let _ = request;
        RetrieveAnswer::refused(status::SOP_CLASS_NOT_SUPPORTED, "no retrieve service")
    }

    /// Answer a C-MOVE on one of [`ScpOptions::retrieve_models`]: which
    /// files to send where; runs on a blocking thread. The SCP sends them
    /// (one association to the destination) and answers with the counts.
    fn retrieve(&self, request: RetrieveRequest) -> RetrieveAnswer {
        let _ = request;
        RetrieveAnswer::refused(status::SOP_CLASS_NOT_SUPPORTED, "no retrieve service")
    }
}

struct Access {
    callers: Arc<Vec<AllowedCaller>>,
    peer: IpAddr,
    /// The caller's verified TLS client certificate, if any.
    certificate: Option<CertificateSummary>,
}

fn trim_ae(title: &str) -> &str {
    title.trim_matches(|c: char| c == ' ' || c == '\0')
}

impl Access {
    /// Why `calling` was not recognised, when a certificate binding is the
    /// cause (for the audit trail).
    fn explain(&self, calling: &str) -> Option<String> {
        let calling = trim_ae(calling);
        let bound: Vec<&str> = self
            .callers
            .iter()
            .filter(|c| c.ae_title == calling)
            .filter_map(|c| c.certificate.as_deref())
            .collect();
        if bound.is_empty() {
            return None;
        }
        Some(match &self.certificate {
            None => format!(
                "calling AE title {calling} must present a TLS client certificate naming {}; none was presented",
                bound.join(" or ")
            ),
            Some(cert) => format!(
                "calling AE title {calling} must present a TLS client certificate naming {}; this one names {} (sha256 {})",
                bound.join(" or "),
                cert.names.join(", "),
                cert.sha256
            ),
        })
    }
}

impl AccessControl for Access {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if trim_ae(called_ae_title) != trim_ae(this_ae_title) {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.callers.is_empty() {
            return Ok(());
        }
        let calling = trim_ae(calling_ae_title);
        // A title bound to a certificate by any entry is let in only by
        // its bound entries: an unbound entry of the same title does not
        // open a way around the certificate.
        let bound = self
            .callers
            .iter()
            .any(|c| c.ae_title == calling && c.certificate.is_some());
        let known = self.callers.iter().any(|c| {
            c.ae_title == calling
                && c.address.is_none_or(|a| a == self.peer.to_canonical())
                && match c.certificate.as_deref() {
                    Some(name) => self
                        .certificate
                        .as_ref()
                        .is_some_and(|cert| cert.carries(name)),
                    None => !bound,
                }
        });
        if known {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Serve C-ECHO and C-STORE on `listener` until the task is dropped.
pub async fn serve<H: StoreHandler>(
    listener: TcpListener,
    options: ScpOptions,
    handler: Arc<H>,
) -> std::io::Result<()> {
    serve_until(
        listener,
        options,
        handler,
        std::future::pending(),
        Duration::ZERO,
    )
    .await
}

/// Serve C-ECHO and C-STORE on `listener` until `shutdown` completes; then
/// accept no new association and give the running ones up to `grace` to
/// finish (a peer in the middle of a transfer gets its answers) before
/// returning. Associations still running after that are cut at their
/// next wait for a PDU (a store being written is finished and answered
/// first), each reporting [`ScpEvent::Aborted`] with the reason, within
/// [`CUT_WAIT`]; an instance they were receiving is never acknowledged and
/// its staged file is removed.
pub async fn serve_until<H: StoreHandler>(
    listener: TcpListener,
    options: ScpOptions,
    handler: Arc<H>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let listener = Listener {
        tcp: listener,
        tls: None,
    };
    serve_listeners_until(vec![listener], options, handler, shutdown, grace).await
}

/// [`serve_until`] on several sockets at once (DICOM in clear and over
/// TLS), which share the limits: associations, pending connections and
/// connections per address count across all of them.
pub async fn serve_listeners_until<H: StoreHandler>(
    listeners: Vec<Listener>,
    options: ScpOptions,
    handler: Arc<H>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    std::fs::create_dir_all(&options.staging_dir)?;
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(16);
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, accepted_tx.clone())))
        .collect();
    drop(accepted_tx);
    let max = options.max_associations.max(1);
    let limit = Arc::new(Semaphore::new(max));
    let pending = Arc::new(Semaphore::new(options.max_pending_connections.max(1)));
    let addresses = Arc::new(AddressCounts::default());
    let refused = Arc::new(Refusals::default());
    let options = Arc::new(options);
    let callers = Arc::new(options.allowed_callers.clone());
    let numbers = Arc::new(std::sync::atomic::AtomicU64::new(1));
    // Set once the grace period is over: associations still running are
    // cut at their next wait for a PDU, never inside a store.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    let summary = tokio::spawn(summarise_refusals(
        refused.clone(),
        handler.clone(),
        options.refusal_summary_period,
    ));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accepted_rx.recv() => accepted,
            () = &mut shutdown => break,
        };
        let Some((socket, peer, tls)) = accepted else {
            break;
        };
        let Some(address) = addresses.take(
            peer.ip().to_canonical(),
            options.max_connections_per_address,
        ) else {
            refused.add("too many connections from one address", peer);
            continue;
        };
        let Ok(waiting) = pending.clone().try_acquire_owned() else {
            refused.add("too many connections waiting to associate", peer);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let options = options.clone();
        let handler = handler.clone();
        let callers = callers.clone();
        let limit = limit.clone();
        let refused = refused.clone();
        let cut = cut_rx.clone();
        let number = numbers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            // No association slot until a whole A-ASSOCIATE-RQ is here:
            // silent or slow sockets (and TLS handshakes) wait on their
            // own, bounded, pool.
            let opened = match tls {
                None => wait_for_request(&socket, &options)
                    .await
                    .map(|()| Connection::new(DicomStream::Plain(socket), options.max_pdu_length)),
                Some(tls) => tls_request(socket, peer, &tls, &options).await,
            };
            let conn = match opened {
                Ok(conn) => conn,
                Err(reason) => {
                    refused.add(reason, peer);
                    return;
                }
            };
            drop(waiting);
            let Ok(permit) = limit.try_acquire_owned() else {
                let reason = reject_busy(conn, options.artim_timeout).await;
                handler.event(ScpEvent::Rejected { peer, reason });
                return;
            };
            Association::run(conn, number, peer, options, callers, handler, cut).await;
            drop(permit);
            drop(address);
        });
    }
    for acceptor in acceptors {
        acceptor.abort();
    }
    // Connections accepted but not yet served are closed now, not left
    // waiting through the grace period.
    drop(accepted_rx);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, limit.acquire_many(all))
        .await
        .is_err()
    {
        // Those still running are cut, each with its own Aborted event;
        // a store being written finishes and is answered first.
        let _ = cut_tx.send(true);
        let _ = tokio::time::timeout(CUT_WAIT, limit.acquire_many(all)).await;
    }
    summary.abort();
    flush_refusals(&refused, handler.as_ref());
    Ok(())
}

/// A connection accepted on one of the listeners, with its TLS settings.
type Accepted = (TcpStream, SocketAddr, Option<Arc<DicomTls>>);

/// Accept connections on `listener` and hand them over until the receiver
/// is gone.
async fn accept_loop(listener: Listener, accepted: tokio::sync::mpsc::Sender<Accepted>) {
    loop {
        match listener.tcp.accept().await {
            Ok((socket, peer)) => {
                if accepted
                    .send((socket, peer, listener.tls.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Back off on accept errors (e.g. too many open files).
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The TLS handshake, then the whole A-ASSOCIATE-RQ read (type 01H, no
/// longer than `max_request_length`), both within the ARTIM time.
async fn tls_request(
    socket: TcpStream,
    peer: SocketAddr,
    tls: &DicomTls,
    options: &ScpOptions,
) -> Result<Connection<DicomStream>, String> {
    let open = async {
        let mut stream = tls.acceptor().accept(socket).await.map_err(|e| {
            // The detail (rustls's own words) at debug only: a peer
            // can choose it, and a flood of them would flood the log.
            tracing::debug!(%peer, error = %e, "DICOM TLS handshake failed");
            describe_handshake_error(&e)
        })?;
        let mut request = vec![0u8; 6];
        stream
            .read_exact(&mut request)
            .await
            .map_err(|_| "closed before an association request (TLS)".to_string())?;
        if request[0] != 0x01 {
            return Err("first PDU is not an A-ASSOCIATE-RQ".to_string());
        }
        let length = u32::from_be_bytes([request[2], request[3], request[4], request[5]]) as usize;
        let total = length.saturating_add(6);
        if total > options.max_request_length {
            return Err("association request longer than the limit".to_string());
        }
        request.resize(total, 0);
        stream
            .read_exact(&mut request[6..])
            .await
            .map_err(|_| "closed before a whole association request (TLS)".to_string())?;
        Ok(Connection::with_received(
            DicomStream::Server(Box::new(stream)),
            options.max_pdu_length,
            request,
        ))
    };
    match tokio::time::timeout(options.artim_timeout, open).await {
        Ok(result) => result,
        Err(_) => Err(
            "no TLS handshake and whole association request within the ARTIM timeout".to_string(),
        ),
    }
}

/// How long associations cut at the end of the grace period have to finish
/// the store in progress and report their end.
pub const CUT_WAIT: Duration = Duration::from_secs(10);

/// Connections per peer address; the count goes down when the
/// [`AddressSlot`] is dropped.
#[derive(Debug, Default)]
struct AddressCounts {
    counts: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

struct AddressSlot {
    counts: Arc<AddressCounts>,
    address: IpAddr,
}

impl AddressCounts {
    fn take(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Distinct reasons a refusal summary counts separately.
const MAX_REFUSAL_REASONS: usize = 32;

/// Connections refused before association, counted for the summary.
#[derive(Debug, Default)]
struct Refusals {
    state: std::sync::Mutex<RefusalCounts>,
}

#[derive(Debug, Default)]
struct RefusalCounts {
    reasons: std::collections::BTreeMap<String, u64>,
    addresses: std::collections::HashSet<IpAddr>,
    sample: Vec<IpAddr>,
    since: Option<std::time::Instant>,
}

impl Refusals {
    fn add(&self, reason: impl Into<String>, peer: SocketAddr) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.since.get_or_insert_with(std::time::Instant::now);
        let mut reason = reason.into();
        // Bounded: past this many distinct reasons in a period, the rest
        // count together.
        if state.reasons.len() >= MAX_REFUSAL_REASONS && !state.reasons.contains_key(&reason) {
            reason = "other reasons".into();
        }
        *state.reasons.entry(reason).or_insert(0) += 1;
        // Bounded: past this many, the count of addresses saturates.
        let address = peer.ip().to_canonical();
        if state.addresses.len() < 4096
            && state.addresses.insert(address)
            && state.sample.len() < 16
        {
            state.sample.push(address);
        }
    }
}

async fn summarise_refusals<H: StoreHandler>(
    refused: Arc<Refusals>,
    handler: Arc<H>,
    period: Duration,
) {
    loop {
        tokio::time::sleep(period.max(Duration::from_millis(100))).await;
        flush_refusals(&refused, handler.as_ref());
    }
}

fn flush_refusals<H: StoreHandler>(refused: &Refusals, handler: &H) {
    let taken = {
        let mut state = refused.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *state)
    };
    let Some(since) = taken.since else { return };
    handler.event(ScpEvent::ConnectionsRefused {
        total: taken.reasons.values().sum(),
        reasons: taken.reasons.into_iter().collect(),
        addresses: taken.addresses.len(),
        sample: taken.sample,
        period_s: since.elapsed().as_secs(),
    });
}

/// Wait, without reading it, until a whole A-ASSOCIATE-RQ is in the
/// socket's receive buffer: within the ARTIM time, no longer than
/// `max_request_length`, and a PDU of type 01H.
async fn wait_for_request(socket: &TcpStream, options: &ScpOptions) -> Result<(), String> {
    let wait = async {
        let mut buf = vec![0u8; 6];
        loop {
            let n = socket
                .peek(&mut buf)
                .await
                .map_err(|e| format!("connection lost before an association request: {e}"))?;
            if n == 0 {
                return Err("closed before an association request".to_string());
            }
            if n >= 6 {
                if buf[0] != 0x01 {
                    return Err("first PDU is not an A-ASSOCIATE-RQ".to_string());
                }
                let length = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
                let total = length.saturating_add(6);
                if total > options.max_request_length {
                    return Err("association request longer than the limit".to_string());
                }
                if n >= total {
                    return Ok(());
                }
                if buf.len() < total {
                    buf.resize(total, 0);
                    continue;
                }
            }
            // Part of the request is here: peek again once more can have
            // arrived (peek does not wait for more than is already there).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(options.artim_timeout, wait).await {
        Ok(result) => result,
        Err(_) => Err("no whole association request within the ARTIM timeout".to_string()),
    }
}

/// Read the A-ASSOCIATE-RQ of a peer we have no room for and answer
/// A-ASSOCIATE-RJ (transient, service provider presentation, local limit
/// exceeded), as PS3.8 §7.1.1.9 allows.
async fn reject_busy(mut conn: Connection<DicomStream>, artim: Duration) -> String {
    let read = async {
        // The request is whole (checked before), within the PDU limit.
        conn.receive().await.map_err(std::io::Error::other)?;
        conn.send(&Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        }))
        .await
        .map_err(std::io::Error::other)?;
        conn.shutdown().await;
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(artim, read).await {
        Ok(Ok(())) => "too many concurrent associations: rejected (transient)".into(),
        Ok(Err(e)) => format!("too many concurrent associations; rejecting failed: {e}"),
        Err(_) => "too many concurrent associations; ARTIM timeout".into(),
    }
}

/// A C-STORE data set being received into the staging folder.
struct Incoming {
    context: u8,
    request: Command,
    transfer_syntax: String,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    hasher: Sha256,
    bytes: u64,
    /// Set once something failed; the rest of the data set is discarded.
    failure: Option<StoreOutcome>,
    /// For a C-FIND: its identifier, gathered in memory (bounded).
    query: Option<Vec<u8>>,
}

impl Incoming {
    /// An incoming data set that is read and dropped, never staged.
    fn discard(context: u8, request: Command, transfer_syntax: &str, options: &ScpOptions) -> Self {
        Self {
            context,
            request,
            transfer_syntax: transfer_syntax.to_string(),
            path: options.staging_dir.join("discarded"),
            writer: None,
            hasher: Sha256::new(),
            bytes: 0,
            failure: None,
            query: None,
        }
    }

    fn start(context: u8, request: Command, transfer_syntax: &str, options: &ScpOptions) -> Self {
        let path = options
            .staging_dir
            .join(format!("{}.dcm.part", uuid::Uuid::new_v4().simple()));
        let mut incoming = Self {
            context,
            request,
            transfer_syntax: transfer_syntax.to_string(),
            path,
            writer: None,
            hasher: Sha256::new(),
            bytes: 0,
            failure: None,
            query: None,
        };
        let class = incoming.request.affected_sop_class_uid.clone();
        let instance = incoming.request.affected_sop_instance_uid.clone();
        let (Some(class), Some(instance)) = (class, instance) else {
            incoming.failure = Some(StoreOutcome::failure(
                status::CANNOT_UNDERSTAND,
                "C-STORE-RQ without Affected SOP Class/Instance UID",
            ));
            return incoming;
        };
        if let Err(e) = uid::validate(&class).and_then(|_| uid::validate(&instance)) {
            incoming.failure = Some(StoreOutcome::failure(
                status::CANNOT_UNDERSTAND,
                e.to_string(),
            ));
            return incoming;
        }
        match incoming.open(&class, &instance) {
            Ok(writer) => incoming.writer = Some(writer),
            Err(e) => {
                incoming.failure = Some(StoreOutcome::failure(
                    status::OUT_OF_RESOURCES,
                    format!("cannot stage instance: {e}"),
                ))
            }
        }
        incoming
    }

    fn open(&mut self, class: &str, instance: &str) -> std::io::Result<BufWriter<File>> {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(instance)
            .transfer_syntax(self.transfer_syntax.as_str())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(std::io::Error::other)?;
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        meta.write(&mut head).map_err(std::io::Error::other)?;
        let mut writer = BufWriter::with_capacity(256 * 1024, File::create(&self.path)?);
        writer.write_all(&head)?;
        self.hasher.update(&head);
        Ok(writer)
    }

    /// An incoming C-FIND identifier, gathered in memory.
    fn query(context: u8, request: Command, transfer_syntax: &str, options: &ScpOptions) -> Self {
        let mut incoming = Self::discard(context, request, transfer_syntax, options);
        incoming.query = Some(Vec::new());
        incoming
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(identifier) = self.query.as_mut() {
            if identifier.len() + bytes.len() > MAX_FIND_IDENTIFIER {
                identifier.clear();
                self.failure.get_or_insert_with(|| {
                    StoreOutcome::failure(
                        status::OUT_OF_RESOURCES,
                        format!("identifier longer than {MAX_FIND_IDENTIFIER} bytes"),
                    )
                });
            } else if self.failure.is_none() {
                identifier.extend_from_slice(bytes);
            }
            return;
        }
        self.bytes += bytes.len() as u64;
        self.hasher.update(bytes);
        if let Some(writer) = self.writer.as_mut()
            && let Err(e) = writer.write_all(bytes)
        {
            self.writer = None;
            self.failure = Some(StoreOutcome::failure(
                status::OUT_OF_RESOURCES,
                format!("cannot write instance: {e}"),
            ));
        }
    }

    /// Close the staged file; `None` when it failed (and is removed).
    fn close(&mut self) -> Option<PathBuf> {
        let writer = self.writer.take()?;
        match writer.into_inner() {
            Ok(_) => Some(self.path.clone()),
            Err(e) => {
                self.failure = Some(StoreOutcome::failure(
                    status::OUT_OF_RESOURCES,
                    format!("cannot write instance: {}", e.error()),
                ));
                None
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // A data set never handed to the handler is discarded. Once handed
        // over the handler owns the file (it renamed or removed it), so this
        // is a no-op then.
        if self.writer.is_some() || self.failure.is_some() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Association<H> {
    conn: Connection<DicomStream>,
    number: u64,
    negotiated: Negotiated,
    /// A second handle on the same socket, to see when a PDU's first
    /// bytes arrive (the connection owns the first one).
    watcher: Option<TcpStream>,
    /// True once the service stops and the grace period is over.
    cut: tokio::sync::watch::Receiver<bool>,
    calling: String,
    peer: SocketAddr,
    options: Arc<ScpOptions>,
    handler: Arc<H>,
    stores: usize,
}

impl<H: StoreHandler> Association<H> {
    async fn run(
        mut conn: Connection<DicomStream>,
        number: u64,
        peer: SocketAddr,
        options: Arc<ScpOptions>,
        callers: Arc<Vec<AllowedCaller>>,
        handler: Arc<H>,
        cut: tokio::sync::watch::Receiver<bool>,
    ) {
        let watcher = watch(conn.stream().tcp());
        let tls = conn.stream().session();
        let establish = async {
            let request = match conn.receive().await {
                Ok(Pdu::AssociationRQ(rq)) => rq,
                Ok(other) => return Err(format!("unexpected PDU before association: {other:?}")),
                Err(e) => return Err(format!("cannot read the association request: {e}")),
            };
            let mut abstract_syntaxes: Vec<&str> = vec![VERIFICATION];
            abstract_syntaxes.extend(options.sop_classes.iter().map(String::as_str));
            abstract_syntaxes.extend(options.query_models.iter().map(String::as_str));
            abstract_syntaxes.extend(options.retrieve_models.iter().map(String::as_str));
            abstract_syntaxes.extend(options.get_models.iter().map(String::as_str));
            // With C-GET, the requester may take the SCP role for what it
            // can be sent: the classes stored here and Vigie's results.
            let mut get_syntaxes: Vec<&str> = Vec::new();
            if !options.get_models.is_empty() {
                get_syntaxes.extend(options.sop_classes.iter().map(String::as_str));
                get_syntaxes.extend([
                    crate::results::sr::COMPREHENSIVE_SR,
                    crate::results::seg::SEGMENTATION,
                    crate::results::summary::SECONDARY_CAPTURE,
                ]);
            }
            let transfer_syntaxes: Vec<&str> = options
                .transfer_syntaxes
                .iter()
                .map(String::as_str)
                .collect();
            let scp_role: &[&str] = if options.commitment_reports {
                &[super::commitment::STORAGE_COMMITMENT_PUSH_MODEL]
            } else {
                &[]
            };
            let offer = Offer {
                abstract_syntaxes: &abstract_syntaxes,
                transfer_syntaxes: &transfer_syntaxes,
                scp_role_syntaxes: scp_role,
                get_syntaxes: &get_syntaxes,
                max_pdu_length: options.max_pdu_length,
            };
            let access = Access {
                callers,
                peer: peer.ip().to_canonical(),
                certificate: tls.as_ref().and_then(|t| t.peer_certificate.clone()),
            };
            let calling = request.calling_ae_title.clone();
            match ul::accept(request, offer, |calling, called, identity| {
                access.check_access(&options.ae_title, calling, called, identity)
            }) {
                Ok((ac, negotiated)) => {
                    conn.send(&Pdu::AssociationAC(ac))
                        .await
                        .map_err(|e| format!("cannot answer the association request: {e}"))?;
                    Ok(negotiated)
                }
                Err(rj) => {
                    let mut reason = ul::describe_rejection(&rj);
                    if let AssociationRJSource::ServiceUser(
                        AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                    ) = &rj.source
                        && let Some(why) = access.explain(&calling)
                    {
                        reason = format!("{reason}: {why}");
                    }
                    let _ = conn.send(&Pdu::AssociationRJ(rj)).await;
                    conn.shutdown().await;
                    Err(reason)
                }
            }
        };
        let negotiated = match tokio::time::timeout(options.artim_timeout, establish).await {
            Ok(Ok(negotiated)) => negotiated,
            Ok(Err(reason)) => {
                handler.event(ScpEvent::Rejected { peer, reason });
                return;
            }
            Err(_) => {
                handler.event(ScpEvent::Rejected {
                    peer,
                    reason: "ARTIM timeout waiting for A-ASSOCIATE-RQ".into(),
                });
                return;
            }
        };
        let calling = negotiated.calling_ae_title.clone();
        handler.event(ScpEvent::Accepted {
            association: number,
            peer,
            calling_ae_title: calling.clone(),
            contexts: negotiated.accepted_count(),
            tls: tls.map(Box::new),
        });
        let mut association = Self {
            conn,
            number,
            negotiated,
            watcher,
            cut,
            calling,
            peer,
            options,
            handler,
            stores: 0,
        };
        let end = association.serve_messages().await;
        let event = match end {
            Ok(()) => ScpEvent::Released {
                association: association.number,
                calling_ae_title: association.calling.clone(),
                stores: association.stores,
            },
            Err(reason) => {
                association.abort().await;
                ScpEvent::Aborted {
                    association: association.number,
                    calling_ae_title: association.calling.clone(),
                    reason,
                }
            }
        };
        association.handler.event(event);
    }

    /// Serve messages until release (`Ok`) or an abnormal end (`Err`).
    async fn serve_messages(&mut self) -> Result<(), String> {
        let mut assembler = MessageAssembler::new();
        let mut incoming: Option<Incoming> = None;
        loop {
            super::quick_ack(self.conn.stream().tcp());
            // Idle time before a PDU is bounded by the idle timeout; once its
            // first bytes are here, the whole PDU must follow within the
            // PDU timeout.
            let receive = tokio::time::timeout(self.options.idle_timeout, self.conn.receive());
            let slow = slow_pdu(self.watcher.as_ref(), self.options.pdu_timeout);
            let mut cut = self.cut.clone();
            let pdu = tokio::select! {
                received = receive => match received {
                    Err(_) => return Err("idle timeout".into()),
                    Ok(Err(e)) => return Err(format!("connection lost: {e}")),
                    Ok(Ok(pdu)) => pdu,
                },
                reason = slow => return Err(reason),
                _ = cut.wait_for(|cut| *cut) => {
                    let what = if incoming.is_some() {
                        "an instance half received was discarded, never acknowledged"
                    } else {
                        "between messages"
                    };
                    return Err(format!("service stopping: association cut at the end of the grace period ({what})"));
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        match assembler.push(value).map_err(|e| e.to_string())? {
                            Step::Pending => {}
                            Step::Command { context, command } => {
                                incoming = self.command(context, command).await?;
                            }
                            Step::Data {
                                context,
                                bytes,
                                last,
                            } => {
                                let Some(current) = incoming.as_mut() else {
                                    return Err("data set without a C-STORE-RQ".into());
                                };
                                if current.context != context {
                                    return Err("data set on another presentation context".into());
                                }
                                current.write(&bytes);
                                if last && let Some(done) = incoming.take() {
                                    if done.query.is_some()
                                        && done.request.field == field::N_EVENT_REPORT_RQ
                                    {
                                        self.finish_report(done).await?;
                                    } else if done.query.is_some()
                                        && done.request.field == field::C_GET_RQ
                                    {
                                        self.finish_get(done).await?;
                                    } else if done.query.is_some()
                                        && done.request.field == field::C_MOVE_RQ
                                    {
                                        self.finish_move(done).await?;
                                    } else if done.query.is_some() {
                                        self.finish_find(done).await?;
                                    } else {
                                        self.finish_store(done).await?;
                                    }
                                }
                            }
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if incoming.is_some() || assembler.in_message() {
                        return Err("release requested in the middle of a message".into());
                    }
                    let _ = self.conn.send(&Pdu::ReleaseRP).await;
                    self.conn.shutdown().await;
                    return Ok(());
                }
                Pdu::AbortRQ { source } => return Err(format!("aborted by peer ({source:?})")),
                other => return Err(format!("unexpected PDU {other:?}")),
            }
        }
    }

    fn context_syntaxes(&self, context: u8) -> Option<(String, String)> {
        self.negotiated
            .accepted(context)
            .map(|(a, t)| (a.to_string(), t.to_string()))
    }

    /// A-ABORT (service provider, no reason), then close.
    async fn abort(&mut self) {
        let abort = Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(
                AbortRQServiceProviderReason::ReasonNotSpecified,
            ),
        };
        let _ = tokio::time::timeout(self.options.pdu_timeout, self.conn.send(&abort)).await;
        self.conn.shutdown().await;
    }

    /// Handle a complete command; returns the C-STORE to receive, if any.
    async fn command(&mut self, context: u8, command: Command) -> Result<Option<Incoming>, String> {
        let Some((abstract_syntax, transfer_syntax)) = self.context_syntaxes(context) else {
            return Err(format!(
                "message on presentation context {context}, which was not accepted"
            ));
        };
        match command.field {
            field::C_ECHO_RQ => {
                self.respond(context, &command, status::SUCCESS, None)
                    .await?;
                self.handler.event(ScpEvent::Echoed {
                    calling_ae_title: self.calling.clone(),
                });
                Ok(None)
            }
            field::C_STORE_RQ if command.has_data_set => {
                if let Some(refusal) = self.handler.admission() {
                    // Nothing is staged; the data set is read and dropped.
                    let mut incoming =
                        Incoming::discard(context, command, &transfer_syntax, &self.options);
                    incoming.failure = Some(refusal);
                    return Ok(Some(incoming));
                }
                let mut incoming =
                    Incoming::start(context, command, &transfer_syntax, &self.options);
                let class = incoming.request.affected_sop_class_uid.as_deref();
                if incoming.failure.is_none()
                    && self
                        .negotiated
                        .requester_not_scu
                        .iter()
                        .any(|a| a == trim_uid(&abstract_syntax))
                {
                    // Accepted for C-GET sub-operations only: not stored.
                    incoming.writer = None;
                    incoming.failure = Some(StoreOutcome::failure(
                        status::SOP_CLASS_NOT_SUPPORTED,
                        "this SOP class is accepted here only to be received by C-GET",
                    ));
                } else if incoming.failure.is_none() && class != Some(trim_uid(&abstract_syntax)) {
                    // PS3.7 §9.1.1.1: the Affected SOP Class UID must be
                    // that of the presentation context.
                    incoming.writer = None;
                    incoming.failure = Some(StoreOutcome::failure(
                        status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        "Affected SOP Class UID differs from the presentation context",
                    ));
                }
                Ok(Some(incoming))
            }
            // A Storage Commitment SCP reporting, on a context where it
            // took the SCP role: the event information is gathered in
            // memory, bounded like a C-FIND identifier.
            field::N_EVENT_REPORT_RQ
                if command.has_data_set
                    && self.options.commitment_reports
                    && trim_uid(&abstract_syntax)
                        == super::commitment::STORAGE_COMMITMENT_PUSH_MODEL
                    && self
                        .negotiated
                        .requester_scp
                        .iter()
                        .any(|a| a == trim_uid(&abstract_syntax)) =>
            {
                Ok(Some(Incoming::query(
                    context,
                    command,
                    &transfer_syntax,
                    &self.options,
                )))
            }
            // C-CANCEL: answers are bounded and run to their end; nothing
            // is answered to the cancel itself (PS3.7 9.3.2.3).
            C_CANCEL_RQ => Ok(None),
            field::C_FIND_RQ | field::C_MOVE_RQ | field::C_GET_RQ
                if command.has_data_set && {
                    let models = match command.field {
                        field::C_FIND_RQ => &self.options.query_models,
                        field::C_MOVE_RQ => &self.options.retrieve_models,
                        _ => &self.options.get_models,
                    };
                    models.iter().any(|m| m == trim_uid(&abstract_syntax))
                } =>
            {
                // The identifier is gathered in memory, bounded.
                Ok(Some(Incoming::query(
                    context,
                    command,
                    &transfer_syntax,
                    &self.options,
                )))
            }
            _ => {
                // Anything else has no data set we could skip reliably when
                // it claims one; answer "unrecognized operation" when it
                // has none, abort otherwise.
                if command.has_data_set {
                    return Err(format!(
                        "unsupported command 0x{:04X} with a data set",
                        command.field
                    ));
                }
                self.respond(context, &command, status::UNRECOGNIZED_OPERATION, None)
                    .await?;
                Ok(None)
            }
        }
    }

    async fn finish_store(&mut self, mut incoming: Incoming) -> Result<(), String> {
        let staged = incoming.close();
        let outcome = match (incoming.failure.clone(), staged) {
            (Some(failure), _) => failure,
            (None, None) => StoreOutcome::failure(status::OUT_OF_RESOURCES, "instance not staged"),
            (None, Some(path)) => {
                let received = ReceivedInstance {
                    path,
                    sop_class_uid: incoming
                        .request
                        .affected_sop_class_uid
                        .clone()
                        .unwrap_or_default(),
                    sop_instance_uid: incoming
                        .request
                        .affected_sop_instance_uid
                        .clone()
                        .unwrap_or_default(),
                    transfer_syntax: incoming.transfer_syntax.clone(),
                    calling_ae_title: self.calling.clone(),
                    peer: self.peer,
                    bytes: incoming.bytes,
                    sha256: hex::encode(std::mem::take(&mut incoming.hasher).finalize()),
                    association: Some(self.number),
                };
                let handler = self.handler.clone();
                tokio::task::spawn_blocking(move || handler.store(received))
                    .await
                    .unwrap_or_else(|e| {
                        StoreOutcome::failure(
                            status::PROCESSING_FAILURE,
                            format!("store handler failed: {e}"),
                        )
                    })
            }
        };
        self.stores += 1;
        let request = incoming.request.clone();
        self.respond(
            incoming.context,
            &request,
            outcome.status,
            outcome.comment.as_deref(),
        )
        .await?;
        self.handler.event(ScpEvent::StoreAnswered {
            calling_ae_title: self.calling.clone(),
            sop_instance_uid: request.affected_sop_instance_uid.unwrap_or_default(),
            status: outcome.status,
            comment: outcome.comment,
        });
        Ok(())
    }

    /// Answer a C-FIND: one pending response with its identifier per
    /// match, then the final response.
    async fn finish_find(&mut self, mut incoming: Incoming) -> Result<(), String> {
        let request = incoming.request.clone();
        let context = incoming.context;
        let model = self
            .context_syntaxes(context)
            .map(|(a, _)| trim_uid(&a).to_string())
            .unwrap_or_default();
        let bytes = incoming.query.take().unwrap_or_default();
        let mut handled = false;
        let answer = match incoming.failure.take() {
            Some(failure) => FindAnswer {
                matches: Vec::new(),
                status: failure.status,
                comment: failure.comment,
                unsupported_keys: false,
            },
            None => match super::find::decode_identifier(&bytes, &incoming.transfer_syntax) {
                Err(e) => FindAnswer {
                    matches: Vec::new(),
                    status: status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    comment: Some(format!("identifier cannot be read: {e}")),
                    unsupported_keys: false,
                },
                Ok(identifier) => {
                    handled = true;
                    let handler = self.handler.clone();
                    let find = FindRequest {
                        model,
                        identifier,
                        calling_ae_title: self.calling.clone(),
                    };
                    tokio::task::spawn_blocking(move || handler.find(find))
                        .await
                        .unwrap_or_else(|e| FindAnswer {
                            matches: Vec::new(),
                            status: status::PROCESSING_FAILURE,
                            comment: Some(format!("query handler failed: {e}")),
                            unsupported_keys: false,
                        })
                }
            },
        };
        let syntax = {
            use dicom_encoding::TransferSyntaxIndex;
            dicom_transfer_syntax_registry::TransferSyntaxRegistry
                .get(trim_uid(&incoming.transfer_syntax))
                .ok_or_else(|| format!("unknown transfer syntax {}", incoming.transfer_syntax))?
        };
        let mut sent = 0;
        for identifier in &answer.matches {
            let mut data = Vec::new();
            if let Err(e) = identifier.write_dataset_with_ts(&mut data, syntax) {
                tracing::warn!(error = %e, "C-FIND: a match cannot be encoded; skipped");
                continue;
            }
            let code = if answer.unsupported_keys {
                PENDING_UNSUPPORTED_KEYS
            } else {
                PENDING
            };
            let mut pending = request.response(code, None);
            pending.has_data_set = true;
            self.send_fragments(context, PDataValueType::Command, &pending.encode())
                .await?;
            self.send_fragments(context, PDataValueType::Data, &data)
                .await?;
            sent += 1;
        }
        self.respond(context, &request, answer.status, answer.comment.as_deref())
            .await?;
        self.handler.event(ScpEvent::Queried {
            association: self.number,
            calling_ae_title: self.calling.clone(),
            matches: sent,
            status: answer.status,
            handled,
        });
        Ok(())
    }

    /// Answer a Storage Commitment report: read it (bounded, scanned), hand
    /// it to the handler, answer with its status (no data set, PS3.4
    /// J.3.3.1.2).
    async fn finish_report(&mut self, mut incoming: Incoming) -> Result<(), String> {
        let request = incoming.request.clone();
        let context = incoming.context;
        let bytes = incoming.query.take().unwrap_or_default();
        let (code, comment) = match incoming.failure.take() {
            Some(failure) => (status::PROCESSING_FAILURE, failure.comment),
            None => match super::commitment::decode_report(
                &bytes,
                &incoming.transfer_syntax,
                request.event_type_id.unwrap_or(0),
                &self.calling,
            ) {
                Err(e) => (
                    status::PROCESSING_FAILURE,
                    Some(format!("report cannot be read: {e}")),
                ),
                Ok(mut report) => {
                    report.peer = Some(self.peer.ip().to_canonical());
                    let handler = self.handler.clone();
                    tokio::task::spawn_blocking(move || handler.commitment_report(report))
                        .await
                        .unwrap_or_else(|e| {
                            (
                                status::PROCESSING_FAILURE,
                                Some(format!("report handler failed: {e}")),
                            )
                        })
                }
            },
        };
        if code != status::SUCCESS {
            tracing::warn!(
                calling = %self.calling,
                status = format!("0x{code:04X}"),
                comment = comment.as_deref().unwrap_or(""),
                "storage commitment report not taken"
            );
        }
        self.respond(context, &request, code, comment.as_deref())
            .await
    }

    /// What the handler says of a C-MOVE (`get` false) or C-GET: the
    /// identifier read (bounded), then [`StoreHandler::retrieve`] or
    /// [`StoreHandler::get`] on a blocking thread.
    async fn retrieve_answer(
        &mut self,
        incoming: &mut Incoming,
        destination: String,
        get: bool,
    ) -> RetrieveAnswer {
        let refuse = |status: u16, comment: Option<String>| RetrieveAnswer {
            files: Vec::new(),
            destination: None,
            status,
            comment,
        };
        let model = self
            .context_syntaxes(incoming.context)
            .map(|(a, _)| trim_uid(&a).to_string())
            .unwrap_or_default();
        let bytes = incoming.query.take().unwrap_or_default();
        if let Some(failure) = incoming.failure.take() {
            return refuse(failure.status, failure.comment);
        }
        let identifier = match super::find::decode_identifier(&bytes, &incoming.transfer_syntax) {
            Ok(identifier) => identifier,
            Err(e) => {
                return refuse(
                    status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    Some(format!("identifier cannot be read: {e}")),
                );
            }
        };
        let handler = self.handler.clone();
        let request = RetrieveRequest {
            model,
            identifier,
            calling_ae_title: self.calling.clone(),
            destination,
        };
        tokio::task::spawn_blocking(move || {
            if get {
                handler.get(request)
            } else {
                handler.retrieve(request)
            }
        })
        .await
        .unwrap_or_else(|e| {
            refuse(
                status::PROCESSING_FAILURE,
                Some(format!("retrieve handler failed: {e}")),
            )
        })
    }

    /// Answer a C-GET: the handler says which files match; each is sent
    /// back on this association (a C-STORE sub-operation on a context where
    /// the requester took the SCP role, in the file's own transfer syntax
    /// when accepted, else a native one it accepted), a pending response
    /// with the counts after each, then the final response (B000 and the
    /// Failed SOP Instance UID List after failures, FE00 after a C-CANCEL).
    async fn finish_get(&mut self, mut incoming: Incoming) -> Result<(), String> {
        use crate::dimse::SubOperations;
        let request = incoming.request.clone();
        let context = incoming.context;
        let calling = self.calling.clone();
        let answer = self.retrieve_answer(&mut incoming, calling, true).await;
        let mut ops = SubOperations::default();
        let mut failed_uids: Vec<String> = Vec::new();
        let mut code = answer.status;
        let comment = answer.comment.clone();
        if code == status::SUCCESS {
            let total = answer.files.len();
            let mut inbound = Inbound::default();
            let mut done = 0usize;
            for (index, path) in answer.files.iter().enumerate() {
                // A C-CANCEL sent after the last pending response is read
                // before the next sub-operation starts.
                let sent = match self.get_cancelled(&request, &mut inbound).await {
                    Ok(true) => Ok(None),
                    Ok(false) => self
                        .get_sub_operation(&request, path, index, &mut inbound)
                        .await
                        .map(Some),
                    Err(e) => Err(e),
                };
                let (outcome, cancelled) = match sent {
                    Ok(Some(sent)) => sent,
                    Ok(None) => {
                        code = CANCELLED;
                        break;
                    }
                    Err(e) => {
                        // Whatever went, on record before the association
                        // ends.
                        self.retrieve_ended(
                            "C-GET",
                            self.calling.clone(),
                            ops,
                            UNABLE_TO_PERFORM_SUB_OPERATIONS,
                        );
                        return Err(e);
                    }
                };
                done = index + 1;
                match outcome {
                    SubOperation::Done(s) if s == status::SUCCESS => {
                        ops.completed = ops.completed.saturating_add(1)
                    }
                    SubOperation::Done(s) if status::category(s) == "warning" => {
                        ops.warning = ops.warning.saturating_add(1)
                    }
                    SubOperation::Done(_) | SubOperation::NotSent => {
                        ops.failed = ops.failed.saturating_add(1);
                        let uid = sop_instance_of(path);
                        if !uid.is_empty() {
                            failed_uids.push(uid);
                        }
                    }
                }
                if cancelled {
                    code = CANCELLED;
                    break;
                }
                let left = total - done;
                if left > 0 {
                    let mut pending = request.response(PENDING, None);
                    pending.sub_operations = Some(SubOperations {
                        remaining: Some(u16::try_from(left).unwrap_or(u16::MAX)),
                        ..ops
                    });
                    if let Err(e) = self
                        .send_fragments(context, PDataValueType::Command, &pending.encode())
                        .await
                    {
                        self.retrieve_ended(
                            "C-GET",
                            self.calling.clone(),
                            ops,
                            UNABLE_TO_PERFORM_SUB_OPERATIONS,
                        );
                        return Err(e);
                    }
                }
            }
            if code == status::SUCCESS && (ops.failed > 0 || ops.warning > 0) {
                code = SUB_OPERATIONS_WITH_FAILURES;
            }
            if code == CANCELLED {
                ops.remaining = Some(u16::try_from(total - done).unwrap_or(u16::MAX));
            }
        }
        let retrieved = Retrieved {
            service: "C-GET",
            destination: self.calling.clone(),
            code,
            comment,
            ops,
            failed_uids,
        };
        self.final_retrieve_response(context, &request, retrieved, &incoming.transfer_syntax)
            .await
    }

    /// Report a C-MOVE or C-GET that ended (answered, or cut short).
    fn retrieve_ended(
        &self,
        service: &'static str,
        destination: String,
        ops: crate::dimse::SubOperations,
        code: u16,
    ) {
        self.handler.event(ScpEvent::Moved {
            association: self.number,
            calling_ae_title: self.calling.clone(),
            service,
            destination,
            completed: ops.completed,
            failed: ops.failed,
            warning: ops.warning,
            status: code,
        });
    }

    /// The next PDU during a C-GET, bounded like any (the idle and PDU
    /// timeouts, the service stopping).
    async fn receive_during_get(&mut self, idle: Duration) -> Result<Pdu, String> {
        let receive = tokio::time::timeout(idle, self.conn.receive());
        let slow = slow_pdu(self.watcher.as_ref(), self.options.pdu_timeout);
        let mut cut = self.cut.clone();
        tokio::select! {
            received = receive => match received {
                Err(_) => Err("timeout".into()),
                Ok(Err(e)) => Err(format!("connection lost: {e}")),
                Ok(Ok(pdu)) => Ok(pdu),
            },
            reason = slow => Err(reason),
            _ = cut.wait_for(|cut| *cut) => Err("service stopping: association cut at the end of the grace period (during a C-GET)".into()),
        }
    }

    /// The next command the C-GET requester sent (queued PDVs first); `None`
    /// when nothing came within `idle`.
    async fn next_get_command(
        &mut self,
        inbound: &mut Inbound,
        idle: Duration,
    ) -> Result<Option<Command>, String> {
        loop {
            while let Some(value) = inbound.values.pop_front() {
                match inbound.assembler.push(value).map_err(|e| e.to_string())? {
                    Step::Pending => {}
                    Step::Command { command, .. } => {
                        if command.has_data_set {
                            return Err(format!(
                                "command 0x{:04X} with a data set during a C-GET",
                                command.field
                            ));
                        }
                        return Ok(Some(command));
                    }
                    Step::Data { .. } => return Err("data set during a C-GET".into()),
                }
            }
            super::quick_ack(self.conn.stream().tcp());
            let received = if idle.is_zero() {
                // Only what has already arrived: one poll, no timer (a zero
                // timeout would still wait for the timer's millisecond).
                let idle = self.options.idle_timeout;
                tokio::select! {
                    biased;
                    received = self.receive_during_get(idle) => received,
                    () = std::future::ready(()) => return Ok(None),
                }
            } else {
                self.receive_during_get(idle).await
            };
            let pdu = match received {
                Ok(pdu) => pdu,
                Err(e) if e == "timeout" => return Ok(None),
                Err(e) => return Err(e),
            };
            match pdu {
                Pdu::PData { data } => inbound.values.extend(data),
                Pdu::AbortRQ { source } => return Err(format!("aborted by peer ({source:?})")),
                other => return Err(format!("unexpected PDU during a C-GET: {other:?}")),
            }
        }
    }

    /// Whether the requester cancelled this C-GET in what it sent so far.
    async fn get_cancelled(
        &mut self,
        request: &Command,
        inbound: &mut Inbound,
    ) -> Result<bool, String> {
        // Nothing waited for: only what has arrived.
        loop {
            match self.next_get_command(inbound, Duration::ZERO).await? {
                None => return Ok(false),
                Some(command) if command.field == C_CANCEL_RQ => {
                    if command.responding_to == request.message_id {
                        return Ok(true);
                    }
                }
                Some(command) => {
                    return Err(format!(
                        "unexpected command 0x{:04X} during a C-GET",
                        command.field
                    ));
                }
            }
        }
    }

    /// Send one file back to the C-GET requester and read its answer; and
    /// whether the requester sent a C-CANCEL-RQ meanwhile.
    async fn get_sub_operation(
        &mut self,
        request: &Command,
        path: &Path,
        index: usize,
        inbound: &mut Inbound,
    ) -> Result<(SubOperation, bool), String> {
        use dicom_encoding::TransferSyntaxIndex;
        let Ok(file) = super::scu::read_part10(path) else {
            return Ok((SubOperation::NotSent, false));
        };
        let class = file
            .meta
            .media_storage_sop_class_uid()
            .trim_end_matches('\0');
        let instance = file
            .meta
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let own = file.meta.transfer_syntax().trim_end_matches('\0');
        let native = |ts: &str| {
            dicom_transfer_syntax_registry::TransferSyntaxRegistry
                .get(ts)
                .is_some_and(|t| !t.is_encapsulated_pixel_data())
        };
        // A context of that class where the requester is the SCP: in the
        // file's own syntax, else a native one when the file is native
        // (re-encoded), else none that can carry it.
        let context = self
            .negotiated
            .contexts
            .iter()
            .filter(|c| {
                c.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
                    && trim_uid(&c.abstract_syntax) == class
                    && self.negotiated.requester_scp.iter().any(|a| a == class)
            })
            .filter_map(|c| {
                let ts = trim_uid(&c.transfer_syntax);
                let rank = if ts == own {
                    0
                } else if native(ts) && native(own) {
                    1
                } else {
                    return None;
                };
                Some((rank, c.id, ts.to_string()))
            })
            .min_by_key(|(rank, _, _)| *rank);
        let Some((_, id, ts)) = context else {
            return Ok((SubOperation::NotSent, false));
        };
        let Ok(dataset) = super::scu::encode_for(&file, &ts) else {
            return Ok((SubOperation::NotSent, false));
        };
        // Sub-operation message IDs: apart from the requester's.
        let mut message_id = 0x8000 | u16::try_from(index % 0x7FFF).unwrap_or(0);
        if request.message_id == Some(message_id) {
            message_id = message_id.wrapping_add(1) | 0x8000;
        }
        let store = Command::store_request(message_id, class, &instance);
        super::scu::send_message(
            &mut self.conn,
            id,
            &store,
            &dataset,
            self.negotiated.peer_max_pdu_length,
            self.options.pdu_timeout,
        )
        .await
        .map_err(|e| format!("C-GET sub-operation: {e}"))?;
        let mut cancelled = false;
        loop {
            let Some(command) = self
                .next_get_command(inbound, self.options.idle_timeout)
                .await?
            else {
                return Err("C-GET requester did not answer a sub-operation".into());
            };
            match command.field {
                field::C_STORE_RSP if command.responding_to == Some(message_id) => {
                    return Ok((
                        SubOperation::Done(command.status.unwrap_or(status::PROCESSING_FAILURE)),
                        cancelled,
                    ));
                }
                // Its answer to the sub-operation in flight still comes; no
                // other is sent.
                C_CANCEL_RQ if command.responding_to == request.message_id => cancelled = true,
                C_CANCEL_RQ => {}
                other => {
                    return Err(format!("unexpected command 0x{other:04X} during a C-GET"));
                }
            }
        }
    }

    /// The final C-MOVE-RSP or C-GET-RSP: its status, the sub-operation
    /// counts, and the Failed SOP Instance UID List when some failed; then
    /// the event.
    async fn final_retrieve_response(
        &mut self,
        context: u8,
        request: &Command,
        retrieved: Retrieved,
        transfer_syntax: &str,
    ) -> Result<(), String> {
        let Retrieved {
            service,
            destination,
            code,
            comment,
            ops,
            failed_uids,
        } = retrieved;
        // On record first: a final response that cannot be sent does not
        // undo what went.
        self.retrieve_ended(service, destination, ops, code);
        let mut last = request.response(code, comment.as_deref());
        last.sub_operations = Some(ops);
        let data = if failed_uids.is_empty() {
            None
        } else {
            use dicom_encoding::TransferSyntaxIndex;
            let syntax = dicom_transfer_syntax_registry::TransferSyntaxRegistry
                .get(trim_uid(transfer_syntax))
                .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
            let mut list = dicom_object::InMemDicomObject::new_empty();
            list.put(dicom_core::DataElement::new(
                dicom_dictionary_std::tags::FAILED_SOP_INSTANCE_UID_LIST,
                dicom_core::VR::UI,
                dicom_core::value::PrimitiveValue::Strs(failed_uids.iter().cloned().collect()),
            ));
            let mut bytes = Vec::new();
            list.write_dataset_with_ts(&mut bytes, syntax)
                .map_err(|e| format!("cannot encode the failed list: {e}"))?;
            Some(bytes)
        };
        last.has_data_set = data.is_some();
        self.send_fragments(context, PDataValueType::Command, &last.encode())
            .await?;
        if let Some(bytes) = data {
            self.send_fragments(context, PDataValueType::Data, &bytes)
                .await?;
        }
        super::quick_ack(self.conn.stream().tcp());
        Ok(())
    }

    /// Answer a C-MOVE: the handler says which files go where; they are
    /// sent on one association to the destination (Vigie the SCU), then the
    /// final response gives the counts and, after failures, the Failed SOP
    /// Instance UID List.
    async fn finish_move(&mut self, mut incoming: Incoming) -> Result<(), String> {
        use crate::dimse::SubOperations;
        let request = incoming.request.clone();
        let context = incoming.context;
        let destination = request.move_destination.clone().unwrap_or_default();
        let answer = self
            .retrieve_answer(&mut incoming, destination.clone(), false)
            .await;
        let mut ops = SubOperations::default();
        let mut failed_uids: Vec<String> = Vec::new();
        let mut code = answer.status;
        let mut comment = answer.comment.clone();
        if code == status::SUCCESS
            && let Some(remote) = &answer.destination
            && !answer.files.is_empty()
        {
            let total = u16::try_from(answer.files.len()).unwrap_or(u16::MAX);
            let mut pending = request.response(PENDING, None);
            pending.sub_operations = Some(SubOperations {
                remaining: Some(total),
                ..SubOperations::default()
            });
            self.send_fragments(context, PDataValueType::Command, &pending.encode())
                .await?;
            let mut scu = super::scu::ScuOptions::new(&self.options.ae_title);
            scu.timeout = self.options.pdu_timeout;
            match super::scu::send_files(remote, &scu, &answer.files).await {
                Ok(outcomes) => {
                    for outcome in &outcomes {
                        match outcome.status {
                            Some(s) if s == status::SUCCESS => {
                                ops.completed = ops.completed.saturating_add(1)
                            }
                            Some(s) if status::category(s) == "warning" => {
                                ops.warning = ops.warning.saturating_add(1)
                            }
                            _ => {
                                ops.failed = ops.failed.saturating_add(1);
                                failed_uids.push(outcome.sop_instance_uid.clone());
                            }
                        }
                    }
                    // Files never offered (the association ended early).
                    let unanswered = answer.files.len().saturating_sub(outcomes.len());
                    ops.failed = ops
                        .failed
                        .saturating_add(u16::try_from(unanswered).unwrap_or(u16::MAX));
                    if ops.failed > 0 || ops.warning > 0 {
                        code = SUB_OPERATIONS_WITH_FAILURES;
                    }
                }
                Err(e) => {
                    ops.failed = total;
                    code = UNABLE_TO_PERFORM_SUB_OPERATIONS;
                    comment = Some(e.to_string());
                }
            }
        }
        let retrieved = Retrieved {
            service: "C-MOVE",
            destination,
            code,
            comment,
            ops,
            failed_uids,
        };
        self.final_retrieve_response(context, &request, retrieved, &incoming.transfer_syntax)
            .await
    }

    /// Send `bytes` as PDVs of `kind` on `context`, each PDU bounded by the
    /// PDU timeout.
    async fn send_fragments(
        &mut self,
        context: u8,
        kind: PDataValueType,
        bytes: &[u8],
    ) -> Result<(), String> {
        for pdu in fragment(context, kind, bytes, self.negotiated.peer_max_pdu_length) {
            tokio::time::timeout(self.options.pdu_timeout, self.conn.send(&pdu))
                .await
                .map_err(|_| "peer does not read its responses (dicom.pdu_timeout_s)".to_string())?
                .map_err(|e| format!("cannot send response: {e}"))?;
        }
        Ok(())
    }

    async fn respond(
        &mut self,
        context: u8,
        request: &Command,
        code: u16,
        comment: Option<&str>,
    ) -> Result<(), String> {
        let bytes = request.response(code, comment).encode();
        for pdu in fragment(
            context,
            PDataValueType::Command,
            &bytes,
            self.negotiated.peer_max_pdu_length,
        ) {
            // A peer that never reads its responses cannot hold the
            // association: the send is bounded like a receive.
            tokio::time::timeout(self.options.pdu_timeout, self.conn.send(&pdu))
                .await
                .map_err(|_| "peer does not read its responses (dicom.pdu_timeout_s)".to_string())?
                .map_err(|e| format!("cannot send response: {e}"))?;
        }
        // Sending made the connection look interactive to the kernel, which
        // then delays its ACKs: leave that mode before the next message.
        super::quick_ack(self.conn.stream().tcp());
        Ok(())
    }
}

/// A second handle on `socket` (a duplicated descriptor), or `None` when
/// the system refuses one: the PDU timeout is then not enforced.
fn watch(socket: &TcpStream) -> Option<TcpStream> {
    let duplicate = socket2::SockRef::from(socket).try_clone().ok()?;
    let std: std::net::TcpStream = duplicate.into();
    std.set_nonblocking(true).ok()?;
    TcpStream::from_std(std).ok()
}

/// Resolves, with the reason, `limit` after the first bytes of the next PDU
/// are seen on the socket; never without a watcher or at end of stream
/// (the receive itself reports those).
async fn slow_pdu(watcher: Option<&TcpStream>, limit: Duration) -> String {
    let mut byte = [0u8; 1];
    match watcher {
        Some(w) if matches!(w.peek(&mut byte).await, Ok(n) if n > 0) => {}
        _ => std::future::pending::<()>().await,
    }
    tokio::time::sleep(limit).await;
    format!(
        "PDU not complete {} s after its first bytes (dicom.pdu_timeout_s)",
        limit.as_secs()
    )
}

fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// Remove staged files left by a previous run (a crash mid-transfer); none
/// of them was acknowledged.
pub fn clean_staging(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "part") {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}
