//! Plain domain types shared by every layer: key names, version ids, key kinds, operations,
//! the metadata record of one key version, and rotation policies (`rotation.rs`). Nothing here
//! knows about HTTP, SQLite or PKCS#11.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod hsm;
mod intent;
mod job;
mod rotation;
pub use hsm::{ActivationStatus, HsmState};
pub use intent::{Intent, PurgeReason, UpdateTarget};
pub use job::{FailureKind, Job, JobKind, JobStatus};
pub use rotation::{IsoDuration, PolicyRecord, RotationPolicy, RotationTrigger};

/// Client input that does not make a valid domain value (a bad key name, curve, operation,
/// tag, or attribute). The service answers it as a 400 with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Longest key name accepted (Azure's limit).
pub const MAX_NAME_LEN: usize = 127;
/// Most tags on one key version, and the longest tag name and value (Azure's limits).
pub const MAX_TAGS: usize = 15;
pub const MAX_TAG_NAME_LEN: usize = 512;
pub const MAX_TAG_VALUE_LEN: usize = 256;

/// A key name: `^[0-9a-zA-Z-]{1,127}$`. Names compare case-insensitively, as in Azure.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_NAME_LEN
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError(format!(
                "The key name '{}' is invalid: a key name is 1 to {MAX_NAME_LEN} characters of 0-9, a-z, A-Z and '-'.",
                truncate_for_message(raw)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cuts user input that is echoed in an error message to a readable length.
pub fn truncate_for_message(raw: &str) -> String {
    const MAX: usize = 140;
    if raw.chars().count() <= MAX {
        raw.to_owned()
    } else {
        let cut: String = raw.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// A key version id: 16 random bytes. It is the `CKA_ID` of the version's token objects, and its
/// 32-character lowercase hex form is the version segment of the `kid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId([u8; 16]);

impl VersionId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        // An unavailable OS random source leaves the process unable to do anything safely.
        getrandom::fill(&mut bytes).expect("the OS random number generator is available");
        Self(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the version segment of a URL. Anything but 32 hex characters cannot name a version
    /// of ours, so it is reported as "not found" by the caller rather than as bad input.
    pub fn parse_hex(raw: &str) -> Option<Self> {
        if raw.len() != 32 {
            return None;
        }
        let bytes = hex::decode(raw.to_ascii_lowercase()).ok()?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for VersionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for VersionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse_hex(&raw).ok_or_else(|| serde::de::Error::custom("not a version id"))
    }
}

impl Serialize for KeyName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({self})")
    }
}

/// Elliptic curves a key can live on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    #[serde(rename = "P-256")]
    P256,
    #[serde(rename = "P-384")]
    P384,
    #[serde(rename = "P-521")]
    P521,
    #[serde(rename = "P-256K")]
    P256K,
}

impl Curve {
    pub const ALL: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::P256K];

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|c| c.jwk_name() == raw)
            .ok_or_else(|| {
                ParseError(format!(
                    "The curve '{}' is not supported; use one of P-256, P-384, P-521, P-256K.",
                    truncate_for_message(raw)
                ))
            })
    }

    pub fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::P256K => "P-256K",
        }
    }

    /// Bytes in one coordinate (and in the private scalar).
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 | Curve::P256K => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// DER encoding of the curve's OID, the value of `CKA_EC_PARAMS`.
    pub fn der_oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            Curve::P256K => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
        }
    }
}

/// What kind of key a version is, with its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum KeyKind {
    Rsa { bits: u32 },
    Ec { curve: Curve },
    Oct { bits: u32 },
}

pub const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];

/// The public exponent an RSA key gets unless its create names another (F4).
pub const DEFAULT_PUBLIC_EXPONENT: u32 = 65_537;

/// A `public_exponent` a create may name: odd and at least 3 (RFC 8017 §3.1), and an int32, as
/// the API types it. Managed HSM documents no narrower set (the Python SDK's live tests make
/// e = 17 there); whether the token makes keys with it is the token's to say.
pub fn check_public_exponent(e: u32) -> Result<u32, ParseError> {
    if e >= 3 && e % 2 == 1 && i32::try_from(e).is_ok() {
        Ok(e)
    } else {
        Err(ParseError(format!(
            "The public exponent {e} is not valid: it must be an odd number from 3 to {} (65537 unless you need another).",
            i32::MAX
        )))
    }
}

impl PublicKey {
    /// An RSA key's public exponent, if it is one a create could name.
    pub fn public_exponent(&self) -> Option<u32> {
        match self {
            PublicKey::Rsa { e, .. } if e.len() <= 4 => {
                let value = e.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b));
                check_public_exponent(value).ok()
            }
            _ => None,
        }
    }
}
pub const OCT_SIZES: [u32; 3] = [128, 192, 256];

