//! `vigie validate import-dicom`: the command side of
//! `vigie_validation::import_dicom` (the model and routing table as
//! `vigie serve` builds them, the appliance's own store as a source,
//! printing, the exit status). Docs: docs/validation.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use vigie_analysis::routing::Router;
use vigie_audit::{Audit, AuditEvent, EventKind};
use vigie_inference::manifest::OutputKind;
use vigie_store::InstanceIndex;
use vigie_store::layout::Layout;
use vigie_store::sqlite::{CATALOG_SCHEMA_VERSION, SqliteCatalog};
use vigie_validation::import_dicom::{
    ImportDicomOptions, ImportOutcome, SourceFile, import_dicom, walk,
};

use crate::cli::ImportDicomArgs;
use crate::config::Config;

/// The catalog of the appliance whose data directory is `dir`, opened as
/// it is: an older schema is not upgraded here (that is `vigie serve`'s,
/// audited), it is refused.
pub(crate) fn open_catalog_as_is(dir: &Path) -> anyhow::Result<SqliteCatalog> {
    let layout = Layout::new(dir);
    let database = layout.database();
    match SqliteCatalog::schema_version(&database)? {
        None => bail!(
            "{}: no catalog (is it a Vigie data directory?)",
            dir.display()
        ),
        Some(v) if v != CATALOG_SCHEMA_VERSION => bail!(
            "{}: catalog schema version {v}, this release reads version {}: start `vigie serve` on it once to upgrade it",
            database.display(),
            CATALOG_SCHEMA_VERSION
        ),
        Some(_) => {}
    }
    Ok(SqliteCatalog::open(&database)?)
}

/// The received instances of the appliance whose data directory is `dir`,
/// each with the AE title that sent it.
fn store_files(dir: &Path) -> anyhow::Result<Vec<SourceFile>> {
    let catalog = open_catalog_as_is(dir)?;
    Ok(catalog
        .received_instances()?
        .into_iter()
        .map(|i| SourceFile {
            path: i.path,
            calling_ae_title: Some(i.calling_ae_title),
        })
        .collect())
}

