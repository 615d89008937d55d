//! Backup endpoints: a key's backup blob and its restore (keys.json), and full backup, full
//! restore and selective key restore as long-running operations (backuprestore.json).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{AzJson, AzPath, AzQuery};
use super::keys::{KeyBundleOut, bundle};
use crate::backup::RestoreSource;
use crate::error::Error;
use crate::keys::import::decode_b64;
use crate::model::KeyName;
use crate::model::{Job, JobKind, JobStatus};

/// How long clients wait between two polls of a job, in seconds.
const RETRY_AFTER: &str = "1";

#[derive(Deserialize)]
pub struct BlobIn {
    value: Option<String>,
}

#[derive(Serialize)]
pub struct BlobOut {
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageIn {
    storage_resource_uri: Option<String>,
    #[allow(
        dead_code,
        reason = "accepted as Azure's API has it; the directory store needs no SAS token"
    )]
    token: Option<String>,
    #[allow(
        dead_code,
        reason = "accepted as Azure's API has it; the directory store needs no identity either"
    )]
    use_managed_identity: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreIn {
    sas_token_parameters: Option<StorageIn>,
    folder_to_restore: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectiveRestoreIn {
    sas_token_parameters: Option<StorageIn>,
    folder: Option<String>,
}

#[derive(Serialize)]
pub struct ErrorOut {
    code: String,
    message: String,
}

#[derive(Serialize)]
pub struct ProgressOut {
    done: u64,
    total: u64,
}

/// `FullBackupOperation`, `RestoreOperation` and `SelectiveKeyRestoreOperation` in one shape:
/// the restore forms leave out `azureStorageBlobContainerUri`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOut {
    status: &'static str,
    status_details: String,
    error: Option<ErrorOut>,
    job_id: String,
    start_time: i64,
    end_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    azure_storage_blob_container_uri: Option<String>,
    /// p11vault's addition: keys done and keys in all, for progress bars.
    progress: ProgressOut,
}

fn operation(job: Job) -> OperationOut {
    let container_uri = match (job.kind, &job.folder) {
        // The folder URL, as a later restore wants it (the Python SDK's `folder_url`).
        (JobKind::Backup, Some(folder)) => Some(format!("{}/{folder}", job.container)),
        (JobKind::Backup, None) | (JobKind::PreBackup, _) => Some(job.container.clone()),
        _ => None,
    };
    OperationOut {
        status: job.status.as_str(),
        status_details: job.details,
        error: job.error.map(|(kind, message)| ErrorOut {
            code: super::error::failure_code(kind).to_owned(),
            message,
        }),
        job_id: job.id,
        start_time: job.start_time,
        end_time: job.end_time,
        azure_storage_blob_container_uri: container_uri,
        progress: ProgressOut {
            done: job.done,
            total: job.total,
        },
    }
}

/// 202 with the status URL clients poll (`Azure-AsyncOperation`) and how long to wait.
fn accepted(state: &AppState, job: Job, api_version: Option<&str>) -> Response {
    let kind = match job.kind {
        JobKind::Backup | JobKind::PreBackup => "backup",
        JobKind::Restore | JobKind::SelectiveRestore | JobKind::PreRestore => "restore",
    };
    let mut url = format!("{}/{kind}/{}/pending", state.public_url, job.id);
    if let Some(v) = api_version {
        url.push_str("?api-version=");
        url.push_str(v);
    }
    let mut response = (StatusCode::ACCEPTED, Json(operation(job))).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&url) {
        headers.insert("azure-asyncoperation", v);
    }
    headers.insert("retry-after", HeaderValue::from_static(RETRY_AFTER));
    response
}

fn storage_uri(storage: Option<StorageIn>) -> Result<String, Error> {
    let storage = storage.ok_or_else(|| {
        Error::BadParameter(
            "The request lacks 'sasTokenParameters' (the storage container).".into(),
        )
    })?;
    // Neither a SAS token nor `useManagedIdentity` is needed: who may write backups is decided
    // by RBAC and the backup directory's permissions, so both forms are accepted alike.
    storage.storage_resource_uri.ok_or_else(|| {
        Error::BadParameter(
            "The request lacks 'storageResourceUri' (the storage container).".into(),
        )
    })
}

// ----- a key's backup blob --------------------------------------------------------------------

