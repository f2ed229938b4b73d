//! C-GET between Vigie's Retrieve SCU and Vigie's SCP in process: the
//! instances come back on the requesting association through SCP/SCU Role
//! Selection, are kept as Part 10 files that read back, and the SCU's
//! bounds refuse what is beyond them (answered, counted failed by the SCP,
//! never kept).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dicom_object::InMemDicomObject;
use vigie_dicom_io::net::find::{STUDY_ROOT_GET, study_query};
use vigie_dicom_io::net::get::{GetLimits, get};
use vigie_dicom_io::net::scp::{
    ReceivedInstance, RetrieveAnswer, RetrieveRequest, ScpEvent, ScpOptions, StoreHandler,
    StoreOutcome, serve,
};
use vigie_dicom_io::net::scu::{RemoteAe, ScuOptions};
use vigie_dicom_io::uid::UidGenerator;
use vigie_dicom_io::write::{MrImage, write_part10};

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

/// Answers every C-GET with the same files.
struct Holder {
    files: Vec<PathBuf>,
    asked: Mutex<Vec<RetrieveRequest>>,
}

impl StoreHandler for Holder {
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        let _ = std::fs::remove_file(&instance.path);
        StoreOutcome::success()
    }
    fn event(&self, _event: ScpEvent) {}
    fn get(&self, request: RetrieveRequest) -> RetrieveAnswer {
        self.asked.lock().unwrap().push(request);
        RetrieveAnswer {
            files: self.files.clone(),
            destination: None,
            status: 0x0000,
            comment: None,
        }
    }
}

/// Two MR images of one study, in `dir`.
fn images(dir: &std::path::Path) -> (String, Vec<(PathBuf, String)>) {
    let uids = UidGenerator::new("2.25.1").unwrap();
    let pixels: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
    let study = uids.generate();
    let mut out = Vec::new();
    for n in 0..2 {
        let mut image = MrImage::new(64, 64, &pixels, &uids);
        image.study_instance_uid = study.clone();
        let sop = image.sop_instance_uid.clone();
        let path = dir.join(format!("source-{n}.dcm"));
        write_part10(image.build().unwrap(), &path).unwrap();
        out.push((path, sop));
    }
    (study, out)
}

async fn start(files: Vec<PathBuf>) -> (u16, Arc<Holder>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ScpOptions::new("PACS", dir.path().join("staging"));
    options.get_models = vec![STUDY_ROOT_GET.to_string()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(Holder {
        files,
        asked: Mutex::new(Vec::new()),
    });
    tokio::spawn(serve(listener, options, handler.clone()));
    (port, handler, dir)
}

fn study_identifier(study: &str) -> InMemDicomObject {
    study_query(study, &[])
}

#[tokio::test]
async fn a_c_get_brings_the_instances_back_on_the_association_within_its_bounds() {
    let sources = tempfile::tempdir().unwrap();
    let (study, files) = images(sources.path());
    let (port, handler, _scp) = start(files.iter().map(|(p, _)| p.clone()).collect()).await;
    let remote = RemoteAe {
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    };
    let options = ScuOptions::new("VIGIE");
    let kept = tempfile::tempdir().unwrap();
    let outcome = get(
        &remote,
        &options,
        &study_identifier(&study),
        &[MR],
        kept.path(),
        GetLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, 0x0000, "{outcome:?}");
    assert_eq!(outcome.files.len(), 2);
    assert!(outcome.refused.is_empty());
    for (file, (source, sop)) in outcome.files.iter().zip(&files) {
        assert_eq!(&file.sop_instance_uid, sop);
        assert_eq!(file.sop_class_uid, MR);
        // The kept file reads back with the source's pixels.
        let read = vigie_dicom_io::DicomFile::open(&file.path).unwrap();
        let original = vigie_dicom_io::DicomFile::open(source).unwrap();
        assert_eq!(read.header().sop_instance_uid, *sop);
        let options = vigie_dicom_io::PixelOptions::default();
        assert_eq!(
            read.decode(&options).unwrap().data,
            original.decode(&options).unwrap().data
        );
    }
    {
        let asked = handler.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].calling_ae_title, "VIGIE");
        assert_eq!(asked[0].model, STUDY_ROOT_GET);
    }

    // One instance at most: once it is kept, a C-CANCEL-GET-RQ; the SCP
    // stops (FE00) and nothing more is kept.
    let bounded = tempfile::tempdir().unwrap();
    let limits = GetLimits {
        max_instances: 1,
        ..GetLimits::default()
    };
    let outcome = get(
        &remote,
        &options,
        &study_identifier(&study),
        &[MR],
        bounded.path(),
        limits,
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, 0xFE00, "{outcome:?}");
    assert!(outcome.cancelled);
    assert_eq!(outcome.files.len(), 1);
    assert_eq!(outcome.files[0].sop_instance_uid, files[0].1);
    assert_eq!(std::fs::read_dir(bounded.path()).unwrap().count(), 1);

    // Bytes: the first instance alone is over the total, refused (A700),
    // which is a bound reached: the rest is cancelled (FE00).
    let small = tempfile::tempdir().unwrap();
    let limits = GetLimits {
        max_total_bytes: 100,
        ..GetLimits::default()
    };
    let outcome = get(
        &remote,
        &options,
        &study_identifier(&study),
        &[MR],
        small.path(),
        limits,
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, 0xFE00, "{outcome:?}");
    assert!(outcome.cancelled);
    assert_eq!(outcome.refused_count, 1, "{outcome:?}");
    assert!(outcome.refused[0].1.contains("bytes in all"), "{outcome:?}");
    assert!(outcome.files.is_empty());
    assert_eq!(std::fs::read_dir(small.path()).unwrap().count(), 0);

    // A storage class the PACS's files are not of: nothing comes back.
    let none = tempfile::tempdir().unwrap();
    let outcome = get(
        &remote,
        &options,
        &study_identifier(&study),
        &["1.2.840.10008.5.1.4.1.1.2"],
        none.path(),
        GetLimits::default(),
    )
    .await
    .unwrap();
    assert!(outcome.files.is_empty(), "{outcome:?}");
    // Both instances had no context on the SCP's side: counted failed.
    assert_eq!(outcome.status, 0xB000, "{outcome:?}");
    assert_eq!(outcome.failed, 2);
}
