//! The service `vigie serve` runs, as a library: [`Service::open`] does
//! everything that comes before the listeners (the data directory lock,
//! the audit head check, the catalog opened and migrated, files unknown
//! to it moved aside, interrupted jobs recovered, the start on record),
//! [`Service::bind`] opens the DICOM and HTTP listeners, and
//! [`Bound::run`] serves until its cancellation token is cancelled, then
//! stops both listeners together, gracefully, and the pipeline after
//! them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use vigie_audit::{Audit, AuditEvent, EventKind};
use vigie_dicom_io::net::scp::{self, Listener, ScpOptions};
use vigie_dicom_io::net::tls::DicomTls;
use vigie_inference::ModelPackage;
use vigie_store::layout::{DataDirLock, Layout, Reserve, create_dir_durably};
use vigie_store::sqlite::SqliteCatalog;
use vigie_store::{Catalog, now_ms};

use crate::backlog::Backlog;
use crate::config::Config;
use crate::http::ModelInfo;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use vigie_analysis::routing::Router;

/// What the service holds from its opening to its stop.
struct Core {
    config: Arc<Config>,
    layout: Layout,
    /// Held for the life of the service: one process per data directory.
    _lock: DataDirLock,
    audit: Audit,
    catalog: Arc<dyn Catalog>,
    /// Kept until the stop: released on a full disk so refusals get
    /// recorded.
    reserve: Arc<Reserve>,
    router: Router,
}

