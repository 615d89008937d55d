//! Cryptographic operations by cached handle. The key never leaves the token; where the token
//! lacks a mechanism variant (RSA-OAEP with SHA-256 on SoftHSM2), the RSA operation still runs
//! in the token as raw RSA and only the padding is done here (`oaep.rs`).

use std::sync::atomic::{AtomicU8, Ordering};

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::oaep::{self, OaepHash};
use super::{Error, Hsm, Result};

/// The hash a signature was made over (the caller sends the digest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    fn mechanism(self) -> MechanismType {
        match self {
            Hash::Sha256 => MechanismType::SHA256,
            Hash::Sha384 => MechanismType::SHA384,
            Hash::Sha512 => MechanismType::SHA512,
        }
    }

    fn mgf(self) -> PkcsMgfType {
        match self {
            Hash::Sha256 => PkcsMgfType::MGF1_SHA256,
            Hash::Sha384 => PkcsMgfType::MGF1_SHA384,
            Hash::Sha512 => PkcsMgfType::MGF1_SHA512,
        }
    }

    /// The DER `DigestInfo` prefix of PKCS#1 v1.5 signatures (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// How a digest is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignScheme {
    /// RSASSA-PKCS1-v1_5 (RS256/384/512).
    Pkcs1(Hash),
    /// RSASSA-PSS with MGF1 of the same hash and a salt as long as the hash (PS256/384/512).
    Pss(Hash),
    /// ECDSA; the signature is raw `r || s` as JWS wants it (ES256/384/512/256K).
    Ecdsa,
}

/// RSA encryption padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaPadding {
    /// RSAES-PKCS1-v1_5 (RSA1_5).
    Pkcs1,
    /// RSAES-OAEP with the empty label (RSA-OAEP: SHA-1, RSA-OAEP-256: SHA-256).
    Oaep(OaepHash),
}

/// AES modes of `encrypt` and `decrypt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AesMode<'a> {
    /// GCM with a 96-bit IV and a 128-bit tag; the token's output is `ciphertext || tag`.
    Gcm { iv: [u8; 12], aad: &'a [u8] },
    /// CBC, with or without PKCS#7 padding.
    Cbc { iv: [u8; 16], pad: bool },
}

/// Whether the token does OAEP with SHA-256 itself: as the first start probed it, or (older
/// profiles) learnt from the first attempt.
#[derive(Debug, Default)]
pub struct OaepSupport(AtomicU8);

impl OaepSupport {
    /// Emulated only where the probe found SHA-256 missing and the token lists raw RSA (the
    /// emulation needs it); unknown where the probe learnt nothing.
    pub fn from_profile(profile: &super::TokenProfile) -> Self {
        let raw_rsa = profile.mechanisms.iter().any(|m| m == "CKM_RSA_X_509");
        let native = profile
            .rsa
            .as_ref()
            .and_then(|rsa| rsa.oaep_is_native(OaepHash::Sha256));
        Self(AtomicU8::new(match native {
            Some(true) => NATIVE,
            Some(false) if raw_rsa => EMULATED,
            _ => UNKNOWN,
        }))
    }
}

const UNKNOWN: u8 = 0;
const NATIVE: u8 = 1;
const EMULATED: u8 = 2;

/// Return values by which a token refuses the data of an operation (a bad ciphertext, failed
/// authentication, bad padding) rather than failing itself. SoftHSM2 reports a failed GCM
/// authentication as `CKR_GENERAL_ERROR`, and kryoptic a bad RSA ciphertext or a wrapped key
/// that does not unwrap as `CKR_DEVICE_ERROR`, so those are among them. Both are ambiguous:
/// [`Hsm::call_blocking`] asks the token whether it is still there before the client gets a
/// 400, and a token that does not answer makes it a 503.
fn refuses_input(e: &Error) -> bool {
    matches!(
        e.rv(),
        Some(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::GeneralError
                | RvError::DeviceError
        )
    )
}

fn rejected_if_input(e: Error, what: &'static str) -> Error {
    if refuses_input(&e) {
        Error::Rejected(what)
    } else {
        e
    }
}

