//! Reviews, the radiologist's verdict on a result, round trip three ways
//! on a running `vigie serve` with the demo model: over the JSON API, on
//! the review page in a real headless Chromium (screenshots kept under
//! `target/test-artifacts/review-page/`), and as a reviewer's SR written by
//! pydicom and sent with DCMTK's `storescu` and by STOW-RS. Every refusal
//! is answered with its reason and audited.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vigie, base_config, demo_studies, send, token};
use serde_json::{Value, json};
use vigie_test_support::{oracle, repo_root};

const SR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.33";

/// The review page as the tests' radiologists reach it.
const PAGE_URL: &str = "https://vigie.hospital.example/review";

/// The demo model on MR with summary images: each job has an SR and an SC,
/// both with the link to the job's review.
fn config() -> String {
    base_config(
        r#"
[results]
summary_image = true
review_page_url = "https://vigie.hospital.example/review"
review_senders = ["MODALITY", "test-operator"]

[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
"#,
    )
}

/// A service that has analysed `count` demo studies; their done jobs.
fn analysed(dir: &Path, count: usize) -> (Vigie, Vec<Value>, Vec<PathBuf>) {
    let demo = demo_studies(&dir.join("demo"), count);
    let vigie = Vigie::start(dir, &config());
    assert!(send(vigie.dicom, &demo).iter().all(|o| o.delivered()));
    vigie.wait_for("the jobs done", Duration::from_secs(120), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == count
    });
    let jobs = vigie.jobs();
    (vigie, jobs, demo)
}

