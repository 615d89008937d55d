//! What a token enforces and offers, as far as the service depends on it: probed once, at the
//! first start of a data dir, and recorded in its database (`meta.token_profile`), so every
//! later start, backup and restore makes the same choices (DESIGN §7, §8).
//!
//! Tokens differ exactly where the security domain lives (docs/pkcs11-probe.md §5, §9):
//! SoftHSM2 lets only the SO create a `CKA_TRUSTED` key, and only as a public object; kryoptic
//! lets any logged-in user create one. SoftHSM2's padded AES key wrap is `CKM_AES_KEY_WRAP_PAD`
//! (0x210A), kryoptic's is `CKM_AES_KEY_WRAP_KWP` (0x210B, RFC 5649). Curves differ too
//! (kryoptic has no secp256k1).

use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::oaep::OaepHash;
use super::{Module, Pin, Result, Slot, login_user, ops};
use crate::model::Curve;

/// `CKM_AES_KEY_WRAP_KWP` (PKCS#11 3.0): AES key wrap with padding per RFC 5649.
pub const CKM_AES_KEY_WRAP_KWP: std::ffi::c_ulong = 0x0000_210B;

/// The padded AES key wrap the security domain wraps key material with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyWrap {
    /// `CKM_AES_KEY_WRAP_PAD` (0x210A; SoftHSM2).
    #[serde(rename = "CKM_AES_KEY_WRAP_PAD")]
    Pad,
    /// `CKM_AES_KEY_WRAP_KWP` (0x210B, RFC 5649; kryoptic and PKCS#11 3.0 tokens).
    #[serde(rename = "CKM_AES_KEY_WRAP_KWP")]
    Kwp,
}

impl KeyWrap {
    pub fn mechanism(self) -> Mechanism<'static> {
        match self {
            KeyWrap::Pad => Mechanism::AesKeyWrapPad,
            KeyWrap::Kwp => Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
                kwp_mechanism_type(),
                None,
            )),
        }
    }

    /// The PKCS#11 name.
    pub fn name(self) -> &'static str {
        match self {
            KeyWrap::Pad => "CKM_AES_KEY_WRAP_PAD",
            KeyWrap::Kwp => "CKM_AES_KEY_WRAP_KWP",
        }
    }

    fn mechanism_type(self) -> MechanismType {
        match self {
            KeyWrap::Pad => MechanismType::AES_KEY_WRAP_PAD,
            KeyWrap::Kwp => kwp_mechanism_type(),
        }
    }
}

/// cryptoki 0.12 has no constant for `CKM_AES_KEY_WRAP_KWP`, and its only public constructor of
/// a `MechanismType` from a number refuses values below `CKM_VENDOR_DEFINED`.
fn kwp_mechanism_type() -> MechanismType {
    // SAFETY: `MechanismType` is `#[repr(transparent)]` over `CK_MECHANISM_TYPE` (cryptoki
    // documents the layout so that slices of either can be shared with the module), which is
    // `CK_ULONG`, i.e. `c_ulong`; `transmute` checks the sizes at compile time. Every value is
    // a valid `CK_MECHANISM_TYPE`, and the result is only passed back to the PKCS#11 module.
    #[expect(
        unsafe_code,
        reason = "cryptoki 0.12 cannot name CKM_AES_KEY_WRAP_KWP (0x210B) safely"
    )]
    unsafe {
        std::mem::transmute::<std::ffi::c_ulong, MechanismType>(CKM_AES_KEY_WRAP_KWP)
    }
}

/// Who may create a `CKA_TRUSTED` key on the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// Only the SO (SoftHSM2): `CKA_WRAP_WITH_TRUSTED` keeps key material to keys the SO made.
    SoOnly,
    /// Any logged-in user too (kryoptic): `CKA_WRAP_WITH_TRUSTED` protects nothing from a
    /// holder of the user PIN. Accepted only explicitly (`keys.accept_user_trusted_keys`).
    AnyUser,
    /// Nobody could: keys with `CKA_WRAP_WITH_TRUSTED` could never be backed up.
    Nobody,
}

