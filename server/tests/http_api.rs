//! The HTTP side through the real server: the jobs, models and audit API
//! on received studies, readiness and metrics, load shedding, graceful
//! shutdown with a request in flight, HTTPS. The auth matrix of every
//! endpoint needs no socket: `http_in_process.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vigie, base_config, demo_studies, send, token, uids};
use vigie_test_support::repo_root;

const STOW_TYPE: &str = "multipart/related; type=\"application/dicom\"; boundary=B0UNDARY";

fn part(file: &Path) -> Vec<u8> {
    let mut body = b"--B0UNDARY\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    body.extend(std::fs::read(file).unwrap());
    body.extend(b"\r\n--B0UNDARY--\r\n");
    body
}

/// The repository's model packages, plus a copy of the fixture model whose
/// weights no longer match their hash (it fails when loaded).
fn models_with_a_broken_package(dir: &Path) -> PathBuf {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for entry in std::fs::read_dir(repo_root().join("models")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), models.join(entry.file_name())).unwrap();
    }
    let broken = models.join("broken-fixture");
    std::fs::create_dir_all(&broken).unwrap();
    let source = repo_root().join("models/fixture-bright-disk");
    let manifest = std::fs::read_to_string(source.join("model.toml")).unwrap();
    std::fs::write(
        broken.join("model.toml"),
        manifest.replace("id = \"fixture-bright-disk\"", "id = \"broken-fixture\""),
    )
    .unwrap();
    let mut weights = std::fs::read(source.join("fixture-bright-disk.onnx")).unwrap();
    weights.push(0);
    std::fs::write(broken.join("fixture-bright-disk.onnx"), weights).unwrap();
    models
}

