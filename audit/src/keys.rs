//! The appliance's secrets, created at first start in the data directory
//! with mode 0600: the Ed25519 signing key of the audit checkpoints
//! (`audit-signing.key`) and the site secret of the Patient ID HMAC
//! (`audit-hmac.key`). Both are 32 random bytes, stored as hex.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{AuditError, AuditResult};

/// Read a 32-byte secret from `path`, creating it if absent.
pub fn load_or_create_secret(path: &Path) -> AuditResult<[u8; 32]> {
    let err = |reason: String| AuditError::Key {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|e| err(e.to_string()))?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| err("not 32 bytes of hex".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(hex::encode(secret).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| err(e.to_string()))?;
            }
            Ok(secret)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The signing key in `path` (created if absent).
pub fn signing_key(path: &Path) -> AuditResult<SigningKey> {
    Ok(SigningKey::from_bytes(&load_or_create_secret(path)?))
}

/// The signing key in `path`, which must exist.
pub fn signing_key_existing(path: &Path) -> AuditResult<SigningKey> {
    if !path.is_file() {
        return Err(AuditError::Key {
            path: path.to_path_buf(),
            reason: "no such key file (the service creates it at first start)".into(),
        });
    }
    signing_key(path)
}

/// Parse a hex public key.
pub fn verifying_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|e| e.to_string())?;
    let array = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| "not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&array).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = load_or_create_secret(&path).unwrap();
        let b = load_or_create_secret(&path).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "zz").unwrap();
        assert!(load_or_create_secret(&path).is_err());
    }
}
