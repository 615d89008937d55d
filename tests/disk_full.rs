//! Storage that refuses writes, on the real binary: a data dir on a small tmpfs filled to the
//! last byte (the audit log cannot be written: nothing is answered as a success without its
//! record, refusals are 503 with Retry-After, `/healthz` says why, and the outage is in the log
//! once space returns), and a database on its own full file system (changes are 503, reads and
//! key operations go on). Mounting needs root; without it these tests fail, never pass.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Answer, Service, cli, data_dir};
use serde_json::{Value, json};

/// A tmpfs mounted for one test, unmounted when dropped (after the service that uses it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test needs root (it mounts a tmpfs to fill it): mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes a file until the file system refuses another byte; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    for chunk in [1 << 20, 4096, 512, 1] {
        let buf = vec![0x5au8; chunk];
        while file.write_all(&buf).is_ok() {}
    }
    let _ = file.sync_all();
    path
}

fn digest() -> String {
    URL_SAFE_NO_PAD.encode([7u8; 32])
}

fn sign(svc: &Service, key: &str) -> Answer {
    let body = json!({"alg": "ES256", "value": digest()}).to_string();
    svc.answer(
        Some(&svc.token),
        "POST",
        &format!("/keys/{key}//sign?{API}"),
        Some(&body),
    )
}

fn create(svc: &Service, key: &str) -> Answer {
    svc.answer(
        Some(&svc.token),
        "POST",
        &format!("/keys/{key}/create?{API}"),
        Some(r#"{"kty":"EC","crv":"P-256"}"#),
    )
}

fn health(svc: &Service) -> Answer {
    svc.answer(None, "GET", "/healthz", None)
}

/// A refusal as this service must give it: 503, Retry-After, Azure's error body.
fn assert_refusal(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {a:?}");
    assert!(
        a.retry_after
            .as_deref()
            .is_some_and(|r| r.parse::<u32>().is_ok()),
        "{what}: no Retry-After: {a:?}"
    );
    assert_eq!(
        a.body["error"]["code"], "ServiceUnavailable",
        "{what}: {a:?}"
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {a:?}"
    );
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("audit.log")).expect("audit.log")
}

