//! The HSM as Azure Resource Manager has it: one `Microsoft.KeyVault/managedHSMs` resource for
//! this p11vault, on the resource-manager endpoint `p11vault az-setup` registers, so that
//! `az keyvault show | update-hsm | delete | list-deleted --resource-type hsm | recover | purge
//! --hsm-name` work. The shapes are those of `azure-mgmt-keyvault` (api-version 2026-02-01 in
//! az 2.91); the long-running operations complete before they answer (200, or the 202 of a
//! purge without a status URL, which ARM clients read as done).
//!
//! Who may call these: the HSM's operator only (the bootstrap administrator, `store::OPERATOR`)
//! — an operator-level credential, not a data-plane role, as ARM's `Managed HSM Contributor`
//! is not one of the HSM's local roles. Everyone else gets 403 `AuthorizationFailed`.
//!
//! The resource lives in the one subscription az's tenant-level sign-in names
//! ([`identity::TENANT`]), in resource group [`RESOURCE_GROUP`], at [`LOCATION`]; its name is
//! the HSM name (`backup.hsm_name`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AzPath, read_limited};
use super::{AppState, AuditSlot};
use crate::auth::Principal;
use crate::auth::identity::TENANT;
use crate::clock::rfc3339_millis;
use crate::error::{Error, Missing, Reason};
use crate::keys::domain::Activation;
use crate::model::{ActivationStatus, HsmState};

/// The resource group the HSM is in.
pub const RESOURCE_GROUP: &str = "p11vault";
/// The HSM's location (`--location` of `recover` and `purge`).
pub const LOCATION: &str = "local";

const PROVIDER: &str = "providers/Microsoft.KeyVault";
const HSM: &str = "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.KeyVault/managedHSMs/{hsm}";

pub fn router(state: AppState) -> Router<AppState> {
    let router = Router::new()
        .route(HSM, get(show).put(put).patch(put).delete(delete))
        .route(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.KeyVault/managedHSMs",
            get(list_in_group),
        )
        .route(
            "/subscriptions/{subscription}/providers/Microsoft.KeyVault/managedHSMs",
            get(list),
        )
        .route(
            "/subscriptions/{subscription}/providers/Microsoft.KeyVault/deletedManagedHSMs",
            get(list_deleted),
        )
        .route(
            "/subscriptions/{subscription}/providers/Microsoft.KeyVault/locations/{location}/deletedManagedHSMs/{hsm}",
            get(show_deleted),
        )
        .route(
            "/subscriptions/{subscription}/providers/Microsoft.KeyVault/locations/{location}/deletedManagedHSMs/{hsm}/purge",
            post(purge),
        );
    // The backup location as the HSM's one storage account (`storage`).
    super::storage::arm_routes(router)
        // Every other resource-manager path (another provider, or Microsoft.Storage's other
        // resources): a 404 in ARM's shape, after the same checks.
        .route(
            "/subscriptions/{subscription}/{*rest}",
            axum::routing::any(other),
        )
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::audit_request,
        ))
}

async fn other(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<SubscriptionPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, READ).await {
        return r;
    }
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "This service has no such resource: its resource manager serves the one Microsoft.KeyVault/managedHSMs resource (and the deleted HSM) and its backup location as one Microsoft.Storage/storageAccounts resource only.",
    )
}

/// An ARM operation, as Azure names it in role definitions and activity logs.
#[derive(Clone, Copy)]
pub(super) struct Op {
    pub(super) name: &'static str,
    pub(super) changes_state: bool,
}

const READ: Op = Op {
    name: "Microsoft.KeyVault/managedHSMs/read",
    changes_state: false,
};
const WRITE: Op = Op {
    name: "Microsoft.KeyVault/managedHSMs/write",
    changes_state: true,
};
const DELETE: Op = Op {
    name: "Microsoft.KeyVault/managedHSMs/delete",
    changes_state: true,
};
const DELETED_READ: Op = Op {
    name: "Microsoft.KeyVault/locations/deletedManagedHsms/read",
    changes_state: false,
};
const PURGE: Op = Op {
    name: "Microsoft.KeyVault/locations/deletedManagedHsms/purge/action",
    changes_state: true,
};

