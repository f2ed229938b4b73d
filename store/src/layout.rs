//! Where things live under the data directory:
//!
//! ```text
//! <data-dir>/index.sqlite                               catalog (SQLite, WAL)
//! <data-dir>/staging/                                   data sets being received
//! <data-dir>/studies/<Study>/<Series>/<SOPInstance>.dcm received instances
//! <data-dir>/results/<Study>/<Series>/<SOPInstance>.dcm result objects
//! <data-dir>/reserve.bin                                space kept for the index and audit trail
//! <data-dir>/vigie.lock                                 held by the running `vigie serve`
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

    /// The reserve: space held back so that the index and the audit trail
    /// can still write when the disk fills ([`Reserve`]).
    pub fn reserve(&self) -> PathBuf {
        self.root.join("reserve.bin")
    }

    /// Folder of received instances.
    pub fn studies(&self) -> PathBuf {
        self.root.join("studies")
    }

    /// Folder of result objects.
    pub fn results(&self) -> PathBuf {
        self.root.join("results")
    }

    /// Staging folder for data sets being received.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Prior studies retrieved for the job being run:
    /// `priors/<job id>/<n>/` per prior study, removed once the job's
    /// attempt is over (and whatever is left at start, after a crash).
    /// Never indexed, analysed as received, served or routed.
    pub fn priors(&self, job_id: i64) -> PathBuf {
        self.root.join("priors").join(job_id.to_string())
    }

    /// The folder of every job's retrieved priors.
    pub fn all_priors(&self) -> PathBuf {
        self.root.join("priors")
    }

    /// Where a second copy of an instance is kept under the duplicate
    /// policy `keep_both`: `duplicates/<SOP Instance UID>/<SHA-256>.dcm`,
    /// outside `studies/` (never indexed, analysed or served; the orphan
    /// scan leaves it alone).
    pub fn duplicate(&self, instance: &str, sha256: &str) -> vigie_dicom_io::Result<PathBuf> {
        uid::validate(instance)?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(vigie_dicom_io::Error::InvalidUid {
                value: sha256.chars().take(80).collect(),
                reason: "not a SHA-256 in hexadecimal",
            });
        }
        Ok(self
            .root
            .join("duplicates")
            .join(instance)
            .join(format!("{sha256}.dcm")))
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

    /// Files the catalog does not know are found and moved aside, never
    /// over an earlier orphan; a known file is matched on its place under
    /// the data directory, wherever the catalog says that directory was.
    #[test]
    fn orphans_are_files_the_catalog_does_not_know_and_move_aside() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let known = layout.instance("1.2", "1.2.3", "1.2.3.4").unwrap();
        let unknown = layout.instance("1.2", "1.2.3", "1.2.3.5").unwrap();
        let result = layout.results().join("1.2/1.2.9/1.2.9.1.dcm");
        for path in [&known, &unknown, &result] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let earlier = dir.path().join("orphaned/studies/1.2/1.2.3/1.2.3.5.dcm");
        std::fs::create_dir_all(earlier.parent().unwrap()).unwrap();
        std::fs::write(&earlier, b"earlier").unwrap();
        // The catalog knows `known` under the root it had before a restore.
        let elsewhere = PathBuf::from("/old/root/studies/1.2/1.2.3/1.2.3.4.dcm");
        let mut orphans = layout
            .orphans(&std::collections::HashSet::from([elsewhere]))
            .unwrap();
        orphans.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<&PathBuf> = orphans.iter().map(|o| &o.path).collect();
        assert_eq!(paths, [&result, &unknown]);
        assert!(orphans[0].reason.contains("interrupted job"));
        assert_eq!(
            orphans[1].moved_to,
            dir.path().join("orphaned/studies/1.2/1.2.3/1.2.3.5.dcm.1")
        );
        for orphan in &orphans {
            orphan.move_aside().unwrap();
            assert!(!orphan.path.exists() && orphan.moved_to.exists());
        }
        assert_eq!(std::fs::read(&earlier).unwrap(), b"earlier");
        assert!(known.exists());
    }

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

/// Space held back in a pre-allocated file (`reserve.bin`, `storage.reserve_mib`).
/// When a write fails for lack of space, the file is removed, so that the
/// index and the audit trail can record what the peer was told (the
/// refusal); it is allocated again once free space is back above the
/// reserve and the free-space floor.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    released: std::sync::atomic::AtomicBool,
}

