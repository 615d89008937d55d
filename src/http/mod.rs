//! The HTTP adapter: axum routes in Azure's shapes over the key service. Authentication and the
//! `api-version` check run as middleware before any handler reads a body.

mod crypto;
mod deleted;
pub mod error;
mod extract;
mod keys;
mod settings;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::error::Error;
use crate::keys::KeyService;
use error::error_response;
use extract::BodyLimit;

/// The api-versions this service answers: every version the official SDKs and az CLI send.
pub const API_VERSIONS: &[&str] = &[
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "7.3-preview",
    "7.4-preview.1",
    "7.5-preview.1",
    "7.6-preview.1",
    "7.6-preview.2",
    "2025-06-01-preview",
    "2025-07-01",
    "2026-01-01-preview",
];
pub const LATEST_API_VERSION: &str = "2025-07-01";

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub keys: Arc<KeyService>,
    pub auth: Arc<Authenticator>,
    /// `https://host[:port]` with no trailing slash: the base of every `kid` and `nextLink`.
    pub public_url: Arc<str>,
    /// The `WWW-Authenticate` value of every 401.
    pub challenge: HeaderValue,
    pub max_body_bytes: usize,
}

impl AppState {
    /// The challenge of DESIGN §2: `authorization` names a tenant (the SDK takes the first path
    /// segment) and `resource` the scope clients ask their credential for.
    pub fn challenge_for(authority: &str, resource: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Bearer authorization=\"{authority}\", resource=\"{resource}\""
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/keys", get(keys::list_keys))
        .route(
            "/keys/{name}",
            get(keys::get_latest)
                .put(keys::import_key)
                .patch(keys::update_latest)
                .delete(deleted::delete_key),
        )
        .route(
            "/keys/{name}/",
            get(keys::get_latest).patch(keys::update_latest),
        )
        .route("/keys/{name}/create", post(keys::create_key))
        .route("/keys/{name}/rotate", post(keys::rotate_key))
        .route("/keys/{name}/versions", get(keys::list_versions))
        .route("/keys/{name}/{version}/{operation}", post(crypto::operate))
        .route("/keys/{name}//{operation}", post(crypto::operate_latest))
        .route("/rng", post(crypto::random))
        .route(
            "/keys/{name}/{version}",
            get(keys::get_version).patch(keys::update_version),
        )
        .route("/deletedkeys", get(deleted::list_deleted))
        .route(
            "/deletedkeys/{name}",
            get(deleted::get_deleted).delete(deleted::purge),
        )
        .route("/deletedkeys/{name}/recover", post(deleted::recover))
        .route("/settings", get(settings::list))
        .route(
            "/settings/{name}",
            get(settings::get_one).patch(settings::update),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(require_api_version))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            req.extensions_mut().insert(BodyLimit(limit));
            next.run(req)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// Every request without a valid bearer token gets 401 and the challenge, before its body is
/// read: the SDK sends its first request body-less and only sends the body once challenged.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let error = match presented {
        None => Error::Unauthorized("The request carries no bearer token.".into()),
        Some(token) => match state.auth.authenticate(token) {
            Some(principal) => {
                req.extensions_mut().insert(principal);
                return next.run(req).await;
            }
            None => Error::Unauthorized("The bearer token is not valid.".into()),
        },
    };
    drain(req).await;
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, state.challenge.clone());
    response
}

/// Reads and discards the body of a request answered without it. The answer was decided
/// before; this only keeps the connection usable: a server that answers while the client is
/// still sending, and then closes, makes the client see a reset instead of the answer.
async fn drain(req: Request) {
    extract::discard(req.into_body(), extract::DRAIN_CAP).await;
}

async fn require_api_version(req: Request, next: Next) -> Response {
    let version = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "api-version")
            .map(|(_, v)| v.to_owned())
    });
    let refusal = match version {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => return next.run(req).await,
        Some(v) => Error::BadParameter(format!(
            "The specified version ({}) is not recognized. Consider using the latest supported version ({LATEST_API_VERSION}).",
            crate::model::truncate_for_message(&v)
        )),
        None => Error::BadParameter(format!(
            "The api-version query parameter is required; the latest supported version is {LATEST_API_VERSION}."
        )),
    };
    drain(req).await;
    refusal.into_response()
}

/// A span per request carrying the matched route, and an `x-ms-request-id` on every response.
async fn trace_request(req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let span =
        tracing::info_span!("request", method = %req.method(), route, request_id = %request_id);
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", v);
    }
    response
}

async fn not_found(req: Request) -> Response {
    drain(req).await;
    error_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        "No such operation: check the URL path.",
        None,
    )
}

async fn method_not_allowed(req: Request) -> Response {
    drain(req).await;
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "This path does not support that HTTP method.",
        None,
    )
}
