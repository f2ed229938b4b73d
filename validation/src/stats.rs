//! Performance statistics of a classifier on a labelled dataset, with 95 %
//! confidence intervals. Definitions follow scikit-learn (and are tested
//! against it and scipy to 1e-9):
//!
//! - proportions (sensitivity, specificity, PPV, NPV, accuracy): Wilson score
//!   interval without continuity correction (Wilson 1927; Newcombe 1998,
//!   method 3);
//! - ROC AUC: the Mann–Whitney statistic (ties count one half), with the
//!   DeLong et al. (1988) variance and a normal interval clipped to [0, 1];
//!   where DeLong's variance is zero (perfect separation, every score
//!   tied) that interval collapses to a point, so the score interval of
//!   Newcombe (2006, Stat Med 25:559, method 5: the Hanley–McNeil variance
//!   with N* = (m + n)/2 − 1, evaluated at the bound) is reported instead,
//!   and the interval says which it is ([`AucMethod`]);
//! - PR AUC: average precision, as `sklearn.metrics.average_precision_score`;
//! - Brier score and the reliability curve (uniform bins) as
//!   `brier_score_loss` and `calibration_curve`;
//! - balanced accuracy, F1 per class, Cohen's kappa as scikit-learn.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

/// A proportion k/n with its Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    /// k / n.
    pub value: f64,
    /// k.
    pub successes: u64,
    /// n.
    pub n: u64,
    /// 95 % Wilson score interval.
    pub ci95: Interval,
}

/// Wilson score interval for `successes` out of `n` at `z`; `None` when
/// `n` is 0.
pub fn wilson(successes: u64, n: u64, z: f64) -> Option<Interval> {
    if n == 0 || successes > n {
        return None;
    }
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denominator;
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denominator;
    Some(Interval {
        lower: (centre - half).max(0.0),
        upper: (centre + half).min(1.0),
    })
}

/// k/n with its 95 % Wilson interval; `None` when `n` is 0.
pub fn proportion(successes: u64, n: u64) -> Option<Proportion> {
    Some(Proportion {
        value: successes as f64 / n as f64,
        successes,
        n,
        ci95: wilson(successes, n, Z95)?,
    })
}

/// Which interval an [`Auc`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AucMethod {
    /// DeLong's standard error and a normal interval clipped to [0, 1].
    Delong,
    /// DeLong's variance is zero: Newcombe's score interval (2006, method
    /// 5), which keeps its coverage at AUC = 0 or 1.
    NewcombeScore,
}

/// ROC AUC with the DeLong standard error and 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Auc {
    /// Area under the ROC curve.
    pub value: f64,
    /// DeLong standard error.
    pub standard_error: f64,
    /// 95 % interval: DeLong's, or the score interval where DeLong's
    /// variance is zero (`method`).
    pub ci95: Interval,
    /// Which interval `ci95` is.
    pub method: AucMethod,
}

/// Newcombe's score interval for the AUC θ (Newcombe 2006, Stat Med
/// 25:559, method 5): the θ with (θ̂ − θ)² = z²·V(θ), V the Hanley–McNeil
/// variance θ(1 − θ)/(mn)·[1 + N*((1 − θ)/(2 − θ) + θ/(1 + θ))] with
/// N* = (m + n)/2 − 1, solved by bisection on each side of θ̂.
pub fn auc_score_interval(auc: f64, positives: usize, negatives: usize) -> Interval {
    let (m, n) = (positives as f64, negatives as f64);
    let n_star = (m + n) / 2.0 - 1.0;
    let variance =
        |t: f64| t * (1.0 - t) / (m * n) * (1.0 + n_star * ((1.0 - t) / (2.0 - t) + t / (1.0 + t)));
    // Positive inside the interval, negative outside.
    let inside = |t: f64| Z95 * Z95 * variance(t) - (auc - t).powi(2);
    let solve = |mut out: f64, mut within: f64| {
        for _ in 0..200 {
            let mid = (out + within) / 2.0;
            if inside(mid) >= 0.0 {
                within = mid;
            } else {
                out = mid;
            }
        }
        within
    };
    Interval {
        lower: if auc <= 0.0 { 0.0 } else { solve(0.0, auc) },
        upper: if auc >= 1.0 { 1.0 } else { solve(1.0, auc) },
    }
}

