//! Bearer JWTs from an on-premises OpenID Connect issuer: the signature is checked against the
//! issuer's JWKS (read from a file, or fetched from a URL at start-up and every few minutes),
//! then the issuer, audience and validity window. The token's object id (`oid`, else `sub`) is
//! what maps it to a registered principal.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY: i64 = 60;

/// Where the issuer's signing keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    File(std::path::PathBuf),
    Url(String),
}

/// What the service is configured to trust.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
}

/// Verifies JWTs of one issuer for one audience.
pub struct OidcVerifier {
    settings: OidcSettings,
    keys: Arc<RwLock<HashMap<String, PKey<Public>>>>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    nbf: Option<i64>,
    oid: Option<String>,
    sub: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl OidcVerifier {
    /// Reads the JWKS once; a configuration that cannot be used stops the service at start-up.
    pub fn new(settings: OidcSettings) -> Result<Self, String> {
        let keys = load_jwks(&settings.jwks)?;
        if keys.is_empty() {
            return Err("the JWKS holds no usable signing key (RSA, or EC P-256/P-384)".into());
        }
        Ok(Self {
            settings,
            keys: Arc::new(RwLock::new(keys)),
        })
    }

    /// Re-reads the JWKS (key rollover at the issuer); keeps the old keys if that fails.
    pub fn refresh(&self) {
        match load_jwks(&self.settings.jwks) {
            Ok(keys) if !keys.is_empty() => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
            }
            Ok(_) => tracing::warn!("the refreshed JWKS holds no usable key; keeping the old keys"),
            Err(e) => tracing::warn!(error = %e, "cannot refresh the JWKS; keeping the old keys"),
        }
    }

    /// A cheap test that lets p11vault's own tokens skip JWT parsing.
    pub fn looks_like_jwt(credential: &str) -> bool {
        credential.starts_with("eyJ") && credential.matches('.').count() == 2
    }

    /// The token's object id if the token is valid now.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS".into());
        };
        let header: Header = decode_json(h, "header")?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "the signature is not base64url")?;
        let key = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            match &header.kid {
                Some(kid) => keys.get(kid).cloned(),
                None if keys.len() == 1 => keys.values().next().cloned(),
                None => None,
            }
        }
        .ok_or("no key in the JWKS matches the token's kid")?;
        let signed = &token[..h.len() + 1 + p.len()];
        if !verify_signature(&header.alg, &key, signed.as_bytes(), &signature)? {
            return Err("the signature does not verify".into());
        }
        let claims: Claims = decode_json(p, "payload")?;
        if claims.iss.as_deref() != Some(self.settings.issuer.as_str()) {
            return Err("the issuer is not the configured one".into());
        }
        let audience_ok = match &claims.aud {
            Some(Audience::One(a)) => a == &self.settings.audience,
            Some(Audience::Many(all)) => all.iter().any(|a| a == &self.settings.audience),
            None => false,
        };
        if !audience_ok {
            return Err("the audience is not the configured one".into());
        }
        match claims.exp {
            Some(exp) if now <= exp.saturating_add(LEEWAY) => {}
            Some(_) => return Err("the token has expired".into()),
            None => return Err("the token has no expiry".into()),
        }
        if claims
            .nbf
            .is_some_and(|nbf| now.saturating_add(LEEWAY) < nbf)
        {
            return Err("the token is not valid yet".into());
        }
        claims
            .oid
            .or(claims.sub)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| "the token names no object id (oid or sub)".into())
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, String> {
    let raw = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&raw).map_err(|e| format!("the {what} is not the expected JSON: {e}"))
}

fn verify_signature(
    alg: &str,
    key: &PKey<Public>,
    signed: &[u8],
    signature: &[u8],
) -> Result<bool, String> {
    let (digest, pss, ec_len) = match alg {
        "RS256" => (MessageDigest::sha256(), false, None),
        "RS384" => (MessageDigest::sha384(), false, None),
        "RS512" => (MessageDigest::sha512(), false, None),
        "PS256" => (MessageDigest::sha256(), true, None),
        "PS384" => (MessageDigest::sha384(), true, None),
        "PS512" => (MessageDigest::sha512(), true, None),
        "ES256" => (MessageDigest::sha256(), false, Some(32)),
        "ES384" => (MessageDigest::sha384(), false, Some(48)),
        other => return Err(format!("the algorithm {other:?} is not accepted")),
    };
    let is_ec = key.ec_key().is_ok();
    if is_ec != ec_len.is_some() {
        return Err("the algorithm does not fit the key".into());
    }
    let der;
    let signature = match ec_len {
        Some(len) => {
            if signature.len() != 2 * len {
                return Ok(false);
            }
            let r = BigNum::from_slice(&signature[..len]).map_err(|e| e.to_string())?;
            let s = BigNum::from_slice(&signature[len..]).map_err(|e| e.to_string())?;
            der = EcdsaSig::from_private_components(r, s)
                .and_then(|sig| sig.to_der())
                .map_err(|e| e.to_string())?;
            &der[..]
        }
        None => signature,
    };
    let mut verifier = Verifier::new(digest, key).map_err(|e| e.to_string())?;
    if pss {
        verifier
            .set_rsa_padding(Padding::PKCS1_PSS)
            .and_then(|()| verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH))
            .map_err(|e| e.to_string())?;
    }
    verifier
        .verify_oneshot(signature, signed)
        .or(Ok::<bool, String>(false))
}