impl Reserve {
    /// The reserve of `bytes` at `path`, allocated now if it can be (a
    /// warning otherwise: the disk is already full).
    pub fn new(path: PathBuf, bytes: u64) -> Self {
        let reserve = Self {
            path,
            bytes,
            released: std::sync::atomic::AtomicBool::new(true),
        };
        reserve.allocate();
        reserve
    }

    /// Allocate the file (idempotent); true when it is in place.
    pub fn allocate(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.bytes == 0 {
            return true;
        }
        let allocated = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .and_then(|file| {
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes)
                    .map_err(std::io::Error::from)?;
                file.sync_all()
            });
        match allocated {
            Ok(()) => {
                if self.released.swap(false, Ordering::Relaxed) {
                    tracing::info!(mib = self.bytes >> 20, "storage reserve allocated");
                }
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(error = %e, mib = self.bytes >> 20, "cannot allocate the storage reserve: the disk is nearly full");
                false
            }
        }
    }

    /// Give the space back to the file system (after a write failed for
    /// lack of space); true when it was held.
    pub fn release(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.released.swap(true, Ordering::Relaxed) {
            return false;
        }
        let _ = std::fs::remove_file(&self.path);
        tracing::error!(
            mib = self.bytes >> 20,
            "disk full: the storage reserve was released so that the index and the audit trail can record what happens; instances are refused until space is freed"
        );
        true
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the reserve is released (the alarm `vigie_store_reserve_released`).
    pub fn is_released(&self) -> bool {
        self.bytes > 0 && self.released.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether an error says the disk is full (ENOSPC, EDQUOT, or SQLite's
/// "database or disk is full").
pub fn is_disk_full(text: &str) -> bool {
    text.contains("No space left")
        || text.contains("disk is full")
        || text.contains("Disk quota exceeded")
}

/// A file under `studies/` or `results/` that the catalog does not know
/// (see [`Layout::orphans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// Where it is.
    pub path: PathBuf,
    /// Where it goes: the same place under `orphaned/`, with a `.N` suffix
    /// rather than over an earlier orphan of the same name.
    pub moved_to: PathBuf,
    /// Why it is an orphan (received instance never indexed, result of an
    /// interrupted job attempt).
    pub reason: &'static str,
}

impl Orphan {
    /// Move it to [`Orphan::moved_to`], creating the folders durably.
    pub fn move_aside(&self) -> std::io::Result<()> {
        self.moved_to
            .parent()
            .map_or(Ok(()), create_dir_durably)
            .and_then(|()| std::fs::rename(&self.path, &self.moved_to))
    }
}

impl Layout {
    /// Files under `studies/` and `results/` that are none of `known` (the
    /// catalog's paths): an instance renamed into place whose index commit
    /// failed (a full disk, a crash between the two), a result written by a
    /// job attempt killed before it committed. None was acknowledged or
    /// delivered. Files are matched on their place under the data
    /// directory (`<top>/<study>/<series>/<instance>.dcm`, the last four
    /// components), so a data directory moved or restored elsewhere has no
    /// orphans.
    pub fn orphans(
        &self,
        known: &std::collections::HashSet<PathBuf>,
    ) -> std::io::Result<Vec<Orphan>> {
        let tail = |path: &Path| -> Vec<std::ffi::OsString> {
            let parts: Vec<_> = path.iter().map(|p| p.to_os_string()).collect();
            parts[parts.len().saturating_sub(4)..].to_vec()
        };
        let known: std::collections::HashSet<Vec<std::ffi::OsString>> =
            known.iter().map(|p| tail(p)).collect();
        let mut orphans = Vec::new();
        for (folder, reason) in [
            (
                self.studies(),
                "received instance never indexed (not acknowledged)",
            ),
            (
                self.results(),
                "result of an interrupted job attempt (never committed, never sent)",
            ),
        ] {
            for path in files_under(&folder)? {
                if known.contains(&tail(&path)) {
                    continue;
                }
                let relative = path.strip_prefix(self.root()).unwrap_or(&path);
                let orphaned = self.root().join("orphaned");
                let mut moved_to = orphaned.join(relative);
                let mut n = 1;
                while moved_to.exists() {
                    moved_to = orphaned.join(format!("{}.{n}", relative.display()));
                    n += 1;
                }
                orphans.push(Orphan {
                    path,
                    moved_to,
                    reason,
                });
            }
        }
        Ok(orphans)
    }
}

/// Every regular file under `dir`, recursively (none when it is absent).
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}
