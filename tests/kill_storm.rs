//! A kill storm: three clients run mixed load (new keys, new versions, deletes, recoveries,
//! purges, signs) on keys of their own while the service is SIGKILLed at random moments — not
//! at failpoints — and started again, over and over. Each client tracks what was acknowledged;
//! an operation cut short by a kill is resolved after the restart (the key must be in the
//! state before or after it). At the end every tracked key's every version is checked, the
//! deleted set and the purged set are checked, and the token's objects are read directly.
//!
//! One test in this binary: it opens the service's token in-process at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use common::versions::{Acked, State, Xorshift, acked, signs_as_acknowledged, state_of};
use common::{API, Service, data_dir};
use serde_json::json;

const KILLS: usize = 20;
const CLIENTS: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Delete,
    Recover,
    Purge,
    Sign,
}

#[derive(Debug, Default)]
struct Key {
    versions: Vec<Acked>,
    state: Option<State>,
}

/// What one client saw go wrong.
type Failures = Mutex<Vec<String>>;

fn request(
    svc: &Service,
    op: Op,
    name: &str,
    version: Option<&Acked>,
) -> Result<(u16, serde_json::Value), String> {
    let ec = json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"]}).to_string();
    let sign = json!({"alg": "ES256", "value": common::versions::b64(&common::versions::DIGEST)})
        .to_string();
    let (method, path, body) = match op {
        Op::Create => ("POST", format!("/keys/{name}/create?{API}"), Some(ec)),
        Op::Delete => ("DELETE", format!("/keys/{name}?{API}"), None),
        Op::Recover => ("POST", format!("/deletedkeys/{name}/recover?{API}"), None),
        Op::Purge => ("DELETE", format!("/deletedkeys/{name}?{API}"), None),
        Op::Sign => (
            "POST",
            format!(
                "/keys/{name}/{}/sign?{API}",
                version.map(|v| v.version.as_str()).unwrap_or("")
            ),
            Some(sign),
        ),
    };
    svc.try_call(method, &path, body.as_deref())
        .map(|(status, _, body)| (status, body))
}

/// The op a client tries next on a key, given what it knows of the key.
fn pick(rng: &mut Xorshift, key: &Key) -> Op {
    match key.state {
        None | Some(State::Gone) => Op::Create,
        Some(State::Live) => match rng.below(10) {
            0..=3 => Op::Sign,
            4..=6 => Op::Create,
            _ => Op::Delete,
        },
        Some(State::Deleted) => {
            if rng.below(2) == 0 {
                Op::Recover
            } else {
                Op::Purge
            }
        }
    }
}

/// After a restart, what an operation without an answer did: the key is in the state before or
/// after it. Returns the state the key is in.
fn resolve(svc: &Service, op: Op, name: &str, key: &mut Key) -> Result<State, String> {
    let state = state_of(svc, name);
    let before = key.state.unwrap_or(State::Gone);
    let after = match op {
        Op::Create => State::Live,
        Op::Delete => State::Deleted,
        Op::Recover => State::Live,
        Op::Purge => State::Gone,
        Op::Sign => before,
    };
    if state != before && state != after {
        return Err(format!(
            "{name}: {op:?} cut short: the key is {state:?}, neither {before:?} nor {after:?}"
        ));
    }
    if op == Op::Create && state == State::Live {
        let (status, answer) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
        if status != 200 {
            return Err(format!("{name}: GET {status}"));
        }
        let newest = acked(&answer);
        if key.versions.iter().all(|v| v.version != newest.version) {
            key.versions.push(newest);
        }
    }
    if state == State::Gone {
        key.versions.clear();
    }
    Ok(state)
}

