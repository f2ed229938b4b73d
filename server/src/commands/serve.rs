//! `vigie serve`: the appliance's main job. A DICOM node (C-ECHO, C-STORE)
//! that stores what it receives durably, assembles studies, runs the routed
//! models on worker threads and sends the result objects back by C-STORE,
//! with a small HTTP status side. Runs until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use vigie_dicom_io::net::scp::{self, AllowedCaller, ScpOptions};
use vigie_inference::ModelPackage;
use vigie_inference::manifest::Manifest;

use sha2::Digest;

use crate::audit::{Audit, AuditEvent};
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::http::{HttpState, router};
use crate::ingest::Ingest;
use crate::pipeline::Pipeline;
use crate::routing::Router;
use crate::store::Catalog;
use crate::store::layout::{Layout, create_dir_durably};
use crate::store::sqlite::SqliteCatalog;

/// Apply the command-line overrides.
fn effective(mut config: Config, args: &ServeArgs) -> anyhow::Result<Config> {
    if let Some(dir) = &args.data_dir {
        config.appliance.data_dir = dir.clone();
    }
    if let Some(port) = args.dicom_port {
        config.dicom.port = port;
    }
    if let Some(port) = args.http_port {
        config.http.port = port;
    }
    config.validate()?;
    Ok(config)
}

/// Each model package's `[applies_to]`, by package folder name; the
/// packages the routing rules use are loaded fully (weights hash-checked)
/// so that a broken package stops the start, not the first study.
fn models(
    config: &Config,
    audit: &Audit,
) -> anyhow::Result<BTreeMap<String, vigie_inference::manifest::AppliesTo>> {
    let root = &config.inference.models_dir;
    let mut applies = BTreeMap::new();
    for dir in ModelPackage::discover(root)
        .with_context(|| format!("cannot list model packages in {}", root.display()))?
    {
        let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        match Manifest::from_file(&dir.join(vigie_inference::package::MANIFEST_FILE)) {
            Ok(manifest) => {
                applies.insert(name, manifest.applies_to);
            }
            Err(e) => tracing::warn!(package = %dir.display(), error = %e, "model package skipped"),
        }
    }
    let mut used: Vec<&String> = config
        .routing
        .rules
        .iter()
        .flat_map(|r| {
            if r.models.is_empty() {
                config.inference.default_model.iter().collect::<Vec<_>>()
            } else {
                r.models.iter().collect()
            }
        })
        .collect();
    used.sort();
    used.dedup();
    for id in used {
        let package = match ModelPackage::load(root.join(id)) {
            Ok(p) => p,
            Err(e) => {
                let mut event = AuditEvent::new(
                    "model_refused",
                    "failed",
                    serde_json::json!({ "error": e.to_string(), "when": "start-up verification" }),
                );
                event.model_id = Some(id.clone());
                audit.note(event);
                return Err(anyhow::Error::new(e)
                    .context(format!("model package {id:?} used by the routing rules")));
            }
        };
        audit.record(
            AuditEvent::new(
                "model_verified",
                "ok",
                serde_json::json!({
                    "sha256": package.sha256(),
                    "package": package.dir(),
                    "regulatory_status": package.manifest().model.regulatory_status,
                    "intended_use": package.manifest().model.intended_use,
                }),
            )
            .model(package.id(), package.version()),
        )?;
        tracing::info!(
            model = id.as_str(),
            version = package.version(),
            sha256 = package.sha256(),
            "model package verified"
        );
    }
    Ok(applies)
}

fn scp_options(config: &Config, layout: &Layout) -> ScpOptions {
    let d = &config.dicom;
    let mut options = ScpOptions::new(&d.ae_title, layout.staging());
    options.allowed_callers = d
        .allowed_callers
        .iter()
        .map(|c| AllowedCaller {
            ae_title: c.ae_title.trim().to_string(),
            address: c.address,
        })
        .collect();
    if !d.sop_classes.is_empty() {
        options.sop_classes = d.sop_classes.clone();
    }
    if !d.transfer_syntaxes.is_empty() {
        options.transfer_syntaxes = d.transfer_syntaxes.clone();
    }
    options.max_pdu_length = d.max_pdu_length;
    options.artim_timeout = Duration::from_secs(d.artim_timeout_s.max(1));
    options.idle_timeout = Duration::from_secs(d.idle_timeout_s.max(1));
    options.max_associations = d.max_associations;
    options
}