#[test]
fn jobs_models_and_audit_api() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let models = models_with_a_broken_package(tmp.path());
    let config = base_config(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
destinations = ["nowhere"]

[destinations.nowhere]
ae_title = "NOWHERE"
host = "127.0.0.1"
port = 9
"#,
    )
    .replace(
        &repo_root().join("models").display().to_string(),
        &models.display().to_string(),
    )
    .replace("[pipeline]\n", "[pipeline]\nmax_attempts = 1\n")
    .replace("[delivery]\n", "[delivery]\ngive_up_after_h = 0.0\n");
    let vigie = Vigie::start(tmp.path(), &config);
    assert!(send(vigie.dicom, &demo).iter().all(|o| o.delivered()));
    let (study, _, _) = uids(&demo[0]);
    vigie.wait_for(
        "2 jobs done, deliveries given up",
        Duration::from_secs(120),
        |v| {
            v.jobs().iter().filter(|j| j["state"] == "done").count() == 2
                && v.json("/api/v1/status")["outbox"]["failed"] == 2
        },
    );
    let get = |path: &str, role: &str| vigie.http("GET", path, Some(token(role)), &[], b"");
    let post = |path: &str, role: &str, body: &str| {
        vigie.http(
            "POST",
            path,
            Some(token(role)),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };

    // Models: the routed package verified, the others listed as they are.
    let models = get("/api/v1/models", "reader").json();
    let by_id = |id: &str| {
        models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };
    let vgg = by_id("brain-tumour-vgg16");
    assert_eq!(
        (vgg["active"].as_bool(), vgg["verified"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(vgg["rules"], serde_json::json!(["brain-mr"]));
    assert_eq!(vgg["sha256"], vgg["manifest"]["weights"]["sha256"]);
    assert_eq!(by_id("broken-fixture")["verified"], false);

    // Filters.
    let jobs = get(&format!("/api/v1/jobs?study={study}"), "reader").json();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    let id = jobs[0]["id"].as_i64().unwrap();
    assert_eq!(
        get("/api/v1/jobs?state=done&model=brain-tumour-vgg16", "reader")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        get("/api/v1/jobs?state=failed", "reader")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        get("/api/v1/jobs?since=2999-01-01", "reader")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get("/api/v1/jobs?until=2999-01-01T00:00:00Z&limit=1", "reader")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(get("/api/v1/jobs?state=bogus", "reader").status, 400);
    assert_eq!(get("/api/v1/jobs?since=yesterday", "reader").status, 400);

    // Detail: stages, results, deliveries, events.
    let detail = get(&format!("/api/v1/jobs/{id}"), "reader").json();
    assert_eq!(detail["job"]["id"], id);
    assert!(
        detail["stage_totals_ms"]["inference_ms"].as_f64().unwrap() > 0.0,
        "{detail}"
    );
    assert_eq!(detail["results"][0]["kind"], "sr");
    assert_eq!(detail["deliveries"][0]["state"], "failed");
    assert_eq!(detail["deliveries"][0]["destination"], "nowhere");
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"inference")
            && kinds.contains(&"job_done")
            && kinds.contains(&"result_delivery"),
        "{kinds:?}"
    );
    assert_eq!(get("/api/v1/jobs/999999", "reader").status, 404);

    // Retry: a done job's failed deliveries are queued again.
    let retry = post(&format!("/api/v1/jobs/{id}/retry"), "operator", "");
    assert_eq!(retry.status, 200);
    assert_eq!(retry.json()["outcome"], "deliveries_requeued");
    assert_eq!(retry.json()["deliveries"], 1);

    // Re-analysis with a model the routing does not use; that package is
    // broken, so the job fails; a retry puts it back to pending.
    for (body, status) in [
        (r#"{"model": "no-such-model"}"#, 422),
        (
            r#"{"model": "brain-tumour-vgg16", "destinations": ["nope"]}"#,
            422,
        ),
        (r#"{"model": 3}"#, 422),
        ("not json", 400),
    ] {
        assert_eq!(
            post(
                &format!("/api/v1/studies/{study}/analyses"),
                "operator",
                body
            )
            .status,
            status,
            "{body}"
        );
    }
    assert_eq!(
        post(
            "/api/v1/studies/1.2.3/analyses",
            "operator",
            r#"{"model": "broken-fixture"}"#
        )
        .status,
        404
    );
    let submitted = post(
        &format!("/api/v1/studies/{study}/analyses"),
        "operator",
        r#"{"model": "broken-fixture"}"#,
    );
    assert_eq!(
        submitted.status,
        202,
        "{}",
        String::from_utf8_lossy(&submitted.body)
    );
    let new_id = submitted.json()["job_id"].as_i64().unwrap();
    assert_eq!(
        submitted.header("location"),
        Some(format!("/api/v1/jobs/{new_id}").as_str())
    );
    vigie.wait_for("the re-analysis to fail", Duration::from_secs(60), |v| {
        v.json(&format!("/api/v1/jobs/{new_id}"))["job"]["state"] == "failed"
    });
    let failed = get(&format!("/api/v1/jobs/{new_id}"), "reader").json();
    assert!(
        failed["job"]["last_error"]
            .as_str()
            .unwrap()
            .contains("broken-fixture"),
        "{failed}"
    );
    let retry = post(&format!("/api/v1/jobs/{new_id}/retry"), "admin", "");
    assert_eq!(retry.json()["outcome"], "job_requeued");
    vigie.wait_for(
        "the retried job to run and fail again",
        Duration::from_secs(60),
        |v| {
            let job = &v.json(&format!("/api/v1/jobs/{new_id}"))["job"];
            job["state"] == "failed" && job["attempts"] == 1
        },
    );
    assert_eq!(
        post("/api/v1/jobs/999999/retry", "operator", "").status,
        404
    );

    // Audit: query and verify, each access itself on record.
    let requested = vigie.audit_records("kind=analysis_requested");
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["model_id"], "broken-fixture");
    let retries = vigie.audit_records("kind=job_retry_requested");
    assert_eq!(retries.len(), 2);
    let verify = post("/api/v1/audit/verify", "auditor", "");
    assert_eq!(verify.status, 200);
    assert_eq!(verify.json()["ok"], true);
    let accesses = vigie.audit_records("kind=audit_accessed");
    // Two queries and the verification (this query goes on record after).
    assert_eq!(accesses.len(), 3);
    assert!(accesses.iter().any(|r| r["outcome"] == "verified"));
    let page = vigie.audit_records("limit=5&after=2");
    assert_eq!(page.len(), 5);
    assert_eq!(page[0]["seq"], 3);
    assert_eq!(get("/api/v1/audit?from=never", "auditor").status, 400);
}

#[test]
fn readiness_metrics_and_load_shedding() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let config = base_config("[[routing.rules]]\nname = \"all\"\n").replace(
        "[http]\nbind = \"127.0.0.1\"",
        "[http]\nbind = \"127.0.0.1\"\nmax_concurrent_requests = 2\nrequest_timeout_s = 1",
    );
    let mut vigie = Vigie::start(tmp.path(), &config);
    let ready = vigie.http("GET", "/readyz", None, &[], b"");
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    let checks = ready.json()["checks"].clone();
    assert_eq!(checks.as_array().unwrap().len(), 6);
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "workers"),
        "{checks}"
    );
    assert!(
        checks.as_array().unwrap().iter().all(|c| c["ok"] == true),
        "{checks}"
    );

    assert!(send(vigie.dicom, &demo).iter().all(|o| o.delivered()));
    // The job is done in the catalog a moment before its `job_done` event
    // counts it: wait for both.
    vigie.wait_for("the job, counted", Duration::from_secs(60), |v| {
        v.jobs().iter().any(|j| j["state"] == "done")
            && String::from_utf8_lossy(
                &v.http("GET", "/metrics", Some(token("reader")), &[], b"")
                    .body,
            )
            .contains("vigie_job_attempts_total{model=\"brain-tumour-vgg16\",outcome=\"done\"} 1\n")
    });
    let metrics = vigie.http("GET", "/metrics", Some(token("reader")), &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(metrics.body).unwrap();
    for expected in [
        "vigie_instances_stored_total{source=\"dimse\"} 1\n",
        "vigie_dicom_associations_total{outcome=\"accepted\"} 1\n",
        "vigie_job_attempts_total{model=\"brain-tumour-vgg16\",outcome=\"done\"} 1\n",
        "vigie_stage_duration_seconds_count{model=\"brain-tumour-vgg16\",stage=\"inference\"} 1\n",
        "vigie_jobs{state=\"done\"} 1\n",
        "vigie_outbox{state=\"pending\"} 0\n",
        "vigie_model_verified{model=\"brain-tumour-vgg16\",version=",
        "vigie_model_loads_total{model=\"brain-tumour-vgg16\",version=",
        "# TYPE vigie_store_free_bytes gauge\nvigie_store_free_bytes ",
        "vigie_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"200\"} 1\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // No patient data and no UIDs in the labels.
    let (study, _, _) = uids(&demo[0]);
    assert!(!text.contains(&study));

    // A JSON request whose body never comes: 408 after request_timeout_s
    // (STOW-RS has its own, longer, limit: the uploads below are not cut).
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", vigie.http)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        slow,
        "POST /api/v1/studies/1.2.3/analyses HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mo",
        token("operator")
    )
    .unwrap();
    let waited = std::time::Instant::now();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(waited.elapsed() < Duration::from_secs(5));

    // Two requests in flight (uploads left open): the third is shed.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", vigie.http)).unwrap();
        write!(
            s,
            "POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {STOW_TYPE}\r\nContent-Length: 100000\r\n\r\n--B0UNDARY\r\n",
            token("operator")
        )
        .unwrap();
        open.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let shed = vigie.http("GET", "/healthz", None, &[], b"");
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(shed.json()["error"]["code"], "overloaded");
    drop(open);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vigie.http("GET", "/healthz", None, &[], b"").status, 200);

    // Not ready when the reserve cannot be met: the reason says so.
    vigie.stop();
    vigie.set_env(&[("VIGIE__STORAGE__MIN_FREE_MIB", "999999999")]);
    vigie.restart();
    let ready = vigie.http("GET", "/readyz", None, &[], b"");
    assert_eq!(ready.status, 503);
    let store = ready.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "store")
        .cloned()
        .unwrap();
    assert_eq!(store["ok"], false);
    assert!(
        store["detail"].as_str().unwrap().contains("reserve"),
        "{store}"
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 9);
    let mut vigie = Vigie::start(tmp.path(), &base_config(""));
    // A C-STORE association in flight, sending eight studies fifty times
    // over (storescu waits on delayed acknowledgements: seconds).
    let files: Vec<PathBuf> = (0..50).flat_map(|_| demo[1..].to_vec()).collect();
    let mut storescu = std::process::Command::new("storescu")
        .args(common::storescu_args(vigie.dicom, "-xe", &files))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("storescu runs");
    std::thread::sleep(Duration::from_millis(200));
    let body = part(&demo[0]);
    let (head, tail) = body.split_at(body.len() / 2);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", vigie.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: {STOW_TYPE}\r\nContent-Length: {}\r\n\r\n",
        token("operator"),
        body.len()
    )
    .unwrap();
    s.write_all(head).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = storescu.try_wait().unwrap() {
        let mut err = String::new();
        storescu
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("storescu no longer sending at SIGTERM ({status}): {err}");
    }
    let pid = vigie.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(500));
    // The listener is closed to new requests…
    assert!(common::http(vigie.http, "GET", "/healthz", None, &[], b"").is_err());
    // …while the upload in flight completes and is answered.
    s.write_all(tail).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let status = vigie.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // The association in flight was allowed to finish too.
    let sent = storescu.wait_with_output().unwrap();
    assert!(
        sent.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // Everything acknowledged is stored and on record after a restart.
    vigie.restart();
    assert_eq!(vigie.json("/api/v1/studies").as_array().unwrap().len(), 9);
    let stored = vigie.audit_records("kind=instance_stored");
    assert_eq!(stored.len(), 1 + files.len());
    // The stop was recorded as clean.
    assert_eq!(vigie.audit_records("kind=service_stopped").len(), 1);
}

