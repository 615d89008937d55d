//! Fault injection (DESIGN §6): the service is made to abort at every step boundary of create,
//! import, rotate, update, delete, recover and purge, then restarted. After each restart the
//! test checks, through the API and directly on the token (cryptoki, bypassing the service):
//! every acknowledged key is intact and usable, no soft-deleted key is usable, no purged key
//! comes back, and no token object is left without its metadata.
//!
//! One test in this binary: it points SoftHSM2 at the service's token through the process
//! environment, and every scenario shares that one token.

mod common;

use std::collections::HashSet;

use common::{API, Service, data_dir};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde_json::{Value, json};

struct TokenObject {
    handle: ObjectHandle,
    label: String,
    class: ObjectClass,
    id: Vec<u8>,
}

/// Every p11vault key object on the token.
fn key_objects(s: &Session) -> Vec<TokenObject> {
    let mut out = Vec::new();
    for class in [
        ObjectClass::SECRET_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
    ] {
        for handle in s.find_objects(&[Attribute::Class(class)]).expect("find") {
            let mut label = String::new();
            let mut id = Vec::new();
            for a in s
                .get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
                .expect("attrs")
            {
                match a {
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(i) => id = i,
                    _ => {}
                }
            }
            if label.starts_with("p11vault/") || label.starts_with("p11vault-deleted/") {
                out.push(TokenObject {
                    handle,
                    label,
                    class,
                    id,
                });
            }
        }
    }
    out
}

fn of_key<'a>(objects: &'a [TokenObject], name: &str) -> Vec<&'a TokenObject> {
    objects
        .iter()
        .filter(|o| o.label.split('/').nth(1) == Some(name))
        .collect()
}

/// Signs a digest with a private key object, as any process holding the user PIN could.
fn sign(s: &Session, key: ObjectHandle) -> Result<Vec<u8>, RvError> {
    s.sign(&Mechanism::Ecdsa, key, &[7u8; 32])
        .map_err(|e| match e {
            CkError::Pkcs11(rv, _) => rv,
            other => panic!("not a PKCS#11 error: {other}"),
        })
}

