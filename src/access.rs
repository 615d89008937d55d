//! The access-control service: keeps the in-memory [`AccessSnapshot`] in step with the
//! database (the admin CLI writes principals from another process), authenticates bearer
//! tokens, and validates and stores role definitions and assignments. The rules themselves are
//! in `auth`; this is where they meet the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::auth::oidc::OidcVerifier;
use crate::auth::roles::{self, Permission, RoleAssignment, RoleDefinition, RoleType, Scope};
use crate::auth::{AccessSnapshot, Principal};
use crate::clock::Clock;
use crate::error::{Error, Missing, Reason};
use crate::model::truncate_for_message;
use crate::store::{RoleRemoval, Store};

/// How stale the snapshot may be, at most, after another process changed the database.
pub const RECHECK_EVERY: Duration = Duration::from_millis(1);

pub struct AccessControl {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// The snapshot and the store's `data_version` it was read at. Replaced only by one read at
    /// the same or a later version, so two reloads racing never leave the older one in force.
    snapshot: RwLock<(i64, Arc<AccessSnapshot>)>,
    /// When the latest finished look at `data_version` started, in microseconds since `epoch`.
    checked_at: AtomicU64,
    epoch: Instant,
    oidc: Option<OidcVerifier>,
}

/// What a client asks a role definition to be.
#[derive(Debug, Default)]
pub struct RoleDefinitionInput {
    pub role_name: Option<String>,
    pub description: Option<String>,
    pub role_type: Option<String>,
    pub permissions: Option<Vec<Permission>>,
    pub assignable_scopes: Option<Vec<String>>,
}

impl AccessControl {
    pub fn load(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        oidc: Option<OidcVerifier>,
    ) -> Result<Self, Error> {
        let access = Self {
            store,
            clock,
            snapshot: RwLock::new((i64::MIN, Arc::new(AccessSnapshot::default()))),
            checked_at: AtomicU64::new(0),
            epoch: Instant::now(),
            oidc,
        };
        access.reload()?;
        Ok(access)
    }

    /// The snapshot in force, re-read first if anything committed to the database since it was
    /// read — so a principal disabled or deleted by the admin CLI is refused from its next
    /// request on. The database is asked at most once per [`RECHECK_EVERY`]: under load the
    /// question would otherwise cost a read transaction per request.
    pub fn current(&self) -> Result<Arc<AccessSnapshot>, Error> {
        // A request skips the question only when one that started less than a millisecond ago
        // has finished: what it saw was current then. Requests that arrive while a check is
        // under way ask too, rather than use what may be an old snapshot.
        let now = self.epoch.elapsed().as_micros() as u64;
        let last = self.checked_at.load(Ordering::Acquire);
        if now.saturating_sub(last) >= RECHECK_EVERY.as_micros() as u64 {
            let version = self.store.data_version()?;
            if version != self.snapshot.read().unwrap_or_else(|p| p.into_inner()).0 {
                self.reload()?;
            }
            self.checked_at.fetch_max(now, Ordering::AcqRel);
        }
        Ok(Arc::clone(
            &self.snapshot.read().unwrap_or_else(|p| p.into_inner()).1,
        ))
    }

    fn reload(&self) -> Result<(), Error> {
        // Read the version first: a commit that lands while the tables are read makes the next
        // request read them again.
        let version = self.store.data_version()?;
        let snapshot = AccessSnapshot::new(
            &self.store.principals()?,
            self.store.custom_roles()?,
            self.store.role_assignments()?,
        );
        let mut current = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        if version >= current.0 {
            *current = (version, Arc::new(snapshot));
        }
        Ok(())
    }

    /// The principal a bearer credential stands for — a p11vault token, or a JWT from the
    /// configured OpenID Connect issuer whose object id is a registered, enabled principal —
    /// with the snapshot that said so, which the request's authorization then also uses.
    pub fn authenticate(
        &self,
        credential: &str,
    ) -> Result<Option<(Principal, Arc<AccessSnapshot>)>, Error> {
        let snapshot = self.current()?;
        let principal = match snapshot.authenticate(credential) {
            Some(p) => Some(p),
            None => self.authenticate_jwt(credential, &snapshot),
        };
        Ok(principal.map(|p| (p, snapshot)))
    }

    fn authenticate_jwt(&self, credential: &str, snapshot: &AccessSnapshot) -> Option<Principal> {
        let oidc = self.oidc.as_ref()?;
        if !OidcVerifier::looks_like_jwt(credential) {
            return None;
        }
        match oidc.verify(credential, self.clock.now()) {
            Ok(object_id) => snapshot.principal(&object_id),
            Err(reason) => {
                tracing::info!(%reason, "refused a bearer JWT");
                None
            }
        }
    }

