//! Bounded, seeded fuzzing of every parser of outside input in `dicom-io`
//! (harness: `vigie_test_support::fuzz`): Part 10 data sets through the
//! structural scan, the parser and WADO-RS metadata; the pixel decoders,
//! one target per transfer syntax, with WADO-RS frames, bulk data and
//! rendering; the WADO-RS values of URLs; the DIMSE command set and
//! message assembler; the Upper Layer PDU reader. Seeds are real files of pydicom's
//! corpus and real PDUs. Each target runs for a few seconds in `cargo
//! test`; `scripts/fuzz.sh` runs a longer campaign (docs/fuzzing.md).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use vigie_dicom_io::DicomFile;
use vigie_test_support::fuzz;
use vigie_test_support::pydicom_test_files;

/// Per-target time budget in `cargo test` (the iteration count is a
/// ceiling; the budget keeps CI bounded on a slow machine).
fn budget() -> Duration {
    fuzz::budget(6)
}

/// Seed files from pydicom's test files, or (`d:`) the pydicom-data corpus
/// beside it.
fn seeds(names: &[&str]) -> Vec<Vec<u8>> {
    let test_files = pydicom_test_files();
    let data = test_files
        .ancestors()
        .nth(3)
        .map(|site| site.join("data_store/data"))
        .expect("site-packages");
    names
        .iter()
        .map(|n| {
            let path = match n.strip_prefix("d:") {
                Some(name) => data.join(name),
                None => test_files.join(n),
            };
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// Open, decode and describe a file made of `bytes`, as the service does
/// with what it receives. Any error is fine; a panic is not.
fn open_everything(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let _ = vigie_dicom_io::scan::scan_file(path, &vigie_dicom_io::scan::limits());
    let _ = vigie_dicom_io::read_meta(path);
    if let Ok(file) = DicomFile::open(path) {
        let _ = file.decode_stored();
        let _ = vigie_dicom_io::web::index_attributes(&file);
    }
    let _ = vigie_dicom_io::web::metadata(path, Some("http://x/bulkdata"));
    // WADO-RS frames, bulk data and rendering of what was stored.
    use vigie_dicom_io::frames::{FrameForm, pixel_data_bulk, read_frames};
    let _ = read_frames(path, &[1, 2], FrameForm::AsStored);
    let _ = read_frames(path, &[1], FrameForm::Uncompressed);
    let _ = pixel_data_bulk(path, FrameForm::AsStored);
    let params = vigie_dicom_io::render::RenderParams {
        viewport: Some((64, 48)),
        ..Default::default()
    };
    if let Ok(image) = vigie_dicom_io::render::render_frame(path, 1, &params) {
        let _ = vigie_dicom_io::render::encode(&image, vigie_dicom_io::render::ImageFormat::Png);
    }
}

fn fuzz_files(name: &str, files: &[&str], iterations: u64) {
    // Decoding is bounded in memory by the limits: small ones here, so
    // that a mutated Rows × Columns cannot make the run slow.
    let mut limits = vigie_dicom_io::Limits::default();
    limits.max_decoded_bytes = 8 << 20;
    vigie_dicom_io::scan::set_limits(limits);
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("input.dcm");
    let summary = fuzz::run(
        name,
        &seeds(files),
        fuzz::iterations(iterations),
        budget(),
        |bytes| open_everything(&path, bytes),
    );
    assert!(summary.executions > files.len() as u64);
}

#[test]
fn fuzz_data_sets_native_syntaxes() {
    fuzz_files(
        "data-sets",
        &[
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_implicit.dcm",
            "MR_small_bigendian.dcm",
            "rtplan.dcm",
            "image_dfl.dcm",
            "SC_rgb_small_odd.dcm",
        ],
        50_000,
    );
}

#[test]
fn fuzz_pixels_rle() {
    fuzz_files(
        "pixels-rle",
        &[
            "MR_small_RLE.dcm",
            "SC_rgb_rle.dcm",
            "SC_rgb_rle_16bit_2frame.dcm",
        ],
        3000,
    );
}

#[test]
fn fuzz_pixels_jpeg_baseline() {
    fuzz_files(
        "pixels-jpeg-baseline",
        &["SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm"],
        50_000,
    );
}

#[test]
fn fuzz_pixels_jpeg_lossless() {
    fuzz_files("pixels-jpeg-lossless", &["d:JPEG-LL.dcm"], 50_000);
}

#[test]
fn fuzz_pixels_jpeg_ls() {
    fuzz_files(
        "pixels-jpeg-ls",
        &["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm"],
        50_000,
    );
}

#[test]
fn fuzz_pixels_jpeg_2000() {
    fuzz_files(
        "pixels-jpeg-2000",
        &["MR_small_jp2klossless.dcm", "JPEG2000.dcm"],
        50_000,
    );
}

/// The WADO-RS values of a URL: frame lists, bulk data paths, and the
/// `window` and `viewport` of rendered resources.
#[test]
fn fuzz_wado_rs_url_values() {
    let seeds: Vec<Vec<u8>> = [
        "1",
        "3,1,2",
        "00282000",
        "00880200.0.7FE00010",
        "40,400,SIGMOID",
        "512,512,0,0,-256,256",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let summary = fuzz::run(
        "wado-rs-url-values",
        &seeds,
        fuzz::iterations(200_000),
        budget(),
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            if let Some(list) = vigie_dicom_io::frames::parse_frame_list(&text) {
                assert!(!list.is_empty() && list.iter().all(|&n| n >= 1));
            }
            if let Some(path) = vigie_dicom_io::frames::BulkPath::parse(&text) {
                assert_eq!(
                    vigie_dicom_io::frames::BulkPath::parse(&path.to_text()),
                    Some(path)
                );
            }
            let _ = vigie_dicom_io::render::parse_window(&text);
            if let Some(((w, h), _)) = vigie_dicom_io::render::parse_viewport(&text) {
                let max = vigie_dicom_io::render::MAX_VIEWPORT;
                assert!((1..=max).contains(&w) && (1..=max).contains(&h));
            }
        },
    );
    assert!(summary.executions > 6);
}

/// P-DATA values as the assembler gets them: `[kind][context][last]
/// [len u16][data]` records.
fn pdvs(bytes: &[u8]) -> Vec<dicom_ul::pdu::PDataValue> {
    use dicom_ul::pdu::{PDataValue, PDataValueType};
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_le_bytes([rest[3], rest[4]])).min(rest.len() - 5);
        out.push(PDataValue {
            value_type: if rest[0] & 1 == 1 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            presentation_context_id: rest[1],
            is_last: rest[2] & 1 == 1,
            data: rest[5..5 + len].to_vec(),
        });
        rest = &rest[5 + len..];
    }
    out
}

fn pdv_record(command: bool, context: u8, last: bool, data: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(command), context, u8::from(last)];
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn fuzz_dimse_commands_and_message_assembly() {
    use vigie_dicom_io::dimse::Command;
    use vigie_dicom_io::net::message::MessageAssembler;
    let store = Command::store_request(7, "1.2.840.10008.5.1.4.1.1.2", "2.25.99").encode();
    let echo = Command::echo_request(3).encode();
    let response = Command::store_request(7, "1.2.840.10008.5.1.4.1.1.2", "2.25.99")
        .response(0xA700, Some("full"))
        .encode();
    let (a, b) = store.split_at(store.len() / 2);
    let mut message = pdv_record(true, 1, false, a);
    message.extend(pdv_record(true, 1, true, b));
    message.extend(pdv_record(false, 1, false, &[1, 2, 3, 4]));
    message.extend(pdv_record(false, 1, true, &[5, 6]));
    message.extend(pdv_record(true, 3, true, &echo));
    let seeds = vec![store.clone(), echo.clone(), response, message];
    let summary = fuzz::run(
        "dimse",
        &seeds,
        fuzz::iterations(1_000_000),
        budget(),
        |bytes| {
            let _ = Command::decode(bytes);
            let mut assembler = MessageAssembler::new();
            for value in pdvs(bytes) {
                if assembler.push(value).is_err() {
                    break;
                }
            }
        },
    );
    assert!(summary.executions > 4);
}

#[test]
fn fuzz_upper_layer_pdus() {
    use dicom_ul::pdu::{
        AbortRQSource, AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed,
        UserVariableItem, read_pdu, write_pdu,
    };
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "STORESCU".into(),
        called_ae_title: "VIGIE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into(), "1.2.840.10008.1.2".into()],
        }],
        user_variables: vec![
            UserVariableItem::MaxLength(16384),
            UserVariableItem::ImplementationClassUID("2.25.1".into()),
            UserVariableItem::ImplementationVersionName("FUZZ".into()),
        ],
    });
    let pdata = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data: vec![0; 40],
        }],
    };
    let seeds: Vec<Vec<u8>> = [
        rq,
        pdata,
        Pdu::ReleaseRQ,
        Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        },
    ]
    .iter()
    .map(|pdu| {
        let mut out = Vec::new();
        write_pdu(&mut out, pdu).unwrap();
        out
    })
    .collect();
    let summary = fuzz::run(
        "pdu",
        &seeds,
        fuzz::iterations(1_000_000),
        budget(),
        |bytes| {
            for strict in [true, false] {
                let mut cursor = std::io::Cursor::new(bytes);
                // A request that parses goes on through Vigie's own
                // negotiation (vigie_dicom_io::net::ul::accept).
                if let Ok(Some(Pdu::AssociationRQ(request))) =
                    read_pdu(&mut cursor, 116_794, strict)
                {
                    let offer = vigie_dicom_io::net::ul::Offer {
                        abstract_syntaxes: &["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.1"],
                        transfer_syntaxes: &["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
                        scp_role_syntaxes: &["1.2.840.10008.1.20.1"],
                        get_syntaxes: &["1.2.840.10008.5.1.4.1.1.66.4"],
                        max_pdu_length: 116_794,
                    };
                    if let Ok((ac, _)) =
                        vigie_dicom_io::net::ul::accept(request, offer, |_, _, _| Ok(()))
                    {
                        let mut out = Vec::new();
                        let _ = write_pdu(&mut out, &Pdu::AssociationAC(ac));
                    }
                }
            }
        },
    );
    assert!(summary.executions > 4);
}
