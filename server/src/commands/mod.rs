//! One module per command.

use std::process::ExitCode;

use crate::cli::{Cli, Command, ConfigCommand, PmsCommand, TokenCommand};
use crate::config::Config;

mod audit;
mod import_dicom;
pub mod infer;
mod pms;
mod serve;
mod validate;
mod validate_run;

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(Some(&file))?;
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Show) => {
            print!("{}", Config::load(cli.config.as_deref())?.to_toml_masked()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::New { name, role }) => {
            let (token, sha256) = vigie_server::http::auth::new_token()
                .map_err(|e| anyhow::anyhow!("no randomness from the system: {e}"))?;
            let entry = crate::config::TokenConfig { name, role, sha256 };
            let mut table = toml::Table::new();
            table.insert(
                "http".into(),
                toml::Value::Table(toml::Table::from_iter([(
                    "tokens".to_string(),
                    toml::Value::try_from(vec![entry])?,
                )])),
            );
            println!("# Token (give it to the client; Vigie keeps only its SHA-256):");
            println!("# {token}");
            println!("# Add to the configuration file:");
            print!("{}", toml::to_string(&table)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(cmd) => audit::run(&Config::load(cli.config.as_deref())?, cmd),
        Command::Pms(PmsCommand::Report(args)) => {
            pms::report(&Config::load(cli.config.as_deref())?, args)
        }
        Command::Serve(args) => serve::run(
            with_limits(Config::load(cli.config.as_deref())?),
            args,
            cli.config.clone(),
        ),
        Command::Infer(args) => {
            infer::run(&with_limits(Config::load(cli.config.as_deref())?), args)
        }
        Command::Validate(cmd) => {
            validate::run(&with_limits(Config::load(cli.config.as_deref())?), cmd)
        }
    }
}

/// Every file the command opens is checked against `[limits]`.
fn with_limits(config: Config) -> Config {
    vigie_dicom_io::scan::set_limits(config.limits.dicom());
    config
}
