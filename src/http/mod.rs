//! The HTTP adapter: axum routes in Azure's shapes over the key service. Authentication and the
//! `api-version` check run as middleware before any handler reads a body.

mod arm;
mod audit;
mod backup;
mod crypto;
mod deleted;
pub mod error;
mod extract;
mod graph;
mod identity;
mod keys;
pub mod query;
mod rbac;
mod rotation;
mod security_domain;
mod settings;
mod storage;
pub mod version;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, RawPathParams, Request, State,
};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::access::AccessControl;
use crate::audit::{AuditLog, Event, Outcome};
use crate::auth::roles::Action;
use crate::auth::{AccessSnapshot, Principal};
use crate::backup::Backups;
use crate::error::Error;
use crate::keys::KeyService;
use crate::keys::domain::SecurityDomain;
use crate::model::{KeyOp, truncate_for_message};
use error::error_response;
use extract::BodyLimit;

/// The version the service implements (the spec in `shared/api-spec`), the one its own clients
/// send, and the one refusals point to. Which versions are accepted is [`version`]'s policy.
pub const LATEST_API_VERSION: &str = "2025-07-01";

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub keys: Arc<KeyService>,
    pub access: Arc<AccessControl>,
    pub backups: Arc<Backups>,
    /// Activation and the security domain's endpoints.
    pub domain: Arc<SecurityDomain>,
    pub audit: AuditLog,
    /// The audit log file, for `GET /p11vault/audit`.
    pub audit_path: Arc<PathBuf>,
    /// `https://host[:port]` with no trailing slash: the base of every `kid` and `nextLink`.
    pub public_url: Arc<str>,
    /// The `WWW-Authenticate` value of every 401.
    pub challenge: HeaderValue,
    pub max_body_bytes: usize,
    /// The HSM's name: in backup folder names and as the ARM resource's name.
    pub hsm_name: Arc<str>,
    /// The name of the backup location's storage account (`storage`).
    pub storage_account: Arc<str>,
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
    let rbac = |prefix: &str, router: Router<AppState>| {
        router
            .route(
                &format!("{prefix}/providers/Microsoft.Authorization/roleDefinitions"),
                get(rbac::list_definitions),
            )
            .route(
                &format!(
                    "{prefix}/providers/Microsoft.Authorization/roleDefinitions/{{definition}}"
                ),
                get(rbac::get_definition)
                    .put(rbac::put_definition)
                    .delete(rbac::delete_definition),
            )
            .route(
                &format!("{prefix}/providers/Microsoft.Authorization/roleAssignments"),
                get(rbac::list_assignments),
            )
            .route(
                &format!(
                    "{prefix}/providers/Microsoft.Authorization/roleAssignments/{{assignment}}"
                ),
                get(rbac::get_assignment)
                    .put(rbac::put_assignment)
                    .delete(rbac::delete_assignment),
            )
    };
    let router = Router::new()
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
        .route("/keys/restore", post(backup::restore_key))
        .route("/keys/{name}/backup", post(backup::backup_key))
        .route("/keys/{name}/restore", put(backup::start_selective_restore))
        .route("/backup", post(backup::start_backup))
        .route("/prebackup", post(backup::start_pre_backup))
        .route("/prerestore", put(backup::start_pre_restore))
        .route(BACKUP_STATUS, get(backup::backup_status))
        .route("/restore", put(backup::start_restore))
        .route(RESTORE_STATUS, get(backup::restore_status))
        .route("/keys/{name}/create", post(keys::create_key))
        .route("/keys/{name}/rotate", post(keys::rotate_key))
        .route(
            "/keys/{name}/rotationpolicy",
            get(rotation::get_policy).put(rotation::put_policy),
        )
        .route("/keys/{name}/versions", get(keys::list_versions))
        .route(
            "/keys/{name}/{version}/attestation",
            get(keys::get_attestation),
        )
        .route(
            "/keys/{name}//attestation",
            get(keys::get_attestation_latest),
        )
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
        .route(AUDIT, get(audit::read))
        .route("/securitydomain/download", post(security_domain::download))
        .route(
            security_domain::DOWNLOAD_STATUS,
            get(security_domain::download_status),
        )
        .route(
            "/securitydomain/upload",
            get(security_domain::transfer_key).post(security_domain::upload),
        )
        .route(
            security_domain::UPLOAD_STATUS,
            get(security_domain::upload_status),
        );
    let router = rbac("/keys/{scope_key}", rbac("/keys", rbac("", router)));
    let router = router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_activation,
        ))
        .route_layer(middleware::from_fn(authorize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(require_api_version))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            req.extensions_mut().insert(BodyLimit(limit));
            next.run(req)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(middleware::from_fn_with_state(state.clone(), hsm_gate))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), audit_request))
        // Added after the layers, so none of them runs for it: no credential, no api-version,
        // no audit record (a load balancer probes it every few seconds), and answered during
        // an audit outage, which it reports.
        .route(HEALTH, get(health))
        // The managed-identity sign-in and ARM's answer to `az login`, beside the data plane:
        // recorded, but authenticated by their own handlers (`identity`).
        .merge(identity::router(state.clone()))
        // The HSM as an Azure Resource Manager resource, for its operator (`arm`).
        .merge(arm::router(state.clone()))
        // The Microsoft Graph lookup az makes after role-assignment commands (`graph`).
        .merge(graph::router(state.clone()));
    // Percent-encoded unreserved characters of the path are decoded before routing
    // ([`query::normalize_path`]), so an encoded route or key name is the same request.
    let blob = storage::blob_router(state.clone());
    let account = Arc::clone(&state.storage_account);
    let routed = router.with_state(state);
    // Requests to `{account}.blob.…` of the one storage account are the Blob service's
    // (`storage`), whatever their path; they are read as sent, since their signature covers
    // the path as sent. Every other host is the data plane's, so a public URL that happens to
    // look like a blob host is still served as one.
    Router::new()
        .fallback_service(tower::ServiceExt::map_request(
            routed,
            query::normalize_path,
        ))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let blob = blob.clone();
            let ours = storage::blob_account(&req).as_deref() == Some(&*account);
            async move {
                if ours {
                    use tower::ServiceExt as _;
                    match blob.oneshot(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                } else {
                    next.run(req).await
                }
            }
        }))
}

