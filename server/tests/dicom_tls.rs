//! DICOM over TLS (PS3.15 Annex B, BCP 195) against real peers: DCMTK's
//! `echoscu`, `storescu` and `storescp` with `+tls`, and Orthanc with
//! `DicomTlsEnabled`. Certificates are made for each test by the `openssl`
//! command: a hospital CA, Vigie's server certificate, modalities'
//! client certificates, and a rogue CA that nobody trusts.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, demo_studies, uids};
use vigie_test_support::pki::{Issued, authority, leaf, tls_args};
use vigie_test_support::{Orthanc, free_port};

/// `echoscu` (no file) or `storescu` (a file) calling Vigie on `port`.
fn dcmtk_to_vigie(
    port: u16,
    calling: &str,
    tls: &[String],
    file: Option<&Path>,
) -> std::process::Output {
    let mut args: Vec<String> = tls.to_vec();
    args.extend(
        ["-aet", calling, "-aec", "VIGIE", "-to", "10", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.push(port.to_string());
    args.extend(file.map(|f| f.display().to_string()));
    dcmtk(
        if file.is_some() {
            "storescu"
        } else {
            "echoscu"
        },
        &args,
    )
}

fn echo(port: u16, calling: &str, tls: &[String]) -> std::process::Output {
    dcmtk_to_vigie(port, calling, tls, None)
}

fn store(port: u16, calling: &str, tls: &[String], file: &Path) -> std::process::Output {
    dcmtk_to_vigie(port, calling, tls, Some(file))
}

fn details(record: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(record["details"].as_str().unwrap_or("{}")).unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Replace a file's content in one rename, as a renewal tool does.
fn replace(from: &Path, to: &Path) {
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

#[test]
fn dcmtk_over_tls_is_served_bound_callers_need_their_certificate_and_refusals_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = authority(&pki, "hospital-ca");
    let rogue_ca = authority(&pki, "rogue-ca");
    let server = leaf(
        &pki,
        &ca,
        "vigie.test",
        "vigie",
        ",DNS:localhost,IP:127.0.0.1",
    );
    let modality = leaf(&pki, &ca, "modality1.test", "modality1", "");
    let other = leaf(&pki, &ca, "modality2.test", "modality2", "");
    let rogue = leaf(&pki, &rogue_ca, "modality1.test", "rogue", "");
    // The files Vigie reads, replaced in place later for the reload.
    let presented = Issued {
        certificate: pki.join("presented.crt"),
        key: pki.join("presented.key"),
    };
    replace(&server.certificate, &presented.certificate);
    replace(&server.key, &presented.key);
    let tls_port = free_port();
    let config = base_config(&format!(
        r#"
[dicom.tls]
port = {tls_port}
plaintext = true
certificate = "{cert}"
private_key = "{key}"
ca = "{ca}"
client_certificates = "required"
reload_check_s = 0

[[dicom.allowed_callers]]
ae_title = "MOD1"
certificate = "modality1.test"

# An unbound entry of the same title opens no way around the certificate.
[[dicom.allowed_callers]]
ae_title = "MOD1"

[[dicom.allowed_callers]]
ae_title = "OTHER"
"#,
        cert = presented.certificate.display(),
        key = presented.key.display(),
        ca = ca.certificate.display(),
    ))
    .replace(
        "artim_timeout_s = 5",
        "artim_timeout_s = 5\nrefusal_summary_s = 1",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    let demo = demo_studies(&tmp.path().join("demo"), 2);

    // The bound modality, with its certificate: echo and store.
    let with_modality = tls_args(&modality, &ca);
    let out = echo(tls_port, "MOD1", &with_modality);
    assert!(out.status.success(), "echoscu +tls: {}", text(&out));
    let out = store(tls_port, "MOD1", &with_modality, &demo[0]);
    assert!(out.status.success(), "storescu +tls: {}", text(&out));
    let (study, series, sop) = uids(&demo[0]);
    assert!(vigie.stored(&study, &series, &sop).is_file());
    let accepted = vigie.audit_records("kind=association&outcome=accepted");
    let over_tls = accepted
        .iter()
        .map(details)
        .find(|d| d["calling_ae_title"] == "MOD1")
        .expect("the TLS association is on record");
    let tls = &over_tls["tls"];
    assert!(
        ["TLSv1_3", "TLSv1_2"].contains(&tls["protocol"].as_str().unwrap()),
        "{tls}"
    );
    let suite = tls["cipher_suite"].as_str().unwrap();
    assert!(
        suite.contains("GCM") || suite.contains("CHACHA20"),
        "{suite}"
    );
    let names = tls["peer_certificate"]["names"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "modality1.test"), "{tls}");

    // The bound title with another (trusted) certificate, or in clear:
    // rejected, with the reason on record.
    let with_other = tls_args(&other, &ca);
    let out = store(tls_port, "MOD1", &with_other, &demo[1]);
    assert!(!out.status.success(), "another certificate: {}", text(&out));
    let out = store(vigie.dicom, "MOD1", &[], &demo[1]);
    assert!(!out.status.success(), "in clear: {}", text(&out));
    let (_, series1, sop1) = uids(&demo[1]);
    let (study1, _, _) = uids(&demo[1]);
    assert!(!vigie.stored(&study1, &series1, &sop1).exists());
    vigie.wait_for("both rejections on record", Duration::from_secs(10), |v| {
        let reasons: Vec<String> = v
            .audit_records("kind=association&outcome=rejected")
            .iter()
            .map(|r| details(r)["reason"].as_str().unwrap_or("").to_string())
            .collect();
        reasons
            .iter()
            .any(|r| r.contains("modality1.test") && r.contains("modality2.test"))
            && reasons
                .iter()
                .any(|r| r.contains("modality1.test") && r.contains("none was presented"))
    });
    // An unbound title over TLS with any trusted certificate is let in.
    let out = echo(tls_port, "OTHER", &with_other);
    assert!(out.status.success(), "unbound title: {}", text(&out));

    // A plaintext peer on the TLS port, and a certificate from a CA nobody
    // trusts: the handshake fails, the service goes on, both are audited.
    let out = echo(tls_port, "OTHER", &[]);
    assert!(!out.status.success(), "plaintext on the TLS port");
    let out = echo(tls_port, "MOD1", &tls_args(&rogue, &ca));
    assert!(!out.status.success(), "rogue certificate: {}", text(&out));
    vigie.wait_for("the refusals summarised", Duration::from_secs(15), |v| {
        let records = v.audit_records("kind=connections_refused");
        let reasons: Vec<String> = records
            .iter()
            .flat_map(|r| {
                details(r)["reasons"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        let sampled = records
            .iter()
            .any(|r| details(r)["sample_addresses"][0] == "127.0.0.1");
        sampled
            && reasons.iter().any(|r| r.contains("does not speak TLS"))
            && reasons
                .iter()
                .any(|r| r.contains("certificate is refused") && r.contains("UnknownIssuer"))
    });
    let out = echo(tls_port, "MOD1", &with_modality);
    assert!(out.status.success(), "still serving: {}", text(&out));

    // Renewal: a certificate from another CA replaces the files; SIGHUP
    // reloads it without a restart. A caller trusting only the old CA now
    // fails; one trusting the new one succeeds.
    let renewed_ca = authority(&pki, "renewed-ca");
    let renewed = leaf(&pki, &renewed_ca, "vigie.test", "vigie-renewed", "");
    let before = vigie.audit_records("kind=tls_certificate");
    assert_eq!(before.len(), 1, "loaded at start: {before:?}");
    assert_eq!(before[0]["outcome"], "loaded");
    replace(&renewed.key, &presented.key);
    replace(&renewed.certificate, &presented.certificate);
    let status = Command::new("kill")
        .args(["-HUP", &vigie.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    vigie.wait_for("the reload on record", Duration::from_secs(10), |v| {
        v.audit_records("kind=tls_certificate&outcome=reloaded")
            .iter()
            .any(|r| {
                details(r)["issuer"]
                    .as_str()
                    .unwrap_or("")
                    .contains("renewed-ca")
            })
    });
    let out = echo(tls_port, "MOD1", &with_modality);
    assert!(!out.status.success(), "the old CA no longer verifies Vigie");
    let out = echo(tls_port, "MOD1", &tls_args(&modality, &renewed_ca));
    assert!(out.status.success(), "renewed certificate: {}", text(&out));

    // A broken renewal (a key that does not match) is refused and the
    // certificate in use stays.
    replace(&other.key, &presented.key);
    Command::new("kill")
        .args(["-HUP", &vigie.pid().to_string()])
        .status()
        .unwrap();
    vigie.wait_for(
        "the failed reload on record",
        Duration::from_secs(10),
        |v| {
            !v.audit_records("kind=tls_certificate&outcome=reload_failed")
                .is_empty()
        },
    );
    let out = echo(tls_port, "MOD1", &tls_args(&modality, &renewed_ca));
    assert!(out.status.success(), "previous set in use: {}", text(&out));
    assert!(
        vigie
            .get("/metrics")
            .unwrap()
            .contains("vigie_dicom_tls_certificate_expiry_timestamp_seconds"),
        "expiry metric"
    );
}

/// A temporary folder with a hospital CA and Vigie's certificate in `pki/`.
fn hospital_pki() -> (tempfile::TempDir, std::path::PathBuf, Issued, Issued) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = authority(&pki, "hospital-ca");
    let server = leaf(&pki, &ca, "vigie.test", "vigie", "");
    (tmp, pki, ca, server)
}

/// Vigie's TLS configuration for a loop with a TLS peer.
fn tls_section(server: &Issued, ca: &Issued, tls_port: u16) -> String {
    format!(
        r#"
[dicom.tls]
port = {tls_port}
certificate = "{cert}"
private_key = "{key}"
ca = "{ca}"
"#,
        cert = server.certificate.display(),
        key = server.key.display(),
        ca = ca.certificate.display(),
    )
}

#[test]
fn results_are_delivered_over_tls_to_dcmtk_storescp_and_never_in_clear() {
    let (tmp, pki, ca, server) = hospital_pki();
    let modality = leaf(&pki, &ca, "modality1.test", "modality1", "");
    let pacs = leaf(&pki, &ca, "pacs.test", "pacs", ",IP:127.0.0.1");
    let storescp = |tls: &[String], dir: &Path, port: u16| {
        std::fs::create_dir_all(dir).unwrap();
        Command::new("storescp")
            .args(tls)
            .args(["-aet", "PACS", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("storescp runs")
    };
    // One PACS over TLS (it requires and verifies Vigie's certificate, as
    // storescp does by default); one that speaks only in clear but is
    // configured with tls = true: Vigie must never send to it in clear.
    let (tls_pacs, plain_pacs) = (free_port(), free_port());
    let received = tmp.path().join("pacs");
    let received_plain = tmp.path().join("pacs-plain");
    let mut secure = storescp(&tls_args(&pacs, &ca), &received, tls_pacs);
    let mut plain = storescp(&[], &received_plain, plain_pacs);
    let tls_port = free_port();
    // The presented certificate is a copy, broken later to see the
    // periodic check refuse it without a SIGHUP.
    let presented = Issued {
        certificate: pki.join("presented.crt"),
        key: server.key.clone(),
    };
    replace(&server.certificate, &presented.certificate);
    let config = base_config(&format!(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
destinations = ["pacs", "plain"]

[destinations.pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = {tls_pacs}
tls = true

[destinations.plain]
ae_title = "PACS"
host = "127.0.0.1"
port = {plain_pacs}
tls = true
{tls}reload_check_s = 1
"#,
        tls = tls_section(&presented, &ca, tls_port),
    ));
    let vigie = Vigie::start(tmp.path(), &config);
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let out = store(tls_port, "MODALITY", &tls_args(&modality, &ca), &demo[0]);
    assert!(out.status.success(), "storescu +tls: {}", text(&out));
    let has_result = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("SR"))
            })
            .unwrap_or(false)
    };
    vigie.wait_for(
        "the SR at storescp over TLS",
        Duration::from_secs(90),
        |_| has_result(&received),
    );
    vigie.wait_for(
        "the failed TLS delivery to the plaintext PACS on record",
        Duration::from_secs(30),
        |v| {
            v.audit_records("kind=result_delivery&outcome=failed")
                .iter()
                .map(details)
                .any(|d| {
                    d["destination"] == "plain"
                        && d["tls"] == true
                        && d["error"]
                            .as_str()
                            .unwrap_or("")
                            .contains("TLS handshake failed")
                })
        },
    );
    assert!(!has_result(&received_plain), "nothing sent in clear");
    // In TLS-only mode there is no plain listener.
    let listening = std::net::TcpStream::connect(("127.0.0.1", vigie.dicom));
    assert!(listening.is_err(), "TLS only: nothing listens in clear");

    // A renewal gone wrong, seen by the periodic check (no SIGHUP): the
    // certificate file truncated. Refused; the certificate in use stays.
    std::fs::write(
        &presented.certificate,
        "-----BEGIN CERTIFICATE-----\ntruncated",
    )
    .unwrap();
    vigie.wait_for(
        "the failed reload on record",
        Duration::from_secs(10),
        |v| {
            !v.audit_records("kind=tls_certificate&outcome=reload_failed")
                .is_empty()
        },
    );
    let out = echo(tls_port, "MODALITY", &tls_args(&modality, &ca));
    assert!(out.status.success(), "previous set in use: {}", text(&out));
    for child in [&mut secure, &mut plain] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn orthanc_with_dicom_tls_sends_to_vigie_and_gets_the_results_back_over_tls() {
    let (tmp, pki, ca, server) = hospital_pki();
    let pacs = leaf(&pki, &ca, "orthanc.test", "orthanc", ",IP:127.0.0.1");
    let orthanc = Orthanc::start_with(
        "tests/peers/orthanc-tls.json",
        &[
            ("@CERTIFICATE@", pacs.certificate.to_str().unwrap()),
            ("@KEY@", pacs.key.to_str().unwrap()),
            ("@CA@", ca.certificate.to_str().unwrap()),
        ],
    );
    let tls_port = free_port();
    let config = base_config(&format!(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
destinations = ["pacs"]

[[dicom.allowed_callers]]
ae_title = "ORTHANC"
certificate = "orthanc.test"

[destinations.pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc_port}
tls = true
server_name = "orthanc.test"
{tls}"#,
        orthanc_port = orthanc.dicom,
        tls = tls_section(&server, &ca, tls_port),
    ));
    let vigie = Vigie::start(tmp.path(), &config);
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    orthanc.upload(&demo);
    orthanc.store_all_to(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": tls_port, "UseDicomTls": true}),
    );
    for file in &demo {
        let (study, series, sop) = uids(file);
        assert!(vigie.stored(&study, &series, &sop).is_file());
    }
    let accepted = vigie.audit_records("kind=association&outcome=accepted");
    assert!(
        accepted
            .iter()
            .map(details)
            .any(|d| d["calling_ae_title"] == "ORTHANC"
                && d["tls"]["peer_certificate"]["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n == "orthanc.test"))),
        "Orthanc's TLS associations on record: {accepted:?}"
    );
    vigie.wait_for(
        "the results in Orthanc over TLS",
        Duration::from_secs(120),
        |_| orthanc.series_count("SR") == demo.len(),
    );
}
