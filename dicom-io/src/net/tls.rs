//! DICOM over TLS (PS3.15 Annex B): the appliance's certificate and trust,
//! for both sides, reloadable without a restart.
//!
//! Profile: BCP 195 as PS3.15 B.9 ("Non-Downgrading BCP 195 TLS Secure
//! Transport Connection Profile") and B.11 ("BCP 195 RFC 8996 TLS Profile")
//! read it: TLS 1.2 and 1.3 only (no SSL, no TLS 1.0 or 1.1), and, under
//! TLS 1.2, only the four ECDHE AES-GCM suites RFC 9325 §4.2 recommends;
//! under TLS 1.3 its three standard AEAD suites. There is no RSA key
//! exchange, no CBC, no SHA-1 MAC, no renegotiation, no compression
//! (rustls implements none of them). `DHE_RSA` suites, which the profiles
//! also allow, are not offered (rustls does not implement finite-field
//! DHE); every TLS peer of the profiles offers the ECDHE ones.
//!
//! - [`DicomTls`]: the certificate chain and key Vigie presents (as the
//!   SCP, and as the SCU to destinations that ask for one), the trusted
//!   certification authorities, and whether callers must present a client
//!   certificate. [`DicomTls::reload`] reads the files again; a set that
//!   does not load leaves the previous one in use.
//! - [`DicomStream`]: a plain or TLS TCP stream, the one type the upper
//!   layer runs over.
//! - [`CertificateSummary`]: the names, validity and fingerprint of a
//!   certificate, for access checks (`dicom.allowed_callers[].certificate`),
//!   the audit trail and the expiry metric.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring as ring_provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The port registered for DICOM over TLS (IANA `dicom-tls`, PS3.15 B.1).
pub const DICOM_TLS_PORT: u16 = 2762;

/// Whether callers of the TLS listener present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for; one that is presented must chain to a
    /// trusted authority, but a caller without one is let in (its AE title
    /// must then not be bound to a certificate).
    Optional,
    /// Every caller presents a certificate that chains to a trusted
    /// authority; the handshake fails otherwise (the default).
    #[default]
    Required,
}

/// Where the TLS identity and trust are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// Private key of the leaf (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Certification authorities trusted for callers' certificates and for
    /// destinations' server certificates (PEM, one or more).
    pub ca: Option<PathBuf>,
    /// Whether callers must present a certificate.
    pub client_auth: ClientAuth,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read the TLS {what} {path}: {source}")]
    Read {
        /// Which file (certificate, private key, CA).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("the TLS {what} {path} is not valid PEM: {source}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A file holds no certificate (or no key).
    #[error("the TLS {what} {path} holds none")]
    Empty {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate cannot be parsed as X.509.
    #[error("the certificate in {path} cannot be read: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A trusted authority's certificate cannot be used as a trust anchor.
    #[error("the CA certificate in {path} cannot be trusted: {source}")]
    Anchor {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: rustls::Error,
    },
    /// Client certificates are asked for but no CA is configured.
    #[error("client certificates are {0:?} but no CA file is configured (dicom.tls.ca)")]
    NoCa(ClientAuth),
    /// The client verifier cannot be built from the CA file.
    #[error("cannot verify client certificates with the CA file: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the certificate, key or protocol set.
    #[error("TLS configuration refused ({what}): {source}")]
    Config {
        /// What was being set up.
        what: &'static str,
        /// The failure.
        #[source]
        source: rustls::Error,
    },
    /// A destination's server name is not a valid DNS name or address.
    #[error("invalid TLS server name {name:?}: {source}")]
    ServerName {
        /// The name.
        name: String,
        /// The failure.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

/// The cryptographic provider restricted to the BCP 195 suites (see the
/// module documentation).
pub fn bcp195_provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        ..ring_provider::default_provider()
    }
}

/// The protocol versions offered: TLS 1.3 and 1.2.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSummary {
    /// Subject distinguished name (RFC 4514 form).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Its names, for people: the subject's common names, then the DNS
    /// names and IP addresses of its Subject Alternative Name.
    pub names: Vec<String>,
    /// The subject's common names.
    pub common_names: Vec<String>,
    /// The DNS names of its Subject Alternative Name.
    pub dns_names: Vec<String>,
    /// The IP addresses of its Subject Alternative Name.
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// End of validity (Unix seconds).
    pub not_after: i64,
    /// SHA-256 of the DER certificate (hex).
    pub sha256: String,
}

