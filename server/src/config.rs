//! Configuration: compiled-in defaults, then the TOML file, then
//! `VIGIE__SECTION__KEY` environment variables; validated field by field,
//! then resolved into runtime settings.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
pub use vigie_analysis::config::{BatchConfig, InferenceConfig, Resolved, SETUP_ONNXRUNTIME};
pub use vigie_analysis::routing::{RoutingConfig, RuleConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The appliance.
    pub appliance: ApplianceConfig,
    /// Models and runtimes.
    pub inference: InferenceConfig,
    /// Result objects.
    pub results: ResultsConfig,
    /// The DICOM node (C-ECHO/C-STORE SCP, and SCU for results).
    pub dicom: DicomConfig,
    /// The HTTP side (health, status API).
    pub http: HttpConfig,
    /// Local storage of received instances.
    pub storage: StorageConfig,
    /// Bounds on received data sets.
    pub limits: LimitsConfig,
    /// Study assembly and jobs.
    pub pipeline: PipelineConfig,
    /// Result delivery retries.
    pub delivery: DeliveryConfig,
    /// Where prior studies come from, for models that compare with them.
    pub priors: PriorsConfig,
    /// Which models run on which studies, and where results go.
    pub routing: RoutingConfig,
    /// Remote AEs results are sent to, by name.
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Application logs of `vigie serve`.
    pub log: LogConfig,
}

/// Format of the application log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald, Loki, Elasticsearch).
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// directives (`info,vigie_server::pipeline=debug`). `VIGIE_LOG` overrides it.
    /// Re-read on SIGHUP.
    pub level: String,
    /// `text` or `json`. Re-read on SIGHUP.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

pub use vigie_audit::AuditConfig;

pub use vigie_dicom_io::net::config::{CallerConfig, DicomConfig};

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub bind: IpAddr,
    /// HTTP port.
    pub port: u16,
    /// Bearer tokens allowed to call the API, each with a role. Without
    /// any, every endpoint but `/healthz` and `/readyz` answers 401.
    pub tokens: Vec<TokenConfig>,
    /// Serve HTTPS with these PEM files instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Largest STOW-RS request body, in MiB.
    pub max_stow_mib: u64,
    /// Largest JSON request body, in KiB.
    pub max_json_kib: u64,
    /// Time allowed to any request but STOW-RS, in seconds (408 after).
    pub request_timeout_s: u64,
    /// Time allowed to a STOW-RS request, in seconds.
    pub stow_timeout_s: u64,
    /// Requests handled at once; more are answered 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// Serve `/metrics` without a token (for a Prometheus on a trusted
    /// network).
    pub metrics_public: bool,
    /// On SIGTERM, time given to requests in flight, in seconds.
    pub shutdown_grace_s: u64,
    /// Web origins (`scheme://host[:port]`, e.g. the hospital's OHIF) whose
    /// pages may call the API and DICOMweb from a browser: their CORS
    /// preflight is answered without a token, and every response to them,
    /// errors included, carries `Access-Control-Allow-Origin`. Empty: no
    /// cross-origin access (same-origin pages and non-browser clients are
    /// not concerned).
    pub cors_origins: Vec<String>,
    /// The DICOMweb base URL as clients reach it
    /// (`https://viewer.hospital.example/dicomweb`), for RetrieveURL and
    /// BulkDataURI. Empty: from each request's `Host` and
    /// `X-Forwarded-Proto`.
    pub public_url: String,
}

/// `origin` as a browser serialises it (RFC 6454 6.2): scheme and host in
/// lower case, the scheme's default port (80, 443) left out; what the
/// `Origin` header is compared with, byte for byte.
pub fn normalise_origin(origin: &str) -> String {
    let lower = origin.trim().to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return lower;
    };
    // The port as a number (`080` is 80), after an IPv6 literal's `]`.
    let split = match rest.rfind(']') {
        Some(end) => rest[end..].find(':').map(|i| end + i),
        None => rest.find(':'),
    };
    let Some(colon) = split else {
        return lower;
    };
    let (host, port) = (&rest[..colon], &rest[colon + 1..]);
    match port.parse::<u16>() {
        Ok(80) if scheme == "http" => format!("{scheme}://{host}"),
        Ok(443) if scheme == "https" => format!("{scheme}://{host}"),
        Ok(port) => format!("{scheme}://{host}:{port}"),
        Err(_) => lower,
    }
}

