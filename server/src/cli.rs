//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Vigie: on-premises AI inference appliance for medical imaging.
#[derive(Debug, Parser)]
#[command(name = "vigie", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Defaults apply without one; environment
    /// variables `VIGIE__SECTION__KEY` override both.
    #[arg(long, global = true, env = "VIGIE_CONFIG")]
    pub config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); `VIGIE_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: DICOM node, job pipeline, result delivery, HTTP
    /// status. Runs until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Run a model on DICOM files or folders and print the results.
    Infer(InferArgs),
    /// Datasets and validation.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The audit trail: verify, export, public key.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// HTTP API bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Post-market surveillance.
    #[command(subcommand)]
    Pms(PmsCommand),
}

/// `vigie pms …`.
#[derive(Debug, Subcommand)]
pub enum PmsCommand {
    /// The post-market surveillance report of a model over a window, from
    /// the audit trail and the reviews: volume, failures, latency,
    /// agreement with the radiologists, subgroups, trends with control
    /// limits, input and output drift, alarms (recorded in the audit trail
    /// and exposed as `vigie_pms_*` metrics). Exit status 1 when an alarm
    /// is raised in the window.
    Report(PmsReportArgs),
}

/// `vigie pms report`.
#[derive(Debug, Args)]
pub struct PmsReportArgs {
    /// Data directory (overrides appliance.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model id.
    #[arg(long)]
    pub model: String,
    /// Only this model version.
    #[arg(long)]
    pub version: Option<String>,
    /// From this date (YYYY-MM-DD, UTC) or RFC 3339 time, inclusive.
    #[arg(long)]
    pub from: String,
    /// Until this date or time, exclusive.
    #[arg(long)]
    pub to: String,
    /// Periods of the trends and of drift: week or month.
    #[arg(long, default_value = "week")]
    pub period: String,
    /// Reference period of drift, start (default: the window's first
    /// period).
    #[arg(long, requires = "reference_to")]
    pub reference_from: Option<String>,
    /// Reference period of drift, end (exclusive).
    #[arg(long, requires = "reference_from")]
    pub reference_to: Option<String>,
    /// Only the reviews recorded before this time count (default: now; the
    /// report says which, so that it can be made again with the same
    /// figures).
    #[arg(long)]
    pub reviews_until: Option<String>,
    /// Folder of the report (report.json, pms.md, pms.html, cases.csv,
    /// pms.prom).
    #[arg(long)]
    pub out: PathBuf,
}

/// `vigie token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new random token: prints the token (give it to the client;
    /// it is not stored anywhere) and the `[[http.tokens]]` entry with its
    /// SHA-256 to add to the configuration.
    New {
        /// Who will hold it (appears in the audit log).
        #[arg(long)]
        name: String,
        /// reader, operator, auditor or admin.
        #[arg(long)]
        role: crate::config::Role,
    },
}

/// `vigie audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain, the signed checkpoints and the head; report
    /// the first bad record. Exit status 0 only when everything verifies.
    Verify {
        /// Data directory (overrides appliance.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Verify against this public key (hex, from `vigie audit
        /// public-key` kept elsewhere) instead of the appliance's own key.
        #[arg(long)]
        public_key: Option<String>,
        /// A signed checkpoint kept outside the appliance (JSON, as in
        /// `audit-head.json` or the body of a `vigie-checkpoint` syslog
        /// message); the log must contain the record it covers, with its
        /// hash. Repeatable.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export the inference records, one row per analysed image.
    Export(ExportArgs),
    /// Print the records matching filters, one JSON object per line.
    Query(QueryArgs),
    /// Accept the trail as it is when its head is ahead of the log or
    /// disagrees with it (a restored backup, a truncation investigated):
    /// the old head is kept aside, an `audit_restore_accepted` record says
    /// who accepted what and why, and a new checkpoint is signed. Until
    /// then `vigie serve` refuses to start.
    AcceptRestore {
        /// Data directory (overrides appliance.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Why (recorded): the incident or change ticket, what was checked.
        #[arg(long)]
        reason: String,
    },
    /// Print the public key that verifies the checkpoints (hex Ed25519).
    PublicKey {
        /// Data directory (overrides appliance.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

/// `vigie audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Data directory (overrides appliance.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// From this date (YYYY-MM-DD, UTC) or RFC 3339 time, inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Until this date or time, exclusive.
    #[arg(long)]
    pub to: Option<String>,
    /// Event type (e.g. `inference`, `instance_stored`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Study Instance UID.
    #[arg(long)]
    pub study: Option<String>,
    /// Model id.
    #[arg(long)]
    pub model: Option<String>,
    /// Model version.
    #[arg(long)]
    pub model_version: Option<String>,
    /// Outcome (e.g. `ok`, `refused`, `failed`).
    #[arg(long)]
    pub outcome: Option<String>,
}

/// `vigie audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Data directory (overrides appliance.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// From this date (YYYY-MM-DD, UTC) or RFC 3339 time, inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Until this date or time, exclusive.
    #[arg(long)]
    pub to: Option<String>,
    /// Only this model id.
    #[arg(long)]
    pub model: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Write to this file (durably) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also export the inferences of `vigie validate run` (column
    /// `purpose` = `validation`); without it only clinical ones.
    #[arg(long)]
    pub include_validation: bool,
}

/// `vigie serve`: command-line overrides of the configuration, so that
/// several instances can run side by side.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (overrides appliance.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// DICOM port (overrides dicom.port).
    #[arg(long)]
    pub dicom_port: Option<u16>,
    /// HTTP port (overrides http.port).
    #[arg(long)]
    pub http_port: Option<u16>,
}

