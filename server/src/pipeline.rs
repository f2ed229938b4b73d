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
//!   `give_up_after_h`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use vigie_dicom_io::DicomFile;
use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::scu::{RemoteAe, ScuOptions, send_files};
use vigie_inference::Model;
use vigie_inference::postprocess::Finding;
use vigie_validation::pipeline;
use vigie_validation::reporting::ResultBuilder;

use crate::audit::{Audit, AuditEvent};
use crate::config::Config;
use crate::routing::Router;
use crate::store::layout::Layout;
use crate::store::{Catalog, Job, Origin, OutboxItem, ResultFile, now_ms};

/// Raw outputs are recorded in full up to this many values; longer ones
/// (segmentation maps) by SHA-256 and length.
const RAW_OUTPUT_IN_FULL: usize = 256;

/// The audit record of one analysed instance.
fn inference_event(
    job: &Job,
    instance: &crate::store::InstanceRecord,
    analysis: &pipeline::InstanceAnalysis,
    batch: usize,
    model: &Ran,
) -> AuditEvent {
    let package = &model.package;
    let frames: Vec<serde_json::Value> = analysis
        .results
        .iter()
        .enumerate()
        .map(|(frame, r)| {
            let raw = if r.raw_output.len() <= RAW_OUTPUT_IN_FULL {
                serde_json::json!(r.raw_output)
            } else {
                serde_json::json!({
                    "sha256": pipeline::hash_samples(&r.raw_output),
                    "values": r.raw_output.len(),
                })
            };
            serde_json::json!({
                "frame": frame,
                "raw_output": raw,
                "finding": r.finding,
                "preprocess": r.preprocess,
                "timings_ms": r.timings,
            })
        })
        .collect();
    let decision = analysis.results.first().map(|r| match &r.finding {
        Finding::Classification(c) => c.decision.clone(),
        Finding::Segmentation(_) => "segmentation".to_string(),
    });
    AuditEvent::new(
        "inference",
        "ok",
        serde_json::json!({
            "job_id": job.id,
            "attempt": job.attempts,
            "rule": job.rule,
            "input": {
                "sop_class_uid": instance.sop_class_uid,
                "series_instance_uid": instance.series_instance_uid,
                "transfer_syntax": instance.transfer_syntax,
                "file_sha256": instance.sha256,
                "pixels_sha256": analysis.pixels_sha256,
                "frames": analysis.results.len(),
            },
            "model_sha256": package.sha256(),
            "execution": model.execution,
            "preprocessing": package.manifest().preprocess,
            "decode_ms": analysis.decode_ms,
            "batch_instances": batch,
            "decision": decision,
            "frames": frames,
        }),
    )
    .instance(
        Some(&instance.study_instance_uid),
        Some(&instance.sop_instance_uid),
    )
    .model(package.id(), package.version())
}

/// Say what the model found, in plain words (UIDs only, no patient data).
fn log_finding(job: &Job, sop_instance_uid: &str, frame: usize, finding: &Finding) {
    match finding {
        Finding::Classification(c) => {
            let p = c
                .labels
                .iter()
                .position(|l| *l == c.decision)
                .and_then(|i| c.probabilities.get(i))
                .copied()
                .unwrap_or(f32::NAN);
            tracing::info!(
                job = job.id,
                model = %job.model,
                sop_instance_uid,
                frame,
                "finding: {} (probability {p:.3}, rule {})",
                c.decision,
                c.rule
            );
        }
        Finding::Segmentation(s) => {
            let foreground = s.mask.iter().filter(|v| **v != 0).count();
            tracing::info!(
                job = job.id,
                model = %job.model,
                sop_instance_uid,
                frame,
                "finding: segmentation with {foreground} foreground pixels"
            );
        }
    }
}

/// Shared state of the pipeline's parts.
#[derive(Clone)]
pub struct Pipeline {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Persistent state.
    pub catalog: Arc<dyn Catalog>,
    /// Data directory layout.
    pub layout: Layout,
    /// Set to stop the worker threads.
    pub stopping: Arc<AtomicBool>,
    /// The audit trail.
    pub audit: Audit,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Jobs waiting or running, shared with ingest and the API.
    pub backlog: Arc<Backlog>,
    /// Wake-ups between the stages, so that none waits for its polling
    /// period when there is work.
    pub wake: Arc<Wake>,
    /// Threads of each worker and, when pinned, their CPUs.
    pub threads: vigie_inference::threads::ThreadPlan,
    /// Whether each worker thread is alive, and since when it is busy.
    pub health: Arc<WorkerHealth>,
}