impl Hsm {
    /// Signs a digest with a private key.
    pub fn sign(
        &self,
        session: &Session,
        key: ObjectHandle,
        scheme: SignScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let out = match scheme {
            SignScheme::Pkcs1(h) => {
                let mut data = h.digest_info_prefix().to_vec();
                data.extend_from_slice(digest);
                session.sign(&Mechanism::RsaPkcs, key, &data)?
            }
            SignScheme::Pss(h) => session.sign(&Mechanism::RsaPkcsPss(pss(h)), key, digest)?,
            SignScheme::Ecdsa => session.sign(&Mechanism::Ecdsa, key, digest)?,
        };
        Ok(out)
    }

    /// Verifies a signature over a digest with a public key. A signature that does not verify
    /// is `Ok(false)`, not an error.
    pub fn verify(
        &self,
        session: &Session,
        key: ObjectHandle,
        scheme: SignScheme,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool> {
        let result = match scheme {
            SignScheme::Pkcs1(h) => {
                let mut data = h.digest_info_prefix().to_vec();
                data.extend_from_slice(digest);
                session.verify(&Mechanism::RsaPkcs, key, &data, signature)
            }
            SignScheme::Pss(h) => {
                session.verify(&Mechanism::RsaPkcsPss(pss(h)), key, digest, signature)
            }
            SignScheme::Ecdsa => session.verify(&Mechanism::Ecdsa, key, digest, signature),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = Error::from(e);
                match e.rv() {
                    Some(
                        RvError::SignatureInvalid
                        | RvError::SignatureLenRange
                        | RvError::DataLenRange
                        | RvError::DataInvalid,
                    ) => Ok(false),
                    _ => Err(e),
                }
            }
        }
    }

    /// RSA encryption with the public key; `k` is the modulus length in bytes.
    pub fn rsa_encrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        padding: RsaPadding,
        k: usize,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        match padding {
            RsaPadding::Pkcs1 => Ok(session.encrypt(&Mechanism::RsaPkcs, key, data)?),
            RsaPadding::Oaep(h) => {
                if oaep::max_message_len(k, h) < data.len() {
                    return Err(Error::Rejected("the plaintext is too long for this key"));
                }
                if self.oaep_native(h) {
                    match session.encrypt(&oaep_mechanism(h), key, data) {
                        Ok(out) => {
                            self.learn_oaep(h, true);
                            return Ok(out);
                        }
                        Err(e) if self.oaep_unsupported(h, &e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let em = oaep::encode(data, k, h)
                    .ok_or(Error::Rejected("the plaintext is too long for this key"))?;
                Ok(session.encrypt(&Mechanism::RsaX509, key, &em)?)
            }
        }
    }

    /// RSA decryption with the private key. Any malformed ciphertext is [`Error::Rejected`],
    /// with the same message whatever check failed.
    pub fn rsa_decrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        padding: RsaPadding,
        k: usize,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        const FAILED: &str = "the ciphertext could not be decrypted with this key";
        if data.len() != k {
            return Err(Error::Rejected(FAILED));
        }
        match padding {
            RsaPadding::Pkcs1 => session
                .decrypt(&Mechanism::RsaPkcs, key, data)
                .map(Zeroizing::new)
                .map_err(|e| rejected_if_input(e.into(), FAILED)),
            RsaPadding::Oaep(h) => {
                if self.oaep_native(h) {
                    match session.decrypt(&oaep_mechanism(h), key, data) {
                        Ok(out) => {
                            self.learn_oaep(h, true);
                            return Ok(Zeroizing::new(out));
                        }
                        Err(e) if self.oaep_unsupported(h, &e) => {}
                        Err(e) => return Err(rejected_if_input(e.into(), FAILED)),
                    }
                }
                let em = session
                    .decrypt(&Mechanism::RsaX509, key, data)
                    .map(Zeroizing::new)
                    .map_err(|e| rejected_if_input(e.into(), FAILED))?;
                oaep::decode(&em, k, h).ok_or(Error::Rejected(FAILED))
            }
        }
    }

    /// AES encryption; for GCM the output is `ciphertext || tag`.
    pub fn aes_encrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        mode: AesMode<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let out = match mode {
            AesMode::Gcm { mut iv, aad } => {
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                session.encrypt(&Mechanism::AesGcm(params), key, data)
            }
            AesMode::Cbc { iv, pad: true } => session.encrypt(&Mechanism::AesCbcPad(iv), key, data),
            AesMode::Cbc { iv, pad: false } => session.encrypt(&Mechanism::AesCbc(iv), key, data),
        };
        out.map_err(|e| rejected_if_input(e.into(), "the plaintext does not fit the algorithm"))
    }

