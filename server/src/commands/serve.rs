//! `vigie serve`: the appliance's main job (`vigie_server::service`). A
//! DICOM node (C-ECHO, C-STORE) that stores what it receives durably,
//! assembles studies, runs the routed models on worker threads and sends
//! the result objects back by C-STORE, with an HTTP side. Runs until
//! SIGINT/SIGTERM; SIGHUP re-reads the log settings.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use vigie_server::service::Service;

use crate::cli::ServeArgs;
use crate::config::Config;

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

/// `vigie serve`.
pub fn run(config: Config, args: ServeArgs, file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Arc::new(effective(config, &args)?);
    crate::logging::apply(&config.log).map_err(|e| anyhow::anyhow!(e))?;
    let service = Service::open(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigie-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let bound = service.bind().await?;
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping on signal");
            on_signal.cancel();
        });
        tokio::spawn(reload_logging_on_sighup(file));
        bound.run(shutdown).await
    })?;
    // Worker threads may be inside a job: the process exits anyway; the job
    // is pending again at the next start.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

/// On SIGHUP, read the configuration file anew and apply its `[log]`
/// (level, format); the rest of the configuration needs a restart.
async fn reload_logging_on_sighup(file: Option<PathBuf>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangups.recv().await.is_some() {
        let applied = Config::load(file.as_deref())
            .map_err(|e| format!("{e:#}"))
            .and_then(|c| crate::logging::apply(&c.log).map(|()| c.log));
        match applied {
            Ok(log) => tracing::warn!(
                level = %log.level,
                format = ?log.format,
                "SIGHUP: log settings applied (other settings need a restart, but the [dicom.tls] files, when configured, are reloaded on SIGHUP too)"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
        }
    }
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
