//! The Verification SCP answered by a real peer: DCMTK's `echoscu`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use vigie_dicom_io::net::echo::{EchoScpOptions, Event, serve};

fn echoscu(port: u16, called: &str) -> std::process::Output {
    Command::new("echoscu")
        .args([
            "-aet",
            "TESTSCU",
            "-aec",
            called,
            "-to",
            "10",
            "127.0.0.1",
            &port.to_string(),
        ])
        .output()
        .expect("echoscu runs (apt-get install dcmtk)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_gets_success_and_a_wrong_called_ae_title_is_rejected() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(serve(listener, EchoScpOptions::new("VIGIE", 4), tx));

    let ok = tokio::task::spawn_blocking(move || echoscu(port, "VIGIE"))
        .await
        .expect("join");
    assert!(
        ok.status.success(),
        "echoscu failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        rx.recv().await,
        Some(Event::Accepted {
            calling_ae_title: "TESTSCU".into()
        })
    );
    assert_eq!(
        rx.recv().await,
        Some(Event::Echoed {
            calling_ae_title: "TESTSCU".into()
        })
    );

    let wrong = tokio::task::spawn_blocking(move || echoscu(port, "SOMEONE"))
        .await
        .expect("join");
    assert!(
        !wrong.status.success(),
        "an association to another AE title must be rejected"
    );
    assert!(matches!(rx.recv().await, Some(Event::Refused { .. })));
    server.abort();
}
