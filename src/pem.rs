//! A private key from a PEM file as the JWK of an import request (`p11vault key import`): the
//! client side of `az keyvault key import --pem-file`. The file, its password, every private
//! component and its base64url text, and the request body live in zeroizing buffers only, so
//! they are wiped as soon as the request has been sent.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::model::{Curve, RSA_SIZES};

/// Why a PEM file cannot be imported. The messages never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("the PEM file is encrypted; pass --password-file")]
    NeedsPassword,
    #[error("the password does not decrypt the PEM file (or the file is damaged)")]
    WrongPassword,
    #[error("the password is longer than the {0} bytes OpenSSL accepts")]
    PasswordTooLong(usize),
    #[error("the file is not PEM: it has no '-----BEGIN ...-----' line")]
    NotPem,
    #[error(
        "the file holds no private key, only {0}; a certificate or public key alone cannot be imported"
    )]
    NoPrivateKey(String),
    #[error("OpenSSL cannot read the private key in the file: {0}")]
    Unreadable(String),
    #[error(
        "{0} keys cannot be imported; the service takes RSA keys and EC keys on P-256, P-384, P-521 and secp256k1"
    )]
    UnsupportedType(String),
    #[error(
        "EC keys on the curve {0} cannot be imported; the service takes P-256, P-384, P-521 and secp256k1"
    )]
    UnsupportedCurve(String),
    #[error("the RSA key is {0} bits long; the service takes 2048, 3072 or 4096 bits")]
    RsaSize(u32),
    #[error("the RSA key lacks its CRT members (p, q, dp, dq, qi), which the service needs")]
    MissingCrt,
    #[error("OpenSSL failed while reading the key: {0}")]
    OpenSsl(#[from] ErrorStack),
}

/// Private bytes as base64url without padding, wiped on drop.
type Secret = Zeroizing<String>;

/// The members of an RSA JWK: public `n`, `e`, private `d` and every CRT member.
#[derive(Serialize)]
pub struct RsaJwk {
    pub n: String,
    pub e: String,
    pub d: Secret,
    pub p: Secret,
    pub q: Secret,
    pub dp: Secret,
    pub dq: Secret,
    pub qi: Secret,
}

/// The members of an EC JWK; `x`, `y` and `d` are left-padded to the curve's coordinate length.
#[derive(Serialize)]
pub struct EcJwk {
    pub crv: &'static str,
    pub x: String,
    pub y: String,
    pub d: Secret,
}

/// A private key as a JSON Web Key, ready for `PUT /keys/{name}`. No `Debug`: it holds secrets.
pub enum PrivateJwk {
    Rsa(RsaJwk),
    Ec(EcJwk),
}

/// The body of an import request, as `http::keys::ImportIn` reads it.
#[derive(Serialize)]
struct ImportBody<'a> {
    key: KeyBody<'a>,
    attributes: AttributesBody,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct KeyBody<'a> {
    kty: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    key_ops: &'a [String],
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    rsa: Option<&'a RsaJwk>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    ec: Option<&'a EcJwk>,
}

#[derive(Serialize)]
struct AttributesBody {
    enabled: bool,
}

impl PrivateJwk {
    /// Reads the first private key in `pem`, decrypting it with `password` if it is encrypted
    /// (PKCS#8 or the traditional `Proc-Type: 4,ENCRYPTED` form). Blocks before the key, such
    /// as a certificate or EC parameters, are skipped.
    pub fn from_pem(pem: &[u8], password: Option<&[u8]>) -> Result<Self, PemError> {
        let key = read_private_key(pem, password)?;
        match key.id() {
            Id::RSA => rsa(&key),
            Id::EC => ec(&key),
            other => Err(PemError::UnsupportedType(type_name(other))),
        }
    }

