//! The HSM as one resource (Azure Resource Manager's `managedHSMs`): soft-delete of the whole
//! HSM, recovery, and purge. A deleted HSM serves no data-plane request until it is recovered
//! (`gate`); it is purged by the operator once purge protection allows it, or automatically at
//! the end of its retention, as keys are. A purge follows DESIGN §6: the intent (`Purging`) is
//! committed first, then every key object is destroyed, then one transaction removes all key,
//! role and job metadata and records `Purged`; a start that finds `Purging` finishes it.

use std::sync::Arc;

use super::{KeyService, SECONDS_PER_DAY, detached};
use crate::error::{Error, Missing, Reason};
use crate::failpoint;
use crate::model::HsmState;

/// The `meta` row holding the storage account key.
const STORAGE_ACCOUNT_KEY: &str = "storage_account_key";

impl KeyService {
    /// The HSM's state as last read or changed by this process (only this process changes it:
    /// every HSM-level change comes through the service's own API).
    pub fn hsm_state(&self) -> HsmState {
        *self.hsm_state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_cached_hsm_state(&self, state: HsmState) {
        *self.hsm_state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Refuses every data-plane request while the HSM is not live.
    pub fn gate(&self, hsm_name: &str) -> Result<(), Error> {
        match self.hsm_state() {
            HsmState::Active => Ok(()),
            HsmState::Deleted { .. } | HsmState::Purging { .. } => Err(Error::Forbidden {
                message: format!(
                    "The managed HSM '{hsm_name}' is deleted; it serves no request until it is recovered (az keyvault recover --hsm-name {hsm_name})."
                ),
                inner: Some(Reason::HsmDeleted),
            }),
            HsmState::Purged { .. } => Err(Error::NotFound {
                what: Missing::Resource,
                message: format!("The managed HSM '{hsm_name}' was purged."),
            }),
        }
    }

    /// The principal id of the HSM's operator (`store::OPERATOR`).
    pub async fn operator(&self) -> Result<Option<String>, Error> {
        self.blocking_store(|s| s.operator()).await
    }

    /// The resource's managed identity (`Store::hsm_identity`), as JSON.
    pub async fn hsm_identity(&self) -> Result<Option<String>, Error> {
        self.blocking_store(|s| s.hsm_identity()).await
    }

    /// The key of the backup location's storage account (`http/storage.rs`): 64 random bytes
    /// in base64, made at the first call and kept in the database (`meta`), so one per data
    /// dir. Two first calls at once keep one key: the store inserts only if none is there.
    pub async fn storage_account_key(&self) -> Result<zeroize::Zeroizing<String>, Error> {
        use base64::Engine as _;
        let mut raw = zeroize::Zeroizing::new([0u8; 64]);
        getrandom::fill(raw.as_mut()).expect("the OS random number generator is available");
        let fresh = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*raw));
        // Read first: only the first call writes.
        let kept = self
            .blocking_store(move |s| match s.meta(STORAGE_ACCOUNT_KEY)? {
                Some(kept) => Ok(kept),
                None => s.init_meta(STORAGE_ACCOUNT_KEY, &fresh),
            })
            .await?;
        Ok(zeroize::Zeroizing::new(kept))
    }

    pub async fn set_hsm_identity(&self, identity: String) -> Result<(), Error> {
        self.blocking_store(move |s| s.set_hsm_identity(&identity))
            .await
    }

    /// At start-up: reads the HSM's state and finishes a purge a crash interrupted.
    pub async fn load_hsm_state(self: &Arc<Self>) -> Result<HsmState, Error> {
        let state = self.blocking_store(|s| s.hsm_state()).await?;
        self.set_cached_hsm_state(state);
        if let HsmState::Purging { .. } = state {
            tracing::warn!(
                "finishing the purge of the HSM that was under way when the service stopped"
            );
            self.finish_hsm_purge().await?;
        }
        Ok(self.hsm_state())
    }

