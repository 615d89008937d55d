//! SQLite: key metadata, deletion state, intents, principals, role definitions and
//! assignments, and settings. One writer connection, a few readers, WAL with
//! `synchronous=FULL` so an acknowledged commit survives power loss. Every call blocks; the key service runs them on blocking threads.

mod backup;
mod intents;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};

pub use backup::{
    KeySnapshot, LastBackup, RestoreJournal, RoleAssignmentRow, RoleDefinitionRow, Snapshot,
};
pub use intents::OpenIntent;

use crate::auth::PrincipalRow;
use crate::auth::roles::{RoleAssignment, RoleDefinition, RoleType, Scope};
use crate::model::{
    Attributes, Deletion, KeyKind, KeyName, KeyOps, Origin, PublicKey, Tags, VersionId,
    VersionRecord,
};

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

/// A key's row: its stored spelling and whether it is soft-deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub name: KeyName,
    pub deletion: Option<Deletion>,
}

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

    // ----- key versions ---------------------------------------------------------------------

    /// Commits a new version and clears its intent in one transaction. The key row is created
    /// if this is the key's first version; an existing key keeps the spelling it was created
    /// with.
    pub fn commit_new_version(&self, record: &VersionRecord, intent: i64) -> Result<VersionRecord> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO keys(name, created) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                params![record.name.as_str(), record.created],
            )?;
            let canonical: String = tx.query_row(
                "SELECT name FROM keys WHERE name = ?1",
                [record.name.as_str()],
                |r| r.get(0),
            )?;
            let mut stored = record.clone();
            stored.name = KeyName::parse(&canonical)
                .map_err(|_| Error::Corrupt(format!("stored key name {canonical:?}")))?;
            insert_version(tx, &stored)?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            Ok(stored)
        })
    }

    /// Writes a version's mutable fields and clears the intent (if any) in one transaction.
    pub fn commit_update(&self, record: &VersionRecord, intent: Option<i64>) -> Result<()> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE versions SET key_ops = ?2, enabled = ?3, nbf = ?4, exp = ?5, updated = ?6, tags = ?7
                 WHERE id = ?1",
                params![
                    record.version.as_bytes().to_vec(),
                    to_json(&record.ops)?,
                    record.attributes.enabled,
                    record.attributes.not_before,
                    record.attributes.expires,
                    record.updated,
                    to_json(&record.tags)?,
                ],
            )?;
            if changed != 1 {
                return Err(Error::Corrupt(format!("version {} vanished during update", record.version)));
            }
            if let Some(intent) = intent {
                tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            }
            Ok(())
        })
    }

    /// The newest version of a live (not deleted) key.
    pub fn latest(&self, name: &KeyName) -> Result<Option<VersionRecord>> {
        self.read(|c| {
            // Cached statements: this and `version` run on every key operation and get.
            c.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions v JOIN keys k ON k.name = v.name
                 WHERE v.name = ?1 AND k.deleted_date IS NULL ORDER BY v.seq DESC LIMIT 1"
            ))?
            .query_row([name.as_str()], version_row)
            .optional()?
            .transpose()
        })
    }

    /// One version of a live key.
    pub fn version(&self, name: &KeyName, version: VersionId) -> Result<Option<VersionRecord>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions v JOIN keys k ON k.name = v.name
                 WHERE v.name = ?1 AND v.id = ?2 AND k.deleted_date IS NULL"
            ))?
            .query_row(
                params![name.as_str(), version.as_bytes().to_vec()],
                version_row,
            )
            .optional()?
            .transpose()
        })
    }

    /// A page of live keys in name order, each as its newest version, starting after `after`.
    pub fn list_keys(&self, after: Option<&str>, limit: usize) -> Result<Vec<VersionRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM keys k
                 JOIN versions v ON v.seq = (SELECT MAX(seq) FROM versions WHERE name = k.name)
                 WHERE k.deleted_date IS NULL AND k.name > ?1
                 ORDER BY k.name LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after.unwrap_or(""), limit as i64], version_row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// A page of a live key's versions, oldest first, starting after the version with
    /// sequence number `after_seq`. Returns each record with its sequence number.
    pub fn list_versions(
        &self,
        name: &KeyName,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, VersionRecord)>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS}, v.seq FROM versions v JOIN keys k ON k.name = v.name
                 WHERE v.name = ?1 AND k.deleted_date IS NULL AND v.seq > ?2
                 ORDER BY v.seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![name.as_str(), after_seq, limit as i64], |r| {
                let seq: i64 = r.get(12)?;
                Ok(version_row(r)?.map(|rec| (seq, rec)))
            })?;
            rows.map(|r| r?).collect()
        })
    }

    /// The key's row, live or deleted.
    pub fn key_row(&self, name: &KeyName) -> Result<Option<KeyRow>> {
        self.read(|c| {
            c.query_row(
                "SELECT name, deleted_date, scheduled_purge_date FROM keys WHERE name = ?1",
                [name.as_str()],
                key_row,
            )
            .optional()?
            .transpose()
        })
    }

    /// Every version of a key, oldest first, whatever its state.
    pub fn all_versions_of(&self, name: &KeyName) -> Result<Vec<VersionRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.name = ?1 ORDER BY v.seq"
            ))?;
            let rows = stmt.query_map([name.as_str()], version_row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// The newest version of a soft-deleted key, with its deletion state.
    pub fn deleted_latest(&self, name: &KeyName) -> Result<Option<(VersionRecord, Deletion)>> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {VERSION_COLUMNS}, k.deleted_date, k.scheduled_purge_date
                     FROM versions v JOIN keys k ON k.name = v.name
                     WHERE v.name = ?1 AND k.deleted_date IS NOT NULL ORDER BY v.seq DESC LIMIT 1"
                ),
                [name.as_str()],
                deleted_row,
            )
            .optional()?
            .transpose()
        })
    }

    /// A page of soft-deleted keys in name order, each as its newest version.
    pub fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(VersionRecord, Deletion)>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS}, k.deleted_date, k.scheduled_purge_date FROM keys k
                 JOIN versions v ON v.seq = (SELECT MAX(seq) FROM versions WHERE name = k.name)
                 WHERE k.deleted_date IS NOT NULL AND k.name > ?1
                 ORDER BY k.name LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after.unwrap_or(""), limit as i64], deleted_row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// Names of soft-deleted keys whose scheduled purge date has come.
    pub fn due_for_purge(&self, now: i64) -> Result<Vec<KeyName>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name FROM keys WHERE deleted_date IS NOT NULL AND scheduled_purge_date <= ?1
                 ORDER BY scheduled_purge_date",
            )?;
            let rows = stmt.query_map([now], |r| r.get::<_, String>(0))?;
            rows.map(|r| {
                let raw = r?;
                KeyName::parse(&raw).map_err(|_| Error::Corrupt(format!("key name {raw:?}")))
            })
            .collect()
        })
    }

    /// Commits a soft-delete and clears its intent.
    pub fn commit_deleted(&self, name: &KeyName, deletion: Deletion, intent: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE keys SET deleted_date = ?2, scheduled_purge_date = ?3 WHERE name = ?1",
                params![
                    name.as_str(),
                    deletion.deleted_date,
                    deletion.scheduled_purge_date
                ],
            )?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            Ok(())
        })
    }

    /// Commits a recovery and clears its intent.
    pub fn commit_recovered(&self, name: &KeyName, intent: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE keys SET deleted_date = NULL, scheduled_purge_date = NULL WHERE name = ?1",
                [name.as_str()],
            )?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            Ok(())
        })
    }

    /// Removes a purged key's metadata and clears its intent.
    pub fn commit_purged(&self, name: &KeyName, intent: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM versions WHERE name = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM keys WHERE name = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            Ok(())
        })
    }

    /// Switches purge protection on. There is no way to switch it off: the schema refuses.
    pub fn enable_purge_protection(&self) -> Result<()> {
        self.set_meta("purge_protection", "true")
    }

    pub fn purge_protection(&self) -> Result<bool> {
        Ok(self.meta("purge_protection")?.as_deref() == Some("true"))
    }

    /// Every committed version as `(name, version)`, live or deleted, for the reconciler.
    pub fn all_versions(&self) -> Result<Vec<(String, VersionId)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT name, id FROM versions ORDER BY seq")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, raw) = row?;
                let id = VersionId::from_bytes(&raw)
                    .ok_or_else(|| Error::Corrupt("a version id is not 16 bytes".into()))?;
                out.push((name, id));
            }
            Ok(out)
        })
    }

    /// A version by id, whatever the state of its key.
    pub fn version_by_id(&self, version: VersionId) -> Result<Option<VersionRecord>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions v WHERE v.id = ?1"),
                [version.as_bytes().to_vec()],
                version_row,
            )
            .optional()?
            .transpose()
        })
    }

    /// Number of live and deleted keys.
    pub fn key_count(&self) -> Result<u64> {
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    // ----- principals -----------------------------------------------------------------------

    /// Registers a principal together with its first role assignments, in one transaction.
    pub fn insert_principal(
        &self,
        row: &PrincipalRow,
        assignments: &[RoleAssignment],
        now: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO principals(id, name, token_hash, enabled, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.name, row.token_hash, row.enabled, now],
            )?;
            for a in assignments {
                insert_assignment(tx, a, now)?;
            }
            Ok(())
        })
    }

    pub fn principals(&self) -> Result<Vec<PrincipalRow>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, token_hash, enabled, created FROM principals ORDER BY created, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PrincipalRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    token_hash: r.get(2)?,
                    enabled: r.get(3)?,
                    created: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Enables or disables a principal; false if there is none with that id.
    pub fn set_principal_enabled(&self, id: &str, enabled: bool) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE principals SET enabled = ?2 WHERE id = ?1",
                params![id, enabled],
            )? == 1)
        })
    }

    /// Replaces a principal's token hash; false if there is none with that id.
    pub fn set_principal_token(&self, id: &str, token_hash: &[u8]) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE principals SET token_hash = ?2 WHERE id = ?1",
                params![id, token_hash],
            )? == 1)
        })
    }

    /// Removes a principal and every role assignment it holds; false if there is none.
    pub fn delete_principal(&self, id: &str) -> Result<bool> {
        self.write(|tx| {
            tx.execute("DELETE FROM role_assignments WHERE principal_id = ?1", [id])?;
            Ok(tx.execute("DELETE FROM principals WHERE id = ?1", [id])? == 1)
        })
    }

    // ----- role definitions and assignments -------------------------------------------------

    /// The custom role definitions (built-in ones live in the code).
    pub fn custom_roles(&self) -> Result<Vec<RoleDefinition>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, role_name, description, permissions, assignable_scopes
                 FROM role_definitions ORDER BY created, name",
            )?;
            let rows = stmt.query_map([], |r| {
                let permissions: String = r.get(3)?;
                let scopes: String = r.get(4)?;
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, permissions, scopes))
            })?;
            rows.map(|row| {
                let (name, role_name, description, permissions, scopes) = row?;
                Ok(RoleDefinition {
                    name,
                    role_name,
                    description,
                    role_type: RoleType::Custom,
                    permissions: from_json(&permissions, "role permissions")?,
                    assignable_scopes: from_json(&scopes, "assignable scopes")?,
                })
            })
            .collect()
        })
    }

    /// Creates or replaces a custom role definition.
    pub fn put_custom_role(&self, role: &RoleDefinition, now: i64) -> Result<()> {
        let permissions = to_json(&role.permissions)?;
        let scopes = to_json(&role.assignable_scopes)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO role_definitions(name, role_name, description, permissions, assignable_scopes, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT(name) DO UPDATE SET role_name = excluded.role_name,
                    description = excluded.description, permissions = excluded.permissions,
                    assignable_scopes = excluded.assignable_scopes, updated = excluded.updated",
                params![role.name, role.role_name, role.description, permissions, scopes, now],
            )?;
            Ok(())
        })
    }

    /// Removes a custom role definition unless an assignment uses it.
    pub fn delete_custom_role(&self, name: &str) -> Result<RoleRemoval> {
        self.write(|tx| {
            let in_use: i64 = tx.query_row(
                "SELECT count(*) FROM role_assignments WHERE role_definition = ?1",
                [name],
                |r| r.get(0),
            )?;
            if in_use > 0 {
                return Ok(RoleRemoval::InUse(in_use as u64));
            }
            Ok(
                match tx.execute("DELETE FROM role_definitions WHERE name = ?1", [name])? {
                    0 => RoleRemoval::NotFound,
                    _ => RoleRemoval::Removed,
                },
            )
        })
    }

    pub fn role_assignments(&self) -> Result<Vec<RoleAssignment>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, scope, principal_id, role_definition FROM role_assignments
                 ORDER BY created, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            rows.map(|row| {
                let (name, scope, principal_id, role_definition) = row?;
                Ok(RoleAssignment {
                    scope: Scope::parse(&scope).ok_or_else(|| {
                        Error::Corrupt(format!("role assignment scope {scope:?}"))
                    })?,
                    name,
                    principal_id,
                    role_definition,
                })
            })
            .collect()
        })
    }

    /// Adds an assignment; false (and nothing written) if its name is taken.
    pub fn insert_role_assignment(&self, assignment: &RoleAssignment, now: i64) -> Result<bool> {
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM role_assignments WHERE name = ?1)",
                [&assignment.name],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(false);
            }
            insert_assignment(tx, assignment, now)?;
            Ok(true)
        })
    }

    /// Removes an assignment by name; false if there is none.
    pub fn delete_role_assignment(&self, name: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute("DELETE FROM role_assignments WHERE name = ?1", [name])? == 1)
        })
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

