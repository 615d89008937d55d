//! Soft-delete endpoints: delete a key, read and list deleted keys, recover, purge.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use super::extract::{AzPath, AzQuery};
use super::keys::{KeyBundleOut, KeyItemOut, ListOut, bundle, item, next_link, paging};
use crate::error::Error;
use crate::model::Deletion;
use crate::model::{KeyName, VersionRecord};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedBundleOut {
    recovery_id: String,
    deleted_date: i64,
    scheduled_purge_date: i64,
    #[serde(flatten)]
    bundle: KeyBundleOut,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedItemOut {
    recovery_id: String,
    deleted_date: i64,
    scheduled_purge_date: i64,
    #[serde(flatten)]
    item: KeyItemOut,
}

fn recovery_id(state: &AppState, record: &VersionRecord) -> String {
    format!("{}/deletedkeys/{}", state.public_url, record.name)
}

fn deleted_bundle(
    state: &AppState,
    record: &VersionRecord,
    deletion: Deletion,
) -> DeletedBundleOut {
    DeletedBundleOut {
        recovery_id: recovery_id(state, record),
        deleted_date: deletion.deleted_date,
        scheduled_purge_date: deletion.scheduled_purge_date,
        bundle: bundle(state, record),
    }
}

pub async fn delete_key(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<DeletedBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let (record, deletion) = state.keys.delete(name).await?;
    Ok(Json(deleted_bundle(&state, &record, deletion)))
}

pub async fn get_deleted(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<DeletedBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let (record, deletion) = state.keys.get_deleted(&name).await?;
    Ok(Json(deleted_bundle(&state, &record, deletion)))
}

pub async fn list_deleted(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
) -> Result<Json<ListOut<DeletedItemOut>>, Error> {
    let (limit, after) = paging(&query)?;
    let (page, more) = state.keys.list_deleted(after, limit).await?;
    let next = match (more, page.last()) {
        (true, Some((last, _))) => Some(next_link(
            &state,
            "/deletedkeys",
            &query,
            last.name.as_str(),
            limit,
        )),
        _ => None,
    };
    let value = page
        .iter()
        .map(|(record, deletion)| DeletedItemOut {
            recovery_id: recovery_id(&state, record),
            deleted_date: deletion.deleted_date,
            scheduled_purge_date: deletion.scheduled_purge_date,
            item: item(&state, record, false),
        })
        .collect();
    Ok(Json(ListOut::new(value, next)))
}

pub async fn recover(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let record = state.keys.recover(name).await?;
    Ok(Json(bundle(&state, &record)))
}

pub async fn purge(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<StatusCode, Error> {
    let name = KeyName::parse(&name)?;
    state.keys.purge(name).await?;
    Ok(StatusCode::NO_CONTENT)
}
