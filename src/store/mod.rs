//! SQLite: key metadata, deletion state, intents, principals, role definitions and
//! assignments, and settings. One writer connection, a few readers, WAL with
//! `synchronous=FULL` so an acknowledged commit survives power loss. Every call blocks; the key service runs them on blocking threads.
//! This file holds the connections, the error type and settings; the tables have their own
//! files (`keys.rs`, `access.rs`, `intents.rs`, `rotation.rs`, `backup.rs`, and `schema.rs` for
//! migrations).

mod access;
mod backup;
mod hsm;
mod intents;
mod keys;
mod rotation;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

pub use access::RoleRemoval;
pub use backup::{
    KeySnapshot, LastBackup, RestoreJournal, RoleAssignmentRow, RoleDefinitionRow, Snapshot,
};
pub use hsm::OPERATOR;
pub use intents::OpenIntent;
pub use keys::KeyRow;
pub use rotation::RotationCandidate;

// Shared with `backup.rs`, which reads and writes version rows too.
use crate::model::Deletion;
use keys::{VERSION_COLUMNS, insert_version, version_row};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    /// The storage under the database refused: full, read-only, an I/O error, a file that
    /// cannot be opened, or the database busy past the timeout. Not the request's fault and
    /// not a bug; it passes when the storage does.
    #[error("the storage is unavailable ({fault}): {detail}")]
    Unavailable { fault: StorageFault, detail: String },
    #[error("stored data is not what this version of p11vault wrote: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(std::io::Error),
}

/// Why the storage refused, by SQLite's primary result code (or the operating system's error
/// kind), never by message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFault {
    /// `SQLITE_FULL`, `ENOSPC`, `EDQUOT`.
    Full,
    /// `SQLITE_READONLY` (a read-only file or file system, a database file moved away), `EROFS`.
    ReadOnly,
    /// `SQLITE_IOERR`, `EIO`.
    Io,
    /// `SQLITE_CANTOPEN`: the file or its directory cannot be opened.
    CannotOpen,
    /// `SQLITE_BUSY`, `SQLITE_LOCKED` past the busy timeout.
    Busy,
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageFault::Full => "full",
            StorageFault::ReadOnly => "read-only",
            StorageFault::Io => "I/O error",
            StorageFault::CannotOpen => "cannot open",
            StorageFault::Busy => "busy",
        })
    }
}

impl StorageFault {
    fn of_sqlite(err: &rusqlite::Error) -> Option<Self> {
        use rusqlite::ErrorCode as C;
        Some(match err.sqlite_error_code()? {
            C::DiskFull => StorageFault::Full,
            C::ReadOnly => StorageFault::ReadOnly,
            C::SystemIoFailure => StorageFault::Io,
            C::CannotOpen => StorageFault::CannotOpen,
            C::DatabaseBusy | C::DatabaseLocked => StorageFault::Busy,
            _ => return None,
        })
    }

    /// The same faults as the operating system reports them (the audit log, file permissions).
    pub fn of_io(err: &std::io::Error) -> Option<Self> {
        use std::io::ErrorKind as K;
        Some(match err.kind() {
            K::StorageFull | K::QuotaExceeded => StorageFault::Full,
            K::ReadOnlyFilesystem => StorageFault::ReadOnly,
            K::PermissionDenied => StorageFault::CannotOpen,
            _ if err.raw_os_error() == Some(EIO) => StorageFault::Io,
            _ => return None,
        })
    }
}

/// `EIO` on Linux (the standard library has no error kind for it).
const EIO: i32 = 5;

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        match StorageFault::of_sqlite(&err) {
            Some(fault) => Error::Unavailable {
                fault,
                detail: err.to_string(),
            },
            None => Error::Sqlite(err),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        match StorageFault::of_io(&err) {
            Some(fault) => Error::Unavailable {
                fault,
                detail: err.to_string(),
            },
            None => Error::Io(err),
        }
    }
}

