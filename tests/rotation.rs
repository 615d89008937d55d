//! Key rotation policies end to end over HTTPS against the real binary: the policy API with
//! Managed HSM's rules (and refusals that change nothing), the policy's life with its key
//! (soft-delete, recovery, purge, key backups), and the maintenance task rotating keys when
//! their policy says so — due, not yet due, after a restart, and with the process killed at
//! every step of an automatic rotation. Time moves through the service's test clock.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{API, Service, data_dir};
use serde_json::{Value, json};

const DAY: i64 = 86_400;

fn set_clock(file: &Path, offset_seconds: i64) {
    std::fs::write(file, offset_seconds.to_string()).expect("clock file written");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Polls until `f` holds (the maintenance task runs every half second under the test clock).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Long enough for several maintenance passes (every 500 ms under the test clock).
fn a_few_passes() {
    std::thread::sleep(Duration::from_millis(2500));
}

fn policy_path(name: &str) -> String {
    format!("/keys/{name}/rotationpolicy?{API}")
}

fn rotate_after(after: &str, expiry: Option<&str>) -> String {
    let mut body = json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": after}, "action": {"type": "Rotate"}}], "attributes": {}});
    if let Some(e) = expiry {
        body["attributes"]["expiryTime"] = json!(e);
    }
    body.to_string()
}

fn put_policy(svc: &Service, name: &str, body: &str) -> Value {
    let (status, policy) = svc.call("PUT", &policy_path(name), Some(body));
    assert_eq!(status, 200, "PUT policy of {name} {body}: {policy}");
    policy
}

fn get_policy(svc: &Service, name: &str) -> Value {
    let (status, policy) = svc.call("GET", &policy_path(name), None);
    assert_eq!(status, 200, "GET policy of {name}: {policy}");
    policy
}

/// A key's versions, oldest first, as `(version, created, exp)`.
fn versions(svc: &Service, name: &str) -> Vec<(String, i64, Option<i64>)> {
    let (status, list) = svc.call("GET", &format!("/keys/{name}/versions?{API}"), None);
    assert_eq!(status, 200, "versions of {name}: {list}");
    let mut out: Vec<_> = list["value"]
        .as_array()
        .expect("list")
        .iter()
        .map(|item| {
            (
                item["kid"]
                    .as_str()
                    .expect("kid")
                    .rsplit('/')
                    .next()
                    .expect("version")
                    .to_owned(),
                item["attributes"]["created"].as_i64().expect("created"),
                item["attributes"]["exp"].as_i64(),
            )
        })
        .collect();
    out.sort_by_key(|(_, created, _)| *created);
    out
}

fn count(svc: &Service, name: &str) -> usize {
    versions(svc, name).len()
}

/// Signs with a version and checks the signature verifies.
fn signs(svc: &Service, name: &str, version: &str) {
    let digest = common::b64url(&[9u8; 32]);
    let (status, signed) = svc.call(
        "POST",
        &format!("/keys/{name}/{version}/sign?{API}"),
        Some(&json!({"alg": "ES256", "value": digest}).to_string()),
    );
    assert_eq!(status, 200, "sign with {name}/{version}: {signed}");
    let (status, verified) = svc.call(
        "POST",
        &format!("/keys/{name}/{version}/verify?{API}"),
        Some(&json!({"alg": "ES256", "digest": digest, "value": signed["value"]}).to_string()),
    );
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["value"], true);
}

