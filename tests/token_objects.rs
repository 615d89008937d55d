//! Reads the token directly with cryptoki, bypassing the service, as a holder of the user PIN
//! and as a process without it, and shows exactly what ARCHITECTURE.md ("Protection models")
//! claims: every key the service made or imported is private, sensitive and not copyable, its
//! material cannot be read out directly, a deleted key cannot be used as it is, nothing of the
//! service's is visible or stored in clear without the PIN, and — what the model does not
//! stop — a holder of the user PIN can wrap a key out under a key of its own and switch a
//! deleted key's flags back on. One test in this binary: it points the module at the
//! service's token through the process environment.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Service, data_dir};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use serde_json::json;

fn bool_attr(s: &Session, h: ObjectHandle, t: AttributeType) -> bool {
    match s.get_attributes(h, &[t]).expect("attributes read").pop() {
        Some(Attribute::Sensitive(b))
        | Some(Attribute::Copyable(b))
        | Some(Attribute::Private(b))
        | Some(Attribute::Extractable(b))
        | Some(Attribute::WrapWithTrusted(b))
        | Some(Attribute::Modifiable(b))
        | Some(Attribute::Trusted(b))
        | Some(Attribute::Wrap(b))
        | Some(Attribute::Unwrap(b))
        | Some(Attribute::Sign(b))
        | Some(Attribute::Verify(b))
        | Some(Attribute::Encrypt(b))
        | Some(Attribute::Decrypt(b))
        | Some(Attribute::Derive(b)) => b,
        other => panic!("{t:?}: unexpected {other:?}"),
    }
}

fn label_of(s: &Session, h: ObjectHandle) -> String {
    match s
        .get_attributes(h, &[AttributeType::Label])
        .expect("label")
        .pop()
    {
        Some(Attribute::Label(l)) => String::from_utf8(l).expect("utf-8 label"),
        _ => String::new(),
    }
}

