//! Where things live under the data directory:
//!
//! ```text
//! <data-dir>/index.sqlite                               catalog (SQLite, WAL)
//! <data-dir>/staging/                                   data sets being received
//! <data-dir>/studies/<Study>/<Series>/<SOPInstance>.dcm received instances
//! <data-dir>/results/<Study>/<Series>/<SOPInstance>.dcm result objects
//! ```
//!
//! Every UID is validated (digits and dots, 64 characters at most) before
//! it becomes a path component, so no received value can escape the root.

use std::fs::File;
use std::path::{Path, PathBuf};

use vigie_dicom_io::uid;

/// The data directory's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalog database.
    pub fn database(&self) -> PathBuf {
        self.root.join("index.sqlite")
    }

    /// Staging folder for data sets being received.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn under(
        &self,
        top: &str,
        study: &str,
        series: &str,
        instance: &str,
    ) -> vigie_dicom_io::Result<PathBuf> {
        for value in [study, series, instance] {
            uid::validate(value)?;
        }
        Ok(self
            .root
            .join(top)
            .join(study)
            .join(series)
            .join(format!("{instance}.dcm")))
    }

    /// Where a received instance is stored.
    pub fn instance(
        &self,
        study: &str,
        series: &str,
        instance: &str,
    ) -> vigie_dicom_io::Result<PathBuf> {
        self.under("studies", study, series, instance)
    }

    /// Where a result object is stored.
    pub fn result(
        &self,
        study: &str,
        series: &str,
        instance: &str,
    ) -> vigie_dicom_io::Result<PathBuf> {
        self.under("results", study, series, instance)
    }
}

/// Create `dir` and any missing parents, fsyncing each parent of a newly
/// created folder so the new entries survive a power cut.
pub fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        // create_dir would say "File exists", which reads as success.
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "it exists and is not a directory",
        ));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
        match std::fs::create_dir(dir) {
            Ok(()) => File::open(parent)?.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    } else {
        std::fs::create_dir_all(dir)
    }
}

/// fsync `staged` and rename it to `to`; then fsync the destination
/// folder while `meanwhile` runs on this thread (both wait on the disk;
/// overlapping them lets the file system merge the flushes). Returns once
/// both are done; the folder's error first.
pub fn commit_file_then<T>(
    staged: &Path,
    to: &Path,
    meanwhile: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    // fdatasync: the data and the size; timestamps need not be durable.
    File::open(staged)?.sync_data()?;
    commit_synced_file_then(staged, to, meanwhile)
}

/// [`commit_file_then`] for a staged file whose data the caller has already
/// fdatasynced: rename it to `to`, then fsync the destination folder while
/// `meanwhile` runs on this thread.
pub fn commit_synced_file_then<T>(
    staged: &Path,
    to: &Path,
    meanwhile: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dir = to.parent().unwrap_or(Path::new("."));
    create_dir_durably(dir)?;
    std::fs::rename(staged, to)?;
    let folder = File::open(dir)?;
    std::thread::scope(|scope| {
        let flush = scope.spawn(move || folder.sync_all());
        let result = meanwhile();
        flush
            .join()
            .map_err(|_| std::io::Error::other("folder fsync thread panicked"))??;
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_could_escape_the_root_are_refused() {
        let layout = Layout::new("/data");
        assert_eq!(
            layout.instance("1.2", "1.2.3", "1.2.3.4").unwrap(),
            PathBuf::from("/data/studies/1.2/1.2.3/1.2.3.4.dcm")
        );
        for bad in ["..", "../etc", "1.2/3", "", "1.2.\u{0}"] {
            assert!(layout.instance("1.2", bad, "1.2.3").is_err(), "{bad:?}");
            assert!(layout.result(bad, "1.2", "1.2.3").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_moves_the_file_into_new_folders_and_runs_the_overlapped_work() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("x.part");
        std::fs::write(&staged, b"data").unwrap();
        let to = dir.path().join("a/b/c/x.dcm");
        let answer = commit_file_then(&staged, &to, || Ok(42)).unwrap();
        assert_eq!(answer, 42);
        assert_eq!(std::fs::read(&to).unwrap(), b"data");
        assert!(!staged.exists());
    }
}

/// An exclusive lock on a data directory (`flock` on `vigie.lock` in it),
/// held for the life of the value: one `vigie serve` per data directory.
/// The lock goes with the process, so a crash never leaves it behind.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: std::path::PathBuf,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "data directory {dir} is in use by another vigie process (pid {pid}); stop it first, or give this one its own --data-dir"
    )]
    Held {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The holder's process id as it wrote it, or `unknown`.
        pid: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock data directory {dir}: {source}")]
    Io {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Take the lock on `dir`, or say who holds it. Nothing else in the
    /// directory is touched before this succeeds.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        use std::io::{Read, Seek, Write};
        let io = |source: std::io::Error| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let path = dir.join("vigie.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid
                    },
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
