//! Managed HSM local RBAC as plain data: the data actions, the built-in role definitions, scopes,
//! and one pure `authorize` over a principal's assignments. No storage, no HTTP.

use std::fmt;

/// Every data action starts with this.
pub const PREFIX: &str = "Microsoft.KeyVault/managedHsm/";

/// Declares the data actions once: the enum, the list of all of them, and each one's name.
macro_rules! data_actions {
    ($($(#[$doc:meta])* $variant:ident => $suffix:literal,)*) => {
        /// The data actions the service checks. Each endpoint needs exactly one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action {
            $($(#[$doc])* $variant,)*
        }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            /// The part after [`PREFIX`].
            pub fn suffix(self) -> &'static str {
                match self {
                    $(Action::$variant => $suffix,)*
                }
            }
        }
    };
}

data_actions! {
    KeysRead => "keys/read/action",
    KeysWrite => "keys/write/action",
    KeysCreate => "keys/create",
    KeysDelete => "keys/delete",
    KeysRotate => "keys/rotate/action",
    KeysImport => "keys/import/action",
    KeysExport => "keys/export/action",
    KeysRelease => "keys/release/action",
    KeysBackup => "keys/backup/action",
    KeysRestore => "keys/restore/action",
    KeysEncrypt => "keys/encrypt/action",
    KeysDecrypt => "keys/decrypt/action",
    KeysWrap => "keys/wrap/action",
    KeysUnwrap => "keys/unwrap/action",
    KeysSign => "keys/sign/action",
    KeysVerify => "keys/verify/action",
    KeysDerive => "keys/derive/action",
    DeletedKeysRead => "keys/deletedKeys/read/action",
    DeletedKeysRecover => "keys/deletedKeys/recover/action",
    DeletedKeysPurge => "keys/deletedKeys/delete",
    Rng => "rng/action",
    RoleAssignmentsRead => "roleAssignments/read/action",
    RoleAssignmentsWrite => "roleAssignments/write/action",
    RoleAssignmentsDelete => "roleAssignments/delete/action",
    RoleDefinitionsRead => "roleDefinitions/read/action",
    RoleDefinitionsWrite => "roleDefinitions/write/action",
    RoleDefinitionsDelete => "roleDefinitions/delete/action",
    SecurityDomainDownload => "securitydomain/download/action",
    SecurityDomainDownloadRead => "securitydomain/download/read",
    SecurityDomainUpload => "securitydomain/upload/action",
    SecurityDomainUploadRead => "securitydomain/upload/read",
    SecurityDomainTransferKeyRead => "securitydomain/transferkey/read",
    BackupStart => "backup/start/action",
    BackupStatus => "backup/status/action",
    RestoreStart => "restore/start/action",
    RestoreStatus => "restore/status/action",
    /// p11vault's own: read the service settings.
    SettingsRead => "settings/read/action",
    /// p11vault's own: change the service settings (purge protection).
    SettingsWrite => "settings/write/action",
    /// p11vault's own: read the audit log.
    AuditRead => "audit/read/action",
}

impl Action {
    /// Whether the action changes what the service holds (its request is answered only once
    /// its audit record is on disk).
    pub fn changes_state(self) -> bool {
        !matches!(
            self,
            Action::KeysRead
                | Action::KeysEncrypt
                | Action::KeysDecrypt
                | Action::KeysWrap
                | Action::KeysUnwrap
                | Action::KeysSign
                | Action::KeysVerify
                | Action::KeysDerive
                | Action::KeysBackup
                | Action::KeysExport
                | Action::DeletedKeysRead
                | Action::Rng
                | Action::RoleAssignmentsRead
                | Action::RoleDefinitionsRead
                | Action::SecurityDomainDownloadRead
                | Action::SecurityDomainUploadRead
                | Action::SecurityDomainTransferKeyRead
                | Action::BackupStatus
                | Action::RestoreStatus
                | Action::SettingsRead
                | Action::AuditRead
        )
    }

    /// The full data action, as role definitions spell it.
    pub fn name(self) -> String {
        format!("{PREFIX}{}", self.suffix())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.suffix())
    }
}

/// Whether a data-action pattern from a role definition is well formed: a known action, or a
/// prefix of one followed by `*` (`Microsoft.KeyVault/managedHsm/keys/*`).
pub fn is_valid_pattern(pattern: &str) -> bool {
    Action::ALL.iter().any(|a| pattern_matches(pattern, *a))
}