fn psi(positive: f64, negative: f64) -> f64 {
    if positive > negative {
        1.0
    } else if positive == negative {
        0.5
    } else {
        0.0
    }
}

/// ROC AUC of `scores` for `positive` labels, with DeLong's variance;
/// `None` unless both classes are present.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<Auc> {
    let pos: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, p)| !**p)
        .map(|(s, _)| *s)
        .collect();
    let (m, n) = (pos.len(), neg.len());
    if m == 0 || n == 0 {
        return None;
    }
    // Structural components (DeLong et al. 1988).
    let v10: Vec<f64> = pos
        .iter()
        .map(|x| neg.iter().map(|y| psi(*x, *y)).sum::<f64>() / n as f64)
        .collect();
    let v01: Vec<f64> = neg
        .iter()
        .map(|y| pos.iter().map(|x| psi(*x, *y)).sum::<f64>() / m as f64)
        .collect();
    let auc = v10.iter().sum::<f64>() / m as f64;
    let sample_var = |v: &[f64]| -> f64 {
        if v.len() < 2 {
            return 0.0;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let variance = sample_var(&v10) / m as f64 + sample_var(&v01) / n as f64;
    let se = variance.sqrt();
    let (ci95, method) = if se > 0.0 {
        (
            Interval {
                lower: (auc - Z95 * se).max(0.0),
                upper: (auc + Z95 * se).min(1.0),
            },
            AucMethod::Delong,
        )
    } else {
        (auc_score_interval(auc, m, n), AucMethod::NewcombeScore)
    };
    Some(Auc {
        value: auc,
        standard_error: se,
        ci95,
        method,
    })
}

/// What an operating point is chosen for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Sensitivity at least the target (the highest such threshold).
    Sensitivity,
    /// Specificity at least the target (the lowest such threshold).
    Specificity,
}

/// A decision threshold on one class's probability and its performance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// Which quantity was targeted.
    pub target: Target,
    /// The target value.
    pub target_value: f64,
    /// Positive when the probability is at least this.
    pub threshold: f64,
    /// Sensitivity at the threshold.
    pub sensitivity: Option<Proportion>,
    /// Specificity at the threshold.
    pub specificity: Option<Proportion>,
}

/// The operating point meeting `target` ≥ `value` with the best other
/// quantity: among thresholds on `scores` (positive when score ≥
/// threshold), the highest reaching the sensitivity, or the lowest reaching
/// the specificity. `None` when no threshold reaches it or a class is
/// absent.
pub fn operating_point(
    scores: &[f64],
    positive: &[bool],
    target: Target,
    value: f64,
) -> Option<OperatingPoint> {
    let p = positive.iter().filter(|x| **x).count() as u64;
    let n = positive.len() as u64 - p;
    if p == 0 || n == 0 {
        return None;
    }
    let mut thresholds: Vec<f64> = scores.to_vec();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let at = |t: f64| {
        let tp = scores
            .iter()
            .zip(positive)
            .filter(|(s, y)| **y && **s >= t)
            .count() as u64;
        let tn = scores
            .iter()
            .zip(positive)
            .filter(|(s, y)| !**y && **s < t)
            .count() as u64;
        (tp, tn)
    };
    let chosen = match target {
        // Thresholds from high to low: sensitivity grows; take the first
        // that reaches the target.
        Target::Sensitivity => thresholds
            .iter()
            .copied()
            .find(|t| at(*t).0 as f64 / p as f64 >= value),
        // From low to high: specificity grows.
        Target::Specificity => thresholds
            .iter()
            .rev()
            .copied()
            .find(|t| at(*t).1 as f64 / n as f64 >= value),
    }?;
    let (tp, tn) = at(chosen);
    Some(OperatingPoint {
        target,
        target_value: value,
        threshold: chosen,
        sensitivity: proportion(tp, p),
        specificity: proportion(tn, n),
    })
}

