//! Start-up: brings a data dir from empty (or half-initialised) to ready, and opens what is
//! there on later starts. Every step checks what already exists and only adds what is missing,
//! so a start after a crash finishes the job. No step ever re-initialises a token: a token is
//! only initialised when no token of that label exists. Nothing on a token is destroyed unless
//! this data dir's committed records show it made it, and a token that does not belong to the
//! data dir is refused before anything is written to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::BearerToken;
use crate::auth::PrincipalRow;
use crate::auth::roles::{self, RoleAssignment, Scope};
use crate::config::{Config, TokenSource};
use crate::failpoint;
use crate::fsutil::{create_private_dir, write_atomic};
use crate::hsm::templates::Extraction;
use crate::hsm::{self, DomainModel, DomainValues, HsmSettings, Module, Pin, TokenProfile, Trust};
use crate::keys::domain::{Activation, meta as domain_meta};
use crate::model::{Retention, VersionId};
use crate::secdomain::{self, DomainContents};
use crate::store::{self, Store};
use crate::tls::{self, TlsPaths};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database: {0}")]
    Store(#[from] store::Error),
    #[error("the token: {0}")]
    Hsm(#[from] hsm::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Refused(String),
}

/// Files of the embedded SoftHSM2 token under the data dir.
pub fn softhsm_conf_path(data_dir: &Path) -> PathBuf {
    data_dir.join("softhsm").join("softhsm2.conf")
}

/// Writes the embedded SoftHSM2 configuration from `softhsm-config/softhsm2.conf.in` (once),
/// and returns its path for `SOFTHSM2_CONF`. Runs before the PKCS#11 module is loaded.
pub fn prepare_embedded_softhsm(data_dir: &Path) -> Result<PathBuf, ProvisionError> {
    let tokens = data_dir.join("softhsm").join("tokens");
    create_private_dir(&tokens).map_err(io("cannot create", &tokens))?;
    let conf = softhsm_conf_path(data_dir);
    if !conf.exists() {
        let tokens = std::fs::canonicalize(&tokens).map_err(io("cannot resolve", &tokens))?;
        let text = include_str!("../softhsm-config/softhsm2.conf.in")
            .replace("@TOKENDIR@", &tokens.to_string_lossy());
        write_atomic(&conf, text.as_bytes(), 0o600).map_err(io("cannot write", &conf))?;
    }
    Ok(conf)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_owned();
    move |source| ProvisionError::Io { what, path, source }
}

/// What a ready data dir gives the service.
pub struct Ready {
    pub store: Arc<Store>,
    pub hsm: hsm::Hsm,
    pub retention: Retention,
    pub tls: TlsPaths,
    /// Set on the start that created the administrator.
    pub admin_token_created: bool,
}

/// Names of the settings kept in the database.
mod meta {
    pub const INITIALIZED: &str = "initialized";
    pub const DOMAIN: &str = crate::keys::domain::meta::DOMAIN;
    /// The id of the sign-in's HMAC key (`hsm::identity`), recorded before it is made.
    pub const IDENTITY_KEY: &str = "identity_key";
    pub const RETENTION_DAYS: &str = "retention_days";
    pub const PURGE_PROTECTION: &str = "purge_protection";
    /// JSON: what the first start learnt of the token (`hsm::TokenProfile`).
    pub const TOKEN_PROFILE: &str = "token_profile";
    /// When the operator accepted a token on which any user may create trusted keys.
    pub const USER_TRUSTED_KEYS_ACCEPTED: &str = "user_trusted_keys_accepted";
}

pub fn open(cfg: &Config, hosts: &[String]) -> Result<Ready, ProvisionError> {
    create_private_dir(&cfg.data_dir).map_err(io("cannot create the data dir", &cfg.data_dir))?;
    let store = Arc::new(Store::open(&cfg.data_dir.join("p11vault.db"))?);
    let initialized = store.meta(meta::INITIALIZED)?.is_some();
    let activation = Activation::from_meta(store.meta(domain_meta::ACTIVATION)?.as_deref())
        .ok_or_else(|| store::Error::Corrupt("activation".into()))?;
    let recorded = match store.meta(meta::DOMAIN)? {
        Some(d) => Some(
            VersionId::parse_hex(&d)
                .ok_or_else(|| store::Error::Corrupt("security_domain".into()))?,
        ),
        // A data dir that is not activated has no domain yet.
        None if initialized && activation != Activation::NotActivated => {
            return Err(store::Error::Corrupt("security_domain".into()).into());
        }
        None => None,
    };
    let identity = match store.meta(meta::IDENTITY_KEY)? {
        Some(d) => Some(
            VersionId::parse_hex(&d).ok_or_else(|| store::Error::Corrupt("identity_key".into()))?,
        ),
        None => None,
    };
    // The operator's choice comes before the token is touched at all (no C_InitToken, no
    // probe, no login).
    if !initialized {
        refuse_unchosen_backups(cfg)?;
    }

    let (module_path, user_pin, so_pin) = pins(cfg)?;
    let module = Module::load(&module_path)?;
    if !initialized && cfg.auto_activate {
        refuse_vendor_auto_activation(cfg, &module)?;
    }
    let slot = match module.find_token(&cfg.token_label)? {
        Some(slot) => slot,
        None if initialized => {
            return Err(ProvisionError::Refused(format!(
                "the token '{}' is missing, but the database at {} belongs to an initialised service; \
                 refusing to create a new, empty token. Restore the token directory or point the service at the right token.",
                cfg.token_label,
                cfg.data_dir.display()
            )));
        }
        None => match (&cfg.token, &so_pin) {
            (TokenSource::Embedded { .. }, Some(so)) => {
                tracing::info!(label = %cfg.token_label, "initialising the embedded SoftHSM2 token");
                module.init_token(&cfg.token_label, so, &user_pin)?
            }
            (
                TokenSource::External {
                    init_token: true, ..
                },
                Some(so),
            ) => {
                tracing::info!(label = %cfg.token_label, module = %module_path.display(),
                    "no token has the label: initialising an empty slot with it (pkcs11.init_token)");
                module.init_token(&cfg.token_label, so, &user_pin)?
            }
            (
                TokenSource::External {
                    init_token: true, ..
                },
                None,
            ) => {
                return Err(ProvisionError::Refused(format!(
                    "no token labelled '{}' in {}, and pkcs11.init_token needs pkcs11.so_pin_file to initialise one",
                    cfg.token_label,
                    module_path.display()
                )));
            }
            _ => {
                return Err(ProvisionError::Refused(format!(
                    "no token labelled '{}' in {}; initialise it with your HSM's tools first \
                     (or, for a soft token, set pkcs11.init_token = true)",
                    cfg.token_label,
                    module_path.display()
                )));
            }
        },
    };
    failpoint::hit("provision.after_token");

    // Whether the token belongs to this data dir is decided here, from a read-only survey,
    // before anything is written to it (ARCHITECTURE.md, invariant 9).
    let survey = module.survey(slot, &user_pin)?;
    // An initialised data dir always has its domain recorded (checked when it was read).
    let own = recorded.filter(|_| initialized);
    prune_discarded(&store, &survey)?;
    match own {
        Some(own) => check_own_domain(cfg, &survey, own)?,
        // Not activated: only the objects of its own half-made domain or transfer key.
        None if initialized => check_only_own_pending(cfg, &store, &survey, identity)?,
        None => check_nothing_foreign(cfg, &survey, recorded, identity, false)?,
    }
    if let Some(so) = &so_pin {
        module.ensure_user_pin(slot, so, &user_pin)?;
    }
    let profile = token_profile(
        cfg,
        &store,
        &module,
        slot,
        initialized,
        so_pin.as_ref(),
        &user_pin,
    )?;
    let extraction = key_extraction(cfg, &store, &profile)?;
    let domain = match own {
        Some(own) => Some(own),
        None if initialized => None,
        // Automatic activation (also finishing the first start it began that a crash
        // interrupted).
        None if cfg.auto_activate => Some(first_start_domain(
            cfg,
            &store,
            &module,
            slot,
            &survey,
            (recorded, identity),
            &profile,
            so_pin.as_ref(),
            &user_pin,
        )?),
        None => {
            if let Some(leftover) = recorded {
                // A first start that began an automatic activation and died, started again
                // without it: its domain (which served nothing) is taken away.
                let so = so_pin.as_ref().ok_or_else(|| {
                    ProvisionError::Refused(format!(
                        "an interrupted first start left security domain {leftover} on the token; taking it away needs the SO PIN (pkcs11.so_pin_file)"
                    ))
                })?;
                module.destroy_security_domain(slot, leftover, so, &user_pin)?;
                tracing::info!(domain = %leftover, "took away the domain of an interrupted automatic activation: this start leaves the HSM not activated");
            }
            store.set_metas(&[
                (domain_meta::ACTIVATION, Some(domain_meta::NOT_ACTIVATED)),
                (meta::DOMAIN, None),
            ])?;
            tracing::warn!(
                "this HSM is NOT ACTIVATED (security_domain.auto_activate = false): it serves only the security \
                 domain's endpoints until its security domain is downloaded (az keyvault security-domain download) \
                 or another HSM's is uploaded (recovery)"
            );
            None
        }
    };

    let hsm = module.open(
        slot,
        &cfg.token_label,
        user_pin,
        HsmSettings {
            sessions: cfg.sessions,
            extraction,
        },
        profile,
    )?;
    if let Some(domain) = domain {
        hsm.set_domain(domain)?;
    }
    // The sign-in's key, independent of the security domain (an HSM that is not activated
    // has none, and az must sign in to download it): its id is committed before the key is
    // made, so a later start knows it as this data dir's own (invariant 9).
    let identity = match identity {
        Some(id) => id,
        None => {
            let id = VersionId::random();
            store.set_meta(meta::IDENTITY_KEY, &id.to_string())?;
            failpoint::hit("provision.after_identity_record");
            id
        }
    };
    hsm.set_identity_key(identity)?;

    let days: u32 = store
        .init_meta(meta::RETENTION_DAYS, &cfg.retention_days.to_string())?
        .parse()
        .map_err(|_| store::Error::Corrupt("retention_days".into()))?;
    if days != cfg.retention_days {
        tracing::warn!(
            in_force = days,
            configured = cfg.retention_days,
            "the retention period is fixed when the service is initialised; the configured value is ignored"
        );
    }
    let purge_protection = store.init_meta(meta::PURGE_PROTECTION, "false")? == "true";

    let tls = TlsPaths::in_dir(&cfg.data_dir);
    if tls::ensure_certificate(&tls, hosts)? {
        tracing::info!(ca = %tls.ca.display(), "created a TLS certificate; clients trust the CA file");
    }

    failpoint::hit("provision.after_tls");
    let admin_token_created = ensure_administrator(&store, &cfg.data_dir)?;
    record_operator(&store, &cfg.data_dir)?;
    if !initialized {
        store.set_meta(
            meta::INITIALIZED,
            &crate::clock::Clock::now(&crate::clock::SystemClock).to_string(),
        )?;
    }
    Ok(Ready {
        store,
        hsm,
        retention: Retention {
            days,
            purge_protection,
        },
        tls,
        admin_token_created,
    })
}

/// A data dir that is not initialised yet: makes its security domain, or finishes the one an
/// interrupted first start recorded. The id is committed to the database before the token is
/// touched, so a later start knows which domain objects are its own; only those are ever
/// destroyed (as leftovers of a half-made domain).
#[expect(clippy::too_many_arguments, reason = "the pieces of one start-up step")]
fn first_start_domain(
    cfg: &Config,
    store: &Store,
    module: &Module,
    slot: hsm::Slot,
    survey: &hsm::Survey,
    (recorded, identity): (Option<VersionId>, Option<VersionId>),
    profile: &TokenProfile,
    so_pin: Option<&Pin>,
    user_pin: &Pin,
) -> Result<VersionId, ProvisionError> {
    let need_so = || {
        so_pin.ok_or_else(|| {
            ProvisionError::Refused(
                "the security domain does not exist yet and creating it needs the SO PIN: set pkcs11.so_pin_file for the first start".into(),
            )
        })
    };
    let domain = match recorded {
        Some(d) => d,
        None => {
            need_so()?;
            let d = VersionId::random();
            store.set_meta(meta::DOMAIN, &d.to_string())?;
            failpoint::hit("provision.after_domain_record");
            d
        }
    };
    // Made anew even when an interrupted first start left it complete: nothing was sealed
    // under it (the data dir served nothing), and it may have been made under another model
    // (by an older release).
    if recorded.is_some() {
        tracing::info!(%domain, complete = survey.has_domain(domain), "making again the security domain an interrupted first start recorded");
    }
    let contents = DomainContents {
        id: domain,
        wrap: secret_bytes(module, slot)?,
        mac: secret_bytes(module, slot)?,
    };
    module.create_security_domain(
        slot,
        domain,
        profile,
        need_so()?,
        user_pin,
        &DomainValues {
            wrap: &contents.wrap[..],
            mac: &contents.mac[..],
        },
    )?;
    failpoint::hit("provision.after_domain_objects");
    tracing::info!(%domain, "created the security domain");
    let domain = confirm_alone(cfg, module, slot, domain, identity, so_pin, user_pin)?;
    let dir = write_auto_activation(&cfg.data_dir, &contents)?;
    store.set_metas(&[
        (domain_meta::ACTIVATION, Some(domain_meta::ACTIVE)),
        (domain_meta::SOURCE, Some("auto")),
    ])?;
    tracing::warn!(
        %domain,
        files = %dir.display(),
        "AUTOMATICALLY ACTIVATED (security_domain.auto_activate): the security domain and ALL THREE of its \
         wrapping keys (quorum 2) are in this directory, so anyone who can read it can read every backup of this \
         HSM. For development only: move the keys to their holders, or set auto_activate = false and download \
         the domain to your administrators' keys"
    );
    Ok(domain)
}

/// The files of an automatic activation, under `{data_dir}/security-domain/`: the
/// security-domain file (`security-domain.json`, quorum 2) and the three wrapping keys it is
/// split for, as az expects them (`wrapping-key-N.pem` with its certificate
/// `wrapping-key-N.cer` beside it). Written again by a first start that a crash interrupted.
pub const AUTO_ACTIVATION_DIR: &str = "security-domain";

fn write_auto_activation(
    data_dir: &Path,
    contents: &DomainContents,
) -> Result<PathBuf, ProvisionError> {
    let dir = data_dir.join(AUTO_ACTIVATION_DIR);
    create_private_dir(&dir).map_err(io("cannot create the security domain's directory", &dir))?;
    let failed = |e: secdomain::Error| {
        ProvisionError::Refused(format!("could not make the security domain's files: {e}"))
    };
    let mut certs = Vec::new();
    for n in 1..=3 {
        let (key, cert) = secdomain::generate_wrapping_key(&format!("p11vault wrapping key {n}"))
            .map_err(failed)?;
        let pem = Zeroizing::new(key.private_key_to_pem_pkcs8().map_err(|e| {
            ProvisionError::Refused(format!("could not write a wrapping key: {e}"))
        })?);
        let cert_pem = cert.to_pem().map_err(|e| {
            ProvisionError::Refused(format!("could not write a wrapping certificate: {e}"))
        })?;
        let key_path = dir.join(format!("wrapping-key-{n}.pem"));
        write_atomic(&key_path, &pem, 0o600).map_err(io("cannot write", &key_path))?;
        let cert_path = dir.join(format!("wrapping-key-{n}.cer"));
        write_atomic(&cert_path, &cert_pem, 0o600).map_err(io("cannot write", &cert_path))?;
        certs.push(secdomain::wrapping_cert_from_x509(&cert).map_err(failed)?);
    }
    let file = secdomain::build_sd_file(&contents.to_items(), &certs, 2).map_err(failed)?;
    let path = dir.join("security-domain.json");
    write_atomic(&path, file.as_bytes(), 0o600).map_err(io("cannot write", &path))?;
    Ok(dir)
}

fn secret_bytes(module: &Module, slot: hsm::Slot) -> Result<Zeroizing<[u8; 32]>, ProvisionError> {
    let random = module.random(slot, 32)?;
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&random);
    Ok(out)
}

