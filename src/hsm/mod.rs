//! PKCS#11: the one context of the process, login, the session pool, the `CKA_ID → handle`
//! cache, and the key-object operations the key service needs. Every call here blocks; the async
//! entry point [`Hsm::call`] runs it on a blocking thread with a pooled session (DESIGN §7).

pub mod backup;
pub mod domain;
mod identity;
pub mod oaep;
mod objects;
pub mod ops;
mod pool;
pub mod profile;
mod replace;
pub mod templates;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
pub use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::model::{Curve, KeyFamily, VersionId};
pub use pool::Hsm;
use pool::{Backoff, Connection, RECONNECT_BACKOFF_MIN};
pub use profile::{DomainModel, KeyWrap, TokenProfile, Trust, WrapHalf};
pub use replace::{Look, Settled, Version};
use templates::Extraction;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the PKCS#11 module {path}: {source}")]
    Load {
        path: PathBuf,
        source: cryptoki::error::Error,
    },
    #[error("no token labelled '{0}' is present")]
    TokenNotFound(String),
    #[error("{0}")]
    Cryptoki(#[from] cryptoki::error::Error),
    #[error("the token holds no object for key version {0}")]
    ObjectMissing(VersionId),
    /// The token (or the padding check next to it) refused the data of an operation: a bad
    /// ciphertext, a failed authentication, a plaintext that does not fit. A client error.
    #[error("{0}")]
    Rejected(&'static str),
    #[error("{0}")]
    Unexpected(String),
    /// A call failed in a way that can mean the token went away, and a probe found it gone.
    #[error("the token does not answer: {0}")]
    Unreachable(String),
}

impl Error {
    /// The PKCS#11 return value, if the token gave one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            Error::Cryptoki(cryptoki::error::Error::Pkcs11(rv, _)) => Some(*rv),
            _ => None,
        }
    }

    /// Errors that mean the session, the login or the token itself is gone: the service answers
    /// 503 and reconnects.
    pub fn is_token_gone(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::UserNotLoggedIn
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::CryptokiNotInitialized
            )
        ) || matches!(self, Error::TokenNotFound(_) | Error::Unreachable(_))
    }

    /// Errors a token gives either because it failed or because of the call's own data or
    /// objects: SoftHSM2 answers `CKR_GENERAL_ERROR` to a failed GCM tag and to a token whose
    /// files vanished, kryoptic `CKR_DEVICE_ERROR` to a bad RSA ciphertext, and both
    /// `CKR_OBJECT_HANDLE_INVALID` to a key destroyed a moment ago and to every key of a token
    /// that went away. Which it was is asked of the token itself ([`Hsm::probe`]); client data
    /// alone never makes the service reconnect.
    fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Rejected(_))
            || matches!(
                self.rv(),
                Some(
                    RvError::GeneralError
                        | RvError::DeviceError
                        | RvError::DeviceMemory
                        | RvError::UnknownErrorCode(CKR_TOKEN_RESOURCE_EXCEEDED)
                        | RvError::FunctionFailed
                        | RvError::ObjectHandleInvalid
                        | RvError::KeyHandleInvalid
                        | RvError::WrappingKeyHandleInvalid
                        | RvError::UnwrappingKeyHandleInvalid
                )
            )
    }

    /// Errors by which a token that is still there says it cannot do the call right now, for
    /// want of its own resources: never the client's fault, and no reason to reconnect, so the
    /// service answers 503 and the client retries. kryoptic answers `CKR_DEVICE_MEMORY` to
    /// every object read or write while another process holds its SQLite file locked past
    /// SQLite's busy timeout, and `CKR_TOKEN_RESOURCE_EXCEEDED` to a login then; a probe that
    /// runs once the lock is gone finds the token well, so the call's own error must say 503.
    pub fn is_token_busy(&self) -> bool {
        matches!(
            self.rv(),
            Some(RvError::DeviceMemory | RvError::UnknownErrorCode(CKR_TOKEN_RESOURCE_EXCEEDED))
        )
    }

    /// Errors by which the token refuses a key object that was switched off, replaced or
    /// destroyed under the call (a concurrent delete, recover, update or purge). The key service
    /// runs the operation again once that change is committed.
    pub fn is_stale_object(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::KeyFunctionNotPermitted
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid
                    | RvError::WrappingKeyHandleInvalid
                    | RvError::UnwrappingKeyHandleInvalid
            )
        )
    }
}

