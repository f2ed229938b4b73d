//! A validation run: every image of a labelled dataset through the hot
//! loop `vigie serve` runs (`vigie_analysis::analyse_stream`, with the
//! same resolved batching and decode threads), each scored against its
//! ground truth and recorded in the audit trail, into a typed [`Report`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vigie_analysis::{HotLoop, Streamed};
use vigie_audit::{Audit, AuditEvent, EventKind, GIT_COMMIT, SOFTWARE_VERSION};
use vigie_inference::Model;
use vigie_inference::manifest::OutputKind;
use vigie_inference::postprocess::Finding;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::report::{
    AuditRef, Case, ClassificationReport, DatasetInfo, HotLoopInfo, Latency, ModelInfo,
    OperatingPointEntry, Operational, Report, Reproducibility, SegmentSummary, SegmentationCase,
    SegmentationReport, SegmentationSubgroup, SeriesUsed, SoftwareInfo, Subgroup,
};
use crate::segmentation::{Mask, load_mask, mean_ci, resample_nearest, score};
use crate::stats::{self, Target};

/// An operating point asked for: the threshold on `class`'s probability
/// reaching `target` ≥ `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatingPointSpec {
    /// Class label.
    pub class: String,
    /// Sensitivity or specificity.
    pub target: Target,
    /// The value to reach.
    pub value: f64,
}

/// The error of a malformed option value.
fn bad_option(option: &'static str, value: &str) -> impl Fn(&str) -> Error {
    move |reason| Error::Option {
        option,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl OperatingPointSpec {
    /// `CLASS:sensitivity=0.95` or `CLASS:specificity=0.9`.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = bad_option("--operating-point", spec);
        let (class, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("not CLASS:sensitivity=V or CLASS:specificity=V"))?;
        let (target, value) = rest
            .split_once('=')
            .ok_or_else(|| bad("not CLASS:sensitivity=V or CLASS:specificity=V"))?;
        let target = match target {
            "sensitivity" => Target::Sensitivity,
            "specificity" => Target::Specificity,
            _ => {
                return Err(bad(&format!(
                    "{target:?} is not sensitivity or specificity"
                )));
            }
        };
        let value = value.parse().map_err(|_| bad("not a number"))?;
        Ok(Self {
            class: class.to_string(),
            target,
            value,
        })
    }
}

/// `accuracy=0.9`, `sensitivity=0.9`: the values claimed, against which
/// subgroups are flagged.
pub fn parse_claims(claims: &[String]) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for claim in claims {
        let bad = bad_option("--claim", claim);
        let (metric, value) = claim
            .split_once('=')
            .ok_or_else(|| bad("not METRIC=VALUE"))?;
        if metric != "accuracy" && metric != "sensitivity" {
            return Err(bad("only accuracy and sensitivity can be claimed"));
        }
        let value: f64 = value.parse().map_err(|_| bad("not a number"))?;
        out.insert(metric.to_string(), value);
    }
    Ok(out)
}

/// What a run needs besides the model and the dataset.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Claimed values (see [`parse_claims`]).
    pub claims: BTreeMap<String, f64>,
    /// Operating points to report.
    pub operating_points: Vec<OperatingPointSpec>,
    /// The data directory of the audit trail the run records in.
    pub data_dir: PathBuf,
    /// The command line, for the report.
    pub command: Vec<String>,
    /// The host name, for the report.
    pub host: String,
}

