//! The HSM-level state of Azure Resource Manager's `managedHSMs` resource (`model::HsmState`),
//! the principal allowed to change it, and the managed identity it was given.

use super::{Result, Store, meta_get, meta_set};
use crate::model::HsmState;

const HSM_STATE: &str = "hsm_state";
const HSM_IDENTITY: &str = "hsm_identity";
/// The principal id of the HSM's operator: the bootstrap administrator, recorded when it is
/// made (`provision`).
pub const OPERATOR: &str = "operator_principal";

impl Store {
    /// The HSM's state; a data dir that never recorded one is live.
    pub fn hsm_state(&self) -> Result<HsmState> {
        self.read(|c| {
            meta_get(c, HSM_STATE)?
                .map(|raw| super::from_json(&raw, HSM_STATE))
                .transpose()
                .map(|s| s.unwrap_or(HsmState::Active))
        })
    }

    pub fn set_hsm_state(&self, state: HsmState) -> Result<()> {
        self.write(|tx| meta_set(tx, HSM_STATE, &super::to_json(&state)?))
    }

    /// The end of an HSM purge, one transaction: every key (with its rotation policy), version,
    /// open intent, role definition and assignment and job is removed and the HSM is
    /// recorded as purged. Principals stay (they are the service's credentials, not the
    /// HSM's content); so do purge protection and the audit chain.
    pub fn commit_hsm_purge(&self, purged: i64) -> Result<()> {
        self.write(|tx| {
            for table in [
                "intents",
                "rotation_policies",
                "versions",
                "keys",
                "role_assignments",
                "role_definitions",
                "jobs",
            ] {
                tx.execute(&format!("DELETE FROM {table}"), [])?;
            }
            meta_set(
                tx,
                HSM_STATE,
                &super::to_json(&HsmState::Purged { purged })?,
            )
        })
    }

    /// The managed identity the HSM resource was given (`update-hsm --mi-user-assigned`), as
    /// the JSON ARM shows it. Recorded and shown only: the backup location needs no
    /// credential.
    pub fn hsm_identity(&self) -> Result<Option<String>> {
        self.meta(HSM_IDENTITY)
    }

    pub fn set_hsm_identity(&self, identity: &str) -> Result<()> {
        self.set_meta(HSM_IDENTITY, identity)
    }

    /// The operator's principal id, if one is recorded.
    pub fn operator(&self) -> Result<Option<String>> {
        self.meta(OPERATOR)
    }
}
