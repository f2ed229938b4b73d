//! The dispatcher and the worker threads: jobs claimed from the queue,
//! each analysed through `vigie_analysis`'s hot loop, its result objects
//! written durably, then the job done and its results queued, in one
//! transaction. Jobs of one model already waiting when a worker takes one
//! run through the same hot loop (at most `pipeline.queue_capacity` + 1,
//! and 16; only while no other worker is idle), each concluded as soon as
//! its last instance is written.
//! Dedicated OS threads, off the async runtime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use vigie_analysis::results::ResultBuilder;
use vigie_dicom_io::DicomFile;
use vigie_inference::Model;
use vigie_store::{Job, Origin, ResultFile, now_ms};

use super::events::{Event, Ran};
use super::{Pipeline, seconds_ms};

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

    /// Whether every other started worker is alive and on a job: only then
    /// does a worker take waiting jobs into its own group.
    fn others_busy(&self, worker: usize) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .enumerate()
            .filter(|(n, slot)| *n != worker && slot.started && slot.alive)
            .all(|(_, slot)| slot.busy.is_some())
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

/// What a job's attempt gave: its results and notes on the instances not
/// analysed, or why it failed.
type JobOutcome = anyhow::Result<(Vec<ResultFile>, Option<String>)>;

/// Most jobs of one model run through one hot loop together.
const MAX_GROUP_JOBS: usize = 16;

/// A job of a group being run: its instances, its result builder and what
/// its instances gave so far.
struct JobRun {
    /// Its place in the group.
    n: usize,
    instances: Vec<vigie_store::InstanceRecord>,
    builder: ResultBuilder,
    results: Vec<ResultFile>,
    failures: Vec<String>,
    /// Instances written or failed so far.
    seen: usize,
    /// Concluded as failed already (its results could not be recorded).
    failed: bool,
    /// For a model that compares with prior studies: those given to it
    /// (`None` for a model that takes none).
    priors: Option<Vec<super::priors::PriorUsed>>,
    /// For a model that compares with prior studies: why fewer than its
    /// inputs were used, when it ran so.
    no_prior: Option<String>,
}

/// The service is stopping: the jobs of a group not begun are left to the
/// stop, which releases them.
#[derive(Debug, thiserror::Error)]
#[error("the service is stopping")]
struct Stopping;

impl JobRun {
    /// Once every instance is through: the results and the notes on the
    /// instances not analysed, or the job's failure when none could be.
    fn outcome(&mut self) -> JobOutcome {
        if self.results.is_empty() && !self.failures.is_empty() {
            anyhow::bail!(
                "no instance could be analysed: {}",
                self.failures.join("; ")
            );
        }
        let mut notes: Vec<String> = Vec::new();
        for prior in self.priors.iter().flatten() {
            notes.push(format!(
                "compared with prior study {} of {} (instance {}, pixels SHA-256 {})",
                prior.study_instance_uid,
                prior.study_date,
                prior.sop_instance_uid,
                prior.pixels_sha256
            ));
        }
        if let Some(reason) = &self.no_prior {
            notes.push(format!("run without all its prior studies: {reason}"));
        }
        if !self.failures.is_empty() {
            notes.push(format!(
                "{} of {} instances not analysed: {}",
                self.failures.len(),
                self.instances.len(),
                self.failures.join("; ")
            ));
        }
        let notes = (!notes.is_empty()).then(|| notes.join("; "));
        Ok((std::mem::take(&mut self.results), notes))
    }
}

/// One instance through the model, and the batch it went in.
struct Analysed<'a> {
    instance: &'a vigie_store::InstanceRecord,
    file: &'a DicomFile,
    analysis: &'a vigie_analysis::InstanceAnalysis,
    batch: usize,
    priors: Option<&'a [super::priors::PriorUsed]>,
}

