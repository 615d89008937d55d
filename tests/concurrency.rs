//! Many clients racing create, delete, recover and purge on the same few names. No request may
//! be answered with a 5xx, every answer must be one that operation can give in some state, and
//! the end state must be one a serial order produces: each name live, deleted or absent, the
//! API views agreeing, and a restart finding nothing to repair.

mod common;

use common::{API, Service, data_dir};

const NAMES: [&str; 3] = ["race-a", "race-b", "race-c"];
const CLIENTS: usize = 8;
const ROUNDS: usize = 25;

#[test]
fn racing_lifecycle_requests_end_in_a_serial_state() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let svc = &svc;
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let name = NAMES[(client + round) % NAMES.len()];
                    let (method, path, allowed): (&str, String, &[u16]) =
                        match (client + round * 3) % 4 {
                            0 => ("POST", format!("/keys/{name}/create?{API}"), &[200, 409]),
                            1 => ("DELETE", format!("/keys/{name}?{API}"), &[200, 404]),
                            2 => (
                                "POST",
                                format!("/deletedkeys/{name}/recover?{API}"),
                                &[200, 404],
                            ),
                            _ => ("DELETE", format!("/deletedkeys/{name}?{API}"), &[204, 404]),
                        };
                    let body =
                        (method == "POST" && path.contains("/create")).then_some(r#"{"kty":"EC"}"#);
                    let (status, json) = svc.call(method, &path, body);
                    assert!(
                        allowed.contains(&status),
                        "{method} {path} answered {status}: {json}"
                    );
                }
            });
        }
    });

    for name in NAMES {
        let live = svc.call("GET", &format!("/keys/{name}?{API}"), None).0;
        let deleted = svc
            .call("GET", &format!("/deletedkeys/{name}?{API}"), None)
            .0;
        assert!(
            matches!((live, deleted), (200, 404) | (404, 200) | (404, 404)),
            "{name}: live {live}, deleted {deleted}"
        );
    }
    let (_, list) = svc.call("GET", &format!("/keys?{API}"), None);
    let (_, gone) = svc.call("GET", &format!("/deletedkeys?{API}"), None);
    let count = |v: &serde_json::Value| v["value"].as_array().expect("list").len();
    assert!(count(&list) + count(&gone) <= NAMES.len());
    svc.stop();

    let svc = Service::start(&dir);
    let log = svc.log();
    let report = log
        .lines()
        .rfind(|l| l.contains("reconciled the token with the database"))
        .expect("the restart reconciled");
    assert!(
        report.contains(
            "rolled_back: 0, rolled_forward: 0, orphans_reported: 0, missing_objects: []"
        ),
        "a restart found work to do: {report}"
    );
    assert!(
        !log.contains("holds no object"),
        "metadata without objects: {log}"
    );
    assert!(
        !log.contains("no committed key version owns"),
        "objects without metadata: {log}"
    );
    svc.stop();
}