/// Run `model` on every image of `dataset` (in `root`, already verified
/// against its manifest) through `hot_loop`, recording each inference in
/// `audit`; `progress` gets (images done, images) as they come.
pub fn run(
    model: &mut Model,
    hot_loop: &HotLoop,
    (root, dataset): (&Path, &Dataset),
    audit: &Audit,
    options: &RunOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let package = model.package();
    let manifest = package.manifest().clone();
    let mut reproducibility = Reproducibility {
        model: ModelInfo {
            id: package.id().to_string(),
            version: package.version().to_string(),
            sha256: package.sha256().to_string(),
            regulatory_status: manifest.model.regulatory_status.clone(),
            intended_use: manifest.model.intended_use.clone(),
        },
        software: SoftwareInfo {
            version: SOFTWARE_VERSION.to_string(),
            git_commit: GIT_COMMIT.to_string(),
        },
        dataset: DatasetInfo {
            name: dataset.name.clone(),
            content_sha256: dataset.content_sha256.clone(),
            studies: dataset.studies.len(),
            path: root.to_path_buf(),
            series: dataset
                .studies
                .iter()
                .flat_map(|study| {
                    study.series.iter().map(|s| SeriesUsed {
                        study_instance_uid: study.study_instance_uid.clone(),
                        series_instance_uid: s.series_instance_uid.clone(),
                        modality: s.modality.clone(),
                        series_description: s.series_description.clone(),
                        rule: s.rule.clone(),
                        images: s.images,
                    })
                })
                .collect(),
        },
        execution: model.execution().clone(),
        hot_loop: HotLoopInfo {
            max_batch: hot_loop.batching.max_batch,
            max_delay_ms: hot_loop.batching.max_delay.as_secs_f64() * 1000.0,
            decode_threads: hot_loop.decode_threads,
        },
        host: options.host.clone(),
        date: vigie_audit::timestamp(),
        command: options.command.clone(),
        audit: AuditRef {
            data_dir: options.data_dir.clone(),
            public_key: audit.public_key().to_string(),
            first_record: 0,
            last_inference_record: None,
        },
    };
    // The reproducibility block as it stands before any record (the
    // report adds where its records are).
    let mut started = serde_json::to_value(&reproducibility)?;
    if let Some(object) = started.as_object_mut() {
        object.remove("audit");
    }
    let started_record = audit.record(
        AuditEvent::new(EventKind::ValidationStarted, "ok", started)
            .model(package.id(), package.version()),
    )?;
    reproducibility.audit.first_record = started_record.seq;
    match &manifest.output.kind {
        OutputKind::Classification { labels, .. } => {
            let labels = labels.clone();
            classification(
                model,
                hot_loop,
                (root, dataset),
                audit,
                options,
                reproducibility,
                &labels,
                progress,
            )
            .map(Report::Classification)
        }
        OutputKind::Segmentation {
            labels: segments, ..
        } => {
            let segments = segments.clone();
            segmentation(
                model,
                hot_loop,
                (root, dataset),
                audit,
                reproducibility,
                &segments,
                progress,
            )
            .map(Report::Segmentation)
        }
    }
}

