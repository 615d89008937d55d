//! Certificates of the security-domain protocol: the customers' wrapping certificates of a
//! download request (security-domain.md §2.2), checked as the server must; the transfer key's
//! JWK and self-signed certificate (§2.4, §7); and the wrapping keys p11vault makes itself for
//! the embedded default.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private, Public};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509, X509NameBuilder};
use serde::Serialize;
use serde_json::Value;

use super::jose::{b64_decode, b64u, b64u_decode, truncate};
use super::{Error, Result};

/// The smallest RSA key a share or a transfer may be encrypted to.
pub const MIN_RSA_BITS: u32 = 2048;
/// The largest RSA key a wrapping certificate may carry (OpenSSL encrypts to no larger).
pub const MAX_RSA_BITS: u32 = 16384;
/// How many certificates a download takes (§2.2).
pub const CERTIFICATES: std::ops::RangeInclusive<usize> = 3..=10;
/// The largest quorum (§8); the smallest is 2.
pub const MAX_QUORUM: u8 = 10;

/// b64u(SHA-256(DER)): the `x5t_256` of a share and the `x5t#S256` of a JWK.
pub fn x5t_256(cert_der: &[u8]) -> String {
    b64u(&openssl::sha::sha256(cert_der))
}

fn x5t_sha1(cert_der: &[u8]) -> String {
    b64u(&openssl::sha::sha1(cert_der))
}

/// A certificate whose RSA public key (at least 2048 bits) a share may be encrypted to.
#[derive(Clone)]
pub struct WrappingCert {
    der: Vec<u8>,
    key: PKey<Public>,
    x5t_256: String,
}

impl fmt::Debug for WrappingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappingCert(x5t#S256={})", self.x5t_256)
    }
}

