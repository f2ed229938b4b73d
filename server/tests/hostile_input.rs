//! Hostile input against one running `vigie serve` (hardening issue): one of
//! each class — deep nesting, huge lengths, a decompression bomb, truncated
//! and inconsistent data sets, a decoder panic, silent, crowding and slow
//! sockets — while a legitimate peer is served throughout. The service
//! stays up within its memory bound, answers each with the right status, a
//! good study sent last is analysed and delivered, and `vigie audit
//! verify` passes. Each defect also has its own regression test here,
//! named after it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Vigie, base_config, dataset_bytes, demo_studies, echo, send, storescp, token, uids, wrap,
    wrap_in,
};
use vigie_test_support::hostile::{element, image_module, nested, uid};
use vigie_test_support::{free_port, pydicom_test_files};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

/// The identifying attributes of a CT instance, up to (not including) the
/// image pixel module.
fn ct_header(sop: &str, modality: bool) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(element(0x0008, 0x0016, b"UI", &uid(CT)));
    d.extend(element(0x0008, 0x0018, b"UI", &uid(sop)));
    if modality {
        d.extend(element(0x0008, 0x0060, b"CS", b"CT"));
    }
    d.extend(element(0x0020, 0x000D, b"UI", &uid("2.25.9001")));
    d.extend(element(0x0020, 0x000E, b"UI", &uid("2.25.9002")));
    d
}

/// A deflated CT instance of `side` × `side` 16-bit zeros: a few hundred
/// KB that inflate to `side² × 2` bytes.
fn deflate_bomb(path: &Path, sop: &str, side: u16) {
    let mut dataset = ct_header(sop, true);
    dataset.extend(image_module(side, side));
    let pixels = u64::from(side) * u64::from(side) * 2;
    dataset.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    dataset.extend_from_slice(&(pixels as u32).to_le_bytes());
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&dataset).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..pixels >> 20 {
        encoder.write_all(&zeros).unwrap();
    }
    let compressed = encoder.finish().unwrap();
    wrap_in(path, CT, sop, "1.2.840.10008.1.2.1.99", &compressed);
}

/// MR_small_RLE made to panic dicom-rs's RLE decoder (ours refuses it with
/// its reason), as a brain MR.
fn corrupt_rle(to: &Path) {
    vigie_test_support::hostile::corrupt_rle(&pydicom_test_files().join("MR_small_RLE.dcm"), to);
    // A brain MR, so that routing sends it to the model: the panic then
    // happens in a worker (and in the pixel-hash thread at reception).
    let mut object = dicom_object::open_file(to).unwrap();
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::BODY_PART_EXAMINED,
        dicom_core::VR::CS,
        dicom_core::PrimitiveValue::from("BRAIN"),
    ));
    object.write_to_file(to).unwrap();
}

