//! The backup format (DESIGN §8), one envelope for a single key's backup blob and for the file
//! of a full backup. Version 1, all integers big-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "P11VBKUP"
//!      8     2  format version (1)
//!     10     1  content: 1 = one key, 2 = a full backup
//!     11    16  security domain id
//!     27     2  n = length of the wrapped content key
//!     29     n  content key (AES-256) wrapped under the domain key (CKM_AES_KEY_WRAP_PAD)
//!   29+n    12  GCM IV
//!   41+n     4  m = length of the sealed payload
//!   45+n     m  payload sealed with AES-256-GCM under the content key (128-bit tag last);
//!               the additional authenticated data is every byte before it
//! 45+n+m    32  HMAC-SHA-256 of every byte before it, computed in the token with the
//!               domain's private MAC key
//! ```
//!
//! The payload is JSON ([`KeyPayload`] or [`FullPayload`]). Key material inside it is each
//! version's secret object wrapped under the domain key by the token (`C_WrapKey`), so it is
//! sealed twice: readable only through the domain's unwrap half, and bound to the rest of the
//! backup by the GCM tag. The seal, the tag check and both unwraps run in the token; the content
//! key never exists outside it. The HMAC is what shows that this HSM made the backup: the wrap
//! half is a public object, which a token may let anyone use without the PIN, so a content key
//! that unwraps proves nothing by itself; the MAC key is private. It is checked first.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::Deletion;
use crate::model::{
    Attributes, KeyKind, KeyName, KeyOps, Origin, PolicyRecord, PublicKey, Tags, VersionId,
    VersionRecord,
};
use crate::store::{KeySnapshot, RoleAssignmentRow, RoleDefinitionRow};

pub const MAGIC: &[u8; 8] = b"P11VBKUP";
pub const FORMAT_VERSION: u16 = 1;
pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const MAC_LEN: usize = 32;
/// Bytes before the wrapped content key.
const FIXED_PREFIX: usize = 8 + 2 + 1 + 16 + 2;
/// The largest wrapped content key accepted: an AES-256 key wraps to 40 bytes.
const MAX_WRAPPED_KEY: usize = 64;

/// What an envelope holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Key = 1,
    Full = 2,
}

/// A parsed envelope: the parts the token needs to open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub content: Content,
    pub domain: VersionId,
    pub wrapped_key: Vec<u8>,
    pub iv: [u8; IV_LEN],
    /// Every byte before the sealed payload: the GCM additional data.
    pub header: Vec<u8>,
    pub sealed: Vec<u8>,
    /// HMAC-SHA-256 of header and sealed payload.
    pub mac: Vec<u8>,
}

