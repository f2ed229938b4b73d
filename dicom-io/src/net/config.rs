//! The `[dicom]` section of the configuration: the node's AE title,
//! listener, allowed callers, accepted classes and syntaxes, limits and
//! timeouts; what is wrong with it ([`DicomConfig::problems`]) and the
//! [`ScpOptions`] it makes.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::scp::{AllowedCaller, ScpOptions};
use crate::net::tls::{ClientAuth, DICOM_TLS_PORT, TlsFiles};

/// `[dicom]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    /// Our AE title (called AE title for peers, calling AE title when we send).
    pub ae_title: String,
    /// Address to listen on.
    pub bind: IpAddr,
    /// DICOM port.
    pub port: u16,
    /// Peers allowed to associate; empty: any calling AE title.
    pub allowed_callers: Vec<CallerConfig>,
    /// Storage SOP class UIDs accepted; empty: every image storage class.
    pub sop_classes: Vec<String>,
    /// Transfer syntax UIDs accepted; empty: every syntax the decoder handles.
    pub transfer_syntaxes: Vec<String>,
    /// Maximum PDU length announced (bytes).
    pub max_pdu_length: u32,
    /// Seconds a peer has to send its association request (ARTIM).
    pub artim_timeout_s: u64,
    /// Seconds an association may stay silent before it is aborted.
    pub idle_timeout_s: u64,
    /// Associations served at once; more are rejected (transient).
    pub max_associations: usize,
    /// Seconds to wait for a destination when sending results.
    pub scu_timeout_s: u64,
    /// Seconds a peer has to send a whole PDU once its first bytes arrived;
    /// a slower one is aborted (a trickle cannot hold an association).
    pub pdu_timeout_s: u64,
    /// Connections from one IP address at once (associations and
    /// connections that have not yet sent an association request); more
    /// are closed at once.
    pub max_connections_per_address: usize,
    /// Connections at once that have not yet sent a whole A-ASSOCIATE-RQ;
    /// they hold no association slot, and more are closed at once.
    pub max_pending_connections: usize,
    /// Seconds between the summaries of connections closed before
    /// association (log line, audit record, metric).
    pub refusal_summary_s: u64,
    /// DICOM over TLS; unset: DICOM in clear only.
    pub tls: Option<DicomTlsConfig>,
    /// Answer C-FIND, C-MOVE and C-GET (Patient Root and Study Root) over
    /// what the appliance holds, for the allowed callers (C-MOVE sends only
    /// to configured destinations, C-GET back to the requester).
    pub query: bool,
}

/// `[dicom.tls]`: DICOM over TLS (PS3.15 Annex B, BCP 195).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomTlsConfig {
    /// TLS port (default 2762, IANA `dicom-tls`).
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// Also listen in clear on `dicom.port` (default false: TLS only).
    #[serde(default)]
    pub plaintext: bool,
    /// Certificate chain presented (PEM, leaf first), as SCP and SCU.
    pub certificate: std::path::PathBuf,
    /// Its private key (PEM).
    pub private_key: std::path::PathBuf,
    /// Certification authorities trusted for callers' certificates and
    /// destinations' server certificates (PEM).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Whether callers present a certificate: `required` (default),
    /// `optional` or `none`.
    #[serde(default)]
    pub client_certificates: ClientAuth,
    /// Seconds between checks of the files for a renewal (also on
    /// SIGHUP); 0: on SIGHUP only.
    #[serde(default = "default_reload_check_s")]
    pub reload_check_s: u64,
}

fn default_tls_port() -> u16 {
    DICOM_TLS_PORT
}

fn default_reload_check_s() -> u64 {
    60
}

impl DicomTlsConfig {
    /// The files to load.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone(),
            ca: self.ca.clone(),
            client_auth: self.client_certificates,
        }
    }
}

/// One allowed peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Its calling AE title.
    pub ae_title: String,
    /// Its IP address; unset: any address.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// A name its TLS client certificate must carry (matched as
    /// [`crate::net::tls::CertificateSummary::carries`] says); set, this
    /// title is accepted only over TLS with such a certificate.
    #[serde(default)]
    pub certificate: Option<String>,
}