#[test]
fn https_with_the_configured_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("vigie.crt"), tmp.path().join("vigie.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = base_config("").replace(
        "[http]\nbind = \"127.0.0.1\"",
        &format!(
            "[http]\nbind = \"127.0.0.1\"\ntls = {{ certificate = \"{}\", private_key = \"{}\" }}",
            cert.display(),
            key.display()
        ),
    );
    // The test helper's health probe speaks plain HTTP: wait on the log.
    let vigie = Vigie::start_without_probe(tmp.path(), &config);
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap()
    };
    let base = format!("https://127.0.0.1:{}", vigie.http);
    let mut ok = None;
    for _ in 0..100 {
        let out = curl(&[
            "--cacert",
            &cert.display().to_string(),
            &format!("{base}/healthz"),
        ]);
        if out.status.success() {
            ok = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ok = ok.unwrap_or_else(|| panic!("no HTTPS answer:\n{}", vigie.log_text()));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok\n");
    // Tokens work as over HTTP; TLS 1.2 is accepted too.
    let auth = format!("Authorization: Bearer {}", token("reader"));
    let models = curl(&[
        "--cacert",
        &cert.display().to_string(),
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "-H",
        &auth,
        &format!("{base}/api/v1/models"),
    ]);
    assert!(models.status.success());
    assert!(String::from_utf8_lossy(&models.stdout).contains("brain-tumour-vgg16"));
    // An untrusted certificate is refused by the client; plain HTTP gets no answer.
    assert!(!curl(&[&format!("{base}/healthz")]).status.success());
    let plain = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{}/healthz", vigie.http),
    ]);
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}