/// `CKR_TOKEN_RESOURCE_EXCEEDED` (PKCS#11 3.1), which cryptoki 0.12 cannot name.
const CKR_TOKEN_RESOURCE_EXCEEDED: std::ffi::c_ulong = 0x201;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A token PIN. Zeroized on drop, no `Debug`, handed to the token at one call site each.
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(pin: String) -> Self {
        Self(Zeroizing::new(pin))
    }

    fn auth(&self) -> AuthPin {
        // The only place a PIN leaves this wrapper: cryptoki's AuthPin zeroizes it again.
        AuthPin::new(self.0.as_str().into())
    }
}

/// A loaded, initialised PKCS#11 module: one per process.
pub struct Module {
    ctx: Pkcs11,
}

impl Module {
    /// Loads the module and calls `C_Initialize` with OS locking.
    pub fn load(path: &Path) -> Result<Self> {
        let load_err = |source| Error::Load {
            path: path.to_owned(),
            source,
        };
        let ctx = Pkcs11::new(path).map_err(load_err)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(load_err(e)),
        }
        Ok(Self { ctx })
    }

    /// The slot holding the token with this label. Slot ids change between processes on
    /// SoftHSM2, so the label is the stable name.
    pub fn find_token(&self, label: &str) -> Result<Option<Slot>> {
        for slot in self.ctx.get_slots_with_token()? {
            let info = self.ctx.get_token_info(slot)?;
            if info.token_initialized() && info.label().trim_end() == label {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Initialises a fresh token on the first free slot and sets its user PIN.
    pub fn init_token(&self, label: &str, so_pin: &Pin, user_pin: &Pin) -> Result<Slot> {
        let free = self
            .ctx
            .get_slots_with_token()?
            .into_iter()
            .find(|slot| {
                self.ctx
                    .get_token_info(*slot)
                    .map(|info| !info.token_initialized())
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                Error::Unexpected("the module has no free slot for a new token".into())
            })?;
        self.ctx.init_token(free, &so_pin.auth(), label)?;
        let session = self.ctx.open_rw_session(free)?;
        session.login(UserType::So, Some(&so_pin.auth()))?;
        session.init_pin(&user_pin.auth())?;
        session.logout()?;
        drop(session);
        // The slot may be renumbered once the token is initialised; look it up again.
        self.find_token(label)?
            .ok_or_else(|| Error::TokenNotFound(label.to_owned()))
    }

    /// Sets the user PIN if the token has none yet: a first start that died between
    /// `C_InitToken` and `C_InitPIN` is finished here.
    pub fn ensure_user_pin(&self, slot: Slot, so_pin: &Pin, user_pin: &Pin) -> Result<()> {
        if self.ctx.get_token_info(slot)?.user_pin_initialized() {
            return Ok(());
        }
        let session = self.ctx.open_rw_session(slot)?;
        session.login(UserType::So, Some(&so_pin.auth()))?;
        session.init_pin(&user_pin.auth())?;
        session.logout()?;
        Ok(())
    }

    /// Creates security domain `domain` (DESIGN §8, ARCHITECTURE.md "Protection models"): a
    /// wrap-only half and a private unwrap-only half made by the user, both holding the domain's
    /// AES-256 value, and its private MAC key, from `values` (which the caller made and also
    /// puts into the security-domain file of an automatic activation). Under
    /// [`DomainModel::Private`] the wrap half is private and made by the user too; under
    /// [`DomainModel::Trusted`] it is a `CKA_TRUSTED` key made as the profile says (SoftHSM2: by
    /// the SO, public). The caller has recorded `domain` in the data dir first; objects of that
    /// id left by an interrupted attempt are destroyed before the new ones are made, and no
    /// object of any other domain is touched. Must run before [`Module::open`] logs the user
    /// in: the SO cannot log in while user sessions exist.
    pub fn create_security_domain(
        &self,
        slot: Slot,
        domain: VersionId,
        profile: &TokenProfile,
        so_pin: &Pin,
        user_pin: &Pin,
        values: &DomainValues<'_>,
    ) -> Result<()> {
        self.destroy_security_domain(slot, domain, so_pin, user_pin)?;
        let trusted = profile.domain == DomainModel::Trusted && profile.trust != Trust::Nobody;
        let make_wrap_half = |session: &Session, private: bool| -> Result<()> {
            let mut base = templates::domain_wrap_half(domain, values.wrap, private);
            if trusted {
                let made = profile::create_trusted(session, &base, true, profile.trusted_via);
                objects::wipe_template(&mut base);
                made?;
            } else {
                base.extend([
                    Attribute::Token(true),
                    Attribute::Modifiable(false),
                    Attribute::Copyable(false),
                ]);
                domain::create_wiped(session, base)?;
            }
            Ok(())
        };
        let by_so = trusted && profile.wrap_half.by_so();
        if by_so {
            let so = self.ctx.open_rw_session(slot)?;
            so.login(UserType::So, Some(&so_pin.auth()))?;
            make_wrap_half(&so, profile.wrap_half.private())?;
            so.logout()?;
            drop(so);
            crate::failpoint::hit("provision.after_wrap_half");
        }

        let user = self.ctx.open_rw_session(slot)?;
        login_user(&user, user_pin)?;
        if !by_so {
            make_wrap_half(&user, true)?;
            crate::failpoint::hit("provision.after_wrap_half");
        }
        domain::create_wiped(&user, templates::domain_unwrap_half(domain, values.wrap))?;
        domain::create_wiped(&user, templates::domain_mac_import(domain, values.mac))?;
        user.logout()?;
        Ok(())
    }

    /// Random bytes from the token's generator (no login needed), in a zeroizing buffer.
    pub fn random(&self, slot: Slot, n: u32) -> Result<Zeroizing<Vec<u8>>> {
        let session = self.ctx.open_ro_session(slot)?;
        Ok(Zeroizing::new(session.generate_random_vec(n)?))
    }

    /// The module's `manufacturerID` (`C_GetInfo`), trimmed: known before any token is
    /// touched.
    pub fn library_manufacturer(&self) -> Result<String> {
        Ok(self
            .ctx
            .get_library_info()?
            .manufacturer_id()
            .trim()
            .to_owned())
    }

    /// Destroys every object of security domain `domain` (its label and its `CKA_ID` both
    /// name it): the private ones as the user, the public wrap half as the SO. Objects of any
    /// other domain stay. For the caller's own recorded domain only, and only while nothing
    /// can have been sealed under it.
    pub fn destroy_security_domain(
        &self,
        slot: Slot,
        domain: VersionId,
        so_pin: &Pin,
        user_pin: &Pin,
    ) -> Result<()> {
        {
            let user = self.ctx.open_rw_session(slot)?;
            login_user(&user, user_pin)?;
            destroy_domain_objects(&user, domain)?;
            user.logout()?;
        }
        let so = self.ctx.open_rw_session(slot)?;
        so.login(UserType::So, Some(&so_pin.auth()))?;
        destroy_domain_objects(&so, domain)?;
        so.logout()?;
        Ok(())
    }

    /// Every p11vault object on the token (key objects, live or deleted, and security-domain
    /// objects), read without changing anything: logged in as the user when the token has a
    /// user PIN, otherwise only the public objects (without a user PIN there can be no
    /// private ones). Provisioning decides from this whether the token belongs to the data dir.
    pub fn survey(&self, slot: Slot, user_pin: &Pin) -> Result<Survey> {
        let user_pin_set = self.ctx.get_token_info(slot)?.user_pin_initialized();
        let session = self.ctx.open_ro_session(slot)?;
        if user_pin_set {
            login_user(&session, user_pin)?;
        }
        let mut objects = Vec::new();
        for handle in session.find_objects(&[])? {
            let Some((label, id)) = label_and_id(&session, handle)? else {
                continue;
            };
            let label = String::from_utf8_lossy(&label).into_owned();
            if [
                templates::LIVE_PREFIX,
                templates::DELETED_PREFIX,
                templates::DOMAIN_PREFIX,
                templates::IDENTITY_PREFIX,
            ]
            .iter()
            .any(|p| label.starts_with(p))
            {
                objects.push(TokenObject { label, id });
            }
        }
        if user_pin_set {
            session.logout()?;
        }
        Ok(Survey {
            objects,
            user_pin_set,
        })
    }

    /// The mechanisms the service uses that the token reports (`C_GetMechanismInfo` of each:
    /// cryptoki's list call drops the types it does not know).
    pub(crate) fn listed_mechanisms(&self, slot: Slot) -> Vec<MechanismType> {
        WANTED_MECHANISMS
            .iter()
            .copied()
            .filter(|m| self.ctx.get_mechanism_info(slot, *m).is_ok())
            .collect()
    }

    /// Logs in as the token user and builds the session pool and the handle cache.
    pub fn open(
        self,
        slot: Slot,
        token_label: &str,
        pin: Pin,
        settings: HsmSettings,
        profile: TokenProfile,
    ) -> Result<Hsm> {
        let anchor = self.ctx.open_rw_session(slot)?;
        login_user(&anchor, &pin)?;
        let mechanisms = self.listed_mechanisms(slot);
        let oaep_sha256 = ops::OaepSupport::from_profile(&profile);
        let hsm = Hsm {
            module: self,
            token_label: token_label.to_owned(),
            pin,
            settings,
            state: Mutex::new(Connection {
                slot,
                anchor: Some(anchor),
                idle: Vec::new(),
                generation: 0,
            }),
            cache: RwLock::new(HashMap::new()),
            domain: RwLock::new(None),
            transfer: RwLock::new(None),
            identity: RwLock::new(None),
            permits: Arc::new(Semaphore::new(settings.sessions)),
            mechanisms,
            profile,
            oaep_sha256,
            backoff: Mutex::new(Backoff {
                last: None,
                wait: RECONNECT_BACKOFF_MIN,
            }),
            gate: RwLock::new(()),
        };
        hsm.rebuild_cache()?;
        Ok(hsm)
    }
}

fn login_user(session: &Session, pin: &Pin) -> Result<()> {
    match session.login(UserType::User, Some(&pin.auth())) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the label of an object; objects without one, and objects the token cannot describe,
/// read as empty.
fn label_of(session: &Session, handle: ObjectHandle) -> Result<Vec<u8>> {
    Ok(label_and_id(session, handle)?
        .map(|(label, _)| label)
        .unwrap_or_default())
}

/// The label and `CKA_ID` of an object (empty if it has none), or `None` for an object the
/// token cannot describe: a kill inside a token call can leave a half-written object file
/// (SoftHSM2 creates it empty and fills it in afterwards) that the token still lists but
/// answers `CKR_ATTRIBUTE_VALUE_INVALID` about. Such an object carries nothing that shows who
/// made it, so it is never destroyed; it must not stop a start either.
fn label_and_id(session: &Session, handle: ObjectHandle) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let attrs = match session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id]) {
        Ok(attrs) => attrs,
        Err(e)
            if is_rv(&e, RvError::AttributeValueInvalid)
                || is_rv(&e, RvError::AttributeTypeInvalid)
                || is_rv(&e, RvError::ObjectHandleInvalid) =>
        {
            tracing::warn!(handle = %handle, error = %e, "the token lists an object it cannot describe (half-written by a crash inside the token?); left in place");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let (mut label, mut id) = (Vec::new(), Vec::new());
    for a in attrs {
        match a {
            Attribute::Label(l) => label = l,
            Attribute::Id(i) => id = i,
            _ => {}
        }
    }
    Ok(Some((label, id)))
}

/// Destroys the objects this session can see whose label is under `p11vault-sd/{domain}/`
/// and whose `CKA_ID` is `domain`; nothing else.
fn destroy_domain_objects(session: &Session, domain: VersionId) -> Result<()> {
    let prefix = templates::domain_label(domain, "");
    for handle in session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Id(domain.as_bytes().to_vec()),
    ])? {
        if label_of(session, handle)?.starts_with(&prefix) {
            session.destroy_object(handle)?;
        }
    }
    Ok(())
}