impl Error {
    /// The storage fault behind this error, if it is one.
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            Error::Unavailable { fault, .. } => Some(*fault),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_IDLE_READERS: usize = 8;

pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Bumped after every committed write: a copy of a row read at generation `g` is current
    /// while the generation is still `g`.
    generation: AtomicU64,
    /// A connection that only reads `data_version` (see [`Store::data_version`]).
    watch: Mutex<Option<Connection>>,
    /// The storage fault the last write met, until a write succeeds again (for the health
    /// endpoint: reads and key operations go on while writes cannot).
    write_fault: Mutex<Option<StorageFault>>,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let mut writer = Connection::open(path)?;
        // SQLite gives its -wal and -shm files the database file's mode.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        configure(&writer)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        schema::migrate(&mut writer)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            watch: Mutex::new(None),
            write_fault: Mutex::new(None),
        })
    }

    /// The storage fault the last write met, if no write has succeeded since.
    pub fn write_fault(&self) -> Option<StorageFault> {
        *self.write_fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes how a write ended, for [`Store::write_fault`].
    fn noted<R>(&self, result: Result<R>) -> Result<R> {
        let fault = match &result {
            Ok(_) => None,
            Err(e) => match e.fault() {
                Some(fault) => Some(fault),
                // A refusal of another kind says nothing about the storage.
                None => return result,
            },
        };
        let mut noted = self.write_fault.lock().unwrap_or_else(|p| p.into_inner());
        if *noted != fault {
            match fault {
                Some(f) => {
                    tracing::error!(fault = %f, "the database cannot be written; answering 503 to changes until it can")
                }
                None => tracing::info!("the database can be written again"),
            }
            *noted = fault;
        }
        result
    }

    /// Runs `f` on a read connection.
    pub fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&c)?;
                c
            }
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` in one write transaction, committed if `f` succeeds.
    pub fn write<R>(&self, f: impl FnOnce(&Transaction) -> Result<R>) -> Result<R> {
        // A panic inside `f` drops the transaction uncommitted, so the connection behind a
        // poisoned lock is still in a clean state.
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if result.is_ok() {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.noted(result)
    }

    /// Runs `f` on a blocking thread, off the async executor (every store call blocks).
    pub async fn blocking<R: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Store) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let store = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("a store call panicked: {e}"))))?
    }

    /// The write generation: it changes after every committed write (see [`Store::write`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    // ----- settings -------------------------------------------------------------------------

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| meta_get(c, key))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.write(|tx| meta_set(tx, key, value))
    }

    /// Sets (`Some`) and removes (`None`) several settings in one transaction: the steps of
    /// the security domain's state change together or not at all.
    pub fn set_metas(&self, changes: &[(&str, Option<&str>)]) -> Result<()> {
        self.write(|tx| {
            for (key, value) in changes {
                match value {
                    Some(v) => meta_set(tx, key, v)?,
                    None => {
                        tx.execute("DELETE FROM meta WHERE k = ?1", [key])?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Sets a setting of the form `{seq}:…` only if `seq` is larger than the one it holds, and
    /// without moving the write generation: bookkeeping no cached key row depends on (the
    /// audit chain head). Returns whether it was set.
    pub fn advance_sequenced_meta(&self, key: &str, seq: u64, value: &str) -> Result<bool> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current = meta_get(&tx, key)?
                .and_then(|v| v.split(':').next().and_then(|n| n.parse::<u64>().ok()));
            let advance = current.is_none_or(|c| seq > c);
            if advance {
                meta_set(&tx, key, value)?;
            }
            tx.commit()?;
            Ok(advance)
        })();
        self.noted(result)
    }

    /// Sets a setting only if it has no value yet; returns the value in force.
    pub fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO NOTHING",
                params![key, value],
            )?;
            meta_get(tx, key)?.ok_or_else(|| Error::Corrupt(format!("setting {key} vanished")))
        })
    }

    /// Switches purge protection on. There is no way to switch it off: the schema refuses.
    pub fn enable_purge_protection(&self) -> Result<()> {
        self.set_meta("purge_protection", "true")
    }

    pub fn purge_protection(&self) -> Result<bool> {
        Ok(self.meta("purge_protection")?.as_deref() == Some("true"))
    }

    /// A number that changes whenever another connection, or another process, commits to the
    /// database (SQLite's `data_version`, read on a connection kept for this alone). Cheap: it
    /// reads shared memory, not the disk.
    pub fn data_version(&self) -> Result<i64> {
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if watch.is_none() {
            let c = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&c)?;
            *watch = Some(c);
        }
        let conn = watch
            .as_ref()
            .expect("the watch connection was opened above");
        Ok(conn.pragma_query_value(None, "data_version", |r| r.get(0))?)
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // In WAL mode, FULL syncs the log on every commit: an acknowledged key survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT v FROM meta WHERE k = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn meta_set(tx: &Transaction, key: &str, value: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        params![key, value],
    )?;
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(raw: &str, what: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Intent, KeyName};

    #[test]
    fn sqlite_storage_faults_are_typed_by_result_code_and_answered_503() {
        use rusqlite::ffi;
        let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        for (code, fault) in [
            (ffi::SQLITE_FULL, StorageFault::Full),
            (ffi::SQLITE_READONLY, StorageFault::ReadOnly),
            // Extended codes have the primary code's kind.
            (ffi::SQLITE_READONLY_DBMOVED, StorageFault::ReadOnly),
            (ffi::SQLITE_IOERR, StorageFault::Io),
            (ffi::SQLITE_IOERR_WRITE, StorageFault::Io),
            (ffi::SQLITE_CANTOPEN, StorageFault::CannotOpen),
            (ffi::SQLITE_BUSY, StorageFault::Busy),
            (ffi::SQLITE_LOCKED, StorageFault::Busy),
        ] {
            let err = Error::from(failure(code));
            assert_eq!(err.fault(), Some(fault), "{code}");
            assert!(matches!(
                crate::error::Error::from(err),
                crate::error::Error::StorageUnavailable(_)
            ));
        }
        for code in [
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_ERROR,
        ] {
            let err = Error::from(failure(code));
            assert_eq!(err.fault(), None, "{code}");
            assert!(matches!(
                crate::error::Error::from(err),
                crate::error::Error::Internal(_)
            ));
        }
    }

    #[test]
    fn operating_system_faults_are_typed_by_kind() {
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(StorageFault::of_io(&full), Some(StorageFault::Full));
        let rofs = std::io::Error::from_raw_os_error(30);
        assert_eq!(StorageFault::of_io(&rofs), Some(StorageFault::ReadOnly));
        let eio = std::io::Error::from_raw_os_error(EIO);
        assert_eq!(StorageFault::of_io(&eio), Some(StorageFault::Io));
        assert_eq!(StorageFault::of_io(&std::io::Error::other("x")), None);
        assert!(Error::from(full).fault().is_some());
    }

    #[test]
    fn purge_protection_cannot_be_switched_off_even_by_hand() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        assert!(!store.purge_protection().expect("read"));
        store
            .set_meta("purge_protection", "false")
            .expect("off while never on");
        store.enable_purge_protection().expect("switch on");
        assert!(store.purge_protection().expect("read"));
        assert!(store.set_meta("purge_protection", "false").is_err());
        let removed =
            store.write(|tx| Ok(tx.execute("DELETE FROM meta WHERE k = 'purge_protection'", [])?));
        assert!(removed.is_err());
        let reopened = Store::open(&dir.path().join("db.sqlite")).expect("reopens");
        assert!(reopened.purge_protection().expect("read"));
    }

    #[test]
    fn intents_stay_open_until_committed_or_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        let intent = Intent::Recover {
            name: KeyName::parse("k").expect("name"),
        };
        let id = store.begin_intent(&intent, 1).expect("recorded");
        let reopened = Store::open(&dir.path().join("db.sqlite")).expect("reopens");
        let open = reopened.open_intents().expect("read");
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, id);
        assert_eq!(open[0].intent, Ok(intent));
        assert!(reopened.intent_is_open(id).expect("read"));
        reopened.drop_intent(id).expect("dropped");
        assert!(store.open_intents().expect("read").is_empty());
    }
}