impl CertificateSummary {
    /// Read a DER certificate.
    pub fn of(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let common_names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_string)
            .collect();
        let (mut dns_names, mut ip_addresses) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            use x509_parser::extensions::GeneralName;
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(std::net::IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(std::net::IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let names = common_names
            .iter()
            .chain(&dns_names)
            .cloned()
            .chain(ip_addresses.iter().map(ToString::to_string))
            .collect();
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            common_names,
            dns_names,
            ip_addresses,
            not_after: cert.validity().not_after.timestamp(),
            sha256: hex::encode(Sha256::digest(der)),
        })
    }

    /// Whether the certificate carries `name`, as RFC 9525 matches
    /// identities: an IP address against the Subject Alternative Name's
    /// addresses only (any spelling of it); a DNS name against its DNS
    /// names, without regard to case and without wildcards; the subject's
    /// common name only when the certificate has no DNS name at all. An
    /// empty name matches nothing.
    pub fn carries(&self, name: &str) -> bool {
        let name = name.trim();
        if name.is_empty() {
            return false;
        }
        if let Ok(address) = name.parse::<std::net::IpAddr>() {
            return self
                .ip_addresses
                .iter()
                .any(|a| a.to_canonical() == address.to_canonical());
        }
        let candidates = if self.dns_names.is_empty() {
            &self.common_names
        } else {
            &self.dns_names
        };
        candidates.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Seconds until the certificate expires (negative once it has).
    pub fn seconds_left(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.not_after.saturating_sub(now)
    }
}

/// How an association's connection is secured, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSession {
    /// Protocol version (`TLSv1_3`, `TLSv1_2`).
    pub protocol: String,
    /// Negotiated cipher suite.
    pub cipher_suite: String,
    /// The caller's verified certificate, when it presented one.
    pub peer_certificate: Option<CertificateSummary>,
}

struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    certificate: CertificateSummary,
}

/// When each file was last modified, to notice a renewal.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// The TLS identity and trust of the DICOM side; shared by the listener
/// and the SCU, reloaded in place.
pub struct DicomTls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    stamps: Mutex<Stamps>,
}

impl std::fmt::Debug for DicomTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl DicomTls {
    /// Load the certificate, key and CA.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamps = stamps(&files);
        let loaded = load(&files)?;
        Ok(Self {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The files it was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Read the files again. On success new connections use them (those
    /// open keep theirs); on failure the previous set stays in use.
    pub fn reload(&self) -> Result<CertificateSummary, TlsError> {
        let stamps = stamps(&self.files);
        let loaded = load(&self.files)?;
        let summary = loaded.certificate.clone();
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        Ok(summary)
    }

    /// Reload when a file changed since the last load (a renewal);
    /// `None` when none did. A failed reload is retried at the next call
    /// only once the files change again.
    pub fn reload_if_changed(&self) -> Option<Result<CertificateSummary, TlsError>> {
        let now = stamps(&self.files);
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *stamps == now {
                return None;
            }
            *stamps = now;
        }
        Some(self.reload())
    }

    /// The certificate presented now.
    pub fn certificate(&self) -> CertificateSummary {
        self.current().certificate.clone()
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().server.clone())
    }

    /// A connector with the current configuration (trusting the CA file,
    /// presenting the appliance's certificate when asked for one).
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current().client.clone())
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn stamps(files: &TlsFiles) -> Stamps {
    [
        Some(files.certificate.as_path()),
        Some(files.private_key.as_path()),
        files.ca.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let provider = Arc::new(bcp195_provider());
    let chain = certificates("certificate", &files.certificate)?;
    let certificate =
        CertificateSummary::of(&chain[0]).map_err(|reason| TlsError::Certificate {
            path: files.certificate.clone(),
            reason,
        })?;
    let key_bytes = read("private key", &files.private_key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: files.private_key.clone(),
        },
        source => TlsError::Pem {
            what: "private key",
            path: files.private_key.clone(),
            source,
        },
    })?;
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &files.ca {
        for anchor in certificates("CA", ca)? {
            roots.add(anchor).map_err(|source| TlsError::Anchor {
                path: ca.clone(),
                source,
            })?;
        }
    }
    let roots = Arc::new(roots);
    let verifier = match (files.client_auth, files.ca.is_some()) {
        (ClientAuth::None, _) => WebPkiClientVerifier::no_client_auth(),
        (mode, false) => return Err(TlsError::NoCa(mode)),
        (ClientAuth::Optional, true) => {
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(TlsError::Verifier)?
        }
        (ClientAuth::Required, true) => {
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(TlsError::Verifier)?
        }
    };
    let config = |what| move |source| TlsError::Config { what, source };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(config("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config("server certificate and key"))?;
    // No session resumption (TLS 1.3 tickets, TLS 1.2 session IDs): each
    // association is authenticated afresh, its certificate checked again,
    // and a renewed certificate or CA applies to every new one.
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(config("protocol versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config("client certificate and key"))?;
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        certificate,
    })
}

/// The name a destination's certificate must carry: a DNS name or an IP
/// address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.trim().to_string()).map_err(|source| TlsError::ServerName {
        name: name.to_string(),
        source,
    })
}

