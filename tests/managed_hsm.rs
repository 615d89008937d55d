//! Managed HSM semantics the SDK suites rely on, end to end over real HTTPS and a real token:
//! key attestation (refused clearly, never invented), RSA keys with a public exponent other
//! than 65537, and AES-CBC as Managed HSM does it (`aad` ignored, the unpadded form zero-pads).

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, data_dir};
use openssl::symm::{Cipher, Crypter, Mode};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .expect("base64url")
}

fn version_of(bundle: &Value) -> String {
    let kid = bundle["key"]["kid"].as_str().expect("a kid");
    kid.rsplit('/').next().expect("a version").to_owned()
}

#[test]
fn attestation_is_refused_clearly_after_the_key_is_found() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let key = svc.create("attested", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    let version = version_of(&key);

    // What the SDKs and az send (an empty version is the latest), and a named version.
    for path in [
        "/keys/attested//attestation".to_owned(),
        format!("/keys/attested/{version}/attestation"),
        "/keys/attest%65d//%61ttestation".to_owned(),
    ] {
        let (status, body) = svc.call("GET", &format!("{path}?{API}"), None);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "BadParameter", "{body}");
        assert_eq!(
            body["error"]["innererror"]["code"], "KeyAttestationNotSupported",
            "{body}"
        );
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains("attest") && message.contains("token '"),
            "the message says what is missing and where: {message}"
        );
        assert!(body.get("key").is_none() && body.get("attributes").is_none());
    }
    // A key or version that does not exist is a 404 first, as for get.
    for path in [
        "/keys/absent//attestation".to_owned(),
        format!("/keys/attested/{}/attestation", "0".repeat(32)),
        "/keys/attested/not-a-version/attestation".to_owned(),
    ] {
        let (status, body) = svc.call("GET", &format!("{path}?{API}"), None);
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "KeyNotFound", "{body}");
    }
    // The get right: a Crypto Auditor (keys/read) is answered; the Backup role is not.
    let (_, auditor) = svc.new_principal("auditor", &["Managed HSM Crypto Auditor"], "/");
    let (status, body) = svc.call_as(
        Some(&auditor),
        "GET",
        &format!("/keys/attested//attestation?{API}"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    let (_, backup) = svc.new_principal("backup-only", &["Managed HSM Backup"], "/");
    let (status, body) = svc.call_as(
        Some(&backup),
        "GET",
        &format!("/keys/attested//attestation?{API}"),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "AccessDenied", "{body}");
    // Nothing changed, and the route takes GET only.
    let (status, now) = svc.call("GET", &format!("/keys/attested?{API}"), None);
    assert_eq!((status, &now["key"]), (200, &key["key"]));
    let (status, _) = svc.call(
        "POST",
        &format!("/keys/attested/{version}/attestation?{API}"),
        Some("{}"),
    );
    assert_eq!(status, 405);
}

/// Encrypts with RSA-OAEP under the public key the service returned, for the service to
/// decrypt: proof the token's key pair has that exponent.
fn oaep_encrypt(bundle: &Value, plaintext: &[u8]) -> Vec<u8> {
    use openssl::bn::BigNum;
    use openssl::rsa::{Padding, Rsa};
    let n = BigNum::from_slice(&unb64(&bundle["key"]["n"])).expect("n");
    let e = BigNum::from_slice(&unb64(&bundle["key"]["e"])).expect("e");
    let public = Rsa::from_public_components(n, e).expect("an RSA public key");
    let mut out = vec![0u8; public.size() as usize];
    let len = public
        .public_encrypt(plaintext, &mut out, Padding::PKCS1_OAEP)
        .expect("encrypts");
    out.truncate(len);
    out
}

fn decrypts(svc: &Service, name: &str, bundle: &Value) {
    let secret = b"an RSA key with its own exponent";
    let ciphertext = oaep_encrypt(bundle, secret);
    let (status, out) = svc.call(
        "POST",
        &format!("/keys/{name}/{}/decrypt?{API}", version_of(bundle)),
        Some(&json!({"alg": "RSA-OAEP", "value": b64(&ciphertext)}).to_string()),
    );
    assert_eq!(status, 200, "{name}: {out}");
    assert_eq!(unb64(&out["value"]), secret);
}

#[test]
fn rsa_keys_take_the_public_exponent_the_token_makes() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);

    for (e, encoded) in [(17u32, "EQ"), (3, "Aw"), (65537, "AQAB"), (257, "AQE")] {
        let name = format!("rsa-e{e}");
        let body = json!({"kty": "RSA-HSM", "key_size": 2048, "public_exponent": e});
        let key = svc.create(&name, &body.to_string());
        assert_eq!(key["key"]["e"], encoded, "e = {e}: {key}");
        decrypts(&svc, &name, &key);
    }
    // Rotation keeps the exponent.
    let (status, rotated) = svc.call("POST", &format!("/keys/rsa-e17/rotate?{API}"), None);
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["key"]["e"], "EQ", "{rotated}");
    decrypts(&svc, "rsa-e17", &rotated);

    // The largest the API's int32 allows: the token makes it or refuses it, never a 500.
    let big = i32::MAX as u32;
    let (status, body) = svc.call(
        "POST",
        &format!("/keys/rsa-big/create?{API}"),
        Some(&json!({"kty": "RSA", "public_exponent": big}).to_string()),
    );
    match status {
        200 => {
            assert_eq!(unb64(&body["key"]["e"]), big.to_be_bytes(), "{body}");
            decrypts(&svc, "rsa-big", &body);
        }
        400 => assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("public exponent")),
            "{body}"
        ),
        other => panic!("e = {big}: {other} {body}"),
    }

    // Not an RSA exponent, or not RSA: a 400 in Azure's shape, and no key.
    for (name, body) in [
        ("bad-even", json!({"kty": "RSA", "public_exponent": 65536})),
        ("bad-one", json!({"kty": "RSA", "public_exponent": 1})),
        ("bad-zero", json!({"kty": "RSA", "public_exponent": 0})),
        (
            "bad-big",
            json!({"kty": "RSA", "public_exponent": 2_147_483_649u64}),
        ),
        ("bad-neg", json!({"kty": "RSA", "public_exponent": -3})),
        (
            "bad-ec",
            json!({"kty": "EC", "crv": "P-256", "public_exponent": 3}),
        ),
        (
            "bad-oct",
            json!({"kty": "oct-HSM", "public_exponent": 65537}),
        ),
    ] {
        let (status, answer) = svc.call(
            "POST",
            &format!("/keys/{name}/create?{API}"),
            Some(&body.to_string()),
        );
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "BadParameter", "{answer}");
        let (status, _) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
        assert_eq!(status, 404, "{name} was created");
    }
}