/// Cumulative (true positives, false positives) after each distinct score,
/// highest score first: every threshold's confusion counts.
fn sweep(scores: &[f64], positive: &[bool]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let mut out = Vec::new();
    let (mut tp, mut fp, mut i) = (0usize, 0usize, 0usize);
    while i < order.len() {
        // All samples at this threshold together.
        let threshold = scores[order[i]];
        while i < order.len() && scores[order[i]] == threshold {
            if positive[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((tp, fp));
    }
    out
}

/// Points of the ROC curve (false positive rate, true positive rate) from
/// (0, 0) to (1, 1), one per distinct score; empty unless both classes
/// are present.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let p = positive.iter().filter(|x| **x).count();
    let n = positive.len() - p;
    if p == 0 || n == 0 {
        return Vec::new();
    }
    std::iter::once((0.0, 0.0))
        .chain(
            sweep(scores, positive)
                .into_iter()
                .map(|(tp, fp)| (fp as f64 / n as f64, tp as f64 / p as f64)),
        )
        .collect()
}

/// Points of the precision–recall curve (recall, precision), one per
/// distinct score, highest score first; empty without positives.
pub fn pr_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let p = positive.iter().filter(|x| **x).count();
    if p == 0 {
        return Vec::new();
    }
    sweep(scores, positive)
        .into_iter()
        .map(|(tp, fp)| (tp as f64 / p as f64, tp as f64 / (tp + fp) as f64))
        .collect()
}

/// Average precision (area under the precision–recall curve, step-wise, as
/// scikit-learn); `None` without positives.
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let curve = pr_curve(scores, positive);
    if curve.is_empty() {
        return None;
    }
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for (recall, precision) in curve {
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    Some(ap)
}

/// Mean squared difference between probability and outcome.
pub fn brier(probabilities: &[f64], positive: &[bool]) -> Option<f64> {
    if probabilities.is_empty() {
        return None;
    }
    let sum: f64 = probabilities
        .iter()
        .zip(positive)
        .map(|(p, y)| (p - if *y { 1.0 } else { 0.0 }).powi(2))
        .sum();
    Some(sum / probabilities.len() as f64)
}

/// One bin of a reliability curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationBin {
    /// Mean predicted probability in the bin.
    pub predicted: f64,
    /// Fraction of positives in the bin.
    pub observed: f64,
    /// Samples in the bin.
    pub count: u64,
}

/// Reliability curve with `bins` uniform bins on [0, 1] (empty bins left
/// out), as `sklearn.calibration.calibration_curve(strategy="uniform")`.
pub fn calibration_curve(
    probabilities: &[f64],
    positive: &[bool],
    bins: usize,
) -> Vec<CalibrationBin> {
    let bins = bins.max(1);
    let edges: Vec<f64> = (0..=bins).map(|i| i as f64 / bins as f64).collect();
    let inner = &edges[1..bins];
    let mut sums = vec![(0.0f64, 0.0f64, 0u64); bins];
    for (p, y) in probabilities.iter().zip(positive) {
        // numpy.searchsorted(inner, p, side="left")
        let bin = inner.partition_point(|edge| *edge < *p);
        let entry = &mut sums[bin];
        entry.0 += p;
        entry.1 += if *y { 1.0 } else { 0.0 };
        entry.2 += 1;
    }
    sums.into_iter()
        .filter(|s| s.2 > 0)
        .map(|(p, y, n)| CalibrationBin {
            predicted: p / n as f64,
            observed: y / n as f64,
            count: n,
        })
        .collect()
}

