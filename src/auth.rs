//! Principals and their bearer tokens. Tokens are random, shown once, stored only as SHA-256
//! hashes and checked in constant time. The table of hashes lives in memory so that checking a
//! request costs no database round trip. No HTTP types here.

use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::store::PrincipalRow;

/// Prefix that makes a leaked p11vault token recognisable to secret scanners.
const TOKEN_PREFIX: &str = "p11v_";

/// A bearer token in clear. Zeroized on drop, no `Debug`; it exists only between its creation
/// and being written to the one place the operator reads it from.
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    pub fn generate() -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        // An unavailable OS random source leaves the process unable to do anything safely.
        getrandom::fill(raw.as_mut()).expect("the OS random number generator is available");
        Self(Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(raw.as_ref())
        )))
    }

    pub fn from_string(token: String) -> Self {
        Self(Zeroizing::new(token))
    }

    /// The token text, for writing it to the operator once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// SHA-256 of a bearer token. Tokens carry 256 bits of randomness, so a plain hash is enough:
/// there is nothing to guess that a slow hash would protect.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        raw.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: String,
}

/// The in-memory table of enabled principals by token hash.
#[derive(Default)]
pub struct Authenticator {
    by_hash: RwLock<HashMap<TokenHash, Principal>>,
}

impl Authenticator {
    pub fn from_rows(rows: &[PrincipalRow]) -> Self {
        let auth = Self::default();
        auth.reload(rows);
        auth
    }

    /// Replaces the table; disabled principals are left out, so they are refused at once.
    pub fn reload(&self, rows: &[PrincipalRow]) {
        let table = rows
            .iter()
            .filter(|r| r.enabled)
            .filter_map(|r| {
                TokenHash::from_bytes(&r.token_hash).map(|h| {
                    (
                        h,
                        Principal {
                            id: r.id.clone(),
                            name: r.name.clone(),
                        },
                    )
                })
            })
            .collect();
        *self.by_hash.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// The principal a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented = TokenHash::of(token);
        let table = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
        // The map lookup is keyed by a hash of the secret, so its timing reveals nothing
        // useful; the final comparison is constant-time all the same.
        table
            .get_key_value(&presented)
            .and_then(|(stored, principal)| {
                bool::from(stored.0.ct_eq(&presented.0)).then(|| principal.clone())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, token: &BearerToken, enabled: bool) -> PrincipalRow {
        PrincipalRow {
            id: id.into(),
            name: format!("{id}-name"),
            token_hash: token.hash().as_bytes().to_vec(),
            enabled,
        }
    }

    #[test]
    fn only_enabled_principals_with_the_exact_token_are_accepted() {
        let alice = BearerToken::generate();
        let bob = BearerToken::generate();
        assert_ne!(alice.expose(), bob.expose());
        assert!(alice.expose().starts_with(TOKEN_PREFIX));
        let auth = Authenticator::from_rows(&[row("alice", &alice, true), row("bob", &bob, false)]);
        assert_eq!(
            auth.authenticate(alice.expose()).map(|p| p.id),
            Some("alice".into())
        );
        assert_eq!(auth.authenticate(bob.expose()), None);
        let mut wrong = alice.expose().to_owned();
        wrong.push('x');
        assert_eq!(auth.authenticate(&wrong), None);
        assert_eq!(auth.authenticate(""), None);
    }
}
