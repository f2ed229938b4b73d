//! The DICOM upper layer (PS3.8): PDUs over any async byte stream, and the
//! association negotiation of both sides.
//!
//! `dicom-ul` reads and writes the PDUs; the negotiation is done here
//! because `dicom-ul`'s acceptor and requestor announce their own
//! Implementation Class UID and Version Name (`DICOM-rs 0.10.1`) whatever
//! the application, and its acceptor takes the first transfer syntax in the
//! *requester's* order. Here:
//! - both sides announce Vigie's identifiers
//!   ([`IMPLEMENTATION_CLASS_UID`], [`IMPLEMENTATION_VERSION_NAME`]), the ones
//!   in the conformance statement and in the files Vigie writes;
//! - the acceptor picks, for each presentation context, the first transfer
//!   syntax of **its own** list (`dicom.transfer_syntaxes`, an order of
//!   preference) that the requester proposed;
//! - the protocol version is checked as PS3.8 §9.3.2 says (bit 0 set, other
//!   bits not tested).
//!
//! The stream is generic: the same code runs over TCP and TLS
//! ([`super::tls::DicomStream`]).

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceUserReason,
    AssociationRJSource, AssociationRQ, Pdu, PresentationContextNegotiated,
    PresentationContextProposed, PresentationContextResult, PresentationContextResultReason,
    UserIdentity, UserVariableItem,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::write::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// The DICOM application context name (PS3.7 Annex A.2.1).
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// Maximum PDU length assumed for a peer that announces none (PS3.8 D.1:
/// a value of 0 means no limit; absent, the default of the toolkits).
const DEFAULT_PEER_MAX_PDU: u32 = 16_384;

/// Why PDUs could not be exchanged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UlError {
    /// The bytes received are not a valid PDU.
    #[error("invalid PDU: {0}")]
    Decode(#[source] dicom_ul::pdu::ReadError),
    /// A PDU could not be encoded (a value too long for its field).
    #[error("cannot encode PDU: {0}")]
    Encode(#[source] dicom_ul::pdu::WriteError),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[source] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
}

/// PDUs over a byte stream, with the buffer of what arrived but was not yet
/// a whole PDU.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    buffer: Vec<u8>,
    max_pdu_length: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection that accepts PDUs up to `max_pdu_length` bytes (the
    /// maximum length this side announces).
    pub fn new(stream: S, max_pdu_length: u32) -> Self {
        let max = max_pdu_length.clamp(
            dicom_ul::pdu::MINIMUM_PDU_SIZE,
            dicom_ul::pdu::MAXIMUM_PDU_SIZE,
        );
        Self {
            stream,
            buffer: Vec::with_capacity(64 * 1024),
            max_pdu_length: max,
        }
    }

    /// A connection whose first bytes were already read from the stream
    /// (an association request read during the TLS handshake's ARTIM
    /// time): they are parsed before anything more is read.
    pub fn with_received(stream: S, max_pdu_length: u32, received: Vec<u8>) -> Self {
        let mut connection = Self::new(stream, max_pdu_length);
        connection.buffer = received;
        connection
    }

    /// The next PDU; a PDU longer than the maximum is an error, not read.
    pub async fn receive(&mut self) -> Result<Pdu, UlError> {
        loop {
            let mut cursor: &[u8] = &self.buffer;
            match dicom_ul::pdu::read_pdu(&mut cursor, self.max_pdu_length, true) {
                Ok(Some(pdu)) => {
                    let used = self.buffer.len() - cursor.len();
                    self.buffer.drain(..used);
                    return Ok(pdu);
                }
                Ok(None) => {}
                Err(e) => return Err(UlError::Decode(e)),
            }
            if self.buffer.capacity() - self.buffer.len() < 16 * 1024 {
                self.buffer.reserve(64 * 1024);
            }
            let read = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(UlError::Io)?;
            if read == 0 {
                return Err(UlError::Closed);
            }
        }
    }

    /// Send one PDU.
    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), UlError> {
        let mut out = Vec::new();
        dicom_ul::pdu::write_pdu(&mut out, pdu).map_err(UlError::Encode)?;
        self.stream.write_all(&out).await.map_err(UlError::Io)
    }

    /// The stream (socket options).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Close the stream for writing (after a release or an abort).
    pub async fn shutdown(&mut self) {
        // Best effort: the peer may already be gone.
        let _ = self.stream.shutdown().await;
    }
}