fn post(vigie: &Vigie, path: &str, role: &str, body: &Value) -> common::HttpResponse {
    vigie.http(
        "POST",
        path,
        Some(token(role)),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn details(record: &Value) -> Value {
    serde_json::from_str(record["details"].as_str().unwrap()).unwrap()
}

/// The SOP Instance UID of the first of a worklist entry's results whose
/// class is (`same`) or is not `class`.
fn result_uid(entry: &Value, class: &str, same: bool) -> String {
    entry["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| (r["sop_class_uid"] == class) == same)
        .unwrap()["sop_instance_uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The file of a stored instance or result, found by its SOP Instance UID.
fn file_of(root: &Path, sop: &str) -> PathBuf {
    let name = format!("{sop}.dcm");
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name.as_str()) {
                return path;
            }
        }
    }
    panic!("{sop} not under {}", root.display());
}

#[test]
fn reviews_round_trip_over_the_api_and_every_refusal_is_answered_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, jobs, demo) = analysed(tmp.path(), 2);
    let job = jobs[0]["id"].as_i64().unwrap();
    let other = jobs[1]["id"].as_i64().unwrap();
    let reviews_of = |id: i64| format!("/api/v1/jobs/{id}/reviews");

    // What the page shows: the finding, the model's labels, SR and SC.
    let entry = vigie.json(&format!("/api/v1/review/worklist?job={job}"))[0].clone();
    assert!(
        entry["items"][0]["finding"]["decision"].is_string(),
        "{entry}"
    );
    let items = entry["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one item: the SR ({entry})");
    assert!(items[0]["finding"]["probability"].as_f64().unwrap() > 0.0);
    assert!(items[0]["source_sop_instance_uid"].is_string());
    assert_eq!(
        entry["labels"],
        json!(["glioma", "meningioma", "notumor", "pituitary"])
    );
    let results = entry["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "SR and summary image: {entry}");
    let sr = result_uid(&entry, SR_CLASS, true);
    let sc = result_uid(&entry, SR_CLASS, false);
    // The SR carries the link to this job's review (what the page opens
    // with: `#job=`), read back by pydicom.
    let read: Value =
        serde_json::from_slice(&oracle("read_sr.py", [file_of(&vigie.data, &sr)]).stdout).unwrap();
    assert_eq!(read["review_link"], format!("{PAGE_URL}#job={job}"));

    // Accept, with no result named: the job's one SR.
    let first = post(
        &vigie,
        &reviews_of(job),
        "reviewer",
        &json!({"verdict": "accept", "reviewer": "Dr Martin"}),
    );
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let first = first.json();
    assert_eq!(first["result_sop_instance_uid"], sr.as_str());
    assert_eq!(first["reviewer"], "Dr Martin");
    assert_eq!(first["authenticated_as"], "test-reviewer");
    assert_eq!(first["via"], "api");
    assert_eq!(first["counts"], true);
    // The same reviewer changes their mind: a new record superseding it.
    let comment = "DOE^JOHN: glioma on the prior, see report";
    let second = post(
        &vigie,
        &reviews_of(job),
        "reviewer",
        &json!({"verdict": "correct", "label": "meningioma", "reviewer": "Dr Martin", "comment": comment}),
    );
    assert_eq!(second.status, 201);
    let second = second.json();
    assert_eq!(second["supersedes"], first["id"]);
    // Another reviewer, on the summary image named explicitly; the token's
    // name when no reviewer is declared.
    let third = post(
        &vigie,
        &reviews_of(job),
        "reviewer",
        &json!({"verdict": "reject", "result": sc}),
    );
    assert_eq!(third.status, 201);
    assert_eq!(third.json()["reviewer"], "test-reviewer");
    assert_eq!(third.json()["supersedes"], Value::Null);

    // Nothing was edited: three records in order, the first no longer
    // counts; the listing across jobs filters those that count.
    let listed = vigie.json(&reviews_of(job));
    let listed = listed.as_array().unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| (
                r["verdict"].as_str().unwrap(),
                r["counts"].as_bool().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("accept", false), ("correct", true), ("reject", true)]
    );
    assert_eq!(listed[1]["label"], "meningioma");
    assert_eq!(listed[1]["comment"], comment, "the comment is kept");
    let counting = vigie.json("/api/v1/reviews?counting=true");
    assert_eq!(counting.as_array().unwrap().len(), 2);
    assert_eq!(
        vigie
            .json(&format!("/api/v1/reviews?result={sc}"))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Each refusal: its status, its reason, and nothing recorded.
    let refusals: [(i64, Value, u16, &str); 7] = [
        (999_999, json!({"verdict": "accept"}), 404, "unknown_job"),
        (job, json!({"verdict": "correct"}), 422, "label_required"),
        (
            job,
            json!({"verdict": "accept", "label": "glioma"}),
            422,
            "label_not_allowed",
        ),
        (
            job,
            json!({"verdict": "correct", "label": "banana"}),
            422,
            "unknown_label",
        ),
        (
            job,
            json!({"verdict": "accept", "result": "1.2.3.4"}),
            422,
            "not_of_job",
        ),
        (
            job,
            json!({"verdict": "accept", "reviewer": "x".repeat(65)}),
            422,
            "invalid",
        ),
        (
            other,
            json!({"verdict": "accept", "result": sr}),
            422,
            "not_of_job",
        ),
    ];
    for (id, body, status, code) in &refusals {
        let r = post(&vigie, &reviews_of(*id), "reviewer", body);
        assert_eq!(
            r.status,
            *status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"]["code"], *code, "{body}");
    }
    for body in [
        r#"{"verdict": "maybe"}"#,
        r#"{"verdict": "accept", "extra": 1}"#,
        "not json",
    ] {
        let r = vigie.http(
            "POST",
            &reviews_of(job),
            Some(token("reviewer")),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert!(matches!(r.status, 400 | 422), "{body}: {}", r.status);
    }
    // A token without the role: 403, even for an administrator.
    for role in ["reader", "operator", "auditor", "admin"] {
        let r = post(
            &vigie,
            &reviews_of(job),
            role,
            &json!({"verdict": "accept"}),
        );
        assert_eq!(r.status, 403, "{role}");
    }
    assert_eq!(vigie.json(&reviews_of(job)).as_array().unwrap().len(), 3);

    // The audit trail: every review, every refusal, every denial.
    let recorded = vigie.audit_records("kind=review_recorded");
    assert_eq!(
        recorded
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ok", "superseding", "ok"]
    );
    let correction = details(&recorded[1]);
    assert_eq!(recorded[1]["sop_instance_uid"], sr.as_str());
    assert_eq!(recorded[1]["model_id"], "brain-tumour-vgg16");
    assert_eq!(correction["supersedes"], first["id"]);
    assert_eq!(correction["label"], "meningioma");
    assert_eq!(
        correction["comment"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(comment.as_bytes()))
    );
    assert!(
        !recorded[1]["details"].as_str().unwrap().contains("DOE"),
        "the comment's text stays out of the audit trail"
    );
    let refused = vigie.audit_records("kind=review_refused");
    let reasons: Vec<String> = refused
        .iter()
        .map(|r| details(r)["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "unknown_job",
            "label_required",
            "label_not_allowed",
            "unknown_label",
            "not_of_job",
            "invalid",
            "not_of_job",
            "malformed",
            "malformed",
            "malformed"
        ]
    );
    let denied: Vec<Value> = vigie
        .audit_records("kind=http_access&outcome=denied")
        .into_iter()
        .map(|r| details(&r))
        .filter(|d| d["path"] == reviews_of(job).as_str())
        .collect();
    assert_eq!(denied.len(), 4);
    assert!(denied.iter().all(|d| d["required"] == json!(["reviewer"])));
    let metrics = vigie.get("/metrics").unwrap_or_default();
    assert!(
        metrics.contains(r#"vigie_reviews_total{verdict="correct",via="api"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"vigie_reviews_refused_total{reason="unknown_label",via="api"} 1"#));
    let log = vigie.log_text();
    assert!(!log.contains("DOE"), "no comment text in the log");

    // The thumbnail the page shows is the source image, as pydicom renders
    // it with the file's window.
    let png = vigie.http(
        "GET",
        &format!("/api/v1/jobs/{job}/thumbnail"),
        Some(token("reviewer")),
        &[],
        b"",
    );
    assert_eq!(png.status, 200);
    assert_eq!(png.header("content-type"), Some("image/png"));
    let thumb = tmp.path().join("thumb.png");
    std::fs::write(&thumb, &png.body).unwrap();
    let source = vigie.jobs().iter().find(|j| j["id"] == job).unwrap()["study_instance_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let source_file = demo
        .iter()
        .find(|p| common::uids(p).0 == source)
        .unwrap()
        .clone();
    let check: Value =
        serde_json::from_slice(&oracle("thumbnail_check.py", [&source_file, &thumb]).stdout)
            .unwrap();
    assert!(
        check["thumbnail"][0].as_u64().unwrap() <= 256
            && check["thumbnail"][1].as_u64().unwrap() <= 256,
        "{check}"
    );
    assert!(
        check["mean_abs_difference"].as_f64().unwrap() < 4.0,
        "{check}"
    );
    assert!(check["correlation"].as_f64().unwrap() > 0.99, "{check}");
    assert_eq!(vigie.verify_audit()["ok"], true);
}

#[test]
fn a_review_clicked_on_the_page_in_chromium_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, jobs, _) = analysed(tmp.path(), 1);
    let job = jobs[0]["id"].as_i64().unwrap();
    let shots = repo_root().join("target/test-artifacts/review-page");
    let _ = std::fs::remove_dir_all(&shots);
    let out = oracle(
        "review_page.py",
        [
            format!("http://127.0.0.1:{}/review", vigie.http),
            token("reviewer").to_string(),
            "Dr Page".to_string(),
            job.to_string(),
            "pituitary".to_string(),
            shots.display().to_string(),
        ],
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = page["status"].as_str().unwrap();
    assert!(
        status.starts_with("Recorded: correct (pituitary) by Dr Page"),
        "{page}"
    );
    assert_eq!(
        page["labels"],
        json!(["glioma", "meningioma", "notumor", "pituitary"])
    );
    assert!(
        page["finding"]
            .as_str()
            .unwrap()
            .starts_with("AI finding: "),
        "{page}"
    );
    assert_eq!(page["thumbnail"], json!([256, 256]), "{page}");

    // The record behind what the page said.
    let reviews = vigie.json(&format!("/api/v1/jobs/{job}/reviews"));
    let reviews = reviews.as_array().unwrap();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["verdict"], "correct");
    assert_eq!(reviews[0]["label"], "pituitary");
    assert_eq!(reviews[0]["reviewer"], "Dr Page");
    assert_eq!(reviews[0]["via"], "page");
    assert_eq!(reviews[0]["comment"], "seen on the page");
    assert!(status.contains(&format!("(review {})", reviews[0]["id"])));
    let audited = vigie.audit_records("kind=review_recorded");
    assert_eq!(audited.len(), 1);
    assert_eq!(details(&audited[0])["via"], "page");

    // The screenshots: the worklist with its thumbnail drawn, then the
    // recorded review.
    for shot in ["1-worklist.png", "2-recorded.png"] {
        let image = image::open(shots.join(shot)).unwrap().to_rgb8();
        let dark = image
            .pixels()
            .filter(|p| p.0.iter().all(|c| *c < 40))
            .count();
        let grey = image
            .pixels()
            .filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && (60..200).contains(&p.0[0]))
            .count();
        assert!(dark > 5_000 && grey > 5_000, "{shot}: the image is drawn");
    }
    // The page holds no data without a token, and sets a strict policy.
    let html = vigie.http("GET", "/review", None, &[], b"");
    assert_eq!(html.status, 200);
    assert!(
        html.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(
        !String::from_utf8_lossy(&html.body)
            .contains(jobs[0]["study_instance_uid"].as_str().unwrap())
    );
    assert_eq!(
        vigie
            .http("GET", "/api/v1/review/worklist", None, &[], b"")
            .status,
        401
    );
}

#[test]
fn a_reviewers_sr_by_c_store_and_stow_rs_is_recorded_once_and_bad_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, jobs, demo) = analysed(tmp.path(), 2);
    let job = jobs[0]["id"].as_i64().unwrap();
    let entry = vigie.json(&format!("/api/v1/review/worklist?job={job}"))[0].clone();
    let sr = result_uid(&entry, SR_CLASS, true);
    let ai_sr = file_of(&vigie.data, &sr);
    let make = |name: &str, args: &[&str]| -> (PathBuf, String) {
        let out = tmp.path().join(name);
        let mut all = vec![ai_sr.display().to_string(), out.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let uid = String::from_utf8(oracle("review_sr.py", all).stdout).unwrap();
        (out, uid.trim().to_string())
    };

    // By C-STORE (DCMTK storescu), twice: one review.
    let (reject, reject_uid) = make(
        "reject.dcm",
        &["REJECT", "Curie^Marie", "", "motion artefact"],
    );
    for _ in 0..2 {
        let sent = common::dcmtk(
            "storescu",
            &common::storescu_args(vigie.dicom, "-xe", std::slice::from_ref(&reject)),
        );
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    }
    let reviews = vigie.json(&format!("/api/v1/jobs/{job}/reviews"));
    let reviews = reviews.as_array().unwrap();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0]["verdict"], "reject");
    assert_eq!(reviews[0]["reviewer"], "Curie^Marie");
    assert_eq!(reviews[0]["via"], "dicom");
    assert_eq!(reviews[0]["comment"], "motion artefact");
    assert_eq!(reviews[0]["result_sop_instance_uid"], sr.as_str());
    assert_eq!(reviews[0]["source_sop_instance_uid"], reject_uid.as_str());
    assert!(
        reviews[0]["authenticated_as"]
            .as_str()
            .unwrap()
            .starts_with("AE ")
    );
    let outcomes: Vec<String> = vigie
        .audit_records("kind=review_recorded")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes, ["ok", "duplicate"]);

    // By STOW-RS: a correction under the same name, but sent by another
    // system (a token, not the AE): it does not supersede the first, both
    // count (one sender cannot override another's reviews).
    let (correct, _) = make("correct.dcm", &["CORRECT", "Curie^Marie", "glioma"]);
    let boundary = "vigie-review-boundary";
    let mut body = format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    body.extend(std::fs::read(&correct).unwrap());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let stow = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[
            ("Content-Type", &content_type),
            ("Accept", "application/dicom+json"),
        ],
        &body,
    );
    assert_eq!(stow.status, 200, "{}", String::from_utf8_lossy(&stow.body));
    let reviews = vigie.json(&format!("/api/v1/jobs/{job}/reviews"));
    let reviews = reviews.as_array().unwrap();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[1]["label"], "glioma");
    assert_eq!(reviews[1]["supersedes"], Value::Null);
    assert!(reviews.iter().all(|r| r["counts"] == true));
    assert!(
        reviews[1]["authenticated_as"]
            .as_str()
            .unwrap()
            .starts_with("token ")
    );

    // One of Vigie's own results sent back (a PACS forwarding the study):
    // acknowledged, not stored again, still linked to its job.
    let sent = common::dcmtk(
        "storescu",
        &common::storescu_args(vigie.dicom, "-xe", std::slice::from_ref(&ai_sr)),
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let held = vigie.audit_records("kind=instance_stored&outcome=already_held");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["sop_instance_uid"], sr.as_str());
    let entry = vigie.json(&format!("/api/v1/review/worklist?job={job}"))[0].clone();
    assert_eq!(
        result_uid(&entry, SR_CLASS, true),
        sr,
        "still the job's result"
    );

    // From a sender not in results.review_senders: 0124, not stored.
    let (other, _) = make("other-sender.dcm", &["ACCEPT", "Curie^Marie"]);
    let mut args = common::storescu_args(vigie.dicom, "-xe", std::slice::from_ref(&other));
    args[1] = "OTHER".into();
    args.insert(0, "-v".into());
    let sent = common::dcmtk("storescu", &args);
    let text =
        String::from_utf8_lossy(&sent.stderr).to_string() + &String::from_utf8_lossy(&sent.stdout);
    assert!(
        text.contains("Received Store Response") && !text.contains("(Success)"),
        "{text}"
    );

    // Refused, with the reason in the C-STORE response, not stored, audited:
    // an SR about an image that is no result of this appliance, an unknown
    // verdict code, a correction without its finding.
    let received_image = demo[1].clone();
    let bad = [
        {
            let out = tmp.path().join("not-a-result.dcm");
            let uid = oracle(
                "review_sr.py",
                [
                    received_image.display().to_string(),
                    out.display().to_string(),
                    "ACCEPT".into(),
                    "Curie^Marie".into(),
                ],
            );
            (
                out,
                String::from_utf8(uid.stdout).unwrap(),
                "unknown_result",
            )
        },
        {
            let (p, u) = make("maybe.dcm", &["MAYBE", "Curie^Marie"]);
            (p, u, "malformed")
        },
        {
            let (p, u) = make("no-finding.dcm", &["CORRECT", "Curie^Marie"]);
            (p, u, "malformed")
        },
    ];
    for (file, uid, _) in &bad {
        let mut args = common::storescu_args(vigie.dicom, "-xe", std::slice::from_ref(file));
        args.insert(0, "-v".into());
        let sent = common::dcmtk("storescu", &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&sent.stdout),
            String::from_utf8_lossy(&sent.stderr)
        );
        assert!(
            text.contains("Received Store Response (Error: CannotUnderstand)"),
            "{text}"
        );
        let stored = vigie
            .data
            .join("studies")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|study| walk_has(&study.path(), &format!("{}.dcm", uid.trim())));
        assert!(!stored, "a refused reviewer's SR is not stored");
    }
    let reasons: Vec<String> = vigie
        .audit_records("kind=review_refused")
        .iter()
        .map(|r| details(r)["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        std::iter::once("sender_not_allowed")
            .chain(bad.iter().map(|(_, _, r)| *r))
            .collect::<Vec<_>>()
    );
    let refused = vigie.audit_records("kind=instance_refused");
    assert_eq!(refused.len(), 4);
    let statuses: Vec<String> = refused
        .iter()
        .map(|r| details(r)["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["0x0124", "0xC000", "0xC000", "0xC000"]);
    assert_eq!(
        vigie
            .json(&format!("/api/v1/jobs/{job}/reviews"))
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

fn walk_has(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            walk_has(&p, name)
        } else {
            p.file_name().is_some_and(|n| n == name)
        }
    })
}
