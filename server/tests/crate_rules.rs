//! The rules of the house (docs/crates.md), checked on the workspace's
//! manifests with `cargo metadata`: dependencies point one way, the audit
//! trail depends on no other domain crate, and no domain crate knows HTTP,
//! the command line or configuration files.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

/// Workspace package → its normal (non-dev) dependencies.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null() || d["kind"] == "build")
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

const DOMAIN: &[&str] = &[
    "vigie-audit",
    "vigie-store",
    "vigie-dicom-io",
    "vigie-inference",
    "vigie-analysis",
    "vigie-validation",
];

/// Crates that belong to the service side only.
const SERVICE_SIDE: &[&str] = &[
    "axum",
    "axum-server",
    "tower",
    "tower-http",
    "hyper",
    "http",
    "http-body-util",
    "clap",
    "figment",
    "anyhow",
];

#[test]
fn no_domain_crate_depends_on_the_server_or_on_http_cli_or_configuration_crates() {
    let deps = dependencies();
    for name in DOMAIN.iter().chain(&["vigie-durable"]) {
        let theirs = deps
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is in the workspace"));
        assert!(
            !theirs.contains("vigie-server"),
            "{name} depends on vigie-server"
        );
        for banned in SERVICE_SIDE {
            assert!(!theirs.contains(*banned), "{name} depends on {banned}");
        }
    }
}

#[test]
fn the_audit_trail_depends_on_no_other_domain_crate() {
    let deps = dependencies();
    let vigie: Vec<_> = deps["vigie-audit"]
        .iter()
        .filter(|d| d.starts_with("vigie-"))
        .collect();
    assert_eq!(
        vigie,
        ["vigie-durable"],
        "vigie-audit may use vigie-durable only"
    );
    let durable: Vec<_> = deps["vigie-durable"]
        .iter()
        .filter(|d| d.starts_with("vigie-"))
        .collect();
    assert!(durable.is_empty(), "vigie-durable depends on {durable:?}");
}

#[test]
fn dependencies_between_domain_crates_point_one_way() {
    let deps = dependencies();
    // What each domain crate may use among Vigie's crates.
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("vigie-dicom-io", &["vigie-durable"][..]),
        ("vigie-inference", &[][..]),
        (
            "vigie-analysis",
            &["vigie-dicom-io", "vigie-inference", "vigie-store"][..],
        ),
        ("vigie-store", &["vigie-durable", "vigie-dicom-io"][..]),
        (
            "vigie-validation",
            &[
                "vigie-dicom-io",
                "vigie-inference",
                "vigie-analysis",
                "vigie-audit",
            ][..],
        ),
    ]);
    for (name, may) in allowed {
        for dep in deps[name].iter().filter(|d| d.starts_with("vigie-")) {
            assert!(
                may.contains(&dep.as_str()),
                "{name} depends on {dep}; allowed: {may:?}"
            );
        }
    }
}
