//! The job pipeline of `vigie serve`: study assembly, inference workers and
//! result delivery, all driven by the persisted [`Catalog`].
//!
//! - **Assembly** (async task): a study is complete when no instance has
//!   arrived for `pipeline.stable_age_s`. Routing turns it into jobs in the
//!   same transaction that marks it complete. Instances arriving after that
//!   open the study's next *generation*: when it is quiet again, jobs run on
//!   those late instances only (earlier results stand).
//! - **Workers** (dedicated OS threads, off the async runtime): a dispatcher
//!   claims due jobs into a bounded queue of `pipeline.queue_capacity`;
//!   each of the `pipeline.workers` threads keeps its loaded models and runs
//!   jobs: analyse each instance, write the result objects durably under
//!   `results/`, then in one transaction mark the job done and queue every
//!   result for every destination. A failed attempt is retried after
//!   `retry_delay_s` (doubling) up to `max_attempts`, then the job is
//!   marked failed with its reason. Jobs found running at start-up (a
//!   crash) go back to pending.
//! - **Delivery** (async task): due outbox items are sent by C-STORE, a
//!   batch per destination and association; failures are retried with
//!   exponential backoff (`delivery.retry_initial_s` to `retry_max_s`) until
//!   `give_up_after_h`. A destination with `commitment = true` is then
//!   asked to commit them (Storage Commitment); they are delivered once it
//!   has.
//!
//! Modules: [`assembly`] (studies complete → jobs), [`worker`] (the
//! dispatcher and worker threads, through `vigie_analysis`'s hot loop),
//! [`delivery`] (the outbox sent by C-STORE), [`commitment`] (storage
//! commitment of what was sent), [`events`] (what each part
//! reports, typed, turned into audit record, metric and log line in one
//! place).

pub mod assembly;
pub mod commitment;
pub mod delivery;
pub mod events;
pub mod priors;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigie_audit::Audit;
use vigie_store::Catalog;
use vigie_store::layout::Layout;

use crate::backlog::Backlog;
use crate::config::Config;
pub use worker::WorkerHealth;

/// Shared state of the pipeline's parts.
#[derive(Clone)]
pub struct Pipeline {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Persistent state.
    pub catalog: Arc<dyn Catalog>,
    /// Data directory layout.
    pub layout: Layout,
    /// Cancelled to stop the dispatcher, the worker threads and the
    /// loops (after the listeners have drained).
    pub stop: CancellationToken,
    /// The audit trail.
    pub audit: Audit,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Jobs waiting or running, shared with ingest and the API.
    pub backlog: Arc<Backlog>,
    /// Wake-ups between the stages, so that none waits for its polling
    /// period when there is work.
    pub wake: Arc<Wake>,
    /// The configuration resolved once: threads, backend options, model
    /// registry, batching.
    pub resolved: Arc<crate::config::Resolved>,
    /// Whether each worker thread is alive, and since when it is busy.
    pub health: Arc<WorkerHealth>,
    /// The DICOM TLS settings, for destinations with `tls = true`.
    pub dicom_tls: Option<Arc<vigie_dicom_io::net::tls::DicomTls>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("data_dir", &self.layout.root())
            .field("workers", &self.config.pipeline.workers)
            .finish_non_exhaustive()
    }
}

/// Wake-ups between the stages of the pipeline. Each stage still polls
/// (jobs can also come from the API, retries fall due), but work handed on
/// by the stage before starts at once.
#[derive(Debug, Default)]
pub struct Wake {
    jobs: (std::sync::Mutex<u64>, std::sync::Condvar),
    results: tokio::sync::Notify,
}

impl Wake {
    /// New jobs are in the catalog.
    pub fn jobs_ready(&self) {
        let (count, ready) = &self.jobs;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        ready.notify_all();
    }

    /// Block until new jobs are announced or `timeout` passes.
    fn wait_for_jobs(&self, timeout: Duration) {
        let (count, ready) = &self.jobs;
        let guard = count.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *guard;
        let _ = ready
            .wait_timeout_while(guard, timeout, |c| *c == seen)
            .map_err(|p| p.into_inner());
    }

    /// Results are waiting in the outbox.
    pub fn results_ready(&self) {
        self.results.notify_one();
    }
}

fn seconds_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}
