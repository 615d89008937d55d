//! The sign-in the Azure CLI accepts (`az login --identity`), served by the service itself:
//! an App-Service-style managed-identity token endpoint, the route that hands a principal its
//! identity header, and the one Azure Resource Manager answer `az login` needs.
//!
//! These routes sit beside the data plane, not in it: each authenticates its caller itself
//! (they need no data action and speak other api-versions), and each leaves an audit record
//! like every other request.
//!
//! - `POST /p11vault/identity/header`, with a p11vault bearer token (never a JWT, so a
//!   short-lived token cannot be turned into a lasting credential): the principal's identity
//!   header, `p11vid.{id}.{tag}`, the token's HMAC of its id and its current token hash. It
//!   holds nothing of the token; a new token (`principal rotate`) voids it.
//! - `GET /p11vault/identity/token?resource=R`, with `X-IDENTITY-HEADER`, from loopback peers
//!   only (the managed-identity model: the endpoint is local to the client): a JWT for that
//!   principal, valid [`identity::LIFETIME`], with `tid`, HMAC'd in the token. The service
//!   accepts it as that principal (`authenticate`) while the principal is enabled.
//! - `GET /subscriptions` (any valid credential): no subscriptions. `az login
//!   --allow-no-subscriptions` then signs in at tenant level.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{AppState, AuditSlot};
use crate::auth::identity::{self, Claims};
use crate::auth::{AccessSnapshot, Principal};
use crate::error::Error;

pub const TOKEN_PATH: &str = "/p11vault/identity/token";
pub const HEADER_PATH: &str = "/p11vault/identity/header";
/// The longest `resource` a token is issued for.
const MAX_RESOURCE: usize = 512;

/// The routes, with the audit layer only (each authenticates its own caller).
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(TOKEN_PATH, get(token))
        .route(HEADER_PATH, post(header_for))
        .route("/subscriptions", get(subscriptions))
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::audit_request,
        ))
}

fn issuer(state: &AppState) -> String {
    format!("{}{}", state.public_url, identity::ISSUER_PATH)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(state: &AppState, message: &str) -> Response {
    let mut response = Error::Unauthorized(message.into()).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, state.challenge.clone());
    response
}

/// The principal an issued token stands for, if `credential` is one that is valid now and its
/// principal is enabled. `Ok(None)` for anything else, so other kinds of credential go on to
/// be tried; a token that cannot be asked is an error (503).
pub async fn authenticate_issued(
    state: &AppState,
    credential: &str,
) -> Result<Option<(Principal, std::sync::Arc<AccessSnapshot>)>, Error> {
    let Some(presented) = identity::parse_token(credential, &issuer(state)) else {
        return Ok(None);
    };
    if !presented.current(state.access.now()) {
        return Ok(None);
    }
    let oid = presented.claims.oid.clone();
    if !state
        .keys
        .identity_mac_valid(presented.mac_input, presented.tag)
        .await?
    {
        tracing::info!("refused an identity token whose tag does not verify");
        return Ok(None);
    }
    let snapshot = state.access.current()?;
    Ok(snapshot.principal(&oid).map(|p| (p, snapshot)))
}