    /// AES decryption; for GCM the input is `ciphertext || tag`, and a failed authentication
    /// is [`Error::Rejected`].
    pub fn aes_decrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        mode: AesMode<'_>,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let out = match mode {
            AesMode::Gcm { mut iv, aad } => {
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                session.decrypt(&Mechanism::AesGcm(params), key, data)
            }
            AesMode::Cbc { iv, pad: true } => session.decrypt(&Mechanism::AesCbcPad(iv), key, data),
            AesMode::Cbc { iv, pad: false } => session.decrypt(&Mechanism::AesCbc(iv), key, data),
        };
        out.map(Zeroizing::new).map_err(|e| {
            rejected_if_input(
                e.into(),
                "the ciphertext could not be decrypted or did not authenticate",
            )
        })
    }

    /// RFC 3394 key wrap of `data` (a multiple of 8 bytes, at least 16) under an AES key. The
    /// bytes enter the token as a short-lived session object, which `C_WrapKey` wraps.
    pub fn aes_wrap(&self, session: &Session, kek: ObjectHandle, data: &[u8]) -> Result<Vec<u8>> {
        let mut template = transient_secret();
        template.push(Attribute::Value(data.to_vec()));
        let object = session.create_object(&template)?;
        let wrapped = session.wrap_key(&Mechanism::AesKeyWrap, kek, object);
        destroy_quietly(session, object);
        Ok(wrapped?)
    }

    /// RFC 3394 unwrap under an AES key. An integrity failure is [`Error::Rejected`].
    pub fn aes_unwrap(
        &self,
        session: &Session,
        kek: ObjectHandle,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let object = session
            .unwrap_key(&Mechanism::AesKeyWrap, kek, wrapped, &transient_secret())
            .map_err(|e| {
                rejected_if_input(e.into(), "the wrapped key did not pass the integrity check")
            })?;
        let value = session.get_attributes(object, &[AttributeType::Value]);
        destroy_quietly(session, object);
        match value?.into_iter().next() {
            Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
            _ => Err(Error::Unexpected(
                "the unwrapped value could not be read".into(),
            )),
        }
    }

    /// `n` random bytes from the token's generator.
    pub fn random(&self, session: &Session, n: u32) -> Result<Vec<u8>> {
        Ok(session.generate_random_vec(n)?)
    }

    fn oaep_native(&self, h: OaepHash) -> bool {
        match h {
            OaepHash::Sha1 => true,
            OaepHash::Sha256 => self.oaep_sha256.0.load(Ordering::Relaxed) != EMULATED,
        }
    }

    fn learn_oaep(&self, h: OaepHash, native: bool) {
        if h == OaepHash::Sha256 {
            let value = if native { NATIVE } else { EMULATED };
            if self.oaep_sha256.0.swap(value, Ordering::Relaxed) == UNKNOWN && !native {
                tracing::info!(
                    "the token does not do RSA-OAEP with SHA-256; it is done as raw RSA in the token with the padding in the service"
                );
            }
        }
    }

    /// Whether a failed OAEP call says the token cannot do this hash (then the service pads
    /// and the token does raw RSA). Only SHA-256 has that fallback, and only with raw RSA.
    fn oaep_unsupported(&self, h: OaepHash, e: &cryptoki::error::Error) -> bool {
        let unsupported = h == OaepHash::Sha256
            && self.mechanisms().contains(&MechanismType::RSA_X_509)
            && [
                RvError::ArgumentsBad,
                RvError::MechanismParamInvalid,
                RvError::MechanismInvalid,
            ]
            .into_iter()
            .any(|rv| super::is_rv(e, rv));
        if unsupported {
            self.learn_oaep(h, false);
        }
        unsupported
    }
}

fn pss(h: Hash) -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: h.mechanism(),
        mgf: h.mgf(),
        s_len: (h.output_len() as u64).into(),
    }
}

pub(super) fn oaep_mechanism(h: OaepHash) -> Mechanism<'static> {
    let (hash, mgf) = match h {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

/// A session object holding bytes that pass through `C_WrapKey`/`C_UnwrapKey`: the caller's
/// data, not key material of the service, so it is readable and gone with the session.
fn transient_secret() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

fn destroy_quietly(session: &Session, object: ObjectHandle) {
    if let Err(e) = session.destroy_object(object) {
        tracing::warn!(error = %e, "could not destroy a session object; it goes with the session");
    }
}