fn multipart(files: &[PathBuf]) -> Vec<u8> {
    let mut body = Vec::new();
    for f in files {
        body.extend(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n");
        body.extend(std::fs::read(f).unwrap());
        body.extend(b"\r\n");
    }
    body.extend(b"--XyZ--\r\n");
    body
}

/// The memory bound `docs/performance.md` states for the default
/// configuration with the test's `limits.max_decoded_mib = 64` (the
/// decoded-size term scales with it).
const PEAK_RSS_BOUND: u64 = 1 << 30;

#[test]
fn hostile_input_does_not_take_the_service_down_or_make_it_lie() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let pacs = storescp(&tmp.path().join("pacs"));
    let config = base_config(&format!(
        r#"
[limits]
max_decoded_mib = 64

[[routing.rules]]
name = "mr"
modalities = ["MR"]
destinations = ["pacs"]

[destinations.pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = {}
"#,
        pacs.port
    ))
    .replace(
        "artim_timeout_s = 5",
        "artim_timeout_s = 2\npdu_timeout_s = 2\nmax_connections_per_address = 48",
    );
    // On a disk of its own that the test fills for real (a tmpfs in a
    // mount namespace), with a wall clock the test moves (libfaketime; the
    // monotonic clock stays true).
    let wrapper = on_a_small_disk(tmp.path(), 160);
    let clock = tmp.path().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let clock_env = clock.display().to_string();
    let vigie = Vigie::start_binary_with_env(
        &wrapper,
        tmp.path(),
        &config,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", clock_env.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // The data directory as the service sees it.
    let inside = PathBuf::from(format!("/proc/{}/root", vigie.pid())).join(
        vigie
            .data
            .strip_prefix("/")
            .expect("an absolute data directory"),
    );
    assert!(
        inside.join("index.sqlite").is_file(),
        "{}",
        inside.display()
    );
    let dir = tmp.path();

    // Silent sockets, before anything else: they must not lock peers out.
    let silent: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", vigie.dicom)).unwrap())
        .collect();
    assert!(echo(vigie.dicom), "served despite 20 silent sockets");

    let mut files = Vec::new();
    let mut expected = Vec::new();
    // Deep nesting (defect 1).
    let mut deep = ct_header("2.25.9101", true);
    deep.extend(nested(2000));
    let p = dir.join("deep.dcm");
    wrap(&p, CT, "2.25.9101", &deep);
    files.push(p);
    expected.push((0xC000, "beyond limits"));
    // A huge element length (defect 3).
    let mut huge = ct_header("2.25.9102", true);
    huge.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'U', b'T', 0, 0]);
    huge.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    huge.extend(vec![b'x'; 9000]);
    let p = dir.join("huge.dcm");
    wrap(&p, CT, "2.25.9102", &huge);
    files.push(p);
    expected.push((0xC000, "malformed"));
    // A decompression bomb (defect 4): 128 MiB decoded, limit 64 MiB.
    let p = dir.join("bomb.dcm");
    deflate_bomb(&p, "2.25.9103", 8192);
    assert!(std::fs::metadata(&p).unwrap().len() < 2 << 20);
    files.push(p);
    expected.push((0xC000, "beyond limits"));
    // Truncated (defect 6): half of a demo instance.
    let (_, dataset) = dataset_bytes(&demo[0]);
    let p = dir.join("truncated.dcm");
    wrap(&p, MR, "2.25.9104", &dataset[..dataset.len() / 2]);
    files.push(p);
    expected.push((0xC000, "malformed"));
    // 65535 × 65535 with a few bytes of pixels (defect 6).
    let mut wide = ct_header("2.25.9105", true);
    wide.extend(image_module(65535, 65535));
    wide.extend(element(0x7FE0, 0x0010, b"OW", &[0u8; 64]));
    let p = dir.join("wide.dcm");
    wrap(&p, CT, "2.25.9105", &wide);
    files.push(p);
    expected.push((0xC000, "beyond limits"));
    // Pixel data shorter than its image (defect 6).
    let mut short = ct_header("2.25.9106", true);
    short.extend(image_module(64, 64));
    short.extend(element(0x7FE0, 0x0010, b"OW", &[0u8; 512]));
    let p = dir.join("short.dcm");
    wrap(&p, CT, "2.25.9106", &short);
    files.push(p);
    expected.push((0xC000, "pixel data inconsistent"));
    // No Modality, no SOP Instance UID in the data set (defect 6).
    let mut no_modality = ct_header("2.25.9107", false);
    no_modality.extend(image_module(4, 4));
    no_modality.extend(element(0x7FE0, 0x0010, b"OW", &[0u8; 32]));
    let p = dir.join("no-modality.dcm");
    wrap(&p, CT, "2.25.9107", &no_modality);
    files.push(p);
    expected.push((0xA900, "Modality"));
    let mut no_sop = Vec::new();
    no_sop.extend(element(0x0008, 0x0016, b"UI", &uid(CT)));
    no_sop.extend(element(0x0008, 0x0060, b"CS", b"CT"));
    no_sop.extend(element(0x0020, 0x000D, b"UI", &uid("2.25.9001")));
    no_sop.extend(element(0x0020, 0x000E, b"UI", &uid("2.25.9002")));
    no_sop.extend(image_module(4, 4));
    no_sop.extend(element(0x7FE0, 0x0010, b"OW", &[0u8; 32]));
    let p = dir.join("no-sop.dcm");
    wrap(&p, CT, "2.25.9108", &no_sop);
    files.push(p);
    expected.push((0xA900, "SOPInstanceUID"));

    let outcomes = send(vigie.dicom, &files);
    for ((outcome, (status, reason)), file) in outcomes.iter().zip(&expected).zip(&files) {
        assert_eq!(outcome.status, Some(*status), "{file:?}: {outcome:?}");
        let comment = outcome.comment.clone().unwrap_or_default();
        assert!(comment.contains(reason), "{file:?}: {comment}");
        assert!(
            !comment.contains(&*dir.to_string_lossy()),
            "no paths: {comment}"
        );
    }
    assert!(echo(vigie.dicom), "still serving after C-STORE");

    // The same by STOW-RS: every part refused, with reasons and no paths.
    let r = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"; boundary=XyZ",
        )],
        &multipart(&files[..3]),
    );
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    for (name, value) in &r.headers {
        if name == "warning" {
            assert!(!value.contains("staging"), "no internal paths: {value}");
        }
    }

    // A decoder panic (defect 2): a corrupt RLE image in its own study.
    let rle = dir.join("rle.dcm");
    corrupt_rle(&rle);
    let outcomes = send(vigie.dicom, &[rle]);
    assert_eq!(outcomes[0].status, Some(0x0000), "{outcomes:?}");

    // A trickle that starts with something else than an A-ASSOCIATE-RQ
    // (defect 5) is closed at once; a trickle inside an association is
    // dicom-io's `regression_a_trickled_pdu_cannot_hold_an_association`.
    let trickle = std::thread::spawn({
        let port = vigie.dicom;
        move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = s.write_all(&[0x04, 0, 0, 0, 0, 100]);
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(500));
                if s.write_all(&[0]).is_err() {
                    return true;
                }
            }
            false
        }
    });

    // A full disk: refused with A700, on record; the service goes on and
    // takes instances again once there is room.
    let filler = inside.join("filler.bin");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
    }
    let full = send(vigie.dicom, &demo[..1]);
    assert_eq!(full[0].status, Some(0xA700), "{full:?}");
    std::fs::remove_file(&filler).unwrap();
    assert!(echo(vigie.dicom), "serving on a full disk");

    // A clock jump: 11 years ahead, an instance, then set right again.
    std::fs::write(&clock, "+4015d\n").unwrap();
    assert_eq!(send(vigie.dicom, &demo[..1])[0].status, Some(0x0000));
    std::fs::write(&clock, "+0\n").unwrap();

    // The good study, sent last, is analysed and delivered.
    let (study, _, _) = uids(&demo[1]);
    let outcomes = send(vigie.dicom, &demo[1..2]);
    assert_eq!(outcomes[0].status, Some(0x0000));
    vigie.wait_for("the good study's job", Duration::from_secs(120), |v| {
        v.jobs()
            .iter()
            .any(|j| j["study_instance_uid"] == study.as_str() && j["state"] == "done")
    });
    vigie.wait_for("the result at the PACS", Duration::from_secs(60), |_| {
        std::fs::read_dir(&pacs.dir).map(|d| d.count()).unwrap_or(0) > 0
    });
    // The RLE study's job failed with its reason, and no worker died.
    vigie.wait_for("the corrupt study's job", Duration::from_secs(60), |v| {
        v.jobs().iter().any(|j| {
            j["study_instance_uid"] != study.as_str()
                && j["state"] == "failed"
                && j["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("RLE Lossless frame 1: segment 1 decodes to"))
        })
    });
    let ready = vigie.json("/readyz");
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(trickle.join().unwrap(), "the trickle was cut");
    drop(silent);
    assert!(echo(vigie.dicom));
    let peak = vigie.peak_memory();
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB", peak >> 20);
    // The study received "in the future" completed too (its reception time
    // was brought back to the present), and the trail verifies, naming the
    // records written after the clock was set back.
    let (future_study, _, _) = uids(&demo[0]);
    vigie.wait_for(
        "the study received in the future",
        Duration::from_secs(60),
        |v| {
            v.jobs()
                .iter()
                .any(|j| j["study_instance_uid"] == future_study.as_str() && j["state"] == "done")
        },
    );
    let report = vigie.verify_audit();
    assert!(
        !report["time_went_backwards"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let metrics = vigie.get("/metrics").unwrap_or_default();
    assert!(
        !metrics.contains("vigie_clock_went_back_total 0"),
        "{metrics}"
    );
    let refused = vigie.audit_records("kind=instance_refused");
    assert!(refused.len() >= files.len() + 4, "{}", refused.len());
    assert!(
        refused
            .iter()
            .any(|r| r["details"].as_str().is_some_and(|d| d.contains("0xA700"))),
        "the full-disk refusal is on record"
    );
}

/// libfaketime, from Debian's `faketime` (scripts/setup.sh installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Hardening defect 15: a second `vigie serve` on the same data directory
/// ran its start-up (staging clean-up, catalog, audit) before failing on
/// the port. It now stops first, on the directory's lock, and says why.
#[test]
fn regression_a_second_serve_on_the_same_data_directory_is_refused_before_touching_it() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    // A transfer in progress of the first one, which a second start-up
    // would have removed.
    let partial = vigie.data.join("staging").join("in-progress.dcm.part");
    std::fs::write(&partial, b"half an instance").unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env_remove("VIGIE_CONFIG")
        .arg("--config")
        .arg(&vigie.config)
        .args(["serve", "--data-dir"])
        .arg(&vigie.data)
        .args(["--dicom-port", &free_port().to_string()])
        .args(["--http-port", &free_port().to_string()])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is in use by another vigie process")
            && stderr.contains(&vigie.pid().to_string()),
        "{stderr}"
    );
    assert!(partial.exists(), "the first one's staging untouched");
    assert_eq!(
        vigie.audit_records("kind=service_started").len(),
        1,
        "the second one recorded nothing"
    );
    assert!(echo(vigie.dicom));
}

