//! The token's part of backups (DESIGN §8): wrapping a version's secret object under the
//! security domain, sealing and opening a backup with a content key that lives only in the
//! token, unwrapping material back into key objects, and wiping every key object for a full
//! restore.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::{Error, Hsm, KeyHandles, Result, encode_ec_point, is_rv, templates};
use crate::model::{KeyKind, KeyOps, PublicKey, VersionId};

/// The security domain's objects, found by label when the domain is set (at start-up and
/// after a reconnect, never on a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainHandles {
    pub id: VersionId,
    /// Wrap only. Private under the private domain model; under the older trusted model a
    /// `CKA_TRUSTED` key, public on SoftHSM2.
    pub wrap: ObjectHandle,
    /// Private, unwrap only.
    pub unwrap: ObjectHandle,
    /// Private, HMAC-SHA-256 sign and verify only: authenticates backups. Whoever may use the
    /// wrap half (a holder of the user PIN; under the trusted model on SoftHSM2, anyone) could
    /// otherwise make a blob whose content key unwraps, so that alone would not show that this
    /// HSM made a backup.
    pub mac: ObjectHandle,
}

/// A backup's content key: a session object of this session, destroyed by
/// [`Hsm::drop_content_key`].
#[derive(Debug)]
pub struct ContentKey {
    handle: ObjectHandle,
    /// The key wrapped under the domain (what the envelope carries).
    pub wrapped: Vec<u8>,
}

impl Hsm {
    /// Finds the domain's halves and keeps their handles. Called once the domain id is known
    /// and again after every reconnect.
    pub fn set_domain(&self, id: VersionId) -> Result<()> {
        let handles = self.call_blocking(|_, s| {
            // The MAC key is only ever made next to both halves of this very domain, never on
            // a token that does not hold it.
            find_domain_object(s, id, "wrap")?;
            find_domain_object(s, id, "unwrap")?;
            ensure_mac_key(s, id)?;
            find_domain(s, id)
        })?;
        *self.domain.write().unwrap_or_else(|p| p.into_inner()) = Some(handles);
        Ok(())
    }

    pub(super) fn refresh_domain(&self, session: &Session) -> Result<()> {
        let id = self
            .domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map(|d| d.id);
        if let Some(id) = id {
            let handles = find_domain(session, id)?;
            *self.domain.write().unwrap_or_else(|p| p.into_inner()) = Some(handles);
        }
        Ok(())
    }