/// What an association was negotiated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The requester's AE title, trimmed.
    pub calling_ae_title: String,
    /// The called AE title, trimmed.
    pub called_ae_title: String,
    /// The largest PDU the peer receives.
    pub peer_max_pdu_length: u32,
    /// Every presentation context, accepted or not.
    pub contexts: Vec<PresentationContextNegotiated>,
    /// The peer's Implementation Class UID.
    pub peer_implementation_class_uid: Option<String>,
    /// The peer's Implementation Version Name.
    pub peer_implementation_version_name: Option<String>,
    /// Abstract syntaxes accepted with the requester in the SCP role (SCP/SCU
    /// Role Selection, PS3.7 D.3.3.4): a Storage Commitment SCP that opened
    /// an association to send its reports.
    pub requester_scp: Vec<String>,
    /// Abstract syntaxes accepted with the requester as SCP only: it may
    /// not send C-STORE on them (storage classes of C-GET that this side
    /// does not store).
    pub requester_not_scu: Vec<String>,
}

impl Negotiated {
    /// The abstract and transfer syntax of accepted context `id`.
    pub fn accepted(&self, id: u8) -> Option<(&str, &str)> {
        self.contexts
            .iter()
            .find(|c| c.id == id && c.reason == PresentationContextResultReason::Acceptance)
            .map(|c| (c.abstract_syntax.as_str(), c.transfer_syntax.as_str()))
    }

    /// How many contexts were accepted.
    pub fn accepted_count(&self) -> usize {
        self.contexts
            .iter()
            .filter(|c| c.reason == PresentationContextResultReason::Acceptance)
            .count()
    }
}

/// What the acceptor offers.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// Abstract syntaxes (SOP classes) accepted.
    pub abstract_syntaxes: &'a [&'a str],
    /// Transfer syntaxes accepted, in order of preference.
    pub transfer_syntaxes: &'a [&'a str],
    /// Abstract syntaxes accepted only where the requester proposes to be
    /// the SCP (SCP/SCU Role Selection, PS3.7 D.3.3.4), as a Storage
    /// Commitment SCP does to send its N-EVENT-REPORT; proposed without
    /// that role, they are refused (abstract syntax not supported).
    pub scp_role_syntaxes: &'a [&'a str],
    /// Abstract syntaxes where a requester that proposes the SCP role gets
    /// it (the storage SOP classes of C-GET sub-operations): those also in
    /// [`Offer::abstract_syntaxes`] keep the SCU role the requester
    /// proposed; the others are accepted with the SCP role only (the
    /// requester may receive them, not store them). Without the SCP role
    /// proposed, only [`Offer::abstract_syntaxes`] count.
    pub get_syntaxes: &'a [&'a str],
    /// The largest PDU this side receives.
    pub max_pdu_length: u32,
}

/// Trim the padding of a UID or AE title received in a PDU.
pub fn trim(value: &str) -> &str {
    value.trim_matches(|c: char| c == ' ' || c == '\0')
}

/// The transfer syntax the acceptor takes: the first of `preference` that
/// `proposed` holds and the toolkit can read.
pub fn choose_transfer_syntax<'a>(preference: &[&'a str], proposed: &[String]) -> Option<&'a str> {
    preference.iter().copied().find(|ours| {
        proposed.iter().any(|p| trim(p) == *ours)
            && TransferSyntaxRegistry
                .get(ours)
                .is_some_and(|ts| !ts.is_unsupported())
    })
}

/// What the peer said about itself in its user information items.
struct PeerItems<'a> {
    max_pdu_length: u32,
    identity: Option<&'a UserIdentity>,
    class_uid: Option<String>,
    version_name: Option<String>,
}

