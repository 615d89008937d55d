//! The security domain's endpoints, in the shapes the Azure CLI and the
//! `azure-keyvault-securitydomain` SDK need (docs/security-domain.md §2): download, its status,
//! the transfer key, upload and its status. Each answer that starts an operation is a 202 with
//! an `Azure-AsyncOperation` URL that carries the request's api-version (clients poll it
//! verbatim).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::extract::{AzJson, AzQuery};
use crate::error::Error;
use crate::keys::domain::OperationStatus;

pub const DOWNLOAD_STATUS: &str = "/securitydomain/download/pending";
pub const UPLOAD_STATUS: &str = "/securitydomain/upload/pending";

/// `POST /securitydomain/download`: 202 with the security-domain file as a JSON string.
pub async fn download(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<serde_json::Value>,
) -> Result<Response, Error> {
    let base = base_url(&state, &uri, &headers);
    let bytes = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    let file = state.domain.download(bytes.into()).await?;
    let mut response = (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "value": file })),
    )
        .into_response();
    status_link(
        &base,
        &mut response,
        DOWNLOAD_STATUS,
        query.get("api-version")?,
    );
    Ok(response)
}

/// `GET /securitydomain/download/pending`.
pub async fn download_status(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    AzQuery(query): AzQuery,
) -> Result<Response, Error> {
    let status = state.domain.download_status().await?;
    Ok(status_response(
        &base_url(&state, &uri, &headers),
        StatusCode::OK,
        &status,
        DOWNLOAD_STATUS,
        query.get("api-version")?,
    ))
}

/// `GET /securitydomain/upload`: the transfer key (az's "exchange key").
pub async fn transfer_key(State(state): State<AppState>) -> Result<Response, Error> {
    Ok(Json(state.domain.transfer_key().await?).into_response())
}

#[derive(Deserialize)]
pub struct UploadIn {
    /// The restore blob's JSON text.
    value: String,
}

/// `POST /securitydomain/upload`: the restore blob, opened and installed before the answer;
/// the 202's status body says "in progress" as Managed HSM's does, and the first poll says
/// how it ended.
pub async fn upload(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    AzQuery(query): AzQuery,
    AzJson(body): AzJson<UploadIn>,
) -> Result<Response, Error> {
    state.domain.upload(body.value).await?;
    let status = OperationStatus {
        status: "InProgress",
        details: "The Security Domain is being restored.".into(),
    };
    Ok(status_response(
        &base_url(&state, &uri, &headers),
        StatusCode::ACCEPTED,
        &status,
        UPLOAD_STATUS,
        query.get("api-version")?,
    ))
}

/// `GET /securitydomain/upload/pending`.
pub async fn upload_status(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    AzQuery(query): AzQuery,
) -> Result<Response, Error> {
    let status = state.domain.upload_status()?;
    Ok(status_response(
        &base_url(&state, &uri, &headers),
        StatusCode::OK,
        &status,
        UPLOAD_STATUS,
        query.get("api-version")?,
    ))
}

fn status_response(
    base: &str,
    code: StatusCode,
    status: &OperationStatus,
    path: &str,
    api_version: Option<&str>,
) -> Response {
    let mut response = (
        code,
        Json(serde_json::json!({
            "status": status.status,
            "status_details": status.details,
        })),
    )
        .into_response();
    status_link(base, &mut response, path, api_version);
    response
}

/// The base of a status link: the scheme and authority the client used, as Managed HSM's
/// `https://{hsm}/…`, so a client that called the HSM by a name (`--hsm-name`) polls the same
/// name. A client's credential policy answers a challenge per host, and az's, met with a new
/// host on the poll, sends its *first* request again: a second download. A Host that is no
/// plain authority gives the public URL.
fn base_url(state: &AppState, uri: &Uri, headers: &HeaderMap) -> String {
    let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    match authority {
        Some(a) if is_plain_authority(&a) => format!("https://{a}"),
        _ => state.public_url.to_string(),
    }
}

fn is_plain_authority(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn status_link(base: &str, response: &mut Response, path: &str, api_version: Option<&str>) {
    let mut url = format!("{base}{path}");
    if let Some(v) = api_version {
        url.push_str("?api-version=");
        url.push_str(v);
    }
    if let Ok(v) = HeaderValue::from_str(&url) {
        response.headers_mut().insert("azure-asyncoperation", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_authority_names_the_status_link() {
        for ok in [
            "p11vault.localhost:8443",
            "127.0.0.1:1",
            "[::1]:8443",
            "hsm.example",
        ] {
            assert!(is_plain_authority(ok), "{ok}");
        }
        for bad in ["", "evil/path", "a b", "host@x", "x\r\nSet-Cookie: y"] {
            assert!(!is_plain_authority(bad), "{bad}");
        }
    }
}