#[test]
fn a_full_backlog_refuses_work_instead_of_growing() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 3);
    // No worker runs: jobs accumulate until the backlog is full.
    let config = base_config("[[routing.rules]]\nname = \"all\"\n")
        .replace("[pipeline]\n", "[pipeline]\nworkers = 0\nmax_backlog = 2\n");
    let vigie = Vigie::start(tmp.path(), &config);
    assert!(send(vigie.dicom, &demo[..2]).iter().all(|o| o.delivered()));
    vigie.wait_for("a full backlog", Duration::from_secs(30), |v| {
        v.http("GET", "/readyz", None, &[], b"").status == 503
    });
    let ready = vigie.http("GET", "/readyz", None, &[], b"").json();
    let backlog = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backlog")
        .cloned()
        .unwrap();
    assert!(
        backlog["detail"]
            .as_str()
            .unwrap()
            .contains("max_backlog 2"),
        "{backlog}"
    );
    // C-STORE: A700, the sender keeps the instance and retries later.
    let refused = send(vigie.dicom, &demo[2..]);
    assert_eq!(refused[0].status, Some(0xA700), "{refused:?}");
    assert!(
        refused[0].comment.as_deref().unwrap().contains("backlog"),
        "{refused:?}"
    );
    // STOW-RS: the instance fails with A700 (409: nothing stored).
    let r = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[("Content-Type", STOW_TYPE)],
        &part(&demo[2]),
    );
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["00081198"]["Value"][0]["00081197"]["Value"][0],
        0xA700
    );
    // A re-analysis request: 503 with Retry-After.
    let (study, _, _) = uids(&demo[0]);
    let r = vigie.http(
        "POST",
        &format!("/api/v1/studies/{study}/analyses"),
        Some(token("operator")),
        &[("Content-Type", "application/json")],
        br#"{"model": "brain-tumour-vgg16"}"#,
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("30"));
    // Nothing of the third study was stored; the refusals are counted.
    assert_eq!(vigie.json("/api/v1/status")["ingest"]["stored"], 2);
    let metrics = String::from_utf8(
        vigie
            .http("GET", "/metrics", Some(token("reader")), &[], b"")
            .body,
    )
    .unwrap();
    assert!(
        metrics.contains("vigie_instances_refused_total{source=\"dimse\",status=\"A700\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vigie_instances_refused_total{source=\"stow-rs\",status=\"A700\"} 1"),
        "{metrics}"
    );
}