/// The service, opened: its state checked and recovered, its start on
/// record, not listening yet.
pub struct Service {
    core: Core,
    metrics: Arc<Metrics>,
    models: Vec<ModelInfo>,
    onnxruntime: Result<String, String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("data_dir", &self.core.layout.root())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Open the service of `config` (already validated): lock the data
    /// directory first (a second process would clean the first one's
    /// staging and share its catalog and audit trail), check the audit
    /// head, open the catalog (an older schema migrated and recorded, a
    /// newer one refused), move files unknown to the catalog aside,
    /// recover jobs found running, record the configuration and the start,
    /// apply retention, verify the routed model packages.
    pub fn open(config: Arc<Config>) -> anyhow::Result<Self> {
        let layout = Layout::new(&config.appliance.data_dir);
        create_dir_durably(layout.root())
            .with_context(|| format!("cannot create data directory {}", layout.root().display()))?;
        // Before anything else touches the directory: a second process would
        // clean the first one's staging and share its catalog and audit trail.
        let lock = vigie_store::layout::DataDirLock::acquire(layout.root())?;
        let removed = scp::clean_staging(&layout.staging())
            .with_context(|| format!("cannot clean {}", layout.staging().display()))?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "discarded partial transfers from the previous run (never acknowledged)"
            );
        }
        // Priors retrieved for jobs a crash interrupted: fetched again when
        // those jobs run.
        match std::fs::remove_dir_all(layout.all_priors()) {
            Ok(()) => tracing::info!("removed prior studies left by the previous run"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot clean {}", layout.all_priors().display()));
            }
        }
        let audit = Audit::open(layout.root(), &config.appliance.id, &config.audit)?;
        // Before anything is recorded or changed: a head ahead of the log
        // means records went missing (truncation, an older backup); starting
        // would hide it.
        audit.check_head()?;
        // An older catalog is migrated here, in one transaction; a newer one
        // is refused by name and both versions, untouched.
        let sqlite_catalog = SqliteCatalog::open(&layout.database())?;
        for (what, path, migration) in [
            (
                "audit trail",
                layout.root().join(vigie_audit::sqlite::DATABASE),
                audit.migrated(),
            ),
            ("catalog", layout.database(), sqlite_catalog.migrated()),
        ] {
            if let Some(m) = migration {
                tracing::warn!(what, from = m.from, to = m.to, "stored schema migrated");
                audit.record(AuditEvent::new(
                    EventKind::SchemaMigrated,
                    "ok",
                    serde_json::json!({
                        "database": what,
                        "path": path,
                        "from_version": m.from,
                        "to_version": m.to,
                        "software_version": vigie_audit::SOFTWARE_VERSION,
                    }),
                ))?;
            }
        }
        let catalog: Arc<dyn Catalog> = Arc::new(sqlite_catalog);
        let reserve = Arc::new(vigie_store::layout::Reserve::new(
            layout.reserve(),
            config.storage.reserve_mib.saturating_mul(1 << 20),
        ));
        let orphans = remove_orphans(&layout, catalog.as_ref(), &audit)?;
        let reset = catalog.reset_running_jobs(config.pipeline.max_interrupted, now_ms())?;
        if !reset.requeued.is_empty() {
            tracing::warn!(
                jobs = ?reset.requeued,
                "jobs interrupted by the previous run are pending again"
            );
        }
        for id in &reset.quarantined {
            tracing::error!(
                job = id,
                max_interrupted = config.pipeline.max_interrupted,
                "job quarantined: the service stopped while running it too many times; retry it with POST /api/v1/jobs/{{id}}/retry once the cause is known"
            );
            audit.record(AuditEvent::new(
            EventKind::JobQuarantined,
            "failed",
            serde_json::json!({ "job_id": id, "max_interrupted": config.pipeline.max_interrupted }),
        ))?;
        }
        let reset = reset.requeued.len();
        let effective_toml = config.to_toml()?;
        audit.record(AuditEvent::new(
            EventKind::ConfigurationLoaded,
            "ok",
            serde_json::json!({
                "sha256": hex::encode(sha2::Sha256::digest(effective_toml.as_bytes())),
                "effective": effective_toml,
            }),
        ))?;
        audit.record(AuditEvent::new(
            EventKind::ServiceStarted,
            "ok",
            serde_json::json!({
                "pid": std::process::id(),
                "data_dir": layout.root(),
                "dicom": format!("{}:{}", config.dicom.bind, config.dicom.port),
                "http": format!("{}:{}", config.http.bind, config.http.port),
                "audit_public_key": audit.public_key(),
                "partial_transfers_discarded": removed,
                "orphans_moved": orphans,
                "jobs_resumed": reset,
            }),
        ))?;
        if let Some((seq, removed)) = audit.apply_retention(config.audit.retention_days)? {
            tracing::info!(up_to = seq, removed, "audit records past retention pruned");
        }
        let metrics = Arc::new(Metrics::default());
        let (applies, model_infos) = models(&config, &audit, &metrics)?;
        let router_table = Router::new(
            &config.routing,
            config.inference.default_model.as_deref(),
            applies,
        )
        .with_context(|| {
            format!(
                "model packages in {}",
                config.inference.models_dir.display()
            )
        })?;
        let ort = onnxruntime(&config);
        if let Err(reason) = &ort {
            tracing::warn!(%reason, "ONNX Runtime not loaded: ONNX models cannot run; /readyz says not ready");
        }
        audit.checkpoint()?;
        Ok(Self {
            core: Core {
                config,
                layout,
                _lock: lock,
                audit,
                catalog,
                reserve,
                router: router_table,
            },
            metrics,
            models: model_infos,
            onnxruntime: ort,
        })
    }

    /// Listen for DICOM and HTTP on the configured addresses (port 0: any
    /// free port, see [`Bound::dicom_addr`]).
    pub async fn bind(self) -> anyhow::Result<Bound> {
        let Service {
            core,
            metrics,
            models: model_infos,
            onnxruntime: ort,
        } = self;
        let Core {
            config,
            layout,
            audit,
            catalog,
            reserve,
            ..
        } = &core;
        let dicom_tls = match &config.dicom.tls {
            Some(settings) => {
                let loaded = DicomTls::load(settings.files())
                    .context("cannot load the DICOM TLS certificate (dicom.tls)")?;
                tls_loaded(audit, &metrics, "loaded", &loaded);
                Some(Arc::new(loaded))
            }
            None => None,
        };
        let mut listeners = Vec::new();
        let plaintext = config.dicom.tls.as_ref().is_none_or(|t| t.plaintext);
        let ports = [
            plaintext.then_some((config.dicom.port, None)),
            config
                .dicom
                .tls
                .as_ref()
                .zip(dicom_tls.clone())
                .map(|(t, loaded)| (t.port, Some(loaded))),
        ];
        for (port, tls) in ports.into_iter().flatten() {
            let tcp = tokio::net::TcpListener::bind((config.dicom.bind, port))
                .await
                .with_context(|| {
                    format!(
                        "cannot listen for DICOM{} on {}:{port}",
                        if tls.is_some() { " over TLS" } else { "" },
                        config.dicom.bind
                    )
                })?;
            listeners.push(Listener { tcp, tls });
        }
        let http_addr = (config.http.bind, config.http.port);
        // tokio's bind sets SO_REUSEADDR: a restart does not wait for the
        // previous run's connections in TIME_WAIT.
        let http = tokio::net::TcpListener::bind(http_addr)
            .await
            .and_then(|l| l.into_std())
            .with_context(|| {
                format!("cannot listen for HTTP on {}:{}", http_addr.0, http_addr.1)
            })?;
        let tls = match &config.http.tls {
            Some(tls) => Some(crate::http::tls_config(tls).await.with_context(|| {
                format!(
                    "cannot load the TLS certificate {} and key {}",
                    tls.certificate.display(),
                    tls.private_key.display()
                )
            })?),
            None => None,
        };
        let backlog = Arc::new(
            Backlog::new(
                config.pipeline.max_backlog,
                Backlog::count(&catalog.job_counts()?),
            )
            .forget_after(Duration::from_secs_f64(
                (config.pipeline.stable_age_s.max(0.0) * 2.0 + 600.0).min(86_400.0),
            )),
        );
        let reviews = Arc::new(crate::reviews::ReviewDesk::new(
            catalog.clone(),
            audit.clone(),
            metrics.clone(),
            &model_infos,
            &config.results.review_senders,
        ));
        let pipeline = Pipeline {
            config: config.clone(),
            catalog: catalog.clone(),
            layout: layout.clone(),
            stop: CancellationToken::new(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            backlog: backlog.clone(),
            wake: Arc::default(),
            resolved: Arc::new(config.resolve()?),
            health: Arc::default(),
            dicom_tls: dicom_tls.clone(),
        };
        // Storage commitment reports are taken only when some destination
        // asks for commitment.
        let commitment = config.destinations.values().any(|d| d.commitment);
        let ingest = Arc::new(
            Ingest::new(
                layout.clone(),
                catalog.clone().as_instance_index(),
                reviews.clone(),
                audit.clone(),
                config.storage.min_free_mib.saturating_mul(1 << 20),
                metrics.clone(),
                backlog.clone(),
                reserve.clone(),
            )
            .with_duplicate_policy(config.storage.duplicates)
            .with_query(
                config.dicom.query.then(|| catalog.clone().as_web_index()),
                config
                    .destinations
                    .values()
                    .filter_map(|d| {
                        crate::pipeline::delivery::remote_ae(d, dicom_tls.as_ref())
                            .map(|r| (d.ae_title.trim().to_string(), r))
                    })
                    .collect(),
            )
            .with_release_grace(
                config
                    .pipeline
                    .release_grace_s
                    .map(|s| Duration::from_secs_f64(s.clamp(0.0, 86_400.0))),
            )
            .with_commitment(commitment.then(|| pipeline.clone())),
        );
        let mut options = config.dicom.scp_options(&layout.staging());
        options.commitment_reports = commitment;
        let tokens = crate::http::auth::Tokens::new(&config.http.tokens);
        if tokens.is_empty() {
            tracing::warn!(
                "no HTTP tokens configured: every endpoint but /healthz and /readyz answers 401; see `vigie token new`"
            );
        }
        let app = crate::http::app(crate::http::AppState(Arc::new(crate::http::App {
            config: config.clone(),
            catalog: catalog.clone(),
            ingest: ingest.clone(),
            audit: audit.clone(),
            layout: layout.clone(),
            tokens,
            metrics: metrics.clone(),
            models: model_infos,
            onnxruntime: ort,
            acceptance: crate::http::Acceptance {
                sop_classes: options.sop_classes.clone(),
                transfer_syntaxes: options.transfer_syntaxes.clone(),
            },
            tls: tls.is_some(),
            started: std::time::Instant::now(),
            backlog,
            workers: pipeline.health.clone(),
            reviews,
        })));
        Ok(Bound {
            core,
            listeners,
            dicom_tls,
            http,
            tls,
            options,
            ingest,
            pipeline,
            app,
        })
    }
}

