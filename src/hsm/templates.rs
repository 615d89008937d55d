//! Object templates: the one place that decides which attributes our token objects carry
//! (DESIGN §4, §5, §8). Every key object is a private, sensitive token object that cannot be
//! copied; its usage flags follow `key_ops`.

use cryptoki::object::{Attribute, KeyType, ObjectClass};

use crate::model::{KeyFamily, KeyOp, KeyOps, VersionId};

/// Label prefixes. A live version's objects are `p11vault/{name}/{version}`; a soft-deleted
/// version's objects are relabelled `p11vault-deleted/{name}/{version}`; the security domain's
/// objects are `p11vault-sd/{domain}/wrap|unwrap|mac`; the sign-in's HMAC key (independent of
/// the security domain, which a fresh HSM may not have yet) is `p11vault-id/{id}/mac`.
pub const LIVE_PREFIX: &str = "p11vault/";
pub const DELETED_PREFIX: &str = "p11vault-deleted/";
pub const DOMAIN_PREFIX: &str = "p11vault-sd/";
pub const IDENTITY_PREFIX: &str = "p11vault-id/";

pub fn live_label(name: &str, version: VersionId) -> Vec<u8> {
    format!("{LIVE_PREFIX}{name}/{version}").into_bytes()
}

pub fn deleted_label(name: &str, version: VersionId) -> Vec<u8> {
    format!("{DELETED_PREFIX}{name}/{version}").into_bytes()
}

/// The label of one of a security domain's objects: `role` is `wrap`, `unwrap` or `mac`.
pub fn domain_label(domain: VersionId, role: &str) -> Vec<u8> {
    format!("{DOMAIN_PREFIX}{domain}/{role}").into_bytes()
}

/// The label of the sign-in's HMAC key `id` (`hsm::identity`).
pub fn identity_label(id: VersionId) -> Vec<u8> {
    format!("{IDENTITY_PREFIX}{id}/mac").into_bytes()
}

/// How key material may leave the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extraction {
    /// `CKA_EXTRACTABLE=true` with `CKA_WRAP_WITH_TRUSTED=true`: the material can leave only
    /// wrapped under a trusted key. Key backups under [`super::profile::DomainModel::Trusted`].
    WrappedByTrustedOnly,
    /// `CKA_EXTRACTABLE=true`, `CKA_WRAP_WITH_TRUSTED=false`: the material can leave wrapped
    /// under any key a logged-in user may wrap with. Key backups under
    /// [`super::profile::DomainModel::Private`].
    Wrapped,
    /// `CKA_EXTRACTABLE=false`: nothing ever leaves; key backups are impossible.
    Never,
}

/// Attributes every key object shares.
fn common(id: VersionId, label: &[u8], extraction: Extraction) -> Vec<Attribute> {
    let mut attrs = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Destroyable(true),
        // A copyable key defeats soft-delete: C_CopyObject with usage flags set yields a
        // working copy of a deleted key.
        Attribute::Copyable(false),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Label(label.to_vec()),
    ];
    attrs.extend(extraction_attrs(extraction));
    attrs
}

fn extraction_attrs(extraction: Extraction) -> Vec<Attribute> {
    match extraction {
        Extraction::WrappedByTrustedOnly => vec![
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
        ],
        Extraction::Wrapped => vec![
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(false),
        ],
        Extraction::Never => vec![Attribute::Extractable(false)],
    }
}

