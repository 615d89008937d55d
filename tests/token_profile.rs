//! What the first start learns of the token and records (`meta.token_profile`), the choices
//! that follow from it, and the token-specific answers the service must turn into client
//! errors. Runs on both tokens (`P11VAULT_TEST_TOKEN`); some checks are for one token only.

mod common;

use common::{API, Service, data_dir};
use serde_json::{Value, json};

fn meta(dir: &std::path::Path, key: &str) -> Option<String> {
    let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("db");
    db.query_row("SELECT v FROM meta WHERE k = ?1", [key], |r| r.get(0))
        .ok()
}

fn profile(dir: &std::path::Path) -> Value {
    serde_json::from_str(&meta(dir, "token_profile").expect("a recorded profile")).expect("JSON")
}

/// Replaces `from` (which must be there) with `to` in the data dir's `p11vault.toml`; returns
/// the text as it was.
fn rewrite_config(dir: &std::path::Path, from: &str, to: &str) -> String {
    let path = dir.join("p11vault.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(from), "{from:?} in {text}");
    std::fs::write(&path, text.replace(from, to)).expect("config");
    text
}

/// The start of a data dir that must be refused.
fn refused(dir: &std::path::Path, env: &[(&str, &str)], what: &str) -> common::FailedStart {
    match Service::start_with(dir, env) {
        Ok(_) => panic!("started: {what}"),
        Err(f) => f,
    }
}

/// A data dir configured for an external token that does not exist yet, with `init_token`
/// and `keys.backups = true`: kryoptic as the harness makes it, or an external SoftHSM2
/// module over a token directory of its own. Returns the environment its starts need.
fn external_token(dir: &std::path::Path) -> Vec<(String, String)> {
    if common::on_kryoptic() {
        Vec::new()
    } else {
        external_softhsm(dir)
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// What every start logs about key backups under the private domain model.
const EXTRACTION_NOTE: &str = "a holder of the user PIN can extract them";

#[test]
fn the_first_start_records_the_tokens_profile_and_later_starts_keep_it() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.stop();
    let recorded = profile(&dir);
    // Every new data dir keeps its security domain in private objects only.
    assert_eq!(recorded["domain"], "private", "{recorded}");
    // Both tokens make RSA keys of every size the API offers; SoftHSM2 does OAEP only with
    // SHA-1 itself (RSA-OAEP-256 is raw RSA in the token, padded by the service).
    let rsa = &recorded["rsa"];
    assert!(rsa["min_bits"].as_u64() <= Some(2048) && rsa["max_bits"].as_u64() >= Some(4096));
    let oaep = if common::on_kryoptic() {
        json!(["SHA-1", "SHA-256"])
    } else {
        json!(["SHA-1"])
    };
    assert_eq!(rsa["oaep_native"], oaep, "{recorded}");
    let mechanisms = recorded["mechanisms"].as_array().expect("mechanisms");
    for m in ["CKM_AES_GCM", "CKM_ECDSA", "CKM_RSA_PKCS_OAEP"] {
        assert!(mechanisms.contains(&json!(m)), "{m}: {recorded}");
    }
    assert!(mechanisms.contains(&recorded["key_wrap"]), "{recorded}");
    if common::on_kryoptic() {
        assert_eq!(recorded["key_wrap"], "CKM_AES_KEY_WRAP_KWP", "{recorded}");
        assert_eq!(recorded["trust"], "any-user", "{recorded}");
        assert_eq!(recorded["wrap_half"], "so-private", "{recorded}");
        assert_eq!(recorded["trusted_via"], "copy", "{recorded}");
        assert_eq!(recorded["curves"], json!(["P-256", "P-384", "P-521"]));
    } else {
        assert_eq!(recorded["key_wrap"], "CKM_AES_KEY_WRAP_PAD", "{recorded}");
        assert_eq!(recorded["trust"], "so-only", "{recorded}");
        assert_eq!(recorded["wrap_half"], "so-public", "{recorded}");
        assert_eq!(
            recorded["curves"],
            json!(["P-256", "P-384", "P-521", "P-256K"])
        );
    }
    assert!(meta(&dir, "user_trusted_keys_accepted").is_none());

    // A later start reads the record, even with the choice gone from the config: it was made
    // at the first start, and every start says what it means.
    if common::on_kryoptic() {
        rewrite_config(&dir, "backups = true", "");
    }
    let svc = Service::start(&dir);
    let key = svc.create("after-restart", r#"{"kty":"oct","key_size":256}"#);
    assert_eq!(key["key"]["kty"], "oct-HSM");
    let (status, body) = svc.call("POST", &format!("/keys/after-restart/backup?{API}"), None);
    assert_eq!(status, 200, "a backup under the recorded key wrap: {body}");
    assert!(svc.log().contains(EXTRACTION_NOTE), "{}", svc.log());
    svc.stop();
    assert_eq!(profile(&dir), recorded, "the record never changes");
}

#[test]
fn how_keys_may_leave_an_external_token_is_chosen_explicitly() {
    // (The embedded SoftHSM2 default, a development token under the data dir, takes the
    // default, backups on, and says what it means: the test above.)
    let (_tmp, dir) = data_dir();
    let env = external_token(&dir);
    let env = env_refs(&env);
    let text = rewrite_config(&dir, "backups = true", "");
    let failed = refused(&dir, &env, "a protection model nobody chose");
    assert!(
        failed
            .stderr
            .contains("a holder of the user PIN can extract every key")
            && failed.stderr.contains("keys.backups = true")
            && failed.stderr.contains("keys.backups = false")
            && failed.stderr.contains("Nothing was written to the token"),
        "{}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains("initialising an empty slot"),
        "refused before the token was touched: {}",
        failed.stderr
    );
    assert!(meta(&dir, "security_domain").is_none(), "no domain made");

    // With backups off nothing can leave the token: the choice made, the start goes on, and
    // keys are made never extractable (tests/token_objects.rs reads them).
    std::fs::write(
        dir.join("p11vault.toml"),
        text.replace("backups = true", "backups = false"),
    )
    .expect("config");
    let svc = Service::start_with(&dir, &env).expect("the choice made, it starts");
    assert!(!svc.log().contains(EXTRACTION_NOTE));
    assert!(svc.log().contains("never leave the token"));
    svc.stop();
}

/// An external SoftHSM2 module over a token directory of its own, as an operator would set
/// it up before the token exists: the module's config (`SOFTHSM2_CONF`), TEST-ONLY PIN files
/// and the data dir's `p11vault.toml`. kryoptic: the harness's external config already is.
fn external_softhsm(dir: &std::path::Path) -> Vec<(String, String)> {
    let base = dir.with_extension("external-softhsm");
    let tokens = base.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = base.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    // TEST-ONLY PINs. Never use these anywhere else.
    std::fs::write(base.join("TEST-ONLY-user.pin"), "TEST-ONLY-user-1234\n").expect("pin");
    std::fs::write(base.join("TEST-ONLY-so.pin"), "TEST-ONLY-so-5678\n").expect("pin");
    let module = p11vault::config::SOFTHSM2_CANDIDATES
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("SoftHSM2 is installed");
    std::fs::create_dir_all(dir).expect("data dir");
    std::fs::write(
        dir.join("p11vault.toml"),
        format!(
            "[pkcs11]\nmodule = {module:?}\ntoken_label = \"p11vault\"\npin_file = {:?}\nso_pin_file = {:?}\n\
             init_token = true\n\n[keys]\nbackups = true\n\n[security_domain]\nauto_activate = true\n",
            base.join("TEST-ONLY-user.pin").display().to_string(),
            base.join("TEST-ONLY-so.pin").display().to_string(),
        ),
    )
    .expect("config");
    vec![("SOFTHSM2_CONF".into(), conf.display().to_string())]
}

#[test]
fn an_external_token_is_initialised_only_when_asked() {
    let (_tmp, dir) = data_dir();
    let env = external_token(&dir);
    let env = env_refs(&env);
    let text = rewrite_config(&dir, "init_token = true", "");
    let failed = refused(&dir, &env, "no token, and none asked for");
    assert!(
        failed
            .stderr
            .contains("initialise it with your HSM's tools first"),
        "{}",
        failed.stderr
    );
    // Asked to: the empty slot is initialised, and on the next start (the token exists) it is
    // only used.
    std::fs::write(dir.join("p11vault.toml"), &text).expect("config");
    let svc = Service::start_with(&dir, &env).expect("initialises the empty slot");
    svc.create("on-the-new-token", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.stop();
    let svc = Service::start_with(&dir, &env).expect("uses the token");
    assert_eq!(
        svc.log().matches("initialising an empty slot").count(),
        1,
        "an existing token is never initialised again"
    );
    let (status, body) = svc.call("GET", &format!("/keys/on-the-new-token?{API}"), None);
    assert_eq!(status, 200, "{body}");
    svc.stop();
}

#[test]
fn bad_ciphertexts_and_wrapped_keys_are_400s_and_never_a_reconnect() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create(
        "rsa",
        r#"{"kty":"RSA","key_size":2048,"key_ops":["encrypt","decrypt","wrapKey","unwrapKey","sign","verify"]}"#,
    );
    svc.create("aes", r#"{"kty":"oct","key_size":256}"#);
    let garbage = common::b64url(&[5u8; 256]);
    for (key, op, alg, value) in [
        ("rsa", "decrypt", "RSA1_5", garbage.clone()),
        ("rsa", "decrypt", "RSA-OAEP", garbage.clone()),
        ("rsa", "decrypt", "RSA-OAEP-256", garbage.clone()),
        ("rsa", "unwrapkey", "RSA-OAEP", garbage.clone()),
        ("aes", "unwrapkey", "A256KW", common::b64url(&[5u8; 40])),
    ] {
        let (status, body) = svc.call(
            "POST",
            &format!("/keys/{key}//{op}?{API}"),
            Some(&json!({"alg": alg, "value": value}).to_string()),
        );
        assert_eq!(status, 400, "{key} {op} {alg}: {body}");
    }
    let (status, body) = svc.call(
        "POST",
        &format!("/keys/rsa//sign?{API}"),
        Some(&json!({"alg": "RS256", "value": common::b64url(&[1u8; 32])}).to_string()),
    );
    assert_eq!(status, 200, "the token is still in use: {body}");
    assert!(
        !svc.log().contains("reconnect"),
        "client data made the service reconnect: {}",
        svc.log()
    );
    svc.stop();
}

#[test]
fn a_data_dir_of_the_older_trusted_model_keeps_it_and_works() {
    // Data dirs made before the private model record no `domain`, and keep the trusted one:
    // keys with CKA_WRAP_WITH_TRUSTED, a CKA_TRUSTED wrap half. A TEST-ONLY switch makes one.
    let (_tmp, dir) = data_dir();
    let env = [("P11VAULT_TEST_TRUSTED_DOMAIN", "1")];
    if common::on_kryoptic() {
        // Any user may make trusted keys there: that model needed its own acceptance.
        let failed = refused(&dir, &env, "a trusted-model data dir nobody accepted");
        assert!(
            failed
                .stderr
                .contains("lets any logged-in user create CKA_TRUSTED keys")
                && failed
                    .stderr
                    .contains("keys.accept_user_trusted_keys = true"),
            "{}",
            failed.stderr
        );
        assert!(meta(&dir, "security_domain").is_none(), "no domain made");
        rewrite_config(
            &dir,
            "backups = true",
            "backups = true
accept_user_trusted_keys = true",
        );
    }
    let svc = Service::start_with(&dir, &env).expect("a trusted-model data dir starts");
    assert_eq!(profile(&dir)["domain"], "trusted");
    assert_eq!(
        svc.log().contains("WEAKER PROTECTION MODEL"),
        common::on_kryoptic()
    );
    svc.create(
        "rsa",
        r#"{"kty":"RSA","key_size":2048,"key_ops":["sign","verify"]}"#,
    );
    svc.create("aes", r#"{"kty":"oct","key_size":256}"#);
    let sign = |svc: &Service| {
        svc.call(
            "POST",
            &format!("/keys/rsa//sign?{API}"),
            Some(&json!({"alg": "RS256", "value": common::b64url(&[1u8; 32])}).to_string()),
        )
    };
    // Every path that wraps under the domain: soft-delete and recover (objects made anew),
    // a key_ops change, a backup, a purge and its restore.
    for name in ["rsa", "aes"] {
        assert_eq!(
            svc.call("DELETE", &format!("/keys/{name}?{API}"), None).0,
            200
        );
        let (status, body) = svc.call("POST", &format!("/deletedkeys/{name}/recover?{API}"), None);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = svc.call(
        "PATCH",
        &format!("/keys/rsa/?{API}"),
        Some(r#"{"key_ops":["sign","verify","encrypt"]}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, blob) = svc.call("POST", &format!("/keys/rsa/backup?{API}"), None);
    assert_eq!(status, 200, "{blob}");
    assert_eq!(svc.call("DELETE", &format!("/keys/rsa?{API}"), None).0, 200);
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/rsa?{API}"), None)
            .0,
        204
    );
    let (status, body) = svc.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&blob.to_string()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(sign(&svc).0, 200);
    svc.stop();

    // Later starts keep the recorded model without the switch.
    let recorded = profile(&dir);
    let svc = Service::start(&dir);
    assert_eq!(sign(&svc).0, 200);
    svc.stop();
    assert_eq!(profile(&dir), recorded);
}

#[test]
fn a_first_start_left_unfinished_is_probed_and_its_domain_made_again() {
    // A first start that an older release left half-done (its profile recorded without a
    // domain model, its domain made the trusted way) served nothing: the next start chooses
    // again, under the model a new data dir gets, and makes the domain anew with its id.
    let (_tmp, dir) = data_dir();
    if common::on_kryoptic() {
        rewrite_config(
            &dir,
            "backups = true",
            "backups = true
accept_user_trusted_keys = true",
        );
    }
    let failed = Service::start_with(
        &dir,
        &[
            ("P11VAULT_TEST_TRUSTED_DOMAIN", "1"),
            ("P11VAULT_TEST_FAILPOINTS", "provision.after_domain_objects"),
        ],
    );
    assert!(failed.is_err(), "the failpoint stops the first start");
    assert_eq!(profile(&dir)["domain"], "trusted");
    let domain = meta(&dir, "security_domain").expect("the domain id was recorded");
    assert!(meta(&dir, "initialized").is_none());

    let svc = Service::start(&dir);
    assert_eq!(profile(&dir)["domain"], "private", "chosen again");
    assert_eq!(
        meta(&dir, "security_domain").as_deref(),
        Some(domain.as_str()),
        "the same domain id"
    );
    assert!(
        svc.log()
            .contains("making again the security domain an interrupted first start recorded"),
        "{}",
        svc.log()
    );
    svc.create("after", r#"{"kty":"EC","crv":"P-256"}"#);
    let (status, body) = svc.call("POST", &format!("/keys/after/backup?{API}"), None);
    assert_eq!(status, 200, "{body}");
    svc.stop();
}
