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