/// Backend choice on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// ONNX Runtime.
    Onnx,
    /// candle.
    Candle,
}

/// `vigie infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model package id (default: the configured default, or the only one).
    #[arg(long)]
    pub model: Option<String>,
    /// Override the manifest's backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// A dataset (folder or dataset.toml): run on its studies and compare
    /// the decisions with its labels.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Write the DICOM result objects (SR, SEG, summary image) under this
    /// folder, as STUDY/SERIES/SOP.dcm.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Also write the summary image (`vigie infer` writes none without
    /// it; `vigie serve` follows results.summary_image).
    #[arg(long)]
    pub summary: bool,
    /// DICOM files or folders (searched recursively).
    pub paths: Vec<PathBuf>,
}

/// `vigie validate …`.
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Build a labelled dataset of synthetic DICOM MR studies from pictures.
    ImportImages(ImportArgs),
    /// Build a labelled dataset from DICOM studies (files, folders, or the
    /// studies the appliance received) and a labels CSV; the series are
    /// chosen by the routing rules, as `vigie serve` chooses them. Exit
    /// status 1, nothing written, when rows or studies do not match
    /// (unless --allow-unmatched).
    ImportDicom(ImportDicomArgs),
    /// Run a classification model on a labelled dataset and write the
    /// performance report (report.json, report.md) with 95% intervals.
    Run(RunArgs),
    /// Non-inferiority of a candidate report against a baseline report
    /// (accuracy and each class's sensitivity); exit status 1 on
    /// regression, 3 when too few cases to decide (not a pass).
    Compare {
        /// Baseline report.json.
        baseline: PathBuf,
        /// Candidate report.json.
        candidate: PathBuf,
        /// Largest acceptable loss (absolute, e.g. 0.02).
        #[arg(long, default_value_t = 0.02)]
        margin: f64,
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a dataset's files against its manifest and print its hash.
    Verify {
        /// Dataset folder or dataset.toml.
        dataset: PathBuf,
    },
}

/// `vigie validate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Dataset folder or dataset.toml.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Model package id (default: the configured default).
    #[arg(long)]
    pub model: Option<String>,
    /// Folder for report.json and report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Data directory whose audit trail records the run (overrides
    /// appliance.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print report.json on standard output.
    #[arg(long)]
    pub json: bool,
    /// Claimed performance, repeatable: `accuracy=0.9` or `sensitivity=0.9`
    /// (every class); subgroups whose whole interval lies below a claim are
    /// flagged.
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// Extra operating points, repeatable: `CLASS:sensitivity=0.95` or
    /// `CLASS:specificity=0.9` (threshold on that class's probability).
    #[arg(long = "operating-point")]
    pub operating_points: Vec<String>,
}

/// `vigie validate import-dicom`.
#[derive(Debug, Args)]
pub struct ImportDicomArgs {
    /// Labels CSV: a header row; one key column (`study_instance_uid`,
    /// `accession_number`, or `patient_id` with `study_date`); `label`;
    /// every other column a subgroup attribute.
    #[arg(long)]
    pub labels: PathBuf,
    /// Output folder (new or empty): copied files and dataset.toml.
    #[arg(long)]
    pub out: PathBuf,
    /// Model package whose series are chosen (default: the configured
    /// default); a segmentation model takes its reference masks from the
    /// DICOM SEG objects among the sources.
    #[arg(long)]
    pub model: Option<String>,
    /// Also read the studies already received by the appliance whose data
    /// directory this is (the copy is recorded in its audit trail).
    #[arg(long, value_name = "DATA_DIR")]
    pub from_store: Option<PathBuf>,
    /// Write the dataset of the studies that match even when some rows,
    /// studies or references do not (each still reported).
    #[arg(long)]
    pub allow_unmatched: bool,
    /// Dataset name.
    #[arg(long, default_value = "Imported DICOM studies")]
    pub name: String,
    /// Print what was found, chosen and written as JSON.
    #[arg(long)]
    pub json: bool,
    /// DICOM files or folders (read recursively; DICOMDIR and non-DICOM
    /// files are skipped and listed).
    pub sources: Vec<PathBuf>,
}

/// `vigie validate import-images`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Folder of .jpg/.jpeg/.png pictures.
    pub source: PathBuf,
    /// Output folder (DICOM files and dataset.toml).
    pub out: PathBuf,
    /// Regular expression on file names; its first group is the label code.
    #[arg(long)]
    pub label_pattern: String,
    /// CODE=LABEL mapping, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Dataset name.
    #[arg(long, default_value = "Imported pictures")]
    pub name: String,
}

/// `vigie config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file without starting anything.
    Check {
        /// File to check.
        file: PathBuf,
    },
    /// Print the effective configuration (defaults, file, environment).
    Show,
}