/// The secret values of a security domain, held by the caller in zeroizing buffers: the AES
/// key of both halves and the backup MAC key (32 bytes each).
pub struct DomainValues<'a> {
    pub wrap: &'a [u8],
    pub mac: &'a [u8],
}

/// A p11vault object found by [`Module::survey`].
#[derive(Clone, Debug)]
pub struct TokenObject {
    pub label: String,
    pub id: Vec<u8>,
}

impl TokenObject {
    /// The security domain this object belongs to, when its label and its `CKA_ID` both say so.
    pub fn domain(&self) -> Option<VersionId> {
        let rest = self.label.strip_prefix(templates::DOMAIN_PREFIX)?;
        let (hex, _role) = rest.split_once('/')?;
        let id = VersionId::parse_hex(hex)?;
        (id.as_bytes().as_slice() == self.id.as_slice()).then_some(id)
    }

    /// The sign-in key this object is, when its label and its `CKA_ID` both say so.
    pub fn identity_key(&self) -> Option<VersionId> {
        let rest = self.label.strip_prefix(templates::IDENTITY_PREFIX)?;
        let id = VersionId::parse_hex(rest.strip_suffix("/mac")?)?;
        (id.as_bytes().as_slice() == self.id.as_slice()).then_some(id)
    }

    /// Whether this is the `role` object (`wrap`, `unwrap`, `mac`) of `domain`.
    pub fn is_domain_object(&self, domain: VersionId, role: &str) -> bool {
        self.label.as_bytes() == templates::domain_label(domain, role).as_slice()
            && self.id.as_slice() == domain.as_bytes().as_slice()
    }
}

