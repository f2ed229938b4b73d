//! Durable storage primitives, shared by Vigie's audit trail
//! (`vigie-audit`) and its catalog (`vigie-store`), which must not depend
//! on each other.
//!
//! Modules and items:
//! - [`file::write_durably`]: a file replaced atomically and durably.
//! - [`open_versioned`]: open (creating) a database for durable writes —
//!   WAL journal, `synchronous=FULL`, a busy timeout — at a known schema
//!   version (`PRAGMA user_version`). An older schema is migrated forward
//!   in one transaction and the caller is told ([`Opened::migrated`]) so
//!   that it can record it; a newer one is refused untouched, by name and
//!   number ([`Error::Newer`]).
//! - [`group_commit`]: concurrent writers share one transaction (one
//!   flush) and each returns once its own items are durable.
//!
//! Errors are [`Error`], naming the database and keeping the SQLite or
//! I/O error as their source.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod file;
pub mod group_commit;

pub use group_commit::{CommitError, GroupCommit};

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

/// Errors of opening a durable database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Its folder cannot be created.
    #[error("{what} {path}: cannot create its folder")]
    CreateFolder {
        /// Which database (`catalog`, `audit trail`).
        what: String,
        /// Database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It cannot be opened or set up (locked, corrupt, not a database).
    #[error("{what} {path}: cannot open")]
    Open {
        /// Which database.
        what: String,
        /// Database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// It was written by a later release, with a schema this binary does
    /// not know. Nothing was written to it.
    #[error(
        "{what} {path}: schema version {found} is newer than this vigie knows (version {known}): it was written by a later release; run that release, or restore a backup made for this one"
    )]
    Newer {
        /// Which database.
        what: String,
        /// Database file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Latest version this binary knows.
        known: u32,
    },
    /// Migrating it forward failed; it was left at version `from`.
    #[error("{what} {path}: migration from schema version {from} to {to} failed")]
    Migrate {
        /// Which database.
        what: String,
        /// Database file.
        path: PathBuf,
        /// Version found.
        from: u32,
        /// Version aimed at.
        to: u32,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A versioned schema: `base` is the schema of the first release
/// (version 1, written `CREATE … IF NOT EXISTS`), then each migration in
/// turn takes it one version up. A database without a version is at
/// version 1 (release 0.1.0 wrote none).
#[derive(Debug, Clone, Copy)]
pub struct Schema<'a> {
    /// Which database, for messages (`catalog`, `audit trail`).
    pub what: &'a str,
    /// Version 1.
    pub base: &'a str,
    /// Migration `i` takes version `i + 1` to `i + 2`.
    pub migrations: &'a [&'a str],
}

impl Schema<'_> {
    /// The version this binary writes.
    pub fn latest(&self) -> u32 {
        1 + self.migrations.len() as u32
    }
}

/// A schema migrated forward at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Version found.
    pub from: u32,
    /// Version now.
    pub to: u32,
}

/// An opened database.
#[derive(Debug)]
pub struct Opened {
    /// The connection, set up for durable writes.
    pub connection: Connection,
    /// The database did not exist (or held nothing) before.
    pub created: bool,
    /// The schema was migrated forward (never for a created one).
    pub migrated: Option<Migration>,
}

/// Open (creating it and its folder) the database at `path` at `schema`'s
/// latest version. The version is read before anything is written, so a
/// newer database is refused untouched; an older one is migrated in one
/// transaction (every step, and the new version, or nothing).
pub fn open_versioned(path: &Path, schema: &Schema<'_>) -> Result<Opened> {
    let what = schema.what;
    let mut connection = open_durable(path, what)?;
    let open_error = |source| Error::Open {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    };
    let latest = schema.latest();
    let found: u32 = connection
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_error)?;
    if found > latest {
        return Err(Error::Newer {
            what: what.into(),
            path: path.to_path_buf(),
            found,
            known: latest,
        });
    }
    if found == latest {
        return Ok(Opened {
            connection,
            created: false,
            migrated: None,
        });
    }
    let tables: u32 = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(open_error)?;
    let created = found == 0 && tables == 0;
    let from = found.max(1);
    let migrate = |connection: &mut Connection| -> rusqlite::Result<()> {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(schema.base)?;
        for migration in &schema.migrations[(from - 1) as usize..] {
            tx.execute_batch(migration)?;
        }
        tx.pragma_update(None, "user_version", latest)?;
        tx.commit()
    };
    migrate(&mut connection).map_err(|source| Error::Migrate {
        what: what.into(),
        path: path.to_path_buf(),
        from,
        to: latest,
        source,
    })?;
    let migrated = (!created && from < latest).then_some(Migration { from, to: latest });
    Ok(Opened {
        connection,
        created,
        migrated,
    })
}

