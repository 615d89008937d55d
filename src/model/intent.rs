//! What a change of the token is going to do, recorded before it is made (DESIGN §6). Each
//! variant carries everything its step needs, so whoever finds it open — this process after a
//! crash, or another node sharing the token and the database — can carry it out or roll it
//! back without asking the process that wrote it.

use serde::{Deserialize, Serialize};

use super::{Deletion, KeyKind, KeyName, KeyOps, Origin, Tags, VersionId};

/// One recorded change. Stored as JSON with a format version (`store::intents`); a new variant
/// is a compile error in the executor and the reconciler until both handle it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// A new version of `name` (a new key, a rotation, an import), made in the token next.
    /// Rolled back after a crash: the client never got an answer.
    NewVersion {
        name: KeyName,
        version: VersionId,
        kind: KeyKind,
        origin: Origin,
    },
    /// A version's mutable fields; `target.ops` decides its token objects' flags. Rolled
    /// forward.
    Update {
        name: KeyName,
        version: VersionId,
        target: UpdateTarget,
    },
    /// A soft-delete of every version of `name`. Rolled forward.
    Delete { name: KeyName, deletion: Deletion },
    /// The recovery of a soft-deleted key. Rolled forward.
    Recover { name: KeyName },
    /// Destroying every object of a soft-deleted key, then its metadata. Rolled forward.
    Purge { name: KeyName, reason: PurgeReason },
    /// A key restored from a backup blob with these versions. Rolled back: nothing was
    /// acknowledged until the one commit that clears it.
    Restore {
        name: KeyName,
        versions: Vec<VersionId>,
    },
}

impl Intent {
    /// The change in words, for the log.
    pub fn what(&self) -> &'static str {
        match self {
            Intent::NewVersion { .. } => "key version",
            Intent::Update { .. } => "version update",
            Intent::Delete { .. } => "soft-delete",
            Intent::Recover { .. } => "recovery",
            Intent::Purge { .. } => "key purge",
            Intent::Restore { .. } => "key restore",
        }
    }

    /// The key the change is about; the reconciler takes its lock before settling it.
    pub fn name(&self) -> &KeyName {
        match self {
            Intent::NewVersion { name, .. }
            | Intent::Update { name, .. }
            | Intent::Delete { name, .. }
            | Intent::Recover { name }
            | Intent::Purge { name, .. }
            | Intent::Restore { name, .. } => name,
        }
    }
}

/// The fields a version will have once an update is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTarget {
    pub ops: KeyOps,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub tags: Tags,
    pub updated: i64,
}

/// Who asked for a purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeReason {
    /// A client, through the API.
    Client,
    /// The service, at the end of the retention period.
    RetentionEnded,
}

impl PurgeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeReason::Client => "a client asked",
            PurgeReason::RetentionEnded => "the retention period ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Curve;

    #[test]
    fn every_variant_round_trips_through_its_stored_form() {
        let name = KeyName::parse("k-1").expect("name");
        let version = VersionId::random();
        let all = [
            Intent::NewVersion {
                name: name.clone(),
                version,
                kind: KeyKind::Ec { curve: Curve::P256 },
                origin: Origin::Imported,
            },
            Intent::Update {
                name: name.clone(),
                version,
                target: UpdateTarget {
                    ops: KeyOps::none(),
                    enabled: false,
                    nbf: Some(1),
                    exp: None,
                    tags: Tags::default(),
                    updated: 9,
                },
            },
            Intent::Delete {
                name: name.clone(),
                deletion: Deletion {
                    deleted_date: 1,
                    scheduled_purge_date: 2,
                },
            },
            Intent::Recover { name: name.clone() },
            Intent::Purge {
                name: name.clone(),
                reason: PurgeReason::RetentionEnded,
            },
            Intent::Restore {
                name: name.clone(),
                versions: vec![version],
            },
        ];
        for intent in all {
            let stored = serde_json::to_string(&intent).expect("serialises");
            let back: Intent = serde_json::from_str(&stored).expect("parses");
            assert_eq!(back, intent, "{stored}");
            assert_eq!(back.name(), &name);
        }
    }
}
