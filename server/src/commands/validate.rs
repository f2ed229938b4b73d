//! `vigie validate …`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use vigie_validation::dataset::Dataset;
use vigie_validation::import::{ImportOptions, import_images};

use crate::cli::ValidateCommand;
use crate::config::Config;

pub fn run(config: &Config, command: ValidateCommand) -> anyhow::Result<ExitCode> {
    match command {
        ValidateCommand::Run(args) => super::validate_run::run(config, args),
        ValidateCommand::Compare {
            baseline,
            candidate,
            margin,
            json,
        } => super::validate_run::compare(&baseline, &candidate, margin, json),
        ValidateCommand::ImportDicom(args) => super::import_dicom::run(config, args),
        ValidateCommand::ImportImages(args) => {
            let pattern = regex::Regex::new(&args.label_pattern)
                .context("--label-pattern is not a valid regular expression")?;
            let mut labels = BTreeMap::new();
            for pair in &args.labels {
                let Some((code, label)) = pair.split_once('=') else {
                    bail!("--label {pair:?} is not CODE=LABEL");
                };
                labels.insert(code.to_string(), label.to_string());
            }
            let dataset = import_images(
                &args.source,
                &args.out,
                &ImportOptions::new(pattern, labels, args.name),
            )?;
            println!(
                "imported {} studies into {} (dataset SHA-256 {})",
                dataset.studies.len(),
                args.out.display(),
                dataset.content_sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        ValidateCommand::Verify { dataset } => {
            let (root, manifest) = Dataset::load(&dataset)?;
            manifest.verify(&root)?;
            println!(
                "{}: {} studies, content SHA-256 {} verified",
                manifest.name,
                manifest.studies.len(),
                manifest.content_sha256
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
