//! Backups end to end over real HTTPS, a real SoftHSM2 token and a real SQLite file: key
//! backup blobs and every way a restore must refuse one, full backup and full restore onto a
//! changed state, selective key restore, consistency with changes made while a backup runs,
//! the 503s during a full restore, and crashes in the middle of one.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, data_dir};
use serde_json::{Value, json};

const CONTAINER: &str = "https://backupaccount.blob.core.windows.net/backups";
const ADMIN_API: &str = "api-version=7.5";

/// Polls a job's status URL (as the `Azure-AsyncOperation` header gave it) until it ends.
fn wait_for_job(svc: &Service, status_url: &str) -> Value {
    let path = status_url
        .strip_prefix(&svc.url)
        .unwrap_or_else(|| panic!("{status_url} is not under {}", svc.url));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = svc.call("GET", path, None);
        assert_eq!(status, 200, "{body}");
        if body["status"] != "InProgress" {
            return body;
        }
        assert!(Instant::now() < deadline, "the job did not end: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a long-running operation and returns its status URL and first body.
fn start_job(svc: &Service, method: &str, path: &str, body: &Value) -> (String, Value) {
    let (status, header, text) = raw_with_header(svc, method, path, &body.to_string());
    assert_eq!(status, 202, "{method} {path}: {text}");
    let url = header.expect("an Azure-AsyncOperation header");
    (url, serde_json::from_str(&text).expect("JSON"))
}

/// A request returning status, the `Azure-AsyncOperation` header and the body.
fn raw_with_header(
    svc: &Service,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let agent = common::agent_trusting(&svc.dir.join("ca.pem"));
    let result = agent
        .request(method, &format!("{}{path}", svc.url))
        .set("Authorization", &format!("Bearer {}", svc.token))
        .set("Content-Type", "application/json")
        .send_string(body);
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = response.status();
    let header = response.header("azure-asyncoperation").map(str::to_owned);
    (status, header, response.into_string().expect("body"))
}

/// Takes a full backup and returns its folder URL.
fn full_backup(svc: &Service) -> String {
    let (url, first) = start_job(
        svc,
        "POST",
        &format!("/backup?{ADMIN_API}"),
        &json!({"storageResourceUri": CONTAINER, "token": "sas-is-ignored"}),
    );
    assert_eq!(first["status"], "InProgress", "{first}");
    let done = wait_for_job(svc, &url);
    assert_eq!(done["status"], "Succeeded", "{done}");
    done["azureStorageBlobContainerUri"]
        .as_str()
        .expect("the folder URL")
        .to_owned()
}

fn folder_of(folder_url: &str) -> &str {
    folder_url.rsplit('/').next().expect("a folder")
}

fn full_restore_body(folder_url: &str) -> Value {
    json!({"sasTokenParameters": {"storageResourceUri": CONTAINER, "token": "x"},
           "folderToRestore": folder_of(folder_url)})
}

fn selective_body(folder_url: &str) -> Value {
    json!({"sasTokenParameters": {"storageResourceUri": CONTAINER}, "folder": folder_of(folder_url)})
}

/// Everything a restore must bring back, comparable: per key (live and deleted) its versions'
/// kids, enabled flags, tags and public parts, a live key's rotation policy; and the role
/// assignments.
fn state(svc: &Service) -> Value {
    let mut keys = Vec::new();
    let (_, live) = svc.call("GET", &format!("/keys?maxresults=25&{API}"), None);
    let (_, deleted) = svc.call("GET", &format!("/deletedkeys?maxresults=25&{API}"), None);
    for (list, is_deleted) in [(&live, false), (&deleted, true)] {
        for item in list["value"].as_array().expect("a list") {
            let name = item["kid"]
                .as_str()
                .expect("kid")
                .rsplit('/')
                .next()
                .expect("name")
                .to_owned();
            let versions = if is_deleted {
                let (_, d) = svc.call("GET", &format!("/deletedkeys/{name}?{API}"), None);
                json!({"latest": d["key"], "scheduledPurgeDate": d["scheduledPurgeDate"]})
            } else {
                let (_, v) = svc.call("GET", &format!("/keys/{name}/versions?{API}"), None);
                let mut bundles = Vec::new();
                for item in v["value"].as_array().expect("versions") {
                    let version = item["kid"]
                        .as_str()
                        .expect("kid")
                        .rsplit('/')
                        .next()
                        .expect("v");
                    let (_, b) = svc.call("GET", &format!("/keys/{name}/{version}?{API}"), None);
                    bundles.push(json!({"key": b["key"], "enabled": b["attributes"]["enabled"], "tags": b["tags"]}));
                }
                json!(bundles)
            };
            let policy = if is_deleted {
                Value::Null
            } else {
                let (status, p) =
                    svc.call("GET", &format!("/keys/{name}/rotationpolicy?{API}"), None);
                assert_eq!(status, 200, "{p}");
                p
            };
            keys.push(json!({"name": name, "deleted": is_deleted, "versions": versions, "rotationPolicy": policy}));
        }
    }
    let (_, assignments) = svc.call(
        "GET",
        "/providers/Microsoft.Authorization/roleAssignments?api-version=7.4",
        None,
    );
    let mut names: Vec<String> = assignments["value"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    // Key ids carry the service's URL, whose port changes from start to start.
    let keys = serde_json::to_string(&keys)
        .expect("JSON")
        .replace(&svc.url, "");
    json!({"keys": serde_json::from_str::<Value>(&keys).expect("JSON"), "assignments": names})
}

fn digest(alg: &str) -> String {
    use sha2::Digest;
    let data = b"backed up";
    URL_SAFE_NO_PAD.encode(match &alg[2..] {
        "384" => sha2::Sha384::digest(data).to_vec(),
        "512" => sha2::Sha512::digest(data).to_vec(),
        _ => sha2::Sha256::digest(data).to_vec(),
    })
}

/// Signs with a key version and verifies the signature through the service.
fn signs_and_verifies(svc: &Service, name: &str, version: &str, alg: &str) {
    let (status, sig) = svc.call(
        "POST",
        &format!("/keys/{name}/{version}/sign?{API}"),
        Some(&json!({"alg": alg, "value": digest(alg)}).to_string()),
    );
    assert_eq!(status, 200, "{name}/{version} sign: {sig}");
    let (status, ok) = svc.call(
        "POST",
        &format!("/keys/{name}/{version}/verify?{API}"),
        Some(&json!({"alg": alg, "digest": digest(alg), "value": sig["value"]}).to_string()),
    );
    assert_eq!((status, ok["value"].as_bool()), (200, Some(true)), "{ok}");
}

fn backup_blob(svc: &Service, name: &str) -> String {
    let (status, body) = svc.call("POST", &format!("/keys/{name}/backup?{API}"), None);
    assert_eq!(status, 200, "{body}");
    body["value"].as_str().expect("a blob").to_owned()
}

fn restore_blob(svc: &Service, blob: &str) -> (u16, Value) {
    svc.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({ "value": blob }).to_string()),
    )
}

fn delete_and_purge(svc: &Service, name: &str) {
    assert_eq!(
        svc.call("DELETE", &format!("/keys/{name}?{API}"), None).0,
        200
    );
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/{name}?{API}"), None)
            .0,
        204
    );
}

