//! The one place that turns a service error into an HTTP status and an Azure error body
//! (`{"error":{"code","message","innererror"}}`). It matches on variants, never on message text,
//! and a 5xx says nothing about the inside: the detail goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Error, Missing, Reason};
use crate::model::FailureKind;

/// Azure's inner error code for each reason a request is refused.
fn reason_code(reason: Reason) -> &'static str {
    match reason {
        Reason::DeletedButRecoverable => "ObjectIsDeletedButRecoverable",
        Reason::PurgeProtectionEnabled => "PurgeProtectionEnabled",
        Reason::PurgeProtectionCannotBeDisabled => "PurgeProtectionCannotBeDisabled",
        Reason::KeyOperationForbidden => "KeyOperationForbidden",
        Reason::KeyDisabled => "KeyDisabled",
        Reason::KeyNotYetValid => "KeyNotYetValid",
        Reason::KeyExpired => "KeyExpired",
        Reason::FullBackupRequired => "FullBackupRequired",
        Reason::RoleAssignmentExists => "RoleAssignmentExists",
        Reason::RoleDefinitionInUse => "RoleDefinitionInUse",
        Reason::KeyAttestationNotSupported => "KeyAttestationNotSupported",
        Reason::HsmNotActivated => "HSMNotActivated",
        Reason::HsmAlreadyActivated => "HSMAlreadyActivated",
        Reason::HsmDeleted => "ManagedHsmDeleted",
    }
}

/// Azure's error code for each thing other than a key that can be missing.
fn missing_code(what: Missing) -> &'static str {
    match what {
        Missing::Job => "JobNotFound",
        Missing::RoleDefinition => "RoleDefinitionNotFound",
        Missing::RoleAssignment => "RoleAssignmentNotFound",
        Missing::SecurityDomainOperation => "OperationNotFound",
        Missing::Resource => "ResourceNotFound",
    }
}

/// The Azure error code of each kind of failure; responses and job status polls both use it.
pub fn failure_code(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::BadParameter => "BadParameter",
        FailureKind::KeyNotFound => "KeyNotFound",
        FailureKind::NotFound => "NotFound",
        FailureKind::Conflict => "Conflict",
        FailureKind::Forbidden => "Forbidden",
        FailureKind::AccessDenied => "AccessDenied",
        FailureKind::Unavailable => "ServiceUnavailable",
        FailureKind::Interrupted => "Interrupted",
        FailureKind::Internal => "InternalError",
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    innererror: Option<Inner<'a>>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
}

/// An Azure error response.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    inner: Option<&str>,
) -> Response {
    let body = Body {
        error: Detail {
            code,
            message,
            innererror: inner.map(|code| Inner { code }),
        },
    };
    (status, Json(body)).into_response()
}

/// A 503 in Azure's shape, with `Retry-After` (seconds) and an inner code saying which part of
/// the service is unavailable.
fn unavailable(inner: &str, message: &str, retry_after: &'static str) -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
        Some(inner),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    response
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::BadParameter(m) => error_response(
                StatusCode::BAD_REQUEST,
                failure_code(FailureKind::BadParameter),
                m,
                None,
            ),
            Error::NotSupported { message, inner } => error_response(
                StatusCode::BAD_REQUEST,
                failure_code(FailureKind::BadParameter),
                message,
                Some(reason_code(*inner)),
            ),
            Error::PayloadTooLarge { limit } => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyTooLarge",
                &format!("The request body is larger than the {limit} bytes this service accepts."),
                None,
            ),
            Error::KeyNotFound(m) => error_response(
                StatusCode::NOT_FOUND,
                failure_code(FailureKind::KeyNotFound),
                m,
                None,
            ),
            Error::NotFound { what, message } => {
                error_response(StatusCode::NOT_FOUND, missing_code(*what), message, None)
            }
            Error::AccessDenied(m) => error_response(
                StatusCode::FORBIDDEN,
                failure_code(FailureKind::AccessDenied),
                m,
                None,
            ),
            Error::Busy(m) => {
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    m,
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            Error::Conflict { message, inner } => error_response(
                StatusCode::CONFLICT,
                failure_code(FailureKind::Conflict),
                message,
                inner.map(reason_code),
            ),
            Error::Forbidden { message, inner } => error_response(
                StatusCode::FORBIDDEN,
                failure_code(FailureKind::Forbidden),
                message,
                inner.map(reason_code),
            ),
            Error::Unauthorized(m) => {
                error_response(StatusCode::UNAUTHORIZED, "Unauthorized", m, None)
            }
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "answering 503: the HSM is unavailable");
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The HSM is temporarily unavailable. Retry shortly.",
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Error::StorageUnavailable(detail) => {
                tracing::warn!(%detail, "answering 503: the database cannot be written");
                unavailable(
                    "StorageUnavailable",
                    "The service cannot write to its storage right now; reads and key operations still work. Retry shortly.",
                    "2",
                )
            }
            Error::AuditUnavailable(detail) => {
                tracing::warn!(%detail, "answering 503: the audit log cannot be written");
                unavailable(
                    "AuditLogUnavailable",
                    "The service cannot write its audit log right now, and serves no request it cannot record. Retry shortly.",
                    "1",
                )
            }
            Error::Internal(detail) | Error::KeyChanged(detail) => {
                tracing::error!(%detail, "answering 500");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    failure_code(FailureKind::Internal),
                    "The service met an internal error. The request may be retried; if it persists, contact the operator.",
                    None,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json body")
    }

    #[tokio::test]
    async fn every_variant_maps_to_its_status_and_an_azure_body() {
        let cases = [
            (Error::BadParameter("b".into()), 400, "BadParameter"),
            (
                Error::NotSupported {
                    message: "n".into(),
                    inner: Reason::KeyAttestationNotSupported,
                },
                400,
                "BadParameter",
            ),
            (
                Error::PayloadTooLarge { limit: 10 },
                413,
                "RequestBodyTooLarge",
            ),
            (Error::KeyNotFound("k".into()), 404, "KeyNotFound"),
            (
                Error::Conflict {
                    message: "c".into(),
                    inner: Some(Reason::DeletedButRecoverable),
                },
                409,
                "Conflict",
            ),
            (
                Error::Forbidden {
                    message: "f".into(),
                    inner: None,
                },
                403,
                "Forbidden",
            ),
            (Error::Unauthorized("u".into()), 401, "Unauthorized"),
            (Error::Unavailable("gone".into()), 503, "ServiceUnavailable"),
            (
                Error::StorageUnavailable("secret detail".into()),
                503,
                "ServiceUnavailable",
            ),
            (
                Error::AuditUnavailable("secret detail".into()),
                503,
                "ServiceUnavailable",
            ),
            (
                Error::Internal("secret detail".into()),
                500,
                "InternalError",
            ),
        ];
        for (error, status, code) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            if status == 503 {
                assert!(response.headers().contains_key(header::RETRY_AFTER));
            }
            let body = body_of(response).await;
            assert_eq!(body["error"]["code"], code);
            let message = body["error"]["message"].as_str().expect("message");
            assert!(!message.is_empty());
            assert!(
                !message.contains("secret detail"),
                "a 500 must not leak its detail"
            );
        }
    }
}
