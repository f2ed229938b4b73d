//! Crash safety: `vigie serve` killed with SIGKILL while an instance is
//! half received and while a job is pending. After a restart every
//! acknowledged instance is there and indexed, the half-received one left
//! nothing behind, and every job completes.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, demo_studies, storescu_args, uids};
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValueType, Pdu};
use vigie_dicom_io::dimse::Command;
use vigie_dicom_io::net::message::{MessageAssembler, Step, fragment};

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// The data set bytes of a Part 10 file written by Vigie's importer.
fn dataset(path: &PathBuf) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut cursor = std::io::Cursor::new(bytes);
    std::io::Seek::seek(&mut cursor, std::io::SeekFrom::Start(128)).unwrap();
    let meta = dicom_object::FileMetaTable::from_reader(&mut cursor).unwrap();
    assert_eq!(meta.transfer_syntax(), EXPLICIT_LE);
    let position = cursor.position() as usize;
    cursor.into_inner().split_off(position)
}

/// Send `complete` fully (each acknowledged), then the command and the
/// first half of `partial`'s data set, and return without finishing it.
async fn send_then_stall(
    port: u16,
    complete: &[PathBuf],
    partial: &PathBuf,
) -> dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream> {
    let mut association = ClientAssociationOptions::new()
        .calling_ae_title("MODALITY")
        .called_ae_title("VIGIE")
        .with_presentation_context(MR, vec![EXPLICIT_LE])
        .establish_async(("127.0.0.1", port))
        .await
        .unwrap();
    let context = association.presentation_contexts()[0].id;
    let max = association.acceptor_max_pdu_length();
    for (n, file) in complete.iter().enumerate() {
        let (_, _, sop) = uids(file);
        let rq = Command::store_request(n as u16 + 1, MR, &sop);
        for pdu in fragment(context, PDataValueType::Command, &rq.encode(), max)
            .into_iter()
            .chain(fragment(context, PDataValueType::Data, &dataset(file), max))
        {
            association.send(&pdu).await.unwrap();
        }
        let mut assembler = MessageAssembler::new();
        let response = loop {
            match association.receive().await.unwrap() {
                Pdu::PData { data } => {
                    let mut got = None;
                    for value in data {
                        if let Step::Command { command, .. } = assembler.push(value).unwrap() {
                            got = Some(command);
                        }
                    }
                    if let Some(c) = got {
                        break c;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(response.status, Some(0), "acknowledged with Success");
    }
    let (_, _, sop) = uids(partial);
    let rq = Command::store_request(99, MR, &sop);
    for pdu in fragment(context, PDataValueType::Command, &rq.encode(), max) {
        association.send(&pdu).await.unwrap();
    }
    let data = dataset(partial);
    let half = &data[..data.len() / 2];
    // Not the last fragment: the transfer is in progress.
    let pdu = Pdu::PData {
        data: vec![dicom_ul::pdu::PDataValue {
            presentation_context_id: context,
            value_type: PDataValueType::Data,
            is_last: false,
            data: half.to_vec(),
        }],
    };
    association.send(&pdu).await.unwrap();
    association
}

#[test]
fn sigkill_during_reception_and_with_a_pending_job_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 4);
    assert_eq!(demo.len(), 4);
    // No workers: the first study's job stays pending.
    let mut vigie = Vigie::start_with_env(
        tmp.path(),
        &base_config(""),
        &[("VIGIE__PIPELINE__WORKERS", "0")],
    );
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xe", &demo[..1]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (first_study, _, _) = uids(&demo[0]);
    vigie.wait_for("the first job", Duration::from_secs(30), |v| {
        v.jobs()
            .iter()
            .any(|j| j["study_instance_uid"] == first_study.as_str() && j["state"] == "pending")
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stalled = runtime.block_on(send_then_stall(vigie.dicom, &demo[1..3], &demo[3]));
    // The partial instance is being written in staging right now.
    let staging = vigie.data.join("staging");
    vigie.wait_for(
        "the partial transfer in staging",
        Duration::from_secs(10),
        |_| std::fs::read_dir(&staging).unwrap().count() == 1,
    );
    vigie.kill();
    drop(stalled);

    vigie.set_env(&[]);
    vigie.restart();
    assert!(vigie.log_text().contains("discarded partial transfers"));
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    for file in &demo[..3] {
        let (study, series, sop) = uids(file);
        assert!(
            vigie.stored(&study, &series, &sop).is_file(),
            "acknowledged {sop} kept"
        );
    }
    let (study, series, sop) = uids(&demo[3]);
    assert!(
        !vigie.stored(&study, &series, &sop).exists(),
        "never acknowledged"
    );
    let studies = vigie.json("/api/v1/studies");
    let indexed: Vec<&str> = studies
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_instance_uid"].as_str().unwrap())
        .collect();
    for file in &demo[..3] {
        assert!(indexed.contains(&uids(file).0.as_str()), "indexed");
    }
    assert!(!indexed.contains(&study.as_str()));

    // The pending job and the jobs of the two studies received before the
    // crash all complete.
    vigie.wait_for("every job done", Duration::from_secs(120), |v| {
        let jobs = v.jobs();
        jobs.len() == 3 && jobs.iter().all(|j| j["state"] == "done")
    });
    let jobs = vigie.jobs();
    assert_eq!(jobs[0]["study_instance_uid"], first_study.as_str());
    // Attempts count failures: a crash is not one (hardening defect 12).
    assert_eq!(jobs[0]["attempts"], 0);
}