/// How the security domain's wrap half is made on this token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WrapHalf {
    /// Made by the SO as a public object (SoftHSM2: the SO cannot make private objects).
    SoPublic,
    /// Made by the SO as a private object (needs the user PIN to use).
    SoPrivate,
    /// Made by the user as a private object (the SO could not make a trusted key).
    UserPrivate,
}

impl WrapHalf {
    pub fn private(self) -> bool {
        !matches!(self, WrapHalf::SoPublic)
    }

    pub fn by_so(self) -> bool {
        !matches!(self, WrapHalf::UserPrivate)
    }
}

/// How the token lets a `CKA_TRUSTED` key with a given value be made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustedVia {
    /// `C_CreateObject` with `CKA_TRUSTED=true` (SoftHSM2, as the SO).
    #[default]
    Create,
    /// `C_CreateObject` refuses `CKA_TRUSTED` (`CKR_ATTRIBUTE_TYPE_INVALID`), but
    /// `C_CopyObject` sets it (kryoptic): an untrusted session object is copied into the
    /// trusted token object and destroyed.
    Copy,
}

/// Where the security domain lives, and so how keys made for backups may leave the token
/// (ARCHITECTURE.md, "Protection models").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainModel {
    /// Keys made for backups carry `CKA_WRAP_WITH_TRUSTED`; the domain's wrap half is a
    /// `CKA_TRUSTED` key made as [`TokenProfile::wrap_half`] says. What every data dir made
    /// before the model was recorded uses (absent from its profile). On SoftHSM2 the wrap half
    /// is then public, so its value lies in clear in the token directory.
    #[default]
    Trusted,
    /// Every object of the domain is private and made by the user, and keys made for backups
    /// are extractable without `CKA_WRAP_WITH_TRUSTED`. What every new data dir uses: without
    /// an unwrap template on the domain, trusting the wrap half stops no holder of the user PIN
    /// on any token, and on SoftHSM2 it would leave the domain readable without one.
    Private,
}

/// RSA as the token offers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaProfile {
    /// The modulus sizes `C_GetMechanismInfo(CKM_RSA_PKCS_KEY_PAIR_GEN)` reports.
    pub min_bits: u64,
    pub max_bits: u64,
    /// The OAEP hashes the token does itself (a round trip on a session key pair worked);
    /// for any other, the service pads and the token does raw RSA. `None`: the probe could
    /// not make its key pair, so nothing was learnt (support is then learnt from use).
    pub oaep_native: Option<Vec<String>>,
}

impl RsaProfile {
    /// Whether the probe found the token doing OAEP with `h` itself; `None` if it learnt
    /// nothing.
    pub fn oaep_is_native(&self, h: OaepHash) -> Option<bool> {
        self.oaep_native
            .as_ref()
            .map(|native| native.iter().any(|n| n == oaep_name(h)))
    }
}

fn oaep_name(h: OaepHash) -> &'static str {
    match h {
        OaepHash::Sha1 => "SHA-1",
        OaepHash::Sha256 => "SHA-256",
    }
}

/// What the first start learnt of the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenProfile {
    pub key_wrap: KeyWrap,
    pub trust: Trust,
    pub wrap_half: WrapHalf,
    /// How the wrap half is made trusted.
    #[serde(default)]
    pub trusted_via: TrustedVia,
    /// The curves the token generates keys on.
    pub curves: Vec<Curve>,
    /// Where the security domain lives (absent: [`DomainModel::Trusted`], what the data dir
    /// was made with).
    #[serde(default)]
    pub domain: DomainModel,
    /// RSA key sizes and OAEP variants (absent in profiles recorded before they were probed:
    /// then no size is refused here, and OAEP support is learnt from the first use).
    #[serde(default)]
    pub rsa: Option<RsaProfile>,
    /// The mechanisms the service uses that the token lists (for the record; every start
    /// also logs what the token lists then).
    #[serde(default)]
    pub mechanisms: Vec<String>,
}

impl TokenProfile {
    /// The profile of a data dir initialised before profiles were recorded: what the service
    /// did then (SoftHSM2's model), with the curves probed now.
    pub fn legacy(curves: Vec<Curve>) -> Self {
        Self {
            key_wrap: KeyWrap::Pad,
            trust: Trust::SoOnly,
            wrap_half: WrapHalf::SoPublic,
            trusted_via: TrustedVia::Create,
            curves,
            domain: DomainModel::Trusted,
            rsa: None,
            mechanisms: Vec::new(),
        }
    }