impl WrappingCert {
    /// Parses a DER certificate and checks its key. The error says what is wrong.
    pub fn from_der(der: &[u8]) -> std::result::Result<WrappingCert, String> {
        let cert = X509::from_der(der).map_err(|_| "it is not a DER X.509 certificate")?;
        // d2i ignores bytes after the certificate; the thumbprint az computes is of the
        // certificate alone, so the bytes must be exactly one certificate.
        let canonical = cert
            .to_der()
            .map_err(|_| "it is not a DER X.509 certificate")?;
        if canonical != der {
            return Err("it holds bytes beyond one DER certificate".into());
        }
        let key = cert
            .public_key()
            .map_err(|_| "its public key cannot be read")?;
        if key.id() != Id::RSA {
            return Err(format!(
                "its key is {}; the security domain is encrypted to RSA keys only",
                key_type(key.id())
            ));
        }
        if key.bits() < MIN_RSA_BITS {
            return Err(format!(
                "its RSA key has {} bits; at least {MIN_RSA_BITS} are needed",
                key.bits()
            ));
        }
        if key.bits() > MAX_RSA_BITS {
            return Err(format!(
                "its RSA key has {} bits; at most {MAX_RSA_BITS} are taken",
                key.bits()
            ));
        }
        // An exponent OpenSSL will not encrypt with (even, 1, or past 64 bits) would only show
        // as a failure to make the share, after the checks: refused here with the others.
        let e = key
            .rsa()
            .map_err(|_| "its RSA key cannot be read")?
            .e()
            .to_owned()
            .map_err(|_| "its RSA key cannot be read")?;
        if !e.is_bit_set(0) || e.num_bits() < 2 || e.num_bits() > 64 {
            return Err("its RSA public exponent is not an odd number from 3 to 2^64 - 1".into());
        }
        Ok(WrappingCert {
            x5t_256: x5t_256(der),
            der: canonical,
            key,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// b64u(SHA-256(DER)), which names this certificate's share in the SD file.
    pub fn x5t_256(&self) -> &str {
        &self.x5t_256
    }

    pub fn public_key(&self) -> &PKeyRef<Public> {
        &self.key
    }

    /// The JWK az sends for this certificate in a download request (§2.2), members in az's
    /// order.
    fn request_jwk(&self) -> std::result::Result<RequestJwk, openssl::error::ErrorStack> {
        let rsa = self.key.rsa()?;
        Ok(RequestJwk {
            x5c: [STANDARD.encode(&self.der)],
            x5t: x5t_sha1(&self.der),
            x5t_s256: self.x5t_256.clone(),
            key_ops: ["verify", "encrypt", "wrapKey"],
            kty: "RSA",
            alg: "RSA-OAEP-256",
            n: b64u(&rsa.n().to_vec()),
            e: b64u(&rsa.e().to_vec()),
        })
    }
}

fn key_type(id: Id) -> String {
    match id {
        Id::EC => "EC".into(),
        Id::ED25519 => "Ed25519".into(),
        Id::ED448 => "Ed448".into(),
        Id::DSA => "DSA".into(),
        Id::RSA_PSS => "RSA-PSS".into(),
        other => format!("of OpenSSL type {}", other.as_raw()),
    }
}

/// A parsed certificate as a wrapping certificate (RSA, at least 2048 bits).
pub fn wrapping_cert_from_x509(cert: &X509) -> Result<WrappingCert> {
    let der = cert
        .to_der()
        .map_err(|e| Error::Invalid(format!("the certificate cannot be encoded: {e}")))?;
    WrappingCert::from_der(&der).map_err(|e| Error::Invalid(format!("the certificate: {e}")))
}

/// Checks N certificates and a quorum M against the protocol's limits: 3 ≤ N ≤ 10 and
/// 2 ≤ M ≤ min(10, N).
pub fn check_quorum(certificates: usize, required: u64) -> Result<u8> {
    if !CERTIFICATES.contains(&certificates) {
        return Err(Error::Invalid(format!(
            "A security domain is encrypted to 3 to 10 certificates; {certificates} were given."
        )));
    }
    if !(2..=u64::from(MAX_QUORUM)).contains(&required) {
        return Err(Error::Invalid(format!(
            "The quorum ('required') must be 2 to 10, not {required}."
        )));
    }
    if required > certificates as u64 {
        return Err(Error::Invalid(format!(
            "The quorum ('required') is {required}, but only {certificates} certificates were given: the security domain could never be recovered."
        )));
    }
    // In 2..=10 here.
    Ok(required as u8)
}

/// Refuses two certificates with the same public key: one private key would open two shares.
pub(super) fn check_distinct(certs: &[WrappingCert]) -> Result<()> {
    for (i, a) in certs.iter().enumerate() {
        if let Some(j) = certs[..i].iter().position(|b| b.key.public_eq(&a.key)) {
            let what = if certs[j].x5t_256 == a.x5t_256 {
                "are the same certificate"
            } else {
                "hold the same public key"
            };
            return Err(Error::Invalid(format!(
                "certificates[{j}] and certificates[{i}] {what}: one private key would open two shares."
            )));
        }
    }
    Ok(())
}

/// A download request (§2.2) checked as the server must: 3–10 certificates, each an RSA JWK
/// whose `x5c[0]` is an X.509 certificate with an RSA key of at least 2048 bits and whose
/// `x5t#S256`, `x5t`, `n` and `e`, where present, match it; no two with the same key; and
/// 2 ≤ `required` ≤ min(10, N), 2 when absent. SPEC72's `{"value": JWK}` entries are accepted.
pub fn parse_download_request(body: &[u8]) -> Result<(Vec<WrappingCert>, u8)> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Invalid(format!("The request body is not JSON: {e}")))?;
    let certificates = body
        .get("certificates")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::Invalid(
                "The request body needs 'certificates', an array of JSON Web Keys.".into(),
            )
        })?;
    let required = match body.get("required") {
        None | Some(Value::Null) => 2,
        Some(v) => v.as_u64().ok_or_else(|| {
            Error::Invalid(format!(
                "'required' must be an integer from 2 to 10, not {}",
                truncate(&v.to_string())
            ))
        })?,
    };
    let required = check_quorum(certificates.len(), required)?;
    let certs = certificates
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            certificate_from_jwk(entry)
                .map_err(|e| Error::Invalid(format!("certificates[{i}]: {e}.")))
        })
        .collect::<Result<Vec<_>>>()?;
    check_distinct(&certs)?;
    Ok((certs, required))
}

