//! The key lifecycle as one pure function: given the state a key is in and what a request asks,
//! what happens. The key service asks it before every operation, so the rules of DESIGN §1 live
//! in one place and are tested for every state × event.

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Create or import a version (a new key, or a new version of an existing one).
    Create,
    /// Read, update, rotate, or use a key.
    Use,
    Delete,
    Recover,
    /// Purge requested by a client.
    Purge,
    /// Purge by the service at the end of retention.
    AutoPurge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    /// 404: no such (live) key.
    NotFound,
    /// 404: no such deleted key.
    DeletedNotFound,
    /// 409: the name belongs to a soft-deleted key; recover or purge it first.
    NameReserved,
    /// 403: purge protection forbids purging before the scheduled purge date.
    PurgeProtected,
    /// Nothing to do (the background purge found the key not due, or gone).
    Skip,
}

pub fn decide(state: KeyState, event: Event) -> Decision {
    use Decision::*;
    use Event::*;
    use KeyState::*;
    match (state, event) {
        (Absent | Active, Create) => Proceed,
        (Deleted { .. }, Create) => NameReserved,

        (Active, Use | Delete) => Proceed,
        (Absent | Deleted { .. }, Use | Delete) => NotFound,

        (Deleted { .. }, Recover) => Proceed,
        (Absent | Active, Recover) => DeletedNotFound,

        (
            Deleted {
                purge_allowed: true,
                ..
            },
            Purge,
        ) => Proceed,
        (
            Deleted {
                purge_allowed: false,
                ..
            },
            Purge,
        ) => PurgeProtected,
        (Absent | Active, Purge) => DeletedNotFound,

        (
            Deleted {
                purge_due: true, ..
            },
            AutoPurge,
        ) => Proceed,
        (
            Deleted {
                purge_due: false, ..
            }
            | Absent
            | Active,
            AutoPurge,
        ) => Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    const EVENTS: [Event; 6] = [
        Event::Create,
        Event::Use,
        Event::Delete,
        Event::Recover,
        Event::Purge,
        Event::AutoPurge,
    ];

    /// Every state × event, as a table a reviewer reads.
    #[test]
    fn every_state_and_event() {
        let mut table = String::new();
        for state in STATES {
            for event in EVENTS {
                table.push_str(&format!(
                    "{state:?} + {event:?} => {:?}\n",
                    decide(state, event)
                ));
            }
        }
        let expected = "\
Absent + Create => Proceed
Absent + Use => NotFound
Absent + Delete => NotFound
Absent + Recover => DeletedNotFound
Absent + Purge => DeletedNotFound
Absent + AutoPurge => Skip
Active + Create => Proceed
Active + Use => Proceed
Active + Delete => Proceed
Active + Recover => DeletedNotFound
Active + Purge => DeletedNotFound
Active + AutoPurge => Skip
Deleted { purge_allowed: true, purge_due: false } + Create => NameReserved
Deleted { purge_allowed: true, purge_due: false } + Use => NotFound
Deleted { purge_allowed: true, purge_due: false } + Delete => NotFound
Deleted { purge_allowed: true, purge_due: false } + Recover => Proceed
Deleted { purge_allowed: true, purge_due: false } + Purge => Proceed
Deleted { purge_allowed: true, purge_due: false } + AutoPurge => Skip
Deleted { purge_allowed: true, purge_due: true } + Create => NameReserved
Deleted { purge_allowed: true, purge_due: true } + Use => NotFound
Deleted { purge_allowed: true, purge_due: true } + Delete => NotFound
Deleted { purge_allowed: true, purge_due: true } + Recover => Proceed
Deleted { purge_allowed: true, purge_due: true } + Purge => Proceed
Deleted { purge_allowed: true, purge_due: true } + AutoPurge => Proceed
Deleted { purge_allowed: false, purge_due: false } + Create => NameReserved
Deleted { purge_allowed: false, purge_due: false } + Use => NotFound
Deleted { purge_allowed: false, purge_due: false } + Delete => NotFound
Deleted { purge_allowed: false, purge_due: false } + Recover => Proceed
Deleted { purge_allowed: false, purge_due: false } + Purge => PurgeProtected
Deleted { purge_allowed: false, purge_due: false } + AutoPurge => Skip
Deleted { purge_allowed: false, purge_due: true } + Create => NameReserved
Deleted { purge_allowed: false, purge_due: true } + Use => NotFound
Deleted { purge_allowed: false, purge_due: true } + Delete => NotFound
Deleted { purge_allowed: false, purge_due: true } + Recover => Proceed
Deleted { purge_allowed: false, purge_due: true } + Purge => PurgeProtected
Deleted { purge_allowed: false, purge_due: true } + AutoPurge => Proceed
";
        assert_eq!(table, expected);
    }
}