#[derive(Deserialize)]
pub(super) struct ApiVersion {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

#[derive(Deserialize)]
struct HsmPath {
    subscription: String,
    group: String,
    hsm: String,
}

#[derive(Deserialize)]
pub(super) struct SubscriptionPath {
    pub(super) subscription: String,
}

#[derive(Deserialize)]
pub(super) struct GroupPath {
    pub(super) subscription: String,
    pub(super) group: String,
}

#[derive(Deserialize)]
struct DeletedPath {
    subscription: String,
    location: String,
    hsm: String,
}

/// The checks every ARM request passes, in this order: a credential (401), the operator
/// (403), an api-version (400), the subscription (404).
pub(super) async fn admit(
    state: &AppState,
    parts: &Parts,
    query: &Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    subscription: &str,
    operation: Op,
) -> Result<Principal, Response> {
    let principal = super::identity::caller(state, &parts.headers).await?;
    let operator = state
        .keys
        .operator()
        .await
        .map_err(IntoResponse::into_response)?;
    let granted =
        operator.as_deref().map(str::to_ascii_lowercase) == Some(principal.id.to_ascii_lowercase());
    // The audit record names the ARM operation and whether the operator asked for it; a
    // change is on disk before it is answered, as a data-plane change is.
    if let Some(slot) = parts.extensions.get::<AuditSlot>() {
        let mut noted = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        noted.principal = Some(principal.clone());
        noted.operator = Some(super::OperatorCheck {
            operation: operation.name,
            granted,
            changes_state: operation.changes_state,
        });
    }
    if !granted {
        return Err(arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            "Only the HSM's operator (its bootstrap administrator) may read or change the managed HSM resource; data-plane roles do not grant it.",
        ));
    }
    let has_version = query
        .as_ref()
        .ok()
        .and_then(|q| q.api_version.as_deref())
        .is_some_and(|v| !v.is_empty());
    if !has_version {
        return Err(arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    if !subscription.eq_ignore_ascii_case(TENANT) {
        return Err(arm_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!(
                "The subscription '{}' could not be found; this service's is '{TENANT}'.",
                crate::model::truncate_for_message(subscription)
            ),
        ));
    }
    Ok(principal)
}

pub(super) fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    super::error::error_response(status, code, message, None)
}

fn not_found(kind: &str, name: &str) -> Response {
    Error::NotFound {
        what: Missing::Resource,
        message: format!(
            "The Resource 'Microsoft.KeyVault/{kind}/{}' was not found.",
            crate::model::truncate_for_message(name)
        ),
    }
    .into_response()
}

fn resource_id(name: &str) -> String {
    format!("/subscriptions/{TENANT}/resourceGroups/{RESOURCE_GROUP}/{PROVIDER}/managedHSMs/{name}")
}

/// Whether the path names this HSM (ARM names are case-insensitive).
fn is_ours(state: &AppState, group: &str, name: &str) -> bool {
    group.eq_ignore_ascii_case(RESOURCE_GROUP) && name.eq_ignore_ascii_case(&state.hsm_name)
}

async fn resource(state: &AppState) -> Result<Value, Error> {
    let retention = state.keys.retention();
    let purge_protection = state.keys.refresh_purge_protection().await?;
    // Managed HSM's two states: activated, or not yet (a download awaiting its confirming
    // status poll is not yet).
    let activation = match state.domain.activation() {
        Activation::Active => ActivationStatus::Active,
        Activation::NotActivated | Activation::AwaitingConfirmation => {
            ActivationStatus::NotActivated
        }
    };
    let operator = state.keys.operator().await?;
    let identity = match state.keys.hsm_identity().await? {
        Some(raw) => serde_json::from_str(&raw).unwrap_or(Value::Null),
        None => Value::Null,
    };
    let name = state.hsm_name.as_ref();
    Ok(json!({
        "identity": identity,
        "id": resource_id(name),
        "name": name,
        "type": "Microsoft.KeyVault/managedHSMs",
        "location": LOCATION,
        "sku": {"family": "B", "name": "Standard_B1"},
        "tags": {},
        "properties": {
            "tenantId": TENANT,
            "initialAdminObjectIds": operator.into_iter().collect::<Vec<_>>(),
            "hsmUri": format!("{}/", state.public_url),
            "enableSoftDelete": true,
            "softDeleteRetentionInDays": retention.days,
            "enablePurgeProtection": purge_protection,
            "provisioningState": "Succeeded",
            "statusMessage": "The Managed HSM is provisioned and ready to use.",
            "publicNetworkAccess": "Enabled",
            "networkAcls": {"bypass": "AzureServices", "defaultAction": "Allow"},
            "regions": [],
            "securityDomainProperties": {
                "activationStatus": activation.as_str(),
                "activationStatusMessage": match activation {
                    ActivationStatus::Active => "Your HSM has been activated and can be used for cryptographic operations.",
                    ActivationStatus::NotActivated => "Your HSM is provisioned, but cannot be used for cryptographic operations until it is activated. To activate the HSM, download the security domain.",
                },
            },
        },
    }))
}