/// Whether `origin` is a Web origin as a browser sends it (RFC 6454):
/// `http` or `https`, a host, an optional port, and nothing else.
pub fn is_web_origin(origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return false;
    }
    let (host, port) = if let Some(end) = rest.strip_prefix('[').and_then(|r| r.find(']')) {
        // An IPv6 literal: `[addr]` and an optional `:port`.
        let (host, after) = rest.split_at(end + 2);
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return false,
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    let port_ok =
        port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            tokens: Vec::new(),
            tls: None,
            max_stow_mib: 4096,
            max_json_kib: 64,
            request_timeout_s: 60,
            stow_timeout_s: 3600,
            max_concurrent_requests: 64,
            metrics_public: false,
            shutdown_grace_s: 30,
            cors_origins: Vec::new(),
            public_url: String::new(),
        }
    }
}

/// A role of the HTTP API. Each endpoint names the roles it admits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads studies, results, jobs, models, metrics (QIDO-RS, WADO-RS).
    Reader,
    /// A reader that also stores (STOW-RS), retries and submits jobs.
    Operator,
    /// Reads and verifies the audit trail.
    Auditor,
    /// A radiologist: reads what a reader reads and records reviews of
    /// results (accept, reject, correct). The only role that reviews: a
    /// verdict is a clinical act, not an administrative one.
    Reviewer,
    /// Everything but reviewing.
    Admin,
}

impl Role {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::Reviewer => "reviewer",
            Self::Admin => "admin",
        }
    }
}

/// One `[[http.tokens]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (in the audit log; also the source name of STOW-RS
    /// instances for routing, like a calling AE title).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 (hex) of the token; `vigie token new` makes both.
    pub sha256: String,
}

/// `[http.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub certificate: PathBuf,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Refuse new instances (status A700, out of resources) when the data
    /// directory's file system has less free space than this, in MiB.
    pub min_free_mib: u64,
    /// Space held back in `<data-dir>/reserve.bin`, in MiB, released when
    /// the disk fills so that the index and the audit trail can still
    /// record what happens; 0: none.
    pub reserve_mib: u64,
    /// What to do with an instance received again with the SOP Instance
    /// UID of one already held but other content (a different file
    /// SHA-256): keep the first, replace it, or keep both. The same
    /// content received again is always stored as a new reception.
    pub duplicates: DuplicatePolicy,
}

/// `storage.duplicates`: an instance received with the SOP Instance UID of
/// one already held but other content. The references are Orthanc's
/// `OverwriteInstances` (false by default: keep the first) and dcm4chee's
/// overwrite policy (`NEVER` by default). Each case is answered Success
/// (the instance of that UID is durably held), logged as a warning and
/// recorded (`instance_stored` with outcome `duplicate_kept_first`,
/// `duplicate_replaced` or `duplicate_kept_both`, and both SHA-256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// Keep the copy held, discard the new one (the default).
    #[default]
    KeepFirst,
    /// Store the new copy in place of the one held (moved into the new
    /// copy's study and series when they differ), which is analysed and
    /// served from then on; the earlier copy's file is removed.
    Replace,
    /// Keep the copy held as the instance of record, and the new copy in
    /// `DATA_DIR/duplicates/<SOP Instance UID>/<SHA-256>.dcm`, for a person
    /// to resolve; it is neither indexed, analysed nor served.
    KeepBoth,
}

impl DuplicatePolicy {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicatePolicy::KeepFirst => "keep_first",
            DuplicatePolicy::Replace => "replace",
            DuplicatePolicy::KeepBoth => "keep_both",
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            min_free_mib: 1024,
            reserve_mib: 64,
            duplicates: DuplicatePolicy::default(),
        }
    }
}