/// The service with its listeners open and its parts built, not serving
/// yet.
pub struct Bound {
    core: Core,
    /// DICOM in clear and/or over TLS.
    listeners: Vec<Listener>,
    dicom_tls: Option<Arc<DicomTls>>,
    http: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    options: ScpOptions,
    ingest: Arc<Ingest>,
    pipeline: Pipeline,
    app: axum::Router,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("dicom", &self.dicom_addr().ok())
            .field("http", &self.http.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The first DICOM listener's address (in clear unless TLS only).
    pub fn dicom_addr(&self) -> std::io::Result<SocketAddr> {
        match self.listeners.first() {
            Some(listener) => listener.tcp.local_addr(),
            None => Err(std::io::Error::other("no DICOM listener")),
        }
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The HTTP application, with every middleware, for tests that call it
    /// in process (tower's `oneshot`) without a socket.
    pub fn app(&self) -> axum::Router {
        self.app.clone()
    }

    /// Serve until `shutdown` is cancelled (or a listener fails): then both
    /// listeners stop accepting, requests and associations in flight get
    /// `http.shutdown_grace_s` to finish, the pipeline stops, jobs in
    /// progress are pending again, and the stop is on record.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Bound {
            core,
            listeners,
            dicom_tls,
            http,
            tls,
            options,
            ingest,
            pipeline,
            app,
        } = self;
        let Core {
            config,
            layout,
            audit,
            catalog,
            router,
            ..
        } = &core;
        let address = |tls: bool| {
            listeners
                .iter()
                .filter(|l| l.tls.is_some() == tls)
                .find_map(|l| l.tcp.local_addr().ok())
                .map_or_else(|| "off".to_string(), |a| a.to_string())
        };
        let (dicom_addr, dicom_tls_addr) = (address(false), address(true));
        let http_addr = http.local_addr()?;
        tracing::info!(
            ae_title = %config.dicom.ae_title,
            dicom = %dicom_addr,
            dicom_tls = %dicom_tls_addr,
            http = %http_addr,
            data_dir = %layout.root().display(),
            sop_classes = options.sop_classes.len(),
            transfer_syntaxes = options.transfer_syntaxes.len(),
            workers = config.pipeline.workers,
            intra_threads = pipeline.resolved.threads.intra_threads,
            decode_threads = pipeline.resolved.threads.decode_threads,
            pinned = !pipeline.resolved.threads.model_cpus.is_empty(),
            stable_age_s = config.pipeline.stable_age_s,
            destinations = ?config.destinations.keys().collect::<Vec<_>>(),
            "vigie serving"
        );
        let grace = Duration::from_secs(config.http.shutdown_grace_s);
        let dicom_stop = shutdown.clone().cancelled_owned();
        let closing = ingest.clone();
        let mut scp_task = tokio::spawn(scp::serve_listeners_until(
            listeners, options, ingest, dicom_stop, grace,
        ));
        if let (Some(loaded), Some(settings)) = (dicom_tls, &config.dicom.tls) {
            tokio::spawn(reload_tls(
                loaded,
                audit.clone(),
                pipeline.metrics.clone(),
                Duration::from_secs(settings.reload_check_s),
            ));
        }
        let handle = axum_server::Handle::new();
        let mut http_task = tokio::spawn(crate::http::serve(http, app, tls, handle.clone()));
        tokio::spawn(pipeline.clone().assembly_loop(router.clone()));
        tokio::spawn(pipeline.clone().delivery_loop());
        tokio::spawn(pipeline.clone().commitment_loop());
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
        // Biased: once the token is cancelled the DICOM listener ends too
        // (it watches the same token); that is the stop, not a failure.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => tracing::info!("stopping"),
            result = &mut scp_task => {
                shutdown.cancel();
                pipeline.stop.cancel();
                anyhow::bail!("DICOM listener stopped: {result:?}");
            }
            result = &mut http_task => {
                shutdown.cancel();
                pipeline.stop.cancel();
                anyhow::bail!("HTTP listener stopped: {result:?}");
            }
        }
        // Both listeners stop accepting (the DICOM one saw the token);
        // requests and associations in flight get the grace period.
        handle.graceful_shutdown(Some(grace));
        let drained = tokio::time::timeout(grace + scp::CUT_WAIT + Duration::from_secs(1), async {
            let _ = (&mut http_task).await;
            let _ = (&mut scp_task).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "requests still in flight after the grace period were dropped"
            );
        }
        pipeline.stop.cancel();
        // Let the dispatcher see it (it polls every 200 ms) before the jobs
        // it claimed are released.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A job a worker is still on was not interrupted by a fault: it is
        // pending again without counting towards quarantine.
        let releasing = catalog.clone();
        match tokio::task::spawn_blocking(move || releasing.release_running_jobs(now_ms())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(
                jobs = n,
                "jobs in progress are pending again for the next start"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot release the jobs in progress"),
            _ => {}
        }
        // The pixel-hash records still gathered go into the trail before
        // the service's last record.
        let _ = tokio::task::spawn_blocking(move || closing.close()).await;
        audit.record(AuditEvent::new(
            EventKind::ServiceStopped,
            "ok",
            serde_json::json!({ "pid": std::process::id(), "reason": "signal" }),
        ))?;
        audit.checkpoint()?;
        drop(core);
        Ok(())
    }
}

