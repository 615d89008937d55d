//! The security domain end to end over real HTTPS and a real token (SoftHSM2 or kryoptic):
//! a new HSM serves nothing but its security domain until a download is confirmed; every bad
//! download and upload is refused and changes nothing; disaster recovery onto a brand-new
//! token with two of three administrators' keys brings back every key, version, deletion,
//! tag, assignment and setting of a full backup, and the HSMs of one domain read each other's
//! backups both ways. The administrators' offline work (restore-blob) is done with the
//! library's own `secdomain` functions here; `tests/az/` does it with az.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{API, Service, data_dir};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use serde_json::{Value, json};

const SD_API: &str = "api-version=7.5";
const CONTAINER: &str = "https://backupaccount.blob.core.windows.net/backups";

type WrappingKey = (PKey<Private>, X509);

fn wrapping_keys(n: usize) -> Vec<WrappingKey> {
    (1..=n)
        .map(|i| {
            p11vault::secdomain::generate_wrapping_key(&format!("test administrator {i}"))
                .expect("a wrapping key")
        })
        .collect()
}

/// The download body az sends for these certificates.
fn download_body(keys: &[&X509], required: u64) -> Value {
    let certificates: Vec<Value> = keys
        .iter()
        .map(|cert| {
            let der = cert.to_der().expect("DER");
            let rsa = cert.public_key().expect("key").rsa().expect("RSA");
            json!({
                "x5c": [STANDARD.encode(&der)],
                "x5t#S256": URL_SAFE_NO_PAD.encode(openssl::sha::sha256(&der)),
                "key_ops": ["verify", "encrypt", "wrapKey"],
                "kty": "RSA",
                "alg": "RSA-OAEP-256",
                "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
                "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
            })
        })
        .collect();
    json!({"certificates": certificates, "required": required})
}

/// A request returning status, the `Azure-AsyncOperation` header and the JSON body.
fn call_with_link(
    svc: &Service,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Option<String>, Value) {
    let agent = common::agent_trusting(&svc.dir.join("ca.pem"));
    let req = agent
        .request(method, &format!("{}{path}", svc.url))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json");
    let result = match body {
        Some(b) => req.send_string(&b.to_string()),
        None => req.call(),
    };
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = response.status();
    let link = response.header("azure-asyncoperation").map(str::to_owned);
    let text = response.into_string().expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, link, json)
}

/// Downloads the domain and confirms it with the first status poll; returns the file's text.
fn download(svc: &Service, keys: &[WrappingKey], required: u64) -> String {
    let certs: Vec<&X509> = keys.iter().map(|(_, c)| c).collect();
    let body = download_body(&certs, required);
    let (status, link, answer) = call_with_link(
        svc,
        &svc.token,
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&body),
    );
    assert_eq!(status, 202, "{answer}");
    let link = link.expect("an Azure-AsyncOperation header");
    assert_eq!(
        link,
        format!("{}/securitydomain/download/pending?{SD_API}", svc.url)
    );
    let file = answer["value"]
        .as_str()
        .expect("the file as a string")
        .to_owned();
    let poll = link.strip_prefix(&svc.url).expect("under the service");
    let (status, status_body) = svc.call("GET", poll, None);
    assert_eq!(status, 200, "{status_body}");
    assert_eq!(status_body["status"], "Success", "{status_body}");
    file
}

fn restore_blob(sd_file: &str, exchange: &[u8], keys: &[&WrappingKey]) -> String {
    let keys: Vec<WrappingKey> = keys.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
    p11vault::secdomain::restore_blob_offline(sd_file, exchange, &keys).expect("a restore blob")
}

fn upload(svc: &Service, blob: &str) -> (u16, Option<String>, Value) {
    call_with_link(
        svc,
        &svc.token,
        "POST",
        &format!("/securitydomain/upload?{SD_API}"),
        Some(&json!({ "value": blob })),
    )
}

/// Uploads and follows the status link to its end.
fn recover(svc: &Service, blob: &str) {
    let (status, link, body) = upload(svc, blob);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "InProgress", "{body}");
    let link = link.expect("an Azure-AsyncOperation header");
    let (status, done) = svc.call("GET", link.strip_prefix(&svc.url).expect("ours"), None);
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "Success", "{done}");
}