fn private_keys<'a>(objects: &'a [&'a TokenObject]) -> Vec<&'a TokenObject> {
    objects
        .iter()
        .copied()
        .filter(|o| o.class == ObjectClass::PRIVATE_KEY)
        .collect()
}

fn versions(svc: &Service, name: &str) -> Vec<String> {
    let (status, list) = svc.call("GET", &format!("/keys/{name}/versions?{API}"), None);
    if status != 200 {
        return Vec::new();
    }
    list["value"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| {
            i["kid"]
                .as_str()
                .expect("kid")
                .rsplit('/')
                .next()
                .expect("v")
                .to_owned()
        })
        .collect()
}

fn ec_jwk() -> Value {
    use base64::Engine;
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    let b64 = |v: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
    let key = EcKey::generate(&group).expect("key");
    let (mut x, mut y) = (BigNum::new().expect("bn"), BigNum::new().expect("bn"));
    key.public_key()
        .affine_coordinates(
            &group,
            &mut x,
            &mut y,
            &mut BigNumContext::new().expect("ctx"),
        )
        .expect("coordinates");
    json!({"key": {"kty": "EC", "crv": "P-256",
        "d": b64(key.private_key().to_vec_padded(32).expect("d")),
        "x": b64(x.to_vec_padded(32).expect("x")), "y": b64(y.to_vec_padded(32).expect("y"))}})
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Create,
    Import,
    Rotate,
    Update,
    Delete,
    Recover,
    Purge,
}

const SCENARIOS: &[(Op, &str)] = &[
    (Op::Create, "create.after_intent"),
    (Op::Create, "create.after_token"),
    (Op::Create, "create.after_commit"),
    (Op::Import, "import.after_intent"),
    (Op::Import, "import.after_token"),
    (Op::Import, "import.after_commit"),
    (Op::Rotate, "create.after_intent"),
    (Op::Rotate, "create.after_token"),
    (Op::Rotate, "create.after_commit"),
    (Op::Update, "update.after_intent"),
    (Op::Update, "update.after_token"),
    (Op::Delete, "delete.after_intent"),
    (Op::Delete, "delete.mid_token"),
    (Op::Delete, "delete.after_token"),
    (Op::Delete, "delete.after_commit"),
    (Op::Recover, "recover.after_intent"),
    (Op::Recover, "recover.mid_token"),
    (Op::Recover, "recover.after_token"),
    (Op::Recover, "recover.after_commit"),
    (Op::Purge, "purge.after_intent"),
    (Op::Purge, "purge.mid_token"),
    (Op::Purge, "purge.after_token"),
    (Op::Purge, "purge.after_commit"),
];

#[test]
fn a_crash_at_any_step_boundary_loses_nothing_and_resurrects_nothing() {
    let (_tmp, dir) = data_dir();

    // Set-up, in one normal run: what each scenario starts from.
    let svc = Service::start(&dir);
    svc.create("kept", r#"{"kty":"EC"}"#);
    for (i, (op, _)) in SCENARIOS.iter().enumerate() {
        let name = format!("k{i}");
        match op {
            Op::Create | Op::Import => {}
            Op::Rotate => {
                svc.create(&name, r#"{"kty":"EC"}"#);
            }
            Op::Update => {
                svc.create(&name, r#"{"kty":"EC","key_ops":["sign","verify"]}"#);
            }
            Op::Delete | Op::Recover | Op::Purge => {
                svc.create(&name, r#"{"kty":"EC"}"#);
                svc.create(&name, r#"{"kty":"EC"}"#);
                if *op != Op::Delete {
                    let (status, _) = svc.call("DELETE", &format!("/keys/{name}?{API}"), None);
                    assert_eq!(status, 200);
                }
            }
        }
    }
    svc.stop();

    let (_ctx, session) = common::open_token_as_user(&dir);

    for (i, (op, point)) in SCENARIOS.iter().enumerate() {
        let name = format!("k{i}");
        let what = format!("{op:?} at {point}");
        // The crash run: the request dies with the process.
        let svc = Service::start_with(&dir, &[("P11VAULT_TEST_FAILPOINTS", point)])
            .unwrap_or_else(|f| panic!("{what}: {f:?}"));
        let (method, path, body) = match op {
            Op::Create => (
                "POST",
                format!("/keys/{name}/create?{API}"),
                Some(r#"{"kty":"EC"}"#.to_owned()),
            ),
            Op::Import => (
                "PUT",
                format!("/keys/{name}?{API}"),
                Some(ec_jwk().to_string()),
            ),
            Op::Rotate => ("POST", format!("/keys/{name}/rotate?{API}"), None),
            Op::Update => (
                "PATCH",
                format!("/keys/{name}/?{API}"),
                Some(r#"{"key_ops":["verify"]}"#.to_owned()),
            ),
            Op::Delete => ("DELETE", format!("/keys/{name}?{API}"), None),
            Op::Recover => ("POST", format!("/deletedkeys/{name}/recover?{API}"), None),
            Op::Purge => ("DELETE", format!("/deletedkeys/{name}?{API}"), None),
        };
        svc.request_dies_with_the_process(method, &path, body.as_deref(), &what);

        // Restart: the reconciler settles the intent.
        let svc = Service::start(&dir);
        let objects = key_objects(&session);
        let mine = of_key(&objects, &name);
        let live = svc.call("GET", &format!("/keys/{name}?{API}"), None).0 == 200;
        let deleted = svc
            .call("GET", &format!("/deletedkeys/{name}?{API}"), None)
            .0
            == 200;
        let committed = point.ends_with("after_commit");
        match op {
            Op::Create | Op::Import => {
                assert_eq!(live, committed, "{what}: only a committed version exists");
                assert_eq!(
                    mine.len(),
                    if committed { 2 } else { 0 },
                    "{what}: token objects"
                );
            }
            Op::Rotate => {
                assert_eq!(
                    versions(&svc, &name).len(),
                    if committed { 2 } else { 1 },
                    "{what}"
                );
                assert_eq!(
                    mine.len(),
                    if committed { 4 } else { 2 },
                    "{what}: token objects"
                );
            }
            Op::Update => {
                // Rolled forward: the database and the token agree on the new operations.
                let (_, key) = svc.call("GET", &format!("/keys/{name}?{API}"), None);
                assert_eq!(key["key"]["key_ops"], json!(["verify"]), "{what}");
                for key in private_keys(&mine) {
                    assert_eq!(
                        sign(&session, key.handle).err(),
                        Some(RvError::KeyFunctionNotPermitted),
                        "{what}"
                    );
                }
            }
            Op::Delete => {
                // Rolled forward: deleted, and unusable at the token itself.
                assert!(!live && deleted, "{what}: live={live} deleted={deleted}");
                assert_eq!(mine.len(), 4, "{what}");
                for o in &mine {
                    assert!(
                        o.label.starts_with("p11vault-deleted/"),
                        "{what}: {}",
                        o.label
                    );
                }
                for key in private_keys(&mine) {
                    assert_eq!(
                        sign(&session, key.handle).err(),
                        Some(RvError::KeyFunctionNotPermitted),
                        "{what}"
                    );
                    let copy = session.copy_object(key.handle, &[Attribute::Sign(true)]);
                    assert!(copy.is_err(), "{what}: a deleted key was copied");
                }
            }
            Op::Recover => {
                assert!(live && !deleted, "{what}: live={live} deleted={deleted}");
                assert_eq!(versions(&svc, &name).len(), 2, "{what}");
                for key in private_keys(&mine) {
                    assert!(
                        sign(&session, key.handle).is_ok(),
                        "{what}: a recovered key cannot sign"
                    );
                }
            }
            Op::Purge => {
                assert!(!live && !deleted, "{what}: a purged key came back");
                assert!(mine.is_empty(), "{what}: purged objects remain");
                // And the name is free.
                svc.create(&name, r#"{"kty":"EC"}"#);
            }
        }

        // Everywhere: the acknowledged key is usable, and every token object belongs to a
        // committed version.
        let kept = of_key(&objects, "kept");
        assert_eq!(kept.len(), 2, "{what}: the acknowledged key's objects");
        for key in private_keys(&kept) {
            assert!(
                sign(&session, key.handle).is_ok(),
                "{what}: the acknowledged key cannot sign"
            );
        }
        svc.stop();
        let store = p11vault::store::Store::open(&dir.join("p11vault.db")).expect("db opens");
        let owned: HashSet<Vec<u8>> = store
            .all_versions()
            .expect("versions")
            .into_iter()
            .map(|(_, v)| v.as_bytes().to_vec())
            .collect();
        for o in key_objects(&session) {
            assert!(owned.contains(&o.id), "{what}: {} has no metadata", o.label);
        }
    }
}
