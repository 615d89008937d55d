//! The one executor of the consistency protocol (DESIGN §6): record the intent, change the
//! token, commit the outcome together with the intent's removal — or undo the change. The
//! request path is `lifecycle::decide → begin → carry_out`; the reconciler calls [`settle`]
//! for every open intent, whoever wrote it. Nothing else records, finishes or undoes an intent,
//! and every `match` on an intent here is exhaustive, so a new kind of change cannot be
//! forgotten by the reconciler.
//!
//! [`settle`]: KeyService::settle

use std::sync::Arc;

use super::blob::RestoredKey;
use super::{KeyService, NewKey, public_of};
use crate::error::Error;
use crate::failpoint;
use crate::hsm::templates::live_label;
use crate::hsm::{self, ImportMaterial};
use crate::model::{Intent, Origin, VersionRecord};

/// What the request path brings that an intent does not hold.
pub(super) enum Inputs {
    /// Nothing: the intent says it all (update, delete, recover, purge), which is why these
    /// can be finished by anyone who finds them open.
    None,
    /// A new version's fields, and the material of an import (never stored).
    NewVersion {
        spec: Box<NewKey>,
        material: Option<Box<ImportMaterial>>,
    },
    /// A restored key's versions and their wrapped material.
    Restore(Box<RestoredKey>),
}

/// What carrying an intent out committed.
pub(super) enum Done {
    /// A new, updated or restored (newest) version.
    Version(VersionRecord),
    /// Every version of a key that was deleted, recovered or purged.
    Versions(Vec<VersionRecord>),
}

/// How the reconciler settled an intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settled {
    RolledForward,
    RolledBack,
}

/// The failpoints of a new version, by where its material comes from.
fn new_version_points(origin: Origin) -> [&'static str; 3] {
    match origin {
        Origin::Generated => [
            "create.after_intent",
            "create.after_token",
            "create.after_commit",
        ],
        Origin::Imported => [
            "import.after_intent",
            "import.after_token",
            "import.after_commit",
        ],
    }
}

impl KeyService {
    /// Step 1: records the intent and commits it, before the token is touched.
    pub(super) async fn begin(&self, intent: &Intent) -> Result<i64, Error> {
        let (stored, now) = (intent.clone(), self.clock.now());
        let id = self
            .blocking_store(move |s| s.begin_intent(&stored, now))
            .await?;
        match intent {
            Intent::NewVersion { origin, .. } => failpoint::hit(new_version_points(*origin)[0]),
            Intent::Update { .. } => failpoint::hit("update.after_intent"),
            Intent::Delete { .. } => failpoint::hit("delete.after_intent"),
            Intent::Recover { .. } => failpoint::hit("recover.after_intent"),
            Intent::Purge { .. } => failpoint::hit("purge.after_intent"),
            Intent::Restore { .. } => failpoint::hit("restore_key.after_intent"),
        }
        Ok(id)
    }

