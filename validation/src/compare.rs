//! Non-inferiority of a candidate model version against a validated
//! baseline, on proportions (accuracy, per-class sensitivity, …).
//!
//! The candidate is non-inferior on a metric when the lower bound of the
//! 95 % interval of (candidate − baseline) is above −margin.
//!
//! - **Paired** (same cases in both runs): the difference of correlated
//!   proportions d = (b − c) / n, where b counts cases only the candidate
//!   got right and c cases only the baseline got right, with Newcombe's
//!   hybrid score interval for paired data (Newcombe 1998, Stat Med
//!   17:2635, method 10): the two Wilson intervals combined with the
//!   correlation φ of the 2×2 table (φ = 0 when a margin of the table is
//!   empty). Unlike the Wald interval d ± z·√(b + c − (b − c)²/n) / n, it
//!   keeps its width when there are few or no discordant pairs: 17
//!   concordant cases give −0.184 to +0.184, not 0 to 0.
//! - **Unpaired**: Newcombe's hybrid score interval (Newcombe 1998, Stat
//!   Med 17:873, method 10) from the two Wilson intervals.
//!
//! A gate that cannot decide is not a pass. With n cases that all agree
//! and are all right, the interval's lower bound is −z²/(n + z²): below
//! [`minimum_cases`]`(margin)` cases no outcome without a gain can show
//! non-inferiority, and a metric that fails for that reason is
//! [`Decision::TooFewCases`], not a regression and not a pass.

use serde::Serialize;

use crate::stats::{Interval, Z95, wilson};

/// What a comparison decided on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The interval's lower bound is above −margin.
    NonInferior,
    /// Not non-inferior: the candidate is worse beyond doubt (the whole
    /// interval below 0), or there were enough cases for it to be shown
    /// non-inferior and it was not.
    Regression,
    /// Not shown non-inferior, not shown worse, and too few cases for any
    /// outcome without a gain to show non-inferiority ([`minimum_cases`]):
    /// the gate cannot decide.
    TooFewCases,
}

/// The fewest cases with which a candidate that agrees with the baseline
/// on every case, all of them right, is shown non-inferior at `margin`:
/// the smallest n with z²/(n + z²) < margin, i.e. n > z²(1 − margin) /
/// margin (189 for a margin of 0.02, 73 for 0.05). `None` for a margin
/// that is not in (0, 1).
pub fn minimum_cases(margin: f64) -> Option<u64> {
    if !(margin > 0.0 && margin < 1.0) {
        return None;
    }
    let bound = Z95 * Z95 * (1.0 - margin) / margin;
    Some(bound.floor() as u64 + 1)
}

/// The decision on a metric from its interval and number of cases.
fn decide(ci95: Interval, n: u64, margin: f64) -> Decision {
    if ci95.lower > -margin {
        Decision::NonInferior
    } else if ci95.upper >= 0.0 && minimum_cases(margin).is_some_and(|m| n < m) {
        Decision::TooFewCases
    } else {
        Decision::Regression
    }
}

/// Newcombe's hybrid score interval (method 10 of Newcombe 1998, Stat
/// Med 17:2635) for p1 − p2 from a paired 2×2 table: `a` pairs positive in
/// both, `b` positive in the first only, `c` in the second only, `d` in
/// neither. `None` when there are no pairs.
pub fn newcombe_paired(a: u64, b: u64, c: u64, d: u64) -> Option<Interval> {
    let n = a + b + c + d;
    let w1 = wilson(a + b, n, Z95)?;
    let w2 = wilson(a + c, n, Z95)?;
    let n_f = n as f64;
    let (p1, p2) = ((a + b) as f64 / n_f, (a + c) as f64 / n_f);
    let margins = [(a + b), (c + d), (a + c), (b + d)].map(|m| m as f64);
    let product: f64 = margins.iter().product();
    let phi = if product == 0.0 {
        0.0
    } else {
        (a as f64 * d as f64 - b as f64 * c as f64) / product.sqrt()
    };
    let theta = p1 - p2;
    let below = ((p1 - w1.lower).powi(2) - 2.0 * phi * (p1 - w1.lower) * (w2.upper - p2)
        + (w2.upper - p2).powi(2))
    .max(0.0)
    .sqrt();
    let above = ((w1.upper - p1).powi(2) - 2.0 * phi * (w1.upper - p1) * (p2 - w2.lower)
        + (p2 - w2.lower).powi(2))
    .max(0.0)
    .sqrt();
    Some(Interval {
        lower: (theta - below).max(-1.0),
        upper: (theta + above).min(1.0),
    })
}

/// The verdict on one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Metric name.
    pub metric: String,
    /// Baseline value.
    pub baseline: f64,
    /// Candidate value.
    pub candidate: f64,
    /// Candidate − baseline.
    pub difference: f64,
    /// 95 % interval of the difference.
    pub ci95: Interval,
    /// Cases.
    pub n: u64,
    /// Whether the comparison was paired.
    pub paired: bool,
    /// Lower bound above −margin.
    pub non_inferior: bool,
    /// What was decided ([`Decision`]).
    pub decision: Decision,
}

