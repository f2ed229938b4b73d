//! DIMSE command sets (PS3.7 §9.3, §E): the group 0000 elements that start
//! every DIMSE message, always encoded in Implicit VR Little Endian.
//!
//! [`crate::net::message`] carries these over `dicom-ul`'s P-DATA; the
//! SCP and SCU of [`crate::net`] use both. Complete for C-ECHO, C-STORE,
//! C-FIND, C-MOVE, and the N-ACTION and N-EVENT-REPORT of Storage
//! Commitment (PS3.7 §10.3.1, §10.3.4), and tested against pydicom's
//! encoding.

use thiserror::Error;

/// DIMSE status codes Vigie sends or interprets (PS3.7 Annex C, PS3.4 B.2.3).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (storage full, queue full).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATASET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Failure: processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Refused: not authorized (PS3.7 C.5.x).
    pub const NOT_AUTHORIZED: u16 = 0x0124;
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Warning: coercion of data elements.
    pub const COERCION_OF_DATA_ELEMENTS: u16 = 0xB000;

    /// The status category of a code.
    pub fn category(code: u16) -> &'static str {
        match code {
            0x0000 => "success",
            0x0001 | 0xB000..=0xBFFF | 0x0107 | 0x0116 => "warning",
            0xFE00 => "cancel",
            0xFF00 | 0xFF01 => "pending",
            0xA700..=0xA7FF | 0x0122 | 0x0124 | 0x0210..=0x0213 => "failure (refused)",
            _ => "failure",
        }
    }

    /// Whether a failure status of a C-STORE-RSP may go away by itself, so
    /// that sending again later makes sense: A7xx (out of resources: the
    /// peer's disk or queue) and 0110 (processing failure, which peers use
    /// for passing trouble) and 0213 (resource limitation) are transient.
    /// Everything else that is neither success nor warning — A900 and Cxxx
    /// (the peer cannot take this data set), 0122 (SOP class not
    /// supported), 0124 (not authorized), 0210–0212 — says the same at
    /// every try: permanent.
    pub fn is_transient_failure(code: u16) -> bool {
        // 0213: resource limitation (PS3.7 C.4).
        matches!(code, 0xA700..=0xA7FF | PROCESSING_FAILURE | 0x0213)
    }
}

/// Command Field (0000,0100) values.
pub mod field {
    /// C-STORE-RQ.
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-STORE-RSP.
    pub const C_STORE_RSP: u16 = 0x8001;
    /// C-ECHO-RQ.
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-ECHO-RSP.
    pub const C_ECHO_RSP: u16 = 0x8030;
    /// C-FIND-RQ.
    pub const C_FIND_RQ: u16 = 0x0020;
    /// C-FIND-RSP.
    pub const C_FIND_RSP: u16 = 0x8020;
    /// C-MOVE-RQ.
    pub const C_MOVE_RQ: u16 = 0x0021;
    /// C-MOVE-RSP.
    pub const C_MOVE_RSP: u16 = 0x8021;
    /// C-GET-RQ.
    pub const C_GET_RQ: u16 = 0x0010;
    /// C-GET-RSP.
    pub const C_GET_RSP: u16 = 0x8010;
    /// N-EVENT-REPORT-RQ.
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    /// N-EVENT-REPORT-RSP.
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    /// N-ACTION-RQ.
    pub const N_ACTION_RQ: u16 = 0x0130;
    /// N-ACTION-RSP.
    pub const N_ACTION_RSP: u16 = 0x8130;
}

/// Command Data Set Type (0000,0800) value meaning "no data set".
pub const NO_DATA_SET: u16 = 0x0101;

