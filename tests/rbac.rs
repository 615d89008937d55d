//! Local RBAC end to end: the whole matrix of built-in roles × operations × key states against
//! a checked-in golden table, per-key scopes, custom roles, and refusals that change nothing.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, data_dir};
use serde_json::{Value, json};

const ROLES: &[(&str, &str)] = &[
    ("Managed HSM Administrator", "Admin"),
    ("Managed HSM Crypto Officer", "Officer"),
    ("Managed HSM Crypto User", "User"),
    ("Managed HSM Policy Administrator", "Policy"),
    ("Managed HSM Crypto Auditor", "Auditor"),
    ("Managed HSM Crypto Service Encryption User", "SvcEncr"),
    ("Managed HSM Crypto Service Release User", "SvcRel"),
    ("Managed HSM Backup", "Backup"),
];

const CRYPTO_AUDITOR_ID: &str = "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Disabled,
    Deleted,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Disabled => "disabled",
            State::Deleted => "deleted",
        }
    }
}

/// An EC P-256 private key as a JWK, for the import operation.
fn ec_jwk() -> Value {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
    let key = EcKey::generate(&group).expect("key");
    let (mut x, mut y) = (BigNum::new().expect("bn"), BigNum::new().expect("bn"));
    let mut ctx = BigNumContext::new().expect("ctx");
    key.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .expect("coordinates");
    let b64 =
        |n: &openssl::bn::BigNumRef| URL_SAFE_NO_PAD.encode(n.to_vec_padded(32).expect("pad"));
    json!({"kty": "EC", "crv": "P-256", "x": b64(&x), "y": b64(&y), "d": b64(key.private_key())})
}

struct Fixture {
    svc: Service,
    counter: std::cell::Cell<u32>,
    /// A principal that only ever receives assignments (target of the assignment writes).
    bystander: String,
}

impl Fixture {
    fn fresh(&self, prefix: &str) -> String {
        self.counter.set(self.counter.get() + 1);
        format!("{prefix}{}", self.counter.get())
    }

