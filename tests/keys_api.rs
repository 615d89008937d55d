//! The keys API end to end: the real binary, a real SoftHSM2 token, a real SQLite file, real
//! HTTPS on a port-0 listener.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{API, Service, data_dir};
use serde_json::{Value, json};

fn b64_len(v: &Value) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.as_str().expect("a base64url string"))
        .expect("valid base64url")
        .len()
}

#[test]
fn every_key_type_is_created_with_public_material_only() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);

    for (kty, bits) in [("RSA", 2048), ("RSA-HSM", 3072)] {
        let name = format!("rsa-{bits}");
        let body = json!({"kty": kty, "key_size": bits, "key_ops": ["sign", "verify"], "tags": {"team": "x"}});
        let key = svc.create(&name, &body.to_string());
        assert_eq!(key["key"]["kty"], "RSA-HSM");
        assert_eq!(b64_len(&key["key"]["n"]) * 8, bits);
        assert_eq!(key["key"]["e"], "AQAB");
        assert_eq!(key["key"]["key_ops"], json!(["sign", "verify"]));
        assert_eq!(key["tags"], json!({"team": "x"}));
    }
    for (crv, coord) in [("P-256", 32), ("P-384", 48), ("P-521", 66), ("P-256K", 32)] {
        let name = format!("ec-{}", crv.to_lowercase());
        let body = json!({"kty": "EC-HSM", "crv": crv}).to_string();
        if !common::curve_supported(crv) {
            let (status, answer) =
                svc.call("POST", &format!("/keys/{name}/create?{API}"), Some(&body));
            common::assert_curve_refused(status, &answer, crv);
            let (status, _) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
            assert_eq!(status, 404, "a refused curve leaves no key behind");
            continue;
        }
        let key = svc.create(&name, &body);
        assert_eq!(key["key"]["kty"], "EC-HSM");
        assert_eq!(key["key"]["crv"], crv);
        assert_eq!(b64_len(&key["key"]["x"]), coord);
        assert_eq!(b64_len(&key["key"]["y"]), coord);
        assert_eq!(key["key"]["key_ops"], json!(["sign", "verify"]));
    }
    for bits in [128, 192, 256] {
        let key = svc.create(
            &format!("aes-{bits}"),
            &json!({"kty": "oct", "key_size": bits}).to_string(),
        );
        assert_eq!(key["key"]["kty"], "oct-HSM");
        assert_eq!(
            key["key"]["key_ops"],
            json!(["encrypt", "decrypt", "wrapKey", "unwrapKey"])
        );
    }

    // No response ever carries private or symmetric material.
    let (_, list) = svc.call("GET", &format!("/keys?{API}"), None);
    for item in list["value"].as_array().expect("a list") {
        let kid = item["kid"].as_str().expect("kid");
        let name = kid.rsplit('/').next().expect("a name");
        let (status, key) = svc.call("GET", &format!("/keys/{name}/?{API}"), None);
        assert_eq!(status, 200);
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key["key"].get(private).is_none(),
                "{name} exposes {private}"
            );
        }
        assert!(
            key["key"]["kid"]
                .as_str()
                .expect("kid")
                .starts_with(&format!("{}/keys/{name}/", svc.url))
        );
    }
    svc.stop();
}