/// What removing a custom role definition did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleRemoval {
    Removed,
    NotFound,
    /// Assignments still use it; nothing was removed.
    InUse(u64),
}

/// Inserts a version row under its record's name.
fn insert_version(tx: &Transaction, v: &VersionRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO versions(id, name, kind, key_ops, enabled, nbf, exp, created, updated, tags, public_key, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            v.version.as_bytes().to_vec(),
            v.name.as_str(),
            to_json(&v.kind)?,
            to_json(&v.ops)?,
            v.attributes.enabled,
            v.attributes.not_before,
            v.attributes.expires,
            v.created,
            v.updated,
            to_json(&v.tags)?,
            to_json(&v.public)?,
            v.origin.as_str(),
        ],
    )?;
    Ok(())
}

fn insert_assignment(tx: &Transaction, a: &RoleAssignment, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO role_assignments(name, scope, principal_id, role_definition, created)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            a.name,
            a.scope.to_string(),
            a.principal_id,
            a.role_definition,
            now
        ],
    )?;
    Ok(())
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

fn key_row(r: &Row) -> rusqlite::Result<Result<KeyRow>> {
    let name: String = r.get(0)?;
    let deleted: Option<i64> = r.get(1)?;
    let scheduled: Option<i64> = r.get(2)?;
    Ok(KeyName::parse(&name)
        .map_err(|_| Error::Corrupt(format!("key name {name:?}")))
        .map(|name| KeyRow {
            name,
            deletion: deleted.map(|deleted_date| Deletion {
                deleted_date,
                scheduled_purge_date: scheduled.unwrap_or(deleted_date),
            }),
        }))
}