/// The audit log's route (`audit`).
const AUDIT: &str = "/p11vault/audit";

/// The health endpoint.
pub const HEALTH: &str = "/healthz";

/// 200 while every request can be served and recorded; 503 with the reason while the audit
/// log cannot be written (every other request is refused then). A database that cannot be
/// written is reported as `degraded` with 200: reads and key operations are still served.
async fn health(State(state): State<AppState>) -> Response {
    let audit = state.audit.health();
    let database = state
        .keys
        .store()
        .write_fault()
        .map(|fault| format!("the database cannot be written ({fault}); changes are refused"));
    let status = match (&audit, &database) {
        (Some(_), _) => "unhealthy",
        (None, Some(_)) => "degraded",
        (None, None) => "healthy",
    };
    let body = axum::Json(serde_json::json!({
        "status": status,
        "auditLog": audit.as_deref().unwrap_or("writable"),
        "database": database.as_deref().unwrap_or("writable"),
    }));
    if audit.is_some() {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    } else {
        body.into_response()
    }
}

/// The status routes of long-running operations: clients poll them as the service handed them
/// out, and the restore status is the one route a full restore leaves open.
const BACKUP_STATUS: &str = "/backup/{job}/pending";
const RESTORE_STATUS: &str = "/restore/{job}/pending";

fn matched_route(req: &Request) -> Option<&str> {
    req.extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
}

/// While a full restore runs, every request but the restore status gets 503; otherwise a
/// request holds a share of the request gate until it is answered, so a full restore starts
/// only once the requests under way are done.
async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matched_route(&req) == Some(RESTORE_STATUS) {
        return next.run(req).await;
    }
    match state.backups.admit() {
        Some(_share) => next.run(req).await,
        None => {
            drain(req).await;
            Error::Busy(
                "A full restore is in progress; the HSM serves requests again once it completes."
                    .into(),
            )
            .into_response()
        }
    }
}