/// A vendor HSM never activates itself: `security_domain.auto_activate = true` on an external
/// token is honoured only for the software tokens this service is developed and tested with
/// (SoftHSM2, kryoptic), whose domain would be no better kept than the files anyway. Told by
/// the module's manufacturer (`C_GetInfo`), before any token is initialised or written.
fn refuse_vendor_auto_activation(cfg: &Config, module: &Module) -> Result<(), ProvisionError> {
    if matches!(cfg.token, TokenSource::Embedded { .. }) {
        return Ok(());
    }
    let manufacturer = module.library_manufacturer()?;
    if is_software_token(&manufacturer) {
        tracing::warn!(%manufacturer, "security_domain.auto_activate = true on a software token: activating automatically");
        return Ok(());
    }
    Err(ProvisionError::Refused(format!(
        "security_domain.auto_activate = true, but the module of the token '{}' is a vendor HSM's (made by '{manufacturer}'): \
         a vendor HSM never activates itself, since that would write its security domain and every key that \
         opens it to the data dir. Set auto_activate = false and download the domain to your administrators' \
         keys (az keyvault security-domain download). Nothing was written to the token.",
        cfg.token_label
    )))
}

/// `CKA_MANUFACTURER_ID` prefixes of the software tokens automatic activation accepts.
const SOFTWARE_TOKENS: &[&str] = &["SoftHSM", "Kryoptic"];

