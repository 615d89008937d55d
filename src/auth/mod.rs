//! Principals, their bearer tokens, and the snapshot every request is checked against. Tokens
//! are random, shown once, stored only as SHA-256 hashes and checked in constant time. The
//! snapshot lives in memory so that checking a request costs no database round trip. No HTTP
//! types, no storage here.

pub mod identity;
pub mod oidc;
pub mod roles;

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use roles::{Action, RoleAssignment, RoleDefinition, RoleType};

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

/// A registered principal as stored: an id (a GUID, or an OpenID Connect object id), a name,
/// the hash of its bearer token, and whether it may sign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRow {
    pub id: String,
    pub name: String,
    pub token_hash: Vec<u8>,
    pub enabled: bool,
    pub created: i64,
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: String,
}

/// Everything a request is checked against, read from the store in one go and replaced
/// whole when it changes: enabled principals by token hash and by id, role definitions,
/// role assignments.
#[derive(Default)]
pub struct AccessSnapshot {
    by_hash: HashMap<TokenHash, Principal>,
    by_id: HashMap<String, Principal>,
    /// The hash of each enabled principal's current token, by lower-case id: what its identity
    /// header is bound to (`identity`).
    hash_by_id: HashMap<String, TokenHash>,
    roles: HashMap<String, RoleDefinition>,
    assignments: Vec<RoleAssignment>,
}

impl AccessSnapshot {
    /// Disabled principals are left out, so they are refused at once.
    pub fn new(
        principals: &[PrincipalRow],
        custom_roles: Vec<RoleDefinition>,
        assignments: Vec<RoleAssignment>,
    ) -> Self {
        let mut snapshot = Self {
            assignments,
            ..Self::default()
        };
        for row in principals.iter().filter(|r| r.enabled) {
            let principal = Principal {
                id: row.id.clone(),
                name: row.name.clone(),
            };
            if let Some(hash) = TokenHash::from_bytes(&row.token_hash) {
                snapshot.by_hash.insert(hash, principal.clone());
                snapshot
                    .hash_by_id
                    .insert(row.id.to_ascii_lowercase(), hash);
            }
            snapshot
                .by_id
                .insert(row.id.to_ascii_lowercase(), principal);
        }
        for role in roles::built_in_roles().into_iter().chain(custom_roles) {
            snapshot.roles.insert(role.name.to_ascii_lowercase(), role);
        }
        snapshot
    }

    /// The principal a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented = TokenHash::of(token);
        // The map lookup is keyed by a hash of the secret, so its timing reveals nothing
        // useful; the final comparison is constant-time all the same.
        self.by_hash
            .get_key_value(&presented)
            .and_then(|(stored, principal)| {
                bool::from(stored.0.ct_eq(&presented.0)).then(|| principal.clone())
            })
    }

    /// An enabled principal by id with the hash of its current bearer token (what an identity
    /// header is checked against). Principals without a p11vault token have none.
    pub fn principal_with_token(&self, id: &str) -> Option<(Principal, TokenHash)> {
        let id = id.to_ascii_lowercase();
        Some((self.by_id.get(&id)?.clone(), *self.hash_by_id.get(&id)?))
    }

    /// An enabled principal by id (how OpenID Connect tokens are mapped).
    pub fn principal(&self, id: &str) -> Option<Principal> {
        self.by_id.get(&id.to_ascii_lowercase()).cloned()
    }

    /// Whether `principal` may do `action` on `key` (`None`: the HSM as a whole).
    pub fn authorize(&self, principal: &str, action: Action, key: Option<&str>) -> bool {
        roles::authorize(
            self.assignments
                .iter()
                .filter(|a| a.principal_id.eq_ignore_ascii_case(principal))
                .filter_map(|a| {
                    self.roles
                        .get(&a.role_definition.to_ascii_lowercase())
                        .map(|r| (a, r))
                }),
            action,
            key,
        )
    }

    pub fn role(&self, name: &str) -> Option<&RoleDefinition> {
        self.roles.get(&name.to_ascii_lowercase())
    }

    /// Built-in roles first, then custom ones by name.
    pub fn roles(&self) -> Vec<&RoleDefinition> {
        let mut all: Vec<&RoleDefinition> = self.roles.values().collect();
        all.sort_by(|a, b| {
            (a.role_type != RoleType::BuiltIn, &a.role_name)
                .cmp(&(b.role_type != RoleType::BuiltIn, &b.role_name))
        });
        all
    }

    pub fn assignments(&self) -> &[RoleAssignment] {
        &self.assignments
    }

    pub fn is_principal(&self, id: &str) -> bool {
        self.by_id.contains_key(&id.to_ascii_lowercase())
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
            created: 0,
        }
    }

    #[test]
    fn only_enabled_principals_with_the_exact_token_are_accepted() {
        let alice = BearerToken::generate();
        let bob = BearerToken::generate();
        assert_ne!(alice.expose(), bob.expose());
        assert!(alice.expose().starts_with(TOKEN_PREFIX));
        let auth = AccessSnapshot::new(
            &[row("alice", &alice, true), row("bob", &bob, false)],
            Vec::new(),
            Vec::new(),
        );
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
