//! Non-inferiority of a candidate model version against a validated
//! baseline, on proportions (accuracy, per-class sensitivity, …).
//!
//! The candidate is non-inferior on a metric when the lower bound of the
//! 95 % interval of (candidate − baseline) is above −margin.
//!
//! - **Paired** (same cases in both runs): the difference of correlated
//!   proportions d = (b − c) / n, where b counts cases only the candidate
//!   got right and c cases only the baseline got right, with the Wald
//!   interval d ± z·√(b + c − (b − c)²/n) / n (Agresti & Min 2005, the
//!   usual interval for McNemar's design).
//! - **Unpaired**: Newcombe's hybrid score interval (Newcombe 1998, method
//!   10) from the two Wilson intervals.

use serde::Serialize;

use crate::stats::{Interval, Z95, wilson};

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
}

/// Paired comparison of per-case outcomes (`true` = correct), same cases in
/// the same order.
pub fn paired(metric: &str, baseline: &[bool], candidate: &[bool], margin: f64) -> Option<Verdict> {
    let n = baseline.len();
    if n == 0 || candidate.len() != n {
        return None;
    }
    let only_candidate = baseline
        .iter()
        .zip(candidate)
        .filter(|(b, c)| !**b && **c)
        .count() as f64;
    let only_baseline = baseline
        .iter()
        .zip(candidate)
        .filter(|(b, c)| **b && !**c)
        .count() as f64;
    let n_f = n as f64;
    let d = (only_candidate - only_baseline) / n_f;
    let se = ((only_candidate + only_baseline) - (only_candidate - only_baseline).powi(2) / n_f)
        .max(0.0)
        .sqrt()
        / n_f;
    let ci95 = Interval {
        lower: (d - Z95 * se).max(-1.0),
        upper: (d + Z95 * se).min(1.0),
    };
    let rate = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / n_f;
    Some(Verdict {
        metric: metric.into(),
        baseline: rate(baseline),
        candidate: rate(candidate),
        difference: d,
        ci95,
        n: n as u64,
        paired: true,
        non_inferior: ci95.lower > -margin,
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
    Some(Verdict {
        metric: metric.into(),
        baseline: p1,
        candidate: p2,
        difference: d,
        ci95,
        n: n1.min(n2),
        paired: false,
        non_inferior: ci95.lower > -margin,
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
    Some(Comparison {
        margin,
        paired: is_paired,
        non_inferior: verdicts.iter().all(|v| v.non_inferior),
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

    #[test]
    fn identical_runs_are_non_inferior_and_a_worse_one_is_not() {
        let base = vec![true; 17];
        let same = paired("accuracy", &base, &base, 0.02).unwrap();
        assert!(same.non_inferior);
        assert_eq!(same.difference, 0.0);
        let mut worse = base.clone();
        for w in worse.iter_mut().take(8) {
            *w = false;
        }
        let v = paired("accuracy", &base, &worse, 0.02).unwrap();
        assert!(!v.non_inferior, "{v:?}");
        assert!((v.difference + 8.0 / 17.0).abs() < 1e-12);
    }
}
