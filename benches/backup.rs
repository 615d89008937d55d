//! Backups against the raw token, in one run on one token (`cargo bench --bench backup`,
//! run by `scripts/bench.sh` after the service benchmark).
//!
//! Raw: cryptoki in this process on the service's own token (SoftHSM2 or kryoptic), the work a backup needs
//! from the token — `C_WrapKey` of every key version under the security domain's wrap half, and
//! for a key blob also a content key, its wrap and an AES-GCM seal; for a restore `C_UnwrapKey`
//! of every version with the domain's unwrap half into a token object, and its destruction
//! (a full restore destroys the old objects and makes new ones). Service: the release binary over HTTPS on
//! loopback: key backups one after another, then a full backup and a full restore of
//! `BENCH_BACKUP_KEYS` keys (default 1,000: 80% EC P-256, 10% RSA-2048, 10% AES-256), timed from
//! the start request to the status `Succeeded`. Printed as Markdown for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde_json::{Value, json};

use common::{API, Service, data_dir};

const CONTAINER: &str = "https://bench.blob.core.windows.net/bench";

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys: u64 = std::env::var("BENCH_BACKUP_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let made = Instant::now();
    fill(&svc, keys);
    eprintln!(
        "created {keys} keys in {:.1} s",
        made.elapsed().as_secs_f64()
    );

    // ----- raw ---------------------------------------------------------------------------
    let (_ctx, session) = common::open_token_as_user(&dir);
    let wrap_half = domain_half(&session, "/wrap");
    let unwrap_half = domain_half(&session, "/unwrap");
    let secrets: Vec<(ObjectHandle, ObjectClass, KeyType)> = [
        (ObjectClass::PRIVATE_KEY, KeyType::EC),
        (ObjectClass::PRIVATE_KEY, KeyType::RSA),
        (ObjectClass::SECRET_KEY, KeyType::AES),
    ]
    .iter()
    .flat_map(|(class, kind)| {
        session
            .find_objects(&[Attribute::Class(*class), Attribute::KeyType(*kind)])
            .expect("find")
            .into_iter()
            .filter(|h| label(&session, *h).starts_with("p11vault/"))
            .map(move |h| (h, *class, *kind))
    })
    .collect();
    assert_eq!(secrets.len() as u64, keys, "every key's secret object");

    let t = Instant::now();
    let wrapped: Vec<Vec<u8>> = secrets
        .iter()
        .map(|(h, _, _)| {
            session
                .wrap_key(&common::key_wrap(), wrap_half, *h)
                .expect("wrap")
        })
        .collect();
    let raw_wrap_all = t.elapsed();

    let t = Instant::now();
    for ((_, class, kind), blob) in secrets.iter().zip(&wrapped) {
        let h = session
            .unwrap_key(
                &common::key_wrap(),
                unwrap_half,
                blob,
                &[
                    Attribute::Class(*class),
                    Attribute::KeyType(*kind),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Label(b"bench-restored".to_vec()),
                ],
            )
            .expect("unwrap");
        session.destroy_object(h).expect("destroy");
    }
    let raw_unwrap_all = t.elapsed();

    // A key blob's token work: one wrap of the key, a content key, its wrap, a GCM seal.
    let ec_keys: Vec<ObjectHandle> = secrets
        .iter()
        .filter(|(_, _, k)| *k == KeyType::EC)
        .map(|(h, _, _)| *h)
        .take(200)
        .collect();
    let payload = vec![7u8; 1200];
    let t = Instant::now();
    for h in &ec_keys {
        let _material = session
            .wrap_key(&common::key_wrap(), wrap_half, *h)
            .expect("wrap");
        let ck = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(true),
                    Attribute::ValueLen(32.into()),
                ],
            )
            .expect("content key");
        session
            .wrap_key(&common::key_wrap(), wrap_half, ck)
            .expect("wrap the content key");
        let mut iv = [1u8; 12];
        let params = GcmParams::new(&mut iv, b"header", 128.into()).expect("params");
        session
            .encrypt(&Mechanism::AesGcm(params), ck, &payload)
            .expect("seal");
        session.destroy_object(ck).expect("destroy");
    }
    let raw_blob_rate = ec_keys.len() as f64 / t.elapsed().as_secs_f64();
    drop(session);

    // ----- service -----------------------------------------------------------------------
    let names: Vec<String> = (0..ec_keys.len()).map(|i| format!("ec-{i}")).collect();
    let t = Instant::now();
    for name in &names {
        let (status, body) = svc.call("POST", &format!("/keys/{name}/backup?{API}"), None);
        assert_eq!(status, 200, "{body}");
    }
    let service_blob_rate = names.len() as f64 / t.elapsed().as_secs_f64();

    let (service_backup, folder) = timed_job(
        &svc,
        "POST",
        "/backup",
        &json!({"storageResourceUri": CONTAINER}),
    );
    let folder = folder["azureStorageBlobContainerUri"]
        .as_str()
        .expect("folder")
        .rsplit('/')
        .next()
        .expect("name")
        .to_owned();
    let size = std::fs::metadata(dir.join("backups/bench").join(&folder).join("backup.p11b"))
        .map(|m| m.len())
        .unwrap_or_default();
    // A full restore needs a backup of the current state: the one just taken.
    let (service_restore, _) = timed_job(
        &svc,
        "PUT",
        "/restore",
        &json!({"sasTokenParameters": {"storageResourceUri": CONTAINER}, "folderToRestore": folder}),
    );

    println!(
        "### Backups ({keys} keys: 80% EC P-256, 10% RSA-2048, 10% AES-256; token: {})\n",
        common::token_name()
    );
    println!("| operation | raw PKCS#11 (same token, same run) | service | service / raw |");
    println!("|---|---|---|---|");
    println!(
        "| key backup blob, one EC key, sequential | {raw_blob_rate:.0} /s (wrap, content key, wrap, GCM) | {service_blob_rate:.0} /s over HTTPS | {:.0}% |",
        100.0 * service_blob_rate / raw_blob_rate
    );
    println!(
        "| full backup of {keys} keys | {:.2} s (C_WrapKey of every version) | {:.2} s (start to Succeeded; file {} KiB) | {:.0}% |",
        raw_wrap_all.as_secs_f64(),
        service_backup.as_secs_f64(),
        size / 1024,
        100.0 * raw_wrap_all.as_secs_f64() / service_backup.as_secs_f64()
    );
    println!(
        "| full restore of {keys} keys | {:.2} s (C_UnwrapKey of every version as a token object, then C_DestroyObject) | {:.2} s (start to Succeeded, token objects and public halves) | {:.0}% |",
        raw_unwrap_all.as_secs_f64(),
        service_restore.as_secs_f64(),
        100.0 * raw_unwrap_all.as_secs_f64() / service_restore.as_secs_f64()
    );
    svc.stop();
}

