//! Full backup, full restore and selective key restore as Azure's long-running operations:
//! jobs with ids and a status kept in the database, run on their own tasks, against a
//! pluggable backup location ([`location`]). The key service does the work on keys and token
//! ([`crate::keys::KeyService::full_backup`] and friends); this module runs the jobs, keeps the
//! service quiet during a full restore, and finishes what a restart interrupted.

pub mod client;
pub mod location;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::clock::{Clock, compact_utc};
use crate::error::{Error, Missing, Reason};
use crate::keys::KeyService;
use crate::keys::backup::Progress;
use crate::model::KeyName;
use crate::model::{FailureKind, Job, JobKind, JobStatus};
use crate::store::{LastBackup, Store};
use location::{BackupLocation, Container};

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The file of a full backup inside its folder.
pub const BACKUP_FILE: &str = "backup.p11b";

/// Settings of backups and restores.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    /// The name in folder names: `mhsm-{name}-{YYYYMMDDHHmmSS}`.
    pub hsm_name: String,
    /// A full restore needs a full backup of the current state at most this old.
    pub restore_needs_backup_within_secs: i64,
    /// Where a running full restore keeps its own copy of the backup (in the data dir).
    pub work_dir: PathBuf,
}

pub struct Backups {
    keys: Arc<KeyService>,
    store: Arc<Store>,
    location: Arc<dyn BackupLocation>,
    clock: Arc<dyn Clock>,
    settings: BackupSettings,
    /// On from the moment a full restore is accepted until it is committed: every data-plane
    /// request but the restore status gets 503.
    restoring: AtomicBool,
    /// The id of the full restore under way.
    restore_job: std::sync::Mutex<Option<String>>,
    /// Held shared by every data-plane request, exclusively by a full restore: it waits for the
    /// requests under way to finish.
    requests: Arc<tokio::sync::RwLock<()>>,
    /// Backups name their folder one at a time, so two in one second cannot collide.
    naming: tokio::sync::Mutex<()>,
}

/// What a full or selective restore reads.
#[derive(Clone, Debug)]
pub struct RestoreSource {
    pub container_uri: String,
    pub folder: String,
}

impl Backups {
    /// Makes a container of the backup location (`http/storage.rs`, for `az storage container
    /// create`): `true` if made, `false` if it existed.
    pub async fn create_container(&self, name: String) -> Result<bool, Error> {
        let location = Arc::clone(&self.location);
        blocking_io(move || location.create_container(&name)).await
    }