fn is_software_token(manufacturer: &str) -> bool {
    SOFTWARE_TOKENS.iter().any(|m| manufacturer.starts_with(m))
}

fn discarded(store: &Store) -> Result<Vec<VersionId>, ProvisionError> {
    Ok(
        crate::keys::domain::discarded_ids(store.meta(domain_meta::DISCARDED)?.as_deref())
            .ok_or_else(|| store::Error::Corrupt(domain_meta::DISCARDED.into()))?,
    )
}

/// Forgets the discarded ids (domains and transfer keys being taken away) of which this
/// start's survey finds no object left: only a survey at start-up, from a freshly initialised
/// module, shows what the token kept.
fn prune_discarded(store: &Store, survey: &hsm::Survey) -> Result<(), ProvisionError> {
    let ids = discarded(store)?;
    if ids.is_empty() {
        return Ok(());
    }
    let left: Vec<VersionId> = ids
        .iter()
        .copied()
        .filter(|id| survey.objects.iter().any(|o| o.domain() == Some(*id)))
        .collect();
    if left.len() != ids.len() {
        let json = crate::keys::domain::discarded_json(&left);
        store.set_metas(&[(
            domain_meta::DISCARDED,
            if left.is_empty() { None } else { Some(&json) },
        )])?;
    }
    Ok(())
}

