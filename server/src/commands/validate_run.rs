//! `vigie validate run`: the performance of a classification model package
//! on a labelled dataset, through the production analysis function, with
//! 95 % intervals, latency and failures, written as `report.json` and
//! `report.md`, every inference recorded in the audit trail.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use sha2::Digest;
use vigie_inference::manifest::OutputKind;
use vigie_inference::postprocess::Finding;
use vigie_validation::dataset::Dataset;
use vigie_validation::pipeline;
use vigie_validation::stats::{self, ClassificationMetrics, Proportion};

use crate::audit::{Audit, AuditEvent, GIT_COMMIT, SOFTWARE_VERSION};
use crate::cli::RunArgs;
use crate::config::Config;

#[derive(Debug, Serialize)]
struct Case {
    subgroups: BTreeMap<String, String>,
    study_instance_uid: String,
    file: PathBuf,
    file_sha256: String,
    pixels_sha256: String,
    truth: String,
    decision: String,
    probabilities: Vec<f64>,
    correct: bool,
    audit_record: i64,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    mean: f64,
}

/// Add one result's stage timings to the latency samples.
fn record_timings(stages: &mut BTreeMap<&str, Vec<f64>>, t: &vigie_inference::model::StageTimings) {
    stages
        .entry("preprocess")
        .or_default()
        .push(t.preprocess_ms);
    stages.entry("inference").or_default().push(t.inference_ms);
    stages
        .entry("postprocess")
        .or_default()
        .push(t.postprocess_ms);
}

