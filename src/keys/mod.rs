//! The key service: the only code that touches both the metadata store and the token. Every
//! change that reaches the token follows DESIGN §6 — record the intent and commit, change the
//! token, commit the outcome and clear the intent — and runs on its own task, so a client that
//! disconnects half-way cannot stop it between two steps.

pub mod import;
mod reconcile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::Error;
use crate::failpoint;
use crate::hsm::templates::live_label;
use crate::hsm::{Hsm, ImportMaterial};
use crate::model::{
    Attributes, KeyKind, KeyName, KeyOps, Origin, PublicKey, Retention, Tags, VersionId,
    VersionRecord,
};
use crate::store::Store;

pub use reconcile::ReconcileReport;

/// What a client asks for when creating a key version.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub kind: KeyKind,
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

/// Payload of an update intent: the fields the version will have once committed.
#[derive(Serialize, Deserialize)]
struct UpdateIntent {
    ops: KeyOps,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    tags: Tags,
    updated: i64,
}

pub struct KeyService {
    store: Arc<Store>,
    hsm: Arc<Hsm>,
    clock: Arc<dyn Clock>,
    retention: Retention,
    locks: NameLocks,
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
            retention,
            locks: NameLocks::default(),
        })
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Finishes or rolls back every open intent and sweeps the token (DESIGN §6).
    pub async fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport, Error> {
        let this = Arc::clone(self);
        detached(async move { reconcile::run(&this).await }).await
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
            let _guard = this.locks.lock(&name).await;
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
            let _guard = this.locks.lock(&name).await;
            this.make_version(name, spec, Origin::Imported, Some(material))
                .await
        })
        .await
    }

    /// Creates a new version with fresh material of the same kind, operations and tags as the
    /// newest one.
    pub async fn rotate(self: &Arc<Self>, name: KeyName) -> Result<VersionRecord, Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.locks.lock(&name).await;
            let latest = this.latest_or_404(&name).await?;
            let spec = NewKey {
                kind: latest.kind,
                ops: latest.ops,
                attributes: Attributes::default(),
                tags: latest.tags,
            };
            this.make_version(latest.name, spec, Origin::Generated, None)
                .await
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
        let id = VersionId::random();
        let now = self.clock.now();
        let payload =
            serde_json::to_string(&spec.kind).map_err(|e| Error::Internal(e.to_string()))?;
        let op = match origin {
            Origin::Generated => "create",
            Origin::Imported => "import",
        };
        let intent = self
            .blocking_store({
                let name = name.clone();
                move |s| s.begin_intent(op, name.as_str(), Some(id), &payload, now)
            })
            .await?;

        failpoint::hit(&format!("{op}.after_intent"));
        let label = live_label(name.as_str(), id);
        let kind = spec.kind;
        let ops = spec.ops.clone();
        let made = self
            .hsm
            .call(move |hsm, s| match material {
                None => hsm
                    .generate(s, id, &label, kind, &ops)
                    .map(|(_, public)| public),
                Some(material) => {
                    hsm.import(s, id, &label, &material, &ops)?;
                    Ok(public_of(&material))
                }
            })
            .await;
        let public = match made {
            Ok(public) => public,
            Err(e) => {
                self.roll_back_new_version(id, intent).await;
                return Err(e.into());
            }
        };

        failpoint::hit(&format!("{op}.after_token"));
        let record = VersionRecord {
            name,
            version: id,
            kind: spec.kind,
            ops: spec.ops,
            attributes: spec.attributes,
            created: now,
            updated: now,
            tags: spec.tags,
            public,
            origin,
        };
        let committed = self
            .blocking_store(move |s| s.commit_new_version(&record, intent))
            .await;
        failpoint::hit(&format!("{op}.after_commit"));
        if committed.is_err() {
            self.roll_back_new_version(id, intent).await;
        }
        committed
    }

    /// Undoes a version that never got committed. If this fails too, the intent stays open and
    /// the reconciler finishes the job at the next start.
    async fn roll_back_new_version(self: &Arc<Self>, id: VersionId, intent: i64) {
        let destroyed = self.hsm.call(move |hsm, s| hsm.destroy_by_id(s, id)).await;
        match destroyed {
            Ok(_) => {
                if let Err(e) = self.blocking_store(move |s| s.drop_intent(intent)).await {
                    tracing::warn!(error = %e, "could not clear a rolled-back intent; the reconciler will");
                }
            }
            Err(e) => {
                tracing::warn!(version = %id, error = %e, "could not roll back a new version; the reconciler will")
            }
        }
    }

    /// The newest version, or a specific one.
    pub async fn get(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
    ) -> Result<VersionRecord, Error> {
        match version {
            None => self.latest_or_404(name).await,
            Some(v) => {
                let n = name.clone();
                self.blocking_store(move |s| s.version(&n, v))
                    .await?
                    .ok_or_else(|| not_found(name, Some(&v.to_string())))
            }
        }
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
            let _guard = this.locks.lock(&name).await;
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

            let payload = serde_json::to_string(&UpdateIntent {
                ops: next.ops.clone(),
                enabled: next.attributes.enabled,
                nbf: next.attributes.not_before,
                exp: next.attributes.expires,
                tags: next.tags.clone(),
                updated: next.updated,
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
            let (n, v, now) = (next.name.to_string(), next.version, next.updated);
            let intent = this
                .blocking_store(move |s| s.begin_intent("update", &n, Some(v), &payload, now))
                .await?;
            let (family, ops) = (next.kind.family(), next.ops.clone());
            failpoint::hit("update.after_intent");
            let applied = this
                .hsm
                .call(move |hsm, s| hsm.set_usage(s, v, family, &ops))
                .await;
            failpoint::hit("update.after_token");
            if let Err(e) = applied {
                // Put the flags back as they were; if even that fails, the intent stays and the
                // reconciler rolls the update forward at the next start.
                let (family, ops) = (current.kind.family(), current.ops.clone());
                if this
                    .hsm
                    .call(move |hsm, s| hsm.set_usage(s, v, family, &ops))
                    .await
                    .is_ok()
                {
                    let _ = this.blocking_store(move |s| s.drop_intent(intent)).await;
                }
                return Err(e.into());
            }
            let record = next.clone();
            this.blocking_store(move |s| s.commit_update(&record, Some(intent)))
                .await?;
            Ok(next)
        })
        .await
    }

    async fn blocking_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, crate::store::Error> + Send + 'static,
    ) -> Result<R, Error> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("a store call panicked: {e}")))?
            .map_err(Error::from)
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
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
