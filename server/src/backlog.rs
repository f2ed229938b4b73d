//! The analysis backlog: what ingest, the API and the assembly loop share
//! to refuse new work before it grows without bound. Its own module so
//! that ingest and HTTP need nothing of the pipeline.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    /// Studies whose carrier (association, STOW-RS request) ended
    /// normally: when it ended, and when they may close.
    released: std::sync::Mutex<HashMap<String, Released>>,
    /// Woken when a study is released, for the assembly loop.
    release_wake: tokio::sync::Notify,
    /// What the PACS announced (C-FIND `NumberOfStudyRelatedInstances`)
    /// for studies receiving: `None` while asked or when it did not say.
    expected: std::sync::Mutex<HashMap<String, Option<u64>>>,
}

/// A study whose carrier ended: closable at `closes` unless an instance
/// arrives after `at`.
#[derive(Debug, Clone, Copy)]
struct Released {
    at: Instant,
    closes: Instant,
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
            released: std::sync::Mutex::new(HashMap::new()),
            release_wake: tokio::sync::Notify::new(),
            expected: std::sync::Mutex::new(HashMap::new()),
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
            // More is coming: a release before this instance no longer
            // closes the study.
            self.released_map().remove(study);
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
        let mut released = self.released_map();
        released.remove(study);
        released.retain(|s, _| receiving.contains_key(s));
        self.expected_map().retain(|s, _| receiving.contains_key(s));
    }

    fn expected_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<u64>>> {
        self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receiving studies nobody asked the PACS about yet; each is marked
    /// asked (at most `limit`).
    pub fn to_ask(&self, limit: usize) -> Vec<String> {
        let receiving = self.receiving();
        let mut expected = self.expected_map();
        let new: Vec<String> = receiving
            .keys()
            .filter(|s| !expected.contains_key(*s))
            .take(limit)
            .cloned()
            .collect();
        for study in &new {
            expected.insert(study.clone(), None);
        }
        new
    }

    /// The PACS announced `count` instances for `study`.
    pub fn expect(&self, study: &str, count: u64) {
        if let Some(entry) = self.expected_map().get_mut(study) {
            *entry = Some(count);
            self.release_wake.notify_one();
        }
    }

    /// Studies with an announced count, and the count.
    pub fn expected_counts(&self) -> Vec<(String, u64)> {
        self.expected_map()
            .iter()
            .filter_map(|(s, n)| n.map(|n| (s.clone(), n)))
            .collect()
    }

    /// An instance of `study` is stored: wake the assembly loop when the
    /// PACS announced a count for it (the count may be reached).
    pub fn stored(&self, study: &str) {
        if self.expected_map().get(study).is_some_and(Option::is_some) {
            self.release_wake.notify_one();
        }
    }

    fn released_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Released>> {
        self.released.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What carried instances of `study` ended normally (an association
    /// released, a STOW-RS request answered): the study may close `grace`
    /// from now unless an instance of it arrives meanwhile. Studies not
    /// receiving are ignored.
    pub fn released(&self, study: &str, grace: Duration) {
        if !self.receiving().contains_key(study) {
            return;
        }
        let at = Instant::now();
        self.released_map().insert(
            study.to_string(),
            Released {
                at,
                closes: at + grace,
            },
        );
        self.release_wake.notify_one();
    }

    /// Studies released whose grace is over with nothing received since
    /// their release.
    pub fn closable_early(&self) -> Vec<String> {
        let now = Instant::now();
        let receiving = self.receiving();
        self.released_map()
            .iter()
            .filter(|(study, r)| {
                r.closes <= now && receiving.get(*study).is_none_or(|last| *last <= r.at)
            })
            .map(|(study, _)| study.clone())
            .collect()
    }

    /// Drop the release of `study` (it is not receiving any more).
    pub fn forget_release(&self, study: &str) {
        self.released_map().remove(study);
    }

    /// When the next released study's grace ends.
    pub fn next_release_close(&self) -> Option<Instant> {
        self.released_map().values().map(|r| r.closes).min()
    }

    /// Wait until a study is released.
    pub async fn release_wakes(&self) {
        self.release_wake.notified().await;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_released_study_closes_after_the_grace_unless_more_arrives() {
        let backlog = Backlog::new(100, 0);
        backlog.released("1.9", Duration::ZERO);
        assert!(
            backlog.closable_early().is_empty(),
            "not receiving: ignored"
        );
        assert_eq!(backlog.admit("1.1"), None);
        assert_eq!(backlog.admit("1.2"), None);
        backlog.released("1.1", Duration::from_millis(50));
        backlog.released("1.2", Duration::from_millis(50));
        assert!(backlog.closable_early().is_empty(), "within the grace");
        assert!(backlog.next_release_close().is_some());
        // An instance of 1.2 after its release: the release no longer counts.
        assert_eq!(backlog.admit("1.2"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(backlog.closable_early(), ["1.1"]);
        backlog.completed("1.1", Duration::from_secs(60));
        assert!(backlog.closable_early().is_empty());
        assert!(backlog.next_release_close().is_none());
        backlog.released("1.2", Duration::ZERO);
        backlog.forget_release("1.2");
        assert!(backlog.closable_early().is_empty());
    }
}