/// The usage flags of the object holding the secret half (AES key or private key), every one
/// the object has set explicitly (a token may default a missing one to true). `wrapKey`
/// and `unwrapKey` also switch on `CKA_ENCRYPT`/`CKA_DECRYPT`: the API's wrap operations take
/// raw key bytes, which the token processes with `C_Encrypt`/`C_Decrypt` (RSA).
pub fn secret_usage(family: KeyFamily, ops: &KeyOps) -> Vec<Attribute> {
    let on = |op| ops.contains(op);
    match family {
        KeyFamily::Oct => vec![
            Attribute::Encrypt(on(KeyOp::Encrypt) || on(KeyOp::WrapKey)),
            Attribute::Decrypt(on(KeyOp::Decrypt) || on(KeyOp::UnwrapKey)),
            Attribute::Wrap(on(KeyOp::WrapKey)),
            Attribute::Unwrap(on(KeyOp::UnwrapKey)),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ],
        KeyFamily::Rsa => vec![
            Attribute::Sign(on(KeyOp::Sign)),
            Attribute::Decrypt(on(KeyOp::Decrypt) || on(KeyOp::UnwrapKey)),
            Attribute::Unwrap(on(KeyOp::UnwrapKey)),
            Attribute::SignRecover(false),
            Attribute::Derive(false),
        ],
        // SoftHSM2 defaults the flags a template leaves out to true: every one is set.
        KeyFamily::Ec => vec![
            Attribute::Sign(on(KeyOp::Sign)),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Derive(false),
        ],
    }
}

/// The usage flags of the public-key object (RSA and EC only).
pub fn public_usage(family: KeyFamily, ops: &KeyOps) -> Vec<Attribute> {
    let on = |op| ops.contains(op);
    match family {
        KeyFamily::Rsa => vec![
            Attribute::Verify(on(KeyOp::Verify)),
            Attribute::Encrypt(on(KeyOp::Encrypt) || on(KeyOp::WrapKey)),
            Attribute::Wrap(on(KeyOp::WrapKey)),
            Attribute::VerifyRecover(false),
        ],
        KeyFamily::Ec => vec![
            Attribute::Verify(on(KeyOp::Verify)),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::VerifyRecover(false),
        ],
        KeyFamily::Oct => Vec::new(),
    }
}

/// Template for an AES key generated in the token.
pub fn aes_generate(
    id: VersionId,
    label: &[u8],
    bits: u32,
    ops: &KeyOps,
    extraction: Extraction,
) -> Vec<Attribute> {
    let mut attrs = common(id, label, extraction);
    attrs.push(Attribute::Sensitive(true));
    attrs.push(Attribute::ValueLen(u64::from(bits / 8).into()));
    attrs.extend(secret_usage(KeyFamily::Oct, ops));
    attrs
}

/// Templates (public, private) for an RSA or EC key pair generated in the token. `params` is
/// `ModulusBits`/`PublicExponent` for RSA or `EcParams` for EC.
pub fn pair_generate(
    id: VersionId,
    label: &[u8],
    family: KeyFamily,
    params: Vec<Attribute>,
    ops: &KeyOps,
    extraction: Extraction,
) -> (Vec<Attribute>, Vec<Attribute>) {
    let mut public = public_common(id, label);
    public.extend(params);
    public.extend(public_usage(family, ops));

    let mut private = common(id, label, extraction);
    private.push(Attribute::Sensitive(true));
    private.extend(secret_usage(family, ops));
    (public, private)
}

/// The public-key object: private to the token user (invisible without login), not copyable.
fn public_common(id: VersionId, label: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Destroyable(true),
        Attribute::Copyable(false),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Label(label.to_vec()),
    ]
}

/// Template for importing a secret (AES) or private key: the component attributes come from the
/// caller, the policy attributes from here.
pub fn secret_import(
    id: VersionId,
    label: &[u8],
    family: KeyFamily,
    components: Vec<Attribute>,
    ops: &KeyOps,
    extraction: Extraction,
) -> Vec<Attribute> {
    let (class, key_type) = match family {
        KeyFamily::Oct => (ObjectClass::SECRET_KEY, KeyType::AES),
        KeyFamily::Rsa => (ObjectClass::PRIVATE_KEY, KeyType::RSA),
        KeyFamily::Ec => (ObjectClass::PRIVATE_KEY, KeyType::EC),
    };
    let mut attrs = vec![Attribute::Class(class), Attribute::KeyType(key_type)];
    attrs.extend(common(id, label, extraction));
    attrs.push(Attribute::Sensitive(true));
    attrs.extend(components);
    attrs.extend(secret_usage(family, ops));
    attrs
}

