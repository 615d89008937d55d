//! Key operations (encrypt, decrypt, sign, verify, wrapKey, unwrapKey) and random bytes: which
//! algorithm fits which key, what a request must carry, and the checks every operation passes
//! before the token sees it (the key is live, enabled, inside `nbf`/`exp`, and allows the
//! operation in `key_ops`).

use zeroize::Zeroizing;

use super::{KeyService, not_found};
use crate::error::{Error, Reason};
use crate::hsm::KeyHandles;
use crate::hsm::oaep::OaepHash;
use crate::hsm::ops::{AesMode, Hash, RsaPadding, SignScheme};
use crate::model::{
    Curve, KeyKind, KeyName, KeyOp, VersionId, VersionRecord, truncate_for_message,
};

/// A JWS signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignAlg {
    Rs(Hash),
    Ps(Hash),
    Es(Curve),
}

impl SignAlg {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        Ok(match raw {
            "RS256" => SignAlg::Rs(Hash::Sha256),
            "RS384" => SignAlg::Rs(Hash::Sha384),
            "RS512" => SignAlg::Rs(Hash::Sha512),
            "PS256" => SignAlg::Ps(Hash::Sha256),
            "PS384" => SignAlg::Ps(Hash::Sha384),
            "PS512" => SignAlg::Ps(Hash::Sha512),
            "ES256" => SignAlg::Es(Curve::P256),
            "ES384" => SignAlg::Es(Curve::P384),
            "ES512" => SignAlg::Es(Curve::P521),
            "ES256K" => SignAlg::Es(Curve::P256K),
            other => {
                return Err(Error::BadParameter(format!(
                    "The signature algorithm '{}' is not supported; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or ES256K.",
                    truncate_for_message(other)
                )));
            }
        })
    }

    /// The digest length the algorithm signs.
    pub fn digest_len(self) -> usize {
        match self {
            SignAlg::Rs(h) | SignAlg::Ps(h) => h.output_len(),
            SignAlg::Es(Curve::P256 | Curve::P256K) => 32,
            SignAlg::Es(Curve::P384) => 48,
            SignAlg::Es(Curve::P521) => 64,
        }
    }

    fn scheme(self) -> SignScheme {
        match self {
            SignAlg::Rs(h) => SignScheme::Pkcs1(h),
            SignAlg::Ps(h) => SignScheme::Pss(h),
            SignAlg::Es(_) => SignScheme::Ecdsa,
        }
    }

    fn fits(self, kind: KeyKind) -> bool {
        match (self, kind) {
            (SignAlg::Rs(_) | SignAlg::Ps(_), KeyKind::Rsa { .. }) => true,
            (SignAlg::Es(want), KeyKind::Ec { curve }) => want == curve,
            _ => false,
        }
    }
}

/// A JWE key-management or content-encryption algorithm, as `encrypt`, `decrypt`, `wrapkey`
/// and `unwrapkey` take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncAlg {
    Rsa(RsaPadding),
    AesGcm {
        bits: u32,
    },
    AesCbc {
        bits: u32,
        pad: bool,
    },
    /// RFC 3394 key wrap; `None` is `CKM_AES_KEY_WRAP`, which takes any AES key size.
    AesKw {
        bits: Option<u32>,
    },
}