/// Whether a pattern grants an action. Names compare case-insensitively, as in Azure.
pub fn pattern_matches(pattern: &str, action: Action) -> bool {
    let full = action.name();
    match pattern.strip_suffix('*') {
        Some(prefix) => full
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(&full),
    }
}

/// Where an assignment applies: the whole HSM (`/` or `/keys`) or one key (`/keys/{name}`).
/// Key names compare case-insensitively, as everywhere in the API.
#[derive(Clone, Debug, Eq)]
pub enum Scope {
    Global,
    AllKeys,
    Key(String),
}

impl Scope {
    /// Parses a scope as the API spells it. Repeated and trailing slashes are ignored
    /// (`///` from older SDKs is `/`).
    pub fn parse(raw: &str) -> Option<Scope> {
        let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [] => Some(Scope::Global),
            [keys] if keys.eq_ignore_ascii_case("keys") => Some(Scope::AllKeys),
            [keys, name] if keys.eq_ignore_ascii_case("keys") => crate::model::KeyName::parse(name)
                .ok()
                .map(|n| Scope::Key(n.as_str().to_owned())),
            _ => None,
        }
    }

    /// Whether an assignment at this scope covers a request about `key` (`None`: a request
    /// about the HSM as a whole, such as listing keys or assigning roles at `/`).
    pub fn covers(&self, key: Option<&str>) -> bool {
        match (self, key) {
            (Scope::Global | Scope::AllKeys, _) => true,
            (Scope::Key(mine), Some(key)) => mine.eq_ignore_ascii_case(key),
            (Scope::Key(_), None) => false,
        }
    }

    /// The key a scope names, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Scope::Key(k) => Some(k),
            _ => None,
        }
    }
}

impl PartialEq for Scope {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Scope::Global, Scope::Global) | (Scope::AllKeys, Scope::AllKeys) => true,
            (Scope::Key(a), Scope::Key(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("/"),
            Scope::AllKeys => f.write_str("/keys"),
            Scope::Key(k) => write!(f, "/keys/{k}"),
        }
    }
}

/// One permission block of a role definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

impl Permission {
    /// A permission block grants an action when one of its data actions matches and none of
    /// its not-data-actions does. Another role can still grant what this one excludes.
    pub fn grants(&self, action: Action) -> bool {
        self.data_actions.iter().any(|p| pattern_matches(p, action))
            && !self
                .not_data_actions
                .iter()
                .any(|p| pattern_matches(p, action))
    }
}

/// Built-in or custom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleType {
    BuiltIn,
    Custom,
}

impl RoleType {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleType::BuiltIn => "AKVBuiltInRole",
            RoleType::Custom => "CustomRole",
        }
    }
}

/// A role definition: a GUID name, a display name and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleDefinition {
    /// The GUID that names the definition.
    pub name: String,
    pub role_name: String,
    pub description: String,
    pub role_type: RoleType,
    pub permissions: Vec<Permission>,
    pub assignable_scopes: Vec<String>,
}

impl RoleDefinition {
    pub fn grants(&self, action: Action) -> bool {
        self.permissions.iter().any(|p| p.grants(action))
    }

    /// Whether the definition may be assigned at `scope`.
    pub fn assignable_at(&self, scope: &Scope) -> bool {
        self.assignable_scopes
            .iter()
            .filter_map(|s| Scope::parse(s))
            .any(|allowed| match (&allowed, scope) {
                (Scope::Global, _) => true,
                (Scope::AllKeys, Scope::AllKeys | Scope::Key(_)) => true,
                (a, b) => a == b,
            })
    }
}

/// A role assignment: a GUID name, who, what, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleAssignment {
    pub name: String,
    pub scope: Scope,
    pub principal_id: String,
    /// The GUID name of the role definition.
    pub role_definition: String,
}

pub const ADMINISTRATOR: &str = "a290e904-7015-4bba-90c8-60543313cdb4";
pub const CRYPTO_OFFICER: &str = "515eb02d-2335-4d2d-92f2-b1cbdf9c3778";
pub const CRYPTO_USER: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";
pub const POLICY_ADMINISTRATOR: &str = "4bd23610-cdcf-4971-bdee-bdc562cc28e4";
pub const CRYPTO_AUDITOR: &str = "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3";
pub const CRYPTO_SERVICE_ENCRYPTION_USER: &str = "33413926-3206-4cdd-b39a-83574fe37a17";
pub const CRYPTO_SERVICE_RELEASE_USER: &str = "21dbd100-6940-42c2-9190-5d6cb909625c";
pub const BACKUP: &str = "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8";