    /// The JWK's `kty`.
    pub fn kty(&self) -> &'static str {
        match self {
            PrivateJwk::Rsa(_) => "RSA",
            PrivateJwk::Ec(_) => "EC",
        }
    }

    /// The JSON body of `PUT /keys/{name}`: `{"key": JWK, "attributes": {...}, "tags": {...}}`.
    /// `key_ops` and `tags` are left out when empty, so the service applies its defaults.
    pub fn import_body(
        &self,
        key_ops: &[String],
        enabled: bool,
        tags: &BTreeMap<String, String>,
    ) -> Zeroizing<Vec<u8>> {
        let body = ImportBody {
            key: KeyBody {
                kty: self.kty(),
                key_ops,
                rsa: match self {
                    PrivateJwk::Rsa(k) => Some(k),
                    PrivateJwk::Ec(_) => None,
                },
                ec: match self {
                    PrivateJwk::Ec(k) => Some(k),
                    PrivateJwk::Rsa(_) => None,
                },
            },
            attributes: AttributesBody { enabled },
            tags,
        };
        // Measured first, then written into a buffer of exactly that size: a growing Vec
        // would leave copies of the private members behind in the allocations it gives up.
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, &body)
            .expect("serialising strings and maps into a writer that never fails cannot fail");
        let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
        serde_json::to_writer(&mut *out, &body)
            .expect("serialising strings and maps into a Vec cannot fail");
        out
    }
}

/// Counts what would be written.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a whole file into a zeroizing buffer allocated once at the file's size, so no
/// reallocation leaves a copy behind.
pub fn read_secret_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    // One byte more than the size, so that reaching the end needs no growth.
    let capacity = usize::try_from(len).unwrap_or(usize::MAX).saturating_add(1);
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    file.read_to_end(&mut out)?;
    Ok(out)
}

/// A password file's contents without its trailing line ending (`\n` or `\r\n`).
pub fn password_from_file(mut contents: Zeroizing<Vec<u8>>) -> Zeroizing<Vec<u8>> {
    if contents.last() == Some(&b'\n') {
        contents.pop();
        if contents.last() == Some(&b'\r') {
            contents.pop();
        }
    }
    contents
}

/// Parses the first private key block of `pem` (also the wrapping keys of `p11vault
/// security-domain`). OpenSSL asks for the password through a callback that copies it
/// straight into OpenSSL's buffer; without a password the callback refuses, so OpenSSL never
/// prompts on the terminal.
pub fn read_private_key(pem: &[u8], password: Option<&[u8]>) -> Result<PKey<Private>, PemError> {
    let start = private_key_block(pem)?;
    let asked = std::cell::Cell::new(false);
    let too_long = std::cell::Cell::new(None);
    let parsed = PKey::private_key_from_pem_callback(&pem[start..], |buf| {
        asked.set(true);
        match password {
            Some(pw) if pw.len() < buf.len() => {
                buf[..pw.len()].copy_from_slice(pw);
                Ok(pw.len())
            }
            Some(_) => {
                too_long.set(Some(buf.len() - 1));
                Err(ErrorStack::get())
            }
            None => Err(ErrorStack::get()),
        }
    });
    match parsed {
        Ok(key) => Ok(key),
        Err(e) => {
            let encrypted = asked.get() || looks_encrypted(&pem[start..]);
            Err(match (encrypted, password, too_long.get()) {
                (_, _, Some(max)) => PemError::PasswordTooLong(max),
                (true, None, _) => PemError::NeedsPassword,
                (true, Some(_), _) => PemError::WrongPassword,
                (false, _, _) => PemError::Unreadable(first_reason(&e)),
            })
        }
    }
}

