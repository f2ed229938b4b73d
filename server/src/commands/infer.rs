//! `vigie infer`: run a model on files and print what it found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;
use vigie_analysis::InstanceAnalysis;
use vigie_analysis::results::ResultBuilder;
use vigie_inference::Model;
use vigie_inference::manifest::BackendKind;
use vigie_inference::postprocess::Finding;
use vigie_validation::dataset::Dataset;

use crate::cli::{BackendArg, InferArgs};
use crate::config::Config;

/// Every regular file under the paths (folders recursively, sorted), except
/// hidden files and dataset manifests.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .file_name()
                .is_none_or(|n| n != vigie_validation::dataset::DATASET_FILE)
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files).with_context(|| format!("cannot list {}", path.display()))?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

#[derive(Debug, Serialize)]
struct InstanceReport<'a> {
    path: &'a Path,
    study_instance_uid: &'a str,
    sop_instance_uid: &'a str,
    decode_ms: f64,
    expected_label: Option<&'a str>,
    results: &'a [vigie_inference::ModelResult],
}

#[derive(Debug, Serialize)]
struct WrittenResult {
    source: PathBuf,
    kind: vigie_analysis::results::ResultKind,
    sop_instance_uid: String,
    path: PathBuf,
}

/// Build and write the result objects of every analysis.
fn write_results(
    config: &Config,
    model: &Model,
    analyses: &[InstanceAnalysis],
    dir: &Path,
    summary: bool,
) -> anyhow::Result<Vec<WrittenResult>> {
    let mut builder = ResultBuilder::new(
        &config.appliance.id,
        &config.results.uid_root,
        // Only when asked: `vigie serve` follows results.summary_image
        // (on by default), a command writing files writes what it is told.
        summary,
    )?;
    let manifest = model.package().manifest();
    let mut written = Vec::new();
    for analysis in analyses {
        let file = vigie_dicom_io::DicomFile::open(&analysis.path)?;
        for (frame, result) in analysis.results.iter().enumerate() {
            for object in builder.build(&file, frame, analysis.results.len(), manifest, result)? {
                // UIDs were validated when generated or read: safe as names.
                let path = dir
                    .join(&object.study_instance_uid)
                    .join(&object.series_instance_uid)
                    .join(format!("{}.dcm", object.sop_instance_uid));
                vigie_dicom_io::write::write_part10(object.dataset, &path)?;
                written.push(WrittenResult {
                    source: analysis.path.clone(),
                    kind: object.kind,
                    sop_instance_uid: object.sop_instance_uid,
                    path,
                });
            }
        }
    }
    Ok(written)
}

/// An instance that was not analysed: the file, its SOP Instance UID (from
/// the error, else the Media Storage SOP Instance UID of its file meta
/// group, which a truncated data set still has; absent when neither tells),
/// a stable reason code ([`vigie_analysis::Error::code`]) and the full
/// message.
#[derive(Debug, Serialize)]
struct Failure {
    path: PathBuf,
    sop_instance_uid: Option<String>,
    reason: &'static str,
    error: String,
}