/// What [`Module::survey`] saw on a token.
#[derive(Clone, Debug)]
pub struct Survey {
    pub objects: Vec<TokenObject>,
    /// Whether the token has a user PIN (and so whether private objects were seen).
    pub user_pin_set: bool,
}

impl Survey {
    /// Whether both halves of `domain` are on the token (the MAC key is made later).
    pub fn has_domain(&self, domain: VersionId) -> bool {
        ["wrap", "unwrap"].iter().all(|role| {
            self.objects
                .iter()
                .any(|o| o.is_domain_object(domain, role))
        })
    }

    /// The objects that are neither `own`'s domain objects nor the data dir's own sign-in key
    /// `identity`: key objects, objects of any other domain, other sign-in keys (or objects
    /// whose label and `CKA_ID` disagree).
    pub fn not_ours(
        &self,
        own: Option<VersionId>,
        identity: Option<VersionId>,
    ) -> Vec<&TokenObject> {
        self.objects
            .iter()
            .filter(|o| own.is_none() || o.domain() != own)
            .filter(|o| identity.is_none() || o.identity_key() != identity)
            .collect()
    }

    /// The objects that belong to none of the domain (or transfer key) ids `own`, other than
    /// the data dir's own sign-in key `identity`.
    pub fn not_of_domains(
        &self,
        own: &[VersionId],
        identity: Option<VersionId>,
    ) -> Vec<&TokenObject> {
        self.objects
            .iter()
            .filter(|o| o.domain().is_none_or(|d| !own.contains(&d)))
            .filter(|o| identity.is_none() || o.identity_key() != identity)
            .collect()
    }