/// A soft-deleted (or purged) HSM answers no data-plane request, once the caller is
/// authenticated; the sign-in and the ARM routes are outside this gate, so it can be recovered.
///
/// The audit log stays readable: it is the service's record of what happened, the HSM's
/// deletion and purge included, not the HSM's content.
async fn hsm_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matched_route(&req) == Some(AUDIT) {
        return next.run(req).await;
    }
    match state.keys.gate(&state.hsm_name) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            drain(req).await;
            e.into_response()
        }
    }
}

/// What the inner layers learn about a request for its audit record: [`authenticate`] notes
/// who made it, [`authorize`] which data action was checked and whether it was granted. Shared
/// rather than put on the response, so a handler that panics still leaves a complete record.
#[derive(Clone, Default)]
struct AuditSlot(Arc<std::sync::Mutex<Noted>>);

#[derive(Default)]
struct Noted {
    principal: Option<Principal>,
    authorized: Option<Authorized>,
    /// An operation on the HSM resource (`arm`), which no data action covers: its ARM
    /// operation name and whether the caller is the operator.
    operator: Option<OperatorCheck>,
}

/// What [`arm`] notes for the audit record of an HSM-level request.
#[derive(Clone, Copy)]
struct OperatorCheck {
    operation: &'static str,
    granted: bool,
    changes_state: bool,
}

