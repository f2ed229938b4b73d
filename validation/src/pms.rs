//! The post-market surveillance report: months of clinical use and the
//! radiologists' verdicts turned into performance evidence
//! (`docs/post-market.md` explains each indicator for a quality or
//! regulatory reader).
//!
//! Computed from the audit trail and the reviews only. Every inference of
//! the model in the window becomes one [`Case`] (its audit record's
//! sequence number, time, period, finding, latency, failure, subgroups,
//! intensity, and the verdict that counts); every figure of the report is
//! an aggregate of those cases, which the report lists (`cases.csv`), so
//! each number traces to the records behind it. Inferences of validation
//! runs (routing rule `validation`) never count.
//!
//! Indicators: volume, failure rate by reason, latency percentiles per
//! period; the reviewed fraction and the agreement (accept) rate; on
//! reviewed cases, accuracy and per-class sensitivity and specificity
//! against the verdicts, with Wilson intervals; the same per subgroup;
//! trends per period with p-chart control limits; input drift (shares of
//! the subgroup attributes, the distribution of the mean pixel intensity)
//! and output drift (class distribution, mean probability of the decided
//! class) against a reference period, by the population stability index.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::stats::{Proportion, proportion};
use vigie_audit::AuditRecord;

/// PSI at or above which a distribution is said to have shifted (watch).
pub const PSI_WATCH: f64 = 0.1;
/// PSI at or above which a shift raises an alarm.
pub const PSI_ALARM: f64 = 0.25;
/// Fewest cases in a period for its drift to be measured.
pub const MIN_CASES_FOR_DRIFT: usize = 30;
/// The subgroup attributes, as recorded with each inference.
pub const ATTRIBUTES: &[&str] = &[
    "manufacturer",
    "model_name",
    "calling_ae_title",
    "body_part",
    "sex",
    "age_band",
];

/// How the window is cut into periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// ISO weeks (Monday to Sunday).
    Week,
    /// Calendar months.
    Month,
}

impl Period {
    /// The period `t` falls in, named by its first day.
    pub fn start_of(self, t: DateTime<Utc>) -> NaiveDate {
        let d = t.date_naive();
        match self {
            Self::Week => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
            Self::Month => d.with_day(1).unwrap_or(d),
        }
    }
}

/// A review as the report reads it (the catalog's, converted by the
/// caller).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewInput {
    /// Review id.
    pub id: i64,
    /// The result object reviewed.
    pub result_sop_instance_uid: String,
    /// accept, reject or correct.
    pub verdict: String,
    /// The corrected class.
    pub label: Option<String>,
    /// Who, as declared.
    pub reviewer: String,
    /// What authenticated it (a token's name, `AE <title>`).
    pub authenticated_as: String,
    /// When recorded (ms since the epoch).
    pub recorded_ms: i64,
    /// Whether it counts (its reviewer's latest of the result).
    pub counts: bool,
}

/// What to report on.
#[derive(Debug, Clone, PartialEq)]
pub struct PmsOptions {
    /// Model id.
    pub model: String,
    /// Model version (all versions when `None`).
    pub version: Option<String>,
    /// Window start (inclusive).
    pub from: DateTime<Utc>,
    /// Window end (exclusive).
    pub to: DateTime<Utc>,
    /// Periods.
    pub period: Period,
    /// Reference period for drift (default: the window's first period).
    pub reference: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Reviews recorded before this time count (the report's cut-off, so
    /// that a report made again with the same cut-off gives the same
    /// figures).
    pub reviews_until: DateTime<Utc>,
}

/// One clinical inference of the model, with what the report needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    /// Sequence number of its `inference` audit record.
    pub seq: i64,
    /// Its time (RFC 3339).
    pub timestamp: String,
    /// Its period (first day).
    pub period: NaiveDate,
    /// In the report's window (a case of the reference period outside the
    /// window serves drift only).
    pub in_window: bool,
    /// In the reference period.
    pub reference: bool,
    /// Model version.
    pub model_version: String,
    /// Failed: the reason (its first clause).
    pub failure: Option<String>,
    /// The decided class.
    pub decision: Option<String>,
    /// Its probability.
    pub probability: Option<f64>,
    /// Time in the analysis stages (decode, preprocess, inference,
    /// postprocess), ms.
    pub latency_ms: Option<f64>,
    /// Subgroup attributes by name ([`ATTRIBUTES`]).
    pub subgroups: BTreeMap<String, String>,
    /// Mean pixel intensity the model saw.
    pub intensity_mean: Option<f64>,
    /// The review that decides the case (the latest that counts), by id.
    pub review: Option<i64>,
    /// Its verdict.
    pub verdict: Option<String>,
    /// The class the radiologist gives: the decision when accepted, the
    /// correction when corrected; unknown when rejected.
    pub truth: Option<String>,
    /// Reviewers whose counting verdicts on this case differ.
    pub reviewers_disagree: bool,
}