fn version_of(bundle: &Value) -> String {
    bundle["key"]["kid"]
        .as_str()
        .expect("kid")
        .rsplit('/')
        .next()
        .expect("v")
        .to_owned()
}

#[test]
fn key_backups_bring_back_every_version_with_attributes_and_tags() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let first = svc.create(
        "rsa",
        r#"{"kty":"RSA","key_size":2048,"tags":{"team":"a"}}"#,
    );
    let (status, second) = svc.call("POST", &format!("/keys/rsa/rotate?{API}"), None);
    assert_eq!(status, 200, "{second}");
    let (status, _) = svc.call(
        "PATCH",
        &format!("/keys/rsa/{}?{API}", version_of(&first)),
        Some(r#"{"attributes":{"enabled":false},"tags":{"team":"b"}}"#),
    );
    assert_eq!(status, 200);
    // secp256k1 where the token has it (kryoptic does not: keys_api checks the refusal).
    let (ec_curve, ec_alg) = if common::curve_supported("P-256K") {
        ("P-256K", "ES256K")
    } else {
        ("P-256", "ES256")
    };
    svc.create("ec", &json!({"kty": "EC", "crv": ec_curve}).to_string());
    svc.create("p521", r#"{"kty":"EC","crv":"P-521"}"#);
    svc.create("aes", r#"{"kty":"oct","key_size":128}"#);

    let names = ["rsa", "ec", "p521", "aes"];
    let before = state(&svc);
    let blobs: Vec<String> = names.iter().map(|n| backup_blob(&svc, n)).collect();
    for blob in &blobs {
        let raw = URL_SAFE_NO_PAD.decode(blob).expect("base64url");
        assert_eq!(&raw[..8], b"P11VBKUP", "the blob starts with its magic");
        let text = String::from_utf8_lossy(&raw);
        for leak in ["rsa", "team", "p521"] {
            assert!(
                !text.contains(&format!("\"{leak}")),
                "the blob shows {leak}"
            );
        }
    }
    for name in names {
        delete_and_purge(&svc, name);
    }
    for (name, blob) in names.iter().zip(&blobs) {
        let (status, bundle) = restore_blob(&svc, blob);
        assert_eq!(status, 200, "{name}: {bundle}");
        assert!(
            bundle["key"]["kid"]
                .as_str()
                .expect("kid")
                .contains(&format!("/keys/{name}/")),
            "{bundle}"
        );
    }
    assert_eq!(
        state(&svc),
        before,
        "every version, attribute and tag is back"
    );

    signs_and_verifies(&svc, "rsa", &version_of(&second), "RS256");
    let (status, disabled) = svc.call(
        "POST",
        &format!("/keys/rsa/{}/sign?{API}", version_of(&first)),
        Some(&json!({"alg": "RS256", "value": digest("RS256")}).to_string()),
    );
    assert_eq!(
        status, 403,
        "the disabled version stays disabled: {disabled}"
    );
    signs_and_verifies(&svc, "ec", "", ec_alg);
    signs_and_verifies(&svc, "p521", "", "ES512");
    let (status, sealed) = svc.call(
        "POST",
        &format!("/keys/aes//encrypt?{API}"),
        Some(r#"{"alg":"A128GCM","value":"aGVsbG8"}"#),
    );
    assert_eq!(status, 200, "{sealed}");
    let (status, opened) = svc.call(
        "POST",
        &format!("/keys/aes//decrypt?{API}"),
        Some(
            &json!({"alg":"A128GCM","value":sealed["value"],"iv":sealed["iv"],"tag":sealed["tag"]})
                .to_string(),
        ),
    );
    assert_eq!((status, opened["value"].as_str()), (200, Some("aGVsbG8")));
}

#[test]
fn a_restore_refuses_taken_names_and_bad_blobs_and_changes_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("kept", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.create("parked", r#"{"kty":"oct","key_size":256}"#);
    let kept = backup_blob(&svc, "kept");
    let parked = backup_blob(&svc, "parked");
    assert_eq!(
        svc.call("DELETE", &format!("/keys/parked?{API}"), None).0,
        200
    );
    let before = state(&svc);

    let (status, body) = restore_blob(&svc, &kept);
    assert_eq!(status, 409, "a live key of that name: {body}");
    let (status, body) = restore_blob(&svc, &parked);
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["innererror"]["code"],
        "ObjectIsDeletedButRecoverable"
    );

    // A blob from another HSM (another security domain).
    let (_tmp2, dir2) = data_dir();
    let other = Service::start(&dir2);
    other.create("foreign", r#"{"kty":"EC","crv":"P-256"}"#);
    let foreign = backup_blob(&other, "foreign");
    other.stop();
    let (status, body) = restore_blob(&svc, &foreign);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("security domain"),
        "{body}"
    );

    // Purge `kept` so that only the blob's defects stand in the way.
    delete_and_purge(&svc, "kept");
    let before_bad = state(&svc);
    let raw = URL_SAFE_NO_PAD.decode(&kept).expect("base64url");
    let flip = |at: usize| {
        let mut b = raw.clone();
        b[at] ^= 0x01;
        URL_SAFE_NO_PAD.encode(b)
    };
    let cases: Vec<(String, String)> = vec![
        ("magic".into(), flip(0)),
        ("format version".into(), flip(9)),
        ("content type".into(), flip(10)),
        ("domain id".into(), flip(15)),
        ("wrapped content key".into(), flip(35)),
        ("IV".into(), flip(29 + 40 + 3)),
        ("payload".into(), flip(raw.len() / 2)),
        ("GCM tag".into(), flip(raw.len() - 33)),
        ("MAC".into(), flip(raw.len() - 1)),
        (
            "truncated by one".into(),
            URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 1]),
        ),
        (
            "truncated header".into(),
            URL_SAFE_NO_PAD.encode(&raw[..20]),
        ),
        (
            "trailing byte".into(),
            URL_SAFE_NO_PAD.encode([raw.as_slice(), &[0]].concat()),
        ),
        ("empty".into(), String::new()),
        ("not base64".into(), "!!!not-base64!!!".into()),
        ("random bytes".into(), URL_SAFE_NO_PAD.encode([0x42u8; 300])),
    ];
    for (what, blob) in cases {
        let (status, body) = restore_blob(&svc, &blob);
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "BadParameter", "{what}: {body}");
    }
    let (status, body) = svc.call("POST", &format!("/keys/restore?{API}"), Some("{}"));
    assert_eq!(status, 400, "no value: {body}");
    assert_eq!(state(&svc), before_bad, "no refused blob changed anything");
    assert_ne!(state(&svc), before);

    // The undamaged blob still restores: the refusals left no half-made key behind.
    let (status, body) = restore_blob(&svc, &kept);
    assert_eq!(status, 200, "{body}");
    signs_and_verifies(&svc, "kept", "", "ES256");
    let log = svc.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_full_restore_brings_back_a_changed_state_and_needs_a_recent_backup() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (status, body) = svc.call(
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        Some(&full_restore_body(&format!("{CONTAINER}/mhsm-p11vault-20260101000000")).to_string()),
    );
    assert_eq!(status, 409, "no backup yet: {body}");
    assert_eq!(body["error"]["innererror"]["code"], "FullBackupRequired");

    svc.create("alpha", r#"{"kty":"RSA","key_size":2048,"tags":{"v":"1"}}"#);
    svc.create("beta", r#"{"kty":"EC","crv":"P-384"}"#);
    svc.create("gamma", r#"{"kty":"oct","key_size":256}"#);
    let set_policy = |name: &str, after: &str| {
        let body = json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": after}, "action": {"type": "Rotate"}}],
                          "attributes": {"expiryTime": "P1Y"}});
        let (status, p) = svc.call(
            "PUT",
            &format!("/keys/{name}/rotationpolicy?{API}"),
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "{p}");
    };
    set_policy("alpha", "P90D");
    set_policy("gamma", "P60D");
    assert_eq!(
        svc.call("DELETE", &format!("/keys/gamma?{API}"), None).0,
        200
    );
    let (auditor, _) = svc.new_principal("auditor", &["Managed HSM Crypto Auditor"], "/");
    let first_state = state(&svc);
    let folder1 = full_backup(&svc);
    let name = folder_of(&folder1);
    assert!(
        name.starts_with("mhsm-p11vault-") && name.len() == "mhsm-p11vault-".len() + 14,
        "{name}"
    );
    assert!(
        dir.join("backups/backups")
            .join(name)
            .join("backup.p11b")
            .is_file()
    );

    // Change everything: a new key, a purge, a recovery, new tags, a removed assignment, a
    // new rotation policy.
    svc.create("delta", r#"{"kty":"EC","crv":"P-256"}"#);
    set_policy("alpha", "P30D");
    delete_and_purge(&svc, "beta");
    assert_eq!(
        svc.call("POST", &format!("/deletedkeys/gamma/recover?{API}"), None)
            .0,
        200
    );
    assert_eq!(
        svc.call(
            "PATCH",
            &format!("/keys/alpha?{API}"),
            Some(r#"{"tags":{"v":"2"}}"#)
        )
        .0,
        200
    );
    let (_, assignments) = svc.call(
        "GET",
        "/providers/Microsoft.Authorization/roleAssignments?api-version=7.4",
        None,
    );
    let auditors: Vec<&Value> = assignments["value"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["properties"]["principalId"] == auditor.as_str())
        .collect();
    let (status, _) = svc.call(
        "DELETE",
        &format!(
            "/providers/Microsoft.Authorization/roleAssignments/{}?api-version=7.4",
            auditors[0]["name"].as_str().expect("name")
        ),
        None,
    );
    assert_eq!(status, 200);
    let changed_state = state(&svc);
    assert_ne!(changed_state, first_state);

    let (status, body) = svc.call(
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        Some(&full_restore_body(&folder1).to_string()),
    );
    assert_eq!(
        status, 409,
        "the state changed after the only backup: {body}"
    );

    let folder2 = full_backup(&svc);
    assert_ne!(folder1, folder2, "two backups, two folders");
    let (url, _) = start_job(
        &svc,
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        &full_restore_body(&folder1),
    );
    assert!(
        url.contains("/restore/") && url.ends_with("/pending?api-version=7.5"),
        "{url}"
    );
    let done = wait_for_job(&svc, &url);
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert!(done["endTime"].as_i64().is_some(), "{done}");
    assert_eq!(state(&svc), first_state, "exactly the backed-up state");
    signs_and_verifies(&svc, "alpha", "", "RS256");
    signs_and_verifies(&svc, "beta", "", "ES384");
    let (status, _) = svc.call("GET", &format!("/keys/delta?{API}"), None);
    assert_eq!(status, 404, "a key created after the backup is gone");

    // And back again: the second backup holds the changed state.
    let _ = full_backup(&svc);
    let (url, _) = start_job(
        &svc,
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        &full_restore_body(&folder2),
    );
    assert_eq!(wait_for_job(&svc, &url)["status"], "Succeeded");
    assert_eq!(state(&svc), changed_state);
    signs_and_verifies(&svc, "delta", "", "ES256");

    // The restart after restores finds the token and the database in step.
    svc.stop();
    let svc = Service::start(&dir);
    assert_eq!(state(&svc), changed_state);
    let log = svc.log();
    assert!(
        !log.contains("no committed key version owns"),
        "orphans: {log}"
    );
    assert!(
        !log.contains("holds no object for this key version"),
        "missing: {log}"
    );

    // A backup holds rotation policies, so a changed policy needs a new backup first.
    let _ = full_backup(&svc);
    let body = json!({"lifetimeActions": [], "attributes": {}}).to_string();
    let (status, _) = svc.call(
        "PUT",
        &format!("/keys/delta/rotationpolicy?{API}"),
        Some(&body),
    );
    assert_eq!(status, 200);
    let (status, body) = svc.call(
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        Some(&full_restore_body(&folder2).to_string()),
    );
    assert_eq!(
        status, 409,
        "a policy changed after the last backup: {body}"
    );
    assert_eq!(body["error"]["innererror"]["code"], "FullBackupRequired");
}

#[test]
fn a_full_restore_needs_a_backup_from_the_last_thirty_minutes() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let clock = dir.with_extension("clock");
    std::fs::write(&clock, "0").expect("clock");
    let clock_env = clock.to_string_lossy().into_owned();
    let svc = Service::start_with(&dir, &[("P11VAULT_TEST_CLOCK_FILE", clock_env.as_str())])
        .unwrap_or_else(|f| panic!("{f:?}"));
    svc.create("k", r#"{"kty":"EC","crv":"P-256"}"#);
    let folder = full_backup(&svc);
    std::fs::write(&clock, (31 * 60).to_string()).expect("clock");
    let (status, body) = svc.call(
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        Some(&full_restore_body(&folder).to_string()),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("31 minutes ago"),
        "{body}"
    );
    std::fs::write(&clock, (29 * 60).to_string()).expect("clock");
    let (url, _) = start_job(
        &svc,
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        &full_restore_body(&folder),
    );
    assert_eq!(wait_for_job(&svc, &url)["status"], "Succeeded");
}

#[test]
fn a_selective_restore_brings_back_a_purged_key_only_under_a_free_name_or_over_the_same_key() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let v1 = svc.create("picked", r#"{"kty":"EC","crv":"P-256","tags":{"a":"b"}}"#);
    let (_, v2) = svc.call("POST", &format!("/keys/picked/rotate?{API}"), None);
    svc.create("other", r#"{"kty":"oct","key_size":256}"#);
    let before = state(&svc);
    let folder = full_backup(&svc);

    // The live key exactly as the backup holds it (the SDK's own tests restore it straight
    // after the backup): the job succeeds and changes nothing.
    let (url, _) = start_job(
        &svc,
        "PUT",
        &format!("/keys/picked/restore?{ADMIN_API}"),
        &selective_body(&folder),
    );
    assert_eq!(wait_for_job(&svc, &url)["status"], "Succeeded");
    assert_eq!(
        state(&svc),
        before,
        "a restore of an unchanged key changes nothing"
    );
    // Changed since (a tag): the backup would overwrite it, so it is refused.
    let (status, body) = svc.call(
        "PATCH",
        &format!("/keys/picked/{}?{API}", version_of(&v1)),
        Some(r#"{"tags":{"a":"changed"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = svc.call(
        "PUT",
        &format!("/keys/picked/restore?{ADMIN_API}"),
        Some(&selective_body(&folder).to_string()),
    );
    assert_eq!(status, 409, "the key exists and differs: {body}");
    assert_eq!(
        svc.call("DELETE", &format!("/keys/picked?{API}"), None).0,
        200
    );
    let (status, body) = svc.call(
        "PUT",
        &format!("/keys/picked/restore?{ADMIN_API}"),
        Some(&selective_body(&folder).to_string()),
    );
    assert_eq!(status, 409, "the key is soft-deleted: {body}");
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/picked?{API}"), None)
            .0,
        204
    );
    svc.create("fresh", r#"{"kty":"EC","crv":"P-256"}"#);

    let (url, first) = start_job(
        &svc,
        "PUT",
        &format!("/keys/picked/restore?{ADMIN_API}"),
        &selective_body(&folder),
    );
    assert!(first["azureStorageBlobContainerUri"].is_null(), "{first}");
    let done = wait_for_job(&svc, &url);
    assert_eq!(done["status"], "Succeeded", "{done}");
    signs_and_verifies(&svc, "picked", &version_of(&v1), "ES256");
    signs_and_verifies(&svc, "picked", &version_of(&v2), "ES256");
    let (_, fresh) = svc.call("GET", &format!("/keys/fresh?{API}"), None);
    assert!(
        fresh["key"].is_object(),
        "a selective restore leaves other keys alone"
    );
    let mut now = state(&svc);
    now["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["name"] != "fresh");
    assert_eq!(now, before);

    for (path, body, want, what) in [
        (
            "/keys/nosuch/restore",
            selective_body(&folder),
            400,
            "a key the backup does not hold",
        ),
        (
            "/keys/other2/restore",
            json!({"sasTokenParameters":{"storageResourceUri":CONTAINER},"folder":"mhsm-none"}),
            400,
            "an unknown folder",
        ),
        (
            "/keys/other2/restore",
            json!({"sasTokenParameters":{"storageResourceUri":CONTAINER},"folder":"../../etc"}),
            400,
            "a folder outside the container",
        ),
        (
            "/keys/other2/restore",
            json!({"sasTokenParameters":{"storageResourceUri":"file:///etc"},"folder":"x"}),
            400,
            "a URI that is no container",
        ),
        (
            "/keys/other2/restore",
            json!({"folder":"x"}),
            400,
            "no storage",
        ),
        (
            "/keys/bad_name/restore",
            selective_body(&folder),
            400,
            "an invalid key name",
        ),
    ] {
        let (status, answer) = svc.call(
            "PUT",
            &format!("{path}?{ADMIN_API}"),
            Some(&body.to_string()),
        );
        assert_eq!(status, want, "{what}: {answer}");
    }
    let (status, body) = svc.call(
        "GET",
        "/restore/0123456789abcdef0123456789abcdef/pending",
        None,
    );
    assert_eq!(status, 404, "{body}");
    let backup_job = url
        .rsplit("/restore/")
        .next()
        .expect("job")
        .trim_end_matches("/pending?api-version=7.5");
    let (status, _) = svc.call("GET", &format!("/backup/{backup_job}/pending"), None);
    assert_eq!(status, 404, "a restore job is not a backup job");
}

#[test]
fn keys_changed_while_a_backup_runs_are_wholly_in_it_or_wholly_not() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start_with(
        &dir,
        &[(
            "P11VAULT_TEST_FAILPOINTS",
            "backup.after_snapshot:sleep=3000",
        )],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    svc.create("doomed", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.create("steady", r#"{"kty":"EC","crv":"P-256"}"#);
    assert_eq!(
        svc.call("DELETE", &format!("/keys/doomed?{API}"), None).0,
        200
    );

    let (url, _) = start_job(
        &svc,
        "POST",
        &format!("/backup?{ADMIN_API}"),
        &json!({"storageResourceUri": CONTAINER}),
    );
    let path = url.strip_prefix(&svc.url).expect("our URL").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while svc.call("GET", &path, None).1["progress"]["total"] != 2 {
        assert!(
            Instant::now() < deadline,
            "the backup never took its snapshot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The snapshot is taken; the backup now reads key material. A new key is not in it; a
    // purge waits until the material is read, so the backup holds the purged key whole.
    svc.create("late", r#"{"kty":"EC","crv":"P-256"}"#);
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/doomed?{API}"), None)
            .0,
        204
    );
    let (_, job) = svc.call("GET", &path, None);
    assert_eq!(
        job["status"], "Succeeded",
        "the purge finished only after the backup: {job}"
    );
    let folder = job["azureStorageBlobContainerUri"]
        .as_str()
        .expect("folder")
        .to_owned();

    let (status, body) = svc.call(
        "PUT",
        &format!("/keys/late/restore?{ADMIN_API}"),
        Some(&selective_body(&folder).to_string()),
    );
    assert_eq!(status, 409, "late exists: {body}");
    delete_and_purge(&svc, "late");
    let (status, body) = svc.call(
        "PUT",
        &format!("/keys/late/restore?{ADMIN_API}"),
        Some(&selective_body(&folder).to_string()),
    );
    assert_eq!(
        status, 400,
        "a key made after the snapshot is not in the backup: {body}"
    );
    let (url, _) = start_job(
        &svc,
        "PUT",
        &format!("/keys/doomed/restore?{ADMIN_API}"),
        &selective_body(&folder),
    );
    assert_eq!(wait_for_job(&svc, &url)["status"], "Succeeded");
    signs_and_verifies(&svc, "doomed", "", "ES256");
}

#[test]
fn while_a_full_restore_runs_only_its_status_answers() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start_with(
        &dir,
        &[("P11VAULT_TEST_FAILPOINTS", "restore.mid_token:sleep=3000")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    svc.create("a", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.create("b", r#"{"kty":"EC","crv":"P-256"}"#);
    let folder = full_backup(&svc);
    let (url, _) = start_job(
        &svc,
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        &full_restore_body(&folder),
    );
    let status_path = url
        .strip_prefix(&svc.url)
        .expect("ours")
        .split('?')
        .next()
        .expect("path")
        .to_owned();
    // The status answers without an api-version, as the SDK polls it.
    let (status, job) = svc.call("GET", &status_path, None);
    assert_eq!(
        (status, job["status"].as_str()),
        (200, Some("InProgress")),
        "{job}"
    );
    for (method, path) in [
        ("GET", format!("/keys?{API}")),
        ("GET", format!("/keys/a?{API}")),
        ("POST", format!("/keys/c/create?{API}")),
        ("GET", format!("/backup/x/pending?{ADMIN_API}")),
        (
            "GET",
            "/providers/Microsoft.Authorization/roleDefinitions?api-version=7.4".to_owned(),
        ),
    ] {
        let body = (method == "POST").then_some(r#"{"kty":"EC"}"#);
        let (status, answer) = svc.call(method, &path, body);
        assert_eq!(status, 503, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "ServiceUnavailable");
    }
    assert_eq!(wait_for_job(&svc, &url)["status"], "Succeeded");
    assert_eq!(svc.call("GET", &format!("/keys/a?{API}"), None).0, 200);
    assert_eq!(
        svc.call("GET", &format!("/keys/c?{API}"), None).0,
        404,
        "the refused create did nothing"
    );
}

/// The state a crash test starts from: `a` and `b` backed up in `folder1`; then `b` purged
/// and `c` created, and that state backed up too (so a full restore is allowed).
fn crash_setup(dir: &Path) -> (String, Value, Value) {
    let svc = Service::start(dir);
    svc.create("a", r#"{"kty":"RSA","key_size":2048}"#);
    svc.create("b", r#"{"kty":"EC","crv":"P-256"}"#);
    let old = state(&svc);
    let folder1 = full_backup(&svc);
    delete_and_purge(&svc, "b");
    svc.create("c", r#"{"kty":"oct","key_size":256}"#);
    let changed = state(&svc);
    let _ = full_backup(&svc);
    svc.stop();
    (folder1, old, changed)
}

#[test]
fn a_crash_during_a_full_restore_leaves_the_old_state_or_finishes_on_restart() {
    for (point, finishes) in [
        ("restore.before_journal", false),
        ("restore.mid_token", true),
        ("restore.before_commit", true),
    ] {
        let (_tmp, dir) = data_dir();
        let (folder1, backed_up, changed) = crash_setup(&dir);
        let svc = Service::start_with(&dir, &[("P11VAULT_TEST_FAILPOINTS", point)])
            .unwrap_or_else(|f| panic!("{f:?}"));
        // The job starts once the 202 has left the handler; the kill can beat its last bytes
        // to the socket, so the answer may be lost with the process.
        let agent = common::agent_trusting(&svc.dir.join("ca.pem"));
        let answer = agent
            .request("PUT", &format!("{}/restore?{ADMIN_API}", svc.url))
            .set("Authorization", &format!("Bearer {}", svc.token))
            .send_json(full_restore_body(&folder1));
        let status_path = match answer {
            Ok(r) => {
                assert_eq!(r.status(), 202, "{point}");
                let url = r
                    .header("azure-asyncoperation")
                    .expect("status URL")
                    .to_owned();
                Some(url.strip_prefix(&svc.url).expect("ours").to_owned())
            }
            Err(ureq::Error::Status(code, r)) => {
                panic!("{point}: {code} {}", r.into_string().unwrap_or_default())
            }
            Err(_) => None,
        };
        assert!(
            !svc.wait_for_exit().success(),
            "{point}: the failpoint killed the service"
        );

        let svc = Service::start(&dir);
        let job = status_path.map(|p| svc.call("GET", &p, None).1);
        let now = state(&svc);
        if finishes {
            assert_eq!(now, backed_up, "{point}: the restore finished on restart");
            if let Some(job) = job {
                assert_eq!(job["status"], "Succeeded", "{point}: {job}");
            }
            signs_and_verifies(&svc, "b", "", "ES256");
        } else {
            assert_eq!(now, changed, "{point}: the old state is intact");
            if let Some(job) = job {
                assert_eq!(job["status"], "Failed", "{point}: {job}");
                assert_eq!(job["error"]["code"], "Interrupted", "{point}: {job}");
            }
            signs_and_verifies(&svc, "a", "", "RS256");
        }
        let log = svc.log();
        assert!(
            !log.contains("no committed key version owns"),
            "{point}: orphans: {log}"
        );
        assert!(
            !log.contains("holds no object for this key version"),
            "{point}: {log}"
        );
        svc.stop();
    }
}

#[test]
fn a_crash_while_restoring_a_key_leaves_no_half_restored_key() {
    for point in ["restore_key.after_intent", "restore_key.after_token"] {
        let (_tmp, dir) = data_dir();
        let svc = Service::start(&dir);
        svc.create("k", r#"{"kty":"EC","crv":"P-256"}"#);
        let blob = backup_blob(&svc, "k");
        delete_and_purge(&svc, "k");
        svc.stop();
        let svc = Service::start_with(&dir, &[("P11VAULT_TEST_FAILPOINTS", point)])
            .unwrap_or_else(|f| panic!("{f:?}"));
        svc.request_dies_with_the_process(
            "POST",
            &format!("/keys/restore?{API}"),
            Some(&json!({ "value": blob }).to_string()),
            point,
        );
        let svc = Service::start(&dir);
        assert_eq!(
            svc.call("GET", &format!("/keys/k?{API}"), None).0,
            404,
            "{point}"
        );
        let log = svc.log();
        assert!(
            log.contains("rolled back an unfinished key restore"),
            "{point}: {log}"
        );
        let (status, body) = restore_blob(&svc, &blob);
        assert_eq!(
            status, 200,
            "{point}: the blob restores after the rollback: {body}"
        );
        signs_and_verifies(&svc, "k", "", "ES256");
    }
}

#[test]
fn only_roles_with_the_right_actions_back_up_and_restore() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("k", r#"{"kty":"EC","crv":"P-256"}"#);
    let (_, user) = svc.new_principal("user", &["Managed HSM Crypto User"], "/");
    let (_, backup_op) = svc.new_principal("ops", &["Managed HSM Backup"], "/");
    let start = json!({"storageResourceUri": CONTAINER}).to_string();
    let (status, body) = svc.call_as(
        Some(&user),
        "POST",
        &format!("/backup?{ADMIN_API}"),
        Some(&start),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = svc.call_as(Some(&user), "POST", &format!("/keys/k/backup?{API}"), None);
    assert_eq!(
        status, 200,
        "Crypto User may back a key up, as on Azure: {body}"
    );
    let (status, body) = svc.call_as(
        Some(&user),
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        Some("{}"),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = svc.call_as(
        Some(&backup_op),
        "POST",
        &format!("/backup?{ADMIN_API}"),
        Some(&start),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = svc.call_as(
        Some(&backup_op),
        "POST",
        &format!("/keys/k/backup?{API}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = svc.call_as(
        Some(&backup_op),
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({"value": body["value"]}).to_string()),
    );
    assert_eq!(status, 403, "the Backup role cannot restore keys: {body}");
}

#[test]
fn the_cli_starts_and_follows_backups_and_restores() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("k", r#"{"kty":"EC","crv":"P-256"}"#);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", svc.url.as_str()]);
        common::cli(&dir, &all)
    };
    let (ok, out, err) = run(&["backup", "start", "--storage-uri", CONTAINER]);
    assert!(ok, "{err}");
    let folder_url = out
        .lines()
        .find_map(|l| l.strip_prefix("folder_url="))
        .unwrap_or_else(|| panic!("no folder_url in {out}"))
        .to_owned();
    assert!(
        folder_url.starts_with(&format!("{CONTAINER}/mhsm-p11vault-")),
        "{out}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("Succeeded: 1/1 keys")),
        "plain progress lines: {err}"
    );
    let job = out
        .lines()
        .find_map(|l| l.strip_prefix("job="))
        .expect("a job id")
        .to_owned();
    let (ok, out, _) = run(&["backup", "status", &job, "--no-wait"]);
    assert!(
        ok && out.contains(&format!("folder_url={folder_url}")),
        "{out}"
    );

    delete_and_purge(&svc, "k");
    let (ok, out, err) = run(&[
        "restore",
        "start",
        "--folder-url",
        &folder_url,
        "--key",
        "k",
    ]);
    assert!(ok && out.contains("restored"), "{out} {err}");
    signs_and_verifies(&svc, "k", "", "ES256");

    let (ok, _, err) = run(&["restore", "start", "--folder-url", &folder_url]);
    assert!(
        !ok && err.contains("409") && err.contains("needs a full backup"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "restore",
        "start",
        "--folder-url",
        "https://h/only-container",
    ]);
    assert!(!ok && err.contains("not a backup folder URL"), "{err}");
    let (ok, _, err) = run(&["restore", "status", "0123456789abcdef0123456789abcdef"]);
    assert!(!ok && err.contains("404"), "{err}");
}
