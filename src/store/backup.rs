//! What backups and restores read from and write to the database: a consistent snapshot of
//! everything a full backup holds, the replacement of all of it by a full restore, a single
//! restored key, the backup and restore jobs, and the restore journal.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::rotation::{insert_policy, policy_of};
use super::{
    Deletion, Error, Result, Store, VERSION_COLUMNS, insert_version, meta_get, meta_set, to_json,
    version_row,
};
use crate::model::{FailureKind, Job, JobKind, JobStatus, KeyName, PolicyRecord, VersionRecord};

/// Names of the backup bookkeeping settings.
const STATE_SEQ: &str = "state_seq";
const LAST_FULL_BACKUP: &str = "last_full_backup";
const RESTORE_JOURNAL: &str = "restore_journal";

/// One key with every version, whatever its state, and its rotation policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySnapshot {
    pub name: KeyName,
    pub created: i64,
    pub deletion: Option<Deletion>,
    /// Oldest first.
    pub versions: Vec<VersionRecord>,
    pub rotation_policy: Option<PolicyRecord>,
}

/// A stored custom role definition, as its row holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDefinitionRow {
    pub name: String,
    pub role_name: String,
    pub description: String,
    /// JSON, as stored.
    pub permissions: String,
    /// JSON, as stored.
    pub assignable_scopes: String,
    pub created: i64,
    pub updated: i64,
}

/// A stored role assignment, as its row holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignmentRow {
    pub name: String,
    pub scope: String,
    pub principal_id: String,
    pub role_definition: String,
    pub created: i64,
}

/// Everything a full backup holds, read in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The change counter the snapshot was read at.
    pub state_seq: u64,
    pub purge_protection: bool,
    pub keys: Vec<KeySnapshot>,
    pub role_definitions: Vec<RoleDefinitionRow>,
    pub role_assignments: Vec<RoleAssignmentRow>,
}

/// The last full backup that completed, and the state it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    pub state_seq: u64,
    pub completed: i64,
    pub folder: String,
}

/// A full restore that has passed its point of no return (the journal is committed) and has
/// not finished yet. `file` is the service's own copy of the backup, in the data dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJournal {
    pub job: String,
    pub file: String,
}

impl Store {
    /// Everything a full backup holds, in one read transaction: a key created, deleted or
    /// purged at the same time is wholly in the snapshot or wholly not.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let state_seq = state_seq(&tx)?;
            let purge_protection = meta_get(&tx, "purge_protection")?.as_deref() == Some("true");
            let keys = keys_in(&tx, None)?;
            let role_definitions = {
                let mut stmt = tx.prepare(
                    "SELECT name, role_name, description, permissions, assignable_scopes, created, updated
                     FROM role_definitions ORDER BY created, name",
                )?;
                stmt.query_map([], |r| {
                    Ok(RoleDefinitionRow {
                        name: r.get(0)?,
                        role_name: r.get(1)?,
                        description: r.get(2)?,
                        permissions: r.get(3)?,
                        assignable_scopes: r.get(4)?,
                        created: r.get(5)?,
                        updated: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            let role_assignments = {
                let mut stmt = tx.prepare(
                    "SELECT name, scope, principal_id, role_definition, created
                     FROM role_assignments ORDER BY created, name",
                )?;
                stmt.query_map([], |r| {
                    Ok(RoleAssignmentRow {
                        name: r.get(0)?,
                        scope: r.get(1)?,
                        principal_id: r.get(2)?,
                        role_definition: r.get(3)?,
                        created: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            tx.finish()?;
            Ok(Snapshot {
                state_seq,
                purge_protection,
                keys,
                role_definitions,
                role_assignments,
            })
        })
    }

    /// One key with every version, read in one transaction; `None` if the name is unknown.
    pub fn key_snapshot(&self, name: &KeyName) -> Result<Option<KeySnapshot>> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let key = keys_in(&tx, Some(name))?.pop();
            tx.finish()?;
            Ok(key)
        })
    }

    /// The change counter of everything a full backup holds.
    pub fn state_seq(&self) -> Result<u64> {
        self.read(state_seq)
    }

    pub fn last_full_backup(&self) -> Result<Option<LastBackup>> {
        self.read(|c| {
            meta_get(c, LAST_FULL_BACKUP)?
                .map(|raw| super::from_json(&raw, LAST_FULL_BACKUP))
                .transpose()
        })
    }

    /// Records a completed full backup, its folder, and finishes its job, in one transaction.
    pub fn commit_full_backup(&self, job: &str, last: &LastBackup, now: i64) -> Result<()> {
        self.write(|tx| {
            meta_set(tx, LAST_FULL_BACKUP, &to_json(last)?)?;
            tx.execute(
                "UPDATE jobs SET folder = ?2 WHERE id = ?1",
                params![job, last.folder],
            )?;
            finish_job(
                tx,
                job,
                JobStatus::Succeeded,
                "Full backup completed",
                None,
                now,
            )
        })
    }

    /// Commits a restored key (every version) and clears its intent, in one transaction.
    /// Returns false, writing nothing, if the name is taken after all.
    pub fn commit_restored_key(&self, key: &KeySnapshot, intent: i64) -> Result<bool> {
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM keys WHERE name = ?1)",
                [key.name.as_str()],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(false);
            }
            insert_key(tx, key)?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            Ok(true)
        })
    }

