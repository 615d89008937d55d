//! Soft-delete, recover, purge, purge protection and retention, end to end over HTTPS against
//! the real binary. Retention is driven through the service's test clock, never by sleeping
//! for days.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{API, Service, data_dir};
use serde_json::{Value, json};

const DAY: i64 = 86_400;

fn set_clock(file: &Path, offset_seconds: i64) {
    std::fs::write(file, offset_seconds.to_string()).expect("clock file written");
}

/// Polls until `f` holds (the background purge runs every half second under the test clock).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn delete_recover_purge_behave_as_in_managed_hsm() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let v1 = svc.create("doc", &json!({"kty": "EC", "tags": {"t": "1"}}).to_string());
    svc.create("doc", &json!({"kty": "EC", "crv": "P-384"}).to_string());

    let (status, deleted) = svc.call("DELETE", &format!("/keys/doc?{API}"), None);
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        deleted["recoveryId"],
        format!("{}/deletedkeys/doc", svc.url)
    );
    let deleted_date = deleted["deletedDate"].as_i64().expect("deletedDate");
    assert_eq!(
        deleted["scheduledPurgeDate"].as_i64(),
        Some(deleted_date + 90 * DAY)
    );
    assert_eq!(
        deleted["attributes"]["recoveryLevel"],
        "Recoverable+Purgeable"
    );
    assert_eq!(deleted["attributes"]["recoverableDays"], 90);
    assert_eq!(
        deleted["key"]["crv"], "P-384",
        "the bundle is the newest version"
    );

    // Every other operation fails as if the key were gone; the name is reserved.
    let v1_id = v1["key"]["kid"]
        .as_str()
        .expect("kid")
        .rsplit('/')
        .next()
        .expect("v")
        .to_owned();
    for (method, path, body) in [
        ("GET", format!("/keys/doc?{API}"), None),
        ("GET", format!("/keys/doc/{v1_id}?{API}"), None),
        ("PATCH", format!("/keys/doc/?{API}"), Some(r#"{"tags":{}}"#)),
        ("POST", format!("/keys/doc/rotate?{API}"), None),
        ("GET", format!("/keys/doc/versions?{API}"), None),
        ("DELETE", format!("/keys/doc?{API}"), None),
    ] {
        let (status, body) = svc.call(method, &path, body);
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "KeyNotFound");
    }
    for (method, path, body) in [
        (
            "POST",
            format!("/keys/doc/create?{API}"),
            r#"{"kty":"EC"}"#.to_owned(),
        ),
        (
            "PUT",
            format!("/keys/DOC?{API}"),
            json!({"key": {"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAA"}}).to_string(),
        ),
    ] {
        let (status, body) = svc.call(method, &path, Some(&body));
        assert_eq!(status, 409, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["innererror"]["code"],
            "ObjectIsDeletedButRecoverable"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("recovered or purged")
        );
    }
    let (_, list) = svc.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(list["value"], json!([]));
    let (status, got) = svc.call("GET", &format!("/deletedkeys/doc?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(got["deletedDate"], deleted_date);

    // Recover brings back every version with its attributes and tags.
    let (status, recovered) = svc.call("POST", &format!("/deletedkeys/doc/recover?{API}"), None);
    assert_eq!(status, 200, "{recovered}");
    assert_eq!(recovered["key"]["crv"], "P-384");
    let (_, old) = svc.call("GET", &format!("/keys/doc/{v1_id}?{API}"), None);
    assert_eq!(old["tags"], json!({"t": "1"}));
    assert_eq!(old["key"]["x"], v1["key"]["x"]);
    let (status, _) = svc.call("GET", &format!("/deletedkeys/doc?{API}"), None);
    assert_eq!(status, 404);
    for (method, path) in [
        ("POST", format!("/deletedkeys/doc/recover?{API}")),
        ("DELETE", format!("/deletedkeys/doc?{API}")),
    ] {
        let (status, _) = svc.call(method, &path, None);
        assert_eq!(status, 404, "{method} on a live key");
    }

    // Delete again and purge: the name is free afterwards, and the old material is gone.
    let (status, _) = svc.call("DELETE", &format!("/keys/doc?{API}"), None);
    assert_eq!(status, 200);
    let (status, body) = svc.call("DELETE", &format!("/deletedkeys/doc?{API}"), None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null);
    let (status, _) = svc.call("GET", &format!("/deletedkeys/doc?{API}"), None);
    assert_eq!(status, 404);
    let fresh = svc.create("doc", r#"{"kty":"EC"}"#);
    assert_ne!(fresh["key"]["x"], v1["key"]["x"]);
    let (_, versions) = svc.call("GET", &format!("/keys/doc/versions?{API}"), None);
    assert_eq!(
        versions["value"].as_array().expect("list").len(),
        1,
        "no purged version came back"
    );

    // Deleted keys page like keys.
    for i in 0..3 {
        svc.create(&format!("gone-{i}"), r#"{"kty":"oct","key_size":128}"#);
        svc.call("DELETE", &format!("/keys/gone-{i}?{API}"), None);
    }
    let (_, page) = svc.call("GET", &format!("/deletedkeys?{API}&maxresults=2"), None);
    assert_eq!(page["value"].as_array().expect("list").len(), 2);
    let next = page["nextLink"].as_str().expect("a second page");
    let (_, rest) = svc.call("GET", next.strip_prefix(&svc.url).expect("absolute"), None);
    assert_eq!(rest["value"].as_array().expect("list").len(), 1);
    assert!(
        rest["value"][0]["recoveryId"]
            .as_str()
            .expect("recoveryId")
            .ends_with("/deletedkeys/gone-2")
    );
    svc.stop();
}

#[test]
fn purge_protection_holds_until_the_scheduled_date_and_cannot_be_switched_off() {
    let (_tmp, dir) = data_dir();
    let clock = dir.with_extension("clock");
    set_clock(&clock, 0);
    let clock_env = clock.to_string_lossy().into_owned();
    let env = [
        ("P11VAULT_TEST_CLOCK_FILE", clock_env.as_str()),
        ("P11VAULT_RETENTION_DAYS", "7"),
    ];
    let svc = Service::start_with(&dir, &env).unwrap_or_else(|f| panic!("{f:?}"));
    svc.create("guarded", r#"{"kty":"EC"}"#);

    let (status, setting) = svc.call(
        "PATCH",
        &format!("/settings/EnablePurgeProtection?{API}"),
        Some(r#"{"value":"true"}"#),
    );
    assert_eq!(status, 200, "{setting}");
    assert_eq!(setting["value"], "true");
    let (status, body) = svc.call(
        "PATCH",
        &format!("/settings/EnablePurgeProtection?{API}"),
        Some(r#"{"value":"false"}"#),
    );
    assert_eq!(status, 403, "{body}");

    let (_, deleted) = svc.call("DELETE", &format!("/keys/guarded?{API}"), None);
    assert_eq!(
        deleted["attributes"]["recoveryLevel"],
        "CustomizedRecoverable"
    );
    assert_eq!(deleted["attributes"]["recoverableDays"], 7);
    let (status, body) = svc.call("DELETE", &format!("/deletedkeys/guarded?{API}"), None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "Forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("purge protection")
    );
    svc.stop();

    // Nothing turns it off: not a restart, not the configuration.
    let svc = Service::start_with(&dir, &env).unwrap_or_else(|f| panic!("{f:?}"));
    let (_, setting) = svc.call(
        "GET",
        &format!("/settings/EnablePurgeProtection?{API}"),
        None,
    );
    assert_eq!(setting["value"], "true");
    set_clock(&clock, 6 * DAY);
    let (status, _) = svc.call("DELETE", &format!("/deletedkeys/guarded?{API}"), None);
    assert_eq!(status, 403, "still inside the retention period");
    svc.stop();

    // The retention ends while the service is down; it purges when it comes back.
    set_clock(&clock, 7 * DAY + 1);
    let svc = Service::start_with(&dir, &env).unwrap_or_else(|f| panic!("{f:?}"));
    eventually("the key is purged after its retention", || {
        svc.call("GET", &format!("/deletedkeys/guarded?{API}"), None)
            .0
            == 404
    });
    svc.create("guarded", r#"{"kty":"EC"}"#);
    svc.stop();
}

#[test]
fn retention_ends_in_an_automatic_purge_while_running() {
    let (_tmp, dir) = data_dir();
    let clock = dir.with_extension("clock");
    set_clock(&clock, 0);
    let clock_env = clock.to_string_lossy().into_owned();
    let env = [("P11VAULT_TEST_CLOCK_FILE", clock_env.as_str())];
    let svc = Service::start_with(&dir, &env).unwrap_or_else(|f| panic!("{f:?}"));
    svc.create("short", r#"{"kty":"oct","key_size":256}"#);
    svc.create("kept", r#"{"kty":"oct","key_size":256}"#);
    let (_, deleted) = svc.call("DELETE", &format!("/keys/short?{API}"), None);
    assert_eq!(deleted["attributes"]["recoverableDays"], 90);

    set_clock(&clock, 89 * DAY);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = svc.call("GET", &format!("/deletedkeys/short?{API}"), None);
    assert_eq!(status, 200, "not purged before its scheduled date");

    set_clock(&clock, 90 * DAY);
    eventually("the key is purged at its scheduled date", || {
        svc.call("GET", &format!("/deletedkeys/short?{API}"), None)
            .0
            == 404
    });
    let (status, _) = svc.call("GET", &format!("/keys/kept?{API}"), None);
    assert_eq!(status, 200, "live keys are untouched");
    svc.stop();
}

#[test]
fn the_admin_cli_switches_purge_protection_on_for_good() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p11vault"))
        .args(["settings", "enable-purge-protection", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("purge_protection=true"));
    let svc = Service::start(&dir);
    svc.create("k", r#"{"kty":"EC"}"#);
    let (_, deleted) = svc.call("DELETE", &format!("/keys/k?{API}"), None);
    assert_eq!(deleted["attributes"]["recoveryLevel"], "Recoverable");
    let (status, _) = svc.call("DELETE", &format!("/deletedkeys/k?{API}"), None);
    assert_eq!(status, 403);
    svc.stop();
}