    pub fn domain(&self) -> Result<DomainHandles> {
        self.domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| Error::Unexpected("the security domain is not loaded".into()))
    }

    /// A version's secret object wrapped under the domain key. Keys made with
    /// `keys.backups = false` are not extractable, and the token says so.
    pub fn wrap_version(&self, session: &Session, id: VersionId) -> Result<Vec<u8>> {
        let domain = self.domain()?;
        let handles = self.handles(id)?;
        session
            .wrap_key(&self.key_wrap(), domain.wrap, handles.secret)
            .map_err(|e| match e {
                cryptoki::error::Error::Pkcs11(
                    RvError::KeyUnextractable | RvError::KeyNotWrappable,
                    _,
                ) => Error::Rejected(
                    "this key cannot be backed up: it was made with keys.backups = false, so its material never leaves the token",
                ),
                other => other.into(),
            })
    }

    /// The backup's authentication tag: HMAC-SHA-256 in the token with the domain's private
    /// MAC key, which nobody without the user PIN can use.
    pub fn backup_mac(&self, session: &Session, data: &[u8]) -> Result<Vec<u8>> {
        let domain = self.domain()?;
        Ok(session.sign(&Mechanism::Sha256Hmac, domain.mac, data)?)
    }

    /// Checks a backup's tag; a mismatch is [`Error::Rejected`].
    pub fn check_backup_mac(&self, session: &Session, data: &[u8], tag: &[u8]) -> Result<()> {
        let domain = self.domain()?;
        session
            .verify(&Mechanism::Sha256Hmac, domain.mac, data, tag)
            .map_err(|e| match e {
                cryptoki::error::Error::Pkcs11(
                    RvError::SignatureInvalid | RvError::SignatureLenRange,
                    _,
                ) => Error::Rejected(NOT_OURS),
                other => other.into(),
            })
    }

    /// A fresh AES-256 content key in this session, and its wrap under the domain key.
    pub fn content_key(&self, session: &Session) -> Result<ContentKey> {
        let domain = self.domain()?;
        let handle = session.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
            ],
        )?;
        match session.wrap_key(&self.key_wrap(), domain.wrap, handle) {
            Ok(wrapped) => Ok(ContentKey { handle, wrapped }),
            Err(e) => {
                let _ = session.destroy_object(handle);
                Err(e.into())
            }
        }
    }

    /// Unwraps an envelope's content key with the domain's unwrap half, as a sensitive,
    /// non-extractable session object that can only decrypt. A key that does not unwrap (a
    /// foreign domain, tampering) is [`Error::Rejected`].
    pub fn open_content_key(&self, session: &Session, wrapped: &[u8]) -> Result<ContentKey> {
        let domain = self.domain()?;
        let handle = session
            .unwrap_key(
                &self.key_wrap(),
                domain.unwrap,
                wrapped,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                ],
            )
            .map_err(|e| rejected(e.into(), NOT_OURS))?;
        Ok(ContentKey {
            handle,
            wrapped: wrapped.to_vec(),
        })
    }

    pub fn drop_content_key(&self, session: &Session, key: ContentKey) {
        if let Err(e) = session.destroy_object(key.handle) {
            tracing::warn!(error = %e, "could not destroy a content key; it goes with the session");
        }
    }

    /// AES-256-GCM under the content key; the output ends with the 128-bit tag.
    pub fn seal(
        &self,
        session: &Session,
        key: &ContentKey,
        iv: [u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let mut iv = iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())?;
        Ok(session.encrypt(&Mechanism::AesGcm(params), key.handle, data)?)
    }

    /// Checks the tag and decrypts. A failure is [`Error::Rejected`]: the backup was changed.
    pub fn open(
        &self,
        session: &Session,
        key: &ContentKey,
        iv: [u8; 12],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut iv = iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())?;
        session
            .decrypt(&Mechanism::AesGcm(params), key.handle, sealed)
            .map(Zeroizing::new)
            .map_err(|e| rejected(e.into(), TAMPERED))
    }

    /// Creates a version's objects from backed-up material: the secret object unwrapped by the
    /// token with the same template as a generated key (sensitive, not copyable, extractable
    /// only under a trusted key), the public object from the stored public key. Usage flags
    /// and label follow `live`: a soft-deleted version comes back with every flag off.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_version(
        &self,
        session: &Session,
        id: VersionId,
        name: &str,
        kind: KeyKind,
        ops: &KeyOps,
        public: &PublicKey,
        wrapped: &[u8],
        live: bool,
    ) -> Result<KeyHandles> {
        let domain = self.domain()?;
        let family = kind.family();
        let (label, ops) = if live {
            (templates::live_label(name, id), ops.clone())
        } else {
            (templates::deleted_label(name, id), KeyOps::none())
        };
        let template = templates::secret_unwrap(id, &label, family, &ops, self.settings.extraction);
        let secret = session
            .unwrap_key(&self.key_wrap(), domain.unwrap, wrapped, &template)
            .map_err(|e| rejected(e.into(), NOT_OURS))?;
        let components = match public {
            PublicKey::Rsa { n, e } => Some(vec![
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
            ]),
            PublicKey::Ec { curve, x, y } => Some(vec![
                Attribute::EcParams(curve.der_oid().to_vec()),
                Attribute::EcPoint(encode_ec_point(x, y)),
            ]),
            PublicKey::Oct => None,
        };
        let public = match components {
            None => None,
            Some(components) => {
                let tmpl = templates::public_import(id, &label, family, components, &ops);
                match session.create_object(&tmpl) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        let _ = session.destroy_object(secret);
                        return Err(e.into());
                    }
                }
            }
        };
        let handles = KeyHandles { secret, public };
        self.remember(id, handles);
        Ok(handles)
    }

    /// Unwraps backed-up material into a short-lived session object of its kind and destroys
    /// it: whether a full restore will be able to make this version.
    pub fn trial_unwrap(&self, session: &Session, kind: KeyKind, wrapped: &[u8]) -> Result<()> {
        let domain = self.domain()?;
        let (class, key_type) = match kind {
            KeyKind::Oct { .. } => (ObjectClass::SECRET_KEY, KeyType::AES),
            KeyKind::Rsa { .. } => (ObjectClass::PRIVATE_KEY, KeyType::RSA),
            KeyKind::Ec { .. } => (ObjectClass::PRIVATE_KEY, KeyType::EC),
        };
        let handle = session
            .unwrap_key(
                &self.key_wrap(),
                domain.unwrap,
                wrapped,
                &[
                    Attribute::Class(class),
                    Attribute::KeyType(key_type),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ],
            )
            .map_err(|e| rejected(e.into(), NOT_OURS))?;
        session.destroy_object(handle)?;
        Ok(())
    }

    /// Destroys every key object (live or soft-deleted) on the token, for a full restore;
    /// the security domain and foreign objects stay. Returns how many were destroyed.
    pub fn destroy_all_keys(&self, session: &Session) -> Result<usize> {
        let objects = self.scan(session)?;
        let mut destroyed = 0;
        for object in &objects {
            match session.destroy_object(object.handle) {
                Ok(()) => destroyed += 1,
                Err(e) if is_rv(&e, RvError::ObjectHandleInvalid) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(destroyed)
    }
}

const NOT_OURS: &str =
    "the backup does not open under this HSM's security domain (it was changed, or made elsewhere)";
const TAMPERED: &str =
    "the backup failed its authentication check: it was changed after it was made";

/// Errors by which the token refuses the data of an unwrap or a decryption (a wrong key, a
/// failed integrity check; SoftHSM2 reports a failed GCM tag as `CKR_GENERAL_ERROR`, kryoptic
/// a wrapped key that does not unwrap as `CKR_DEVICE_ERROR`; the caller's probe tells those
/// from a token that went away).
fn rejected(e: Error, what: &'static str) -> Error {
    match e.rv() {
        Some(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange
            | RvError::UnwrappingKeyHandleInvalid
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError
            | RvError::DeviceError,
        ) => Error::Rejected(what),
        _ => e,
    }
}

/// The one `role` object (`wrap`, `unwrap`, `mac`) of domain `id`, found by label.
fn find_domain_object(session: &Session, id: VersionId, role: &str) -> Result<ObjectHandle> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(templates::domain_label(id, role)),
    ])?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::Unexpected(format!(
            "the token holds no {role} half of security domain {id}"
        ))),
        _ => Err(Error::Unexpected(format!(
            "the token holds more than one {role} half of security domain {id}"
        ))),
    }
}

