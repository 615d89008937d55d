//! Crash safety of a security domain upload (recovery): the process is killed at every step
//! of an upload (failpoints between the token calls) and at random instants (inside them);
//! each restart ends with the HSM not activated and its transfer key intact, so the same blob
//! uploads again, or with the recovered domain in force — never half of each. Afterwards the
//! token holds exactly the recovered domain's three objects and no transfer key. One test in
//! this binary: it reads the token directly at the end.

mod common;

use std::time::{Duration, Instant};

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

fn upload_body(blob: &str) -> String {
    json!({ "value": blob }).to_string()
}

/// After a restart: either not activated with the same transfer key (`false`), or active with
/// the recovered domain, which opens `key_blob` (`true`).
fn settled(svc: &Service, exchange: &[u8], key_blob: &str) -> bool {
    let (status, body) = svc.call("GET", &format!("/keys?{API}"), None);
    match status {
        409 => {
            assert_eq!(
                body["error"]["innererror"]["code"], "HSMNotActivated",
                "{body}"
            );
            assert_eq!(
                common::transfer_certificate_pem(svc),
                exchange,
                "the transfer key survived"
            );
            false
        }
        200 => {
            let (status, restored) = svc.call(
                "POST",
                &format!("/keys/restore?{API}"),
                Some(&json!({ "value": key_blob }).to_string()),
            );
            assert!(
                status == 200 || (status == 409 && restored.to_string().contains("exists")),
                "the recovered domain opens the old HSM's backup: {status} {restored}"
            );
            true
        }
        other => panic!("after a crash: {other} {body}"),
    }
}

#[test]
fn a_crash_at_any_point_of_an_upload_leaves_the_old_state_or_the_recovered_domain() {
    let keys: Vec<_> = (1..=3)
        .map(|i| p11vault::secdomain::generate_wrapping_key(&format!("admin {i}")).expect("key"))
        .collect();
    let certs: Vec<X509> = keys.iter().map(|(_, c)| c.clone()).collect();
    let (_tmp_a, dir_a) = common::not_activated_data_dir();
    let a = Service::start(&dir_a);
    let (status, answer) = a.call(
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs)),
    );
    assert_eq!(status, 202, "{answer}");
    let sd_file = answer["value"].as_str().expect("file").to_owned();
    assert_eq!(
        a.call(
            "GET",
            &format!("/securitydomain/download/pending?{SD_API}"),
            None
        )
        .0,
        200
    );
    a.create("old", r#"{"kty":"EC","crv":"P-256"}"#);
    let (_, blob) = a.call("POST", &format!("/keys/old/backup?{API}"), None);
    let key_blob = blob["value"].as_str().expect("blob").to_owned();
    a.stop();
    let two = [keys[0].clone(), keys[1].clone()];

    // At every step boundary of an upload.
    let (_tmp_b, dir_b) = common::not_activated_data_dir();
    let b = Service::start(&dir_b);
    let exchange = common::transfer_certificate_pem(&b);
    let restore =
        p11vault::secdomain::restore_blob_offline(&sd_file, &exchange, &two).expect("blob");
    b.stop();
    for point in [
        "domain.after_candidate",
        "domain.after_wrap_half",
        "domain.after_unwrap_half",
        "domain.after_install",
    ] {
        let armed = Service::start_with(&dir_b, &[("P11VAULT_TEST_FAILPOINTS", point)])
            .unwrap_or_else(|f| panic!("{f:?}"));
        armed.request_dies_with_the_process(
            "POST",
            &format!("/securitydomain/upload?{SD_API}"),
            Some(&upload_body(&restore)),
            point,
        );
        let b = Service::start(&dir_b);
        assert!(!settled(&b, &exchange, &key_blob), "{point}: not activated");
        b.stop();
    }
    let armed = Service::start_with(
        &dir_b,
        &[("P11VAULT_TEST_FAILPOINTS", "domain.upload.after_commit")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    armed.request_dies_with_the_process(
        "POST",
        &format!("/securitydomain/upload?{SD_API}"),
        Some(&upload_body(&restore)),
        "after the commit",
    );
    let b = Service::start(&dir_b);
    assert!(settled(&b, &exchange, &key_blob), "committed: recovered");
    b.stop();

    // At random instants, inside the token calls too, on another new HSM.
    let (_tmp_c, dir_c) = common::not_activated_data_dir();
    let c = Service::start(&dir_c);
    let exchange_c = common::transfer_certificate_pem(&c);
    let restore_c =
        p11vault::secdomain::restore_blob_offline(&sd_file, &exchange_c, &two).expect("blob");

    let (status, _) = c.call("GET", &format!("/keys?{API}"), None);
    assert_eq!(status, 409);
    c.stop();
    // How long an upload takes here, measured on a throwaway HSM.
    let (_tmp_m, dir_m) = common::not_activated_data_dir();
    let m = Service::start(&dir_m);
    let exchange_m = common::transfer_certificate_pem(&m);
    let restore_m =
        p11vault::secdomain::restore_blob_offline(&sd_file, &exchange_m, &two).expect("blob");
    let t0 = Instant::now();
    let (status, _) = m.call(
        "POST",
        &format!("/securitydomain/upload?{SD_API}"),
        Some(&upload_body(&restore_m)),
    );
    assert_eq!(status, 202);
    let upload_time = t0.elapsed();
    m.stop();
    let mut recovered = false;
    let mut seed = std::process::id() as u64;
    for round in 0..6 {
        let c = Service::start(&dir_c);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_micros((seed >> 33) % (upload_time.as_micros() as u64 + 1));
        let url = format!("{}/securitydomain/upload?{SD_API}", c.url);
        let token = c.token.clone();
        let agent = common::agent_trusting(&dir_c.join("ca.pem"));
        let body = upload_body(&restore_c);
        let sender = std::thread::spawn(move || {
            let _ = agent
                .post(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .set("Content-Type", "application/json")
                .send_string(&body);
        });
        std::thread::sleep(delay);
        c.kill();
        let _ = sender.join();
        let c = Service::start(&dir_c);
        recovered = settled(&c, &exchange_c, &key_blob);
        c.stop();
        if recovered {
            eprintln!("recovered in round {round} (killed after {delay:?} of {upload_time:?})");
            break;
        }
    }
    if !recovered {
        let c = Service::start(&dir_c);
        let (status, _) = c.call(
            "POST",
            &format!("/securitydomain/upload?{SD_API}"),
            Some(&upload_body(&restore_c)),
        );
        assert_eq!(status, 202, "the same blob uploads after the crashes");
        assert!(settled(&c, &exchange_c, &key_blob));
        c.stop();
    }

    // The token holds exactly one domain's three objects, and no transfer key.
    assert_eq!(
        common::domain_object_roles(&dir_c),
        ["mac", "unwrap", "wrap"]
    );
}
