//! `vigie serve` as a child process on loopback ports, for the DICOM node
//! tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigie_test_support::{free_port, repo_root, require};
use vigie_validation::import::{ImportOptions, import_images};

/// A running `vigie serve`.
pub struct Vigie {
    child: Option<Child>,
    /// DICOM port.
    pub dicom: u16,
    /// HTTP port.
    pub http: u16,
    /// Data directory.
    pub data: PathBuf,
    /// Configuration file.
    pub config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    probe: bool,
    binary: PathBuf,
}

impl Drop for Vigie {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Configuration every test starts from: loopback, quick stable age, no
/// free-space reserve, the repository's model packages.
pub fn base_config(extra: &str) -> String {
    // The summary image is on by default (#23: it is the result OHIF
    // displays); the suites that count result objects predate that and
    // keep it off, unless they set [results] themselves.
    let results = if extra.contains("[results]") {
        ""
    } else {
        "[results]\nsummary_image = false\n"
    };
    format!(
        r#"
[appliance]
id = "vigie-test"

[dicom]
bind = "127.0.0.1"
artim_timeout_s = 5

[http]
bind = "127.0.0.1"
{tokens}

[inference]
models_dir = "{models}"
onnxruntime_library = "{lib}"
intra_threads = 2

[storage]
min_free_mib = 0

[pipeline]
stable_age_s = 1.0
retry_delay_s = 0.5

[delivery]
retry_initial_s = 0.5
retry_max_s = 2.0
{extra}
{results}
"#,
        tokens = token_entries(),
        models = repo_root().join("models").display(),
        lib = require(repo_root().join(".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1"))
            .display(),
    )
}

/// The test tokens, one per role: (role, token).
pub const TOKENS: [(&str, &str); 5] = [
    ("reader", "test-token-reader"),
    ("operator", "test-token-operator"),
    ("auditor", "test-token-auditor"),
    ("reviewer", "test-token-reviewer"),
    ("admin", "test-token-admin"),
];

/// The token of `role`.
pub fn token(role: &str) -> &'static str {
    TOKENS
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, t)| *t)
        .expect("a test role")
}