impl AuditSlot {
    fn note(req: &Request, f: impl FnOnce(&mut Noted)) {
        if let Some(slot) = req.extensions().get::<AuditSlot>() {
            f(&mut slot.0.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// Put on the request by [`authenticate`]: who is calling, and the access snapshot that
/// authenticated them, so authorization decides on the same rules without asking again.
#[derive(Clone)]
struct Caller {
    principal: Principal,
    access: Arc<AccessSnapshot>,
}

#[derive(Clone, Copy)]
struct Authorized {
    action: Action,
    granted: bool,
}

/// What a request needs: a data action, on a key or on the HSM as a whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Requirement {
    pub action: Action,
    pub key: Option<String>,
}

/// The data action every route needs. Routes are matched by their template, so a route without
/// an entry here is refused, never let through.
pub fn requirement(
    method: &Method,
    route: &str,
    params: &RawPathParams,
) -> Result<Requirement, Error> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let key = param("name");
    let need = |action: Action| {
        Ok(Requirement {
            action,
            key: key.clone(),
        })
    };
    // HEAD is answered by the GET handler, so it needs what GET needs.
    let method = if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    if let Some(rest) = route.split("/providers/Microsoft.Authorization/").nth(1) {
        let scope = rbac::scope_of(route, params)?;
        let action = match (method.as_str(), rest.starts_with("roleAssignments")) {
            ("GET", true) => Action::RoleAssignmentsRead,
            ("PUT", true) => Action::RoleAssignmentsWrite,
            ("DELETE", true) => Action::RoleAssignmentsDelete,
            ("GET", false) => Action::RoleDefinitionsRead,
            ("PUT", false) => Action::RoleDefinitionsWrite,
            ("DELETE", false) => Action::RoleDefinitionsDelete,
            _ => {
                return Err(Error::Internal(format!(
                    "no data action is defined for {method} {route}"
                )));
            }
        };
        // Role definitions are HSM-wide whatever scope the path names: changing one changes
        // what every holder of it may do everywhere, so writing one needs the action at `/`.
        let key = match action {
            Action::RoleDefinitionsWrite | Action::RoleDefinitionsDelete => None,
            _ => scope.key().map(str::to_owned),
        };
        return Ok(Requirement { action, key });
    }
    match (method.as_str(), route) {
        ("GET", "/keys") => need(Action::KeysRead),
        (
            "GET",
            "/keys/{name}"
            | "/keys/{name}/"
            | "/keys/{name}/{version}"
            | "/keys/{name}/versions"
            // Attestation is the key's public part and what the HSM says of it: the get right.
            | "/keys/{name}/{version}/attestation"
            | "/keys/{name}//attestation",
        ) => need(Action::KeysRead),
        ("PUT", "/keys/{name}") => need(Action::KeysImport),
        ("PATCH", "/keys/{name}" | "/keys/{name}/" | "/keys/{name}/{version}") => {
            need(Action::KeysWrite)
        }
        ("DELETE", "/keys/{name}") => need(Action::KeysDelete),
        ("POST", "/keys/{name}/create") => need(Action::KeysCreate),
        ("POST", "/keys/{name}/rotate") => need(Action::KeysRotate),
        // Managed HSM: reading a policy is reading the key; setting one needs "Key Write".
        ("GET", "/keys/{name}/rotationpolicy") => need(Action::KeysRead),
        ("PUT", "/keys/{name}/rotationpolicy") => need(Action::KeysWrite),
        ("POST", "/keys/{name}/{version}/{operation}" | "/keys/{name}//{operation}") => {
            let operation = param("operation").unwrap_or_default();
            need(match crypto::parse_operation(&operation)? {
                KeyOp::Encrypt => Action::KeysEncrypt,
                KeyOp::Decrypt => Action::KeysDecrypt,
                KeyOp::Sign => Action::KeysSign,
                KeyOp::Verify => Action::KeysVerify,
                KeyOp::WrapKey => Action::KeysWrap,
                KeyOp::UnwrapKey => Action::KeysUnwrap,
            })
        }
        ("POST", "/rng") => need(Action::Rng),
        ("GET", "/deletedkeys" | "/deletedkeys/{name}") => need(Action::DeletedKeysRead),
        ("DELETE", "/deletedkeys/{name}") => need(Action::DeletedKeysPurge),
        ("POST", "/deletedkeys/{name}/recover") => need(Action::DeletedKeysRecover),
        ("GET", "/settings" | "/settings/{name}") => Ok(Requirement {
            action: Action::SettingsRead,
            key: None,
        }),
        ("PATCH", "/settings/{name}") => Ok(Requirement {
            action: Action::SettingsWrite,
            key: None,
        }),
        ("GET", AUDIT) => need(Action::AuditRead),
        ("POST", "/keys/{name}/backup") => need(Action::KeysBackup),
        ("POST", "/keys/restore") => need(Action::KeysRestore),
        // A selective restore reads a full backup: the HSM-wide restore right.
        ("PUT", "/keys/{name}/restore" | "/restore") => Ok(Requirement {
            action: Action::RestoreStart,
            key: None,
        }),
        // The checks need what the operation they check needs.
        ("POST", "/backup" | "/prebackup") => need(Action::BackupStart),
        ("PUT", "/prerestore") => Ok(Requirement {
            action: Action::RestoreStart,
            key: None,
        }),
        ("GET", BACKUP_STATUS) => need(Action::BackupStatus),
        ("GET", RESTORE_STATUS) => need(Action::RestoreStatus),
        ("POST", "/securitydomain/download") => need(Action::SecurityDomainDownload),
        ("GET", security_domain::DOWNLOAD_STATUS) => need(Action::SecurityDomainDownloadRead),
        ("GET", "/securitydomain/upload") => need(Action::SecurityDomainTransferKeyRead),
        ("POST", "/securitydomain/upload") => need(Action::SecurityDomainUpload),
        ("GET", security_domain::UPLOAD_STATUS) => need(Action::SecurityDomainUploadRead),
        _ => Err(Error::Internal(format!(
            "no data action is defined for {method} {route}"
        ))),
    }
}

/// Until the HSM is activated it serves only what activating it needs: the security domain's
/// endpoints, role definitions and assignments, and the service's own routes (`/p11vault/…`);
/// everything else is a 409 that says how to activate it. Runs after [`authorize`], so a caller
/// without the right learns nothing of the HSM's state.
async fn require_activation(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.domain.is_active() {
        return next.run(req).await;
    }
    let route = matched_route(&req).unwrap_or_default();
    let open = route.starts_with("/securitydomain/")
        || route.starts_with("/p11vault/")
        || route.contains("/providers/Microsoft.Authorization/");
    if open {
        return next.run(req).await;
    }
    drain(req).await;
    Error::Conflict {
        message: "This HSM is not activated: download its security domain (POST /securitydomain/download, \
                  az keyvault security-domain download) or, to recover another HSM's, upload it \
                  (az keyvault security-domain init-recovery, restore-blob, upload) first."
            .into(),
        inner: Some(crate::error::Reason::HsmNotActivated),
    }
    .into_response()
}

/// Checks the route's data action against the caller's role assignments. No assignment means
/// no access; a denial is a 403 and the handler never runs.
async fn authorize(params: RawPathParams, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let need = match requirement(req.method(), &route, &params) {
        Ok(need) => need,
        Err(e) => {
            drain(req).await;
            return e.into_response();
        }
    };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        drain(req).await;
        return Error::Internal("authorization ran before authentication".into()).into_response();
    };
    let granted = caller
        .access
        .authorize(&caller.principal.id, need.action, need.key.as_deref());
    AuditSlot::note(&req, |n| {
        n.authorized = Some(Authorized {
            action: need.action,
            granted,
        });
    });
    if granted {
        next.run(req).await
    } else {
        drain(req).await;
        let on = match &need.key {
            Some(k) => format!("/keys/{k}"),
            None => "/".to_owned(),
        };
        Error::AccessDenied(format!("Not authorized to access {} on {on}.", need.action))
            .into_response()
    }
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
        Some(token) => match state.access.authenticate(token) {
            Ok(Some((principal, access))) => {
                AuditSlot::note(&req, |n| n.principal = Some(principal.clone()));
                req.extensions_mut().insert(Caller { principal, access });
                return next.run(req).await;
            }
            Ok(None) => match identity::authenticate_issued(&state, token).await {
                Ok(Some((principal, access))) => {
                    AuditSlot::note(&req, |n| n.principal = Some(principal.clone()));
                    req.extensions_mut().insert(Caller { principal, access });
                    return next.run(req).await;
                }
                Ok(None) => Error::Unauthorized("The bearer token is not valid.".into()),
                Err(e) => {
                    drain(req).await;
                    return e.into_response();
                }
            },
            Err(e) => {
                drain(req).await;
                return e.into_response();
            }
        },
    };
    drain(req).await;
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, state.challenge.clone());
    response
}

