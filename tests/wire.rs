//! The wire as the SDKs send it, end to end over real HTTPS: percent-encoded query names and
//! values (the JS SDK's `?api%2Dversion=…`), duplicated and unknown parameters, path segments
//! decoded exactly once, and the api-version policy (README "API versions").

mod common;

use common::{API, Service, data_dir};
use serde_json::{Value, json};

fn assert_bad_parameter(status: u16, body: &Value, mentions: &str, what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(body["error"]["code"], "BadParameter", "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{what}: the message should name '{mentions}': {body}"
    );
}

/// The query of a nextLink, with every name percent-encoded the way the JS SDK's URL
/// templates write them (`%24skiptoken`, and `%6Daxresults` for good measure).
fn encode_names(next_link: &str) -> String {
    let (path, query) = next_link.split_once('?').expect("a nextLink has a query");
    let path = path
        .split_once("/keys")
        .map(|(_, p)| format!("/keys{p}"))
        .expect("a keys path");
    let query: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("name=value");
            let name = match name {
                "api-version" => "api%2Dversion".to_owned(),
                "$skiptoken" => "%24skiptoken".to_owned(),
                "maxresults" => "%6Daxresults".to_owned(),
                other => other.to_owned(),
            };
            format!("{name}={value}")
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[test]
fn percent_encoded_query_names_and_values_are_read() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let js = "api%2Dversion=2025-07-01";

    // What @azure/keyvault-keys 4.10.2 sends.
    for name in ["wire-a", "wire-b", "wire-c"] {
        let (status, body) = svc.call(
            "POST",
            &format!("/keys/{name}/create?{js}"),
            Some(r#"{"kty":"EC-HSM","crv":"P-256"}"#),
        );
        assert_eq!(status, 200, "create with {js}: {body}");
    }
    let (status, body) = svc.call("GET", &format!("/keys/wire-a/?{js}"), None);
    assert_eq!(status, 200, "get with {js}: {body}");
    // Values are decoded too, and lower-case hex is the same escape.
    for query in [
        "api-version=2025%2D07%2D01",
        "api%2dversion=7%2E6",
        "%61pi-version=7.4",
    ] {
        let (status, body) = svc.call("GET", &format!("/keys/wire-a?{query}"), None);
        assert_eq!(status, 200, "{query}: {body}");
    }

    // Paging with encoded names: `%24skiptoken` is `$skiptoken`, `%6Daxresults` `maxresults`.
    let (status, first) = svc.call("GET", &format!("/keys?{js}&%6Daxresults=1"), None);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["value"].as_array().map(Vec::len), Some(1), "{first}");
    let mut seen = vec![first["value"][0]["kid"].clone()];
    let mut next = first["nextLink"].as_str().map(str::to_owned);
    while let Some(link) = next {
        let (status, page) = svc.call("GET", &encode_names(&link), None);
        assert_eq!(status, 200, "{link}: {page}");
        assert_eq!(page["value"].as_array().map(Vec::len), Some(1), "{page}");
        seen.push(page["value"][0]["kid"].clone());
        next = page["nextLink"].as_str().map(str::to_owned);
    }
    let kids: Vec<&str> = seen.iter().filter_map(Value::as_str).collect();
    assert_eq!(kids.len(), 3, "every key once, one per page: {kids:?}");
    for (kid, name) in kids.iter().zip(["wire-a", "wire-b", "wire-c"]) {
        assert!(kid.ends_with(&format!("/keys/{name}")), "{kid}");
    }
    // A skiptoken the service did not issue is refused however its name is spelt.
    let (status, body) = svc.call("GET", &format!("/keys?{js}&%24skiptoken=%21%21"), None);
    assert_bad_parameter(status, &body, "$skiptoken", "a foreign skiptoken");
}