/// Whether key operations are refused as on an HSM that is not activated.
fn assert_not_activated(svc: &Service) {
    for (method, path, body) in [
        ("POST", "/keys/probe/create", Some(r#"{"kty":"EC"}"#)),
        ("GET", "/keys", None),
        ("POST", "/rng", Some(r#"{"count":8}"#)),
        ("GET", "/deletedkeys", None),
    ] {
        let (status, answer) = svc.call(method, &format!("{path}?{API}"), body);
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "Conflict", "{answer}");
        assert_eq!(answer["error"]["innererror"]["code"], "HSMNotActivated");
    }
}

fn version_of(bundle: &Value) -> String {
    bundle["key"]["kid"]
        .as_str()
        .and_then(|k| k.rsplit('/').next())
        .expect("a kid")
        .to_owned()
}

fn wait_for_job(svc: &Service, status_url: &str) -> Value {
    let path = status_url.strip_prefix(&svc.url).expect("ours").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = svc.call("GET", &path, None);
        assert_eq!(status, 200, "{body}");
        if body["status"] != "InProgress" {
            return body;
        }
        assert!(Instant::now() < deadline, "the job did not end: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn full_backup(svc: &Service) -> String {
    let (status, link, body) = call_with_link(
        svc,
        &svc.token,
        "POST",
        &format!("/backup?{SD_API}"),
        Some(&json!({"storageResourceUri": CONTAINER, "token": "sas"})),
    );
    assert_eq!(status, 202, "{body}");
    let done = wait_for_job(svc, &link.expect("a status link"));
    assert_eq!(done["status"], "Succeeded", "{done}");
    let url = done["azureStorageBlobContainerUri"]
        .as_str()
        .expect("folder");
    url.rsplit('/').next().expect("a folder").to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn sha256_b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(openssl::sha::sha256(data))
}

#[test]
fn a_new_hsm_serves_only_its_security_domain_until_a_download_is_confirmed() {
    let (_tmp, dir) = common::not_activated_data_dir();
    let svc = Service::start(&dir);
    assert_not_activated(&svc);
    // What activating needs is served: role assignments, the health endpoint.
    let (status, _) = svc.call(
        "GET",
        "/providers/Microsoft.Authorization/roleAssignments?api-version=7.4",
        None,
    );
    assert_eq!(status, 200);
    let (status, pending) = svc.call(
        "GET",
        &format!("/securitydomain/download/pending?{SD_API}"),
        None,
    );
    assert_eq!(status, 404, "{pending}");

    let keys = wrapping_keys(4);
    let certs: Vec<&X509> = keys.iter().map(|(_, c)| c).collect();
    let small = wrapping_keys(1);
    let weak = {
        let rsa = openssl::rsa::Rsa::generate(1024).expect("rsa");
        let pkey = PKey::from_rsa(rsa).expect("pkey");
        let mut b = openssl::x509::X509Builder::new().expect("builder");
        b.set_pubkey(&pkey).expect("key");
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).expect("t"))
            .expect("nb");
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).expect("t"))
            .expect("na");
        b.sign(&pkey, openssl::hash::MessageDigest::sha256())
            .expect("sign");
        b.build()
    };
    let mut tampered_thumbprint = download_body(&certs[..3], 2);
    tampered_thumbprint["certificates"][1]["x5t#S256"] = json!(sha256_b64(b"another"));
    let mut wrong_modulus = download_body(&certs[..3], 2);
    wrong_modulus["certificates"][0]["n"] = wrong_modulus["certificates"][1]["n"].clone();
    let mut not_a_certificate = download_body(&certs[..3], 2);
    not_a_certificate["certificates"][2]["x5c"] = json!([STANDARD.encode(b"not DER")]);
    let refused = [
        ("two certificates", download_body(&certs[..2], 2)),
        ("eleven certificates", download_body(&[certs[0]; 11], 2)),
        ("a quorum over the holders", download_body(&certs[..3], 4)),
        ("a quorum of one", download_body(&certs[..3], 1)),
        ("a quorum of eleven", download_body(&certs[..3], 11)),
        (
            "a duplicate",
            download_body(&[certs[0], certs[1], certs[0]], 2),
        ),
        (
            "a 1024-bit key",
            download_body(&[certs[0], certs[1], &weak], 2),
        ),
        ("a wrong thumbprint", tampered_thumbprint),
        ("a wrong modulus", wrong_modulus),
        ("no certificate", not_a_certificate),
        ("no list", json!({"required": 2})),
    ];
    let _ = small;
    for (what, body) in refused {
        let (status, _, answer) = call_with_link(
            &svc,
            &svc.token,
            "POST",
            &format!("/securitydomain/download?{SD_API}"),
            Some(&body),
        );
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "BadParameter", "{what}: {answer}");
        assert!(
            !answer["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}"
        );
    }
    // A principal without the Administrator role cannot download it.
    let (_, officer) = svc.new_principal("officer", &["Managed HSM Crypto Officer"], "/");
    let (status, _, answer) = call_with_link(
        &svc,
        &officer,
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs[..3], 2)),
    );
    assert_eq!(status, 403, "{answer}");
    // Nothing of that changed anything.
    assert_not_activated(&svc);
    let (status, _) = svc.call(
        "GET",
        &format!("/securitydomain/download/pending?{SD_API}"),
        None,
    );
    assert_eq!(status, 404);

    // A download: the file is final in the 202, but keys wait for the confirmation.
    let (status, link, answer) = call_with_link(
        &svc,
        &svc.token,
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs[..3], 2)),
    );
    assert_eq!(status, 202, "{answer}");
    let file: Value = serde_json::from_str(answer["value"].as_str().expect("a string"))
        .expect("the file is JSON text");
    assert_eq!(file["version"], 2);
    assert_eq!(file["SharedKeys"]["required"], 2);
    assert_eq!(file["SharedKeys"]["key_algorithm"], "shamir_share");
    let shares = file["SharedKeys"]["enc_shares"].as_array().expect("shares");
    assert_eq!(shares.len(), 3);
    for (share, cert) in shares.iter().zip(&certs) {
        assert_eq!(share["x5t_256"], sha256_b64(&cert.to_der().expect("der")));
    }
    assert_eq!(file["EncData"]["kdf"], "sp108_kdf");
    assert_not_activated(&svc);
    let poll = link.expect("a link");
    let (status, done) = svc.call("GET", poll.strip_prefix(&svc.url).expect("ours"), None);
    assert_eq!(
        (status, &done["status"]),
        (200, &json!("Success")),
        "{done}"
    );
    assert_eq!(done["status_details"], "The resource is active.");

    // Each security-domain request is in the audit log with its data action and outcome.
    let log = std::fs::read_to_string(dir.join("audit.log")).expect("audit log");
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record"))
        .collect();
    let with = |action: &str, status: u64| {
        records
            .iter()
            .filter(|r| r["action"] == action && r["status"] == status)
            .count()
    };
    assert_eq!(
        with(
            "Microsoft.KeyVault/managedHsm/securitydomain/download/action",
            202
        ),
        1
    );
    assert!(
        with(
            "Microsoft.KeyVault/managedHsm/securitydomain/download/action",
            400
        ) >= 11
    );
    assert_eq!(
        with(
            "Microsoft.KeyVault/managedHsm/securitydomain/download/action",
            403
        ),
        1
    );
    assert!(
        with(
            "Microsoft.KeyVault/managedHsm/securitydomain/download/read",
            200
        ) >= 1
    );

    // Active: keys work, and the domain is neither downloaded nor replaced again.
    svc.create("after", r#"{"kty":"EC","crv":"P-256"}"#);
    let (status, _, answer) = call_with_link(
        &svc,
        &svc.token,
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs[..3], 2)),
    );
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["innererror"]["code"], "HSMAlreadyActivated");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("reshare")
    );
    let (status, answer) = svc.call("GET", &format!("/securitydomain/upload?{SD_API}"), None);
    assert_eq!(status, 409, "{answer}");
    let (status, _, answer) = upload(&svc, "{}");
    assert_eq!(status, 409, "{answer}");
    svc.stop();

    // A restart keeps it active.
    let svc = Service::start(&dir);
    let (status, _) = svc.call("GET", &format!("/keys/after?{API}"), None);
    assert_eq!(status, 200);
    svc.stop();
}

