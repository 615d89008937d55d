//! An upgrade over open intents. Releases before typed intents stored an intent as an
//! operation name and a payload of its own per operation (format 1). This test leaves an open
//! intent of every kind with the existing failpoints, rewrites each row exactly as that release
//! wrote it, and starts this build over the data dir: every one is settled as the old release
//! would have settled it — new versions and key restores rolled back, updates, deletes,
//! recoveries and purges rolled forward.

mod common;

use common::{API, Service, data_dir};
use serde_json::json;

/// Rewrites the one open intent as format 1: `op` and the payload that operation used.
fn make_legacy(dir: &std::path::Path, op: &str, payload: &str) {
    let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("the database opens");
    let changed = db
        .execute(
            "UPDATE intents SET format = 1, op = ?1, payload = ?2",
            rusqlite::params![op, payload],
        )
        .expect("rewritten");
    assert_eq!(changed, 1, "{op}: exactly one intent is open");
}

/// The `version` column of the open intent, as the hex id.
fn open_version(dir: &std::path::Path) -> String {
    let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("the database opens");
    let v: Vec<u8> = db
        .query_row("SELECT version FROM intents", [], |r| r.get(0))
        .expect("an intent with a version");
    hex::encode(v)
}

/// Starts with `point` armed, sends the request that dies at it.
fn crash_at(dir: &std::path::Path, point: &str, method: &str, path: &str, body: Option<&str>) {
    let svc = Service::start_with(dir, &[("P11VAULT_TEST_FAILPOINTS", point)])
        .unwrap_or_else(|f| panic!("start: {f:?}"));
    svc.request_dies_with_the_process(method, path, body, point);
}

