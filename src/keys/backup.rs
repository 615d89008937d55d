//! Backups in the key service (DESIGN §8): a key's backup blob and its restore, the sealed
//! file of a full backup, a full restore, and the resumption of a full restore that a crash
//! interrupted. The format is in [`super::blob`].

use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::blob::{Content, Envelope, FullPayload, KeyPayload, RestoredKey};
use super::executor::{Done, Inputs};
use super::lifecycle::Event;
use super::{KeyService, not_found};
use crate::error::{Error, Reason};
use crate::failpoint;
use crate::model::{KeyName, VersionId, VersionRecord};
use crate::store::{RestoreJournal, Snapshot};

/// A full backup read back and checked: the state it holds and each version's material.
pub struct FullBackup {
    pub state: Snapshot,
    /// Per key, per version, in the order of `state.keys`.
    pub material: Vec<Vec<Vec<u8>>>,
}

impl FullBackup {
    /// One key of the backup, by name (case-insensitively), ready for a selective restore.
    pub fn key(&self, name: &KeyName) -> Option<RestoredKey> {
        let at = self
            .state
            .keys
            .iter()
            .position(|k| k.name.as_str().eq_ignore_ascii_case(name.as_str()))?;
        Some(RestoredKey {
            key: self.state.keys[at].clone(),
            material: self.material[at].clone(),
        })
    }
}

/// How often a full restore past its point of no return is tried again before the service
/// stays closed for a restart to finish it.
const RESTORE_RETRIES: u32 = 3;

/// Reports progress as `(done, total)` keys.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

impl KeyService {
    /// The security domain backups are sealed under.
    pub fn domain(&self) -> Result<VersionId, Error> {
        Ok(self.hsm.domain()?.id)
    }

    /// A live key's backup blob: every version, attributes and tags, sealed (DESIGN §8).
    pub async fn backup_key(self: &Arc<Self>, name: KeyName) -> Result<Vec<u8>, Error> {
        let this = Arc::clone(self);
        super::detached(async move {
            let _guard = this.lock_key(&name).await;
            let n = name.clone();
            let key = this
                .blocking_store(move |s| s.key_snapshot(&n))
                .await?
                .filter(|k| k.deletion.is_none())
                .ok_or_else(|| not_found(&name, None))?;
            let material = this.wrap_versions(&key.versions).await?;
            let payload = KeyPayload::new(&key, &material);
            let json = serde_json::to_vec(&payload).map_err(|e| Error::Internal(e.to_string()))?;
            this.seal(Content::Key, json).await
        })
        .await
    }

    /// Restores a key from its backup blob. The name must be free; nothing changes unless the
    /// whole key is restored.
    pub async fn restore_key_blob(self: &Arc<Self>, raw: Vec<u8>) -> Result<VersionRecord, Error> {
        let plain = self.unseal(&raw, Content::Key).await?;
        let payload: KeyPayload = serde_json::from_slice(&plain).map_err(|e| {
            Error::BadParameter(format!("The backup blob's contents are malformed: {e}"))
        })?;
        let mut restored = payload.check()?;
        // A key backup is always of a live key.
        restored.key.deletion = None;
        self.restore_key(restored).await
    }

    /// Brings one key back with every version, live, under its name; 409 unless the name is
    /// free (never used, or purged). Runs under an intent: a crash half-way rolls it back.
    pub async fn restore_key(
        self: &Arc<Self>,
        mut restored: RestoredKey,
    ) -> Result<VersionRecord, Error> {
        restored.key.deletion = None;
        let this = Arc::clone(self);
        super::detached(async move {
            let name = restored.key.name.clone();
            for v in &restored.key.versions {
                this.refuse_unsupported(v.kind)?;
            }
            let _guard = this.lock_key(&name).await;
            let ids: Vec<VersionId> = restored.key.versions.iter().map(|v| v.version).collect();
            let intent = this
                .decide(&name, Event::Restore { versions: ids.clone() })
                .await?
                .ok_or_else(|| Error::Internal("a restore decided nothing".into()))?;
            let known = {
                let ids = ids.clone();
                this.blocking_store(move |s| {
                    let mut known = Vec::new();
                    for id in ids {
                        if s.version_by_id(id)?.is_some() {
                            known.push(id);
                        }
                    }
                    Ok(known)
                })
                .await?
            };
            if let Some(id) = known.first() {
                return Err(Error::Conflict {
                    message: format!(
                        "Version {id} of the backup already exists in this HSM under another key; a backup can be restored once."
                    ),
                    inner: None,
                });
            }
            let id = this.begin(&intent).await?;
            let versions = restored.key.versions.len();
            let done = this
                .carry_out(id, &intent, Inputs::Restore(Box::new(restored)), false)
                .await?;
            tracing::info!(key = %name, versions, "restored a key from a backup");
            match done {
                Done::Version(latest) => Ok(latest),
                Done::Versions(_) => Err(Error::Internal("a restore answered several".into())),
            }
        })
        .await
    }