impl<'a> PeerItems<'a> {
    fn of(items: &'a [UserVariableItem]) -> Self {
        let mut peer = Self {
            max_pdu_length: DEFAULT_PEER_MAX_PDU,
            identity: None,
            class_uid: None,
            version_name: None,
        };
        for item in items {
            match item {
                // PS3.8 D.1: 0 means no limit.
                UserVariableItem::MaxLength(0) => {
                    peer.max_pdu_length = dicom_ul::pdu::MAXIMUM_PDU_SIZE
                }
                UserVariableItem::MaxLength(n) => {
                    peer.max_pdu_length = (*n).min(dicom_ul::pdu::MAXIMUM_PDU_SIZE)
                }
                UserVariableItem::UserIdentityItem(u) => peer.identity = Some(u),
                UserVariableItem::ImplementationClassUID(u) => {
                    peer.class_uid = Some(trim(u).to_string())
                }
                UserVariableItem::ImplementationVersionName(v) => {
                    peer.version_name = Some(trim(v).to_string())
                }
                _ => {}
            }
        }
        peer
    }
}

/// A rejection in words, for logs and audit records.
pub fn describe_rejection(rj: &AssociationRJ) -> String {
    let why = match &rj.source {
        AssociationRJSource::ServiceUser(reason) => match reason {
            AssociationRJServiceUserReason::CalledAETitleNotRecognized => {
                "called AE title not recognized".to_string()
            }
            AssociationRJServiceUserReason::CallingAETitleNotRecognized => {
                "calling AE title not recognized".to_string()
            }
            AssociationRJServiceUserReason::ApplicationContextNameNotSupported => {
                "application context name not supported".to_string()
            }
            AssociationRJServiceUserReason::NoReasonGiven => {
                "no reason given (protocol version not supported)".to_string()
            }
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    };
    let result = match rj.result {
        AssociationRJResult::Permanent => "permanent",
        AssociationRJResult::Transient => "transient",
    };
    format!("association rejected ({result}): {why}")
}

fn rejection(result: AssociationRJResult, reason: AssociationRJServiceUserReason) -> AssociationRJ {
    AssociationRJ {
        result,
        source: AssociationRJSource::ServiceUser(reason),
    }
}

/// The acceptor's answer to an A-ASSOCIATE-RQ: the A-ASSOCIATE-AC and what
/// was negotiated, or the A-ASSOCIATE-RJ. `access` decides whether the
/// caller may associate (calling and called AE titles trimmed, user
/// identity if any).
pub fn accept(
    request: AssociationRQ,
    offer: Offer<'_>,
    access: impl FnOnce(&str, &str, Option<&UserIdentity>) -> Result<(), AssociationRJServiceUserReason>,
) -> Result<(AssociationAC, Negotiated), AssociationRJ> {
    // PS3.8 §9.3.2: "shall only test that bit 0 is set".
    if request.protocol_version & 1 == 0 {
        return Err(rejection(
            AssociationRJResult::Permanent,
            AssociationRJServiceUserReason::NoReasonGiven,
        ));
    }
    if trim(&request.application_context_name) != APPLICATION_CONTEXT {
        return Err(rejection(
            AssociationRJResult::Permanent,
            AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
        ));
    }
    let peer = PeerItems::of(&request.user_variables);
    let calling = trim(&request.calling_ae_title).to_string();
    let called = trim(&request.called_ae_title).to_string();
    access(&calling, &called, peer.identity)
        .map_err(|reason| rejection(AssociationRJResult::Permanent, reason))?;
    // The SCP roles the requester proposes (a Storage Commitment SCP
    // reporting on an association of its own).
    let scp_proposed: Vec<(&str, bool)> = request
        .user_variables
        .iter()
        .filter_map(|item| match item {
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) if roles.scp => {
                Some((trim(uid), roles.scu))
            }
            _ => None,
        })
        .collect();
    let proposes_scp = |uid: &str| {
        scp_proposed
            .iter()
            .find(|(u, _)| *u == uid)
            .map(|(_, scu)| *scu)
    };
    let mut requester_scp: Vec<String> = Vec::new();
    // Role answers: (abstract syntax, SCU role kept).
    let mut roles: Vec<(String, bool)> = Vec::new();
    let contexts: Vec<PresentationContextNegotiated> = request
        .presentation_contexts
        .iter()
        .map(|pc| {
            let abstract_syntax = trim(&pc.abstract_syntax);
            let proposed_scu = proposes_scp(abstract_syntax);
            // Reports (DIMSE-N) travel in Explicit or Implicit VR Little
            // Endian only, whatever the storage preference.
            const LITTLE_ENDIAN: [&str; 2] = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"];
            let mut for_context = offer;
            let (offered, scu_kept): (&[&str], bool) =
                if offer.scp_role_syntaxes.contains(&abstract_syntax) {
                    // A reporting SCP: that role only.
                    for_context.transfer_syntaxes = &LITTLE_ENDIAN;
                    match proposed_scu {
                        Some(_) => (&[abstract_syntax][..], false),
                        None => (&[][..], false),
                    }
                } else if let Some(scu) = proposed_scu
                    && offer.get_syntaxes.contains(&abstract_syntax)
                {
                    // A C-GET requester, which may also store what we take.
                    let stores = offer.abstract_syntaxes.contains(&abstract_syntax);
                    (&[abstract_syntax][..], scu && stores)
                } else {
                    return negotiate_context(pc, offer.abstract_syntaxes, offer);
                };
            let negotiated = negotiate_context(pc, offered, for_context);
            if negotiated.reason == PresentationContextResultReason::Acceptance
                && !requester_scp.iter().any(|a| a == abstract_syntax)
            {
                requester_scp.push(abstract_syntax.to_string());
                roles.push((abstract_syntax.to_string(), scu_kept));
            }
            negotiated
        })
        .collect();
    let mut user_variables = our_user_variables(offer.max_pdu_length);
    // The acceptor answers each role it accepts (PS3.7 D.3.3.4): the
    // requester as SCP only.
    for (uid, scu) in &roles {
        user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
            uid.clone(),
            dicom_ul::pdu::RequestorRoles {
                scu: *scu,
                scp: true,
            },
        ));
    }
    // Where the requester was not left the SCU role, it may not store.
    let requester_not_scu: Vec<String> = roles
        .iter()
        .filter(|(uid, scu)| !scu && !offer.scp_role_syntaxes.contains(&uid.as_str()))
        .map(|(uid, _)| uid.clone())
        .collect();
    let ac = AssociationAC {
        protocol_version: 1,
        calling_ae_title: request.calling_ae_title.clone(),
        called_ae_title: request.called_ae_title.clone(),
        application_context_name: APPLICATION_CONTEXT.to_string(),
        presentation_contexts: contexts
            .iter()
            .map(|c| PresentationContextResult {
                id: c.id,
                reason: c.reason.clone(),
                transfer_syntax: c.transfer_syntax.clone(),
            })
            .collect(),
        user_variables,
    };
    Ok((
        ac,
        Negotiated {
            calling_ae_title: calling,
            called_ae_title: called,
            peer_max_pdu_length: peer.max_pdu_length,
            contexts,
            peer_implementation_class_uid: peer.class_uid,
            peer_implementation_version_name: peer.version_name,
            requester_scp,
            requester_not_scu,
        },
    ))
}

