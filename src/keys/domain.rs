//! The security domain's life (DESIGN §8, docs/security-domain.md): a data dir that is not
//! activated serves only the security domain's endpoints until a download gives it a new domain
//! or an upload (recovery) gives it an old one. Every step that touches the token is bracketed
//! by the database the way DESIGN §6 brackets key changes: the id of a domain (or transfer key)
//! being made is committed before its first object, the step's outcome commits in one
//! transaction, and a start after a crash takes away whatever a committed state does not
//! reference (`SecurityDomain::recover`).
//!
//! States, in the database (`activation`):
//! - `not_activated`: no domain; a transfer key may have been issued.
//! - `awaiting_confirmation`: a download made domain `security_domain` and sent it out; the
//!   first poll of its status confirms it. Until then another download or an upload replaces
//!   it (nothing can have been sealed under it), so a download whose answer was lost can be
//!   made again.
//! - `active` (or absent, on a data dir an older release initialised: its domain was made in
//!   the token, and its values never existed outside it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use zeroize::Zeroizing;

use crate::error::{Error, Missing, Reason};
use crate::hsm::Hsm;
use crate::model::VersionId;
use crate::secdomain::{self, DomainContents};
use crate::store::Store;

type Result<T> = std::result::Result<T, Error>;

/// Names of the settings this module keeps in the database.
pub mod meta {
    pub const ACTIVATION: &str = "activation";
    /// The domain in force (or awaiting confirmation); provisioning reads it too.
    pub const DOMAIN: &str = "security_domain";
    /// How the domain in force came: `token` (made in the token by an older release),
    /// `auto` (the embedded default's automatic activation), `download` or `upload`.
    pub const SOURCE: &str = "security_domain_source";
    /// The id of a domain whose objects are being made or taken away.
    pub const CANDIDATE: &str = "security_domain_candidate";
    /// JSON `{"id": hex, "certificate": b64 DER}`: the transfer key issued for a recovery.
    pub const TRANSFER: &str = "security_domain_transfer";
    /// The id of a transfer key whose objects are being made.
    pub const TRANSFER_CANDIDATE: &str = "security_domain_transfer_candidate";
    /// JSON array of hex ids whose objects are being taken away: recorded before the first
    /// destroy, and dropped only by a start whose survey of the token finds none of them (a
    /// token may report a destroy it did not keep: kryoptic with a store it cannot write).
    pub const DISCARDED: &str = "security_domain_discarded";

    pub const NOT_ACTIVATED: &str = "not_activated";
    pub const AWAITING: &str = "awaiting_confirmation";
    pub const ACTIVE: &str = "active";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    NotActivated,
    /// A download made the domain; its first status poll confirms it.
    AwaitingConfirmation,
    Active,
}

impl Activation {
    /// What the database says (absent: a data dir an older release initialised, active).
    pub fn from_meta(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some(meta::ACTIVE) => Some(Activation::Active),
            Some(meta::AWAITING) => Some(Activation::AwaitingConfirmation),
            Some(meta::NOT_ACTIVATED) => Some(Activation::NotActivated),
            Some(_) => None,
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => Activation::NotActivated,
            1 => Activation::AwaitingConfirmation,
            _ => Activation::Active,
        }
    }
}

/// The status of a download or an upload, as `…/pending` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationStatus {
    /// `Success`, `InProgress` or `Failed`.
    pub status: &'static str,
    pub details: String,
}

const ACTIVE_TEXT: &str = "The resource is active.";

/// A transfer key as the database records it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Transfer {
    id: String,
    /// Standard base64 of the certificate's DER.
    certificate: String,
}

pub struct SecurityDomain {
    store: Arc<Store>,
    hsm: Arc<Hsm>,
    /// `Activation` as a code, read by every request's admission check without a lock.
    state: AtomicU8,
    /// Serialises downloads, uploads, transfer keys and confirmations.
    changes: tokio::sync::Mutex<()>,
    /// The host name in the transfer key's certificate.
    host: String,
    /// Why the last upload failed after it was accepted, for `…/upload/pending`.
    last_upload_failure: std::sync::Mutex<Option<String>>,
}

