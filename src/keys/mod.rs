//! The key service: the only code that touches both the metadata store and the token. Every
//! change that reaches the token follows DESIGN §6 — record the intent and commit, change the
//! token, commit the outcome and clear the intent — and runs on its own task, so a client that
//! disconnects half-way cannot stop it between two steps.

mod attestation;
pub mod backup;
pub mod blob;
mod cache;
pub mod crypto;
pub mod domain;
mod executor;
mod hsm_level;
mod identity;
pub mod import;
pub mod lifecycle;
mod reconcile;
mod rotation;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::clock::Clock;
use crate::error::{Error, Reason};
use crate::failpoint;
use crate::hsm::{self, Hsm, ImportMaterial};
use crate::model::Deletion;
use crate::model::{
    Attributes, Intent, KeyKind, KeyName, KeyOps, Origin, PublicKey, Retention, Tags, UpdateTarget,
    VersionId, VersionRecord,
};
use crate::store::Store;
use executor::{Done, Inputs};
use lifecycle::{Event, KeyState, Refusal};

pub use reconcile::ReconcileReport;

/// What a client asks for when creating a key version.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub kind: KeyKind,
    /// The public exponent of a generated RSA key; `None` is 65537. Ignored otherwise.
    pub public_exponent: Option<u32>,
    pub ops: KeyOps,
    pub attributes: Attributes,
    pub tags: Tags,
}

/// A change to a version's mutable fields; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    pub ops: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub not_before: Option<Option<i64>>,
    pub expires: Option<Option<i64>>,
    pub tags: Option<Tags>,
}

/// The page cursor of the key list: the last name of the previous page.
pub type KeyCursor = Option<String>;

const SECONDS_PER_DAY: i64 = 86_400;

pub struct KeyService {
    store: Arc<Store>,
    hsm: Arc<Hsm>,
    clock: Arc<dyn Clock>,
    retention_days: u32,
    /// A cache of the database's flag, for the `recoveryLevel` of responses; decisions to
    /// purge read the database itself.
    purge_protection: AtomicBool,
    locks: NameLocks,
    /// Held shared by every change to keys (and by full backups), exclusively by a full
    /// restore, which replaces everything.
    changes: Arc<tokio::sync::RwLock<()>>,
    /// Held shared by purges (the only change that destroys committed token objects),
    /// exclusively by a full backup while it reads key material.
    purges: tokio::sync::RwLock<()>,
    versions: cache::VersionCache,
    /// The HSM-level state (`hsm_level`), read at start-up and changed only by this process.
    hsm_state: std::sync::RwLock<crate::model::HsmState>,
}