/// One worker thread as `/readyz` and the metrics see it.
#[derive(Debug, Clone, Default)]
struct WorkerSlot {
    started: bool,
    alive: bool,
    busy: Option<(i64, Instant)>,
}

/// The state of the worker threads: a thread that died or has been on one
/// job for longer than `pipeline.stuck_after_s` makes `/readyz` fail and
/// shows in `vigie_workers_unhealthy`.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    slots: std::sync::Mutex<Vec<WorkerSlot>>,
}

/// Marks its worker dead when the thread ends, however it ends.
struct AliveGuard {
    health: Arc<WorkerHealth>,
    worker: usize,
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.health.update(self.worker, |slot| {
            slot.alive = false;
            slot.busy = None;
        });
    }
}

impl WorkerHealth {
    fn update(&self, worker: usize, f: impl FnOnce(&mut WorkerSlot)) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() <= worker {
            slots.resize(worker + 1, WorkerSlot::default());
        }
        f(&mut slots[worker]);
    }

    fn alive(self: &Arc<Self>, worker: usize) -> AliveGuard {
        self.update(worker, |slot| {
            slot.started = true;
            slot.alive = true;
        });
        AliveGuard {
            health: self.clone(),
            worker,
        }
    }

    fn busy(&self, worker: usize, job: Option<i64>) {
        self.update(worker, |slot| {
            slot.busy = job.map(|id| (id, Instant::now()))
        });
    }

    /// Problems with the workers: dead threads, and threads busy on one
    /// job for longer than `stuck_after`. Empty when all is well.
    pub fn problems(&self, stuck_after: Duration) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        for (n, slot) in slots.iter().enumerate() {
            if slot.started && !slot.alive {
                problems.push(format!("worker {n} has stopped"));
            } else if let Some((job, since)) = slot.busy
                && since.elapsed() > stuck_after
            {
                problems.push(format!(
                    "worker {n} stuck on job {job} for {} s",
                    since.elapsed().as_secs()
                ));
            }
        }
        problems
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

/// The model that ran, as the audit records name it.
struct Ran {
    package: vigie_inference::ModelPackage,
    execution: vigie_inference::backend::Execution,
}

/// One instance through the model, and the batch it went in.
struct Analysed<'a> {
    instance: &'a crate::store::InstanceRecord,
    file: &'a DicomFile,
    analysis: &'a pipeline::InstanceAnalysis,
    batch: usize,
}

const JOBS_FINISHED: &str = "vigie_job_attempts_total";
const JOBS_FINISHED_HELP: &str = "Job attempts ended, by model and outcome (done, retry: failed and will retry, failed: gave up).";
const DELIVERIES: &str = "vigie_deliveries_total";
const DELIVERIES_HELP: &str = "Result instances sent, by destination and outcome (delivered, refused by the peer, failed to send).";
const STAGES: &str = "vigie_stage_duration_seconds";
const STAGES_HELP: &str = "Time per analysed image and stage (decode per instance; preprocess, inference, postprocess per frame), by model.";

/// The work the appliance holds and has not analysed yet: jobs waiting or
/// running (refreshed by the assembly loop) and studies still receiving
/// (kept here by ingest, each with the monotonic time of its last
/// instance). Ingest (C-STORE, STOW-RS) and the API read it before taking
/// more work; `pipeline.max_backlog` bounds jobs and receiving studies
/// together, so a burst of new studies is refused before it becomes jobs.
#[derive(Debug)]
pub struct Backlog {
    jobs: std::sync::atomic::AtomicU64,
    limit: u64,
    receiving: std::sync::Mutex<HashMap<String, Instant>>,
    forget_after: Duration,
}

impl Backlog {
    /// A backlog of at most `limit` jobs and receiving studies, holding
    /// `jobs` jobs now.
    pub fn new(limit: u64, jobs: u64) -> Self {
        Self {
            jobs: std::sync::atomic::AtomicU64::new(jobs),
            limit,
            receiving: std::sync::Mutex::new(HashMap::new()),
            forget_after: Duration::from_secs(600),
        }
    }

    /// Forget a receiving study quiet for longer than `after` (set it well
    /// above the stable age).
    pub fn forget_after(mut self, after: Duration) -> Self {
        self.forget_after = after;
        self
    }

    /// Record the current count.
    pub fn set(&self, jobs: u64) {
        self.jobs.store(jobs, Ordering::Relaxed);
    }