    /// A short description for refusal messages: how many key objects, which domains.
    pub fn describe(objects: &[&TokenObject]) -> String {
        let keys = objects
            .iter()
            .filter(|o| {
                !o.label.starts_with(templates::DOMAIN_PREFIX)
                    && !o.label.starts_with(templates::IDENTITY_PREFIX)
            })
            .count();
        let sign_in = objects
            .iter()
            .filter(|o| o.label.starts_with(templates::IDENTITY_PREFIX))
            .count();
        let mut domains: Vec<String> = objects
            .iter()
            .filter(|o| o.label.starts_with(templates::DOMAIN_PREFIX))
            .map(|o| {
                o.domain()
                    .map_or_else(|| format!("'{}'", o.label), |d| d.to_string())
            })
            .collect();
        domains.sort();
        domains.dedup();
        let what = match (keys, domains.is_empty()) {
            (0, true) if sign_in == 0 => return "no p11vault object".to_owned(),
            (k, true) => format!("{k} key objects and no security domain"),
            (k, false) => format!("{k} key objects and security domain {}", domains.join(", ")),
        };
        match sign_in {
            0 => what,
            n => format!("{what}, and {n} sign-in keys"),
        }
    }
}

/// Mechanisms the service may use, probed one by one with `C_GetMechanismInfo` at start-up
/// (cryptoki's list call drops, and logs as errors, every type it does not know).
const WANTED_MECHANISMS: &[MechanismType] = &[
    MechanismType::AES_KEY_GEN,
    MechanismType::RSA_PKCS_KEY_PAIR_GEN,
    MechanismType::ECC_KEY_PAIR_GEN,
    MechanismType::RSA_PKCS,
    MechanismType::RSA_X_509,
    MechanismType::RSA_PKCS_OAEP,
    MechanismType::RSA_PKCS_PSS,
    MechanismType::ECDSA,
    MechanismType::AES_GCM,
    MechanismType::AES_CBC,
    MechanismType::AES_CBC_PAD,
    MechanismType::AES_KEY_WRAP,
    MechanismType::AES_KEY_WRAP_PAD,
];