    pub fn supports(&self, curve: Curve) -> bool {
        self.curves.contains(&curve)
    }

    /// Whether the token makes RSA keys of `bits` (unknown for older profiles, or a range no
    /// real token reports, such as a maximum below 1,024 bits: yes).
    pub fn supports_rsa_bits(&self, bits: u64) -> bool {
        self.rsa.as_ref().is_none_or(|r| {
            r.max_bits < r.min_bits
                || r.max_bits < 1024
                || (r.min_bits..=r.max_bits).contains(&bits)
        })
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        let curves: Vec<&str> = self.curves.iter().map(|c| c.jwk_name()).collect();
        format!(
            "security domain {}, key wrap {:?}, CKA_TRUSTED settable by {}, trusted wrap half possible as {} (by {:?}), curves {}",
            match self.domain {
                DomainModel::Trusted => "trusted (keys CKA_WRAP_WITH_TRUSTED)",
                DomainModel::Private => "private (every domain object private)",
            },
            self.key_wrap,
            match self.trust {
                Trust::SoOnly => "the SO only",
                Trust::AnyUser => "ANY logged-in user",
                Trust::Nobody => "nobody",
            },
            match self.wrap_half {
                WrapHalf::SoPublic => "public (SO)",
                WrapHalf::SoPrivate => "private (SO)",
                WrapHalf::UserPrivate => "private (user)",
            },
            self.trusted_via,
            curves.join(", ")
        )
    }
}

impl Module {
    /// Probes the token at a first start, with session objects only (nothing stays on the
    /// token): the padded AES key wrap `C_GetMechanismInfo` reports (KWP preferred: it is RFC
    /// 5649 on every token that has it), who may create a trusted key, and which curves
    /// generate. Must run while no user session is logged in (the SO logs in here).
    pub fn probe_profile(&self, slot: Slot, so_pin: &Pin, user_pin: &Pin) -> Result<TokenProfile> {
        let key_wrap = [KeyWrap::Kwp, KeyWrap::Pad]
            .into_iter()
            .find(|w| {
                self.ctx
                    .get_mechanism_info(slot, w.mechanism_type())
                    .is_ok_and(|info| info.wrap() && info.unwrap())
            })
            .ok_or_else(|| {
                super::Error::Unexpected(
                    "the token offers neither CKM_AES_KEY_WRAP_KWP nor CKM_AES_KEY_WRAP_PAD for wrap and unwrap; the security domain needs one"
                        .into(),
                )
            })?;

        let rsa = self
            .ctx
            .get_mechanism_info(slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)
            .ok();
        let mut mechanisms: Vec<String> = self
            .listed_mechanisms(slot)
            .iter()
            .map(|m| m.to_string())
            .collect();
        if !mechanisms.iter().any(|m| m == key_wrap.name()) {
            mechanisms.push(key_wrap.name().to_owned());
        }
        let (user_trusted, user_via, curves, oaep_native) = {
            let user = self.ctx.open_rw_session(slot)?;
            login_user(&user, user_pin)?;
            // Any way at all counts: a user who can generate a trusted key can wrap every
            // key out under it.
            let via = trusted_method(&user, true);
            let generated = can_generate_trusted(&user);
            let curves = probe_curves(&user);
            // The smallest key the token makes, from 1,024 bits: the probe only needs OAEP's
            // padding to fit, and a first start should not wait for a large key.
            let bits = rsa.as_ref().map_or(1024, |i| i.min_key_size().max(1024));
            let oaep = probe_oaep(&user, bits as u64);
            user.logout()?;
            (via.is_some() || generated, via, curves, oaep)
        };
        let (so_private, so_public) = {
            let so = self.ctx.open_rw_session(slot)?;
            so.login(UserType::So, Some(&so_pin.auth()))?;
            let private = trusted_method(&so, true);
            let public = trusted_method(&so, false);
            so.logout()?;
            (private, public)
        };
        let trust = if user_trusted {
            Trust::AnyUser
        } else if so_private.is_some() || so_public.is_some() {
            Trust::SoOnly
        } else {
            Trust::Nobody
        };
        let (wrap_half, trusted_via) = match (so_private, so_public, user_via) {
            (Some(via), _, _) => (WrapHalf::SoPrivate, via),
            (None, Some(via), _) => (WrapHalf::SoPublic, via),
            (None, None, via) => (WrapHalf::UserPrivate, via.unwrap_or_default()),
        };
        Ok(TokenProfile {
            key_wrap,
            trust,
            wrap_half,
            trusted_via,
            curves,
            domain: DomainModel::Private,
            rsa: rsa.map(|info| RsaProfile {
                min_bits: info.min_key_size() as u64,
                max_bits: info.max_key_size() as u64,
                oaep_native,
            }),
            mechanisms,
        })
    }