fn aes_cbc(key: &[u8], iv: &[u8], data: &[u8], pad: bool, mode: Mode) -> Vec<u8> {
    let cipher = match key.len() {
        16 => Cipher::aes_128_cbc(),
        24 => Cipher::aes_192_cbc(),
        _ => Cipher::aes_256_cbc(),
    };
    let mut c = Crypter::new(cipher, mode, key, Some(iv)).expect("a crypter");
    c.pad(pad);
    let mut out = vec![0u8; data.len() + 16];
    let mut n = c.update(data, &mut out).expect("update");
    n += c.finalize(&mut out[n..]).expect("finalize");
    out.truncate(n);
    out
}

#[test]
fn aes_cbc_ignores_aad_and_zero_pads_as_managed_hsm_does() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let iv = [0x42u8; 16];
    let aad = b64(b"authenticated by nothing in CBC");

    for bits in [128usize, 192, 256] {
        let k: Vec<u8> = (0..bits / 8).map(|i| i as u8 ^ 0x5a).collect();
        let name = format!("aes-{bits}");
        let (status, body) = svc.call(
            "PUT",
            &format!("/keys/{name}?{API}"),
            Some(
                &json!({"key": {"kty": "oct-HSM", "k": b64(&k), "key_ops": ["encrypt", "decrypt"]}})
                    .to_string(),
            ),
        );
        assert_eq!(status, 200, "import {name}: {body}");
        let op = |operation: &str, body: Value| {
            svc.call(
                "POST",
                &format!("/keys/{name}//{operation}?{API}"),
                Some(&body.to_string()),
            )
        };

        for len in [0usize, 1, 15, 16, 20, 33, 48] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            // The unpadded CBC: `aad` is ignored, a partial block is zero-padded, and
            // decryption returns the padded plaintext.
            let alg = format!("A{bits}CBC");
            let padded_len = len.next_multiple_of(16);
            let mut padded = plaintext.clone();
            padded.resize(padded_len, 0);
            let (status, enc) = op(
                "encrypt",
                json!({"alg": alg, "value": b64(&plaintext), "iv": b64(&iv), "aad": aad}),
            );
            assert_eq!(status, 200, "{alg} {len}: {enc}");
            let ciphertext = unb64(&enc["value"]);
            assert_eq!(
                ciphertext,
                aes_cbc(&k, &iv, &padded, false, Mode::Encrypt),
                "{alg} {len}: AES-CBC of the zero-padded plaintext"
            );
            assert!(enc.get("tag").is_none(), "{enc}");
            let (status, dec) = op(
                "decrypt",
                json!({"alg": alg, "value": enc["value"], "iv": b64(&iv), "aad": aad}),
            );
            assert_eq!(status, 200, "{alg} {len}: {dec}");
            assert_eq!(unb64(&dec["value"]), padded, "{alg} {len}");

            // The PAD form: PKCS#7, `aad` ignored too, the exact plaintext back.
            let alg = format!("A{bits}CBCPAD");
            let (status, enc) = op(
                "encrypt",
                json!({"alg": alg, "value": b64(&plaintext), "iv": b64(&iv), "aad": aad}),
            );
            assert_eq!(status, 200, "{alg} {len}: {enc}");
            assert_eq!(
                unb64(&enc["value"]),
                aes_cbc(&k, &iv, &plaintext, true, Mode::Encrypt),
                "{alg} {len}"
            );
            let (status, dec) = op(
                "decrypt",
                json!({"alg": alg, "value": enc["value"], "iv": b64(&iv), "aad": aad}),
            );
            assert_eq!(status, 200, "{alg} {len}: {dec}");
            assert_eq!(unb64(&dec["value"]), plaintext, "{alg} {len}");
        }

        // Still refused: a ciphertext that is not whole blocks, a tag, an IV of another size.
        let alg = format!("A{bits}CBC");
        for (operation, body, says) in [
            (
                "decrypt",
                json!({"alg": alg, "value": b64(&[1u8; 20]), "iv": b64(&iv)}),
                "16-byte blocks",
            ),
            (
                "encrypt",
                json!({"alg": alg, "value": b64(&[1u8; 16]), "iv": b64(&iv), "tag": b64(&[0u8; 16])}),
                "tag",
            ),
            (
                "encrypt",
                json!({"alg": alg, "value": b64(&[1u8; 16]), "iv": b64(&[0u8; 12])}),
                "iv",
            ),
        ] {
            let (status, answer) = op(operation, body.clone());
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["error"]["code"], "BadParameter");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(says)),
                "{answer}"
            );
        }
    }
}
