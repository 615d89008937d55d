//! SIGKILL *inside* token calls: every mutating operation (delete, recover, purge, a change of
//! `key_ops`, a new version) is started on a key with several acknowledged versions, and the
//! process is killed at a random instant while it runs — not at a step boundary — so the kill
//! lands in the middle of `C_UnwrapKey`, `C_DestroyObject`, `C_CreateObject` or a SQLite
//! commit. After each restart every acknowledged version is checked one by one: it signs, and
//! the signature verifies under the public key it was acknowledged with (OpenSSL, outside the
//! service). At the end the token itself is read: every committed version has exactly its two
//! objects, and no object is left that no committed version owns.
//!
//! One test in this binary: it opens the service's token in-process at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::versions::{Acked, State, Xorshift, acked, signs_as_acknowledged, state_of};
use common::{API, Service, data_dir};
use cryptoki::object::ObjectClass;
use serde_json::json;

const VERSIONS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Delete,
    Recover,
    Purge,
    Update,
    Rotate,
}

/// Measures how long an operation takes uncut, so kills can be spread over its whole length.
fn run_op(svc: &Service, op: Op, name: &str, target: &Acked) -> Result<u16, String> {
    let (method, path, body) = match op {
        Op::Delete => ("DELETE", format!("/keys/{name}?{API}"), None),
        Op::Recover => ("POST", format!("/deletedkeys/{name}/recover?{API}"), None),
        Op::Purge => ("DELETE", format!("/deletedkeys/{name}?{API}"), None),
        Op::Update => (
            "PATCH",
            format!("/keys/{name}/{}?{API}", target.version),
            Some(json!({"key_ops": ["verify"]}).to_string()),
        ),
        Op::Rotate => (
            "POST",
            format!("/keys/{name}/create?{API}"),
            Some(json!({"kty": "EC-HSM", "crv": "P-256"}).to_string()),
        ),
    };
    svc.try_call(method, &path, body.as_deref())
        .map(|(status, _, _)| status)
}

/// Makes a key with `VERSIONS` acknowledged versions and brings it to where `op` starts.
fn prepare(svc: &Service, op: Op, name: &str) -> Vec<Acked> {
    let body = json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"]}).to_string();
    let versions: Vec<Acked> = (0..VERSIONS)
        .map(|_| acked(&svc.create(name, &body)))
        .collect();
    if matches!(op, Op::Recover | Op::Purge) {
        let (status, answer) = svc.call("DELETE", &format!("/keys/{name}?{API}"), None);
        assert_eq!(status, 200, "delete {name}: {answer}");
    }
    versions
}

/// After a restart: the key is in the state before or after the operation (after, if the
/// operation was acknowledged), every acknowledged version is intact, and the key is left live
/// (or gone, if purged) for the final token check.
fn check(
    svc: &Service,
    op: Op,
    name: &str,
    versions: &mut Vec<Acked>,
    acknowledged: bool,
) -> Result<State, String> {
    let state = state_of(svc, name);
    let allowed: &[State] = match (op, acknowledged) {
        (Op::Delete, true) => &[State::Deleted],
        (Op::Delete, false) => &[State::Live, State::Deleted],
        (Op::Recover, true) => &[State::Live],
        (Op::Recover, false) => &[State::Deleted, State::Live],
        (Op::Purge, true) => &[State::Gone],
        (Op::Purge, false) => &[State::Deleted, State::Gone],
        (Op::Update | Op::Rotate, _) => &[State::Live],
    };
    if !allowed.contains(&state) {
        return Err(format!(
            "{name}: after {op:?} (acknowledged: {acknowledged}) the key is {state:?}"
        ));
    }
    match state {
        State::Gone => {
            for v in versions.iter() {
                let (status, _) =
                    svc.call("GET", &format!("/keys/{name}/{}?{API}", v.version), None);
                if status != 404 {
                    return Err(format!(
                        "{name}/{}: purged, yet answers {status}",
                        v.version
                    ));
                }
            }
            return Ok(State::Gone);
        }
        State::Deleted => {
            let (status, answer) =
                svc.call("POST", &format!("/deletedkeys/{name}/recover?{API}"), None);
            if status != 200 {
                return Err(format!("recover {name}: {status} {answer}"));
            }
        }
        State::Live => {}
    }
    if op == Op::Update {
        // The version the update targeted may have lost `sign`; give it back (itself a change
        // of the secret object), then every version must sign.
        let target = versions.last().expect("a version");
        let (status, answer) = svc.call(
            "PATCH",
            &format!("/keys/{name}/{}?{API}", target.version),
            Some(&json!({"key_ops": ["sign", "verify"]}).to_string()),
        );
        if status != 200 {
            return Err(format!("update {name} back: {status} {answer}"));
        }
    }
    if op == Op::Rotate {
        let (status, answer) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
        assert_eq!(status, 200, "{answer}");
        // The new version, if it was committed (answered or not), is the key's now and must
        // work too; an acknowledged one must exist.
        let newest = acked(&answer);
        let new = versions.iter().all(|v| v.version != newest.version);
        if acknowledged && !new {
            return Err(format!(
                "{name}: the acknowledged new version is not the newest"
            ));
        }
        if new {
            versions.push(newest);
        }
    }
    for v in versions.iter() {
        signs_as_acknowledged(svc, name, v)?;
    }
    Ok(State::Live)
}