fn rv(e: CkError) -> RvError {
    match e {
        CkError::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

#[test]
fn the_token_itself_keeps_every_key_sensitive_and_uncopyable() {
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    svc.create("rsa", r#"{"kty":"RSA","key_size":2048}"#);
    svc.create("ec", r#"{"kty":"EC","crv":"P-384"}"#);
    svc.create("aes", r#"{"kty":"oct","key_size":256}"#);
    let k = URL_SAFE_NO_PAD.encode([0x5au8; 32]);
    let (status, body) = svc.call(
        "PUT",
        &format!("/keys/imported-aes?{API}"),
        Some(&json!({"key": {"kty": "oct", "k": k}}).to_string()),
    );
    assert_eq!(status, 200, "{body}");
    // Keys brought back from backup blobs get the same templates as generated ones.
    for (name, body) in [
        ("restored-rsa", r#"{"kty":"RSA","key_size":2048}"#),
        ("restored-ec", r#"{"kty":"EC","crv":"P-256"}"#),
    ] {
        svc.create(name, body);
        let (status, blob) = svc.call("POST", &format!("/keys/{name}/backup?{API}"), None);
        assert_eq!(status, 200, "{blob}");
        assert_eq!(
            svc.call("DELETE", &format!("/keys/{name}?{API}"), None).0,
            200
        );
        assert_eq!(
            svc.call("DELETE", &format!("/deletedkeys/{name}?{API}"), None)
                .0,
            204
        );
        let (status, restored) = svc.call(
            "POST",
            &format!("/keys/restore?{API}"),
            Some(&blob.to_string()),
        );
        assert_eq!(status, 200, "{restored}");
    }
    svc.stop();

    let (ctx, session) = common::open_token_as_user(&dir);
    // The padded AES key wrap the service chose for this token at its first start.
    let key_wrap = common::key_wrap();

    // A wrapping key of the user's own, not trusted.
    let user_kek = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )
        .expect("a session key");
    let mut extracted = None;

    let mut secrets = 0;
    let mut publics = 0;
    for class in [
        ObjectClass::SECRET_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
    ] {
        for h in session
            .find_objects(&[Attribute::Class(class)])
            .expect("find")
        {
            let label = label_of(&session, h);
            if !label.starts_with("p11vault/") {
                continue;
            }
            assert!(
                !bool_attr(&session, h, AttributeType::Copyable),
                "{label} is copyable"
            );
            assert!(
                bool_attr(&session, h, AttributeType::Private),
                "{label} is public"
            );
            let copy = session.copy_object(h, &[Attribute::Label(b"stolen".to_vec())]);
            assert_eq!(
                copy.map_err(rv).err(),
                Some(RvError::ActionProhibited),
                "{label} copied"
            );
            if class == ObjectClass::PUBLIC_KEY {
                publics += 1;
                continue;
            }
            secrets += 1;
            assert!(
                bool_attr(&session, h, AttributeType::Sensitive),
                "{label} is not sensitive"
            );
            // Backups on (the default), private domain model: extractable under any key.
            assert!(
                bool_attr(&session, h, AttributeType::Extractable),
                "{label}"
            );
            assert!(
                !bool_attr(&session, h, AttributeType::WrapWithTrusted),
                "{label}"
            );
            let value = match class {
                ObjectClass::SECRET_KEY => AttributeType::Value,
                _ => {
                    let key_type = session
                        .get_attributes(h, &[AttributeType::KeyType])
                        .expect("type")
                        .pop();
                    if key_type == Some(Attribute::KeyType(KeyType::RSA)) {
                        AttributeType::PrivateExponent
                    } else {
                        AttributeType::Value
                    }
                }
            };
            let info = session
                .get_attribute_info(h, &[value])
                .expect("attribute info");
            assert!(
                matches!(info.as_slice(), [AttributeInfo::Sensitive]),
                "{label}: material readable"
            );
            // What the model does not stop: the user PIN is enough to wrap any key out under
            // a key of one's own, and to unwrap it again as a readable object.
            let wrapped = session
                .wrap_key(&key_wrap, user_kek, h)
                .unwrap_or_else(|e| panic!("{label}: a user-PIN holder wraps it out: {e}"));
            if label.starts_with("p11vault/imported-aes/") {
                let readable = session
                    .unwrap_key(
                        &key_wrap,
                        user_kek,
                        &wrapped,
                        &[
                            Attribute::Class(ObjectClass::SECRET_KEY),
                            Attribute::KeyType(KeyType::AES),
                            Attribute::Token(false),
                            Attribute::Sensitive(false),
                            Attribute::Extractable(true),
                        ],
                    )
                    .expect("unwrapped as a readable object");
                extracted = match session
                    .get_attributes(readable, &[AttributeType::Value])
                    .expect("the value")
                    .pop()
                {
                    Some(Attribute::Value(v)) => Some(v),
                    other => panic!("{other:?}"),
                };
            }
        }
    }
    assert_eq!(
        extracted.as_deref(),
        Some(&[0x5au8; 32][..]),
        "the imported key's value, read out by a holder of the user PIN"
    );
    assert_eq!(
        secrets, 6,
        "rsa, ec, aes, imported-aes, restored-rsa, restored-ec"
    );
    assert_eq!(publics, 4, "the public halves of the RSA and EC keys");

    // The security domain: a wrap-only half, an unwrap-only half and the MAC key, every one
    // private, none trusted (nothing relies on CKA_TRUSTED) and none modifiable, so nobody
    // can make the wrap half unwrap.
    let mut halves = 0;
    for h in session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("find")
    {
        let label = label_of(&session, h);
        if !label.starts_with("p11vault-sd/") {
            continue;
        }
        halves += 1;
        assert!(
            !bool_attr(&session, h, AttributeType::Modifiable),
            "{label}"
        );
        assert!(bool_attr(&session, h, AttributeType::Sensitive), "{label}");
        assert!(bool_attr(&session, h, AttributeType::Private), "{label}");
        assert!(!bool_attr(&session, h, AttributeType::Trusted), "{label}");
        if label.ends_with("/wrap") {
            assert!(!bool_attr(&session, h, AttributeType::Unwrap));
            let flip = session.update_attributes(h, &[Attribute::Unwrap(true)]);
            assert!(flip.is_err(), "the wrap half was made unwrap-capable");
        } else if label.ends_with("/mac") {
            // The key that authenticates backups: private, never leaves the token.
            assert!(bool_attr(&session, h, AttributeType::Private));
            assert!(!bool_attr(&session, h, AttributeType::Extractable));
            assert!(!bool_attr(&session, h, AttributeType::Wrap));
        } else {
            assert!(label.ends_with("/unwrap"), "{label}");
            assert!(bool_attr(&session, h, AttributeType::Private));
            assert!(!bool_attr(&session, h, AttributeType::Wrap));
            assert!(bool_attr(&session, h, AttributeType::Unwrap));
        }
    }
    assert_eq!(halves, 3, "the wrap half, the unwrap half and the MAC key");

    // The sign-in's HMAC key (identity headers, the tokens of `az login --identity`), apart
    // from the domain: private, sensitive, never leaves the token, sign and verify only.
    let mut sign_in = 0;
    for h in session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("find")
    {
        let label = label_of(&session, h);
        if !label.starts_with("p11vault-id/") {
            continue;
        }
        sign_in += 1;
        assert!(label.ends_with("/mac"), "{label}");
        for (attr, want) in [
            (AttributeType::Private, true),
            (AttributeType::Sensitive, true),
            (AttributeType::Sign, true),
            (AttributeType::Verify, true),
            (AttributeType::Extractable, false),
            (AttributeType::Modifiable, false),
            (AttributeType::Copyable, false),
            (AttributeType::Trusted, false),
            (AttributeType::Wrap, false),
            (AttributeType::Unwrap, false),
            (AttributeType::Encrypt, false),
            (AttributeType::Decrypt, false),
            (AttributeType::Derive, false),
        ] {
            assert_eq!(bool_attr(&session, h, attr), want, "{label}: {attr:?}");
        }
        let info = session
            .get_attribute_info(h, &[AttributeType::Value])
            .expect("attribute info");
        assert!(
            matches!(info.as_slice(), [AttributeInfo::Sensitive]),
            "{label}: value readable"
        );
        assert!(
            session.wrap_key(&key_wrap, user_kek, h).is_err(),
            "{label}: wrapped out"
        );
    }
    assert_eq!(sign_in, 1, "one sign-in key, whatever the domain");

    // A forged key backup: a holder of the user PIN wraps a content key and a key they know
    // under the domain's wrap half, and seals the payload themselves. Only the MAC, made with
    // the MAC key, tells it from a real one.
    let forged = forge_key_backup(&session, &key_wrap);

    // Soft-delete RSA and AES keys and purge the EC key through the service, then try to use
    // them directly, as a process holding the user PIN would.
    let svc = Service::start(&dir);
    let (status, body) = svc.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({ "value": URL_SAFE_NO_PAD.encode(&forged) }).to_string()),
    );
    assert_eq!(status, 400, "a forged backup is refused: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("does not open under this HSM's security domain"),
        "refused by its MAC, not for a defect of the forgery: {body}"
    );
    assert_eq!(svc.call("GET", &format!("/keys/forged?{API}"), None).0, 404);
    svc.create("ec-kept", r#"{"kty":"EC-HSM","crv":"P-384"}"#);
    for name in ["rsa", "aes", "ec", "ec-kept"] {
        let (status, body) = svc.call("DELETE", &format!("/keys/{name}?{API}"), None);
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = svc.call("DELETE", &format!("/deletedkeys/ec?{API}"), None);
    assert_eq!(status, 204);
    svc.stop();

    let labelled = |prefix: &str| -> Vec<(ObjectHandle, ObjectClass)> {
        let mut out = Vec::new();
        for class in [
            ObjectClass::SECRET_KEY,
            ObjectClass::PRIVATE_KEY,
            ObjectClass::PUBLIC_KEY,
        ] {
            for h in session
                .find_objects(&[Attribute::Class(class)])
                .expect("find")
            {
                if label_of(&session, h).starts_with(prefix) {
                    out.push((h, class));
                }
            }
        }
        out
    };
    assert!(
        labelled("p11vault/ec/").is_empty() && labelled("p11vault-deleted/ec/").is_empty(),
        "purged objects remain"
    );
    assert!(
        labelled("p11vault/rsa/").is_empty(),
        "a deleted key kept its live label"
    );
    let rsa = labelled("p11vault-deleted/rsa/");
    let aes = labelled("p11vault-deleted/aes/");
    assert_eq!((rsa.len(), aes.len()), (2, 1));
    let not_permitted = Some(RvError::KeyFunctionNotPermitted);
    // kryoptic refuses an unwrap with a key whose CKA_UNWRAP is off as an invalid handle.
    let unwrap_not_permitted = if common::on_kryoptic() {
        Some(RvError::WrappingKeyHandleInvalid)
    } else {
        not_permitted
    };
    for (h, class) in rsa.iter().chain(&aes) {
        let copy = session.copy_object(*h, &[Attribute::Label(b"revived".to_vec())]);
        assert!(copy.is_err(), "a deleted key was copied");
        if *class == ObjectClass::PUBLIC_KEY {
            continue;
        }
        let unwrap_template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
        ];
        if *class == ObjectClass::PRIVATE_KEY {
            assert_eq!(
                session
                    .sign(&Mechanism::Sha256RsaPkcs, *h, b"m")
                    .map_err(rv)
                    .err(),
                not_permitted
            );
            assert_eq!(
                session
                    .decrypt(&Mechanism::RsaPkcs, *h, &[1u8; 256])
                    .map_err(rv)
                    .err(),
                not_permitted
            );
            let unwrapped =
                session.unwrap_key(&Mechanism::RsaPkcs, *h, &[1u8; 256], &unwrap_template);
            assert_eq!(unwrapped.map_err(rv).err(), unwrap_not_permitted);
        } else {
            let iv = [0u8; 16];
            assert_eq!(
                session
                    .decrypt(&Mechanism::AesCbcPad(iv), *h, &[0u8; 32])
                    .map_err(rv)
                    .err(),
                not_permitted
            );
            assert_eq!(
                session
                    .encrypt(&Mechanism::AesCbcPad(iv), *h, b"plain")
                    .map_err(rv)
                    .err(),
                not_permitted
            );
            let unwrapped = session.unwrap_key(&key_wrap, *h, &[0u8; 40], &unwrap_template);
            assert_eq!(unwrapped.map_err(rv).err(), unwrap_not_permitted);
        }
    }

    // Every usage attribute each deleted object has is off, not only the ones `key_ops` names
    // (a token may default a flag the template leaves out to true).
    let usage = [
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
        AttributeType::Verify,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Derive,
        AttributeType::SignRecover,
        AttributeType::VerifyRecover,
    ];
    let ec_kept = labelled("p11vault-deleted/ec-kept/");
    assert_eq!(ec_kept.len(), 2);
    for (h, class) in rsa.iter().chain(&aes).chain(&ec_kept) {
        for a in session
            .get_attributes(*h, &usage)
            .expect("usage flags read")
        {
            let on = match a {
                Attribute::Encrypt(b)
                | Attribute::Decrypt(b)
                | Attribute::Sign(b)
                | Attribute::Verify(b)
                | Attribute::Wrap(b)
                | Attribute::Unwrap(b)
                | Attribute::Derive(b)
                | Attribute::SignRecover(b)
                | Attribute::VerifyRecover(b) => b,
                other => panic!("unexpected {other:?}"),
            };
            assert!(!on, "a deleted {class:?} object has {a:?}");
        }
    }

    // What soft-delete does not stop, exactly as documented: a holder of the user PIN can
    // switch a deleted key's flags back on, and the key then works.
    let (deleted_private, _) = *rsa
        .iter()
        .find(|(_, c)| *c == ObjectClass::PRIVATE_KEY)
        .expect("the deleted private key");
    session
        .update_attributes(deleted_private, &[Attribute::Sign(true)])
        .expect("the objects stay modifiable, so recover can");
    assert!(
        session
            .sign(&Mechanism::Sha256RsaPkcs, deleted_private, b"m")
            .is_ok(),
        "a user-PIN holder can use a deleted key whose flag it switched back on"
    );
    session
        .update_attributes(deleted_private, &[Attribute::Sign(false)])
        .expect("switched off again");

    // Recovery gives the key back its use.
    let svc = Service::start(&dir);
    let (status, _) = svc.call("POST", &format!("/deletedkeys/rsa/recover?{API}"), None);
    assert_eq!(status, 200);
    svc.stop();
    let (private, _) = *labelled("p11vault/rsa/")
        .iter()
        .find(|(_, c)| *c == ObjectClass::PRIVATE_KEY)
        .expect("the recovered private key");
    assert!(
        session
            .sign(&Mechanism::Sha256RsaPkcs, private, b"m")
            .is_ok()
    );

    // Without the PIN nothing of the service's can be seen or used: every object it made,
    // the security domain included, is private.
    let slot = session.get_session_info().expect("session info").slot_id();
    session.logout().expect("logout");
    let anonymous = ctx
        .open_ro_session(slot)
        .expect("a session without a login");
    // (kryoptic shows objects of its own to anyone: its mechanism and profile objects.)
    for class in [
        ObjectClass::SECRET_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::DATA,
    ] {
        let visible = anonymous
            .find_objects(&[Attribute::Class(class)])
            .expect("find");
        assert!(
            visible.is_empty(),
            "{} {class:?} objects visible without a login",
            visible.len()
        );
    }
    // Nor read offline from the token's files: the imported key's known value is nowhere in
    // clear. On SoftHSM2 no label of the service's is either: it stores a public object's
    // attributes in clear and encrypts a private object's label, ID and value with a key
    // derived from the PIN, so a public domain half would show here. kryoptic keeps labels in
    // clear (values encrypted), so there the labels say which keys exist.
    let files = common::token_files(&dir);
    assert!(!files.is_empty(), "the token's files");
    for file in files {
        let bytes = std::fs::read(&file).expect("a token file");
        assert!(
            !bytes.windows(32).any(|w| w == [0x5au8; 32]),
            "{} holds a key value in clear",
            file.display()
        );
        // The token's own label is "p11vault"; every object label continues with / or -.
        let labelled = bytes
            .windows(9)
            .any(|w| w == b"p11vault/" || w == b"p11vault-");
        if common::on_kryoptic() {
            if file == common::kryoptic_files(&dir).db {
                assert!(labelled, "kryoptic keeps labels in clear, as documented");
            }
        } else {
            assert!(!labelled, "{}: object labels in clear", file.display());
        }
    }
}

/// A well-formed key backup made without the MAC key: its content key and key material are
/// wrapped with the domain's wrap half, its payload sealed in software.
fn forge_key_backup(session: &Session, key_wrap: &Mechanism<'_>) -> Vec<u8> {
    use p11vault::keys::blob::{Content, Envelope, KeyPayload, VersionPayload};
    use p11vault::model::{KeyFamily, KeyKind, KeyOps, PublicKey, VersionId};
    let wrap_half = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("find")
        .into_iter()
        .find(|h| {
            let l = label_of(session, *h);
            l.starts_with("p11vault-sd/") && l.ends_with("/wrap")
        })
        .expect("the wrap half");
    let domain = label_of(session, wrap_half)
        .trim_start_matches("p11vault-sd/")
        .trim_end_matches("/wrap")
        .to_owned();
    let domain = VersionId::parse_hex(&domain).expect("a domain id");
    let known = |value: [u8; 32]| {
        let h = session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Value(value.to_vec()),
            ])
            .expect("a known key");
        session
            .wrap_key(key_wrap, wrap_half, h)
            .expect("the wrap half wraps it")
    };
    let material = known([0x11; 32]);
    let content_key = [0x22u8; 32];
    let wrapped_content_key = known(content_key);
    let payload = KeyPayload {
        name: "forged".into(),
        created: 1,
        deletion: None,
        versions: vec![VersionPayload {
            id: VersionId::random().to_string(),
            kind: KeyKind::Oct { bits: 256 },
            key_ops: KeyOps::all_for(KeyFamily::Oct),
            enabled: true,
            nbf: None,
            exp: None,
            created: 1,
            updated: 1,
            tags: Default::default(),
            public: PublicKey::Oct,
            origin: "generated".into(),
            material: base64::engine::general_purpose::STANDARD.encode(material),
        }],
        rotation_policy: None,
    };
    let plain = serde_json::to_vec(&payload).expect("JSON");
    let iv = [0x33u8; 12];
    let mut raw = Envelope::header(
        Content::Key,
        domain,
        &wrapped_content_key,
        &iv,
        plain.len() + 16,
    )
    .expect("a header");
    let mut tag = [0u8; 16];
    let sealed = openssl::symm::encrypt_aead(
        openssl::symm::Cipher::aes_256_gcm(),
        &content_key,
        Some(&iv),
        &raw,
        &plain,
        &mut tag,
    )
    .expect("GCM");
    raw.extend_from_slice(&sealed);
    raw.extend_from_slice(&tag);
    raw.extend_from_slice(&[0u8; 32]);
    raw
}
