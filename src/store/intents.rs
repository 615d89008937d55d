//! Intents (DESIGN §6) as rows. A row holds a `model::Intent` as JSON with its format version
//! (2); rows that releases before that wrote (format 1: an operation name, and a payload whose
//! shape each operation chose) are read by [`legacy`], so intents a crash left behind are
//! settled after an upgrade.

use rusqlite::params;

use super::{Error, Result, Store};
use crate::model::{Intent, VersionId};

/// The format of the rows this release writes.
const FORMAT: i64 = 2;

/// An intent found open: its row id and what it says, or why it cannot be read (left for an
/// operator; it stops nothing else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenIntent {
    pub id: i64,
    pub intent: Result<Intent, String>,
}

impl Store {
    /// Records an intent and commits it, before the token is touched. Returns its id, which
    /// the transaction that commits the outcome removes.
    pub fn begin_intent(&self, intent: &Intent, now: i64) -> Result<i64> {
        let payload = serde_json::to_value(intent)
            .map_err(|e| Error::Corrupt(format!("an intent does not serialise: {e}")))?;
        // The operation's name is kept in its own column for a person reading the table.
        let op = payload["op"].as_str().unwrap_or_default().to_owned();
        let version = match intent {
            Intent::NewVersion { version, .. } | Intent::Update { version, .. } => Some(*version),
            _ => None,
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO intents(op, name, version, payload, created, format)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    op,
                    intent.name().as_str(),
                    version.map(|v| v.as_bytes().to_vec()),
                    payload.to_string(),
                    now,
                    FORMAT
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Removes an intent whose token change was rolled back or never happened.
    pub fn drop_intent(&self, id: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM intents WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Every open intent, oldest first.
    pub fn open_intents(&self) -> Result<Vec<OpenIntent>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, format, op, name, version, payload FROM intents ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                let (id, format, op, name, version, payload): (
                    i64,
                    i64,
                    String,
                    String,
                    Option<Vec<u8>>,
                    String,
                ) = (
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                );
                let version = version.as_deref().and_then(VersionId::from_bytes);
                let intent = match format {
                    FORMAT => serde_json::from_str(&payload).map_err(|e| e.to_string()),
                    1 => legacy::parse(&op, &name, version, &payload),
                    other => Err(format!("intent format {other} is newer than this release")),
                };
                Ok(OpenIntent { id, intent })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Whether an intent is still open (an operation in flight may have finished it).
    pub fn intent_is_open(&self, id: i64) -> Result<bool> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM intents WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })? > 0,
            )
        })
    }
}

/// The string format of releases before intents were typed: the only place those operation
/// names still appear.
mod legacy {
    use crate::model::{
        Deletion, Intent, KeyKind, KeyName, Origin, PurgeReason, UpdateTarget, VersionId,
    };

    pub(super) fn parse(
        op: &str,
        name: &str,
        version: Option<VersionId>,
        payload: &str,
    ) -> Result<Intent, String> {
        let name = KeyName::parse(name).map_err(|e| e.to_string())?;
        let json = |what: &str| format!("a format-1 {what} intent with an unreadable payload");
        let version_of = |what: &str| {
            version.ok_or_else(|| format!("a format-1 {what} intent without a version"))
        };
        Ok(match op {
            "create" | "import" => Intent::NewVersion {
                name,
                version: version_of(op)?,
                kind: serde_json::from_str::<KeyKind>(payload).map_err(|_| json(op))?,
                origin: if op == "create" {
                    Origin::Generated
                } else {
                    Origin::Imported
                },
            },
            "update" => Intent::Update {
                name,
                version: version_of(op)?,
                target: serde_json::from_str::<UpdateTarget>(payload).map_err(|_| json(op))?,
            },
            "delete" => Intent::Delete {
                name,
                deletion: serde_json::from_str::<Deletion>(payload).map_err(|_| json(op))?,
            },
            "recover" => Intent::Recover { name },
            "purge" => Intent::Purge {
                name,
                reason: if payload == "auto-purge" {
                    PurgeReason::RetentionEnded
                } else {
                    PurgeReason::Client
                },
            },
            "restore" => Intent::Restore {
                name,
                versions: serde_json::from_str::<Vec<VersionId>>(payload).map_err(|_| json(op))?,
            },
            other => {
                return Err(format!(
                    "a format-1 intent of an unknown operation {other:?}"
                ));
            }
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::model::{Curve, KeyOps, Tags};

        /// The payloads exactly as the string-format release wrote them.
        #[test]
        fn every_kind_the_string_format_wrote_is_read() {
            let v = VersionId::random();
            let name = KeyName::parse("k").expect("name");
            let kind = serde_json::to_string(&KeyKind::Ec { curve: Curve::P384 }).expect("kind");
            assert_eq!(
                parse("create", "k", Some(v), &kind),
                Ok(Intent::NewVersion {
                    name: name.clone(),
                    version: v,
                    kind: KeyKind::Ec { curve: Curve::P384 },
                    origin: Origin::Generated
                })
            );
            assert!(matches!(
                parse("import", "k", Some(v), &kind),
                Ok(Intent::NewVersion {
                    origin: Origin::Imported,
                    ..
                })
            ));
            let update = r#"{"ops":["sign"],"enabled":false,"nbf":null,"exp":5,"tags":{"a":"b"},"updated":7}"#;
            match parse("update", "k", Some(v), update) {
                Ok(Intent::Update {
                    target, version, ..
                }) => {
                    assert_eq!(version, v);
                    assert_eq!(target.exp, Some(5));
                    assert!(!target.enabled);
                    assert_ne!(target.ops, KeyOps::none());
                    assert_ne!(target.tags, Tags::default());
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                parse(
                    "delete",
                    "k",
                    None,
                    r#"{"deleted_date":1,"scheduled_purge_date":2}"#
                ),
                Ok(Intent::Delete {
                    name: name.clone(),
                    deletion: Deletion {
                        deleted_date: 1,
                        scheduled_purge_date: 2
                    }
                })
            );
            assert_eq!(
                parse("recover", "k", None, "{}"),
                Ok(Intent::Recover { name: name.clone() })
            );
            assert_eq!(
                parse("purge", "k", None, "auto-purge"),
                Ok(Intent::Purge {
                    name: name.clone(),
                    reason: PurgeReason::RetentionEnded
                })
            );
            assert_eq!(
                parse("purge", "k", None, "purge"),
                Ok(Intent::Purge {
                    name: name.clone(),
                    reason: PurgeReason::Client
                })
            );
            assert_eq!(
                parse("restore", "k", None, &format!(r#"["{v}"]"#)),
                Ok(Intent::Restore {
                    name,
                    versions: vec![v]
                })
            );
            assert!(parse("create", "k", None, &kind).is_err());
            assert!(parse("frobnicate", "k", None, "{}").is_err());
            assert!(parse("delete", "k", None, "{}").is_err());
        }
    }
}