    /// Whether the live key of this name is exactly the backed-up one: every version with its
    /// attributes, tags and public key, and its rotation policy. Restoring it then changes
    /// nothing, and a selective restore of it succeeds (the SDK's own tests restore a key
    /// straight after backing it up).
    pub async fn holds_exactly(&self, restored: &RestoredKey) -> Result<bool, Error> {
        let name = restored.key.name.clone();
        let live = self.blocking_store(move |s| s.key_snapshot(&name)).await?;
        Ok(live.is_some_and(|k| k.deletion.is_none() && k == restored.key))
    }

    /// 409 if the name is in use, live or soft-deleted (the lifecycle's refusal of a
    /// restore), before any backup is unsealed.
    pub async fn refuse_taken(&self, name: &KeyName) -> Result<(), Error> {
        let probe = Event::Restore {
            versions: Vec::new(),
        };
        self.decide(name, probe).await.map(|_| ())
    }

    /// Creates the token objects of every version of a restored key.
    pub(super) async fn create_objects(
        self: &Arc<Self>,
        restored: &RestoredKey,
        live: bool,
    ) -> Result<(), Error> {
        let restored = restored.clone();
        self.hsm
            .call(move |hsm, s| {
                for (v, wrapped) in restored.key.versions.iter().zip(&restored.material) {
                    hsm.restore_version(
                        s,
                        v.version,
                        restored.key.name.as_str(),
                        v.kind,
                        &v.ops,
                        &v.public,
                        wrapped,
                        live,
                    )?;
                }
                Ok(())
            })
            .await
            .map_err(Error::from)
    }

    async fn wrap_versions(
        self: &Arc<Self>,
        versions: &[VersionRecord],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let ids: Vec<VersionId> = versions.iter().map(|v| v.version).collect();
        self.hsm
            .call(move |hsm, s| ids.iter().map(|id| hsm.wrap_version(s, *id)).collect())
            .await
            .map_err(Error::from)
    }

    /// Seals a payload in the envelope: a fresh content key in the token, wrapped under the
    /// domain; AES-GCM over the payload with the header as additional data.
    async fn seal(self: &Arc<Self>, content: Content, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        let domain = self.domain()?;
        let mut iv = [0u8; super::blob::IV_LEN];
        getrandom::fill(&mut iv).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let payload = Zeroizing::new(payload);
        self.hsm
            .call(move |hsm, s| {
                let key = hsm.content_key(s)?;
                let sealed_len = payload.len() + super::blob::TAG_LEN;
                let sealed = Envelope::header(content, domain, &key.wrapped, &iv, sealed_len)
                    .map_err(|e| crate::hsm::Error::Unexpected(e.to_string()))
                    .and_then(|header| {
                        let sealed = hsm.seal(s, &key, iv, &header, &payload)?;
                        let mut out = header;
                        out.extend_from_slice(&sealed);
                        let mac = hsm.backup_mac(s, &out)?;
                        out.extend_from_slice(&mac);
                        Ok(out)
                    });
                hsm.drop_content_key(s, key);
                sealed
            })
            .await
            .map_err(Error::from)
    }

    /// Opens an envelope: every check that needs no token, then the content key's unwrap and
    /// the tag check in the token. Any failure is a 400 and nothing else happens.
    pub async fn unseal(
        self: &Arc<Self>,
        raw: &[u8],
        expected: Content,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let env = Envelope::parse(raw, self.domain()?)?;
        if env.content != expected {
            return Err(Error::BadParameter(match expected {
                Content::Key => "This is the file of a full backup, not a key's backup blob; restore it with a full or selective restore.".into(),
                Content::Full => "This is a key's backup blob, not the file of a full backup; restore it with POST /keys/restore.".into(),
            }));
        }
        self.hsm
            .call(move |hsm, s| {
                // The MAC first: nothing of a backup this HSM did not make reaches the unwrap.
                hsm.check_backup_mac(s, &env.authenticated(), &env.mac)?;
                let key = hsm.open_content_key(s, &env.wrapped_key)?;
                let plain = hsm.open(s, &key, env.iv, &env.header, &env.sealed);
                hsm.drop_content_key(s, key);
                plain
            })
            .await
            .map_err(Error::from)
    }