/// The outermost layer: a request id and a tracing span per request, and an audit record of
/// how it ended. A request that changed state is answered only once its record is on disk.
async fn audit_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    // While the log cannot be written nothing is served: a request that cannot be recorded is
    // not done. The refusal is counted in the outage record written when the log recovers.
    if let Err(why) = state.audit.admit() {
        drain(req).await;
        let mut response = Error::AuditUnavailable(why).into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-ms-request-id", v);
        }
        return response;
    }
    let time = Event::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    // Not kept in a closure: a borrow of the request must not live across an await (the body
    // is not `Sync`).
    let client_request_id = req
        .headers()
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(truncate_for_message);
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let method = req.method().to_string();
    let path = truncate_for_message(req.uri().path());
    let (mut key, mut version) = (None, None);
    let (mut parts, body) = req.into_parts();
    if let Ok(params) = RawPathParams::from_request_parts(&mut parts, &state).await {
        for (k, v) in params.iter() {
            match k {
                "name" | "scope_key" => key = Some(truncate_for_message(v)),
                "version" if !v.is_empty() => version = Some(truncate_for_message(v)),
                _ => {}
            }
        }
    }
    let req = Request::from_parts(parts, body);
    let span = tracing::info_span!("request", method = %method, route, request_id = %request_id);
    let slot = AuditSlot::default();
    let mut req = req;
    req.extensions_mut().insert(slot.clone());
    // The request runs in its own task, so a client that goes away mid-request cannot stop it
    // half-way or keep it out of the log; a handler that panics is answered with a 500 and
    // recorded like any other request.
    let task = tokio::spawn(async move {
        let handled = std::panic::AssertUnwindSafe(next.run(req).instrument(span.clone()))
            .catch_unwind()
            .await;
        let mut response = handled.unwrap_or_else(|_| {
            Error::Internal("a request handler panicked".into()).into_response()
        });
        let status = response.status().as_u16();
        span.in_scope(|| tracing::debug!(status, "answered"));
        let Noted {
            principal,
            authorized,
            operator,
        } = std::mem::take(&mut *slot.0.lock().unwrap_or_else(|p| p.into_inner()));
        let granted = authorized
            .map(|a| a.granted)
            .or(operator.map(|o| o.granted));
        let outcome = match (&principal, granted) {
            (None, _) => Outcome::Unauthenticated,
            (Some(_), Some(false)) => Outcome::Denied,
            (Some(_), Some(true)) => Outcome::Allowed,
            (Some(_), None) => Outcome::Rejected,
        };
        let durable = status < 400
            && (authorized.is_some_and(|a| a.granted && a.action.changes_state())
                || operator.is_some_and(|o| o.granted && o.changes_state));
        let event = Event {
            time,
            request_id: request_id.clone(),
            client_request_id,
            source,
            principal_name: principal.as_ref().map(|p| p.name.clone()),
            principal: principal.map(|p| p.id),
            method,
            path,
            action: authorized
                .map(|a| a.action.to_string())
                .or(operator.map(|o| o.operation.to_owned())),
            key,
            version,
            outcome,
            status,
            answered: None,
            outage: None,
        };
        // No answer before the record is written (and, for a change, synced). If it cannot
        // be, the client gets 503 whatever the handler did: a change made stands (a retry
        // sees the true state), and its record is written late, after an outage record.
        let recorded = if durable {
            state.audit.record_durably(event).await
        } else {
            state.audit.record(event).await
        };
        if recorded.is_err() {
            response = Error::AuditUnavailable(format!(
                "the record of a request answered {status} could not be written"
            ))
            .into_response();
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-ms-request-id", v);
        }
        response
    });
    task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the request task failed");
        Error::Internal("the request task failed".into()).into_response()
    })
}