fn token_entries() -> String {
    use sha2::Digest;
    TOKENS
        .iter()
        .map(|(role, token)| {
            format!(
                "[[http.tokens]]\nname = \"test-{role}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            )
        })
        .collect()
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) and close before the whole body is sent:
    // its answer is what counts.
    let written = stream.write_all(body);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    match parse_response(&raw) {
        Ok(response) => Ok(response),
        Err(e) => {
            written?;
            read?;
            Err(e)
        }
    }
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

impl Vigie {
    /// An HTTP request to this service.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http(self.http, method, path, token, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_text()))
    }

    /// Audit records through `GET /api/v1/audit` (auditor token), with
    /// `query` (`kind=…&study=…`; at most 10 000 unless it sets `limit`).
    pub fn audit_records(&self, query: &str) -> Vec<serde_json::Value> {
        let query = if query.contains("limit=") {
            query.to_string()
        } else {
            format!("limit=10000&{query}")
        };
        let r = self.http(
            "GET",
            &format!("/api/v1/audit?{query}"),
            Some(token("auditor")),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// `POST /api/v1/audit/verify` (auditor token), which must answer 200:
    /// the verification report.
    pub fn verify_audit(&self) -> serde_json::Value {
        let r = self.http(
            "POST",
            "/api/v1/audit/verify",
            Some(token("auditor")),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Write `config` in `dir` and start `vigie serve` on fresh ports with
    /// data under `dir/data`.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_with_env(dir, config, &[])
    }

    /// Start without waiting for `/healthz` over plain HTTP (TLS tests).
    pub fn start_without_probe(dir: &Path, config: &str) -> Self {
        Self::start_inner(dir, config, &[], false)
    }

    /// Same, with environment overrides.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_inner(dir, config, env, true)
    }

    /// Start `binary` (a wrapper around `vigie`, say) with environment
    /// overrides.
    pub fn start_binary_with_env(
        binary: &Path,
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_from(binary, dir, config, env, true)
    }

    /// Start another build of `vigie` (an installed copy).
    pub fn start_binary(binary: &Path, dir: &Path, config: &str) -> Self {
        Self::start_from(binary, dir, config, &[], true)
    }

    fn start_inner(dir: &Path, config: &str, env: &[(&str, &str)], probe: bool) -> Self {
        Self::start_from(
            Path::new(env!("CARGO_BIN_EXE_vigie")),
            dir,
            config,
            env,
            probe,
        )
    }

    fn start_from(
        binary: &Path,
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        probe: bool,
    ) -> Self {
        let path = dir.join("vigie.toml");
        std::fs::write(&path, config).expect("write config");
        let mut vigie = Self {
            child: None,
            dicom: free_port(),
            http: free_port(),
            data: dir.join("data"),
            config: path,
            log: dir.join("vigie.log"),
            probe: true,
            binary: binary.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        vigie.probe = probe;
        vigie.spawn();
        vigie
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = Command::new(&self.binary);
        command
            .env_remove("VIGIE_CONFIG")
            .env_remove("ORT_DYLIB_PATH")
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--dicom-port", &self.dicom.to_string()])
            .args(["--http-port", &self.http.to_string()])
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("vigie starts"));
        if !self.probe {
            return;
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self.get("/healthz").is_some() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("vigie serve exited with {status}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("vigie serve did not answer /healthz:\n{}", self.log_text());
    }

    /// Stop it with SIGKILL (no chance to clean up), as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop it with SIGTERM and wait for a clean exit (30 s at most).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "vigie serve exited with {status}:\n{}",
                        self.log_text()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            panic!("vigie serve did not stop on SIGTERM:\n{}", self.log_text());
        }
    }

    /// Run another `vigie` command on the same configuration and data.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.push("--data-dir".into());
        all.push(self.data.display().to_string());
        Command::new(&self.binary)
            .env_remove("VIGIE_CONFIG")
            .arg("--config")
            .arg(&self.config)
            .args(&all)
            .output()
            .expect("vigie runs")
    }

    /// Start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Process id of the running service.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Wait for the process to exit by itself (after a signal sent by the
    /// test); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("vigie serve did not exit:\n{}", self.log_text());
    }

    /// Replace environment overrides (for the next start).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Peak resident memory of the process (VmHWM), bytes.
    pub fn peak_memory(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("number");
        kib * 1024
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the HTTP side; the body when the status is 200.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
            token("admin")
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// GET a JSON document.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let body = self
            .get(path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.log_text()));
        serde_json::from_str(&body).expect("JSON")
    }

    /// Jobs, oldest first.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        let mut jobs = self
            .json("/api/v1/jobs?limit=1000")
            .as_array()
            .cloned()
            .unwrap_or_default();
        jobs.reverse();
        jobs
    }

    /// Wait until `done` holds (polling every 200 ms), or panic with the log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}:\n{}", self.log_text());
    }

    /// The stored file of an instance.
    pub fn stored(&self, study: &str, series: &str, sop: &str) -> PathBuf {
        self.data
            .join("studies")
            .join(study)
            .join(series)
            .join(format!("{sop}.dcm"))
    }
}

