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
    /// For each study receiving: what its PACS announced (C-FIND
    /// `NumberOfStudyRelatedInstances`) and how many instances were stored
    /// since it started receiving.
    expected: std::sync::Mutex<HashMap<String, Expected>>,
    /// Studies already asked about (kept past their completion, so that a
    /// later reception round is not asked again), with when.
    asked: std::sync::Mutex<HashMap<String, Instant>>,
    /// Questions to the PACS in flight.
    asking: std::sync::atomic::AtomicUsize,
}

/// A receiving study's count: announced, and stored so far.
#[derive(Debug, Clone, Copy, Default)]
struct Expected {
    announced: Option<u64>,
    stored: u64,
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
            asked: std::sync::Mutex::new(HashMap::new()),
            asking: std::sync::atomic::AtomicUsize::new(0),
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
        let before = receiving.len();
        receiving.retain(|_, last| last.elapsed() < self.forget_after);
        if receiving.len() < before {
            self.released_map().retain(|s, _| receiving.contains_key(s));
            self.expected_map().retain(|s, _| receiving.contains_key(s));
        }
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
        // A new reception round: nothing of a previous one counts.
        self.released_map().remove(study);
        self.expected_map()
            .insert(study.to_string(), Expected::default());
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

    fn expected_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receiving studies nobody asked the PACS about yet (in any reception
    /// round), while fewer than `max_in_flight` questions are in flight;
    /// each is marked asked. Every one returned must get its
    /// [`Backlog::answered`].
    pub fn to_ask(&self, max_in_flight: usize) -> Vec<String> {
        let receiving = self.receiving();
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        asked.retain(|s, at| receiving.contains_key(s) || at.elapsed() < self.forget_after);
        let room = max_in_flight.saturating_sub(self.asking.load(Ordering::Relaxed));
        let new: Vec<String> = receiving
            .keys()
            .filter(|s| !asked.contains_key(*s))
            .take(room)
            .cloned()
            .collect();
        for study in &new {
            asked.insert(study.clone(), Instant::now());
        }
        self.asking.fetch_add(new.len(), Ordering::Relaxed);
        new
    }

    /// The PACS's answer for `study`: the count it announced, if any. A
    /// count of 0 is no count.
    pub fn answered(&self, study: &str, count: Option<u64>) {
        self.asking.fetch_sub(1, Ordering::Relaxed);
        let Some(count) = count.filter(|n| *n > 0) else {
            return;
        };
        if let Some(entry) = self.expected_map().get_mut(study) {
            entry.announced = Some(count);
            if entry.stored >= count {
                self.release_wake.notify_one();
            }
        }
    }

    /// Studies whose stored instances reached the count announced, and the
    /// count (the catalog confirms it).
    pub fn expected_counts(&self) -> Vec<(String, u64)> {
        self.expected_map()
            .iter()
            .filter_map(|(s, e)| {
                let n = e.announced?;
                (e.stored >= n).then(|| (s.clone(), n))
            })
            .collect()
    }

    /// The count of `study` cannot be trusted (more instances than
    /// announced): it no longer closes the study.
    pub fn forget_count(&self, study: &str) {
        if let Some(entry) = self.expected_map().get_mut(study) {
            entry.announced = None;
        }
    }

    /// An instance of `study` is stored: wake the assembly loop when that
    /// reaches the count its PACS announced.
    pub fn stored(&self, study: &str) {
        if let Some(entry) = self.expected_map().get_mut(study) {
            entry.stored += 1;
            if entry.announced.is_some_and(|n| entry.stored >= n) {
                self.release_wake.notify_one();
            }
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
        // Held across the insert: a study completed meanwhile is not
        // marked released.
        let receiving = self.receiving();
        if !receiving.contains_key(study) {
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
        drop(receiving);
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

    #[test]
    fn an_announced_count_closes_only_once_reached_and_a_zero_count_is_none() {
        let backlog = Backlog::new(100, 0);
        assert_eq!(backlog.admit("2.1"), None);
        assert_eq!(backlog.admit("2.2"), None);
        let mut asked = backlog.to_ask(1);
        assert_eq!(asked.len(), 1, "one question in flight at most");
        assert!(backlog.to_ask(1).is_empty());
        backlog.answered(&asked[0], Some(2));
        asked.extend(backlog.to_ask(1));
        assert_eq!(asked.len(), 2);
        assert!(backlog.to_ask(4).is_empty(), "each study asked once");
        let (counted, zero) = (asked[0].clone(), asked[1].clone());
        backlog.answered(&zero, Some(0));
        backlog.stored(&counted);
        backlog.stored(&zero);
        assert!(backlog.expected_counts().is_empty(), "1 of 2 stored");
        backlog.stored(&counted);
        assert_eq!(backlog.expected_counts(), [(counted.clone(), 2)]);
        backlog.forget_count(&counted);
        assert!(backlog.expected_counts().is_empty());
        // A later reception round of an asked study is not asked again.
        backlog.completed(&counted, Duration::from_secs(60));
        assert_eq!(backlog.admit(&counted), None);
        assert!(backlog.to_ask(4).is_empty());
    }
}
