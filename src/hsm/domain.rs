//! The security domain at run time (DESIGN §8, docs/security-domain.md): a domain whose values
//! arrive from a download being made or from an upload is installed as the token's three domain
//! objects; a half-made or superseded one is taken back off; and the transfer key of a recovery
//! is made, used and destroyed. Every object here is made by the user and private (the private
//! domain model), whatever model older data dirs recorded.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::oaep::OaepHash;
use super::ops::RsaPadding;
use super::{Error, Hsm, Result, label_of, templates};
use crate::model::VersionId;

/// The modulus size of transfer keys, as Managed HSM's.
pub const TRANSFER_KEY_BITS: u64 = 4096;

/// The public half of a transfer key, as the token gives it back.
pub struct TransferPublic {
    /// The DER `SubjectPublicKeyInfo` of the key.
    pub spki_der: Vec<u8>,
}

impl Hsm {
    /// Random bytes from the token, in a zeroizing buffer: the values of a new domain.
    pub fn secret_random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>> {
        self.call_blocking(|_, s| Ok(Zeroizing::new(s.generate_random_vec(n as u32)?)))
    }

    /// Makes domain `id`'s wrap half, unwrap half and MAC key from their values, after taking
    /// away any object of that id a crash left half-made. The caller has committed `id` as the
    /// domain being installed before this is called, so a restart knows these objects are its
    /// own.
    pub fn install_domain(&self, id: VersionId, wrap: &[u8], mac: &[u8]) -> Result<()> {
        self.call_blocking(|_, s| {
            destroy_objects_of(s, id, None)?;
            let mut half = templates::domain_wrap_half(id, wrap, true);
            half.extend([
                Attribute::Token(true),
                Attribute::Modifiable(false),
                Attribute::Copyable(false),
            ]);
            create_wiped(s, half)?;
            crate::failpoint::hit("domain.after_wrap_half");
            create_wiped(s, templates::domain_unwrap_half(id, wrap))?;
            crate::failpoint::hit("domain.after_unwrap_half");
            create_wiped(s, templates::domain_mac_import(id, mac))?;
            Ok(())
        })
    }

    /// Destroys every object whose label and `CKA_ID` both name `id` (a domain's or a transfer
    /// key's): only ever for ids the data dir recorded as its own and no longer needs.
    pub fn remove_domain_objects(&self, id: VersionId) -> Result<()> {
        self.call_blocking(|_, s| destroy_objects_of(s, id, None))?;
        let mut domain = self.domain.write().unwrap_or_else(|p| p.into_inner());
        if domain.is_some_and(|d| d.id == id) {
            *domain = None;
        }
        let mut transfer = self.transfer.write().unwrap_or_else(|p| p.into_inner());
        if transfer.is_some_and(|t| t.id == id) {
            *transfer = None;
        }
        Ok(())
    }