/// Performance for one class against the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Class label.
    pub label: String,
    /// Cases of this class (ground truth).
    pub support: u64,
    /// True positives, false positives, false negatives, true negatives.
    pub tp_fp_fn_tn: [u64; 4],
    /// TP / (TP + FN).
    pub sensitivity: Option<Proportion>,
    /// TN / (TN + FP).
    pub specificity: Option<Proportion>,
    /// TP / (TP + FP).
    pub ppv: Option<Proportion>,
    /// TN / (TN + FN).
    pub npv: Option<Proportion>,
    /// 2TP / (2TP + FP + FN).
    pub f1: Option<f64>,
    /// One-vs-rest ROC AUC of this class's probability.
    pub roc_auc: Option<Auc>,
    /// One-vs-rest average precision.
    pub pr_auc: Option<f64>,
    /// One-vs-rest Brier score of this class's probability.
    pub brier: Option<f64>,
    /// Reliability curve of this class's probability (10 bins).
    pub calibration: Vec<CalibrationBin>,
    /// ROC curve points (FPR, TPR).
    pub roc_curve: Vec<(f64, f64)>,
    /// Precision–recall curve points (recall, precision).
    pub pr_curve: Vec<(f64, f64)>,
}

/// Performance of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    /// Cases.
    pub n: u64,
    /// Labels, in the order of the matrix.
    pub labels: Vec<String>,
    /// Confusion matrix: rows ground truth, columns decision.
    pub confusion: Vec<Vec<u64>>,
    /// Correct decisions / cases.
    pub accuracy: Option<Proportion>,
    /// Mean sensitivity over the classes present.
    pub balanced_accuracy: Option<f64>,
    /// Cohen's kappa between decisions and ground truth.
    pub cohen_kappa: Option<f64>,
    /// Per class, one-vs-rest.
    pub classes: Vec<ClassMetrics>,
}

