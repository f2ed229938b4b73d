//! `vigie`: the appliance binary. Parses the command line, loads the
//! configuration and runs the command.
//!
//! Error policy: `anyhow` is used here, in the binary only; library crates
//! return their typed errors, which are printed with their context.

mod cli;
mod commands;
mod http;
mod ingest;
mod logging;
mod metrics;
mod pipeline;
mod routing;

use vigie_server::{audit, config, store};

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The service logs what it does by default; one-shot commands only warn.
    let serving = matches!(cli.command, cli::Command::Serve(_));
    init_logging(cli.verbose + u8::from(serving));
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vigie: error: {err:#}");
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