#[test]
fn duplicated_unknown_and_malformed_parameters() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("dup", r#"{"kty":"EC-HSM","crv":"P-256"}"#);

    // The same value twice (in any spelling) is that value.
    for query in [
        "api-version=7.4&api-version=7.4",
        "api-version=7.4&api%2Dversion=7%2E4",
        "api-version=7.4&API-Version=7.4",
    ] {
        let (status, body) = svc.call("GET", &format!("/keys/dup?{query}"), None);
        assert_eq!(status, 200, "{query}: {body}");
    }
    // Different values of a parameter the service reads: a 400 naming it, and nothing done.
    for (query, name) in [
        ("api-version=7.4&api-version=7.5", "api-version"),
        ("api-version=7.4&api%2Dversion=2025-07-01", "api-version"),
        ("api-version=7.4&API-VERSION=7.6", "api-version"),
    ] {
        let (status, body) = svc.call("GET", &format!("/keys/dup?{query}"), None);
        assert_bad_parameter(status, &body, name, query);
    }
    let (status, body) = svc.call(
        "POST",
        "/keys/dup2/create?api-version=7.4&api-version=7.5",
        Some(r#"{"kty":"EC-HSM","crv":"P-256"}"#),
    );
    assert_bad_parameter(status, &body, "api-version", "a create with two versions");
    let (status, _) = svc.call("GET", &format!("/keys/dup2?{API}"), None);
    assert_eq!(status, 404, "the refused create made nothing");
    let (status, body) = svc.call(
        "GET",
        &format!("/keys?{API}&maxresults=1&maxresults=2"),
        None,
    );
    assert_bad_parameter(status, &body, "maxresults", "two page sizes");
    let (status, body) = svc.call(
        "GET",
        &format!("/keys?{API}&maxresults=2&maxresults=2"),
        None,
    );
    assert_eq!(status, 200, "the same page size twice: {body}");

    // Parameters the service does not read are ignored, duplicated or not.
    let (status, body) = svc.call(
        "GET",
        &format!("/keys/dup?{API}&%24top=3&x-unknown=1&x-unknown=2&flag&&"),
        None,
    );
    assert_eq!(status, 200, "unknown parameters: {body}");

    // A malformed escape or a non-UTF-8 value is a 400 in Azure's shape.
    for query in [
        format!("{API}&maxresults=%zz"),
        format!("{API}&x=%"),
        format!("{API}&x=%FF"),
        "api-version=2025-07-0%".to_owned(),
    ] {
        let (status, body) = svc.call("GET", &format!("/keys?{query}"), None);
        assert_bad_parameter(status, &body, "query string is malformed", &query);
    }
}

#[test]
fn path_segments_are_decoded_exactly_once() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let ec = r#"{"kty":"EC-HSM","crv":"P-256"}"#;

    // `%2D` is `-`: the key is `path-key`, and its kid says so.
    let (status, key) = svc.call("POST", &format!("/keys/path%2Dkey/create?{API}"), Some(ec));
    assert_eq!(status, 200, "{key}");
    let kid = key["key"]["kid"].as_str().expect("a kid");
    assert!(kid.contains("/keys/path-key/"), "{kid}");
    let (status, got) = svc.call("GET", &format!("/keys/path-key?{API}"), None);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["key"]["kid"], key["key"]["kid"]);
    // Encoded unreserved characters anywhere in the path, literal segments included.
    for path in [
        "/keys/path%2dkey/",
        "/keys/%70ath-key/%76ersions",
        "/%6Beys/path-key",
    ] {
        let (status, body) = svc.call("GET", &format!("{path}?{API}"), None);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let version = kid.rsplit('/').next().expect("a version");
    let digest = common::b64url(&[7u8; 32]);
    let sign = json!({"alg": "ES256", "value": digest}).to_string();
    for path in [
        format!("/keys/path%2Dkey/{version}/%73ign"),
        "/keys/path%2Dkey//sign".to_owned(),
    ] {
        let (status, body) = svc.call("POST", &format!("{path}?{API}"), Some(&sign));
        assert_eq!(status, 200, "{path}: {body}");
    }

    // Once only: `%252D` is the text `%2D`, which no key name may hold; `%2F` stays inside
    // its segment and is a '/' in the name, which is refused too. Neither makes a key.
    for (path, name) in [
        ("/keys/path%252Dtwice/create", "path-twice"),
        ("/keys/path%2Fslash/create", "path"),
        ("/keys/path%20space/create", "path space"),
    ] {
        let (status, body) = svc.call("POST", &format!("{path}?{API}"), Some(ec));
        assert_bad_parameter(status, &body, "name", path);
        let (status, _) = svc.call(
            "GET",
            &format!("/keys/{}?{API}", name.replace(' ', "")),
            None,
        );
        assert_eq!(status, 404, "{path} made a key");
    }
    let (status, listed) = svc.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(status, 200);
    assert_eq!(
        listed["value"].as_array().map(Vec::len),
        Some(1),
        "only path-key exists: {listed}"
    );
}