/// Tunables of the token connection.
#[derive(Clone, Copy, Debug)]
pub struct HsmSettings {
    /// At most this many PKCS#11 calls run at once, each on its own session.
    pub sessions: usize,
    /// How key material may leave the token (backups on or off).
    pub extraction: Extraction,
}

/// The token objects of one key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHandles {
    /// The AES key or the private key.
    pub secret: ObjectHandle,
    /// The public key, for RSA and EC.
    pub public: Option<ObjectHandle>,
}

/// A p11vault key object found on the token by the start-up scan.
#[derive(Clone, Debug)]
pub struct ScannedObject {
    pub class: ObjectClass,
    pub id: Option<VersionId>,
    pub label: String,
    pub handle: ObjectHandle,
}

/// Private key material arriving with an import, zeroized when dropped.
pub enum ImportMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        d: Zeroizing<Vec<u8>>,
        p: Zeroizing<Vec<u8>>,
        q: Zeroizing<Vec<u8>>,
        dp: Zeroizing<Vec<u8>>,
        dq: Zeroizing<Vec<u8>>,
        qi: Zeroizing<Vec<u8>>,
    },
    Ec {
        curve: Curve,
        d: Zeroizing<Vec<u8>>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Oct {
        k: Zeroizing<Vec<u8>>,
    },
}