/// Open (creating it and its folder) a SQLite database for durable
/// writes: WAL journal, `synchronous=FULL` (a committed transaction
/// survives a power cut), a busy timeout for other processes. No schema:
/// see [`open_versioned`].
pub fn open_durable(path: &Path, what: &str) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateFolder {
            what: what.into(),
            path: path.to_path_buf(),
            source,
        })?;
    }
    let open_error = |source| Error::Open {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    };
    let connection = Connection::open(path).map_err(open_error)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
        .and_then(|()| connection.busy_timeout(std::time::Duration::from_secs(30)))
        .map_err(open_error)?;
    Ok(connection)
}

/// The schema version of the database at `path` without changing it
/// (`None` when there is no file): for tools and upgrade tests.
pub fn schema_version(path: &Path) -> Result<Option<u32>> {
    if !path.exists() {
        return Ok(None);
    }
    let open_error = |source| Error::Open {
        what: "database".into(),
        path: path.to_path_buf(),
        source,
    };
    let connection = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(open_error)?;
    connection
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map(Some)
        .map_err(open_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: Schema<'static> = Schema {
        what: "test",
        base: "CREATE TABLE IF NOT EXISTS t (a INTEGER);",
        migrations: &[
            "ALTER TABLE t ADD COLUMN b INTEGER NOT NULL DEFAULT 2;",
            "ALTER TABLE t ADD COLUMN c INTEGER NOT NULL DEFAULT 3;",
        ],
    };

    fn version(c: &Connection) -> u32 {
        c.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_is_created_at_the_latest_version_without_a_migration() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open_versioned(&dir.path().join("a/b.sqlite"), &SCHEMA).unwrap();
        assert!(opened.created);
        assert_eq!(opened.migrated, None);
        assert_eq!(version(&opened.connection), 3);
    }

    #[test]
    fn an_unversioned_first_release_database_is_migrated_in_one_step_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA.base).unwrap();
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        drop(c);
        let opened = open_versioned(&path, &SCHEMA).unwrap();
        assert!(!opened.created);
        assert_eq!(opened.migrated, Some(Migration { from: 1, to: 3 }));
        let row: (i64, i64, i64) = opened
            .connection
            .query_row("SELECT a, b, c FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, (1, 2, 3));
        drop(opened);
        let again = open_versioned(&path, &SCHEMA).unwrap();
        assert_eq!(again.migrated, None);
    }

    #[test]
    fn a_failed_migration_leaves_the_database_at_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA.base).unwrap();
        // Column `c` already exists: the second step fails, and the first
        // must be rolled back with it.
        c.execute_batch("ALTER TABLE t ADD COLUMN c INTEGER;")
            .unwrap();
        drop(c);
        let err = open_versioned(&path, &SCHEMA).unwrap_err();
        assert!(
            matches!(err, Error::Migrate { from: 1, to: 3, .. }),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let c = Connection::open(&path).unwrap();
        assert_eq!(version(&c), 0);
        let columns: u32 = c
            .query_row("SELECT count(*) FROM pragma_table_info('t')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(columns, 2, "the first step was rolled back");
    }

    #[test]
    fn a_newer_database_is_refused_untouched_by_name_and_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite");
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 7).unwrap();
        drop(c);
        let err = open_versioned(&path, &SCHEMA).unwrap_err().to_string();
        assert!(
            err.contains("test")
                && err.contains("schema version 7 is newer")
                && err.contains("(version 3)"),
            "{err}"
        );
        assert_eq!(schema_version(&path).unwrap(), Some(7));
        let c = Connection::open(&path).unwrap();
        let tables: u32 = c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