/// TLS towards one destination: the appliance's TLS settings and the name
/// the destination's certificate must carry.
#[derive(Clone)]
pub struct TlsDestination {
    /// Trust and the certificate presented.
    pub tls: Arc<DicomTls>,
    /// The destination's expected name (its host unless configured).
    pub server_name: ServerName<'static>,
}

impl PartialEq for TlsDestination {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.tls, &other.tls) && self.server_name == other.server_name
    }
}

impl Eq for TlsDestination {}

impl std::fmt::Debug for TlsDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDestination")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsDestination {
    /// Open TLS over `socket`.
    pub async fn connect(&self, socket: TcpStream) -> Result<DicomStream, String> {
        self.tls
            .connector()
            .connect(self.server_name.clone(), socket)
            .await
            .map(|s| DicomStream::Client(Box::new(s)))
            .map_err(|e| describe_handshake_error(&e))
    }
}

/// A TCP connection, in clear or under TLS.
#[derive(Debug)]
#[non_exhaustive]
pub enum DicomStream {
    /// In clear.
    Plain(TcpStream),
    /// TLS, this side the server (the SCP).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, this side the client (the SCU).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl DicomStream {
    /// The TCP socket beneath (socket options, peeking for the PDU
    /// timeout).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Server(s) => s.get_ref().0,
            Self::Client(s) => s.get_ref().0,
        }
    }

    /// The TLS session, when there is one.
    pub fn session(&self) -> Option<TlsSession> {
        let (protocol, suite, peer) = match self {
            Self::Plain(_) => return None,
            Self::Server(s) => {
                let c = s.get_ref().1;
                (
                    c.protocol_version(),
                    c.negotiated_cipher_suite(),
                    c.peer_certificates(),
                )
            }
            Self::Client(s) => {
                let c = s.get_ref().1;
                (
                    c.protocol_version(),
                    c.negotiated_cipher_suite(),
                    c.peer_certificates(),
                )
            }
        };
        Some(TlsSession {
            protocol: protocol.map_or_else(|| "unknown".into(), |p| format!("{p:?}")),
            cipher_suite: suite.map_or_else(|| "unknown".into(), |s| format!("{:?}", s.suite())),
            peer_certificate: peer
                .and_then(|chain| chain.first())
                .and_then(|leaf| CertificateSummary::of(leaf).ok()),
        })
    }
}

