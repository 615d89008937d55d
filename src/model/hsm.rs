//! The HSM as a whole, as Azure Resource Manager presents a `Microsoft.KeyVault/managedHSMs`
//! resource: live, soft-deleted (every data-plane request refused until it is recovered),
//! being purged, or purged. Plain data; the store keeps it, the key service changes it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum HsmState {
    Active,
    /// Soft-deleted at `deleted`; purged automatically at `scheduled_purge` (epoch seconds).
    #[serde(rename_all = "camelCase")]
    Deleted {
        deleted: i64,
        scheduled_purge: i64,
    },
    /// A purge recorded its intent and may have destroyed some key objects; whoever finds
    /// this (the purge itself, or the next start) finishes it.
    #[serde(rename_all = "camelCase")]
    Purging {
        deleted: i64,
        scheduled_purge: i64,
    },
    /// Every key object and all key, role and job metadata are gone; the data dir serves
    /// nothing but the sign-in and the audit log.
    Purged {
        purged: i64,
    },
}

impl HsmState {
    /// Whether the data plane is open.
    pub fn is_active(self) -> bool {
        self == HsmState::Active
    }
}

/// Managed HSM's `securityDomainProperties.activationStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationStatus {
    Active,
    NotActivated,
}

impl ActivationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationStatus::Active => "Active",
            ActivationStatus::NotActivated => "NotActivated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_as_json() {
        for state in [
            HsmState::Active,
            HsmState::Deleted {
                deleted: 1,
                scheduled_purge: 2,
            },
            HsmState::Purging {
                deleted: 1,
                scheduled_purge: 2,
            },
            HsmState::Purged { purged: 3 },
        ] {
            let raw = serde_json::to_string(&state).expect("serialises");
            assert_eq!(
                serde_json::from_str::<HsmState>(&raw).expect("parses"),
                state
            );
        }
        assert!(HsmState::Active.is_active());
        assert!(!HsmState::Purged { purged: 0 }.is_active());
    }
}