    // ----- full restore ---------------------------------------------------------------------

    pub fn restore_journal(&self) -> Result<Option<RestoreJournal>> {
        self.read(|c| {
            meta_get(c, RESTORE_JOURNAL)?
                .map(|raw| super::from_json(&raw, RESTORE_JOURNAL))
                .transpose()
        })
    }

    /// The point of no return of a full restore: from this commit on, a restart finishes it.
    pub fn begin_restore(&self, journal: &RestoreJournal) -> Result<()> {
        self.write(|tx| meta_set(tx, RESTORE_JOURNAL, &to_json(journal)?))
    }

    /// Replaces every key (with its rotation policy), version, role definition and assignment
    /// with the backup's, drops open intents (their token objects are gone with the old state),
    /// clears the journal and finishes the job — one transaction. Purge protection stays on if
    /// it is on: it is monotonic, and a restore is no way around it.
    pub fn commit_restore(&self, state: &Snapshot, job: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            for table in [
                "intents",
                "rotation_policies",
                "versions",
                "keys",
                "role_assignments",
                "role_definitions",
            ] {
                tx.execute(&format!("DELETE FROM {table}"), [])?;
            }
            for key in &state.keys {
                insert_key(tx, key)?;
            }
            for d in &state.role_definitions {
                tx.execute(
                    "INSERT INTO role_definitions(name, role_name, description, permissions, assignable_scopes, created, updated)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![d.name, d.role_name, d.description, d.permissions, d.assignable_scopes, d.created, d.updated],
                )?;
            }
            for a in &state.role_assignments {
                tx.execute(
                    "INSERT INTO role_assignments(name, scope, principal_id, role_definition, created)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![a.name, a.scope, a.principal_id, a.role_definition, a.created],
                )?;
            }
            keep_first_administrator(tx, &state.role_assignments, now)?;
            if state.purge_protection {
                meta_set(tx, "purge_protection", "true")?;
            }
            tx.execute("DELETE FROM meta WHERE k = ?1", [RESTORE_JOURNAL])?;
            finish_job(tx, job, JobStatus::Succeeded, "Full restore completed", None, now)
        })
    }

    // ----- jobs -----------------------------------------------------------------------------

    pub fn insert_job(&self, job: &Job) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO jobs(id, kind, status, details, start_time, container, folder, key_name, done, total)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    job.id,
                    job.kind.as_str(),
                    job.status.as_str(),
                    job.details,
                    job.start_time,
                    job.container,
                    job.folder,
                    job.key_name,
                    job.done as i64,
                    job.total as i64
                ],
            )?;
            Ok(())
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()?
            .transpose()
        })
    }

    /// Jobs still marked in progress (at start-up: jobs the last run did not finish).
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'InProgress' ORDER BY start_time"
            ))?;
            let rows = stmt.query_map([], job_row)?;
            rows.map(|r| r?).collect()
        })
    }

    pub fn job_progress(&self, id: &str, details: &str, done: u64, total: u64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET details = ?2, done = ?3, total = ?4 WHERE id = ?1",
                params![id, details, done as i64, total as i64],
            )?;
            Ok(())
        })
    }

    pub fn finish_job(
        &self,
        id: &str,
        status: JobStatus,
        details: &str,
        error: Option<(FailureKind, &str)>,
        now: i64,
    ) -> Result<()> {
        self.write(|tx| finish_job(tx, id, status, details, error, now))
    }
}

fn state_seq(c: &Connection) -> Result<u64> {
    meta_get(c, STATE_SEQ)?
        .unwrap_or_else(|| "0".into())
        .parse()
        .map_err(|_| Error::Corrupt(STATE_SEQ.into()))
}