    /// Steps 2 and 3: changes the token and commits the outcome with the intent's removal.
    /// `thorough` after a crash: each version is settled from whatever the token holds rather
    /// than from the cache. A new version or a restore that fails is rolled back here.
    pub(super) async fn carry_out(
        self: &Arc<Self>,
        id: i64,
        intent: &Intent,
        inputs: Inputs,
        thorough: bool,
    ) -> Result<Done, Error> {
        match (intent, inputs) {
            (
                Intent::NewVersion {
                    name,
                    version,
                    kind,
                    origin,
                },
                Inputs::NewVersion { spec, material },
            ) => {
                let [_, after_token, after_commit] = new_version_points(*origin);
                let spec = *spec;
                let (id_, kind_, ops) = (*version, *kind, spec.ops.clone());
                let exponent = spec
                    .public_exponent
                    .unwrap_or(crate::model::DEFAULT_PUBLIC_EXPONENT);
                let label = live_label(name.as_str(), *version);
                let made = self
                    .hsm
                    .call(move |hsm, s| match material {
                        None => hsm
                            .generate(s, id_, &label, kind_, exponent, &ops)
                            .map(|(_, public)| public),
                        Some(material) => {
                            hsm.import(s, id_, &label, &material, &ops)?;
                            Ok(public_of(&material))
                        }
                    })
                    .await;
                let public = match made {
                    Ok(public) => public,
                    Err(e) => {
                        self.roll_back_quietly(id, intent).await;
                        return Err(e.into());
                    }
                };
                failpoint::hit(after_token);
                let now = self.clock.now();
                let record = VersionRecord {
                    name: name.clone(),
                    version: *version,
                    kind: *kind,
                    ops: spec.ops,
                    attributes: spec.attributes,
                    created: now,
                    updated: now,
                    tags: spec.tags,
                    public,
                    origin: *origin,
                };
                let committed = self
                    .blocking_store(move |s| s.commit_new_version(&record, id))
                    .await;
                failpoint::hit(after_commit);
                if committed.is_err() {
                    self.roll_back_quietly(id, intent).await;
                }
                committed.map(Done::Version)
            }
            (Intent::Restore { name, .. }, Inputs::Restore(restored)) => {
                let made = self.create_objects(&restored, true).await;
                failpoint::hit("restore_key.after_token");
                let committed = match made {
                    Ok(()) => {
                        let key = restored.key.clone();
                        self.blocking_store(move |s| s.commit_restored_key(&key, id))
                            .await
                    }
                    Err(e) => Err(e),
                };
                match committed {
                    Ok(true) => {}
                    outcome => {
                        self.roll_back_quietly(id, intent).await;
                        outcome?;
                        return Err(Error::Conflict {
                            message: format!("A key named {name} appeared while it was restored."),
                            inner: None,
                        });
                    }
                }
                restored
                    .key
                    .versions
                    .last()
                    .cloned()
                    .map(Done::Version)
                    .ok_or_else(|| Error::Internal("a restored key without versions".into()))
            }
            (
                Intent::Update {
                    version, target, ..
                },
                Inputs::None,
            ) => {
                let v = *version;
                let Some(mut record) = self.blocking_store(move |s| s.version_by_id(v)).await?
                else {
                    // The version is gone (purged since): nothing left to update.
                    self.blocking_store(move |s| s.drop_intent(id)).await?;
                    return Err(Error::KeyNotFound(format!("Key version {v} not found.")));
                };
                let (before, after) = (
                    hsm::Look::live(record.ops.clone()),
                    hsm::Look::live(target.ops.clone()),
                );
                self.move_version(&record, before, after, thorough).await?;
                failpoint::hit("update.after_token");
                record.ops = target.ops.clone();
                record.attributes.enabled = target.enabled;
                record.attributes.not_before = target.nbf;
                record.attributes.expires = target.exp;
                record.tags = target.tags.clone();
                record.updated = target.updated;
                let stored = record.clone();
                self.blocking_store(move |s| s.commit_update(&stored, Some(id)))
                    .await?;
                Ok(Done::Version(record))
            }
            (Intent::Delete { name, deletion }, Inputs::None) => {
                let versions = self.settle_delete(name, thorough).await?;
                let (n, deletion) = (name.clone(), *deletion);
                self.blocking_store(move |s| s.commit_deleted(&n, deletion, id))
                    .await?;
                failpoint::hit("delete.after_commit");
                Ok(Done::Versions(versions))
            }
            (Intent::Recover { name }, Inputs::None) => {
                let versions = self.settle_recover(name, thorough).await?;
                let n = name.clone();
                self.blocking_store(move |s| s.commit_recovered(&n, id))
                    .await?;
                failpoint::hit("recover.after_commit");
                Ok(Done::Versions(versions))
            }
            (Intent::Purge { name, reason }, Inputs::None) => {
                // A full backup reading key material keeps purges out until it is done.
                let _purges = self.purges.read().await;
                let versions = self.settle_purge(name, thorough).await?;
                let n = name.clone();
                self.blocking_store(move |s| s.commit_purged(&n, id))
                    .await?;
                failpoint::hit("purge.after_commit");
                let ids: Vec<String> = versions.iter().map(|v| v.version.to_string()).collect();
                tracing::info!(key = %name, versions = ?ids, reason = reason.as_str(), "purged: every token object destroyed, metadata removed");
                Ok(Done::Versions(versions))
            }
            (intent, _) => Err(Error::Internal(format!(
                "intent {id} cannot be carried out without what its request brought: {intent:?}"
            ))),
        }
    }

    /// Undoes an intent whose outcome was never committed: destroys what its token step may
    /// have made (found by `CKA_ID`, so objects the cache never saw too), then drops it.
    pub(super) async fn roll_back(self: &Arc<Self>, id: i64, intent: &Intent) -> Result<(), Error> {
        match intent {
            Intent::NewVersion { version, .. } => {
                let v = *version;
                self.hsm.call(move |hsm, s| hsm.destroy_by_id(s, v)).await?;
            }
            Intent::Restore { versions, .. } => {
                let versions = versions.clone();
                self.hsm
                    .call(move |hsm, s| {
                        for v in versions {
                            hsm.destroy_by_id(s, v)?;
                        }
                        Ok(())
                    })
                    .await?;
            }
            Intent::Update {
                version, target, ..
            } => {
                let v = *version;
                if let Some(record) = self.blocking_store(move |s| s.version_by_id(v)).await? {
                    let (changed, committed) = (
                        hsm::Look::live(target.ops.clone()),
                        hsm::Look::live(record.ops.clone()),
                    );
                    self.move_version(&record, changed, committed, true).await?;
                }
            }
            Intent::Delete { .. } | Intent::Recover { .. } | Intent::Purge { .. } => {
                return Err(Error::Internal(format!(
                    "intent {id} is only ever rolled forward: {intent:?}"
                )));
            }
        }
        self.blocking_store(move |s| s.drop_intent(id)).await
    }

    /// [`KeyService::roll_back`] on a request path that already failed: if the undo fails
    /// too, the intent stays open and the reconciler finishes the job.
    pub(super) async fn roll_back_quietly(self: &Arc<Self>, id: i64, intent: &Intent) {
        if let Err(e) = self.roll_back(id, intent).await {
            tracing::warn!(intent = id, error = %e, "could not roll back; the reconciler will");
        }
    }

    /// What the reconciler does with an intent found open. A new version or a restore was
    /// never acknowledged (its commit clears the intent): roll back. An update, a delete, a
    /// recovery or a purge may have changed the token half-way: finishing is the direction
    /// that never leaves a deleted key usable nor brings a purged one back.
    pub(super) async fn settle(
        self: &Arc<Self>,
        id: i64,
        intent: &Intent,
    ) -> Result<Settled, Error> {
        match intent {
            Intent::NewVersion { .. } | Intent::Restore { .. } => {
                self.roll_back(id, intent).await?;
                Ok(Settled::RolledBack)
            }
            Intent::Update { .. }
            | Intent::Delete { .. }
            | Intent::Recover { .. }
            | Intent::Purge { .. } => match self.carry_out(id, intent, Inputs::None, true).await {
                Ok(_) | Err(Error::KeyNotFound(_)) => Ok(Settled::RolledForward),
                Err(e) => Err(e),
            },
        }
    }
}