fn negotiate_context(
    pc: &PresentationContextProposed,
    abstract_syntaxes: &[&str],
    offer: Offer<'_>,
) -> PresentationContextNegotiated {
    let abstract_syntax = trim(&pc.abstract_syntax).to_string();
    // The transfer syntax of a refused context is not significant (PS3.8
    // §9.3.3.2); Implicit VR Little Endian, as toolkits send.
    let refused = |reason| PresentationContextNegotiated {
        id: pc.id,
        reason,
        transfer_syntax: "1.2.840.10008.1.2".to_string(),
        abstract_syntax: abstract_syntax.clone(),
    };
    if !abstract_syntaxes.contains(&abstract_syntax.as_str()) {
        return refused(PresentationContextResultReason::AbstractSyntaxNotSupported);
    }
    match choose_transfer_syntax(offer.transfer_syntaxes, &pc.transfer_syntaxes) {
        Some(ts) => PresentationContextNegotiated {
            id: pc.id,
            reason: PresentationContextResultReason::Acceptance,
            transfer_syntax: ts.to_string(),
            abstract_syntax: abstract_syntax.clone(),
        },
        None => refused(PresentationContextResultReason::TransferSyntaxesNotSupported),
    }
}

fn our_user_variables(max_pdu_length: u32) -> Vec<UserVariableItem> {
    vec![
        UserVariableItem::MaxLength(max_pdu_length),
        UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
        UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_string()),
    ]
}

