//! Names of the generated certificate (`tls.names`, `{hsm_name}.localhost`): made for the
//! configured names, made anew (CA too) when they change, never over an operator's own
//! certificate, and refused when they are not names a client accepts. And the HSM's operator
//! of a data dir made before the operator was recorded: its first `administrator`.

mod common;

use std::path::Path;

use common::{Service, data_dir};

const HSM: &str = "/subscriptions/p11vault/resourceGroups/p11vault/providers/Microsoft.KeyVault/managedHSMs/p11vault?api-version=2026-02-01";

/// The DNS names and IP addresses of the server certificate, as OpenSSL reads them.
fn sans(dir: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("tls").join("server.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_names(dir: &Path, names: &str) {
    common::write_config(dir, &format!("[tls]\nnames = [{names}]\n"));
}

#[test]
fn certificate_names_follow_the_configuration() {
    let (_tmp, dir) = data_dir();
    set_names(&dir, r#""*.hsm.example.internal""#);
    let svc = Service::start(&dir);
    svc.stop();
    let first = sans(&dir);
    for name in [
        "DNS:p11vault.localhost",
        "DNS:*.hsm.example.internal",
        "DNS:localhost",
        "IP Address:127.0.0.1",
    ] {
        assert!(first.contains(name), "{name} in {first}");
    }
    let ca = std::fs::read(dir.join("ca.pem")).expect("ca");

    // The same names: the same certificate.
    let svc = Service::start(&dir);
    svc.stop();
    assert_eq!(sans(&dir), first);
    assert_eq!(std::fs::read(dir.join("ca.pem")).expect("ca"), ca);

    // Other names: a new CA and certificate, which the service serves.
    set_names(&dir, r#""hsm.example.internal", "Other.Example.Internal""#);
    let svc = Service::start(&dir);
    let (status, _) = svc.call("GET", &format!("/keys?{}", common::API), None);
    assert_eq!(
        status, 200,
        "served with the new certificate, trusted through the new CA"
    );
    svc.stop();
    let second = sans(&dir);
    assert!(
        second.contains("DNS:other.example.internal") && !second.contains("*.hsm"),
        "{second}"
    );
    assert_ne!(
        std::fs::read(dir.join("ca.pem")).expect("ca"),
        ca,
        "a new CA"
    );

    // An operator's own certificate (no generated-names file) is never replaced.
    std::fs::remove_file(dir.join("tls").join("generated-names")).expect("the names file");
    set_names(&dir, r#""third.example.internal""#);
    Service::start(&dir).stop();
    assert_eq!(sans(&dir), second);

    // Names a client would refuse are refused at start-up.
    for bad in [
        r#""*.localhost""#,
        r#""bad_name.example""#,
        r#""""#,
        r#""a..b""#,
    ] {
        set_names(&dir, bad);
        let Err(refused) = Service::start_with(&dir, &[]) else {
            panic!("{bad} was accepted");
        };
        assert!(
            refused.stderr.contains("tls.names"),
            "{bad}: {}",
            refused.stderr
        );
    }
}

#[test]
fn a_data_dir_without_a_recorded_operator_takes_its_first_administrator() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let admin = svc.admin_principal()["id"].as_str().expect("id").to_owned();
    // A later principal of the same name (created a second later: `created` is in seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, other) = svc.new_principal("administrator", &["Managed HSM Administrator"], "/");
    assert_eq!(
        svc.call("GET", HSM, None).0,
        200,
        "the bootstrap administrator"
    );
    assert_eq!(svc.call_as(Some(&other), "GET", HSM, None).0, 403);
    svc.stop();
    // As a data dir made before the operator was recorded: the principal of admin.token;
    // when that file names nobody (replaced, say), the oldest `administrator`.
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).expect("admin.token");
    for replaced_token_file in [false, true] {
        let db = rusqlite::Connection::open(dir.join("p11vault.db")).expect("db");
        db.execute("DELETE FROM meta WHERE k = 'operator_principal'", [])
            .expect("delete");
        drop(db);
        if replaced_token_file {
            std::fs::write(dir.join("admin.token"), "p11v_nobody\n").expect("admin.token");
        }
        let svc = Service::start(&dir);
        let (status, body) = svc.call_as(Some(admin_token.trim()), "GET", HSM, None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["properties"]["initialAdminObjectIds"][0],
            admin.as_str()
        );
        assert_eq!(
            svc.call_as(Some(&other), "GET", HSM, None).0,
            403,
            "not the later 'administrator'"
        );
        svc.stop();
    }
}

#[test]
fn the_operator_can_be_handed_over() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let (id, token) = svc.new_principal("ops", &[], "/");
    assert_eq!(svc.call_as(Some(&token), "GET", HSM, None).0, 403);
    let (ok, _, err) = common::cli(&dir, &["principal", "operator", "no-such-id"]);
    assert!(!ok && err.contains("no principal"), "{err}");
    assert_eq!(
        svc.cli(&["principal", "operator", &id]).trim(),
        format!("operator={id}")
    );
    let (status, body) = svc.call_as(Some(&token), "GET", HSM, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["properties"]["initialAdminObjectIds"][0], id.as_str());
    let (status, body) = svc.call("GET", HSM, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed"))
    );
    svc.stop();
    let audit = std::fs::read_to_string(dir.join("audit.log")).expect("audit log");
    assert!(
        audit.contains("principal/operator"),
        "the hand-over is audited"
    );
    let (ok, out, err) = common::cli(&dir, &["audit", "verify"]);
    assert!(ok, "{out}{err}");
}