#[test]
fn a_kill_inside_any_token_call_loses_no_acknowledged_version() {
    let (_tmp, dir) = data_dir();
    let mut svc = Service::start(&dir);
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut committed: BTreeMap<String, (State, Vec<Acked>)> = BTreeMap::new();
    let mut failures = Vec::new();
    let plan = [
        (Op::Delete, 24),
        (Op::Recover, 24),
        (Op::Update, 14),
        (Op::Purge, 10),
        (Op::Rotate, 10),
    ];
    let mut rounds = 0;
    let mut acknowledged_kills = 0;
    for (op, count) in plan {
        // One uncut run tells how long the operation takes; kills are spread over 0–130 % of it.
        let name = format!("{op:?}-warmup").to_lowercase();
        let mut versions = prepare(&svc, op, &name);
        let started = Instant::now();
        let status = run_op(&svc, op, &name, versions.last().expect("a version"))
            .expect("an uncut operation is answered");
        assert!(matches!(status, 200 | 204), "{op:?} uncut: {status}");
        let length = started.elapsed();
        let state = check(&svc, op, &name, &mut versions, true)
            .unwrap_or_else(|e| panic!("uncut {op:?}: {e}"));
        committed.insert(name, (state, versions));

        for round in 0..count {
            let name = format!("{op:?}-{round}").to_lowercase();
            let mut versions = prepare(&svc, op, &name);
            let delay = Duration::from_micros(rng.below(length.as_micros() as u64 * 13 / 10 + 1));
            let pid = svc.pid();
            let answered = std::thread::scope(|scope| {
                let request =
                    scope.spawn(|| run_op(&svc, op, &name, versions.last().expect("a version")));
                std::thread::sleep(delay);
                let killed = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .expect("kill runs");
                assert!(killed.success());
                request.join().expect("the request thread")
            });
            svc.kill();
            let acknowledged = matches!(answered, Ok(200 | 204));
            acknowledged_kills += usize::from(acknowledged);
            svc = Service::start(&dir);
            let log = svc.log();
            for alarm in [
                "no intact token objects",
                "the token holds no object for this key version",
            ] {
                assert!(
                    !log.contains(alarm),
                    "{op:?} round {round}: the log reports lost material ({alarm})"
                );
            }
            match check(&svc, op, &name, &mut versions, acknowledged) {
                Ok(state) => {
                    committed.insert(name, (state, versions));
                }
                Err(e) => {
                    failures.push(format!("{op:?} round {round} (kill after {delay:?}): {e}"))
                }
            }
            rounds += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "lost or wrong after {rounds} kills:\n{}",
        failures.join("\n")
    );
    eprintln!("{rounds} kills inside operations, {acknowledged_kills} of them after the answer");
    svc.stop();

    // The token itself: every committed version has exactly its secret and public object, with
    // the label of its state, and nothing else carries a p11vault label.
    let (_ctx, session) = common::open_token_as_user(&dir);
    let found = common::versions::token_objects_by_id(&session);
    let mut expected = BTreeSet::new();
    for (name, (state, versions)) in &committed {
        if *state == State::Gone {
            continue;
        }
        for v in versions {
            expected.insert(v.version.clone());
            let objects = found.get(&v.version).cloned().unwrap_or_default();
            let label = format!("p11vault/{name}/{}", v.version);
            let mut classes: Vec<ObjectClass> = objects.iter().map(|(c, _)| *c).collect();
            classes.sort_by_key(|c| format!("{c:?}"));
            assert_eq!(
                objects.len(),
                2,
                "{name}/{}: expected one private and one public object, found {objects:?}",
                v.version
            );
            assert!(
                objects.iter().all(|(_, l)| *l == label),
                "{name}/{}: labels {objects:?}",
                v.version
            );
            assert!(
                classes.contains(&ObjectClass::PRIVATE_KEY)
                    && classes.contains(&ObjectClass::PUBLIC_KEY),
                "{name}/{}: classes {objects:?}",
                v.version
            );
        }
    }
    let leftovers: Vec<_> = found
        .iter()
        .filter(|(id, _)| !expected.contains(*id))
        .collect();
    assert!(
        leftovers.is_empty(),
        "objects that no committed version owns: {leftovers:?}"
    );
}