/// A command set that cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// The bytes end inside an element.
    #[error("command set truncated at offset {offset}")]
    Truncated {
        /// Where.
        offset: usize,
    },
    /// An element outside group 0000.
    #[error("element ({group:04X},{element:04X}) is not a command element")]
    NotCommandGroup {
        /// Group.
        group: u16,
        /// Element.
        element: u16,
    },
    /// An element has the wrong length for its VR.
    #[error("command element (0000,{element:04X}) has length {length}, expected {expected}")]
    BadLength {
        /// Element.
        element: u16,
        /// Found.
        length: usize,
        /// Expected.
        expected: usize,
    },
    /// A required element is absent.
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// A decoded command set. Unknown command elements are ignored, as PS3.7
/// asks of a receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// Command Field (0000,0100).
    pub field: u16,
    /// Message ID (0000,0110), requests.
    pub message_id: Option<u16>,
    /// Message ID Being Responded To (0000,0120), responses.
    pub responding_to: Option<u16>,
    /// Affected SOP Class UID (0000,0002).
    pub affected_sop_class_uid: Option<String>,
    /// Affected SOP Instance UID (0000,1000).
    pub affected_sop_instance_uid: Option<String>,
    /// Requested SOP Class UID (0000,0003), N-ACTION-RQ.
    pub requested_sop_class_uid: Option<String>,
    /// Requested SOP Instance UID (0000,1001), N-ACTION-RQ.
    pub requested_sop_instance_uid: Option<String>,
    /// Event Type ID (0000,1002), N-EVENT-REPORT.
    pub event_type_id: Option<u16>,
    /// Action Type ID (0000,1008), N-ACTION.
    pub action_type_id: Option<u16>,
    /// Priority (0000,0700).
    pub priority: Option<u16>,
    /// Whether a data set follows (Command Data Set Type ≠ 0x0101).
    pub has_data_set: bool,
    /// Status (0000,0900), responses.
    pub status: Option<u16>,
    /// Error Comment (0000,0902).
    pub error_comment: Option<String>,
    /// Move Originator Application Entity Title (0000,1030).
    pub move_originator_ae_title: Option<String>,
    /// Move Originator Message ID (0000,1031).
    pub move_originator_message_id: Option<u16>,
    /// Move Destination (0000,0600), C-MOVE-RQ.
    pub move_destination: Option<String>,
    /// Numbers of Remaining, Completed, Failed and Warning Sub-operations
    /// (0000,1020 to 0000,1023), C-MOVE-RSP and C-GET-RSP.
    pub sub_operations: Option<SubOperations>,
}

/// The sub-operation counts of a C-MOVE or C-GET response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    /// Remaining (pending responses only).
    pub remaining: Option<u16>,
    /// Completed.
    pub completed: u16,
    /// Failed.
    pub failed: u16,
    /// Completed with a warning.
    pub warning: u16,
}

const AFFECTED_SOP_CLASS: u16 = 0x0002;
const REQUESTED_SOP_CLASS: u16 = 0x0003;
const REQUESTED_SOP_INSTANCE: u16 = 0x1001;
const EVENT_TYPE_ID: u16 = 0x1002;
const ACTION_TYPE_ID: u16 = 0x1008;
const COMMAND_FIELD: u16 = 0x0100;
const MESSAGE_ID: u16 = 0x0110;
const RESPONDING_TO: u16 = 0x0120;
const PRIORITY: u16 = 0x0700;
const DATA_SET_TYPE: u16 = 0x0800;
const STATUS: u16 = 0x0900;
const ERROR_COMMENT: u16 = 0x0902;
const AFFECTED_SOP_INSTANCE: u16 = 0x1000;
const MOVE_ORIGINATOR_AE: u16 = 0x1030;
const MOVE_ORIGINATOR_ID: u16 = 0x1031;
const MOVE_DESTINATION: u16 = 0x0600;
const REMAINING: u16 = 0x1020;
const COMPLETED: u16 = 0x1021;
const FAILED: u16 = 0x1022;
const WARNING: u16 = 0x1023;