/// A subgroup of report.json as the tables show it: attribute, value, n,
/// accuracy, and the metrics below the claim.
pub(super) fn subgroup_row(
    g: &serde_json::Value,
) -> (&str, &str, u64, Option<Proportion>, Vec<&str>) {
    let accuracy = serde_json::from_value::<Option<Proportion>>(g["metrics"]["accuracy"].clone())
        .ok()
        .flatten();
    let flags = g["below_claim"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    (
        g["attribute"].as_str().unwrap_or(""),
        g["value"].as_str().unwrap_or(""),
        g["n"].as_u64().unwrap_or(0),
        accuracy,
        flags,
    )
}

/// Percentiles by linear interpolation between order statistics (numpy's
/// default).
fn latency(mut values: Vec<f64>) -> Latency {
    if values.is_empty() {
        return Latency::default();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    Latency {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        mean: values.iter().sum::<f64>() / values.len() as f64,
    }
}

fn pct(p: &Option<Proportion>) -> String {
    match p {
        Some(p) => format!(
            "{:.3} ({}/{}; 95% CI {:.3}–{:.3})",
            p.value, p.successes, p.n, p.ci95.lower, p.ci95.upper
        ),
        None => "n/a".into(),
    }
}

fn markdown(report: &serde_json::Value, metrics: &ClassificationMetrics) -> String {
    let r = &report["reproducibility"];
    let mut md = String::new();
    md.push_str(&format!(
        "# Validation report: {} {} on {}\n\n",
        r["model"]["id"].as_str().unwrap_or(""),
        r["model"]["version"].as_str().unwrap_or(""),
        r["dataset"]["name"].as_str().unwrap_or("")
    ));
    md.push_str(&format!(
        "{}\n\n## Result\n\n- Cases analysed: {} (failures: {})\n- Accuracy: {}\n- Balanced accuracy: {}\n- Cohen's kappa: {}\n\n",
        r["model"]["regulatory_status"].as_str().unwrap_or(""),
        metrics.n,
        report["operational"]["failures"].as_object().map(|f| f.values().filter_map(|v| v.as_u64()).sum::<u64>()).unwrap_or(0),
        pct(&metrics.accuracy),
        metrics.balanced_accuracy.map(|v| format!("{v:.3}")).unwrap_or("n/a".into()),
        metrics.cohen_kappa.map(|v| format!("{v:.3}")).unwrap_or("n/a".into()),
    ));
    md.push_str("## Per class (one vs rest)\n\n| class | n | sensitivity | specificity | PPV | NPV | F1 | ROC AUC (DeLong 95% CI) | PR AUC | Brier |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &metrics.classes {
        let auc = c
            .roc_auc
            .map(|a| format!("{:.3} ({:.3}–{:.3})", a.value, a.ci95.lower, a.ci95.upper))
            .unwrap_or("n/a".into());
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.label,
            c.support,
            pct(&c.sensitivity),
            pct(&c.specificity),
            pct(&c.ppv),
            pct(&c.npv),
            c.f1.map(|v| format!("{v:.3}")).unwrap_or("n/a".into()),
            auc,
            c.pr_auc.map(|v| format!("{v:.3}")).unwrap_or("n/a".into()),
            c.brier.map(|v| format!("{v:.4}")).unwrap_or("n/a".into()),
        ));
    }
    md.push_str("\n## Confusion matrix (rows: ground truth, columns: decision)\n\n|  |");
    for l in &metrics.labels {
        md.push_str(&format!(" {l} |"));
    }
    md.push_str("\n|---|");
    for _ in &metrics.labels {
        md.push_str("---|");
    }
    md.push('\n');
    for (l, row) in metrics.labels.iter().zip(&metrics.confusion) {
        md.push_str(&format!("| **{l}** |"));
        for v in row {
            md.push_str(&format!(" {v} |"));
        }
        md.push('\n');
    }
    if let Some(points) = report["operating_points"]
        .as_array()
        .filter(|p| !p.is_empty())
    {
        md.push_str("\n## Operating points\n\n| class | target | threshold | sensitivity | specificity |\n|---|---|---|---|---|\n");
        for p in points {
            let point = &p["point"];
            if point.is_null() {
                md.push_str(&format!(
                    "| {} | not reachable | | | |\n",
                    p["class"].as_str().unwrap_or("")
                ));
                continue;
            }
            let prop = |v: &serde_json::Value| {
                serde_json::from_value::<Option<Proportion>>(v.clone())
                    .ok()
                    .flatten()
            };
            md.push_str(&format!(
                "| {} | {} ≥ {} | {:.4} | {} | {} |\n",
                p["class"].as_str().unwrap_or(""),
                point["target"].as_str().unwrap_or(""),
                point["target_value"],
                point["threshold"].as_f64().unwrap_or(f64::NAN),
                pct(&prop(&point["sensitivity"])),
                pct(&prop(&point["specificity"])),
            ));
        }
    }
    if let Some(groups) = report["subgroups"].as_array().filter(|g| !g.is_empty()) {
        md.push_str("\n## Subgroups\n\n| attribute | value | n | accuracy | below the claim |\n|---|---|---|---|---|\n");
        for g in groups {
            let (attribute, value, n, accuracy, flags) = subgroup_row(g);
            md.push_str(&format!(
                "| {attribute} | {value} | {n} | {} | {} |\n",
                pct(&accuracy),
                if flags.is_empty() {
                    "—".to_string()
                } else {
                    format!("**{}**", flags.join(", "))
                },
            ));
        }
    }
    md.push_str("\n## Latency per image (ms)\n\n| stage | p50 | p95 | p99 | mean |\n|---|---|---|---|---|\n");
    if let Some(stages) = report["operational"]["latency_ms"].as_object() {
        for (stage, l) in stages {
            md.push_str(&format!(
                "| {stage} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                l["p50"].as_f64().unwrap_or(0.0),
                l["p95"].as_f64().unwrap_or(0.0),
                l["p99"].as_f64().unwrap_or(0.0),
                l["mean"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    md.push_str(&format!(
        "\nThroughput: {:.2} images/s.\n\n## Methods\n\nProportions: Wilson score interval (95%, no continuity correction). ROC AUC: Mann–Whitney statistic with DeLong's variance, normal interval clipped to [0, 1]. PR AUC: average precision (step-wise). Brier score per class, one vs rest. Metrics computed by `vigie_validation::stats`, tested against scikit-learn and scipy to 1e-9.\n\n## Reproducibility\n\n```json\n{}\n```\n",
        report["operational"]["throughput_images_per_s"].as_f64().unwrap_or(0.0),
        serde_json::to_string_pretty(r).unwrap_or_default()
    ));
    md
}

pub fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let command_line: Vec<String> = std::env::args().collect();
    let (root, dataset) = Dataset::load(&args.dataset)?;
    dataset
        .verify(&root)
        .context("the dataset does not match its manifest")?;
    let mut model = super::infer::load_model(config, args.model.as_deref(), None)?;
    let manifest = model.package().manifest().clone();
    let labels: Vec<String> = match &manifest.output.kind {
        OutputKind::Classification { labels, .. } => labels.clone(),
        OutputKind::Segmentation { .. } => Vec::new(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.appliance.data_dir.clone());
    let audit = Audit::open(&data_dir, &config.appliance.id, &config.audit)?;
    let package = model.package();
    let reproducibility = serde_json::json!({
        "model": {
            "id": package.id(), "version": package.version(), "sha256": package.sha256(),
            "regulatory_status": manifest.model.regulatory_status,
            "intended_use": manifest.model.intended_use,
        },
        "software": { "version": SOFTWARE_VERSION, "git_commit": GIT_COMMIT },
        "dataset": {
            "name": dataset.name, "content_sha256": dataset.content_sha256,
            "studies": dataset.studies.len(), "path": root,
        },
        "execution": model.execution(),
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
        "date": crate::audit::timestamp(),
        "command": command_line,
    });
    let started_record = audit.record(
        AuditEvent::new("validation_started", "ok", reproducibility.clone())
            .model(package.id(), package.version()),
    )?;
    if let OutputKind::Segmentation {
        labels: segments, ..
    } = &manifest.output.kind
    {
        let segments = segments.clone();
        return run_segmentation(
            &args,
            &mut model,
            (&root, &dataset),
            &audit,
            reproducibility,
            started_record.seq,
            &segments,
        );
    }
    let total_files: usize = dataset.studies.iter().map(|s| s.files.len()).sum();
    let progress = std::io::stderr().is_terminal() && !args.json;
    let mut cases = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut stages: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let started = Instant::now();
    let mut done = 0;
    for study in &dataset.studies {
        for (file, file_sha256) in study.files.iter().zip(&study.sha256) {
            done += 1;
            if progress {
                eprint!("\r[{done}/{total_files}] analysing");
            }
            let image_started = Instant::now();
            let opened = vigie_dicom_io::DicomFile::open(root.join(file));
            // Header attributes, overridden by the manifest's own.
            let mut subgroups = opened.as_ref().map(header_subgroups).unwrap_or_default();
            subgroups.extend(study.attributes.clone());
            let analysis = match opened
                .map_err(vigie_validation::Error::from)
                .and_then(|f| pipeline::analyse(&mut model, &f))
            {
                Ok(a) => a,
                Err(e) => {
                    let reason = e.to_string();
                    let key = reason.split(':').next().unwrap_or("error").to_string();
                    *failures.entry(key).or_default() += 1;
                    audit.note(
                        AuditEvent::new(
                            "inference",
                            "failed",
                            serde_json::json!({ "rule": "validation", "file": file, "error": reason }),
                        )
                        .instance(Some(&study.study_instance_uid), None),
                    );
                    continue;
                }
            };
            let total_ms = image_started.elapsed().as_secs_f64() * 1000.0;
            stages.entry("decode").or_default().push(analysis.decode_ms);
            for result in &analysis.results {
                record_timings(&mut stages, &result.timings);
                let Finding::Classification(c) = &result.finding else {
                    continue;
                };
                let record = audit.record(
                    AuditEvent::new(
                        "inference",
                        "ok",
                        serde_json::json!({
                            "rule": "validation",
                            "dataset_sha256": dataset.content_sha256,
                            "input": {
                                "file": file,
                                "file_sha256": file_sha256,
                                "pixels_sha256": analysis.pixels_sha256,
                            },
                            "model_sha256": result.model_sha256,
                            "execution": result.execution,
                            "decision": c.decision,
                            "frames": [{
                                "raw_output": result.raw_output,
                                "finding": result.finding,
                                "timings_ms": result.timings,
                            }],
                            "ground_truth": study.label,
                        }),
                    )
                    .instance(
                        Some(&study.study_instance_uid),
                        Some(&analysis.header.sop_instance_uid),
                    )
                    .model(&result.model_id, &result.model_version),
                )?;
                cases.push(Case {
                    subgroups: subgroups.clone(),
                    study_instance_uid: study.study_instance_uid.clone(),
                    file: file.clone(),
                    file_sha256: file_sha256.clone(),
                    pixels_sha256: analysis.pixels_sha256.clone(),
                    truth: study.label.clone(),
                    decision: c.decision.clone(),
                    probabilities: c.probabilities.iter().map(|p| f64::from(*p)).collect(),
                    correct: c.decision == study.label,
                    audit_record: record.seq,
                });
            }
            stages.entry("total").or_default().push(total_ms);
        }
    }
    if progress {
        eprintln!();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let index = |label: &str| labels.iter().position(|l| l == label);
    let mut truth = Vec::new();
    let mut predicted = Vec::new();
    let mut probabilities = Vec::new();
    for case in &cases {
        let (Some(t), Some(p)) = (index(&case.truth), index(&case.decision)) else {
            *failures
                .entry(format!(
                    "ground truth {:?} is not a class of the model",
                    case.truth
                ))
                .or_default() += 1;
            continue;
        };
        truth.push(t);
        predicted.push(p);
        probabilities.push(case.probabilities.clone());
    }
    let metrics = stats::classification(&labels, &truth, &predicted, &probabilities);
    let claims = parse_claims(&args.claims)?;
    let subgroups = subgroup_metrics(&cases, &labels, &claims);
    let operating_points =
        operating_points(&args.operating_points, &labels, &truth, &probabilities)?;
    let operational = serde_json::json!({
        "latency_ms": stages.into_iter().map(|(k, v)| (k.to_string(), latency(v))).collect::<BTreeMap<_, _>>(),
        "throughput_images_per_s": if elapsed > 0.0 { cases.len() as f64 / elapsed } else { 0.0 },
        "failures": failures,
    });
    let last_record = cases.last().map(|c| c.audit_record);
    let mut report = serde_json::json!({
        "reproducibility": reproducibility,
        "metrics": metrics,
        "claims": claims,
        "subgroups": subgroups,
        "operating_points": operating_points,
        "operational": operational,
        "cases": cases,
    });
    report["reproducibility"]["audit"] = serde_json::json!({
        "data_dir": data_dir,
        "public_key": audit.public_key(),
        "first_record": started_record.seq,
        "last_inference_record": last_record,
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let json_text = serde_json::to_string_pretty(&report)?;
    let md_text = markdown(&report, &metrics);
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = args.out.join(name);
        vigie_dicom_io::write::write_durably(&path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
    };
    let html_text = super::report_html::html(&report, &metrics, &md_text);
    write("report.json", &json_text)?;
    write("report.md", &md_text)?;
    write("report.html", &html_text)?;
    audit.record(
        AuditEvent::new(
            "validation_finished",
            "ok",
            serde_json::json!({
                "report_json_sha256": hex::encode(sha2::Sha256::digest(json_text.as_bytes())),
                "report_md_sha256": hex::encode(sha2::Sha256::digest(md_text.as_bytes())),
                "report_html_sha256": hex::encode(sha2::Sha256::digest(html_text.as_bytes())),
                "out": args.out,
                "cases": metrics.n,
                "accuracy": metrics.accuracy,
            }),
        )
        .model(&manifest.model.id, &manifest.model.version),
    )?;
    audit.checkpoint()?;
    if args.json {
        println!("{json_text}");
    } else {
        println!(
            "{} {} on {} ({} cases): accuracy {}",
            manifest.model.id,
            manifest.model.version,
            dataset.name,
            metrics.n,
            pct(&metrics.accuracy)
        );
        println!("report: {}", args.out.join("report.md").display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Per-case outcomes of a report: (file, truth, correct).
fn outcomes(report: &serde_json::Value) -> Vec<(String, String, bool)> {
    report["cases"]
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .map(|c| {
                    (
                        c["file"].as_str().unwrap_or("").to_string(),
                        c["truth"].as_str().unwrap_or("").to_string(),
                        c["correct"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `vigie validate compare`.
pub fn compare(
    baseline: &std::path::Path,
    candidate: &std::path::Path,
    margin: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use vigie_validation::compare::{Verdict, paired, unpaired};
    let read = |p: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a report.json", p.display()))
    };
    let (b, c) = (read(baseline)?, read(candidate)?);
    let (ob, oc) = (outcomes(&b), outcomes(&c));
    let same_dataset = b["reproducibility"]["dataset"]["content_sha256"]
        == c["reproducibility"]["dataset"]["content_sha256"];
    let is_paired = same_dataset
        && ob.len() == oc.len()
        && ob.iter().zip(&oc).all(|(x, y)| x.0 == y.0 && x.1 == y.1);
    let mut groups: Vec<(String, Option<String>)> = vec![("accuracy".into(), None)];
    let mut labels: Vec<String> = ob.iter().map(|o| o.1.clone()).collect();
    labels.sort();
    labels.dedup();
    groups.extend(
        labels
            .into_iter()
            .map(|l| (format!("sensitivity {l}"), Some(l))),
    );
    let mut verdicts: Vec<Verdict> = Vec::new();
    for (name, label) in groups {
        let pick = |o: &[(String, String, bool)]| -> Vec<bool> {
            o.iter()
                .filter(|x| label.as_ref().is_none_or(|l| &x.1 == l))
                .map(|x| x.2)
                .collect()
        };
        let (xb, xc) = (pick(&ob), pick(&oc));
        let count = |v: &[bool]| (v.iter().filter(|x| **x).count() as u64, v.len() as u64);
        let verdict = if is_paired {
            paired(&name, &xb, &xc, margin)
        } else {
            unpaired(&name, count(&xb), count(&xc), margin)
        };
        if let Some(v) = verdict {
            verdicts.push(v);
        }
    }
    if verdicts.is_empty() {
        bail!("nothing to compare: the reports hold no cases");
    }
    let ok = verdicts.iter().all(|v| v.non_inferior);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "margin": margin, "paired": is_paired, "non_inferior": ok, "verdicts": verdicts,
            }))?
        );
    } else {
        println!(
            "non-inferiority, margin {margin} ({}):",
            if is_paired {
                "paired, same cases"
            } else {
                "unpaired"
            }
        );
        for v in &verdicts {
            println!(
                "  {:<28} baseline {:.3}  candidate {:.3}  difference {:+.3} (95% CI {:+.3} to {:+.3})  {}",
                v.metric,
                v.baseline,
                v.candidate,
                v.difference,
                v.ci95.lower,
                v.ci95.upper,
                if v.non_inferior {
                    "non-inferior"
                } else {
                    "REGRESSION"
                }
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Subgroup attributes found in the DICOM header.
fn header_subgroups(file: &vigie_dicom_io::DicomFile) -> BTreeMap<String, String> {
    use dicom_dictionary_std::tags;
    let mut out = BTreeMap::new();
    for (name, tag) in [
        ("manufacturer", tags::MANUFACTURER),
        ("scanner_model", tags::MANUFACTURER_MODEL_NAME),
        ("field_strength_T", tags::MAGNETIC_FIELD_STRENGTH),
        ("patient_sex", tags::PATIENT_SEX),
        ("site", tags::INSTITUTION_NAME),
    ] {
        if let Some(v) = file.string(tag).filter(|v| !v.is_empty()) {
            out.insert(name.to_string(), v);
        }
    }
    // Patient Age (AS, e.g. "047Y") as a decade band.
    if let Some(age) = file.string(tags::PATIENT_AGE)
        && let Some(years) = age
            .strip_suffix('Y')
            .and_then(|n| n.trim().parse::<u32>().ok())
    {
        let low = years / 10 * 10;
        out.insert("age_band".into(), format!("{low}-{}", low + 9));
    }
    out
}

/// `accuracy=0.9`, `sensitivity=0.9`.
fn parse_claims(claims: &[String]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for claim in claims {
        let Some((metric, value)) = claim.split_once('=') else {
            bail!("--claim {claim:?} is not METRIC=VALUE");
        };
        if metric != "accuracy" && metric != "sensitivity" {
            bail!("--claim {claim:?}: only accuracy and sensitivity can be claimed");
        }
        let value: f64 = value
            .parse()
            .with_context(|| format!("--claim {claim:?}: not a number"))?;
        out.insert(metric.to_string(), value);
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct Subgroup {
    attribute: String,
    value: String,
    n: u64,
    /// Every metric of the whole run, on this subgroup's cases.
    metrics: ClassificationMetrics,
    /// Metrics whose whole 95 % interval lies below the claim.
    below_claim: Vec<String>,
}

fn subgroup_metrics(
    cases: &[Case],
    labels: &[String],
    claims: &BTreeMap<String, f64>,
) -> Vec<Subgroup> {
    let mut groups: BTreeMap<(String, String), Vec<&Case>> = BTreeMap::new();
    for case in cases {
        for (attribute, value) in &case.subgroups {
            groups
                .entry((attribute.clone(), value.clone()))
                .or_default()
                .push(case);
        }
    }
    groups
        .into_iter()
        .map(|((attribute, value), members)| {
            let index = |label: &str| labels.iter().position(|l| l == label);
            let known: Vec<&&Case> = members
                .iter()
                .filter(|c| index(&c.truth).is_some() && index(&c.decision).is_some())
                .collect();
            let metrics = stats::classification(
                labels,
                &known
                    .iter()
                    .filter_map(|c| index(&c.truth))
                    .collect::<Vec<_>>(),
                &known
                    .iter()
                    .filter_map(|c| index(&c.decision))
                    .collect::<Vec<_>>(),
                &known
                    .iter()
                    .map(|c| c.probabilities.clone())
                    .collect::<Vec<_>>(),
            );
            let mut below_claim = Vec::new();
            if let (Some(claim), Some(a)) = (claims.get("accuracy"), metrics.accuracy)
                && a.ci95.upper < *claim
            {
                below_claim.push("accuracy".to_string());
            }
            if let Some(claim) = claims.get("sensitivity") {
                for class in &metrics.classes {
                    if let Some(s) = class.sensitivity
                        && s.ci95.upper < *claim
                    {
                        below_claim.push(format!("sensitivity {}", class.label));
                    }
                }
            }
            Subgroup {
                attribute,
                value,
                n: members.len() as u64,
                metrics,
                below_claim,
            }
        })
        .collect()
}

/// `CLASS:sensitivity=0.95` → the operating point on that class.
fn operating_points(
    specs: &[String],
    labels: &[String],
    truth: &[usize],
    probabilities: &[Vec<f64>],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for spec in specs {
        let parsed = spec
            .split_once(':')
            .and_then(|(class, rest)| rest.split_once('=').map(|(t, v)| (class, t, v)));
        let Some((class, target, value)) = parsed else {
            bail!("--operating-point {spec:?} is not CLASS:sensitivity=V or CLASS:specificity=V");
        };
        let Some(c) = labels.iter().position(|l| l == class) else {
            bail!("--operating-point {spec:?}: no class {class:?} (classes: {labels:?})");
        };
        let target = match target {
            "sensitivity" => stats::Target::Sensitivity,
            "specificity" => stats::Target::Specificity,
            other => {
                bail!("--operating-point {spec:?}: {other:?} is not sensitivity or specificity")
            }
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("--operating-point {spec:?}: not a number"))?;
        let scores: Vec<f64> = probabilities
            .iter()
            .map(|p| p.get(c).copied().unwrap_or(0.0))
            .collect();
        let positive: Vec<bool> = truth.iter().map(|t| *t == c).collect();
        out.push(serde_json::json!({
            "class": class,
            "point": stats::operating_point(&scores, &positive, target, value),
        }));
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct SegmentationCase {
    subgroups: BTreeMap<String, String>,
    study_instance_uid: String,
    file: PathBuf,
    reference: PathBuf,
    segment: String,
    spacing_mm: (f64, f64),
    scores: vigie_validation::segmentation::SegmentationScores,
    audit_record: i64,
}

/// `validate run` for a segmentation model: each prediction against the
/// study's reference mask, per segment, in mm.
fn run_segmentation(
    args: &RunArgs,
    model: &mut vigie_inference::Model,
    (root, dataset): (&std::path::Path, &Dataset),
    audit: &Audit,
    reproducibility: serde_json::Value,
    first_record: i64,
    segments: &BTreeMap<u32, String>,
) -> anyhow::Result<ExitCode> {
    use vigie_validation::segmentation::{Mask, load_mask, mean_ci, resample_nearest, score};
    let mut cases = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut stages: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let started = Instant::now();
    let mut images = 0usize;
    for study in &dataset.studies {
        for (i, file) in study.files.iter().enumerate() {
            let Some(reference_path) = study.references.get(i) else {
                *failures
                    .entry("no reference segmentation in the manifest".into())
                    .or_default() += 1;
                continue;
            };
            let image_started = Instant::now();
            let opened = vigie_dicom_io::DicomFile::open(root.join(file));
            let mut subgroups = opened.as_ref().map(header_subgroups).unwrap_or_default();
            subgroups.extend(study.attributes.clone());
            let analysed = opened
                .map_err(vigie_validation::Error::from)
                .and_then(|f| pipeline::analyse(model, &f));
            let (analysis, (ref_rows, ref_cols, reference)) =
                match analysed.and_then(|a| Ok((a, load_mask(&root.join(reference_path))?))) {
                    Ok(x) => x,
                    Err(e) => {
                        let reason = e.to_string();
                        *failures
                            .entry(reason.split(':').next().unwrap_or("error").to_string())
                            .or_default() += 1;
                        continue;
                    }
                };
            let spacing = analysis
                .header
                .pixel_spacing
                .map(|s| (s[0], s[1]))
                .unwrap_or((1.0, 1.0));
            images += 1;
            stages.entry("decode").or_default().push(analysis.decode_ms);
            stages
                .entry("total")
                .or_default()
                .push(image_started.elapsed().as_secs_f64() * 1000.0);
            for result in &analysis.results {
                let Finding::Segmentation(seg) = &result.finding else {
                    continue;
                };
                record_timings(&mut stages, &result.timings);
                // The model's map back to the reference's grid.
                let predicted =
                    resample_nearest(&seg.mask, seg.rows, seg.columns, ref_rows, ref_cols);
                let single = segments.len() == 1;
                let mut per_segment = Vec::new();
                for (label, name) in segments {
                    let p: Vec<bool> = predicted.iter().map(|v| u32::from(*v) == *label).collect();
                    let r: Vec<bool> = reference
                        .iter()
                        .map(|v| {
                            if single {
                                *v != 0
                            } else {
                                u32::from(*v) == *label
                            }
                        })
                        .collect();
                    let Some(scores) = score(
                        &Mask {
                            rows: ref_rows,
                            columns: ref_cols,
                            data: &p,
                        },
                        &Mask {
                            rows: ref_rows,
                            columns: ref_cols,
                            data: &r,
                        },
                        spacing,
                    ) else {
                        continue;
                    };
                    per_segment.push((name.clone(), scores));
                }
                let record = audit.record(
                    AuditEvent::new(
                        "inference",
                        "ok",
                        serde_json::json!({
                            "rule": "validation",
                            "dataset_sha256": dataset.content_sha256,
                            "input": { "file": file, "pixels_sha256": analysis.pixels_sha256 },
                            "model_sha256": result.model_sha256,
                            "execution": result.execution,
                            "finding": result.finding,
                            "reference": reference_path,
                            "scores": per_segment,
                        }),
                    )
                    .instance(
                        Some(&study.study_instance_uid),
                        Some(&analysis.header.sop_instance_uid),
                    )
                    .model(&result.model_id, &result.model_version),
                )?;
                for (name, scores) in per_segment {
                    cases.push(SegmentationCase {
                        subgroups: subgroups.clone(),
                        study_instance_uid: study.study_instance_uid.clone(),
                        file: file.clone(),
                        reference: reference_path.clone(),
                        segment: name,
                        spacing_mm: spacing,
                        scores,
                        audit_record: record.seq,
                    });
                }
            }
        }
    }
    let summary: Vec<serde_json::Value> = segments
        .values()
        .map(|name| {
            let of: Vec<&SegmentationCase> = cases.iter().filter(|c| &c.segment == name).collect();
            let pick = |f: &dyn Fn(&SegmentationCase) -> Option<f64>| -> Vec<f64> {
                of.iter().filter_map(|c| f(c)).collect()
            };
            serde_json::json!({
                "segment": name,
                "n": of.len(),
                "dice": mean_ci(&pick(&|c| Some(c.scores.dice))),
                "iou": mean_ci(&pick(&|c| Some(c.scores.iou))),
                "hd95_mm": mean_ci(&pick(&|c| c.scores.hd95_mm)),
                "assd_mm": mean_ci(&pick(&|c| c.scores.assd_mm)),
            })
        })
        .collect();
    // Per subgroup: each segment's means, with their n.
    let mut keys: Vec<(String, String)> = cases
        .iter()
        .flat_map(|c| c.subgroups.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    let subgroups: Vec<serde_json::Value> = keys
        .into_iter()
        .map(|(attribute, value)| {
            let per_segment: Vec<serde_json::Value> = segments
                .values()
                .map(|name| {
                    let of: Vec<&SegmentationCase> = cases
                        .iter()
                        .filter(|c| &c.segment == name && c.subgroups.get(&attribute) == Some(&value))
                        .collect();
                    serde_json::json!({
                        "segment": name,
                        "n": of.len(),
                        "dice": mean_ci(&of.iter().map(|c| c.scores.dice).collect::<Vec<_>>()),
                        "iou": mean_ci(&of.iter().map(|c| c.scores.iou).collect::<Vec<_>>()),
                        "hd95_mm": mean_ci(&of.iter().filter_map(|c| c.scores.hd95_mm).collect::<Vec<_>>()),
                        "assd_mm": mean_ci(&of.iter().filter_map(|c| c.scores.assd_mm).collect::<Vec<_>>()),
                    })
                })
                .collect();
            serde_json::json!({ "attribute": attribute, "value": value, "segments": per_segment })
        })
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let mut report = serde_json::json!({
        "reproducibility": reproducibility,
        "segmentation": summary,
        "subgroups": subgroups,
        "operational": {
            "latency_ms": stages.into_iter().map(|(k, v)| (k.to_string(), latency(v))).collect::<BTreeMap<_, _>>(),
            "throughput_images_per_s": if elapsed > 0.0 { images as f64 / elapsed } else { 0.0 },
            "failures": failures,
        },
        "cases": cases,
    });
    report["reproducibility"]["audit"] = serde_json::json!({
        "data_dir": args.data_dir, "public_key": audit.public_key(), "first_record": first_record,
    });
    let r = &report["reproducibility"];
    let mut md = format!(
        "# Validation report: {} {} on {}\n\n{}\n\n## Segmentation (mean, seeded bootstrap 95% CI)\n\n| segment | n | Dice | IoU | HD95 (mm) | ASSD (mm) |\n|---|---|---|---|---|---|\n",
        r["model"]["id"].as_str().unwrap_or(""),
        r["model"]["version"].as_str().unwrap_or(""),
        r["dataset"]["name"].as_str().unwrap_or(""),
        r["model"]["regulatory_status"].as_str().unwrap_or("")
    );
    let cell = |v: &serde_json::Value| {
        if v.is_null() {
            "n/a".to_string()
        } else {
            format!(
                "{:.3} ({:.3}–{:.3})",
                v["mean"].as_f64().unwrap_or(f64::NAN),
                v["ci95"]["lower"].as_f64().unwrap_or(f64::NAN),
                v["ci95"]["upper"].as_f64().unwrap_or(f64::NAN)
            )
        }
    };
    for s in report["segmentation"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s["segment"].as_str().unwrap_or(""),
            s["n"],
            cell(&s["dice"]),
            cell(&s["iou"]),
            cell(&s["hd95_mm"]),
            cell(&s["assd_mm"])
        ));
    }
    md.push_str(&format!(
        "\nMetrics as MedPy defines them (Dice, Jaccard, HD95 pooled over both directions, ASSD), distances in mm from Pixel Spacing, the prediction resampled to the reference grid (nearest neighbour); tested against scipy.ndimage.\n\n## Reproducibility\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(r).unwrap_or_default()
    ));
    std::fs::create_dir_all(&args.out)?;
    let json_text = serde_json::to_string_pretty(&report)?;
    let html_text = super::report_html::segmentation_html(&report, &md);
    for (name, text) in [
        ("report.json", &json_text),
        ("report.md", &md),
        ("report.html", &html_text),
    ] {
        let path = args.out.join(name);
        vigie_dicom_io::write::write_durably(&path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    audit.record(AuditEvent::new(
        "validation_finished",
        "ok",
        serde_json::json!({
            "report_json_sha256": hex::encode(sha2::Sha256::digest(json_text.as_bytes())),
            "cases": cases.len(),
        }),
    ))?;
    audit.checkpoint()?;
    if args.json {
        println!("{json_text}");
    } else {
        println!("{}", md.lines().take(8).collect::<Vec<_>>().join("\n"));
        println!("report: {}", args.out.join("report.md").display());
    }
    Ok(ExitCode::SUCCESS)
}