/// `[limits]`: bounds every received data set is checked against before it
/// is parsed or decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest decoded pixel data (Rows × Columns × frames × samples × bits
    /// allocated) and largest inflated deflated data set, in MiB; beyond,
    /// instances are refused (C000) and never decoded.
    pub max_decoded_mib: u64,
    /// Most sequences nested in one another in a data set; beyond, C000.
    pub max_nesting_depth: usize,
    /// Most data elements and items in a data set, all levels; beyond, C000.
    pub max_elements: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_decoded_mib: 512,
            max_nesting_depth: 32,
            max_elements: 2_000_000,
        }
    }
}

impl LimitsConfig {
    /// The limits of the DICOM parser.
    pub fn dicom(&self) -> vigie_dicom_io::Limits {
        let mut limits = vigie_dicom_io::Limits::default();
        limits.max_decoded_bytes = self.max_decoded_mib.saturating_mul(1 << 20);
        limits.max_depth = self.max_nesting_depth;
        limits.max_elements = self.max_elements;
        limits
    }
}

/// `[priors]`: the PACS asked for prior studies, for models whose package
/// declares `[priors]`, and bounds on what one job retrieves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorsConfig {
    /// The `[destinations.*]` (a PACS) asked by C-FIND and C-GET; unset: no
    /// prior is ever found (each model's `priors.on_missing` applies).
    pub from: Option<String>,
    /// Most instances one job retrieves (all prior studies together).
    pub max_instances: usize,
    /// Most mebibytes one job retrieves (all prior studies together).
    pub max_mib: u64,
}

impl Default for PriorsConfig {
    fn default() -> Self {
        Self {
            from: None,
            max_instances: 2000,
            max_mib: 2048,
        }
    }
}

/// `[pipeline]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Seconds without a new instance after which a study is complete.
    pub stable_age_s: f64,
    /// Close a study this many seconds after the association or STOW-RS
    /// request that carried it ended normally (nothing arrived for it
    /// meanwhile, no other association carrying it); unset: only the
    /// stable age closes studies.
    pub release_grace_s: Option<f64>,
    /// Ask this destination (a PACS) by C-FIND how many instances it holds
    /// for each new study, and close the study once that many have
    /// arrived; unset: not asked.
    pub expected_instances_from: Option<String>,
    /// Inference worker threads; 0 queues jobs without running them.
    pub workers: usize,
    /// Jobs handed to workers ahead of time (the bounded queue).
    pub queue_capacity: usize,
    /// Attempts per job before it is marked failed.
    pub max_attempts: u32,
    /// Seconds before the first retry of a failed job (doubling each time).
    pub retry_delay_s: f64,
    /// Jobs waiting or running at most; beyond, new instances are refused
    /// (A700 out of resources, retried by the sender) and re-analysis
    /// requests get 503, rather than a backlog that grows without bound.
    pub max_backlog: u64,
    /// Times a job may be found running at start-up (the process stopped
    /// without finishing it: a crash, a kill) before it is quarantined:
    /// marked failed and never claimed again until an operator retries it.
    pub max_interrupted: u32,
    /// Seconds a worker may spend on one job before `/readyz` reports it
    /// stuck (and `vigie_workers_unhealthy` counts it).
    pub stuck_after_s: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            stable_age_s: 10.0,
            release_grace_s: None,
            expected_instances_from: None,
            workers: 1,
            queue_capacity: 4,
            max_attempts: 3,
            retry_delay_s: 30.0,
            max_backlog: 500,
            max_interrupted: 3,
            stuck_after_s: 900,
        }
    }
}

/// `[delivery]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Seconds before the first retry of a failed send (doubling each time).
    pub retry_initial_s: f64,
    /// Longest wait between retries, seconds.
    pub retry_max_s: f64,
    /// Hours after which an undelivered result is marked failed.
    pub give_up_after_h: f64,
    /// Instances sent per association at most.
    pub batch_size: usize,
    /// Seconds a destination with `commitment = true` has to report on a
    /// storage commitment request before it is asked again.
    pub commitment_timeout_s: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_initial_s: 10.0,
            retry_max_s: 600.0,
            give_up_after_h: 168.0,
            batch_size: 64,
            commitment_timeout_s: 600.0,
        }
    }
}