/// A data dir that is initialised but not activated may find on its token only the objects of
/// the domain or transfer key it recorded as being made (a crash's leftovers, taken away once
/// the service runs) and those of the transfer key it issued.
fn check_only_own_pending(
    cfg: &Config,
    store: &Store,
    survey: &hsm::Survey,
    identity: Option<VersionId>,
) -> Result<(), ProvisionError> {
    let mut own = Vec::new();
    for key in [domain_meta::CANDIDATE, domain_meta::TRANSFER_CANDIDATE] {
        if let Some(hex) = store.meta(key)? {
            own.push(VersionId::parse_hex(&hex).ok_or_else(|| store::Error::Corrupt(key.into()))?);
        }
    }
    own.extend(discarded(store)?);
    if let Some(json) = store.meta(domain_meta::TRANSFER)? {
        let id = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| {
                v.get("id")
                    .and_then(|i| i.as_str())
                    .and_then(VersionId::parse_hex)
            })
            .ok_or_else(|| store::Error::Corrupt(domain_meta::TRANSFER.into()))?;
        own.push(id);
    }
    let foreign = survey.not_of_domains(&own, identity);
    if foreign.is_empty() {
        return Ok(());
    }
    Err(ProvisionError::Refused(format!(
        "the token '{}' holds {} p11vault objects that the data dir {} (not activated yet) did not make ({}): \
         another p11vault instance uses it: refusing to start over it; nothing on the token was changed.",
        cfg.token_label,
        foreign.len(),
        cfg.data_dir.display(),
        hsm::Survey::describe(&foreign)
    )))
}