/// Template for a secret object unwrapped from a backup: the attributes of [`secret_import`]
/// without the material, which the token supplies from the wrapped bytes.
pub fn secret_unwrap(
    id: VersionId,
    label: &[u8],
    family: KeyFamily,
    ops: &KeyOps,
    extraction: Extraction,
) -> Vec<Attribute> {
    secret_import(id, label, family, Vec::new(), ops, extraction)
}

/// Template for importing the public half of an RSA or EC key.
pub fn public_import(
    id: VersionId,
    label: &[u8],
    family: KeyFamily,
    components: Vec<Attribute>,
    ops: &KeyOps,
) -> Vec<Attribute> {
    let key_type = match family {
        KeyFamily::Rsa => KeyType::RSA,
        _ => KeyType::EC,
    };
    let mut attrs = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type),
    ];
    attrs.extend(public_common(id, label));
    attrs.extend(components);
    attrs.extend(public_usage(family, ops));
    attrs
}

/// The security domain's wrap half, without the attributes that make it fixed (and, under the
/// trusted domain model, trusted): `CKA_TOKEN`, `CKA_MODIFIABLE=false`, `CKA_COPYABLE=false`
/// and `CKA_TRUSTED` are added where it is made (`Module::create_security_domain`; a trusted
/// half by `hsm::profile::create_trusted`, the way the token allows). It may wrap and nothing
/// else, and it can never be modified, so nobody can switch on `CKA_UNWRAP` and use it to open
/// backups. `private` unless it is a trusted half on a token whose SO cannot make private
/// objects (SoftHSM2, data dirs of the trusted model).
pub fn domain_wrap_half(domain: VersionId, value: &[u8], private: bool) -> Vec<Attribute> {
    let mut attrs = domain_half_common(domain, "wrap", value);
    attrs.extend([
        Attribute::Private(private),
        Attribute::Wrap(true),
        Attribute::Unwrap(false),
    ]);
    attrs
}

/// The security domain's unwrap half, created by the user: a private, login-protected object
/// holding the same value, which may unwrap and nothing else.
pub fn domain_unwrap_half(domain: VersionId, value: &[u8]) -> Vec<Attribute> {
    let mut attrs = domain_half_common(domain, "unwrap", value);
    attrs.extend([
        Attribute::Token(true),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Private(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(true),
    ]);
    attrs
}

/// The security domain's MAC key: private, login-protected, sign and verify only, never
/// leaves the token. It authenticates backups.
pub fn domain_mac(domain: VersionId, label: Vec<u8>) -> Vec<Attribute> {
    hmac_key(domain, label)
}

/// The sign-in's HMAC key (identity headers and the tokens the identity endpoint issues): the
/// same template as the domain's MAC key, under its own id and label, so that it exists
/// whether or not the HSM holds a security domain.
pub fn identity_mac(id: VersionId) -> Vec<Attribute> {
    hmac_key(id, identity_label(id))
}

/// A private, sensitive, non-extractable, non-modifiable generic secret of 32 bytes that can
/// only sign and verify.
fn hmac_key(id: VersionId, label: Vec<u8>) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::ValueLen(32.into()),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Label(label),
    ]
}

/// The security domain's MAC key made from a value the domain carries (a domain made by
/// download or upload, whose values leave or enter in the security-domain file): the
/// attributes of [`domain_mac`], with the value instead of its length.
pub fn domain_mac_import(domain: VersionId, value: &[u8]) -> Vec<Attribute> {
    let mut attrs = domain_mac(domain, domain_label(domain, "mac"));
    attrs.retain(|a| !matches!(a, Attribute::ValueLen(_)));
    attrs.push(Attribute::Value(value.to_vec()));
    attrs
}