/// `[destinations.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Called AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Send over TLS (`[dicom.tls]`: its certificate is presented, its CA
    /// verifies the destination's certificate).
    #[serde(default)]
    pub tls: bool,
    /// The name the destination's certificate must carry; unset: `host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Ask the destination for storage commitment (PS3.4 Annex J) of each
    /// result it stored: a result counts as delivered only once committed.
    #[serde(default)]
    pub commitment: bool,
    /// Seconds the association stays open after the commitment request for
    /// a report on it (for a PACS that reports only there); 0: released at
    /// once, the report comes on an association of the destination's own.
    #[serde(default)]
    pub commitment_wait_s: f64,
}

/// `[results]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Root under which result UIDs are generated (default: the
    /// UUID-derived root 2.25).
    pub uid_root: String,
    /// Also create a Secondary Capture summary image with the result
    /// burned in, for viewers that do not display SR (on by default: it
    /// is the result OHIF displays, docs/viewers.md).
    pub summary_image: bool,
    /// The review page as radiologists reach it (e.g.
    /// `https://vigie.hospital.example:8443/review`); when set, each SR and
    /// summary image carries the link to its job's review
    /// (`<url>#job=<id>`). Empty: no link.
    pub review_page_url: String,
    /// Who may send reviewers' SRs: calling AE titles (C-STORE) and token
    /// names (STOW-RS) of the reporting systems trusted to relay a
    /// radiologist's verdict. Empty: reviewers' SRs are refused (0124).
    pub review_senders: Vec<String>,
}

impl ResultsConfig {
    /// The review link of job `id`, when a review page is configured.
    pub fn review_link(&self, id: i64) -> Option<String> {
        let url = self.review_page_url.trim();
        (!url.is_empty()).then(|| format!("{url}#job={id}"))
    }
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            uid_root: vigie_dicom_io::uid::UUID_ROOT.into(),
            summary_image: true,
            review_page_url: String::new(),
            review_senders: Vec::new(),
        }
    }
}

/// `[appliance]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// Name of this appliance in logs and results.
    pub id: String,
    /// Where the appliance keeps its data.
    pub data_dir: PathBuf,
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        Self {
            id: "vigie".into(),
            data_dir: PathBuf::from("vigie-data"),
        }
    }
}

