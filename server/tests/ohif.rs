//! OHIF, the web viewer radiologists use, against Vigie (#23): OHIF 3.13.2
//! (npm `@ohif/app`, its prebuilt `dist/`, fetched and hash-checked by
//! setup) served by nginx with Vigie's DICOMweb on the same origin
//! (`deploy/nginx-ohif.conf`, `deploy/ohif-app-config.js`), driven in
//! Debian's headless Chromium by `tests/oracle/ohif_viewer.py`: the study
//! list, a study and its image, the AI result. Screenshots are kept in
//! `target/test-artifacts/ohif/`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{Vigie, base_config, demo_studies, multipart, only_part, token, uids};
use vigie_test_support::{free_port, oracle, repo_root};

// A bare [results]: the summary image as by default (base_config keeps
// it off only for suites that do not set the section).
const ROUTE_AND_SUMMARY: &str = r#"
[results]

[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
"#;

/// The viewer's user at the proxy (basic authentication, as shipped).
const VIEWER_USER: &str = "radiologist";
const VIEWER_PASSWORD: &str = "test-viewer-password";

/// nginx in front of OHIF and Vigie, stopped on drop (SIGQUIT to its
/// master, which stops its workers; SIGKILL would leave them behind).
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `@NAME@` placeholders left in a text.
fn placeholders(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'@' {
            continue;
        }
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        if !name.is_empty() && bytes.get(i + 1 + name.len()) == Some(&b'@') {
            found.push(name);
        }
    }
    found
}

/// One request to the proxy over TLS (curl, the certificate not checked:
/// it is the test's own), with basic authentication or none: the status
/// and the body.
fn proxy_get(port: u16, path: &str, user: Option<(&str, &str)>) -> (u16, String) {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "-o", "-", "-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"));
    if let Some((u, p)) = user {
        curl.args(["--user", &format!("{u}:{p}")]);
    }
    let out = curl.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn ohif_dist() -> PathBuf {
    let dist = repo_root().join(".cache/vigie/ohif/3.13.2/dist");
    assert!(
        dist.join("index.html").is_file(),
        "OHIF's dist/ is fetched by scripts/setup.sh"
    );
    dist
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx (installed by scripts/setup.sh)")
}

