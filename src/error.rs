//! The service's one error type. It says what went wrong in domain terms; `http/error.rs` alone
//! turns it into a status code and an Azure error body. Internal detail (a PKCS#11 return code, a
//! SQLite message) is kept for the log and never sent to the client.

use crate::model::FailureKind;
use crate::{hsm, store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or names something unsupported (400 BadParameter).
    #[error("{0}")]
    BadParameter(String),
    /// The request is well formed, but this HSM cannot do what it asks (400 BadParameter with
    /// an inner code naming what is missing, as Azure Key Vault answers a vault asked for what
    /// only a Managed HSM offers).
    #[error("{message}")]
    NotSupported { message: String, inner: Reason },
    /// The body is larger than the service accepts (413).
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// No key, or no such version of a key (404 KeyNotFound).
    #[error("{0}")]
    KeyNotFound(String),
    /// Something other than a key does not exist (404).
    #[error("{message}")]
    NotFound { what: Missing, message: String },
    /// The caller's role assignments do not grant the data action (403 AccessDenied).
    #[error("{0}")]
    AccessDenied(String),
    /// The service is busy with something that excludes this request, such as a full restore
    /// (503).
    #[error("{0}")]
    Busy(String),
    /// The request conflicts with the key's current state (409 Conflict).
    #[error("{message}")]
    Conflict {
        message: String,
        inner: Option<Reason>,
    },
    /// The operation is not allowed on the key as it is (403 Forbidden).
    #[error("{message}")]
    Forbidden {
        message: String,
        inner: Option<Reason>,
    },
    /// No valid credential came with the request (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The token cannot be reached right now (the service is reconnecting), or it is there but
    /// cannot serve the call for now (busy) (503).
    #[error("the HSM is unavailable: {0}")]
    Unavailable(String),
    /// A key's token objects were switched off, replaced or destroyed under an operation by a
    /// concurrent change of that key; the key service runs the operation again once the change
    /// is done, so this reaches a client only as a fault (500).
    #[error("the key changed under the operation: {0}")]
    KeyChanged(String),
    /// The storage under the database refuses writes (full, read-only, an I/O error, busy):
    /// not the client's fault and not a bug; it passes when the storage does (503). The
    /// detail is logged, not returned.
    #[error("the storage is unavailable: {0}")]
    StorageUnavailable(String),
    /// The request's audit record cannot be written, or the log could not be written lately
    /// and the request was refused before it was served (503). The detail is logged.
    #[error("the audit log cannot be written: {0}")]
    AuditUnavailable(String),
    /// A fault inside the service (500). The detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a request is refused, where Azure's answer names it (its inner error code, which clients
/// branch on). `http/error.rs` names each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    DeletedButRecoverable,
    PurgeProtectionEnabled,
    PurgeProtectionCannotBeDisabled,
    KeyOperationForbidden,
    KeyDisabled,
    KeyNotYetValid,
    KeyExpired,
    FullBackupRequired,
    RoleAssignmentExists,
    RoleDefinitionInUse,
    /// The token can attest nothing about its keys.
    KeyAttestationNotSupported,
    /// The HSM has no security domain yet: it serves only the security domain's endpoints.
    HsmNotActivated,
    /// The HSM has its security domain; a download or an upload would replace it.
    HsmAlreadyActivated,
    /// The whole HSM is soft-deleted.
    HsmDeleted,
}

/// What, other than a key, does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    Job,
    RoleDefinition,
    RoleAssignment,
    /// No security-domain download or upload whose status could be given.
    SecurityDomainOperation,
    /// An Azure Resource Manager resource (the HSM itself, a deleted HSM, a subscription).
    Resource,
}

