//! The post-market surveillance report on a synthetic month of audited
//! inferences and reviews: 40 inferences a day for 30 days; from day 20 a
//! new scanner vendor takes most of the traffic with brighter images, and
//! the radiologists reject more results. The drift must be detected in the
//! periods after day 20 and in none before; the agreement and interval
//! figures must equal scipy's.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use vigie_audit::AuditRecord;
use vigie_validation::pms::{self, Period, PmsOptions, ReviewInput};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn record(
    seq: i64,
    kind: &str,
    outcome: &str,
    at: chrono::DateTime<Utc>,
    sop: &str,
    details: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        seq,
        timestamp: at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        appliance: "vigie-test".into(),
        software_version: "0.1.0".into(),
        git_commit: "x".into(),
        kind: kind.into(),
        outcome: outcome.into(),
        study_instance_uid: Some("1.2".into()),
        sop_instance_uid: Some(sop.into()),
        model_id: Some("brain-tumour-vgg16".into()),
        model_version: Some("0.1.1".into()),
        details: details.to_string(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

const LABELS: [&str; 4] = ["glioma", "meningioma", "notumor", "pituitary"];

/// The month: records and reviews.
fn month() -> (Vec<AuditRecord>, Vec<ReviewInput>) {
    let start = Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).unwrap(); // a Monday
    let mut rng = Rng(0x5EED);
    let mut records = Vec::new();
    let mut reviews = Vec::new();
    let mut seq = 0;
    for day in 0..30 {
        for i in 0..40 {
            let at = start + Duration::days(day) + Duration::minutes(i * 10);
            let drifted = day >= 19;
            let job = day * 100 + i;
            let source = format!("1.2.{job}.1");
            seq += 1;
            if day == 4 && i == 0 {
                // A first attempt that failed; the job's next attempt
                // (below) is the case.
                records.push(record(
                    seq,
                    "inference",
                    "failed",
                    at,
                    &source,
                    json!({
                        "job_id": job, "rule": "brain-mr", "error": "worker stopped: interrupted",
                    }),
                ));
                seq += 1;
            } else if rng.next() < 0.02 {
                records.push(record(seq, "inference", "failed", at, &source, json!({
                    "job_id": job, "rule": "brain-mr", "error": "cannot decode pixel data: truncated",
                })));
                continue;
            }
            let vendor = if drifted && rng.next() < 0.7 {
                "NEWVENDOR"
            } else {
                "SIEMENS"
            };
            let intensity = 0.3 + 0.1 * rng.next() + if drifted { 0.25 } else { 0.0 };
            let decision = LABELS[(rng.next() * 4.0) as usize % 4];
            let p = 0.6 + 0.4 * rng.next();
            let mut probabilities = [0.0; 4];
            for (k, l) in LABELS.iter().enumerate() {
                probabilities[k] = if *l == decision { p } else { (1.0 - p) / 3.0 };
            }
            records.push(record(seq, "inference", "ok", at, &source, json!({
                "job_id": job,
                "rule": "brain-mr",
                "decision": decision,
                "decode_ms": 1.0,
                "frames": [{"finding": {"kind": "classification", "labels": LABELS, "probabilities": probabilities, "decision": decision, "rule": "argmax"},
                            "timings_ms": {"preprocess": 2.0, "inference": 20.0 + 10.0 * rng.next(), "postprocess": 0.1}}],
                "population": {"calling_ae_title": "MODALITY", "manufacturer": vendor, "model_name": "Skyra",
                               "body_part": "BRAIN", "sex": if rng.next() < 0.5 { "F" } else { "M" }, "age_band": "40-49",
                               "intensity": {"mean": intensity}},
            })));
            let sr = format!("2.25.{job}");
            seq += 1;
            records.push(record(
                seq,
                "result_created",
                "ok",
                at,
                &sr,
                json!({
                    "job_id": job, "kind": "sr", "source_sop_instance_uid": source,
                }),
            ));
            if rng.next() < 0.5 {
                let accept = rng.next() < if drifted { 0.6 } else { 0.92 };
                let id = reviews.len() as i64 + 1;
                let (verdict, label) = if accept {
                    ("accept", None)
                } else if rng.next() < 0.5 {
                    ("reject", None)
                } else {
                    let other = LABELS.iter().find(|l| **l != decision).unwrap();
                    ("correct", Some(other.to_string()))
                };
                reviews.push(ReviewInput {
                    id,
                    result_sop_instance_uid: sr,
                    verdict: verdict.into(),
                    label,
                    reviewer: "Dr A".into(),
                    authenticated_as: "dr-a".into(),
                    recorded_ms: (at + Duration::hours(2)).timestamp_millis(),
                    counts: true,
                });
            }
        }
    }
    // A validation run's inference never counts.
    seq += 1;
    records.push(record(
        seq,
        "inference",
        "ok",
        start + Duration::days(3),
        "9.9",
        json!({"job_id": -1, "rule": "validation"}),
    ));
    (records, reviews)
}

#[test]
fn drift_from_day_20_is_detected_after_it_and_not_before_and_figures_match_scipy() {
    let (records, reviews) = month();
    let options = PmsOptions {
        model: "brain-tumour-vgg16".into(),
        version: None,
        from: Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
        to: Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap(),
        period: Period::Week,
        reference: None,
        reviews_until: Utc.with_ymd_and_hms(2026, 7, 8, 0, 0, 0).unwrap(),
    };
    let (cases, validation, unmatched) = pms::cases(&records, &reviews, &options);
    assert_eq!(validation, 1);
    assert_eq!(unmatched, 0);
    let report = pms::report(&cases, validation, unmatched, &options);
    assert_eq!(report.volume, 1200);
    assert_eq!(report.periods.len(), 5, "weeks of June 2026");
    // Drift starts on 20 June (a Saturday): the week of 15 June holds two
    // drifted days, the weeks of 22 and 29 June are all drifted.
    let drifted = |week: &str| {
        report
            .alarms
            .iter()
            .filter(|a| a.period.to_string() == week)
            .map(|a| a.indicator.clone())
            .collect::<Vec<_>>()
    };
    for week in ["2026-06-01", "2026-06-08"] {
        assert!(drifted(week).is_empty(), "{week}: {:?}", drifted(week));
    }
    for week in ["2026-06-22", "2026-06-29"] {
        let alarms = drifted(week);
        assert!(
            alarms.contains(&"input_drift:manufacturer".to_string()),
            "{week}: {alarms:?}"
        );
        assert!(
            alarms.contains(&"intensity_drift".to_string()),
            "{week}: {alarms:?}"
        );
        assert!(
            alarms.contains(&"agreement".to_string()),
            "{week}: {alarms:?}"
        );
        assert!(
            !alarms.contains(&"input_drift:sex".to_string()),
            "no drift in sex: {alarms:?}"
        );
    }
    let before = &report.periods[0].drift;
    assert!(before.measured);
    assert!(
        before.input["manufacturer"] < 1e-9,
        "the reference against itself"
    );
    // Figures against scipy: the agreement and reviewed fractions of the
    // window and of each week.
    let mut asked = Vec::new();
    let mut ours = Vec::new();
    for a in std::iter::once(&report.agreement).chain(report.periods.iter().map(|p| &p.agreement)) {
        for p in [a.agreement.unwrap(), a.reviewed.unwrap()] {
            asked.push(format!("{}/{}", p.successes, p.n));
            ours.push((p.ci95.lower, p.ci95.upper));
        }
    }
    let out = vigie_test_support::oracle("wilson_scipy.py", &asked);
    let scipy: Vec<(f64, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    for ((a, s), what) in ours.iter().zip(&scipy).zip(&asked) {
        assert!(
            (a.0 - s.0).abs() < 1e-9 && (a.1 - s.1).abs() < 1e-9,
            "{what}: {a:?} vs scipy {s:?}"
        );
    }
    // The counts themselves, from the cases.
    let reviewed: Vec<_> = cases
        .iter()
        .filter(|c| c.verdict.is_some() && c.failure.is_none())
        .collect();
    let accepted = reviewed
        .iter()
        .filter(|c| c.verdict.as_deref() == Some("accept"))
        .count();
    let agreement = report.agreement.agreement.unwrap();
    assert_eq!(
        (agreement.successes, agreement.n),
        (accepted as u64, reviewed.len() as u64)
    );
    assert_eq!(reviewed.len(), reviews.len());
    // Subgroups: the new vendor's agreement is below the old one's.
    let vendors = &report.subgroups["manufacturer"];
    assert!(
        vendors["NEWVENDOR"].agreement.agreement.unwrap().value
            < vendors["SIEMENS"].agreement.agreement.unwrap().value
    );
    assert_eq!(
        report.failures.keys().collect::<Vec<_>>(),
        ["cannot decode pixel data"],
        "the retried job's failed attempt is not a case"
    );
    assert_eq!(cases.iter().filter(|c| c.in_window).count(), 1200);
    let latency = report.latency_ms.unwrap();
    assert!(latency[0] > 23.0 && latency[2] < 34.0, "{latency:?}");
    // The control limits are the exact binomial ones (scipy's ppf and isf
    // at 0.00135); one rejection out of one review is no alarm.
    let pairs = [
        (1u64, 0.95f64),
        (20, 0.9),
        (100, 0.95),
        (400, 0.5),
        (50, 0.02),
    ];
    let asked: Vec<String> = pairs.iter().map(|(n, p)| format!("{n}/{p}")).collect();
    let out = vigie_test_support::oracle("binom_limits_scipy.py", &asked);
    let scipy: Vec<(f64, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    for ((n, p), s) in pairs.iter().zip(&scipy) {
        let (lo, hi) = pms::control_limits(*p, *n).unwrap();
        assert_eq!(
            ((lo * *n as f64).round(), (hi * *n as f64).round()),
            *s,
            "n={n} p={p}"
        );
    }
    assert_eq!(pms::control_limits(0.95, 1).unwrap().0, 0.0);
    // Every case is a row of cases.csv, with its audit sequence number.
    let csv = pms::cases_csv(&cases);
    assert_eq!(csv.lines().count(), cases.len() + 1);
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{},", cases[0].seq))
    );
}