/// Why an association could not be requested.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The peer rejected it.
    #[error("rejected by the peer ({result:?}, {source_of:?})")]
    Rejected {
        /// Permanent or transient.
        result: AssociationRJResult,
        /// Who rejected it and why.
        source_of: AssociationRJSource,
    },
    /// The peer aborted instead of answering.
    #[error("aborted by the peer")]
    Aborted,
    /// The peer answered with something else than A-ASSOCIATE-AC or -RJ.
    #[error("unexpected answer to A-ASSOCIATE-RQ: {0}")]
    Unexpected(String),
    /// The peer accepted none of the proposed presentation contexts.
    #[error("the peer accepted no presentation context")]
    NoContext,
    /// More presentation contexts than one association can carry (128,
    /// PS3.8 §9.3.2.2).
    #[error("{0} presentation contexts proposed; an association carries at most 128")]
    TooManyContexts(usize),
    /// The PDUs could not be exchanged.
    #[error(transparent)]
    Ul(#[from] UlError),
}

/// What the requester proposes: one presentation context per entry,
/// identifiers 1, 3, 5… in order (PS3.8 §9.3.2.2: odd numbers).
#[derive(Debug, Clone)]
pub struct Proposal {
    /// Our AE title.
    pub calling_ae_title: String,
    /// The peer's AE title.
    pub called_ae_title: String,
    /// Abstract syntax and the transfer syntaxes proposed for it.
    pub contexts: Vec<(String, Vec<String>)>,
    /// The largest PDU this side receives.
    pub max_pdu_length: u32,
    /// Abstract syntaxes for which this side proposes to be the SCP (SCP/SCU
    /// Role Selection, PS3.7 D.3.3.4): the storage classes of a C-GET,
    /// whose instances come back on this association. Proposed as SCP only
    /// (SCU role 0).
    pub scp_roles: Vec<String>,
}

/// Request an association on `connection` and wait for the answer.
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    proposal: &Proposal,
) -> Result<Negotiated, RequestError> {
    if proposal.contexts.len() > 128 {
        return Err(RequestError::TooManyContexts(proposal.contexts.len()));
    }
    let proposed: Vec<PresentationContextProposed> = proposal
        .contexts
        .iter()
        .enumerate()
        .map(
            |(i, (abstract_syntax, syntaxes))| PresentationContextProposed {
                id: u8::try_from(2 * i + 1).unwrap_or(255),
                abstract_syntax: abstract_syntax.clone(),
                transfer_syntaxes: syntaxes.clone(),
            },
        )
        .collect();
    let mut user_variables = our_user_variables(proposal.max_pdu_length);
    for uid in &proposal.scp_roles {
        user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
            uid.clone(),
            dicom_ul::pdu::RequestorRoles {
                scu: false,
                scp: true,
            },
        ));
    }
    let rq = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: proposal.calling_ae_title.clone(),
        called_ae_title: proposal.called_ae_title.clone(),
        application_context_name: APPLICATION_CONTEXT.to_string(),
        presentation_contexts: proposed.clone(),
        user_variables,
    };
    connection.send(&Pdu::AssociationRQ(rq)).await?;
    let ac = match connection.receive().await? {
        Pdu::AssociationAC(ac) => ac,
        Pdu::AssociationRJ(rj) => {
            return Err(RequestError::Rejected {
                result: rj.result,
                source_of: rj.source,
            });
        }
        Pdu::AbortRQ { .. } => return Err(RequestError::Aborted),
        other => return Err(RequestError::Unexpected(format!("{other:?}"))),
    };
    let peer = PeerItems::of(&ac.user_variables);
    // The roles the acceptor granted us: SCP where it answered the SCP
    // role for a syntax we asked it for (PS3.7 D.3.3.4: without an answer
    // the default roles stand, this side SCU only).
    let granted_scp: Vec<String> = ac
        .user_variables
        .iter()
        .filter_map(|item| match item {
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) if roles.scp => {
                let uid = trim(uid).to_string();
                proposal.scp_roles.contains(&uid).then_some(uid)
            }
            _ => None,
        })
        .collect();
    // Only contexts we proposed count, with the abstract syntax we proposed
    // under that identifier, and only a transfer syntax we proposed for it.
    let contexts: Vec<PresentationContextNegotiated> = ac
        .presentation_contexts
        .iter()
        .filter_map(|result| {
            let ours = proposed.iter().find(|p| p.id == result.id)?;
            let ts = trim(&result.transfer_syntax).to_string();
            let reason = if result.reason == PresentationContextResultReason::Acceptance
                && !ours.transfer_syntaxes.contains(&ts)
            {
                PresentationContextResultReason::TransferSyntaxesNotSupported
            } else {
                result.reason.clone()
            };
            Some(PresentationContextNegotiated {
                id: result.id,
                reason,
                transfer_syntax: ts,
                abstract_syntax: ours.abstract_syntax.clone(),
            })
        })
        .collect();
    let negotiated = Negotiated {
        calling_ae_title: proposal.calling_ae_title.clone(),
        called_ae_title: proposal.called_ae_title.clone(),
        peer_max_pdu_length: peer.max_pdu_length,
        contexts,
        peer_implementation_class_uid: peer.class_uid,
        peer_implementation_version_name: peer.version_name,
        requester_scp: granted_scp,
        requester_not_scu: Vec::new(),
    };
    if negotiated.accepted_count() == 0 {
        return Err(RequestError::NoContext);
    }
    Ok(negotiated)
}