const TLS_EXPIRY: &str = "vigie_dicom_tls_certificate_expiry_timestamp_seconds";
const TLS_EXPIRY_HELP: &str =
    "End of validity (Unix seconds) of the DICOM TLS certificate presented now.";

/// On record: the DICOM TLS certificate now presented (`loaded` at start,
/// `reloaded`), with its expiry as a metric; a warning when it expires
/// within 30 days.
fn tls_loaded(audit: &Audit, metrics: &Metrics, outcome: &str, tls: &DicomTls) {
    let certificate = tls.certificate();
    metrics.set(
        TLS_EXPIRY,
        TLS_EXPIRY_HELP,
        &[],
        certificate.not_after as f64,
    );
    tracing::info!(
        subject = %certificate.subject,
        sha256 = %certificate.sha256,
        days_left = certificate.seconds_left() / 86_400,
        "DICOM TLS certificate {outcome}"
    );
    warn_if_expiring(&certificate);
    audit.note(AuditEvent::new(
        EventKind::TlsCertificate,
        outcome,
        serde_json::json!({
            "subject": certificate.subject,
            "issuer": certificate.issuer,
            "names": certificate.names,
            "not_after": certificate.not_after,
            "sha256": certificate.sha256,
            "certificate": tls.files().certificate.display().to_string(),
            "client_certificates": tls.files().client_auth,
        }),
    ));
}

