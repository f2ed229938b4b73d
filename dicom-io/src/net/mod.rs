//! DICOM network services on `dicom-ul` associations (tokio).
//!
//! - [`message`]: the DIMSE message layer over P-DATA (command and data set
//!   fragments, reassembly, splitting to the peer's maximum PDU length).
//! - [`scp`]: Verification and Storage SCP with AE title and address checks,
//!   a cap on concurrent associations, ARTIM and idle timeouts, data sets
//!   streamed to disk, and a [`scp::StoreHandler`] deciding each status.
//! - [`scu`]: Storage SCU sending Part 10 files to a remote AE.
//! - [`storage_classes`]: the image storage SOP classes accepted by default.

pub mod message;
pub mod scp;
pub mod scu;
pub mod storage_classes;