/// Per-stage latency samples.
#[derive(Default)]
struct Stages(BTreeMap<&'static str, Vec<f64>>);

impl Stages {
    /// One analysed image: its decoding, each frame's stages, and the
    /// image's total (decode + every stage; with batching, its share of the
    /// batch's model run).
    fn add(&mut self, streamed: &Streamed) {
        let a = &streamed.analysis;
        let mut total = a.decode_ms;
        self.0.entry("decode").or_default().push(a.decode_ms);
        for r in &a.results {
            let t = &r.timings;
            self.0
                .entry("preprocess")
                .or_default()
                .push(t.preprocess_ms);
            self.0.entry("inference").or_default().push(t.inference_ms);
            self.0
                .entry("postprocess")
                .or_default()
                .push(t.postprocess_ms);
            total += t.preprocess_ms + t.inference_ms + t.postprocess_ms;
        }
        self.0.entry("total").or_default().push(total);
    }

    fn latency(self) -> BTreeMap<String, Latency> {
        self.0
            .into_iter()
            .map(|(k, v)| (k.to_string(), Latency::of(v)))
            .collect()
    }
}

/// Record one scored result: what every validation `inference` record
/// holds (rule, dataset, model, execution, batch size), and `details`.
fn record_inference(
    (audit, dataset, study): (&Audit, &Dataset, &str),
    streamed: &Streamed,
    result: &vigie_inference::ModelResult,
    mut details: serde_json::Value,
) -> Result<i64> {
    if let Some(object) = details.as_object_mut() {
        object.insert("rule".into(), "validation".into());
        object.insert(
            "dataset_sha256".into(),
            dataset.content_sha256.clone().into(),
        );
        object.insert("model_sha256".into(), result.model_sha256.clone().into());
        object.insert("execution".into(), serde_json::to_value(&result.execution)?);
        object.insert("batch".into(), streamed.batch.into());
    }
    let record = audit.record(
        AuditEvent::new(EventKind::Inference, "ok", details)
            .instance(
                Some(study),
                Some(&streamed.analysis.header.sop_instance_uid),
            )
            .model(&result.model_id, &result.model_version),
    )?;
    Ok(record.seq)
}

/// A failure's key in the report: its reason up to the first colon.
fn failure_key(reason: &str) -> String {
    reason.split(':').next().unwrap_or("error").to_string()
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

/// (study index, file index) of every image, and their paths.
fn images(root: &Path, dataset: &Dataset) -> (Vec<(usize, usize)>, Vec<PathBuf>) {
    dataset
        .studies
        .iter()
        .enumerate()
        .flat_map(|(s, study)| {
            study
                .files
                .iter()
                .enumerate()
                .map(move |(f, file)| ((s, f), root.join(file)))
        })
        .unzip()
}

#[allow(clippy::too_many_arguments)]
fn classification(
    model: &mut Model,
    hot_loop: &HotLoop,
    (root, dataset): (&Path, &Dataset),
    audit: &Audit,
    options: &RunOptions,
    mut reproducibility: Reproducibility,
    labels: &[String],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ClassificationReport> {
    for p in &options.operating_points {
        if !labels.contains(&p.class) {
            return Err(Error::Option {
                option: "--operating-point",
                value: p.class.clone(),
                reason: format!("no such class (classes: {labels:?})"),
            });
        }
    }
    let (index, paths) = images(root, dataset);
    let mut cases = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut stages = Stages::default();
    let started = Instant::now();
    vigie_analysis::analyse_stream(model, &paths, hot_loop, |i, outcome| -> Result<()> {
        progress(i + 1, paths.len());
        let (s, f) = index[i];
        let study = &dataset.studies[s];
        let (file, file_sha256) = (&study.files[f], &study.sha256[f]);
        let streamed = match outcome {
            Ok(streamed) => streamed,
            Err(e) => {
                let reason = e.to_string();
                *failures.entry(failure_key(&reason)).or_default() += 1;
                audit.note(
                    AuditEvent::new(
                        EventKind::Inference,
                        "failed",
                        serde_json::json!({ "rule": "validation", "file": file, "error": reason }),
                    )
                    .instance(Some(&study.study_instance_uid), None),
                );
                return Ok(());
            }
        };
        // Header attributes, overridden by the manifest's own.
        let mut subgroups = header_subgroups(&streamed.file);
        subgroups.extend(study.attributes.clone());
        stages.add(&streamed);
        let analysis = &streamed.analysis;
        for result in &analysis.results {
            let Finding::Classification(c) = &result.finding else {
                continue;
            };
            let record = record_inference(
                (audit, dataset, &study.study_instance_uid),
                &streamed,
                result,
                serde_json::json!({
                    "input": {
                        "file": file,
                        "file_sha256": file_sha256,
                        "pixels_sha256": analysis.pixels_sha256,
                    },
                    "decision": c.decision,
                    "frames": [{
                        "raw_output": result.raw_output,
                        "finding": result.finding,
                        "timings_ms": result.timings,
                    }],
                    "ground_truth": study.label,
                }),
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
                audit_record: record,
            });
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let position = |label: &str| labels.iter().position(|l| l == label);
    let mut truth = Vec::new();
    let mut predicted = Vec::new();
    let mut probabilities = Vec::new();
    for case in &cases {
        let (Some(t), Some(p)) = (position(&case.truth), position(&case.decision)) else {
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
    let metrics = stats::classification(labels, &truth, &predicted, &probabilities);
    let subgroups = subgroup_metrics(&cases, labels, &options.claims);
    let operating_points = options
        .operating_points
        .iter()
        .map(|spec| {
            let c = position(&spec.class).unwrap_or(0);
            let scores: Vec<f64> = probabilities
                .iter()
                .map(|p| p.get(c).copied().unwrap_or(0.0))
                .collect();
            let positive: Vec<bool> = truth.iter().map(|t| *t == c).collect();
            OperatingPointEntry {
                class: spec.class.clone(),
                point: stats::operating_point(&scores, &positive, spec.target, spec.value),
            }
        })
        .collect();
    reproducibility.audit.last_inference_record = cases.last().map(|c| c.audit_record);
    Ok(ClassificationReport {
        reproducibility,
        metrics,
        claims: options.claims.clone(),
        subgroups,
        operating_points,
        operational: Operational {
            latency_ms: stages.latency(),
            throughput_images_per_s: if elapsed > 0.0 {
                cases.len() as f64 / elapsed
            } else {
                0.0
            },
            failures,
        },
        cases,
    })
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
    let position = |label: &str| labels.iter().position(|l| l == label);
    groups
        .into_iter()
        .map(|((attribute, value), members)| {
            let known: Vec<(usize, usize, &Case)> = members
                .iter()
                .filter_map(|c| Some((position(&c.truth)?, position(&c.decision)?, *c)))
                .collect();
            let metrics = stats::classification(
                labels,
                &known.iter().map(|k| k.0).collect::<Vec<_>>(),
                &known.iter().map(|k| k.1).collect::<Vec<_>>(),
                &known
                    .iter()
                    .map(|k| k.2.probabilities.clone())
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

fn summary(name: &str, of: &[&SegmentationCase]) -> SegmentSummary {
    let pick = |f: &dyn Fn(&SegmentationCase) -> Option<f64>| -> Vec<f64> {
        of.iter().filter_map(|c| f(c)).collect()
    };
    SegmentSummary {
        segment: name.to_string(),
        n: of.len(),
        dice: mean_ci(&pick(&|c| Some(c.scores.dice))),
        iou: mean_ci(&pick(&|c| Some(c.scores.iou))),
        hd95_mm: mean_ci(&pick(&|c| c.scores.hd95_mm)),
        assd_mm: mean_ci(&pick(&|c| c.scores.assd_mm)),
    }
}

/// Each prediction against the study's reference mask, per segment, in mm.
fn segmentation(
    model: &mut Model,
    hot_loop: &HotLoop,
    (root, dataset): (&Path, &Dataset),
    audit: &Audit,
    mut reproducibility: Reproducibility,
    segments: &BTreeMap<u32, String>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SegmentationReport> {
    let mut cases = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut stages = Stages::default();
    let started = Instant::now();
    let mut scored = 0usize;
    // Images without a reference are failures, not analysed.
    let mut index = Vec::new();
    let mut paths = Vec::new();
    for (s, study) in dataset.studies.iter().enumerate() {
        for (f, file) in study.files.iter().enumerate() {
            if study.references.get(f).is_some() {
                index.push((s, f));
                paths.push(root.join(file));
            } else {
                *failures
                    .entry("no reference segmentation in the manifest".into())
                    .or_default() += 1;
            }
        }
    }
    vigie_analysis::analyse_stream(model, &paths, hot_loop, |i, outcome| -> Result<()> {
        progress(i + 1, paths.len());
        let (s, f) = index[i];
        let study = &dataset.studies[s];
        let file = &study.files[f];
        let Some(reference_path) = study.references.get(f) else {
            return Ok(());
        };
        let loaded = outcome
            .map_err(Error::from)
            .and_then(|streamed| Ok((load_mask(&root.join(reference_path))?, streamed)));
        let ((ref_rows, ref_cols, reference), streamed) = match loaded {
            Ok(x) => x,
            Err(e) => {
                *failures.entry(failure_key(&e.to_string())).or_default() += 1;
                return Ok(());
            }
        };
        let mut subgroups = header_subgroups(&streamed.file);
        subgroups.extend(study.attributes.clone());
        let analysis = &streamed.analysis;
        let spacing = analysis
            .header
            .pixel_spacing
            .map(|s| (s[0], s[1]))
            .unwrap_or((1.0, 1.0));
        scored += 1;
        stages.add(&streamed);
        for result in &analysis.results {
            let Finding::Segmentation(seg) = &result.finding else {
                continue;
            };
            // The model's map back to the reference's grid.
            let predicted = resample_nearest(&seg.mask, seg.rows, seg.columns, ref_rows, ref_cols);
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
                let mask = |data| Mask {
                    rows: ref_rows,
                    columns: ref_cols,
                    data,
                };
                if let Some(scores) = score(&mask(&p), &mask(&r), spacing) {
                    per_segment.push((name.clone(), scores));
                }
            }
            let record = record_inference(
                (audit, dataset, &study.study_instance_uid),
                &streamed,
                result,
                serde_json::json!({
                    "input": { "file": file, "pixels_sha256": analysis.pixels_sha256 },
                    "finding": result.finding,
                    "reference": reference_path,
                    "scores": per_segment,
                }),
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
                    audit_record: record,
                });
            }
        }
        Ok(())
    })?;
    let summaries = segments
        .values()
        .map(|name| {
            let of: Vec<&SegmentationCase> = cases.iter().filter(|c| &c.segment == name).collect();
            summary(name, &of)
        })
        .collect();
    // Per subgroup: each segment's means, with their n.
    let mut keys: Vec<(String, String)> = cases
        .iter()
        .flat_map(|c| c.subgroups.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    let subgroups = keys
        .into_iter()
        .map(|(attribute, value)| {
            let segments = segments
                .values()
                .map(|name| {
                    let of: Vec<&SegmentationCase> = cases
                        .iter()
                        .filter(|c| {
                            &c.segment == name && c.subgroups.get(&attribute) == Some(&value)
                        })
                        .collect();
                    summary(name, &of)
                })
                .collect();
            SegmentationSubgroup {
                attribute,
                value,
                segments,
            }
        })
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    reproducibility.audit.last_inference_record = cases.last().map(|c| c.audit_record);
    Ok(SegmentationReport {
        reproducibility,
        segmentation: summaries,
        subgroups,
        operational: Operational {
            latency_ms: stages.latency(),
            throughput_images_per_s: if elapsed > 0.0 {
                scored as f64 / elapsed
            } else {
                0.0
            },
            failures,
        },
        cases,
    })
}

/// The report files written, and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `report.json`: its path and hash.
    pub json: (PathBuf, String),
    /// `report.md`.
    pub markdown: (PathBuf, String),
    /// `report.html`.
    pub html: (PathBuf, String),
    /// The JSON text (for `--json`).
    pub json_text: String,
}

/// Write `report.json`, `report.md` and `report.html` into `out`, durably,
/// then record `validation_finished` with their hashes and sign a
/// checkpoint: the reports are on record before the run says it is done.
pub fn write_reports(report: &Report, out: &Path, audit: &Audit) -> Result<Written> {
    use sha2::Digest;
    let json_text = report.to_json()?;
    let markdown = report.markdown();
    let html = report.html(&markdown);
    let mut written = Vec::new();
    for (name, text) in [
        ("report.json", &json_text),
        ("report.md", &markdown),
        ("report.html", &html),
    ] {
        let path = out.join(name);
        vigie_dicom_io::write::write_durably(&path, |w| w.write_all(text.as_bytes()))?;
        written.push((path, hex::encode(sha2::Sha256::digest(text.as_bytes()))));
    }
    let r = report.reproducibility();
    let accuracy = match report {
        Report::Classification(c) => serde_json::to_value(c.metrics.accuracy).unwrap_or_default(),
        Report::Segmentation(_) => serde_json::Value::Null,
    };
    audit.record(
        AuditEvent::new(
            EventKind::ValidationFinished,
            "ok",
            serde_json::json!({
                "report_json_sha256": written[0].1,
                "report_md_sha256": written[1].1,
                "report_html_sha256": written[2].1,
                "out": out,
                "cases": report.cases(),
                "accuracy": accuracy,
            }),
        )
        .model(&r.model.id, &r.model.version),
    )?;
    audit.checkpoint()?;
    let mut files = written.into_iter();
    let mut next = || files.next().unwrap_or_default();
    Ok(Written {
        json: next(),
        markdown: next(),
        html: next(),
        json_text,
    })
}
