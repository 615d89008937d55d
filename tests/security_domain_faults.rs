//! The security domain's other steps under faults: a kill right after a download made its
//! objects, while a second download gives up the first, and right after a transfer key pair
//! was made; and a token that refuses every write (its files made immutable) under downloads
//! that then fail with an error rather than a crash. Each restart starts, ends not activated or
//! awaiting confirmation as the last committed step left it, and a download then activates
//! the HSM; the token finally holds exactly one domain's three objects. One test in this
//! binary: it reads the token directly at the end. Needs root (chattr).

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{API, Service};
use openssl::x509::X509;
use serde_json::{Value, json};

const SD_API: &str = "api-version=7.5";

fn download_body(certs: &[X509]) -> String {
    let list: Vec<Value> = certs
        .iter()
        .map(|c| json!({"kty": "RSA", "x5c": [STANDARD.encode(c.to_der().expect("der"))]}))
        .collect();
    json!({"certificates": list, "required": 2}).to_string()
}

fn download(svc: &Service, certs: &[X509]) -> (u16, Value) {
    svc.call(
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(certs)),
    )
}

fn assert_not_active(svc: &Service) {
    let (status, body) = svc.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(status, 409, "{body}");
}

/// Makes every file and directory of the data dir's token immutable (`frozen`) or not.
fn freeze(dir: &Path, frozen: bool) {
    let mut paths = common::token_files(dir);
    if let Some(parent) = paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
    {
        paths.push(parent);
    }
    for path in paths {
        let done = Command::new("chattr")
            .arg(if frozen { "+i" } else { "-i" })
            .arg(&path)
            .status()
            .expect("chattr runs");
        assert!(done.success(), "chattr on {} (needs root)", path.display());
    }
}

#[test]
fn downloads_and_transfer_keys_leave_the_old_state_or_the_new_after_kills_and_token_faults() {
    let certs: Vec<X509> = (1..=3)
        .map(|i| {
            p11vault::secdomain::generate_wrapping_key(&format!("admin {i}"))
                .expect("key")
                .1
        })
        .collect();
    let (_tmp, dir) = common::not_activated_data_dir();
    let svc = Service::start(&dir);
    svc.stop();

    // Killed once a download made its objects, before it recorded them as awaiting.
    let armed = Service::start_with(
        &dir,
        &[("P11VAULT_TEST_FAILPOINTS", "domain.download.after_objects")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    armed.request_dies_with_the_process(
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs)),
        "after the download's objects",
    );
    let svc = Service::start(&dir);
    assert_not_active(&svc);
    let (status, _) = svc.call(
        "GET",
        &format!("/securitydomain/download/pending?{SD_API}"),
        None,
    );
    assert_eq!(status, 404, "nothing awaits confirmation");
    // A download awaiting confirmation, then one that gives it up, killed half-way.
    let (status, body) = download(&svc, &certs);
    assert_eq!(status, 202, "{body}");
    svc.stop();
    let armed = Service::start_with(
        &dir,
        &[("P11VAULT_TEST_FAILPOINTS", "domain.discard.after_record")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    armed.request_dies_with_the_process(
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs)),
        "while giving up the first download",
    );
    let svc = Service::start(&dir);
    assert_not_active(&svc);
    svc.stop();

    // Killed once a transfer key pair was made, before it was recorded.
    let armed = Service::start_with(
        &dir,
        &[("P11VAULT_TEST_FAILPOINTS", "domain.transfer.after_pair")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    armed.request_dies_with_the_process(
        "GET",
        &format!("/securitydomain/upload?{SD_API}"),
        None,
        "after the transfer key pair",
    );
    let svc = Service::start(&dir);
    let first = common::transfer_certificate_pem(&svc);
    assert_eq!(common::transfer_certificate_pem(&svc), first);

    // A token that refuses every write: downloads fail with an error (not a crash), one of
    // them while giving up an earlier one; none may leave objects recorded nowhere.
    let (status, body) = download(&svc, &certs);
    assert_eq!(status, 202, "{body}");
    freeze(&dir, true);
    for _ in 0..2 {
        let (status, body) = download(&svc, &certs);
        assert!(
            status >= 500,
            "a download on a token that cannot write: {status} {body}"
        );
    }
    freeze(&dir, false);
    svc.stop();
    let svc = Service::start(&dir);
    assert_not_active(&svc);
    let (status, body) = download(&svc, &certs);
    assert_eq!(status, 202, "{body}");
    let (status, done) = svc.call(
        "GET",
        &format!("/securitydomain/download/pending?{SD_API}"),
        None,
    );
    assert_eq!(
        (status, &done["status"]),
        (200, &json!("Success")),
        "{done}"
    );
    svc.create("works", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.stop();
    // The transfer key issued earlier is kept only while the HSM is not active: the next
    // start destroys it.
    let svc = Service::start(&dir);
    svc.stop();

    // Exactly one domain's three objects, no transfer key, nothing else of the domain's.
    assert_eq!(common::domain_object_roles(&dir), ["mac", "unwrap", "wrap"]);
}