/// The three families of `kty`; the `-HSM` forms name the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    Ec,
    Oct,
}

impl KeyFamily {
    pub fn parse_kty(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "RSA" | "RSA-HSM" => Ok(KeyFamily::Rsa),
            "EC" | "EC-HSM" => Ok(KeyFamily::Ec),
            "oct" | "oct-HSM" => Ok(KeyFamily::Oct),
            other => Err(ParseError(format!(
                "The key type (kty) '{}' is not supported; use one of RSA, RSA-HSM, EC, EC-HSM, oct, oct-HSM.",
                truncate_for_message(other)
            ))),
        }
    }

    /// Every key of this service lives in an HSM, so responses always carry the `-HSM` type.
    pub fn hsm_kty(self) -> &'static str {
        match self {
            KeyFamily::Rsa => "RSA-HSM",
            KeyFamily::Ec => "EC-HSM",
            KeyFamily::Oct => "oct-HSM",
        }
    }

    /// The operations a key of this family can perform.
    pub fn allowed_ops(self) -> &'static [KeyOp] {
        match self {
            KeyFamily::Rsa => &[
                KeyOp::Encrypt,
                KeyOp::Decrypt,
                KeyOp::Sign,
                KeyOp::Verify,
                KeyOp::WrapKey,
                KeyOp::UnwrapKey,
            ],
            KeyFamily::Ec => &[KeyOp::Sign, KeyOp::Verify],
            KeyFamily::Oct => &[
                KeyOp::Encrypt,
                KeyOp::Decrypt,
                KeyOp::WrapKey,
                KeyOp::UnwrapKey,
            ],
        }
    }
}

impl KeyKind {
    pub fn family(self) -> KeyFamily {
        match self {
            KeyKind::Rsa { .. } => KeyFamily::Rsa,
            KeyKind::Ec { .. } => KeyFamily::Ec,
            KeyKind::Oct { .. } => KeyFamily::Oct,
        }
    }
}

/// One operation of `key_ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyOp {
    #[serde(rename = "encrypt")]
    Encrypt,
    #[serde(rename = "decrypt")]
    Decrypt,
    #[serde(rename = "sign")]
    Sign,
    #[serde(rename = "verify")]
    Verify,
    #[serde(rename = "wrapKey")]
    WrapKey,
    #[serde(rename = "unwrapKey")]
    UnwrapKey,
}

impl KeyOp {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOp::Encrypt => "encrypt",
            KeyOp::Decrypt => "decrypt",
            KeyOp::Sign => "sign",
            KeyOp::Verify => "verify",
            KeyOp::WrapKey => "wrapKey",
            KeyOp::UnwrapKey => "unwrapKey",
        }
    }
}

/// A validated, duplicate-free, ordered set of operations that fit the key's family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOps(Vec<KeyOp>);

impl KeyOps {
    /// Every operation the family supports: what a key gets when the request names none.
    pub fn all_for(family: KeyFamily) -> Self {
        Self(family.allowed_ops().to_vec())
    }

    pub fn parse(raw: &[String], family: KeyFamily) -> Result<Self, ParseError> {
        let mut ops = Vec::with_capacity(raw.len());
        for name in raw {
            let op = family
                .allowed_ops()
                .iter()
                .copied()
                .find(|op| op.as_str() == name)
                .ok_or_else(|| {
                    let allowed: Vec<&str> =
                        family.allowed_ops().iter().map(|op| op.as_str()).collect();
                    ParseError(format!(
                        "The key operation '{}' is not valid for a key of type {}; allowed: {}.",
                        truncate_for_message(name),
                        family.hsm_kty(),
                        allowed.join(", ")
                    ))
                })?;
            if !ops.contains(&op) {
                ops.push(op);
            }
        }
        ops.sort();
        Ok(Self(ops))
    }

    /// No operation at all: the usage of a soft-deleted key.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn contains(&self, op: KeyOp) -> bool {
        self.0.contains(&op)
    }

    pub fn iter(&self) -> impl Iterator<Item = KeyOp> + '_ {
        self.0.iter().copied()
    }
}

/// The public part of a key, as `get` returns it. Symmetric keys have none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Oct,
}

/// Deletion state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

/// Where a version's material came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Generated,
    Imported,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "generated" => Some(Origin::Generated),
            "imported" => Some(Origin::Imported),
            _ => None,
        }
    }
}

pub type Tags = BTreeMap<String, String>;

/// Checks tag count and lengths against Azure's limits.
pub fn validate_tags(tags: &Tags) -> Result<(), ParseError> {
    if tags.len() > MAX_TAGS {
        return Err(ParseError(format!(
            "A key may carry at most {MAX_TAGS} tags; {} were given.",
            tags.len()
        )));
    }
    for (name, value) in tags {
        if name.is_empty() || name.chars().count() > MAX_TAG_NAME_LEN {
            return Err(ParseError(format!(
                "A tag name must be 1 to {MAX_TAG_NAME_LEN} characters long."
            )));
        }
        if value.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(ParseError(format!(
                "The value of tag '{}' is longer than {MAX_TAG_VALUE_LEN} characters.",
                truncate_for_message(name)
            )));
        }
    }
    Ok(())
}

