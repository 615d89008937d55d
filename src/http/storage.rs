//! The backup location as the one Azure storage account of this HSM, for the two `az storage`
//! commands of the backup documents: `az storage account keys list --account-name NAME`
//! (resource manager: the subscription's storage accounts, then `listKeys` of the one found)
//! and `az storage container create --account-name NAME --name C --account-key KEY` (Blob
//! service: `PUT /{container}?restype=container` on `https://NAME.blob.{suffix}`, signed with
//! Shared Key). Nothing else of Azure Storage is served.
//!
//! The account is named `backup.storage_account`; its containers are the backup location's
//! (`{backup.root}/{container}/`), its key is made once per data dir and kept in the database
//! (`KeyService::storage_account_key`). Listing the key is the operator's, as every ARM
//! operation here is; creating a container needs a request signed with the key.

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::arm::{self, ApiVersion, GroupPath, Op, SubscriptionPath};
use super::extract::AzPath;
use super::{AppState, AuditSlot, OperatorCheck};
use crate::auth::Principal;
use crate::auth::identity::TENANT;
use crate::error::Error;

/// The blob service version p11vault answers in (`x-ms-version` of its answers).
const BLOB_VERSION: &str = "2021-08-06";

/// How far a signed request's date may be from the service's clock, as Azure Storage allows.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

const ACCOUNTS_READ: Op = Op {
    name: "Microsoft.Storage/storageAccounts/read",
    changes_state: false,
};
/// Reading the key changes nothing, but it hands out a secret: its record is synced before
/// the key is answered, as a change's is.
const LIST_KEYS: Op = Op {
    name: "Microsoft.Storage/storageAccounts/listkeys/action",
    changes_state: true,
};
const CONTAINER_WRITE: &str = "Microsoft.Storage/storageAccounts/blobServices/containers/write";

/// The resource-manager routes (merged into `arm::router`, under its audit layer).
pub fn arm_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            "/subscriptions/{subscription}/providers/Microsoft.Storage/storageAccounts",
            get(list_accounts),
        )
        .route(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts",
            get(list_accounts_in_group),
        )
        .route(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{account}",
            get(show_account),
        )
        .route(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{account}/listKeys",
            post(list_keys),
        )
}

#[derive(Deserialize)]
struct AccountPath {
    subscription: String,
    group: String,
    account: String,
}

type ArmQuery = Result<Query<ApiVersion>, axum::extract::rejection::QueryRejection>;

fn account_id(name: &str) -> String {
    format!(
        "/subscriptions/{TENANT}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{name}",
        arm::RESOURCE_GROUP
    )
}

fn is_ours(state: &AppState, group: &str, account: &str) -> bool {
    group.eq_ignore_ascii_case(arm::RESOURCE_GROUP)
        && account.eq_ignore_ascii_case(&state.storage_account)
}

fn account(state: &AppState) -> Value {
    let name = state.storage_account.as_ref();
    json!({
        "id": account_id(name),
        "name": name,
        "type": "Microsoft.Storage/storageAccounts",
        "location": arm::LOCATION,
        "kind": "StorageV2",
        "sku": {"name": "Standard_LRS", "tier": "Standard"},
        "tags": {},
        "properties": {
            "provisioningState": "Succeeded",
            "allowSharedKeyAccess": true,
            "supportsHttpsTrafficOnly": true,
            "publicNetworkAccess": "Enabled",
        },
    })
}

fn account_not_found(name: &str) -> Response {
    arm::arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.Storage/storageAccounts/{}' was not found; this service's one storage account (its backup location) is named by backup.storage_account.",
            crate::model::truncate_for_message(name)
        ),
    )
}

async fn list_accounts(
    State(state): State<AppState>,
    query: ArmQuery,
    AzPath(path): AzPath<SubscriptionPath>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = arm::admit(&state, &parts, &query, &path.subscription, ACCOUNTS_READ).await {
        return r;
    }
    axum::Json(json!({"value": [account(&state)]})).into_response()
}

async fn list_accounts_in_group(
    State(state): State<AppState>,
    query: ArmQuery,
    AzPath(path): AzPath<GroupPath>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = arm::admit(&state, &parts, &query, &path.subscription, ACCOUNTS_READ).await {
        return r;
    }
    let value: Vec<Value> = if path.group.eq_ignore_ascii_case(arm::RESOURCE_GROUP) {
        vec![account(&state)]
    } else {
        Vec::new()
    };
    axum::Json(json!({ "value": value })).into_response()
}