impl Error {
    /// What ended a background job, as the job keeps it: the kind (`http/error.rs` picks the
    /// Azure code for it) and a message a client may see — a client's mistake says what it
    /// was; a fault inside says nothing about the inside (the detail is logged).
    pub fn failure(&self) -> (FailureKind, String) {
        let said = |kind, message: &str| (kind, message.to_owned());
        match self {
            Error::BadParameter(m) => said(FailureKind::BadParameter, m),
            Error::NotSupported { message, .. } => said(FailureKind::BadParameter, message),
            Error::KeyNotFound(m) => said(FailureKind::KeyNotFound, m),
            Error::NotFound { message, .. } => said(FailureKind::NotFound, message),
            Error::Conflict { message, .. } => said(FailureKind::Conflict, message),
            Error::Forbidden { message, .. } => said(FailureKind::Forbidden, message),
            Error::AccessDenied(m) => said(FailureKind::AccessDenied, m),
            Error::Busy(m) => said(FailureKind::Unavailable, m),
            Error::Unavailable(_) => said(
                FailureKind::Unavailable,
                "The HSM was unavailable; start the operation again.",
            ),
            Error::StorageUnavailable(_) => said(
                FailureKind::Unavailable,
                "The service's storage could not be written; start the operation again.",
            ),
            Error::AuditUnavailable(_) => said(
                FailureKind::Unavailable,
                "The audit log could not be written; start the operation again.",
            ),
            Error::PayloadTooLarge { .. }
            | Error::Unauthorized(_)
            | Error::KeyChanged(_)
            | Error::Internal(_) => said(
                FailureKind::Internal,
                "The service met an internal error; see its log.",
            ),
        }
    }
}

impl From<crate::model::ParseError> for Error {
    fn from(err: crate::model::ParseError) -> Self {
        Error::BadParameter(err.0)
    }
}

impl From<hsm::Error> for Error {
    fn from(err: hsm::Error) -> Self {
        if let hsm::Error::Rejected(message) = err {
            return Error::BadParameter(format!(
                "{}{}.",
                message[..1].to_uppercase(),
                &message[1..]
            ));
        }
        if err.is_token_busy() {
            // On a vendor HSM this may be a full object store or partition, which lasts until
            // someone acts: the operator must see it, not only the clients' retries.
            tracing::error!(error = %err, "the token is out of resources (memory, or busy): answering 503");
            Error::Unavailable(err.to_string())
        } else if err.is_token_gone() {
            Error::Unavailable(err.to_string())
        } else if err.is_stale_object() {
            Error::KeyChanged(err.to_string())
        } else {
            Error::Internal(format!("HSM: {err}"))
        }
    }
}

impl From<store::Error> for Error {
    fn from(err: store::Error) -> Self {
        // By the typed fault, never by the message.
        if err.fault().is_some() {
            Error::StorageUnavailable(err.to_string())
        } else {
            Error::Internal(format!("store: {err}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use cryptoki::error::RvError;

    fn from_token(rv: RvError) -> Error {
        hsm::Error::Cryptoki(cryptoki::error::Error::Pkcs11(rv, Function::SignInit)).into()
    }

    #[test]
    fn a_token_that_is_gone_or_busy_is_a_503_and_nothing_else_is() {
        // Gone: the service reconnects.
        assert!(matches!(
            from_token(RvError::DeviceRemoved),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::from(hsm::Error::Unreachable("probe failed".into())),
            Error::Unavailable(_)
        ));
        // Busy, with the probe passed: kryoptic while another process locks its database
        // (CKR_DEVICE_MEMORY on object reads and writes, CKR_TOKEN_RESOURCE_EXCEEDED on login).
        assert!(matches!(
            from_token(RvError::DeviceMemory),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            from_token(RvError::UnknownErrorCode(0x201)),
            Error::Unavailable(_)
        ));
        // Neither: a key changed under the call, a fault, an unknown code.
        assert!(matches!(
            from_token(RvError::KeyFunctionNotPermitted),
            Error::KeyChanged(_)
        ));
        assert!(matches!(
            from_token(RvError::GeneralError),
            Error::Internal(_)
        ));
        assert!(matches!(
            from_token(RvError::UnknownErrorCode(0x8000_0001)),
            Error::Internal(_)
        ));
    }
}
