//! The 7.6 backup pre-checks end to end (`POST /prebackup`, `PUT /prerestore`): each is a
//! long-running operation whose status says whether the real backup or restore would succeed,
//! and neither changes anything; and `useManagedIdentity: true`, accepted like a SAS token.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{API, Service, data_dir};
use serde_json::{Value, json};

const CONTAINER: &str = "https://backupaccount.blob.core.windows.net/backups";
const ADMIN_API: &str = "api-version=7.6";

/// A request with `token` returning status, the `Azure-AsyncOperation` header and the body.
fn send(
    svc: &Service,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let agent = common::agent_trusting(&svc.dir.join("ca.pem"));
    let result = agent
        .request(method, &format!("{}{path}", svc.url))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = response.status();
    let header = response.header("azure-asyncoperation").map(str::to_owned);
    let text = response.into_string().expect("body");
    (
        status,
        header,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Starts a job, checks the 202 and its status URL (under `/{kind}/`), waits for its end.
fn run_job(svc: &Service, method: &str, path: &str, body: &Value, kind: &str) -> Value {
    let (status, url, first) = send(svc, &svc.token, method, path, body);
    assert_eq!(status, 202, "{method} {path}: {first}");
    assert_eq!(first["status"], "InProgress", "{first}");
    let url = url.expect("an Azure-AsyncOperation header");
    let path = url.strip_prefix(&svc.url).expect("under the service's URL");
    assert!(
        path.starts_with(&format!("/{kind}/")) && path.contains("/pending"),
        "{url}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Polled as the SDK does: the URL as given, and also without the api-version.
        let bare = path.split('?').next().expect("a path");
        let (status, body) = svc.call("GET", bare, None);
        assert_eq!(status, 200, "{body}");
        if body["status"] != "InProgress" {
            assert!(body["endTime"].as_i64().is_some(), "{body}");
            return body;
        }
        assert!(Instant::now() < deadline, "the job did not end: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pre_backup(svc: &Service, body: &Value) -> Value {
    run_job(
        svc,
        "POST",
        &format!("/prebackup?{ADMIN_API}"),
        body,
        "backup",
    )
}

fn pre_restore(svc: &Service, folder: &str) -> Value {
    run_job(
        svc,
        "PUT",
        &format!("/prerestore?{ADMIN_API}"),
        &json!({"sasTokenParameters": {"storageResourceUri": CONTAINER, "token": "x"},
                "folderToRestore": folder}),
        "restore",
    )
}

fn backup(svc: &Service, storage: &Value) -> Value {
    run_job(
        svc,
        "POST",
        &format!("/backup?{ADMIN_API}"),
        storage,
        "backup",
    )
}

/// A successful full backup's folder name.
fn folder(svc: &Service) -> String {
    let done = backup(
        svc,
        &json!({"storageResourceUri": CONTAINER, "token": "sas"}),
    );
    assert_eq!(done["status"], "Succeeded", "{done}");
    let url = done["azureStorageBlobContainerUri"]
        .as_str()
        .expect("a folder URL");
    url.rsplit('/').next().expect("a folder").to_owned()
}

fn failed_with(done: &Value, code: &str, says: &str) {
    assert_eq!(done["status"], "Failed", "{done}");
    assert_eq!(done["error"]["code"], code, "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(says),
        "the error should say '{says}': {done}"
    );
}

/// What the data dir's backup location holds: every entry under the container directory.
fn backup_dir_entries(root: &Path) -> Vec<PathBuf> {
    let dir = root.join("backups");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut all: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            all.sort();
            all
        }
        Err(_) => Vec::new(),
    }
}

/// Keys, versions and public parts, comparable before and after a check.
fn keys_state(svc: &Service) -> Value {
    let (status, listed) = svc.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(status, 200);
    let mut keys = Vec::new();
    for item in listed["value"].as_array().expect("a list") {
        let name = item["kid"]
            .as_str()
            .expect("kid")
            .rsplit('/')
            .next()
            .expect("name");
        let (_, versions) = svc.call("GET", &format!("/keys/{name}/versions?{API}"), None);
        let (_, latest) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
        keys.push(json!({"name": name, "versions": versions["value"], "latest": latest}));
    }
    json!(keys)
}

#[test]
fn pre_backup_says_whether_a_backup_would_succeed_and_writes_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("pb-ec", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    svc.create("pb-aes", r#"{"kty":"oct-HSM","key_size":256}"#);
    let root = dir.join("backups");
    let before = keys_state(&svc);

    // A SAS token or the managed identity: both forms are accepted alike.
    for storage in [
        json!({"storageResourceUri": CONTAINER, "token": "sas"}),
        json!({"storageResourceUri": CONTAINER, "useManagedIdentity": true}),
        json!({"storageResourceUri": format!("{CONTAINER}/"), "useManagedIdentity": false, "token": "x"}),
    ] {
        let done = pre_backup(&svc, &storage);
        assert_eq!(done["status"], "Succeeded", "{storage}: {done}");
        assert_eq!(done["azureStorageBlobContainerUri"], CONTAINER, "{done}");
        assert!(done["error"].is_null(), "{done}");
        assert_eq!(
            done["progress"]["done"], done["progress"]["total"],
            "{done}"
        );
        assert_eq!(
            done["progress"]["total"], 2,
            "every key was wrapped: {done}"
        );
    }
    assert!(
        backup_dir_entries(&root).is_empty(),
        "a check wrote {:?}",
        backup_dir_entries(&root)
    );
    assert_eq!(keys_state(&svc), before, "a check changed keys");

    // The real backup with the managed identity works, and writes its folder.
    let done = backup(
        &svc,
        &json!({"storageResourceUri": CONTAINER, "useManagedIdentity": true}),
    );
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(
        backup_dir_entries(&root).len(),
        1,
        "{:?}",
        backup_dir_entries(&root)
    );

    // What the backup refuses at once, the check refuses at once.
    for body in [
        json!({"storageResourceUri": "ftp://h/c"}),
        json!({"storageResourceUri": "https://h/a/b"}),
        json!({"token": "no container"}),
        json!({"useManagedIdentity": true}),
    ] {
        let (status, _, answer) = send(
            &svc,
            &svc.token,
            "POST",
            &format!("/prebackup?{ADMIN_API}"),
            &body,
        );
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "BadParameter", "{answer}");
    }

    // The right to back up: the Backup role may check, a Crypto User may not.
    let (_, backup_role) = svc.new_principal("backup-op", &["Managed HSM Backup"], "/");
    let (status, _, answer) = send(
        &svc,
        &backup_role,
        "POST",
        &format!("/prebackup?{ADMIN_API}"),
        &json!({"storageResourceUri": CONTAINER, "useManagedIdentity": true}),
    );
    assert_eq!(status, 202, "{answer}");
    let (_, user) = svc.new_principal("crypto-user", &["Managed HSM Crypto User"], "/");
    let (status, _, answer) = send(
        &svc,
        &user,
        "POST",
        &format!("/prebackup?{ADMIN_API}"),
        &json!({"storageResourceUri": CONTAINER}),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("AccessDenied"))
    );
}

#[test]
fn pre_backup_fails_where_the_backup_would() {
    // A backup location nobody may write to (sysfs refuses even root).
    if !Path::new("/sys").is_dir() {
        return;
    }
    let (_tmp, dir) = data_dir();
    common::write_config(&dir, "[backup]\nroot = \"/sys/p11vault-no-such-dir\"\n");
    let svc = Service::start(&dir);
    svc.create("unwritable", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    let storage = json!({"storageResourceUri": CONTAINER, "token": "sas"});
    let checked = pre_backup(&svc, &storage);
    failed_with(&checked, "Forbidden", "cannot be written");
    // The prediction holds: the backup itself fails.
    let done = backup(&svc, &storage);
    assert_eq!(done["status"], "Failed", "{done}");
}

#[test]
fn pre_restore_says_whether_a_restore_would_succeed_and_changes_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let key = svc.create("pr-ec", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    svc.create("pr-rsa", r#"{"kty":"RSA-HSM","key_size":2048}"#);
    let (status, _) = svc.call("DELETE", &format!("/keys/pr-rsa?{API}"), None);
    assert_eq!(status, 200);
    let good = folder(&svc);
    let before = keys_state(&svc);

    let done = pre_restore(&svc, &good);
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert!(done.get("azureStorageBlobContainerUri").is_none(), "{done}");
    // With the managed identity too.
    let done = run_job(
        &svc,
        "PUT",
        &format!("/prerestore?{ADMIN_API}"),
        &json!({"sasTokenParameters": {"storageResourceUri": CONTAINER, "useManagedIdentity": true},
                "folderToRestore": good}),
        "restore",
    );
    assert_eq!(done["status"], "Succeeded", "{done}");
    // Nothing changed: the keys, the deleted key, and the backup still holds the current
    // state (a restore is still allowed, which any change would forbid).
    assert_eq!(keys_state(&svc), before);
    let (status, deleted) = svc.call("GET", &format!("/deletedkeys/pr-rsa?{API}"), None);
    assert_eq!(status, 200, "{deleted}");
    let digest = common::b64url(&[9u8; 32]);
    let (status, sig) = svc.call(
        "POST",
        &format!("/keys/pr-ec//sign?{API}"),
        Some(&json!({"alg": "ES256", "value": digest}).to_string()),
    );
    assert_eq!(status, 200, "{sig}");
    assert_eq!(pre_restore(&svc, &good)["status"], "Succeeded");

    // A folder that is not there: the restore's own refusal, as the job's error.
    failed_with(
        &pre_restore(&svc, "mhsm-p11vault-20200101000000"),
        "BadParameter",
        "no backup folder",
    );
    // A folder whose backup is damaged.
    let container = dir.join("backups").join("backups");
    let damaged = "mhsm-damaged-copy";
    std::fs::create_dir_all(container.join(damaged)).expect("mkdir");
    let mut bytes = std::fs::read(container.join(&good).join("backup.p11b")).expect("the backup");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(container.join(damaged).join("backup.p11b"), &bytes).expect("write");
    let checked = pre_restore(&svc, damaged);
    assert_eq!(checked["status"], "Failed", "{checked}");
    assert_eq!(checked["error"]["code"], "BadParameter", "{checked}");
    // A backup of another HSM (another security domain).
    let (_tmp2, other_dir) = data_dir();
    let other = Service::start(&other_dir);
    other.create("foreign", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    let foreign = folder(&other);
    let other_container = other_dir.join("backups").join("backups");
    std::fs::create_dir_all(container.join("mhsm-foreign-copy")).expect("mkdir");
    std::fs::copy(
        other_container.join(&foreign).join("backup.p11b"),
        container.join("mhsm-foreign-copy").join("backup.p11b"),
    )
    .expect("copy");
    let checked = pre_restore(&svc, "mhsm-foreign-copy");
    assert_eq!(checked["status"], "Failed", "{checked}");
    assert_eq!(checked["error"]["code"], "BadParameter", "{checked}");
    let restore_body = json!({"sasTokenParameters": {"storageResourceUri": CONTAINER},
                              "folderToRestore": "mhsm-foreign-copy"});
    let (status, _, answer) = send(
        &svc,
        &svc.token,
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        &restore_body,
    );
    assert_eq!(
        status, 400,
        "the restore refuses it as the check said: {answer}"
    );

    // A change after the last backup: the restore would be refused, and the check says so.
    svc.create("after-backup", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    failed_with(&pre_restore(&svc, &good), "Conflict", "full backup");
    let restore_body = json!({"sasTokenParameters": {"storageResourceUri": CONTAINER},
                              "folderToRestore": good});
    let (status, _, answer) = send(
        &svc,
        &svc.token,
        "PUT",
        &format!("/restore?{ADMIN_API}"),
        &restore_body,
    );
    assert_eq!(
        status, 409,
        "the restore refuses it as the check said: {answer}"
    );
    assert!(keys_state(&svc).as_array().is_some_and(|k| k.len() == 2));
    assert_eq!(
        svc.call("GET", &format!("/keys/pr-ec?{API}"), None).1["key"],
        key["key"]
    );

    // Refused at once, as the restore refuses them: no folder, a folder name that climbs.
    for body in [
        json!({"sasTokenParameters": {"storageResourceUri": CONTAINER}}),
        json!({"sasTokenParameters": {"storageResourceUri": CONTAINER}, "folderToRestore": "../x"}),
        json!({"folderToRestore": good}),
    ] {
        let (status, _, answer) = send(
            &svc,
            &svc.token,
            "PUT",
            &format!("/prerestore?{ADMIN_API}"),
            &body,
        );
        assert_eq!(status, 400, "{body}: {answer}");
    }
    // The right to restore: the Backup role may not (restore/start is the Administrator's).
    let (_, backup_role) = svc.new_principal("backup-op", &["Managed HSM Backup"], "/");
    let (status, _, answer) = send(
        &svc,
        &backup_role,
        "PUT",
        &format!("/prerestore?{ADMIN_API}"),
        &json!({"sasTokenParameters": {"storageResourceUri": CONTAINER}, "folderToRestore": good}),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("AccessDenied"))
    );
}
