//! Changing a version's usage flags and label without ever rewriting its secret object.
//!
//! SoftHSM2's file store rewrites an object's file in place on `C_SetAttributeValue`
//! (truncate, then write); a process killed in between leaves an empty file, and the key is
//! gone. So a soft-delete, a recovery and a change of `key_ops` never write to the object that
//! holds a version's material. They make a *new* secret object from it — wrapped under the
//! security domain and unwrapped with the new template, both inside the token — and destroy
//! the old one only once the new one exists; a token writes a new object's file once, and
//! destroys one by removing its file. The public object is made anew from the public key the
//! database keeps. A kill at any instant therefore leaves the old secret object intact, or the
//! new one complete, and [`Hsm::settle_version`] tells them apart after a restart: the old one
//! is the object that carries exactly the old label and the old flags.
//!
//! Keys made with `keys.backups = false` cannot be wrapped; for them the flags are written in
//! place, and a kill inside that write can lose the version on a token whose writes are not
//! atomic. ARCHITECTURE.md says so; the start-up sweep reports such a version as missing.

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::templates::{self, Extraction};
use super::{Error, Hsm, KeyHandles, Result, encode_ec_point, is_rv, label_of};
use crate::failpoint;
use crate::model::{KeyKind, KeyOps, PublicKey, VersionId};

/// How a version's objects look in one state: live, with the flags of its `key_ops`, or
/// soft-deleted, with every flag off and the `p11vault-deleted/` label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Look {
    live: bool,
    ops: KeyOps,
}

impl Look {
    pub fn live(ops: KeyOps) -> Self {
        Self { live: true, ops }
    }

    pub fn deleted() -> Self {
        Self {
            live: false,
            ops: KeyOps::none(),
        }
    }

    fn label(&self, name: &str, id: VersionId) -> Vec<u8> {
        if self.live {
            templates::live_label(name, id)
        } else {
            templates::deleted_label(name, id)
        }
    }
}

/// What a change of state needs to know of a version: who it is and its public key.
#[derive(Clone, Copy, Debug)]
pub struct Version<'a> {
    pub id: VersionId,
    pub name: &'a str,
    pub kind: KeyKind,
    pub public: &'a PublicKey,
}

/// How [`Hsm::settle_version`] left a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The version's objects look as asked.
    Done,
    /// Neither a complete old object nor a complete new one exists: the material is gone.
    Missing,
}

impl Hsm {
    /// Moves a version's objects from `from` to `to` (the request path: cached handles, no
    /// search). The new secret object is in the cache before the old one is destroyed, so a
    /// concurrent operation meets either object, never a missing one.
    pub fn transition(
        &self,
        session: &Session,
        v: Version<'_>,
        from: &Look,
        to: &Look,
    ) -> Result<()> {
        if from == to {
            return Ok(());
        }
        let old = self.handles(v.id)?;
        let remade = if secret_changes(v, from, to) {
            self.remake_secret(session, v, old.secret, to)?
        } else {
            None
        };
        let secret = match remade {
            Some(new) => {
                self.remember(
                    v.id,
                    KeyHandles {
                        secret: new,
                        public: old.public,
                    },
                );
                failpoint::hit("hsm.replace.before_destroy");
                destroy_tolerant(session, old.secret)?;
                new
            }
            None => old.secret,
        };
        let public = match old.public {
            Some(handle) => {
                destroy_tolerant(session, handle)?;
                Some(self.make_public(session, v, to)?)
            }
            None => None,
        };
        self.remember(v.id, KeyHandles { secret, public });
        Ok(())
    }

    /// Brings a version's objects to `to` whatever a crash left half-done (the reconciler's
    /// path: it searches the token by `CKA_ID`, so it also sees objects the cache never did).
    ///
    /// The old secret object is never written, so if an object with exactly `from`'s label
    /// and flags exists, it is the intact original: every other object of the version is a
    /// partial copy and is destroyed, and the change is made again from the original. If no
    /// original is left, the change got past its last step, so the new object is complete.
    pub fn settle_version(
        &self,
        session: &Session,
        v: Version<'_>,
        from: &Look,
        to: &Look,
    ) -> Result<Settled> {
        let mut secrets = Vec::new();
        let mut publics = Vec::new();
        for handle in session.find_objects(&[Attribute::Id(v.id.as_bytes().to_vec())])? {
            let label = label_of(session, handle)?;
            let ours = label.starts_with(templates::LIVE_PREFIX.as_bytes())
                || label.starts_with(templates::DELETED_PREFIX.as_bytes());
            if !ours {
                continue;
            }
            match class_of(session, handle)? {
                Some(ObjectClass::PUBLIC_KEY) => publics.push(handle),
                Some(_) => secrets.push((handle, label)),
                // An object without a class is half-written; it can be neither the original
                // nor the finished copy.
                None => secrets.push((handle, Vec::new())),
            }
        }
        // The original and a finished copy differ in label or in the flags that change (only
        // those are compared: an object made by an older release may carry more flags on).
        let (from_flags, to_flags) = changing_flags(v, from, to);
        let looks_like =
            |handle: ObjectHandle, label: &[u8], look: &Look, flags| -> Result<bool> {
                Ok(label == look.label(v.name, v.id).as_slice()
                    && flags_match(session, handle, flags)?)
            };
        let secret = if !secret_changes(v, from, to) {
            // Nothing was ever copied: the one secret object is the version's.
            match secrets.first() {
                Some((handle, _)) => *handle,
                None => return Ok(Settled::Missing),
            }
        } else {
            let mut original = None;
            for (handle, label) in &secrets {
                if looks_like(*handle, label, from, &from_flags)? {
                    original = Some(*handle);
                    break;
                }
            }
            match original {
                Some(original) => {
                    for (handle, _) in secrets.iter().filter(|(h, _)| *h != original) {
                        destroy_tolerant(session, *handle)?;
                    }
                    match self.remake_secret(session, v, original, to)? {
                        Some(new) => {
                            destroy_tolerant(session, original)?;
                            new
                        }
                        None => original,
                    }
                }
                None => {
                    let mut done = None;
                    for (handle, label) in &secrets {
                        if looks_like(*handle, label, to, &to_flags)? {
                            done = Some(*handle);
                            break;
                        }
                    }
                    let Some(done) = done else {
                        return Ok(Settled::Missing);
                    };
                    for (handle, _) in secrets.iter().filter(|(h, _)| *h != done) {
                        destroy_tolerant(session, *handle)?;
                    }
                    done
                }
            }
        };
        for handle in publics {
            destroy_tolerant(session, handle)?;
        }
        let public = match v.public {
            PublicKey::Oct => None,
            _ => Some(self.make_public(session, v, to)?),
        };
        self.remember(v.id, KeyHandles { secret, public });
        Ok(Settled::Done)
    }

