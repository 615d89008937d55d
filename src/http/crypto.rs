//! Key operations over HTTP: `POST /keys/{name}/{version}/{operation}` (an empty version is the
//! latest) and `POST /rng`.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AppState;
use super::extract::{AzJson, AzPath};
use super::keys::{kid, version_segment};
use crate::error::Error;
use crate::keys::crypto::CipherInput;
use crate::keys::import::decode_b64;
use crate::model::{KeyName, KeyOp, VersionId, truncate_for_message};

/// The body of every key operation; which members are required depends on the operation.
/// `value` may carry a plaintext or key bytes, so it is zeroized.
#[derive(Deserialize)]
pub struct OperationIn {
    alg: Option<String>,
    value: Option<Zeroizing<String>>,
    digest: Option<String>,
    iv: Option<String>,
    aad: Option<String>,
    tag: Option<String>,
}

#[derive(Serialize)]
pub struct OperationOut {
    kid: String,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    iv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aad: Option<String>,
}

#[derive(Serialize)]
pub struct VerifyOut {
    value: bool,
}

#[derive(Deserialize)]
pub struct RandomIn {
    count: Option<i64>,
}

#[derive(Serialize)]
pub struct RandomOut {
    value: String,
}

pub enum Answer {
    Result(Json<OperationOut>),
    Verified(Json<VerifyOut>),
}

impl axum::response::IntoResponse for Answer {
    fn into_response(self) -> axum::response::Response {
        match self {
            Answer::Result(j) => j.into_response(),
            Answer::Verified(j) => j.into_response(),
        }
    }
}

/// `POST /keys/{name}/{version}/{operation}`.
pub async fn operate(
    State(state): State<AppState>,
    AzPath((name, version, operation)): AzPath<(String, String, String)>,
    AzJson(body): AzJson<OperationIn>,
) -> Result<Answer, Error> {
    run(state, &name, Some(&version), &operation, body).await
}

/// `POST /keys/{name}//{operation}`: the empty version segment means the latest.
pub async fn operate_latest(
    State(state): State<AppState>,
    AzPath((name, operation)): AzPath<(String, String)>,
    AzJson(body): AzJson<OperationIn>,
) -> Result<Answer, Error> {
    run(state, &name, None, &operation, body).await
}

/// The key operation a path's last segment names.
pub fn parse_operation(operation: &str) -> Result<KeyOp, Error> {
    Ok(match operation {
        "encrypt" => KeyOp::Encrypt,
        "decrypt" => KeyOp::Decrypt,
        "sign" => KeyOp::Sign,
        "verify" => KeyOp::Verify,
        "wrapkey" => KeyOp::WrapKey,
        "unwrapkey" => KeyOp::UnwrapKey,
        other => {
            return Err(Error::BadParameter(format!(
                "'{}' is not a key operation; use encrypt, decrypt, sign, verify, wrapkey or unwrapkey.",
                truncate_for_message(other)
            )));
        }
    })
}

async fn run(
    state: AppState,
    name: &str,
    version: Option<&str>,
    operation: &str,
    body: OperationIn,
) -> Result<Answer, Error> {
    let op = parse_operation(operation)?;
    let name = KeyName::parse(name)?;
    let version = parse_version(&name, version)?;
    let OperationIn {
        alg,
        value,
        digest,
        iv,
        aad,
        tag,
    } = body;
    let alg = alg.ok_or_else(|| Error::BadParameter("The parameter 'alg' is required.".into()))?;
    let value = required_secret("value", value.as_ref())?;
    match op {
        KeyOp::Sign => {
            let (record, signature) = state
                .keys
                .sign(&name, version, &alg, value.to_vec())
                .await?;
            Ok(Answer::Result(Json(OperationOut {
                kid: kid(&state, &record),
                value: URL_SAFE_NO_PAD.encode(signature),
                iv: None,
                tag: None,
                aad: None,
            })))
        }
        KeyOp::Verify => {
            let digest = optional("digest", digest.as_deref())?
                .ok_or_else(|| Error::BadParameter("The parameter 'digest' is required.".into()))?;
            let (_, valid) = state
                .keys
                .verify(&name, version, &alg, digest, value.to_vec())
                .await?;
            Ok(Answer::Verified(Json(VerifyOut { value: valid })))
        }
        _ => {
            let input = CipherInput {
                alg,
                value,
                iv: optional("iv", iv.as_deref())?,
                aad: optional("aad", aad.as_deref())?,
                tag: optional("tag", tag.as_deref())?,
            };
            let (record, out) = state.keys.cipher(&name, version, op, input).await?;
            Ok(Answer::Result(Json(OperationOut {
                kid: kid(&state, &record),
                value: URL_SAFE_NO_PAD.encode(&out.value),
                iv: out.iv.map(|v| URL_SAFE_NO_PAD.encode(v)),
                tag: out.tag.map(|v| URL_SAFE_NO_PAD.encode(v)),
                aad: out.aad.map(|v| URL_SAFE_NO_PAD.encode(v)),
            })))
        }
    }
}

/// `POST /rng`.
pub async fn random(
    State(state): State<AppState>,
    AzJson(body): AzJson<RandomIn>,
) -> Result<Json<RandomOut>, Error> {
    let count = body
        .count
        .ok_or_else(|| Error::BadParameter("The parameter 'count' is required.".into()))?;
    let bytes = state.keys.random(count).await?;
    Ok(Json(RandomOut {
        value: URL_SAFE_NO_PAD.encode(bytes),
    }))
}

fn parse_version(name: &KeyName, raw: Option<&str>) -> Result<Option<VersionId>, Error> {
    match raw {
        None | Some("") => Ok(None),
        Some(v) => version_segment(v).map(Some).ok_or_else(|| {
            Error::KeyNotFound(format!(
                "A key with (name/id) {name}/{} was not found in this key vault.",
                truncate_for_message(v)
            ))
        }),
    }
}

fn required_secret(
    field: &str,
    raw: Option<&Zeroizing<String>>,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let raw =
        raw.ok_or_else(|| Error::BadParameter(format!("The parameter '{field}' is required.")))?;
    Ok(Zeroizing::new(decode_b64(field, raw)?))
}

fn optional(field: &str, raw: Option<&str>) -> Result<Option<Vec<u8>>, Error> {
    raw.map(|r| decode_b64(field, r)).transpose()
}