/// Performance on reviewed cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Cases analysed (ok).
    pub analysed: usize,
    /// Reviewed cases among them, over analysed.
    pub reviewed: Option<Proportion>,
    /// Accepted over reviewed: the agreement rate, which is also the
    /// accuracy of the AI against the radiologists' verdicts.
    pub agreement: Option<Proportion>,
    /// Per class: sensitivity (decided c among cases whose truth is c) and
    /// specificity (did not decide c among cases whose truth is known not
    /// to be c; a rejected case counts against the class it decided).
    pub per_class: BTreeMap<String, ClassAgreement>,
    /// Cases on which reviewers' counting verdicts differ.
    pub reviewers_disagree: usize,
}

/// One class against the verdicts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassAgreement {
    /// Sensitivity.
    pub sensitivity: Option<Proportion>,
    /// Specificity.
    pub specificity: Option<Proportion>,
}

/// One period's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodFigures {
    /// First day.
    pub period: NaiveDate,
    /// Inferences (ok and failed).
    pub volume: usize,
    /// Failed over volume.
    pub failure_rate: Option<Proportion>,
    /// Control limits of the failure rate around the window's (exact binomial).
    pub failure_limits: Option<(f64, f64)>,
    /// Above its upper limit.
    pub failure_out_of_control: bool,
    /// Latency percentiles (ms): 50, 90, 99.
    pub latency_ms: Option<[f64; 3]>,
    /// Agreement and the rest, in this period.
    pub agreement: Agreement,
    /// p-chart limits of the agreement rate.
    pub agreement_limits: Option<(f64, f64)>,
    /// Below its lower limit.
    pub agreement_out_of_control: bool,
    /// Drift against the reference.
    pub drift: Drift,
    /// Sequence numbers of the first and last audit record behind it.
    pub seq_range: Option<(i64, i64)>,
}

/// Drift of one period against the reference, by PSI.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Drift {
    /// Measured (enough cases in the period and the reference).
    pub measured: bool,
    /// PSI of each subgroup attribute's shares.
    pub input: BTreeMap<String, f64>,
    /// PSI of the mean intensity over the reference's deciles.
    pub intensity: Option<f64>,
    /// PSI of the decided classes' shares.
    pub output: Option<f64>,
    /// Mean probability of the decided class.
    pub mean_probability: Option<f64>,
}

/// An indicator past its threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// `input_drift:<attribute>`, `intensity_drift`, `output_drift`,
    /// `agreement`, `failure_rate`.
    pub indicator: String,
    /// The period.
    pub period: NaiveDate,
    /// Its value.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// What to do (docs/post-market.md).
    pub action: &'static str,
}

/// One subgroup value's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubgroupFigures {
    /// Inferences.
    pub volume: usize,
    /// Failed over volume.
    pub failure_rate: Option<Proportion>,
    /// Agreement and the rest.
    pub agreement: Agreement,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PmsReport {
    /// Model id.
    pub model: String,
    /// Model version asked for.
    pub version: Option<String>,
    /// Versions seen.
    pub versions: Vec<String>,
    /// Window (RFC 3339).
    pub from: String,
    /// Window end.
    pub to: String,
    /// Periods.
    pub period: Period,
    /// Reference period of drift (RFC 3339 bounds) and its cases.
    pub reference: (String, String, usize),
    /// Reviews recorded before this time were read (RFC 3339).
    pub reviews_until: String,
    /// Inferences in the window.
    pub volume: usize,
    /// Failures by reason.
    pub failures: BTreeMap<String, usize>,
    /// Failed over volume.
    pub failure_rate: Option<Proportion>,
    /// Latency percentiles (ms): 50, 90, 99.
    pub latency_ms: Option<[f64; 3]>,
    /// Agreement over the window.
    pub agreement: Agreement,
    /// Per subgroup attribute, per value.
    pub subgroups: BTreeMap<String, BTreeMap<String, SubgroupFigures>>,
    /// Per period.
    pub periods: Vec<PeriodFigures>,
    /// Alarms raised.
    pub alarms: Vec<Alarm>,
    /// Validation inferences left out.
    pub validation_left_out: usize,
    /// Reviews that matched no inference of the window.
    pub reviews_unmatched: usize,
    /// Thresholds used.
    pub thresholds: Thresholds,
}