/// The built-in roles: ids, names and data actions as Managed HSM returns them, with the
/// differences ARCHITECTURE.md lists (Crypto User may list deleted keys; the p11vault-only
/// settings and audit actions).
pub fn built_in_roles() -> Vec<RoleDefinition> {
    use Action::*;
    let role =
        |name: &str, role_name: &str, description: &str, actions: &[Action]| RoleDefinition {
            name: name.to_owned(),
            role_name: role_name.to_owned(),
            description: description.to_owned(),
            role_type: RoleType::BuiltIn,
            permissions: vec![Permission {
                data_actions: actions.iter().map(|a| a.name()).collect(),
                ..Permission::default()
            }],
            assignable_scopes: vec!["/".to_owned()],
        };
    let role_admin = [
        RoleAssignmentsRead,
        RoleAssignmentsWrite,
        RoleAssignmentsDelete,
        RoleDefinitionsRead,
        RoleDefinitionsWrite,
        RoleDefinitionsDelete,
    ];
    vec![
        role(
            ADMINISTRATOR,
            "Managed HSM Administrator",
            "Manage role assignments and definitions, the security domain, backups and restores, and the service settings. No key operations.",
            &[
                &role_admin[..],
                &[
                    SecurityDomainDownload,
                    SecurityDomainDownloadRead,
                    SecurityDomainUpload,
                    SecurityDomainUploadRead,
                    SecurityDomainTransferKeyRead,
                    BackupStart,
                    BackupStatus,
                    RestoreStart,
                    RestoreStatus,
                    SettingsRead,
                    SettingsWrite,
                ],
            ]
            .concat(),
        ),
        role(
            CRYPTO_OFFICER,
            "Managed HSM Crypto Officer",
            "Manage role assignments, and read, recover and purge deleted keys.",
            &[
                &role_admin[..],
                &[
                    DeletedKeysRead,
                    DeletedKeysPurge,
                    DeletedKeysRecover,
                    KeysExport,
                    SettingsRead,
                ],
            ]
            .concat(),
        ),
        role(
            CRYPTO_USER,
            "Managed HSM Crypto User",
            "Create, use, back up and delete keys, and list deleted keys. Cannot recover or purge.",
            &[
                RoleDefinitionsRead,
                RoleAssignmentsRead,
                KeysRead,
                KeysWrite,
                KeysDelete,
                KeysCreate,
                KeysRotate,
                KeysImport,
                KeysRelease,
                KeysBackup,
                KeysRestore,
                KeysEncrypt,
                KeysDecrypt,
                KeysWrap,
                KeysUnwrap,
                KeysSign,
                KeysVerify,
                KeysDerive,
                DeletedKeysRead,
                Rng,
            ],
        ),
        role(
            POLICY_ADMINISTRATOR,
            "Managed HSM Policy Administrator",
            "Manage role assignments and definitions.",
            &role_admin,
        ),
        role(
            CRYPTO_AUDITOR,
            "Managed HSM Crypto Auditor",
            "Read keys, deleted keys, role assignments and definitions, settings and the audit log.",
            &[
                RoleAssignmentsRead,
                RoleDefinitionsRead,
                KeysRead,
                DeletedKeysRead,
                SettingsRead,
                AuditRead,
            ],
        ),
        role(
            CRYPTO_SERVICE_ENCRYPTION_USER,
            "Managed HSM Crypto Service Encryption User",
            "Read keys and wrap and unwrap with them.",
            &[KeysRead, KeysWrap, KeysUnwrap],
        ),
        role(
            CRYPTO_SERVICE_RELEASE_USER,
            "Managed HSM Crypto Service Release User",
            "Release keys.",
            &[KeysRelease],
        ),
        role(
            BACKUP,
            "Managed HSM Backup",
            "Start full backups, read their status, and back up single keys.",
            &[BackupStart, BackupStatus, KeysBackup],
        ),
    ]
}