    fn receiving(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.receiving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why no more work is taken, when jobs alone fill the backlog (every
    /// instance is refused then, those of studies under way too).
    pub fn full(&self) -> Option<String> {
        let jobs = self.jobs.load(Ordering::Relaxed);
        (jobs >= self.limit).then(|| {
            format!(
                "analysis backlog full: {jobs} jobs waiting or running (pipeline.max_backlog {}); retry later",
                self.limit
            )
        })
    }

    /// Take an instance of `study`: always for a study already receiving
    /// (a study is never cut in the middle), for a new one only while jobs
    /// and receiving studies stay below the limit. Returns why not.
    pub fn admit(&self, study: &str) -> Option<String> {
        let mut receiving = self.receiving();
        // A study admitted whose instance was then refused (a write that
        // failed) never completes: forgotten once quiet for long.
        receiving.retain(|_, last| last.elapsed() < self.forget_after);
        if let Some(last) = receiving.get_mut(study) {
            *last = Instant::now();
            return None;
        }
        let jobs = self.jobs.load(Ordering::Relaxed);
        let held = jobs + receiving.len() as u64;
        if held >= self.limit {
            return Some(format!(
                "analysis backlog full: {jobs} jobs and {} studies receiving (pipeline.max_backlog {}); retry later",
                receiving.len(),
                self.limit
            ));
        }
        receiving.insert(study.to_string(), Instant::now());
        None
    }

    /// Whether an instance of `study` arrived less than `age` ago by the
    /// monotonic clock (unknown studies: no).
    pub fn received_within(&self, study: &str, age: Duration) -> bool {
        self.receiving()
            .get(study)
            .is_some_and(|last| last.elapsed() < age)
    }

    /// The study is complete: it no longer counts as receiving. Entries
    /// quieter than `forget_after` are dropped too (an instance admitted
    /// then refused for another reason left one).
    pub fn completed(&self, study: &str, forget_after: Duration) {
        let mut receiving = self.receiving();
        receiving.remove(study);
        receiving.retain(|_, last| last.elapsed() < forget_after);
    }

    /// Studies counted as receiving.
    pub fn receiving_studies(&self) -> usize {
        self.receiving().len()
    }

    /// Jobs waiting or running in `counts` (by state).
    pub fn count(counts: &std::collections::BTreeMap<String, u64>) -> u64 {
        ["pending", "running"]
            .iter()
            .filter_map(|s| counts.get(*s))
            .sum()
    }
}

fn seconds_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

impl Pipeline {
    /// Complete every study quiet for the stable age; returns how many.
    pub fn assemble_once(&self, router: &Router, now: i64) -> anyhow::Result<usize> {
        let stable_age = Duration::from_secs_f64(self.config.pipeline.stable_age_s.max(0.0));
        let cutoff = now - seconds_ms(self.config.pipeline.stable_age_s);
        // The wall clock set back: receptions "in the future" count from
        // now, so that no study waits for the clock to catch up.
        let clamped = self.catalog.clamp_future_receptions(now)?;
        if clamped > 0 {
            tracing::warn!(
                studies = clamped,
                "the clock went back: studies received later than now by the clock wait the stable age from now (check NTP)"
            );
        }
        let mut completed = 0;
        for study in self.catalog.stable_studies(cutoff)? {
            // Within a run the monotonic clock decides: a clock stepped
            // forward does not complete a study still receiving.
            if self
                .backlog
                .received_within(&study.study_instance_uid, stable_age)
            {
                continue;
            }
            let (jobs, note) = router.route(&study);
            if self
                .catalog
                .complete_study(&study, cutoff, &jobs, note.as_deref(), now)?
            {
                completed += 1;
                self.backlog.completed(
                    &study.study_instance_uid,
                    stable_age * 2 + Duration::from_secs(60),
                );
                let instances: usize = study.series.iter().map(|s| s.instances).sum();
                let study_uid = Some(study.study_instance_uid.as_str());
                self.audit.note(
                    AuditEvent::new(
                        "study_complete",
                        "ok",
                        serde_json::json!({
                            "generation": study.generation,
                            "instances": instances,
                            "series": study.series,
                            "stable_age_s": self.config.pipeline.stable_age_s,
                        }),
                    )
                    .instance(study_uid, None),
                );
                self.audit.note(
                    AuditEvent::new(
                        "routing_decision",
                        if jobs.is_empty() { "none" } else { "routed" },
                        serde_json::json!({
                            "generation": study.generation,
                            "jobs": jobs,
                            "reason": note,
                        }),
                    )
                    .instance(study_uid, None),
                );
                match &note {
                    Some(note) => tracing::warn!(
                        study = %study.study_instance_uid,
                        generation = study.generation,
                        instances,
                        %note,
                        "study complete, nothing to run"
                    ),
                    None => tracing::info!(
                        study = %study.study_instance_uid,
                        generation = study.generation,
                        instances,
                        jobs = jobs.len(),
                        models = ?jobs.iter().map(|j| j.model.as_str()).collect::<Vec<_>>(),
                        "study complete, jobs queued"
                    ),
                }
            }
        }
        Ok(completed)
    }

    /// The assembly loop.
    pub async fn assembly_loop(self, router: Router) {
        let period =
            Duration::from_secs_f64((self.config.pipeline.stable_age_s / 4.0).clamp(0.1, 1.0));
        loop {
            let this = self.clone();
            let router = router.clone();
            let result = tokio::task::spawn_blocking(move || {
                let done = this.assemble_once(&router, now_ms());
                if matches!(done, Ok(n) if n > 0) {
                    this.wake.jobs_ready();
                }
                match this.catalog.job_counts() {
                    Ok(counts) => this.backlog.set(Backlog::count(&counts)),
                    Err(e) => tracing::error!(error = %e, "cannot count jobs"),
                }
                done
            })
            .await;
            match result {
                Ok(Err(e)) => tracing::error!(error = %e, "study assembly failed"),
                Err(e) => tracing::error!(error = %e, "study assembly panicked"),
                Ok(Ok(_)) => {}
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Start the dispatcher and worker threads.
    pub fn spawn_workers(&self) -> Vec<std::thread::JoinHandle<()>> {
        let workers = self.config.pipeline.workers;
        let mut handles = Vec::new();
        if workers == 0 {
            tracing::warn!("pipeline.workers = 0: jobs are queued but not run");
            return handles;
        }
        let (tx, rx) = sync_channel::<Job>(self.config.pipeline.queue_capacity);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let this = self.clone();
        handles.push(std::thread::spawn(move || this.dispatch(tx)));
        for n in 0..workers {
            let this = self.clone();
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vigie-worker-{n}"))
                .spawn(move || {
                    let _alive = this.health.alive(n);
                    this.work(n, &rx);
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => tracing::error!(error = %e, "cannot start worker thread"),
            }
        }
        handles
    }

    fn dispatch(&self, tx: SyncSender<Job>) {
        while !self.stopping.load(Ordering::Relaxed) {
            match self.catalog.claim_job(now_ms()) {
                Ok(Some(job)) => {
                    // Blocks while the queue is full: back-pressure.
                    if tx.send(job).is_err() {
                        return;
                    }
                }
                Ok(None) => self.wake.wait_for_jobs(Duration::from_millis(200)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim jobs");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn work(&self, worker: usize, rx: &std::sync::Mutex<Receiver<Job>>) {
        let mut models: HashMap<String, Model> = HashMap::new();
        // With inference.pin_threads, this thread calls the runtime: it
        // takes the first of the model's CPUs (the runtime pins the rest).
        if let Some(&cpu) = self.threads.model_cpus.first() {
            vigie_inference::threads::pin_current_thread(cpu);
        }
        loop {
            let job = {
                let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                guard.recv()
            };
            let Ok(job) = job else { return };
            // Stopping: the job stays as it is, and the stop releases it.
            if self.stopping.load(Ordering::Relaxed) {
                continue;
            }
            // From here on `attempts` counts this attempt too, as if it
            // failed: it is the number the retry rule and the records use.
            let job = Job {
                attempts: job.attempts + 1,
                ..job
            };
            let started = Instant::now();
            self.health.busy(worker, Some(job.id));
            // A panic in decoding, preprocessing, the runtime or result
            // building fails this attempt only: the thread goes on with the
            // next job. Its warm sessions may be half-changed: dropped.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_job(&job, &mut models)
            }))
            .unwrap_or_else(|panic| {
                models.clear();
                let message = vigie_dicom_io::pixels::panic_message(&panic);
                tracing::error!(job = job.id, panic = %message, "analysis panicked; the attempt fails and the worker goes on");
                self.metrics.inc(
                    "vigie_worker_panics_total",
                    "Panics caught in worker threads (each failed one job attempt; the worker went on).",
                    &[("model", &job.model)],
                );
                Err(anyhow::anyhow!("internal error: analysis panicked: {message}"))
            });
            self.health.busy(worker, None);
            let now = now_ms();
            match outcome {
                Ok((results, notes)) => {
                    if let Err(e) = self
                        .catalog
                        .finish_job(&job, &results, notes.as_deref(), now)
                    {
                        tracing::error!(job = job.id, error = %e, "cannot record finished job");
                        continue;
                    }
                    if !job.destinations.is_empty() {
                        self.wake.results_ready();
                    }
                    self.audit.note(
                        AuditEvent::new(
                            "job_done",
                            "ok",
                            serde_json::json!({
                                "job_id": job.id,
                                "rule": job.rule,
                                "attempt": job.attempts,
                                "results": results.len(),
                                "destinations": job.destinations,
                                "notes": notes,
                                "ms": started.elapsed().as_millis() as u64,
                            }),
                        )
                        .instance(Some(&job.study_instance_uid), None),
                    );
                    self.metrics.inc(
                        JOBS_FINISHED,
                        JOBS_FINISHED_HELP,
                        &[("model", &job.model), ("outcome", "done")],
                    );
                    self.metrics.observe(
                        "vigie_job_duration_seconds",
                        "Time a worker spent on a job (all its instances, results written), by model.",
                        &[("model", &job.model)],
                        started.elapsed().as_secs_f64(),
                    );
                    tracing::info!(
                        job = job.id,
                        study = %job.study_instance_uid,
                        model = %job.model,
                        results = results.len(),
                        destinations = ?job.destinations,
                        ms = started.elapsed().as_millis() as u64,
                        notes = notes.as_deref().unwrap_or(""),
                        "job done"
                    );
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    let retry = (job.attempts < self.config.pipeline.max_attempts).then(|| {
                        let factor = 2f64.powi(job.attempts.saturating_sub(1).min(16) as i32);
                        now + seconds_ms(self.config.pipeline.retry_delay_s * factor)
                    });
                    self.audit.note(
                        AuditEvent::new(
                            "job_failed",
                            if retry.is_some() {
                                "will_retry"
                            } else {
                                "gave_up"
                            },
                            serde_json::json!({
                                "job_id": job.id,
                                "rule": job.rule,
                                "model": job.model,
                                "attempt": job.attempts,
                                "max_attempts": self.config.pipeline.max_attempts,
                                "error": error,
                            }),
                        )
                        .instance(Some(&job.study_instance_uid), None),
                    );
                    self.metrics.inc(
                        JOBS_FINISHED,
                        JOBS_FINISHED_HELP,
                        &[
                            ("model", &job.model),
                            ("outcome", if retry.is_some() { "retry" } else { "failed" }),
                        ],
                    );
                    if let Err(e) = self.catalog.job_attempt_failed(job.id, &error, retry, now) {
                        tracing::error!(job = job.id, error = %e, "cannot record job failure");
                    }
                    match retry {
                        Some(_) => tracing::warn!(
                            job = job.id, attempt = job.attempts, %error, "job attempt failed, will retry"
                        ),
                        None => tracing::error!(
                            job = job.id, attempts = job.attempts, %error, "job failed, giving up"
                        ),
                    }
                }
            }
        }
    }

    /// Run one job: results written, and notes on instances not analysed.
    fn run_job(
        &self,
        job: &Job,
        models: &mut HashMap<String, Model>,
    ) -> anyhow::Result<(Vec<ResultFile>, Option<String>)> {
        let instances = self.catalog.job_instances(job)?;
        if instances.is_empty() {
            anyhow::bail!("no instances found for the job's series");
        }
        if !models.contains_key(&job.model) {
            match crate::commands::infer::load_model(&self.config, Some(&job.model), None) {
                Ok(model) => {
                    let package = model.package();
                    self.audit.note(
                        AuditEvent::new(
                            "model_loaded",
                            "ok",
                            serde_json::json!({
                                "sha256": package.sha256(),
                                "package": package.dir(),
                                "execution": model.execution(),
                                "regulatory_status": package.manifest().model.regulatory_status,
                            }),
                        )
                        .model(package.id(), package.version()),
                    );
                    let execution = model.execution();
                    self.metrics.add(
                        "vigie_model_loads_total",
                        "Models loaded by a worker (one warm session per worker and model), by model, version and execution provider.",
                        &[
                            ("model", package.id()),
                            ("version", package.version()),
                            ("provider", &execution.provider),
                        ],
                        1,
                    );
                    models.insert(job.model.clone(), model);
                }
                Err(e) => {
                    self.metrics.inc(
                        "vigie_model_load_failures_total",
                        "Models a worker could not load (the job fails or retries), by model.",
                        &[("model", &job.model)],
                    );
                    let mut event = AuditEvent::new(
                        "model_refused",
                        "failed",
                        serde_json::json!({ "error": format!("{e:#}"), "job_id": job.id }),
                    );
                    event.model_id = Some(job.model.clone());
                    self.audit.note(event);
                    return Err(e);
                }
            }
        }
        let Some(model) = models.get_mut(&job.model) else {
            anyhow::bail!("model {} not loaded", job.model);
        };
        let mut builder = ResultBuilder::new(
            &self.config.appliance.id,
            &self.config.results.uid_root,
            self.config.results.summary_image,
        )?;
        let mut results = Vec::new();
        let mut failures = Vec::new();
        // The hot loop: decoding and preprocessing run on their own threads
        // ahead of the model, up to max_batch instances per model run.
        let paths: Vec<PathBuf> = instances.iter().map(|i| i.path.clone()).collect();
        let hot_loop = self.config.hot_loop(&job.model, &self.threads);
        let ran = Ran {
            package: model.package().clone(),
            execution: model.execution().clone(),
        };
        // Each instance is written and recorded as soon as the model has
        // it, on this thread, while the next ones are being decoded.
        pipeline::analyse_stream(model, &paths, &hot_loop, |index, outcome| {
            match outcome {
                Ok(streamed) => {
                    let done = Analysed {
                        instance: &instances[index],
                        file: &streamed.file,
                        analysis: &streamed.analysis,
                        batch: streamed.batch,
                    };
                    self.record_analysis(job, done, &ran, &mut builder, &mut results)?;
                }
                Err(e) => self.analysis_failed(job, &instances[index], &e.into(), &mut failures),
            }
            Ok::<(), anyhow::Error>(())
        })?;
        if results.is_empty() && !failures.is_empty() {
            anyhow::bail!("no instance could be analysed: {}", failures.join("; "));
        }
        let notes = (!failures.is_empty()).then(|| {
            format!(
                "{} of {} instances not analysed: {}",
                failures.len(),
                instances.len(),
                failures.join("; ")
            )
        });
        Ok((results, notes))
    }

    /// Send what is due once; returns the number of items delivered.
    pub async fn deliver_once(&self) -> anyhow::Result<usize> {
        let catalog = self.catalog.clone();
        let batch = self.config.delivery.batch_size;
        let due =
            tokio::task::spawn_blocking(move || catalog.due_outbox(now_ms(), batch * 8)).await??;
        let mut by_destination: BTreeMap<String, Vec<OutboxItem>> = BTreeMap::new();
        for item in due {
            by_destination
                .entry(item.destination.clone())
                .or_default()
                .push(item);
        }
        let mut delivered = 0;
        let mut scu = ScuOptions::new(&self.config.dicom.ae_title);
        scu.timeout = Duration::from_secs(self.config.dicom.scu_timeout_s.max(1));
        for (name, items) in by_destination {
            let Some(destination) = self.config.destinations.get(&name) else {
                for item in &items {
                    self.catalog.outbox_failed(
                        item.id,
                        &format!("destination {name:?} is no longer configured"),
                        None,
                        now_ms(),
                    )?;
                }
                continue;
            };
            let remote = RemoteAe {
                ae_title: destination.ae_title.clone(),
                host: destination.host.clone(),
                port: destination.port,
            };
            for chunk in items.chunks(batch) {
                let paths: Vec<PathBuf> = chunk.iter().map(|i| i.path.clone()).collect();
                let sending = Instant::now();
                let sent = send_files(&remote, &scu, &paths).await;
                self.metrics.observe(
                    "vigie_delivery_duration_seconds",
                    "Time to send one batch of results by C-STORE (association included), by destination.",
                    &[("destination", &name)],
                    sending.elapsed().as_secs_f64(),
                );
                match sent {
                    Ok(outcomes) => {
                        for (item, outcome) in chunk.iter().zip(&outcomes) {
                            self.metrics.inc(
                                DELIVERIES,
                                DELIVERIES_HELP,
                                &[
                                    ("destination", &name),
                                    (
                                        "outcome",
                                        if outcome.delivered() {
                                            "delivered"
                                        } else {
                                            "refused"
                                        },
                                    ),
                                ],
                            );
                            self.audit.note(
                                AuditEvent::new(
                                    "result_delivery",
                                    if outcome.delivered() {
                                        "delivered"
                                    } else {
                                        "refused"
                                    },
                                    serde_json::json!({
                                        "destination": name,
                                        "ae_title": remote.ae_title,
                                        "address": format!("{}:{}", remote.host, remote.port),
                                        "status": outcome.status.map(|s| format!("0x{s:04X}")),
                                        "comment": outcome.comment,
                                        "attempt": item.attempts + 1,
                                        "job_id": item.job_id,
                                    }),
                                )
                                .instance(
                                    Some(&item.study_instance_uid),
                                    Some(&item.sop_instance_uid),
                                ),
                            );
                            if outcome.delivered() {
                                self.catalog.outbox_sent(item.id, now_ms())?;
                                delivered += 1;
                            } else {
                                let status = outcome
                                    .status
                                    .map(|s| format!("0x{s:04X}"))
                                    .unwrap_or_else(|| "nothing".into());
                                let comment = outcome.comment.as_deref().unwrap_or("");
                                let why = format!("{name} answered {status}: {comment}");
                                let permanent = outcome
                                    .status
                                    .is_some_and(|s| !status::is_transient_failure(s));
                                if permanent {
                                    // The same answer would come at every
                                    // try: given up now, and visible at once.
                                    tracing::error!(
                                        destination = %name,
                                        job = item.job_id,
                                        sop_instance_uid = %item.sop_instance_uid,
                                        %status,
                                        comment,
                                        "result refused by the destination (permanent): not retried; GET /api/v1/jobs?delivery=failed"
                                    );
                                    self.catalog.outbox_failed(
                                        item.id,
                                        &format!("{why} (permanent refusal, not retried)"),
                                        None,
                                        now_ms(),
                                    )?;
                                } else {
                                    tracing::warn!(
                                        destination = %name,
                                        job = item.job_id,
                                        sop_instance_uid = %item.sop_instance_uid,
                                        %status,
                                        comment,
                                        "result refused by the destination (transient): will retry"
                                    );
                                    self.retry_item(item, &why)?;
                                }
                            }
                        }
                        for item in chunk.iter().skip(outcomes.len()) {
                            self.retry_item(item, "not sent")?;
                        }
                        let sent = outcomes.iter().filter(|o| o.delivered()).count();
                        if sent == chunk.len() {
                            tracing::info!(destination = %name, sent, of = chunk.len(), "results delivered");
                        } else {
                            tracing::warn!(destination = %name, sent, of = chunk.len(), "results not all delivered");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(destination = %name, error = %e, "delivery failed, will retry");
                        self.metrics.add(
                            DELIVERIES,
                            DELIVERIES_HELP,
                            &[("destination", &name), ("outcome", "failed")],
                            chunk.len() as u64,
                        );
                        for item in chunk {
                            self.audit.note(
                                AuditEvent::new(
                                    "result_delivery",
                                    "failed",
                                    serde_json::json!({
                                        "destination": name,
                                        "ae_title": remote.ae_title,
                                        "address": format!("{}:{}", remote.host, remote.port),
                                        "error": e.to_string(),
                                        "attempt": item.attempts + 1,
                                        "job_id": item.job_id,
                                    }),
                                )
                                .instance(
                                    Some(&item.study_instance_uid),
                                    Some(&item.sop_instance_uid),
                                ),
                            );
                            self.retry_item(item, &e.to_string())?;
                        }
                        break;
                    }
                }
            }
        }
        Ok(delivered)
    }

    /// An instance that could not be analysed: on record, and noted in the
    /// job (the others still run).
    fn analysis_failed(
        &self,
        job: &Job,
        instance: &crate::store::InstanceRecord,
        e: &anyhow::Error,
        failures: &mut Vec<String>,
    ) {
        let mut event = AuditEvent::new(
            "inference",
            "failed",
            serde_json::json!({
                "job_id": job.id,
                "attempt": job.attempts,
                "input": { "file_sha256": instance.sha256 },
                "error": format!("{e:#}"),
            }),
        )
        .instance(
            Some(&instance.study_instance_uid),
            Some(&instance.sop_instance_uid),
        );
        event.model_id = Some(job.model.clone());
        self.audit.note(event);
        failures.push(format!("{}: {e:#}", instance.sop_instance_uid));
    }

    /// Write an analysed instance's result objects and put the inference
    /// and the objects on record together, in one durable transaction,
    /// before the job can be done.
    fn record_analysis(
        &self,
        job: &Job,
        done: Analysed<'_>,
        model: &Ran,
        builder: &mut ResultBuilder,
        results: &mut Vec<ResultFile>,
    ) -> anyhow::Result<()> {
        let Analysed {
            instance,
            file,
            analysis,
            batch,
        } = done;
        let mut events = vec![inference_event(job, instance, analysis, batch, model)];
        self.observe_stages(&job.model, analysis);
        let manifest = model.package.manifest();
        let frames = analysis.results.len();
        for (frame, result) in analysis.results.iter().enumerate() {
            log_finding(job, &instance.sop_instance_uid, frame, &result.finding);
            for object in builder.build(file, frame, frames, manifest, result)? {
                let path = self.layout.result(
                    &object.study_instance_uid,
                    &object.series_instance_uid,
                    &object.sop_instance_uid,
                )?;
                vigie_dicom_io::write::write_part10(object.dataset, &path)?;
                events.push(
                    AuditEvent::new(
                        "result_created",
                        "ok",
                        serde_json::json!({
                            "job_id": job.id,
                            "kind": object.kind,
                            "series_instance_uid": object.series_instance_uid,
                            "source_sop_instance_uid": instance.sop_instance_uid,
                            "frame": frame,
                            "path": path,
                            "file_sha256": vigie_inference::package::sha256_file(&path)?,
                        }),
                    )
                    .instance(
                        Some(&object.study_instance_uid),
                        Some(&object.sop_instance_uid),
                    )
                    .model(&manifest.model.id, &manifest.model.version),
                );
                results.push(
                    ResultFile::read(&path, Origin::Result)
                        .map_err(|e| anyhow::anyhow!("cannot index result: {e}"))?,
                );
            }
        }
        self.audit.record_all(&events)?;
        Ok(())
    }

    /// Per-stage latency histograms of one analysed instance.
    fn observe_stages(&self, model: &str, analysis: &pipeline::InstanceAnalysis) {
        let observe = |stage: &str, ms: f64| {
            self.metrics.observe(
                STAGES,
                STAGES_HELP,
                &[("model", model), ("stage", stage)],
                ms / 1000.0,
            );
        };
        observe("decode", analysis.decode_ms);
        for result in &analysis.results {
            observe("preprocess", result.timings.preprocess_ms);
            observe("inference", result.timings.inference_ms);
            observe("postprocess", result.timings.postprocess_ms);
        }
    }

    fn retry_item(&self, item: &OutboxItem, error: &str) -> anyhow::Result<()> {
        let d = &self.config.delivery;
        let now = now_ms();
        let give_up = now - item.created_ms > seconds_ms(d.give_up_after_h * 3600.0);
        let delay =
            (d.retry_initial_s * 2f64.powi(item.attempts.min(30) as i32)).min(d.retry_max_s);
        let retry = (!give_up).then(|| now + seconds_ms(delay));
        if retry.is_none() {
            tracing::error!(item = item.id, destination = %item.destination, %error, "result undeliverable, giving up");
        }
        self.catalog.outbox_failed(item.id, error, retry, now)?;
        Ok(())
    }

    /// The delivery loop.
    pub async fn delivery_loop(self) {
        loop {
            if let Err(e) = self.deliver_once().await {
                tracing::error!(error = %e, "result delivery failed");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = self.wake.results.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening defect 2: a worker thread that died left `/readyz` saying
    /// ready, and a stuck one went unnoticed.
    #[test]
    fn regression_a_dead_or_stuck_worker_is_reported() {
        let health = Arc::new(WorkerHealth::default());
        let guard = health.alive(0);
        let _other = health.alive(1);
        assert!(health.problems(Duration::from_secs(60)).is_empty());
        health.busy(1, Some(42));
        std::thread::sleep(Duration::from_millis(30));
        let stuck = health.problems(Duration::from_millis(10));
        assert_eq!(stuck, ["worker 1 stuck on job 42 for 0 s"]);
        health.busy(1, None);
        // A thread that ends, however it ends, is dead.
        drop(guard);
        assert_eq!(
            health.problems(Duration::from_secs(60)),
            ["worker 0 has stopped"]
        );
    }

    /// Hardening defect 11: `pipeline.max_backlog` counted only jobs, and
    /// jobs exist only after the stable age, so a burst of 60 studies was
    /// all accepted with a limit of 10. Receiving studies count too; a
    /// study under way is never cut.
    #[test]
    fn regression_studies_still_receiving_count_against_the_backlog() {
        let backlog = Backlog::new(3, 1);
        assert_eq!(backlog.admit("1.1"), None);
        assert_eq!(backlog.admit("1.2"), None);
        let refused = backlog.admit("1.3").unwrap();
        assert!(
            refused.contains("1 jobs and 2 studies receiving"),
            "{refused}"
        );
        assert_eq!(backlog.admit("1.1"), None, "a study under way goes on");
        assert!(backlog.received_within("1.1", Duration::from_secs(60)));
        assert!(!backlog.received_within("1.3", Duration::from_secs(60)));
        backlog.completed("1.1", Duration::from_secs(60));
        assert_eq!(backlog.admit("1.3"), None, "room again");
        assert_eq!(backlog.receiving_studies(), 2);
        // Entries quieter than the forget period go at the next completion.
        backlog.completed("none", Duration::ZERO);
        assert_eq!(backlog.receiving_studies(), 0);
    }
}