fn load_jwks(source: &JwksSource) -> Result<HashMap<String, PKey<Public>>, String> {
    let text = match source {
        JwksSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?,
        JwksSource::Url(url) => ureq::get(url)
            .timeout(std::time::Duration::from_secs(10))
            .call()
            .map_err(|e| format!("cannot fetch the JWKS from {url}: {e}"))?
            .into_string()
            .map_err(|e| format!("cannot read the JWKS from {url}: {e}"))?,
    };
    let jwks: Jwks =
        serde_json::from_str(&text).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    let mut keys = HashMap::new();
    for (index, jwk) in jwks.keys.iter().enumerate() {
        if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        match public_key(jwk) {
            Ok(key) => {
                keys.insert(jwk.kid.clone().unwrap_or_else(|| index.to_string()), key);
            }
            Err(e) => tracing::warn!(kid = ?jwk.kid, error = %e, "skipping a JWKS key"),
        }
    }
    Ok(keys)
}

fn public_key(jwk: &Jwk) -> Result<PKey<Public>, String> {
    let field = |v: &Option<String>, name: &str| -> Result<BigNum, String> {
        let raw = v.as_deref().ok_or(format!("missing {name}"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(raw.trim_end_matches('='))
            .map_err(|_| format!("{name} is not base64url"))?;
        BigNum::from_slice(&bytes).map_err(|e| e.to_string())
    };
    match jwk.kty.as_str() {
        "RSA" => Rsa::from_public_components(field(&jwk.n, "n")?, field(&jwk.e, "e")?)
            .and_then(PKey::from_rsa)
            .map_err(|e| e.to_string()),
        "EC" => {
            let nid = match jwk.crv.as_deref() {
                Some("P-256") => Nid::X9_62_PRIME256V1,
                Some("P-384") => Nid::SECP384R1,
                other => return Err(format!("curve {other:?} is not accepted")),
            };
            let group = EcGroup::from_curve_name(nid).map_err(|e| e.to_string())?;
            let (x, y) = (field(&jwk.x, "x")?, field(&jwk.y, "y")?);
            EcKey::from_public_key_affine_coordinates(&group, &x, &y)
                .and_then(PKey::from_ec_key)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("key type {other:?} is not accepted")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::Private;
    use openssl::sign::Signer;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_setup(dir: &std::path::Path) -> (PKey<Private>, OidcVerifier) {
        let rsa = Rsa::generate(2048).expect("RSA key");
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "k1", "use": "sig",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()),
        }]});
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).expect("write JWKS");
        let verifier = OidcVerifier::new(OidcSettings {
            issuer: "https://idp.example.internal".into(),
            audience: "https://p11vault".into(),
            jwks: JwksSource::File(path),
        })
        .expect("verifier");
        (PKey::from_rsa(rsa).expect("pkey"), verifier)
    }

    fn sign(key: &PKey<Private>, header: serde_json::Value, claims: serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signer = Signer::new(MessageDigest::sha256(), key).expect("signer");
        let sig = signer.sign_oneshot_to_vec(signed.as_bytes()).expect("sign");
        format!("{signed}.{}", b64(&sig))
    }

    #[test]
    fn accepts_a_valid_token_and_refuses_every_defect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, verifier) = rsa_setup(dir.path());
        let header = serde_json::json!({"alg": "RS256", "kid": "k1"});
        let claims = |iss: &str, aud: &str, exp: i64| serde_json::json!({"iss": iss, "aud": aud, "exp": exp, "oid": "0f8fad5b-d9cb-469f-a165-70867728950e"});
        let iss = "https://idp.example.internal";
        let aud = "https://p11vault";
        let good = sign(&key, header.clone(), claims(iss, aud, 2_000));
        assert!(OidcVerifier::looks_like_jwt(&good));
        assert_eq!(
            verifier.verify(&good, 1_000).as_deref(),
            Ok("0f8fad5b-d9cb-469f-a165-70867728950e")
        );
        assert!(
            verifier.verify(&good, 2_000 + LEEWAY + 1).is_err(),
            "expired"
        );
        let wrong_iss = sign(&key, header.clone(), claims("https://evil", aud, 2_000));
        assert!(verifier.verify(&wrong_iss, 1_000).is_err());
        let wrong_aud = sign(&key, header.clone(), claims(iss, "other", 2_000));
        assert!(verifier.verify(&wrong_aud, 1_000).is_err());
        let unknown_kid = sign(
            &key,
            serde_json::json!({"alg": "RS256", "kid": "k2"}),
            claims(iss, aud, 2_000),
        );
        assert!(verifier.verify(&unknown_kid, 1_000).is_err());
        let none_alg = sign(
            &key,
            serde_json::json!({"alg": "none", "kid": "k1"}),
            claims(iss, aud, 2_000),
        );
        assert!(verifier.verify(&none_alg, 1_000).is_err());
        // A payload swapped after signing.
        let parts: Vec<&str> = good.split('.').collect();
        let forged_claims =
            serde_json::json!({"iss": iss, "aud": aud, "exp": 2_000, "oid": "someone-else"});
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged_claims.to_string().as_bytes()),
            parts[2]
        );
        assert!(verifier.verify(&forged, 1_000).is_err());
        // Signed by another key.
        let other = PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("pkey");
        let foreign = sign(&other, header, claims(iss, aud, 2_000));
        assert!(verifier.verify(&foreign, 1_000).is_err());
    }
}