async fn header_for(State(state): State<AppState>, req: Request) -> Response {
    let Some(token) = bearer(req.headers()) else {
        return unauthorized(&state, "The request carries no bearer token.");
    };
    let snapshot = match state.access.current() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // A p11vault bearer token only: the header outlives any JWT.
    let Some(principal) = snapshot.authenticate(token) else {
        return unauthorized(
            &state,
            "An identity header is issued for a p11vault bearer token only.",
        );
    };
    AuditSlot::note(&req, |n| n.principal = Some(principal.clone()));
    let hash = crate::auth::TokenHash::of(token);
    match state
        .keys
        .identity_mac(identity::header_mac_input(&principal.id, &hash))
        .await
    {
        Ok(tag) => Json(serde_json::json!({
            "identityHeader": identity::format_header(&principal.id, &tag),
            "identityEndpoint": format!("{}{TOKEN_PATH}", state.public_url),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether the peer is on this host: a loopback address, IPv4 ones also as a dual-stack
/// listener sees them (`::ffff:127.0.0.1`). A request whose peer is unknown is not.
fn is_local_peer(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

#[derive(Deserialize)]
struct TokenQuery {
    resource: Option<String>,
}

async fn token(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    // The managed-identity endpoint is local to its client. Behind a reverse proxy on the
    // same host every peer is loopback: the header is the credential, this only narrows who
    // can present a leaked one.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if !is_local_peer(peer) {
        return Error::AccessDenied(
            "The identity endpoint serves clients on this host only.".into(),
        )
        .into_response();
    }
    let Some(resource) = query
        .ok()
        .and_then(|q| q.0.resource)
        .filter(|r| !r.is_empty())
    else {
        return Error::BadParameter("The query parameter 'resource' is required.".into())
            .into_response();
    };
    // It becomes the token's `aud`: a URI, not an essay.
    if resource.len() > MAX_RESOURCE {
        return Error::BadParameter(format!(
            "The query parameter 'resource' is longer than {MAX_RESOURCE} characters."
        ))
        .into_response();
    }
    let Some((id, tag)) = req
        .headers()
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .and_then(identity::parse_header)
    else {
        return unauthorized(&state, "The request carries no valid X-IDENTITY-HEADER.");
    };
    let snapshot = match state.access.current() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Some((principal, hash)) = snapshot.principal_with_token(id) else {
        return unauthorized(&state, "The identity header is not valid.");
    };
    match state
        .keys
        .identity_mac_valid(identity::header_mac_input(&principal.id, &hash), tag)
        .await
    {
        Ok(true) => {}
        Ok(false) => return unauthorized(&state, "The identity header is not valid."),
        Err(e) => return e.into_response(),
    }
    AuditSlot::note(&req, |n| n.principal = Some(principal.clone()));
    let claims = Claims::new(
        &issuer(&state),
        &resource,
        &principal.id,
        state.access.now(),
    );
    let expires_on = claims.exp;
    let input = identity::signing_input(&claims);
    match state
        .keys
        .identity_mac(identity::token_mac_input(&input))
        .await
    {
        // App Service's shape: `expires_on` in epoch seconds, as a string.
        Ok(tag) => Json(serde_json::json!({
            "access_token": identity::assemble(&input, &tag),
            "expires_on": expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": principal.id,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Who is calling an ARM-style route: a p11vault bearer token, a JWT of the configured OpenID
/// Connect issuer, or a token the identity endpoint issued. Anything else is a 401 with the
/// challenge.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let Some(token) = bearer(headers).map(str::to_owned) else {
        return Err(unauthorized(state, "The request carries no bearer token."));
    };
    let found = match state.access.authenticate(&token) {
        Ok(Some((p, _))) => Some(p),
        Ok(None) => match authenticate_issued(state, &token).await {
            Ok(found) => found.map(|(p, _)| p),
            Err(e) => return Err(e.into_response()),
        },
        Err(e) => return Err(e.into_response()),
    };
    found.ok_or_else(|| unauthorized(state, "The bearer token is not valid."))
}

async fn subscriptions(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let principal = match caller(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    AuditSlot::note(&req, |n| n.principal = Some(principal));
    Json(serde_json::json!({ "value": [] })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_are_local() {
        let peer = |s: &str| Some(s.parse::<SocketAddr>().expect("an address"));
        for local in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_local_peer(peer(local)), "{local}");
        }
        for remote in [
            "10.0.0.1:1",
            "0.0.0.0:1",
            "[::]:1",
            "[::ffff:10.0.0.1]:1",
            "[fe80::1]:1",
        ] {
            assert!(!is_local_peer(peer(remote)), "{remote}");
        }
        assert!(!is_local_peer(None), "no ConnectInfo: refused");
    }
}
