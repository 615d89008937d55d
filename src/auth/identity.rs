//! p11vault's own sign-in for clients that speak the managed-identity protocol (the Azure CLI's
//! `az login --identity`): the identity header a principal presents to the token endpoint,
//! and the short-lived JWTs that endpoint issues. Both are authenticated by an HMAC-SHA-256
//! made in the token (the security domain's private MAC key, which only the service's user
//! PIN can use); this module only builds and parses the bytes that MAC covers, with a context
//! string of their own so that neither can ever be taken for the other, nor for a backup's tag
//! (whose input starts with the backup envelope's magic). No token calls, no HTTP here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::TokenHash;

/// The path of the issuer under the service's public URL: the `iss` of every token issued.
pub const ISSUER_PATH: &str = "/p11vault/identity";
/// The tenant every token names (`tid`): the first path segment of the 401 challenge's
/// `authorization`, which is what Azure clients take the tenant from.
pub const TENANT: &str = "p11vault";
/// How long an issued token is valid, in seconds. Clients (MSAL, the SDKs) ask again when
/// less than five minutes are left, so this gives ten minutes of reuse.
pub const LIFETIME: i64 = 15 * 60;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY: i64 = 60;

const HEADER_PREFIX: &str = "p11vid.";
const HEADER_CONTEXT: &[u8] = b"p11vault identity header v1\0";
const TOKEN_CONTEXT: &[u8] = b"p11vault identity token v1\0";
/// The JOSE header of every issued token. `HS256` says what the tag is; the key is the
/// token's, so nobody else can check it (clients decode these tokens without verifying).
const JOSE: &str = r#"{"alg":"HS256","kid":"p11vault-identity","typ":"JWT"}"#;

/// What the MAC of a principal's identity header covers: its id and the hash of its current
/// bearer token, so a new token (`principal rotate`) makes every older header worthless.
pub fn header_mac_input(principal_id: &str, token: &TokenHash) -> Vec<u8> {
    let mut input = HEADER_CONTEXT.to_vec();
    input.extend_from_slice(principal_id.to_ascii_lowercase().as_bytes());
    input.push(0);
    input.extend_from_slice(token.as_bytes());
    input
}

/// The identity header: `p11vid.{principal id}.{base64url tag}`. It names the principal and
/// holds no part of its bearer token.
pub fn format_header(principal_id: &str, tag: &[u8]) -> String {
    format!(
        "{HEADER_PREFIX}{principal_id}.{}",
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The principal id and tag of an identity header.
pub fn parse_header(header: &str) -> Option<(&str, Vec<u8>)> {
    let rest = header.trim().strip_prefix(HEADER_PREFIX)?;
    let (id, tag) = rest.rsplit_once('.')?;
    if id.is_empty() {
        return None;
    }
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    (tag.len() == 32).then_some((id, tag))
}

/// The claims of an issued token.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub oid: String,
    pub sub: String,
    pub tid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

impl Claims {
    pub fn new(issuer: &str, audience: &str, principal_id: &str, now: i64) -> Self {
        Self {
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            oid: principal_id.to_owned(),
            sub: principal_id.to_owned(),
            tid: TENANT.to_owned(),
            iat: now,
            nbf: now,
            exp: now + LIFETIME,
        }
    }
}

/// `header.payload` of a token with these claims: the part its tag covers.
pub fn signing_input(claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialise");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(JOSE),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// What the token's MAC covers: the context, then the signing input.
pub fn token_mac_input(signing_input: &str) -> Vec<u8> {
    let mut input = TOKEN_CONTEXT.to_vec();
    input.extend_from_slice(signing_input.as_bytes());
    input
}

/// The compact JWS.
pub fn assemble(signing_input: &str, tag: &[u8]) -> String {
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// A presented token of this issuer, parsed but not yet checked: its MAC input, its tag and
/// its claims. `None` for anything else (p11vault bearer tokens, another issuer's JWTs).
pub struct Presented {
    pub mac_input: Vec<u8>,
    pub tag: Vec<u8>,
    pub claims: Claims,
}

pub fn parse_token(token: &str, issuer: &str) -> Option<Presented> {
    let (signed, tag) = token.rsplit_once('.')?;
    let (header, payload) = signed.split_once('.')?;
    if URL_SAFE_NO_PAD.decode(header).ok()? != JOSE.as_bytes() {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    if claims.iss != issuer {
        return None;
    }
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    (tag.len() == 32).then(|| Presented {
        mac_input: token_mac_input(signed),
        tag,
        claims,
    })
}

impl Presented {
    /// Whether the claims hold at `now` (the tag is checked by the caller, in the token).
    pub fn current(&self, now: i64) -> bool {
        now <= self.claims.exp.saturating_add(LEEWAY)
            && now.saturating_add(LEEWAY) >= self.claims.nbf
            && self.claims.exp - self.claims.nbf <= LIFETIME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_headers_round_trip_and_keep_their_contexts_apart() {
        let claims = Claims::new(
            "https://h/p11vault/identity",
            "https://management.x/",
            "id1",
            1_000,
        );
        let input = signing_input(&claims);
        let token = assemble(&input, &[7u8; 32]);
        let parsed = parse_token(&token, "https://h/p11vault/identity").expect("parses");
        assert_eq!(parsed.claims, claims);
        assert_eq!(parsed.tag, vec![7u8; 32]);
        assert!(parsed.mac_input.starts_with(TOKEN_CONTEXT));
        assert!(parsed.current(1_000 + LIFETIME));
        assert!(!parsed.current(1_000 + LIFETIME + LEEWAY + 1));
        assert!(!parsed.current(1_000 - LEEWAY - 1));
        assert!(parse_token(&token, "https://other/p11vault/identity").is_none());
        assert!(parse_token("p11v_abc", "https://h/p11vault/identity").is_none());

        let hash = TokenHash::of("p11v_secret");
        let header = format_header("Id1", &[9u8; 32]);
        assert!(!header.contains("p11v_secret"));
        let (id, tag) = parse_header(&header).expect("parses");
        assert_eq!((id, tag), ("Id1", vec![9u8; 32]));
        assert!(parse_header("p11vid..AAAA").is_none());
        let mac_input = header_mac_input("Id1", &hash);
        assert!(mac_input.starts_with(HEADER_CONTEXT));
        assert_ne!(&mac_input[..HEADER_CONTEXT.len()], TOKEN_CONTEXT);
    }
}