    // ----- full backup and restore ------------------------------------------------------------

    /// The sealed file of a full backup of everything: keys in every state with all versions,
    /// role definitions and assignments. Consistent: it is read in one transaction, and no
    /// purge destroys key material until every version is wrapped. Returns the file and the
    /// state counter it holds.
    pub async fn full_backup(
        self: &Arc<Self>,
        hsm_name: String,
        progress: Progress,
    ) -> Result<(Vec<u8>, u64), Error> {
        let this = Arc::clone(self);
        super::detached(async move {
            let _changes = Arc::clone(&this.changes).read_owned().await;
            let _purges = this.purges.write().await;
            let state = this.blocking_store(|s| s.snapshot()).await?;
            let total = state.keys.len() as u64;
            progress(0, total);
            failpoint::hit("backup.after_snapshot");
            let mut keys = Vec::with_capacity(state.keys.len());
            for (i, key) in state.keys.iter().enumerate() {
                let material = this.wrap_versions(&key.versions).await?;
                keys.push(KeyPayload::new(key, &material));
                progress(i as u64 + 1, total);
            }
            let payload = FullPayload {
                hsm: hsm_name,
                taken: this.clock.now(),
                state_seq: state.state_seq,
                purge_protection: state.purge_protection,
                keys,
                role_definitions: state.role_definitions,
                role_assignments: state.role_assignments,
            };
            let json = serde_json::to_vec(&payload).map_err(|e| Error::Internal(e.to_string()))?;
            let file = this.seal(Content::Full, json).await?;
            Ok((file, state.state_seq))
        })
        .await
    }

    /// Opens and checks the file of a full backup.
    pub async fn open_full_backup(self: &Arc<Self>, raw: &[u8]) -> Result<FullBackup, Error> {
        let plain = self.unseal(raw, Content::Full).await?;
        let payload: FullPayload = serde_json::from_slice(&plain).map_err(|e| {
            Error::BadParameter(format!("The backup's contents are malformed: {e}"))
        })?;
        let mut keys = Vec::with_capacity(payload.keys.len());
        let mut material = Vec::with_capacity(payload.keys.len());
        let mut names = std::collections::HashSet::new();
        let mut versions = std::collections::HashSet::new();
        for key in payload.keys {
            let restored = key.check()?;
            if !names.insert(restored.key.name.as_str().to_ascii_lowercase()) {
                return Err(Error::BadParameter(format!(
                    "The backup holds key {} twice.",
                    restored.key.name
                )));
            }
            for v in &restored.key.versions {
                if !versions.insert(v.version) {
                    return Err(Error::BadParameter(format!(
                        "The backup holds version {} twice.",
                        v.version
                    )));
                }
            }
            keys.push(restored.key);
            material.push(restored.material);
        }
        Ok(FullBackup {
            state: Snapshot {
                state_seq: payload.state_seq,
                purge_protection: payload.purge_protection,
                keys,
                role_definitions: payload.role_definitions,
                role_assignments: payload.role_assignments,
            },
            material,
        })
    }

