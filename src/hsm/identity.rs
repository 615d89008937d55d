//! The sign-in's own HMAC key in the token (`p11vault-id/{id}/mac`): what identity headers and
//! the short-lived tokens of `az login --identity` are authenticated with. It is not the
//! security domain's MAC key on purpose: a fresh HSM has no security domain until it is
//! activated, and an operator must be able to sign in before that, to download the domain.
//! Made once per data dir (its id is recorded in the database first), found again after every
//! reconnect, never searched for on a request.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{Error, Hsm, Result, templates};
use crate::model::VersionId;

/// The sign-in key's id and its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityKey {
    pub id: VersionId,
    pub handle: ObjectHandle,
}

impl Hsm {
    /// Finds the sign-in key `id`, making it first if the token has none yet (the first start
    /// of this release on a data dir, or a start that died between recording the id and
    /// making the key), and keeps its handle.
    pub fn set_identity_key(&self, id: VersionId) -> Result<()> {
        let key = self.call_blocking(|_, s| {
            if find(s, id)?.is_none() {
                s.generate_key(
                    &Mechanism::GenericSecretKeyGen,
                    &templates::identity_mac(id),
                )?;
                tracing::info!(key = %id, "made the sign-in's HMAC key");
            }
            located(s, id)
        })?;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(())
    }

    /// After a reconnect: the handle again (SoftHSM2 hands out new ones).
    pub(super) fn refresh_identity_key(&self, session: &Session) -> Result<()> {
        let id = self
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map(|k| k.id);
        if let Some(id) = id {
            let key = located(session, id)?;
            *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        }
        Ok(())
    }

    fn identity_handle(&self) -> Result<ObjectHandle> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map(|k| k.handle)
            .ok_or_else(|| Error::Unexpected("the sign-in key is not loaded".into()))
    }

    /// HMAC-SHA-256 of `data` under the sign-in key.
    pub fn identity_mac(&self, session: &Session, data: &[u8]) -> Result<Vec<u8>> {
        let key = self.identity_handle()?;
        Ok(session.sign(&Mechanism::Sha256Hmac, key, data)?)
    }

    /// Checks `tag` in the token; a tag that does not verify is [`Error::Rejected`].
    pub fn check_identity_mac(&self, session: &Session, data: &[u8], tag: &[u8]) -> Result<()> {
        let key = self.identity_handle()?;
        session
            .verify(&Mechanism::Sha256Hmac, key, data, tag)
            .map_err(|e| match e {
                cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::SignatureInvalid
                    | cryptoki::error::RvError::SignatureLenRange,
                    _,
                ) => Error::Rejected("the tag does not verify"),
                e => e.into(),
            })
    }
}

/// The sign-in key `id`, if the token holds exactly one; two is an error.
fn find(session: &Session, id: VersionId) -> Result<Option<ObjectHandle>> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(templates::identity_label(id)),
    ])?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(Error::Unexpected(format!(
            "the token holds more than one sign-in key {id}"
        ))),
    }
}

/// The sign-in key `id`, which must exist, its `CKA_ID` checked against its label.
fn located(session: &Session, id: VersionId) -> Result<IdentityKey> {
    let handle = find(session, id)?
        .ok_or_else(|| Error::Unexpected(format!("the token holds no sign-in key {id}")))?;
    let ok = session
        .get_attributes(handle, &[AttributeType::Id])?
        .into_iter()
        .any(|a| matches!(a, Attribute::Id(raw) if raw == id.as_bytes()));
    if !ok {
        return Err(Error::Unexpected(format!(
            "the sign-in key's id is not {id}"
        )));
    }
    Ok(IdentityKey { id, handle })
}
