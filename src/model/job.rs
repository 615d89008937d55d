//! Backup and restore jobs as the service keeps them: their kind, status, progress, and the
//! failure that ended one (a kind, not an Azure code: `http/error.rs` chooses the code).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Backup,
    Restore,
    SelectiveRestore,
    /// The check of whether a full backup would succeed (`POST /prebackup`); changes nothing.
    PreBackup,
    /// The check of whether a full restore would succeed (`PUT /prerestore`); changes nothing.
    PreRestore,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::SelectiveRestore => "selective-restore",
            JobKind::PreBackup => "pre-backup",
            JobKind::PreRestore => "pre-restore",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "backup" => Some(JobKind::Backup),
            "restore" => Some(JobKind::Restore),
            "selective-restore" => Some(JobKind::SelectiveRestore),
            "pre-backup" => Some(JobKind::PreBackup),
            "pre-restore" => Some(JobKind::PreRestore),
            _ => None,
        }
    }

    /// A check that only reports whether the real operation would succeed.
    pub fn is_check(self) -> bool {
        matches!(self, JobKind::PreBackup | JobKind::PreRestore)
    }
}

/// Azure's `OperationStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    InProgress,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "InProgress",
            JobStatus::Succeeded => "Succeeded",
            JobStatus::Failed => "Failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "InProgress" => Some(JobStatus::InProgress),
            "Succeeded" => Some(JobStatus::Succeeded),
            "Failed" => Some(JobStatus::Failed),
            _ => None,
        }
    }
}

/// A backup or restore job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub details: String,
    /// What ended a failed job, and its message.
    pub error: Option<(FailureKind, String)>,
    pub start_time: i64,
    pub end_time: Option<i64>,
    /// The storage container URI the request named.
    pub container: String,
    /// The backup folder: written by a backup, read by a restore.
    pub folder: Option<String>,
    pub key_name: Option<String>,
    pub done: u64,
    pub total: u64,
}

/// The kind of failure that ended a job. Stored by name (the names earlier releases stored as
/// codes, so their rows read back); `http/error.rs` chooses the Azure code a status poll shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    BadParameter,
    KeyNotFound,
    NotFound,
    Conflict,
    Forbidden,
    AccessDenied,
    Unavailable,
    /// The service stopped while the job ran.
    Interrupted,
    Internal,
}

impl FailureKind {
    pub fn stored_name(self) -> &'static str {
        match self {
            FailureKind::BadParameter => "BadParameter",
            FailureKind::KeyNotFound => "KeyNotFound",
            FailureKind::NotFound => "NotFound",
            FailureKind::Conflict => "Conflict",
            FailureKind::Forbidden => "Forbidden",
            FailureKind::AccessDenied => "AccessDenied",
            FailureKind::Unavailable => "ServiceUnavailable",
            FailureKind::Interrupted => "Interrupted",
            FailureKind::Internal => "InternalError",
        }
    }

    /// Any name this or an earlier release stored; an unknown one reads as internal.
    pub fn from_stored(raw: &str) -> Self {
        match raw {
            "BadParameter" => FailureKind::BadParameter,
            "KeyNotFound" => FailureKind::KeyNotFound,
            "Conflict" => FailureKind::Conflict,
            "Forbidden" => FailureKind::Forbidden,
            "AccessDenied" => FailureKind::AccessDenied,
            "ServiceUnavailable" => FailureKind::Unavailable,
            "Interrupted" => FailureKind::Interrupted,
            raw if raw.ends_with("NotFound") => FailureKind::NotFound,
            _ => FailureKind::Internal,
        }
    }
}
