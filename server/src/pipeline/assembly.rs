//! Study assembly: a study is complete when no instance has arrived for
//! `pipeline.stable_age_s`, or, with `pipeline.release_grace_s`, that long
//! after the association or STOW-RS request that carried it ended
//! normally, or once the instance count the PACS announces for it has
//! arrived (`pipeline.expected_instances_from`); routing turns it into
//! jobs in the same transaction that marks it complete.

use std::time::Duration;

use vigie_store::now_ms;

use super::events::Event;
use super::{Pipeline, seconds_ms};
use crate::backlog::Backlog;
use vigie_analysis::routing::Router;

impl Pipeline {
    /// Complete every study quiet for the stable age; returns how many.
    pub fn assemble_once(&self, router: &Router, now: i64) -> anyhow::Result<usize> {
        let stable_age = Duration::from_secs_f64(self.config.pipeline.stable_age_s.max(0.0));
        let cutoff = now - seconds_ms(self.config.pipeline.stable_age_s);
        // The wall clock set back: receptions "in the future" count from
        // now, so that no study waits for the clock to catch up.
        let clamped = self.catalog.clamp_future_receptions(now)?;
        if clamped > 0 {
            self.emit(Event::ClockWentBack { studies: clamped });
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
            if self.complete(router, &study, cutoff, now, "stable_age")? {
                completed += 1;
            }
        }
        // Released studies whose grace is over, nothing received since
        // their release (by the monotonic clock): quiet since now.
        for uid in self.backlog.closable_early() {
            match self.catalog.stable_study(&uid, now) {
                Ok(Some(study)) => match self.complete(router, &study, now, now, "carrier_ended") {
                    Ok(true) => completed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        // The stable age will close it; no retry at every
                        // round.
                        tracing::error!(study = %uid, error = %e, "cannot close the released study");
                        self.backlog.forget_release(&uid);
                    }
                },
                // Not receiving (closed meanwhile): nothing to wait for.
                Ok(None) => self.backlog.forget_release(&uid),
                Err(e) => {
                    tracing::error!(study = %uid, error = %e, "cannot read the released study");
                    self.backlog.forget_release(&uid);
                }
            }
        }
        // Studies whose every instance the PACS announced has arrived
        // (first reception round only: the count is the whole study's).
        for (uid, expected) in self.backlog.expected_counts() {
            let study = match self.catalog.stable_study(&uid, now) {
                Ok(Some(study)) if study.generation == 0 => study,
                Ok(_) => {
                    self.backlog.forget_count(&uid);
                    continue;
                }
                Err(e) => {
                    tracing::error!(study = %uid, error = %e, "cannot read the study to count it");
                    self.backlog.forget_count(&uid);
                    continue;
                }
            };
            let held: u64 = study.series.iter().map(|s| s.instances as u64).sum();
            if held > expected {
                // More than the PACS announced: its count was stale.
                self.backlog.forget_count(&uid);
                continue;
            }
            if held == expected {
                match self.complete(router, &study, now, now, "expected_count") {
                    Ok(true) => completed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(study = %uid, error = %e, "cannot close the counted study");
                        self.backlog.forget_count(&uid);
                    }
                }
            }
        }
        Ok(completed)
    }

    /// Ask the PACS of `pipeline.expected_instances_from` how many
    /// instances it holds for each new study (C-FIND, Study Root,
    /// `NumberOfStudyRelatedInstances`), at most 4 questions in flight,
    /// each study once; the answers arrive in the backlog.
    fn ask_expected_counts(&self) {
        let Some(name) = &self.config.pipeline.expected_instances_from else {
            return;
        };
        let Some(remote) = self
            .config
            .destinations
            .get(name)
            .and_then(|d| self.remote(d))
        else {
            return;
        };
        let mut scu = vigie_dicom_io::net::scu::ScuOptions::new(&self.config.dicom.ae_title);
        scu.timeout = Duration::from_secs(self.config.dicom.scu_timeout_s.max(1));
        for study in self.backlog.to_ask(4) {
            let (remote, scu, backlog, name) = (
                remote.clone(),
                scu.clone(),
                self.backlog.clone(),
                name.clone(),
            );
            tokio::spawn(async move {
                match vigie_dicom_io::net::find::study_instance_count(&remote, &scu, &study).await {
                    Ok(Some(count)) => {
                        tracing::info!(%study, destination = %name, count, "the PACS announces the study's instance count");
                        backlog.answered(&study, Some(count));
                    }
                    Ok(None) => {
                        tracing::debug!(%study, destination = %name, "the PACS gives no instance count for the study");
                        backlog.answered(&study, None);
                    }
                    Err(e) => {
                        tracing::warn!(%study, destination = %name, error = %e, "cannot ask the PACS for the study's instance count");
                        backlog.answered(&study, None);
                    }
                }
            });
        }
    }

    /// Route `study` and complete it with its jobs, unless an instance
    /// arrived after `cutoff`; `closed_by` says which rule closed it.
    fn complete(
        &self,
        router: &Router,
        study: &vigie_store::StableStudy,
        cutoff: i64,
        now: i64,
        closed_by: &'static str,
    ) -> anyhow::Result<bool> {
        let stable_age = Duration::from_secs_f64(self.config.pipeline.stable_age_s.max(0.0));
        let (jobs, note) = router.route(study);
        if !self
            .catalog
            .complete_study(study, cutoff, &jobs, note.as_deref(), now)?
        {
            return Ok(false);
        }
        self.backlog.completed(
            &study.study_instance_uid,
            stable_age * 2 + Duration::from_secs(60),
        );
        self.emit(Event::StudyComplete {
            study,
            jobs: &jobs,
            note: note.as_deref(),
            stable_age_s: self.config.pipeline.stable_age_s,
            closed_by,
        });
        Ok(true)
    }

    /// The assembly loop, until the pipeline stops.
    pub async fn assembly_loop(self, router: Router) {
        let period =
            Duration::from_secs_f64((self.config.pipeline.stable_age_s / 4.0).clamp(0.1, 1.0));
        while !self.stop.is_cancelled() {
            self.ask_expected_counts();
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
            // Sleep the period, or until the next released study's grace
            // ends, or a study is released.
            let wait = self
                .backlog
                .next_release_close()
                .map_or(period, |at| {
                    at.saturating_duration_since(std::time::Instant::now())
                })
                .min(period)
                // A floor: a release past its time that cannot close (yet)
                // never makes the loop spin.
                .max(Duration::from_millis(20));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.backlog.release_wakes() => {}
                () = self.stop.cancelled() => {}
            }
        }
    }
}
