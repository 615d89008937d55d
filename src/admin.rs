//! The admin CLI's work on a data dir: principals and their tokens, role assignments, and the
//! audit log. It writes the database directly (a running service sees each change on its next
//! request) and records every change in the audit log, as the service records requests.

use std::path::{Path, PathBuf};

use crate::audit::{self, Appender, Event, Outcome};
use crate::auth::roles::{self, RoleAssignment, RoleDefinition, Scope};
use crate::auth::{BearerToken, PrincipalRow};
use crate::clock::{Clock, SystemClock};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Refused(String),
    #[error("database: {0}")]
    Store(#[from] crate::store::Error),
    #[error("audit log: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, AdminError>;

/// An open data dir.
pub struct DataDir {
    dir: PathBuf,
    store: Store,
}

/// A principal as `principal list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct PrincipalView {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub created: String,
    pub roles: Vec<String>,
}

impl DataDir {
    /// Opens the database of an initialised data dir.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = dir.join("p11vault.db");
        if !db.exists() {
            return Err(AdminError::Refused(format!(
                "no p11vault database at {}; start the service once to initialise the data dir",
                db.display()
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            store: Store::open(&db)?,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Registers a principal, optionally with roles at `scope`, and returns it with its token.
    /// `id` is for principals that sign in with an OpenID Connect token (their object id).
    pub fn create_principal(
        &self,
        name: &str,
        id: Option<&str>,
        role_names: &[String],
        scope: &str,
    ) -> Result<(String, BearerToken)> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 {
            return Err(AdminError::Refused(
                "a principal name is 1 to 64 characters".into(),
            ));
        }
        let id = match id {
            Some(id) => validate_id(id)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        if self
            .store
            .principals()?
            .iter()
            .any(|p| p.id.eq_ignore_ascii_case(&id))
        {
            return Err(AdminError::Refused(format!(
                "a principal with id {id} exists"
            )));
        }
        let scope = parse_scope(scope)?;
        let assignments = role_names
            .iter()
            .map(|r| {
                let role = self.resolve_role(r)?;
                if !role.assignable_at(&scope) {
                    return Err(AdminError::Refused(format!(
                        "{} cannot be assigned at {scope}",
                        role.role_name
                    )));
                }
                Ok(RoleAssignment {
                    name: uuid::Uuid::new_v4().to_string(),
                    scope: scope.clone(),
                    principal_id: id.to_ascii_lowercase(),
                    role_definition: role.name,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let token = BearerToken::generate();
        let now = SystemClock.now();
        self.store.insert_principal(
            &PrincipalRow {
                id: id.clone(),
                name: name.to_owned(),
                token_hash: token.hash().as_bytes().to_vec(),
                enabled: true,
                created: now,
            },
            &assignments,
            now,
        )?;
        self.audit("principal/create", &id, name)?;
        for a in &assignments {
            self.audit(
                "roleAssignments/write",
                &id,
                &format!("{} at {}", a.role_definition, a.scope),
            )?;
        }
        Ok((id, token))
    }

    pub fn list_principals(&self) -> Result<Vec<PrincipalView>> {
        let assignments = self.store.role_assignments()?;
        let roles = self.all_roles()?;
        Ok(self
            .store
            .principals()?
            .into_iter()
            .map(|p| PrincipalView {
                roles: assignments
                    .iter()
                    .filter(|a| a.principal_id.eq_ignore_ascii_case(&p.id))
                    .map(|a| {
                        let role = roles
                            .iter()
                            .find(|r| r.name.eq_ignore_ascii_case(&a.role_definition))
                            .map_or(a.role_definition.as_str(), |r| r.role_name.as_str());
                        format!("{role} at {}", a.scope)
                    })
                    .collect(),
                created: crate::clock::rfc3339_millis(p.created * 1000),
                id: p.id,
                name: p.name,
                enabled: p.enabled,
            })
            .collect())
    }

    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        let id = self.principal_id(id)?;
        self.store.set_principal_enabled(&id, enabled)?;
        self.audit(
            if enabled {
                "principal/enable"
            } else {
                "principal/disable"
            },
            &id,
            "",
        )
    }

    /// Gives a principal a new token; the old one stops working at once.
    pub fn rotate_token(&self, id: &str) -> Result<BearerToken> {
        let id = self.principal_id(id)?;
        let token = BearerToken::generate();
        self.store
            .set_principal_token(&id, token.hash().as_bytes())?;
        self.audit("principal/rotate", &id, "")?;
        Ok(token)
    }

    /// Makes a principal the HSM's operator (`http/arm.rs`: the one who may show, update,
    /// delete, recover and purge the HSM); the previous operator loses that at once.
    pub fn set_operator(&self, id: &str) -> Result<()> {
        let id = self.principal_id(id)?;
        self.store.set_meta(crate::store::OPERATOR, &id)?;
        self.audit("principal/operator", &id, "")
    }

    /// Removes a principal and its role assignments.
    pub fn delete_principal(&self, id: &str) -> Result<()> {
        let id = self.principal_id(id)?;
        self.store.delete_principal(&id)?;
        self.audit("principal/delete", &id, "")
    }

    /// Assigns a role to a principal (also the way back in if every Administrator assignment
    /// was deleted through the API).
    pub fn assign(&self, id: &str, role: &str, scope: &str) -> Result<String> {
        let id = self.principal_id(id)?;
        let role = self.resolve_role(role)?;
        let scope = parse_scope(scope)?;
        if !role.assignable_at(&scope) {
            return Err(AdminError::Refused(format!(
                "{} cannot be assigned at {scope}",
                role.role_name
            )));
        }
        let assignment = RoleAssignment {
            name: uuid::Uuid::new_v4().to_string(),
            scope,
            principal_id: id.to_ascii_lowercase(),
            role_definition: role.name.clone(),
        };
        self.store
            .insert_role_assignment(&assignment, SystemClock.now())?;
        self.audit(
            "roleAssignments/write",
            &id,
            &format!("{} at {}", role.role_name, assignment.scope),
        )?;
        Ok(assignment.name)
    }

    fn principal_id(&self, id: &str) -> Result<String> {
        self.store
            .principals()?
            .into_iter()
            .find(|p| p.id.eq_ignore_ascii_case(id))
            .map(|p| p.id)
            .ok_or_else(|| AdminError::Refused(format!("no principal with id {id}")))
    }

    fn all_roles(&self) -> Result<Vec<RoleDefinition>> {
        let mut all = roles::built_in_roles();
        all.extend(self.store.custom_roles()?);
        Ok(all)
    }

    /// A role by its GUID or its name (`Managed HSM Crypto User`).
    fn resolve_role(&self, wanted: &str) -> Result<RoleDefinition> {
        self.all_roles()?
            .into_iter()
            .find(|r| {
                r.name.eq_ignore_ascii_case(wanted) || r.role_name.eq_ignore_ascii_case(wanted)
            })
            .ok_or_else(|| {
                AdminError::Refused(format!(
                    "no role named {wanted:?}; built-in roles: {}",
                    roles::built_in_roles()
                        .iter()
                        .map(|r| r.role_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Appends a record of an admin-CLI change. The CLI acts as the operating-system user who
    /// ran it, which is what the record names.
    fn audit(&self, what: &str, subject: &str, detail: &str) -> Result<()> {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata("/proc/self")
                    .map(|m| format!("uid {}", m.uid()))
                    .unwrap_or_else(|_| "unknown".into())
            });
        let event = Event {
            time: Event::now(),
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: None,
            source: Some("admin-cli".into()),
            principal: None,
            principal_name: Some(format!("os-user:{user}")),
            method: "CLI".into(),
            path: if detail.is_empty() {
                format!("{what} {subject}")
            } else {
                format!("{what} {subject} ({detail})")
            },
            action: Some(format!("p11vault/admin-cli/{what}")),
            key: None,
            version: None,
            outcome: Outcome::Allowed,
            status: 200,
            answered: None,
            outage: None,
        };
        let mut appender = Appender::open(&self.dir.join(audit::FILE_NAME))?;
        appender.expect_head(audit::recorded_head(&self.store)?);
        appender.append(&[event], Some(&self.store))?;
        Ok(())
    }
}

fn parse_scope(raw: &str) -> Result<Scope> {
    Scope::parse(raw).ok_or_else(|| {
        AdminError::Refused(format!(
            "{raw:?} is not a scope; use /, /keys or /keys/NAME"
        ))
    })
}

/// An externally given principal id (an OpenID Connect object id): printable, no spaces.
fn validate_id(id: &str) -> Result<String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(AdminError::Refused(
            "a principal id is 1 to 128 characters of letters, digits and -_.:@".into(),
        ))
    }
}
