//! The Managed HSM security domain's formats and cryptography, pure (no token, no store, no
//! HTTP), as `../shared/docs/security-domain.md` specifies them: the SD file a download
//! returns (§3, built by §9), the restore blob an upload carries (§6), the transfer key's JWK
//! and certificate (§2.4, §7), and the offline work of az's `restore-blob` (§5) for the CLI.
//!
//! A domain is a list of [`Item`]s, each `(tag, plaintext)`. For a download they are sealed
//! under a fresh 32-byte master key (one `dir` JWE per item, its key derived from the tag),
//! and the master key is split with Shamir over GF(257) into one share per customer
//! certificate, each share RSA-OAEP-256-encrypted to its certificate. p11vault's own items are
//! [`DomainContents`]. Secrets (master keys, content keys, shares, plaintexts, private keys)
//! live in zeroizing buffers, and no type holding one has `Debug`. Everything read from a
//! client is checked before use and refused as [`Error::Invalid`] with a message that says
//! what is wrong; a changed byte in a file or JWE is refused, never decrypted to something else.
//!
//! Depends on `model` only.

mod files;
mod jose;
mod shamir;

/// Why a security-domain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's fault (a bad request, file, blob or key); the message is for the client.
    #[error("{0}")]
    Invalid(String),
    /// Ours (OpenSSL or the random source failed, or the caller passed something impossible).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<openssl::error::ErrorStack> for Error {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Error::Internal(format!("OpenSSL failed: {e}"))
    }
}

impl Error {
    /// The same error with its client message prefixed by where it was found.
    fn within(self, what: &str) -> Error {
        match self {
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            internal => internal,
        }
    }
}