fn open_intents(dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("the database opens");
    db.query_row("SELECT COUNT(*) FROM intents", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn intents_of_the_string_format_are_settled_after_an_upgrade() {
    let (_tmp, dir) = data_dir();
    let ec = r#"{"kty":"EC-HSM","crv":"P-256","key_ops":["sign","verify"]}"#;
    let svc = Service::start(&dir);
    for name in ["upd", "del", "rec", "pur", "blob"] {
        svc.create(name, ec);
    }
    for name in ["rec", "pur"] {
        assert_eq!(
            svc.call("DELETE", &format!("/keys/{name}?{API}"), None).0,
            200
        );
    }
    let (status, blob) = svc.call("POST", &format!("/keys/blob/backup?{API}"), None);
    assert_eq!(status, 200, "{blob}");
    assert_eq!(
        svc.call("DELETE", &format!("/keys/blob?{API}"), None).0,
        200
    );
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/blob?{API}"), None)
            .0,
        204
    );
    svc.stop();

    // A new version, cut short after the token made it: rolled back.
    crash_at(
        &dir,
        "create.after_token",
        "POST",
        &format!("/keys/new/create?{API}"),
        Some(ec),
    );
    make_legacy(&dir, "create", r#"{"kty":"Ec","curve":"P-256"}"#);
    let version = open_version(&dir);
    let svc = Service::start(&dir);
    assert!(
        svc.log().contains("rolled back an unfinished key version"),
        "{}",
        svc.log()
    );
    assert_eq!(svc.call("GET", &format!("/keys/new?{API}"), None).0, 404);
    assert_eq!(
        svc.call("GET", &format!("/keys/new/{version}?{API}"), None)
            .0,
        404
    );
    svc.stop();
    assert_eq!(open_intents(&dir), 0, "create");

    // An update of key_ops: rolled forward to what the payload says.
    let (_, latest) = {
        let svc = Service::start(&dir);
        let got = svc.call("GET", &format!("/keys/upd?{API}"), None);
        svc.stop();
        got
    };
    let kid = latest["key"]["kid"].as_str().expect("kid").to_owned();
    let v = kid.rsplit('/').next().expect("version").to_owned();
    crash_at(
        &dir,
        "update.after_intent",
        "PATCH",
        &format!("/keys/upd/{v}?{API}"),
        Some(&json!({"key_ops": ["verify"]}).to_string()),
    );
    make_legacy(
        &dir,
        "update",
        r#"{"ops":["verify"],"enabled":true,"nbf":null,"exp":null,"tags":{"from":"legacy"},"updated":1700000000}"#,
    );
    let svc = Service::start(&dir);
    let (status, key) = svc.call("GET", &format!("/keys/upd?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(key["key"]["key_ops"], json!(["verify"]), "{key}");
    assert_eq!(key["tags"]["from"], "legacy", "{key}");
    let (status, _) = svc.call(
        "POST",
        &format!("/keys/upd//sign?{API}"),
        Some(r#"{"alg":"ES256","value":"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo"}"#),
    );
    assert_eq!(status, 403, "sign is no longer among its key_ops");
    svc.stop();
    assert_eq!(open_intents(&dir), 0, "update");

    // A delete: rolled forward with the dates the payload carries.
    crash_at(
        &dir,
        "delete.after_intent",
        "DELETE",
        &format!("/keys/del?{API}"),
        None,
    );
    // Dates of the payload, not of the restart: the retention has not ended yet.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let (deleted_date, purge_date) = (now - 3600, now + 30 * 86_400);
    make_legacy(
        &dir,
        "delete",
        &json!({"deleted_date": deleted_date, "scheduled_purge_date": purge_date}).to_string(),
    );
    let svc = Service::start(&dir);
    let (status, deleted) = svc.call("GET", &format!("/deletedkeys/del?{API}"), None);
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["deletedDate"], deleted_date, "{deleted}");
    assert_eq!(deleted["scheduledPurgeDate"], purge_date, "{deleted}");
    svc.stop();
    assert_eq!(open_intents(&dir), 0, "delete");

    // A recovery: rolled forward.
    crash_at(
        &dir,
        "recover.after_intent",
        "POST",
        &format!("/deletedkeys/rec/recover?{API}"),
        None,
    );
    make_legacy(&dir, "recover", "{}");
    let svc = Service::start(&dir);
    assert_eq!(svc.call("GET", &format!("/keys/rec?{API}"), None).0, 200);
    let (status, _) = svc.call(
        "POST",
        &format!("/keys/rec//sign?{API}"),
        Some(r#"{"alg":"ES256","value":"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo"}"#),
    );
    assert_eq!(status, 200, "the recovered key signs");
    svc.stop();
    assert_eq!(open_intents(&dir), 0, "recover");

    // A purge: rolled forward.
    crash_at(
        &dir,
        "purge.after_intent",
        "DELETE",
        &format!("/deletedkeys/pur?{API}"),
        None,
    );
    make_legacy(&dir, "purge", "purge");
    let svc = Service::start(&dir);
    assert_eq!(
        svc.call("GET", &format!("/deletedkeys/pur?{API}"), None).0,
        404
    );
    assert_eq!(svc.call("GET", &format!("/keys/pur?{API}"), None).0, 404);
    svc.stop();
    assert_eq!(open_intents(&dir), 0, "purge");

    // A key restore cut short after the token made its objects: rolled back.
    let body = json!({"value": blob["value"]}).to_string();
    crash_at(
        &dir,
        "restore_key.after_token",
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&body),
    );
    let versions = {
        let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("opens");
        let payload: String = db
            .query_row("SELECT payload FROM intents", [], |r| r.get(0))
            .expect("the restore intent");
        let typed: serde_json::Value = serde_json::from_str(&payload).expect("JSON");
        typed["versions"].clone()
    };
    make_legacy(&dir, "restore", &versions.to_string());
    let svc = Service::start(&dir);
    assert!(svc.log().contains("rolled back an unfinished key restore"));
    assert_eq!(svc.call("GET", &format!("/keys/blob?{API}"), None).0, 404);
    // Nothing of the half-made restore is left: the blob restores now.
    let (status, restored) = svc.call("POST", &format!("/keys/restore?{API}"), Some(&body));
    assert_eq!(status, 200, "{restored}");
    assert!(
        !svc.log().contains("no committed key version owns"),
        "objects of the rolled-back intents are gone"
    );
    svc.stop();
    assert_eq!(open_intents(&dir), 0, "restore");
}