/// Hardening, smaller things: `vigie … | head` panicked on the broken pipe
/// (exit 101). Every command exits quietly instead.
#[test]
fn regression_output_into_a_closed_pipe_exits_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vigie = Vigie::start(tmp.path(), &base_config(""));
    vigie.stop();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env_remove("VIGIE_CONFIG")
        .arg("--config")
        .arg(&vigie.config)
        .args(["audit", "query", "--data-dir"])
        .arg(&vigie.data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end at once, as `head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PACS stand-in that answers every C-STORE with `status`.
struct Refuser(u16);

impl vigie_dicom_io::net::scp::StoreHandler for Refuser {
    fn store(
        &self,
        instance: vigie_dicom_io::net::scp::ReceivedInstance,
    ) -> vigie_dicom_io::net::scp::StoreOutcome {
        let _ = std::fs::remove_file(&instance.path);
        vigie_dicom_io::net::scp::StoreOutcome::failure(self.0, "refused by the test PACS")
    }
    fn event(&self, _: vigie_dicom_io::net::scp::ScpEvent) {}
}

/// Start a [`Refuser`] on a free port, in its own thread and runtime.
fn refusing_pacs(ae_title: &str, status: u16, staging: &Path) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let mut options = vigie_dicom_io::net::scp::ScpOptions::new(ae_title, staging);
    // Vigie's results: Comprehensive SR, Segmentation, Secondary Capture.
    options.sop_classes.extend(
        [
            "1.2.840.10008.5.1.4.1.1.88.33",
            "1.2.840.10008.5.1.4.1.1.66.4",
        ]
        .map(String::from),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = vigie_dicom_io::net::scp::serve(
                listener,
                options,
                std::sync::Arc::new(Refuser(status)),
            )
            .await;
        });
    });
    port
}

/// Hardening defect 13: A700 (transient) and C000 (permanent) refusals
/// were retried alike for a week, logged at INFO as `sent=0 of=1`, and the
/// job stayed `done`, invisible where the operator guide says to look.
#[test]
fn regression_a_permanent_refusal_is_not_retried_and_is_shown_where_operators_look() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let permanent = refusing_pacs("NOPE", 0xC000, &tmp.path().join("nope"));
    let transient = refusing_pacs("FULL", 0xA700, &tmp.path().join("full"));
    let config = base_config(&format!(
        r#"
[[routing.rules]]
name = "mr"
modalities = ["MR"]
destinations = ["nope", "full"]

[destinations.nope]
ae_title = "NOPE"
host = "127.0.0.1"
port = {permanent}

[destinations.full]
ae_title = "FULL"
host = "127.0.0.1"
port = {transient}
"#
    ));
    let vigie = Vigie::start(tmp.path(), &config);
    assert_eq!(send(vigie.dicom, &demo)[0].status, Some(0x0000));
    vigie.wait_for(
        "a job with a failed delivery",
        Duration::from_secs(120),
        |v| {
            v.json("/api/v1/jobs?delivery=failed")
                .as_array()
                .is_some_and(|jobs| !jobs.is_empty())
        },
    );
    // Let the transient one be retried a few times (0.5 s, doubling).
    std::thread::sleep(Duration::from_secs(3));
    let jobs = vigie.json("/api/v1/jobs?delivery=failed");
    let id = jobs[0]["id"].as_i64().unwrap();
    let detail = vigie.json(&format!("/api/v1/jobs/{id}"));
    let deliveries = detail["deliveries"].as_array().unwrap();
    let nope = deliveries
        .iter()
        .find(|d| d["destination"] == "nope")
        .unwrap();
    let full = deliveries
        .iter()
        .find(|d| d["destination"] == "full")
        .unwrap();
    assert_eq!(nope["state"], "failed", "{detail}");
    assert_eq!(nope["attempts"], 1, "not retried: {detail}");
    assert!(nope["last_error"].as_str().unwrap().contains("0xC000"));
    assert_eq!(full["state"], "pending", "{detail}");
    assert!(full["attempts"].as_u64().unwrap() >= 2, "retried: {detail}");
    let log = vigie.log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("permanent")
            && l.contains("0xC000")
            && l.contains("refused by the test PACS")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("transient") && l.contains("0xA700"))
    );
}

/// Hardening defect 11, end to end: with `max_backlog = 3`, a burst of new
/// studies is refused (A700, the sender retries) once three are receiving,
/// while the instances of those three are still taken.
#[test]
fn regression_a_burst_of_new_studies_is_refused_at_the_backlog_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 6);
    let config =
        base_config("").replace("stable_age_s = 1.0", "stable_age_s = 30.0\nmax_backlog = 3");
    let vigie = Vigie::start(tmp.path(), &config);
    let outcomes = send(vigie.dicom, &demo);
    let statuses: Vec<Option<u16>> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(
        statuses,
        [
            Some(0),
            Some(0),
            Some(0),
            Some(0xA700),
            Some(0xA700),
            Some(0xA700)
        ],
        "{outcomes:?}"
    );
    assert!(
        outcomes[3]
            .comment
            .as_deref()
            .unwrap()
            .contains("backlog full")
    );
    // Another instance of a study under way is taken.
    let (_, _, sop) = uids(&demo[0]);
    let again = tmp.path().join("again.dcm");
    let (_, dataset) = dataset_bytes(&demo[0]);
    wrap(&again, "1.2.840.10008.5.1.4.1.1.4", &sop, &dataset);
    assert_eq!(send(vigie.dicom, &[again])[0].status, Some(0x0000));
    let metrics = vigie.get("/metrics").unwrap_or_default();
    assert!(metrics.contains("vigie_studies_receiving 3"), "{metrics}");
}

/// Hardening, smaller things on the HTTP side: 10,000 bad STOW-RS parts
/// gave 10,000 Warning headers (2.4 MB) naming the staging path; some 400s
/// were plain text; 413 and 415 said `bad_request`; QIDO's 406 named
/// dicom+xml whatever was asked, and `q=0` was answered 200.
#[test]
fn regression_http_errors_are_summarised_json_and_say_what_was_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let config = base_config("").replace(
        "[http]\nbind = \"127.0.0.1\"",
        "[http]\nbind = \"127.0.0.1\"\nmax_json_kib = 1",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    let junk = tmp.path().join("junk.dcm");
    std::fs::write(&junk, b"not DICOM at all").unwrap();
    let parts: Vec<PathBuf> = (0..200).map(|_| junk.clone()).collect();
    let r = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"; boundary=XyZ",
        )],
        &multipart(&parts),
    );
    assert_eq!(r.status, 409);
    let warnings: Vec<&String> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "warning")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(warnings.len(), 21, "{warnings:?}");
    assert!(warnings[20].contains("180 more instances failed"));
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("staging") && !w.contains("/tmp"))
    );
    assert_eq!(r.json()["00081198"]["Value"].as_array().unwrap().len(), 200);
    // Extractor rejections are JSON, with the right code.
    let r = vigie.http(
        "GET",
        "/api/v1/jobs?limit=ten",
        Some(token("reader")),
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"],
        "bad_request",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let big = vec![b' '; 4096];
    let r = vigie.http(
        "POST",
        "/api/v1/studies/1.2.3/analyses",
        Some(token("operator")),
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    let r = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[("Content-Type", "text/plain")],
        b"x",
    );
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
    // QIDO honours q=0 and names what was asked.
    for accept in ["application/dicom+json;q=0", "image/png"] {
        let r = vigie.http(
            "GET",
            "/dicomweb/studies",
            Some(token("reader")),
            &[("Accept", accept)],
            b"",
        );
        assert_eq!(r.status, 406, "{accept}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(accept) && !message.contains("dicom+xml"),
            "{message}"
        );
    }
}

/// `vigie serve` in a mount namespace of its own whose data directory is a
/// tmpfs of `mib` MiB: a disk that fills for real, on loopback, without
/// touching the machine's file systems.
fn on_a_small_disk(tmp: &Path, mib: u32) -> PathBuf {
    let wrapper = tmp.join("small-disk.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare -rm sh -c 'mkdir -p \"$0\" && mount -t tmpfs -o size={mib}m tmpfs \"$0\" && exec \"$@\"' '{data}' '{vigie}' \"$@\"\n",
            data = tmp.join("data").display(),
            vigie = env!("CARGO_BIN_EXE_vigie"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// Hardening defect 7: when the disk filled between the rename and the
/// index commit, the peer got A700 but the trail kept `instance_stored ok`,
/// 238 `instance_refused` records were lost (no room to write them), and
/// the file stayed in `studies/` unindexed. With a reserve released when
/// the disk fills, every refusal is on record, and what the index holds is
/// exactly what was acknowledged.
#[test]
fn regression_a_full_disk_leaves_the_trail_saying_what_the_peer_was_told() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, series, _) = uids(&demo[0]);
    let (_, dataset) = dataset_bytes(&demo[0]);
    let mut files = Vec::new();
    for n in 0..120 {
        let sop = format!("2.25.77{n:04}");
        let path = tmp.path().join(format!("copy-{n}.dcm"));
        let mut object = dicom_object::open_file(&demo[0]).unwrap();
        object.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::SOP_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from(sop.as_str()),
        ));
        object.update_meta(|m| m.media_storage_sop_instance_uid = sop.clone());
        object.write_to_file(&path).unwrap();
        files.push(path);
    }
    let per_file = std::fs::metadata(&files[0]).unwrap().len() + dataset.len() as u64 / 100;
    let wrapper = on_a_small_disk(tmp.path(), 24);
    let config = base_config("[storage]\nreserve_mib = 4\n")
        .replace("[storage]\nmin_free_mib = 0\n", "")
        .replace(
            "[storage]\nreserve_mib = 4\n",
            "[storage]\nmin_free_mib = 0\nreserve_mib = 4\n",
        );
    let vigie = Vigie::start_binary_with_env(&wrapper, tmp.path(), &config, &[]);
    let mut statuses = Vec::new();
    for chunk in files.chunks(10) {
        statuses.extend(
            send(vigie.dicom, chunk)
                .into_iter()
                .map(|o| (o.status, o.comment)),
        );
    }
    let stored = statuses.iter().filter(|(s, _)| *s == Some(0)).count();
    let refused = statuses.iter().filter(|(s, _)| *s == Some(0xA700)).count();
    assert!(
        stored > 10 && refused > 10,
        "the disk filled: {stored} stored, {refused} refused ({per_file} B each)"
    );
    assert_eq!(stored + refused, files.len(), "{statuses:?}");
    // The trail says what each peer was told, every time.
    let refusals = vigie.audit_records("kind=instance_refused");
    assert_eq!(refusals.len(), refused, "every refusal recorded");
    // The index holds exactly the acknowledged instances.
    let indexed = vigie.json(&format!(
        "/dicomweb/studies/{study}/series/{series}/instances"
    ));
    assert_eq!(indexed.as_array().map(Vec::len), Some(stored));
    assert_eq!(
        vigie.json("/api/v1/status")["ingest"]["stored"],
        stored as u64
    );
    let verify = vigie.http(
        "POST",
        "/api/v1/audit/verify",
        Some(token("auditor")),
        &[],
        b"",
    );
    assert_eq!(
        verify.status,
        200,
        "{}",
        String::from_utf8_lossy(&verify.body)
    );
    assert!(echo(vigie.dicom), "still serving");
    assert!(vigie.log_text().contains("storage reserve was released"));
}

/// Hardening defects 7 and 8: a file in the store that the catalog does
/// not know (an index commit that failed, a job attempt killed after it
/// wrote its SR) stayed there forever, unindexed and unaccounted for. At
/// the next start it is moved aside, on record.
#[test]
fn regression_files_unknown_to_the_catalog_are_moved_aside_on_record_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let mut vigie = Vigie::start(tmp.path(), &base_config(""));
    assert_eq!(send(vigie.dicom, &demo)[0].status, Some(0));
    let (study, series, sop) = uids(&demo[0]);
    let kept = vigie.stored(&study, &series, &sop);
    vigie.stop();
    let stray_instance = vigie.data.join("studies/2.25.1/2.25.2/2.25.3.dcm");
    let stray_result = vigie.data.join("results/2.25.1/2.25.4/2.25.5.dcm");
    for stray in [&stray_instance, &stray_result] {
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::copy(&demo[0], stray).unwrap();
    }
    vigie.restart();
    assert!(kept.is_file(), "what the catalog knows stays");
    assert!(!stray_instance.exists() && !stray_result.exists());
    assert!(
        vigie
            .data
            .join("orphaned/studies/2.25.1/2.25.2/2.25.3.dcm")
            .is_file()
    );
    assert!(
        vigie
            .data
            .join("orphaned/results/2.25.1/2.25.4/2.25.5.dcm")
            .is_file()
    );
    let moved = vigie.audit_records("kind=orphan_moved");
    assert_eq!(moved.len(), 2, "{moved:?}");
}