/// The role in the label of a transfer key's two objects (`p11vault-sd/{id}/transfer-…`):
/// the id is the transfer key's own, not a domain's.
pub const TRANSFER_PRIVATE: &str = "transfer-private";
pub const TRANSFER_PUBLIC: &str = "transfer-public";

/// The transfer key of a recovery (RSA, 4096 bits): the private half decrypts (the restore
/// blob's content key, RSA-OAEP-256) and signs (its own certificate, once), never leaves the
/// token; the public half only exists so the token can give its modulus back. Both are
/// private objects, invisible without a login, and neither can be modified or copied.
pub fn transfer_pair(id: VersionId, bits: u64) -> (Vec<Attribute>, Vec<Attribute>) {
    let common = |role: &str| {
        vec![
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
            Attribute::Destroyable(true),
            Attribute::Derive(false),
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Label(domain_label(id, role)),
        ]
    };
    let mut public = common(TRANSFER_PUBLIC);
    public.extend([
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::ModulusBits(bits.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
    ]);
    let mut private = common(TRANSFER_PRIVATE);
    private.extend([
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(true),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Unwrap(false),
    ]);
    (public, private)
}

fn domain_half_common(domain: VersionId, role: &str, value: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Destroyable(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Id(domain.as_bytes().to_vec()),
        Attribute::Label(domain_label(domain, role)),
        Attribute::Value(value.to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(attrs: &[Attribute], wanted: &Attribute) -> bool {
        attrs.iter().any(|a| a == wanted)
    }

    #[test]
    fn every_key_object_is_private_sensitive_and_not_copyable() {
        let id = VersionId::random();
        let ops = KeyOps::all_for(KeyFamily::Rsa);
        for extraction in [
            Extraction::WrappedByTrustedOnly,
            Extraction::Wrapped,
            Extraction::Never,
        ] {
            let (public, private) =
                pair_generate(id, b"l", KeyFamily::Rsa, vec![], &ops, extraction);
            let aes = aes_generate(id, b"l", 256, &KeyOps::all_for(KeyFamily::Oct), extraction);
            for secret in [&private, &aes] {
                assert!(has(secret, &Attribute::Sensitive(true)));
                assert!(has(secret, &Attribute::Private(true)));
                assert!(has(secret, &Attribute::Copyable(false)));
                assert!(has(secret, &Attribute::Modifiable(true)));
            }
            assert!(has(&public, &Attribute::Copyable(false)));
            let extractable = extraction != Extraction::Never;
            assert!(has(&private, &Attribute::Extractable(extractable)));
            assert_eq!(
                has(&private, &Attribute::WrapWithTrusted(true)),
                extraction == Extraction::WrappedByTrustedOnly
            );
        }
    }

    #[test]
    fn usage_flags_follow_key_ops() {
        let ops = KeyOps::parse(&["sign".into()], KeyFamily::Rsa).expect("sign fits RSA");
        let secret = secret_usage(KeyFamily::Rsa, &ops);
        assert!(has(&secret, &Attribute::Sign(true)));
        assert!(has(&secret, &Attribute::Decrypt(false)));
        assert!(has(&secret, &Attribute::Unwrap(false)));
        let public = public_usage(KeyFamily::Rsa, &ops);
        assert!(has(&public, &Attribute::Verify(false)));
        assert!(has(&public, &Attribute::Encrypt(false)));
    }

    #[test]
    fn the_domain_halves_split_wrap_from_unwrap() {
        let d = VersionId::random();
        let wrap = domain_wrap_half(d, &[0u8; 32], false);
        let unwrap = domain_unwrap_half(d, &[0u8; 32]);
        assert!(has(&wrap, &Attribute::Unwrap(false)) && has(&wrap, &Attribute::Private(false)));
        assert!(has(&unwrap, &Attribute::Private(true)) && has(&unwrap, &Attribute::Wrap(false)));
        assert!(has(&unwrap, &Attribute::Modifiable(false)));
    }
}
