//! C-FIND between Vigie's Query SCU and Vigie's SCP in process: matches
//! come back as pending responses, an identifier over the SCP's bound is
//! refused with A700 (never buffered whole), and a listener without query
//! models does not offer the service at all.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use vigie_dicom_io::net::find::{STUDY_ROOT_FIND, find, study_query};
use vigie_dicom_io::net::scp::{
    FindAnswer, FindRequest, ReceivedInstance, ScpEvent, ScpOptions, StoreHandler, StoreOutcome,
    serve,
};
use vigie_dicom_io::net::scu::{RemoteAe, ScuOptions};

/// Answers every C-FIND with two matches echoing the level asked.
#[derive(Default)]
struct Answers {
    asked: Mutex<Vec<FindRequest>>,
}

impl StoreHandler for Answers {
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        let _ = std::fs::remove_file(&instance.path);
        StoreOutcome::success()
    }
    fn event(&self, _event: ScpEvent) {}
    fn find(&self, request: FindRequest) -> FindAnswer {
        let mut matches = Vec::new();
        for uid in ["1.2.3.1", "1.2.3.2"] {
            let mut m = InMemDicomObject::new_empty();
            m.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from("STUDY"),
            ));
            m.put(DataElement::new(
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(uid),
            ));
            matches.push(m);
        }
        self.asked.lock().unwrap().push(request);
        FindAnswer {
            matches,
            status: 0x0000,
            comment: None,
            unsupported_keys: false,
        }
    }
}

async fn start(query: bool) -> (u16, Arc<Answers>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ScpOptions::new("VIGIE", dir.path().join("staging"));
    if query {
        options.query_models = vec![STUDY_ROOT_FIND.to_string()];
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(Answers::default());
    tokio::spawn(serve(listener, options, handler.clone()));
    (port, handler, dir)
}

fn remote(port: u16) -> RemoteAe {
    RemoteAe {
        ae_title: "VIGIE".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    }
}

fn scu() -> ScuOptions {
    let mut options = ScuOptions::new("FINDER");
    options.timeout = Duration::from_secs(10);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_come_back_as_pending_responses_and_an_oversized_identifier_is_refused() {
    let (port, handler, _dir) = start(true).await;
    let outcome = find(&remote(port), &scu(), &study_query("1.2.3.*", &[]), 16)
        .await
        .unwrap();
    assert_eq!(outcome.status, 0x0000);
    assert_eq!(outcome.matches.len(), 2);
    let asked = handler.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].model, STUDY_ROOT_FIND);
    assert_eq!(asked[0].calling_ae_title, "FINDER");

    // 70 KB of text: above the 64 KiB bound of a request identifier.
    let mut huge = study_query("1.2.3", &[]);
    huge.put(DataElement::new(
        tags::TEXT_VALUE,
        VR::UT,
        PrimitiveValue::from("A".repeat(70_000)),
    ));
    let outcome = find(&remote(port), &scu(), &huge, 16).await.unwrap();
    assert_eq!(outcome.status, 0xA700, "{:?}", outcome.comment);
    assert!(outcome.matches.is_empty());
    assert_eq!(handler.asked.lock().unwrap().len(), 1, "never handed over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_query_models_the_service_is_not_offered() {
    let (port, handler, _dir) = start(false).await;
    let e = find(&remote(port), &scu(), &study_query("1.2.3", &[]), 16)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no presentation context"), "{e}");
    assert!(handler.asked.lock().unwrap().is_empty());
}