/// The token's profile: the one this data dir recorded, or (first start) what a probe of the
/// token finds, recorded before the security domain is made so that every later start and
/// backup uses the same choices. A data dir initialised before profiles were recorded gets the
/// model it was made with (SoftHSM2's).
fn token_profile(
    cfg: &Config,
    store: &Store,
    module: &Module,
    slot: hsm::Slot,
    initialized: bool,
    so_pin: Option<&Pin>,
    user_pin: &Pin,
) -> Result<TokenProfile, ProvisionError> {
    let recorded = store
        .meta(meta::TOKEN_PROFILE)?
        .map(|text| {
            serde_json::from_str::<TokenProfile>(&text)
                .map_err(|_| store::Error::Corrupt("token_profile".into()))
        })
        .transpose()?;
    let (profile, new) = match recorded {
        Some(p) if initialized => (p, false),
        None if initialized => {
            let p = TokenProfile::legacy(module.probe_curves(slot, user_pin)?);
            tracing::info!(profile = %p.describe(), "this data dir was initialised before token profiles were recorded; recording the model it was made with");
            (p, true)
        }
        // A first start, or one an earlier run did not finish (whatever it recorded, perhaps
        // with an older release, served nothing): probe and choose again.
        _ => {
            let so = so_pin.ok_or_else(|| {
                ProvisionError::Refused(
                    "the first start probes the token and creates the security domain, which needs the SO PIN: set pkcs11.so_pin_file for the first start".into(),
                )
            })?;
            let mut p = module.probe_profile(slot, so, user_pin)?;
            if cfg.test_trusted_domain {
                tracing::warn!("TEST-ONLY: making a data dir of the older trusted domain model");
                p.domain = DomainModel::Trusted;
            }
            (p, true)
        }
    };
    if new {
        store.set_meta(
            meta::TOKEN_PROFILE,
            &serde_json::to_string(&profile)
                .map_err(|e| ProvisionError::Refused(format!("the token profile: {e}")))?,
        )?;
        tracing::info!(token = %cfg.token_label, profile = %profile.describe(), "recorded the token's profile");
    } else {
        tracing::info!(token = %cfg.token_label, profile = %profile.describe(), "the token's recorded profile");
    }
    Ok(profile)
}

