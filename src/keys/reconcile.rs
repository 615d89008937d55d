//! The reconciler (DESIGN §6): for every open intent — left by a crash, by an operation that
//! failed half-way, or by another node — the executor carries it out or rolls it back
//! (`KeyService::settle`); this file has no code of its own for any operation. At start-up it
//! also scans the token and reports — never deletes — objects nobody owns and metadata whose
//! token objects are missing.

use std::collections::HashSet;
use std::sync::Arc;

use super::KeyService;
use super::executor::Settled;
use crate::error::Error;
use crate::model::VersionId;

/// What one reconciliation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub rolled_back: usize,
    pub rolled_forward: usize,
    /// Token objects with a p11vault label that no committed version or intent owns.
    pub orphans_reported: usize,
    /// Committed versions whose token objects are missing: `(name, version)`.
    pub missing_objects: Vec<(String, VersionId)>,
}

/// Settles every open intent; with `sweep`, also scans the token for orphans and for
/// versions whose objects are missing (start-up only: a scan searches the whole token).
pub(super) async fn run(svc: &Arc<KeyService>, sweep: bool) -> Result<ReconcileReport, Error> {
    let mut report = ReconcileReport::default();
    let intents = svc.blocking_store(|s| s.open_intents()).await?;
    for open in intents {
        let id = open.id;
        let intent = match open.intent {
            Ok(intent) => intent,
            Err(why) => {
                tracing::error!(intent = id, %why, "an open intent cannot be read; left for an operator");
                continue;
            }
        };
        // An operation in flight holds the name's lock and its intent; once the lock is ours,
        // the intent is either gone (the operation finished) or abandoned.
        let _guard = svc.lock_key(intent.name()).await;
        if !svc.blocking_store(move |s| s.intent_is_open(id)).await? {
            continue;
        }
        match svc.settle(id, &intent).await? {
            Settled::RolledBack => {
                tracing::info!(key = %intent.name(), intent = id, "rolled back an unfinished {}", intent.what());
                report.rolled_back += 1;
            }
            Settled::RolledForward => {
                tracing::info!(key = %intent.name(), intent = id, "rolled an unfinished {} forward", intent.what());
                report.rolled_forward += 1;
            }
        }
    }
    if !sweep {
        return Ok(report);
    }

    let committed = svc.blocking_store(|s| s.all_versions()).await?;
    let owned: HashSet<VersionId> = committed.iter().map(|(_, v)| *v).collect();
    let objects = svc.hsm.call(|hsm, s| hsm.scan(s)).await?;
    let mut orphans: Vec<(VersionId, String)> = objects
        .iter()
        .filter_map(|o| o.id.map(|id| (id, o.label.clone())))
        .filter(|(id, _)| !owned.contains(id))
        .collect();
    orphans.sort();
    orphans.dedup_by_key(|(id, _)| *id);
    for (id, label) in orphans {
        // Every object this service makes is preceded by an intent, settled above. One with
        // neither intent nor metadata comes from an older database or another instance, and
        // destroying it could lose an acknowledged key: report it, never destroy it.
        tracing::error!(version = %id, %label, "the token holds p11vault objects that no committed key version owns; left in place for an operator");
        report.orphans_reported += 1;
    }
    for (name, id) in committed {
        if !svc.hsm.is_cached(id) {
            tracing::error!(key = %name, version = %id, "the token holds no object for this key version; its metadata is kept for an operator to investigate");
            report.missing_objects.push((name, id));
        }
    }
    Ok(report)
}
