//! Faults outside the service's own steps: the token going away under load and coming back
//! (with new object handles), and key operations racing a delete or recover of the same key.
//!
//! The outage is a real one on both tokens, made by another process: SoftHSM2's token
//! directory moved away and back; on kryoptic, which keeps its SQLite file open (moving it or
//! taking its permissions away changes nothing for the open file), an EXCLUSIVE lock on that
//! file held by the test process. kryoptic then fails every object read or write after
//! SQLite's busy timeout (5 s) with `CKR_DEVICE_MEMORY`, while the token and session infos it
//! keeps in memory still answer; and it runs one call at a time, so requests wait out the
//! lock's length before their 503.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{API, Service, data_dir};
use serde_json::json;

const SIGN: &str = r#"{"alg":"ES256","value":"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo"}"#;

/// The directory SoftHSM2 keeps the service's token in.
fn token_dir(dir: &Path) -> PathBuf {
    let tokens = dir.join("softhsm").join("tokens");
    std::fs::read_dir(&tokens)
        .expect("the token directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.is_dir())
        .expect("one token")
}

/// A real fault, made from outside the service's process, that takes its token away until
/// [`Outage::end`].
enum Outage {
    /// SoftHSM2: the token's directory moved away (SoftHSM2 finds its files by path).
    Moved { token: PathBuf, away: PathBuf },
    /// kryoptic keeps its SQLite file open, so moving it takes nothing away; another process
    /// holding an EXCLUSIVE lock on it does: every read and write of the token waits for
    /// SQLite's busy timeout (5 s) and then fails.
    Locked(rusqlite::Connection),
}

impl Outage {
    fn begin(dir: &Path) -> Outage {
        if common::on_kryoptic() {
            let db = rusqlite::Connection::open(common::kryoptic_files(dir).db)
                .expect("the token's database opens");
            // The service's own transactions are short; wait for one to end.
            db.busy_timeout(Duration::from_secs(30))
                .expect("busy timeout");
            db.execute_batch("BEGIN EXCLUSIVE")
                .expect("an exclusive lock on the token's database");
            Outage::Locked(db)
        } else {
            let token = token_dir(dir);
            let away = dir.parent().expect("parent").join("token-away");
            std::fs::rename(&token, &away).expect("take the token away");
            Outage::Moved { token, away }
        }
    }

    fn end(self) {
        match self {
            Outage::Moved { token, away } => {
                std::fs::rename(&away, &token).expect("put the token back")
            }
            Outage::Locked(db) => {
                db.execute_batch("ROLLBACK").expect("the lock is let go");
                drop(db);
            }
        }
    }
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Takes the token away for `outage` while two clients sign, puts it back, and checks every
/// answer: 200 or 503 with `Retry-After` (never a 500), and all 200 again within 5 s. An
/// outage the token itself rides out (`noticed` false: a kryoptic lock shorter than SQLite's
/// busy timeout) slows requests down and fails none.
fn outage_under_load(svc: &Service, outage: Duration, noticed: bool) {
    let stop = AtomicBool::new(false);
    let returned_at: Mutex<Option<Instant>> = Mutex::new(None);
    // (answered at, status, has Retry-After, how long it took)
    let answers: Mutex<Vec<(Instant, u16, bool, Duration)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let (status, retry_after, body) = svc
                        .try_call("POST", &format!("/keys/load//sign?{API}"), Some(SIGN))
                        .expect("the service answers");
                    assert!(
                        status == 200 || status == 503,
                        "a sign during an outage answered {status}: {body}; the service's log ends:\n{}",
                        tail(&svc.log(), 40)
                    );
                    if status == 503 {
                        assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
                    }
                    answers.lock().expect("lock").push((
                        Instant::now(),
                        status,
                        retry_after.is_some(),
                        sent.elapsed(),
                    ));
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        let fault = Outage::begin(&svc.dir);
        std::thread::sleep(outage);
        fault.end();
        *returned_at.lock().expect("lock") = Some(Instant::now());
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
    });
    let back = returned_at.lock().expect("lock").expect("set");
    let answers = answers.into_inner().expect("lock");
    let unavailable = answers.iter().filter(|(_, s, ..)| *s == 503).count();
    let slowest = answers.iter().map(|a| a.3).max().unwrap_or_default();
    eprintln!(
        "an outage of {outage:?}: {} answers, {unavailable} of them 503, the slowest took {slowest:?}",
        answers.len(),
    );
    if noticed {
        assert!(
            unavailable > 0,
            "no request noticed an outage of {outage:?}"
        );
    } else {
        assert!(
            unavailable == 0 && slowest >= outage / 2,
            "an outage of {outage:?} the token rides out: {unavailable} answers were 503, the slowest took {slowest:?}"
        );
    }
    assert!(
        answers
            .iter()
            .filter(|(_, s, ..)| *s == 503)
            .all(|(_, _, retry, _)| *retry),
        "every 503 carries Retry-After"
    );
    let late_failures: Vec<_> = answers
        .iter()
        .filter(|(at, status, ..)| *at > back + Duration::from_secs(5) && *status != 200)
        .collect();
    assert!(
        late_failures.is_empty(),
        "requests still failed more than 5 s after the token came back: {}",
        late_failures.len()
    );
    assert!(
        answers.iter().any(|(at, s, ..)| *at > back && *s == 200),
        "signing works again after an outage of {outage:?}"
    );
}