impl SecurityDomain {
    pub fn new(store: Arc<Store>, hsm: Arc<Hsm>, host: String) -> Result<Arc<Self>> {
        let activation = Activation::from_meta(store.meta(meta::ACTIVATION)?.as_deref())
            .ok_or_else(|| Error::Internal("the database's activation state is unknown".into()))?;
        Ok(Arc::new(Self {
            store,
            hsm,
            state: AtomicU8::new(activation.code()),
            changes: tokio::sync::Mutex::new(()),
            host,
            last_upload_failure: std::sync::Mutex::new(None),
        }))
    }

    pub fn activation(&self) -> Activation {
        Activation::from_code(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, activation: Activation) {
        self.state.store(activation.code(), Ordering::Release);
    }

    /// Whether key operations may be served.
    pub fn is_active(&self) -> bool {
        self.activation() == Activation::Active
    }

    /// At start-up, before anything is served: takes away the objects of a domain or transfer
    /// key a crash left half-made or no longer referenced, and the transfer key of a recovery
    /// that completed.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let this = Arc::clone(self);
        blocking(move || {
            for id in this.discarded()? {
                if let Err(e) = this.hsm.remove_domain_objects(id) {
                    tracing::warn!(%id, error = %e, "could not take away the objects of a discarded security domain or transfer key; trying again at the next start");
                }
            }
            this.settle_candidate(meta::CANDIDATE)?;
            this.settle_candidate(meta::TRANSFER_CANDIDATE)?;
            if this.activation() == Activation::Active
                && let Some((id, _)) = this.transfer()?
            {
                tracing::info!(transfer_key = %id, "destroying the transfer key of a completed recovery");
                this.discard(id, &[(meta::TRANSFER, None)])?;
            }
            Ok(())
        })
        .await
    }

    /// The ids recorded as being taken away.
    fn discarded(&self) -> Result<Vec<VersionId>> {
        discarded_ids(self.store.meta(meta::DISCARDED)?.as_deref())
            .ok_or_else(|| Error::Internal("the database's discarded ids are unreadable".into()))
    }

    /// Takes away the objects of `id`, recorded first (with `changes`, in one transaction) as
    /// discarded, so no crash or failure leaves them recorded nowhere.
    fn discard(&self, id: VersionId, changes: &[(&str, Option<&str>)]) -> Result<()> {
        let mut ids = self.discarded()?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        let list = discarded_json(&ids);
        let mut all: Vec<(&str, Option<&str>)> = changes.to_vec();
        all.push((meta::DISCARDED, Some(&list)));
        self.store.set_metas(&all)?;
        failpoint("domain.discard.after_record");
        self.hsm.remove_domain_objects(id)?;
        Ok(())
    }

    fn recorded_id(&self, key: &str) -> Result<Option<VersionId>> {
        match self.store.meta(key)? {
            None => Ok(None),
            Some(hex) => VersionId::parse_hex(&hex)
                .map(Some)
                .ok_or_else(|| Error::Internal(format!("the database's {key} is not an id"))),
        }
    }

    fn transfer(&self) -> Result<Option<(VersionId, Vec<u8>)>> {
        let Some(json) = self.store.meta(meta::TRANSFER)? else {
            return Ok(None);
        };
        let corrupt = || Error::Internal("the database's transfer key record is unreadable".into());
        let t: Transfer = serde_json::from_str(&json).map_err(|_| corrupt())?;
        let id = VersionId::parse_hex(&t.id).ok_or_else(corrupt)?;
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(&t.certificate)
            .map_err(|_| corrupt())?;
        Ok(Some((id, der)))
    }

    fn refuse_when_active(&self, what: &str) -> Result<()> {
        if self.activation() != Activation::Active {
            return Ok(());
        }
        let source = self.store.meta(meta::SOURCE)?;
        let message = if source.is_none() || source.as_deref() == Some("token") {
            format!(
                "This HSM is already activated, with a security domain an earlier release made inside the token: \
                 its values never left the token, so it cannot be {what}."
            )
        } else if what == "downloaded" {
            "This HSM is already activated, and its security domain is not downloaded again: to give the same \
             domain to new holders, re-share the file you downloaded with a quorum of its keys \
             (p11vault security-domain reshare)."
                .to_owned()
        } else {
            format!(
                "This HSM is already activated: a security domain can be {what} only to an HSM that is not."
            )
        };
        Err(Error::Conflict {
            message,
            inner: Some(Reason::HsmAlreadyActivated),
        })
    }

