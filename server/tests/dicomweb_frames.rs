//! WADO-RS frames, bulk data, rendered and thumbnail resources (#23),
//! against pydicom's reading of the stored files through the
//! `dicomweb-client` package (`tests/oracle/dicomweb_frames.py`), and the
//! HTTP contract (media types, refusals) checked here.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::{Vigie, base_config, multipart, token, uids};
use vigie_test_support::oracle;

const STOW_TYPE: &str = "multipart/related; type=\"application/dicom\"; boundary=XyZ-42";

fn files() -> Vec<PathBuf> {
    let dir = vigie_test_support::pydicom_test_files();
    [
        // Native 16-bit CT, no window: min-max.
        "CT_small.dcm",
        // RLE Lossless MR with a window.
        "MR_small_RLE.dcm",
        // JPEG 2000 Lossless colour ultrasound (YBR_RCT).
        "examples_jpeg2k.dcm",
        // RLE Lossless RGB, two frames.
        "SC_rgb_rle_2frame.dcm",
        // Native palette colour ultrasound: its LUT data are bulk data.
        "examples_palette.dcm",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect()
}

fn start(tmp: &std::path::Path) -> Vigie {
    let vigie = Vigie::start(tmp, &base_config(""));
    // And an SR (pydicom's), a study of its own.
    let mut all = files();
    all.push(vigie_test_support::pydicom_test_files().join("test-SR.dcm"));
    let r = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[("Content-Type", STOW_TYPE)],
        &multipart(&all, "XyZ-42"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    vigie
}

#[test]
fn frames_bulk_data_and_rendered_images_match_pydicom() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = start(tmp.path());
    let url = format!("http://127.0.0.1:{}/dicomweb", vigie.http);
    let mut args = vec![url, token("reader").to_string()];
    args.extend(files().iter().map(|p| p.display().to_string()));
    let out = oracle("dicomweb_frames.py", &args);
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&serde_json::Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let count = |check: &str| results.iter().filter(|r| r["check"] == check).count();
    assert_eq!(count("uncompressed frame"), 5);
    assert_eq!(count("frame as stored"), 3, "the three compressed files");
    assert_eq!(count("pixel data bulk data"), 2, "the two native files");
    assert!(
        results
            .iter()
            .any(|r| r["file"] == "examples_palette.dcm" && r["check"] == "bulk data 00281201"),
        "the palette's red LUT data came back as bulk data: {results:#?}"
    );
    assert_eq!(count("rendered frame"), 3, "the grey and RGB files");
    assert_eq!(count("rendered frame, window"), 2, "the grey files");
    let records = vigie.audit_records("kind=dicomweb_retrieve");
    for resource in ["frames", "bulkdata", "rendered"] {
        assert!(
            records.iter().any(|r| r["details"]
                .as_str()
                .unwrap()
                .contains(&format!("\"resource\":\"{resource}\""))),
            "{resource} retrievals are audited"
        );
    }
}

#[test]
fn frame_and_rendering_requests_get_the_right_media_types_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = start(tmp.path());
    let get = |path: &str, accept: Option<&str>| {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        vigie.http("GET", path, Some(token("reader")), &headers, b"")
    };
    let by_name = |name: &str| {
        let path = files().into_iter().find(|f| f.ends_with(name)).unwrap();
        let (st, se, sop) = uids(&path);
        format!("/dicomweb/studies/{st}/series/{se}/instances/{sop}")
    };
    let rle2 = by_name("SC_rgb_rle_2frame.dcm");

    // Frames: each part says its transfer syntax and where it comes from.
    let r = get(
        &format!("{rle2}/frames/2,1"),
        Some("multipart/related; type=\"application/octet-stream\"; transfer-syntax=*"),
    );
    assert_eq!(r.status, 200);
    let content_type = r.header("content-type").unwrap();
    assert!(
        content_type.starts_with("multipart/related; type=\"application/octet-stream\""),
        "{content_type}"
    );
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(
        body.matches("Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5")
            .count(),
        2,
        "two RLE frames as stored"
    );
    let location = format!(
        "Content-Location: http://127.0.0.1:{}{rle2}/frames/",
        vigie.http
    );
    let (second, first) = (
        body.find(&format!("{location}2\r\n"))
            .expect("frame 2's location"),
        body.find(&format!("{location}1\r\n"))
            .expect("frame 1's location"),
    );
    assert!(second < first, "in the order asked");
    // The stored compressed type may be asked for by its media type.
    let r = get(
        &format!("{rle2}/frames/1"),
        Some("multipart/related; type=\"image/dicom-rle\""),
    );
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body)
            .contains("Content-Type: image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5")
    );
    // Another compressed type is not: 406, before a byte is sent.
    let r = get(
        &format!("{rle2}/frames/1"),
        Some("multipart/related; type=\"image/jpeg\""),
    );
    assert_eq!(r.status, 406, "{}", String::from_utf8_lossy(&r.body));
    // Frame numbers: beyond the instance's frames, and malformed lists.
    let r = get(&format!("{rle2}/frames/3"), None);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 frame(s)")
    );
    // Frame numbers are distinct (PS3.18: non-duplicate).
    for bad in ["0", "1,,2", "x", "1,1"] {
        assert_eq!(
            get(&format!("{rle2}/frames/{bad}"), None).status,
            400,
            "{bad}"
        );
    }
    let missing = "/dicomweb/studies/1.2.3/series/4.5.6/instances/7.8.9/frames/1";
    assert_eq!(get(missing, None).status, 404);

    // Rendered: one image for a frame, a multipart for the two frames of
    // the instance, a series or a study.
    let r = get(&format!("{rle2}/frames/1/rendered"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(r.header("vary"), Some("Accept"));
    assert_eq!(&r.body[..2], &[0xFF, 0xD8], "a JPEG");
    // The frame list's commas may be escaped.
    let r = get(&format!("{rle2}/frames/2%2C1/rendered"), None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        String::from_utf8_lossy(&r.body)
            .matches("Content-Type: image/jpeg")
            .count(),
        2
    );
    let r = get(&format!("{rle2}/rendered"), Some("image/jpeg"));
    assert_eq!(r.status, 406, "two frames do not fit one image/jpeg");
    let r = get(&format!("{rle2}/rendered"), None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("multipart/related; type=\"image/jpeg\"")
    );
    assert_eq!(
        String::from_utf8_lossy(&r.body)
            .matches("Content-Type: image/jpeg")
            .count(),
        2
    );
    // The accept query parameter takes the place of the header.
    let r = get(
        &format!("{rle2}/frames/2/rendered?accept=image/png"),
        Some("image/jpeg"),
    );
    assert_eq!(r.header("content-type"), Some("image/png"));
    // Palette colour is not rendered: 406 naming why.
    let palette = by_name("examples_palette.dcm");
    let r = get(&format!("{palette}/rendered"), None);
    assert_eq!(r.status, 406);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("palette")
    );
    // Bad query parameters.
    // A region outside the frame is a bad parameter too.
    for q in [
        "window=40",
        "viewport=0,10",
        "quality=101",
        "frame=1",
        "viewport=10,10,0,0,500,10",
    ] {
        assert_eq!(
            get(&format!("{rle2}/frames/1/rendered?{q}"), None).status,
            400,
            "{q}"
        );
    }
    let r = get(
        &format!("{rle2}/frames/1/rendered?annotation=patient"),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.header("warning").unwrap().contains("annotation"));

    // An SR is not rendered: 406 asked alone, its frames do not exist.
    let sr_file = vigie_test_support::pydicom_test_files().join("test-SR.dcm");
    let (sr_study, sr_series, sr_sop) = uids(&sr_file);
    let sr = format!("/dicomweb/studies/{sr_study}/series/{sr_series}/instances/{sr_sop}");
    assert_eq!(get(&format!("{sr}/rendered"), None).status, 406);
    assert_eq!(
        get(&format!("/dicomweb/studies/{sr_study}/rendered"), None).status,
        406
    );
    assert_eq!(get(&format!("{sr}/frames/1"), None).status, 404);
    assert_eq!(get(&format!("{sr}/frames/1/rendered"), None).status, 404);

    // Thumbnails: one image within 128 pixels (or the viewport asked), at
    // every level, never enlarged.
    let r = get(
        &format!("{}/thumbnail", by_name("examples_jpeg2k.dcm")),
        Some("image/png"),
    );
    assert_eq!(r.status, 200);
    let png = image::load_from_memory(&r.body).unwrap();
    assert_eq!(
        (png.width(), png.height()),
        (128, 96),
        "640x480 fitted in 128"
    );
    let ct = files()
        .into_iter()
        .find(|f| f.ends_with("CT_small.dcm"))
        .unwrap();
    let (st, se, _) = uids(&ct);
    for path in [
        format!("/dicomweb/studies/{st}/thumbnail"),
        format!("/dicomweb/studies/{st}/series/{se}/thumbnail"),
        format!("{}/thumbnail", by_name("CT_small.dcm")),
        format!("{}/frames/1/thumbnail", by_name("CT_small.dcm")),
    ] {
        let r = get(&format!("{path}?accept=image/png"), None);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let png = image::load_from_memory(&r.body).unwrap();
        assert_eq!(
            (png.width(), png.height()),
            (128, 128),
            "{path}: the 128x128 CT as it is"
        );
    }
    // A thumbnail is never enlarged: the 128x128 CT in a 256x256 viewport.
    let r = get(
        &format!("{}/thumbnail?viewport=256,256", by_name("CT_small.dcm")),
        Some("image/png"),
    );
    let png = image::load_from_memory(&r.body).unwrap();
    assert_eq!((png.width(), png.height()), (128, 128));
    let r = get(
        &format!("{}/thumbnail?viewport=64,32", by_name("CT_small.dcm")),
        Some("image/png"),
    );
    let png = image::load_from_memory(&r.body).unwrap();
    assert_eq!(
        (png.width(), png.height()),
        (32, 32),
        "fits in 64x32, square kept"
    );
    // A study-level rendering of the CT's study holds its one frame.
    let r = get(&format!("/dicomweb/studies/{st}/rendered"), None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("multipart/related")
    );
    assert_eq!(
        String::from_utf8_lossy(&r.body)
            .matches("Content-Type: image/jpeg")
            .count(),
        1
    );
    let records = vigie.audit_records("kind=dicomweb_retrieve");
    assert!(
        records.iter().any(|r| r["details"]
            .as_str()
            .unwrap()
            .contains("\"resource\":\"thumbnail\"")),
        "thumbnails are audited"
    );
}