    /// The curves the token generates keys on (a user login, session objects only): what a
    /// data dir initialised before profiles were recorded learns at its next start.
    pub fn probe_curves(&self, slot: Slot, user_pin: &Pin) -> Result<Vec<Curve>> {
        let user = self.ctx.open_rw_session(slot)?;
        login_user(&user, user_pin)?;
        let curves = probe_curves(&user);
        user.logout()?;
        Ok(curves)
    }
}

/// Makes a trusted, unmodifiable AES key (uncopyable where the token allows) holding `base`'s value (`base` carries no
/// `CKA_TOKEN`, `CKA_TRUSTED`, `CKA_MODIFIABLE` or `CKA_COPYABLE`), the way `via` says the
/// token allows. With [`TrustedVia::Copy`] the untrusted source is a session object, destroyed
/// whatever happens (and gone with the session anyway).
pub(super) fn create_trusted(
    session: &Session,
    base: &[Attribute],
    token: bool,
    via: TrustedVia,
) -> cryptoki::error::Result<ObjectHandle> {
    let fixed = [
        Attribute::Token(token),
        Attribute::Trusted(true),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
    ];
    match via {
        TrustedVia::Create => {
            let mut template = base.to_vec();
            template.extend(fixed);
            session.create_object(&template)
        }
        TrustedVia::Copy => {
            let mut source = base.to_vec();
            source.extend([
                Attribute::Token(false),
                Attribute::Modifiable(true),
                Attribute::Copyable(true),
            ]);
            let source = session.create_object(&source)?;
            // kryoptic refuses CKA_COPYABLE=false in a copy's template, and the copy cannot be
            // changed afterwards (not modifiable): the wrap half stays copyable there. A copy
            // can be made only by a logged-in user (the half is private), who on such a token
            // may make trusted keys anyway.
            let copy = session.copy_object(source, &fixed[..3]);
            let _ = session.destroy_object(source);
            copy
        }
    }
}

/// How this session can make a trusted, wrap-only AES session object (private or public), if
/// it can; the object is destroyed at once.
fn trusted_method(session: &Session, private: bool) -> Option<TrustedVia> {
    let value = Zeroizing::new(session.generate_random_vec(32).ok()?);
    let base = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Private(private),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(false),
        Attribute::Label(b"p11vault-probe".to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    [TrustedVia::Create, TrustedVia::Copy]
        .into_iter()
        .find(|via| match create_trusted(session, &base, false, *via) {
            Ok(handle) => {
                let _ = session.destroy_object(handle);
                true
            }
            Err(e) => {
                tracing::debug!(private, ?via, error = %e, "token probe: no trusted key this way");
                false
            }
        })
}

/// Whether this session can generate a trusted key (`C_GenerateKey`, a session object).
fn can_generate_trusted(session: &Session) -> bool {
    let template = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Trusted(true),
        Attribute::Wrap(true),
        Attribute::ValueLen(32.into()),
    ];
    match session.generate_key(&Mechanism::AesKeyGen, &template) {
        Ok(handle) => {
            let _ = session.destroy_object(handle);
            true
        }
        Err(_) => false,
    }
}