/// The thresholds, stated in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// PSI watch.
    pub psi_watch: f64,
    /// PSI alarm.
    pub psi_alarm: f64,
    /// Fewest cases per period for drift.
    pub min_cases_for_drift: usize,
    /// One-sided false-alarm probability of the exact binomial control
    /// limits (that of 3-sigma limits).
    pub control_alpha: f64,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The first clause of an error, as its reason (no paths: they follow the
/// first colon in Vigie's messages).
fn reason(error: &str) -> String {
    let first = error.split(": ").next().unwrap_or(error).trim();
    first.chars().take(80).collect()
}

/// Percentile by linear interpolation (as numpy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn latency(cases: &[&Case]) -> Option<[f64; 3]> {
    let mut v: Vec<f64> = cases.iter().filter_map(|c| c.latency_ms).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some([
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
    ])
}

/// Population stability index of `actual` against `expected` shares over
/// the same bins: Σ (a − e) ln(a / e), each share floored at 1e-4 so that
/// an empty bin counts without dividing by zero.
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(1e-4), a.max(1e-4));
            (a - e) * (a / e).ln()
        })
        .sum()
}

fn shares<'a>(values: impl Iterator<Item = &'a str>, bins: &[String]) -> Vec<f64> {
    let mut counts = vec![0usize; bins.len()];
    let mut n = 0usize;
    for v in values {
        if let Some(i) = bins.iter().position(|b| b == v) {
            counts[i] += 1;
        }
        n += 1;
    }
    counts.iter().map(|c| *c as f64 / n.max(1) as f64).collect()
}