/// Every key (or the one named), each with all its versions oldest first.
fn keys_in(c: &Connection, only: Option<&KeyName>) -> Result<Vec<KeySnapshot>> {
    let filter = if only.is_some() {
        "WHERE name = ?1"
    } else {
        ""
    };
    let mut stmt = c.prepare(&format!(
        "SELECT name, created, deleted_date, scheduled_purge_date FROM keys {filter} ORDER BY name"
    ))?;
    let map = |r: &rusqlite::Row| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    };
    let rows: Vec<_> = match only {
        Some(name) => stmt
            .query_map([name.as_str()], map)?
            .collect::<Result<_, _>>()?,
        None => stmt.query_map([], map)?.collect::<Result<_, _>>()?,
    };
    let mut versions_of = c.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.name = ?1 ORDER BY v.seq"
    ))?;
    let mut keys = Vec::with_capacity(rows.len());
    for (name, created, deleted, scheduled) in rows {
        let versions = versions_of
            .query_map([&name], version_row)?
            .map(|r| r?)
            .collect::<Result<Vec<_>>>()?;
        let name =
            KeyName::parse(&name).map_err(|_| Error::Corrupt(format!("key name {name:?}")))?;
        let rotation_policy = policy_of(c, &name)?;
        keys.push(KeySnapshot {
            name,
            created,
            deletion: deleted.map(|deleted_date| Deletion {
                deleted_date,
                scheduled_purge_date: scheduled.unwrap_or(deleted_date),
            }),
            versions,
            rotation_policy,
        });
    }
    Ok(keys)
}

fn insert_key(tx: &Transaction, key: &KeySnapshot) -> Result<()> {
    tx.execute(
        "INSERT INTO keys(name, created, deleted_date, scheduled_purge_date) VALUES (?1, ?2, ?3, ?4)",
        params![
            key.name.as_str(),
            key.created,
            key.deletion.map(|d| d.deleted_date),
            key.deletion.map(|d| d.scheduled_purge_date)
        ],
    )?;
    for v in &key.versions {
        // Under the key's spelling, whatever the version record says.
        let mut v = v.clone();
        v.name = key.name.clone();
        insert_version(tx, &v)?;
    }
    if let Some(policy) = &key.rotation_policy {
        insert_policy(tx, &key.name, policy)?;
    }
    Ok(())
}

fn finish_job(
    tx: &Transaction,
    id: &str,
    status: JobStatus,
    details: &str,
    error: Option<(FailureKind, &str)>,
    now: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE jobs SET status = ?2, details = ?3, error_code = ?4, error_message = ?5, end_time = ?6
         WHERE id = ?1",
        params![
            id,
            status.as_str(),
            details,
            error.map(|e| e.0.stored_name()),
            error.map(|e| e.1),
            now
        ],
    )?;
    Ok(())
}

const JOB_COLUMNS: &str = "id, kind, status, details, error_code, error_message, start_time, end_time, container, folder, key_name, done, total";

fn job_row(r: &rusqlite::Row) -> rusqlite::Result<Result<Job>> {
    let kind: String = r.get(1)?;
    let status: String = r.get(2)?;
    let code: Option<String> = r.get(4)?;
    let message: Option<String> = r.get(5)?;
    let done: i64 = r.get(11)?;
    let total: i64 = r.get(12)?;
    let (Some(kind), Some(status)) = (JobKind::parse(&kind), JobStatus::parse(&status)) else {
        return Ok(Err(Error::Corrupt(format!(
            "job kind {kind:?} or status {status:?}"
        ))));
    };
    Ok(Ok(Job {
        id: r.get(0)?,
        kind,
        status,
        details: r.get(3)?,
        error: code.map(|c| (FailureKind::from_stored(&c), message.unwrap_or_default())),
        start_time: r.get(6)?,
        end_time: r.get(7)?,
        container: r.get(8)?,
        folder: r.get(9)?,
        key_name: r.get(10)?,
        done: done.max(0) as u64,
        total: total.max(0) as u64,
    }))
}

/// A full restore of another HSM's backup never locks this one out: when the backup's role
/// assignments name none of this data dir's principals (a backup of another HSM, whose
/// principals this one does not have, as in a disaster recovery), the HSM's operator (its
/// first administrator unless handed on), if enabled, keeps the Administrator role at `/`,
/// and can assign the rest. A backup of this HSM is restored as
/// it is, even one in which that principal has no role.
fn keep_first_administrator(
    tx: &Transaction,
    restored: &[RoleAssignmentRow],
    now: i64,
) -> Result<()> {
    for a in restored {
        let ours: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM principals WHERE id = ?1)",
            [&a.principal_id],
            |r| r.get(0),
        )?;
        if ours {
            return Ok(());
        }
    }
    // The HSM's operator (recorded at provisioning, handed on with `principal operator`), or
    // on a data dir that has none recorded, its first administrator.
    let first: Option<String> = tx
        .query_row(
            "SELECT id FROM principals WHERE enabled AND (id = (SELECT v FROM meta WHERE k = ?1)
               OR (NOT EXISTS (SELECT 1 FROM meta WHERE k = ?1) AND name = 'administrator'))
             ORDER BY created, id LIMIT 1",
            [super::OPERATOR],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = first else { return Ok(()) };
    tx.execute(
        "INSERT INTO role_assignments(name, scope, principal_id, role_definition, created)
         VALUES (?1, '/', ?2, ?3, ?4)",
        params![
            uuid::Uuid::new_v4().to_string(),
            id,
            crate::auth::roles::ADMINISTRATOR,
            now
        ],
    )?;
    Ok(())
}
