//! DIMSE messages over P-DATA (PS3.7 §6.3.1, PS3.8 §9.3.5, Annex E).
//!
//! A DIMSE message is a command set followed, when the command says so, by
//! a data set. Both travel as presentation data values (PDVs) inside
//! P-DATA-TF PDUs, split into as many fragments and PDUs as the peer's
//! maximum PDU length requires; the last fragment of each carries the
//! "last" bit. [`MessageAssembler`] turns received PDVs back into a command
//! and a stream of data set fragments (so a large instance never has to sit
//! in memory); [`fragment`] does the reverse for sending.

use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use thiserror::Error;

use crate::dimse::{Command, CommandError};

/// Bytes of each PDV item header inside a P-DATA-TF PDU: item length (4),
/// presentation context ID (1), message control header (1).
const PDV_HEADER: usize = 6;

/// Smallest maximum PDU length [`fragment`] honours, whatever the peer
/// announced (a peer announcing less is treated as announcing this).
const MIN_PDU: usize = 1024;

/// A sequence of PDVs that does not form valid DIMSE messages.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The command set could not be decoded.
    #[error("malformed command set: {0}")]
    Command(#[from] CommandError),
    /// A data set fragment arrived when no command announced one.
    #[error("data set fragment on presentation context {0} without a command announcing it")]
    UnexpectedData(u8),
    /// A command fragment arrived while the data set of the previous
    /// command was still incomplete.
    #[error(
        "command fragment on presentation context {0} before the previous data set was complete"
    )]
    UnexpectedCommand(u8),
    /// Fragments of one message came on different presentation contexts.
    #[error("message started on presentation context {started} continued on {got}")]
    ContextChanged {
        /// Context of the first fragment.
        started: u8,
        /// Context of the offending fragment.
        got: u8,
    },
    /// The command set grew beyond any sensible size.
    #[error("command set longer than {0} bytes")]
    CommandTooLong(usize),
}

/// What one received PDV completes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet: a command fragment that is not the last.
    Pending,
    /// A complete command set on presentation context `context`.
    Command {
        /// Presentation context ID.
        context: u8,
        /// The decoded command.
        command: Command,
    },
    /// A fragment of the data set of the last command.
    Data {
        /// Presentation context ID.
        context: u8,
        /// The fragment's bytes.
        bytes: Vec<u8>,
        /// Whether it ends the data set.
        last: bool,
    },
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Command {
        context: u8,
    },
    Data {
        context: u8,
    },
}

/// Command sets above this size are refused (real ones are a few hundred
/// bytes; this bounds memory against a hostile peer).
pub const MAX_COMMAND_LENGTH: usize = 64 * 1024;

/// Reassembles DIMSE messages from received PDVs, one association's worth.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    state: State,
    command: Vec<u8>,
}

impl MessageAssembler {
    /// A fresh assembler, expecting a command.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a message is under way (a command or its data set is
    /// incomplete).
    pub fn in_message(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Feed one received PDV.
    pub fn push(&mut self, value: PDataValue) -> Result<Step, MessageError> {
        let context = value.presentation_context_id;
        match (value.value_type.clone(), &self.state) {
            (PDataValueType::Command, State::Idle) => self.command_fragment(context, value),
            (PDataValueType::Command, State::Command { context: started }) => {
                if *started != context {
                    return Err(MessageError::ContextChanged {
                        started: *started,
                        got: context,
                    });
                }
                self.command_fragment(context, value)
            }
            (PDataValueType::Command, State::Data { .. }) => {
                Err(MessageError::UnexpectedCommand(context))
            }
            (PDataValueType::Data, State::Data { context: started }) => {
                if *started != context {
                    return Err(MessageError::ContextChanged {
                        started: *started,
                        got: context,
                    });
                }
                if value.is_last {
                    self.state = State::Idle;
                }
                Ok(Step::Data {
                    context,
                    bytes: value.data,
                    last: value.is_last,
                })
            }
            (PDataValueType::Data, _) => Err(MessageError::UnexpectedData(context)),
        }
    }

    fn command_fragment(&mut self, context: u8, value: PDataValue) -> Result<Step, MessageError> {
        if self.command.len() + value.data.len() > MAX_COMMAND_LENGTH {
            return Err(MessageError::CommandTooLong(MAX_COMMAND_LENGTH));
        }
        self.command.extend_from_slice(&value.data);
        if !value.is_last {
            self.state = State::Command { context };
            return Ok(Step::Pending);
        }
        let decoded = Command::decode(&self.command);
        self.command.clear();
        let command = decoded?;
        self.state = if command.has_data_set {
            State::Data { context }
        } else {
            State::Idle
        };
        Ok(Step::Command { context, command })
    }
}

/// Split `bytes` into P-DATA-TF PDUs of one PDV each, none longer than
/// `max_pdu_length` (the peer's announced maximum; 0 means unlimited),
/// the last PDV flagged as last.
pub fn fragment(
    context: u8,
    value_type: PDataValueType,
    bytes: &[u8],
    max_pdu_length: u32,
) -> Vec<Pdu> {
    let max = match max_pdu_length {
        0 => usize::MAX,
        n => (n as usize).max(MIN_PDU) - PDV_HEADER,
    };
    let mut pdus = Vec::new();
    let mut chunks = bytes.chunks(max).peekable();
    if bytes.is_empty() {
        pdus.push(Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: value_type.clone(),
                is_last: true,
                data: Vec::new(),
            }],
        });
    }
    while let Some(chunk) = chunks.next() {
        pdus.push(Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: value_type.clone(),
                is_last: chunks.peek().is_none(),
                data: chunk.to_vec(),
            }],
        });
    }
    pdus
}