fn put(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn text(value: &str, pad: u8) -> Vec<u8> {
    let mut bytes = value.as_bytes().to_vec();
    if bytes.len() % 2 == 1 {
        bytes.push(pad);
    }
    bytes
}

impl Command {
    /// C-ECHO-RQ.
    pub fn echo_request(message_id: u16) -> Self {
        Self {
            field: field::C_ECHO_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some("1.2.840.10008.1.1".into()),
            ..Self::default()
        }
    }

    /// C-STORE-RQ for an instance.
    pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Self {
        Self {
            field: field::C_STORE_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class_uid.into()),
            affected_sop_instance_uid: Some(sop_instance_uid.into()),
            priority: Some(0),
            has_data_set: true,
            ..Self::default()
        }
    }

    /// C-FIND-RQ in the information model `sop_class_uid` (an identifier
    /// data set follows), medium priority.
    pub fn find_request(message_id: u16, sop_class_uid: &str) -> Self {
        Self::query_request(field::C_FIND_RQ, message_id, sop_class_uid)
    }

    /// C-GET-RQ in the information model `sop_class_uid` (an identifier
    /// data set follows), medium priority.
    pub fn get_request(message_id: u16, sop_class_uid: &str) -> Self {
        Self::query_request(field::C_GET_RQ, message_id, sop_class_uid)
    }

    fn query_request(command: u16, message_id: u16, sop_class_uid: &str) -> Self {
        Self {
            field: command,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class_uid.into()),
            priority: Some(0),
            has_data_set: true,
            ..Self::default()
        }
    }

    /// N-ACTION-RQ of `action_type_id` on the SOP instance
    /// `sop_instance_uid` of class `sop_class_uid` (an action information
    /// data set follows).
    pub fn action_request(
        message_id: u16,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        action_type_id: u16,
    ) -> Self {
        Self {
            field: field::N_ACTION_RQ,
            message_id: Some(message_id),
            requested_sop_class_uid: Some(sop_class_uid.into()),
            requested_sop_instance_uid: Some(sop_instance_uid.into()),
            action_type_id: Some(action_type_id),
            has_data_set: true,
            ..Self::default()
        }
    }

    /// N-EVENT-REPORT-RQ of `event_type_id` about `sop_instance_uid` of
    /// class `sop_class_uid` (an event information data set follows).
    pub fn event_report_request(
        message_id: u16,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        event_type_id: u16,
    ) -> Self {
        Self {
            field: field::N_EVENT_REPORT_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class_uid.into()),
            affected_sop_instance_uid: Some(sop_instance_uid.into()),
            event_type_id: Some(event_type_id),
            has_data_set: true,
            ..Self::default()
        }
    }

    /// The response to this request with `status`, echoing what PS3.7
    /// requires the response to carry: the affected SOP class and
    /// instance (for an N-ACTION, the requested ones, §10.3.4.1.1), and the
    /// event or action type of DIMSE-N requests. No data set.
    pub fn response(&self, status: u16, error_comment: Option<&str>) -> Self {
        Self {
            field: self.field | 0x8000,
            responding_to: self.message_id,
            affected_sop_class_uid: self
                .affected_sop_class_uid
                .clone()
                .or_else(|| self.requested_sop_class_uid.clone()),
            affected_sop_instance_uid: self
                .affected_sop_instance_uid
                .clone()
                .or_else(|| self.requested_sop_instance_uid.clone()),
            event_type_id: self.event_type_id,
            action_type_id: self.action_type_id,
            status: Some(status),
            error_comment: error_comment.map(|c| c.chars().take(64).collect()),
            ..Self::default()
        }
    }

    /// Encode as an Implicit VR Little Endian command set, group length
    /// first, elements in ascending tag order.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some(uid) = &self.affected_sop_class_uid {
            put(&mut body, AFFECTED_SOP_CLASS, &text(uid, 0));
        }
        if let Some(uid) = &self.requested_sop_class_uid {
            put(&mut body, REQUESTED_SOP_CLASS, &text(uid, 0));
        }
        put(&mut body, COMMAND_FIELD, &self.field.to_le_bytes());
        if let Some(id) = self.message_id {
            put(&mut body, MESSAGE_ID, &id.to_le_bytes());
        }
        if let Some(id) = self.responding_to {
            put(&mut body, RESPONDING_TO, &id.to_le_bytes());
        }
        if let Some(ae) = &self.move_destination {
            put(&mut body, MOVE_DESTINATION, &text(ae, b' '));
        }
        if let Some(p) = self.priority {
            put(&mut body, PRIORITY, &p.to_le_bytes());
        }
        let data_set_type: u16 = if self.has_data_set {
            0x0000
        } else {
            NO_DATA_SET
        };
        put(&mut body, DATA_SET_TYPE, &data_set_type.to_le_bytes());
        if let Some(s) = self.status {
            put(&mut body, STATUS, &s.to_le_bytes());
        }
        if let Some(c) = &self.error_comment {
            put(&mut body, ERROR_COMMENT, &text(c, b' '));
        }
        if let Some(uid) = &self.affected_sop_instance_uid {
            put(&mut body, AFFECTED_SOP_INSTANCE, &text(uid, 0));
        }
        if let Some(uid) = &self.requested_sop_instance_uid {
            put(&mut body, REQUESTED_SOP_INSTANCE, &text(uid, 0));
        }
        if let Some(id) = self.event_type_id {
            put(&mut body, EVENT_TYPE_ID, &id.to_le_bytes());
        }
        if let Some(id) = self.action_type_id {
            put(&mut body, ACTION_TYPE_ID, &id.to_le_bytes());
        }
        if let Some(ops) = self.sub_operations {
            if let Some(n) = ops.remaining {
                put(&mut body, REMAINING, &n.to_le_bytes());
            }
            put(&mut body, COMPLETED, &ops.completed.to_le_bytes());
            put(&mut body, FAILED, &ops.failed.to_le_bytes());
            put(&mut body, WARNING, &ops.warning.to_le_bytes());
        }
        if let Some(ae) = &self.move_originator_ae_title {
            put(&mut body, MOVE_ORIGINATOR_AE, &text(ae, b' '));
        }
        if let Some(id) = self.move_originator_message_id {
            put(&mut body, MOVE_ORIGINATOR_ID, &id.to_le_bytes());
        }

        let mut out = Vec::with_capacity(body.len() + 12);
        put(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decode a command set (the concatenated command fragments of one
    /// message).
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let mut command = Self::default();
        let mut field = None;
        let mut data_set_type = None;
        let mut offset = 0;
        while offset < bytes.len() {
            let header = bytes
                .get(offset..offset + 8)
                .ok_or(CommandError::Truncated { offset })?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            let value = bytes
                .get(offset + 8..offset + 8 + length)
                .ok_or(CommandError::Truncated { offset })?;
            offset += 8 + length;
            if group != 0 {
                return Err(CommandError::NotCommandGroup { group, element });
            }
            let us = || -> Result<u16, CommandError> {
                <[u8; 2]>::try_from(value)
                    .map(u16::from_le_bytes)
                    .map_err(|_| CommandError::BadLength {
                        element,
                        length,
                        expected: 2,
                    })
            };
            let string = || {
                String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .trim_start()
                    .to_string()
            };
            match element {
                AFFECTED_SOP_CLASS => command.affected_sop_class_uid = Some(string()),
                COMMAND_FIELD => field = Some(us()?),
                MESSAGE_ID => command.message_id = Some(us()?),
                RESPONDING_TO => command.responding_to = Some(us()?),
                PRIORITY => command.priority = Some(us()?),
                DATA_SET_TYPE => data_set_type = Some(us()?),
                STATUS => command.status = Some(us()?),
                ERROR_COMMENT => command.error_comment = Some(string()),
                AFFECTED_SOP_INSTANCE => command.affected_sop_instance_uid = Some(string()),
                REQUESTED_SOP_CLASS => command.requested_sop_class_uid = Some(string()),
                REQUESTED_SOP_INSTANCE => command.requested_sop_instance_uid = Some(string()),
                EVENT_TYPE_ID => command.event_type_id = Some(us()?),
                ACTION_TYPE_ID => command.action_type_id = Some(us()?),
                MOVE_ORIGINATOR_AE => command.move_originator_ae_title = Some(string()),
                MOVE_ORIGINATOR_ID => command.move_originator_message_id = Some(us()?),
                MOVE_DESTINATION => command.move_destination = Some(string()),
                REMAINING | COMPLETED | FAILED | WARNING => {
                    let n = us()?;
                    let ops = command
                        .sub_operations
                        .get_or_insert_with(SubOperations::default);
                    match element {
                        REMAINING => ops.remaining = Some(n),
                        COMPLETED => ops.completed = n,
                        FAILED => ops.failed = n,
                        _ => ops.warning = n,
                    }
                }
                _ => {}
            }
        }
        command.field = field.ok_or(CommandError::Missing("Command Field (0000,0100)"))?;
        command.has_data_set = data_set_type
            .ok_or(CommandError::Missing("Command Data Set Type (0000,0800)"))?
            != NO_DATA_SET;
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_bytes_follow_ps3_7() {
        let bytes = Command::echo_request(7).encode();
        // Group length covers everything after its own 12 bytes.
        let length = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(length, bytes.len() - 12);
        // Affected SOP Class UID "1.2.840.10008.1.1" (17 chars) padded with NUL to 18.
        assert_eq!(&bytes[12..20], &[0, 0, 2, 0, 18, 0, 0, 0]);
        assert_eq!(&bytes[20..38], b"1.2.840.10008.1.1\0");
        let decoded = Command::decode(&bytes).expect("decodes");
        assert_eq!(decoded, Command::echo_request(7));
        assert!(!decoded.has_data_set);
    }

    #[test]
    fn store_response_echoes_the_request() {
        let rq = Command::store_request(3, "1.2.840.10008.5.1.4.1.1.4", "2.25.1");
        let rsp = rq.response(status::OUT_OF_RESOURCES, Some("disk full"));
        let decoded = Command::decode(&rsp.encode()).expect("decodes");
        assert_eq!(decoded.field, field::C_STORE_RSP);
        assert_eq!(decoded.responding_to, Some(3));
        assert_eq!(decoded.affected_sop_instance_uid.as_deref(), Some("2.25.1"));
        assert_eq!(decoded.status, Some(0xA700));
        assert_eq!(decoded.error_comment.as_deref(), Some("disk full"));
        assert_eq!(status::category(0xA700), "failure (refused)");
    }

    #[test]
    fn storage_commitment_commands_round_trip_in_tag_order() {
        let action =
            Command::action_request(5, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1);
        let bytes = action.encode();
        let decoded = Command::decode(&bytes).expect("decodes");
        assert_eq!(decoded, action);
        // Elements in ascending tag order: (0000,0003) before (0000,0100),
        // (0000,1001) before (0000,1008).
        let tags: Vec<u16> = {
            let mut tags = Vec::new();
            let mut offset = 0;
            while offset < bytes.len() {
                let element = u16::from_le_bytes([bytes[offset + 2], bytes[offset + 3]]);
                let length = u32::from_le_bytes([
                    bytes[offset + 4],
                    bytes[offset + 5],
                    bytes[offset + 6],
                    bytes[offset + 7],
                ]) as usize;
                tags.push(element);
                offset += 8 + length;
            }
            tags
        };
        assert_eq!(
            tags,
            vec![0x0000, 0x0003, 0x0100, 0x0110, 0x0800, 0x1001, 0x1008]
        );
        // The N-ACTION-RSP names the requested instance as the affected one
        // (PS3.7 10.3.4.1.1) and carries no data set.
        let rsp = Command::decode(&action.response(status::SUCCESS, None).encode()).expect("rsp");
        assert_eq!(rsp.field, field::N_ACTION_RSP);
        assert_eq!(
            rsp.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.1.20.1")
        );
        assert_eq!(
            rsp.affected_sop_instance_uid.as_deref(),
            Some("1.2.840.10008.1.20.1.1")
        );
        assert_eq!(rsp.requested_sop_class_uid, None);
        assert_eq!(rsp.action_type_id, Some(1));
        assert!(!rsp.has_data_set);
        let report =
            Command::event_report_request(9, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 2);
        let rsp = Command::decode(&report.response(status::SUCCESS, None).encode()).expect("rsp");
        assert_eq!(rsp.field, field::N_EVENT_REPORT_RSP);
        assert_eq!(rsp.responding_to, Some(9));
        assert_eq!(rsp.event_type_id, Some(2));
        assert_eq!(
            rsp.affected_sop_instance_uid.as_deref(),
            Some("1.2.840.10008.1.20.1.1")
        );
    }

    #[test]
    fn malformed_command_sets_are_errors() {
        let bytes = Command::echo_request(1).encode();
        assert!(matches!(
            Command::decode(&bytes[..bytes.len() - 3]),
            Err(CommandError::Truncated { .. })
        ));
        let mut other_group = bytes.clone();
        other_group.extend_from_slice(&[0x08, 0, 0x18, 0, 0, 0, 0, 0]);
        assert!(matches!(
            Command::decode(&other_group),
            Err(CommandError::NotCommandGroup { group: 8, .. })
        ));
        assert_eq!(
            Command::decode(&[]),
            Err(CommandError::Missing("Command Field (0000,0100)"))
        );
    }
}
