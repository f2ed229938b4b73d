//! DICOM over TLS in process: Vigie's SCU to Vigie's SCP, the limits of
//! the time before association (a TLS handshake holds no association
//! slot), and the BCP 195 profile as `openssl s_client` sees it (older
//! protocols and suites outside the profile refused).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigie_dicom_io::net::scp::{
    AllowedCaller, Listener, ReceivedInstance, ScpEvent, ScpOptions, StoreHandler, StoreOutcome,
    serve_listeners_until,
};
use vigie_dicom_io::net::scu::{RemoteAe, ScuOptions, send_files};
use vigie_dicom_io::net::tls::{ClientAuth, DicomTls, TlsDestination, TlsFiles, server_name};
use vigie_test_support::pki::{Issued, authority, leaf};
use vigie_test_support::pydicom_test_files;

#[derive(Default)]
struct Sink {
    events: Mutex<Vec<ScpEvent>>,
    stored: Mutex<Vec<String>>,
}

impl StoreHandler for Sink {
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        let _ = std::fs::remove_file(&instance.path);
        self.stored.lock().unwrap().push(instance.sop_instance_uid);
        StoreOutcome::success()
    }
    fn event(&self, event: ScpEvent) {
        self.events.lock().unwrap().push(event);
    }
}

struct Pki {
    ca: Issued,
    server: Issued,
    modality: Issued,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), "hospital-ca");
    let server = leaf(dir.path(), &ca, "vigie.test", "vigie", ",IP:127.0.0.1");
    let modality = leaf(dir.path(), &ca, "modality1.test", "modality1", "");
    Pki {
        ca,
        server,
        modality,
        _dir: dir,
    }
}

fn tls(who: &Issued, ca: &Issued, client_auth: ClientAuth) -> Arc<DicomTls> {
    Arc::new(
        DicomTls::load(TlsFiles {
            certificate: who.certificate.clone(),
            private_key: who.key.clone(),
            ca: Some(ca.certificate.clone()),
            client_auth,
        })
        .unwrap(),
    )
}

/// An SCP on a TLS port; its port, sink and staging folder.
async fn start(
    pki: &Pki,
    configure: impl FnOnce(&mut ScpOptions),
) -> (u16, Arc<Sink>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ScpOptions::new("VIGIE", dir.path().join("staging"));
    configure(&mut options);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let sink = Arc::new(Sink::default());
    let listener = Listener {
        tcp,
        tls: Some(tls(&pki.server, &pki.ca, ClientAuth::Required)),
    };
    tokio::spawn(serve_listeners_until(
        vec![listener],
        options,
        sink.clone(),
        std::future::pending(),
        Duration::ZERO,
    ));
    (port, sink, dir)
}

fn remote(port: u16, tls: Option<TlsDestination>) -> RemoteAe {
    RemoteAe {
        ae_title: "VIGIE".into(),
        host: "127.0.0.1".into(),
        port,
        tls,
    }
}

