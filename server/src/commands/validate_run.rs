//! `vigie validate run` and `vigie validate compare`: the command side of
//! `vigie_validation::run` and `vigie_validation::compare` (options, the
//! model from the registry, the resolved hot loop, the audit trail,
//! printing). Docs: docs/validation.md.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use vigie_audit::Audit;
use vigie_validation::compare::{Decision, Outcomes, compare_reports};
use vigie_validation::dataset::Dataset;
use vigie_validation::report::{Report, markdown};
use vigie_validation::run::{OperatingPointSpec, RunOptions, parse_claims, write_reports};

use crate::cli::RunArgs;
use crate::config::Config;

/// `vigie validate run`.
pub fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (root, dataset) = Dataset::load(&args.dataset)?;
    dataset
        .verify(&root)
        .context("the dataset does not match its manifest")?;
    let options = RunOptions {
        claims: parse_claims(&args.claims)?,
        operating_points: args
            .operating_points
            .iter()
            .map(|spec| OperatingPointSpec::parse(spec))
            .collect::<Result<_, _>>()?,
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| config.appliance.data_dir.clone()),
        command: std::env::args().collect(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    // The model and hot loop resolved as `vigie serve` resolves them.
    let resolved = config.resolve()?;
    let mut model = resolved.load_model(args.model.as_deref(), None)?;
    let hot_loop = resolved.hot_loop(model.package().id());
    let audit = Audit::open(&options.data_dir, &config.appliance.id, &config.audit)?;
    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let mut progress = |done: usize, total: usize| {
        if show_progress {
            eprint!("\r[{done}/{total}] analysing");
        }
    };
    let report = vigie_validation::run::run(
        &mut model,
        &hot_loop,
        (&root, &dataset),
        &audit,
        &options,
        &mut progress,
    )?;
    if show_progress {
        eprintln!();
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let written = write_reports(&report, &args.out, &audit)?;
    if args.json {
        println!("{}", written.json_text);
        return Ok(ExitCode::SUCCESS);
    }
    match &report {
        Report::Classification(r) => println!(
            "{} {} on {} ({} cases): accuracy {}",
            r.reproducibility.model.id,
            r.reproducibility.model.version,
            r.reproducibility.dataset.name,
            r.metrics.n,
            markdown::proportion(&r.metrics.accuracy)
        ),
        Report::Segmentation(_) => println!(
            "{}",
            report
                .markdown()
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
    println!("report: {}", written.markdown.0.display());
    Ok(ExitCode::SUCCESS)
}

/// `vigie validate compare`.
pub fn compare(
    baseline: &std::path::Path,
    candidate: &std::path::Path,
    margin: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !(margin > 0.0 && margin < 1.0) {
        anyhow::bail!("--margin {margin}: a loss between 0 and 1 (e.g. 0.02)");
    }
    let (b, c) = (Outcomes::read(baseline)?, Outcomes::read(candidate)?);
    let comparison =
        compare_reports(&b, &c, margin).context("nothing to compare: the reports hold no cases")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        println!(
            "non-inferiority, margin {margin} ({}):",
            if comparison.paired {
                "paired, same cases"
            } else {
                "unpaired"
            }
        );
        for v in &comparison.verdicts {
            println!(
                "  {:<28} baseline {:.3}  candidate {:.3}  difference {:+.3} (95% CI {:+.3} to {:+.3}, n {})  {}",
                v.metric,
                v.baseline,
                v.candidate,
                v.difference,
                v.ci95.lower,
                v.ci95.upper,
                v.n,
                match v.decision {
                    Decision::NonInferior => "non-inferior",
                    Decision::Regression => "REGRESSION",
                    Decision::TooFewCases => "CANNOT DECIDE (too few cases)",
                }
            );
        }
        if comparison.decision == Decision::TooFewCases
            && let Some(minimum) = comparison.minimum_cases
        {
            println!(
                "cannot decide: at a margin of {margin}, a metric needs at least {minimum} cases for any outcome without a gain to show non-inferiority; this is not a pass"
            );
        }
    }
    Ok(match comparison.decision {
        Decision::NonInferior => ExitCode::SUCCESS,
        Decision::Regression => ExitCode::FAILURE,
        Decision::TooFewCases => ExitCode::from(3),
    })
}