fn client(
    id: u64,
    svc: &RwLock<Service>,
    generation: &AtomicU64,
    stop: &AtomicBool,
    failures: &Failures,
) -> BTreeMap<String, Key> {
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d ^ ((id + 1) * 0x9e37_79b9));
    let mut keys: BTreeMap<String, Key> = BTreeMap::new();
    let mut serial = 0;
    while !stop.load(Ordering::Relaxed) {
        // Mostly work on known keys; sometimes start a new one.
        let name = if keys.is_empty() || rng.below(6) == 0 {
            serial += 1;
            format!("c{id}-k{serial}")
        } else {
            let n = rng.below(keys.len() as u64) as usize;
            keys.keys().nth(n).expect("in range").clone()
        };
        let key = keys.entry(name.clone()).or_default();
        let op = pick(&mut rng, key);
        let version = (!key.versions.is_empty())
            .then(|| key.versions[rng.below(key.versions.len() as u64) as usize].clone());
        let seen = generation.load(Ordering::SeqCst);
        let guard = svc.read().expect("lock");
        let outcome = request(&guard, op, &name, version.as_ref());
        drop(guard);
        match outcome {
            Ok((200 | 204, answer)) => match op {
                Op::Create => {
                    key.versions.push(acked(&answer));
                    key.state = Some(State::Live);
                }
                Op::Delete => key.state = Some(State::Deleted),
                Op::Recover => key.state = Some(State::Live),
                Op::Purge => {
                    key.state = Some(State::Gone);
                    key.versions.clear();
                }
                Op::Sign => {}
            },
            Ok((503, _)) => std::thread::sleep(Duration::from_millis(50)),
            Ok((status, _)) => failures
                .lock()
                .expect("lock")
                .push(format!("{name}: {op:?} answered {status}")),
            Err(_) => {
                // The process died under the request: wait for the next one, then find out.
                let deadline = Instant::now() + Duration::from_secs(120);
                while generation.load(Ordering::SeqCst) == seen {
                    assert!(Instant::now() < deadline, "the service did not come back");
                    std::thread::sleep(Duration::from_millis(20));
                }
                let guard = svc.read().expect("lock");
                match resolve(&guard, op, &name, key) {
                    Ok(state) => key.state = Some(state),
                    Err(e) => failures.lock().expect("lock").push(e),
                }
            }
        }
    }
    keys
}

#[test]
fn a_kill_storm_under_mixed_load_loses_nothing_and_resurrects_nothing() {
    let (_tmp, dir) = data_dir();
    let svc = RwLock::new(Service::start(&dir));
    let pid = AtomicU64::new(u64::from(svc.read().expect("lock").pid()));
    let generation = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failures: Failures = Mutex::new(Vec::new());
    let mut rng = Xorshift(0x1234_5678_9abc_def1 ^ u64::from(std::process::id()));
    let tracked = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (svc, generation, stop, failures) = (&svc, &generation, &stop, &failures);
                scope.spawn(move || client(id, svc, generation, stop, failures))
            })
            .collect();
        for _ in 0..KILLS {
            std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.load(Ordering::SeqCst).to_string()])
                .status()
                .expect("kill runs");
            assert!(killed.success());
            let mut guard = svc.write().expect("lock");
            let old = std::mem::replace(&mut *guard, Service::start(&dir));
            old.kill();
            pid.store(u64::from(guard.pid()), Ordering::SeqCst);
            generation.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .map(|c| c.join().expect("a client"))
            .collect::<Vec<_>>()
    });
    let failures = failures.into_inner().expect("lock");
    assert!(
        failures.is_empty(),
        "during the storm:\n{}",
        failures.join("\n")
    );

    // A clean restart, then every tracked key as it was acknowledged.
    let svc = svc.into_inner().expect("lock");
    svc.stop();
    let svc = Service::start(&dir);
    for alarm in [
        "no intact token objects",
        "the token holds no object for this key version",
    ] {
        assert!(
            !svc.log().contains(alarm),
            "the log reports lost material ({alarm})"
        );
    }
    let mut owned = BTreeSet::new();
    let mut counts = BTreeMap::new();
    for keys in &tracked {
        for (name, key) in keys {
            let Some(state) = key.state else { continue };
            *counts.entry(format!("{state:?}")).or_insert(0) += 1;
            assert_eq!(state_of(&svc, name), state, "{name}");
            match state {
                State::Gone => continue,
                State::Deleted => {
                    // Deleted stays deleted and unusable; recovered, every version works.
                    let (status, _) = svc.call(
                        "POST",
                        &format!("/keys/{name}//sign?{API}"),
                        Some(r#"{"alg":"ES256","value":"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo"}"#),
                    );
                    assert_eq!(status, 404, "{name}: a deleted key signs");
                    let (status, answer) =
                        svc.call("POST", &format!("/deletedkeys/{name}/recover?{API}"), None);
                    assert_eq!(status, 200, "{name}: {answer}");
                }
                State::Live => {}
            }
            for v in &key.versions {
                owned.insert(v.version.clone());
                signs_as_acknowledged(&svc, name, v).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    eprintln!("after {KILLS} kills: {counts:?}");
    svc.stop();

    // The token: every object belongs to a tracked, unpurged version, which has its two.
    let (_ctx, session) = common::open_token_as_user(&dir);
    let found = common::versions::token_objects_by_id(&session);
    for id in &owned {
        assert_eq!(
            found.get(id).map(Vec::len),
            Some(2),
            "version {id}: objects {:?}",
            found.get(id)
        );
    }
    let strays: Vec<_> = found.keys().filter(|id| !owned.contains(*id)).collect();
    assert!(strays.is_empty(), "objects no version owns: {strays:?}");
}