impl Envelope {
    /// The header for a payload of `sealed_len` bytes (ciphertext and tag).
    pub fn header(
        content: Content,
        domain: VersionId,
        wrapped_key: &[u8],
        iv: &[u8; IV_LEN],
        sealed_len: usize,
    ) -> Result<Vec<u8>, Error> {
        let key_len = u16::try_from(wrapped_key.len())
            .map_err(|_| Error::Internal("the wrapped content key is too long".into()))?;
        let sealed_len = u32::try_from(sealed_len)
            .map_err(|_| Error::Internal("the backup is larger than 4 GiB".into()))?;
        let mut out = Vec::with_capacity(FIXED_PREFIX + wrapped_key.len() + IV_LEN + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.push(content as u8);
        out.extend_from_slice(domain.as_bytes());
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(wrapped_key);
        out.extend_from_slice(iv);
        out.extend_from_slice(&sealed_len.to_be_bytes());
        Ok(out)
    }

    /// Parses the envelope, checking everything that can be checked without the token. Every
    /// refusal is a 400 that says what is wrong.
    pub fn parse(raw: &[u8], domain: VersionId) -> Result<Envelope, Error> {
        let bad = |what: &str| Error::BadParameter(format!("The backup blob is {what}."));
        if raw.len() < MAGIC.len() || &raw[..MAGIC.len()] != MAGIC {
            return Err(bad("not a p11vault backup (wrong magic bytes)"));
        }
        if raw.len() < FIXED_PREFIX {
            return Err(bad("truncated"));
        }
        let version = u16::from_be_bytes([raw[8], raw[9]]);
        if version != FORMAT_VERSION {
            return Err(Error::BadParameter(format!(
                "The backup blob has format version {version}; this service reads version {FORMAT_VERSION}."
            )));
        }
        let content = match raw[10] {
            1 => Content::Key,
            2 => Content::Full,
            other => return Err(bad(&format!("malformed (unknown content type {other})"))),
        };
        let blob_domain =
            VersionId::from_bytes(&raw[11..27]).ok_or_else(|| bad("malformed (domain id)"))?;
        if blob_domain != domain {
            return Err(Error::BadParameter(format!(
                "The backup was made under security domain {blob_domain}; this HSM's security domain is {domain}, so it cannot be restored here."
            )));
        }
        let key_len = usize::from(u16::from_be_bytes([raw[27], raw[28]]));
        if key_len == 0 || key_len > MAX_WRAPPED_KEY {
            return Err(bad("malformed (wrapped content key length)"));
        }
        let header_len = FIXED_PREFIX + key_len + IV_LEN + 4;
        if raw.len() < header_len {
            return Err(bad("truncated"));
        }
        let wrapped_key = raw[FIXED_PREFIX..FIXED_PREFIX + key_len].to_vec();
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&raw[FIXED_PREFIX + key_len..FIXED_PREFIX + key_len + IV_LEN]);
        let len_at = FIXED_PREFIX + key_len + IV_LEN;
        let sealed_len = u32::from_be_bytes([
            raw[len_at],
            raw[len_at + 1],
            raw[len_at + 2],
            raw[len_at + 3],
        ]) as usize;
        let rest = raw.len() - header_len;
        let Some(expected) = sealed_len.checked_add(MAC_LEN) else {
            return Err(bad("malformed (payload length)"));
        };
        if rest < expected {
            return Err(bad("truncated"));
        }
        if rest > expected {
            return Err(bad("malformed (bytes after the end)"));
        }
        if sealed_len < TAG_LEN {
            return Err(bad("malformed (no authentication tag)"));
        }
        Ok(Envelope {
            content,
            domain: blob_domain,
            wrapped_key,
            iv,
            header: raw[..header_len].to_vec(),
            sealed: raw[header_len..header_len + sealed_len].to_vec(),
            mac: raw[header_len + sealed_len..].to_vec(),
        })
    }

    /// The bytes the MAC covers: header and sealed payload.
    pub fn authenticated(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        out.extend_from_slice(&self.sealed);
        out
    }

    /// The whole envelope as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.authenticated();
        out.extend_from_slice(&self.mac);
        out
    }
}

/// One key in a backup: its versions, attributes, tags, rotation policy and (in a full backup)
/// deletion state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPayload {
    pub name: String,
    pub created: i64,
    pub deletion: Option<Deletion>,
    pub versions: Vec<VersionPayload>,
    /// Absent from backups made before rotation policies existed, and from those of keys
    /// without one (so releases that predate policies still read those). Its limits are
    /// checked as it is read (`model::RotationPolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<PolicyRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPayload {
    pub id: String,
    pub kind: KeyKind,
    pub key_ops: KeyOps,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub tags: Tags,
    pub public: PublicKey,
    pub origin: String,
    /// The secret object wrapped under the domain key, base64.
    pub material: String,
}

/// Everything a full backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullPayload {
    /// The HSM name the folder carries.
    pub hsm: String,
    pub taken: i64,
    pub state_seq: u64,
    pub purge_protection: bool,
    pub keys: Vec<KeyPayload>,
    pub role_definitions: Vec<RoleDefinitionRow>,
    pub role_assignments: Vec<RoleAssignmentRow>,
}

/// A key read back from a backup, checked, with each version's wrapped material.
#[derive(Clone, Debug)]
pub struct RestoredKey {
    pub key: KeySnapshot,
    /// In the order of `key.versions`.
    pub material: Vec<Vec<u8>>,
}

