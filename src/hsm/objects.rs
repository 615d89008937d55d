//! Key objects in the token: generating and importing a key version, destroying its objects,
//! and reading back the public part of a generated key pair.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::{
    Error, Hsm, ImportMaterial, KeyHandles, Result, decode_ec_point, encode_ec_point, is_rv,
    label_of, templates,
};
use crate::model::{Curve, KeyFamily, KeyKind, KeyOps, PublicKey, VersionId};

impl Hsm {
    /// Generates a key version in the token and reads back its public part. An RSA key gets
    /// `public_exponent`; a token that will not make one with that exponent (other than F4,
    /// which every token makes) is a client error, and so is one that made the key with
    /// another exponent (the objects it made are destroyed by the caller's rollback).
    pub fn generate(
        &self,
        session: &Session,
        id: VersionId,
        label: &[u8],
        kind: KeyKind,
        public_exponent: u32,
        ops: &KeyOps,
    ) -> Result<(KeyHandles, PublicKey)> {
        let extraction = self.settings.extraction;
        let (handles, public) = match kind {
            KeyKind::Oct { bits } => {
                let tmpl = templates::aes_generate(id, label, bits, ops, extraction);
                let secret = session.generate_key(&Mechanism::AesKeyGen, &tmpl)?;
                (
                    KeyHandles {
                        secret,
                        public: None,
                    },
                    PublicKey::Oct,
                )
            }
            KeyKind::Rsa { bits } => {
                let exponent = exponent_bytes(public_exponent);
                let params = vec![
                    Attribute::ModulusBits(u64::from(bits).into()),
                    Attribute::PublicExponent(exponent.clone()),
                ];
                let (pub_t, priv_t) =
                    templates::pair_generate(id, label, KeyFamily::Rsa, params, ops, extraction);
                let custom = public_exponent != crate::model::DEFAULT_PUBLIC_EXPONENT;
                let (public, secret) = session
                    .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pub_t, &priv_t)
                    .map_err(|e| match e {
                        cryptoki::error::Error::Pkcs11(rv, _)
                            if custom && refuses_the_template(rv) =>
                        {
                            Error::Rejected(
                                "the HSM's token refuses to make an RSA key with this public exponent",
                            )
                        }
                        other => other.into(),
                    })?;
                let key = read_rsa_public(session, public)?;
                if !matches!(&key, PublicKey::Rsa { e, .. } if *e == exponent) {
                    return Err(Error::Rejected(
                        "the HSM's token made the RSA key with another public exponent than the one asked for",
                    ));
                }
                (
                    KeyHandles {
                        secret,
                        public: Some(public),
                    },
                    key,
                )
            }
            KeyKind::Ec { curve } => {
                let params = vec![Attribute::EcParams(curve.der_oid().to_vec())];
                let (pub_t, priv_t) =
                    templates::pair_generate(id, label, KeyFamily::Ec, params, ops, extraction);
                let (public, secret) =
                    session.generate_key_pair(&Mechanism::EccKeyPairGen, &pub_t, &priv_t)?;
                let key = read_ec_public(session, public, curve)?;
                (
                    KeyHandles {
                        secret,
                        public: Some(public),
                    },
                    key,
                )
            }
        };
        self.remember(id, handles);
        Ok((handles, public))
    }

    /// Creates a key version from imported material.
    pub fn import(
        &self,
        session: &Session,
        id: VersionId,
        label: &[u8],
        material: &ImportMaterial,
        ops: &KeyOps,
    ) -> Result<KeyHandles> {
        let extraction = self.settings.extraction;
        let family = material.family();
        let (secret_components, public_components) = match material {
            ImportMaterial::Oct { k } => (vec![Attribute::Value(k.to_vec())], None),
            ImportMaterial::Rsa {
                n,
                e,
                d,
                p,
                q,
                dp,
                dq,
                qi,
            } => (
                vec![
                    Attribute::Modulus(n.clone()),
                    Attribute::PublicExponent(e.clone()),
                    Attribute::PrivateExponent(d.to_vec()),
                    Attribute::Prime1(p.to_vec()),
                    Attribute::Prime2(q.to_vec()),
                    Attribute::Exponent1(dp.to_vec()),
                    Attribute::Exponent2(dq.to_vec()),
                    Attribute::Coefficient(qi.to_vec()),
                ],
                Some(vec![
                    Attribute::Modulus(n.clone()),
                    Attribute::PublicExponent(e.clone()),
                ]),
            ),
            ImportMaterial::Ec { curve, d, x, y } => (
                vec![
                    Attribute::EcParams(curve.der_oid().to_vec()),
                    Attribute::Value(d.to_vec()),
                ],
                Some(vec![
                    Attribute::EcParams(curve.der_oid().to_vec()),
                    Attribute::EcPoint(encode_ec_point(x, y)),
                ]),
            ),
        };
        // The template holds copies of secret bytes; they are wiped as soon as the token has
        // them, whatever the outcome.
        let mut secret_tmpl =
            templates::secret_import(id, label, family, secret_components, ops, extraction);
        let created = session.create_object(&secret_tmpl);
        wipe_template(&mut secret_tmpl);
        let secret = created?;
        let public = match public_components {
            Some(components) => {
                let tmpl = templates::public_import(id, label, family, components, ops);
                match session.create_object(&tmpl) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        // Do not leave half a key behind.
                        let _ = session.destroy_object(secret);
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        let handles = KeyHandles { secret, public };
        self.remember(id, handles);
        Ok(handles)
    }

    /// Purges a version: destroys its cached objects. An object that is already gone (a purge
    /// interrupted after some objects) counts as destroyed. Returns how many were destroyed now.
    pub fn destroy_cached(&self, session: &Session, id: VersionId) -> Result<usize> {
        let Ok(handles) = self.handles(id) else {
            return Ok(0);
        };
        let mut destroyed = 0;
        for handle in std::iter::once(handles.secret).chain(handles.public) {
            match session.destroy_object(handle) {
                Ok(()) => destroyed += 1,
                Err(e) if is_rv(&e, RvError::ObjectHandleInvalid) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.forget(id);
        Ok(destroyed)
    }

    /// Destroys every object carrying this `CKA_ID`. Finds by id rather than trusting the
    /// cache, because it also cleans up objects the cache never saw (a half-made key).
    pub fn destroy_by_id(&self, session: &Session, id: VersionId) -> Result<usize> {
        let handles = session.find_objects(&[Attribute::Id(id.as_bytes().to_vec())])?;
        let mut destroyed = 0;
        for handle in handles {
            let label = label_of(session, handle)?;
            // Only objects we made: never touch the security domain or foreign objects.
            let ours = label.starts_with(templates::LIVE_PREFIX.as_bytes())
                || label.starts_with(templates::DELETED_PREFIX.as_bytes());
            if ours {
                session.destroy_object(handle)?;
                destroyed += 1;
            }
        }
        self.forget(id);
        Ok(destroyed)
    }
}

/// Overwrites the byte-valued attributes of a template that held key material.
pub(super) fn wipe_template(tmpl: &mut [Attribute]) {
    use zeroize::Zeroize;
    for attr in tmpl.iter_mut() {
        match attr {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v.zeroize(),
            _ => {}
        }
    }
}

/// An exponent as `CKA_PUBLIC_EXPONENT` takes it: big-endian, without leading zeros.
fn exponent_bytes(e: u32) -> Vec<u8> {
    let bytes = e.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

/// Return values by which a token refuses a key-pair template (here: its public exponent).
/// SoftHSM2 answers an exponent its crypto library refuses with `CKR_GENERAL_ERROR`; the call
/// runs through the probe of ambiguous errors, so a token that went away is still a 503.
fn refuses_the_template(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::TemplateInconsistent
            | RvError::TemplateIncomplete
            | RvError::AttributeValueInvalid
            | RvError::MechanismParamInvalid
            | RvError::ArgumentsBad
            | RvError::DomainParamsInvalid
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::DeviceError
    )
}

fn read_rsa_public(session: &Session, handle: ObjectHandle) -> Result<PublicKey> {
    let mut n = None;
    let mut e = None;
    for a in session.get_attributes(
        handle,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )? {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    match (n, e) {
        (Some(n), Some(e)) => Ok(PublicKey::Rsa {
            n: strip_leading_zeros(n),
            e: strip_leading_zeros(e),
        }),
        _ => Err(Error::Unexpected(
            "an RSA public key without modulus or exponent".into(),
        )),
    }
}

fn read_ec_public(session: &Session, handle: ObjectHandle, curve: Curve) -> Result<PublicKey> {
    let point = session
        .get_attributes(handle, &[AttributeType::EcPoint])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| Error::Unexpected("an EC public key without CKA_EC_POINT".into()))?;
    let (x, y) = decode_ec_point(&point, curve)
        .ok_or_else(|| Error::Unexpected("CKA_EC_POINT is not an uncompressed point".into()))?;
    Ok(PublicKey::Ec { curve, x, y })
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(v.len().saturating_sub(1));
    v.drain(..zeros);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_stripped_but_zero_stays() {
        assert_eq!(strip_leading_zeros(vec![0, 0, 1, 0]), vec![1, 0]);
        assert_eq!(strip_leading_zeros(vec![0]), vec![0]);
    }
}