    /// The service clock's time, in seconds since the epoch.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Fetches the OpenID Connect issuer's keys again (blocking).
    pub fn refresh_jwks(&self) {
        if let Some(oidc) = &self.oidc {
            oidc.refresh();
        }
    }

    // ----- role definitions -------------------------------------------------------------------

    pub async fn put_role_definition(
        &self,
        scope: &Scope,
        name: &str,
        input: RoleDefinitionInput,
    ) -> Result<RoleDefinition, Error> {
        let name = guid(name, "role definition name")?;
        let current = self.current()?;
        if let Some(existing) = current.role(&name)
            && existing.role_type == RoleType::BuiltIn
        {
            return Err(Error::BadParameter(
                "Cannot re-use the name/GUID matching that of a built-in role. Please use a unique role ID.".into(),
            ));
        }
        if let Some(t) = &input.role_type
            && t != RoleType::Custom.as_str()
        {
            return Err(Error::BadParameter(format!(
                "A role definition created through the API must have type '{}'.",
                RoleType::Custom.as_str()
            )));
        }
        let role_name = input
            .role_name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::BadParameter("The role definition needs a 'roleName'.".into()))?;
        if role_name.len() > 256 {
            return Err(Error::BadParameter(
                "The role name is longer than 256 characters.".into(),
            ));
        }
        if current
            .roles()
            .iter()
            .any(|r| r.role_name.eq_ignore_ascii_case(&role_name) && r.name != name)
        {
            return Err(Error::BadParameter(format!(
                "A role named '{}' already exists.",
                truncate_for_message(&role_name)
            )));
        }
        let permissions = input.permissions.unwrap_or_default();
        if permissions.is_empty() {
            return Err(Error::BadParameter(
                "The role definition needs at least one permission.".into(),
            ));
        }
        for permission in &permissions {
            if !permission.actions.is_empty() || !permission.not_actions.is_empty() {
                return Err(Error::BadParameter(
                    "Role definitions here grant data actions only; 'actions' and 'notActions' must be empty.".into(),
                ));
            }
            for pattern in permission
                .data_actions
                .iter()
                .chain(&permission.not_data_actions)
            {
                if !roles::is_valid_pattern(pattern) {
                    return Err(Error::BadParameter(format!(
                        "'{}' is not a data action.",
                        truncate_for_message(pattern)
                    )));
                }
            }
        }
        let assignable_scopes = match input.assignable_scopes {
            None => vec![scope.to_string()],
            Some(scopes) if scopes.is_empty() => vec![scope.to_string()],
            Some(scopes) => scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).map(|s| s.to_string()).ok_or_else(|| {
                        Error::BadParameter(format!(
                            "'{}' is not a scope; use /, /keys or /keys/{{name}}.",
                            truncate_for_message(s)
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let role = RoleDefinition {
            name,
            role_name,
            description: input.description.unwrap_or_default(),
            role_type: RoleType::Custom,
            permissions,
            assignable_scopes,
        };
        let now = self.clock.now();
        let stored = role.clone();
        self.blocking(move |store| store.put_custom_role(&stored, now))
            .await?;
        self.reload()?;
        Ok(role)
    }

    pub fn role_definition(&self, name: &str) -> Result<RoleDefinition, Error> {
        self.current()?
            .role(name)
            .cloned()
            .ok_or_else(|| role_definition_not_found(name))
    }

    pub fn role_definitions(&self, role_name: Option<&str>) -> Result<Vec<RoleDefinition>, Error> {
        Ok(self
            .current()?
            .roles()
            .into_iter()
            .filter(|r| role_name.is_none_or(|n| r.role_name.eq_ignore_ascii_case(n)))
            .cloned()
            .collect())
    }

    pub async fn delete_role_definition(&self, name: &str) -> Result<RoleDefinition, Error> {
        let role = self.role_definition(name)?;
        if role.role_type == RoleType::BuiltIn {
            return Err(Error::BadParameter(
                "Built-in role definitions cannot be deleted.".into(),
            ));
        }
        let key = role.name.clone();
        match self
            .blocking(move |store| store.delete_custom_role(&key))
            .await?
        {
            RoleRemoval::Removed => {
                self.reload()?;
                Ok(role)
            }
            RoleRemoval::NotFound => Err(role_definition_not_found(name)),
            RoleRemoval::InUse(n) => Err(Error::Conflict {
                message: format!(
                    "The role definition is used by {n} role assignment(s); delete them first."
                ),
                inner: Some(Reason::RoleDefinitionInUse),
            }),
        }
    }

    // ----- role assignments -------------------------------------------------------------------

    pub async fn create_role_assignment(
        &self,
        scope: &Scope,
        name: &str,
        role_definition_id: Option<&str>,
        principal_id: Option<&str>,
    ) -> Result<RoleAssignment, Error> {
        let name = guid(name, "role assignment name")?;
        let definition = role_definition_id.ok_or_else(|| {
            Error::BadParameter("The role assignment needs a 'roleDefinitionId'.".into())
        })?;
        // Clients send the full id (`Microsoft.KeyVault/providers/…/roleDefinitions/{guid}`)
        // or the bare name.
        let definition = definition.rsplit('/').next().unwrap_or(definition);
        let principal_id = principal_id
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::BadParameter("The role assignment needs a 'principalId'.".into())
            })?;
        let current = self.current()?;
        let role = current.role(definition).ok_or_else(|| {
            Error::BadParameter(format!(
                "There is no role definition '{}'.",
                truncate_for_message(definition)
            ))
        })?;
        if !role.assignable_at(scope) {
            return Err(Error::BadParameter(format!(
                "The role '{}' cannot be assigned at scope '{scope}'.",
                role.role_name
            )));
        }
        if !current.is_principal(principal_id) {
            return Err(Error::BadParameter(format!(
                "There is no enabled principal with id '{}'; register it with `p11vault principal create`.",
                truncate_for_message(principal_id)
            )));
        }
        let assignment = RoleAssignment {
            name,
            scope: scope.clone(),
            principal_id: principal_id.to_ascii_lowercase(),
            role_definition: role.name.clone(),
        };
        let now = self.clock.now();
        let stored = assignment.clone();
        if !self
            .blocking(move |store| store.insert_role_assignment(&stored, now))
            .await?
        {
            return Err(Error::Conflict {
                message: "A role assignment with this name already exists; assignments cannot be changed, only deleted and created again.".into(),
                inner: Some(Reason::RoleAssignmentExists),
            });
        }
        self.reload()?;
        Ok(assignment)
    }

    /// An assignment by name, as seen from `scope`.
    pub fn role_assignment(&self, scope: &Scope, name: &str) -> Result<RoleAssignment, Error> {
        self.current()?
            .assignments()
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name) && &a.scope == scope)
            .cloned()
            .ok_or_else(|| role_assignment_not_found(name))
    }

    /// The assignments visible at `scope`: at `/` or `/keys`, all of them; at a key, the ones on
    /// that key and above it. `at_scope_only` keeps those at or above the scope;
    /// `principal` keeps one principal's.
    pub fn role_assignments(
        &self,
        scope: &Scope,
        at_scope_only: bool,
        principal: Option<&str>,
    ) -> Result<Vec<RoleAssignment>, Error> {
        Ok(self
            .current()?
            .assignments()
            .iter()
            .filter(|a| match scope {
                Scope::Global | Scope::AllKeys if !at_scope_only => true,
                Scope::Global => a.scope == Scope::Global,
                Scope::AllKeys => matches!(a.scope, Scope::Global | Scope::AllKeys),
                Scope::Key(k) => a.scope.covers(Some(k)),
            })
            .filter(|a| principal.is_none_or(|p| a.principal_id.eq_ignore_ascii_case(p)))
            .cloned()
            .collect())
    }

    pub async fn delete_role_assignment(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<RoleAssignment, Error> {
        let assignment = self.role_assignment(scope, name)?;
        let key = assignment.name.clone();
        if !self
            .blocking(move |store| store.delete_role_assignment(&key))
            .await?
        {
            return Err(role_assignment_not_found(name));
        }
        self.reload()?;
        Ok(assignment)
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, crate::store::Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.store.blocking(f).await.map_err(Error::from)
    }
}

/// Role definition and assignment names are GUIDs chosen by the client.
fn guid(raw: &str, what: &str) -> Result<String, Error> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            Error::BadParameter(format!(
                "The {what} '{}' is not a GUID.",
                truncate_for_message(raw)
            ))
        })
}

fn role_definition_not_found(name: &str) -> Error {
    Error::NotFound {
        what: Missing::RoleDefinition,
        message: format!(
            "There is no role definition '{}'.",
            truncate_for_message(name)
        ),
    }
}

fn role_assignment_not_found(name: &str) -> Error {
    Error::NotFound {
        what: Missing::RoleAssignment,
        message: format!(
            "There is no role assignment '{}' at this scope.",
            truncate_for_message(name)
        ),
    }
}