#[test]
fn the_policy_api_follows_managed_hsm() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("Rot", r#"{"kty":"EC","crv":"P-256"}"#);

    // A key that never had a policy shows the empty default one.
    let default = get_policy(&svc, "rot");
    assert_eq!(
        default,
        json!({"id": format!("{}/keys/Rot/rotationpolicy", svc.url), "lifetimeActions": [], "attributes": {}})
    );

    let before = now();
    let set = put_policy(&svc, "ROT", &rotate_after("P90D", Some("P2Y")));
    assert_eq!(set["id"], format!("{}/keys/Rot/rotationpolicy", svc.url));
    assert_eq!(
        set["lifetimeActions"],
        json!([{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Rotate"}}])
    );
    assert_eq!(set["attributes"]["expiryTime"], "P2Y");
    let created = set["attributes"]["created"].as_i64().expect("created");
    assert!(created >= before && created <= now() + 1, "{set}");
    assert_eq!(set["attributes"]["updated"], created);
    assert_eq!(get_policy(&svc, "Rot"), set);

    // Every refusal is a 400 in Azure's shape that changes nothing.
    let rotate = |trigger: Value| json!({"trigger": trigger, "action": {"type": "Rotate"}});
    for (body, says) in [
        (
            json!({"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}]}),
            "only the Rotate",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P90D"})), rotate(json!({"timeAfterCreate": "P60D"}))]}),
            "at most one",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P7D"}))]}),
            "28 days",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeBeforeExpiry": "P30D"}))]}),
            "expiryTime",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeBeforeExpiry": "P30D"}))], "attributes": {"expiryTime": "P40D"}}),
            "minus 28 days",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P90D", "timeBeforeExpiry": "P30D"}))]}),
            "not both",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "ninety days"}))]}),
            "ISO 8601",
        ),
        (json!({"attributes": {"expiryTime": "P1D"}}), "28 days"),
        (json!({"lifetimeActions": "rotate"}), "expected shape"),
    ] {
        let (status, error) = svc.call("PUT", &policy_path("Rot"), Some(&body.to_string()));
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["code"], "BadParameter", "{error}");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains(says), "{body}: {message}");
        assert_eq!(get_policy(&svc, "Rot"), set, "a refusal changed the policy");
    }
    let (status, _) = svc.call("PUT", &policy_path("Rot"), None);
    assert_eq!(status, 400, "no body");
    assert_eq!(get_policy(&svc, "Rot"), set);

    // Unknown keys are 404s, and get no policy.
    for (method, body) in [("GET", None), ("PUT", Some(rotate_after("P90D", None)))] {
        let (status, error) = svc.call(method, &policy_path("nokey"), body.as_deref());
        assert_eq!(status, 404, "{method}: {error}");
        assert_eq!(error["error"]["code"], "KeyNotFound");
    }

    // An on-demand rotation gets the policy's expiry; the policy stays.
    let rotated = {
        let (status, bundle) = svc.call("POST", &format!("/keys/Rot/rotate?{API}"), None);
        assert_eq!(status, 200, "{bundle}");
        bundle
    };
    let exp = rotated["attributes"]["exp"].as_i64().expect("an expiry");
    let made = rotated["attributes"]["created"].as_i64().expect("created");
    assert!(
        (exp - made - 730 * DAY).abs() <= 2,
        "P2Y = 730 days: {rotated}"
    );
    assert_eq!(get_policy(&svc, "Rot"), set);

    // A blank policy removes the rotation (and the expiry), keeping when it was first set.
    std::thread::sleep(Duration::from_millis(1100));
    let blank = put_policy(&svc, "Rot", r#"{"lifetimeActions":[],"attributes":{}}"#);
    assert_eq!(blank["lifetimeActions"], json!([]));
    assert_eq!(blank["attributes"].get("expiryTime"), None);
    assert_eq!(blank["attributes"]["created"], created);
    assert!(blank["attributes"]["updated"].as_i64().expect("updated") > created);
    let (_, plain) = svc.call("POST", &format!("/keys/Rot/rotate?{API}"), None);
    assert_eq!(plain["attributes"].get("exp"), None, "{plain}");

    // The policy stays through soft-delete and recovery...
    let kept = put_policy(&svc, "Rot", &rotate_after("P30D", Some("P60D")));
    assert_eq!(svc.call("DELETE", &format!("/keys/Rot?{API}"), None).0, 200);
    for (method, body) in [("GET", None), ("PUT", Some(rotate_after("P90D", None)))] {
        let (status, error) = svc.call(method, &policy_path("Rot"), body.as_deref());
        assert_eq!(status, 404, "{method} on a deleted key: {error}");
        assert_eq!(error["error"]["code"], "KeyNotFound");
    }
    let (status, _) = svc.call("POST", &format!("/deletedkeys/Rot/recover?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(get_policy(&svc, "Rot"), kept, "recovered with its policy");

    // ...travels in the key's backup, and goes with a purge.
    let (status, blob) = svc.call("POST", &format!("/keys/Rot/backup?{API}"), None);
    assert_eq!(status, 200, "{blob}");
    assert_eq!(svc.call("DELETE", &format!("/keys/Rot?{API}"), None).0, 200);
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/Rot?{API}"), None)
            .0,
        204
    );
    svc.create("Rot", r#"{"kty":"EC","crv":"P-256"}"#);
    assert_eq!(
        get_policy(&svc, "Rot")["lifetimeActions"],
        json!([]),
        "the purged key's policy is gone with it"
    );
    assert_eq!(svc.call("DELETE", &format!("/keys/Rot?{API}"), None).0, 200);
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/Rot?{API}"), None)
            .0,
        204
    );
    let (status, restored) = svc.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({"value": blob["value"]}).to_string()),
    );
    assert_eq!(status, 200, "{restored}");
    assert_eq!(get_policy(&svc, "Rot"), kept, "restored with its policy");

    // A reader may see a policy but not set one.
    let (_, auditor) = svc.new_principal("auditor", &["Managed HSM Crypto Auditor"], "/");
    let (status, _) = svc.call_as(Some(&auditor), "GET", &policy_path("Rot"), None);
    assert_eq!(status, 200);
    let (status, error) = svc.call_as(
        Some(&auditor),
        "PUT",
        &policy_path("Rot"),
        Some(&rotate_after("P28D", None)),
    );
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "AccessDenied");
    assert_eq!(get_policy(&svc, "Rot"), kept);
    svc.stop();
}