impl KeyService {
    pub fn new(
        store: Arc<Store>,
        hsm: Arc<Hsm>,
        clock: Arc<dyn Clock>,
        retention: Retention,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            hsm,
            clock,
            retention_days: retention.days,
            purge_protection: AtomicBool::new(retention.purge_protection),
            locks: NameLocks::default(),
            changes: Arc::new(tokio::sync::RwLock::new(())),
            purges: tokio::sync::RwLock::new(()),
            versions: cache::VersionCache::default(),
            hsm_state: std::sync::RwLock::new(crate::model::HsmState::Active),
        })
    }

    pub fn retention(&self) -> Retention {
        Retention {
            days: self.retention_days,
            purge_protection: self.purge_protection.load(Ordering::Relaxed),
        }
    }

    /// Switches purge protection on, for good.
    pub async fn enable_purge_protection(&self) -> Result<(), Error> {
        self.blocking_store(|s| s.enable_purge_protection()).await?;
        self.purge_protection.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Re-reads purge protection from the database (the admin CLI may have switched it on).
    pub async fn refresh_purge_protection(&self) -> Result<bool, Error> {
        let on = self.blocking_store(|s| s.purge_protection()).await?;
        self.purge_protection.store(on, Ordering::Relaxed);
        Ok(on)
    }

    /// Serialises changes to one key, and keeps a full restore out while they run.
    async fn lock_key(&self, name: &KeyName) -> KeyGuard {
        let changes = Arc::clone(&self.changes).read_owned().await;
        let name = self.locks.lock(name).await;
        KeyGuard {
            _name: name,
            _changes: changes,
        }
    }

    /// The lifecycle state of a name, read under its lock.
    async fn state_of(&self, name: &KeyName) -> Result<KeyState, Error> {
        let n = name.clone();
        let row = self.blocking_store(move |s| s.key_row(&n)).await?;
        Ok(match row {
            None => KeyState::Absent,
            Some(r) => match r.deletion {
                None => KeyState::Active,
                Some(d) => {
                    let now = self.clock.now();
                    let due = now >= d.scheduled_purge_date;
                    let protected = self.refresh_purge_protection().await?;
                    KeyState::Deleted {
                        purge_allowed: due || !protected,
                        purge_due: due,
                    }
                }
            },
        })
    }

    /// A 400 that names the token's limit when the token cannot hold a key of this kind, as
    /// its profile (probed at the first start) says. Checked before anything is written.
    pub fn refuse_unsupported(&self, kind: KeyKind) -> Result<(), Error> {
        let profile = self.hsm.profile();
        if let KeyKind::Ec { curve } = kind
            && !profile.supports(curve)
        {
            let offered: Vec<&str> = profile.curves.iter().map(|c| c.jwk_name()).collect();
            return Err(Error::BadParameter(format!(
                "The curve {} is not supported by this HSM's token '{}' (it offers {}).",
                curve.jwk_name(),
                self.hsm.token_label(),
                offered.join(", ")
            )));
        }
        if let KeyKind::Rsa { bits } = kind
            && !profile.supports_rsa_bits(u64::from(bits))
            && let Some(rsa) = &profile.rsa
        {
            return Err(Error::BadParameter(format!(
                "RSA keys of {bits} bits are not supported by this HSM's token '{}' (it makes {} to {} bits).",
                self.hsm.token_label(),
                rsa.min_bits,
                rsa.max_bits
            )));
        }
        Ok(())
    }

    /// The error a refusal of the lifecycle is answered with.
    fn refusal(refusal: Refusal, name: &KeyName) -> Error {
        match refusal {
            Refusal::NotFound => not_found(name, None),
            Refusal::DeletedNotFound => {
                Error::KeyNotFound(format!("Deleted Key not found: {name}"))
            }
            Refusal::NameReserved => Error::Conflict {
                message: format!(
                    "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
                ),
                inner: Some(Reason::DeletedButRecoverable),
            },
            Refusal::NameTaken => Error::Conflict {
                message: format!(
                    "A key named {name} already exists; a backup is restored only under a free name (purge or never used)."
                ),
                inner: None,
            },
            Refusal::PurgeProtected => Error::Forbidden {
                message: format!(
                    "Operation \"purge\" is not allowed because purge protection is enabled for this HSM. The service will purge the key {name} automatically after its scheduled purge date."
                ),
                inner: Some(Reason::PurgeProtectionEnabled),
            },
        }
    }

    /// The intent for `event` on `name` as it is now (read under its lock), or the refusal.
    async fn decide(&self, name: &KeyName, event: Event) -> Result<Option<Intent>, Error> {
        let state = self.state_of(name).await?;
        lifecycle::decide(name, state, event).map_err(|r| Self::refusal(r, name))
    }

    /// Soft-deletes a key and all its versions (DESIGN §5), returning the newest version and
    /// the deletion state.
    pub async fn delete(
        self: &Arc<Self>,
        name: KeyName,
    ) -> Result<(VersionRecord, Deletion), Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            let now = this.clock.now();
            let deletion = Deletion {
                deleted_date: now,
                scheduled_purge_date: now + i64::from(this.retention_days) * SECONDS_PER_DAY,
            };
            let intent = this
                .decide(&name, Event::Delete { deletion })
                .await?
                .ok_or_else(|| Error::Internal("a delete decided nothing".into()))?;
            let id = this.begin(&intent).await?;
            let versions = this.carry_out_all(id, &intent).await?;
            let latest = versions
                .into_iter()
                .last()
                .ok_or_else(|| Error::Internal(format!("key {name} has no versions")))?;
            Ok((latest, deletion))
        })
        .await
    }

    /// Carries out an intent that needs nothing but itself and answers the versions it touched.
    async fn carry_out_all(
        self: &Arc<Self>,
        id: i64,
        intent: &Intent,
    ) -> Result<Vec<VersionRecord>, Error> {
        match self.carry_out(id, intent, Inputs::None, false).await? {
            Done::Versions(versions) => Ok(versions),
            Done::Version(version) => Ok(vec![version]),
        }
    }

    /// The token half of a delete: every version's objects switched off and relabelled. With
    /// `thorough` (the reconciler, after a crash), each version is settled from whatever the
    /// token holds; otherwise the cached objects are switched. Idempotent either way.
    async fn settle_delete(
        self: &Arc<Self>,
        name: &KeyName,
        thorough: bool,
    ) -> Result<Vec<VersionRecord>, Error> {
        let n = name.clone();
        let versions = self.blocking_store(move |s| s.all_versions_of(&n)).await?;
        for (i, v) in versions.iter().enumerate() {
            let from = hsm::Look::live(v.ops.clone());
            self.move_version(v, from, hsm::Look::deleted(), thorough)
                .await?;
            if i == 0 {
                failpoint::hit("delete.mid_token");
            }
        }
        failpoint::hit("delete.after_token");
        Ok(versions)
    }

    /// Moves one version's objects between two looks (see `hsm::replace`). A version whose
    /// objects are missing is reported and must not stop the key's other versions.
    async fn move_version(
        self: &Arc<Self>,
        v: &VersionRecord,
        from: hsm::Look,
        to: hsm::Look,
        thorough: bool,
    ) -> Result<(), Error> {
        let record = v.clone();
        let moved = self
            .hsm
            .call(move |hsm, s| {
                let version = hsm::Version {
                    id: record.version,
                    name: record.name.as_str(),
                    kind: record.kind,
                    public: &record.public,
                };
                if thorough {
                    hsm.settle_version(s, version, &from, &to)
                } else {
                    hsm.transition(s, version, &from, &to)
                        .map(|()| hsm::Settled::Done)
                }
            })
            .await;
        match moved {
            Ok(hsm::Settled::Done) => Ok(()),
            Ok(hsm::Settled::Missing) | Err(hsm::Error::ObjectMissing(_)) => {
                tracing::error!(key = %v.name, version = %v.version, "no intact token objects to switch for this version");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Recovers a soft-deleted key with all its versions, attributes and tags.
    pub async fn recover(self: &Arc<Self>, name: KeyName) -> Result<VersionRecord, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            let intent = this
                .decide(&name, Event::Recover)
                .await?
                .ok_or_else(|| Error::Internal("a recovery decided nothing".into()))?;
            let id = this.begin(&intent).await?;
            this.carry_out_all(id, &intent)
                .await?
                .into_iter()
                .last()
                .ok_or_else(|| Error::Internal(format!("key {name} has no versions")))
        })
        .await
    }

    /// The token half of a recovery: every version's flags restored from its `key_ops`.
    /// `thorough` as for [`KeyService::settle_delete`].
    async fn settle_recover(
        self: &Arc<Self>,
        name: &KeyName,
        thorough: bool,
    ) -> Result<Vec<VersionRecord>, Error> {
        let n = name.clone();
        let versions = self.blocking_store(move |s| s.all_versions_of(&n)).await?;
        for (i, v) in versions.iter().enumerate() {
            let to = hsm::Look::live(v.ops.clone());
            self.move_version(v, hsm::Look::deleted(), to, thorough)
                .await?;
            if i == 0 {
                failpoint::hit("recover.mid_token");
            }
        }
        failpoint::hit("recover.after_token");
        Ok(versions)
    }

    /// Purges a soft-deleted key on a client's request.
    pub async fn purge(self: &Arc<Self>, name: KeyName) -> Result<(), Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            let intent = this
                .decide(&name, Event::Purge)
                .await?
                .ok_or_else(|| Error::Internal("a purge decided nothing".into()))?;
            let id = this.begin(&intent).await?;
            this.carry_out_all(id, &intent).await.map(|_| ())
        })
        .await
    }

    /// Purges every soft-deleted key whose scheduled purge date has passed. Returns how many.
    pub async fn purge_due(self: &Arc<Self>) -> Result<usize, Error> {
        let now = self.clock.now();
        let due = self.blocking_store(move |s| s.due_for_purge(now)).await?;
        let mut purged = 0;
        for name in due {
            let this = Arc::clone(self);
            let done = detached(async move {
                let _guard = this.lock_key(&name).await;
                let Some(intent) = this.decide(&name, Event::AutoPurge).await? else {
                    return Ok(false);
                };
                let id = this.begin(&intent).await?;
                this.carry_out_all(id, &intent).await.map(|_| true)
            })
            .await?;
            purged += usize::from(done);
        }
        Ok(purged)
    }

    /// The token half of a purge: every version's objects destroyed. Idempotent. With
    /// `thorough` (the reconciler), objects are found by `CKA_ID` on the token rather than in
    /// the cache, which after a restart holds no entry for a version whose secret object a
    /// crash already destroyed, though its public object may remain.
    async fn settle_purge(
        self: &Arc<Self>,
        name: &KeyName,
        thorough: bool,
    ) -> Result<Vec<VersionRecord>, Error> {
        let n = name.clone();
        let versions = self.blocking_store(move |s| s.all_versions_of(&n)).await?;
        for (i, v) in versions.iter().enumerate() {
            let id = v.version;
            self.hsm
                .call(move |hsm, s| {
                    if thorough {
                        hsm.destroy_by_id(s, id)
                    } else {
                        hsm.destroy_cached(s, id)
                    }
                })
                .await?;
            if i == 0 {
                failpoint::hit("purge.mid_token");
            }
        }
        failpoint::hit("purge.after_token");
        Ok(versions)
    }

    /// The newest version of a soft-deleted key and its deletion state.
    pub async fn get_deleted(&self, name: &KeyName) -> Result<(VersionRecord, Deletion), Error> {
        let n = name.clone();
        self.blocking_store(move |s| s.deleted_latest(&n))
            .await?
            .ok_or_else(|| Error::KeyNotFound(format!("Deleted Key not found: {name}")))
    }

    /// A page of soft-deleted keys and whether more follow.
    pub async fn list_deleted(
        &self,
        after: KeyCursor,
        limit: usize,
    ) -> Result<(Vec<(VersionRecord, Deletion)>, bool), Error> {
        let mut page = self
            .blocking_store(move |s| s.list_deleted(after.as_deref(), limit + 1))
            .await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Finishes or rolls back every open intent and sweeps the token (DESIGN §6).
    pub async fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport, Error> {
        let this = Arc::clone(self);
        detached(async move { reconcile::run(&this, true).await }).await
    }

    /// Runs for the life of the service: every `every`, settles abandoned intents, refreshes
    /// purge protection, purges the keys whose retention has ended and rotates the keys their
    /// rotation policy makes due (each new version is sent to `rotated`, for the audit log). A
    /// restart catches up on whatever came due while the service was down.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        every: std::time::Duration,
        rotated: tokio::sync::mpsc::UnboundedSender<VersionRecord>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.reconcile_intents().await {
                    tracing::warn!(error = %e, "settling intents failed; will retry");
                }
                if let Err(e) = this.refresh_purge_protection().await {
                    tracing::warn!(error = %e, "reading purge protection failed; will retry");
                }
                match this.purge_hsm_if_due().await {
                    Ok(true) => tracing::info!("purged the HSM whose retention ended"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the scheduled purge of the HSM failed; will retry")
                    }
                }
                // A deleted HSM changes nothing of its own: no key purges, no rotations.
                if !this.hsm_state().is_active() {
                    tokio::time::sleep(every).await;
                    continue;
                }
                match this.purge_due().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "purged keys whose retention ended"),
                    Err(e) => tracing::warn!(error = %e, "the scheduled purge failed; will retry"),
                }
                match this.rotate_due().await {
                    Ok(versions) => {
                        for version in versions {
                            // Nobody listening (the service is stopping): nothing to record.
                            let _ = rotated.send(version);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the rotation policies failed; will retry")
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Settles intents left by operations that failed half-way (the token went away, say),
    /// while the service runs. No token scan.
    pub async fn reconcile_intents(self: &Arc<Self>) -> Result<ReconcileReport, Error> {
        let this = Arc::clone(self);
        detached(async move { reconcile::run(&this, false).await }).await
    }

    /// Creates a new version of `name` with material generated in the token. A key that does
    /// not exist yet is created; one that exists gets a new version (Azure's behaviour).
    pub async fn create(
        self: &Arc<Self>,
        name: KeyName,
        spec: NewKey,
    ) -> Result<VersionRecord, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            this.make_version(name, spec, Origin::Generated, None).await
        })
        .await
    }

    /// Creates a new version of `name` from imported material.
    pub async fn import(
        self: &Arc<Self>,
        name: KeyName,
        material: ImportMaterial,
        spec: NewKey,
    ) -> Result<VersionRecord, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            this.make_version(name, spec, Origin::Imported, Some(material))
                .await
        })
        .await
    }

    /// Creates a new version with fresh material of the same kind, operations and tags as the
    /// newest one, expiring as the key's rotation policy says (`rotation.rs`).
    pub async fn rotate(self: &Arc<Self>, name: KeyName) -> Result<VersionRecord, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            let latest = this.latest_or_404(&name).await?;
            this.rotate_locked(latest).await
        })
        .await
    }

    async fn make_version(
        self: &Arc<Self>,
        name: KeyName,
        spec: NewKey,
        origin: Origin,
        material: Option<ImportMaterial>,
    ) -> Result<VersionRecord, Error> {
        self.refuse_unsupported(spec.kind)?;
        let event = Event::Create {
            version: VersionId::random(),
            kind: spec.kind,
            origin,
        };
        let intent = self
            .decide(&name, event)
            .await?
            .ok_or_else(|| Error::Internal("a new version decided nothing".into()))?;
        let id = self.begin(&intent).await?;
        match self
            .carry_out(
                id,
                &intent,
                Inputs::NewVersion {
                    spec: Box::new(spec),
                    material: material.map(Box::new),
                },
                false,
            )
            .await?
        {
            Done::Version(record) => Ok(record),
            Done::Versions(_) => Err(Error::Internal("a new version made several".into())),
        }
    }

    /// The newest version, or a specific one. Served from the version cache while no write
    /// has happened since the row was read.
    pub async fn get(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
    ) -> Result<VersionRecord, Error> {
        let generation = self.store.generation();
        if let Some(record) = self.versions.lookup(generation, name, version) {
            return Ok(record);
        }
        let record = match version {
            None => self.latest_or_404(name).await?,
            Some(v) => {
                let n = name.clone();
                self.blocking_store(move |s| s.version(&n, v))
                    .await?
                    .ok_or_else(|| not_found(name, Some(&v.to_string())))?
            }
        };
        self.versions.insert(generation, &record, version.is_none());
        Ok(record)
    }

    async fn latest_or_404(&self, name: &KeyName) -> Result<VersionRecord, Error> {
        let n = name.clone();
        self.blocking_store(move |s| s.latest(&n))
            .await?
            .ok_or_else(|| not_found(name, None))
    }

    /// A page of keys (each as its newest version) and whether more follow.
    pub async fn list(
        &self,
        after: KeyCursor,
        limit: usize,
    ) -> Result<(Vec<VersionRecord>, bool), Error> {
        let mut page = self
            .blocking_store(move |s| s.list_keys(after.as_deref(), limit + 1))
            .await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// A page of a key's versions with their sequence numbers (the page cursor), and whether
    /// more follow. A key that does not exist is a 404.
    pub async fn list_versions(
        &self,
        name: &KeyName,
        after_seq: i64,
        limit: usize,
    ) -> Result<(Vec<(i64, VersionRecord)>, bool), Error> {
        if after_seq == 0 {
            self.latest_or_404(name).await?;
        }
        let n = name.clone();
        let mut page = self
            .blocking_store(move |s| s.list_versions(&n, after_seq, limit + 1))
            .await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// Changes a version's attributes, tags or operations. New operations are applied to the
    /// token's usage flags under an intent.
    pub async fn update(
        self: &Arc<Self>,
        name: KeyName,
        version: Option<VersionId>,
        patch: KeyPatch,
    ) -> Result<VersionRecord, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            let current = this.get(&name, version).await?;
            let mut next = current.clone();
            if let Some(raw) = &patch.ops {
                next.ops = KeyOps::parse(raw, current.kind.family())?;
            }
            if let Some(enabled) = patch.enabled {
                next.attributes.enabled = enabled;
            }
            if let Some(nbf) = patch.not_before {
                next.attributes.not_before = nbf;
            }
            if let Some(exp) = patch.expires {
                next.attributes.expires = exp;
            }
            if let Some(tags) = patch.tags {
                next.tags = tags;
            }
            next.attributes.validate()?;
            next.updated = this.clock.now();

            if next.ops == current.ops {
                let record = next.clone();
                this.blocking_store(move |s| s.commit_update(&record, None))
                    .await?;
                return Ok(next);
            }

            let event = Event::Update {
                version: next.version,
                target: UpdateTarget {
                    ops: next.ops.clone(),
                    enabled: next.attributes.enabled,
                    nbf: next.attributes.not_before,
                    exp: next.attributes.expires,
                    tags: next.tags.clone(),
                    updated: next.updated,
                },
            };
            let intent = this
                .decide(&next.name, event)
                .await?
                .ok_or_else(|| Error::Internal("an update decided nothing".into()))?;
            let id = this.begin(&intent).await?;
            match this.carry_out(id, &intent, Inputs::None, false).await {
                Ok(Done::Version(record)) => Ok(record),
                Ok(Done::Versions(_)) => Err(Error::Internal("an update changed several".into())),
                Err(e) => {
                    // Put the objects back as the committed record has them; if even that
                    // fails, the intent stays and the reconciler rolls the update forward.
                    this.roll_back_quietly(id, &intent).await;
                    Err(e)
                }
            }
        })
        .await
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    /// The metadata store, for the health endpoint's view of it.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn blocking_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, crate::store::Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.store.blocking(f).await.map_err(Error::from)
    }
}