    /// `POST /securitydomain/download`: a new domain, split for the request's certificates
    /// with its quorum; the HSM awaits the confirmation of its first status poll. Returns the
    /// security-domain file's text.
    pub async fn download(self: &Arc<Self>, body: bytes::Bytes) -> Result<String> {
        let _changing = self.changes.lock().await;
        self.refuse_when_active("downloaded")?;
        let (certs, required) = secdomain::parse_download_request(&body).map_err(client)?;
        let this = Arc::clone(self);
        blocking(move || {
            let contents = this.new_contents()?;
            let file = secdomain::build_sd_file(&contents.to_items(), &certs, required)
                .map_err(client)?;
            this.discard_pending()?;
            this.install(&contents)?;
            failpoint("domain.download.after_objects");
            this.store.set_metas(&[
                (meta::ACTIVATION, Some(meta::AWAITING)),
                (meta::DOMAIN, Some(&contents.id.to_string())),
                (meta::SOURCE, Some("download")),
                (meta::CANDIDATE, None),
            ])?;
            this.set_state(Activation::AwaitingConfirmation);
            tracing::warn!(domain = %contents.id, quorum = required, holders = certs.len(),
                "made a security domain and sent it out; the HSM is active once its download is confirmed (the first status poll)");
            Ok(file)
        })
        .await
    }

    fn new_contents(&self) -> Result<DomainContents> {
        let wrap = self.hsm.secret_random(32)?;
        let mac = self.hsm.secret_random(32)?;
        let mut contents = DomainContents {
            id: VersionId::random(),
            wrap: Zeroizing::new([0u8; 32]),
            mac: Zeroizing::new([0u8; 32]),
        };
        contents.wrap.copy_from_slice(&wrap);
        contents.mac.copy_from_slice(&mac);
        Ok(contents)
    }

    /// Takes away the objects of a candidate an earlier step left recorded (one that failed
    /// with an error rather than a crash) unless the committed state names it, so that
    /// recording a new candidate never leaves the old one's objects recorded nowhere.
    fn settle_candidate(&self, key: &str) -> Result<()> {
        let Some(candidate) = self.recorded_id(key)? else {
            return Ok(());
        };
        let named = if key == meta::CANDIDATE {
            self.recorded_id(meta::DOMAIN)? == Some(candidate)
        } else {
            self.transfer()?.map(|(id, _)| id) == Some(candidate)
        };
        if named {
            self.store.set_metas(&[(key, None)])?;
        } else {
            tracing::info!(id = %candidate, "taking away the objects a crash or a failed security-domain step left");
            self.discard(candidate, &[(key, None)])?;
        }
        Ok(())
    }

    /// Makes `contents`' objects, its id committed first as the candidate.
    fn install(&self, contents: &DomainContents) -> Result<()> {
        self.settle_candidate(meta::CANDIDATE)?;
        self.store
            .set_metas(&[(meta::CANDIDATE, Some(&contents.id.to_string()))])?;
        failpoint("domain.after_candidate");
        self.hsm
            .install_domain(contents.id, &contents.wrap[..], &contents.mac[..])?;
        failpoint("domain.after_install");
        Ok(())
    }

    /// A download awaiting confirmation is given up: its domain becomes a candidate to take
    /// away, then is taken away.
    fn discard_pending(&self) -> Result<()> {
        if self.activation() != Activation::AwaitingConfirmation {
            return Ok(());
        }
        let Some(pending) = self.recorded_id(meta::DOMAIN)? else {
            return Ok(());
        };
        self.settle_candidate(meta::CANDIDATE)?;
        let result = self.discard(
            pending,
            &[
                (meta::ACTIVATION, Some(meta::NOT_ACTIVATED)),
                (meta::DOMAIN, None),
                (meta::SOURCE, None),
            ],
        );
        // Given up as soon as that commits, whether the objects went or not.
        if self.store.meta(meta::ACTIVATION)?.as_deref() == Some(meta::NOT_ACTIVATED) {
            self.set_state(Activation::NotActivated);
        }
        result?;
        tracing::info!(domain = %pending, "gave up a security domain whose download was never confirmed");
        Ok(())
    }