/// Starts a job and polls it every 10 ms; returns the time to `Succeeded` and the last status.
fn timed_job(svc: &Service, method: &str, path: &str, body: &Value) -> (Duration, Value) {
    let t = Instant::now();
    let (status, first) = svc.call(
        method,
        &format!("{path}?api-version=7.5"),
        Some(&body.to_string()),
    );
    assert_eq!(status, 202, "{first}");
    let status_path = format!(
        "/{}/{}/pending",
        path.trim_start_matches('/'),
        first["jobId"].as_str().expect("job id")
    );
    loop {
        let (_, job) = svc.call("GET", &status_path, None);
        match job["status"].as_str() {
            Some("InProgress") => std::thread::sleep(Duration::from_millis(10)),
            Some("Succeeded") => return (t.elapsed(), job),
            _ => panic!("the job failed: {job}"),
        }
    }
}

/// Creates the benchmark's keys through the service, 4 at a time: `ec-N` first, then RSA and AES.
fn fill(svc: &Service, count: u64) {
    let next = AtomicU64::new(0);
    let (ec, rsa) = (count * 8 / 10, count / 10);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let (name, body) = if i < ec {
                        (format!("ec-{i}"), r#"{"kty":"EC","crv":"P-256"}"#)
                    } else if i < ec + rsa {
                        (format!("rsa-{i}"), r#"{"kty":"RSA","key_size":2048}"#)
                    } else {
                        (format!("aes-{i}"), r#"{"kty":"oct-HSM","key_size":256}"#)
                    };
                    svc.create(&name, body);
                }
            });
        }
    });
}

fn domain_half(session: &Session, suffix: &str) -> ObjectHandle {
    session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("find")
        .into_iter()
        .find(|h| {
            let l = label(session, *h);
            l.starts_with("p11vault-sd/") && l.ends_with(suffix)
        })
        .expect("the security domain half")
}

fn label(session: &Session, h: ObjectHandle) -> String {
    match session
        .get_attributes(h, &[cryptoki::object::AttributeType::Label])
        .expect("label")
        .pop()
    {
        Some(Attribute::Label(l)) => String::from_utf8_lossy(&l).into_owned(),
        _ => String::new(),
    }
}
