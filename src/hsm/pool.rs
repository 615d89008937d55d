//! The logged-in connection to the token: the bounded session pool, reconnect with back-off
//! (and re-initialising the module when the token came back), and the `CKA_ID → handle` cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags};
use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use tokio::sync::Semaphore;

use super::{
    Error, HsmSettings, KeyHandles, Module, Pin, Result, ScannedObject, Slot, TokenProfile, backup,
    label_and_id, login_user, ops, templates,
};
use crate::model::VersionId;

pub(super) struct Connection {
    pub(super) slot: Slot,
    /// Held for the life of the connection: closing the last session logs the application out,
    /// and SoftHSM2 then invalidates every private-object handle.
    pub(super) anchor: Option<Session>,
    pub(super) idle: Vec<Session>,
    /// Bumped on every reconnect, so sessions from before it are not returned to the pool.
    pub(super) generation: u64,
}

/// The logged-in token: a bounded session pool and the handle cache.
pub struct Hsm {
    pub(super) module: Module,
    pub(super) token_label: String,
    pub(super) pin: Pin,
    pub(super) settings: HsmSettings,
    pub(super) state: Mutex<Connection>,
    pub(super) cache: RwLock<HashMap<VersionId, KeyHandles>>,
    /// The security domain's halves, once [`Hsm::set_domain`] has found them.
    pub(super) domain: RwLock<Option<backup::DomainHandles>>,
    /// The transfer key of a recovery, once made or first found (dropped on a reconnect,
    /// which renumbers handles).
    pub(super) transfer: RwLock<Option<super::domain::TransferHandles>>,
    /// The sign-in's HMAC key, once [`Hsm::set_identity_key`] has found (or made) it.
    pub(super) identity: RwLock<Option<super::identity::IdentityKey>>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) mechanisms: Vec<MechanismType>,
    /// What the data dir's first start learnt of the token (recorded in its database).
    pub(super) profile: TokenProfile,
    pub(super) oaep_sha256: ops::OaepSupport,
    pub(super) backoff: Mutex<Backoff>,
    /// Held shared by every call into the module, exclusively while the module is finalised
    /// and initialised again (a token that went away and came back).
    pub(super) gate: RwLock<()>,
}

/// The time between two reconnect attempts starts here, doubles after each failed attempt up
/// to the maximum, and starts again after a success. Attempts are made by calls that need the
/// token, so a token that comes back is in use again within the maximum.
pub(super) const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(4);

pub(super) struct Backoff {
    pub(super) last: Option<Instant>,
    pub(super) wait: Duration,
}