impl Config {
    /// Load defaults, then `file`, then the environment, and validate.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("VIGIE__").split("__"));
        let config: Config = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration:\n  {}", messages.join("\n  "))
        })?;
        config.validate().map_err(|e| match file {
            Some(f) => e.context(format!("in {} (and VIGIE__* variables)", f.display())),
            None => e,
        })?;
        Ok(config)
    }

    /// Check values that deserialisation cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        // Each domain section checks itself in its crate.
        let mut problems = self.inference.problems();
        problems.extend(self.audit.problems());
        problems.extend(self.routing.problems(
            |d| self.destinations.contains_key(d),
            self.inference.default_model.as_deref(),
        ));
        if self.appliance.id.trim().is_empty() {
            problems.push("appliance.id: must not be empty".into());
        }
        if let Err(e) = vigie_dicom_io::uid::UidGenerator::new(&self.results.uid_root) {
            problems.push(format!("results.uid_root: {e}"));
        }
        let url = self.results.review_page_url.trim();
        if !url.is_empty()
            && (!(url.starts_with("https://") || url.starts_with("http://"))
                || url.len() > 512
                || url.contains('#')
                || url.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            problems.push(
                "results.review_page_url: an http:// or https:// URL of at most 512 characters, without spaces or a fragment (#)".into(),
            );
        }
        self.validate_node(&mut problems);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: {e}"));
        }
        if !problems.is_empty() {
            bail!("invalid configuration:\n  {}", problems.join("\n  "));
        }
        Ok(())
    }

    fn validate_http(&self, problems: &mut Vec<String>) {
        let h = &self.http;
        let mut names = std::collections::BTreeSet::new();
        for (i, token) in h.tokens.iter().enumerate() {
            let label = format!("http.tokens[{i}]");
            if token.name.trim().is_empty() || token.name.len() > 64 {
                problems.push(format!("{label}.name: 1 to 64 characters"));
            }
            if !names.insert(token.name.as_str()) {
                problems.push(format!("{label}.name: {:?} is used twice", token.name));
            }
            if token.sha256.len() != 64 || !token.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!(
                    "{label}.sha256: 64 hexadecimal digits (the SHA-256 of the token)"
                ));
            }
        }
        if let Some(tls) = &h.tls {
            for (path, key) in [
                (&tls.certificate, "certificate"),
                (&tls.private_key, "private_key"),
            ] {
                if !path.is_file() {
                    problems.push(format!("http.tls.{key}: {} does not exist", path.display()));
                }
            }
        }
        for (value, name) in [
            (h.max_stow_mib, "http.max_stow_mib"),
            (h.max_json_kib, "http.max_json_kib"),
            (h.request_timeout_s, "http.request_timeout_s"),
            (h.stow_timeout_s, "http.stow_timeout_s"),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        if h.max_concurrent_requests == 0 {
            problems.push("http.max_concurrent_requests: must be at least 1".into());
        }
        let public = h.public_url.trim_end_matches('/');
        if !public.is_empty()
            && !((public.starts_with("https://") || public.starts_with("http://"))
                && public.len() <= 512
                && !public.contains(['?', '#', ' ', '"', '\\'])
                && public
                    .split("://")
                    .nth(1)
                    .is_some_and(|rest| !rest.is_empty()))
        {
            problems.push(format!(
                "http.public_url: {:?} is not an http(s) URL without query or fragment",
                h.public_url
            ));
        }
        for (i, origin) in h.cors_origins.iter().enumerate() {
            if !is_web_origin(origin) {
                problems.push(format!(
                    "http.cors_origins[{i}]: {origin:?} is not an origin (scheme://host[:port], http or https, no path, no wildcard)"
                ));
            }
        }
    }

    fn validate_node(&self, problems: &mut Vec<String>) {
        problems.extend(self.dicom.problems());
        for (value, name) in [
            (self.pipeline.stable_age_s, "pipeline.stable_age_s"),
            (self.pipeline.retry_delay_s, "pipeline.retry_delay_s"),
            (self.delivery.retry_initial_s, "delivery.retry_initial_s"),
            (self.delivery.retry_max_s, "delivery.retry_max_s"),
            (self.delivery.give_up_after_h, "delivery.give_up_after_h"),
            (
                self.pipeline.release_grace_s.unwrap_or(0.0),
                "pipeline.release_grace_s",
            ),
        ] {
            if !value.is_finite() || value < 0.0 {
                problems.push(format!("{name}: must be a number, 0 or more"));
            }
        }
        if let Some(grace) = self.pipeline.release_grace_s
            && grace > self.pipeline.stable_age_s
        {
            problems.push(
                "pipeline.release_grace_s: longer than pipeline.stable_age_s, it would never close a study sooner".into(),
            );
        }
        if let Some(name) = &self.pipeline.expected_instances_from
            && !self.destinations.contains_key(name)
        {
            problems.push(format!(
                "pipeline.expected_instances_from: {name:?} is not a [destinations.*]"
            ));
        }
        if let Some(name) = &self.priors.from
            && !self.destinations.contains_key(name)
        {
            problems.push(format!("priors.from: {name:?} is not a [destinations.*]"));
        }
        if self.priors.max_instances == 0 || self.priors.max_mib == 0 {
            problems.push("priors.max_instances, priors.max_mib: must be at least 1".into());
        }
        if self.pipeline.max_attempts == 0 {
            problems.push("pipeline.max_attempts: must be at least 1".into());
        }
        if self.inference.pin_threads && self.pipeline.workers > 1 {
            problems.push(format!(
                "inference.pin_threads: needs pipeline.workers = 1 ({} workers would share the same CPUs)",
                self.pipeline.workers
            ));
        }
        if self.pipeline.max_backlog == 0 {
            problems.push("pipeline.max_backlog: must be at least 1".into());
        }
        if self.pipeline.queue_capacity == 0 {
            problems.push("pipeline.queue_capacity: must be at least 1".into());
        }
        if self.delivery.batch_size == 0 {
            problems.push("delivery.batch_size: must be at least 1".into());
        }
        self.validate_http(problems);
        for (name, d) in &self.destinations {
            if d.ae_title.trim().is_empty() || d.ae_title.len() > 16 {
                problems.push(format!("destinations.{name}.ae_title: 1 to 16 characters"));
            }
            if d.tls {
                match &self.dicom.tls {
                    None => problems.push(format!(
                        "destinations.{name}.tls: needs [dicom.tls] (the certificate presented and the CA that verifies the destination)"
                    )),
                    Some(tls) if tls.ca.is_none() => problems.push(format!(
                        "destinations.{name}.tls: needs dicom.tls.ca to verify the destination's certificate"
                    )),
                    Some(_) => {}
                }
                let expected = d.server_name.as_deref().unwrap_or(&d.host);
                if let Err(e) = vigie_dicom_io::net::tls::server_name(expected) {
                    problems.push(format!("destinations.{name}.server_name: {e}"));
                }
            } else if d.server_name.is_some() {
                problems.push(format!(
                    "destinations.{name}.server_name: only used with tls = true"
                ));
            }
            if d.commitment
                && !self.dicom.allowed_callers.is_empty()
                && !self
                    .dicom
                    .allowed_callers
                    .iter()
                    .any(|c| c.ae_title.trim() == d.ae_title.trim())
            {
                problems.push(format!(
                    "destinations.{name}.commitment: its reports come on associations it opens to Vigie, and dicom.allowed_callers does not list its AE title {:?}",
                    d.ae_title.trim()
                ));
            }
            if !(0.0..=60.0).contains(&d.commitment_wait_s) {
                problems.push(format!(
                    "destinations.{name}.commitment_wait_s: 0 to 60 seconds"
                ));
            } else if d.commitment_wait_s > 0.0 && !d.commitment {
                problems.push(format!(
                    "destinations.{name}.commitment_wait_s: only used with commitment = true"
                ));
            }
        }
        if !(1.0..=604_800.0).contains(&self.delivery.commitment_timeout_s) {
            problems.push("delivery.commitment_timeout_s: 1 to 604800 seconds".into());
        }
    }

    /// Resolve the configuration, once, into what commands run with (see
    /// [`Resolved`]).
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        Ok(self.inference.resolve()?)
    }

    /// The configuration as TOML (what the audit trail records).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("serialising the configuration")
    }

    /// The configuration as TOML for people to read (`vigie config show`):
    /// token hashes abbreviated. Nothing else in it is secret.
    pub fn to_toml_masked(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        for token in &mut shown.http.tokens {
            let head: String = token.sha256.chars().take(8).collect();
            token.sha256 = format!("{head}… (SHA-256 of the token, abbreviated)");
        }
        shown.to_toml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_environment_layer_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        std::fs::write(
            &file,
            "[inference]\ndevice = \"cuda:0\"\nintra_threads = 3\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.inference.intra_threads, 3);
        assert_eq!(config.inference.device, "cuda:0");
        assert_eq!(config.appliance.id, "vigie");
        std::fs::write(&file, "[inference]\ndevise = \"cpu\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("devise"), "{err}");
    }

    #[test]
    fn commitment_settings_that_cannot_work_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load(Some(&file)).map_err(|e| format!("{e:#}"))
        };
        let pacs = "[destinations.pacs]\nae_title = \"PACS\"\nhost = \"10.0.0.2\"\nport = 104\n";
        assert!(
            load(&format!(
                "{pacs}commitment = true\ncommitment_wait_s = 5.0\n"
            ))
            .is_ok()
        );
        let err = load(&format!("{pacs}commitment_wait_s = 5.0\n")).unwrap_err();
        assert!(err.contains("only used with commitment = true"), "{err}");
        let err = load(&format!(
            "{pacs}commitment = true\ncommitment_wait_s = 61.0\n"
        ))
        .unwrap_err();
        assert!(err.contains("0 to 60 seconds"), "{err}");
        let callers = "[[dicom.allowed_callers]]\nae_title = \"MODALITY\"\n";
        let err = load(&format!("{callers}{pacs}commitment = true\n")).unwrap_err();
        assert!(err.contains("does not list its AE title \"PACS\""), "{err}");
        let both = "[[dicom.allowed_callers]]\nae_title = \"PACS\"\n";
        assert!(load(&format!("{both}{pacs}commitment = true\n")).is_ok());
        let err = load("[delivery]\ncommitment_timeout_s = 0.5\n").unwrap_err();
        assert!(err.contains("commitment_timeout_s"), "{err}");
    }

    #[test]
    fn cudnn_algorithm_search_reaches_the_backend_options_and_bad_values_are_refused() {
        use vigie_inference::backend::ConvAlgoSearch;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        assert_eq!(
            Config::default()
                .inference
                .backend_options()
                .unwrap()
                .conv_algo_search,
            ConvAlgoSearch::Exhaustive
        );
        std::fs::write(
            &file,
            "[inference]\ncuda_conv_algo_search = \"heuristic\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(
            config.inference.backend_options().unwrap().conv_algo_search,
            ConvAlgoSearch::Heuristic
        );
        std::fs::write(&file, "[inference]\ncuda_conv_algo_search = \"fastest\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(err.contains("fastest"), "{err}");
    }

    #[test]
    fn thread_settings_reach_the_runtime_and_pinning_needs_one_worker() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        std::fs::write(
            &file,
            "[inference]\nintra_threads = 2\ndecode_threads = 3\npin_threads = true\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        let resolved = config.resolve().unwrap();
        let plan = &resolved.threads;
        assert_eq!((plan.intra_threads, plan.decode_threads), (2, 3));
        let cpus = vigie_inference::threads::allowed_cpus();
        assert_eq!(plan.model_cpus, vec![cpus[0], cpus[1 % cpus.len()]]);
        assert_eq!(resolved.backend.intra_threads, 2);
        assert_eq!(resolved.backend.intra_cpus, plan.model_cpus);
        std::fs::write(&file, "[inference]\ndevice = \"gpu\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(err.contains("inference.device"), "{err}");
        std::fs::write(
            &file,
            "[inference]\npin_threads = true\n[pipeline]\nworkers = 2\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(err.contains("inference.pin_threads"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    fn keys(value: &toml::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(v, &name, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for item in items {
                    keys(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn the_public_url_must_be_an_http_url() {
        let mut config = Config::default();
        config.http.public_url = "https://viewer.hospital.example/dicomweb".into();
        assert!(config.validate().is_ok());
        for bad in [
            "viewer.example/dicomweb",
            "https://",
            "https://v/dicomweb?x=1",
            "ftp://v",
        ] {
            config.http.public_url = bad.into();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("http.public_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn cors_origins_must_be_origins() {
        assert_eq!(
            normalise_origin("HTTPS://OHIF.Hospital.example:443"),
            "https://ohif.hospital.example"
        );
        assert_eq!(normalise_origin("http://h:80"), "http://h");
        assert_eq!(normalise_origin("http://h:8080"), "http://h:8080");
        assert_eq!(normalise_origin("http://h:080"), "http://h");
        assert_eq!(normalise_origin("https://[::1]:443"), "https://[::1]");
        assert!(is_web_origin("HTTPS://OHIF.example"));
        assert!(!is_web_origin("https://h:+80"));
        for good in [
            "https://ohif.hospital.example",
            "http://127.0.0.1:3000",
            "https://[::1]:8443",
            "https://[::1]",
        ] {
            assert!(is_web_origin(good), "{good} refused");
        }
        for bad in [
            "*",
            "ohif.hospital.example",
            "https://",
            "https://ohif.example/viewer",
            "https://ohif.example:port",
            "ftp://ohif.example",
            "https://ohif.example:99999",
        ] {
            assert!(!is_web_origin(bad), "{bad} accepted");
        }
        let mut config = Config::default();
        config.http.cors_origins = vec!["https://ok.example".into(), "*".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http.cors_origins[1]"), "{err}");
    }

    #[test]
    fn the_deploy_example_is_valid_and_sets_every_option() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vigie.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example: Config = toml::from_str(&text).unwrap();
        example.validate().unwrap();
        assert_eq!(example.destinations["pacs"].port, 104);
        let mut documented = std::collections::BTreeSet::new();
        keys(&toml::from_str(&text).unwrap(), "", &mut documented);
        let mut defaults = std::collections::BTreeSet::new();
        keys(
            &toml::Value::try_from(Config::default()).unwrap(),
            "",
            &mut defaults,
        );
        let missing: Vec<&String> = defaults.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "options missing from the example: {missing:?}"
        );
        // Every option set in the file comes with a comment line above it
        // (or above its block).
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_option =
                line.contains(" = ") && !line.starts_with('#') && !line.starts_with(' ');
            if is_option && i > 0 {
                let above = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
                assert!(
                    above.is_some_and(|l| l.starts_with('#')
                        || l.starts_with('[')
                        || l.contains(" = ")),
                    "line {}: {line}",
                    i + 1
                );
            }
        }
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    /// `key` → default text of every row of `docs/configuration.md`.
    fn documented() -> BTreeMap<String, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].trim_matches('`').to_string(), cells[1].to_string())
            })
            .collect()
    }

    fn flatten(value: &toml::Value, prefix: &str, out: &mut BTreeMap<String, String>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let name = match prefix {
                        "" => k.clone(),
                        "destinations" => "destinations.<name>".to_string(),
                        "inference.batching" => "inference.batching.<model>".to_string(),
                        p => format!("{p}.{k}"),
                    };
                    flatten(v, &name, out);
                }
            }
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                for item in items {
                    flatten(item, &format!("{prefix}[]"), out);
                }
            }
            other => {
                out.insert(prefix.to_string(), format!("`{other}`"));
            }
        }
    }

    #[test]
    fn every_key_and_default_is_documented_as_the_code_has_it() {
        let doc = documented();
        let mut defaults = BTreeMap::new();
        flatten(
            &toml::Value::try_from(Config::default()).unwrap(),
            "",
            &mut defaults,
        );
        for (key, value) in &defaults {
            if key.starts_with("routing.rules[]") {
                continue; // the implicit default rule, documented in prose
            }
            let table_list = format!("{key}[].");
            if value == "`[]`" && doc.keys().any(|k| k.starts_with(&table_list)) {
                continue; // an empty list of tables: its fields are documented
            }
            assert_eq!(doc.get(key), Some(value), "default of {key}");
        }
        // Every option of the complete example is documented…
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vigie.example.toml");
        let mut all = BTreeMap::new();
        let example: toml::Table =
            toml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
        flatten(&toml::Value::Table(example), "", &mut all);
        // …with the options that default to unset.
        for optional in [
            "inference.onnxruntime_library",
            "audit.syslog",
            "http.tls.certificate",
            "http.tls.private_key",
            "pipeline.release_grace_s",
            "pipeline.expected_instances_from",
            "priors.from",
            "dicom.tls.port",
            "dicom.tls.plaintext",
            "dicom.tls.certificate",
            "dicom.tls.private_key",
            "dicom.tls.ca",
            "dicom.tls.client_certificates",
            "dicom.tls.reload_check_s",
            "dicom.allowed_callers[].certificate",
            "destinations.<name>.server_name",
        ] {
            all.insert(optional.into(), String::new());
        }
        for key in all.keys() {
            assert!(
                doc.contains_key(key),
                "{key} is not in docs/configuration.md"
            );
        }
        // …and nothing else is.
        for key in doc.keys() {
            assert!(
                all.contains_key(key),
                "docs/configuration.md documents {key}, which does not exist"
            );
        }
    }
}