fn categorical_psi<'a>(
    reference: &[&'a Case],
    period: &[&'a Case],
    value: impl Fn(&'a Case) -> Option<&'a str>,
) -> Option<f64> {
    let mut bins: Vec<String> = reference
        .iter()
        .chain(period)
        .filter_map(|c| value(c).map(str::to_string))
        .collect();
    bins.sort();
    bins.dedup();
    if bins.is_empty() {
        return None;
    }
    let e = shares(reference.iter().filter_map(|c| value(c)), &bins);
    let a = shares(period.iter().filter_map(|c| value(c)), &bins);
    Some(psi(&e, &a))
}

/// PSI of a continuous value over the reference's deciles.
fn continuous_psi(reference: &[f64], period: &[f64]) -> Option<f64> {
    if reference.len() < 10 || period.is_empty() {
        return None;
    }
    let mut sorted = reference.to_vec();
    sorted.sort_by(f64::total_cmp);
    let edges: Vec<f64> = (1..10)
        .map(|i| percentile(&sorted, f64::from(i) / 10.0))
        .collect();
    let bin = |v: f64| edges.iter().take_while(|e| v > **e).count();
    let share = |values: &[f64]| {
        let mut counts = [0usize; 10];
        for v in values {
            counts[bin(*v)] += 1;
        }
        counts
            .iter()
            .map(|c| *c as f64 / values.len() as f64)
            .collect::<Vec<_>>()
    };
    Some(psi(&share(reference), &share(period)))
}

fn agreement(cases: &[&Case], classes: &[String]) -> Agreement {
    let analysed: Vec<&&Case> = cases.iter().filter(|c| c.failure.is_none()).collect();
    let reviewed: Vec<&&&Case> = analysed.iter().filter(|c| c.verdict.is_some()).collect();
    let accepted = reviewed
        .iter()
        .filter(|c| c.verdict.as_deref() == Some("accept"))
        .count();
    let mut per_class = BTreeMap::new();
    for class in classes {
        let positives: Vec<_> = reviewed
            .iter()
            .filter(|c| c.truth.as_deref() == Some(class))
            .collect();
        let tp = positives
            .iter()
            .filter(|c| c.decision.as_deref() == Some(class))
            .count();
        // Known negatives: truth known and not c, or rejected when c was
        // decided (the truth is then known not to be c).
        let negatives: Vec<_> = reviewed
            .iter()
            .filter(|c| match (&c.truth, c.verdict.as_deref()) {
                (Some(t), _) => t != class,
                (None, Some("reject")) => c.decision.as_deref() == Some(class),
                _ => false,
            })
            .collect();
        let tn = negatives
            .iter()
            .filter(|c| c.decision.as_deref() != Some(class))
            .count();
        per_class.insert(
            class.clone(),
            ClassAgreement {
                sensitivity: proportion(tp as u64, positives.len() as u64),
                specificity: proportion(tn as u64, negatives.len() as u64),
            },
        );
    }
    Agreement {
        analysed: analysed.len(),
        reviewed: proportion(reviewed.len() as u64, analysed.len() as u64),
        agreement: proportion(accepted as u64, reviewed.len() as u64),
        per_class,
        reviewers_disagree: reviewed.iter().filter(|c| c.reviewers_disagree).count(),
    }
}

fn failure_rate(cases: &[&Case]) -> Option<Proportion> {
    let failed = cases.iter().filter(|c| c.failure.is_some()).count();
    proportion(failed as u64, cases.len() as u64)
}

/// One-sided probability outside 3-sigma limits of a normal law: the
/// false-alarm rate of a Shewhart chart's limit.
pub const CONTROL_ALPHA: f64 = 0.001_35;

/// ln C(n, k).
fn ln_choose(n: u64, k: u64) -> f64 {
    let lgamma = |x: f64| {
        // Stirling series with the first corrections (x ≥ 1 here; exact
        // enough for tail sums compared with 0.00135).
        if x < 8.0 {
            let mut acc = 0.0;
            let mut y = x;
            while y < 8.0 {
                acc -= y.ln();
                y += 1.0;
            }
            acc + stirling(y)
        } else {
            stirling(x)
        }
    };
    fn stirling(x: f64) -> f64 {
        (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * x)
            - 1.0 / (360.0 * x.powi(3))
    }
    lgamma(n as f64 + 1.0) - lgamma(k as f64 + 1.0) - lgamma((n - k) as f64 + 1.0)
}

/// P(X = k) for X ~ Binomial(n, p), for every k.
fn binomial_pmf(n: u64, p: f64) -> Vec<f64> {
    if p <= 0.0 || p >= 1.0 {
        let at = if p <= 0.0 { 0 } else { n };
        return (0..=n).map(|k| if k == at { 1.0 } else { 0.0 }).collect();
    }
    (0..=n)
        .map(|k| (ln_choose(n, k) + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp())
        .collect()
}

/// Control limits of a proportion with centre `p` for a sample of `n`:
/// the exact binomial counts beyond which a period is out of control with
/// probability at most [`CONTROL_ALPHA`] on each side (the p-chart's
/// 3-sigma limits without its normal approximation, which alarms on small
/// periods: one rejected review out of one is not a signal), as
/// proportions.
pub fn control_limits(p: f64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let pmf = binomial_pmf(n, p);
    // Lowest count not in the lower tail: P(X ≤ k) ≥ α.
    let mut cdf = 0.0;
    let mut low = n;
    for (k, mass) in pmf.iter().enumerate() {
        cdf += mass;
        if cdf >= CONTROL_ALPHA {
            low = k as u64;
            break;
        }
    }
    // Highest count not in the upper tail: P(X ≥ k) ≥ α.
    let mut sf = 0.0;
    let mut high = 0;
    for (k, mass) in pmf.iter().enumerate().rev() {
        sf += mass;
        if sf >= CONTROL_ALPHA {
            high = k as u64;
            break;
        }
    }
    Some((low as f64 / n as f64, high as f64 / n as f64))
}

/// The reference period of drift: the one asked for, else the window's
/// first period (from the window's start to that period's end).
pub fn reference_window(options: &PmsOptions) -> (DateTime<Utc>, DateTime<Utc>) {
    options.reference.unwrap_or_else(|| {
        let start = options.period.start_of(options.from);
        let end = match options.period {
            Period::Week => start + Duration::days(7),
            Period::Month => start
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(start),
        };
        let end = end
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or(options.to);
        (options.from, end.min(options.to))
    })
}

/// The cases of `records` (the model's `inference` and `result_created`
/// records, in order) with `reviews` attached.
pub fn cases(
    records: &[AuditRecord],
    reviews: &[ReviewInput],
    options: &PmsOptions,
) -> (Vec<Case>, usize, usize) {
    let reference = reference_window(options);
    // Result object → (job, source instance).
    let mut source_str: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kind == "result_created") {
        let Ok(d) = serde_json::from_str::<Value>(&r.details) else {
            continue;
        };
        if let (Some(uid), Some(job), Some(source)) = (
            r.sop_instance_uid.as_deref(),
            d["job_id"].as_i64(),
            d["source_sop_instance_uid"].as_str(),
        ) {
            source_str.insert(uid.to_string(), (job, source.to_string()));
        }
    }
    // (job, source instance) → the counting reviews, in order.
    let mut by_case: BTreeMap<(i64, String), Vec<&ReviewInput>> = BTreeMap::new();
    let mut unmatched = 0;
    let until = options.reviews_until.timestamp_millis();
    // Which review counts is decided among those before the cut-off: each
    // reviewer's latest of a result before it.
    let mut latest: BTreeMap<(&str, &str, &str), &ReviewInput> = BTreeMap::new();
    for r in reviews.iter().filter(|r| r.recorded_ms < until) {
        let key = (
            r.result_sop_instance_uid.as_str(),
            r.authenticated_as.as_str(),
            r.reviewer.as_str(),
        );
        if latest
            .get(&key)
            .is_none_or(|l| (l.recorded_ms, l.id) < (r.recorded_ms, r.id))
        {
            latest.insert(key, r);
        }
    }
    for review in latest.into_values() {
        match source_str.get(review.result_sop_instance_uid.as_str()) {
            Some(key) => by_case.entry(key.clone()).or_default().push(review),
            None => unmatched += 1,
        }
    }
    let mut out = Vec::new();
    let mut attempts: BTreeMap<(i64, String), usize> = BTreeMap::new();
    let mut validation = 0;
    for r in records.iter().filter(|r| r.kind == "inference") {
        if r.model_id.as_deref() != Some(options.model.as_str()) {
            continue;
        }
        if let Some(v) = &options.version
            && r.model_version.as_deref() != Some(v.as_str())
        {
            continue;
        }
        let Some(t) = parse_time(&r.timestamp) else {
            continue;
        };
        let in_window = t >= options.from && t < options.to;
        let in_reference = t >= reference.0 && t < reference.1;
        if !in_window && !in_reference {
            continue;
        }
        let Ok(d) = serde_json::from_str::<Value>(&r.details) else {
            continue;
        };
        if d["rule"] == "validation" {
            validation += 1;
            continue;
        }
        let failure = (r.outcome != "ok").then(|| reason(d["error"].as_str().unwrap_or("failed")));
        let finding = &d["frames"][0]["finding"];
        let decision = d["decision"].as_str().map(str::to_string);
        let probability = finding["labels"]
            .as_array()
            .and_then(|l| l.iter().position(|l| l.as_str() == decision.as_deref()))
            .and_then(|i| finding["probabilities"][i].as_f64());
        let latency_ms = d["frames"].as_array().filter(|f| !f.is_empty()).map(|f| {
            f.iter()
                .flat_map(|frame| frame["timings_ms"].as_object().into_iter().flatten())
                .filter_map(|(_, ms)| ms.as_f64())
                .sum::<f64>()
                + d["decode_ms"].as_f64().unwrap_or(0.0)
        });
        let population = &d["population"];
        let subgroups = ATTRIBUTES
            .iter()
            .map(|a| {
                (
                    (*a).to_string(),
                    population[*a].as_str().unwrap_or("unknown").to_string(),
                )
            })
            .collect();
        let key = (
            d["job_id"].as_i64().unwrap_or(-1),
            r.sop_instance_uid.clone().unwrap_or_default(),
        );
        let reviews = by_case.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let latest = reviews.iter().max_by_key(|r| (r.recorded_ms, r.id));
        let labels: Vec<&str> = finding["labels"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // What a verdict says of the truth: a correction to the decided
        // class is an acceptance; a rejection of a two-class decision
        // names the other class.
        let (verdict, truth) = match latest.map(|r| (r.verdict.as_str(), r.label.as_deref())) {
            None => (None, None),
            Some(("correct", Some(l))) if Some(l) == decision.as_deref() => {
                (Some("accept".to_string()), decision.clone())
            }
            Some(("accept", _)) => (Some("accept".into()), decision.clone()),
            Some(("correct", label)) => (Some("correct".into()), label.map(str::to_string)),
            Some((v, _)) => {
                let other = (labels.len() == 2)
                    .then(|| labels.iter().find(|l| Some(**l) != decision.as_deref()))
                    .flatten()
                    .map(|l| (*l).to_string());
                (Some(v.to_string()), other)
            }
        };
        let disagree = reviews
            .iter()
            .any(|a| a.verdict != reviews[0].verdict || a.label != reviews[0].label);
        // A job attempted again analyses the same instance again: its last
        // attempt is the case.
        let attempt_key = key.clone();
        if let Some(&i) = attempts.get(&attempt_key) {
            out.remove(i);
            for v in attempts.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
        attempts.insert(attempt_key, out.len());
        out.push(Case {
            seq: r.seq,
            timestamp: r.timestamp.clone(),
            period: options.period.start_of(t),
            in_window,
            reference: in_reference,
            model_version: r.model_version.clone().unwrap_or_default(),
            failure,
            decision,
            probability,
            latency_ms,
            subgroups,
            intensity_mean: population["intensity"]["mean"].as_f64(),
            review: latest.map(|r| r.id),
            verdict,
            truth,
            reviewers_disagree: disagree,
        });
    }
    (out, validation, unmatched)
}

/// The report over `cases` (from [`cases`]).
pub fn report(
    all: &[Case],
    validation_left_out: usize,
    reviews_unmatched: usize,
    options: &PmsOptions,
) -> PmsReport {
    let window: Vec<&Case> = all.iter().filter(|c| c.in_window).collect();
    let reference: Vec<&Case> = all
        .iter()
        .filter(|c| c.reference && c.failure.is_none())
        .collect();
    let mut classes: Vec<String> = all
        .iter()
        .filter_map(|c| c.decision.clone())
        .chain(all.iter().filter_map(|c| c.truth.clone()))
        .collect();
    classes.sort();
    classes.dedup();
    let mut failures = BTreeMap::new();
    for c in &window {
        if let Some(f) = &c.failure {
            *failures.entry(f.clone()).or_insert(0) += 1;
        }
    }
    let overall_failure = failure_rate(&window);
    let overall_agreement = agreement(&window, &classes);
    let mut periods: Vec<NaiveDate> = window.iter().map(|c| c.period).collect();
    periods.sort();
    periods.dedup();
    let mut alarms = Vec::new();
    let mut figures = Vec::new();
    let reference_intensity: Vec<f64> = reference.iter().filter_map(|c| c.intensity_mean).collect();
    for p in periods {
        let cases: Vec<&Case> = window.iter().copied().filter(|c| c.period == p).collect();
        let analysed: Vec<&Case> = cases
            .iter()
            .copied()
            .filter(|c| c.failure.is_none())
            .collect();
        let fr = failure_rate(&cases);
        let failure_limits =
            overall_failure.and_then(|o| control_limits(o.value, cases.len() as u64));
        let failure_out = matches!((fr, failure_limits), (Some(f), Some((_, hi))) if f.value > hi);
        let ag = agreement(&cases, &classes);
        let agreement_limits = overall_agreement
            .agreement
            .zip(ag.agreement)
            .and_then(|(o, a)| control_limits(o.value, a.n));
        let agreement_out =
            matches!((ag.agreement, agreement_limits), (Some(a), Some((lo, _))) if a.value < lo);
        let mut drift = Drift::default();
        if analysed.len() >= MIN_CASES_FOR_DRIFT && reference.len() >= MIN_CASES_FOR_DRIFT {
            drift.measured = true;
            for a in ATTRIBUTES {
                if let Some(v) = categorical_psi(&reference, &analysed, |c| {
                    c.subgroups.get(*a).map(String::as_str)
                }) {
                    drift.input.insert((*a).to_string(), v);
                }
            }
            let intensity: Vec<f64> = analysed.iter().filter_map(|c| c.intensity_mean).collect();
            drift.intensity = continuous_psi(&reference_intensity, &intensity);
            drift.output = categorical_psi(&reference, &analysed, |c| c.decision.as_deref());
            let probabilities: Vec<f64> = analysed.iter().filter_map(|c| c.probability).collect();
            drift.mean_probability = (!probabilities.is_empty())
                .then(|| probabilities.iter().sum::<f64>() / probabilities.len() as f64);
            let mut raise = |indicator: String, value: f64, action| {
                if value >= PSI_ALARM {
                    alarms.push(Alarm {
                        indicator,
                        period: p,
                        value,
                        threshold: PSI_ALARM,
                        action,
                    });
                }
            };
            for (a, v) in &drift.input {
                raise(format!("input_drift:{a}"), *v, ACTION_INPUT);
            }
            if let Some(v) = drift.intensity {
                raise("intensity_drift".into(), v, ACTION_INPUT);
            }
            if let Some(v) = drift.output {
                raise("output_drift".into(), v, ACTION_OUTPUT);
            }
        }
        if failure_out && let (Some(f), Some((_, hi))) = (fr, failure_limits) {
            alarms.push(Alarm {
                indicator: "failure_rate".into(),
                period: p,
                value: f.value,
                threshold: hi,
                action: ACTION_FAILURES,
            });
        }
        if agreement_out && let (Some(a), Some((lo, _))) = (ag.agreement, agreement_limits) {
            alarms.push(Alarm {
                indicator: "agreement".into(),
                period: p,
                value: a.value,
                threshold: lo,
                action: ACTION_AGREEMENT,
            });
        }
        figures.push(PeriodFigures {
            period: p,
            volume: cases.len(),
            failure_rate: fr,
            failure_limits,
            failure_out_of_control: failure_out,
            latency_ms: latency(&cases),
            agreement: ag,
            agreement_limits,
            agreement_out_of_control: agreement_out,
            drift,
            seq_range: cases.first().zip(cases.last()).map(|(a, b)| (a.seq, b.seq)),
        });
    }
    let mut subgroups = BTreeMap::new();
    for a in ATTRIBUTES {
        let mut values: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
        for c in &window {
            let v = c.subgroups.get(*a).cloned().unwrap_or_default();
            values.entry(v).or_default().push(c);
        }
        subgroups.insert(
            (*a).to_string(),
            values
                .into_iter()
                .map(|(v, cases)| {
                    (
                        v,
                        SubgroupFigures {
                            volume: cases.len(),
                            failure_rate: failure_rate(&cases),
                            agreement: agreement(&cases, &classes),
                        },
                    )
                })
                .collect(),
        );
    }
    let mut versions: Vec<String> = window.iter().map(|c| c.model_version.clone()).collect();
    versions.sort();
    versions.dedup();
    let reference_bounds = reference_window(options);
    PmsReport {
        model: options.model.clone(),
        version: options.version.clone(),
        versions,
        from: options.from.to_rfc3339(),
        to: options.to.to_rfc3339(),
        period: options.period,
        reference: (
            reference_bounds.0.to_rfc3339(),
            reference_bounds.1.to_rfc3339(),
            reference.len(),
        ),
        reviews_until: options.reviews_until.to_rfc3339(),
        volume: window.len(),
        failures,
        failure_rate: overall_failure,
        latency_ms: latency(&window),
        agreement: overall_agreement,
        subgroups,
        periods: figures,
        alarms,
        validation_left_out,
        reviews_unmatched,
        thresholds: Thresholds {
            psi_watch: PSI_WATCH,
            psi_alarm: PSI_ALARM,
            min_cases_for_drift: MIN_CASES_FOR_DRIFT,
            control_alpha: CONTROL_ALPHA,
        },
    }
}

const ACTION_INPUT: &str = "the population or the scanners have changed: check the new values against the intended use and the validation's subgroups; re-validate on recent cases before continuing to rely on the model";
const ACTION_OUTPUT: &str = "the model's outputs have shifted: compare with the radiologists' verdicts of the period and with the input drift; escalate to the manufacturer's vigilance contact if agreement has fallen";
const ACTION_FAILURES: &str = "more inputs fail than usual: read the failure reasons and the calling AEs; a new sender or encoding is the usual cause";
const ACTION_AGREEMENT: &str = "radiologists reject more results than usual: review the period's rejected cases; report a suspected performance deterioration (MDR Art. 83–87)";

/// One row per case, for `cases.csv`: every figure of the report is an
/// aggregate of these rows.
pub fn cases_csv(cases: &[Case]) -> String {
    let mut out = String::from(
        "seq,timestamp,period,in_window,reference,model_version,failure,decision,probability,latency_ms,intensity_mean,review,verdict,truth",
    );
    for a in ATTRIBUTES {
        out.push(',');
        out.push_str(a);
    }
    out.push('\n');
    let field = |s: &str| {
        // A value a spreadsheet would take for a formula is kept as text.
        let s = if s.starts_with(['=', '+', '-', '@']) {
            format!("'{s}")
        } else {
            s.to_string()
        };
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let num = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    for c in cases {
        let mut row = vec![
            c.seq.to_string(),
            c.timestamp.clone(),
            c.period.to_string(),
            c.in_window.to_string(),
            c.reference.to_string(),
            field(&c.model_version),
            field(c.failure.as_deref().unwrap_or("")),
            field(c.decision.as_deref().unwrap_or("")),
            num(c.probability),
            num(c.latency_ms),
            num(c.intensity_mean),
            c.review.map(|r| r.to_string()).unwrap_or_default(),
            field(c.verdict.as_deref().unwrap_or("")),
            field(c.truth.as_deref().unwrap_or("")),
        ];
        for a in ATTRIBUTES {
            row.push(field(c.subgroups.get(*a).map(String::as_str).unwrap_or("")));
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The report's indicators as Prometheus metrics (text format), for
/// `vigie serve`'s `/metrics` and a textfile collector: alarms of the
/// report's last period, the window's agreement rate, the last period's
/// drift, and when the report was made.
pub fn prometheus(r: &PmsReport, generated_at: DateTime<Utc>) -> String {
    let model = r.model.replace(['"', '\\', '\n'], "_");
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{{model=\"{model}\"{labels}}} {v}\n"));
        }
    };
    let last = r.periods.last();
    let alarms: Vec<&Alarm> = last
        .map(|p| r.alarms.iter().filter(|a| a.period == p.period).collect())
        .unwrap_or_default();
    family(
        "vigie_pms_alarms",
        "Post-market surveillance alarms raised in the last period of the latest report (vigie pms report).",
        vec![(String::new(), alarms.len() as f64)],
    );
    family(
        "vigie_pms_alarm",
        "1 for each indicator past its threshold in the last period of the latest report.",
        alarms
            .iter()
            .map(|a| (format!(",indicator=\"{}\"", a.indicator), 1.0))
            .collect(),
    );
    family(
        "vigie_pms_agreement_rate",
        "Share of reviewed results the radiologists accepted, over the report's window.",
        r.agreement
            .agreement
            .map(|a| vec![(String::new(), a.value)])
            .unwrap_or_default(),
    );
    if let Some(p) = last.filter(|p| p.drift.measured) {
        family(
            "vigie_pms_input_psi",
            "Population stability index of each subgroup attribute in the last period against the reference.",
            p.drift
                .input
                .iter()
                .map(|(a, v)| (format!(",attribute=\"{a}\""), *v))
                .collect(),
        );
        family(
            "vigie_pms_intensity_psi",
            "Population stability index of the mean pixel intensity in the last period against the reference.",
            p.drift
                .intensity
                .map(|v| vec![(String::new(), v)])
                .unwrap_or_default(),
        );
        family(
            "vigie_pms_output_psi",
            "Population stability index of the decided classes in the last period against the reference.",
            p.drift
                .output
                .map(|v| vec![(String::new(), v)])
                .unwrap_or_default(),
        );
    }
    family(
        "vigie_pms_report_timestamp_seconds",
        "When the latest post-market surveillance report was made (Unix time).",
        vec![(String::new(), generated_at.timestamp() as f64)],
    );
    out
}