/// How keys made from now on may leave the token, from `keys.backups` and the data dir's
/// domain model (ARCHITECTURE.md, "Protection models"). Refuses, before any object is made, a
/// data dir of the trusted model on a token where any user may create trusted keys unless
/// `keys.accept_user_trusted_keys` was given (the choice of `keys.backups` itself is checked
/// before the token is touched: [`refuse_unchosen_backups`]).
fn key_extraction(
    cfg: &Config,
    store: &Store,
    profile: &TokenProfile,
) -> Result<Extraction, ProvisionError> {
    if !cfg.backups {
        tracing::info!(
            "keys.backups = false: keys made from now on never leave the token, not even wrapped"
        );
        return Ok(Extraction::Never);
    }
    match profile.domain {
        DomainModel::Private => {
            tracing::info!(
                token = %cfg.token_label,
                "key backups on (keys.backups): keys are extractable wrapped under the security domain, \
                 whose objects are all private; a holder of the user PIN can extract them"
            );
            Ok(Extraction::Wrapped)
        }
        DomainModel::Trusted => {
            check_trusted_model(cfg, store, profile)?;
            Ok(Extraction::WrappedByTrustedOnly)
        }
    }
}

/// A first start on an external token with backups on needs `keys.backups` set: with it, a
/// holder of the user PIN can extract every key (ARCHITECTURE.md, "Protection models").
fn refuse_unchosen_backups(cfg: &Config) -> Result<(), ProvisionError> {
    let external = matches!(cfg.token, TokenSource::External { .. });
    if external && cfg.backups && !cfg.backups_chosen {
        return Err(ProvisionError::Refused(format!(
            "choose how keys on the token '{}' may leave it before the first start: \
             keys.backups = true makes them extractable wrapped under the security domain, so key \
             backups work, and so a holder of the user PIN can extract every key; keys.backups = false \
             makes them never extractable, and key backups impossible (see ARCHITECTURE.md, \
             \"Protection models\"). Nothing was written to the token.",
            cfg.token_label
        )));
    }
    Ok(())
}

/// Whether the token can give the protection the trusted domain model relies on, and if it
/// cannot, whether the operator chose the weaker model.
fn check_trusted_model(
    cfg: &Config,
    store: &Store,
    profile: &TokenProfile,
) -> Result<(), ProvisionError> {
    match profile.trust {
        Trust::SoOnly => Ok(()),
        Trust::Nobody => Err(ProvisionError::Refused(format!(
            "the token '{}' lets nobody create a CKA_TRUSTED key, so keys made for backups \
             (CKA_EXTRACTABLE with CKA_WRAP_WITH_TRUSTED) could never be wrapped: set keys.backups = false",
            cfg.token_label
        ))),
        Trust::AnyUser => {
            let accepted = store.meta(meta::USER_TRUSTED_KEYS_ACCEPTED)?.is_some();
            if !accepted && !cfg.accept_user_trusted_keys {
                return Err(ProvisionError::Refused(format!(
                    "the token '{}' lets any logged-in user create CKA_TRUSTED keys, so CKA_WRAP_WITH_TRUSTED \
                     does not stop a holder of the user PIN from wrapping a key under a key of their own and \
                     reading it out. Backups on this token need that weaker model chosen explicitly: set \
                     keys.accept_user_trusted_keys = true (see ARCHITECTURE.md, \"Protection models\"), \
                     or keys.backups = false so that no key can ever leave the token. Nothing was written to the token.",
                    cfg.token_label
                )));
            }
            if !accepted {
                store.set_meta(
                    meta::USER_TRUSTED_KEYS_ACCEPTED,
                    &crate::clock::Clock::now(&crate::clock::SystemClock).to_string(),
                )?;
            }
            tracing::warn!(
                token = %cfg.token_label,
                "WEAKER PROTECTION MODEL (keys.accept_user_trusted_keys): this token lets any logged-in user create \
                 CKA_TRUSTED keys, so anyone holding the user PIN can extract every extractable key; key material \
                 is protected by the user PIN and the token's storage only"
            );
            Ok(())
        }
    }
}