fn deleted_resource(state: &AppState, deleted: i64, scheduled: i64, protected: bool) -> Value {
    let name = state.hsm_name.as_ref();
    json!({
        "id": format!("/subscriptions/{TENANT}/{PROVIDER}/locations/{LOCATION}/deletedManagedHSMs/{name}"),
        "name": name,
        "type": "Microsoft.KeyVault/deletedManagedHSMs",
        "properties": {
            "mhsmId": resource_id(name),
            "location": LOCATION,
            "deletionDate": rfc3339_millis(deleted.saturating_mul(1000)),
            "scheduledPurgeDate": rfc3339_millis(scheduled.saturating_mul(1000)),
            "purgeProtectionEnabled": protected,
            "tags": {},
        },
    })
}

fn respond(result: Result<Value, Error>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn show(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<HsmPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, READ).await {
        return r;
    }
    if !is_ours(&state, &path.group, &path.hsm) || !state.keys.hsm_state().is_active() {
        return not_found("managedHSMs", &path.hsm);
    }
    respond(resource(&state).await)
}

async fn list_in_group(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<GroupPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, READ).await {
        return r;
    }
    let ours = path.group.eq_ignore_ascii_case(RESOURCE_GROUP);
    listing(&state, ours).await
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<SubscriptionPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, READ).await {
        return r;
    }
    listing(&state, true).await
}

async fn listing(state: &AppState, ours: bool) -> Response {
    if !ours || !state.keys.hsm_state().is_active() {
        return Json(json!({"value": []})).into_response();
    }
    respond(resource(state).await.map(|r| json!({"value": [r]})))
}

/// The properties of a PUT or PATCH that this service reads: the rest of what az sends back
/// (the resource as `show` gave it) is accepted as it is.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Properties {
    #[serde(default, deserialize_with = "lenient_bool")]
    enable_purge_protection: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    enable_soft_delete: Option<bool>,
    #[serde(default, deserialize_with = "lenient_days")]
    soft_delete_retention_in_days: Option<u32>,
    create_mode: Option<String>,
}

/// A boolean, or the string az sometimes sends for one (`"true"`).
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a boolean, not {other}"
        ))),
    }
}

/// A number of days, or the string az sends for one (`--retention-days 7` becomes `"7"`).
fn lenient_days<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a number of days, not {n}"))),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("expected a number of days, not '{s}'"))
            })
        }
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number of days, not {other}"
        ))),
    }
}

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default)]
    properties: Properties,
    identity: Option<Identity>,
}

/// `identity` of a PUT: `None`, or `UserAssigned` with the identities' resource ids.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user_assigned_identities: std::collections::BTreeMap<String, Value>,
}

impl Identity {
    /// The identity as the resource shows it, or the reason it is refused.
    fn shown(&self) -> Result<Value, Error> {
        match self.kind.as_str() {
            "None" if self.user_assigned_identities.is_empty() => Ok(Value::Null),
            "UserAssigned" if !self.user_assigned_identities.is_empty()
                && self.user_assigned_identities.len() <= 10
                && self.user_assigned_identities.keys().all(|id| {
                    id.len() <= 512 && id.to_ascii_lowercase().contains("/providers/microsoft.managedidentity/userassignedidentities/")
                }) =>
            {
                let ids: serde_json::Map<String, Value> = self
                    .user_assigned_identities
                    .keys()
                    .map(|id| (id.clone(), json!({})))
                    .collect();
                Ok(json!({"type": "UserAssigned", "userAssignedIdentities": ids}))
            }
            _ => Err(Error::BadParameter(
                "identity: give type 'None', or 'UserAssigned' with 1 to 10 user-assigned identity resource ids.".into(),
            )),
        }
    }
}

