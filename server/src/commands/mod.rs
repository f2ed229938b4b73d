//! One module per command.

use std::process::ExitCode;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::config::Config;

mod audit;
pub mod infer;
mod report_html;
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
            print!("{}", Config::load(cli.config.as_deref())?.to_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(cmd) => audit::run(&Config::load(cli.config.as_deref())?, cmd),
        Command::Serve(args) => serve::run(Config::load(cli.config.as_deref())?, args),
        Command::Infer(args) => infer::run(&Config::load(cli.config.as_deref())?, args),
        Command::Validate(cmd) => validate::run(&Config::load(cli.config.as_deref())?, cmd),
    }
}
