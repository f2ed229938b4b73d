//! `vigie`: the appliance binary. Parses the command line, loads the
//! configuration and runs the command.
//!
//! Error policy: `anyhow` is used here, in the binary only; library crates
//! return their typed errors, which are printed with their context.

mod cli;
mod commands;

use vigie_server::{config, logging};

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = cli::Cli::parse();
    // The service logs what it does by default; one-shot commands only warn.
    let serving = matches!(cli.command, cli::Command::Serve(_));
    init_logging(cli.verbose + u8::from(serving));
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vigie: error: {}", chain_text(&err));
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8) {
    logging::init(match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    });
}

/// The error and its causes, each once: typed errors that name their
/// source in their own message would otherwise print it twice
/// (`audit log X: audit log X: …`).
fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Whether a command failed only because its reader went away (written
/// with `?` rather than `println!`).
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Rust ignores SIGPIPE, so `println!` to a closed pipe (`vigie … | head`)
/// panics. Every command then exits quietly with status 0 instead, as
/// ripgrep does; any other panic goes to the default hook.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        // Panics in decoders and workers are caught and fail one instance
        // or one job attempt: one log line through the application log
        // (no patient data: decoders do not print values), not a stack
        // dump on stderr. RUST_BACKTRACE brings the default report back.
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            tracing::error!(
                thread = std::thread::current().name().unwrap_or("unnamed"),
                location = %info.location().map(|l| l.to_string()).unwrap_or_default(),
                %message,
                "panic (caught where it happened; see the failure it caused)"
            );
            return;
        }
        default(info);
    }));
}
