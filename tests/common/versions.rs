//! Helpers of the fault tests: acknowledged versions checked by signing through the service
//! and verifying with OpenSSL, a key's state, the token's p11vault objects by `CKA_ID`, and a
//! small seeded generator for kill delays.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::Session;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use serde_json::{Value, json};

use super::{API, Service};

pub const DIGEST: [u8; 32] = [0x5a; 32];

/// An acknowledged version: its id and public key.
#[derive(Clone, Debug)]
pub struct Acked {
    pub version: String,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s.as_str().expect("a base64url string"))
        .expect("base64url")
}

pub fn acked(bundle: &Value) -> Acked {
    let kid = bundle["key"]["kid"].as_str().expect("kid");
    Acked {
        version: kid.rsplit('/').next().expect("version").to_owned(),
        x: unb64(&bundle["key"]["x"]),
        y: unb64(&bundle["key"]["y"]),
    }
}

/// Signs with one version through the service and verifies the signature with OpenSSL under
/// the public key the version was acknowledged with.
pub fn signs_as_acknowledged(svc: &Service, name: &str, v: &Acked) -> Result<(), String> {
    let body = json!({"alg": "ES256", "value": b64(&DIGEST)}).to_string();
    let (status, answer) = svc.call(
        "POST",
        &format!("/keys/{name}/{}/sign?{API}", v.version),
        Some(&body),
    );
    if status != 200 {
        return Err(format!(
            "{name}/{}: sign answered {status}: {answer}",
            v.version
        ));
    }
    let sig = unb64(&answer["value"]);
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let public = EcKey::from_public_key_affine_coordinates(
        &group,
        &BigNum::from_slice(&v.x).expect("x"),
        &BigNum::from_slice(&v.y).expect("y"),
    )
    .expect("the acknowledged public key");
    let (r, s) = sig.split_at(32);
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(r).expect("r"),
        BigNum::from_slice(s).expect("s"),
    )
    .expect("r||s");
    if sig.verify(&DIGEST, &public).expect("verification runs") {
        Ok(())
    } else {
        Err(format!(
            "{name}/{}: the signature does not verify under the acknowledged key",
            v.version
        ))
    }
}

/// Live, soft-deleted, or gone (purged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Live,
    Deleted,
    Gone,
}

pub fn state_of(svc: &Service, name: &str) -> State {
    let (live, _) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
    let (deleted, _) = svc.call("GET", &format!("/deletedkeys/{name}?{API}"), None);
    match (live, deleted) {
        (200, 404) => State::Live,
        (404, 200) => State::Deleted,
        (404, 404) => State::Gone,
        other => panic!("{name} is both or neither in an impossible way: {other:?}"),
    }
}

/// Every object on the token with a p11vault key label, by hex `CKA_ID`: (class, label).
pub fn token_objects_by_id(session: &Session) -> BTreeMap<String, Vec<(ObjectClass, String)>> {
    let mut found: BTreeMap<String, Vec<(ObjectClass, String)>> = BTreeMap::new();
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::SECRET_KEY,
    ] {
        for handle in session
            .find_objects(&[Attribute::Class(class)])
            .expect("find")
        {
            let mut label = String::new();
            let mut id = String::new();
            // A kill inside a token call can leave a half-written object the token cannot
            // describe; it carries no label, so it is nobody's.
            let Ok(attrs) =
                session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
            else {
                eprintln!("an object the token cannot describe: {handle}");
                continue;
            };
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(i) => id = hex::encode(i),
                    _ => {}
                }
            }
            if label.starts_with("p11vault/") || label.starts_with("p11vault-deleted/") {
                found.entry(id).or_default().push((class, label));
            }
        }
    }
    found
}

/// A small deterministic generator for kill delays (seeded per run, printed on failure through
/// the delays in the messages).
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