#[test]
fn the_token_going_away_under_load_gives_503s_and_the_service_recovers_by_itself() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("load", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    // On kryoptic every token call waits out a lock for up to SQLite's busy timeout (5 s)
    // before it fails, so a shorter lock is only latency, and the long outage is made longer.
    let outages = if common::on_kryoptic() {
        [
            (Duration::from_secs(1), false),
            (Duration::from_secs(12), true),
        ]
    } else {
        [
            (Duration::from_secs(1), true),
            (Duration::from_secs(10), true),
        ]
    };
    for (outage, noticed) in outages {
        outage_under_load(&svc, outage, noticed);
        // Everything else works again too: objects made before the outage (found under new
        // handles once the module was initialised again), new keys, deletes and recoveries.
        let name = format!("after-{}", outage.as_secs());
        svc.create(&name, r#"{"kty":"EC-HSM","crv":"P-256"}"#);
        let (status, body) = svc.call("POST", &format!("/keys/{name}//sign?{API}"), Some(SIGN));
        assert_eq!(status, 200, "{body}");
        let (status, body) = svc.call("DELETE", &format!("/keys/{name}?{API}"), None);
        assert_eq!(status, 200, "{body}");
        let (status, body) = svc.call("POST", &format!("/deletedkeys/{name}/recover?{API}"), None);
        assert_eq!(status, 200, "{body}");
    }
    // A create that met the outage was rolled back, not left half-made: a restart finds the
    // token and the database in step.
    svc.stop();
    let svc = Service::start(&dir);
    assert!(
        !svc.log().contains("no committed key version owns"),
        "orphans after the outages"
    );
    let (status, body) = svc.call("POST", &format!("/keys/load//sign?{API}"), Some(SIGN));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn key_operations_racing_a_delete_or_recover_answer_as_some_serial_order_would() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("race-ec", r#"{"kty":"EC-HSM","crv":"P-256"}"#);
    svc.create("race-oct", r#"{"kty":"oct-HSM","key_size":256}"#);
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<(String, u16, String)>> = Mutex::new(Vec::new());
    let gcm = json!({"alg": "A256GCM", "value": "aGVsbG8"}).to_string();
    std::thread::scope(|scope| {
        for (name, path, body) in [
            ("race-ec", "sign", SIGN.to_owned()),
            ("race-ec", "verify", json!({"alg": "ES256", "digest": "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo", "value": "A".repeat(86)}).to_string()),
            ("race-oct", "encrypt", gcm.clone()),
        ] {
            let (stop, seen, svc) = (&stop, &seen, &svc);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = svc
                        .try_call("POST", &format!("/keys/{name}//{path}?{API}"), Some(&body))
                        .expect("answered");
                    seen.lock()
                        .expect("lock")
                        .push((format!("{name} {path}"), status, body.to_string()));
                }
            });
        }
        for name in ["race-ec", "race-oct"] {
            for _ in 0..12 {
                let (status, body) = svc.call("DELETE", &format!("/keys/{name}?{API}"), None);
                assert_eq!(status, 200, "{body}");
                let (status, body) =
                    svc.call("POST", &format!("/deletedkeys/{name}/recover?{API}"), None);
                assert_eq!(status, 200, "{body}");
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let seen = seen.into_inner().expect("lock");
    let wrong: Vec<_> = seen
        .iter()
        // Before the delete: 200 (a made-up signature verifies as `false`, still a 200);
        // after it: 404. Anything else is no serial order's answer.
        .filter(|(_, status, _)| !matches!(*status, 200 | 404))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} operations answered neither 200 nor 404: {:?}",
        wrong.len(),
        seen.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        seen.iter().any(|(_, s, _)| *s == 404) && seen.iter().any(|(_, s, _)| *s == 200),
        "the race was run: both outcomes were seen ({} operations)",
        seen.len()
    );
}