/// The OAEP hashes the token does itself: a round trip of each on a session RSA key pair of
/// `bits`; `None` if the token would not make the pair.
fn probe_oaep(session: &Session, bits: u64) -> Option<Vec<String>> {
    let public = [
        Attribute::Token(false),
        Attribute::ModulusBits(bits.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Encrypt(true),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Decrypt(true),
    ];
    let Ok((p, s)) = session.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
    else {
        return None;
    };
    let message = b"p11vault OAEP probe";
    let native = [OaepHash::Sha1, OaepHash::Sha256]
        .into_iter()
        .filter(|h| {
            let mechanism = ops::oaep_mechanism(*h);
            session
                .encrypt(&mechanism, p, message)
                .and_then(|ct| session.decrypt(&mechanism, s, &ct))
                .is_ok_and(|pt| pt == message)
        })
        .map(|h| oaep_name(h).to_owned())
        .collect();
    let _ = session.destroy_object(p);
    let _ = session.destroy_object(s);
    Some(native)
}

fn probe_curves(session: &Session) -> Vec<Curve> {
    Curve::ALL
        .into_iter()
        .filter(|curve| {
            let public = [
                Attribute::Token(false),
                Attribute::Verify(true),
                Attribute::EcParams(curve.der_oid().to_vec()),
            ];
            let private = [
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
            ];
            match session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private) {
                Ok((p, s)) => {
                    let _ = session.destroy_object(p);
                    let _ = session.destroy_object(s);
                    true
                }
                Err(_) => false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kwp_mechanism_type_is_0x210b() {
        assert_eq!(*kwp_mechanism_type(), 0x210B);
        assert_eq!(*KeyWrap::Kwp.mechanism().mechanism_type(), 0x210B);
        assert_eq!(*KeyWrap::Pad.mechanism().mechanism_type(), 0x210A);
    }

    #[test]
    fn profiles_round_trip_through_json() {
        let p = TokenProfile {
            key_wrap: KeyWrap::Kwp,
            trust: Trust::AnyUser,
            wrap_half: WrapHalf::SoPrivate,
            trusted_via: TrustedVia::Copy,
            curves: vec![Curve::P256, Curve::P384],
            domain: DomainModel::Private,
            rsa: Some(RsaProfile {
                min_bits: 1024,
                max_bits: 4096,
                oaep_native: Some(vec!["SHA-1".into()]),
            }),
            mechanisms: vec!["CKM_AES_GCM".into()],
        };
        let text = serde_json::to_string(&p).expect("json");
        assert!(text.contains("CKM_AES_KEY_WRAP_KWP") && text.contains("any-user"));
        assert!(text.contains(r#""domain":"private""#), "{text}");
        assert_eq!(
            serde_json::from_str::<TokenProfile>(&text).expect("parses"),
            p
        );
    }

    #[test]
    fn a_profile_recorded_before_the_domain_model_keeps_the_trusted_one() {
        let text = r#"{"key_wrap":"CKM_AES_KEY_WRAP_PAD","trust":"so-only","wrap_half":"so-public","curves":["P-256"]}"#;
        let p: TokenProfile = serde_json::from_str(text).expect("parses");
        assert_eq!(p.domain, DomainModel::Trusted);
        assert_eq!(p.trusted_via, TrustedVia::Create);
        assert!(
            p.rsa.is_none() && p.supports_rsa_bits(8192),
            "nothing refused unprobed"
        );
    }

    #[test]
    fn rsa_sizes_outside_the_tokens_range_are_unsupported() {
        let mut p = TokenProfile::legacy(vec![Curve::P256]);
        p.rsa = Some(RsaProfile {
            min_bits: 2048,
            max_bits: 3072,
            oaep_native: Some(vec!["SHA-256".into()]),
        });
        assert!(p.supports_rsa_bits(2048) && p.supports_rsa_bits(3072));
        assert!(!p.supports_rsa_bits(4096) && !p.supports_rsa_bits(1024));
        let rsa = p.rsa.as_ref().expect("rsa");
        assert_eq!(rsa.oaep_is_native(OaepHash::Sha256), Some(true));
        assert_eq!(rsa.oaep_is_native(OaepHash::Sha1), Some(false));
        // A range no token reports (sizes in bytes, or none) refuses nothing.
        p.rsa = Some(RsaProfile {
            min_bits: 0,
            max_bits: 512,
            oaep_native: None,
        });
        assert!(p.supports_rsa_bits(2048));
        assert_eq!(
            p.rsa
                .as_ref()
                .expect("rsa")
                .oaep_is_native(OaepHash::Sha256),
            None
        );
    }
}