impl KeyPayload {
    /// A key's payload from its snapshot and each version's wrapped material.
    pub fn new(key: &KeySnapshot, material: &[Vec<u8>]) -> KeyPayload {
        KeyPayload {
            name: key.name.to_string(),
            created: key.created,
            deletion: key.deletion,
            versions: key
                .versions
                .iter()
                .zip(material)
                .map(|(v, m)| VersionPayload {
                    id: v.version.to_string(),
                    kind: v.kind,
                    key_ops: v.ops.clone(),
                    enabled: v.attributes.enabled,
                    nbf: v.attributes.not_before,
                    exp: v.attributes.expires,
                    created: v.created,
                    updated: v.updated,
                    tags: v.tags.clone(),
                    public: v.public.clone(),
                    origin: v.origin.as_str().to_owned(),
                    material: STANDARD.encode(m),
                })
                .collect(),
            rotation_policy: key.rotation_policy.clone(),
        }
    }

    /// Checks every field as if a client had sent it: the payload authenticated, but a bug in
    /// an older writer must not put an invalid key into the store.
    pub fn check(self) -> Result<RestoredKey, Error> {
        let bad = |what: String| Error::BadParameter(format!("The backup holds {what}."));
        let name = KeyName::parse(&self.name)
            .map_err(|_| bad(format!("an invalid key name {:?}", self.name)))?;
        if self.versions.is_empty() {
            return Err(bad(format!("key {name} without versions")));
        }
        let mut versions = Vec::with_capacity(self.versions.len());
        let mut material = Vec::with_capacity(self.versions.len());
        for v in self.versions {
            let id = VersionId::parse_hex(&v.id)
                .ok_or_else(|| bad(format!("an invalid version id {:?}", v.id)))?;
            let family = v.kind.family();
            if v.key_ops
                .iter()
                .any(|op| !family.allowed_ops().contains(&op))
            {
                return Err(bad(format!("operations that do not fit version {id}")));
            }
            let public_fits = matches!(
                (&v.public, family),
                (PublicKey::Rsa { .. }, crate::model::KeyFamily::Rsa)
                    | (PublicKey::Ec { .. }, crate::model::KeyFamily::Ec)
                    | (PublicKey::Oct, crate::model::KeyFamily::Oct)
            );
            if !public_fits {
                return Err(bad(format!("a public key that does not fit version {id}")));
            }
            let attributes = Attributes {
                enabled: v.enabled,
                not_before: v.nbf,
                expires: v.exp,
            };
            attributes.validate()?;
            crate::model::validate_tags(&v.tags)?;
            let origin = Origin::parse(&v.origin)
                .ok_or_else(|| bad(format!("an unknown origin {:?}", v.origin)))?;
            let wrapped = STANDARD
                .decode(&v.material)
                .map_err(|_| bad(format!("unreadable material for version {id}")))?;
            versions.push(VersionRecord {
                name: name.clone(),
                version: id,
                kind: v.kind,
                ops: v.key_ops,
                attributes,
                created: v.created,
                updated: v.updated,
                tags: v.tags,
                public: v.public,
                origin,
            });
            material.push(wrapped);
        }
        Ok(RestoredKey {
            key: KeySnapshot {
                name,
                created: self.created,
                deletion: self.deletion,
                versions,
                rotation_policy: self.rotation_policy,
            },
            material,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(domain: VersionId) -> Vec<u8> {
        let wrapped = vec![7u8; 40];
        let iv = [9u8; IV_LEN];
        let sealed = vec![1u8; 100];
        let mut raw = Envelope::header(Content::Key, domain, &wrapped, &iv, sealed.len())
            .expect("the header fits");
        raw.extend_from_slice(&sealed);
        raw.extend_from_slice(&[3u8; MAC_LEN]);
        raw
    }

    #[test]
    fn an_envelope_round_trips() {
        let domain = VersionId::random();
        let raw = sample(domain);
        let env = Envelope::parse(&raw, domain).expect("parses");
        assert_eq!(env.content, Content::Key);
        assert_eq!(env.wrapped_key, vec![7u8; 40]);
        assert_eq!(env.iv, [9u8; IV_LEN]);
        assert_eq!(env.sealed.len(), 100);
        assert_eq!(env.mac, vec![3u8; MAC_LEN]);
        assert_eq!(env.to_bytes(), raw);
    }

    #[test]
    fn every_cut_of_an_envelope_is_refused_as_truncated_or_malformed() {
        let domain = VersionId::random();
        let raw = sample(domain);
        for len in 0..raw.len() {
            let err = Envelope::parse(&raw[..len], domain).expect_err("a cut blob is refused");
            assert!(matches!(err, Error::BadParameter(_)), "{len}: {err:?}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        let err = Envelope::parse(&longer, domain).expect_err("trailing bytes are refused");
        assert!(err.to_string().contains("after the end"), "{err}");
    }

    #[test]
    fn a_foreign_domain_an_unknown_version_and_bad_magic_are_named() {
        let domain = VersionId::random();
        let raw = sample(domain);
        let other = VersionId::random();
        let err = Envelope::parse(&raw, other).expect_err("foreign domain");
        assert!(err.to_string().contains("security domain"), "{err}");

        let mut v2 = raw.clone();
        v2[9] = 2;
        let err = Envelope::parse(&v2, domain).expect_err("unknown version");
        assert!(err.to_string().contains("format version 2"), "{err}");

        let mut magic = raw.clone();
        magic[0] = b'X';
        let err = Envelope::parse(&magic, domain).expect_err("bad magic");
        assert!(err.to_string().contains("not a p11vault backup"), "{err}");

        let mut content = raw;
        content[10] = 9;
        let err = Envelope::parse(&content, domain).expect_err("unknown content");
        assert!(err.to_string().contains("content type"), "{err}");
    }

    /// One AES-256 version as a payload carries it.
    fn oct_version() -> VersionPayload {
        VersionPayload {
            id: VersionId::random().to_string(),
            kind: KeyKind::Oct { bits: 256 },
            key_ops: KeyOps::all_for(crate::model::KeyFamily::Oct),
            enabled: true,
            nbf: None,
            exp: None,
            created: 1,
            updated: 1,
            tags: Tags::new(),
            public: PublicKey::Oct,
            origin: "generated".into(),
            material: STANDARD.encode([0u8; 40]),
        }
    }

    #[test]
    fn a_payload_is_checked_like_client_input() {
        let good = KeyPayload {
            name: "k1".into(),
            created: 1,
            deletion: None,
            versions: vec![oct_version()],
            rotation_policy: None,
        };
        assert!(good.clone().check().is_ok());
        let mut bad_name = good.clone();
        bad_name.name = "a/b".into();
        assert!(bad_name.check().is_err());
        let mut bad_public = good.clone();
        bad_public.versions[0].public = PublicKey::Rsa {
            n: vec![1],
            e: vec![3],
        };
        assert!(bad_public.check().is_err());
        let mut bad_ops = good.clone();
        bad_ops.versions[0].key_ops = KeyOps::all_for(crate::model::KeyFamily::Ec);
        assert!(bad_ops.check().is_err());
        let mut none = good;
        none.versions.clear();
        assert!(none.check().is_err());
    }

    #[test]
    fn a_rotation_policy_travels_in_the_payload_and_only_when_there_is_one() {
        let version = oct_version();
        let without = KeyPayload {
            name: "k1".into(),
            created: 1,
            deletion: None,
            versions: vec![version],
            rotation_policy: None,
        };
        let json = serde_json::to_value(&without).expect("serialises");
        assert!(
            json.get("rotation_policy").is_none(),
            "a release before policies reads it: {json}"
        );
        let back: KeyPayload = serde_json::from_value(json).expect("a payload of before");
        assert_eq!(back.rotation_policy, None);

        let policy = crate::model::RotationPolicy::new(
            Some(crate::model::RotationTrigger::AfterCreate(
                crate::model::IsoDuration::parse("P30D").expect("duration"),
            )),
            Some(crate::model::IsoDuration::parse("P90D").expect("duration")),
        )
        .expect("policy");
        let mut with = without.clone();
        with.rotation_policy = Some(PolicyRecord {
            policy,
            created: 5,
            updated: 6,
        });
        let json = serde_json::to_string(&with).expect("serialises");
        let back: KeyPayload = serde_json::from_str(&json).expect("parses");
        let restored = back.check().expect("checks");
        assert_eq!(restored.key.rotation_policy, with.rotation_policy);

        // A policy Managed HSM would refuse is refused on the way back too.
        let bad = json.replace("\"P30D\"", "\"P1D\"");
        assert_ne!(bad, json);
        assert!(serde_json::from_str::<KeyPayload>(&bad).is_err());
    }
}