impl EncAlg {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let aes = |prefix: &str| raw.strip_prefix('A').and_then(|r| r.strip_suffix(prefix));
        let bits_of = |digits: &str| match digits {
            "128" => Some(128),
            "192" => Some(192),
            "256" => Some(256),
            _ => None,
        };
        let alg = match raw {
            "RSA1_5" => Some(EncAlg::Rsa(RsaPadding::Pkcs1)),
            "RSA-OAEP" => Some(EncAlg::Rsa(RsaPadding::Oaep(OaepHash::Sha1))),
            "RSA-OAEP-256" => Some(EncAlg::Rsa(RsaPadding::Oaep(OaepHash::Sha256))),
            "CKM_AES_KEY_WRAP" => Some(EncAlg::AesKw { bits: None }),
            "CKM_AES_KEY_WRAP_PAD" => {
                return Err(Error::BadParameter(
                    "The algorithm 'CKM_AES_KEY_WRAP_PAD' (RFC 5649) is not available: the token's AES key wrap with padding is not RFC 5649. Use A128KW/A192KW/A256KW or CKM_AES_KEY_WRAP with a key of a multiple of 8 bytes.".into(),
                ));
            }
            _ => aes("GCM")
                .and_then(bits_of)
                .map(|bits| EncAlg::AesGcm { bits })
                .or_else(|| {
                    aes("CBCPAD")
                        .and_then(bits_of)
                        .map(|bits| EncAlg::AesCbc { bits, pad: true })
                })
                .or_else(|| {
                    aes("CBC")
                        .and_then(bits_of)
                        .map(|bits| EncAlg::AesCbc { bits, pad: false })
                })
                .or_else(|| {
                    aes("KW")
                        .and_then(bits_of)
                        .map(|bits| EncAlg::AesKw { bits: Some(bits) })
                }),
        };
        alg.ok_or_else(|| {
            Error::BadParameter(format!(
                "The encryption algorithm '{}' is not supported; use RSA1_5, RSA-OAEP, RSA-OAEP-256, A128GCM, A192GCM, A256GCM, A128CBC, A192CBC, A256CBC, A128CBCPAD, A192CBCPAD, A256CBCPAD, A128KW, A192KW, A256KW or CKM_AES_KEY_WRAP.",
                truncate_for_message(raw)
            ))
        })
    }

    fn fits(self, kind: KeyKind) -> bool {
        match (self, kind) {
            (EncAlg::Rsa(_), KeyKind::Rsa { .. }) => true,
            (EncAlg::AesKw { bits: None }, KeyKind::Oct { .. }) => true,
            (
                EncAlg::AesGcm { bits }
                | EncAlg::AesCbc { bits, .. }
                | EncAlg::AesKw { bits: Some(bits) },
                KeyKind::Oct { bits: key_bits },
            ) => bits == key_bits,
            _ => false,
        }
    }

    /// Key wrap algorithms belong to `wrapkey`/`unwrapkey`, the AES content algorithms to
    /// `encrypt`/`decrypt`; RSA algorithms serve both.
    fn serves(self, op: KeyOp) -> bool {
        let wrapping = matches!(op, KeyOp::WrapKey | KeyOp::UnwrapKey);
        match self {
            EncAlg::Rsa(_) => true,
            EncAlg::AesKw { .. } => wrapping,
            EncAlg::AesGcm { .. } | EncAlg::AesCbc { .. } => !wrapping,
        }
    }
}

/// The body of `encrypt`, `decrypt`, `wrapkey` and `unwrapkey`, decoded.
#[derive(Clone)]
pub struct CipherInput {
    pub alg: String,
    pub value: Zeroizing<Vec<u8>>,
    pub iv: Option<Vec<u8>>,
    pub aad: Option<Vec<u8>>,
    pub tag: Option<Vec<u8>>,
}

/// The result of a cipher operation. `value` may be a plaintext, so it is zeroized.
pub struct CipherOutput {
    pub value: Zeroizing<Vec<u8>>,
    pub iv: Option<Vec<u8>>,
    pub tag: Option<Vec<u8>>,
    pub aad: Option<Vec<u8>>,
}

const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const AES_BLOCK: usize = 16;

/// An operation that uses the key's public half (or the AES key) to protect data, or its
/// private half to recover it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Protect,
    Recover,
}

impl KeyService {
    /// Signs a digest.
    pub async fn sign(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        alg: &str,
        digest: Vec<u8>,
    ) -> Result<(VersionRecord, Vec<u8>), Error> {
        self.serially(name, || self.sign_once(name, version, alg, digest.clone()))
            .await
    }

    async fn sign_once(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        alg: &str,
        digest: Vec<u8>,
    ) -> Result<(VersionRecord, Vec<u8>), Error> {
        let (alg, record, handles) = self
            .signing_version(name, version, alg, KeyOp::Sign, &digest)
            .await?;
        let signature = self
            .hsm
            .call(move |hsm, s| hsm.sign(s, handles.secret, alg.scheme(), &digest))
            .await?;
        Ok((record, signature))
    }