/// Release an association we requested: A-RELEASE-RQ, then wait for the
/// A-RELEASE-RP (PDUs that cross it are dropped), then close.
pub async fn release<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
) -> Result<(), UlError> {
    connection.send(&Pdu::ReleaseRQ).await?;
    loop {
        match connection.receive().await {
            Ok(Pdu::ReleaseRP) => break,
            Ok(Pdu::AbortRQ { .. }) | Err(UlError::Closed) => break,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    connection.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
    const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
    const COMMITMENT: &str = "1.2.840.10008.1.20.1";
    const SEG: &str = "1.2.840.10008.5.1.4.1.1.66.4";

    #[test]
    fn a_c_get_requester_gets_the_scp_role_for_storage_classes() {
        let role = |uid: &str, scu: bool| {
            UserVariableItem::ScuScpRoleSelectionSubItem(
                uid.into(),
                dicom_ul::pdu::RequestorRoles { scu, scp: true },
            )
        };
        let mut rq = request_with(vec![
            (1, MR, vec![EXPLICIT_LE]),
            (3, SEG, vec![EXPLICIT_LE]),
        ]);
        rq.user_variables.push(role(MR, true));
        rq.user_variables.push(role(SEG, true));
        let (ac, negotiated) =
            accept(rq, offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).expect("associated");
        // MR: stored here too, both roles kept; SEG (not stored here): the
        // requester as SCP only.
        assert_eq!(
            negotiated.requester_scp,
            vec![MR.to_string(), SEG.to_string()]
        );
        assert_eq!(negotiated.requester_not_scu, vec![SEG.to_string()]);
        assert!(ac.user_variables.contains(&role(MR, true)));
        assert!(ac.user_variables.contains(&role(SEG, false)));
        // SEG without the SCP role proposed: not offered.
        let rq = request_with(vec![(1, SEG, vec![EXPLICIT_LE])]);
        let (_, negotiated) =
            accept(rq, offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).expect("associated");
        assert_eq!(negotiated.accepted(1), None);
    }

    #[test]
    fn storage_commitment_is_accepted_only_with_the_requester_as_scp() {
        // Without role selection the requester would be the SCU, asking
        // Vigie to commit: refused.
        let rq = request_with(vec![(1, COMMITMENT, vec![EXPLICIT_LE])]);
        let (ac, negotiated) =
            accept(rq, offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).expect("associated");
        assert_eq!(
            ac.presentation_contexts[0].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        assert!(negotiated.requester_scp.is_empty());
        // A reporting SCP proposes SCU-role 0, SCP-role 1 (as Orthanc and
        // DCMTK do): accepted, and the role answered.
        let mut rq = request_with(vec![
            (1, COMMITMENT, vec![EXPLICIT_LE]),
            (3, MR, vec![EXPLICIT_LE]),
        ]);
        rq.user_variables
            .push(UserVariableItem::ScuScpRoleSelectionSubItem(
                format!("{COMMITMENT}\0"),
                dicom_ul::pdu::RequestorRoles {
                    scu: false,
                    scp: true,
                },
            ));
        let (ac, negotiated) =
            accept(rq, offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).expect("associated");
        assert_eq!(negotiated.accepted(1), Some((COMMITMENT, EXPLICIT_LE)));
        assert_eq!(negotiated.requester_scp, vec![COMMITMENT.to_string()]);
        assert!(
            ac.user_variables
                .contains(&UserVariableItem::ScuScpRoleSelectionSubItem(
                    COMMITMENT.into(),
                    dicom_ul::pdu::RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                ))
        );
        // No role answered for the storage context: default roles.
        assert_eq!(
            ac.user_variables
                .iter()
                .filter(|i| matches!(i, UserVariableItem::ScuScpRoleSelectionSubItem(..)))
                .count(),
            1
        );
        // Not offered at all: refused even as SCP.
        let mut rq = request_with(vec![(1, COMMITMENT, vec![EXPLICIT_LE])]);
        rq.user_variables
            .push(UserVariableItem::ScuScpRoleSelectionSubItem(
                COMMITMENT.into(),
                dicom_ul::pdu::RequestorRoles {
                    scu: false,
                    scp: true,
                },
            ));
        let mut none = offer(&[EXPLICIT_LE]);
        none.scp_role_syntaxes = &[];
        let (_, negotiated) = accept(rq, none, |_, _, _| Ok(())).expect("associated");
        assert_eq!(negotiated.accepted(1), None);
    }

    fn request_with(contexts: Vec<(u8, &str, Vec<&str>)>) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY        ".into(),
            called_ae_title: "VIGIE".into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts
                .into_iter()
                .map(|(id, a, ts)| PresentationContextProposed {
                    id,
                    abstract_syntax: a.into(),
                    transfer_syntaxes: ts.into_iter().map(String::from).collect(),
                })
                .collect(),
            user_variables: vec![
                UserVariableItem::MaxLength(16_384),
                UserVariableItem::ImplementationClassUID("1.2.3\0".into()),
                UserVariableItem::ImplementationVersionName("PEER_1".into()),
            ],
        }
    }

    fn offer<'a>(ts: &'a [&'a str]) -> Offer<'a> {
        Offer {
            abstract_syntaxes: &[MR, "1.2.840.10008.1.1"],
            transfer_syntaxes: ts,
            scp_role_syntaxes: &[COMMITMENT],
            get_syntaxes: &[MR, SEG],
            max_pdu_length: 116_794,
        }
    }

    #[test]
    fn the_acceptors_order_of_preference_wins_over_the_requesters() {
        // DCMTK's default proposal: Explicit BE before Implicit LE in some
        // builds; the requester's order must not decide.
        let rq = request_with(vec![(1, MR, vec![EXPLICIT_BE, IMPLICIT_LE, EXPLICIT_LE])]);
        let (ac, negotiated) = accept(
            rq.clone(),
            offer(&[EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE]),
            |_, _, _| Ok(()),
        )
        .expect("accepted");
        assert_eq!(ac.presentation_contexts[0].transfer_syntax, EXPLICIT_LE);
        assert_eq!(negotiated.accepted(1), Some((MR, EXPLICIT_LE)));
        // Another preference gives another choice from the same request.
        let (ac, _) =
            accept(rq, offer(&[IMPLICIT_LE, EXPLICIT_LE]), |_, _, _| Ok(())).expect("accepted");
        assert_eq!(ac.presentation_contexts[0].transfer_syntax, IMPLICIT_LE);
    }

    #[test]
    fn the_acceptor_announces_vigies_implementation_identifiers() {
        let rq = request_with(vec![(1, MR, vec![EXPLICIT_LE])]);
        let (ac, negotiated) =
            accept(rq, offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).expect("accepted");
        assert!(
            ac.user_variables
                .contains(&UserVariableItem::ImplementationClassUID(
                    IMPLEMENTATION_CLASS_UID.into()
                ))
        );
        assert!(
            ac.user_variables
                .contains(&UserVariableItem::ImplementationVersionName(
                    IMPLEMENTATION_VERSION_NAME.into()
                ))
        );
        assert!(!format!("{:?}", ac.user_variables).contains("DICOM-rs"));
        assert_eq!(
            negotiated.peer_implementation_class_uid.as_deref(),
            Some("1.2.3")
        );
        assert_eq!(
            negotiated.peer_implementation_version_name.as_deref(),
            Some("PEER_1")
        );
        assert_eq!(negotiated.calling_ae_title, "MODALITY");
        assert_eq!(negotiated.peer_max_pdu_length, 16_384);
    }

    #[test]
    fn contexts_are_refused_with_the_right_reason() {
        let rq = request_with(vec![
            (1, "1.2.3.4", vec![EXPLICIT_LE]),
            (3, MR, vec!["1.2.840.10008.1.2.4.50"]),
            (5, MR, vec![IMPLICIT_LE]),
        ]);
        let (ac, negotiated) =
            accept(rq, offer(&[EXPLICIT_LE, IMPLICIT_LE]), |_, _, _| Ok(())).expect("accepted");
        let reasons: Vec<_> = ac
            .presentation_contexts
            .iter()
            .map(|c| c.reason.clone())
            .collect();
        assert_eq!(
            reasons,
            vec![
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                PresentationContextResultReason::TransferSyntaxesNotSupported,
                PresentationContextResultReason::Acceptance,
            ]
        );
        assert_eq!(negotiated.accepted_count(), 1);
        assert_eq!(negotiated.accepted(3), None);
    }

    #[test]
    fn protocol_version_and_context_name_and_access_are_checked() {
        let mut rq = request_with(vec![(1, MR, vec![EXPLICIT_LE])]);
        rq.protocol_version = 3; // bit 0 set, others not tested
        assert!(accept(rq.clone(), offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).is_ok());
        rq.protocol_version = 2;
        assert!(accept(rq.clone(), offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).is_err());
        rq.protocol_version = 1;
        rq.application_context_name = "1.2.3".into();
        let rj = accept(rq.clone(), offer(&[EXPLICIT_LE]), |_, _, _| Ok(())).expect_err("refused");
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported
            )
        );
        rq.application_context_name = APPLICATION_CONTEXT.into();
        let rj = accept(rq, offer(&[EXPLICIT_LE]), |calling, called, _| {
            assert_eq!((calling, called), ("MODALITY", "VIGIE"));
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        })
        .expect_err("refused");
        assert_eq!(rj.result, AssociationRJResult::Permanent);
    }

    #[tokio::test]
    async fn a_requester_and_an_acceptor_negotiate_over_a_stream() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let acceptor = tokio::spawn(async move {
            let mut conn = Connection::new(b, 116_794);
            let Pdu::AssociationRQ(rq) = conn.receive().await.expect("rq") else {
                panic!("not a request")
            };
            let (ac, negotiated) =
                accept(rq, offer(&[EXPLICIT_LE, IMPLICIT_LE]), |_, _, _| Ok(())).expect("accepted");
            conn.send(&Pdu::AssociationAC(ac)).await.expect("ac");
            assert_eq!(conn.receive().await.expect("release"), Pdu::ReleaseRQ);
            conn.send(&Pdu::ReleaseRP).await.expect("rp");
            negotiated
        });
        let mut conn = Connection::new(a, 116_794);
        let proposal = Proposal {
            calling_ae_title: "VIGIE".into(),
            called_ae_title: "PACS".into(),
            contexts: vec![
                (MR.into(), vec![IMPLICIT_LE.into(), EXPLICIT_LE.into()]),
                ("1.2.3.4".into(), vec![EXPLICIT_LE.into()]),
            ],
            max_pdu_length: 65_536,
            scp_roles: Vec::new(),
        };
        let negotiated = request(&mut conn, &proposal).await.expect("negotiated");
        assert_eq!(negotiated.accepted(1), Some((MR, EXPLICIT_LE)));
        assert_eq!(negotiated.accepted(3), None);
        assert_eq!(negotiated.peer_max_pdu_length, 116_794);
        assert_eq!(
            negotiated.peer_implementation_class_uid.as_deref(),
            Some(IMPLEMENTATION_CLASS_UID)
        );
        release(&mut conn).await.expect("released");
        let theirs = acceptor.await.expect("acceptor");
        assert_eq!(theirs.peer_max_pdu_length, 65_536);
        assert_eq!(
            theirs.peer_implementation_version_name.as_deref(),
            Some(IMPLEMENTATION_VERSION_NAME)
        );
    }
}