#[test]
fn the_api_version_policy() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("ver", r#"{"kty":"EC-HSM","crv":"P-256","tags":{"t":"1"}}"#);
    let (status, reference) = svc.call("GET", &format!("/keys/ver?{API}"), None);
    assert_eq!(status, 200);

    // Every published version, and what the SDKs, az and the KMS plugin send.
    for version in p11vault::http::version::KNOWN {
        let (status, body) = svc.call("GET", &format!("/keys/ver?api-version={version}"), None);
        assert_eq!(status, 200, "{version}: {body}");
        assert_eq!(body, reference, "{version} is answered in the one shape");
    }
    // A well-formed version newer than the newest known is answered in the newest shape.
    for version in ["2026-03-01", "2026-09-01-preview", "2031-01-01"] {
        let (status, body) = svc.call("GET", &format!("/keys/ver?api-version={version}"), None);
        assert_eq!(status, 200, "{version}: {body}");
        assert_eq!(body, reference, "{version}");
        let (status, listed) = svc.call(
            "GET",
            &format!("/keys?api-version={version}&maxresults=1"),
            None,
        );
        assert_eq!(status, 200, "{version}: {listed}");
        let (status, _) = svc.call(
            "POST",
            &format!("/keys/ver-future/create?api-version={version}"),
            Some(r#"{"kty":"EC-HSM","crv":"P-256"}"#),
        );
        assert_eq!(status, 200, "a change under {version}");
    }
    // Refused in Azure's shape: unknown inside the known range, malformed, missing.
    for (version, says) in [
        ("2025-07-10", "not recognized"),
        ("7.7", "not recognized"),
        ("1999-01-01", "not recognized"),
        ("latest", "not a valid api-version"),
        ("2026-13-01", "not a valid api-version"),
        ("7.x", "not a valid api-version"),
        ("2026-03-01-beta", "not a valid api-version"),
        ("", "not a valid api-version"),
    ] {
        let (status, body) = svc.call("GET", &format!("/keys/ver?api-version={version}"), None);
        assert_bad_parameter(status, &body, says, version);
        assert_eq!(
            body["error"].as_object().map(|e| e.len()),
            Some(2),
            "{{\"error\":{{\"code\",\"message\"}}}} only: {body}"
        );
    }
    let (status, body) = svc.call("GET", "/keys/ver", None);
    assert_bad_parameter(
        status,
        &body,
        "api-version query parameter is required",
        "none",
    );
    // A refused version changes nothing.
    let (status, body) = svc.call(
        "POST",
        "/keys/nothing/create?api-version=latest",
        Some(r#"{"kty":"EC-HSM","crv":"P-256"}"#),
    );
    assert_bad_parameter(
        status,
        &body,
        "latest",
        "a create under a malformed version",
    );
    let (status, _) = svc.call("GET", &format!("/keys/nothing?{API}"), None);
    assert_eq!(status, 404);
}