fn records(dir: &Path) -> Vec<Value> {
    log_text(dir)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// Retries `f` until it returns `Some`, for at most `within`.
fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_refuses_what_it_cannot_record_and_the_outage_is_in_the_log() {
    let (tmp, dir) = data_dir();
    let _fs = Tmpfs::mount(&dir, "40m");
    let svc = Service::start(&dir);
    assert_eq!(create(&svc, "signer").status, 200);
    assert_eq!(health(&svc).status, 200);

    let filler = fill(&dir);
    let mut acknowledged: Vec<String> = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        let (what, a) = if i % 5 == 4 {
            ("create", create(&svc, &format!("more{i}")))
        } else {
            ("sign", sign(&svc, "signer"))
        };
        let id = a.request_id.clone().expect("every answer has a request id");
        match a.status {
            200 => {
                // Its record is in the file before the answer.
                assert!(
                    log_text(&dir).contains(&id),
                    "{what} {i} answered 200 without its record in the log"
                );
                acknowledged.push(id);
            }
            _ => {
                assert_refusal(&a, &format!("{what} {i}"));
                refused += 1;
            }
        }
    }
    eprintln!(
        "on the full disk: {} acknowledged, {refused} refused",
        acknowledged.len()
    );
    assert!(refused > 0, "nothing was refused on a full disk");
    let h = health(&svc);
    assert_eq!(h.status, 503, "{h:?}");
    assert_eq!(h.body["status"], "unhealthy", "{h:?}");
    assert!(
        h.body["auditLog"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be written")),
        "{h:?}"
    );

    // Space returns: the service recovers by itself.
    std::fs::remove_file(&filler).expect("remove the filler");
    let after = poll(Duration::from_secs(5), "a sign succeeds again", || {
        let a = sign(&svc, "signer");
        if a.status != 200 {
            assert_refusal(&a, "sign while recovering");
        }
        (a.status == 200).then_some(a)
    });
    acknowledged.push(after.request_id.expect("request id"));
    let created = create(&svc, "after");
    assert_eq!(created.status, 200, "{created:?}");
    acknowledged.push(created.request_id.expect("request id"));
    assert_eq!(health(&svc).status, 200);
    svc.stop();

    let all = records(&dir);
    let ids: HashSet<&str> = all.iter().filter_map(|r| r["requestId"].as_str()).collect();
    for id in &acknowledged {
        assert!(
            ids.contains(id.as_str()),
            "acknowledged request {id} is not in the log"
        );
    }
    let outage = all
        .iter()
        .find(|r| r["action"] == "p11vault/audit/outage")
        .expect("an outage record");
    assert_eq!(outage["outage"]["dropped"], 0, "{outage}");
    assert!(
        outage["outage"]["refused"].as_u64().expect("refused")
            + outage["outage"]["late"].as_u64().expect("late")
            >= 1,
        "{outage}"
    );
    // Records written late say the client was answered 503.
    let late = outage["outage"]["late"].as_u64().expect("late");
    let at = outage["seq"].as_u64().expect("seq");
    for r in all
        .iter()
        .filter(|r| r["seq"].as_u64().is_some_and(|s| s > at && s <= at + late))
    {
        assert_eq!(r["answered"], 503, "{r}");
    }

    let (ok, out, err) = cli(&dir, &["audit", "verify"]);
    assert!(ok, "a recorded outage is not a broken chain: {out}{err}");
    assert!(
        !out.starts_with("ok") && out.contains("WARNING") && err.contains("WARNING"),
        "verify must not pass an outage silently: {out}{err}"
    );
    assert!(err.contains("request(s) refused"), "{err}");
    drop(tmp);
}

#[test]
fn a_full_database_answers_changes_503_and_serves_reads_and_key_operations() {
    let (tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    assert_eq!(create(&svc, "signer").status, 200);
    svc.stop();
    // The database alone on a small file system of its own, so the audit log stays writable.
    let dbfs = tmp.path().join("dbfs");
    let _fs = Tmpfs::mount(&dbfs, "4m");
    for suffix in ["", "-wal", "-shm"] {
        let from = dir.join(format!("p11vault.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, dbfs.join(format!("p11vault.db{suffix}"))).expect("copy");
            std::fs::remove_file(&from).expect("remove");
        }
    }
    std::os::unix::fs::symlink(dbfs.join("p11vault.db"), dir.join("p11vault.db")).expect("link");
    let svc = Service::start(&dir);
    assert_eq!(create(&svc, "before").status, 200);

    let filler = fill(&dbfs);
    let refused = poll(Duration::from_secs(5), "a create is refused", || {
        let a = create(&svc, "refused");
        (a.status != 200).then_some(a)
    });
    assert_refusal(&refused, "create on a full database");
    assert_eq!(
        refused.body["error"]["innererror"]["code"], "StorageUnavailable",
        "{refused:?}"
    );
    // What needs no write goes on.
    let (s, got) = svc.call("GET", &format!("/keys/signer?{API}"), None);
    assert_eq!(s, 200, "{got}");
    assert_eq!(svc.call("GET", &format!("/keys?{API}"), None).0, 200);
    assert_eq!(sign(&svc, "signer").status, 200);
    let h = health(&svc);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.body["status"], "degraded", "{h:?}");
    assert_eq!(h.body["auditLog"], "writable", "{h:?}");

    std::fs::remove_file(&filler).expect("remove the filler");
    poll(Duration::from_secs(5), "a create succeeds again", || {
        let a = create(&svc, "after");
        if a.status != 200 {
            assert_refusal(&a, "create while recovering");
        }
        (a.status == 200).then_some(())
    });
    let h = health(&svc);
    assert_eq!(h.body["status"], "healthy", "{h:?}");
    svc.stop();
    let (ok, out, err) = cli(&dir, &["audit", "verify"]);
    assert!(ok && out.starts_with("ok"), "{out}{err}");
}