pub fn run(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(effective(config, &args)?);
    let layout = Layout::new(&config.appliance.data_dir);
    create_dir_durably(layout.root())
        .with_context(|| format!("cannot create data directory {}", layout.root().display()))?;
    let removed = scp::clean_staging(&layout.staging())
        .with_context(|| format!("cannot clean {}", layout.staging().display()))?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "discarded partial transfers from the previous run (never acknowledged)"
        );
    }
    let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(&layout.database())?);
    let reset = catalog.reset_running_jobs()?;
    if reset > 0 {
        tracing::warn!(
            jobs = reset,
            "jobs interrupted by the previous run are pending again"
        );
    }
    let audit = Audit::open(layout.root(), &config.appliance.id, &config.audit)?;
    let effective_toml = config.to_toml()?;
    audit.record(AuditEvent::new(
        "configuration_loaded",
        "ok",
        serde_json::json!({
            "sha256": hex::encode(sha2::Sha256::digest(effective_toml.as_bytes())),
            "effective": effective_toml,
        }),
    ))?;
    audit.record(AuditEvent::new(
        "service_started",
        "ok",
        serde_json::json!({
            "pid": std::process::id(),
            "data_dir": layout.root(),
            "dicom": format!("{}:{}", config.dicom.bind, config.dicom.port),
            "http": format!("{}:{}", config.http.bind, config.http.port),
            "audit_public_key": audit.public_key(),
            "partial_transfers_discarded": removed,
            "jobs_resumed": reset,
        }),
    ))?;
    if let Some((seq, removed)) = audit.apply_retention(config.audit.retention_days)? {
        tracing::info!(up_to = seq, removed, "audit records past retention pruned");
    }
    let router_table = Router::new(&config, models(&config, &audit)?)?;
    audit.checkpoint()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigie-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let dicom_addr = (config.dicom.bind, config.dicom.port);
        let dicom = tokio::net::TcpListener::bind(dicom_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for DICOM on {}:{}",
                    dicom_addr.0, dicom_addr.1
                )
            })?;
        let http_addr = (config.http.bind, config.http.port);
        let http = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| {
                format!("cannot listen for HTTP on {}:{}", http_addr.0, http_addr.1)
            })?;
        let ingest = Arc::new(Ingest::new(
            layout.clone(),
            catalog.clone(),
            audit.clone(),
            config.storage.min_free_mib.saturating_mul(1 << 20),
        ));
        let stats = ingest.stats.clone();
        let pipeline = Pipeline {
            config: config.clone(),
            catalog: catalog.clone(),
            layout: layout.clone(),
            stopping: Arc::new(AtomicBool::new(false)),
            audit: audit.clone(),
        };
        let options = scp_options(&config, &layout);
        tracing::info!(
            ae_title = %config.dicom.ae_title,
            dicom = %format!("{}:{}", dicom_addr.0, dicom_addr.1),
            http = %format!("{}:{}", http_addr.0, http_addr.1),
            data_dir = %layout.root().display(),
            sop_classes = options.sop_classes.len(),
            transfer_syntaxes = options.transfer_syntaxes.len(),
            workers = config.pipeline.workers,
            stable_age_s = config.pipeline.stable_age_s,
            destinations = ?config.destinations.keys().collect::<Vec<_>>(),
            "vigie serving"
        );
        let scp_task = tokio::spawn(scp::serve(dicom, options, ingest));
        tokio::spawn(pipeline.clone().assembly_loop(router_table));
        tokio::spawn(pipeline.clone().delivery_loop());
        let _workers = pipeline.spawn_workers();
        let periodic = audit.clone();
        let interval = Duration::from_secs(config.audit.checkpoint_interval_s.max(1));
        let retention_days = config.audit.retention_days;
        tokio::spawn(async move {
            let mut last_retention = std::time::Instant::now();
            loop {
                tokio::time::sleep(interval).await;
                let audit = periodic.clone();
                let retention_due = last_retention.elapsed() >= Duration::from_secs(86_400);
                if retention_due {
                    last_retention = std::time::Instant::now();
                }
                let _ = tokio::task::spawn_blocking(move || {
                    if retention_due && let Err(e) = audit.apply_retention(retention_days) {
                        tracing::error!(error = %e, "audit retention failed");
                    }
                    if let Err(e) = audit.checkpoint() {
                        tracing::error!(error = %e, "audit checkpoint failed");
                    }
                })
                .await;
            }
        });
        let app = router(HttpState {
            catalog: catalog.clone(),
            ingest: stats,
            appliance: config.appliance.id.clone(),
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("stopping on signal"),
            result = scp_task => {
                pipeline.stopping.store(true, Ordering::Relaxed);
                anyhow::bail!("DICOM listener stopped: {result:?}");
            }
        }
        pipeline.stopping.store(true, Ordering::Relaxed);
        audit.record(AuditEvent::new(
            "service_stopped",
            "ok",
            serde_json::json!({ "pid": std::process::id(), "reason": "signal" }),
        ))?;
        audit.checkpoint()?;
        anyhow::Ok(())
    })?;
    // Worker threads may be inside a job: the process exits anyway; the job
    // is pending again at the next start.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