#[test]
fn a_download_whose_answer_was_lost_is_made_again_and_the_first_is_given_up() {
    let (_tmp, dir) = common::not_activated_data_dir();
    let svc = Service::start(&dir);
    let keys = wrapping_keys(3);
    let certs: Vec<&X509> = keys.iter().map(|(_, c)| c).collect();
    let post = |svc: &Service| {
        let (status, _, answer) = call_with_link(
            svc,
            &svc.token,
            "POST",
            &format!("/securitydomain/download?{SD_API}"),
            Some(&download_body(&certs, 2)),
        );
        assert_eq!(status, 202, "{answer}");
        answer["value"].as_str().expect("file").to_owned()
    };
    let lost = post(&svc);
    // A restart while it awaits confirmation keeps it awaiting.
    svc.stop();
    let svc = Service::start(&dir);
    assert_not_activated(&svc);
    let kept = post(&svc);
    assert_ne!(lost, kept);
    let (status, done) = svc.call(
        "GET",
        &format!("/securitydomain/download/pending?{SD_API}"),
        None,
    );
    assert_eq!((status, &done["status"]), (200, &json!("Success")));
    let made = svc.create("k", r#"{"kty":"RSA","key_size":2048}"#);
    let (_, blob) = svc.call("POST", &format!("/keys/k/backup?{API}"), None);
    let blob = blob["value"].as_str().expect("a blob").to_owned();
    svc.stop();

    // Only the confirmed file recovers a domain whose backups open; the lost one recovers a
    // domain that reads none of them.
    for (file, opens) in [(&kept, true), (&lost, false)] {
        let (_tmp, other) = common::not_activated_data_dir();
        let b = Service::start(&other);
        let exchange = common::transfer_certificate_pem(&b);
        recover(&b, &restore_blob(file, &exchange, &[&keys[0], &keys[1]]));
        let (status, restored) = b.call(
            "POST",
            &format!("/keys/restore?{API}"),
            Some(&json!({ "value": blob }).to_string()),
        );
        if opens {
            assert_eq!(status, 200, "{restored}");
            assert_eq!(
                restored["key"]["kid"]
                    .as_str()
                    .map(|k| k.rsplit('/').next()),
                made["key"]["kid"].as_str().map(|k| k.rsplit('/').next())
            );
        } else {
            assert_eq!(status, 400, "{restored}");
        }
        b.stop();
    }
}

#[test]
fn disaster_recovery_onto_a_new_token_with_two_of_three_keys_brings_back_everything() {
    let keys = wrapping_keys(3);
    let (_tmp_a, dir_a) = common::not_activated_data_dir();
    let a = Service::start(&dir_a);
    let sd_file = download(&a, &keys, 2);

    // Keys of every kind, several versions, a soft-deleted one, tags, an assignment, purge
    // protection.
    let rsa1 = a.create(
        "rsa",
        r#"{"kty":"RSA","key_size":2048,"tags":{"team":"pay"}}"#,
    );
    let (status, rsa2) = a.call("POST", &format!("/keys/rsa/rotate?{API}"), None);
    assert_eq!(status, 200, "{rsa2}");
    let ec = a.create(
        "ec",
        r#"{"kty":"EC","crv":"P-256","key_ops":["sign","verify"]}"#,
    );
    let aes = a.create("aes", r#"{"kty":"oct","key_size":256}"#);
    a.create("gone", r#"{"kty":"EC","crv":"P-384"}"#);
    let (status, deleted) = a.call("DELETE", &format!("/keys/gone?{API}"), None);
    assert_eq!(status, 200, "{deleted}");
    let (reader, _) = a.new_principal("reader", &["Managed HSM Crypto User"], "/keys/ec");
    let (status, setting) = a.call(
        "PATCH",
        &format!("/settings/EnablePurgeProtection?{API}"),
        Some(r#"{"value":"true"}"#),
    );
    assert_eq!(status, 200, "{setting}");

    // What A made: signatures, ciphertexts, a key backup.
    let digest = URL_SAFE_NO_PAD.encode(openssl::sha::sha256(b"made on A"));
    let sign = |name: &str, version: &str, alg: &str| {
        let (status, out) = a.call(
            "POST",
            &format!("/keys/{name}/{version}/sign?{API}"),
            Some(&json!({"alg": alg, "value": digest}).to_string()),
        );
        assert_eq!(status, 200, "{out}");
        out["value"].as_str().expect("sig").to_owned()
    };
    let rsa_sig_v1 = sign("rsa", &version_of(&rsa1), "RS256");
    let ec_sig = sign("ec", &version_of(&ec), "ES256");
    let (status, rsa_ct) = a.call(
        "POST",
        &format!("/keys/rsa/{}/encrypt?{API}", version_of(&rsa2)),
        Some(
            &json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(b"rsa secret")})
                .to_string(),
        ),
    );
    assert_eq!(status, 200, "{rsa_ct}");
    let (status, aes_ct) = a.call(
        "POST",
        &format!("/keys/aes/{}/encrypt?{API}", version_of(&aes)),
        Some(
            &json!({"alg": "A256GCM", "value": URL_SAFE_NO_PAD.encode(b"aes secret")}).to_string(),
        ),
    );
    assert_eq!(status, 200, "{aes_ct}");
    let (_, ec_blob) = a.call("POST", &format!("/keys/ec/backup?{API}"), None);
    let ec_blob = ec_blob["value"].as_str().expect("blob").to_owned();
    let (_, a_deleted) = a.call("GET", &format!("/deletedkeys/gone?{API}"), None);
    let folder = full_backup(&a);
    a.stop();

    // The site is lost: the backups are kept elsewhere, A's data dir and token are not.
    let kept = tempfile::tempdir().expect("tmp");
    copy_dir(&dir_a.join("backups"), kept.path());
    std::fs::remove_dir_all(&dir_a).expect("A's data dir");
    let kryoptic_a = dir_a.with_extension("kryoptic");
    if kryoptic_a.exists() {
        std::fs::remove_dir_all(&kryoptic_a).expect("A's token");
    }

    // B, a brand-new HSM on a brand-new token, recovers the domain with keys 1 and 3.
    let (_tmp_b, dir_b) = common::not_activated_data_dir();
    let b = Service::start(&dir_b);
    assert_not_activated(&b);
    let exchange = common::transfer_certificate_pem(&b);
    assert_eq!(
        common::transfer_certificate_pem(&b),
        exchange,
        "the same transfer key until an upload"
    );
    let blob = restore_blob(&sd_file, &exchange, &[&keys[0], &keys[2]]);
    recover(&b, &blob);

    // A key backup A made restores at once.
    let (status, restored) = b.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({ "value": ec_blob }).to_string()),
    );
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        restored["key"]["kid"]
            .as_str()
            .map(|k| k.rsplit('/').next()),
        ec["key"]["kid"].as_str().map(|k| k.rsplit('/').next())
    );

    // A's full backup, brought to B's backup store, restores (after B's own full backup).
    full_backup(&b);
    copy_dir(kept.path(), &dir_b.join("backups"));
    let (status, link, body) = call_with_link(
        &b,
        &b.token,
        "PUT",
        &format!("/restore?{SD_API}"),
        Some(
            &json!({"sasTokenParameters": {"storageResourceUri": CONTAINER, "token": "x"},
                     "folderToRestore": folder}),
        ),
    );
    assert_eq!(status, 202, "{body}");
    let done = wait_for_job(&b, &link.expect("a link"));
    assert_eq!(done["status"], "Succeeded", "{done}");
    // The role assignments are A's now, for A's principals; B's first administrator kept the
    // Administrator role, and the operator gives B's principals the key roles again.
    let admin = b.admin_principal();
    assert!(
        admin["roles"]
            .to_string()
            .contains("Managed HSM Administrator"),
        "{admin}"
    );
    assert!(
        !admin["roles"].to_string().contains("Crypto User"),
        "{admin}"
    );
    let id = admin["id"].as_str().expect("id").to_owned();
    for role in ["Managed HSM Crypto User", "Managed HSM Crypto Officer"] {
        b.cli(&["role", "assign", "--principal", &id, "--role", role]);
    }

    // Every key works: A's signatures verify, A's ciphertexts decrypt, on B.
    let verify = |name: &str, version: &str, alg: &str, sig: &str| {
        let (status, out) = b.call(
            "POST",
            &format!("/keys/{name}/{version}/verify?{API}"),
            Some(&json!({"alg": alg, "digest": digest, "value": sig}).to_string()),
        );
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["value"], true, "{name} {version}");
    };
    verify("rsa", &version_of(&rsa1), "RS256", &rsa_sig_v1);
    verify("ec", &version_of(&ec), "ES256", &ec_sig);
    let (status, pt) = b.call(
        "POST",
        &format!("/keys/rsa/{}/decrypt?{API}", version_of(&rsa2)),
        Some(&json!({"alg": "RSA-OAEP-256", "value": rsa_ct["value"]}).to_string()),
    );
    assert_eq!(
        (status, pt["value"].as_str()),
        (200, Some(URL_SAFE_NO_PAD.encode(b"rsa secret").as_str())),
        "{pt}"
    );
    let (status, pt) = b.call(
        "POST",
        &format!("/keys/aes/{}/decrypt?{API}", version_of(&aes)),
        Some(&json!({"alg": "A256GCM", "value": aes_ct["value"], "iv": aes_ct["iv"], "tag": aes_ct["tag"]}).to_string()),
    );
    assert_eq!(
        (status, pt["value"].as_str()),
        (200, Some(URL_SAFE_NO_PAD.encode(b"aes secret").as_str())),
        "{pt}"
    );
    // Versions, tags, the deleted key with its dates, the assignment, purge protection.
    let (_, versions) = b.call("GET", &format!("/keys/rsa/versions?{API}"), None);
    assert_eq!(
        versions["value"].as_array().map(Vec::len),
        Some(2),
        "{versions}"
    );
    let (_, rsa_now) = b.call("GET", &format!("/keys/rsa?{API}"), None);
    assert_eq!(rsa_now["key"]["n"], rsa2["key"]["n"]);
    let (_, rsa_first) = b.call(
        "GET",
        &format!("/keys/rsa/{}?{API}", version_of(&rsa1)),
        None,
    );
    assert_eq!(rsa_first["tags"]["team"], "pay");
    let (status, b_deleted) = b.call("GET", &format!("/deletedkeys/gone?{API}"), None);
    assert_eq!(status, 200, "{b_deleted}");
    assert_eq!(b_deleted["deletedDate"], a_deleted["deletedDate"]);
    assert_eq!(
        b_deleted["scheduledPurgeDate"],
        a_deleted["scheduledPurgeDate"]
    );
    let (status, _) = b.call("GET", &format!("/keys/gone?{API}"), None);
    assert_eq!(status, 404);
    let (_, assignments) = b.call(
        "GET",
        "/keys/ec/providers/Microsoft.Authorization/roleAssignments?api-version=7.4",
        None,
    );
    assert!(assignments.to_string().contains(&reader), "{assignments}");
    let (_, setting) = b.call(
        "GET",
        &format!("/settings/EnablePurgeProtection?{API}"),
        None,
    );
    assert_eq!(setting["value"], "true", "{setting}");
    let (status, refused) = b.call("DELETE", &format!("/deletedkeys/gone?{API}"), None);
    assert_eq!(status, 403, "purge protection holds: {refused}");
    b.stop();
}

