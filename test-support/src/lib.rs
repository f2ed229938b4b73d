//! Helpers shared by Vigie's integration tests (a dev-dependency only).
//!
//! Everything here fails loudly with the command to run when a set-up asset
//! is missing: tests never skip.
#![deny(missing_docs)]
#![allow(clippy::expect_used, clippy::panic)]

pub mod fuzz;
pub mod hostile;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path`, which must exist (made by `scripts/setup.sh`).
pub fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} missing: run scripts/setup.sh first",
        path.display()
    );
    path
}

/// The project's Python with the test peers.
pub fn python() -> PathBuf {
    require(repo_root().join(".venv/bin/python"))
}

/// The ONNX Runtime library placed by the setup step.
pub fn onnxruntime_library() -> PathBuf {
    require(repo_root().join(".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1"))
}

/// A model package folder under `models/`.
pub fn model_dir(id: &str) -> PathBuf {
    require(repo_root().join("models").join(id))
}

/// The 17 demo pictures.
pub fn demo_images() -> PathBuf {
    require(repo_root().join(".cache/vigie/demo/images"))
}

/// A command running the test oracle script `tests/oracle/<script>`.
pub fn oracle_command(script: &str) -> Command {
    let mut command = Command::new(python());
    command.arg(repo_root().join("tests/oracle").join(script));
    command
}

/// Run `command`; panics with its stderr when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run the test oracle `script` with `args`; panics with its stderr when it
/// fails.
pub fn oracle<I, S>(script: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_ok(oracle_command(script).args(args))
}

/// pydicom's test files folder.
pub fn pydicom_test_files() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import os, pydicom; print(os.path.dirname(pydicom.__file__))",
        ])
        .output()
        .expect("python runs");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim()).join("data/test_files")
}

/// `dciodvfy`'s errors and warnings for a file.
pub fn dciodvfy(path: &Path) -> (Vec<String>, Vec<String>) {
    let out = Command::new("dciodvfy")
        .arg(path)
        .output()
        .expect("dciodvfy runs (apt-get install dicom3tools)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let pick = |prefix: &str| {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| format!("{}: {l}", path.display()))
            .collect()
    };
    (pick("Error"), pick("Warning"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Orthanc started by hand on loopback from `tests/peers/orthanc.json`,
/// killed when dropped.
#[derive(Debug)]
pub struct Orthanc {
    child: Child,
    http: u16,
    /// DICOM port.
    pub dicom: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Orthanc {
    /// Start it and wait until its REST API answers (30 s at most).
    pub fn start() -> Self {
        Self::start_on_dicom_port(free_port())
    }

    /// Start it with this DICOM port.
    pub fn start_on_dicom_port(dicom: u16) -> Self {
        Self::start_from("tests/peers/orthanc.json", dicom, &[])
    }

    /// Start it from another configuration template (relative to the
    /// repository), replacing each placeholder by its value.
    pub fn start_with(template: &str, replace: &[(&str, &str)]) -> Self {
        Self::start_from(template, free_port(), replace)
    }

    fn start_from(template: &str, dicom: u16, replace: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = free_port();
        let mut config =
            std::fs::read_to_string(repo_root().join(template)).expect("config template");
        for (placeholder, value) in replace {
            config = config.replace(placeholder, value);
        }
        let config = config
            .replace("@STORAGE@", &dir.path().join("db").display().to_string())
            .replace("@HTTP_PORT@", &http.to_string())
            .replace("@DICOM_PORT@", &dicom.to_string());
        let config_path = dir.path().join("orthanc.json");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("orthanc.log")).expect("log");
        let child = Command::new("Orthanc")
            .arg(&config_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("Orthanc starts (apt-get install orthanc)");
        let orthanc = Self {
            child,
            http,
            dicom,
            _dir: dir,
        };
        for _ in 0..300 {
            if orthanc
                .curl(&["-f", "-s", &orthanc.url("/system")])
                .status
                .success()
            {
                return orthanc;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("Orthanc did not answer on port {http} within 30 s");
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("orthanc.log")).unwrap_or_default()
    }

    /// The URL of a REST path.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// Run curl with `args`.
    pub fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl").args(args).output().expect("curl runs")
    }

    /// A REST call (`curl -s -f` with `args`, the URL among them); its
    /// JSON answer (`Null` when it is not JSON). Panics, with Orthanc's
    /// log, when the call fails.
    pub fn rest(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-s", "-f"];
        all.extend_from_slice(args);
        let out = self.curl(&all);
        assert!(
            out.status.success(),
            "curl {args:?} failed:\n{}",
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Upload Part 10 files (`POST /instances`).
    pub fn upload(&self, files: &[PathBuf]) {
        for file in files {
            let body = format!("@{}", file.display());
            self.rest(&[
                "-X",
                "POST",
                "--data-binary",
                &body,
                &self.url("/instances"),
            ]);
        }
    }

    /// Declare the modality `name` (`PUT /modalities/{name}`): an AE it
    /// may query, retrieve from and send to.
    pub fn add_modality(&self, name: &str, modality: &serde_json::Value) {
        let modality = modality.to_string();
        self.rest(&[
            "-X",
            "PUT",
            "-d",
            &modality,
            &self.url(&format!("/modalities/{name}")),
        ]);
    }

    /// Declare the modality `name` (`PUT /modalities/{name}`), check it
    /// with a C-ECHO, then send it every study Orthanc holds by C-STORE,
    /// synchronously.
    pub fn store_all_to(&self, name: &str, modality: &serde_json::Value) {
        self.add_modality(name, modality);
        let path = format!("/modalities/{name}");
        self.rest(&["-X", "POST", "-d", "{}", &self.url(&format!("{path}/echo"))]);
        let studies = self.rest(&[&self.url("/studies")]);
        let store = serde_json::json!({ "Resources": studies, "Synchronous": true }).to_string();
        self.rest(&[
            "-X",
            "POST",
            "-d",
            &store,
            &self.url(&format!("{path}/store")),
        ]);
    }

    /// How many series of this modality Orthanc holds.
    pub fn series_count(&self, modality: &str) -> usize {
        let series = self.rest(&[&self.url("/series?expand")]);
        series.as_array().map_or(0, |all| {
            all.iter()
                .filter(|s| s["MainDicomTags"]["Modality"] == modality)
                .count()
        })
    }
}

/// The prior-comparison test fixture's variant with `priors` prior inputs
/// (`prior`, `prior_2`, …), built by its `make_model.py` into `package`
/// (created) with its manifest: the fixture's, with the weights' hash and
/// `priors.inputs` changed, then each `(from, to)` of `replace` (each must
/// be found).
pub fn prior_fixture_variant(package: &Path, priors: usize, replace: &[(&str, &str)]) {
    std::fs::create_dir_all(package).expect("package folder");
    let source = model_dir("fixture-prior-change");
    let weights = package.join("fixture-prior-change.onnx");
    run_ok(
        Command::new(python())
            .arg(source.join("make_model.py"))
            .arg(&weights)
            .arg(priors.to_string()),
    );
    let hashed = run_ok(Command::new("sha256sum").arg(&weights));
    let sha256 = String::from_utf8_lossy(&hashed.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string();
    let mut manifest = std::fs::read_to_string(source.join("model.toml")).expect("manifest");
    let inputs: Vec<String> = (1..=priors)
        .map(|k| match k {
            1 => "\"prior\"".to_string(),
            k => format!("\"prior_{k}\""),
        })
        .collect();
    let original = "b52a87032e8bc50d1ba6d131132a7a3cbbd7c0932ac8614813be81b364166be3";
    let inputs = format!("inputs = [{}]", inputs.join(", "));
    for (from, to) in [
        (original, sha256.as_str()),
        ("inputs = [\"prior\"]", &inputs),
    ]
    .into_iter()
    .chain(replace.iter().copied())
    {
        assert!(
            manifest.contains(from),
            "{from:?} not in the fixture's manifest"
        );
        manifest = manifest.replace(from, to);
    }
    std::fs::write(package.join("model.toml"), manifest).expect("manifest written");
}