async fn show_account(
    State(state): State<AppState>,
    query: ArmQuery,
    AzPath(path): AzPath<AccountPath>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = arm::admit(&state, &parts, &query, &path.subscription, ACCOUNTS_READ).await {
        return r;
    }
    if !is_ours(&state, &path.group, &path.account) {
        return account_not_found(&path.account);
    }
    axum::Json(account(&state)).into_response()
}

async fn list_keys(
    State(state): State<AppState>,
    query: ArmQuery,
    AzPath(path): AzPath<AccountPath>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = arm::admit(&state, &parts, &query, &path.subscription, LIST_KEYS).await {
        return r;
    }
    if !is_ours(&state, &path.group, &path.account) {
        return account_not_found(&path.account);
    }
    let key = match state.keys.storage_account_key().await {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    // The one place the account key leaves the service: to the operator, recorded first.
    let body = json!({"keys": [{"keyName": "key1", "value": key.as_str(), "permissions": "FULL"}]});
    axum::Json(body).into_response()
}

/// The account a request is addressed to when its host is `{account}.blob.{suffix}` (HTTP/2's
/// `:authority` or HTTP/1.1's `Host`); `None` for every other request.
pub fn blob_account(req: &Request) -> Option<String> {
    let host = req.uri().host().map(str::to_owned).or_else(|| {
        let raw = req.headers().get(header::HOST)?.to_str().ok()?;
        Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h).to_owned())
    })?;
    let host = host.to_ascii_lowercase();
    let (account, rest) = host.split_once('.')?;
    (rest.starts_with("blob.") && !account.is_empty()).then(|| account.to_owned())
}

/// The Blob service's router: every request on the account's blob host, under the audit
/// layer.
pub fn blob_router(state: AppState) -> Router {
    Router::new()
        .fallback(create_container)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::audit_request,
        ))
        .with_state(state)
}

/// An error in Azure Storage's shape: XML with `Code` and `Message`, the code also in
/// `x-ms-error-code`.
fn blob_error(status: StatusCode, code: &str, message: &str, detail: Option<&str>) -> Response {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let detail = detail
        .map(|d| {
            format!(
                "<AuthenticationErrorDetail>{}</AuthenticationErrorDetail>",
                escape(d)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{}</Message>{detail}</Error>",
        escape(message)
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    headers.insert("x-ms-version", HeaderValue::from_static(BLOB_VERSION));
    if let Ok(v) = HeaderValue::from_str(code) {
        headers.insert("x-ms-error-code", v);
    }
    response
}

fn auth_failed(detail: &str) -> Response {
    blob_error(
        StatusCode::FORBIDDEN,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        Some(detail),
    )
}

/// `PUT /{container}?restype=container`, signed with the account key.
async fn create_container(State(state): State<AppState>, req: Request) -> Response {
    let Some(account) = blob_account(&req) else {
        return blob_error(
            StatusCode::BAD_REQUEST,
            "InvalidUri",
            "No account in the host.",
            None,
        );
    };
    let (parts, body) = req.into_parts();
    super::extract::discard(body, super::extract::DRAIN_CAP).await;
    // The router sends only the one account's host here; kept as a check of its own.
    if account != *state.storage_account {
        return blob_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "This service has one storage account, named by backup.storage_account; this is not it.",
            None,
        );
    }
    let key = match state.keys.storage_account_key().await {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or_default();
    if let Err(why) = verify(
        &key,
        &account,
        parts.method.as_str(),
        path,
        query,
        &parts.headers,
        SystemTime::now(),
    ) {
        return auth_failed(why);
    }
    // Authenticated: the key holder, recorded as such (no p11vault principal signs these).
    if let Some(slot) = parts.extensions.get::<AuditSlot>() {
        let mut noted = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        noted.principal = Some(Principal {
            id: format!("storage-account-key:{account}"),
            name: format!("{account} (account key)"),
        });
        noted.operator = Some(OperatorCheck {
            operation: CONTAINER_WRITE,
            granted: true,
            changes_state: true,
        });
    }
    let restype = query_params(query)
        .into_iter()
        .find(|(k, _)| k == "restype")
        .map(|(_, v)| v);
    let container = path.trim_start_matches('/');
    if parts.method != Method::PUT || restype.as_deref() != Some("container") {
        return blob_error(
            StatusCode::BAD_REQUEST,
            "UnsupportedOperation",
            "This service's Blob endpoint creates containers (PUT /{container}?restype=container) and nothing else.",
            None,
        );
    }
    if !valid_container_name(container) {
        return blob_error(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            "The specifed resource name contains invalid characters.",
            None,
        );
    }
    match state.backups.create_container(container.to_owned()).await {
        Ok(true) => {
            let mut response = StatusCode::CREATED.into_response();
            let headers = response.headers_mut();
            headers.insert("x-ms-version", HeaderValue::from_static(BLOB_VERSION));
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
                headers.insert(header::LAST_MODIFIED, v.clone());
                headers.insert(header::DATE, v);
            }
            if let Ok(v) =
                HeaderValue::from_str(&format!("\"0x{}\"", uuid::Uuid::new_v4().simple()))
            {
                headers.insert(header::ETAG, v);
            }
            response
        }
        Ok(false) => blob_error(
            StatusCode::CONFLICT,
            "ContainerAlreadyExists",
            "The specified container already exists.",
            None,
        ),
        Err(Error::BadParameter(_)) => blob_error(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            "The specifed resource name contains invalid characters.",
            None,
        ),
        Err(e) => e.into_response(),
    }
}

/// Azure's container names: 3 to 63 lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit.
fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// The query's parameters, names lowercased and values percent-decoded once.
fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unquote(k).to_ascii_lowercase(), unquote(v))
        })
        .collect()
}