    /// A key in `state`, made by the suite's administrator (who holds every key role).
    fn key(&self, kind: &str, state: State) -> String {
        let name = self.fresh(kind);
        let body = match kind {
            "aes" => r#"{"kty":"oct-HSM","key_size":256}"#,
            _ => r#"{"kty":"EC","crv":"P-256"}"#,
        };
        self.svc.create(&name, body);
        match state {
            State::Active => {}
            State::Disabled => {
                let (s, j) = self.svc.call(
                    "PATCH",
                    &format!("/keys/{name}?{API}"),
                    Some(r#"{"attributes":{"enabled":false}}"#),
                );
                assert_eq!(s, 200, "{j}");
            }
            State::Deleted => {
                let (s, j) = self
                    .svc
                    .call("DELETE", &format!("/keys/{name}?{API}"), None);
                assert_eq!(s, 200, "{j}");
            }
        }
        name
    }

    /// A role assignment the administrator makes, for the delete-assignment operation.
    fn assignment(&self) -> String {
        let name = uuid::Uuid::new_v4().to_string();
        let (s, j) = self.svc.call(
            "PUT",
            &format!("/providers/Microsoft.Authorization/roleAssignments/{name}?{API}"),
            Some(
                &json!({"properties": {"principalId": self.bystander, "roleDefinitionId": CRYPTO_AUDITOR_ID}})
                    .to_string(),
            ),
        );
        assert_eq!(s, 201, "{j}");
        name
    }
}

/// One operation of the matrix: a name and how to send it as `token` against a key in
/// `state`. Returns the status, or `deny` for a refusal by RBAC (403 `AccessDenied`), so the
/// table tells it apart from a 403 about the key (disabled, operation not permitted).
type Operation = (&'static str, fn(&Fixture, &str, State) -> String);

fn send(fx: &Fixture, token: &str, method: &str, path: &str, body: Option<Value>) -> String {
    let body = body.map(|b| b.to_string());
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, json) = fx.svc.call_as(
        Some(token),
        method,
        &format!("{path}{sep}{API}"),
        body.as_deref(),
    );
    if status == 403 && json["error"]["code"] == "AccessDenied" {
        "deny".to_owned()
    } else {
        status.to_string()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Sends `method path` against a fresh key of `kind` in `state`; `{k}` in `path` is its name.
fn on_key(
    fx: &Fixture,
    token: &str,
    state: State,
    kind: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> String {
    let key = fx.key(kind, state);
    send(fx, token, method, &path.replace("{k}", &key), body)
}

fn operations() -> Vec<Operation> {
    vec![
        ("get key", |fx, t, s| {
            on_key(fx, t, s, "ec", "GET", "/keys/{k}", None)
        }),
        ("list keys", |fx, t, _| send(fx, t, "GET", "/keys", None)),
        ("list versions", |fx, t, s| {
            on_key(fx, t, s, "ec", "GET", "/keys/{k}/versions", None)
        }),
        ("create (new version)", |fx, t, s| {
            let k = fx.key("ec", s);
            send(
                fx,
                t,
                "POST",
                &format!("/keys/{k}/create"),
                Some(json!({"kty": "EC", "crv": "P-256"})),
            )
        }),
        ("import", |fx, t, s| {
            let k = fx.key("ec", s);
            send(
                fx,
                t,
                "PUT",
                &format!("/keys/{k}"),
                Some(json!({"key": ec_jwk()})),
            )
        }),
        ("update", |fx, t, s| {
            let k = fx.key("ec", s);
            send(
                fx,
                t,
                "PATCH",
                &format!("/keys/{k}"),
                Some(json!({"tags": {"a": "b"}})),
            )
        }),
        ("rotate", |fx, t, s| {
            on_key(fx, t, s, "ec", "POST", "/keys/{k}/rotate", None)
        }),
        ("get rotation policy", |fx, t, s| {
            on_key(fx, t, s, "ec", "GET", "/keys/{k}/rotationpolicy", None)
        }),
        ("set rotation policy", |fx, t, s| {
            let body = json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Rotate"}}], "attributes": {"expiryTime": "P1Y"}});
            on_key(
                fx,
                t,
                s,
                "ec",
                "PUT",
                "/keys/{k}/rotationpolicy",
                Some(body),
            )
        }),
        ("delete", |fx, t, s| {
            on_key(fx, t, s, "ec", "DELETE", "/keys/{k}", None)
        }),
        ("sign", |fx, t, s| {
            let body = json!({"alg": "ES256", "value": b64(&[7; 32])});
            on_key(fx, t, s, "ec", "POST", "/keys/{k}//sign", Some(body))
        }),
        ("verify", |fx, t, s| {
            let body = json!({"alg": "ES256", "digest": b64(&[7; 32]), "value": b64(&[1; 64])});
            on_key(fx, t, s, "ec", "POST", "/keys/{k}//verify", Some(body))
        }),
        ("encrypt", |fx, t, s| {
            let body = json!({"alg": "A256GCM", "value": "AAAA"});
            on_key(fx, t, s, "aes", "POST", "/keys/{k}//encrypt", Some(body))
        }),
        ("decrypt", |fx, t, s| {
            let body = json!({"alg": "A256GCM", "value": "AAAA", "iv": b64(&[0; 12]), "tag": b64(&[0; 16])});
            on_key(fx, t, s, "aes", "POST", "/keys/{k}//decrypt", Some(body))
        }),
        ("wrapkey", |fx, t, s| {
            let body = json!({"alg": "A256KW", "value": b64(&[5; 32])});
            on_key(fx, t, s, "aes", "POST", "/keys/{k}//wrapkey", Some(body))
        }),
        ("unwrapkey", |fx, t, s| {
            let body = json!({"alg": "A256KW", "value": b64(&[5; 40])});
            on_key(fx, t, s, "aes", "POST", "/keys/{k}//unwrapkey", Some(body))
        }),
        ("random bytes", |fx, t, _| {
            send(fx, t, "POST", "/rng", Some(json!({"count": 8})))
        }),
        ("list deleted", |fx, t, _| {
            send(fx, t, "GET", "/deletedkeys", None)
        }),
        ("get deleted", |fx, t, s| {
            on_key(fx, t, s, "ec", "GET", "/deletedkeys/{k}", None)
        }),
        ("recover", |fx, t, s| {
            on_key(fx, t, s, "ec", "POST", "/deletedkeys/{k}/recover", None)
        }),
        ("purge", |fx, t, s| {
            on_key(fx, t, s, "ec", "DELETE", "/deletedkeys/{k}", None)
        }),
        ("list role definitions", |fx, t, _| {
            send(
                fx,
                t,
                "GET",
                "/providers/Microsoft.Authorization/roleDefinitions",
                None,
            )
        }),
        ("create role definition", |fx, t, _| {
            let name = uuid::Uuid::new_v4();
            let body = json!({"properties": {"roleName": format!("custom {name}"), "permissions": [{"dataActions": ["Microsoft.KeyVault/managedHsm/keys/read/action"]}]}});
            send(
                fx,
                t,
                "PUT",
                &format!("/providers/Microsoft.Authorization/roleDefinitions/{name}"),
                Some(body),
            )
        }),
        ("list role assignments", |fx, t, _| {
            send(
                fx,
                t,
                "GET",
                "/providers/Microsoft.Authorization/roleAssignments",
                None,
            )
        }),
        ("create role assignment", |fx, t, _| {
            let name = uuid::Uuid::new_v4();
            let body = json!({"properties": {"principalId": fx.bystander, "roleDefinitionId": CRYPTO_AUDITOR_ID}});
            send(
                fx,
                t,
                "PUT",
                &format!("/providers/Microsoft.Authorization/roleAssignments/{name}"),
                Some(body),
            )
        }),
        ("delete role assignment", |fx, t, _| {
            let name = fx.assignment();
            send(
                fx,
                t,
                "DELETE",
                &format!("/providers/Microsoft.Authorization/roleAssignments/{name}"),
                None,
            )
        }),
        ("read settings", |fx, t, _| {
            send(fx, t, "GET", "/settings", None)
        }),
        ("change a setting", |fx, t, _| {
            // Asks for what is already so (purge protection off): the check is what is
            // measured, and the shared service keeps purging possible for the other cells.
            send(
                fx,
                t,
                "PATCH",
                "/settings/EnablePurgeProtection",
                Some(json!({"value": "false"})),
            )
        }),
        ("read audit log", |fx, t, _| {
            send(fx, t, "GET", "/p11vault/audit?limit=1", None)
        }),
        ("back up a key", |fx, t, s| {
            on_key(fx, t, s, "ec", "POST", "/keys/{k}/backup", None)
        }),
        ("restore a key", |fx, t, _| {
            // A blob of a key the administrator then purged, so the name is free.
            let k = fx.key("ec", State::Active);
            let (status, blob) = fx
                .svc
                .call("POST", &format!("/keys/{k}/backup?{API}"), None);
            assert_eq!(status, 200, "{blob}");
            assert_eq!(
                fx.svc.call("DELETE", &format!("/keys/{k}?{API}"), None).0,
                200
            );
            assert_eq!(
                fx.svc
                    .call("DELETE", &format!("/deletedkeys/{k}?{API}"), None)
                    .0,
                204
            );
            send(
                fx,
                t,
                "POST",
                "/keys/restore",
                Some(json!({"value": blob["value"]})),
            )
        }),
        ("start a full backup", |fx, t, _| {
            let body = json!({"storageResourceUri": "https://acct.blob.core.windows.net/matrix"});
            send(fx, t, "POST", "/backup", Some(body))
        }),
        ("backup status", |fx, t, _| {
            send(
                fx,
                t,
                "GET",
                &format!("/backup/{}/pending", "0".repeat(32)),
                None,
            )
        }),
        // The restores name a folder that cannot exist: the answer when allowed is a 400, and
        // nothing is ever restored over the shared service.
        ("start a full restore", |fx, t, _| {
            let body = json!({"sasTokenParameters": {"storageResourceUri": "https://a/matrix"}, "folderToRestore": "..bad"});
            send(fx, t, "PUT", "/restore", Some(body))
        }),
        ("restore one key", |fx, t, s| {
            let body = json!({"sasTokenParameters": {"storageResourceUri": "https://a/matrix"}, "folder": "..bad"});
            on_key(fx, t, s, "ec", "PUT", "/keys/{k}/restore", Some(body))
        }),
        ("restore status", |fx, t, _| {
            send(
                fx,
                t,
                "GET",
                &format!("/restore/{}/pending", "0".repeat(32)),
                None,
            )
        }),
        // The security domain, on an HSM that is active: allowed, a download or a transfer
        // key is a 409 (the domain is in force) and nothing changes.
        ("download security domain", |fx, t, _| {
            let body = json!({"certificates": [], "required": 2});
            send(fx, t, "POST", "/securitydomain/download", Some(body))
        }),
        ("download status", |fx, t, _| {
            send(fx, t, "GET", "/securitydomain/download/pending", None)
        }),
        ("get transfer key", |fx, t, _| {
            send(fx, t, "GET", "/securitydomain/upload", None)
        }),
        ("upload security domain", |fx, t, _| {
            send(
                fx,
                t,
                "POST",
                "/securitydomain/upload",
                Some(json!({"value": "{}"})),
            )
        }),
        ("upload status", |fx, t, _| {
            send(fx, t, "GET", "/securitydomain/upload/pending", None)
        }),
    ]
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/rbac_matrix.txt")
}

#[test]
fn the_role_matrix_matches_the_golden_file() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (bystander, _) = svc.new_principal("bystander", &[], "/");
    let fx = Fixture {
        svc,
        counter: std::cell::Cell::new(0),
        bystander,
    };
    let mut tokens: Vec<(&str, String)> = ROLES
        .iter()
        .map(|(role, short)| (*short, fx.svc.new_principal(short, &[role], "/").1))
        .collect();
    tokens.push(("none", fx.svc.new_principal("no-roles", &[], "/").1));

    let mut table = String::new();
    writeln!(
        table,
        "# Status of every operation for a principal holding one built-in role at scope /,\n\
         # against a key in each state. deny = refused by RBAC (403 AccessDenied); a plain 403\n\
         # is about the key itself (disabled). Regenerate with\n\
         # UPDATE_GOLDEN=1 cargo test --test rbac the_role_matrix, and review the diff."
    )
    .expect("write");
    let mut results: BTreeMap<(usize, &str, &str), String> = BTreeMap::new();
    for state in [State::Active, State::Disabled, State::Deleted] {
        writeln!(table, "\n## key {}", state.label()).expect("write");
        write!(table, "{:<24}", "operation").expect("write");
        for (short, _) in &tokens {
            write!(table, "{short:>8}").expect("write");
        }
        writeln!(table).expect("write");
        for (index, (op, run)) in operations().iter().enumerate() {
            write!(table, "{op:<24}").expect("write");
            for (short, token) in &tokens {
                let status = run(&fx, token, state);
                write!(table, "{status:>8}").expect("write");
                results.insert((index, state.label(), short), status);
            }
            writeln!(table).expect("write");
        }
    }

    // The issue's own sentences, checked directly as well as through the table.
    let ops = operations();
    let at = |op: &str, state: &'static str, role: &'static str| -> String {
        let index = ops
            .iter()
            .position(|(name, _)| *name == op)
            .expect("operation");
        results[&(index, state, role)].clone()
    };
    assert_eq!(at("list deleted", "deleted", "User"), "200");
    assert_eq!(at("purge", "deleted", "User"), "deny");
    assert_eq!(at("recover", "deleted", "User"), "deny");
    assert_eq!(at("purge", "deleted", "Officer"), "204");
    assert_eq!(at("recover", "deleted", "Officer"), "200");
    // Managed HSM: a rotation policy is read with keys/read and set with keys/write.
    assert_eq!(at("get rotation policy", "active", "Auditor"), "200");
    assert_eq!(at("set rotation policy", "active", "Auditor"), "deny");
    assert_eq!(at("set rotation policy", "active", "User"), "200");
    assert_eq!(at("set rotation policy", "active", "Officer"), "deny");
    for &(_, short) in ROLES {
        let expected = if short == "Admin" { "200" } else { "deny" };
        assert_eq!(at("change a setting", "active", short), expected, "{short}");
    }
    // The security domain is the Administrator's alone.
    for op in [
        "download security domain",
        "download status",
        "get transfer key",
        "upload security domain",
        "upload status",
    ] {
        for &(_, short) in ROLES {
            let got = at(op, "active", short);
            if short == "Admin" {
                assert_ne!(got, "deny", "{op}");
            } else {
                assert_eq!(got, "deny", "{op} by {short}");
            }
        }
    }
    for index in 0..ops.len() {
        for state in ["active", "disabled", "deleted"] {
            assert_eq!(
                results[&(index, state, "none")],
                "deny",
                "no roles, no access"
            );
        }
    }

    let path = golden_path();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &table).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != table {
        let diff: Vec<String> = expected
            .lines()
            .zip(table.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "the RBAC matrix differs from {}:\n{}\n\nwhole table now:\n{table}",
            path.display(),
            diff.join("\n")
        );
    }
}

#[test]
fn a_key_scoped_assignment_reaches_that_key_only() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("mine", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.create("theirs", r#"{"kty":"EC","crv":"P-256"}"#);
    let (_, token) = svc.new_principal("scoped", &["Managed HSM Crypto User"], "/keys/mine");
    let sign = |key: &str| {
        let body = json!({"alg": "ES256", "value": URL_SAFE_NO_PAD.encode([1u8; 32])}).to_string();
        svc.call_as(
            Some(&token),
            "POST",
            &format!("/keys/{key}//sign?{API}"),
            Some(&body),
        )
        .0
    };
    assert_eq!(sign("mine"), 200);
    assert_eq!(sign("MINE"), 200, "key names compare case-insensitively");
    assert_eq!(sign("theirs"), 403);
    assert_eq!(
        svc.call_as(Some(&token), "GET", &format!("/keys?{API}"), None)
            .0,
        403
    );
    assert_eq!(
        svc.call_as(
            Some(&token),
            "POST",
            &format!("/rng?{API}"),
            Some(r#"{"count":4}"#)
        )
        .0,
        403
    );
    // HEAD needs what GET needs.
    let (_, none) = svc.new_principal("nobody", &[], "/");
    assert_eq!(
        svc.raw(Some(&none), "HEAD", &format!("/keys/mine?{API}"), None)
            .0,
        403
    );
    assert_eq!(
        svc.raw(Some(&token), "HEAD", &format!("/keys/mine?{API}"), None)
            .0,
        200
    );
    // A role administrator of one key cannot rewrite a role definition (they are HSM-wide),
    // but can manage assignments on that key.
    let (_, key_admin) = svc.new_principal(
        "key-admin",
        &["Managed HSM Policy Administrator"],
        "/keys/mine",
    );
    let role = uuid::Uuid::new_v4();
    let custom = json!({"properties": {"roleName": "everything", "permissions": [{"dataActions": ["Microsoft.KeyVault/managedHsm/*"]}]}}).to_string();
    let (s, j) = svc.call_as(
        Some(&key_admin),
        "PUT",
        &format!("/keys/mine/providers/Microsoft.Authorization/roleDefinitions/{role}?{API}"),
        Some(&custom),
    );
    assert_eq!(s, 403, "{j}");
    let (s, j) = svc.call_as(
        Some(&key_admin),
        "GET",
        &format!("/keys/mine/providers/Microsoft.Authorization/roleAssignments?{API}"),
        None,
    );
    assert_eq!(s, 200, "{j}");
    // The assignment is visible at the key's scope, with the scope it was made at.
    let (s, list) = svc.call(
        "GET",
        &format!("/keys/mine/providers/Microsoft.Authorization/roleAssignments?{API}"),
        None,
    );
    assert_eq!(s, 200, "{list}");
    assert!(
        list["value"]
            .as_array()
            .expect("value")
            .iter()
            .any(|a| a["properties"]["scope"] == "/keys/mine"),
        "{list}"
    );
}

#[test]
fn custom_roles_and_refusals_that_change_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("k", r#"{"kty":"EC","crv":"P-256"}"#);
    let (worker, token) = svc.new_principal("worker", &[], "/");
    let role = uuid::Uuid::new_v4().to_string();
    let defs = "/providers/Microsoft.Authorization/roleDefinitions";
    let assigns = "/providers/Microsoft.Authorization/roleAssignments";
    let custom = json!({"properties": {
        "roleName": "signer without purge",
        "description": "sign and read, nothing else",
        "type": "CustomRole",
        "permissions": [{
            "dataActions": ["Microsoft.KeyVault/managedHsm/keys/*"],
            "notDataActions": ["Microsoft.KeyVault/managedHsm/keys/deletedKeys/delete",
                               "Microsoft.KeyVault/managedHsm/keys/delete"]
        }]
    }});
    let (s, created) = svc.call(
        "PUT",
        &format!("{defs}/{role}?{API}"),
        Some(&custom.to_string()),
    );
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["properties"]["type"], "CustomRole");
    assert_eq!(
        created["id"],
        format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{role}")
    );
    let assignment = uuid::Uuid::new_v4().to_string();
    let body = json!({"properties": {"principalId": worker, "roleDefinitionId": created["id"]}});
    let (s, a) = svc.call(
        "PUT",
        &format!("{assigns}/{assignment}?{API}"),
        Some(&body.to_string()),
    );
    assert_eq!(s, 201, "{a}");
    let sign = json!({"alg": "ES256", "value": URL_SAFE_NO_PAD.encode([1u8; 32])}).to_string();
    assert_eq!(
        svc.call_as(
            Some(&token),
            "POST",
            &format!("/keys/k//sign?{API}"),
            Some(&sign)
        )
        .0,
        200
    );
    assert_eq!(
        svc.call_as(Some(&token), "DELETE", &format!("/keys/k?{API}"), None)
            .0,
        403,
        "excluded by notDataActions"
    );

    let before = |svc: &Service| {
        (
            svc.call("GET", &format!("{defs}?{API}"), None).1,
            svc.call("GET", &format!("{assigns}?{API}"), None).1,
        )
    };
    let snapshot = before(&svc);
    let refusals: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "a built-in role's GUID",
            format!("{defs}/21dbd100-6940-42c2-9190-5d6cb909625b"),
            custom.clone(),
            400,
            "BadParameter",
        ),
        (
            "a name that is not a GUID",
            format!("{defs}/not-a-guid"),
            custom.clone(),
            400,
            "BadParameter",
        ),
        (
            "an unknown data action",
            format!("{defs}/{}", uuid::Uuid::new_v4()),
            json!({"properties": {"roleName": "x", "permissions": [{"dataActions": ["Microsoft.KeyVault/managedHsm/keys/teleport/action"]}]}}),
            400,
            "BadParameter",
        ),
        (
            "no permissions",
            format!("{defs}/{}", uuid::Uuid::new_v4()),
            json!({"properties": {"roleName": "empty", "permissions": []}}),
            400,
            "BadParameter",
        ),
        (
            "a taken role name",
            format!("{defs}/{}", uuid::Uuid::new_v4()),
            custom.clone(),
            400,
            "BadParameter",
        ),
        (
            "an assignment name in use",
            format!("{assigns}/{assignment}"),
            body.clone(),
            409,
            "Conflict",
        ),
        (
            "an unknown principal",
            format!("{assigns}/{}", uuid::Uuid::new_v4()),
            json!({"properties": {"principalId": "nobody", "roleDefinitionId": CRYPTO_AUDITOR_ID}}),
            400,
            "BadParameter",
        ),
        (
            "an unknown role",
            format!("{assigns}/{}", uuid::Uuid::new_v4()),
            json!({"properties": {"principalId": worker, "roleDefinitionId": uuid::Uuid::new_v4().to_string()}}),
            400,
            "BadParameter",
        ),
        (
            "no principal",
            format!("{assigns}/{}", uuid::Uuid::new_v4()),
            json!({"properties": {"roleDefinitionId": CRYPTO_AUDITOR_ID}}),
            400,
            "BadParameter",
        ),
    ];
    for (what, path, body, status, code) in refusals {
        let (s, j) = svc.call("PUT", &format!("{path}?{API}"), Some(&body.to_string()));
        assert_eq!(s, status, "{what}: {j}");
        assert_eq!(j["error"]["code"], code, "{what}: {j}");
    }
    let (s, j) = svc.call("DELETE", &format!("{defs}/{role}?{API}"), None);
    assert_eq!(s, 409, "a role in use cannot be deleted: {j}");
    let (s, j) = svc.call(
        "DELETE",
        &format!("{defs}/a290e904-7015-4bba-90c8-60543313cdb4?{API}"),
        None,
    );
    assert_eq!(s, 400, "a built-in role cannot be deleted: {j}");
    assert_eq!(before(&svc), snapshot, "the refusals changed nothing");

    // Removing the assignment takes the access away at once; then the role can go.
    assert_eq!(
        svc.call("DELETE", &format!("{assigns}/{assignment}?{API}"), None)
            .0,
        200
    );
    assert_eq!(
        svc.call_as(
            Some(&token),
            "POST",
            &format!("/keys/k//sign?{API}"),
            Some(&sign)
        )
        .0,
        403
    );
    assert_eq!(
        svc.call("DELETE", &format!("{defs}/{role}?{API}"), None).0,
        200
    );
    assert_eq!(
        svc.call("GET", &format!("{defs}/{role}?{API}"), None).0,
        404
    );
}

#[test]
fn only_an_administrator_enables_purge_protection() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (_, officer) = svc.new_principal("officer", &["Managed HSM Crypto Officer"], "/");
    let (_, admin_only) = svc.new_principal("admin2", &["Managed HSM Administrator"], "/");
    let on = r#"{"value":"true"}"#;
    let path = format!("/settings/EnablePurgeProtection?{API}");
    let (s, j) = svc.call_as(Some(&officer), "PATCH", &path, Some(on));
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (403, Some("AccessDenied")),
        "{j}"
    );
    assert_eq!(svc.call("GET", &path, None).1["value"], "false");
    let (s, j) = svc.call_as(Some(&admin_only), "PATCH", &path, Some(on));
    assert_eq!(s, 200, "{j}");
    assert_eq!(svc.call("GET", &path, None).1["value"], "true");
}