    /// Replaces everything with the backup's state. Waits for every change under way to
    /// finish and keeps new ones out; then commits the journal (from here a restart finishes
    /// the restore: `file` is the service's own copy of the backup) and applies it.
    pub async fn full_restore(
        self: &Arc<Self>,
        job: String,
        backup: FullBackup,
        file: PathBuf,
        expected_state: u64,
        progress: Progress,
    ) -> Result<(), Error> {
        let this = Arc::clone(self);
        super::detached(async move {
            let _changes = Arc::clone(&this.changes).write_owned().await;
            // Checked again now that nothing can change: a key changed between the request's
            // check and here is in no backup, and would be lost.
            let now_state = this.blocking_store(|s| s.state_seq()).await?;
            if now_state != expected_state {
                return Err(Error::Conflict {
                    message: "Keys or roles changed after the full restore was accepted, so the latest full backup no longer holds the current state; nothing was restored. Back up again and restore.".into(),
                    inner: Some(Reason::FullBackupRequired),
                });
            }
            // Every version must unwrap before anything is destroyed: a backup whose material
            // the token refuses would otherwise fail after the point of no return, on every
            // start.
            this.check_full_restore(&backup).await?;
            failpoint::hit("restore.before_journal");
            let journal = RestoreJournal {
                job: job.clone(),
                file: file.to_string_lossy().into_owned(),
            };
            this.blocking_store(move |s| s.begin_restore(&journal))
                .await?;
            // Past the point of no return: retry a failure (the token may be reconnecting),
            // still holding the gate, so nothing runs over a half-restored token.
            let mut attempt = 0;
            loop {
                match this.apply_restore(&job, &backup, &progress).await {
                    Ok(()) => return Ok(()),
                    Err(e) if attempt < RESTORE_RETRIES => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "the full restore failed half-way; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        // The gate stays shut until the restart that finishes the restore.
                        std::mem::forget(_changes);
                        return Err(e);
                    }
                }
            }
        })
        .await
    }

    /// What a full restore checks of a backup's contents before its point of no return (and
    /// `PUT /prerestore` checks alike): the token makes every kind of key the backup holds,
    /// and every version unwraps into a session object, destroyed at once. Changes nothing.
    pub async fn check_full_restore(self: &Arc<Self>, backup: &FullBackup) -> Result<(), Error> {
        for v in backup.state.keys.iter().flat_map(|k| &k.versions) {
            self.refuse_unsupported(v.kind)?;
        }
        self.trial_unwrap(backup).await
    }

    /// Unwraps every version of a backup into session objects and destroys them again.
    async fn trial_unwrap(self: &Arc<Self>, backup: &FullBackup) -> Result<(), Error> {
        let work: Vec<(VersionRecord, Vec<u8>)> = backup
            .state
            .keys
            .iter()
            .zip(&backup.material)
            .flat_map(|(k, m)| k.versions.iter().cloned().zip(m.iter().cloned()))
            .collect();
        self.hsm
            .call(move |hsm, s| {
                for (v, wrapped) in &work {
                    hsm.trial_unwrap(s, v.kind, wrapped)?;
                }
                Ok(())
            })
            .await
            .map_err(Error::from)
    }

    /// Finishes a full restore the last run began (its journal is committed). Runs at
    /// start-up, before anything else touches keys.
    pub async fn resume_restore(self: &Arc<Self>) -> Result<Option<String>, Error> {
        let Some(journal) = self.blocking_store(|s| s.restore_journal()).await? else {
            return Ok(None);
        };
        tracing::warn!(job = %journal.job, "a full restore was interrupted; finishing it");
        let raw = std::fs::read(&journal.file).map_err(|e| {
            Error::Internal(format!(
                "the interrupted restore's copy of the backup ({}) cannot be read: {e}",
                journal.file
            ))
        })?;
        let backup = self.open_full_backup(&raw).await?;
        let this = Arc::clone(self);
        let job = journal.job.clone();
        super::detached(async move {
            let _changes = Arc::clone(&this.changes).write_owned().await;
            let job_id = job.clone();
            let store = Arc::clone(&this.store);
            let progress: Progress = Arc::new(move |done, total| {
                let _ = store.job_progress(&job_id, "Full restore is in progress", done, total);
            });
            this.apply_restore(&job, &backup, &progress).await
        })
        .await?;
        Ok(Some(journal.job))
    }

    /// The part of a full restore past the point of no return. Idempotent, so a restart can
    /// run it again from the top: every key object goes, the backup's objects are made, and
    /// one transaction swaps the metadata and clears the journal.
    async fn apply_restore(
        self: &Arc<Self>,
        job: &str,
        backup: &FullBackup,
        progress: &Progress,
    ) -> Result<(), Error> {
        let destroyed = self.hsm.call(|hsm, s| hsm.destroy_all_keys(s)).await?;
        tracing::info!(
            destroyed,
            "full restore: removed every key object of the old state"
        );
        let total = backup.state.keys.len() as u64;
        progress(0, total);
        for (i, (key, material)) in backup.state.keys.iter().zip(&backup.material).enumerate() {
            let restored = RestoredKey {
                key: key.clone(),
                material: material.clone(),
            };
            self.create_objects(&restored, key.deletion.is_none())
                .await?;
            progress(i as u64 + 1, total);
            if i == 0 {
                failpoint::hit("restore.mid_token");
            }
        }
        failpoint::hit("restore.before_commit");
        let (state, job, now) = (backup.state.clone(), job.to_owned(), self.clock.now());
        self.blocking_store(move |s| s.commit_restore(&state, &job, now))
            .await?;
        self.refresh_purge_protection().await?;
        let hsm = Arc::clone(&self.hsm);
        tokio::task::spawn_blocking(move || hsm.rebuild_cache())
            .await
            .map_err(|e| Error::Internal(format!("rebuilding the handle cache panicked: {e}")))??;
        tracing::info!(
            keys = backup.state.keys.len(),
            "full restore: committed the backup's state"
        );
        Ok(())
    }
}