impl Hsm {
    /// Runs `f` with a pooled session on a blocking thread. At most `sessions` calls run at once.
    /// When the token reports that the session, login or device is gone, the session is dropped
    /// and a reconnect is attempted, and the caller gets the error (the service answers 503).
    pub async fn call<R, F>(self: &Arc<Self>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Hsm, &Session) -> Result<R> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unexpected("the session pool is closed".into()))?;
        let hsm = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hsm.call_blocking(f)
        })
        .await
        .map_err(|e| Error::Unexpected(format!("a token call panicked: {e}")))?
    }

    /// The blocking form of [`Hsm::call`], for start-up and background work already on a
    /// blocking thread.
    pub fn call_blocking<R>(&self, f: impl FnOnce(&Hsm, &Session) -> Result<R>) -> Result<R> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let (session, generation) = match self.checkout() {
            Ok(checked_out) => checked_out,
            Err(e) => {
                drop(gate);
                if e.is_token_gone() {
                    self.reconnect_with_backoff();
                }
                return Err(e);
            }
        };
        let mut result = f(self, &session);
        if let Err(e) = &result
            && !e.is_token_gone()
            && e.is_ambiguous()
            && !self.probe(&session)
        {
            result = Err(Error::Unreachable(e.to_string()));
        }
        drop(gate);
        match &result {
            Err(e) if e.is_token_gone() => {
                drop(session);
                self.reconnect_with_backoff();
            }
            _ => self.checkin(session, generation),
        }
        result
    }

    /// Whether the token still answers and still holds what it held: its info and the
    /// session's state read, and the security domain's private unwrap half is still behind its
    /// handle. A token whose objects went away, or came back under new handles, fails this.
    fn probe(&self, session: &Session) -> bool {
        let slot = self.lock_state().slot;
        if self.module.ctx.get_token_info(slot).is_err() || session.get_session_info().is_err() {
            return false;
        }
        let domain = *self.domain.read().unwrap_or_else(|p| p.into_inner());
        match domain {
            Some(d) => session
                .get_attributes(d.unwrap, &[AttributeType::Class])
                .is_ok_and(|found| !found.is_empty()),
            None => true,
        }
    }

    fn checkout(&self) -> Result<(Session, u64)> {
        let mut state = self.lock_state();
        if let Some(session) = state.idle.pop() {
            return Ok((session, state.generation));
        }
        if state.anchor.is_none() {
            // The caller reconnects (outside the module gate).
            return Err(Error::TokenNotFound(self.token_label.clone()));
        }
        let session = self.module.ctx.open_rw_session(state.slot)?;
        Ok((session, state.generation))
    }

    fn checkin(&self, session: Session, generation: u64) {
        let mut state = self.lock_state();
        if state.generation == generation && state.idle.len() < self.settings.sessions {
            state.idle.push(session);
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding this lock cannot leave the pool half-updated: every critical
        // section is a single push, pop or replace, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every session, finds the token again by label, logs in and rebuilds the cache.
    /// Attempts are spaced by a back-off that grows while they fail ([`RECONNECT_BACKOFF_MAX`]).
    fn reconnect_with_backoff(&self) {
        {
            let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
            if backoff.last.is_some_and(|t| t.elapsed() < backoff.wait) {
                return;
            }
            backoff.last = Some(Instant::now());
        }
        let outcome = self.reconnect();
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                backoff.wait = RECONNECT_BACKOFF_MIN;
                tracing::info!(token = %self.token_label, "reconnected to the token");
            }
            Err(e) => {
                backoff.wait = (backoff.wait * 2).min(RECONNECT_BACKOFF_MAX);
                tracing::warn!(token = %self.token_label, error = %e, retry_in = ?backoff.wait, "reconnect to the token failed; will retry");
            }
        }
    }

    /// Drops every session and opens the token again; if that fails, the module itself is
    /// finalised and initialised again first (SoftHSM2 does not see a token whose directory
    /// went away and came back until then), and the token opened once more.
    fn reconnect(&self) -> Result<()> {
        self.drop_sessions();
        match self.open_again() {
            Ok(()) => Ok(()),
            Err(first) => {
                tracing::info!(token = %self.token_label, error = %first, "reopening the token failed; initialising the PKCS#11 module again");
                self.reinitialize_module()?;
                self.open_again()
            }
        }
    }

    fn drop_sessions(&self) {
        let mut state = self.lock_state();
        state.generation += 1;
        state.idle.clear();
        state.anchor = None;
    }

    /// Finds the token by label, logs in on a new anchor session and rebuilds the cache.
    fn open_again(&self) -> Result<()> {
        let slot = self
            .module
            .find_token(&self.token_label)?
            .ok_or_else(|| Error::TokenNotFound(self.token_label.clone()))?;
        let anchor = self.module.ctx.open_rw_session(slot)?;
        login_user(&anchor, &self.pin)?;
        {
            let mut state = self.lock_state();
            state.slot = slot;
            state.anchor = Some(anchor);
        }
        self.rebuild_cache()
    }

    /// `C_Finalize` and `C_Initialize`, with no other call in the module meanwhile. Every
    /// session and handle of before is void afterwards.
    fn reinitialize_module(&self) -> Result<()> {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        self.drop_sessions();
        if let Err(e) = self.module.ctx.clone().finalize() {
            tracing::debug!(error = %e, "C_Finalize failed; initialising anyway");
        }
        match self
            .module
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Fills the handle cache from one scan of the token. Runs at start-up and after a
    /// reconnect, never on a request path.
    pub fn rebuild_cache(&self) -> Result<()> {
        let objects = self.call_blocking(|hsm, s| {
            hsm.refresh_domain(s)?;
            hsm.refresh_identity_key(s)?;
            *hsm.transfer.write().unwrap_or_else(|p| p.into_inner()) = None;
            hsm.scan(s)
        })?;
        let mut pairs: HashMap<VersionId, (Option<ObjectHandle>, Option<ObjectHandle>)> =
            HashMap::new();
        for obj in &objects {
            let Some(id) = obj.id else { continue };
            let entry = pairs.entry(id).or_default();
            if obj.class == ObjectClass::PUBLIC_KEY {
                entry.1 = Some(obj.handle);
            } else {
                entry.0 = Some(obj.handle);
            }
        }
        let cache = pairs
            .into_iter()
            .filter_map(|(id, (secret, public))| {
                secret.map(|secret| (id, KeyHandles { secret, public }))
            })
            .collect();
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = cache;
        Ok(())
    }

    /// Every key object carrying a p11vault label (live or soft-deleted). This searches the
    /// whole token: start-up and reconciliation only.
    pub fn scan(&self, session: &Session) -> Result<Vec<ScannedObject>> {
        let mut found = Vec::new();
        for class in [
            ObjectClass::SECRET_KEY,
            ObjectClass::PRIVATE_KEY,
            ObjectClass::PUBLIC_KEY,
        ] {
            for handle in session.find_objects(&[Attribute::Class(class)])? {
                let Some((label, raw_id)) = label_and_id(session, handle)? else {
                    continue;
                };
                let id = VersionId::from_bytes(&raw_id);
                let label = String::from_utf8_lossy(&label).into_owned();
                if label.starts_with(templates::LIVE_PREFIX)
                    || label.starts_with(templates::DELETED_PREFIX)
                {
                    found.push(ScannedObject {
                        class,
                        id,
                        label,
                        handle,
                    });
                }
            }
        }
        Ok(found)
    }

    /// The cached handles of a version. Never searches the token.
    pub fn handles(&self, id: VersionId) -> Result<KeyHandles> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .ok_or(Error::ObjectMissing(id))
    }

    pub fn is_cached(&self, id: VersionId) -> bool {
        self.handles(id).is_ok()
    }

    pub(crate) fn remember(&self, id: VersionId, handles: KeyHandles) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, handles);
    }

    pub(super) fn forget(&self, id: VersionId) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Mechanisms the token reported at start-up.
    pub fn mechanisms(&self) -> &[MechanismType] {
        &self.mechanisms
    }

    /// What the token offers and enforces, as recorded at the data dir's first start.
    pub fn profile(&self) -> &TokenProfile {
        &self.profile
    }

    /// The padded AES key wrap of the security domain (recorded at the first start).
    pub(crate) fn key_wrap(&self) -> Mechanism<'static> {
        self.profile.key_wrap.mechanism()
    }

    /// The token's label (for messages that name the token's limits).
    pub fn token_label(&self) -> &str {
        &self.token_label
    }
}