#[test]
fn the_maintenance_task_rotates_what_is_due_once_and_catches_up_after_downtime() {
    let (_tmp, dir) = data_dir();
    let clock = dir.with_extension("clock");
    set_clock(&clock, 0);
    let clock_env = clock.to_string_lossy().into_owned();
    let env = [("P11VAULT_TEST_CLOCK_FILE", clock_env.as_str())];
    let svc = Service::start_with(&dir, &env).expect("starts");
    let ec = r#"{"kty":"EC","crv":"P-256"}"#;

    // after: 30 days after creation, new versions expire after 90 days.
    svc.create("after", ec);
    put_policy(&svc, "after", &rotate_after("P30D", Some("P90D")));
    // before: 10 days before the newest version's expiry (40 days from now), so due at day 30.
    let exp = now() + 40 * DAY;
    svc.create(
        "before",
        &json!({"kty": "EC", "crv": "P-256", "attributes": {"exp": exp}}).to_string(),
    );
    put_policy(
        &svc,
        "before",
        &json!({"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P10D"}, "action": {"type": "Rotate"}}],
                "attributes": {"expiryTime": "P60D"}})
        .to_string(),
    );
    // A policy with expiry only, a key without policy, a soft-deleted key: never rotated.
    svc.create("expiry-only", ec);
    put_policy(
        &svc,
        "expiry-only",
        r#"{"lifetimeActions":[],"attributes":{"expiryTime":"P28D"}}"#,
    );
    svc.create("no-policy", ec);
    svc.create("deleted", ec);
    put_policy(&svc, "deleted", &rotate_after("P30D", None));
    assert_eq!(
        svc.call("DELETE", &format!("/keys/deleted?{API}"), None).0,
        200
    );

    // Not yet due.
    set_clock(&clock, 30 * DAY - 3600);
    a_few_passes();
    for name in ["after", "before", "expiry-only", "no-policy"] {
        assert_eq!(count(&svc, name), 1, "{name} rotated before it was due");
    }

    // Due: each rotated once, with the policy's expiry.
    set_clock(&clock, 30 * DAY + 60);
    eventually("after and before are rotated", || {
        count(&svc, "after") == 2 && count(&svc, "before") == 2
    });
    a_few_passes();
    for (name, expiry) in [("after", 90 * DAY), ("before", 60 * DAY)] {
        let v = versions(&svc, name);
        assert_eq!(v.len(), 2, "{name} rotated more than once: {v:?}");
        let (version, created, exp) = &v[1];
        assert!(
            *created >= now() + 30 * DAY,
            "{name}: made on the service's clock"
        );
        // The expiry is counted from the rotation's start, `created` set at its commit.
        let lived = exp.map(|e| e - created).expect("an expiry");
        assert!((lived - expiry).abs() <= 2, "{name}: {v:?}");
        signs(&svc, name, version);
    }
    for name in ["expiry-only", "no-policy"] {
        assert_eq!(count(&svc, name), 1, "{name}");
    }

    // Every automatic rotation has its audit record.
    let log = std::fs::read_to_string(dir.join("audit.log")).expect("audit log");
    for name in ["after", "before"] {
        let records: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .filter(|r| r["method"] == "SERVICE" && r["key"] == name)
            .collect();
        assert_eq!(records.len(), 1, "{name}: {records:?}");
        assert_eq!(
            records[0]["action"],
            "Microsoft.KeyVault/managedHsm/keys/rotate/action"
        );
        assert_eq!(records[0]["version"], versions(&svc, name)[1].0.as_str());
    }
    let (status, _) = svc.call("POST", &format!("/deletedkeys/deleted/recover?{API}"), None);
    assert_eq!(status, 200);
    eventually("a recovered key that is due is rotated", || {
        count(&svc, "deleted") == 2
    });
    svc.stop();

    // Down for 200 days (past several due points): one rotation each when it is back.
    set_clock(&clock, 230 * DAY);
    let svc = Service::start_with(&dir, &env).expect("restarts");
    eventually("rotated after the downtime", || {
        count(&svc, "after") == 3 && count(&svc, "before") == 3 && count(&svc, "deleted") == 3
    });
    a_few_passes();
    for name in ["after", "before", "deleted"] {
        assert_eq!(
            count(&svc, name),
            3,
            "{name}: one rotation for the missed due points"
        );
    }
    // Once more 30 days on, and the restart alone rotates nothing.
    svc.stop();
    let svc = Service::start_with(&dir, &env).expect("restarts");
    a_few_passes();
    assert_eq!(count(&svc, "after"), 3, "a restart is not a due point");
    set_clock(&clock, 260 * DAY + 60);
    eventually("due again 30 days after the last rotation", || {
        count(&svc, "after") == 4
    });
    svc.stop();
}