/// Import `count` demo pictures as labelled single-image MR studies in
/// `dir`; returns the DICOM files.
pub fn demo_studies(dir: &Path, count: usize) -> Vec<PathBuf> {
    let labels: BTreeMap<String, String> = [
        ("gl", "glioma"),
        ("me", "meningioma"),
        ("no", "notumor"),
        ("pi", "pituitary"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .into();
    let pictures = dir.join("pictures");
    std::fs::create_dir_all(&pictures).expect("mkdir");
    let mut names: Vec<PathBuf> = std::fs::read_dir(vigie_test_support::demo_images())
        .expect("demo images")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    // Spread over the labels.
    let step = (names.len() / count.max(1)).max(1);
    for picture in names.iter().step_by(step).take(count) {
        std::fs::copy(picture, pictures.join(picture.file_name().expect("name"))).expect("copy");
    }
    let options = ImportOptions::new(
        regex::Regex::new("^Te-(gl|me|no|pi)_").expect("regex"),
        labels,
        "test".into(),
    );
    let out = dir.join("dicom");
    let dataset = import_images(&pictures, &out, &options).expect("import");
    dataset
        .studies
        .iter()
        .flat_map(|s| s.files.iter().map(|f| out.join(f)))
        .collect()
}

/// Header UIDs of a file: (study, series, SOP instance).
pub fn uids(path: &Path) -> (String, String, String) {
    let file = vigie_dicom_io::DicomFile::open(path).expect("opens");
    let h = file.header();
    (
        h.study_instance_uid.clone(),
        h.series_instance_uid.clone(),
        h.sop_instance_uid.clone(),
    )
}

/// Run a DCMTK tool; its output.
pub fn dcmtk(program: &str, args: &[String]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (apt-get install dcmtk): {e}"))
}

/// A STOW-RS body of these files.
pub fn multipart(files: &[PathBuf], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for f in files {
        body.extend(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        body.extend(std::fs::read(f).unwrap());
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// storescu arguments to send `files` to `port`, proposing `proposal`
/// (e.g. "-xr" for RLE) and only what the files need.
pub fn storescu_args(port: u16, proposal: &str, files: &[PathBuf]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-aet", "MODALITY", "-aec", "VIGIE", "-to", "20", proposal, "-R",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("127.0.0.1".into());
    args.push(port.to_string());
    args.extend(files.iter().map(|f| f.display().to_string()));
    args
}

/// The data set bytes of a Part 10 file (after its meta group).
pub fn dataset_bytes(path: &Path) -> (dicom_object::FileMetaTable, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let mut cursor = std::io::Cursor::new(bytes);
    std::io::Seek::seek(&mut cursor, std::io::SeekFrom::Start(128)).unwrap();
    let meta = dicom_object::FileMetaTable::from_reader(&mut cursor).unwrap();
    let position = cursor.position() as usize;
    (meta, cursor.into_inner().split_off(position))
}

/// A Part 10 file with this meta group and these data set bytes.
pub fn wrap(path: &Path, class: &str, instance: &str, dataset: &[u8]) {
    wrap_in(path, class, instance, "1.2.840.10008.1.2.1", dataset);
}

/// [`wrap`] with another transfer syntax in the meta group (the data set
/// bytes must be encoded in it).
pub fn wrap_in(path: &Path, class: &str, instance: &str, transfer_syntax: &str, dataset: &[u8]) {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid("2.25.1")
        .build()
        .unwrap();
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).unwrap();
    out.extend_from_slice(dataset);
    std::fs::write(path, out).unwrap();
}

pub fn send(port: u16, files: &[PathBuf]) -> Vec<vigie_dicom_io::net::scu::SendOutcome> {
    let remote = vigie_dicom_io::net::scu::RemoteAe {
        ae_title: "VIGIE".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(vigie_dicom_io::net::scu::send_files(
            &remote,
            &vigie_dicom_io::net::scu::ScuOptions::new("BADSCU"),
            files,
        ))
        .unwrap()
}

/// A C-ECHO to `vigie serve` on `port` succeeds.
pub fn echo(port: u16) -> bool {
    let args: Vec<String> = ["-aec", "VIGIE", "-to", "10", "127.0.0.1", &port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    dcmtk("echoscu", &args).status.success()
}

/// DCMTK's `storescp` (AE title `PACS`) as a stand-in PACS on loopback,
/// writing what it receives into `dir`; killed when dropped.
pub struct StoreScp {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Where it writes.
    pub dir: PathBuf,
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start [`StoreScp`] on a free port.
pub fn storescp(dir: &Path) -> StoreScp {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let child = Command::new("storescp")
        .args(["-aet", "PACS", "-od"])
        .arg(dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storescp (apt-get install dcmtk)");
    std::thread::sleep(Duration::from_millis(300));
    StoreScp {
        child,
        port,
        dir: dir.to_path_buf(),
    }
}

/// The DICOM part of a single-part WADO-RS response.
pub fn only_part(response: &HttpResponse) -> Vec<u8> {
    let content_type = response
        .header("content-type")
        .expect("a boundary")
        .to_string();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_string();
    let body = &response.body;
    let start = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("part headers")
        + 4;
    let end_marker = format!("\r\n--{boundary}--\r\n");
    assert!(
        body.ends_with(end_marker.as_bytes()),
        "the body ends with its closing delimiter"
    );
    body[start..body.len() - end_marker.len()].to_vec()
}
