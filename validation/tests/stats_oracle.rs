//! The statistics of `vigie_validation::stats` against scikit-learn and
//! scipy on randomized predictions (ties included): equal within 1e-9.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use vigie_validation::stats::{Proportion, classification};

/// A small deterministic generator (xorshift64*), so the test is
/// reproducible without a random-number dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9, "{what}: vigie {a} vs oracle {b}");
}

fn check_proportion(ours: &Option<Proportion>, theirs: &serde_json::Value, what: &str) {
    match (ours, theirs.as_array()) {
        (None, None) => {}
        (Some(p), Some(t)) => {
            close(p.value, t[0].as_f64().unwrap(), what);
            close(
                p.ci95.lower,
                t[1].as_f64().unwrap(),
                &format!("{what} lower"),
            );
            close(
                p.ci95.upper,
                t[2].as_f64().unwrap(),
                &format!("{what} upper"),
            );
        }
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn classification_metrics_match_scikit_learn_and_scipy() {
    let labels: Vec<String> = ["glioma", "meningioma", "notumor"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for seed in [1u64, 7, 42] {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let n = 150 + (seed as usize % 50);
        let mut truth = Vec::new();
        let mut predicted = Vec::new();
        let mut probabilities = Vec::new();
        for _ in 0..n {
            let t = (rng.next() * 3.0) as usize % 3;
            // Informative but imperfect scores, rounded so that ties occur.
            let mut logits: Vec<f64> = (0..3).map(|_| rng.next() * 2.0).collect();
            logits[t] += 1.2;
            let sum: f64 = logits.iter().map(|l| l.exp()).sum();
            let p: Vec<f64> = logits
                .iter()
                .map(|l| ((l.exp() / sum) * 50.0).round() / 50.0)
                .collect();
            let decided = (0..3).max_by(|a, b| p[*a].total_cmp(&p[*b])).unwrap();
            truth.push(t);
            predicted.push(decided);
            probabilities.push(p);
        }
        let ours = classification(&labels, &truth, &predicted, &probabilities);
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("predictions.json");
        std::fs::write(
            &input,
            serde_json::json!({
                "labels": labels, "truth": truth, "predicted": predicted,
                "probabilities": probabilities,
            })
            .to_string(),
        )
        .unwrap();
        let out = vigie_test_support::oracle("classification_metrics.py", [&input]);
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(serde_json::json!(ours.confusion), theirs["confusion"]);
        check_proportion(&ours.accuracy, &theirs["accuracy"], "accuracy");
        close(
            ours.balanced_accuracy.unwrap(),
            theirs["balanced_accuracy"].as_f64().unwrap(),
            "balanced accuracy",
        );
        close(
            ours.cohen_kappa.unwrap(),
            theirs["cohen_kappa"].as_f64().unwrap(),
            "kappa",
        );
        for (c, class) in ours.classes.iter().enumerate() {
            let t = &theirs["classes"][c];
            let what = |m: &str| format!("seed {seed} class {} {m}", class.label);
            check_proportion(&class.sensitivity, &t["sensitivity"], &what("sensitivity"));
            check_proportion(&class.specificity, &t["specificity"], &what("specificity"));
            check_proportion(&class.ppv, &t["ppv"], &what("ppv"));
            check_proportion(&class.npv, &t["npv"], &what("npv"));
            close(class.f1.unwrap(), t["f1"].as_f64().unwrap(), &what("f1"));
            let auc = class.roc_auc.unwrap();
            close(auc.value, t["roc_auc"].as_f64().unwrap(), &what("roc auc"));
            close(
                auc.standard_error,
                t["roc_auc_se"].as_f64().unwrap(),
                &what("delong se"),
            );
            close(
                class.pr_auc.unwrap(),
                t["pr_auc"].as_f64().unwrap(),
                &what("average precision"),
            );
            close(
                class.brier.unwrap(),
                t["brier"].as_f64().unwrap(),
                &what("brier"),
            );
            let observed: Vec<f64> = class.calibration.iter().map(|b| b.observed).collect();
            let predicted: Vec<f64> = class.calibration.iter().map(|b| b.predicted).collect();
            let t_obs: Vec<f64> = t["calibration_true"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let t_pred: Vec<f64> = t["calibration_pred"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(observed.len(), t_obs.len(), "{}", what("calibration bins"));
            for (a, b) in observed
                .iter()
                .zip(&t_obs)
                .chain(predicted.iter().zip(&t_pred))
            {
                close(*a, *b, &what("calibration"));
            }
        }
    }
}

#[test]
fn segmentation_metrics_match_medpy_definitions_on_scipy() {
    use vigie_validation::segmentation::{Mask, score};
    let mut rng = Rng(0x5EED_0001);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for i in 0..12 {
        let (rows, columns) = (24 + i % 5, 30 + (i * 3) % 7);
        // Blobs: union of random disks, with noise, some touching the edge.
        let blob = |rng: &mut Rng| -> Vec<bool> {
            let disks: Vec<(f64, f64, f64)> = (0..3)
                .map(|_| {
                    (
                        rng.next() * rows as f64,
                        rng.next() * columns as f64,
                        2.0 + rng.next() * 6.0,
                    )
                })
                .collect();
            (0..rows * columns)
                .map(|k| {
                    let (r, c) = ((k / columns) as f64, (k % columns) as f64);
                    disks
                        .iter()
                        .any(|(cr, cc, rad)| (r - cr).powi(2) + (c - cc).powi(2) <= rad * rad)
                        || rng.next() < 0.01
                })
                .collect()
        };
        let prediction = blob(&mut rng);
        let reference = if i == 11 {
            vec![false; rows * columns]
        } else {
            blob(&mut rng)
        };
        let spacing = (0.5 + rng.next(), 0.5 + rng.next());
        ours.push(
            score(
                &Mask {
                    rows,
                    columns,
                    data: &prediction,
                },
                &Mask {
                    rows,
                    columns,
                    data: &reference,
                },
                spacing,
            )
            .unwrap(),
        );
        let bits = |v: &[bool]| v.iter().map(|b| u8::from(*b)).collect::<Vec<u8>>();
        cases.push(serde_json::json!({
            "rows": rows, "columns": columns, "prediction": bits(&prediction),
            "reference": bits(&reference), "spacing": [spacing.0, spacing.1],
        }));
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("masks.json");
    std::fs::write(&input, serde_json::Value::Array(cases).to_string()).unwrap();
    let out = vigie_test_support::oracle("segmentation_metrics.py", [&input]);
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        close(
            o.dice,
            t["dice"].as_f64().unwrap(),
            &format!("case {i} dice"),
        );
        close(o.iou, t["iou"].as_f64().unwrap(), &format!("case {i} iou"));
        match (o.hd95_mm, t["hd95"].as_f64()) {
            (Some(a), Some(b)) => close(a, b, &format!("case {i} hd95")),
            (None, None) => {}
            other => panic!("case {i} hd95: {other:?}"),
        }
        match (o.assd_mm, t["assd"].as_f64()) {
            (Some(a), Some(b)) => close(a, b, &format!("case {i} assd")),
            (None, None) => {}
            other => panic!("case {i} assd: {other:?}"),
        }
    }
    assert!(
        ours[11].hd95_mm.is_none(),
        "an empty reference has no surface distance"
    );
}

/// Newcombe's paired interval (method 10) against the paper's formula on
/// scipy's Wilson intervals, on random 2×2 tables, empty margins and
/// tables without discordant pairs included: equal within 1e-9.
#[test]
fn paired_difference_interval_matches_the_oracle() {
    let mut rng = Rng(0x9A1D);
    let mut tables: Vec<[u64; 4]> = vec![
        [36, 12, 2, 0],
        [17, 0, 0, 0],
        [0, 0, 0, 5],
        [0, 3, 0, 0],
        [5, 5, 0, 0],
        [200, 0, 0, 0],
    ];
    for _ in 0..200 {
        let pick = |rng: &mut Rng, max: f64| (rng.next() * max) as u64;
        tables.push([
            pick(&mut rng, 60.0),
            pick(&mut rng, 8.0),
            pick(&mut rng, 8.0),
            pick(&mut rng, 20.0),
        ]);
    }
    tables.retain(|t| t.iter().sum::<u64>() > 0);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tables.json");
    std::fs::write(&input, serde_json::to_vec(&tables).unwrap()).unwrap();
    let out = vigie_test_support::oracle("paired_difference.py", [&input]);
    let theirs: Vec<[f64; 3]> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), tables.len());
    for (t, oracle) in tables.iter().zip(&theirs) {
        let ours = vigie_validation::compare::newcombe_paired(t[0], t[1], t[2], t[3]).unwrap();
        let n = t.iter().sum::<u64>() as f64;
        close(
            (t[1] as f64 - t[2] as f64) / n,
            oracle[0],
            &format!("{t:?} difference"),
        );
        close(ours.lower, oracle[1], &format!("{t:?} lower"));
        close(ours.upper, oracle[2], &format!("{t:?} upper"));
    }
}

/// The AUC's score interval (Newcombe 2006, method 5), used where DeLong's
/// variance is zero, against the paper's formula solved by scipy's brentq:
/// at AUC = 1 and 0 and inside, equal within 1e-9.
#[test]
fn auc_score_interval_matches_the_oracle() {
    let cases: Vec<(f64, usize, usize)> = vec![
        (1.0, 4, 13),
        (1.0, 1, 1),
        (1.0, 50, 50),
        (0.0, 6, 11),
        (0.9, 20, 30),
        (0.5, 10, 10),
        (0.75, 3, 40),
    ];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("aucs.json");
    std::fs::write(&input, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = vigie_test_support::oracle("auc_score_interval.py", [&input]);
    let theirs: Vec<[f64; 2]> = serde_json::from_slice(&out.stdout).unwrap();
    for ((auc, m, n), oracle) in cases.iter().zip(&theirs) {
        let ours = vigie_validation::stats::auc_score_interval(*auc, *m, *n);
        close(ours.lower, oracle[0], &format!("{auc} {m}x{n} lower"));
        close(ours.upper, oracle[1], &format!("{auc} {m}x{n} upper"));
    }
    // A perfect separation of 4 positives and 13 negatives (a class of the
    // demo dataset) is not "1.000 to 1.000".
    let perfect = vigie_validation::stats::auc_score_interval(1.0, 4, 13);
    assert!(perfect.lower < 0.95, "{perfect:?}");
}
