//! Key rotation policies: one row per key, kept through soft-delete and recovery, removed with
//! the key; and the live keys whose policy can make them due, with their newest version's times.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Error, Result, Store, from_json, to_json};
use crate::model::{KeyName, PolicyRecord, RotationPolicy};

/// A live key with a rotation policy, and what its due date is counted from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationCandidate {
    pub name: KeyName,
    pub policy: RotationPolicy,
    /// The newest version's creation and expiry.
    pub created: i64,
    pub expires: Option<i64>,
}

impl RotationCandidate {
    pub fn due_at(&self) -> Option<i64> {
        self.policy.due_at(self.created, self.expires)
    }
}

impl Store {
    /// The policy of a key, live or deleted.
    pub fn rotation_policy(&self, name: &KeyName) -> Result<Option<PolicyRecord>> {
        self.read(|c| policy_of(c, name))
    }

    /// Sets a live key's policy in one transaction (keeping when it was first set); `None`,
    /// writing nothing, if no live key has the name.
    pub fn set_rotation_policy(
        &self,
        name: &KeyName,
        policy: &RotationPolicy,
        now: i64,
    ) -> Result<Option<PolicyRecord>> {
        self.write(|tx| {
            let live: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM keys WHERE name = ?1 AND deleted_date IS NULL)",
                [name.as_str()],
                |r| r.get(0),
            )?;
            if !live {
                return Ok(None);
            }
            let created = policy_of(tx, name)?.map_or(now, |p| p.created);
            let record = PolicyRecord {
                policy: policy.clone(),
                created,
                updated: now,
            };
            insert_policy(tx, name, &record)?;
            Ok(Some(record))
        })
    }

    /// Every live key whose policy has a trigger, with its newest version's creation and
    /// expiry. Read every maintenance pass; the due dates are computed by the caller.
    pub fn rotation_candidates(&self) -> Result<Vec<RotationCandidate>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT k.name, p.policy, v.created, v.exp FROM rotation_policies p
                 JOIN keys k ON k.name = p.name
                 JOIN versions v ON v.seq = (SELECT MAX(seq) FROM versions WHERE name = k.name)
                 WHERE k.deleted_date IS NULL
                 ORDER BY k.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, policy, created, expires) = row?;
                let policy: RotationPolicy = from_json(&policy, "rotation policy")?;
                if policy.trigger().is_none() {
                    continue;
                }
                out.push(RotationCandidate {
                    name: KeyName::parse(&name)
                        .map_err(|_| Error::Corrupt(format!("key name {name:?}")))?,
                    policy,
                    created,
                    expires,
                });
            }
            Ok(out)
        })
    }
}