#[test]
fn versions_updates_rotation_and_paging() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let v1 = svc.create(
        "Multi",
        &json!({"kty": "EC", "tags": {"a": "1"}}).to_string(),
    );
    let v2 = svc.create("multi", &json!({"kty": "EC", "crv": "P-384"}).to_string());
    let v1_kid = v1["key"]["kid"].as_str().expect("kid").to_owned();
    let v1_id = v1_kid.rsplit('/').next().expect("version").to_owned();
    assert_eq!(v1_id.len(), 32);
    assert!(
        v1_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    // The key keeps the spelling of its first version; names compare case-insensitively.
    assert!(
        v2["key"]["kid"]
            .as_str()
            .expect("kid")
            .contains("/keys/Multi/")
    );

    // Latest is the newest version; an old version stays readable.
    let (_, latest) = svc.call("GET", &format!("/keys/MULTI?{API}"), None);
    assert_eq!(latest["key"]["crv"], "P-384");
    let (status, old) = svc.call("GET", &format!("/keys/multi/{v1_id}?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(old["key"]["x"], v1["key"]["x"]);

    // Update a specific version: attributes, tags and key_ops.
    let patch = json!({"key_ops": ["verify"], "attributes": {"enabled": false, "exp": 4_102_444_800_i64}, "tags": {"b": "2"}});
    let (status, updated) = svc.call(
        "PATCH",
        &format!("/keys/multi/{v1_id}?{API}"),
        Some(&patch.to_string()),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["key"]["key_ops"], json!(["verify"]));
    assert_eq!(updated["attributes"]["enabled"], false);
    assert_eq!(updated["attributes"]["exp"], 4_102_444_800_i64);
    assert_eq!(updated["tags"], json!({"b": "2"}));
    let (_, reread) = svc.call("GET", &format!("/keys/multi/{v1_id}?{API}"), None);
    assert_eq!(reread["attributes"]["enabled"], false);
    // The newest version was not touched.
    let (_, latest) = svc.call("GET", &format!("/keys/multi/?{API}"), None);
    assert_eq!(latest["attributes"]["enabled"], true);

    // Rotation: new material, same kind, operations and tags.
    let (status, rotated) = svc.call("POST", &format!("/keys/multi/rotate?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(rotated["key"]["crv"], "P-384");
    assert_ne!(rotated["key"]["x"], v2["key"]["x"]);

    // Versions page one at a time and cover all three.
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "{}/keys/multi/versions?{API}&maxresults=1",
        svc.url
    ));
    let mut pages = 0;
    while let Some(link) = next {
        let path = link
            .strip_prefix(&svc.url)
            .expect("nextLink is absolute on our URL")
            .to_owned();
        let (status, page) = svc.call("GET", &path, None);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for item in page["value"].as_array().expect("list") {
            seen.push(item["kid"].as_str().expect("kid").to_owned());
        }
        next = page["nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&v1_kid));

    // Keys page in name order with an opaque skiptoken.
    for i in 0..4 {
        svc.create(&format!("page-{i}"), r#"{"kty":"oct","key_size":128}"#);
    }
    let (_, first) = svc.call("GET", &format!("/keys?{API}&maxresults=2"), None);
    assert_eq!(first["value"].as_array().expect("list").len(), 2);
    let link = first["nextLink"].as_str().expect("more pages");
    assert!(link.contains("$skiptoken=") && link.contains("maxresults=2"));
    let mut total = 2;
    let mut next = Some(link.to_owned());
    while let Some(link) = next {
        let (_, page) = svc.call("GET", link.strip_prefix(&svc.url).expect("absolute"), None);
        total += page["value"].as_array().expect("list").len();
        next = page["nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(total, 5);
    svc.stop();
}

#[test]
fn bad_input_gets_a_4xx_azure_error_and_changes_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("existing", r#"{"kty":"EC"}"#);
    let big = format!(
        r#"{{"kty":"EC","tags":{{"t":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        (
            "POST",
            format!("/keys/bad_name/create?{API}"),
            Some(r#"{"kty":"EC"}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/{}/create?{API}", "k".repeat(128)),
            Some(r#"{"kty":"EC"}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"DSA"}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"RSA","key_size":1024}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"EC","crv":"P-192"}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"oct","key_size":512}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"EC","key_ops":["encrypt"]}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"EC","attributes":{"exportable":true}}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"EC","attributes":{"nbf":20,"exp":10}}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"EC","key_size":"big"}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"kty":"EC""#.into()),
            400,
        ),
        (
            "POST",
            format!("/keys/n1/create?{API}"),
            Some(r#"{"key_size":2048}"#.into()),
            400,
        ),
        ("POST", format!("/keys/n1/create?{API}"), None, 400),
        (
            "POST",
            "/keys/n1/create?api-version=1999-01-01".into(),
            Some(r#"{"kty":"EC"}"#.into()),
            400,
        ),
        (
            "POST",
            "/keys/n1/create".into(),
            Some(r#"{"kty":"EC"}"#.into()),
            400,
        ),
        (
            "PUT",
            format!("/keys/n1?{API}"),
            Some(r#"{"key":{"kty":"RSA","n":"AQAB","e":"AQAB"}}"#.into()),
            400,
        ),
        (
            "PUT",
            format!("/keys/n1?{API}"),
            Some(r#"{"key":{"kty":"oct","k":"AAAA"}}"#.into()),
            400,
        ),
        (
            "PUT",
            format!("/keys/n1?{API}"),
            Some(r#"{"attributes":{}}"#.into()),
            400,
        ),
        ("GET", format!("/keys?{API}&maxresults=0"), None, 400),
        ("GET", format!("/keys?{API}&maxresults=26"), None, 400),
        ("GET", format!("/keys?{API}&$skiptoken=%%%"), None, 400),
        ("GET", format!("/keys/missing?{API}"), None, 404),
        (
            "GET",
            format!("/keys/existing/0123456789abcdef0123456789abcdef?{API}"),
            None,
            404,
        ),
        (
            "GET",
            format!("/keys/existing/not-a-version?{API}"),
            None,
            404,
        ),
        (
            "PATCH",
            format!("/keys/existing/?{API}"),
            Some(r#"{"key_ops":["decrypt"]}"#.into()),
            400,
        ),
        (
            "PATCH",
            format!("/keys/existing/?{API}"),
            Some(r#"{"attributes":{"nbf":20,"exp":10}}"#.into()),
            400,
        ),
        ("POST", format!("/keys/missing/rotate?{API}"), None, 404),
        // The server reads an oversize body to its end before answering, so the client,
        // which writes it all first, sees the 413 rather than a reset.
        ("POST", format!("/keys/n1/create?{API}"), Some(big), 413),
    ];
    let (_, before) = svc.call("GET", &format!("/keys/existing?{API}"), None);
    for (method, path, body, want) in cases {
        let (status, json) = svc.call(method, &path, body.as_deref());
        assert_eq!(status, want, "{method} {path}: {json}");
        let code = json["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no Azure error body: {json}"));
        assert!(!code.is_empty());
        assert!(
            !json["error"]["message"]
                .as_str()
                .expect("a message")
                .is_empty()
        );
    }
    // Nothing was created or changed.
    let (_, list) = svc.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(list["value"].as_array().expect("list").len(), 1);
    let (_, after) = svc.call("GET", &format!("/keys/existing?{API}"), None);
    assert_eq!(before, after);
    svc.stop();
}

#[test]
fn requests_without_a_valid_token_get_the_challenge_before_the_body_is_read() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    // A malformed body: the 401 must come first, so the body was never parsed.
    for token in [None, Some("p11v_not-a-real-token")] {
        let (status, challenge, text) = svc.raw(
            token,
            "POST",
            &format!("/keys/sneaky/create?{API}"),
            Some(r#"{"kty": "#),
        );
        assert_eq!(status, 401, "{text}");
        let challenge = challenge.expect("WWW-Authenticate is set");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(
            challenge.contains("authorization=\"") && challenge.contains("resource=\""),
            "{challenge}"
        );
        let body: Value = serde_json::from_str(&text).expect("an Azure error body");
        assert_eq!(body["error"]["code"], "Unauthorized");
    }
    let (status, _) = svc.call("GET", &format!("/keys/sneaky?{API}"), None);
    assert_eq!(status, 404);
    svc.stop();
}

#[test]
fn a_restart_reuses_everything_and_keys_survive() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let key = svc.create("durable", r#"{"kty":"RSA","key_size":2048}"#);
    let token = svc.token.clone();
    let ca = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
    svc.stop();

    let mut secrets = vec!["admin.token", "tls/server.key", "p11vault.db"];
    if !common::on_kryoptic() {
        // The embedded token's generated PINs (an external token's are the operator's files).
        secrets.extend(["user.pin", "so.pin"]);
    }
    for secret in secrets {
        let mode = std::fs::metadata(dir.join(secret))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is readable by others: {mode:o}");
    }

    let svc = Service::start(&dir);
    assert_eq!(svc.token, token, "the administrator token is kept");
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).expect("ca.pem"),
        ca,
        "the CA is kept"
    );
    let (status, again) = svc.call("GET", &format!("/keys/durable?{API}"), None);
    assert_eq!(status, 200);
    // Same version, same material; the kid carries the new port.
    for field in ["n", "e", "kty", "key_ops"] {
        assert_eq!(again["key"][field], key["key"][field]);
    }
    let version = |k: &Value| {
        k["key"]["kid"]
            .as_str()
            .expect("kid")
            .rsplit('/')
            .next()
            .map(str::to_owned)
    };
    assert_eq!(version(&again), version(&key));
    svc.stop();
}

#[test]
fn a_crash_during_create_leaves_nothing_that_a_restart_does_not_clean_up() {
    for point in [
        "create.after_intent",
        "create.after_token",
        "create.after_commit",
    ] {
        let (_tmp, dir) = data_dir();
        let svc = Service::start(&dir);
        svc.create("kept", r#"{"kty":"EC"}"#);
        svc.stop();

        let svc = Service::start_with(&dir, &[("P11VAULT_TEST_FAILPOINTS", point)])
            .unwrap_or_else(|f| panic!("{f:?}"));
        svc.request_dies_with_the_process(
            "POST",
            &format!("/keys/doomed/create?{API}"),
            Some(r#"{"kty":"EC"}"#),
            point,
        );

        let svc = Service::start(&dir);
        let (status, _) = svc.call("GET", &format!("/keys/doomed?{API}"), None);
        if point == "create.after_commit" {
            // Committed before the crash: the key exists, whole and usable.
            assert_eq!(status, 200, "{point}");
        } else {
            assert_eq!(
                status, 404,
                "{point}: a key that was never committed must not appear"
            );
        }
        if point == "create.after_token" {
            let log = svc.log();
            assert!(
                log.contains("rolled back an unfinished key version"),
                "{point}: {log}"
            );
        }
        let (status, _) = svc.call("GET", &format!("/keys/kept?{API}"), None);
        assert_eq!(status, 200, "{point}");
        // The name works afterwards, and the database and token agree on every version.
        svc.create("doomed", r#"{"kty":"EC"}"#);
        let (status, _) = svc.call("POST", &format!("/keys/doomed/rotate?{API}"), None);
        assert_eq!(status, 200, "{point}");
        svc.stop();
        let svc = Service::start(&dir);
        let log = svc.log();
        assert!(
            !log.contains("holds no object"),
            "{point}: metadata without token objects: {log}"
        );
        svc.stop();
    }
}

#[test]
fn a_fresh_database_is_refused_over_a_token_that_holds_keys() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("precious", r#"{"kty":"oct","key_size":256}"#);
    svc.stop();
    for f in ["p11vault.db", "p11vault.db-wal", "p11vault.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let failed = match Service::start_with(&dir, &[]) {
        Ok(_) => panic!("the service started over a token whose database is gone"),
        Err(f) => f,
    };
    assert!(!failed.status.success());
    assert!(
        failed.stderr.to_lowercase().contains("refusing"),
        "{}",
        failed.stderr
    );
}

#[test]
fn an_interrupted_first_start_is_finished_by_the_next() {
    for point in [
        "provision.after_token",
        "provision.after_domain_objects",
        "provision.after_tls",
    ] {
        let (_tmp, dir) = data_dir();
        let failed = match Service::start_with(&dir, &[("P11VAULT_TEST_FAILPOINTS", point)]) {
            Ok(_) => panic!("{point}: the failpoint did not fire"),
            Err(f) => f,
        };
        assert!(!failed.status.success(), "{point}");
        let svc = Service::start(&dir);
        let key = svc.create("after-crash", r#"{"kty":"RSA","key_size":2048}"#);
        assert_eq!(key["key"]["kty"], "RSA-HSM", "{point}");
        svc.stop();
    }
}