pub async fn backup_key(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<BlobOut>, Error> {
    let name = KeyName::parse(&name)?;
    let blob = state.keys.backup_key(name).await?;
    Ok(Json(BlobOut {
        value: URL_SAFE_NO_PAD.encode(blob),
    }))
}

pub async fn restore_key(
    State(state): State<AppState>,
    AzJson(body): AzJson<BlobIn>,
) -> Result<Json<KeyBundleOut>, Error> {
    let raw = body
        .value
        .ok_or_else(|| Error::BadParameter("The request lacks the backup blob 'value'.".into()))?;
    let blob = decode_b64("value", &raw)?;
    let record = state.keys.restore_key_blob(blob).await?;
    Ok(Json(bundle(&state, &record)))
}

// ----- long-running operations ----------------------------------------------------------------

pub async fn start_backup(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<StorageIn>,
) -> Result<Response, Error> {
    let uri = storage_uri(Some(body))?;
    let job = state.backups.start_backup(&uri).await?;
    Ok(accepted(&state, job, query.get("api-version")?))
}

/// `POST /prebackup`: the checks of a full backup, as a job whose status says whether the
/// backup would succeed. A body the backup would refuse is refused the same way (400).
pub async fn start_pre_backup(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<StorageIn>,
) -> Result<Response, Error> {
    let uri = storage_uri(Some(body))?;
    let job = state.backups.start_pre_backup(&uri).await?;
    Ok(accepted(&state, job, query.get("api-version")?))
}

/// `PUT /prerestore`: the checks of a full restore, as a job whose status says whether the
/// restore would succeed (the folder exists and is a backup of this HSM's domain that the token
/// can unwrap, a recent full backup holds the current state, nothing else runs).
pub async fn start_pre_restore(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<RestoreIn>,
) -> Result<Response, Error> {
    let container_uri = storage_uri(body.sas_token_parameters)?;
    let folder = body.folder_to_restore.ok_or_else(|| {
        Error::BadParameter("The request lacks 'folderToRestore' (the backup folder).".into())
    })?;
    let job = state
        .backups
        .start_pre_restore(RestoreSource {
            container_uri,
            folder,
        })
        .await?;
    Ok(accepted(&state, job, query.get("api-version")?))
}

/// A status body; while the job runs, with `Retry-After` so clients poll at our pace.
fn status_response(job: Job) -> Response {
    let running = job.status == JobStatus::InProgress;
    let mut response = Json(operation(job)).into_response();
    if running {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static(RETRY_AFTER));
    }
    response
}

pub async fn backup_status(
    State(state): State<AppState>,
    AzPath(job): AzPath<String>,
) -> Result<Response, Error> {
    let job = state
        .backups
        .job(&job, &[JobKind::Backup, JobKind::PreBackup])
        .await?;
    Ok(status_response(job))
}

pub async fn start_restore(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<RestoreIn>,
) -> Result<Response, Error> {
    let container_uri = storage_uri(body.sas_token_parameters)?;
    let folder = body.folder_to_restore.ok_or_else(|| {
        Error::BadParameter("The request lacks 'folderToRestore' (the backup folder).".into())
    })?;
    let job = state
        .backups
        .start_restore(RestoreSource {
            container_uri,
            folder,
        })
        .await?;
    Ok(accepted(&state, job, query.get("api-version")?))
}

pub async fn start_selective_restore(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<SelectiveRestoreIn>,
) -> Result<Response, Error> {
    let name = KeyName::parse(&name)?;
    let container_uri = storage_uri(body.sas_token_parameters)?;
    let folder = body.folder.ok_or_else(|| {
        Error::BadParameter("The request lacks 'folder' (the backup folder).".into())
    })?;
    let job = state
        .backups
        .start_selective_restore(
            name,
            RestoreSource {
                container_uri,
                folder,
            },
        )
        .await?;
    Ok(accepted(&state, job, query.get("api-version")?))
}

pub async fn restore_status(
    State(state): State<AppState>,
    AzPath(job): AzPath<String>,
) -> Result<Response, Error> {
    let job = state
        .backups
        .job(
            &job,
            &[
                JobKind::Restore,
                JobKind::SelectiveRestore,
                JobKind::PreRestore,
            ],
        )
        .await?;
    Ok(status_response(job))
}