    /// `GET /securitydomain/download/pending`. The first poll after a download confirms it: the
    /// poller holds the file the download answered with.
    pub async fn download_status(self: &Arc<Self>) -> Result<OperationStatus> {
        let _changing = self.changes.lock().await;
        match self.activation() {
            // Recovered by an upload: whatever download an earlier poll would have confirmed
            // was given up, and its file holds no domain this HSM has.
            Activation::Active if self.store.meta(meta::SOURCE)?.as_deref() == Some("upload") => {
                Ok(OperationStatus {
                    status: "Failed",
                    details: "This HSM was activated by an upload (a recovery), not by a download: \
                              a security domain file downloaded from it before then holds no domain \
                              it has; the uploaded domain's own file and keys recover it."
                        .into(),
                })
            }
            Activation::Active => Ok(success()),
            Activation::NotActivated => Err(Error::NotFound {
                what: Missing::SecurityDomainOperation,
                message: "No security domain download is in progress: this HSM is not activated. \
                          Download its security domain (POST /securitydomain/download) first."
                    .into(),
            }),
            Activation::AwaitingConfirmation => {
                let this = Arc::clone(self);
                blocking(move || {
                    let domain = this.recorded_id(meta::DOMAIN)?.ok_or_else(|| {
                        Error::Internal("a confirmed download has no domain recorded".into())
                    })?;
                    this.hsm.set_domain(domain)?;
                    this.store
                        .set_metas(&[(meta::ACTIVATION, Some(meta::ACTIVE))])?;
                    this.set_state(Activation::Active);
                    tracing::warn!(%domain, "the security domain's download is confirmed: the HSM is active");
                    // A transfer key issued meanwhile serves no recovery now (a crash before
                    // this is finished at the next start).
                    if let Some((transfer, _)) = this.transfer()? {
                        this.discard(transfer, &[(meta::TRANSFER, None)])?;
                    }
                    Ok(success())
                })
                .await
            }
        }
    }