/// Paired comparison of per-case outcomes (`true` = correct), same cases in
/// the same order.
pub fn paired(metric: &str, baseline: &[bool], candidate: &[bool], margin: f64) -> Option<Verdict> {
    let n = baseline.len();
    if n == 0 || candidate.len() != n {
        return None;
    }
    let count = |f: fn(bool, bool) -> bool| {
        baseline
            .iter()
            .zip(candidate)
            .filter(|(b, c)| f(**b, **c))
            .count() as u64
    };
    // The candidate first: the interval is of candidate − baseline.
    let both = count(|b, c| b && c);
    let only_candidate = count(|b, c| !b && c);
    let only_baseline = count(|b, c| b && !c);
    let neither = count(|b, c| !b && !c);
    let ci95 = newcombe_paired(both, only_candidate, only_baseline, neither)?;
    let n_f = n as f64;
    let rate = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / n_f;
    let decision = decide(ci95, n as u64, margin);
    Some(Verdict {
        metric: metric.into(),
        baseline: rate(baseline),
        candidate: rate(candidate),
        difference: (only_candidate as f64 - only_baseline as f64) / n_f,
        ci95,
        n: n as u64,
        paired: true,
        non_inferior: decision == Decision::NonInferior,
        decision,
    })
}

/// Unpaired comparison of k1/n1 (baseline) and k2/n2 (candidate).
pub fn unpaired(
    metric: &str,
    baseline: (u64, u64),
    candidate: (u64, u64),
    margin: f64,
) -> Option<Verdict> {
    let (k1, n1) = baseline;
    let (k2, n2) = candidate;
    let w1 = wilson(k1, n1, Z95)?;
    let w2 = wilson(k2, n2, Z95)?;
    let p1 = k1 as f64 / n1 as f64;
    let p2 = k2 as f64 / n2 as f64;
    let d = p2 - p1;
    let ci95 = Interval {
        lower: d - ((p2 - w2.lower).powi(2) + (w1.upper - p1).powi(2)).sqrt(),
        upper: d + ((w2.upper - p2).powi(2) + (p1 - w1.lower).powi(2)).sqrt(),
    };
    let decision = decide(ci95, n1.min(n2), margin);
    Some(Verdict {
        metric: metric.into(),
        baseline: p1,
        candidate: p2,
        difference: d,
        ci95,
        n: n1.min(n2),
        paired: false,
        non_inferior: decision == Decision::NonInferior,
        decision,
    })
}