    /// Verifies a signature over a digest; a signature that does not verify is `false`.
    pub async fn verify(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        alg: &str,
        digest: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<(VersionRecord, bool), Error> {
        self.serially(name, || {
            self.verify_once(name, version, alg, digest.clone(), signature.clone())
        })
        .await
    }

    async fn verify_once(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        alg: &str,
        digest: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<(VersionRecord, bool), Error> {
        let (alg, record, handles) = self
            .signing_version(name, version, alg, KeyOp::Verify, &digest)
            .await?;
        let public = public_object(handles)?;
        let valid = self
            .hsm
            .call(move |hsm, s| hsm.verify(s, public, alg.scheme(), &digest, &signature))
            .await?;
        Ok((record, valid))
    }

    /// `encrypt`, `decrypt`, `wrapkey` or `unwrapkey`, by `op`.
    pub async fn cipher(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        op: KeyOp,
        input: CipherInput,
    ) -> Result<(VersionRecord, CipherOutput), Error> {
        self.serially(name, || self.cipher_once(name, version, op, input.clone()))
            .await
    }

    /// Runs a key operation; if a concurrent delete, recover or update switched or replaced the
    /// key's token objects under it, runs it once more while holding the key's lock (so that
    /// change is committed and no other can start), which makes the answer the one a serial
    /// order gives: after a delete, 404; after a recovery, the result. Objects that are still
    /// refused then moved under the call for another reason (the token was reconnected and
    /// renumbered them a moment ago): 503, to be retried.
    async fn serially<T, Fut>(&self, name: &KeyName, op: impl Fn() -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        match op().await {
            Err(Error::KeyChanged(detail)) => {
                tracing::debug!(key = %name, %detail, "the key changed under an operation; running it again under its lock");
                let _guard = self.lock_key(name).await;
                match op().await {
                    Err(Error::KeyChanged(detail)) => {
                        tracing::warn!(key = %name, %detail, "the token still refuses a live key's objects under its lock");
                        Err(Error::Unavailable(format!(
                            "the token refuses the objects of a live key: {detail}"
                        )))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn cipher_once(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        op: KeyOp,
        input: CipherInput,
    ) -> Result<(VersionRecord, CipherOutput), Error> {
        let alg = EncAlg::parse(&input.alg)?;
        if !alg.serves(op) {
            return Err(Error::BadParameter(format!(
                "The algorithm '{}' cannot be used for {}.",
                input.alg,
                op.as_str()
            )));
        }
        let direction = match op {
            KeyOp::Encrypt | KeyOp::WrapKey => Direction::Protect,
            _ => Direction::Recover,
        };
        let (record, handles) = self.live_version(name, version).await?;
        if !alg.fits(record.kind) {
            return Err(Error::BadParameter(format!(
                "The algorithm '{}' does not fit this key ({}).",
                input.alg,
                describe(record.kind)
            )));
        }
        self.permit(&record, op)?;
        let output = match (alg, direction) {
            (EncAlg::Rsa(padding), _) => {
                no_extras(&input, "RSA algorithms")?;
                let k = match record.kind {
                    KeyKind::Rsa { bits } => bits.div_ceil(8) as usize,
                    _ => unreachable_kind()?,
                };
                let value = input.value;
                let out = if direction == Direction::Protect {
                    if padding == RsaPadding::Pkcs1 && value.len() + 11 > k {
                        return Err(Error::BadParameter(
                            "The plaintext is too long for this key.".into(),
                        ));
                    }
                    let public = public_object(handles)?;
                    Zeroizing::new(
                        self.hsm
                            .call(move |hsm, s| hsm.rsa_encrypt(s, public, padding, k, &value))
                            .await?,
                    )
                } else {
                    let secret = handles.secret;
                    self.hsm
                        .call(move |hsm, s| hsm.rsa_decrypt(s, secret, padding, k, &value))
                        .await?
                };
                CipherOutput {
                    value: out,
                    iv: None,
                    tag: None,
                    aad: None,
                }
            }
            (EncAlg::AesGcm { .. }, Direction::Protect) => {
                if input.iv.is_some() || input.tag.is_some() {
                    return Err(Error::BadParameter(
                        "AES-GCM encryption takes no 'iv' or 'tag': the service generates the IV and returns it with the tag.".into(),
                    ));
                }
                let mut iv = [0u8; GCM_IV_LEN];
                getrandom::fill(&mut iv)
                    .map_err(|e| Error::Internal(format!("no randomness for an IV: {e}")))?;
                let aad = input.aad.clone().unwrap_or_default();
                let value = input.value;
                let secret = handles.secret;
                let mut sealed = self
                    .hsm
                    .call(move |hsm, s| {
                        hsm.aes_encrypt(s, secret, AesMode::Gcm { iv, aad: &aad }, &value)
                    })
                    .await?;
                let tag = sealed.split_off(sealed.len().saturating_sub(GCM_TAG_LEN));
                CipherOutput {
                    value: Zeroizing::new(sealed),
                    iv: Some(iv.to_vec()),
                    tag: Some(tag),
                    aad: input.aad,
                }
            }
            (EncAlg::AesGcm { .. }, Direction::Recover) => {
                let iv: [u8; GCM_IV_LEN] = input
                    .iv
                    .as_deref()
                    .and_then(|iv| iv.try_into().ok())
                    .ok_or_else(|| {
                        Error::BadParameter(
                            "AES-GCM decryption needs the 12-byte 'iv' that encryption returned."
                                .into(),
                        )
                    })?;
                let tag = input
                    .tag
                    .as_deref()
                    .filter(|t| t.len() == GCM_TAG_LEN)
                    .ok_or_else(|| {
                        Error::BadParameter(
                            "AES-GCM decryption needs the 16-byte 'tag' that encryption returned."
                                .into(),
                        )
                    })?;
                let mut sealed = Zeroizing::new(input.value.to_vec());
                sealed.extend_from_slice(tag);
                let aad = input.aad.clone().unwrap_or_default();
                let secret = handles.secret;
                let value = self
                    .hsm
                    .call(move |hsm, s| {
                        hsm.aes_decrypt(s, secret, AesMode::Gcm { iv, aad: &aad }, &sealed)
                    })
                    .await?;
                CipherOutput {
                    value,
                    iv: None,
                    tag: None,
                    aad: None,
                }
            }
            (EncAlg::AesCbc { pad, .. }, _) => {
                // As Managed HSM does: `aad` is ignored on CBC (the SDKs send it with any AES
                // algorithm), and a `tag` there is refused (CBC authenticates nothing).
                if input.tag.is_some() {
                    return Err(Error::BadParameter("AES-CBC takes no 'tag'.".into()));
                }
                let iv: [u8; AES_BLOCK] = match (input.iv.as_deref(), direction) {
                    (Some(iv), _) => iv.try_into().map_err(|_| {
                        Error::BadParameter("The 'iv' of AES-CBC must be 16 bytes.".into())
                    })?,
                    (None, Direction::Protect) => {
                        let mut iv = [0u8; AES_BLOCK];
                        getrandom::fill(&mut iv).map_err(|e| {
                            Error::Internal(format!("no randomness for an IV: {e}"))
                        })?;
                        iv
                    }
                    (None, Direction::Recover) => {
                        return Err(Error::BadParameter(
                            "AES-CBC decryption needs the 16-byte 'iv'.".into(),
                        ));
                    }
                };
                let whole_blocks = input.value.len().is_multiple_of(AES_BLOCK);
                if direction == Direction::Recover && !whole_blocks {
                    return Err(Error::BadParameter(
                        "An AES-CBC ciphertext is a whole number of 16-byte blocks.".into(),
                    ));
                }
                let mut value = input.value;
                if !pad && direction == Direction::Protect && !whole_blocks {
                    // As Managed HSM does: the unpadded CBC zero-pads a plaintext to whole
                    // blocks, and decryption returns it with the zeros. A new buffer of the
                    // final size, so no reallocation leaves a copy of the plaintext behind.
                    let blocks = value.len().next_multiple_of(AES_BLOCK);
                    let mut padded = Zeroizing::new(Vec::with_capacity(blocks));
                    padded.extend_from_slice(&value);
                    padded.resize(blocks, 0);
                    value = padded;
                }
                let secret = handles.secret;
                let mode = AesMode::Cbc { iv, pad };
                let out = if !pad && value.is_empty() {
                    // Zero blocks in, zero blocks out, whatever a token says of an empty call.
                    Zeroizing::new(Vec::new())
                } else if direction == Direction::Protect {
                    Zeroizing::new(
                        self.hsm
                            .call(move |hsm, s| hsm.aes_encrypt(s, secret, mode, &value))
                            .await?,
                    )
                } else {
                    self.hsm
                        .call(move |hsm, s| hsm.aes_decrypt(s, secret, mode, &value))
                        .await?
                };
                CipherOutput {
                    value: out,
                    iv: (direction == Direction::Protect).then(|| iv.to_vec()),
                    tag: None,
                    aad: None,
                }
            }
            (EncAlg::AesKw { .. }, _) => {
                no_extras(&input, "AES key wrap")?;
                let len = input.value.len();
                let min = if direction == Direction::Protect {
                    16
                } else {
                    24
                };
                if len < min || !len.is_multiple_of(8) {
                    return Err(Error::BadParameter(format!(
                        "AES key wrap takes a multiple of 8 bytes, at least {min}; got {len}."
                    )));
                }
                let value = input.value;
                let kek = handles.secret;
                let out = if direction == Direction::Protect {
                    Zeroizing::new(
                        self.hsm
                            .call(move |hsm, s| hsm.aes_wrap(s, kek, &value))
                            .await?,
                    )
                } else {
                    self.hsm
                        .call(move |hsm, s| hsm.aes_unwrap(s, kek, &value))
                        .await?
                };
                CipherOutput {
                    value: out,
                    iv: None,
                    tag: None,
                    aad: None,
                }
            }
        };
        Ok((record, output))
    }

    /// `count` random bytes (1 to 128) from the token.
    pub async fn random(&self, count: i64) -> Result<Vec<u8>, Error> {
        let n = u32::try_from(count)
            .ok()
            .filter(|n| (1..=128).contains(n))
            .ok_or_else(|| {
                Error::BadParameter(
                    "GetRandomBytesRequest: count cannot be greater than 128 or less than 1."
                        .into(),
                )
            })?;
        Ok(self.hsm.call(move |hsm, s| hsm.random(s, n)).await?)
    }

    /// The version an operation runs on and its token objects: a live key's (a soft-deleted
    /// key is not found) whose objects are in the handle cache.
    async fn live_version(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
    ) -> Result<(VersionRecord, KeyHandles), Error> {
        let record = self.get(name, version).await?;
        match self.hsm.handles(record.version) {
            Ok(handles) => Ok((record, handles)),
            Err(_) => {
                // The version is in the database but its token objects are gone: reported at
                // start-up; to the client it is not there.
                tracing::error!(key = %name, version = %record.version, "a key operation on a version with no token objects");
                Err(not_found(name, Some(&record.version.to_string())))
            }
        }
    }

    /// The checks of `sign` and `verify`: the algorithm is known and fits the key, the digest
    /// has its length, and the operation is permitted.
    async fn signing_version(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
        raw: &str,
        op: KeyOp,
        digest: &[u8],
    ) -> Result<(SignAlg, VersionRecord, KeyHandles), Error> {
        let alg = SignAlg::parse(raw)?;
        let (record, handles) = self.live_version(name, version).await?;
        check_sign_fit(alg, raw, &record, digest)?;
        self.permit(&record, op)?;
        Ok((alg, record, handles))
    }

    /// The checks every operation passes: `key_ops` allows it, and the version is enabled and
    /// inside `nbf`/`exp`.
    fn permit(&self, record: &VersionRecord, op: KeyOp) -> Result<(), Error> {
        let op_name = op.as_str();
        if !record.ops.contains(op) {
            return Err(Error::Forbidden {
                message: format!("Operation {op_name} is not permitted on this key."),
                inner: Some(Reason::KeyOperationForbidden),
            });
        }
        if !record.attributes.enabled {
            return Err(Error::Forbidden {
                message: format!("Operation {op_name} is not allowed on a disabled key."),
                inner: Some(Reason::KeyDisabled),
            });
        }
        let now = self.now();
        if record.attributes.not_before.is_some_and(|nbf| now < nbf) {
            return Err(Error::Forbidden {
                message: format!(
                    "Operation {op_name} is not allowed before the key's activation time (nbf)."
                ),
                inner: Some(Reason::KeyNotYetValid),
            });
        }
        if record.attributes.expires.is_some_and(|exp| now >= exp) {
            return Err(Error::Forbidden {
                message: format!("Operation {op_name} is not allowed on an expired key."),
                inner: Some(Reason::KeyExpired),
            });
        }
        Ok(())
    }
}

fn check_sign_fit(
    alg: SignAlg,
    raw: &str,
    record: &VersionRecord,
    digest: &[u8],
) -> Result<(), Error> {
    if !alg.fits(record.kind) {
        return Err(Error::BadParameter(format!(
            "The algorithm '{raw}' does not fit this key ({}).",
            describe(record.kind)
        )));
    }
    if digest.len() != alg.digest_len() {
        return Err(Error::BadParameter(format!(
            "The digest must be {} bytes for this algorithm; got {}.",
            alg.digest_len(),
            digest.len()
        )));
    }
    Ok(())
}

fn public_object(handles: KeyHandles) -> Result<cryptoki::object::ObjectHandle, Error> {
    handles
        .public
        .ok_or_else(|| Error::Internal("an asymmetric key without a public object".into()))
}

fn no_extras(input: &CipherInput, what: &str) -> Result<(), Error> {
    if input.iv.is_some() || input.aad.is_some() || input.tag.is_some() {
        return Err(Error::BadParameter(format!(
            "{what} take no 'iv', 'aad' or 'tag'."
        )));
    }
    Ok(())
}

fn describe(kind: KeyKind) -> String {
    match kind {
        KeyKind::Rsa { bits } => format!("RSA {bits}"),
        KeyKind::Ec { curve } => format!("EC {}", curve.jwk_name()),
        KeyKind::Oct { bits } => format!("AES {bits}"),
    }
}

fn unreachable_kind<T>() -> Result<T, Error> {
    Err(Error::Internal(
        "the algorithm and key kind disagree".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_fit_only_their_keys() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        let p256 = KeyKind::Ec { curve: Curve::P256 };
        let aes128 = KeyKind::Oct { bits: 128 };
        let aes256 = KeyKind::Oct { bits: 256 };
        let sign = |a| SignAlg::parse(a).expect("known");
        assert!(sign("PS512").fits(rsa));
        assert!(sign("ES256").fits(p256));
        assert!(!sign("ES384").fits(p256));
        assert!(!sign("ES256K").fits(p256));
        assert!(!sign("RS256").fits(p256));
        assert!(!sign("ES256").fits(aes256));
        let enc = |a| EncAlg::parse(a).expect("known");
        assert!(enc("A128GCM").fits(aes128));
        assert!(!enc("A128GCM").fits(aes256));
        assert!(enc("A256CBCPAD").fits(aes256));
        assert!(enc("CKM_AES_KEY_WRAP").fits(aes128));
        assert!(!enc("RSA-OAEP").fits(aes256));
        assert!(!enc("A256KW").fits(rsa));
        assert!(enc("A256KW").serves(KeyOp::UnwrapKey));
        assert!(!enc("A256KW").serves(KeyOp::Encrypt));
        assert!(!enc("A256GCM").serves(KeyOp::WrapKey));
        assert!(enc("RSA1_5").serves(KeyOp::WrapKey));
        for bad in [
            "HS256",
            "A512GCM",
            "",
            "rsa-oaep",
            "CKM_AES_KEY_WRAP_PAD",
            "A128CBCPADX",
        ] {
            assert!(EncAlg::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(SignAlg::parse("EdDSA").is_err());
    }

    #[test]
    fn digest_lengths_follow_the_hash_and_curve() {
        assert_eq!(SignAlg::parse("ES512").expect("known").digest_len(), 64);
        assert_eq!(SignAlg::parse("ES256K").expect("known").digest_len(), 32);
        assert_eq!(SignAlg::parse("PS384").expect("known").digest_len(), 48);
    }
}