/// `vigie validate import-dicom`.
pub fn run(config: &Config, args: ImportDicomArgs) -> anyhow::Result<ExitCode> {
    if args.sources.is_empty() && args.from_store.is_none() {
        bail!("give DICOM files or folders, or --from-store DATA_DIR");
    }
    let labels = vigie_validation::labels::read(&args.labels)?;
    // The model and the routing table, as `vigie serve` builds them.
    let resolved = config.resolve()?;
    let dir = resolved.registry.find(args.model.as_deref())?;
    let model = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("model package folder has no name")?;
    let mut applies = BTreeMap::new();
    let mut segments = None;
    for (name, _, manifest) in resolved.registry.manifests()? {
        match manifest {
            Ok(manifest) => {
                if name == model
                    && let OutputKind::Segmentation { labels, .. } = &manifest.output.kind
                {
                    segments = Some(labels.clone());
                }
                applies.insert(name, manifest.applies_to);
            }
            Err(e) if name == model => return Err(e.into()),
            Err(_) => {}
        }
    }
    let router = Router::new(
        &config.routing,
        config.inference.default_model.as_deref(),
        applies,
    )?;
    let (mut files, walk_skipped) = walk(&args.sources)?;
    if let Some(store) = &args.from_store {
        files.extend(store_files(store)?);
    }
    let mut options = ImportDicomOptions::new(
        args.name.clone(),
        model.clone(),
        args.labels
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "labels".into()),
    );
    options.segments = segments;
    options.allow_unmatched = args.allow_unmatched;
    let mut outcome = import_dicom(&files, &labels, &router, &args.out, &options)?;
    outcome.skipped.splice(0..0, walk_skipped);
    if let (Some(store), Some(dataset)) = (&args.from_store, &outcome.dataset) {
        // Copies of received studies left the appliance: traced in its
        // own audit trail.
        let audit = Audit::open(store, &config.appliance.id, &config.audit)?;
        audit.record(AuditEvent::new(
            EventKind::DatasetExported,
            "ok",
            serde_json::json!({
                "dataset": dataset.name,
                "out": args.out,
                "content_sha256": dataset.content_sha256,
                "studies": dataset.studies.iter().map(|s| &s.study_instance_uid).collect::<Vec<_>>(),
                "model": model,
                "labels": args.labels,
            }),
        ))?;
        audit.checkpoint()?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&as_json(&outcome))?);
    } else {
        print_outcome(&outcome, &args.out);
    }
    Ok(if outcome.dataset.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn as_json(outcome: &ImportOutcome) -> serde_json::Value {
    let m = &outcome.matching;
    serde_json::json!({
        "complete": outcome.is_complete(),
        "written": outcome.dataset.is_some(),
        "instances": outcome.instances,
        "studies_found": outcome.studies,
        "skipped": outcome.skipped.iter().map(|s| serde_json::json!({"path": s.path, "reason": s.reason})).collect::<Vec<_>>(),
        "rows_matching_no_study": m.unmatched,
        "rows_matching_several_studies": m.ambiguous.iter().map(|(line, studies)| serde_json::json!({"line": line, "studies": studies})).collect::<Vec<_>>(),
        "studies_without_label": m.unlabelled,
        "studies_not_routed": outcome.not_routed.iter().map(|n| serde_json::json!({"study": n.study_instance_uid, "line": n.line, "note": n.note})).collect::<Vec<_>>(),
        "studies_without_reference": outcome.without_reference.iter().map(|(study, line)| serde_json::json!({"study": study, "line": line})).collect::<Vec<_>>(),
        "images_without_reference": outcome.images_without_reference,
        "series_left_out": outcome.series_left_out.iter().map(|s| serde_json::json!({"study": s.study_instance_uid, "series": s.series_instance_uid, "what": s.what})).collect::<Vec<_>>(),
        "segmentations": outcome.segmentations.iter().map(|s| serde_json::json!({"path": s.path, "sop_instance_uid": s.sop_instance_uid, "masks": s.masks, "notes": s.notes})).collect::<Vec<_>>(),
        "dataset": outcome.dataset.as_ref().map(|d| serde_json::json!({
            "name": d.name,
            "content_sha256": d.content_sha256,
            "studies": d.studies.iter().map(|s| serde_json::json!({
                "study": s.study_instance_uid,
                "label": s.label,
                "source": s.source,
                "series": s.series.iter().map(|x| serde_json::json!({
                    "series": x.series_instance_uid,
                    "modality": x.modality,
                    "description": x.series_description,
                    "rule": x.rule,
                    "images": x.images,
                    "segmentations": x.segmentations,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
    })
}

fn print_outcome(outcome: &ImportOutcome, out: &Path) {
    let m = &outcome.matching;
    println!(
        "read {} DICOM instances in {} studies; {} files skipped",
        outcome.instances,
        outcome.studies,
        outcome.skipped.len()
    );
    for s in &outcome.skipped {
        println!("  skipped {}: {}", s.path.display(), s.reason);
    }
    for line in &m.unmatched {
        println!("  labels line {line}: matches no study");
    }
    for (line, studies) in &m.ambiguous {
        println!(
            "  labels line {line}: matches {} studies ({})",
            studies.len(),
            studies.join(", ")
        );
    }
    for study in &m.unlabelled {
        println!("  study {study}: no labels row");
    }
    for n in &outcome.not_routed {
        println!(
            "  labels line {}: study {}: nothing for the model ({})",
            n.line, n.study_instance_uid, n.note
        );
    }
    for (study, line) in &outcome.without_reference {
        println!("  labels line {line}: study {study}: no image has a reference SEG");
    }
    if outcome.images_without_reference > 0 {
        println!(
            "  {} images of the chosen series have no reference SEG: left out",
            outcome.images_without_reference
        );
    }
    for s in &outcome.series_left_out {
        println!(
            "  study {}: series {} ({}) not taken by the routing rules",
            s.study_instance_uid, s.series_instance_uid, s.what
        );
    }
    for s in &outcome.segmentations {
        println!(
            "  SEG {}: {} reference masks{}",
            s.path.display(),
            s.masks,
            if s.notes.is_empty() {
                String::new()
            } else {
                format!("; {}", s.notes.join("; "))
            }
        );
    }
    match &outcome.dataset {
        Some(d) => {
            let images: usize = d.studies.iter().map(|s| s.files.len()).sum();
            println!(
                "imported {} studies ({images} images) into {} (dataset SHA-256 {}){}",
                d.studies.len(),
                out.display(),
                d.content_sha256,
                if outcome.is_complete() {
                    ""
                } else {
                    "; the problems above were allowed (--allow-unmatched)"
                }
            );
            for s in &d.studies {
                for x in &s.series {
                    println!(
                        "  {} ({}): series {} {} {:?}, rule {}, {} images",
                        s.study_instance_uid,
                        s.source.as_deref().unwrap_or(""),
                        x.series_instance_uid,
                        x.modality.as_deref().unwrap_or("?"),
                        x.series_description.as_deref().unwrap_or(""),
                        x.rule,
                        x.images
                    );
                }
            }
        }
        None => println!(
            "nothing written: resolve the problems above, or pass --allow-unmatched to import the studies that match"
        ),
    }
}