/// A [`VERSION_COLUMNS`] row followed by `deleted_date, scheduled_purge_date`.
fn deleted_row(r: &Row) -> rusqlite::Result<Result<(VersionRecord, Deletion)>> {
    let deletion = Deletion {
        deleted_date: r.get(12)?,
        scheduled_purge_date: r.get(13)?,
    };
    Ok(version_row(r)?.map(|rec| (rec, deletion)))
}

const VERSION_COLUMNS: &str = "v.id, v.name, v.kind, v.key_ops, v.enabled, v.nbf, v.exp, v.created, v.updated, v.tags, v.public_key, v.origin";

/// Maps a row of [`VERSION_COLUMNS`]. SQLite errors surface through the outer `Result`; data
/// this code did not write surfaces as `Corrupt` through the inner one.
fn version_row(r: &Row) -> rusqlite::Result<Result<VersionRecord>> {
    let id: Vec<u8> = r.get(0)?;
    let name: String = r.get(1)?;
    let kind: String = r.get(2)?;
    let ops: String = r.get(3)?;
    let enabled: bool = r.get(4)?;
    let nbf: Option<i64> = r.get(5)?;
    let exp: Option<i64> = r.get(6)?;
    let created: i64 = r.get(7)?;
    let updated: i64 = r.get(8)?;
    let tags: String = r.get(9)?;
    let public: String = r.get(10)?;
    let origin: String = r.get(11)?;
    Ok((|| {
        Ok(VersionRecord {
            version: VersionId::from_bytes(&id)
                .ok_or_else(|| Error::Corrupt("a version id is not 16 bytes".into()))?,
            name: KeyName::parse(&name)
                .map_err(|_| Error::Corrupt(format!("key name {name:?}")))?,
            kind: from_json::<KeyKind>(&kind, "kind")?,
            ops: from_json::<KeyOps>(&ops, "key_ops")?,
            attributes: Attributes {
                enabled,
                not_before: nbf,
                expires: exp,
            },
            created,
            updated,
            tags: from_json::<Tags>(&tags, "tags")?,
            public: from_json::<PublicKey>(&public, "public key")?,
            origin: Origin::parse(&origin)
                .ok_or_else(|| Error::Corrupt(format!("origin {origin:?}")))?,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Curve, Intent, KeyFamily, PurgeReason};

    fn record(name: &str, created: i64) -> VersionRecord {
        VersionRecord {
            name: KeyName::parse(name).expect("valid test name"),
            version: VersionId::random(),
            kind: KeyKind::Ec { curve: Curve::P256 },
            ops: KeyOps::all_for(KeyFamily::Ec),
            attributes: Attributes::default(),
            created,
            updated: created,
            tags: [("a".to_string(), "b".to_string())].into(),
            public: PublicKey::Ec {
                curve: Curve::P256,
                x: vec![1; 32],
                y: vec![2; 32],
            },
            origin: Origin::Generated,
        }
    }

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

    fn commit(store: &Store, rec: &VersionRecord) -> VersionRecord {
        let intent = store
            .begin_intent(
                &Intent::NewVersion {
                    name: rec.name.clone(),
                    version: rec.version,
                    kind: rec.kind,
                    origin: rec.origin,
                },
                rec.created,
            )
            .expect("intent recorded");
        store
            .commit_new_version(rec, intent)
            .expect("version committed")
    }

    #[test]
    fn versions_round_trip_and_latest_is_newest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        let first = commit(&store, &record("Key-1", 10));
        let mut second = record("key-1", 20);
        second.kind = KeyKind::Rsa { bits: 2048 };
        let second = commit(&store, &second);
        // The key keeps the spelling of its first version.
        assert_eq!(second.name.as_str(), "Key-1");
        let name = KeyName::parse("KEY-1").expect("valid");
        assert_eq!(store.latest(&name).expect("read"), Some(second.clone()));
        assert_eq!(
            store.version(&name, first.version).expect("read"),
            Some(first)
        );
        assert!(store.open_intents().expect("read").is_empty());
        let page = store.list_versions(&name, 0, 1).expect("read");
        assert_eq!(page.len(), 1);
        let rest = store.list_versions(&name, page[0].0, 10).expect("read");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, second);
    }

    #[test]
    fn key_listing_pages_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        for name in ["c", "a", "b"] {
            commit(&store, &record(name, 1));
        }
        let first = store.list_keys(None, 2).expect("read");
        let names: Vec<_> = first.iter().map(|r| r.name.as_str().to_owned()).collect();
        assert_eq!(names, ["a", "b"]);
        let rest = store.list_keys(Some("b"), 2).expect("read");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name.as_str(), "c");
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
    fn deletion_state_moves_a_key_out_of_the_live_views() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        let rec = commit(&store, &record("gone", 5));
        let name = rec.name.clone();
        let deletion = Deletion {
            deleted_date: 6,
            scheduled_purge_date: 100,
        };
        let intent = store
            .begin_intent(
                &Intent::Delete {
                    name: name.clone(),
                    deletion,
                },
                6,
            )
            .expect("intent");
        store
            .commit_deleted(&name, deletion, intent)
            .expect("deleted");
        assert_eq!(store.latest(&name).expect("read"), None);
        assert!(store.list_keys(None, 10).expect("read").is_empty());
        assert_eq!(
            store.deleted_latest(&name).expect("read"),
            Some((rec.clone(), deletion))
        );
        assert_eq!(store.list_deleted(None, 10).expect("read").len(), 1);
        assert!(store.due_for_purge(99).expect("read").is_empty());
        assert_eq!(store.due_for_purge(100).expect("read"), vec![name.clone()]);
        let intent = store
            .begin_intent(
                &Intent::Purge {
                    name: name.clone(),
                    reason: PurgeReason::Client,
                },
                7,
            )
            .expect("intent");
        store.commit_purged(&name, intent).expect("purged");
        assert_eq!(store.key_row(&name).expect("read"), None);
        assert!(store.all_versions().expect("read").is_empty());
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