/// #22 part 6, "SR series on re-analysis": a re-analysis opened a second
/// SR series with the same Series Number and description, although
/// docs/results.md promises one series per study, object type and model
/// version. Now its SR joins the first analysis's series.
#[test]
fn regression_a_reanalysis_adds_its_sr_to_the_series_of_the_first_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let config = base_config(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
"#,
    );
    let vigie = Vigie::start(tmp.path(), &config);
    assert!(send(vigie.dicom, &demo).iter().all(|o| o.delivered()));
    let (study, _, _) = uids(&demo[0]);
    let done = |v: &Vigie, n: usize| v.jobs().iter().filter(|j| j["state"] == "done").count() == n;
    vigie.wait_for("the first analysis", Duration::from_secs(120), |v| {
        done(v, 1)
    });
    let r = vigie.http(
        "POST",
        &format!("/api/v1/studies/{study}/analyses"),
        Some(token("operator")),
        &[("Content-Type", "application/json")],
        br#"{"model": "brain-tumour-vgg16"}"#,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    vigie.wait_for("the re-analysis", Duration::from_secs(120), |v| done(v, 2));
    let series = vigie
        .http(
            "GET",
            &format!("/dicomweb/studies/{study}/series?Modality=SR"),
            Some(token("reader")),
            &[("Accept", "application/dicom+json")],
            b"",
        )
        .json();
    let series = series.as_array().expect("series");
    assert_eq!(series.len(), 1, "one SR series: {series:?}");
    assert_eq!(series[0]["00200011"]["Value"][0], 9001, "{series:?}");
    assert_eq!(
        series[0]["00201209"]["Value"][0], 2,
        "both analyses' SRs in it: {series:?}"
    );
}