    pub fn new(
        keys: Arc<KeyService>,
        store: Arc<Store>,
        location: Arc<dyn BackupLocation>,
        clock: Arc<dyn Clock>,
        settings: BackupSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            keys,
            store,
            location,
            clock,
            settings,
            restoring: AtomicBool::new(false),
            restore_job: std::sync::Mutex::new(None),
            requests: Arc::new(tokio::sync::RwLock::new(())),
            naming: tokio::sync::Mutex::new(()),
        })
    }

    /// At start-up, before keys are reconciled or requests served: finishes a full restore a
    /// crash interrupted, and closes the jobs the last run left open.
    pub async fn recover(self: &Arc<Self>) -> Result<(), Error> {
        if let Some(job) = self.keys.resume_restore().await? {
            tracing::info!(job = %job, "finished the interrupted full restore");
        }
        let now = self.clock.now();
        for job in self.blocking(|s| s.unfinished_jobs()).await? {
            let message = match job.kind {
                JobKind::Backup => {
                    "The service stopped during the backup; use only folders of backups that succeeded."
                }
                JobKind::Restore => {
                    "The service stopped before the restore began; nothing was changed."
                }
                JobKind::SelectiveRestore => {
                    "The service stopped during the restore; the key is back only if it is listed now."
                }
                JobKind::PreBackup | JobKind::PreRestore => {
                    "The service stopped during the check, which changes nothing; start it again."
                }
            };
            let id = job.id.clone();
            self.blocking(move |s| {
                s.finish_job(
                    &id,
                    JobStatus::Failed,
                    message,
                    Some((FailureKind::Interrupted, message)),
                    now,
                )
            })
            .await?;
        }
        // Copies of backups that finished restores no longer need.
        if let Ok(entries) = std::fs::read_dir(&self.settings.work_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Whether a full restore is under way (every data-plane request but its status is 503).
    pub fn restoring(&self) -> bool {
        self.restoring.load(Ordering::SeqCst)
    }

    /// A share of the request gate; `None` while a full restore runs or waits to.
    pub fn admit(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        if self.restoring() {
            return None;
        }
        Arc::clone(&self.requests).try_read_owned().ok()
    }

    // ----- full backup ----------------------------------------------------------------------

    /// Starts a full backup into the container the URI names.
    pub async fn start_backup(self: &Arc<Self>, storage_uri: &str) -> Result<Job, Error> {
        let container = self.location.container(storage_uri)?;
        let job = self
            .new_job(JobKind::Backup, &container, None, None)
            .await?;
        let this = Arc::clone(self);
        let id = job.id.clone();
        tokio::spawn(async move {
            let outcome = this.run_backup(&id, &container).await;
            this.finish(&id, outcome, "Full backup").await;
        });
        Ok(job)
    }

    async fn run_backup(self: &Arc<Self>, id: &str, container: &Container) -> Result<(), Error> {
        let progress = self.progress(id, "Full backup is in progress");
        let (file, state_seq) = self
            .keys
            .full_backup(self.settings.hsm_name.clone(), progress)
            .await?;
        let _naming = self.naming.lock().await;
        let folder = loop {
            let folder = format!(
                "mhsm-{}-{}",
                self.settings.hsm_name,
                compact_utc(self.clock.now())
            );
            let exists = {
                let (location, container, folder) = (
                    Arc::clone(&self.location),
                    container.clone(),
                    folder.clone(),
                );
                blocking_io(move || location.exists(&container, &folder)).await?
            };
            if !exists {
                break folder;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        {
            let (location, container, folder) = (
                Arc::clone(&self.location),
                container.clone(),
                folder.clone(),
            );
            blocking_io(move || location.write(&container, &folder, BACKUP_FILE, &file)).await?;
        }
        crate::failpoint::hit("backup.after_folder");
        let now = self.clock.now();
        let last = LastBackup {
            state_seq,
            completed: now,
            folder,
        };
        let id = id.to_owned();
        self.blocking(move |s| s.commit_full_backup(&id, &last, now))
            .await?;
        Ok(())
    }

    // ----- full restore ---------------------------------------------------------------------

    /// Starts a full restore. Refused (409) unless a full backup of the current state
    /// completed within the configured window, so the state it replaces can be got back.
    pub async fn start_restore(self: &Arc<Self>, source: RestoreSource) -> Result<Job, Error> {
        let container = self.location.container(&source.container_uri)?;
        location::check_folder(&source.folder)?;
        let state = self.require_recent_backup().await?;
        let raw = self.read_backup(&container, &source.folder).await?;
        // Everything a client can get wrong is checked before the 202: the backup opens under
        // this domain and authenticates.
        let backup = self.keys.open_full_backup(&raw).await?;
        if self
            .restoring
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Error::Conflict {
                message: "A full restore is already under way.".into(),
                inner: None,
            });
        }
        // A backup or key restore accepted before would run after the restore, over the
        // state it put back.
        if let Err(e) = self.refuse_busy().await {
            self.restoring.store(false, Ordering::SeqCst);
            return Err(e);
        }
        let job = match self
            .new_job(
                JobKind::Restore,
                &container,
                Some(source.folder.clone()),
                None,
            )
            .await
        {
            Ok(job) => job,
            Err(e) => {
                self.restoring.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let this = Arc::clone(self);
        let id = job.id.clone();
        *self.restore_job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.id.clone());
        tokio::spawn(async move {
            // Every request already admitted finishes first; new ones get 503.
            let quiet = Arc::clone(&this.requests).write_owned().await;
            let outcome = this.run_restore(&id, raw, backup, state).await;
            let unfinished = matches!(this.blocking(|s| s.restore_journal()).await, Ok(Some(_)));
            if unfinished {
                // Past the point of no return and not finished: the service stays closed and
                // a restart finishes the restore.
                let message = format!(
                    "The full restore could not finish ({}); restart the service to complete it.",
                    outcome.err().map(|e| e.to_string()).unwrap_or_default()
                );
                tracing::error!(job = %id, "{message}");
                let (id2, m) = (id.clone(), message.clone());
                let _ = this.blocking(move |s| s.job_progress(&id2, &m, 0, 0)).await;
                // `restoring` stays on: every request keeps getting 503 until the restart.
                return;
            }
            // Open again before the outcome is told: a client that sees `Succeeded` may send
            // its next request at once.
            drop(quiet);
            this.restoring.store(false, Ordering::SeqCst);
            this.finish(&id, outcome, "Full restore").await;
        });
        Ok(job)
    }

    /// 409 while a backup or key restore job is under way (checks change nothing and do not
    /// count).
    async fn refuse_busy(&self) -> Result<(), Error> {
        let jobs = self.blocking(|s| s.unfinished_jobs()).await?;
        if jobs.iter().any(|j| !j.kind.is_check()) {
            return Err(Error::Conflict {
                message: "A backup or a key restore is under way; start the full restore once it has finished.".into(),
                inner: None,
            });
        }
        Ok(())
    }

    async fn run_restore(
        self: &Arc<Self>,
        id: &str,
        raw: Vec<u8>,
        backup: crate::keys::backup::FullBackup,
        expected_state: u64,
    ) -> Result<(), Error> {
        let work_dir = self.settings.work_dir.clone();
        let copy = work_dir.join(format!("{id}.p11b"));
        {
            let copy = copy.clone();
            blocking_io(move || {
                crate::fsutil::create_private_dir(&work_dir)
                    .and_then(|()| crate::fsutil::write_atomic(&copy, &raw, 0o600))
                    .map_err(|e| Error::Internal(format!("keeping a copy of the backup: {e}")))
            })
            .await?;
        }
        let progress = self.progress(id, "Full restore is in progress");
        let result = self
            .keys
            .full_restore(
                id.to_owned(),
                backup,
                copy.clone(),
                expected_state,
                progress,
            )
            .await;
        // The copy is needed only while a journal names it (a restart finishes from it).
        if !matches!(self.blocking(|s| s.restore_journal()).await, Ok(Some(_))) {
            let _ = std::fs::remove_file(&copy);
        }
        result
    }

    /// Returns the state counter the recent backup holds.
    async fn require_recent_backup(&self) -> Result<u64, Error> {
        let (last, current) = self
            .blocking(|s| Ok((s.last_full_backup()?, s.state_seq()?)))
            .await?;
        let window = self.settings.restore_needs_backup_within_secs;
        let now = self.clock.now();
        let refusal = match last {
            None => Some("no full backup has been made".to_owned()),
            Some(l) if l.state_seq != current => Some(format!(
                "keys or roles changed after the last full backup ({})",
                l.folder
            )),
            Some(l) if now - l.completed > window => Some(format!(
                "the last full backup ({}) completed {} minutes ago",
                l.folder,
                (now - l.completed) / 60
            )),
            Some(_) => None,
        };
        match refusal {
            None => Ok(current),
            Some(why) => Err(Error::Conflict {
                message: format!(
                    "A full restore replaces every key and role assignment, so it needs a full backup of the current state completed within the last {} minutes; {why}. Start a full backup first.",
                    window / 60
                ),
                inner: Some(Reason::FullBackupRequired),
            }),
        }
    }

    // ----- checks (7.6: pre-backup and pre-restore) ------------------------------------------

    /// Starts the check of whether a full backup into the container would succeed: the
    /// container can take a new folder, and the token wraps every version of every key under
    /// the domain and seals the result, as the backup does; the sealed file is thrown away and
    /// nothing is written. A URI the backup would refuse is refused now (400).
    pub async fn start_pre_backup(self: &Arc<Self>, storage_uri: &str) -> Result<Job, Error> {
        let container = self.location.container(storage_uri)?;
        let job = self
            .new_job(JobKind::PreBackup, &container, None, None)
            .await?;
        let this = Arc::clone(self);
        let id = job.id.clone();
        tokio::spawn(async move {
            let outcome = this.check_backup(&id, &container).await;
            this.finish(&id, outcome, "Pre-backup check").await;
        });
        Ok(job)
    }

    async fn check_backup(self: &Arc<Self>, id: &str, container: &Container) -> Result<(), Error> {
        {
            let (location, container) = (Arc::clone(&self.location), container.clone());
            blocking_io(move || location.check_writable(&container)).await?;
        }
        let progress = self.progress(id, "Pre-backup check is in progress");
        let (sealed, _) = self
            .keys
            .full_backup(self.settings.hsm_name.clone(), progress)
            .await?;
        drop(sealed);
        Ok(())
    }

    /// Starts the check of whether a full restore from the folder would succeed, in the order
    /// the restore checks (so the check fails as the restore would): a recent full backup holds
    /// the current state, the folder holds a backup, it opens under this HSM's security domain
    /// and authenticates, no full restore, backup or key restore is under way, the token makes
    /// every key kind it holds, and every version unwraps (into session objects, destroyed at
    /// once). Nothing is changed. A URI or folder name the restore would refuse is refused
    /// now (400).
    pub async fn start_pre_restore(self: &Arc<Self>, source: RestoreSource) -> Result<Job, Error> {
        let container = self.location.container(&source.container_uri)?;
        location::check_folder(&source.folder)?;
        let job = self
            .new_job(
                JobKind::PreRestore,
                &container,
                Some(source.folder.clone()),
                None,
            )
            .await?;
        let this = Arc::clone(self);
        let id = job.id.clone();
        tokio::spawn(async move {
            let outcome = this.check_restore(&container, &source.folder).await;
            this.finish(&id, outcome, "Pre-restore check").await;
        });
        Ok(job)
    }

    async fn check_restore(
        self: &Arc<Self>,
        container: &Container,
        folder: &str,
    ) -> Result<(), Error> {
        self.require_recent_backup().await?;
        let raw = self.read_backup(container, folder).await?;
        let backup = self.keys.open_full_backup(&raw).await?;
        if self.restoring() {
            return Err(Error::Conflict {
                message: "A full restore is already under way.".into(),
                inner: None,
            });
        }
        self.refuse_busy().await?;
        self.keys.check_full_restore(&backup).await
    }

    // ----- selective key restore ------------------------------------------------------------

    /// Starts the restore of one key, with all its versions, from a full backup. Refused (409)
    /// unless the name is free, or the live key of that name is exactly the backed-up one
    /// (then the job succeeds and changes nothing).
    pub async fn start_selective_restore(
        self: &Arc<Self>,
        name: KeyName,
        source: RestoreSource,
    ) -> Result<Job, Error> {
        let container = self.location.container(&source.container_uri)?;
        location::check_folder(&source.folder)?;
        // A taken name is a 409 before anything else, unless the backup holds exactly that
        // key (then there is nothing to do, and the job succeeds).
        let taken = self.keys.refuse_taken(&name).await.err();
        let found = self.backed_up_key(&container, &source.folder, &name).await;
        let (restored, unchanged) = match (taken, found) {
            (None, found) => (found?, false),
            (Some(conflict), Ok(restored)) => {
                if !self.keys.holds_exactly(&restored).await? {
                    return Err(conflict);
                }
                (restored, true)
            }
            // Not in the backup, or no backup of ours: the name being taken comes first. A
            // failure of the service (the token, the storage) is not hidden behind a 409.
            (Some(conflict), Err(Error::BadParameter(_))) => return Err(conflict),
            (Some(_), Err(e)) => return Err(e),
        };
        let job = self
            .new_job(
                JobKind::SelectiveRestore,
                &container,
                Some(source.folder.clone()),
                Some(name.to_string()),
            )
            .await?;
        let this = Arc::clone(self);
        let id = job.id.clone();
        tokio::spawn(async move {
            let outcome = if unchanged {
                tracing::info!(key = %restored.key.name, "selective restore: the key is already exactly as the backup has it");
                Ok(())
            } else {
                this.keys.restore_key(restored).await.map(|_| ())
            };
            this.finish(&id, outcome, "Selective key restore").await;
        });
        Ok(job)
    }

    /// Key `name` as the full backup in `folder` holds it; 400 if it holds none.
    async fn backed_up_key(
        &self,
        container: &Container,
        folder: &str,
        name: &KeyName,
    ) -> Result<crate::keys::blob::RestoredKey, Error> {
        let raw = self.read_backup(container, folder).await?;
        let backup = self.keys.open_full_backup(&raw).await?;
        backup.key(name).ok_or_else(|| {
            Error::BadParameter(format!("The backup {folder} holds no key named {name}."))
        })
    }

    // ----- status ---------------------------------------------------------------------------

    /// A job of one of `kinds`; 404 for an unknown id or a job of another kind.
    pub async fn job(&self, id: &str, kinds: &[JobKind]) -> Result<Job, Error> {
        let owned = id.to_owned();
        let job = self.blocking(move |s| s.job(&owned)).await?;
        // A full restore's job is marked done in the transaction that commits it, but the
        // service reopens a moment later: until then it is still in progress to clients.
        let job = job.map(|mut j| {
            let running = self
                .restore_job
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref()
                == Some(j.id.as_str());
            if running && j.status != JobStatus::InProgress && self.restoring() {
                j.status = JobStatus::InProgress;
                j.end_time = None;
                j.details = "Full restore is completing".into();
            }
            j
        });
        job.filter(|j| kinds.contains(&j.kind))
            .ok_or_else(|| Error::NotFound {
                what: Missing::Job,
                message: format!("No job {} exists.", crate::model::truncate_for_message(id)),
            })
    }

    // ----- helpers --------------------------------------------------------------------------

    async fn new_job(
        &self,
        kind: JobKind,
        container: &Container,
        folder: Option<String>,
        key_name: Option<String>,
    ) -> Result<Job, Error> {
        let details = match kind {
            JobKind::Backup => "Full backup is in progress",
            JobKind::Restore => "Full restore is in progress",
            JobKind::SelectiveRestore => "Selective key restore is in progress",
            JobKind::PreBackup => "Pre-backup check is in progress",
            JobKind::PreRestore => "Pre-restore check is in progress",
        };
        let job = Job {
            id: uuid::Uuid::new_v4().simple().to_string(),
            kind,
            status: JobStatus::InProgress,
            details: details.into(),
            error: None,
            start_time: self.clock.now(),
            end_time: None,
            container: container.uri.clone(),
            folder,
            key_name,
            done: 0,
            total: 0,
        };
        let stored = job.clone();
        self.blocking(move |s| s.insert_job(&stored)).await?;
        Ok(job)
    }

    async fn read_backup(&self, container: &Container, folder: &str) -> Result<Vec<u8>, Error> {
        let (location, container, folder) = (
            Arc::clone(&self.location),
            container.clone(),
            folder.to_owned(),
        );
        blocking_io(move || location.read(&container, &folder, BACKUP_FILE)).await
    }

    /// Records progress at most every quarter second (and at the start and the end): each
    /// record is a committed write.
    fn progress(&self, id: &str, details: &'static str) -> Progress {
        let (store, id) = (Arc::clone(&self.store), id.to_owned());
        let last = std::sync::Mutex::new(None::<std::time::Instant>);
        Arc::new(move |done, total| {
            {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
                if !(due || done == 0 || done == total) {
                    return;
                }
                *last = Some(std::time::Instant::now());
            }
            // Progress is advisory: a failed write must not fail the job.
            if let Err(e) = store.job_progress(&id, details, done, total) {
                tracing::warn!(job = %id, error = %e, "could not record job progress");
            }
        })
    }

    /// Records how a job ended (a backup's success is recorded with its folder).
    async fn finish(&self, id: &str, outcome: Result<(), Error>, what: &str) {
        let now = self.clock.now();
        let id = id.to_owned();
        let result = match outcome {
            Ok(()) => {
                let details = format!("{what} completed");
                let id2 = id.clone();
                self.blocking(move |s| match s.job(&id2)? {
                    Some(j) if j.status == JobStatus::InProgress => {
                        s.finish_job(&id2, JobStatus::Succeeded, &details, None, now)
                    }
                    _ => Ok(()),
                })
                .await
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "{what} failed");
                let (kind, message) = e.failure();
                let details = format!("{what} failed");
                let id2 = id.clone();
                // A job its commit already finished (a full restore that failed only in what
                // follows the commit) keeps its status.
                self.blocking(move |s| match s.job(&id2)? {
                    Some(j) if j.status == JobStatus::InProgress => s.finish_job(
                        &id2,
                        JobStatus::Failed,
                        &details,
                        Some((kind, &message)),
                        now,
                    ),
                    _ => Ok(()),
                })
                .await
            }
        };
        if let Err(e) = result {
            tracing::error!(job = %id, error = %e, "could not record how the job ended");
        }
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, crate::store::Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.store.blocking(f).await.map_err(Error::from)
    }
}

async fn blocking_io<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, Error> + Send + 'static,
) -> Result<R, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a backup file operation panicked: {e}")))?
}