/// Reads and discards the body of a request answered without it. The answer was decided
/// before; this only keeps the connection usable: a server that answers while the client is
/// still sending, and then closes, makes the client see a reset instead of the answer.
async fn drain(req: Request) {
    extract::discard(req.into_body(), extract::DRAIN_CAP).await;
}

/// Decodes the query string once (leaving it on the request for the handler) and applies the
/// api-version policy ([`version`]) before any handler runs.
async fn require_api_version(req: Request, next: Next) -> Response {
    let query = match query::QueryParams::parse(req.uri().query()) {
        Ok(query) => query,
        Err(e) => {
            drain(req).await;
            return e.into_response();
        }
    };
    // Status URLs are polled as handed out, with the version of the request that started the
    // job or none; a client that dropped the query still gets its job's status.
    if matches!(
        matched_route(&req),
        Some(
            BACKUP_STATUS
                | RESTORE_STATUS
                | security_domain::DOWNLOAD_STATUS
                | security_domain::UPLOAD_STATUS
        )
    ) {
        return pass(req, query, next).await;
    }
    let refusal = match query.get("api-version") {
        Err(e) => e,
        Ok(None) => Error::BadParameter(format!(
            "The api-version query parameter is required; the latest supported version is {LATEST_API_VERSION}."
        )),
        Ok(Some(v)) => match version::classify(v) {
            Ok(version::Accepted::Known) => return pass(req, query, next).await,
            Ok(version::Accepted::Newer) => {
                note_newer_version(v);
                return pass(req, query, next).await;
            }
            Err(version::Refused::Unknown) => Error::BadParameter(format!(
                "The specified version ({}) is not recognized. Consider using the latest supported version ({LATEST_API_VERSION}).",
                truncate_for_message(v)
            )),
            Err(version::Refused::Malformed) => Error::BadParameter(format!(
                "The specified version ({}) is not a valid api-version (YYYY-MM-DD, YYYY-MM-DD-preview or 7.x). Consider using the latest supported version ({LATEST_API_VERSION}).",
                truncate_for_message(v)
            )),
        },
    };
    drain(req).await;
    refusal.into_response()
}

async fn pass(mut req: Request, query: query::QueryParams, next: Next) -> Response {
    req.extensions_mut().insert(query);
    next.run(req).await
}

/// Logs, once per version string (at most a few dozen), that a version newer than every known
/// one is answered in the newest shape.
fn note_newer_version(v: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() < 32 && !seen.iter().any(|s| s == v) {
        seen.push(v.to_owned());
        tracing::info!(
            api_version = %truncate_for_message(v),
            answered_as = version::NEWEST_KNOWN,
            "a client sent an api-version newer than this release knows; answering in the newest shape"
        );
    }
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
