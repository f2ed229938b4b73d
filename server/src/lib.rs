//! The appliance's service side, as a library: the configuration file
//! (loading, validation; each domain section's type and resolve step live
//! in its crate), ingest, the pipeline (assembly, workers, delivery), the
//! HTTP side, metrics, logs, and [`service::Service`], which
//! wires them into `vigie serve`. The `vigie` binary (`main.rs`) is the
//! command line and one small module per command on top of it; tests and
//! benches use the library in process.
//!
//! Error policy: the service wiring and the configuration loader return
//! `anyhow` (their callers print the chain); the domain crates return
//! their typed errors, which HTTP maps to statuses (`http::error`).

#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod backlog;
pub mod config;
pub mod http;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod query_scp;
pub mod reviews;
pub mod service;
