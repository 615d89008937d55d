//! The keys endpoints of the Azure Key Vault / Managed HSM data plane: create, import, get,
//! list, list versions, update and rotate, with their request and response bodies.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize};

use super::AppState;
use super::extract::{AzJson, AzPath, AzQuery};
use super::query::QueryParams;
use crate::error::Error;
use crate::keys::import::{JwkIn, material_from_jwk};
use crate::keys::{KeyPatch, NewKey};
use crate::model::{
    Attributes, Curve, KeyFamily, KeyKind, KeyName, KeyOps, OCT_SIZES, PublicKey, RSA_SIZES,
    Retention, Tags, VersionId, VersionRecord, check_public_exponent, validate_tags,
};

/// Page size when the client names none, and the largest it may name.
const DEFAULT_PAGE: usize = 25;

// ----- request bodies ---------------------------------------------------------------------

#[derive(Default, Deserialize)]
pub struct AttributesIn {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "unix_time")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "unix_time")]
    exp: Option<i64>,
    exportable: Option<bool>,
}

#[derive(Deserialize)]
pub struct CreateIn {
    kty: Option<String>,
    key_size: Option<u32>,
    public_exponent: Option<u32>,
    key_ops: Option<Vec<String>>,
    attributes: Option<AttributesIn>,
    tags: Option<Tags>,
    crv: Option<String>,
    release_policy: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct ImportIn {
    key: Option<JwkIn>,
    attributes: Option<AttributesIn>,
    tags: Option<Tags>,
    release_policy: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct UpdateIn {
    key_ops: Option<Vec<String>>,
    attributes: Option<AttributesIn>,
    tags: Option<Tags>,
    release_policy: Option<serde_json::Value>,
}

/// Unix seconds; the SDKs send integers, and a float is accepted and truncated.
fn unix_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(d)?;
    value
        .map(|n| {
            n.as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .ok_or_else(|| serde::de::Error::custom("a time must be Unix seconds"))
        })
        .transpose()
}

// ----- response bodies --------------------------------------------------------------------

#[derive(Serialize)]
pub struct KeyBundleOut {
    key: JwkOut,
    attributes: AttributesOut,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    tags: Tags,
}

#[derive(Serialize)]
struct JwkOut {
    kid: String,
    kty: &'static str,
    key_ops: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttributesOut {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    created: i64,
    updated: i64,
    recovery_level: &'static str,
    recoverable_days: u32,
    exportable: bool,
}

#[derive(Serialize)]
pub struct KeyItemOut {
    kid: String,
    attributes: AttributesOut,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    tags: Tags,
}

#[derive(Serialize)]
pub struct ListOut<T> {
    value: Vec<T>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

impl<T> ListOut<T> {
    pub fn new(value: Vec<T>, next_link: Option<String>) -> Self {
        Self { value, next_link }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn kid(state: &AppState, record: &VersionRecord) -> String {
    format!(
        "{}/keys/{}/{}",
        state.public_url, record.name, record.version
    )
}

fn attributes_out(record: &VersionRecord, retention: Retention) -> AttributesOut {
    AttributesOut {
        enabled: record.attributes.enabled,
        nbf: record.attributes.not_before,
        exp: record.attributes.expires,
        created: record.created,
        updated: record.updated,
        recovery_level: retention.recovery_level(),
        recoverable_days: retention.days,
        exportable: false,
    }
}

/// The key bundle `get` returns: public material only, never a private or symmetric value.
pub fn bundle(state: &AppState, record: &VersionRecord) -> KeyBundleOut {
    let mut jwk = JwkOut {
        kid: kid(state, record),
        kty: record.kind.family().hsm_kty(),
        key_ops: record.ops.iter().map(|op| op.as_str()).collect(),
        n: None,
        e: None,
        crv: None,
        x: None,
        y: None,
    };
    match &record.public {
        PublicKey::Rsa { n, e } => {
            jwk.n = Some(b64(n));
            jwk.e = Some(b64(e));
        }
        PublicKey::Ec { curve, x, y } => {
            jwk.crv = Some(curve.jwk_name());
            jwk.x = Some(b64(x));
            jwk.y = Some(b64(y));
        }
        PublicKey::Oct => {}
    }
    KeyBundleOut {
        key: jwk,
        attributes: attributes_out(record, state.keys.retention()),
        tags: record.tags.clone(),
    }
}

pub fn item(state: &AppState, record: &VersionRecord, with_version: bool) -> KeyItemOut {
    let kid = if with_version {
        kid(state, record)
    } else {
        format!("{}/keys/{}", state.public_url, record.name)
    };
    KeyItemOut {
        kid,
        attributes: attributes_out(record, state.keys.retention()),
        tags: record.tags.clone(),
    }
}

// ----- validation -------------------------------------------------------------------------

/// The user-settable attributes of a new version. Exportable keys need a release policy, which
/// this service does not offer: key material never leaves the token in clear.
fn new_attributes(
    attrs: Option<AttributesIn>,
    release_policy: &Option<serde_json::Value>,
) -> Result<Attributes, Error> {
    refuse_release_policy(release_policy)?;
    let attrs = attrs.unwrap_or_default();
    if attrs.exportable == Some(true) {
        return Err(Error::BadParameter(
            "Exportable keys must have release policy; key release is not supported by this service.".into(),
        ));
    }
    let out = Attributes {
        enabled: attrs.enabled.unwrap_or(true),
        not_before: attrs.nbf,
        expires: attrs.exp,
    };
    out.validate()?;
    Ok(out)
}

fn refuse_release_policy(policy: &Option<serde_json::Value>) -> Result<(), Error> {
    match policy {
        Some(p) if !p.is_null() => Err(Error::BadParameter(
            "Key release policies are not supported by this service: key material never leaves the HSM.".into(),
        )),
        _ => Ok(()),
    }
}

/// The kind of key a create asks for, and its RSA public exponent if it names one.
fn key_kind(body: &CreateIn) -> Result<(KeyKind, Option<u32>), Error> {
    let kty = body
        .kty
        .as_deref()
        .ok_or_else(|| Error::BadParameter("The request lacks the key type 'kty'.".into()))?;
    let family = KeyFamily::parse_kty(kty)?;
    let exponent = match (family, body.public_exponent) {
        (_, None) => None,
        (KeyFamily::Rsa, Some(e)) => Some(check_public_exponent(e)?),
        (_, Some(_)) => {
            return Err(Error::BadParameter(
                "Only RSA keys take 'public_exponent'.".into(),
            ));
        }
    };
    let kind = match family {
        KeyFamily::Rsa => {
            let bits = body.key_size.unwrap_or(2048);
            if body.crv.is_some() {
                return Err(Error::BadParameter(
                    "An RSA key takes 'key_size', not 'crv'.".into(),
                ));
            }
            if !RSA_SIZES.contains(&bits) {
                return Err(Error::BadParameter(format!(
                    "The RSA key size {bits} is not supported; use 2048, 3072 or 4096."
                )));
            }
            KeyKind::Rsa { bits }
        }
        KeyFamily::Ec => {
            let curve = match body.crv.as_deref() {
                Some(c) => Curve::parse(c)?,
                None => Curve::P256,
            };
            if body.key_size.is_some() {
                return Err(Error::BadParameter(
                    "An EC key takes 'crv', not 'key_size'.".into(),
                ));
            }
            KeyKind::Ec { curve }
        }
        KeyFamily::Oct => {
            let bits = body.key_size.unwrap_or(256);
            if body.crv.is_some() {
                return Err(Error::BadParameter(
                    "An oct key takes 'key_size', not 'crv'.".into(),
                ));
            }
            if !OCT_SIZES.contains(&bits) {
                return Err(Error::BadParameter(format!(
                    "The oct key size {bits} is not supported; use 128, 192 or 256."
                )));
            }
            KeyKind::Oct { bits }
        }
    };
    Ok((kind, exponent))
}

fn key_ops(raw: Option<Vec<String>>, family: KeyFamily) -> Result<KeyOps, Error> {
    match raw {
        Some(raw) => Ok(KeyOps::parse(&raw, family)?),
        None => Ok(KeyOps::all_for(family)),
    }
}

fn tags(raw: Option<Tags>) -> Result<Tags, Error> {
    let tags = raw.unwrap_or_default();
    validate_tags(&tags)?;
    Ok(tags)
}

/// `maxresults` (1–25, default 25) and `$skiptoken` of a list request.
pub fn paging(query: &QueryParams) -> Result<(usize, Option<String>), Error> {
    let limit = match query.get("maxresults")? {
        None => DEFAULT_PAGE,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=DEFAULT_PAGE).contains(&n) => n,
            _ => {
                return Err(Error::BadParameter(format!(
                    "maxresults must be a whole number from 1 to {DEFAULT_PAGE}."
                )));
            }
        },
    };
    let token = match query.get("$skiptoken")? {
        None => None,
        Some(raw) => Some(
            URL_SAFE_NO_PAD
                .decode(raw.trim_end_matches('='))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    Error::BadParameter("The $skiptoken is not one this service issued.".into())
                })?,
        ),
    };
    Ok((limit, token))
}

pub fn next_link(
    state: &AppState,
    path: &str,
    query: &QueryParams,
    cursor: &str,
    limit: usize,
) -> String {
    // The client's own version (the check before the handler read it); the SDKs replace it
    // with theirs when they follow the link anyway.
    let api_version = query
        .get("api-version")
        .ok()
        .flatten()
        .unwrap_or(super::LATEST_API_VERSION);
    format!(
        "{}{path}?api-version={api_version}&$skiptoken={}&maxresults={limit}",
        state.public_url,
        b64(cursor.as_bytes())
    )
}

pub fn version_segment(raw: &str) -> Option<VersionId> {
    // Anything but 32 hex characters cannot name one of our versions: a version that does
    // not exist.
    VersionId::parse_hex(raw)
}

// ----- handlers ---------------------------------------------------------------------------

pub async fn create_key(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzJson(body): AzJson<CreateIn>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let (kind, public_exponent) = key_kind(&body)?;
    let spec = NewKey {
        kind,
        public_exponent,
        ops: key_ops(body.key_ops, kind.family())?,
        attributes: new_attributes(body.attributes, &body.release_policy)?,
        tags: tags(body.tags)?,
    };
    let record = state.keys.create(name, spec).await?;
    Ok(Json(bundle(&state, &record)))
}

pub async fn import_key(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzJson(body): AzJson<ImportIn>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let jwk = body
        .key
        .ok_or_else(|| Error::BadParameter("The request lacks the JWK 'key' to import.".into()))?;
    let (material, kind) = material_from_jwk(&jwk)?;
    let spec = NewKey {
        kind,
        public_exponent: None,
        ops: key_ops(jwk.key_ops.clone(), kind.family())?,
        attributes: new_attributes(body.attributes, &body.release_policy)?,
        tags: tags(body.tags)?,
    };
    drop(jwk);
    let record = state.keys.import(name, material, spec).await?;
    Ok(Json(bundle(&state, &record)))
}

pub async fn get_latest(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let record = state.keys.get(&name, None).await?;
    Ok(Json(bundle(&state, &record)))
}

pub async fn get_version(
    State(state): State<AppState>,
    AzPath((name, version)): AzPath<(String, String)>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let version = version_segment(&version).ok_or_else(|| {
        Error::KeyNotFound(format!(
            "A key with (name/id) {name}/{} was not found in this key vault.",
            crate::model::truncate_for_message(&version)
        ))
    })?;
    let record = state.keys.get(&name, Some(version)).await?;
    Ok(Json(bundle(&state, &record)))
}

/// `GET /keys/{name}/{version}/attestation`; the SDKs and az send an empty version for the
/// latest (`/keys/{name}//attestation`). Authorised like `get`; refused once the key is found
/// ([`crate::keys::KeyService::attestation`]).
pub async fn get_attestation(
    State(state): State<AppState>,
    AzPath((name, version)): AzPath<(String, String)>,
) -> Result<Json<KeyBundleOut>, Error> {
    attestation(state, name, Some(version)).await
}

pub async fn get_attestation_latest(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<KeyBundleOut>, Error> {
    attestation(state, name, None).await
}

async fn attestation(
    state: AppState,
    name: String,
    version: Option<String>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let version = match version.filter(|v| !v.is_empty()) {
        None => None,
        Some(raw) => Some(version_segment(&raw).ok_or_else(|| {
            Error::KeyNotFound(format!(
                "A key with (name/id) {name}/{} was not found in this key vault.",
                crate::model::truncate_for_message(&raw)
            ))
        })?),
    };
    match state.keys.attestation(&name, version).await? {}
}

pub async fn list_keys(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
) -> Result<Json<ListOut<KeyItemOut>>, Error> {
    let (limit, after) = paging(&query)?;
    let (page, more) = state.keys.list(after, limit).await?;
    let next_link = match (more, page.last()) {
        (true, Some(last)) => Some(next_link(
            &state,
            "/keys",
            &query,
            last.name.as_str(),
            limit,
        )),
        _ => None,
    };
    Ok(Json(ListOut {
        value: page.iter().map(|r| item(&state, r, false)).collect(),
        next_link,
    }))
}

pub async fn list_versions(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzQuery(query): AzQuery,
) -> Result<Json<ListOut<KeyItemOut>>, Error> {
    let name = KeyName::parse(&name)?;
    let (limit, after) = paging(&query)?;
    let after_seq = match after {
        None => 0,
        Some(raw) => raw.parse::<i64>().map_err(|_| {
            Error::BadParameter("The $skiptoken is not one this service issued.".into())
        })?,
    };
    let (page, more) = state.keys.list_versions(&name, after_seq, limit).await?;
    let next_link = match (more, page.last()) {
        (true, Some((seq, _))) => Some(next_link(
            &state,
            &format!("/keys/{name}/versions"),
            &query,
            &seq.to_string(),
            limit,
        )),
        _ => None,
    };
    Ok(Json(ListOut {
        value: page.iter().map(|(_, r)| item(&state, r, true)).collect(),
        next_link,
    }))
}

pub async fn update_latest(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzJson(body): AzJson<UpdateIn>,
) -> Result<Json<KeyBundleOut>, Error> {
    update(state, name, None, body).await
}

pub async fn update_version(
    State(state): State<AppState>,
    AzPath((name, version)): AzPath<(String, String)>,
    AzJson(body): AzJson<UpdateIn>,
) -> Result<Json<KeyBundleOut>, Error> {
    update(state, name, Some(version), body).await
}

async fn update(
    state: AppState,
    name: String,
    version: Option<String>,
    body: UpdateIn,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    refuse_release_policy(&body.release_policy)?;
    let version = match version {
        None => None,
        Some(raw) => Some(version_segment(&raw).ok_or_else(|| {
            Error::KeyNotFound(format!(
                "A key with (name/id) {name}/{} was not found in this key vault.",
                crate::model::truncate_for_message(&raw)
            ))
        })?),
    };
    let attrs = body.attributes.unwrap_or_default();
    if attrs.exportable == Some(true) {
        return Err(Error::BadParameter(
            "A key cannot be made exportable: key release is not supported by this service.".into(),
        ));
    }
    if let Some(tags) = &body.tags {
        validate_tags(tags)?;
    }
    let patch = KeyPatch {
        ops: body.key_ops,
        enabled: attrs.enabled,
        not_before: attrs.nbf.map(Some),
        expires: attrs.exp.map(Some),
        tags: body.tags,
    };
    let record = state.keys.update(name, version, patch).await?;
    Ok(Json(bundle(&state, &record)))
}

pub async fn rotate_key(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<KeyBundleOut>, Error> {
    let name = KeyName::parse(&name)?;
    let record = state.keys.rotate(name).await?;
    Ok(Json(bundle(&state, &record)))
}