/// The shipped proxy configuration, filled in for loopback.
fn start_proxy(dir: &Path, vigie: &Vigie, port: u16) -> Proxy {
    std::fs::create_dir_all(dir).unwrap();
    let app_config = dir.join("app-config.js");
    std::fs::copy(repo_root().join("deploy/ohif-app-config.js"), &app_config).unwrap();
    // The viewer's user, as `openssl passwd -apr1` writes it for nginx.
    let hash = Command::new("openssl")
        .args(["passwd", "-apr1", VIEWER_PASSWORD])
        .output()
        .expect("openssl");
    assert!(hash.status.success());
    // The proxy's TLS certificate, self-signed for the loopback address.
    let (certificate, key) = (dir.join("viewer.crt"), dir.join("viewer.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("{VIEWER_USER}:{}", String::from_utf8_lossy(&hash.stdout)),
    )
    .unwrap();
    let conf = std::fs::read_to_string(repo_root().join("deploy/nginx-ohif.conf"))
        .unwrap()
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
        .replace("@OHIF_DIST@", &ohif_dist().display().to_string())
        .replace("@APP_CONFIG@", &app_config.display().to_string())
        .replace("@HTPASSWD@", &htpasswd.display().to_string())
        .replace("@CERTIFICATE@", &certificate.display().to_string())
        .replace("@PRIVATE_KEY@", &key.display().to_string())
        .replace("@VIGIE@", &format!("http://127.0.0.1:{}", vigie.http))
        .replace("@TOKEN@", token("reader"));
    let left = placeholders(&conf);
    assert!(left.is_empty(), "placeholders left: {left:?}");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // As root, nginx's workers would run as another user, who cannot read
    // the test's private folders.
    let user = if nix_is_root() { "user root;" } else { "" };
    let child = Command::new(nginx())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", &format!("daemon off; {user}")])
        .spawn()
        .expect("nginx starts");
    let proxy = Proxy(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx listens");
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn ohif_lists_the_studies_shows_the_image_and_the_ai_result() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let vigie = Vigie::start(tmp.path(), &base_config(ROUTE_AND_SUMMARY));
    let r = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"; boundary=XyZ-42",
        )],
        &multipart(&demo, "XyZ-42"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    vigie.wait_for("2 jobs done", Duration::from_secs(180), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 2
    });
    let (study, _, _) = uids(&demo[0]);
    // The summary image Vigie created, as stored.
    let found = vigie
        .http(
            "GET",
            &format!("/dicomweb/studies/{study}/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.7"),
            Some(token("reader")),
            &[],
            b"",
        )
        .json();
    let summary = &found[0];
    let summary_series = summary["0020000E"]["Value"][0]
        .as_str()
        .unwrap()
        .to_string();
    let summary_sop = summary["00080018"]["Value"][0]
        .as_str()
        .unwrap()
        .to_string();
    let r = vigie.http(
        "GET",
        &format!("/dicomweb/studies/{study}/series/{summary_series}/instances/{summary_sop}"),
        Some(token("reader")),
        &[(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )],
        b"",
    );
    assert_eq!(r.status, 200);
    let summary_file = tmp.path().join("summary.dcm");
    std::fs::write(&summary_file, only_part(&r)).unwrap();

    let port = free_port();
    let _proxy = start_proxy(&tmp.path().join("nginx"), &vigie, port);
    let shots = repo_root().join("target/test-artifacts/ohif");
    // Closed without the viewer's credentials; with them, the DICOMweb
    // answers carry URIs of the proxy's origin.
    let (status, _) = proxy_get(port, "/", None);
    assert_eq!(status, 401, "the proxy is closed without a user");
    // A refused search whose query names a patient: nginx's error log
    // quotes request lines, so it is kept at crit (nothing of this).
    let (status, _) = proxy_get(
        port,
        "/dicomweb/studies?PatientName=SECRET%5EPATIENT",
        Some((VIEWER_USER, "wrong")),
    );
    assert_eq!(status, 401);
    let (status, body) = proxy_get(
        port,
        &format!("/dicomweb/studies/{study}/metadata"),
        Some((VIEWER_USER, VIEWER_PASSWORD)),
    );
    assert_eq!(status, 200, "{body}");
    // BulkDataURIs point at the proxy's origin, https (X-Forwarded-Proto):
    // an http one would be blocked on the https page.
    assert!(
        body.contains(&format!(
            "\"BulkDataURI\":\"https://127.0.0.1:{port}/dicomweb/studies/{study}/"
        )),
        "BulkDataURIs point at the proxy: {body}"
    );
    let description = |file: &Path| {
        dicom_object::open_file(file)
            .unwrap()
            .element(dicom_dictionary_std::tags::STUDY_DESCRIPTION)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    let out = oracle(
        "ohif_viewer.py",
        [
            format!("https://127.0.0.1:{port}"),
            format!("{VIEWER_USER}:{VIEWER_PASSWORD}"),
            shots.display().to_string(),
            study.clone(),
            description(&demo[0]),
            summary["00200011"]["Value"][0].to_string(),
            demo[0].display().to_string(),
            summary_file.display().to_string(),
        ],
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |key: &str| seen[key].as_str().unwrap().to_string();
    let number = |key: &str| seen[key].as_f64().unwrap();
    // The study list: both studies, with what they hold.
    let list = text("study_list_text");
    for file in &demo {
        let description = description(file);
        assert!(
            list.contains(&description),
            "{description} in the list: {list}"
        );
    }
    assert!(list.contains("MR\\SR"), "{list}");
    // The study: its image, drawn as stored (OHIF's canvas against the
    // instance with its window), and the series Vigie added.
    // Chosen in the list, the study opened in OHIF's viewer.
    assert!(text("viewer_url").contains(&study), "{seen:#}");
    assert!(
        number("image_correlation") > 0.97 && number("image_mad") < 12.0,
        "the image OHIF drew is the stored one, in its window: {seen:#}"
    );
    let viewer = text("viewer_text");
    assert!(
        viewer.contains("AI summary (Vigie)") && viewer.contains("AI SR (Vigie)"),
        "{viewer}"
    );
    // The AI result: the summary image, its banner included, is what the
    // viewport shows (and not the source image again).
    assert!(
        number("summary_correlation") > 0.93 && number("summary_mad") < 12.0,
        "{seen:#}"
    );
    assert!(
        number("summary_vs_source_correlation") < 0.8,
        "the summary image differs from its source where its banner is: {seen:#}"
    );
    // The viewport's overlay names the summary series too.
    let names = |key: &str| text(key).matches("AI summary (Vigie)").count();
    assert!(names("summary_text") > names("viewer_text"), "{seen:#}");
    // What OHIF asked for: QIDO-RS, metadata, frames and thumbnails, every
    // one answered (nginx's access log of /dicomweb).
    let access = std::fs::read_to_string(tmp.path().join("nginx/access.log")).unwrap();
    let dicomweb: Vec<&str> = access
        .lines()
        .filter(|l| l.contains("/dicomweb/"))
        .collect();
    let answered = |part: &str| {
        dicomweb
            .iter()
            .any(|l| l.contains(part) && l.contains("\" 200 "))
    };
    for part in ["/metadata\"", "/frames/1\"", "/thumbnail\"", "/series\""] {
        assert!(
            answered(part),
            "OHIF asked for {part} and got it: {dicomweb:#?}"
        );
    }
    // Every other answer a success; 499 is a request the browser itself
    // gave up (OHIF's prefetch, cut by the next navigation), and one 401 is
    // the refused probe above.
    let failed: Vec<&&str> = dicomweb
        .iter()
        .filter(|l| {
            !["\" 200 ", "\" 204 ", "\" 499 ", "\" 401 "]
                .iter()
                .any(|s| l.contains(s))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "every DICOMweb request answered: {failed:#?}"
    );
    assert_eq!(dicomweb.iter().filter(|l| l.contains("\" 401 ")).count(), 1);
    let errors = std::fs::read_to_string(tmp.path().join("nginx/error.log")).unwrap_or_default();
    assert!(
        !errors.contains("SECRET"),
        "no query string in the error log: {errors}"
    );
    // The proxy logs its users, never a query string (patient names and
    // identifiers travel there).
    assert!(dicomweb.iter().all(|l| !l.contains('?')), "{dicomweb:#?}");
    assert!(dicomweb.iter().all(|l| l.contains(VIEWER_USER)));
    // Vigie audited the reads, under the proxy's token.
    let reads = vigie.audit_records("kind=dicomweb_retrieve");
    assert!(reads.iter().any(|r| {
        let d = r["details"].as_str().unwrap();
        d.contains("\"resource\":\"frames\"") && d.contains("\"token\":\"test-reader\"")
    }));
}
