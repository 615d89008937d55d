//! `p11vault key import --pem-file` against the real service: keys generated here with OpenSSL
//! in every PEM form are imported through the CLI, read back (the public parts must be the
//! original's) and used to sign, and the signatures verify with the original public key.
//! Refused imports exit non-zero, say why, and create nothing.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, cli, data_dir};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::{MessageDigest, hash};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use openssl::symm::Cipher;
use serde_json::{Value, json};

const PASSWORD: &str = "s3cret pass";
const MESSAGE: &[u8] = b"imported from PEM";

/// Writes `pem` next to the data dir and runs `p11vault key import` on it as `token_file`.
fn import(
    svc: &Service,
    name: &str,
    pem: &[u8],
    token_file: &Path,
    extra: &[&str],
) -> (bool, String, String) {
    let pem_file = svc.dir.with_extension(format!("{name}.pem"));
    std::fs::write(&pem_file, pem).expect("PEM file");
    let mut args = vec![
        "key",
        "import",
        "--url",
        &svc.url,
        "--token-file",
        token_file.to_str().expect("utf-8"),
        "--name",
        name,
        "--pem-file",
        pem_file.to_str().expect("utf-8"),
    ];
    args.extend(extra);
    cli(&svc.dir, &args)
}

fn password_file(svc: &Service, file: &str, password: &str) -> PathBuf {
    let path = svc.dir.with_extension(file);
    // A trailing newline, as `echo` writes it; the CLI strips it.
    std::fs::write(&path, format!("{password}\n")).expect("password file");
    path
}

