//! DICOM network services on `dicom-ul` associations (tokio).
//!
//! - [`admission`]: whether a received data set may be stored, and the
//!   status of each refusal.
//! - [`commitment`]: Storage Commitment Push Model SCU (N-ACTION, and the
//!   N-EVENT-REPORT on the same association), the reports read bounded.
//! - [`config`]: the `[dicom]` section of the configuration and the SCP
//!   options it makes.
//! - [`find`]: Query SCU (C-FIND, Study Root) for what Vigie asks a PACS,
//!   its answers bounded and scanned before they are parsed.
//! - [`get`]: Retrieve SCU (C-GET, Study Root) for what Vigie fetches from
//!   a PACS, the instances coming back on the association, bounded, kept as
//!   Part 10 files and never ingested.
//! - [`message`]: the DIMSE message layer over P-DATA (command and data set
//!   fragments, reassembly, splitting to the peer's maximum PDU length).
//! - [`scp`]: Verification and Storage SCP with AE title and address checks,
//!   a cap on concurrent associations, ARTIM and idle timeouts, data sets
//!   streamed to disk, and a [`scp::StoreHandler`] deciding each status.
//! - [`scu`]: Storage SCU sending Part 10 files to a remote AE.
//! - [`storage_classes`]: the image storage SOP classes accepted by default.
//! - [`tls`]: DICOM over TLS (PS3.15 Annex B, BCP 195): the appliance's
//!   certificate and trust, reloadable, and the stream both sides run over.
//! - [`ul`]: the upper layer: PDUs over a stream and the association
//!   negotiation of both sides, with Vigie's implementation identifiers
//!   and its own order of transfer syntax preference.

pub mod admission;
pub mod commitment;
pub mod config;
pub mod find;
pub mod get;
pub mod message;
pub mod scp;
pub mod scu;
pub mod storage_classes;
pub mod tls;
pub mod ul;

/// Acknowledge what arrives at once instead of delaying the ACK (Linux
/// `TCP_QUICKACK`, which the kernel clears again by itself, hence set before
/// each PDU is read). A peer with Nagle's algorithm on (DCMTK's default)
/// holds the small tail of each message until its previous segment is
/// acknowledged; with delayed ACKs that costs 40 ms or more per message.
fn quick_ack(socket: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Best effort: a failure only means the peer may wait on our ACK timer.
        let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}
