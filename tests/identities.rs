//! Principals managed with the admin CLI against a running service (disable, rotate and delete
//! take effect on the next request), and bearer JWTs from an OpenID Connect issuer.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, cli, data_dir};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use serde_json::json;

#[test]
fn the_cli_manages_principals_and_the_service_follows_at_once() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (id, token) = svc.new_principal("app", &["Managed HSM Crypto User"], "/");
    let list = |t: &str| svc.call_as(Some(t), "GET", &format!("/keys?{API}"), None).0;
    assert_eq!(list(&token), 200);

    let listed = svc.cli(&["principal", "list"]);
    assert!(
        listed.contains(&id) && listed.contains("Managed HSM Crypto User at /"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "list never shows a token");

    svc.cli(&["principal", "disable", &id]);
    assert_eq!(list(&token), 401, "a disabled principal is refused at once");
    svc.cli(&["principal", "enable", &id]);
    assert_eq!(list(&token), 200);

    let rotated = svc.cli(&["principal", "rotate", &id]);
    let new_token = rotated
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("a new token")
        .to_owned();
    assert_ne!(new_token, token);
    assert_eq!(list(&token), 401, "the old token stops working");
    assert_eq!(list(&new_token), 200);

    svc.cli(&["principal", "delete", &id]);
    assert_eq!(
        list(&new_token),
        401,
        "a deleted principal is refused at once"
    );
    let (_, assignments) = svc.call(
        "GET",
        &format!("/providers/Microsoft.Authorization/roleAssignments?{API}"),
        None,
    );
    assert!(
        !assignments.to_string().contains(&id),
        "its assignments went with it: {assignments}"
    );

    // Tokens are stored only as hashes.
    let db = std::fs::read(dir.join("p11vault.db")).expect("db");
    let needle = new_token.as_bytes();
    assert!(!db.windows(needle.len()).any(|w| w == needle));

    // Refusals of the CLI change nothing and say why.
    for args in [
        vec!["principal", "disable", "no-such-id"],
        vec!["principal", "create", "--name", ""],
        vec![
            "principal",
            "create",
            "--name",
            "x",
            "--role",
            "Managed HSM Wizard",
        ],
        vec!["principal", "create", "--name", "x", "--id", "has space"],
        vec![
            "role",
            "assign",
            "--principal",
            "no-such-id",
            "--role",
            "Managed HSM Crypto User",
        ],
    ] {
        let before = svc.cli(&["principal", "list"]);
        let (ok, _, stderr) = cli(&dir, &args);
        assert!(!ok, "{args:?} succeeded");
        assert!(!stderr.trim().is_empty(), "{args:?} gave no reason");
        assert_eq!(
            svc.cli(&["principal", "list"]),
            before,
            "{args:?} changed something"
        );
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt(key: &PKey<Private>, claims: serde_json::Value) -> String {
    let header = json!({"alg": "RS256", "kid": "test-key", "typ": "JWT"});
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), key).expect("signer");
    let signature = signer.sign_oneshot_to_vec(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64(&signature))
}

#[test]
fn bearer_jwts_from_the_configured_issuer_map_to_principals() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).expect("data dir");
    let rsa = Rsa::generate(2048).expect("RSA key");
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "test-key", "use": "sig", "alg": "RS256",
        "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())}]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("jwks");
    common::write_config(
        &dir,
        &format!(
            "[auth.oidc]\nissuer = \"https://idp.test.internal/realms/ops\"\naudience = \"p11vault\"\njwks_file = \"{}\"\n",
            dir.join("jwks.json").display()
        ),
    );
    let key = PKey::from_rsa(rsa).expect("pkey");
    let svc = Service::start(&dir);
    let oid = "6f0e6bd4-3c1e-4a39-9d7f-2b1d0d5c7e11";
    svc.cli(&[
        "principal",
        "create",
        "--name",
        "alice@idp",
        "--id",
        oid,
        "--role",
        "Managed HSM Crypto Auditor",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    let claims = |iss: &str, aud: &str, exp: i64, oid: &str| json!({"iss": iss, "aud": aud, "exp": exp, "nbf": now - 10, "oid": oid, "sub": "ignored"});
    let iss = "https://idp.test.internal/realms/ops";
    let list = |t: &str| svc.call_as(Some(t), "GET", &format!("/keys?{API}"), None).0;
    let good = jwt(&key, claims(iss, "p11vault", now + 600, oid));
    assert_eq!(list(&good), 200);
    // Her role is Crypto Auditor: reading yes, creating no.
    assert_eq!(
        svc.call_as(
            Some(&good),
            "POST",
            &format!("/keys/j/create?{API}"),
            Some(r#"{"kty":"EC"}"#)
        )
        .0,
        403
    );
    assert_eq!(
        list(&jwt(&key, claims(iss, "p11vault", now - 3600, oid))),
        401,
        "expired"
    );
    assert_eq!(
        list(&jwt(&key, claims(iss, "other-audience", now + 600, oid))),
        401
    );
    assert_eq!(
        list(&jwt(
            &key,
            claims("https://evil.example", "p11vault", now + 600, oid)
        )),
        401
    );
    assert_eq!(
        list(&jwt(
            &key,
            claims(
                iss,
                "p11vault",
                now + 600,
                "4b1a51b0-0000-4000-8000-000000000000"
            )
        )),
        401,
        "an object id that is not a registered principal"
    );
    let stranger = PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("pkey");
    assert_eq!(
        list(&jwt(&stranger, claims(iss, "p11vault", now + 600, oid))),
        401,
        "foreign key"
    );
    svc.cli(&["principal", "disable", oid]);
    assert_eq!(
        list(&good),
        401,
        "a disabled principal's JWTs are refused too"
    );
}