/// A warning when the certificate presented expires within 30 days (at
/// each load, and every six hours while it is in use).
fn warn_if_expiring(certificate: &vigie_dicom_io::net::tls::CertificateSummary) {
    let days_left = certificate.seconds_left() / 86_400;
    if days_left < 30 {
        tracing::warn!(
            subject = %certificate.subject,
            days_left,
            "the DICOM TLS certificate expires within 30 days: renew it (reloaded on SIGHUP or within dicom.tls.reload_check_s)"
        );
    }
}

/// Reload the DICOM TLS files on SIGHUP, and when they change (checked
/// every `check`; zero: on SIGHUP only). A set that does not load leaves
/// the previous one in use, on record as `reload_failed`.
async fn reload_tls(tls: Arc<DicomTls>, audit: Audit, metrics: Arc<Metrics>, check: Duration) {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let every = Duration::from_secs(6 * 3600);
    let mut expiry_check = tokio::time::Instant::now() + every;
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        let periodic = async {
            if check.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(check).await;
        };
        let forced = tokio::select! {
            received = hangup => {
                if !received {
                    hangups = None;
                    continue;
                }
                true
            }
            () = periodic => false,
            () = tokio::time::sleep_until(expiry_check) => {
                expiry_check = tokio::time::Instant::now() + every;
                warn_if_expiring(&tls.certificate());
                continue;
            }
        };
        let reloading = tls.clone();
        let result = tokio::task::spawn_blocking(move || {
            if forced {
                Some(reloading.reload())
            } else {
                reloading.reload_if_changed()
            }
        })
        .await;
        match result {
            Ok(Some(Ok(_))) => tls_loaded(&audit, &metrics, "reloaded", &tls),
            Ok(Some(Err(e))) => {
                tracing::error!(error = %e, "DICOM TLS certificate not reloaded: the previous one stays in use");
                audit.note(AuditEvent::new(
                    EventKind::TlsCertificate,
                    "reload_failed",
                    serde_json::json!({
                        "error": e.to_string(),
                        "in_use_sha256": tls.certificate().sha256,
                    }),
                ));
            }
            _ => {}
        }
    }
}

/// Each model package's `[applies_to]`, by package folder name; the
/// packages the routing rules use are loaded fully (weights hash-checked)
/// so that a broken package stops the start, not the first study.
type Applies = BTreeMap<String, vigie_inference::manifest::AppliesTo>;