/// After the domain of a first start is complete: the token is surveyed again, since another
/// data dir may have started on it at the same moment. If one did, this start takes its own,
/// unused domain back off the token and refuses.
fn confirm_alone(
    cfg: &Config,
    module: &Module,
    slot: hsm::Slot,
    domain: VersionId,
    identity: Option<VersionId>,
    so_pin: Option<&Pin>,
    user_pin: &Pin,
) -> Result<VersionId, ProvisionError> {
    let after = module.survey(slot, user_pin)?;
    if let Err(refusal) = check_nothing_foreign(cfg, &after, Some(domain), identity, true) {
        // Nothing was served under this domain (the data dir is not initialised), so taking
        // it back loses nothing; without the SO PIN it stays, recorded, for the operator.
        if let Some(so) = so_pin
            && let Err(e) = module.destroy_security_domain(slot, domain, so, user_pin)
        {
            tracing::warn!(%domain, error = %e, "could not take this data dir's unused security domain back off the token");
        }
        return Err(refusal);
    }
    Ok(domain)
}

/// Refuses, before any write, a data dir that is not initialised when the token holds p11vault
/// objects other than those of the domain and the sign-in key this data dir recorded: key
/// objects, another domain's objects or another sign-in key belong to another instance (or to
/// a database kept elsewhere).
fn check_nothing_foreign(
    cfg: &Config,
    survey: &hsm::Survey,
    own: Option<VersionId>,
    identity: Option<VersionId>,
    raced: bool,
) -> Result<(), ProvisionError> {
    let foreign = survey.not_ours(own, identity);
    if foreign.is_empty() {
        return Ok(());
    }
    let what = hsm::Survey::describe(&foreign);
    Err(ProvisionError::Refused(if raced {
        format!(
            "another p11vault data dir started on the token '{}' at the same time ({} objects appeared: {what}); \
             refusing to share the token. This data dir's own, unused security domain was taken back off it; \
             nothing else on the token was changed. Give each data dir its own token.",
            cfg.token_label,
            foreign.len(),
        )
    } else {
        format!(
            "the token '{}' already holds {} p11vault objects that the data dir {} did not make ({what}): \
             another p11vault instance uses it, or its database is elsewhere: refusing to start over it; \
             nothing on the token was changed. Give this data dir its own token, or start the service \
             over the data dir that belongs to this token.",
            cfg.token_label,
            foreign.len(),
            cfg.data_dir.display()
        )
    }))
}

/// Refuses, before any write, an initialised data dir whose security domain is not complete on
/// the token: it is a different token than the one the data dir was initialised on. A new
/// domain is never made over an initialised database (its backups would no longer open).
fn check_own_domain(
    cfg: &Config,
    survey: &hsm::Survey,
    own: VersionId,
) -> Result<(), ProvisionError> {
    if survey.has_domain(own) {
        return Ok(());
    }
    let all: Vec<_> = survey.objects.iter().collect();
    Err(ProvisionError::Refused(format!(
        "the token '{}' does not hold security domain {own} of the data dir {} (it holds {}): \
         it is not the token this data dir was initialised on (a new token with the same label, \
         or another instance's token): refusing to start; nothing on the token was changed. Point \
         the service at its own token, or restore that token's directory.",
        cfg.token_label,
        cfg.data_dir.display(),
        hsm::Survey::describe(&all)
    )))
}

/// The module path and the PINs. The embedded default generates its PINs into 0600 files on
/// first start; a vendor token's PINs come from the files the operator names.
fn pins(cfg: &Config) -> Result<(PathBuf, Pin, Option<Pin>), ProvisionError> {
    match &cfg.token {
        TokenSource::Embedded { module } => {
            let user = read_or_create_pin(&cfg.data_dir.join("user.pin"))?;
            let so = read_or_create_pin(&cfg.data_dir.join("so.pin"))?;
            Ok((module.clone(), user, Some(so)))
        }
        TokenSource::External {
            module,
            pin_file,
            so_pin_file,
            ..
        } => {
            let user = read_pin(pin_file)?;
            let so = so_pin_file.as_deref().map(read_pin).transpose()?;
            Ok((module.clone(), user, so))
        }
    }
}