impl ImportMaterial {
    pub fn family(&self) -> KeyFamily {
        match self {
            ImportMaterial::Rsa { .. } => KeyFamily::Rsa,
            ImportMaterial::Ec { .. } => KeyFamily::Ec,
            ImportMaterial::Oct { .. } => KeyFamily::Oct,
        }
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding `04 || x || y`.
pub fn encode_ec_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    let len = 1 + x.len() + y.len();
    let mut out = vec![0x04];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        // Points of our curves are at most 133 bytes, so one length byte always suffices.
        out.extend([0x81, len as u8]);
    }
    out.push(0x04);
    out.extend_from_slice(x);
    out.extend_from_slice(y);
    out
}

/// Accepts the DER-wrapped form and, as some tokens return, the bare point.
pub fn decode_ec_point(raw: &[u8], curve: Curve) -> Option<(Vec<u8>, Vec<u8>)> {
    let c = curve.coordinate_len();
    let point = if raw.len() == 1 + 2 * c && raw[0] == 0x04 {
        raw
    } else {
        let (len, header) = match raw {
            [0x04, l, ..] if *l < 0x80 => (usize::from(*l), 2),
            [0x04, 0x81, l, ..] => (usize::from(*l), 3),
            _ => return None,
        };
        let body = raw.get(header..)?;
        if body.len() != len {
            return None;
        }
        body
    };
    if point.len() != 1 + 2 * c || point[0] != 0x04 {
        return None;
    }
    Some((point[1..1 + c].to_vec(), point[1 + c..].to_vec()))
}

/// For a function of cryptoki that reported an error, whether it was this return value.
pub fn is_rv(err: &cryptoki::error::Error, rv: RvError) -> bool {
    matches!(err, cryptoki::error::Error::Pkcs11(r, _) if *r == rv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_round_trip_for_every_curve() {
        for curve in Curve::ALL {
            let c = curve.coordinate_len();
            let x: Vec<u8> = (0..c).map(|i| i as u8).collect();
            let y: Vec<u8> = (0..c).map(|i| (i * 3) as u8).collect();
            let der = encode_ec_point(&x, &y);
            assert_eq!(decode_ec_point(&der, curve), Some((x.clone(), y.clone())));
            assert_eq!(
                decode_ec_point(&der[der.len() - (1 + 2 * c)..], curve),
                Some((x, y))
            );
        }
        assert_eq!(
            decode_ec_point(&[0x04, 0x03, 0x04, 0x01, 0x02], Curve::P256),
            None
        );
        assert_eq!(decode_ec_point(&[], Curve::P256), None);
    }

    #[test]
    fn a_survey_counts_only_the_data_dirs_own_domain_and_sign_in_key_as_its_own() {
        let (domain, identity, other) = (
            VersionId::random(),
            VersionId::random(),
            VersionId::random(),
        );
        let object = |label: Vec<u8>, id: VersionId| TokenObject {
            label: String::from_utf8(label).expect("utf-8"),
            id: id.as_bytes().to_vec(),
        };
        let survey = Survey {
            objects: vec![
                object(templates::domain_label(domain, "wrap"), domain),
                object(templates::domain_label(domain, "unwrap"), domain),
                object(templates::identity_label(identity), identity),
            ],
            user_pin_set: true,
        };
        assert!(survey.not_ours(Some(domain), Some(identity)).is_empty());
        // Before this data dir recorded a sign-in key, any sign-in key is another's.
        let foreign = survey.not_ours(Some(domain), None);
        assert_eq!(foreign.len(), 1);
        assert_eq!(
            Survey::describe(&foreign),
            "0 key objects and no security domain, and 1 sign-in keys"
        );
        assert_eq!(survey.not_ours(Some(domain), Some(other)).len(), 1);
        // A sign-in label whose CKA_ID disagrees is not the data dir's.
        let forged = Survey {
            objects: vec![object(templates::identity_label(identity), other)],
            user_pin_set: true,
        };
        assert_eq!(forged.not_ours(None, Some(identity)).len(), 1);
        assert_eq!(Survey::describe(&[]), "no p11vault object");
    }
}