/// `update-hsm` (az's generic update: GET, then PUT of the whole resource) and `recover`
/// (PUT with `createMode: recover`). Purge protection can be switched on, never off;
/// soft-delete and the retention period are fixed.
async fn put(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<HsmPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, WRITE).await {
        return r;
    }
    let raw = match read_limited(body, state.max_body_bytes).await {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let body: Body = if raw.is_empty() {
        Body::default()
    } else {
        match serde_json::from_slice(&raw) {
            Ok(b) => b,
            Err(e) => {
                return Error::BadParameter(format!(
                    "The request body is not a managed HSM resource: {e}."
                ))
                .into_response();
            }
        }
    };
    if !is_ours(&state, &path.group, &path.hsm) {
        return Error::BadParameter(format!(
            "This service is the one managed HSM '{}' in resource group '{RESOURCE_GROUP}'; it cannot create another.",
            state.hsm_name
        ))
        .into_response();
    }
    let props = &body.properties;
    if props
        .create_mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("recover"))
    {
        if let Err(e) = state.keys.recover_hsm().await {
            return match e {
                Error::Conflict { .. } => not_found("deletedManagedHSMs", &path.hsm),
                e => e.into_response(),
            };
        }
        return respond(resource(&state).await);
    }
    if !state.keys.hsm_state().is_active() {
        return not_found("managedHSMs", &path.hsm);
    }
    if props.enable_soft_delete == Some(false) {
        return Error::BadParameter(
            "Soft-delete is always on for a managed HSM; enableSoftDelete cannot be false.".into(),
        )
        .into_response();
    }
    let days = state.keys.retention().days;
    if props
        .soft_delete_retention_in_days
        .is_some_and(|d| d != days)
    {
        return Error::BadParameter(format!(
            "The retention period is fixed when the HSM is initialised ({days} days); softDeleteRetentionInDays cannot change."
        ))
        .into_response();
    }
    let identity = match body.identity.as_ref().map(Identity::shown).transpose() {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    match props.enable_purge_protection {
        Some(true) => {
            if let Err(e) = state.keys.enable_purge_protection().await {
                return e.into_response();
            }
        }
        Some(false) => match state.keys.refresh_purge_protection().await {
            Ok(true) => {
                return Error::Forbidden {
                    message: "Purge protection cannot be disabled once it is enabled.".into(),
                    inner: Some(Reason::PurgeProtectionCannotBeDisabled),
                }
                .into_response();
            }
            Ok(false) => {}
            Err(e) => return e.into_response(),
        },
        None => {}
    }
    if let Some(shown) = identity
        && let Err(e) = state.keys.set_hsm_identity(shown.to_string()).await
    {
        return e.into_response();
    }
    respond(resource(&state).await)
}

async fn delete(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<HsmPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, DELETE).await {
        return r;
    }
    if !is_ours(&state, &path.group, &path.hsm) || !state.keys.hsm_state().is_active() {
        return not_found("managedHSMs", &path.hsm);
    }
    match state.keys.delete_hsm().await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn deleted_value(state: &AppState) -> Result<Option<Value>, Error> {
    match state.keys.hsm_state() {
        HsmState::Deleted {
            deleted,
            scheduled_purge,
        } => {
            let protected = state.keys.refresh_purge_protection().await?;
            Ok(Some(deleted_resource(
                state,
                deleted,
                scheduled_purge,
                protected,
            )))
        }
        _ => Ok(None),
    }
}

async fn list_deleted(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<SubscriptionPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, DELETED_READ).await {
        return r;
    }
    respond(
        deleted_value(&state)
            .await
            .map(|d| json!({"value": d.into_iter().collect::<Vec<_>>()})),
    )
}

async fn show_deleted(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<DeletedPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, DELETED_READ).await {
        return r;
    }
    match deleted_value(&state).await {
        Ok(Some(v)) if is_ours_deleted(&state, &path.location, &path.hsm) => {
            Json(v).into_response()
        }
        Ok(_) => not_found("deletedManagedHSMs", &path.hsm),
        Err(e) => e.into_response(),
    }
}

fn is_ours_deleted(state: &AppState, location: &str, name: &str) -> bool {
    location.eq_ignore_ascii_case(LOCATION) && name.eq_ignore_ascii_case(&state.hsm_name)
}

async fn purge(
    State(state): State<AppState>,
    query: Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>,
    AzPath(path): AzPath<DeletedPath>,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admit(&state, &parts, &query, &path.subscription, PURGE).await {
        return r;
    }
    let deleted = matches!(state.keys.hsm_state(), HsmState::Deleted { .. });
    if !deleted || !is_ours_deleted(&state, &path.location, &path.hsm) {
        return not_found("deletedManagedHSMs", &path.hsm);
    }
    match state.keys.purge_hsm().await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}