    /// `GET /securitydomain/upload`: the transfer key of a recovery, made in the token on the
    /// first call and the same on every later one until an upload completes.
    pub async fn transfer_key(self: &Arc<Self>) -> Result<serde_json::Value> {
        let _changing = self.changes.lock().await;
        self.refuse_when_active("recovered by an upload")?;
        let this = Arc::clone(self);
        blocking(move || {
            if let Some((id, der)) = this.transfer()? {
                if this.hsm.transfer_public(id)?.is_some() {
                    return secdomain::transfer_key_body(&der).map_err(internal);
                }
                tracing::warn!(transfer_key = %id, "the recorded transfer key is gone from the token; making a new one");
            }
            this.settle_candidate(meta::TRANSFER_CANDIDATE)?;
            if let Some((stale, _)) = this.transfer()? {
                // Recorded, but its pair is not (all) on the token: what is left of it goes.
                this.discard(stale, &[(meta::TRANSFER, None)])?;
            }
            let id = VersionId::random();
            this.store
                .set_metas(&[(meta::TRANSFER_CANDIDATE, Some(&id.to_string()))])?;
            let public = this.hsm.make_transfer_key(id)?;
            failpoint("domain.transfer.after_pair");
            let hsm = Arc::clone(&this.hsm);
            let sign = move |tbs: &[u8]| {
                hsm.transfer_sign(id, tbs)
                    .map_err(|e| secdomain::Error::Internal(e.to_string()))
            };
            let der = secdomain::transfer_certificate(&public.spki_der, &this.host, &sign)
                .map_err(internal)?;
            use base64::Engine as _;
            let record = serde_json::to_string(&Transfer {
                id: id.to_string(),
                certificate: base64::engine::general_purpose::STANDARD.encode(&der),
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
            this.store.set_metas(&[
                (meta::TRANSFER, Some(&record)),
                (meta::TRANSFER_CANDIDATE, None),
            ])?;
            tracing::warn!(transfer_key = %id, "issued a transfer key: this HSM waits for a security domain upload (recovery)");
            secdomain::transfer_key_body(&der).map_err(internal)
        })
        .await
    }

    /// `POST /securitydomain/upload`: az's restore blob, opened with the transfer key in the
    /// token; the HSM becomes active under the old domain's id and values.
    pub async fn upload(self: &Arc<Self>, blob: String) -> Result<()> {
        let _changing = self.changes.lock().await;
        self.refuse_when_active("uploaded")?;
        let this = Arc::clone(self);
        let outcome = blocking(move || {
            let Some((transfer, cert)) = this.transfer()? else {
                return Err(Error::Conflict {
                    message: "This HSM has issued no transfer key: get it first (GET /securitydomain/upload, \
                              az keyvault security-domain init-recovery), make the restore blob for it, then upload."
                        .into(),
                    inner: Some(Reason::HsmNotActivated),
                });
            };
            let blob = secdomain::parse_restore_blob(&blob, &secdomain::x5t_256(&cert))
                .map_err(client)?;
            let cek = this
                .hsm
                .transfer_decrypt(transfer, blob.encrypted_cek())
                .map_err(|e| match e {
                    crate::hsm::Error::Rejected(_) => Error::BadParameter(
                        "The restore blob's wrapped key does not open with this HSM's transfer key.".into(),
                    ),
                    other => other.into(),
                })?;
            let contents = DomainContents::from_items(blob.open(&cek).map_err(client)?)
                .map_err(client)?;
            drop(cek);
            this.discard_pending()?;
            this.install(&contents)?;
            this.store.set_metas(&[
                (meta::ACTIVATION, Some(meta::ACTIVE)),
                (meta::DOMAIN, Some(&contents.id.to_string())),
                (meta::SOURCE, Some("upload")),
                (meta::CANDIDATE, None),
            ])?;
            failpoint("domain.upload.after_commit");
            this.hsm.set_domain(contents.id)?;
            this.set_state(Activation::Active);
            tracing::warn!(domain = %contents.id, "recovered the security domain by upload: the HSM is active");
            // The recovery is complete; a crash before this is finished at the next start.
            this.discard(transfer, &[(meta::TRANSFER, None)])?;
            Ok(())
        })
        .await;
        // The status is for clients: a fault inside says nothing about the inside (the 500
        // said nothing either; the detail is in the log).
        let failure = match &outcome {
            Ok(()) => None,
            Err(e) => Some(e.failure().1),
        };
        *self
            .last_upload_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failure;
        outcome
    }

    /// `GET /securitydomain/upload/pending`.
    pub fn upload_status(&self) -> Result<OperationStatus> {
        if self.activation() == Activation::Active {
            return Ok(success());
        }
        let failure = self
            .last_upload_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failure {
            Some(details) => Ok(OperationStatus {
                status: "Failed",
                details,
            }),
            None => Err(Error::NotFound {
                what: Missing::SecurityDomainOperation,
                message: "No security domain upload has been made to this HSM.".into(),
            }),
        }
    }
}

/// The ids of [`meta::DISCARDED`] (`None`: unreadable).
pub fn discarded_ids(json: Option<&str>) -> Option<Vec<VersionId>> {
    let Some(json) = json else {
        return Some(Vec::new());
    };
    let hex: Vec<String> = serde_json::from_str(json).ok()?;
    hex.iter().map(|h| VersionId::parse_hex(h)).collect()
}

/// [`meta::DISCARDED`]'s text for `ids`.
pub fn discarded_json(ids: &[VersionId]) -> String {
    serde_json::to_string(&ids.iter().map(|i| i.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

fn success() -> OperationStatus {
    OperationStatus {
        status: "Success",
        details: ACTIVE_TEXT.into(),
    }
}

fn failpoint(name: &str) {
    crate::failpoint::hit(name);
}

/// A client's mistake in a file or body, as a 400; anything else is the service's.
fn client(err: secdomain::Error) -> Error {
    match err {
        secdomain::Error::Invalid(m) => Error::BadParameter(m),
        secdomain::Error::Internal(m) => Error::Internal(format!("security domain: {m}")),
    }
}

fn internal(err: secdomain::Error) -> Error {
    Error::Internal(format!("security domain: {err}"))
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a security domain task ended: {e}")))?
}