fn read_pin(path: &Path) -> Result<Pin, ProvisionError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(io("cannot read the PIN file", path))?,
    );
    let pin = text.trim_end_matches(['\r', '\n']);
    if pin.is_empty() {
        return Err(ProvisionError::Refused(format!(
            "the PIN file {} is empty",
            path.display()
        )));
    }
    Ok(Pin::new(pin.to_owned()))
}

fn read_or_create_pin(path: &Path) -> Result<Pin, ProvisionError> {
    if !path.exists() {
        let pin = BearerToken::generate();
        write_atomic(path, format!("{}\n", pin.expose()).as_bytes(), 0o600)
            .map_err(io("cannot write the PIN file", path))?;
    }
    read_pin(path)
}

/// Creates the initial administrator, with the Administrator role at `/`, unless a principal
/// exists. The token is written to
/// `DATA_DIR/admin.token` (0600) before its hash is stored, so a crash in between is finished
/// on the next start from the file.
/// The HSM's operator, who alone may do what Azure Resource Manager does to a Managed HSM
/// (show, update, delete, recover, purge it): the bootstrap administrator, recorded once. A
/// data dir made before the operator was recorded gets the principal whose token is in
/// `DIR/admin.token` (the one its first start made), or, if that file is gone, its oldest
/// principal named `administrator` (ties by id).
fn record_operator(store: &Store, data_dir: &Path) -> Result<(), ProvisionError> {
    if store.operator()?.is_some() {
        return Ok(());
    }
    let principals = store.principals()?;
    let path = data_dir.join("admin.token");
    let by_token = std::fs::read_to_string(&path).ok().and_then(|token| {
        let hash = BearerToken::from_string(token.trim().to_owned()).hash();
        principals
            .iter()
            .find(|p| p.token_hash.as_slice() == hash.as_bytes().as_slice())
    });
    let chosen = by_token.or_else(|| {
        principals
            .iter()
            .filter(|p| p.name == "administrator")
            .min_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)))
    });
    if let Some(operator) = chosen {
        tracing::info!(principal = %operator.id, "recorded the HSM's operator (the bootstrap administrator)");
        store.set_meta(store::OPERATOR, &operator.id)?;
    }
    Ok(())
}

fn ensure_administrator(store: &Store, data_dir: &Path) -> Result<bool, ProvisionError> {
    if !store.principals()?.is_empty() {
        return Ok(false);
    }
    let path = data_dir.join("admin.token");
    let token = if path.exists() {
        BearerToken::from_string(
            std::fs::read_to_string(&path)
                .map_err(io("cannot read", &path))?
                .trim()
                .to_owned(),
        )
    } else {
        let token = BearerToken::generate();
        write_atomic(&path, format!("{}\n", token.expose()).as_bytes(), 0o600)
            .map_err(io("cannot write", &path))?;
        token
    };
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let row = PrincipalRow {
        id: uuid::Uuid::new_v4().to_string(),
        name: "administrator".into(),
        token_hash: token.hash().as_bytes().to_vec(),
        enabled: true,
        created: now,
    };
    // The initial administrator gets what a new Managed HSM's administrators get: the
    // Administrator role at `/`, which manages roles but uses no keys.
    let assignment = RoleAssignment {
        name: uuid::Uuid::new_v4().to_string(),
        scope: Scope::Global,
        principal_id: row.id.clone(),
        role_definition: roles::ADMINISTRATOR.to_owned(),
    };
    store.insert_principal(&row, &[assignment], now)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_software_tokens_activate_themselves() {
        // As SoftHSM2 2.6 and kryoptic 1.5 report themselves (CKA_MANUFACTURER_ID, trimmed).
        assert!(is_software_token("SoftHSM project"));
        assert!(is_software_token("Kryoptic Project"));
        // As vendor HSMs report themselves.
        for vendor in [
            "Safenet, Inc.",
            "nCipher Corp. Ltd",
            "Utimaco IS GmbH",
            "Yubico (www.yubico.com)",
            "Marvell",
        ] {
            assert!(!is_software_token(vendor), "{vendor}");
        }
    }
}
