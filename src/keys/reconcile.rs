//! The reconciler (DESIGN §6). It finishes or rolls back every open intent — new versions are
//! rolled back (destroying a key half-made when the process died), updates, deletes, recoveries
//! and purges rolled forward. At start-up it also scans the token and reports — never deletes —
//! objects nobody owns and metadata whose token objects are missing.

use std::collections::HashSet;
use std::sync::Arc;

use super::{DeleteIntent, KeyService, UpdateIntent};
use crate::error::Error;
use crate::model::{KeyName, VersionId};
use crate::store::{Deletion, Intent};

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
    for intent in intents {
        let Ok(name) = KeyName::parse(&intent.name) else {
            tracing::error!(intent = intent.id, name = %intent.name, "an intent names an invalid key; left for an operator");
            continue;
        };
        // An operation in flight holds the name's lock and its intent; once the lock is ours,
        // the intent is either gone (the operation finished) or abandoned.
        let _guard = svc.lock_key(&name).await;
        let id = intent.id;
        let still_open = svc
            .blocking_store(move |s| Ok(s.open_intents()?.iter().any(|i| i.id == id)))
            .await?;
        if still_open {
            settle(svc, &name, &intent, &mut report).await?;
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

async fn settle(
    svc: &Arc<KeyService>,
    name: &KeyName,
    intent: &Intent,
    report: &mut ReconcileReport,
) -> Result<(), Error> {
    let id = intent.id;
    match (intent.op.as_str(), intent.version) {
        // A new version is committed in the same transaction that clears its intent, so an
        // open intent means the client never got an answer: roll back.
        ("create" | "import", Some(version)) => {
            svc.hsm
                .call(move |hsm, s| hsm.destroy_by_id(s, version))
                .await?;
            svc.blocking_store(move |s| s.drop_intent(id)).await?;
            tracing::info!(key = %name, version = %version, op = %intent.op, "rolled back an unfinished key version");
            report.rolled_back += 1;
        }
        // A restored key is committed with all its versions in the transaction that clears
        // the intent: an open one means nothing was acknowledged, so its objects go.
        ("restore", _) => {
            let versions: Vec<String> = serde_json::from_str(&intent.payload)
                .map_err(|e| Error::Internal(format!("restore intent {id}: {e}")))?;
            for version in versions.iter().filter_map(|v| VersionId::parse_hex(v)) {
                svc.hsm
                    .call(move |hsm, s| hsm.destroy_by_id(s, version))
                    .await?;
            }
            svc.blocking_store(move |s| s.drop_intent(id)).await?;
            tracing::info!(key = %name, "rolled back an unfinished key restore");
            report.rolled_back += 1;
        }
        // An update may have changed some usage flags: roll it forward to the recorded target.
        ("update", Some(version)) => {
            let target: UpdateIntent = serde_json::from_str(&intent.payload)
                .map_err(|e| Error::Internal(format!("update intent {id}: {e}")))?;
            let Some(mut record) = svc
                .blocking_store(move |s| s.version_by_id(version))
                .await?
            else {
                svc.blocking_store(move |s| s.drop_intent(id)).await?;
                return Ok(());
            };
            let (before, after) = (
                crate::hsm::Look::live(record.ops.clone()),
                crate::hsm::Look::live(target.ops.clone()),
            );
            svc.move_version(&record, before, after, true).await?;
            record.ops = target.ops;
            record.attributes.enabled = target.enabled;
            record.attributes.not_before = target.nbf;
            record.attributes.expires = target.exp;
            record.tags = target.tags;
            record.updated = target.updated;
            svc.blocking_store(move |s| s.commit_update(&record, Some(id)))
                .await?;
            tracing::info!(key = %name, version = %version, "rolled an unfinished update forward");
            report.rolled_forward += 1;
        }
        // Delete, recover and purge are rolled forward: the token may be half-way, and
        // finishing is the only direction that never leaves a deleted key usable or brings a
        // purged one back.
        ("delete", _) => {
            let target: DeleteIntent = serde_json::from_str(&intent.payload)
                .map_err(|e| Error::Internal(format!("delete intent {id}: {e}")))?;
            svc.settle_delete(name, true).await?;
            let deletion = Deletion {
                deleted_date: target.deleted_date,
                scheduled_purge_date: target.scheduled_purge_date,
            };
            let n = name.clone();
            svc.blocking_store(move |s| s.commit_deleted(&n, deletion, id))
                .await?;
            tracing::info!(key = %name, "rolled an unfinished delete forward");
            report.rolled_forward += 1;
        }
        ("recover", _) => {
            svc.settle_recover(name, true).await?;
            let n = name.clone();
            svc.blocking_store(move |s| s.commit_recovered(&n, id))
                .await?;
            tracing::info!(key = %name, "rolled an unfinished recovery forward");
            report.rolled_forward += 1;
        }
        ("purge", _) => {
            let _purges = svc.purges.read().await;
            svc.settle_purge(name, true).await?;
            let n = name.clone();
            svc.blocking_store(move |s| s.commit_purged(&n, id)).await?;
            tracing::info!(key = %name, "rolled an unfinished purge forward");
            report.rolled_forward += 1;
        }
        (op, _) => {
            tracing::error!(intent = id, op, key = %name, "an open intent of an unknown kind is left for an operator");
        }
    }
    Ok(())
}