fn mr_file() -> std::path::PathBuf {
    vigie_test_support::require(pydicom_test_files().join("MR_small.dcm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigie_scu_stores_over_tls_and_a_silent_handshake_holds_no_association_slot() {
    let pki = pki();
    let (port, sink, _dir) = start(&pki, |o| {
        o.max_associations = 1;
        o.artim_timeout = Duration::from_secs(2);
        o.refusal_summary_period = Duration::from_millis(300);
        o.allowed_callers = vec![AllowedCaller {
            ae_title: "MOD1".into(),
            address: None,
            certificate: Some("modality1.test".into()),
        }];
    })
    .await;
    // A connection that never starts its handshake waits in the pending
    // pool, not in the only association slot.
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let destination = TlsDestination {
        tls: tls(&pki.modality, &pki.ca, ClientAuth::None),
        server_name: server_name("vigie.test").unwrap(),
    };
    let file = mr_file();
    let outcomes = send_files(
        &remote(port, Some(destination.clone())),
        &ScuOptions::new("MOD1"),
        std::slice::from_ref(&file),
    )
    .await
    .unwrap();
    assert!(outcomes[0].delivered(), "{outcomes:?}");
    assert_eq!(sink.stored.lock().unwrap().len(), 1);
    let events = sink.events.lock().unwrap().clone();
    let session = events
        .iter()
        .find_map(|e| match e {
            ScpEvent::Accepted { tls, .. } => tls.clone(),
            _ => None,
        })
        .expect("accepted over TLS");
    assert!(
        session
            .peer_certificate
            .as_ref()
            .is_some_and(|c| c.carries("modality1.test")),
        "{session:?}"
    );

    // The wrong server name: Vigie's certificate does not name it.
    let wrong = TlsDestination {
        server_name: server_name("pacs.elsewhere.test").unwrap(),
        ..destination
    };
    let e = send_files(
        &remote(port, Some(wrong)),
        &ScuOptions::new("MOD1"),
        std::slice::from_ref(&file),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");

    // In clear on the TLS port: refused at the handshake.
    let e = send_files(
        &remote(port, None),
        &ScuOptions::new("MOD1"),
        std::slice::from_ref(&file),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        e,
        vigie_dicom_io::net::scu::ScuError::Associate { .. }
    ));

    // The silent one is closed after ARTIM, and counted with its reason.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(silent);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = sink.events.lock().unwrap().clone();
        let reasons: Vec<String> = events
            .iter()
            .flat_map(|e| match e {
                ScpEvent::ConnectionsRefused { reasons, .. } => {
                    reasons.iter().map(|(r, _)| r.clone()).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        if reasons.iter().any(|r| r.contains("ARTIM"))
            && reasons.iter().any(|r| r.contains("does not speak TLS"))
            && reasons.iter().any(|r| r.contains("alert BadCertificate"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{reasons:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `openssl s_client` against the TLS port; whether the handshake
/// completed, and what it printed.
fn s_client(port: u16, pki: &Pki, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-CAfile", pki.ca.certificate.to_str().unwrap()])
        .args(["-cert", pki.modality.certificate.to_str().unwrap()])
        .args(["-key", pki.modality.key.to_str().unwrap()])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let completed =
        text.contains("Verify return code: 0 (ok)") && !text.contains("Cipher is (NONE)");
    (completed, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bcp_195_protocols_and_suites_complete_a_handshake() {
    let pki = pki();
    let (port, sink, _dir) = start(&pki, |o| {
        o.refusal_summary_period = Duration::from_millis(200);
    })
    .await;
    let probe = |extra: Vec<&str>| s_client(port, &pki, &extra);
    let (ok, text) = probe(vec!["-tls1_3"]);
    assert!(ok, "TLS 1.3: {text}");
    let (ok, text) = probe(vec!["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]);
    assert!(ok, "TLS 1.2 ECDHE-RSA-AES128-GCM-SHA256: {text}");
    assert!(text.contains("ECDHE-RSA-AES128-GCM-SHA256"), "{text}");
    // Outside the profile: RSA key exchange, CBC, CHACHA20 under 1.2,
    // TLS 1.1 and 1.0.
    for (what, extra) in [
        (
            "RSA key exchange",
            vec!["-tls1_2", "-cipher", "AES128-GCM-SHA256"],
        ),
        ("CBC", vec!["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"]),
        (
            "CHACHA20 under TLS 1.2",
            vec!["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"],
        ),
        ("TLS 1.1", vec!["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]),
        ("TLS 1.0", vec!["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]),
    ] {
        let (ok, text) = probe(extra);
        assert!(!ok, "{what} must be refused: {text}");
    }
    // The three suites outside the profile were refused by Vigie, not by
    // the local openssl (TLS 1.0/1.1 may be refused by either side).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refused: u64 = sink
            .events
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| match e {
                ScpEvent::ConnectionsRefused { reasons, .. } => reasons.clone(),
                _ => Vec::new(),
            })
            .filter(|(r, _)| r.contains("no common protocol version or cipher suite"))
            .map(|(_, n)| n)
            .sum();
        if refused >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "refused by Vigie: {refused}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