/// #23's defect "CORS and OPTIONS": OPTIONS answered 401, 403 or 405
/// depending on the token, and no CORS headers were sent, so a viewer on
/// another origin (OHIF) could load nothing. Now any OPTIONS is the CORS
/// preflight, answered without a token; a listed origin gets the allow
/// headers, on errors too; any other origin gets none.
#[test]
fn regression_options_is_the_cors_preflight_and_errors_carry_cors_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let ohif = "https://ohif.hospital.example:3000";
    let config = base_config("").replacen(
        "[http]\nbind = \"127.0.0.1\"",
        &format!("[http]\nbind = \"127.0.0.1\"\ncors_origins = [\"{ohif}\"]"),
        1,
    );
    let vigie = Vigie::start(tmp.path(), &config);
    let preflight = |origin: &str, with_token: bool| {
        vigie.http(
            "OPTIONS",
            "/dicomweb/studies",
            with_token.then(|| token("reader")),
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization, accept"),
            ],
            b"",
        )
    };
    for with_token in [false, true] {
        let r = preflight(ohif, with_token);
        assert_eq!(r.status, 200, "token {with_token}: {:?}", r.headers);
        assert_eq!(r.header("access-control-allow-origin"), Some(ohif));
        let methods = r
            .header("access-control-allow-methods")
            .unwrap()
            .to_lowercase();
        assert!(
            methods.contains("get") && methods.contains("post"),
            "{methods}"
        );
        let headers = r
            .header("access-control-allow-headers")
            .unwrap()
            .to_lowercase();
        assert!(headers.contains("authorization"), "{headers}");
        assert_eq!(r.header("access-control-max-age"), Some("600"));
    }
    let stranger = preflight("https://elsewhere.example", false);
    assert_eq!(stranger.status, 200);
    assert_eq!(stranger.header("access-control-allow-origin"), None);
    // Errors carry the headers, so the viewer can read them.
    let get = |origin: &str, with_token: bool| {
        vigie.http(
            "GET",
            "/dicomweb/studies",
            with_token.then(|| token("reader")),
            &[("Origin", origin), ("Accept", "application/dicom+json")],
            b"",
        )
    };
    let unauthorized = get(ohif, false);
    assert_eq!(unauthorized.status, 401);
    assert_eq!(
        unauthorized.header("access-control-allow-origin"),
        Some(ohif)
    );
    assert!(
        unauthorized
            .header("vary")
            .is_some_and(|v| v.to_lowercase().contains("origin")),
        "{:?}",
        unauthorized.headers
    );
    let ok = get(ohif, true);
    assert_eq!(ok.status, 204, "no study yet");
    assert_eq!(ok.header("access-control-allow-origin"), Some(ohif));
    assert!(
        ok.header("access-control-expose-headers")
            .unwrap()
            .to_lowercase()
            .contains("warning")
    );
    assert_eq!(
        get("https://elsewhere.example", true).header("access-control-allow-origin"),
        None
    );
    // Without any origin configured, OPTIONS is still a plain preflight.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Vigie::start(plain_dir.path(), &base_config(""));
    let r = plain.http(
        "OPTIONS",
        "/api/v1/jobs",
        Some(token("admin")),
        &[("Origin", ohif), ("Access-Control-Request-Method", "GET")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// #23, "Logging": a 404 on a path no endpoint serves left no log line, so
/// a viewer asking for what Vigie does not serve went unnoticed. Now it is
/// logged with its method and path, never its query string (which may
/// hold patient identifiers).
#[test]
fn regression_unknown_endpoints_are_logged_without_their_query() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    let r = vigie.http(
        "GET",
        "/dicomweb/workitems/1.2.3/state?PatientID=DOE-SECRET-42",
        Some(token("reader")),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    vigie.wait_for("the 404 in the log", Duration::from_secs(10), |v| {
        v.log_text().contains("no such endpoint (404)")
    });
    let log = vigie.log_text();
    assert!(
        log.contains("/dicomweb/workitems/1.2.3/state"),
        "the path is logged"
    );
    assert!(!log.contains("DOE-SECRET-42"), "the query is not");
}