impl Failure {
    fn of(path: &std::path::Path, err: &vigie_analysis::Error) -> Self {
        let sop_instance_uid = err.sop_instance_uid().map(str::to_string).or_else(|| {
            vigie_dicom_io::file::read_meta(path)
                .ok()
                .map(|meta| meta.sop_instance_uid)
                .filter(|uid| !uid.is_empty())
        });
        Failure {
            path: path.to_path_buf(),
            sop_instance_uid,
            reason: err.code(),
            error: err.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    instances: usize,
    studies: usize,
    failed: usize,
    decisions: BTreeMap<String, usize>,
    labelled: usize,
    correct: usize,
}

pub fn run(config: &Config, args: InferArgs) -> anyhow::Result<ExitCode> {
    let mut files = collect_files(&args.paths)?;
    let mut labels: BTreeMap<PathBuf, String> = BTreeMap::new();
    if let Some(dataset) = &args.dataset {
        let (root, manifest) = Dataset::load(dataset)?;
        for study in &manifest.studies {
            for file in &study.files {
                let path = root.join(file);
                labels.insert(path.clone(), study.label.clone());
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        bail!("nothing to analyse: give DICOM files or folders, or --dataset");
    }
    let backend = args.backend.map(|b| match b {
        BackendArg::Onnx => BackendKind::Onnx,
        BackendArg::Candle => BackendKind::Candle,
    });
    let resolved = config.resolve()?;
    let mut model = resolved.load_model(args.model.as_deref(), backend)?;
    tracing::info!(
        model = model.package().id(),
        files = files.len(),
        "analysing"
    );
    let mut analyses: Vec<InstanceAnalysis> = Vec::new();
    let mut failures = Vec::new();
    // The hot loop of `vigie serve`, with the same thread settings and the
    // model's batching: decode and preprocessing run ahead of the model.
    let hot_loop = resolved.hot_loop(model.package().id());
    if let Some(&cpu) = resolved.threads.model_cpus.first() {
        vigie_inference::threads::pin_current_thread(cpu);
    }
    vigie_analysis::analyse_stream(&mut model, &files, &hot_loop, |index, outcome| {
        match outcome {
            Ok(streamed) => analyses.push(streamed.analysis),
            Err(err) => {
                let path = &files[index];
                tracing::warn!(file = %path.display(), error = %err, "instance not analysed");
                failures.push(Failure::of(path, &err));
            }
        }
        Ok::<(), std::convert::Infallible>(())
    })?;
    let mut summary = Summary {
        instances: analyses.len(),
        studies: analyses
            .iter()
            .map(|a| a.header.study_instance_uid.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        failed: failures.len(),
        decisions: BTreeMap::new(),
        labelled: 0,
        correct: 0,
    };
    for analysis in &analyses {
        for result in &analysis.results {
            if let Finding::Classification(c) = &result.finding {
                *summary.decisions.entry(c.decision.clone()).or_default() += 1;
                if let Some(expected) = labels.get(&analysis.path) {
                    summary.labelled += 1;
                    summary.correct += usize::from(&c.decision == expected);
                }
            }
        }
    }
    let written = match &args.results {
        Some(dir) => write_results(config, &model, &analyses, dir, args.summary)
            .context("writing result objects")?,
        None => Vec::new(),
    };
    let reports: Vec<InstanceReport<'_>> = analyses
        .iter()
        .map(|a| InstanceReport {
            path: &a.path,
            study_instance_uid: &a.header.study_instance_uid,
            sop_instance_uid: &a.header.sop_instance_uid,
            decode_ms: a.decode_ms,
            expected_label: labels.get(&a.path).map(String::as_str),
            results: &a.results,
        })
        .collect();
    if args.json {
        let doc = serde_json::json!({
            "model": {
                "id": model.package().id(),
                "version": model.package().version(),
                "sha256": model.package().sha256(),
                "regulatory_status": model.package().manifest().model.regulatory_status,
            },
            "execution": model.execution(),
            "instances": reports,
            "failures": failures,
            "results": written,
            "summary": summary,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&model, &reports, &failures, &summary);
        for w in &written {
            println!(
                "wrote {:?} {} for {}",
                w.kind,
                w.path.display(),
                w.source.display()
            );
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(
    model: &Model,
    reports: &[InstanceReport<'_>],
    failures: &[Failure],
    summary: &Summary,
) {
    let package = model.package();
    let execution = model.execution();
    println!(
        "model {} {} (sha256 {}) on {} / {} ({} threads)",
        package.id(),
        package.version(),
        package.sha256(),
        execution.backend,
        execution.provider,
        execution.intra_threads
    );
    println!("{}", package.manifest().model.regulatory_status);
    let mut by_study: BTreeMap<&str, Vec<&InstanceReport<'_>>> = BTreeMap::new();
    for r in reports {
        by_study.entry(r.study_instance_uid).or_default().push(r);
    }
    for (study, instances) in by_study {
        println!("\nstudy {study}");
        for r in instances {
            println!("  instance {} ({})", r.sop_instance_uid, r.path.display());
            for (frame, result) in r.results.iter().enumerate() {
                let t = result.timings;
                match &result.finding {
                    Finding::Classification(c) => {
                        let probs: Vec<String> = c
                            .labels
                            .iter()
                            .zip(&c.probabilities)
                            .map(|(l, p)| format!("{l} {p:.4}"))
                            .collect();
                        let check = match r.expected_label {
                            Some(e) if e == c.decision => format!("  [expected {e}: correct]"),
                            Some(e) => format!("  [expected {e}: WRONG]"),
                            None => String::new(),
                        };
                        println!("    frame {frame}: {} ({}){check}", c.decision, c.rule);
                        println!("      probabilities: {}", probs.join(", "));
                    }
                    Finding::Segmentation(s) => {
                        let fg = s.mask.iter().filter(|v| **v != 0).count();
                        println!(
                            "    frame {frame}: segmentation {}x{}, {fg} foreground pixels",
                            s.rows, s.columns
                        );
                    }
                }
                println!(
                    "      timings: decode {:.1} ms, preprocess {:.1} ms, inference {:.1} ms",
                    r.decode_ms, t.preprocess_ms, t.inference_ms
                );
            }
        }
    }
    for f in failures {
        println!("\nFAILED {} [{}]: {}", f.path.display(), f.reason, f.error);
    }
    let decisions: Vec<String> = summary
        .decisions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "\nsummary: {} instances in {} studies analysed, {} failed; decisions: {}",
        summary.instances,
        summary.studies,
        summary.failed,
        if decisions.is_empty() {
            "none".into()
        } else {
            decisions.join(", ")
        }
    );
    if summary.labelled > 0 {
        println!("labelled: {}/{} correct", summary.correct, summary.labelled);
    }
}