/// The policy of a key, on any connection or inside a transaction (backup snapshots).
pub(super) fn policy_of(c: &rusqlite::Connection, name: &KeyName) -> Result<Option<PolicyRecord>> {
    c.query_row(
        "SELECT policy, created, updated FROM rotation_policies WHERE name = ?1",
        [name.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )
    .optional()?
    .map(|(policy, created, updated)| {
        Ok(PolicyRecord {
            policy: from_json(&policy, "rotation policy")?,
            created,
            updated,
        })
    })
    .transpose()
}

/// Writes a key's policy row (a restore writes the one its backup holds).
pub(super) fn insert_policy(tx: &Transaction, name: &KeyName, record: &PolicyRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO rotation_policies(name, policy, created, updated) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET policy = excluded.policy, updated = excluded.updated",
        params![
            name.as_str(),
            to_json(&record.policy)?,
            record.created,
            record.updated
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Attributes, Curve, Deletion, Intent, IsoDuration, KeyFamily, KeyKind, KeyOps, Origin,
        PublicKey, PurgeReason, RotationTrigger, VersionId, VersionRecord,
    };

    fn commit(store: &Store, name: &str, created: i64, exp: Option<i64>) -> VersionRecord {
        let rec = VersionRecord {
            name: KeyName::parse(name).expect("name"),
            version: VersionId::random(),
            kind: KeyKind::Ec { curve: Curve::P256 },
            ops: KeyOps::all_for(KeyFamily::Ec),
            attributes: Attributes {
                expires: exp,
                ..Attributes::default()
            },
            created,
            updated: created,
            tags: Default::default(),
            public: PublicKey::Ec {
                curve: Curve::P256,
                x: vec![1; 32],
                y: vec![2; 32],
            },
            origin: Origin::Generated,
        };
        let intent = store
            .begin_intent(
                &Intent::NewVersion {
                    name: rec.name.clone(),
                    version: rec.version,
                    kind: rec.kind,
                    origin: rec.origin,
                },
                created,
            )
            .expect("intent");
        store.commit_new_version(&rec, intent).expect("committed")
    }

    fn after(raw: &str) -> RotationPolicy {
        RotationPolicy::new(
            Some(RotationTrigger::AfterCreate(
                IsoDuration::parse(raw).expect("duration"),
            )),
            None,
        )
        .expect("policy")
    }

    #[test]
    fn a_policy_lives_and_dies_with_its_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        let name = KeyName::parse("Rot").expect("name");
        assert_eq!(
            store
                .set_rotation_policy(&name, &after("P30D"), 5)
                .expect("write"),
            None,
            "no key, no policy"
        );
        commit(&store, "Rot", 10, None);
        commit(&store, "rot", 20, Some(99));
        let seq = store.state_seq().expect("seq");
        let set = store
            .set_rotation_policy(&KeyName::parse("ROT").expect("name"), &after("P30D"), 30)
            .expect("write")
            .expect("set");
        assert_eq!((set.created, set.updated), (30, 30));
        assert!(
            store.state_seq().expect("seq") > seq,
            "backups hold policies"
        );
        let changed = store
            .set_rotation_policy(&name, &after("P40D"), 40)
            .expect("write")
            .expect("set");
        assert_eq!((changed.created, changed.updated), (30, 40));
        assert_eq!(
            store.rotation_policy(&name).expect("read"),
            Some(changed.clone())
        );

        let candidates = store.rotation_candidates().expect("read");
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].name.as_str(), "Rot", "the key's own spelling");
        assert_eq!(
            (candidates[0].created, candidates[0].expires),
            (20, Some(99))
        );
        assert_eq!(candidates[0].due_at(), Some(20 + 40 * 86_400));

        // Soft-deleted: kept, but neither settable nor a candidate.
        let deletion = Deletion {
            deleted_date: 50,
            scheduled_purge_date: 60,
        };
        let intent = store
            .begin_intent(
                &Intent::Delete {
                    name: name.clone(),
                    deletion,
                },
                50,
            )
            .expect("intent");
        store
            .commit_deleted(&name, deletion, intent)
            .expect("deleted");
        assert_eq!(store.rotation_policy(&name).expect("read"), Some(changed));
        assert!(store.rotation_candidates().expect("read").is_empty());
        assert_eq!(
            store
                .set_rotation_policy(&name, &after("P50D"), 55)
                .expect("write"),
            None
        );

        let intent = store
            .begin_intent(
                &Intent::Purge {
                    name: name.clone(),
                    reason: PurgeReason::Client,
                },
                70,
            )
            .expect("intent");
        store.commit_purged(&name, intent).expect("purged");
        assert_eq!(store.rotation_policy(&name).expect("read"), None);
        commit(&store, "rot", 80, None);
        assert_eq!(
            store.rotation_policy(&name).expect("read"),
            None,
            "a new key starts without one"
        );
    }

    #[test]
    fn a_policy_without_a_trigger_is_no_candidate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.sqlite")).expect("store opens");
        let name = KeyName::parse("k").expect("name");
        commit(&store, "k", 1, None);
        store
            .set_rotation_policy(&name, &RotationPolicy::default(), 2)
            .expect("write")
            .expect("set");
        assert!(store.rotation_candidates().expect("read").is_empty());
    }
}
