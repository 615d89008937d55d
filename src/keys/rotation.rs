//! Key rotation in the key service: a key's rotation policy (read, set), the rotation itself —
//! one code path for `POST /keys/{name}/rotate` and for the policy — and the maintenance pass
//! that rotates every key its policy makes due.
//!
//! A key is due when its policy's trigger, counted from its newest version, has come. A rotation
//! makes a new newest version through the intent protocol (DESIGN §6), which commits the version
//! and clears the intent in one transaction, so the due date moves on in the same commit that
//! makes the version: a crash before it rolls the half-made version back and the key is still
//! due (rotated on the next pass); a crash after it leaves a key that is no longer due. Each due
//! point therefore gets exactly one rotation, however often the service stops, and a service that
//! was down past a due point rotates once when it is back (not once per missed interval).

use std::sync::Arc;

use super::{KeyService, NewKey, detached};
use crate::error::Error;
use crate::failpoint;
use crate::model::{Attributes, KeyName, Origin, PolicyRecord, RotationPolicy, VersionRecord};

impl KeyService {
    /// A live key's rotation policy, if one was ever set, with the key's stored spelling.
    pub async fn rotation_policy(
        &self,
        name: &KeyName,
    ) -> Result<(KeyName, Option<PolicyRecord>), Error> {
        let latest = self.latest_or_404(name).await?;
        let n = latest.name.clone();
        let policy = self.blocking_store(move |s| s.rotation_policy(&n)).await?;
        Ok((latest.name, policy))
    }

    /// Replaces a live key's rotation policy. Metadata only (the token is not touched), under
    /// the key's lock, so a maintenance pass decides on the old policy or the new one.
    pub async fn set_rotation_policy(
        self: &Arc<Self>,
        name: KeyName,
        policy: RotationPolicy,
    ) -> Result<(KeyName, PolicyRecord), Error> {
        let this = Arc::clone(self);
        detached(async move {
            let _guard = this.lock_key(&name).await;
            let latest = this.latest_or_404(&name).await?;
            let (n, now) = (latest.name.clone(), this.clock.now());
            let record = this
                .blocking_store(move |s| s.set_rotation_policy(&n, &policy, now))
                .await?
                .ok_or_else(|| super::not_found(&name, None))?;
            Ok((latest.name, record))
        })
        .await
    }

    /// A rotation, whoever asked: a new version with fresh material of the newest version's
    /// kind, operations and tags, enabled, expiring `expiryTime` from now if the key's policy
    /// says so (as Azure applies it to every rotated version). Called holding the key's lock.
    pub(super) async fn rotate_locked(
        self: &Arc<Self>,
        latest: VersionRecord,
    ) -> Result<VersionRecord, Error> {
        let n = latest.name.clone();
        let policy = self.blocking_store(move |s| s.rotation_policy(&n)).await?;
        let attributes = Attributes {
            expires: policy.and_then(|p| p.policy.expiry_from(self.clock.now())),
            ..Attributes::default()
        };
        let spec = NewKey {
            kind: latest.kind,
            // The same exponent as the newest version, where a create could name it.
            public_exponent: latest.public.public_exponent(),
            ops: latest.ops,
            attributes,
            tags: latest.tags,
        };
        self.make_version(latest.name, spec, Origin::Generated, None)
            .await
    }

    /// Rotates every live key whose policy makes it due now, and returns the new versions. A
    /// key that cannot be rotated (the token away, say) is logged and tried again next pass;
    /// it does not hold up the others.
    pub async fn rotate_due(self: &Arc<Self>) -> Result<Vec<VersionRecord>, Error> {
        let now = self.clock.now();
        let candidates = self.blocking_store(|s| s.rotation_candidates()).await?;
        let mut rotated = Vec::new();
        for candidate in candidates {
            if candidate.due_at().is_none_or(|due| due > now) {
                continue;
            }
            let this = Arc::clone(self);
            let name = candidate.name.clone();
            let done = detached(async move {
                let _guard = this.lock_key(&name).await;
                // Decided again under the lock: a client may have rotated, deleted or given it
                // another policy since the candidates were read.
                let n = name.clone();
                let current = this
                    .blocking_store(move |s| Ok((s.latest(&n)?, s.rotation_policy(&n)?)))
                    .await?;
                let (Some(latest), Some(record)) = current else {
                    return Ok(None);
                };
                let due = record
                    .policy
                    .due_at(latest.created, latest.attributes.expires);
                if due.is_none_or(|due| due > this.clock.now()) {
                    return Ok(None);
                }
                failpoint::hit("autorotate.before");
                let rotated = this.rotate_locked(latest).await?;
                tracing::info!(key = %rotated.name, version = %rotated.version, due, "rotated a key as its rotation policy says");
                Ok(Some(rotated))
            })
            .await;
            match done {
                Ok(Some(version)) => rotated.push(version),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %candidate.name, error = %e, "a due rotation failed; it is tried again on the next pass");
                }
            }
        }
        Ok(rotated)
    }
}