fn ec_key(nid: Nid) -> EcKey<Private> {
    EcKey::generate(&EcGroup::from_curve_name(nid).expect("curve")).expect("EC key")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs SHA-xxx(MESSAGE) with the imported key through the API; returns the signature.
fn sign(svc: &Service, name: &str, alg: &str, digest: MessageDigest) -> (u16, Value) {
    let digest = hash(digest, MESSAGE).expect("digest");
    let body = json!({"alg": alg, "value": b64(&digest)}).to_string();
    svc.call("POST", &format!("/keys/{name}//sign?{API}"), Some(&body))
}

fn signature(svc: &Service, name: &str, alg: &str, digest: MessageDigest) -> Vec<u8> {
    let (status, answer) = sign(svc, name, alg, digest);
    assert_eq!(status, 200, "sign with {name}: {answer}");
    URL_SAFE_NO_PAD
        .decode(answer["value"].as_str().expect("a signature"))
        .expect("base64url")
}

/// Imports `pem` as `name`, checks the answer, and returns the key as GET shows it.
fn import_ok(svc: &Service, name: &str, pem: &[u8], extra: &[&str]) -> Value {
    let (ok, out, err) = import(svc, name, pem, &svc.dir.join("admin.token"), extra);
    assert!(ok, "import {name}: {err}");
    let kid = out.trim();
    assert!(
        kid.starts_with(&format!("{}/keys/{name}/", svc.url)),
        "the key id is printed: {out}"
    );
    let (status, key) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
    assert_eq!(status, 200, "{key}");
    assert_eq!(key["key"]["kid"], kid);
    key
}

#[test]
fn rsa_and_ec_keys_in_every_pem_form_import_and_sign() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let pw = password_file(&svc, "right.pw", PASSWORD);
    let pw = pw.to_str().expect("utf-8");

    // RSA: 2048 bits as encrypted PKCS#8, 3072 bits as a traditional unencrypted key.
    let rsa2048 = Rsa::generate(2048).expect("RSA");
    let rsa3072 = Rsa::generate(3072).expect("RSA");
    let rsa_cases = [
        (
            "rsa-2048",
            &rsa2048,
            PKey::from_rsa(rsa2048.clone())
                .expect("pkey")
                .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), PASSWORD.as_bytes())
                .expect("encrypted PKCS#8"),
            vec!["--password-file", pw],
        ),
        (
            "rsa-3072",
            &rsa3072,
            rsa3072.private_key_to_pem().expect("traditional"),
            vec![],
        ),
    ];
    for (name, rsa, pem, extra) in rsa_cases {
        let key = import_ok(&svc, name, &pem, &extra);
        assert_eq!(key["key"]["kty"], "RSA-HSM");
        assert_eq!(key["key"]["n"], b64(&rsa.n().to_vec()), "{name}: n");
        assert_eq!(key["key"]["e"], b64(&rsa.e().to_vec()), "{name}: e");
        assert!(key["key"].get("d").is_none(), "public parts only: {key}");
        let sig = signature(&svc, name, "RS256", MessageDigest::sha256());
        let public =
            PKey::public_key_from_der(&rsa.public_key_to_der().expect("der")).expect("public key");
        let mut verifier = Verifier::new(MessageDigest::sha256(), &public).expect("verifier");
        assert!(
            verifier.verify_oneshot(&sig, MESSAGE).expect("verifies"),
            "{name}: the signature verifies with the original public key"
        );
    }

    // EC, one PEM form per curve: traditional; traditional encrypted (Proc-Type); PKCS#8;
    // and `openssl ecparam -genkey` output (EC PARAMETERS before the key) for secp256k1.
    let p256 = ec_key(Nid::X9_62_PRIME256V1);
    let p384 = ec_key(Nid::SECP384R1);
    let p521 = ec_key(Nid::SECP521R1);
    let k256 = ec_key(Nid::SECP256K1);
    let k256_pem = [
        &b"-----BEGIN EC PARAMETERS-----\nBgUrgQQACg==\n-----END EC PARAMETERS-----\n"[..],
        &k256.private_key_to_pem().expect("traditional"),
    ]
    .concat();
    let ec_cases = [
        (
            "ec-p256",
            &p256,
            p256.private_key_to_pem().expect("traditional"),
            vec![],
            "P-256",
            "ES256",
            MessageDigest::sha256(),
        ),
        (
            "ec-p384",
            &p384,
            p384.private_key_to_pem_passphrase(Cipher::aes_128_cbc(), PASSWORD.as_bytes())
                .expect("traditional encrypted"),
            vec!["--password-file", pw],
            "P-384",
            "ES384",
            MessageDigest::sha384(),
        ),
        (
            "ec-p521",
            &p521,
            PKey::from_ec_key(p521.clone())
                .expect("pkey")
                .private_key_to_pem_pkcs8()
                .expect("PKCS#8"),
            vec![],
            "P-521",
            "ES512",
            MessageDigest::sha512(),
        ),
        (
            "ec-secp256k1",
            &k256,
            k256_pem,
            vec![],
            "P-256K",
            "ES256K",
            MessageDigest::sha256(),
        ),
    ];
    for (name, ec, pem, extra, crv, alg, digest) in ec_cases {
        if !common::curve_supported(crv) {
            let (ok, _, err) = import(&svc, name, &pem, &svc.dir.join("admin.token"), &extra);
            assert!(!ok, "{name}: imported onto a token without {crv}");
            assert!(
                err.contains("400")
                    && err.contains(crv)
                    && err.contains(&format!("token '{}'", common::TOKEN_LABEL)),
                "{name}: the refusal names the token's limit: {err}"
            );
            continue;
        }
        let key = import_ok(&svc, name, &pem, &extra);
        assert_eq!(key["key"]["kty"], "EC-HSM");
        assert_eq!(key["key"]["crv"], crv);
        let group = ec.group();
        let len = match crv {
            "P-384" => 48,
            "P-521" => 66,
            _ => 32,
        };
        let mut ctx = openssl::bn::BigNumContext::new().expect("ctx");
        let mut x = BigNum::new().expect("bn");
        let mut y = BigNum::new().expect("bn");
        ec.public_key()
            .affine_coordinates(group, &mut x, &mut y, &mut ctx)
            .expect("coordinates");
        assert_eq!(key["key"]["x"], b64(&x.to_vec_padded(len).expect("x")));
        assert_eq!(key["key"]["y"], b64(&y.to_vec_padded(len).expect("y")));
        assert!(key["key"].get("d").is_none(), "public parts only: {key}");

        let sig = signature(&svc, name, alg, digest);
        assert_eq!(sig.len(), 2 * len as usize, "{name}: r||s");
        let (r, s) = sig.split_at(len as usize);
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(r).expect("r"),
            BigNum::from_slice(s).expect("s"),
        )
        .expect("signature");
        let public = EcKey::from_public_key(group, ec.public_key()).expect("public key");
        let hashed = hash(digest, MESSAGE).expect("digest");
        assert!(
            sig.verify(&hashed, &public).expect("verifies"),
            "{name}: the signature verifies with the original public key"
        );
    }

    // The optional flags: operations, disabled, tags.
    let key = import_ok(
        &svc,
        "ec-flags",
        &p256.private_key_to_pem().expect("pem"),
        &[
            "--ops",
            "sign,verify",
            "--disabled",
            "--tag",
            "team=crypto",
            "--tag",
            "env=test",
        ],
    );
    assert_eq!(key["key"]["key_ops"], json!(["sign", "verify"]));
    assert_eq!(key["attributes"]["enabled"], false);
    assert_eq!(key["tags"], json!({"team": "crypto", "env": "test"}));
    let (status, answer) = sign(&svc, "ec-flags", "ES256", MessageDigest::sha256());
    assert_eq!(status, 403, "a disabled key does not sign: {answer}");

    // Nothing private reaches the service's log.
    let d = b64(&rsa2048.d().to_vec());
    assert!(!svc.log().contains(&d[..40]));
    svc.stop();
}

