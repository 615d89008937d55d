//! The reconciler (DESIGN §6). At start-up it finishes or rolls back every open intent,
//! destroys token objects that carry a p11vault label but belong to no committed version (a
//! key half-made when the process died), and reports — never deletes — metadata whose token
//! objects are missing.

use std::collections::HashSet;
use std::sync::Arc;

use super::{KeyService, UpdateIntent};
use crate::error::Error;
use crate::model::VersionId;
use crate::store::Intent;

/// What one reconciliation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub rolled_back: usize,
    pub rolled_forward: usize,
    pub orphans_destroyed: usize,
    /// Committed versions whose token objects are missing: `(name, version)`.
    pub missing_objects: Vec<(String, VersionId)>,
}

pub(super) async fn run(svc: &Arc<KeyService>) -> Result<ReconcileReport, Error> {
    let mut report = ReconcileReport::default();
    let intents = svc.blocking_store(|s| s.open_intents()).await?;
    for intent in intents {
        settle(svc, &intent, &mut report).await?;
    }

    let committed = svc.blocking_store(|s| s.all_versions()).await?;
    let owned: HashSet<VersionId> = committed.iter().map(|(_, v)| *v).collect();
    let objects = svc.hsm.call(|hsm, s| hsm.scan(s)).await?;
    let orphans: HashSet<VersionId> = objects
        .iter()
        .filter_map(|o| o.id)
        .filter(|id| !owned.contains(id))
        .collect();
    for id in orphans {
        let destroyed = svc.hsm.call(move |hsm, s| hsm.destroy_by_id(s, id)).await?;
        tracing::warn!(version = %id, objects = destroyed, "destroyed token objects that no committed key version owns");
        report.orphans_destroyed += destroyed;
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
            tracing::info!(key = %intent.name, version = %version, op = %intent.op, "rolled back an unfinished key version");
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
            let (family, ops) = (record.kind.family(), target.ops.clone());
            svc.hsm
                .call(move |hsm, s| hsm.set_usage(s, version, family, &ops))
                .await?;
            record.ops = target.ops;
            record.attributes.enabled = target.enabled;
            record.attributes.not_before = target.nbf;
            record.attributes.expires = target.exp;
            record.tags = target.tags;
            record.updated = target.updated;
            svc.blocking_store(move |s| s.commit_update(&record, Some(id)))
                .await?;
            tracing::info!(key = %intent.name, version = %version, "rolled an unfinished update forward");
            report.rolled_forward += 1;
        }
        (op, _) => {
            tracing::error!(intent = id, op, key = %intent.name, "an open intent of an unknown kind is left for an operator");
        }
    }
    Ok(())
}
