//! The parts of `vigie-server` that benchmarks and tools use directly: the
//! audit trail, the configuration, the catalog and the group commit they
//! share. The `vigie` binary
//! (`main.rs`) builds the service from these and its own modules.
//!
//! Error policy: typed errors here (`AuditError`, `StoreError`); the
//! configuration loader, used by the binary only, returns `anyhow`.

pub mod audit;
pub mod config;
pub mod group_commit;
pub mod store;