/// Percent-decodes once, as Python's `unquote` (which the SDK signs with): `+` stays, a
/// malformed escape stays as it is, bytes that are not UTF-8 become U+FFFD.
fn unquote(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Shared Key string-to-sign of a Blob request (Azure Storage's "Authorize with Shared
/// Key", version 2015-02-21 and later: a zero `Content-Length` is empty): the verb, twelve
/// standard headers, the `x-ms-` headers lowercased and sorted, then the canonicalized resource
/// `/{account}{path}` with each query parameter as `\nname:value[,value…]`, names lowercased
/// and sorted, values sorted.
pub fn string_to_sign(
    method: &str,
    account: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
) -> String {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let mut out = format!("{method}\n");
    for name in [
        "content-encoding",
        "content-language",
        "content-length",
        "content-md5",
        "content-type",
        "date",
        "if-modified-since",
        "if-match",
        "if-none-match",
        "if-unmodified-since",
        "range",
    ] {
        let value = get(name);
        if !(name == "content-length" && value == "0") {
            out.push_str(&value);
        }
        out.push('\n');
    }
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-ms-"))
        .map(|(n, v)| {
            let value = v.to_str().unwrap_or_default();
            // Folded whitespace, as the documented canonicalization asks.
            let folded = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (n.as_str().to_owned(), folded)
        })
        .collect();
    ms.sort();
    for (name, value) in ms {
        out.push_str(&format!("{name}:{value}\n"));
    }
    out.push_str(&format!("/{account}{path}"));
    let mut params: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in query_params(query) {
        params.entry(k).or_default().push(v);
    }
    for (name, mut values) in params {
        values.sort();
        out.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    out
}

/// Checks a request's `Authorization: SharedKey {account}:{signature}` and its date; the
/// reason it is refused otherwise (for `AuthenticationErrorDetail`).
fn verify(
    key: &str,
    account: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<(), &'static str> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("The request carries no Authorization header.")?;
    let (name, signature) = auth
        .strip_prefix("SharedKey ")
        .and_then(|rest| rest.split_once(':'))
        .ok_or("The Authorization header is not SharedKey {account}:{signature}.")?;
    if name != account {
        return Err("The Authorization header names another account than the request's host.");
    }
    let date = ["x-ms-date", "date"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .ok_or("The request carries neither x-ms-date nor Date.")?;
    let date = httpdate::parse_http_date(date).map_err(|_| "The request's date is malformed.")?;
    let skew = now
        .duration_since(date)
        .or_else(|_| date.duration_since(now))
        .unwrap_or(Duration::MAX);
    if skew > MAX_SKEW {
        return Err("The request's date is more than 15 minutes from the service's time.");
    }
    if headers.get("x-ms-version").is_none() {
        return Err("The request carries no x-ms-version header.");
    }
    let expected = sign(key, &string_to_sign(method, account, path, query, headers))
        .ok_or("The account key is not base64.")?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| "The signature is not base64.")?;
    if bool::from(given.ct_eq(expected.as_slice())) {
        Ok(())
    } else {
        Err(
            "The MAC signature found in the HTTP request is not the same as any computed signature.",
        )
    }
}

/// HMAC-SHA-256 of the string-to-sign under the base64-decoded account key.
fn sign(key: &str, string_to_sign: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let raw = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(key).ok()?);
    let pkey = openssl::pkey::PKey::hmac(&raw).ok()?;
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).ok()?;
    signer.update(string_to_sign.as_bytes()).ok()?;
    signer.sign_to_vec().ok().map(zeroize::Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                HeaderValue::from_str(v).expect("a header value"),
            );
        }
        map
    }

    /// A container create as az 2.91 sends it (`azure-storage-blob` 12.x).
    fn az_request() -> HeaderMap {
        headers(&[
            ("x-ms-version", "2022-11-02"),
            ("content-length", "0"),
            ("x-ms-date", "Tue, 01 Dec 2026 16:50:00 GMT"),
            (
                "x-ms-client-request-id",
                "8a5e2a1c-6f3b-11f0-9c1f-0242ac120002",
            ),
            ("user-agent", "AZURECLI/2.91.0"),
            ("host", "mhsmdemobackup.blob.localhost:8443"),
        ])
    }

    #[test]
    fn the_string_to_sign_follows_azures_canonicalization() {
        let s = string_to_sign(
            "PUT",
            "mhsmdemobackup",
            "/mhsmdemobackupcontainer",
            "restype=container",
            &az_request(),
        );
        assert_eq!(
            s,
            "PUT\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-client-request-id:8a5e2a1c-6f3b-11f0-9c1f-0242ac120002\n\
             x-ms-date:Tue, 01 Dec 2026 16:50:00 GMT\n\
             x-ms-version:2022-11-02\n\
             /mhsmdemobackup/mhsmdemobackupcontainer\nrestype:container"
        );
        // Query names lowercased and sorted, values decoded and sorted.
        let s = string_to_sign(
            "GET",
            "a",
            "/c",
            "restype=container&COMP=list&b=2&b=1%2C0",
            &headers(&[]),
        );
        assert!(
            s.ends_with("/a/c\nb:1,0,2\ncomp:list\nrestype:container"),
            "{s}"
        );
    }

    /// The vector: key, request and signature as azure-storage-blob's
    /// `SharedKeyCredentialPolicy` computes them (Python, az 2.91's venv).
    const KEY: &str =
        "dGhlIHAxMXZhdWx0IHN0b3JhZ2UgYWNjb3VudCBrZXkgdGVzdCB2ZWN0b3IgLSA2NCBieXRlcyBsb25nISEhIQ==";
    const AZ_SIGNATURE: &str = "hp86DgBOTH117Xd9hWi59Ij952JDoAFsLGuYCO8wES4=";

    #[test]
    fn a_signature_az_makes_verifies_and_a_changed_request_does_not() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 16:55:00 GMT").expect("a date");
        let mut h = az_request();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("SharedKey mhsmdemobackup:{AZ_SIGNATURE}"))
                .expect("a header value"),
        );
        let check = |h: &HeaderMap, path: &str, key: &str, now| {
            verify(
                key,
                "mhsmdemobackup",
                "PUT",
                path,
                "restype=container",
                h,
                now,
            )
        };
        assert_eq!(check(&h, "/mhsmdemobackupcontainer", KEY, now), Ok(()));
        assert!(check(&h, "/othercontainer", KEY, now).is_err());
        let other = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
        assert!(check(&h, "/mhsmdemobackupcontainer", &other, now).is_err());
        let mut changed = h.clone();
        changed.insert("x-ms-version", HeaderValue::from_static("2021-08-06"));
        assert!(check(&changed, "/mhsmdemobackupcontainer", KEY, now).is_err());
        let late = now + Duration::from_secs(16 * 60);
        assert!(check(&h, "/mhsmdemobackupcontainer", KEY, late).is_err());
        assert!(
            verify(
                KEY,
                "another",
                "PUT",
                "/mhsmdemobackupcontainer",
                "restype=container",
                &h,
                now
            )
            .is_err()
        );
    }

    #[test]
    fn container_names_are_azures() {
        for ok in ["abc", "mhsmdemobackupcontainer", "a-b-c", "123"] {
            assert!(valid_container_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "a--b",
            "-ab",
            "ab-",
            "a_b",
            "a.b",
            "../x",
            &"a".repeat(64),
        ] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }
}