#[test]
fn a_kill_around_an_automatic_rotation_leaves_exactly_one_new_version() {
    let (_tmp, dir) = data_dir();
    let clock = dir.with_extension("clock");
    set_clock(&clock, 0);
    let clock_env = clock.to_string_lossy().into_owned();
    let env = [("P11VAULT_TEST_CLOCK_FILE", clock_env.as_str())];
    let mut offset = 0;
    for point in [
        "autorotate.before",
        "create.after_intent",
        "create.after_token",
        "create.after_commit",
    ] {
        let name = point.replace(['.', '_'], "-");
        let svc = Service::start_with(&dir, &env).expect("starts");
        svc.create(&name, r#"{"kty":"EC","crv":"P-256"}"#);
        let first = versions(&svc, &name)[0].0.clone();
        put_policy(&svc, &name, &rotate_after("P30D", None));
        svc.stop();

        // Due, and the process dies at the point, during the first maintenance pass: before
        // or after it says it listens.
        offset += 31 * DAY;
        set_clock(&clock, offset);
        let armed = [env[0], ("P11VAULT_TEST_FAILPOINTS", point)];
        let status = match Service::start_with(&dir, &armed) {
            Ok(svc) => svc.wait_for_exit(),
            Err(failed) => failed.status,
        };
        assert!(!status.success(), "{point}: the failpoint did not kill it");
        let log = std::fs::read_to_string(dir.with_extension("stderr.log")).expect("log");
        assert!(
            log.contains(&format!("failpoint {point} reached: SIGKILL")),
            "{point}: died elsewhere"
        );

        let svc = Service::start_with(&dir, &env).expect("restarts");
        eventually(&format!("{point}: rotated after the restart"), || {
            count(&svc, &name) >= 2
        });
        a_few_passes();
        let v = versions(&svc, &name);
        assert_eq!(v.len(), 2, "{point}: exactly one new version: {v:?}");
        assert_eq!(v[0].0, first);
        for (version, _, _) in &v {
            signs(&svc, &name, version);
        }
        let log = svc.log();
        for sign in [
            "no committed key version owns",
            "the token holds no object for this key version",
        ] {
            assert!(!log.contains(sign), "{point}: {sign}");
        }
        // This key rotates no more, so the next scenario's is the only one due.
        put_policy(&svc, &name, r#"{"lifetimeActions":[],"attributes":{}}"#);
        svc.stop();
    }
}