#[test]
fn refused_imports_exit_non_zero_say_why_and_create_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let admin = svc.dir.join("admin.token");
    let rsa = PKey::from_rsa(Rsa::generate(2048).expect("RSA")).expect("pkey");
    let encrypted = rsa
        .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), PASSWORD.as_bytes())
        .expect("encrypted PKCS#8");
    let wrong = password_file(&svc, "wrong.pw", "not the password");
    let wrong = wrong.to_str().expect("utf-8");
    let ed25519 = PKey::generate_ed25519()
        .expect("Ed25519")
        .private_key_to_pem_pkcs8()
        .expect("PKCS#8");
    let small = Rsa::generate(1024)
        .expect("RSA")
        .private_key_to_pem()
        .expect("pem");
    let plain = rsa.private_key_to_pem_pkcs8().expect("PKCS#8");

    let (_, auditor) = svc.new_principal("auditor", &["Managed HSM Crypto Auditor"], "/");
    let auditor_file = svc.dir.with_extension("auditor.token");
    std::fs::write(&auditor_file, &auditor).expect("token file");

    let refused = |name: &str, pem: &[u8], token: &Path, extra: &[&str], says: &str| {
        let (ok, out, err) = import(&svc, name, pem, token, extra);
        assert!(!ok, "{name}: the import succeeded: {out}");
        assert!(err.contains(says), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        let (status, _) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
        assert_eq!(status, 404, "{name}: nothing was created");
    };
    refused(
        "wrong-password",
        &encrypted,
        &admin,
        &["--password-file", wrong],
        "the password does not decrypt the PEM file",
    );
    refused(
        "no-password",
        &encrypted,
        &admin,
        &[],
        "the PEM file is encrypted; pass --password-file",
    );
    refused(
        "ed25519",
        &ed25519,
        &admin,
        &[],
        "Ed25519 keys cannot be imported",
    );
    refused(
        "not-pem",
        b"this is not a key\n",
        &admin,
        &[],
        "the file is not PEM",
    );
    refused(
        "rsa-1024",
        &small,
        &admin,
        &[],
        "the RSA key is 1024 bits long",
    );
    refused(
        "not-allowed",
        &plain,
        &auditor_file,
        &[],
        "the service answered 403: AccessDenied",
    );
    // An invalid name is refused before it becomes part of a URL path (GET of it is a 400).
    let (ok, _, err) = import(&svc, "bad_name", &plain, &admin, &[]);
    assert!(
        !ok && err.contains("The key name 'bad_name' is invalid"),
        "{err}"
    );
    let (status, list) = svc.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(list["value"], json!([]), "no key was created: {list}");

    // The same file with the right password goes through, so the refusals above were the
    // file's and the caller's, not the service's.
    let right = password_file(&svc, "right.pw", PASSWORD);
    let (ok, _, err) = import(
        &svc,
        "right-password",
        &encrypted,
        &admin,
        &["--password-file", right.to_str().expect("utf-8")],
    );
    assert!(ok, "{err}");
    svc.stop();
}