fn certificate_from_jwk(entry: &Value) -> std::result::Result<WrappingCert, String> {
    // SPEC72 wraps each JWK as {"value": JWK}.
    let jwk = match entry.get("value") {
        Some(inner @ Value::Object(_)) if entry.get("kty").is_none() => inner,
        _ => entry,
    };
    let jwk = jwk.as_object().ok_or("it is not a JSON Web Key object")?;
    let text = |name: &str| -> std::result::Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("'{name}' must be a string")),
        }
    };
    match text("kty")? {
        Some("RSA") => {}
        Some(other) => return Err(format!("kty is '{}'; it must be RSA", truncate(other))),
        None => return Err("it has no kty; it must be RSA".into()),
    }
    let first = jwk
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|chain| chain.first())
        .ok_or("it has no x5c: the certificate itself is needed")?;
    let der = first
        .as_str()
        .and_then(b64_decode)
        .ok_or("x5c[0] is not a base64 string")?;
    let cert = WrappingCert::from_der(&der).map_err(|e| format!("x5c[0]: {e}"))?;
    for (member, expected) in [
        ("x5t#S256", openssl::sha::sha256(&der).to_vec()),
        ("x5t", openssl::sha::sha1(&der).to_vec()),
    ] {
        if let Some(given) = text(member)?
            && b64u_decode(given).as_deref() != Some(&expected[..])
        {
            return Err(format!("{member} is not the thumbprint of x5c[0]"));
        }
    }
    let rsa = cert
        .key
        .rsa()
        .map_err(|_| "x5c[0]: its RSA key cannot be read")?;
    for (member, actual) in [("n", rsa.n()), ("e", rsa.e())] {
        if let Some(given) = text(member)? {
            let given = b64u_decode(given)
                .and_then(|b| BigNum::from_slice(&b).ok())
                .ok_or_else(|| format!("'{member}' is not a base64url integer"))?;
            if given != *actual {
                return Err(format!("'{member}' is not the certificate's"));
            }
        }
    }
    Ok(cert)
}