impl Pipeline {
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
        while !self.stop.is_cancelled() {
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
        if let Some(&cpu) = self.resolved.threads.model_cpus.first() {
            vigie_inference::threads::pin_current_thread(cpu);
        }
        // A job of another model met while gathering a group: the next one.
        let mut held: Option<Job> = None;
        loop {
            let job = match held.take() {
                Some(job) => job,
                None => {
                    let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                    match guard.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
            };
            // Stopping: the job stays as it is, and the stop releases it.
            if self.stop.is_cancelled() {
                continue;
            }
            let mut group = vec![job];
            // Jobs of the same model already waiting join this one's hot
            // loop, so that each one's decoding overlaps the model run of
            // the one before and its bookkeeping the next one's (one-image
            // studies: benches/validate_vs_serve). Only while the other
            // workers are busy: an idle one would take them sooner.
            // At most the queue's capacity more: the jobs a crash would
            // find running (and count as interrupted) stay about as many
            // as without groups.
            let most = (self.config.pipeline.queue_capacity + 1).min(MAX_GROUP_JOBS);
            // `try_lock`: a worker waiting for a job holds the lock inside
            // `recv`; this one must not wait behind it with a job in hand.
            let guard = match rx.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(guard) = guard.filter(|_| self.health.others_busy(worker)) {
                while group.len() < most && !self.stop.is_cancelled() {
                    match guard.try_recv() {
                        Ok(next) if next.model == group[0].model => group.push(next),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            self.run_group(worker, group, &mut models);
        }
    }

    /// Run `group` (jobs of one model) through one hot loop, each job
    /// concluded — done or failed, recorded — as soon as its last instance
    /// is written. A failure of the whole run (the model, the writer, a
    /// panic) fails the attempt of every job not concluded yet.
    fn run_group(&self, worker: usize, group: Vec<Job>, models: &mut HashMap<String, Model>) {
        // From here on `attempts` counts this attempt too, as if it
        // failed: it is the number the retry rule and the records use.
        let group: Vec<Job> = group
            .into_iter()
            .map(|job| Job {
                attempts: job.attempts + 1,
                ..job
            })
            .collect();
        // Each job's time runs from the conclusion of the one before it in
        // the group (the first: from the start of the group).
        let since = std::sync::Mutex::new(Instant::now());
        self.health.busy(worker, Some(group[0].id));
        let concluded: Vec<std::sync::atomic::AtomicBool> = group
            .iter()
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect();
        let conclude = |n: usize, outcome: JobOutcome| {
            if !concluded[n].swap(true, std::sync::atomic::Ordering::SeqCst) {
                let took = {
                    let mut since = since.lock().unwrap_or_else(|p| p.into_inner());
                    let took = since.elapsed();
                    *since = Instant::now();
                    took
                };
                self.conclude(&group[n], outcome, took);
                // The worker is on the next job now: `stuck_after_s` counts
                // from here.
                let next = (0..group.len())
                    .find(|&m| !concluded[m].load(std::sync::atomic::Ordering::SeqCst));
                if let Some(m) = next {
                    self.health.busy(worker, Some(group[m].id));
                }
            }
        };
        // A panic in decoding, preprocessing, the runtime or result
        // building fails this attempt only: the thread goes on with the
        // next job. Its warm sessions may be half-changed: dropped.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_jobs(&group, models, &conclude)
        }))
        .unwrap_or_else(|panic| {
            models.clear();
            let message = vigie_dicom_io::pixels::panic_message(&panic);
            for (n, job) in group.iter().enumerate() {
                if !concluded[n].load(std::sync::atomic::Ordering::SeqCst) {
                    self.emit(Event::WorkerPanicked {
                        job,
                        message: &message,
                    });
                }
            }
            Err(anyhow::anyhow!(
                "internal error: analysis panicked: {message}"
            ))
        });
        match ran {
            // Stopping between two jobs of the group: those not begun stay
            // running, and the stop releases them (no attempt counted).
            Err(e) if e.is::<Stopping>() => {}
            Err(e) => {
                let error = format!("{e:#}");
                for n in 0..group.len() {
                    conclude(n, Err(anyhow::anyhow!("{error}")));
                }
            }
            Ok(()) => {}
        }
        self.health.busy(worker, None);
    }

    /// A job's attempt is over: record it done (its results queued for
    /// delivery) or failed (with a retry when attempts remain).
    fn conclude(&self, job: &Job, outcome: JobOutcome, took: Duration) {
        let now = now_ms();
        match outcome {
            Ok((results, notes)) => {
                if let Err(e) = self
                    .catalog
                    .finish_job(job, &results, notes.as_deref(), now)
                {
                    tracing::error!(job = job.id, error = %e, "cannot record finished job");
                    return;
                }
                if !job.destinations.is_empty() {
                    self.wake.results_ready();
                }
                self.emit(Event::JobDone {
                    job,
                    results: results.len(),
                    notes: notes.as_deref(),
                    took,
                });
            }
            Err(e) => {
                let error = format!("{e:#}");
                let retry = (job.attempts < self.config.pipeline.max_attempts).then(|| {
                    let factor = 2f64.powi(job.attempts.saturating_sub(1).min(16) as i32);
                    now + seconds_ms(self.config.pipeline.retry_delay_s * factor)
                });
                self.emit(Event::JobFailed {
                    job,
                    error: &error,
                    will_retry: retry.is_some(),
                    max_attempts: self.config.pipeline.max_attempts,
                });
                if let Err(e) = self.catalog.job_attempt_failed(job.id, &error, retry, now) {
                    tracing::error!(job = job.id, error = %e, "cannot record job failure");
                }
            }
        }
    }

    /// The hot loop over every instance of `group`'s jobs (one model): each
    /// instance's results written and recorded with its own job on a writer
    /// thread beside the model, each job concluded (`conclude`) once its
    /// last instance is. An error returned fails the jobs not concluded.
    fn run_jobs(
        &self,
        group: &[Job],
        models: &mut HashMap<String, Model>,
        conclude: &(dyn Fn(usize, JobOutcome) + Sync),
    ) -> anyhow::Result<()> {
        let model_id = group[0].model.clone();
        // Each job's instances; a job that has none, or whose instances
        // cannot be read from the catalog, fails alone.
        let mut jobs: Vec<JobRun> = Vec::with_capacity(group.len());
        for (n, job) in group.iter().enumerate() {
            match self.catalog.job_instances(job) {
                Ok(instances) if !instances.is_empty() => {
                    let mut builder = ResultBuilder::new(
                        &self.config.appliance.id,
                        &self.config.results.uid_root,
                        self.config.results.summary_image,
                    )?;
                    builder.set_review_link(self.config.results.review_link(job.id));
                    jobs.push(JobRun {
                        n,
                        instances,
                        builder,
                        results: Vec::new(),
                        failures: Vec::new(),
                        seen: 0,
                        failed: false,
                        priors: None,
                        no_prior: None,
                    });
                }
                Ok(_) => conclude(
                    n,
                    Err(anyhow::anyhow!("no instances found for the job's series")),
                ),
                Err(e) => conclude(n, Err(e.into())),
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        if !models.contains_key(&model_id) {
            match self.resolved.load_model(Some(&model_id), None) {
                Ok(model) => {
                    self.emit(Event::ModelLoaded { model: &model });
                    models.insert(model_id.clone(), model);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    for run in &jobs {
                        self.emit(Event::ModelRefused {
                            job: &group[run.n],
                            error: &error,
                        });
                    }
                    return Err(e.into());
                }
            }
        }
        let Some(model) = models.get_mut(&model_id) else {
            anyhow::bail!("model {model_id} not loaded");
        };
        if !model.takes_prior() {
            return self.hot_loop(group, &mut jobs, model, conclude);
        }
        // A model comparing with prior studies: each job with its own
        // priors, one hot loop each.
        let ran = (|| {
            for (k, run) in jobs.iter_mut().enumerate() {
                if k > 0 && self.stop.is_cancelled() {
                    return Err(anyhow::Error::new(Stopping));
                }
                let job = &group[run.n];
                match self.set_priors(job, model, &run.instances) {
                    Ok(search) => {
                        run.priors = Some(search.used);
                        run.no_prior = search.missing;
                    }
                    // Cut by the stop: the job stays for the next start.
                    Err(super::priors::PriorsError::Stopping) => {
                        return Err(anyhow::Error::new(Stopping));
                    }
                    Err(super::priors::PriorsError::Failed(reason)) => {
                        conclude(run.n, Err(anyhow::anyhow!("{reason}")));
                        continue;
                    }
                }
                // One job's failure (its model run, its writer) is its own:
                // the next jobs of the group still get their priors and run.
                match self.hot_loop(group, std::slice::from_mut(run), model, conclude) {
                    Err(e) if e.is::<Stopping>() => return Err(e),
                    Err(e) => conclude(run.n, Err(e)),
                    Ok(()) => {}
                }
            }
            Ok(())
        })();
        // No job's priors outlive it.
        let _ = model.set_priors(None);
        ran
    }

    /// One hot loop over every instance of `jobs` (of `group`, one model),
    /// each job concluded once its last instance is written.
    fn hot_loop(
        &self,
        group: &[Job],
        jobs: &mut [JobRun],
        model: &mut Model,
        conclude: &(dyn Fn(usize, JobOutcome) + Sync),
    ) -> anyhow::Result<()> {
        let model_id = group[0].model.clone();
        // The hot loop: decoding and preprocessing run on their own threads
        // ahead of the model, up to max_batch instances per model run,
        // across the jobs of the group.
        let mut paths: Vec<PathBuf> = Vec::new();
        let mut owner: Vec<(usize, usize)> = Vec::new();
        for (j, run) in jobs.iter().enumerate() {
            for (i, instance) in run.instances.iter().enumerate() {
                paths.push(instance.path.clone());
                owner.push((j, i));
            }
        }
        let hot_loop = self.resolved.hot_loop(&model_id);
        let ran = Ran {
            package: model.package().clone(),
            execution: model.execution().clone(),
        };
        // Each instance is written and recorded as soon as the model has
        // it, on a writer thread of its own, while the model runs the next
        // ones (as `validate run`'s records, writing results must not hold
        // the model: measured by benches/validate_vs_serve). The channel is
        // bounded: a slow disk slows the model down, memory stays bounded.
        let capacity = 2 * hot_loop.batching.max_batch.max(1);
        let (tx, rx) =
            sync_channel::<(usize, vigie_analysis::Result<vigie_analysis::Streamed>)>(capacity);
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| -> anyhow::Result<()> {
                for (index, outcome) in rx {
                    let (j, i) = owner[index];
                    let run = &mut jobs[j];
                    let job = &group[run.n];
                    let instance = &run.instances[i];
                    match outcome {
                        Ok(streamed) => {
                            let done = Analysed {
                                instance,
                                file: &streamed.file,
                                analysis: &streamed.analysis,
                                batch: streamed.batch,
                                priors: run.priors.as_deref(),
                            };
                            // This job's own failure (its result cannot be
                            // built, written or recorded) fails it alone; the
                            // group goes on.
                            if !run.failed
                                && let Err(e) = self.record_analysis(
                                    job,
                                    done,
                                    &ran,
                                    &mut run.builder,
                                    &mut run.results,
                                )
                            {
                                run.failed = true;
                                conclude(run.n, Err(e));
                            }
                        }
                        Err(e) => {
                            let error = format!("{:#}", anyhow::Error::from(e));
                            self.emit(Event::NotAnalysed {
                                job,
                                instance,
                                error: &error,
                                model: &ran,
                            });
                            run.failures
                                .push(format!("{}: {error}", instance.sop_instance_uid));
                        }
                    }
                    run.seen += 1;
                    if run.seen == run.instances.len() {
                        conclude(run.n, run.outcome());
                    }
                }
                Ok(())
            });
            // A send fails only once the writer stopped on an error: the
            // loop stops too, and the writer's error is the jobs'.
            let streamed =
                vigie_analysis::analyse_stream(model, &paths, &hot_loop, |index, outcome| {
                    // A stop is taken between jobs: the one under way ends.
                    if index > 0 && owner[index].1 == 0 && self.stop.is_cancelled() {
                        return Err(anyhow::Error::new(Stopping));
                    }
                    tx.send((index, outcome))
                        .map_err(|_| anyhow::anyhow!("the result writer stopped"))
                });
            drop(tx);
            let written = match writer.join() {
                Ok(written) => written,
                // A panic while writing fails this attempt as any panic does.
                Err(panic) => std::panic::resume_unwind(panic),
            };
            written.and(streamed)
        })
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
            priors,
        } = done;
        let subgroups = vigie_analysis::population::Subgroups::of(file);
        let mut events = self.emit_durable(Event::Analysed {
            job,
            instance,
            analysis,
            subgroups: &subgroups,
            batch,
            model,
            priors,
        });
        let manifest = model.package.manifest();
        let frames = analysis.results.len();
        for (frame, result) in analysis.results.iter().enumerate() {
            for object in builder.build(file, frame, frames, manifest, result)? {
                let path = self.layout.result(
                    &object.study_instance_uid,
                    &object.series_instance_uid,
                    &object.sop_instance_uid,
                )?;
                vigie_dicom_io::write::write_part10(object.dataset, &path)?;
                events.extend(self.emit_durable(Event::ResultCreated {
                    job,
                    kind: object.kind,
                    study_instance_uid: &object.study_instance_uid,
                    series_instance_uid: &object.series_instance_uid,
                    sop_instance_uid: &object.sop_instance_uid,
                    source: instance,
                    frame,
                    path: &path,
                    file_sha256: &vigie_inference::package::sha256_file(&path)?,
                    model,
                }));
                results.push(
                    ResultFile::read(&path, Origin::Result)
                        .map_err(|e| anyhow::anyhow!("cannot index result: {e}"))?,
                );
            }
        }
        self.audit.record_all(&events)?;
        Ok(())
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
}
