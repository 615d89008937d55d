//! The HSM as an Azure Resource Manager resource (`http/arm.rs`, `keys/hsm_level.rs`): who
//! may reach it and how client mistakes are answered (4xx in Azure's error shape), and a purge
//! of the whole HSM killed between its steps, finished by the next start: every key object
//! destroyed on the token (checked on the token itself), all key metadata gone, the audit
//! log kept and readable, the sign-in and the security domain left in place.

mod common;

use common::{API, Service, data_dir};
use cryptoki::object::{Attribute, AttributeType};
use serde_json::{Value, json};

const HSM: &str = "/subscriptions/p11vault/resourceGroups/p11vault/providers/Microsoft.KeyVault/managedHSMs/p11vault";
const DELETED: &str = "/subscriptions/p11vault/providers/Microsoft.KeyVault/locations/local/deletedManagedHSMs/p11vault";
const ARM: &str = "api-version=2026-02-01";

fn arm(
    svc: &Service,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let body = body.map(Value::to_string);
    svc.call_as(token, method, &format!("{path}{sep}{ARM}"), body.as_deref())
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// The labels of the p11vault objects on the data dir's token, read as its user.
fn labels(dir: &std::path::Path) -> Vec<String> {
    let (_ctx, session) = common::open_token_as_user(dir);
    let mut out: Vec<String> = session
        .find_objects(&[Attribute::Token(true)])
        .expect("find")
        .into_iter()
        .filter_map(|h| {
            match session
                .get_attributes(h, &[AttributeType::Label])
                .ok()?
                .pop()
            {
                Some(Attribute::Label(l)) => Some(String::from_utf8_lossy(&l).into_owned()),
                _ => None,
            }
        })
        .filter(|l| l.starts_with("p11vault"))
        .collect();
    out.sort();
    out
}

#[test]
fn the_hsm_resource_is_the_operators_and_its_purge_survives_a_kill() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("live", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.create("gone", r#"{"kty":"oct","key_size":256}"#);
    assert_eq!(
        svc.call("DELETE", &format!("/keys/gone?{API}"), None).0,
        200
    );

    // Who may: the operator only. No credential is a 401 with the challenge; a principal
    // with every data-plane role is a 403.
    let (_, app) = svc.new_principal(
        "app",
        &[
            "Managed HSM Administrator",
            "Managed HSM Crypto Officer",
            "Managed HSM Crypto User",
        ],
        "/",
    );
    let (status, body) = arm(&svc, None, "GET", HSM, None);
    assert_eq!((status, code(&body)), (401, "Unauthorized"), "{body}");
    for (method, path) in [
        ("GET", HSM),
        ("PUT", HSM),
        ("DELETE", HSM),
        ("POST", &format!("{DELETED}/purge")),
    ] {
        let (status, body) = arm(&svc, Some(&app), method, path, Some(&json!({})));
        assert_eq!(
            (status, code(&body)),
            (403, "AuthorizationFailed"),
            "{method} {path}: {body}"
        );
    }
    // Client mistakes are 4xx in Azure's shape, never a 500.
    let (status, body) = svc.call("GET", HSM, None);
    assert_eq!(
        (status, code(&body)),
        (400, "MissingApiVersionParameter"),
        "{body}"
    );
    let (status, body) = arm(
        &svc,
        Some(&svc.token),
        "GET",
        &HSM.replace("/subscriptions/p11vault/", "/subscriptions/other/"),
        None,
    );
    assert_eq!(
        (status, code(&body)),
        (404, "SubscriptionNotFound"),
        "{body}"
    );
    let (status, body) = arm(
        &svc,
        Some(&svc.token),
        "GET",
        &HSM.replace("managedHSMs/p11vault", "managedHSMs/other"),
        None,
    );
    assert_eq!((status, code(&body)), (404, "ResourceNotFound"), "{body}");
    for bad in [
        json!({"properties": {"softDeleteRetentionInDays": 7}}),
        json!({"properties": {"enableSoftDelete": false}}),
        json!({"properties": {"enablePurgeProtection": "yes"}}),
        json!([1, 2]),
    ] {
        let (status, body) = arm(&svc, Some(&svc.token), "PUT", HSM, Some(&bad));
        assert_eq!(
            (status, code(&body)),
            (400, "BadParameter"),
            "{bad}: {body}"
        );
    }
    let (status, body) = arm(
        &svc,
        Some(&svc.token),
        "PUT",
        &HSM.replace("managedHSMs/p11vault", "managedHSMs/second"),
        Some(&json!({})),
    );
    assert_eq!((status, code(&body)), (400, "BadParameter"), "{body}");
    // Another provider's resources: 404 in ARM's shape.
    let (status, body) = svc.call(
        "GET",
        "/subscriptions/p11vault/providers/Microsoft.Network/virtualNetworks?api-version=2024-05-01",
        None,
    );
    assert_eq!((status, code(&body)), (404, "ResourceNotFound"), "{body}");
    // The backup location is the one storage account (`http/storage.rs`), named from the HSM;
    // another account name is not found.
    let (status, body) = svc.call(
        "GET",
        "/subscriptions/p11vault/providers/Microsoft.Storage/storageAccounts?api-version=2025-08-01",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"][0]["name"], "p11vaultbackup", "{body}");
    let (status, body) = svc.call(
        "POST",
        "/subscriptions/p11vault/resourceGroups/p11vault/providers/Microsoft.Storage/storageAccounts/otheraccount/listKeys?api-version=2025-08-01",
        None,
    );
    assert_eq!((status, code(&body)), (404, "ResourceNotFound"), "{body}");
    let (status, body) = svc.call(
        "POST",
        "/subscriptions/p11vault/resourceGroups/p11vault/providers/Microsoft.Storage/storageAccounts/p11vaultbackup/listKeys?api-version=2025-08-01",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let key = body["keys"][0]["value"].as_str().unwrap_or_default();
    assert_eq!(key.len(), 88, "64 bytes in base64: {body}");
    // Recover or purge a live HSM: there is no deleted HSM of that name.
    let (status, body) = arm(
        &svc,
        Some(&svc.token),
        "POST",
        &format!("{DELETED}/purge"),
        None,
    );
    assert_eq!((status, code(&body)), (404, "ResourceNotFound"), "{body}");
    let (status, body) = arm(
        &svc,
        Some(&svc.token),
        "PUT",
        HSM,
        Some(&json!({"properties": {"createMode": "recover"}})),
    );
    assert_eq!((status, code(&body)), (404, "ResourceNotFound"), "{body}");
    let (status, body) = arm(&svc, Some(&svc.token), "GET", HSM, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["properties"]["securityDomainProperties"]["activationStatus"],
        "Active"
    );
    svc.stop();

    let before = labels(&dir);
    assert_eq!(
        before.iter().filter(|l| l.starts_with("p11vault/")).count(),
        2,
        "{before:?}"
    );
    assert_eq!(
        before
            .iter()
            .filter(|l| l.starts_with("p11vault-deleted/"))
            .count(),
        1,
        "{before:?}"
    );

    // Deleted, then a purge killed right after recording its intent: nothing destroyed.
    let svc = Service::start(&dir);
    let (status, body) = arm(&svc, Some(&svc.token), "DELETE", HSM, None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = svc.call("GET", &format!("/keys/live?{API}"), None);
    assert_eq!(
        (status, body["error"]["innererror"]["code"].as_str()),
        (403, Some("ManagedHsmDeleted")),
        "{body}"
    );
    svc.stop();
    let armed = Service::start_with(
        &dir,
        &[("P11VAULT_TEST_FAILPOINTS", "hsm_purge.after_intent")],
    )
    .expect("starts");
    let _ = armed.try_call("POST", &format!("{DELETED}/purge?{ARM}"), None);
    assert!(!armed.wait_for_exit().success(), "killed at the failpoint");
    assert_eq!(
        labels(&dir),
        before,
        "nothing destroyed before the token step"
    );

    // The next start resumes the purge; killed again right after the token wipe, before the
    // metadata commit.
    let failed = Service::start_with(
        &dir,
        &[("P11VAULT_TEST_FAILPOINTS", "hsm_purge.after_token")],
    );
    assert!(
        failed.is_err(),
        "the resumed purge reached the failpoint during the start"
    );

    // The next start finishes it.
    let svc = Service::start(&dir);
    assert!(
        svc.log().contains("finishing the purge of the HSM"),
        "{}",
        svc.log()
    );
    let after = labels(&dir);
    assert!(
        after
            .iter()
            .all(|l| !l.starts_with("p11vault/") && !l.starts_with("p11vault-deleted/")),
        "every key object destroyed: {after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|l| l.starts_with("p11vault-id/"))
            .count(),
        1,
        "the sign-in key stays: {after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|l| l.starts_with("p11vault-sd/"))
            .count(),
        3,
        "the domain stays: {after:?}"
    );
    for path in ["/keys", "/keys/live", "/deletedkeys/gone"] {
        let (status, body) = svc.call("GET", &format!("{path}?{API}"), None);
        assert_eq!(
            (status, code(&body)),
            (404, "ResourceNotFound"),
            "{path}: {body}"
        );
    }
    let (status, body) = arm(
        &svc,
        Some(&svc.token),
        "GET",
        &DELETED.replace(
            "/locations/local/deletedManagedHSMs/p11vault",
            "/deletedManagedHSMs",
        ),
        None,
    );
    assert_eq!(
        (status, body["value"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );
    let (status, body) = arm(&svc, Some(&svc.token), "GET", HSM, None);
    assert_eq!((status, code(&body)), (404, "ResourceNotFound"), "{body}");
    // Audited: the purge requests are in the audit log, whose chain still verifies. (Its
    // HTTP reader needs a role, and the purge removed every role assignment.)
    let audit = std::fs::read_to_string(dir.join("audit.log")).expect("the audit log");
    assert!(
        audit.contains("deletedManagedHSMs/p11vault/purge"),
        "{audit}"
    );
    let (status, body) = svc.call("GET", &format!("/p11vault/audit?{API}"), None);
    assert_eq!(
        (status, code(&body)),
        (403, "AccessDenied"),
        "not the HSM gate: {body}"
    );
    svc.stop();
    let (ok, out, err) = common::cli(&dir, &["audit", "verify"]);
    assert!(ok, "{out}{err}");
}