/// The outcomes of a `report.json` that a comparison needs.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Outcomes {
    reproducibility: OutcomesDataset,
    /// Every scored case.
    pub cases: Vec<crate::report::Case>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct OutcomesDataset {
    dataset: DatasetHash,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct DatasetHash {
    content_sha256: String,
}

impl Outcomes {
    /// Read a classification `report.json`.
    pub fn read(path: &std::path::Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| crate::Error::NotAReport {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The content hash of the dataset the run scored.
    pub fn dataset_sha256(&self) -> &str {
        &self.reproducibility.dataset.content_sha256
    }
}

/// A candidate's report against a baseline's, metric by metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The margin.
    pub margin: f64,
    /// Same dataset, same cases in the same order: compared case by case.
    pub paired: bool,
    /// Every verdict is non-inferior.
    pub non_inferior: bool,
    /// The fewest cases a metric needs at this margin ([`minimum_cases`]).
    pub minimum_cases: Option<u64>,
    /// The whole comparison: a regression if any metric is one, else too
    /// few cases if any metric cannot be decided, else non-inferior.
    pub decision: Decision,
    /// Accuracy, then each class's sensitivity.
    pub verdicts: Vec<Verdict>,
}

/// Compare a candidate's run with a baseline's on accuracy and on every
/// class's sensitivity: paired when both scored the same cases of the same
/// dataset, unpaired otherwise. `None` when there is nothing to compare.
pub fn compare_reports(
    baseline: &Outcomes,
    candidate: &Outcomes,
    margin: f64,
) -> Option<Comparison> {
    let (ob, oc) = (&baseline.cases, &candidate.cases);
    let is_paired = baseline.dataset_sha256() == candidate.dataset_sha256()
        && ob.len() == oc.len()
        && ob
            .iter()
            .zip(oc)
            .all(|(x, y)| x.file == y.file && x.truth == y.truth);
    let mut groups: Vec<(String, Option<String>)> = vec![("accuracy".into(), None)];
    let mut labels: Vec<String> = ob.iter().map(|o| o.truth.clone()).collect();
    labels.sort();
    labels.dedup();
    groups.extend(
        labels
            .into_iter()
            .map(|l| (format!("sensitivity {l}"), Some(l))),
    );
    let mut verdicts = Vec::new();
    for (name, label) in groups {
        let pick = |o: &[crate::report::Case]| -> Vec<bool> {
            o.iter()
                .filter(|x| label.as_ref().is_none_or(|l| &x.truth == l))
                .map(|x| x.correct)
                .collect()
        };
        let (xb, xc) = (pick(ob), pick(oc));
        let count = |v: &[bool]| (v.iter().filter(|x| **x).count() as u64, v.len() as u64);
        let verdict = if is_paired {
            paired(&name, &xb, &xc, margin)
        } else {
            unpaired(&name, count(&xb), count(&xc), margin)
        };
        verdicts.extend(verdict);
    }
    if verdicts.is_empty() {
        return None;
    }
    let any = |d: Decision| verdicts.iter().any(|v| v.decision == d);
    let decision = if any(Decision::Regression) {
        Decision::Regression
    } else if any(Decision::TooFewCases) {
        Decision::TooFewCases
    } else {
        Decision::NonInferior
    };
    Some(Comparison {
        margin,
        paired: is_paired,
        non_inferior: decision == Decision::NonInferior,
        minimum_cases: minimum_cases(margin),
        decision,
        verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcombe_method_10_worked_example() {
        // Newcombe (1998) Table II, example (a): 56/70 vs 48/80 →
        // difference 0.2, interval 0.0524 to 0.3339 (method 10).
        let v = unpaired("x", (48, 80), (56, 70), 0.0).unwrap();
        assert!((v.difference - 0.2).abs() < 1e-12);
        assert!((v.ci95.lower - 0.0524).abs() < 5e-4, "{v:?}");
        assert!((v.ci95.upper - 0.3339).abs() < 5e-4, "{v:?}");
    }

    /// Newcombe (1998, Stat Med 17:2635) Table II, example (a): 36 pairs
    /// positive in both, 12 in the first only, 2 in the second only, none
    /// in neither: difference 0.2, method 10 interval 0.0569 to 0.3404.
    #[test]
    fn newcombe_paired_method_10_worked_example() {
        let ci = newcombe_paired(36, 12, 2, 0).unwrap();
        assert!((ci.lower - 0.0569).abs() < 5e-5, "{ci:?}");
        assert!((ci.upper - 0.3404).abs() < 5e-5, "{ci:?}");
        assert!(newcombe_paired(0, 0, 0, 0).is_none());
    }

    /// Defect of the field-evaluation issue: on the 17 demo cases, where the
    /// int8 candidate and the fp32 model agree on every case, `compare`
    /// said "non-inferior" at a margin of 0.02 with a paired interval of
    /// "+0.000 to +0.000": the Wald interval collapses without discordant
    /// pairs. Seventeen concordant cases give −0.184 to +0.184 and cannot
    /// show non-inferiority within 0.02: the gate cannot decide, which is
    /// not a pass.
    #[test]
    fn regression_seventeen_concordant_cases_cannot_show_non_inferiority_at_two_percent() {
        let base = vec![true; 17];
        let same = paired("accuracy", &base, &base, 0.02).unwrap();
        assert_eq!(same.difference, 0.0);
        assert!((same.ci95.lower + 0.1843).abs() < 5e-4, "{same:?}");
        assert!((same.ci95.upper - 0.1843).abs() < 5e-4, "{same:?}");
        assert!(!same.non_inferior);
        assert_eq!(same.decision, Decision::TooFewCases);
        // With a margin the 17 cases can support, the same runs pass.
        let wide = paired("accuracy", &base, &base, 0.25).unwrap();
        assert_eq!(wide.decision, Decision::NonInferior);
        // The minimum sample is exactly where the best case starts to pass.
        let m = minimum_cases(0.02).unwrap();
        assert_eq!(m, 189);
        let at = vec![true; m as usize];
        assert_eq!(
            paired("a", &at, &at, 0.02).unwrap().decision,
            Decision::NonInferior
        );
        let below = vec![true; m as usize - 1];
        assert_eq!(
            paired("a", &below, &below, 0.02).unwrap().decision,
            Decision::TooFewCases
        );
        assert_eq!(minimum_cases(0.05), Some(73));
        assert_eq!(minimum_cases(0.0), None);
    }

    #[test]
    fn identical_runs_are_non_inferior_and_a_worse_one_is_not() {
        let base = vec![true; 400];
        let same = paired("accuracy", &base, &base, 0.02).unwrap();
        assert!(same.non_inferior);
        assert_eq!(same.difference, 0.0);
        let mut worse = base.clone();
        for w in worse.iter_mut().take(30) {
            *w = false;
        }
        let v = paired("accuracy", &base, &worse, 0.02).unwrap();
        assert!(!v.non_inferior, "{v:?}");
        assert_eq!(v.decision, Decision::Regression);
        assert!((v.difference + 30.0 / 400.0).abs() < 1e-12);
        // A clear gain passes even on few cases.
        let mut better = vec![false; 10];
        better[..5].fill(true);
        let gain = paired("accuracy", &better, &[true; 10], 0.02).unwrap();
        assert_eq!(gain.decision, Decision::NonInferior, "{gain:?}");
        // A clear loss is a regression even on few cases.
        let loss = paired("accuracy", &[true; 10], &better, 0.02).unwrap();
        assert_eq!(loss.decision, Decision::Regression, "{loss:?}");
    }
}