fn find_domain(session: &Session, id: VersionId) -> Result<DomainHandles> {
    let wrap = find_domain_object(session, id, "wrap")?;
    let unwrap = find_domain_object(session, id, "unwrap")?;
    let mac = find_domain_object(session, id, "mac")?;
    // Only the id attribute is read back, as a check that the label did not lie.
    for handle in [wrap, unwrap, mac] {
        let ok = session
            .get_attributes(handle, &[AttributeType::Id])?
            .into_iter()
            .any(|a| matches!(a, Attribute::Id(raw) if raw == id.as_bytes()));
        if !ok {
            return Err(Error::Unexpected(format!(
                "a security-domain object's id is not {id}"
            )));
        }
    }
    Ok(DomainHandles {
        id,
        wrap,
        unwrap,
        mac,
    })
}

/// Makes the domain's MAC key if the token has none yet (the first start, or a token whose
/// domain predates it): a private, sensitive, non-extractable generic secret that can only
/// sign and verify.
fn ensure_mac_key(session: &Session, id: VersionId) -> Result<()> {
    let label = templates::domain_label(id, "mac");
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.clone()),
    ])?;
    if found.is_empty() {
        session.generate_key(
            &Mechanism::GenericSecretKeyGen,
            &templates::domain_mac(id, label),
        )?;
        tracing::info!(domain = %id, "made the security domain's backup MAC key");
    }
    Ok(())
}