    /// Soft-deletes the HSM: from the commit on, every data-plane request is refused. Changes
    /// under way finish first (the change lock, as a full restore takes it).
    pub async fn delete_hsm(self: &Arc<Self>) -> Result<HsmState, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _changes = Arc::clone(&this.changes).write_owned().await;
            match this.hsm_state() {
                HsmState::Active => {}
                _ => return Err(not_live()),
            }
            let deleted = this.clock.now();
            let state = HsmState::Deleted {
                deleted,
                scheduled_purge: deleted + i64::from(this.retention_days) * SECONDS_PER_DAY,
            };
            this.blocking_store(move |s| s.set_hsm_state(state)).await?;
            this.set_cached_hsm_state(state);
            Ok(state)
        })
        .await
    }

    /// Brings a soft-deleted HSM back as it was.
    pub async fn recover_hsm(self: &Arc<Self>) -> Result<(), Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _changes = Arc::clone(&this.changes).write_owned().await;
            match this.hsm_state() {
                HsmState::Deleted { .. } => {}
                _ => return Err(not_deleted()),
            }
            this.blocking_store(|s| s.set_hsm_state(HsmState::Active))
                .await?;
            this.set_cached_hsm_state(HsmState::Active);
            Ok(())
        })
        .await
    }

    /// Purges a soft-deleted HSM: refused under purge protection before its scheduled purge
    /// date (`due` is the maintenance task's purge at that date).
    pub async fn purge_hsm(self: &Arc<Self>) -> Result<(), Error> {
        let this = Arc::clone(self);
        detached(async move {
            {
                let _changes = Arc::clone(&this.changes).write_owned().await;
                let HsmState::Deleted {
                    deleted,
                    scheduled_purge,
                } = this.hsm_state()
                else {
                    return Err(not_deleted());
                };
                let protected = this.refresh_purge_protection().await?;
                if protected && this.clock.now() < scheduled_purge {
                    return Err(Error::Forbidden {
                        message: "Purge protection is enabled on this managed HSM: it cannot be purged before its scheduled purge date; it is purged automatically then.".into(),
                        inner: Some(Reason::PurgeProtectionEnabled),
                    });
                }
                let state = HsmState::Purging {
                    deleted,
                    scheduled_purge,
                };
                this.blocking_store(move |s| s.set_hsm_state(state)).await?;
                this.set_cached_hsm_state(state);
            }
            failpoint::hit("hsm_purge.after_intent");
            this.finish_hsm_purge().await
        })
        .await
    }

    /// The maintenance task's part: a deleted HSM whose retention ended is purged.
    pub async fn purge_hsm_if_due(self: &Arc<Self>) -> Result<bool, Error> {
        match self.hsm_state() {
            HsmState::Deleted {
                scheduled_purge, ..
            } if self.clock.now() >= scheduled_purge => {
                self.purge_hsm().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Steps 2 and 3 of a purge whose intent is committed. Idempotent: destroying the key
    /// objects again destroys what is left.
    async fn finish_hsm_purge(self: &Arc<Self>) -> Result<(), Error> {
        let _changes = Arc::clone(&self.changes).write_owned().await;
        let _purges = self.purges.write().await;
        let destroyed = self.hsm.call(|hsm, s| hsm.destroy_all_keys(s)).await?;
        failpoint::hit("hsm_purge.after_token");
        let now = self.clock.now();
        self.blocking_store(move |s| s.commit_hsm_purge(now))
            .await?;
        self.set_cached_hsm_state(HsmState::Purged { purged: now });
        tracing::warn!(
            destroyed,
            "purged the HSM: every key object and all key, role and job metadata are gone"
        );
        Ok(())
    }
}

fn not_live() -> Error {
    Error::Conflict {
        message: "The managed HSM is not live: it is already deleted, or purged.".into(),
        inner: None,
    }
}

fn not_deleted() -> Error {
    Error::Conflict {
        message: "The managed HSM is not in the deleted state.".into(),
        inner: None,
    }
}