impl AsyncRead for DicomStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DicomStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a TLS handshake failed, in words a support engineer can act on
/// (the peer spoke in clear, its certificate is not trusted, …). One of a
/// fixed set of texts: nothing the peer chose (a certificate's dates, an
/// algorithm identifier) is copied in, so that the refusal summary keyed
/// by these texts stays small whatever a peer sends.
pub fn describe_handshake_error(error: &io::Error) -> String {
    use rustls::CertificateError as C;
    let inner = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    let why = match inner {
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
            "the peer does not speak TLS (plain DICOM on a TLS port?)"
        }
        Some(rustls::Error::NoCertificatesPresented) => "the peer presented no certificate",
        Some(rustls::Error::InvalidCertificate(why)) => match why {
            C::UnknownIssuer => {
                "the peer's certificate is refused (UnknownIssuer: not from a trusted CA)"
            }
            C::Expired | C::ExpiredContext { .. } => "the peer's certificate is refused (Expired)",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the peer's certificate is refused (NotValidYet)"
            }
            C::Revoked => "the peer's certificate is refused (Revoked)",
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the peer's certificate is refused (NotValidForName: it does not carry the expected name)"
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the peer's certificate is refused (InvalidPurpose: wrong extended key usage)"
            }
            C::BadSignature
            | C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "the peer's certificate is refused (bad or unsupported signature)"
            }
            C::BadEncoding => "the peer's certificate is refused (BadEncoding)",
            _ => "the peer's certificate is refused (other reason)",
        },
        Some(rustls::Error::PeerIncompatible(_)) => {
            "no common protocol version or cipher suite (the peer is outside BCP 195)"
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            return format!(
                "TLS handshake failed: the peer ended it with the alert {alert:?} (does it trust this side's certificate and name?)"
            );
        }
        Some(rustls::Error::PeerMisbehaved(_)) => "the peer broke the TLS protocol",
        Some(_) => "TLS error",
        None => {
            return format!("TLS handshake failed: connection {:?}", error.kind());
        }
    };
    format!("TLS handshake failed: {why}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A self-signed test certificate (no key kept): CN modality1, SAN
    /// DNS modality1.test, IP 127.0.0.1 and ::1.
    const TEST_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIB3zCCAYSgAwIBAgIUQ6G6OcwTJLV2xJkmwVf8eD+Dp3owCgYIKoZIzj0EAwIw\nKjEUMBIGA1UECgwLVmlnaWUgdGVzdHMxEjAQBgNVBAMMCW1vZGFsaXR5MTAeFw0y\nNjEyMDMxODEwMzhaFw0zNjExMzAxODEwMzhaMCoxFDASBgNVBAoMC1ZpZ2llIHRl\nc3RzMRIwEAYDVQQDDAltb2RhbGl0eTEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\nAASu4d5OYQQToL7t/oS+dN9V2DF2ojlRKvRcLROJq1GEKAzLfOkCrCPL2TgWSaex\njbk+ruS+xIihO8OZ4xItc0H0o4GHMIGEMB0GA1UdDgQWBBTKkvc1scwcBncgZ4ew\nKG5cuQ3UdzAfBgNVHSMEGDAWgBTKkvc1scwcBncgZ4ewKG5cuQ3UdzAPBgNVHRMB\nAf8EBTADAQH/MDEGA1UdEQQqMCiCDm1vZGFsaXR5MS50ZXN0hwR/AAABhxAAAAAA\nAAAAAAAAAAAAAAABMAoGCCqGSM49BAMCA0kAMEYCIQCBlKPszyWymah6ifyTsBMa\nG59OKjs96IM8/fD32BJ39QIhAOjZ9y6xmcvzrzn8DMC17o5y49NR57K/jVIUAB+z\nifnu\n-----END CERTIFICATE-----\n";

    fn der() -> Vec<u8> {
        CertificateDer::from_pem_slice(TEST_CERTIFICATE.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_certificate_is_summarised_with_its_names_validity_and_fingerprint() {
        let summary = CertificateSummary::of(&der()).unwrap();
        assert_eq!(
            summary.names,
            ["modality1", "modality1.test", "127.0.0.1", "::1"]
        );
        assert!(
            summary.subject.contains("CN=modality1"),
            "{}",
            summary.subject
        );
        assert_eq!(summary.subject, summary.issuer, "self-signed");
        assert_eq!(summary.common_names, ["modality1"]);
        assert_eq!(summary.dns_names, ["modality1.test"]);
        assert!(summary.carries("MODALITY1.test"), "DNS names ignore case");
        assert!(
            !summary.carries("modality1"),
            "the common name does not count when there are DNS names (RFC 9525)"
        );
        assert!(summary.carries("::1"));
        assert!(
            summary.carries("0:0:0:0:0:0:0:1"),
            "any spelling of the address"
        );
        assert!(summary.carries("::ffff:127.0.0.1"), "IPv4-mapped");
        assert!(!summary.carries("127.0.0.2"));
        assert!(!summary.carries("modality2.test"));
        assert!(!summary.carries("*.test"), "no wildcards");
        assert!(!summary.carries(" "), "an empty name matches nothing");
        assert_eq!(summary.sha256.len(), 64);
        assert!(summary.seconds_left() > 86_400 * 365, "valid for ten years");
        assert!(CertificateSummary::of(b"not a certificate").is_err());
    }

    #[test]
    fn only_tls_1_2_and_1_3_with_the_bcp_195_suites_are_offered() {
        let provider = bcp195_provider();
        let names: Vec<String> = provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        for name in &names {
            assert!(
                name.starts_with("TLS13_")
                    || (name.starts_with("TLS_ECDHE_")
                        && (name.ends_with("_GCM_SHA256") || name.ends_with("_GCM_SHA384"))),
                "{name}"
            );
        }
        assert_eq!(names.iter().filter(|n| !n.starts_with("TLS13_")).count(), 4);
        assert_eq!(VERSIONS.len(), 2);
    }

    #[test]
    fn files_that_do_not_load_are_named_and_a_failed_reload_keeps_the_set_in_use() {
        use vigie_test_support::pki::{authority, leaf};
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), "test-ca");
        let good = leaf(dir.path(), &ca, "vigie.test", "vigie", "");
        let other = leaf(dir.path(), &ca, "other.test", "other", "");
        let files = |key: &Path, ca_file: Option<PathBuf>, client_auth| TlsFiles {
            certificate: good.certificate.clone(),
            private_key: key.to_path_buf(),
            ca: ca_file,
            client_auth,
        };
        let missing = dir.path().join("absent.key");
        let e = DicomTls::load(files(&missing, None, ClientAuth::None)).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("absent.key"), "{e}");
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "no PEM here").unwrap();
        let e = DicomTls::load(files(&empty, None, ClientAuth::None)).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Empty {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        // A good key: the CA checks are reached.
        let e = DicomTls::load(files(&good.key, None, ClientAuth::Required)).unwrap_err();
        assert!(matches!(e, TlsError::NoCa(ClientAuth::Required)), "{e}");
        let no_ca = dir.path().join("ca.pem");
        std::fs::write(&no_ca, "").unwrap();
        let e = DicomTls::load(files(&good.key, Some(no_ca), ClientAuth::Required)).unwrap_err();
        assert!(matches!(e, TlsError::Empty { what: "CA", .. }), "{e}");
        let e = DicomTls::load(files(&other.key, None, ClientAuth::None)).unwrap_err();
        assert!(
            matches!(e, TlsError::Config { .. }),
            "a key of another certificate: {e}"
        );
        assert!(server_name("pacs.hospital.example").is_ok());
        assert!(server_name("10.0.0.1").is_ok());
        assert!(matches!(
            server_name("not a name!"),
            Err(TlsError::ServerName { .. })
        ));

        // Loaded; a change to the files is seen once; a broken set is
        // refused and the one in use stays.
        let key = dir.path().join("in-use.key");
        std::fs::copy(&good.key, &key).unwrap();
        let tls = DicomTls::load(files(
            &key,
            Some(ca.certificate.clone()),
            ClientAuth::Required,
        ))
        .unwrap();
        let in_use = tls.certificate().sha256;
        assert!(tls.reload_if_changed().is_none(), "nothing changed");
        // Another length, so that the change shows whatever the file
        // system's time resolution.
        let mut other_key = std::fs::read(&other.key).unwrap();
        other_key.extend_from_slice(b"\n\n");
        std::fs::write(&key, other_key).unwrap();
        let failed = tls.reload_if_changed().expect("a change is seen");
        assert!(matches!(failed, Err(TlsError::Config { .. })));
        assert_eq!(tls.certificate().sha256, in_use, "the previous set stays");
        assert!(
            tls.reload_if_changed().is_none(),
            "retried only on the next change"
        );
        std::fs::copy(&good.key, &key).unwrap();
        // The same size and, within the file system's clock resolution,
        // maybe the same time: a forced reload always reads.
        assert!(tls.reload().is_ok());
    }

    /// Bounded, seeded fuzzing of the certificate reader (docs/fuzzing.md):
    /// a caller's certificate is outside input; no mutant may panic it.
    #[test]
    fn fuzz_tls_certificates() {
        use vigie_test_support::fuzz;
        let seeds = vec![der()];
        let summary = fuzz::run(
            "tls-certificate",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(6),
            |bytes| {
                if let Ok(summary) = CertificateSummary::of(bytes) {
                    let _ = summary.carries("modality1.test");
                    let _ = summary.carries("127.0.0.1");
                    let _ = summary.seconds_left();
                }
            },
        );
        assert!(summary.executions > 0);
    }
}
