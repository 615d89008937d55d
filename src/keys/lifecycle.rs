//! The key lifecycle as one pure function: given the state a key is in and the change a request
//! (or the service) asks for, the intent to record — or the refusal. The key service asks it
//! before every change that reaches the token, so the rules of DESIGN §1 live in one place and
//! are tested for every state × event.

use crate::model::{
    Deletion, Intent, KeyKind, KeyName, Origin, PurgeReason, UpdateTarget, VersionId,
};

/// What state a key name is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// No key of this name (never created, or purged).
    Absent,
    Active,
    /// Soft-deleted. `purge_allowed` is false while purge protection holds it until its
    /// scheduled purge date.
    Deleted {
        purge_allowed: bool,
        purge_due: bool,
    },
}

/// A change asked of a key, with what its intent will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Create, import or rotate: a new version (of a new key, or of an existing one).
    Create {
        version: VersionId,
        kind: KeyKind,
        origin: Origin,
    },
    /// New operations, attributes or tags for one version.
    Update {
        version: VersionId,
        target: UpdateTarget,
    },
    Delete {
        deletion: Deletion,
    },
    Recover,
    /// Purge requested by a client.
    Purge,
    /// Purge by the service at the end of retention.
    AutoPurge,
    /// A key backup restored under its name.
    Restore {
        versions: Vec<VersionId>,
    },
}

/// Why a change is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 404: no such (live) key.
    NotFound,
    /// 404: no such deleted key.
    DeletedNotFound,
    /// 409: the name belongs to a soft-deleted key; recover or purge it first.
    NameReserved,
    /// 409: a live key has the name (a backup is restored only under a free name).
    NameTaken,
    /// 403: purge protection forbids purging before the scheduled purge date.
    PurgeProtected,
}