    /// A new secret object holding `source`'s material with `to`'s label and flags, made by
    /// the token (wrap under the domain, unwrap with the new template). `None` when the key
    /// cannot leave the token even wrapped (`keys.backups = false`): then `source` itself was
    /// switched, in place.
    fn remake_secret(
        &self,
        session: &Session,
        v: Version<'_>,
        source: ObjectHandle,
        to: &Look,
    ) -> Result<Option<ObjectHandle>> {
        let family = v.kind.family();
        let label = to.label(v.name, v.id);
        if self.settings.extraction == Extraction::Never {
            let mut attrs = templates::secret_usage(family, &to.ops);
            attrs.push(Attribute::Label(label));
            session.update_attributes(source, &attrs)?;
            return Ok(None);
        }
        let domain = self.domain()?;
        let wrapped = Zeroizing::new(session.wrap_key(&self.key_wrap(), domain.wrap, source)?);
        failpoint::hit("hsm.replace.after_wrap");
        let template =
            templates::secret_unwrap(v.id, &label, family, &to.ops, self.settings.extraction);
        let new = session.unwrap_key(&self.key_wrap(), domain.unwrap, &wrapped, &template)?;
        Ok(Some(new))
    }

    /// The version's public object, made from the public key the database keeps.
    fn make_public(&self, session: &Session, v: Version<'_>, look: &Look) -> Result<ObjectHandle> {
        let components = match v.public {
            PublicKey::Rsa { n, e } => vec![
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
            ],
            PublicKey::Ec { curve, x, y } => vec![
                Attribute::EcParams(curve.der_oid().to_vec()),
                Attribute::EcPoint(encode_ec_point(x, y)),
            ],
            PublicKey::Oct => {
                return Err(Error::Unexpected("an AES key has no public object".into()));
            }
        };
        let tmpl = templates::public_import(
            v.id,
            &look.label(v.name, v.id),
            v.kind.family(),
            components,
            &look.ops,
        );
        Ok(session.create_object(&tmpl)?)
    }
}

/// Whether the secret object's label or flags differ between the two looks (if not, it is
/// left as it is and only the public object is made anew).
fn secret_changes(v: Version<'_>, from: &Look, to: &Look) -> bool {
    let family = v.kind.family();
    from.label(v.name, v.id) != to.label(v.name, v.id)
        || templates::secret_usage(family, &from.ops) != templates::secret_usage(family, &to.ops)
}

/// The secret object's flags that differ between the two looks, with their values in each.
fn changing_flags(v: Version<'_>, from: &Look, to: &Look) -> (Vec<Attribute>, Vec<Attribute>) {
    let family = v.kind.family();
    templates::secret_usage(family, &from.ops)
        .into_iter()
        .zip(templates::secret_usage(family, &to.ops))
        .filter(|(a, b)| a != b)
        .unzip()
}

/// Destroys an object; one that is already gone counts as destroyed.
fn destroy_tolerant(session: &Session, handle: ObjectHandle) -> Result<()> {
    match session.destroy_object(handle) {
        Ok(()) => Ok(()),
        Err(e) if is_rv(&e, RvError::ObjectHandleInvalid) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The object's class, `None` if it has none or the token cannot say (a half-written object).
fn class_of(session: &Session, handle: ObjectHandle) -> Result<Option<ObjectClass>> {
    let attrs = match session.get_attributes(handle, &[AttributeType::Class]) {
        Ok(attrs) => attrs,
        Err(e) if is_rv(&e, RvError::AttributeValueInvalid) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Class(c) => Some(c),
        _ => None,
    }))
}

/// Whether the object carries every one of `expected`'s flags, with those values. A flag the
/// object lacks (a half-written file) is a mismatch.
fn flags_match(session: &Session, handle: ObjectHandle, expected: &[Attribute]) -> Result<bool> {
    let types: Vec<AttributeType> = expected.iter().map(Attribute::attribute_type).collect();
    let found = match session.get_attributes(handle, &types) {
        Ok(found) => found,
        Err(e) if is_rv(&e, RvError::AttributeValueInvalid) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(expected.iter().all(|want| found.contains(want)))
}
