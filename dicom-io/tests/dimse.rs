//! DIMSE command sets against pydicom's Implicit VR Little Endian encoding.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use vigie_dicom_io::dimse::{Command, field, status};
use vigie_test_support::oracle;

#[test]
fn pydicom_reads_our_store_request() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("rq.bin");
    std::fs::write(
        &path,
        Command::store_request(9, "1.2.840.10008.5.1.4.1.1.4", "2.25.77").encode(),
    )
    .expect("write");
    let out = oracle(
        "dimse_command.py",
        [std::ffi::OsStr::new("decode"), path.as_os_str()],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["0100"], 1, "C-STORE-RQ");
    assert_eq!(doc["0110"], 9);
    assert_eq!(doc["0002"], "1.2.840.10008.5.1.4.1.1.4");
    assert_eq!(doc["1000"], "2.25.77");
    assert_eq!(doc["0700"], 0);
    assert_eq!(doc["0800"], 0, "a data set follows");
    let length = std::fs::metadata(&path).expect("meta").len() - 12;
    assert_eq!(doc["0000"], length, "group length");
}

#[test]
fn we_read_pydicoms_store_response() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("rsp.bin");
    oracle(
        "dimse_command.py",
        [std::ffi::OsStr::new("encode"), path.as_os_str()],
    );
    let command = Command::decode(&std::fs::read(&path).expect("read")).expect("decodes");
    assert_eq!(command.field, field::C_STORE_RSP);
    assert_eq!(command.responding_to, Some(42));
    assert_eq!(
        command.status,
        Some(status::DATASET_DOES_NOT_MATCH_SOP_CLASS)
    );
    assert_eq!(command.error_comment.as_deref(), Some("mismatch"));
    assert_eq!(
        command.affected_sop_instance_uid.as_deref(),
        Some("1.2.3.4.5")
    );
    assert!(!command.has_data_set);
}