/// Where the first `-----BEGIN … PRIVATE KEY-----` line starts. A file without one is refused
/// here, naming what it does hold.
fn private_key_block(pem: &[u8]) -> Result<usize, PemError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut labels = Vec::new();
    let mut from = 0;
    while let Some(at) = find(&pem[from..], BEGIN).map(|i| from + i) {
        let line_end = pem[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(pem.len(), |i| at + i);
        let line = pem[at + BEGIN.len()..line_end].trim_ascii_end();
        if let Some(label) = line.strip_suffix(b"-----") {
            if label.ends_with(b"PRIVATE KEY") {
                return Ok(at);
            }
            labels.push(String::from_utf8_lossy(label).into_owned());
        }
        from = line_end;
    }
    if labels.is_empty() {
        Err(PemError::NotPem)
    } else {
        labels.dedup();
        Err(PemError::NoPrivateKey(labels.join(", ")))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn looks_encrypted(pem: &[u8]) -> bool {
    find(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_some()
        || find(pem, b"Proc-Type: 4,ENCRYPTED").is_some()
}

/// OpenSSL's first reason, without the library and function noise of the full stack.
fn first_reason(e: &ErrorStack) -> String {
    e.errors()
        .iter()
        .find_map(|e| e.reason())
        .map_or_else(|| "not a private key it knows".to_owned(), str::to_owned)
}

fn type_name(id: Id) -> String {
    let name = match id {
        Id::RSA_PSS => "RSA-PSS (restricted to PSS signatures)",
        Id::DSA => "DSA",
        Id::DH | Id::DHX => "DH",
        Id::ED25519 => "Ed25519",
        Id::ED448 => "Ed448",
        Id::X25519 => "X25519",
        Id::X448 => "X448",
        Id::SM2 => "SM2",
        other => return format!("OpenSSL key type {}", other.as_raw()),
    };
    name.to_owned()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A private number as base64url. Both the bytes and the text are wiped on drop; `encode`
/// allocates the text once at its final length.
fn secret(n: &BigNumRef) -> Secret {
    let bytes = Zeroizing::new(n.to_vec());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(&*bytes))
}

fn secret_padded(n: &BigNumRef, len: usize) -> Result<Secret, PemError> {
    let len = i32::try_from(len).expect("curve coordinate lengths are at most 66 bytes");
    let bytes = Zeroizing::new(n.to_vec_padded(len)?);
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(&*bytes)))
}

fn rsa(key: &PKey<Private>) -> Result<PrivateJwk, PemError> {
    let rsa = key.rsa()?;
    let bits = u32::try_from(rsa.n().num_bits()).unwrap_or(0);
    if !RSA_SIZES.contains(&bits) {
        return Err(PemError::RsaSize(bits));
    }
    let (Some(p), Some(q), Some(dp), Some(dq), Some(qi)) =
        (rsa.p(), rsa.q(), rsa.dmp1(), rsa.dmq1(), rsa.iqmp())
    else {
        return Err(PemError::MissingCrt);
    };
    Ok(PrivateJwk::Rsa(RsaJwk {
        n: b64(&rsa.n().to_vec()),
        e: b64(&rsa.e().to_vec()),
        d: secret(rsa.d()),
        p: secret(p),
        q: secret(q),
        dp: secret(dp),
        dq: secret(dq),
        qi: secret(qi),
    }))
}

fn ec(key: &PKey<Private>) -> Result<PrivateJwk, PemError> {
    let ec = key.ec_key()?;
    let group = ec.group();
    let curve = match group.curve_name() {
        Some(Nid::X9_62_PRIME256V1) => Curve::P256,
        Some(Nid::SECP384R1) => Curve::P384,
        Some(Nid::SECP521R1) => Curve::P521,
        Some(Nid::SECP256K1) => Curve::P256K,
        Some(other) => {
            let name = other.short_name().unwrap_or("(unnamed)").to_owned();
            return Err(PemError::UnsupportedCurve(name));
        }
        None => {
            return Err(PemError::UnsupportedCurve(
                "given by explicit parameters".into(),
            ));
        }
    };
    let c = curve.coordinate_len();
    let pad = i32::try_from(c).expect("curve coordinate lengths are at most 66 bytes");
    let mut ctx = BigNumContext::new()?;
    let mut x = BigNum::new()?;
    let mut y = BigNum::new()?;
    ec.public_key()
        .affine_coordinates(group, &mut x, &mut y, &mut ctx)?;
    Ok(PrivateJwk::Ec(EcJwk {
        crv: curve.jwk_name(),
        x: b64(&x.to_vec_padded(pad)?),
        y: b64(&y.to_vec_padded(pad)?),
        d: secret_padded(ec.private_key(), c)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::import::{JwkIn, material_from_jwk};
    use crate::model::KeyKind;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::rsa::Rsa;
    use openssl::symm::Cipher;

    const PASSWORD: &[u8] = b"correct horse";

    fn parse(pem: &[u8], password: Option<&[u8]>) -> Result<PrivateJwk, PemError> {
        PrivateJwk::from_pem(pem, password)
    }

    /// What the service makes of the body: the JWK goes through its own import validation.
    fn service_reads(jwk: &PrivateJwk) -> KeyKind {
        let body = jwk.import_body(&[], true, &BTreeMap::new());
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let key: JwkIn = serde_json::from_value(value["key"].clone()).expect("a JWK");
        let (_, kind) = material_from_jwk(&key).expect("the service accepts the JWK");
        kind
    }

    fn ec_key(nid: Nid) -> EcKey<Private> {
        let group = EcGroup::from_curve_name(nid).expect("group");
        EcKey::generate(&group).expect("generate")
    }

    #[test]
    fn rsa_pkcs8_and_traditional_give_every_crt_member() {
        let rsa = Rsa::generate(2048).expect("generate");
        let pkey = PKey::from_rsa(rsa.clone()).expect("pkey");
        for pem in [
            pkey.private_key_to_pem_pkcs8().expect("pkcs8"),
            rsa.private_key_to_pem().expect("traditional"),
        ] {
            let jwk = parse(&pem, None).expect("an RSA key");
            let PrivateJwk::Rsa(k) = &jwk else {
                panic!("RSA expected")
            };
            assert_eq!(k.n, b64(&rsa.n().to_vec()));
            assert_eq!(k.e, "AQAB");
            assert_eq!(*k.qi, b64(&rsa.iqmp().expect("qi").to_vec()));
            assert_eq!(service_reads(&jwk), KeyKind::Rsa { bits: 2048 });
        }
    }

    #[test]
    fn ec_keys_on_each_curve_are_padded_to_the_coordinate_length() {
        for (nid, curve) in [
            (Nid::X9_62_PRIME256V1, Curve::P256),
            (Nid::SECP384R1, Curve::P384),
            (Nid::SECP521R1, Curve::P521),
            (Nid::SECP256K1, Curve::P256K),
        ] {
            let key = ec_key(nid);
            let pkcs8 = PKey::from_ec_key(key.clone())
                .expect("pkey")
                .private_key_to_pem_pkcs8()
                .expect("pkcs8");
            for pem in [key.private_key_to_pem().expect("traditional"), pkcs8] {
                let jwk = parse(&pem, None).expect("an EC key");
                let PrivateJwk::Ec(k) = &jwk else {
                    panic!("EC expected")
                };
                assert_eq!(k.crv, curve.jwk_name());
                for member in [&k.x, &k.y, &*k.d] {
                    let bytes = URL_SAFE_NO_PAD.decode(member).expect("base64url");
                    assert_eq!(bytes.len(), curve.coordinate_len(), "{}", k.crv);
                }
                assert_eq!(service_reads(&jwk), KeyKind::Ec { curve });
            }
        }
    }

    #[test]
    fn encrypted_pkcs8_and_traditional_need_the_right_password() {
        let rsa = PKey::from_rsa(Rsa::generate(2048).expect("generate")).expect("pkey");
        let ec = ec_key(Nid::SECP384R1);
        let encrypted = [
            rsa.private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), PASSWORD)
                .expect("encrypted pkcs8"),
            rsa.rsa()
                .expect("rsa")
                .private_key_to_pem_passphrase(Cipher::aes_128_cbc(), PASSWORD)
                .expect("traditional encrypted"),
            ec.private_key_to_pem_passphrase(Cipher::des_ede3_cbc(), PASSWORD)
                .expect("traditional encrypted EC"),
        ];
        for pem in &encrypted {
            assert!(
                parse(pem, Some(PASSWORD)).is_ok(),
                "{}",
                String::from_utf8_lossy(&pem[..40])
            );
            assert!(matches!(parse(pem, None), Err(PemError::NeedsPassword)));
            assert!(matches!(
                parse(pem, Some(b"wrong")),
                Err(PemError::WrongPassword)
            ));
            assert!(matches!(
                parse(pem, Some(b"")),
                Err(PemError::WrongPassword)
            ));
            assert!(matches!(
                parse(pem, Some(&[b'x'; 5000])),
                Err(PemError::PasswordTooLong(_))
            ));
        }
        // A password given for a file that is not encrypted is not needed, and harmless.
        let plain = rsa.private_key_to_pem_pkcs8().expect("pkcs8");
        assert!(parse(&plain, Some(PASSWORD)).is_ok());
    }

    #[test]
    fn text_a_certificate_or_ec_parameters_before_the_key_are_skipped() {
        let key = ec_key(Nid::X9_62_PRIME256V1);
        let pkey = PKey::from_ec_key(key.clone()).expect("pkey");
        let mut name = openssl::x509::X509Name::builder().expect("name");
        name.append_entry_by_text("CN", "test").expect("cn");
        let name = name.build();
        let mut cert = openssl::x509::X509::builder().expect("cert");
        cert.set_subject_name(&name).expect("subject");
        cert.set_issuer_name(&name).expect("issuer");
        cert.set_pubkey(&pkey).expect("pubkey");
        cert.sign(&pkey, openssl::hash::MessageDigest::sha256())
            .expect("sign");
        let cert = cert.build().to_pem().expect("cert pem");
        let params =
            b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
        let key_pem = key.private_key_to_pem().expect("pem");
        for prefix in [&b"Bag Attributes\n    friendlyName: x\n"[..], &cert, params] {
            let pem = [prefix, &key_pem].concat();
            assert!(parse(&pem, None).is_ok());
        }
        assert!(matches!(
            parse(&cert, None),
            Err(PemError::NoPrivateKey(l)) if l == "CERTIFICATE"
        ));
        let public = pkey.public_key_to_pem().expect("public pem");
        assert!(matches!(
            parse(&public, None),
            Err(PemError::NoPrivateKey(l)) if l == "PUBLIC KEY"
        ));
    }

    #[test]
    fn other_key_types_curves_and_sizes_are_refused_by_name() {
        let ed = PKey::generate_ed25519().expect("ed25519");
        let x = PKey::generate_x25519().expect("x25519");
        let dsa = PKey::from_dsa(openssl::dsa::Dsa::generate(1024).expect("dsa")).expect("pkey");
        for (key, name) in [(ed, "Ed25519"), (x, "X25519"), (dsa, "DSA")] {
            let pem = key.private_key_to_pem_pkcs8().expect("pkcs8");
            match parse(&pem, None) {
                Err(e @ PemError::UnsupportedType(_)) => {
                    assert!(e.to_string().starts_with(name), "{e}")
                }
                Err(e) => panic!("{name}: {e}"),
                Ok(_) => panic!("{name} was accepted"),
            }
        }
        let p224 = ec_key(Nid::SECP224R1).private_key_to_pem().expect("pem");
        assert!(matches!(
            parse(&p224, None),
            Err(PemError::UnsupportedCurve(c)) if c == "secp224r1"
        ));
        let small = Rsa::generate(1024).expect("generate");
        assert!(matches!(
            parse(&small.private_key_to_pem().expect("pem"), None),
            Err(PemError::RsaSize(1024))
        ));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(matches!(
            parse(b"not a key at all\n", None),
            Err(PemError::NotPem)
        ));
        assert!(matches!(parse(b"", None), Err(PemError::NotPem)));
        let damaged = b"-----BEGIN PRIVATE KEY-----\nAAAA!!!!\n-----END PRIVATE KEY-----\n";
        assert!(matches!(parse(damaged, None), Err(PemError::Unreadable(_))));
        let truncated = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow";
        assert!(matches!(
            parse(truncated, None),
            Err(PemError::Unreadable(_))
        ));
    }

    #[test]
    fn the_body_carries_ops_attributes_and_tags() {
        let jwk = parse(
            &ec_key(Nid::X9_62_PRIME256V1)
                .private_key_to_pem()
                .expect("pem"),
            None,
        )
        .expect("EC");
        let tags = BTreeMap::from([("team".to_owned(), "x".to_owned())]);
        let body = jwk.import_body(&["sign".to_owned()], false, &tags);
        assert_eq!(body.len(), body.capacity(), "written without reallocation");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(value["key"]["kty"], "EC");
        assert_eq!(value["key"]["crv"], "P-256");
        assert_eq!(value["key"]["key_ops"], serde_json::json!(["sign"]));
        assert_eq!(value["attributes"], serde_json::json!({"enabled": false}));
        assert_eq!(value["tags"], serde_json::json!({"team": "x"}));
        let bare = jwk.import_body(&[], true, &BTreeMap::new());
        let value: serde_json::Value = serde_json::from_slice(&bare).expect("JSON");
        assert!(value["key"].get("key_ops").is_none() && value.get("tags").is_none());
    }

    #[test]
    fn a_password_file_loses_one_trailing_line_ending() {
        let strip = |raw: &[u8]| password_from_file(Zeroizing::new(raw.to_vec())).to_vec();
        assert_eq!(strip(b"pw\n"), b"pw");
        assert_eq!(strip(b"pw\r\n"), b"pw");
        assert_eq!(strip(b"pw"), b"pw");
        assert_eq!(strip(b"pw \n\n"), b"pw \n");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pw");
        std::fs::write(&path, b"secret\n").expect("write");
        let read = read_secret_file(&path).expect("read");
        assert_eq!(&read[..], b"secret\n");
    }
}
