//! Verification SCP (C-ECHO, PS3.4 Annex A).

use std::sync::Arc;

use dicom_ul::association::server::{AcceptCalledAeTitle, ServerAssociationOptions};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::dimse::{Command, field, status};

/// Verification SOP Class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Settings of the listener.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EchoScpOptions {
    /// Our AE title; associations calling another title are rejected.
    pub ae_title: String,
    /// Associations served at once; beyond, new ones are closed at once
    /// rather than left waiting.
    pub max_associations: usize,
}

impl EchoScpOptions {
    /// Options with this AE title and at most `max_associations`.
    pub fn new(ae_title: &str, max_associations: usize) -> Self {
        Self {
            ae_title: ae_title.into(),
            max_associations,
        }
    }
}

/// What happened on one association, for the caller's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An association was accepted.
    Accepted {
        /// Calling AE title.
        calling_ae_title: String,
    },
    /// An association could not be established (rejected or broken).
    Refused {
        /// Why.
        reason: String,
    },
    /// A C-ECHO was answered with Success.
    Echoed {
        /// Calling AE title.
        calling_ae_title: String,
    },
}

/// Serve C-ECHO on `listener` until the task is dropped; `events` receives
/// what happened.
pub async fn serve(
    listener: TcpListener,
    options: EchoScpOptions,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(options.max_associations.max(1)));
    let options = Arc::new(options);
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Back off on accept errors (e.g. too many open files).
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let _ = events.send(Event::Refused {
                reason: "too many concurrent associations".into(),
            });
            drop(socket);
            continue;
        };
        let options = options.clone();
        let events = events.clone();
        tokio::spawn(async move {
            handle(socket, &options, &events).await;
            drop(permit);
        });
    }
}

async fn handle(
    socket: tokio::net::TcpStream,
    options: &EchoScpOptions,
    events: &tokio::sync::mpsc::UnboundedSender<Event>,
) {
    let server = ServerAssociationOptions::new()
        .ae_access_control(AcceptCalledAeTitle)
        .ae_title(options.ae_title.as_str())
        .with_abstract_syntax(VERIFICATION);
    let mut association = match server.establish_async(socket).await {
        Ok(a) => a,
        Err(e) => {
            let _ = events.send(Event::Refused {
                reason: e.to_string(),
            });
            return;
        }
    };
    let calling = dicom_ul::association::Association::peer_ae_title(&association).to_string();
    let _ = events.send(Event::Accepted {
        calling_ae_title: calling.clone(),
    });
    let mut command_bytes = Vec::new();
    loop {
        let pdu = match association.receive().await {
            Ok(pdu) => pdu,
            Err(_) => return,
        };
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type != PDataValueType::Command {
                        continue;
                    }
                    command_bytes.extend_from_slice(&value.data);
                    if !value.is_last {
                        continue;
                    }
                    let request = Command::decode(&command_bytes);
                    command_bytes.clear();
                    let Ok(request) = request else {
                        let _ = association.abort().await;
                        return;
                    };
                    let code = if request.field == field::C_ECHO_RQ {
                        status::SUCCESS
                    } else {
                        status::SOP_CLASS_NOT_SUPPORTED
                    };
                    let response = Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: value.presentation_context_id,
                            value_type: PDataValueType::Command,
                            is_last: true,
                            data: request.response(code, None).encode(),
                        }],
                    };
                    if association.send(&response).await.is_err() {
                        return;
                    }
                    if code == status::SUCCESS {
                        let _ = events.send(Event::Echoed {
                            calling_ae_title: calling.clone(),
                        });
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = association.send(&Pdu::ReleaseRP).await;
                return;
            }
            _ => return,
        }
    }
}
