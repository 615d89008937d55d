//! The one Microsoft Graph answer the Azure CLI needs from this service: after `az keyvault
//! role assignment create | list` it looks the assignments' principals up
//! (`POST {graph}/v1.0/directoryObjects/getByIds`) to print their names, and fails the command
//! if the Graph endpoint cannot be reached. `p11vault az-setup` registers `{url}/graph/` as the
//! cloud's Graph endpoint; this answers with the p11vault principals among the ids asked for,
//! as service principals named by their p11vault name. Any valid credential may ask: the data
//! plane's role-assignment reads show the same ids.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::extract::read_limited;
use super::{AppState, AuditSlot};
use crate::error::Error;

pub const GET_BY_IDS: &str = "/graph/v1.0/directoryObjects/getByIds";

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(GET_BY_IDS, post(get_by_ids))
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::audit_request,
        ))
}

#[derive(Deserialize)]
struct ByIds {
    #[serde(default)]
    ids: Vec<String>,
}

async fn get_by_ids(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let principal = match super::identity::caller(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    AuditSlot::note(&req, |n| n.principal = Some(principal));
    let raw = match read_limited(req.into_body(), state.max_body_bytes).await {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let asked: ByIds = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => {
            return Error::BadParameter(format!(
                "The request body is not a getByIds request: {e}."
            ))
            .into_response();
        }
    };
    let snapshot = match state.access.current() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let found: Vec<_> = asked
        .ids
        .iter()
        .filter_map(|id| snapshot.principal(id))
        .map(|p| {
            json!({
                "@odata.type": "#microsoft.graph.servicePrincipal",
                "id": p.id,
                "displayName": p.name,
                "servicePrincipalNames": [p.name],
            })
        })
        .collect();
    Json(json!({ "value": found })).into_response()
}