#[test]
fn hsms_of_one_domain_read_each_others_backups_and_bad_uploads_change_nothing() {
    let keys = wrapping_keys(3);
    let (_tmp_a, dir_a) = common::not_activated_data_dir();
    let a = Service::start(&dir_a);
    let sd_file = download(&a, &keys, 2);
    // Another HSM whose domain the same administrators hold.
    let (_tmp_o, dir_o) = common::not_activated_data_dir();
    let other = Service::start(&dir_o);
    let other_file = download(&other, &keys, 2);
    other.stop();

    let (_tmp_b, dir_b) = common::not_activated_data_dir();
    let b = Service::start(&dir_b);
    // No transfer key issued yet.
    let (status, _, answer) = upload(
        &b,
        &restore_blob(
            &sd_file,
            &transfer_certificate_of_new(&keys),
            &[&keys[0], &keys[1]],
        ),
    );
    assert_eq!(status, 409, "{answer}");
    let exchange = common::transfer_certificate_pem(&b);

    // Offline refusals: too few keys, shares of two domains mixed.
    let one: Vec<WrappingKey> = vec![(keys[0].0.clone(), keys[0].1.clone())];
    assert!(p11vault::secdomain::restore_blob_offline(&sd_file, &exchange, &one).is_err());
    let mixed = mix_shares(&sd_file, &other_file);
    let two: Vec<WrappingKey> = keys[..2]
        .iter()
        .map(|(k, c)| (k.clone(), c.clone()))
        .collect();
    assert!(p11vault::secdomain::restore_blob_offline(&mixed, &exchange, &two).is_err());

    // Server refusals: a blob for another HSM's transfer key, a tampered blob, garbage.
    let good = restore_blob(&sd_file, &exchange, &[&keys[0], &keys[1]]);
    let foreign = restore_blob(
        &sd_file,
        &transfer_certificate_of_new(&keys),
        &[&keys[0], &keys[1]],
    );
    let refusals = [
        ("another HSM's transfer key", foreign),
        ("a tampered item", tamper(&good, "EncData")),
        ("a tampered wrapped key", tamper(&good, "WrappedKey")),
        ("not JSON", "not json".to_owned()),
        ("the wrong shape", r#"{"EncData": 1}"#.to_owned()),
        ("a download file", sd_file.clone()),
    ];
    for (what, blob) in refusals {
        let (status, _, answer) = upload(&b, &blob);
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "BadParameter", "{what}");
        assert_not_activated(&b);
    }
    let (_, officer) = b.new_principal("officer", &["Managed HSM Crypto Officer"], "/");
    let (status, _, answer) = call_with_link(
        &b,
        &officer,
        "POST",
        &format!("/securitydomain/upload?{SD_API}"),
        Some(&json!({ "value": good })),
    );
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        common::transfer_certificate_pem(&b),
        exchange,
        "the refusals kept the transfer key"
    );
    assert_not_activated(&b);

    recover(&b, &good);
    let (status, _, answer) = upload(&b, &good);
    assert_eq!(status, 409, "an upload while active: {answer}");

    // Both ways: B reads A's backups and A reads B's.
    let from_a = a.create("from-a", r#"{"kty":"RSA","key_size":2048}"#);
    let from_b = b.create("from-b", r#"{"kty":"EC","crv":"P-256"}"#);
    let blob_of = |svc: &Service, name: &str| {
        let (status, out) = svc.call("POST", &format!("/keys/{name}/backup?{API}"), None);
        assert_eq!(status, 200, "{out}");
        out["value"].as_str().expect("blob").to_owned()
    };
    let (a_blob, b_blob) = (blob_of(&a, "from-a"), blob_of(&b, "from-b"));
    for (svc, blob, made) in [(&b, &a_blob, &from_a), (&a, &b_blob, &from_b)] {
        let (status, restored) = svc.call(
            "POST",
            &format!("/keys/restore?{API}"),
            Some(&json!({ "value": blob }).to_string()),
        );
        assert_eq!(status, 200, "{restored}");
        assert_eq!(restored["key"]["x"], made["key"]["x"]);
        assert_eq!(restored["key"]["n"], made["key"]["n"]);
    }
    a.stop();
    b.stop();
}

/// A certificate as a transfer key of some other HSM would have.
fn transfer_certificate_of_new(_keys: &[WrappingKey]) -> Vec<u8> {
    let (_, cert) = p11vault::secdomain::generate_wrapping_key("another HSM").expect("cert");
    cert.to_pem().expect("pem")
}

/// Flips one character of the first compact JWE under `member` of a restore blob.
fn tamper(blob: &str, member: &str) -> String {
    let mut v: Value = serde_json::from_str(blob).expect("blob JSON");
    let jwe = if member == "EncData" {
        &mut v["EncData"]["data"][0]["compact_jwe"]
    } else {
        &mut v["WrappedKey"]["enc_key"]
    };
    let text = jwe.as_str().expect("JWE").to_owned();
    // A character inside the ciphertext (the fourth part).
    let start = text.match_indices('.').nth(2).expect("parts").0 + 3;
    let mut bytes = text.into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    *jwe = json!(String::from_utf8(bytes).expect("ascii"));
    v.to_string()
}

/// A security-domain file with the first share of `a` and the rest of `b`'s: the shares of two
/// domains, matched by the same administrators' thumbprints.
fn mix_shares(a: &str, b: &str) -> String {
    let a: Value = serde_json::from_str(a).expect("json");
    let mut b: Value = serde_json::from_str(b).expect("json");
    b["SharedKeys"]["enc_shares"][0] = a["SharedKeys"]["enc_shares"][0].clone();
    b.to_string()
}

#[test]
fn the_embedded_default_activates_itself_and_its_files_recover_another_hsm() {
    // The default data dir (SoftHSM2 embedded; kryoptic as the harness configures it, with
    // auto_activate = true) is active at once and writes its domain and all three keys.
    let (_tmp, dir) = data_dir();
    let a = Service::start(&dir);
    a.create("k", r#"{"kty":"EC","crv":"P-256"}"#);
    let (_, blob) = a.call("POST", &format!("/keys/k/backup?{API}"), None);
    let blob = blob["value"].as_str().expect("blob").to_owned();
    assert!(
        a.log().contains("AUTOMATICALLY ACTIVATED"),
        "the log says so loudly"
    );
    let files = dir.join("security-domain");
    let sd_file = std::fs::read_to_string(files.join("security-domain.json")).expect("the file");
    let keys: Vec<WrappingKey> = (1..=3)
        .map(|n| {
            let pem = std::fs::read(files.join(format!("wrapping-key-{n}.pem"))).expect("key");
            let cer = std::fs::read(files.join(format!("wrapping-key-{n}.cer"))).expect("cert");
            (
                PKey::private_key_from_pem(&pem).expect("PEM key"),
                X509::from_pem(&cer).expect("PEM cert"),
            )
        })
        .collect();
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(&files).expect("dir").flatten() {
            let mode = entry.metadata().expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", entry.path().display());
        }
    }
    let file: Value = serde_json::from_str(&sd_file).expect("JSON");
    assert_eq!(file["SharedKeys"]["required"], 2);
    // Restarts keep the same domain and files.
    a.stop();
    let a = Service::start(&dir);
    assert_eq!(
        std::fs::read_to_string(files.join("security-domain.json")).expect("file"),
        sd_file
    );
    a.stop();

    let (_tmp_b, dir_b) = common::not_activated_data_dir();
    let b = Service::start(&dir_b);
    let exchange = common::transfer_certificate_pem(&b);
    recover(
        &b,
        &restore_blob(&sd_file, &exchange, &[&keys[1], &keys[2]]),
    );
    let (status, restored) = b.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({ "value": blob }).to_string()),
    );
    assert_eq!(status, 200, "{restored}");
    b.stop();
}

#[test]
fn a_data_dir_an_older_release_activated_keeps_working_and_refuses_a_download() {
    let (_tmp, dir) = data_dir();
    let a = Service::start(&dir);
    a.create("old", r#"{"kty":"EC","crv":"P-256"}"#);
    a.stop();
    // What a data dir initialised by an earlier release has: no activation state recorded.
    {
        let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("db");
        db.execute(
            "DELETE FROM meta WHERE k IN ('activation', 'security_domain_source')",
            [],
        )
        .expect("delete");
    }
    let a = Service::start(&dir);
    let (status, _) = a.call("GET", &format!("/keys/old?{API}"), None);
    assert_eq!(status, 200);
    let keys = wrapping_keys(3);
    let certs: Vec<&X509> = keys.iter().map(|(_, c)| c).collect();
    let (status, _, answer) = call_with_link(
        &a,
        &a.token,
        "POST",
        &format!("/securitydomain/download?{SD_API}"),
        Some(&download_body(&certs, 2)),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("inside the token"),
        "{answer}"
    );
    a.stop();
}
