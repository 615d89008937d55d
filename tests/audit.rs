//! The audit log end to end: what a record holds (and never holds), that a change is on disk
//! before it is acknowledged, reading it as a Crypto Auditor through the CLI, and tampering
//! caught by `p11vault audit verify` at the right record.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, cli, data_dir};
use serde_json::{Value, json};

fn records(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .expect("audit.log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

fn verify(dir: &std::path::Path) -> (bool, String) {
    let (ok, out, err) = cli(dir, &["audit", "verify"]);
    (ok, format!("{out}{err}"))
}

#[test]
fn every_request_is_recorded_without_secrets_and_changes_are_on_disk_first() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (user_id, user) = svc.new_principal("app", &["Managed HSM Crypto User"], "/");

    // A change: its record is in the file when the answer arrives.
    let (s, _) = svc.call_as(
        Some(&user),
        "POST",
        &format!("/keys/audited/create?{API}"),
        Some(r#"{"kty":"oct-HSM","key_size":256}"#),
    );
    assert_eq!(s, 200);
    let created = records(&dir)
        .into_iter()
        .find(|r| r["path"] == "/keys/audited/create")
        .expect("the create is on disk before it was acknowledged");
    // … synced, and the chain head in the database has moved past it.
    let db = rusqlite::Connection::open_with_flags(
        dir.join("p11vault.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    let head: String = db
        .query_row("SELECT v FROM meta WHERE k = 'audit_head'", [], |r| {
            r.get(0)
        })
        .expect("a recorded head");
    let head_seq: u64 = head
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("seq");
    assert!(
        head_seq >= created["seq"].as_u64().expect("seq"),
        "{head} vs {created}"
    );
    assert_eq!(created["principal"], user_id.as_str());
    assert_eq!(created["principalName"], "app");
    assert_eq!(
        created["action"],
        "Microsoft.KeyVault/managedHsm/keys/create"
    );
    assert_eq!(created["key"], "audited");
    assert_eq!(created["outcome"], "allowed");
    assert_eq!(created["status"], 200);
    assert!(
        created["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{created}"
    );

    // An operation with a plaintext, a denial, and a request without credentials.
    let plaintext = URL_SAFE_NO_PAD.encode(b"attack at dawn, bring the secret plans");
    let body = json!({"alg": "A256GCM", "value": plaintext}).to_string();
    let (s, bundle) = svc.call_as(Some(&user), "GET", &format!("/keys/audited?{API}"), None);
    assert_eq!(s, 200);
    let version = bundle["key"]["kid"]
        .as_str()
        .and_then(|k| k.rsplit('/').next())
        .expect("a version")
        .to_owned();
    let path = format!("/keys/audited/{version}/encrypt?{API}");
    assert_eq!(svc.call_as(Some(&user), "POST", &path, Some(&body)).0, 200);
    assert_eq!(
        svc.call_as(
            Some(&user),
            "DELETE",
            &format!("/deletedkeys/audited?{API}"),
            None
        )
        .0,
        403
    );
    assert_eq!(
        svc.call_as(None, "GET", &format!("/keys?{API}"), None).0,
        401
    );
    assert_eq!(
        svc.call_as(
            Some("p11v_not-a-token"),
            "GET",
            &format!("/keys?{API}"),
            None
        )
        .0,
        401
    );
    svc.stop();

    let all = records(&dir);
    let encrypt = all
        .iter()
        .find(|r| r["action"] == "Microsoft.KeyVault/managedHsm/keys/encrypt/action")
        .expect("the encrypt is recorded");
    assert_eq!(encrypt["version"], version.as_str());
    let denied = all
        .iter()
        .find(|r| r["outcome"] == "denied")
        .expect("the denial is recorded");
    assert_eq!(
        denied["action"],
        "Microsoft.KeyVault/managedHsm/keys/deletedKeys/delete"
    );
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["principal"], user_id.as_str());
    let anonymous: Vec<&Value> = all
        .iter()
        .filter(|r| r["outcome"] == "unauthenticated")
        .collect();
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");
    assert!(
        anonymous
            .iter()
            .all(|r| r["principal"].is_null() && r["status"] == 401)
    );
    let seqs: Vec<u64> = all
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let text = std::fs::read_to_string(dir.join("audit.log")).expect("log");
    let pin = common::user_pin(&dir);
    for secret in [
        user.as_str(),
        svc_token(&dir).as_str(),
        plaintext.as_str(),
        pin.trim(),
    ] {
        assert!(!text.contains(secret), "the audit log holds a secret");
    }
    let (ok, out) = verify(&dir);
    assert!(ok, "{out}");
}

fn svc_token(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned()
}

#[test]
fn an_auditor_reads_the_log_through_the_cli_and_others_cannot() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (_, auditor) = svc.new_principal("auditor", &["Managed HSM Crypto Auditor"], "/");
    let (user_id, user) = svc.new_principal("app", &["Managed HSM Crypto User"], "/");
    svc.create("k1", r#"{"kty":"EC","crv":"P-256"}"#);
    assert_eq!(
        svc.call_as(
            Some(&user),
            "DELETE",
            &format!("/deletedkeys/k1?{API}"),
            None
        )
        .0,
        403
    );
    let token_file = |token: &str, name: &str| {
        let path = dir.with_extension(name);
        std::fs::write(&path, token).expect("token file");
        path
    };
    let show = |token_path: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["audit", "show", "--url", &svc.url, "--token-file"];
        let token_path = token_path.to_str().expect("utf-8");
        args.push(token_path);
        args.extend(extra);
        cli(&dir, &args)
    };
    let auditor_file = token_file(&auditor, "auditor");
    let (ok, out, err) = show(&auditor_file, &["--json", "--outcome", "denied"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["principal"], user_id.as_str());
    assert!(
        lines[0]["hash"].is_string(),
        "the stored record, chain fields included"
    );

    let (ok, out, err) = show(&auditor_file, &["--key", "k1"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("keys/create") && out.contains("denied"),
        "{out}"
    );

    let (ok, out, err) = show(
        &auditor_file,
        &["--since", "2001-01-01", "--until", "2001-01-02"],
    );
    assert!(ok && out.is_empty(), "{out}{err}");
    let (ok, _, err) = show(&auditor_file, &["--since", "last tuesday"]);
    assert!(!ok && err.contains("400"), "{err}");

    let user_file = token_file(&user, "user");
    let (ok, _, err) = show(&user_file, &[]);
    assert!(
        !ok && err.contains("403"),
        "a Crypto User may not read the log: {err}"
    );
}

#[test]
fn verify_finds_tampering_at_the_right_record() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    for i in 0..6 {
        svc.create(&format!("t{i}"), r#"{"kty":"EC","crv":"P-256"}"#);
    }
    // A hard kill: the chain continues after the restart all the same.
    svc.kill();
    let svc = Service::start(&dir);
    svc.create("after-restart", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.stop();

    let (ok, out) = verify(&dir);
    assert!(ok, "{out}");
    let path = dir.join("audit.log");
    let original = std::fs::read_to_string(&path).expect("log");
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 8, "{}", lines.len());
    let write = |lines: &[String]| std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();

    // Edit the key name of the fifth record.
    let mut edited = owned.clone();
    edited[4] = edited[4].replacen("\"key\":\"t", "\"key\":\"x", 1);
    assert_ne!(edited[4], owned[4]);
    write(&edited);
    let (ok, out) = verify(&dir);
    assert!(
        !ok && out.contains("line 5") && out.contains("edited"),
        "{out}"
    );

    // Remove the third record.
    let mut removed = owned.clone();
    removed.remove(2);
    write(&removed);
    let (ok, out) = verify(&dir);
    assert!(!ok && out.contains("line 3"), "{out}");

    // Remove the newest two: only the head in the database shows it.
    write(&owned[..owned.len() - 2]);
    let (ok, out) = verify(&dir);
    assert!(!ok && out.contains("were removed"), "{out}");

    write(&owned);
    let (ok, out) = verify(&dir);
    assert!(ok, "{out}");
}
