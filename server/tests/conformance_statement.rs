//! `docs/conformance-statement.md` states what the code does: its tables
//! of SOP classes, transfer syntaxes, statuses, created objects and its
//! identifiers are compared with the constants the service uses.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;

use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::scp::{VERIFICATION, default_transfer_syntaxes};
use vigie_dicom_io::net::storage_classes::{IMAGE_STORAGE, SR_STORAGE};
use vigie_dicom_io::results::{seg, sr, summary};
use vigie_dicom_io::write::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use vigie_server::config::Config;
use vigie_test_support::repo_root;

fn statement() -> String {
    std::fs::read_to_string(repo_root().join("docs/conformance-statement.md")).unwrap()
}

/// Rows (cells, trimmed, backquotes removed) of the first table after the
/// heading that contains `heading`.
fn table(text: &str, heading: &str) -> Vec<Vec<String>> {
    let start = text
        .lines()
        .position(|l| (l.starts_with('#') || l.starts_with("**")) && l.contains(heading))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    text.lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

#[test]
fn storage_sop_classes_are_those_accepted() {
    let rows = table(&statement(), "Storage SOP classes accepted");
    let documented: BTreeSet<(String, String)> =
        rows.iter().map(|r| (r[1].clone(), r[0].clone())).collect();
    let accepted: BTreeSet<(String, String)> = IMAGE_STORAGE
        .iter()
        .chain(SR_STORAGE)
        .map(|(uid, name)| (uid.to_string(), name.to_string()))
        .collect();
    assert_eq!(documented, accepted);
    assert_eq!(
        rows.len(),
        IMAGE_STORAGE.len() + SR_STORAGE.len(),
        "no duplicates"
    );
}

#[test]
fn transfer_syntaxes_are_those_accepted() {
    let rows = table(&statement(), "Transfer syntaxes accepted");
    let documented: Vec<String> = rows.iter().map(|r| r[1].clone()).collect();
    assert_eq!(documented, default_transfer_syntaxes());
}

#[test]
fn sop_classes_statuses_and_identifiers_match_the_code() {
    let text = statement();
    let classes = table(&text, "3.2.1 SOP classes");
    let uids: BTreeSet<&str> = classes.iter().map(|r| r[1].as_str()).collect();
    for uid in [
        VERIFICATION,
        sr::COMPREHENSIVE_SR,
        seg::SEGMENTATION,
        summary::SECONDARY_CAPTURE,
    ] {
        assert!(uids.contains(uid), "{uid} missing from 3.2.1");
    }
    let created = table(&text, "Annexes: objects created");
    let created: BTreeSet<&str> = created.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        created,
        BTreeSet::from([
            sr::COMPREHENSIVE_SR,
            seg::SEGMENTATION,
            summary::SECONDARY_CAPTURE
        ])
    );
    let statuses = table(&text, "Storage SCP");
    let codes: BTreeSet<u16> = statuses
        .iter()
        .map(|r| u16::from_str_radix(&r[0], 16).unwrap())
        .collect();
    assert_eq!(
        codes,
        BTreeSet::from([
            status::SUCCESS,
            status::OUT_OF_RESOURCES,
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            status::NOT_AUTHORIZED,
            status::CANNOT_UNDERSTAND,
            status::PROCESSING_FAILURE,
            status::UNRECOGNIZED_OPERATION,
        ])
    );
    let ids = table(&text, "Implementation identifying information");
    assert_eq!(ids[0][1], IMPLEMENTATION_CLASS_UID);
    assert_eq!(ids[1][1], IMPLEMENTATION_VERSION_NAME);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with(env!("CARGO_PKG_VERSION"))
    );
    let defaults = Config::default();
    assert!(text.contains(&format!(
        "`dicom.max_pdu_length`, default {} bytes",
        defaults.dicom.max_pdu_length
    )));
    assert!(text.contains(&format!(
        "`dicom.max_associations` at once (default {})",
        defaults.dicom.max_associations
    )));
    assert!(text.contains(&format!(
        "title `dicom.ae_title` (default `{}`), listening on `dicom.bind`:`dicom.port` (default `{}:{}`)",
        defaults.dicom.ae_title, defaults.dicom.bind, defaults.dicom.port
    )));
}

#[test]
fn the_tls_profile_is_the_one_offered() {
    let text = statement();
    let rows = table(&text, "TLS protocol versions and cipher suites");
    let documented: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let offered: Vec<(String, String)> = vigie_dicom_io::net::tls::bcp195_provider()
        .cipher_suites
        .iter()
        .map(|s| {
            let name = format!("{:?}", s.suite());
            let protocol = if name.starts_with("TLS13_") {
                "TLS 1.3"
            } else {
                "TLS 1.2"
            };
            (protocol.to_string(), name)
        })
        .collect();
    assert_eq!(documented, offered);
    assert!(text.contains(&format!(
        "`dicom.tls.port` (default {}",
        vigie_dicom_io::net::tls::DICOM_TLS_PORT
    )));
}

/// #23's acceptance: every DICOMweb resource served is in the statement's
/// table, and nothing the table lists is missing. The table writes
/// `…/series`, `…/instances` and `…/frames` for the paths above them.
#[test]
fn every_dicomweb_resource_served_is_listed_and_nothing_else() {
    let shape = |path: &str| -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let served: BTreeSet<String> = vigie_server::http::api::endpoints()
        .iter()
        .filter_map(|(e, _)| e.path.strip_prefix("/dicomweb"))
        .map(shape)
        .collect();
    let text = statement();
    let start = text
        .find("| Service | Resources | Media types |")
        .expect("the DICOMweb table");
    let mut documented = BTreeSet::new();
    for row in text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let resources = row.split('|').nth(2).unwrap();
        for item in resources.split('`').skip(1).step_by(2) {
            let item = item.trim_start_matches("POST ");
            let expanded = if let Some(rest) = item.strip_prefix("…/series") {
                format!("/studies/{{study}}/series{rest}")
            } else if let Some(rest) = item.strip_prefix("…/instances") {
                format!("/studies/{{study}}/series/{{series}}/instances{rest}")
            } else if let Some(rest) = item.strip_prefix("…/frames") {
                format!("/studies/{{study}}/series/{{series}}/instances/{{instance}}/frames{rest}")
            } else if item.starts_with('/') {
                item.to_string()
            } else {
                continue;
            };
            documented.insert(shape(&expanded));
        }
    }
    // The legend's `…/frames` is an abbreviation, not a resource.
    documented.remove("/studies/{}/series/{}/instances/{}/frames");
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "listed but not served"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "served but not listed"
    );
    assert!(served.contains("/studies/{}/series/{}/instances/{}/frames/{}"));
    // docs/api.md documents each kind of resource.
    let api = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    for kind in [
        "/metadata",
        "/frames/",
        "/bulkdata/",
        "/rendered",
        "/thumbnail",
    ] {
        assert!(api.contains(kind), "docs/api.md documents {kind}");
    }
}