/// Whether `assignments` (one principal's, resolved to their definitions) allow `action` on
/// `key`. No assignment means no access.
pub fn authorize<'a>(
    assignments: impl IntoIterator<Item = (&'a RoleAssignment, &'a RoleDefinition)>,
    action: Action,
    key: Option<&str>,
) -> bool {
    assignments
        .into_iter()
        .any(|(assignment, role)| assignment.scope.covers(key) && role.grants(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(scope: Scope, role: &str) -> RoleAssignment {
        RoleAssignment {
            name: "a".into(),
            scope,
            principal_id: "p".into(),
            role_definition: role.into(),
        }
    }

    fn role(id: &str) -> RoleDefinition {
        built_in_roles()
            .into_iter()
            .find(|r| r.name == id)
            .expect("a built-in role")
    }

    #[test]
    fn every_action_has_a_distinct_name_and_is_a_valid_pattern() {
        let mut names: Vec<String> = Action::ALL.iter().map(|a| a.name()).collect();
        for name in &names {
            assert!(is_valid_pattern(name), "{name}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
        assert!(is_valid_pattern("Microsoft.KeyVault/managedHsm/keys/*"));
        assert!(!is_valid_pattern(
            "Microsoft.KeyVault/managedHsm/keys/teleport/action"
        ));
        assert!(!is_valid_pattern(""));
    }

    #[test]
    fn separation_of_deletion_and_purge() {
        let user = role(CRYPTO_USER);
        let officer = role(CRYPTO_OFFICER);
        let admin = role(ADMINISTRATOR);
        assert!(user.grants(Action::KeysDelete));
        assert!(user.grants(Action::DeletedKeysRead));
        assert!(!user.grants(Action::DeletedKeysPurge));
        assert!(!user.grants(Action::DeletedKeysRecover));
        assert!(officer.grants(Action::DeletedKeysPurge));
        assert!(officer.grants(Action::DeletedKeysRecover));
        assert!(!officer.grants(Action::KeysSign));
        assert!(admin.grants(Action::SettingsWrite));
        assert!(!admin.grants(Action::KeysCreate));
        for other in built_in_roles().iter().filter(|r| r.name != ADMINISTRATOR) {
            assert!(!other.grants(Action::SettingsWrite), "{}", other.role_name);
        }
    }

    #[test]
    fn scopes_parse_and_cover() {
        assert_eq!(Scope::parse("/"), Some(Scope::Global));
        assert_eq!(Scope::parse("///"), Some(Scope::Global));
        assert_eq!(Scope::parse("/keys/"), Some(Scope::AllKeys));
        assert_eq!(Scope::parse("/keys/k1"), Some(Scope::Key("k1".into())));
        assert_eq!(Scope::parse("/keys/bad_name"), None);
        assert_eq!(Scope::parse("/secrets"), None);
        assert!(Scope::Key("K1".into()).covers(Some("k1")));
        assert!(!Scope::Key("k1".into()).covers(Some("k2")));
        assert!(!Scope::Key("k1".into()).covers(None));
        assert!(Scope::AllKeys.covers(None));
        assert_eq!(Scope::Key("Mine".into()), Scope::Key("mINE".into()));
        assert_ne!(Scope::Global, Scope::AllKeys);
    }

    #[test]
    fn no_assignment_means_no_access_and_scope_limits_a_grant() {
        let user = role(CRYPTO_USER);
        assert!(!authorize([], Action::KeysRead, Some("k")));
        let on_k = assignment(Scope::Key("k".into()), CRYPTO_USER);
        assert!(authorize([(&on_k, &user)], Action::KeysSign, Some("k")));
        assert!(!authorize([(&on_k, &user)], Action::KeysSign, Some("j")));
        assert!(!authorize([(&on_k, &user)], Action::Rng, None));
    }

    #[test]
    fn wildcards_and_exclusions() {
        let custom = RoleDefinition {
            name: "c".into(),
            role_name: "keys but not purge".into(),
            description: String::new(),
            role_type: RoleType::Custom,
            permissions: vec![Permission {
                data_actions: vec!["microsoft.keyvault/managedHsm/keys/*".into()],
                not_data_actions: vec![Action::DeletedKeysPurge.name()],
                ..Permission::default()
            }],
            assignable_scopes: vec!["/keys".into()],
        };
        assert!(custom.grants(Action::KeysSign));
        assert!(custom.grants(Action::DeletedKeysRecover));
        assert!(!custom.grants(Action::DeletedKeysPurge));
        assert!(!custom.grants(Action::Rng));
        assert!(custom.assignable_at(&Scope::Key("k".into())));
        assert!(!custom.assignable_at(&Scope::Global));
    }
}
