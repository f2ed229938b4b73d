//! The `[dicom]` section of the configuration: the node's AE title,
//! listener, allowed callers, accepted classes and syntaxes, limits and
//! timeouts; what is wrong with it ([`DicomConfig::problems`]) and the
//! [`ScpOptions`] it makes.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::scp::{AllowedCaller, ScpOptions};

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
}