fn not_found(name: &KeyName, version: Option<&str>) -> Error {
    match version {
        None => Error::KeyNotFound(format!(
            "A key with (name/id) {name} was not found in this key vault."
        )),
        Some(v) => Error::KeyNotFound(format!(
            "A key with (name/id) {name}/{v} was not found in this key vault."
        )),
    }
}

/// The public part of imported material, for the metadata store.
fn public_of(material: &ImportMaterial) -> PublicKey {
    match material {
        ImportMaterial::Rsa { n, e, .. } => PublicKey::Rsa {
            n: n.clone(),
            e: e.clone(),
        },
        ImportMaterial::Ec { curve, x, y, .. } => PublicKey::Ec {
            curve: *curve,
            x: x.clone(),
            y: y.clone(),
        },
        ImportMaterial::Oct { .. } => PublicKey::Oct,
    }
}

/// Runs a multi-step operation on its own task, so that dropping the request future (a client
/// that disconnects) cannot stop it between two steps.
async fn detached<R: Send + 'static>(
    fut: impl std::future::Future<Output = Result<R, Error>> + Send + 'static,
) -> Result<R, Error> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Error::Internal(format!("a key operation panicked: {e}")))?
}

/// Held while one key changes: its name's mutex, and a share of the change gate.
struct KeyGuard {
    _name: tokio::sync::OwnedMutexGuard<()>,
    _changes: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// One async mutex per key name (case-insensitive), so changes to one key run one at a time
/// while different keys proceed in parallel. Entries vanish when nobody holds them.
#[derive(Default)]
struct NameLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl NameLocks {
    async fn lock(&self, name: &KeyName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, weak| weak.strong_count() > 0);
            let key = name.as_str().to_ascii_lowercase();
            match map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}
