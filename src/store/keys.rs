//! Key and version metadata: versions as committed, the key rows with their deletion state,
//! listing and paging, and which soft-deleted keys are due for purge.

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{Error, Result, Store, from_json, to_json};
use crate::model::{
    Attributes, Deletion, KeyKind, KeyName, KeyOps, Origin, PublicKey, Tags, VersionId,
    VersionRecord,
};

/// A key's row: its stored spelling and whether it is soft-deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub name: KeyName,
    pub deletion: Option<Deletion>,
}

impl Store {
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

    /// Removes a purged key's metadata (its rotation policy too) and clears its intent.
    pub fn commit_purged(&self, name: &KeyName, intent: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM rotation_policies WHERE name = ?1",
                [name.as_str()],
            )?;
            tx.execute("DELETE FROM versions WHERE name = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM keys WHERE name = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent])?;
            Ok(())
        })
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
}

/// Inserts a version row under its record's name.
pub(super) fn insert_version(tx: &Transaction, v: &VersionRecord) -> Result<()> {
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

pub(super) const VERSION_COLUMNS: &str = "v.id, v.name, v.kind, v.key_ops, v.enabled, v.nbf, v.exp, v.created, v.updated, v.tags, v.public_key, v.origin";

/// Maps a row of [`VERSION_COLUMNS`]. SQLite errors surface through the outer `Result`; data
/// this code did not write surfaces as `Corrupt` through the inner one.
pub(super) fn version_row(r: &Row) -> rusqlite::Result<Result<VersionRecord>> {
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
}
