//! DICOM network services on `dicom-ul` associations (tokio).
//!
//! Today: the Verification service (C-ECHO) as SCP, with AE title checks and
//! a cap on concurrent associations. C-STORE SCP/SCU, the store and the job
//! pipeline are the DICOM-node work still to come.

pub mod echo;
