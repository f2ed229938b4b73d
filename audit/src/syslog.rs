//! Forwarding of audit records to a site's audit repository (IHE ATNA): each
//! record becomes a DICOM PS3.15 Annex A.5 audit message (XML), sent as an
//! RFC 5424 syslog message over UDP (RFC 5426), MSGID `DICOM+RFC3881`.
//!
//! Forwarding happens after the record is durable in the local trail, and
//! is best effort (UDP): the local trail stays the reference. TLS syslog
//! (RFC 5425) is not implemented.

use std::net::UdpSocket;

use super::AuditRecord;

/// Sends audit messages to one syslog receiver.
#[derive(Debug)]
pub struct Forwarder {
    socket: UdpSocket,
    target: String,
    hostname: String,
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// (EventID code, meaning, action code, event type code and meaning).
fn event_codes(
    kind: &str,
    outcome: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
) {
    match kind {
        "service_started" => (
            "110100",
            "Application Activity",
            "E",
            Some(("110120", "Application Start")),
        ),
        "service_stopped" => (
            "110100",
            "Application Activity",
            "E",
            Some(("110121", "Application Stop")),
        ),
        "association" if outcome == "released" || outcome == "aborted" => (
            "110114",
            "User Authentication",
            "E",
            Some(("110123", "Logout")),
        ),
        "association" => (
            "110114",
            "User Authentication",
            "E",
            Some(("110122", "Login")),
        ),
        "instance_stored" | "instance_refused" => {
            ("110104", "DICOM Instances Transferred", "C", None)
        }
        "inference" => ("110103", "DICOM Instances Accessed", "E", None),
        "result_created" => ("110103", "DICOM Instances Accessed", "C", None),
        "result_delivery" => ("110104", "DICOM Instances Transferred", "R", None),
        "audit_accessed" | "audit_pruned" => ("110101", "Audit Log Used", "R", None),
        "configuration_loaded" => (
            "110113",
            "Security Alert",
            "E",
            Some(("110131", "Software Configuration")),
        ),
        _ => ("110100", "Application Activity", "E", None),
    }
}

/// PS3.15 A.5.1 EventOutcomeIndicator: 0 success, 4 minor failure, 8
/// serious failure.
fn outcome_indicator(outcome: &str) -> &'static str {
    match outcome {
        "ok" | "accepted" | "released" | "delivered" | "verified" | "exported" | "routed"
        | "none" => "0",
        "refused" | "rejected" | "will_retry" | "aborted" => "4",
        _ => "8",
    }
}

/// The DICOM audit message of a record.
pub fn audit_message(record: &AuditRecord) -> String {
    let (id, meaning, action, event_type) = event_codes(&record.kind, &record.outcome);
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><AuditMessage>");
    xml.push_str(&format!(
        "<EventIdentification EventActionCode=\"{action}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{}\"><EventID csd-code=\"{id}\" codeSystemName=\"DCM\" originalText=\"{meaning}\"/>",
        xml_escape(&record.timestamp),
        outcome_indicator(&record.outcome)
    ));
    if let Some((code, text)) = event_type {
        xml.push_str(&format!(
            "<EventTypeCode csd-code=\"{code}\" codeSystemName=\"DCM\" originalText=\"{text}\"/>"
        ));
    }
    xml.push_str("</EventIdentification>");
    xml.push_str(&format!(
        "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\"><RoleIDCode csd-code=\"110150\" codeSystemName=\"DCM\" originalText=\"Application\"/></ActiveParticipant>",
        xml_escape(&record.appliance)
    ));
    let details: serde_json::Value = serde_json::from_str(&record.details).unwrap_or_default();
    if let Some(calling) = details["calling_ae_title"].as_str() {
        let peer = details["peer"].as_str().unwrap_or("");
        let host = peer.rsplit_once(':').map(|(h, _)| h).unwrap_or(peer);
        xml.push_str(&format!(
            "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\" NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"/>",
            xml_escape(calling),
            xml_escape(host)
        ));
    }
    xml.push_str(&format!(
        "<AuditSourceIdentification AuditSourceID=\"{}\"><AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>",
        xml_escape(&record.appliance)
    ));
    if let Some(study) = &record.study_instance_uid {
        xml.push_str(&format!(
            "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\"><ParticipantObjectIDTypeCode csd-code=\"110180\" codeSystemName=\"DCM\" originalText=\"Study Instance UID\"/>",
            xml_escape(study)
        ));
        if let Some(sop) = &record.sop_instance_uid {
            xml.push_str(&format!(
                "<ParticipantObjectDescription><SOPClass UID=\"{}\" NumberOfInstances=\"1\"><Instance UID=\"{}\"/></SOPClass></ParticipantObjectDescription>",
                xml_escape(details["sop_class_uid"].as_str().unwrap_or("")),
                xml_escape(sop)
            ));
        }
        xml.push_str("</ParticipantObjectIdentification>");
    }
    // The local trail's own identification of the record.
    xml.push_str(&format!(
        "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"2\"><ParticipantObjectIDTypeCode csd-code=\"vigie-audit-record\" codeSystemName=\"99VIGIE\" originalText=\"{} {}\"/><ParticipantObjectDetail type=\"sha256\" value=\"{}\"/></ParticipantObjectIdentification>",
        record.seq,
        xml_escape(&record.kind),
        xml_escape(&record.outcome),
        xml_escape(&record.hash)
    ));
    xml.push_str("</AuditMessage>");
    xml
}

impl Forwarder {
    /// Send to `target` (`host:port`).
    pub fn new(target: &str) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "-".into());
        Ok(Self {
            socket,
            target: target.to_string(),
            hostname,
        })
    }

    /// The RFC 5424 message of a record.
    pub fn syslog_message(&self, record: &AuditRecord) -> String {
        // Facility 10 (security/authorization), severity 5 (notice) or 4
        // (warning) for failures.
        let severity = if outcome_indicator(&record.outcome) == "0" {
            5
        } else {
            4
        };
        format!(
            "<{}>1 {} {} vigie {} DICOM+RFC3881 - \u{feff}{}",
            10 * 8 + severity,
            record.timestamp,
            self.hostname,
            std::process::id(),
            audit_message(record)
        )
    }

    /// Send a signed checkpoint (best effort), as a plain RFC 5424 message
    /// with MSGID `vigie-checkpoint` whose body is the checkpoint's JSON:
    /// the copy that `vigie audit verify --checkpoint FILE` takes to prove
    /// a truncation or rollback of the local trail.
    pub fn checkpoint(&self, checkpoint: &super::Checkpoint) {
        let body = serde_json::to_string(checkpoint).unwrap_or_default();
        let message = format!(
            "<{}>1 {} {} vigie {} vigie-checkpoint - \u{feff}{}",
            10 * 8 + 5,
            checkpoint.timestamp,
            self.hostname,
            std::process::id(),
            body
        );
        if let Err(e) = self.socket.send_to(message.as_bytes(), &self.target) {
            tracing::warn!(target = %self.target, error = %e, "audit checkpoint not forwarded to syslog");
        }
    }

    /// Send one record (best effort).
    pub fn send(&self, record: &AuditRecord) {
        let message = self.syslog_message(record);
        if let Err(e) = self.socket.send_to(message.as_bytes(), &self.target) {
            tracing::warn!(target = %self.target, error = %e, "audit record not forwarded to syslog");
        }
    }
}