impl Default for DicomConfig {
    fn default() -> Self {
        Self {
            ae_title: "VIGIE".into(),
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 11112,
            allowed_callers: Vec::new(),
            sop_classes: Vec::new(),
            transfer_syntaxes: Vec::new(),
            max_pdu_length: crate::net::scp::DEFAULT_MAX_PDU_LENGTH,
            artim_timeout_s: 30,
            idle_timeout_s: 300,
            max_associations: 16,
            scu_timeout_s: 30,
            pdu_timeout_s: 30,
            max_connections_per_address: 32,
            max_pending_connections: 64,
            refusal_summary_s: 60,
            tls: None,
            query: false,
        }
    }
}

impl DicomConfig {
    /// What is wrong with these settings, one line each, named as in the
    /// configuration file (`dicom.…`); empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let ae = self.ae_title.trim();
        if ae.is_empty() || ae.len() > 16 || ae.contains('\\') {
            problems.push("dicom.ae_title: 1 to 16 characters, no backslash".into());
        }
        for (list, name) in [
            (&self.sop_classes, "dicom.sop_classes"),
            (&self.transfer_syntaxes, "dicom.transfer_syntaxes"),
        ] {
            for uid in list {
                if let Err(e) = crate::uid::validate(uid) {
                    problems.push(format!("{name}: {e}"));
                }
            }
        }
        if self.max_associations == 0 {
            problems.push("dicom.max_associations: must be at least 1".into());
        }
        if self.query && self.allowed_callers.is_empty() {
            problems.push(
                "dicom.query: needs dicom.allowed_callers (C-FIND and C-MOVE hand patient data to whoever may associate)".into(),
            );
        }
        for (i, caller) in self.allowed_callers.iter().enumerate() {
            if caller
                .certificate
                .as_deref()
                .is_some_and(|n| n.trim().is_empty())
            {
                problems.push(format!(
                    "dicom.allowed_callers[{i}].certificate: empty (name the certificate, or remove the key)"
                ));
            }
        }
        match &self.tls {
            Some(tls) => {
                for (path, key) in [
                    (Some(&tls.certificate), "certificate"),
                    (Some(&tls.private_key), "private_key"),
                    (tls.ca.as_ref(), "ca"),
                ] {
                    if let Some(path) = path
                        && !path.exists()
                    {
                        problems.push(format!(
                            "dicom.tls.{key}: {} does not exist",
                            path.display()
                        ));
                    }
                }
                if tls.client_certificates != ClientAuth::None && tls.ca.is_none() {
                    problems.push(
                        "dicom.tls.ca: needed to verify client certificates (or set client_certificates = \"none\")"
                            .into(),
                    );
                }
                if tls.plaintext && tls.port == self.port {
                    problems.push(
                        "dicom.tls.port: must differ from dicom.port when plaintext = true".into(),
                    );
                }
                let bound = self.allowed_callers.iter().any(|c| c.certificate.is_some());
                if bound && tls.client_certificates == ClientAuth::None {
                    problems.push(
                        "dicom.allowed_callers: a certificate is named but dicom.tls.client_certificates = \"none\""
                            .into(),
                    );
                }
            }
            None => {
                if self.allowed_callers.iter().any(|c| c.certificate.is_some()) {
                    problems.push(
                        "dicom.allowed_callers: a certificate is named but [dicom.tls] is not set"
                            .into(),
                    );
                }
            }
        }
        problems
    }

    /// The SCP's options, data sets staged under `staging`.
    pub fn scp_options(&self, staging: &Path) -> ScpOptions {
        let mut options = ScpOptions::new(&self.ae_title, staging);
        options.allowed_callers = self
            .allowed_callers
            .iter()
            .map(|c| AllowedCaller {
                ae_title: c.ae_title.trim().to_string(),
                address: c.address,
                // Trimmed, kept even when empty (which matches no
                // certificate: the title stays closed).
                certificate: c.certificate.as_deref().map(|n| n.trim().to_string()),
            })
            .collect();
        if !self.sop_classes.is_empty() {
            options.sop_classes = self.sop_classes.clone();
        }
        if !self.transfer_syntaxes.is_empty() {
            options.transfer_syntaxes = self.transfer_syntaxes.clone();
        }
        options.max_pdu_length = self.max_pdu_length;
        options.artim_timeout = Duration::from_secs(self.artim_timeout_s.max(1));
        options.idle_timeout = Duration::from_secs(self.idle_timeout_s.max(1));
        options.max_associations = self.max_associations;
        options.pdu_timeout = Duration::from_secs(self.pdu_timeout_s.max(1));
        options.max_connections_per_address = self.max_connections_per_address;
        options.max_pending_connections = self.max_pending_connections;
        options.refusal_summary_period = Duration::from_secs(self.refusal_summary_s.max(1));
        if self.query {
            options.query_models = vec![
                crate::net::find::PATIENT_ROOT_FIND.to_string(),
                crate::net::find::STUDY_ROOT_FIND.to_string(),
            ];
            options.retrieve_models = vec![
                crate::net::find::PATIENT_ROOT_MOVE.to_string(),
                crate::net::find::STUDY_ROOT_MOVE.to_string(),
            ];
            options.get_models = vec![
                crate::net::find::PATIENT_ROOT_GET.to_string(),
                crate::net::find::STUDY_ROOT_GET.to_string(),
            ];
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reach_the_scp_and_problems_are_named() {
        let config = DicomConfig {
            ae_title: " VIGIE ".into(),
            allowed_callers: vec![CallerConfig {
                ae_title: " PACS ".into(),
                address: Some(IpAddr::from([10, 0, 0, 1])),
                certificate: None,
            }],
            idle_timeout_s: 0,
            max_associations: 3,
            ..DicomConfig::default()
        };
        let options = config.scp_options(Path::new("/data/staging"));
        assert_eq!(options.allowed_callers[0].ae_title, "PACS");
        assert_eq!(options.idle_timeout, Duration::from_secs(1), "at least 1 s");
        assert_eq!(options.max_associations, 3);
        assert!(
            !options.sop_classes.is_empty(),
            "every image class by default"
        );
        assert!(config.problems().is_empty());
        let bad = DicomConfig {
            ae_title: "A_TITLE_FAR_TOO_LONG".into(),
            sop_classes: vec!["1.2.x".into()],
            max_associations: 0,
            ..DicomConfig::default()
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("dicom.ae_title:"));
        assert!(problems[1].starts_with("dicom.sop_classes:"));
        assert!(problems[2].starts_with("dicom.max_associations:"));
    }

    #[test]
    fn tls_settings_that_cannot_work_are_named() {
        let tls = DicomTlsConfig {
            port: 11112,
            plaintext: true,
            certificate: "/nonexistent/dicom.crt".into(),
            private_key: "/nonexistent/dicom.key".into(),
            ca: None,
            client_certificates: ClientAuth::Required,
            reload_check_s: 60,
        };
        let config = DicomConfig {
            tls: Some(tls.clone()),
            ..DicomConfig::default()
        };
        let problems = config.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("dicom.tls.certificate:")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("dicom.tls.private_key:"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("dicom.tls.ca: needed"))
        );
        assert!(problems.iter().any(|p| p.starts_with("dicom.tls.port:")));
        let open_query = DicomConfig {
            query: true,
            ..DicomConfig::default()
        };
        assert!(
            open_query
                .problems()
                .iter()
                .any(|p| p.starts_with("dicom.query: needs dicom.allowed_callers")),
            "query and retrieve are never open to any caller"
        );
        let bound = vec![CallerConfig {
            ae_title: "CT1".into(),
            address: None,
            certificate: Some(" ct1.example ".into()),
        }];
        let without_tls = DicomConfig {
            allowed_callers: bound.clone(),
            ..DicomConfig::default()
        };
        assert_eq!(
            without_tls.problems(),
            ["dicom.allowed_callers: a certificate is named but [dicom.tls] is not set"]
        );
        let no_client_certificates = DicomConfig {
            allowed_callers: bound,
            tls: Some(DicomTlsConfig {
                client_certificates: ClientAuth::None,
                ..tls
            }),
            ..DicomConfig::default()
        };
        assert!(
            no_client_certificates
                .problems()
                .iter()
                .any(|p| p.contains("client_certificates = \"none\""))
        );
        let options = no_client_certificates.scp_options(Path::new("/data/staging"));
        assert_eq!(
            options.allowed_callers[0].certificate.as_deref(),
            Some("ct1.example"),
            "trimmed"
        );
    }
}