/// The user-settable attributes of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub enabled: bool,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
}

impl Attributes {
    /// Times are Unix seconds, not negative, and `nbf` does not lie after `exp`.
    pub fn validate(&self) -> Result<(), ParseError> {
        for (name, value) in [("nbf", self.not_before), ("exp", self.expires)] {
            if value.is_some_and(|v| v < 0) {
                return Err(ParseError(format!(
                    "The attribute '{name}' must not be negative."
                )));
            }
        }
        if let (Some(nbf), Some(exp)) = (self.not_before, self.expires)
            && nbf > exp
        {
            return Err(ParseError("The key's 'nbf' lies after its 'exp'.".into()));
        }
        Ok(())
    }
}

impl Default for Attributes {
    fn default() -> Self {
        Self {
            enabled: true,
            not_before: None,
            expires: None,
        }
    }
}

/// Everything the metadata store knows about one version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub name: KeyName,
    pub version: VersionId,
    pub kind: KeyKind,
    pub ops: KeyOps,
    pub attributes: Attributes,
    pub created: i64,
    pub updated: i64,
    pub tags: Tags,
    pub public: PublicKey,
    pub origin: Origin,
}

/// Settings of the whole service that shape every key bundle's attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
    pub purge_protection: bool,
}

impl Retention {
    pub const MIN_DAYS: u32 = 7;
    pub const MAX_DAYS: u32 = 90;
    pub const DEFAULT_DAYS: u32 = 90;

    /// Azure's `recoveryLevel` for this retention and purge protection.
    pub fn recovery_level(self) -> &'static str {
        match (self.days >= Self::MAX_DAYS, self.purge_protection) {
            (true, false) => "Recoverable+Purgeable",
            (true, true) => "Recoverable",
            (false, false) => "CustomizedRecoverable+Purgeable",
            (false, true) => "CustomizedRecoverable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_azure_pattern() {
        for good in ["a", "A-1", "key-0123", &"k".repeat(127)] {
            assert!(KeyName::parse(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "a_b", "a b", "ключ", "a/b", "a.b", &"k".repeat(128)] {
            assert!(
                matches!(KeyName::parse(bad), Err(ParseError(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn version_ids_round_trip_through_hex() {
        let v = VersionId::random();
        let text = v.to_string();
        assert_eq!(text.len(), 32);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(VersionId::parse_hex(&text), Some(v));
        assert_eq!(VersionId::parse_hex(&text.to_uppercase()), Some(v));
        assert_eq!(VersionId::parse_hex("abc"), None);
        assert_eq!(VersionId::parse_hex(&"zz".repeat(16)), None);
    }

    #[test]
    fn key_ops_are_checked_against_the_family() {
        let ops = KeyOps::parse(
            &["verify".into(), "sign".into(), "sign".into()],
            KeyFamily::Ec,
        )
        .expect("sign and verify fit an EC key");
        assert_eq!(
            ops.iter().collect::<Vec<_>>(),
            vec![KeyOp::Sign, KeyOp::Verify]
        );
        assert!(KeyOps::parse(&["encrypt".into()], KeyFamily::Ec).is_err());
        assert!(KeyOps::parse(&["sign".into()], KeyFamily::Oct).is_err());
        assert!(KeyOps::parse(&["export".into()], KeyFamily::Rsa).is_err());
        assert!(KeyOps::parse(&[], KeyFamily::Rsa).is_ok());
    }

    #[test]
    fn recovery_level_follows_retention_and_protection() {
        let r = |days, purge_protection| Retention {
            days,
            purge_protection,
        };
        assert_eq!(r(90, false).recovery_level(), "Recoverable+Purgeable");
        assert_eq!(r(90, true).recovery_level(), "Recoverable");
        assert_eq!(
            r(7, false).recovery_level(),
            "CustomizedRecoverable+Purgeable"
        );
        assert_eq!(r(30, true).recovery_level(), "CustomizedRecoverable");
    }

    #[test]
    fn tags_beyond_the_limits_are_refused() {
        let many: Tags = (0..16).map(|i| (format!("t{i}"), "v".into())).collect();
        assert!(validate_tags(&many).is_err());
        let long: Tags = [("t".into(), "v".repeat(257))].into();
        assert!(validate_tags(&long).is_err());
        let ok: Tags = [("purpose".into(), "test".into())].into();
        assert!(validate_tags(&ok).is_ok());
    }
}