/// Whole DIMSE messages read from our association. Its state (PDVs of a
/// PDU not yet used, a message half assembled) lives here, not in the
/// future reading it, so that a wait cut short loses nothing.
pub(crate) struct Reader {
    max_data: usize,
    assembler: MessageAssembler,
    values: std::collections::VecDeque<dicom_ul::pdu::PDataValue>,
    current: Option<(u8, Command, Vec<u8>)>,
}

/// What the peer sent next (short-lived, one at a time: its size does not
/// matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Received {
    /// A whole message: context, command, data set (empty when none).
    Message(u8, Command, Vec<u8>),
    /// The peer answered our A-RELEASE-RQ.
    Released,
}

impl Reader {
    /// A reader taking data sets of at most `max_data` bytes.
    pub(crate) fn new(max_data: usize) -> Self {
        Self {
            max_data,
            assembler: MessageAssembler::new(),
            values: std::collections::VecDeque::new(),
            current: None,
        }
    }

    /// The next message, each PDU within `timeout`.
    pub(crate) async fn next(
        &mut self,
        association: &mut super::ul::Connection<super::tls::DicomStream>,
        deadline: tokio::time::Instant,
    ) -> Result<Received, String> {
        loop {
            while let Some(value) = self.values.pop_front() {
                match self.assembler.push(value).map_err(|e| e.to_string())? {
                    Step::Pending => {}
                    Step::Command { context, command } => {
                        if !command.has_data_set {
                            return Ok(Received::Message(context, command, Vec::new()));
                        }
                        self.current = Some((context, command, Vec::new()));
                    }
                    Step::Data { bytes, last, .. } => {
                        let Some((_, _, buffer)) = self.current.as_mut() else {
                            return Err("data set without a command".into());
                        };
                        if buffer.len() + bytes.len() > self.max_data {
                            return Err(format!("data set longer than {} bytes", self.max_data));
                        }
                        buffer.extend_from_slice(&bytes);
                        if last && let Some((context, command, data)) = self.current.take() {
                            return Ok(Received::Message(context, command, data));
                        }
                    }
                }
            }
            super::quick_ack(association.stream().tcp());
            // `Connection::receive` keeps what it read in its own buffer
            // when the wait is cut: no byte is lost.
            // One deadline for the whole message, however the peer drips it.
            let pdu = tokio::time::timeout_at(deadline, association.receive())
                .await
                .map_err(|_| "timeout waiting for the peer".to_string())?
                .map_err(|e| e.to_string())?;
            match pdu {
                Pdu::PData { data } => self.values.extend(data),
                Pdu::ReleaseRP => return Ok(Received::Released),
                Pdu::AbortRQ { source } => {
                    return Err(format!("aborted by the peer ({source:?})"));
                }
                other => return Err(format!("unexpected PDU {other:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pdus: Vec<Pdu>) -> Vec<PDataValue> {
        pdus.into_iter()
            .flat_map(|p| match p {
                Pdu::PData { data } => data,
                other => panic!("not P-DATA: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_store_request_split_in_tiny_fragments_reassembles() {
        let command = Command::store_request(9, "1.2.840.10008.5.1.4.1.1.4", "2.25.42");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut assembler = MessageAssembler::new();
        let mut received = Vec::new();
        let mut commands = Vec::new();
        // Command fragments of 1024 bytes at most (the encoded command is
        // shorter, so it also tests the one-fragment case); data in 1018.
        let pdus = fragment(3, PDataValueType::Command, &command.encode(), 16)
            .into_iter()
            .chain(fragment(3, PDataValueType::Data, &data, 1024));
        let mut last_seen = false;
        for value in values(pdus.collect()) {
            match assembler.push(value).expect("valid sequence") {
                Step::Pending => {}
                Step::Command { context, command } => commands.push((context, command)),
                Step::Data {
                    context,
                    bytes,
                    last,
                } => {
                    assert_eq!(context, 3);
                    assert!(bytes.len() <= 1018);
                    received.extend_from_slice(&bytes);
                    last_seen = last;
                }
            }
        }
        assert_eq!(commands, vec![(3, command)]);
        assert_eq!(received, data);
        assert!(last_seen);
        assert!(!assembler.in_message());
    }

    #[test]
    fn a_command_split_across_pdus_reassembles() {
        let command = Command::store_request(1, "1.2.840.10008.5.1.4.1.1.7", "2.25.7");
        let bytes = command.encode();
        let (a, b) = bytes.split_at(10);
        let mut assembler = MessageAssembler::new();
        let first = PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: false,
            data: a.to_vec(),
        };
        let second = PDataValue {
            is_last: true,
            data: b.to_vec(),
            ..first.clone()
        };
        assert_eq!(assembler.push(first), Ok(Step::Pending));
        assert!(assembler.in_message());
        assert_eq!(
            assembler.push(second),
            Ok(Step::Command {
                context: 1,
                command
            })
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut assembler = MessageAssembler::new();
        let data = PDataValue {
            presentation_context_id: 5,
            value_type: PDataValueType::Data,
            is_last: true,
            data: vec![1, 2],
        };
        assert_eq!(
            assembler.push(data.clone()),
            Err(MessageError::UnexpectedData(5))
        );
        let store = Command::store_request(1, "1.2.840.10008.5.1.4.1.1.7", "2.25.7").encode();
        let command = PDataValue {
            presentation_context_id: 5,
            value_type: PDataValueType::Command,
            is_last: true,
            data: store,
        };
        assert!(matches!(
            assembler.push(command.clone()),
            Ok(Step::Command { .. })
        ));
        assert_eq!(
            assembler.push(command),
            Err(MessageError::UnexpectedCommand(5))
        );
        let other_context = PDataValue {
            presentation_context_id: 7,
            ..data
        };
        assert_eq!(
            assembler.push(other_context),
            Err(MessageError::ContextChanged { started: 5, got: 7 })
        );
        let mut fresh = MessageAssembler::new();
        let garbage = PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data: vec![0, 0, 0, 1, 200, 0, 0, 0],
        };
        assert!(matches!(
            fresh.push(garbage),
            Err(MessageError::Command(CommandError::Truncated { .. }))
        ));
    }

    #[test]
    fn fragments_respect_the_peer_maximum() {
        let data = vec![7u8; 10_000];
        let pdus = fragment(1, PDataValueType::Data, &data, 4096);
        assert_eq!(pdus.len(), 3);
        let v = values(pdus);
        assert!(v.iter().all(|p| p.data.len() + PDV_HEADER <= 4096));
        assert_eq!(v.iter().filter(|p| p.is_last).count(), 1);
        assert!(v.last().is_some_and(|p| p.is_last));
        assert_eq!(
            v.iter().map(|p| p.data.len()).sum::<usize>(),
            data.len(),
            "nothing lost"
        );
        assert_eq!(fragment(1, PDataValueType::Data, &data, 0).len(), 1);
        assert_eq!(fragment(1, PDataValueType::Command, &[], 4096).len(), 1);
    }
}
