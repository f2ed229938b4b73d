//! `vigie pms report`: the post-market surveillance report of a model
//! (`vigie_validation::pms`), from an appliance's audit trail and reviews,
//! written as JSON, Markdown, HTML, the cases behind every figure (CSV) and
//! Prometheus metrics; the report and each alarm recorded in the trail;
//! the metrics left in the data directory for `vigie serve`'s `/metrics`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use sha2::Digest;

use super::audit::{data_dir, open_existing, record_access, time_bound, who};
use super::import_dicom::open_catalog_as_is;
use crate::cli::PmsReportArgs;
use crate::config::Config;
use vigie_audit::{AuditEvent, AuditLog, EventKind, Query};
use vigie_store::{ReviewFilter, Reviews};
use vigie_validation::pms::{self, Period, PmsOptions, ReviewInput};

fn time(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(chrono::DateTime::parse_from_rfc3339(&time_bound(text)?)?.with_timezone(&chrono::Utc))
}

/// Where `vigie serve` finds the metrics of a model's latest report.
pub fn metrics_file(data: &Path, model: &str) -> std::path::PathBuf {
    let safe: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    data.join("pms").join(format!("{safe}.prom"))
}

/// Every review of the appliance (paged).
fn reviews(dir: &Path) -> anyhow::Result<Vec<ReviewInput>> {
    let catalog = open_catalog_as_is(dir)?;
    let mut out = Vec::new();
    loop {
        let page = catalog.reviews(&ReviewFilter {
            limit: 10_000,
            offset: out.len(),
            ..ReviewFilter::default()
        })?;
        let done = page.len() < 10_000;
        out.extend(page.into_iter().map(|r| ReviewInput {
            id: r.id,
            result_sop_instance_uid: r.review.result_sop_instance_uid,
            verdict: r.review.verdict.as_str().into(),
            label: r.review.label,
            reviewer: r.review.reviewer,
            authenticated_as: r.review.authenticated_as,
            recorded_ms: r.recorded_ms,
            counts: r.counts,
        }));
        if done {
            return Ok(out);
        }
    }
}

/// `vigie pms report`.
pub fn report(config: &Config, args: PmsReportArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let dir = data_dir(config, args.data_dir.as_ref());
    let period = match args.period.as_str() {
        "week" => Period::Week,
        "month" => Period::Month,
        other => bail!("--period {other:?}: week or month"),
    };
    let options = PmsOptions {
        model: args.model.clone(),
        version: args.version.clone(),
        from: time(&args.from)?,
        to: time(&args.to)?,
        period,
        reference: match (&args.reference_from, &args.reference_to) {
            (Some(a), Some(b)) => Some((time(a)?, time(b)?)),
            _ => None,
        },
        reviews_until: match &args.reviews_until {
            Some(t) => time(t)?,
            None => chrono::Utc::now(),
        },
    };
    if options.to <= options.from {
        bail!("--to must be after --from");
    }
    if let Some((a, b)) = options.reference
        && b <= a
    {
        bail!("--reference-to must be after --reference-from");
    }
    let audit = open_existing(config, &dir)?;
    let reference = pms::reference_window(&options);
    let from = options.from.min(reference.0);
    let to = options.to.max(reference.1);
    let mut records = Vec::new();
    // A result record follows its inference record by microseconds: an
    // hour past the window's end finds those of its last inferences.
    for (kind, to) in [
        ("inference", to),
        ("result_created", to + chrono::Duration::hours(1)),
    ] {
        records.extend(audit.records(&Query {
            from: Some(from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            to: Some(to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            kind: Some(kind.into()),
            model_id: Some(args.model.clone()),
            ..Query::default()
        })?);
    }
    records.sort_by_key(|r| r.seq);
    let reviews = reviews(&dir)?;
    let (cases, validation, unmatched) = pms::cases(&records, &reviews, &options);
    let report = pms::report(&cases, validation, unmatched, &options);
    let generated = chrono::Utc::now();
    let prometheus = pms::prometheus(&report, generated);
    let outputs = [
        ("report.json", serde_json::to_string_pretty(&report)?),
        ("pms.md", vigie_validation::report::pms::markdown(&report)),
        ("pms.html", vigie_validation::report::pms::html(&report)),
        ("cases.csv", pms::cases_csv(&cases)),
        ("pms.prom", prometheus.clone()),
    ];
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut hashes = serde_json::Map::new();
    for (name, text) in &outputs {
        let path = args.out.join(name);
        vigie_dicom_io::write::write_durably(&path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        hashes.insert(
            (*name).into(),
            hex::encode(sha2::Sha256::digest(text.as_bytes())).into(),
        );
    }
    // For `vigie serve`'s /metrics; best effort when the data directory
    // is not writable by this user (the report itself is written).
    let metrics = metrics_file(&dir, &args.model);
    let kept = metrics
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .map_err(|e| e.to_string())
        .and_then(|_| {
            vigie_dicom_io::write::write_durably(&metrics, |w| w.write_all(prometheus.as_bytes()))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = &kept {
        eprintln!(
            "warning: {} not written ({e}): vigie serve will not expose this report's vigie_pms_* metrics",
            metrics.display()
        );
    }
    let mut events = vec![
        AuditEvent::new(
            EventKind::PmsReported,
            "ok",
            serde_json::json!({
                "who": who(),
                "from": report.from,
                "to": report.to,
                "period": report.period,
                "reference": report.reference,
                "reviews_until": options.reviews_until.to_rfc3339(),
                "volume": report.volume,
                "reviews": reviews.len(),
                "alarms": report.alarms.len(),
                "outputs": hashes,
                "out": args.out,
            }),
        )
        .model(&args.model, args.version.as_deref().unwrap_or("")),
    ];
    for alarm in &report.alarms {
        events.push(
            AuditEvent::new(
                EventKind::PmsAlarm,
                "raised",
                serde_json::json!({
                    "indicator": alarm.indicator,
                    "period": alarm.period,
                    "value": alarm.value,
                    "threshold": alarm.threshold,
                    "action": alarm.action,
                }),
            )
            .model(&args.model, args.version.as_deref().unwrap_or("")),
        );
    }
    for event in events {
        record_access(config, &audit, event)?;
    }
    eprintln!(
        "post-market surveillance report of {} from {} to {}: {} inferences, {} reviewed, {} alarm(s); written to {} in {:.1} s",
        args.model,
        report.from,
        report.to,
        report.volume,
        report.agreement.reviewed.map(|p| p.successes).unwrap_or(0),
        report.alarms.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    for alarm in &report.alarms {
        eprintln!(
            "ALARM {} {}: {:.3} (threshold {:.3}): {}",
            alarm.period, alarm.indicator, alarm.value, alarm.threshold, alarm.action
        );
    }
    Ok(if report.alarms.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
