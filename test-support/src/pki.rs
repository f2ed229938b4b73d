//! Test certificates made by the `openssl` command (Debian's `openssl`
//! package): a certification authority and the leaf certificates it
//! signs, for DICOM TLS tests against real peers. Nothing here is kept
//! beyond the test's temporary folder.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its key, in PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub certificate: PathBuf,
    /// Its private key (PEM, unencrypted).
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certification authority named `name`.
pub fn authority(dir: &Path, name: &str) -> Issued {
    let issued = Issued {
        certificate: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        &format!("/O=Vigie tests/CN={name}"),
        "-keyout",
        issued.key.to_str().unwrap(),
        "-out",
        issued.certificate.to_str().unwrap(),
    ]);
    issued
}

/// A leaf certificate for `name` (also its DNS name), signed by `ca`,
/// usable as server and client certificate; `extra_names` go into the
/// Subject Alternative Name too.
pub fn leaf(dir: &Path, ca: &Issued, name: &str, file: &str, extra_names: &str) -> Issued {
    let issued = Issued {
        certificate: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    let request = dir.join(format!("{file}.csr"));
    let extensions = dir.join(format!("{file}.ext"));
    std::fs::write(
        &extensions,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{name}{extra_names}\n"
        ),
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/O=Vigie tests/CN={name}"),
        "-keyout",
        issued.key.to_str().unwrap(),
        "-out",
        request.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        request.to_str().unwrap(),
        "-CA",
        ca.certificate.to_str().unwrap(),
        "-CAkey",
        ca.key.to_str().unwrap(),
        "-set_serial",
        &serial(),
        "-days",
        "30",
        "-extfile",
        extensions.to_str().unwrap(),
        "-out",
        issued.certificate.to_str().unwrap(),
    ]);
    issued
}

/// A serial number no other certificate of this process has.
fn serial() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("0x{nanos:x}{n:04x}")
}

/// DCMTK's TLS arguments: present `who`, trust `trust`.
pub fn tls_args(who: &Issued, trust: &Issued) -> Vec<String> {
    vec![
        "+tls".into(),
        who.key.display().to_string(),
        who.certificate.display().to_string(),
        "+cf".into(),
        trust.certificate.display().to_string(),
    ]
}