fn models(
    config: &Config,
    audit: &Audit,
    metrics: &Metrics,
) -> anyhow::Result<(Applies, Vec<ModelInfo>)> {
    let default_model = config.inference.default_model.as_deref();
    let mut applies = BTreeMap::new();
    let mut infos = Vec::new();
    for (name, dir, manifest) in config.resolve()?.registry.manifests()? {
        let rules: Vec<String> = config
            .routing
            .rules
            .iter()
            .filter(|r| r.models_or(default_model).contains(&name))
            .map(|r| r.name.clone())
            .collect();
        let mut info = ModelInfo {
            id: name.clone(),
            manifest: None,
            sha256: None,
            verified: false,
            active: !rules.is_empty(),
            rules,
            error: None,
        };
        match manifest {
            Ok(manifest) => {
                info.manifest = serde_json::to_value(&manifest).ok();
                applies.insert(name, manifest.applies_to);
            }
            Err(e) => {
                tracing::warn!(package = %dir.display(), error = %e, "model package skipped");
                info.error = Some(e.to_string());
            }
        }
        infos.push(info);
    }
    let mut used: Vec<String> = config
        .routing
        .rules
        .iter()
        .flat_map(|r| r.models_or(default_model))
        .collect();
    used.sort();
    used.dedup();
    for id in &used {
        let package = match ModelPackage::load(config.inference.models_dir.join(id)) {
            Ok(p) => p,
            Err(e) => {
                let mut event = AuditEvent::new(
                    EventKind::ModelRefused,
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
                EventKind::ModelVerified,
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
        metrics.set(
            "vigie_model_verified",
            "Routed model packages whose weights were hash-checked at start (1), by model and version.",
            &[("model", package.id()), ("version", package.version())],
            1.0,
        );
        if let Some(info) = infos.iter_mut().find(|i| &i.id == id) {
            info.sha256 = Some(package.sha256().to_string());
            info.verified = true;
        }
    }
    Ok((applies, infos))
}

/// Whether the ONNX Runtime library loads, for `/readyz`.
fn onnxruntime(config: &Config) -> Result<String, String> {
    let options = config
        .inference
        .backend_options()
        .map_err(|e| e.to_string())?;
    let library = options.onnxruntime_library.clone();
    vigie_inference::backend::onnx::init_runtime(library.as_deref())
        .map(|_| {
            format!(
                "loaded from {}",
                library
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "ORT_DYLIB_PATH".into())
            )
        })
        .map_err(|e| e.to_string())
}

/// Files under `studies/` and `results/` that the catalog does not know:
/// an instance renamed into place whose index commit failed (a full disk,
/// a crash between the two), a result written by a job attempt that was
/// killed before it committed. None was acknowledged or delivered. Each is
/// moved to `orphaned/` (never deleted: an operator decides) with an
/// `orphan_moved` audit record (its SHA-256, size and why), so that nothing
/// sits in the store unknown, undelivered and unaccounted for. Files are
/// matched on their place under the data directory, so a data directory
/// moved or restored elsewhere keeps everything. Returns how many.
fn remove_orphans(layout: &Layout, catalog: &dyn Catalog, audit: &Audit) -> anyhow::Result<usize> {
    let mut moved = 0;
    for orphan in layout.orphans(&catalog.known_paths()?)? {
        let path = &orphan.path;
        let (bytes, sha256) = match hash_file(path) {
            Ok(hashed) => hashed,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read a file unknown to the catalog; left in place");
                continue;
            }
        };
        audit.record(AuditEvent::new(
            EventKind::OrphanMoved,
            "ok",
            serde_json::json!({
                "path": path,
                "moved_to": orphan.moved_to,
                "bytes": bytes,
                "sha256": sha256,
                "reason": orphan.reason,
            }),
        ))?;
        match orphan.move_aside() {
            Ok(()) => moved += 1,
            // Not fatal: the service starts; the file is found again at the
            // next start.
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot move a file unknown to the catalog")
            }
        }
    }
    if moved > 0 {
        tracing::warn!(
            moved,
            "files unknown to the catalog moved to orphaned/ (see orphan_moved in the audit trail)"
        );
    }
    Ok(moved)
}

/// Size and SHA-256 (hex) of a file, read as a stream.
fn hash_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}