    /// Makes a transfer key pair with id `id` (after taking away a half-made one of that id)
    /// and gives back its public key. Its handles are kept for the calls that use it.
    pub fn make_transfer_key(&self, id: VersionId) -> Result<TransferPublic> {
        self.call_blocking(|hsm, s| {
            destroy_objects_of(s, id, None)?;
            let (public_t, private_t) = templates::transfer_pair(id, TRANSFER_KEY_BITS);
            let (public, private) =
                s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_t, &private_t)?;
            *hsm.transfer.write().unwrap_or_else(|p| p.into_inner()) = Some(TransferHandles {
                id,
                public,
                private,
            });
            Ok(TransferPublic {
                spki_der: rsa_spki(s, public)?,
            })
        })
    }

    /// The public key of transfer key `id`, or `None` when the token holds no complete pair.
    /// Searches the token only the first time after a start or a reconnect.
    pub fn transfer_public(&self, id: VersionId) -> Result<Option<TransferPublic>> {
        self.call_blocking(|hsm, s| {
            let Some(handles) = hsm.transfer_handles(s, id)? else {
                return Ok(None);
            };
            match rsa_spki(s, handles.public) {
                Ok(spki_der) => Ok(Some(TransferPublic { spki_der })),
                // Destroyed behind the service's back: looked for once more.
                Err(e) if e.is_stale_object() => {
                    *hsm.transfer.write().unwrap_or_else(|p| p.into_inner()) = None;
                    match hsm.transfer_handles(s, id)? {
                        Some(h) => Ok(Some(TransferPublic {
                            spki_der: rsa_spki(s, h.public)?,
                        })),
                        None => Ok(None),
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 by transfer key `id`: its certificate's signature.
    pub fn transfer_sign(&self, id: VersionId, data: &[u8]) -> Result<Vec<u8>> {
        self.call_blocking(|hsm, s| {
            let key = hsm.transfer_private(s, id)?;
            Ok(s.sign(&Mechanism::Sha256RsaPkcs, key, data)?)
        })
    }

    /// RSA-OAEP-256 decryption by transfer key `id` (natively, or raw RSA in the token and the
    /// constant-time OAEP decode, as for keys). Malformed input is [`Error::Rejected`].
    pub fn transfer_decrypt(&self, id: VersionId, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.call_blocking(|hsm, s| {
            let key = hsm.transfer_private(s, id)?;
            hsm.rsa_decrypt(
                s,
                key,
                RsaPadding::Oaep(OaepHash::Sha256),
                (TRANSFER_KEY_BITS / 8) as usize,
                data,
            )
        })
    }

    fn transfer_private(&self, session: &Session, id: VersionId) -> Result<ObjectHandle> {
        self.transfer_handles(session, id)?
            .map(|h| h.private)
            .ok_or_else(|| Error::Unexpected("the transfer key is missing".into()))
    }

    /// The handles of transfer key `id`: cached, or (first use after a start or a reconnect)
    /// found by label.
    fn transfer_handles(
        &self,
        session: &Session,
        id: VersionId,
    ) -> Result<Option<TransferHandles>> {
        if let Some(h) = *self.transfer.read().unwrap_or_else(|p| p.into_inner())
            && h.id == id
        {
            return Ok(Some(h));
        }
        let (Some(public), Some(private)) = (
            find_transfer(session, id, templates::TRANSFER_PUBLIC)?,
            find_transfer(session, id, templates::TRANSFER_PRIVATE)?,
        ) else {
            return Ok(None);
        };
        let handles = TransferHandles {
            id,
            public,
            private,
        };
        *self.transfer.write().unwrap_or_else(|p| p.into_inner()) = Some(handles);
        Ok(Some(handles))
    }
}

/// A transfer key's two objects.
#[derive(Clone, Copy, Debug)]
pub struct TransferHandles {
    id: VersionId,
    public: ObjectHandle,
    private: ObjectHandle,
}

/// Creates an object from a template holding a secret value, and wipes the template's copy of
/// it whether the token took it or not.
pub(super) fn create_wiped(session: &Session, mut template: Vec<Attribute>) -> Result<()> {
    let made = session.create_object(&template);
    super::objects::wipe_template(&mut template);
    made?;
    Ok(())
}

/// Destroys the objects of any class whose `CKA_ID` is `id` and whose label is
/// `p11vault-sd/{id}/…` (`role`: only that one).
fn destroy_objects_of(session: &Session, id: VersionId, role: Option<&str>) -> Result<()> {
    let prefix = templates::domain_label(id, role.unwrap_or(""));
    for handle in session.find_objects(&[Attribute::Id(id.as_bytes().to_vec())])? {
        let label = label_of(session, handle)?;
        let matches = match role {
            Some(_) => label == prefix,
            None => label.starts_with(&prefix),
        };
        if matches {
            session.destroy_object(handle)?;
        }
    }
    Ok(())
}

fn find_transfer(session: &Session, id: VersionId, role: &str) -> Result<Option<ObjectHandle>> {
    let class = if role == templates::TRANSFER_PRIVATE {
        ObjectClass::PRIVATE_KEY
    } else {
        ObjectClass::PUBLIC_KEY
    };
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Label(templates::domain_label(id, role)),
    ])?;
    Ok(found.first().copied())
}

/// The DER `SubjectPublicKeyInfo` of an RSA public key object.
fn rsa_spki(session: &Session, public: ObjectHandle) -> Result<Vec<u8>> {
    let attrs = session.get_attributes(
        public,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    let (mut n, mut e) = (None, None);
    for attr in attrs {
        match attr {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let (Some(n), Some(e)) = (n, e) else {
        return Err(Error::Unexpected(
            "the token did not give the transfer key's modulus back".into(),
        ));
    };
    let der = (|| {
        let rsa = openssl::rsa::Rsa::from_public_components(
            openssl::bn::BigNum::from_slice(&n)?,
            openssl::bn::BigNum::from_slice(&e)?,
        )?;
        openssl::pkey::PKey::from_rsa(rsa)?.public_key_to_der()
    })()
    .map_err(|e| Error::Unexpected(format!("the transfer key's public key: {e}")))?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_objects_are_private_and_the_private_half_never_leaves() {
        let id = VersionId::random();
        let (public, private) = templates::transfer_pair(id, TRANSFER_KEY_BITS);
        for t in [&public, &private] {
            assert!(t.contains(&Attribute::Private(true)));
            assert!(t.contains(&Attribute::Copyable(false)));
            assert!(t.contains(&Attribute::Modifiable(false)));
        }
        assert!(private.contains(&Attribute::Sensitive(true)));
        assert!(private.contains(&Attribute::Extractable(false)));
        assert!(private.contains(&Attribute::Unwrap(false)));
    }
}