/// The metrics of decisions `predicted` against `truth` (class indices into
/// `labels`), with each case's class `probabilities` (one row per case).
pub fn classification(
    labels: &[String],
    truth: &[usize],
    predicted: &[usize],
    probabilities: &[Vec<f64>],
) -> ClassificationMetrics {
    let k = labels.len();
    let n = truth.len().min(predicted.len());
    let mut confusion = vec![vec![0u64; k]; k];
    for (t, p) in truth.iter().zip(predicted) {
        if *t < k && *p < k {
            confusion[*t][*p] += 1;
        }
    }
    let total: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    let row = |i: usize| confusion[i].iter().sum::<u64>();
    let col = |j: usize| confusion.iter().map(|r| r[j]).sum::<u64>();
    let mut classes = Vec::new();
    let mut recalls = Vec::new();
    for (c, label) in labels.iter().enumerate() {
        let tp = confusion[c][c];
        let fn_ = row(c) - tp;
        let fp = col(c) - tp;
        let tn = total - tp - fn_ - fp;
        let sensitivity = proportion(tp, tp + fn_);
        if let Some(s) = sensitivity {
            recalls.push(s.value);
        }
        let positive: Vec<bool> = truth.iter().map(|t| *t == c).collect();
        let scores: Vec<f64> = probabilities
            .iter()
            .map(|p| p.get(c).copied().unwrap_or(0.0))
            .collect();
        classes.push(ClassMetrics {
            label: label.clone(),
            support: tp + fn_,
            tp_fp_fn_tn: [tp, fp, fn_, tn],
            sensitivity,
            specificity: proportion(tn, tn + fp),
            ppv: proportion(tp, tp + fp),
            npv: proportion(tn, tn + fn_),
            f1: (2 * tp + fp + fn_ > 0).then(|| 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64),
            roc_auc: roc_auc(&scores, &positive),
            pr_auc: average_precision(&scores, &positive),
            brier: brier(&scores, &positive),
            calibration: calibration_curve(&scores, &positive, 10),
            roc_curve: roc_curve(&scores, &positive),
            pr_curve: pr_curve(&scores, &positive),
        });
    }
    let kappa = (total > 0).then(|| {
        let t = total as f64;
        let po = correct as f64 / t;
        let pe: f64 = (0..k).map(|i| row(i) as f64 * col(i) as f64).sum::<f64>() / (t * t);
        if (1.0 - pe).abs() < f64::EPSILON {
            // Perfect chance agreement: kappa is undefined; scikit-learn
            // returns NaN, and so do we.
            f64::NAN
        } else {
            (po - pe) / (1.0 - pe)
        }
    });
    ClassificationMetrics {
        n: n as u64,
        labels: labels.to_vec(),
        confusion,
        accuracy: proportion(correct, total),
        balanced_accuracy: (!recalls.is_empty())
            .then(|| recalls.iter().sum::<f64>() / recalls.len() as f64),
        cohen_kappa: kappa,
        classes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_worked_examples() {
        // Newcombe (1998), Table I: 81/263 → 0.2553–0.3662; 15/148 →
        // 0.0624–0.1605; 0/20 → 0.0000–0.1611; 1/29 → 0.0061–0.1718.
        for (k, n, lo, hi) in [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ] {
            let ci = wilson(k, n, Z95).unwrap();
            assert!((ci.lower - lo).abs() < 5e-5, "{k}/{n}: {ci:?}");
            assert!((ci.upper - hi).abs() < 5e-5, "{k}/{n}: {ci:?}");
        }
        // 17/17: the demo dataset's accuracy.
        let ci = wilson(17, 17, Z95).unwrap();
        assert!((ci.lower - 0.81566).abs() < 5e-5, "{ci:?}");
        assert_eq!(ci.upper, 1.0);
        assert!(wilson(1, 0, Z95).is_none());
    }

    #[test]
    fn curves_run_from_corner_to_corner_and_match_the_auc() {
        let scores = [0.9, 0.8, 0.8, 0.4, 0.3, 0.1];
        let positive = [true, false, true, true, false, false];
        let roc = roc_curve(&scores, &positive);
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        // Trapezoidal area under the points equals the Mann-Whitney AUC.
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - roc_auc(&scores, &positive).unwrap().value).abs() < 1e-12);
        let pr = pr_curve(&scores, &positive);
        assert_eq!(pr[0], (1.0 / 3.0, 1.0));
        assert_eq!(pr.last().map(|p| p.0), Some(1.0));
    }

    #[test]
    fn operating_points_meet_their_target_with_the_best_other_quantity() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2];
        let positive = [true, true, false, true, false, true, false, false];
        let op = operating_point(&scores, &positive, Target::Sensitivity, 0.75).unwrap();
        assert_eq!(op.threshold, 0.6);
        assert_eq!(op.sensitivity.unwrap().successes, 3);
        assert_eq!(op.specificity.unwrap().successes, 3);
        let op = operating_point(&scores, &positive, Target::Specificity, 1.0).unwrap();
        assert_eq!(op.threshold, 0.8);
        assert_eq!(op.sensitivity.unwrap().successes, 2);
        assert!(operating_point(&scores, &positive, Target::Sensitivity, 1.1).is_none());
    }

    #[test]
    fn a_perfect_classifier_has_auc_one_and_zero_variance() {
        let auc = roc_auc(&[0.9, 0.8, 0.3, 0.1], &[true, true, false, false]).unwrap();
        assert_eq!(auc.value, 1.0);
        assert_eq!(auc.standard_error, 0.0);
        // DeLong's interval would be 1.000–1.000: the score interval is
        // given instead, and says so.
        assert_eq!(auc.method, AucMethod::NewcombeScore);
        assert!(auc.ci95.lower < 0.9 && auc.ci95.upper == 1.0, "{auc:?}");
        assert_eq!(
            average_precision(&[0.9, 0.8, 0.3], &[true, true, false]),
            Some(1.0)
        );
        assert!(roc_auc(&[0.1], &[true]).is_none());
    }
}