/// One certificate of a download request, as az writes it.
#[derive(Serialize)]
struct RequestJwk {
    x5c: [String; 1],
    x5t: String,
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
    key_ops: [&'static str; 3],
    kty: &'static str,
    alg: &'static str,
    n: String,
    e: String,
}

#[derive(Serialize)]
struct DownloadRequest {
    certificates: Vec<RequestJwk>,
    required: u8,
}

/// The body az sends to `POST /securitydomain/download` (§2.2), as JSON text.
pub fn download_request_body(certs: &[WrappingCert], required: u8) -> Result<String> {
    let certificates = certs
        .iter()
        .map(WrappingCert::request_jwk)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    serde_json::to_string(&DownloadRequest {
        certificates,
        required,
    })
    .map_err(|e| Error::Internal(format!("cannot write the request: {e}")))
}

/// The transfer key's JWK, members in the real service's (alphabetical) order (§2.4).
#[derive(Serialize)]
struct TransferJwk<'a> {
    e: String,
    key_ops: [&'a str; 3],
    kid: &'a str,
    kty: &'a str,
    n: String,
    x5c: [String; 1],
    x5t: String,
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

/// The body of `GET /securitydomain/upload` (§2.4): `{"key_format":"jwk","transfer_key": S}`
/// where S is the transfer key's JWK as a JSON *string* (az `json.loads` it).
pub fn transfer_key_body(cert_der: &[u8]) -> Result<Value> {
    let cert = WrappingCert::from_der(cert_der)
        .map_err(|e| Error::Internal(format!("the transfer certificate: {e}")))?;
    let rsa = cert.key.rsa()?;
    let jwk = TransferJwk {
        e: b64u(&rsa.e().to_vec()),
        key_ops: ["wrapKey", "verify", "encrypt"],
        kid: "not used",
        kty: "RSA",
        n: b64u(&rsa.n().to_vec()),
        x5c: [STANDARD.encode(&cert.der)],
        x5t: x5t_sha1(&cert.der),
        x5t_s256: cert.x5t_256.clone(),
    };
    let text = serde_json::to_string(&jwk)
        .map_err(|e| Error::Internal(format!("cannot write the transfer key: {e}")))?;
    Ok(serde_json::json!({ "key_format": "jwk", "transfer_key": text }))
}

/// An RSA public key held elsewhere (in the token), for rcgen: the private half signs through
/// the caller's `sign`.
struct RemoteRsaKey<'a> {
    /// The RSAPublicKey DER, the BIT STRING of the SubjectPublicKeyInfo.
    public: Vec<u8>,
    sign: &'a dyn Fn(&[u8]) -> Result<Vec<u8>>,
    /// The caller's error, kept: rcgen's own error type cannot carry it.
    failure: std::cell::RefCell<Option<Error>>,
}

impl rcgen::PublicKeyData for RemoteRsaKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for RemoteRsaKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        (self.sign)(msg).map_err(|e| {
            *self.failure.borrow_mut() = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The transfer key's certificate (§7): self-signed, `CN=<host>`, serial 1, sha256WithRSA,
/// valid for one year from now, `basicConstraints` critical CA:FALSE, `keyUsage` critical
/// keyEncipherment, SKI = AKI. `spki_der` is the key's SubjectPublicKeyInfo; `sign` makes an
/// RSASSA-PKCS1-v1_5/SHA-256 signature of the bytes it is given (in the token). The signature
/// is verified before the certificate is returned.
pub fn transfer_certificate(
    spki_der: &[u8],
    host: &str,
    sign: &dyn Fn(&[u8]) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let public = PKey::public_key_from_der(spki_der)
        .map_err(|e| Error::Internal(format!("the transfer key's public key: {e}")))?;
    if public.id() != Id::RSA || public.bits() < MIN_RSA_BITS {
        return Err(Error::Internal(format!(
            "the transfer key must be RSA of at least {MIN_RSA_BITS} bits"
        )));
    }
    let key = RemoteRsaKey {
        public: public.rsa()?.public_key_to_der_pkcs1()?,
        sign,
        failure: std::cell::RefCell::new(None),
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
    // The certificate's validity is not retention logic (which reads `clock`); nothing checks
    // it (§5), so the system's time is good enough.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Error::Internal("the system clock is before 1970".into()))?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(now.as_secs());
    params.not_after = params.not_before + Duration::from_secs(365 * 24 * 3600);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    let cert = params.self_signed(&key).map_err(|e| {
        key.failure
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Error::Internal(format!("cannot build the certificate: {e}")))
    })?;
    let der = cert.der().to_vec();
    let parsed = X509::from_der(&der)?;
    if !parsed.verify(&public)? {
        return Err(Error::Internal(
            "the token's signature of the transfer certificate does not verify".into(),
        ));
    }
    Ok(der)
}

/// A fresh RSA-2048 wrapping key and its self-signed certificate (`CN=<cn>`, ten years: nothing
/// checks the dates, and the embedded default's keys must outlive any one certificate policy),
/// for a domain p11vault downloads to itself.
pub fn generate_wrapping_key(cn: &str) -> Result<(PKey<Private>, X509)> {
    let key = PKey::from_rsa(Rsa::generate(MIN_RSA_BITS)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)
        .map_err(|e| Error::Invalid(format!("'{}' cannot be a common name: {e}", truncate(cn))))?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(3650)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.set_pubkey(&key)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(KeyUsage::new().critical().key_encipherment().build()?)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((key, builder.build()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};

    /// A self-signed certificate for `key`, made with OpenSSL (not the code under test).
    pub fn cert_for(key: &PKeyRef<Private>, cn: &str) -> X509 {
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
        let name = name.build();
        let mut b = X509::builder().expect("builder");
        b.set_version(2).expect("version");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
            .expect("na");
        b.set_pubkey(key).expect("pubkey");
        b.sign(key, MessageDigest::sha256()).expect("sign");
        b.build()
    }

    #[test]
    fn an_exponent_openssl_cannot_encrypt_with_is_refused_up_front() {
        // A certificate (signed by another key) for a public key with e = 2^80 + 1, and one
        // with an even e: OpenSSL refuses to encrypt a share to either.
        let signer = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let n = signer.rsa().expect("rsa").n().to_owned().expect("n");
        for e_hex in ["0100000000000000000001", "010000"] {
            let e = openssl::bn::BigNum::from_hex_str(e_hex).expect("e");
            let public = PKey::from_rsa(
                Rsa::from_public_components(n.to_owned().expect("n"), e).expect("components"),
            )
            .expect("pkey");
            let mut name = X509NameBuilder::new().expect("name");
            name.append_entry_by_nid(Nid::COMMONNAME, "odd")
                .expect("cn");
            let name = name.build();
            let mut b = X509::builder().expect("builder");
            b.set_version(2).expect("version");
            b.set_subject_name(&name).expect("subject");
            b.set_issuer_name(&name).expect("issuer");
            b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
                .expect("nb");
            b.set_not_after(&Asn1Time::days_from_now(1).expect("t"))
                .expect("na");
            b.set_pubkey(&public).expect("pubkey");
            b.sign(&signer, MessageDigest::sha256()).expect("sign");
            let cert = b.build();
            let refused = WrappingCert::from_der(&cert.to_der().expect("der"))
                .err()
                .unwrap_or_default();
            assert!(refused.contains("public exponent"), "{e_hex}: {refused}");
        }
    }

    fn rsa_cert(bits: u32) -> X509 {
        let key = PKey::from_rsa(Rsa::generate(bits).expect("rsa")).expect("pkey");
        cert_for(&key, "test")
    }

    /// The request az would send for `certs`, as a JSON value to edit.
    fn request(certs: &[X509], required: u64) -> Value {
        let wrapping: Vec<WrappingCert> = certs
            .iter()
            .map(|c| wrapping_cert_from_x509(c).expect("wrapping cert"))
            .collect();
        let mut body: Value =
            serde_json::from_str(&download_request_body(&wrapping, 2).expect("body"))
                .expect("JSON");
        body["required"] = required.into();
        body
    }

    fn refusal(body: &Value) -> String {
        match parse_download_request(body.to_string().as_bytes()) {
            Err(Error::Invalid(m)) => m,
            Err(Error::Internal(m)) => panic!("internal: {m}"),
            Ok(_) => panic!("accepted: {body}"),
        }
    }

    #[test]
    fn the_request_az_sends_is_accepted_and_keeps_its_order() {
        let certs: Vec<X509> = (0..3).map(|_| rsa_cert(2048)).collect();
        let body = request(&certs, 2);
        let keys: Vec<&str> = body["certificates"][0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        // serde_json's map sorts members; the text keeps az's order.
        let text = download_request_body(
            &certs
                .iter()
                .map(|c| wrapping_cert_from_x509(c).expect("cert"))
                .collect::<Vec<_>>(),
            2,
        )
        .expect("body");
        assert!(text.starts_with(r#"{"certificates":[{"x5c":[""#), "{text}");
        assert!(text.contains(
            r#""key_ops":["verify","encrypt","wrapKey"],"kty":"RSA","alg":"RSA-OAEP-256","n":""#
        ));
        assert!(text.ends_with(r#""required":2}"#));
        assert_eq!(keys.len(), 8);
        let (parsed, required) =
            parse_download_request(body.to_string().as_bytes()).expect("accepted");
        assert_eq!(required, 2);
        for (p, c) in parsed.iter().zip(&certs) {
            let der = c.to_der().expect("der");
            assert_eq!(p.der(), &der[..]);
            assert_eq!(p.x5t_256(), x5t_256(&der));
        }
        // The e of AQAB and a minimal n.
        assert_eq!(body["certificates"][0]["e"], "AQAB");
        let n = b64u_decode(body["certificates"][0]["n"].as_str().expect("n")).expect("b64");
        assert_eq!((n.len(), n[0] != 0), (256, true));
    }

    #[test]
    fn the_spec72_wrapping_bare_minimum_and_default_quorum_are_accepted() {
        let certs: Vec<X509> = (0..3).map(|_| rsa_cert(2048)).collect();
        let body = request(&certs, 3);
        let wrapped: Vec<Value> = body["certificates"]
            .as_array()
            .expect("array")
            .iter()
            .map(|jwk| serde_json::json!({ "value": jwk }))
            .collect();
        let spec72 = serde_json::json!({ "certificates": wrapped, "required": 3 });
        assert_eq!(
            parse_download_request(spec72.to_string().as_bytes())
                .expect("SPEC72")
                .1,
            3
        );
        // Only kty and x5c; no `required`: a quorum of 2.
        let bare: Vec<Value> = certs
            .iter()
            .map(|c| {
                serde_json::json!({"kty": "RSA", "x5c": [STANDARD.encode(c.to_der().expect("der"))]})
            })
            .collect();
        let bare = serde_json::json!({ "certificates": bare });
        assert_eq!(
            parse_download_request(bare.to_string().as_bytes())
                .expect("bare")
                .1,
            2
        );
    }

    #[test]
    fn counts_and_quorums_outside_the_limits_are_refused() {
        let certs: Vec<X509> = (0..11).map(|_| rsa_cert(2048)).collect();
        let cases: [(usize, u64, &str); 7] = [
            (2, 2, "3 to 10 certificates; 2"),
            (11, 2, "3 to 10 certificates; 11"),
            (3, 1, "2 to 10, not 1"),
            (3, 0, "2 to 10, not 0"),
            (10, 11, "2 to 10, not 11"),
            (3, 4, "only 3 certificates"),
            (5, 6, "only 5 certificates"),
        ];
        for (n, m, reason) in cases {
            let message = refusal(&request(&certs[..n], m));
            assert!(message.contains(reason), "{n}/{m}: {message}");
        }
        for (n, m) in [(3, 2), (3, 3), (10, 10), (10, 2)] {
            assert!(parse_download_request(request(&certs[..n], m).to_string().as_bytes()).is_ok());
        }
        let mut body = request(&certs[..3], 2);
        for bad in [
            serde_json::json!("2"),
            serde_json::json!(2.5),
            serde_json::json!(-2),
        ] {
            body["required"] = bad;
            assert!(refusal(&body).contains("integer"));
        }
    }

    #[test]
    fn weak_foreign_and_inconsistent_certificates_are_refused() {
        let certs: Vec<X509> = (0..3).map(|_| rsa_cert(2048)).collect();
        let good = request(&certs, 2);
        let small = rsa_cert(1024);
        let ec_key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group"))
                .expect("ec"),
        )
        .expect("pkey");
        let ec = cert_for(&ec_key, "ec");
        let der = |c: &X509| STANDARD.encode(c.to_der().expect("der"));
        let mut trailing = certs[0].to_der().expect("der");
        trailing.push(0);
        let other = request(&[rsa_cert(2048)], 2)["certificates"][0].clone();
        let edits: Vec<(&str, Value, &str)> = vec![
            ("kty", "EC".into(), "kty is 'EC'"),
            ("kty", Value::Null, "no kty"),
            ("x5c", serde_json::json!([]), "no x5c"),
            ("x5c", serde_json::json!(["!!!"]), "not a base64"),
            (
                "x5c",
                serde_json::json!([STANDARD.encode(b"junk")]),
                "not a DER X.509",
            ),
            (
                "x5c",
                serde_json::json!([STANDARD.encode(&trailing)]),
                "beyond one DER",
            ),
            ("x5c", serde_json::json!([der(&small)]), "1024 bits"),
            ("x5c", serde_json::json!([der(&ec)]), "key is EC"),
            ("x5t#S256", other["x5t#S256"].clone(), "x5t#S256 is not"),
            ("x5t", other["x5t"].clone(), "x5t is not"),
            ("n", other["n"].clone(), "'n' is not the certificate's"),
            ("e", "Aw".into(), "'e' is not the certificate's"),
            ("n", serde_json::json!(5), "'n' must be a string"),
        ];
        for (member, value, reason) in edits {
            let mut body = good.clone();
            body["certificates"][1][member] = value;
            let message = refusal(&body);
            assert!(message.starts_with("certificates[1]: "), "{message}");
            assert!(message.contains(reason), "{member}: {message}");
        }
        // The n of the right key with a leading zero byte is the same integer.
        let mut body = good.clone();
        let n = b64u_decode(good["certificates"][0]["n"].as_str().expect("n")).expect("b64");
        body["certificates"][0]["n"] = b64u(&[&[0u8][..], &n].concat()).into();
        assert!(parse_download_request(body.to_string().as_bytes()).is_ok());
        for text in ["", "[]", "{}", r#"{"certificates": {}}"#, "not json"] {
            assert!(matches!(
                parse_download_request(text.as_bytes()),
                Err(Error::Invalid(_))
            ));
        }
    }

    #[test]
    fn the_same_key_twice_is_refused() {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let a = cert_for(&key, "a");
        let b = cert_for(&key, "b");
        let c = rsa_cert(2048);
        let same_cert = request(&[a.clone(), c.clone(), a.clone()], 2);
        assert!(refusal(&same_cert).contains("certificates[0] and certificates[2] are the same"));
        let same_key = request(&[a, b, c], 2);
        assert!(refusal(&same_key).contains("hold the same public key"));
    }

    #[test]
    fn the_transfer_key_body_is_a_jwk_in_a_string() {
        let cert = rsa_cert(2048);
        let der = cert.to_der().expect("der");
        let body = transfer_key_body(&der).expect("body");
        assert_eq!(body["key_format"], "jwk");
        let text = body["transfer_key"]
            .as_str()
            .expect("a string, not an object");
        assert!(text.starts_with(r#"{"e":"AQAB","key_ops":["wrapKey","verify","encrypt"],"kid":"not used","kty":"RSA","n":""#), "{text}");
        let jwk: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(jwk["x5c"][0], STANDARD.encode(&der));
        assert_eq!(jwk["x5t#S256"], x5t_256(&der));
        assert_eq!(jwk["x5t"], b64u(&openssl::sha::sha1(&der)));
        assert!(jwk.get("alg").is_none());
        assert!(matches!(
            transfer_key_body(b"junk"),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn the_transfer_certificate_has_the_shape_of_azures() {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let spki = key.public_key_to_der().expect("spki");
        let sign = |tbs: &[u8]| -> Result<Vec<u8>> {
            let mut signer =
                openssl::sign::Signer::new(MessageDigest::sha256(), &key).expect("signer");
            signer.update(tbs).expect("update");
            Ok(signer.sign_to_vec().expect("sign"))
        };
        let der = transfer_certificate(&spki, "hsm.example.net", &sign).expect("certificate");
        let cert = X509::from_der(&der).expect("parses");
        assert!(cert.verify(&key).expect("verify"), "self-signed");
        let cn = |n: &openssl::x509::X509NameRef| {
            n.entries_by_nid(Nid::COMMONNAME)
                .next()
                .expect("cn")
                .data()
                .as_slice()
                .to_vec()
        };
        assert_eq!(cn(cert.subject_name()), b"hsm.example.net");
        assert_eq!(cn(cert.issuer_name()), b"hsm.example.net");
        assert_eq!(
            cert.serial_number().to_bn().expect("bn"),
            BigNum::from_u32(1).expect("bn")
        );
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
        assert!(cert.public_key().expect("key").public_eq(&key));
        let days = cert.not_before().diff(cert.not_after()).expect("diff").days;
        assert_eq!(days, 365);
        assert!(cert.not_before() <= Asn1Time::days_from_now(0).expect("now"));
        assert_eq!(
            cert.subject_key_id().expect("ski").as_slice(),
            cert.authority_key_id().expect("aki").as_slice()
        );
        // Criticality and values, from OpenSSL's own text.
        let text = String::from_utf8(cert.to_text().expect("text")).expect("utf8");
        let squashed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            squashed.contains("X509v3 Basic Constraints: critical CA:FALSE"),
            "{text}"
        );
        assert!(
            squashed.contains("X509v3 Key Usage: critical Key Encipherment"),
            "{text}"
        );
        // The transfer key body takes it.
        assert!(transfer_key_body(&der).is_ok());
    }

    #[test]
    fn a_failed_or_wrong_token_signature_is_an_error() {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let spki = key.public_key_to_der().expect("spki");
        let failing = |_: &[u8]| -> Result<Vec<u8>> { Err(Error::Internal("token gone".into())) };
        assert!(matches!(
            transfer_certificate(&spki, "h", &failing),
            Err(Error::Internal(m)) if m == "token gone"
        ));
        let wrong = |_: &[u8]| -> Result<Vec<u8>> { Ok(vec![0; 256]) };
        assert!(matches!(
            transfer_certificate(&spki, "h", &wrong),
            Err(Error::Internal(m)) if m.contains("does not verify")
        ));
        let small = PKey::from_rsa(Rsa::generate(1024).expect("rsa")).expect("pkey");
        assert!(
            transfer_certificate(&small.public_key_to_der().expect("spki"), "h", &wrong).is_err()
        );
        assert!(transfer_certificate(b"junk", "h", &wrong).is_err());
    }

    #[test]
    fn generated_wrapping_keys_are_usable_wrapping_certificates() {
        let (key, cert) = generate_wrapping_key("p11vault wrapping key 1").expect("generate");
        assert_eq!(key.bits(), 2048);
        assert!(cert.public_key().expect("key").public_eq(&key));
        assert!(cert.verify(&key).expect("verify"));
        let wrapping = wrapping_cert_from_x509(&cert).expect("a wrapping cert");
        assert_eq!(wrapping.x5t_256(), x5t_256(&cert.to_der().expect("der")));
        let small = rsa_cert(1024);
        assert!(matches!(
            wrapping_cert_from_x509(&small),
            Err(Error::Invalid(m)) if m.contains("1024 bits")
        ));
    }
}