/// The intent to record for `event` on `name` in `state`; `Ok(None)` when there is nothing to
/// do (the background purge found the key not due, or gone).
pub fn decide(name: &KeyName, state: KeyState, event: Event) -> Result<Option<Intent>, Refusal> {
    use KeyState::{Absent, Active, Deleted};
    let name = name.clone();
    match (state, event) {
        (
            Absent | Active,
            Event::Create {
                version,
                kind,
                origin,
            },
        ) => Ok(Some(Intent::NewVersion {
            name,
            version,
            kind,
            origin,
        })),
        (Deleted { .. }, Event::Create { .. }) => Err(Refusal::NameReserved),

        (Active, Event::Update { version, target }) => Ok(Some(Intent::Update {
            name,
            version,
            target,
        })),
        (Active, Event::Delete { deletion }) => Ok(Some(Intent::Delete { name, deletion })),
        (Absent | Deleted { .. }, Event::Update { .. } | Event::Delete { .. }) => {
            Err(Refusal::NotFound)
        }

        (Deleted { .. }, Event::Recover) => Ok(Some(Intent::Recover { name })),
        (Absent | Active, Event::Recover) => Err(Refusal::DeletedNotFound),

        (
            Deleted {
                purge_allowed: true,
                ..
            },
            Event::Purge,
        ) => Ok(Some(Intent::Purge {
            name,
            reason: PurgeReason::Client,
        })),
        (
            Deleted {
                purge_allowed: false,
                ..
            },
            Event::Purge,
        ) => Err(Refusal::PurgeProtected),
        (Absent | Active, Event::Purge) => Err(Refusal::DeletedNotFound),

        (
            Deleted {
                purge_due: true, ..
            },
            Event::AutoPurge,
        ) => Ok(Some(Intent::Purge {
            name,
            reason: PurgeReason::RetentionEnded,
        })),
        (
            Deleted {
                purge_due: false, ..
            }
            | Absent
            | Active,
            Event::AutoPurge,
        ) => Ok(None),

        (Absent, Event::Restore { versions }) => Ok(Some(Intent::Restore { name, versions })),
        (Active, Event::Restore { .. }) => Err(Refusal::NameTaken),
        (Deleted { .. }, Event::Restore { .. }) => Err(Refusal::NameReserved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Curve, KeyOps, Tags};

    const STATES: [KeyState; 6] = [
        KeyState::Absent,
        KeyState::Active,
        KeyState::Deleted {
            purge_allowed: true,
            purge_due: false,
        },
        KeyState::Deleted {
            purge_allowed: true,
            purge_due: true,
        },
        KeyState::Deleted {
            purge_allowed: false,
            purge_due: false,
        },
        // Due means the retention is over, which also ends purge protection's hold; the
        // service never builds this state, and the table shows it would still auto-purge.
        KeyState::Deleted {
            purge_allowed: false,
            purge_due: true,
        },
    ];

    fn events() -> Vec<Event> {
        let version = VersionId::from_bytes(&[7; 16]).expect("16 bytes");
        vec![
            Event::Create {
                version,
                kind: KeyKind::Ec { curve: Curve::P256 },
                origin: Origin::Generated,
            },
            Event::Update {
                version,
                target: UpdateTarget {
                    ops: KeyOps::none(),
                    enabled: true,
                    nbf: None,
                    exp: None,
                    tags: Tags::default(),
                    updated: 1,
                },
            },
            Event::Delete {
                deletion: Deletion {
                    deleted_date: 1,
                    scheduled_purge_date: 2,
                },
            },
            Event::Recover,
            Event::Purge,
            Event::AutoPurge,
            Event::Restore {
                versions: vec![version],
            },
        ]
    }

    /// The decision by name: the kind of intent recorded, or the refusal.
    fn short(decision: Result<Option<Intent>, Refusal>) -> String {
        match decision {
            Ok(None) => "nothing".into(),
            Ok(Some(intent)) => {
                let stored = serde_json::to_value(&intent).expect("serialises");
                let op = stored["op"].as_str().expect("tagged").to_owned();
                match intent {
                    Intent::Purge { reason, .. } => format!("{op} ({reason:?})"),
                    _ => op,
                }
            }
            Err(refusal) => format!("{refusal:?}"),
        }
    }

    fn event_name(event: &Event) -> &'static str {
        match event {
            Event::Create { .. } => "Create",
            Event::Update { .. } => "Update",
            Event::Delete { .. } => "Delete",
            Event::Recover => "Recover",
            Event::Purge => "Purge",
            Event::AutoPurge => "AutoPurge",
            Event::Restore { .. } => "Restore",
        }
    }

    /// Every state × event, as a table a reviewer reads.
    #[test]
    fn every_state_and_event() {
        let name = KeyName::parse("k").expect("name");
        let mut table = String::new();
        for state in STATES {
            for event in events() {
                let label = event_name(&event);
                let decision = decide(&name, state, event);
                if let Ok(Some(intent)) = &decision {
                    assert_eq!(intent.name(), &name);
                }
                table.push_str(&format!("{state:?} + {label} => {}\n", short(decision)));
            }
        }
        let expected = "\
Absent + Create => new_version
Absent + Update => NotFound
Absent + Delete => NotFound
Absent + Recover => DeletedNotFound
Absent + Purge => DeletedNotFound
Absent + AutoPurge => nothing
Absent + Restore => restore
Active + Create => new_version
Active + Update => update
Active + Delete => delete
Active + Recover => DeletedNotFound
Active + Purge => DeletedNotFound
Active + AutoPurge => nothing
Active + Restore => NameTaken
Deleted { purge_allowed: true, purge_due: false } + Create => NameReserved
Deleted { purge_allowed: true, purge_due: false } + Update => NotFound
Deleted { purge_allowed: true, purge_due: false } + Delete => NotFound
Deleted { purge_allowed: true, purge_due: false } + Recover => recover
Deleted { purge_allowed: true, purge_due: false } + Purge => purge (Client)
Deleted { purge_allowed: true, purge_due: false } + AutoPurge => nothing
Deleted { purge_allowed: true, purge_due: false } + Restore => NameReserved
Deleted { purge_allowed: true, purge_due: true } + Create => NameReserved
Deleted { purge_allowed: true, purge_due: true } + Update => NotFound
Deleted { purge_allowed: true, purge_due: true } + Delete => NotFound
Deleted { purge_allowed: true, purge_due: true } + Recover => recover
Deleted { purge_allowed: true, purge_due: true } + Purge => purge (Client)
Deleted { purge_allowed: true, purge_due: true } + AutoPurge => purge (RetentionEnded)
Deleted { purge_allowed: true, purge_due: true } + Restore => NameReserved
Deleted { purge_allowed: false, purge_due: false } + Create => NameReserved
Deleted { purge_allowed: false, purge_due: false } + Update => NotFound
Deleted { purge_allowed: false, purge_due: false } + Delete => NotFound
Deleted { purge_allowed: false, purge_due: false } + Recover => recover
Deleted { purge_allowed: false, purge_due: false } + Purge => PurgeProtected
Deleted { purge_allowed: false, purge_due: false } + AutoPurge => nothing
Deleted { purge_allowed: false, purge_due: false } + Restore => NameReserved
Deleted { purge_allowed: false, purge_due: true } + Create => NameReserved
Deleted { purge_allowed: false, purge_due: true } + Update => NotFound
Deleted { purge_allowed: false, purge_due: true } + Delete => NotFound
Deleted { purge_allowed: false, purge_due: true } + Recover => recover
Deleted { purge_allowed: false, purge_due: true } + Purge => PurgeProtected
Deleted { purge_allowed: false, purge_due: true } + AutoPurge => purge (RetentionEnded)
Deleted { purge_allowed: false, purge_due: true } + Restore => NameReserved
";
        assert_eq!(table, expected);
    }
}
