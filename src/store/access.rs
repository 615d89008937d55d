//! Access data: principals with their token hashes, custom role definitions and role
//! assignments, stored for the access-control service (`auth` defines the rows).

use rusqlite::{Transaction, params};

use super::{Error, Result, Store, from_json, to_json};
use crate::auth::PrincipalRow;
use crate::auth::roles::{RoleAssignment, RoleDefinition, RoleType, Scope};

impl Store {
    // ----- principals -----------------------------------------------------------------------

    /// Registers a principal together with its first role assignments, in one transaction.
    pub fn insert_principal(
        &self,
        row: &PrincipalRow,
        assignments: &[RoleAssignment],
        now: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO principals(id, name, token_hash, enabled, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.name, row.token_hash, row.enabled, now],
            )?;
            for a in assignments {
                insert_assignment(tx, a, now)?;
            }
            Ok(())
        })
    }

    pub fn principals(&self) -> Result<Vec<PrincipalRow>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, token_hash, enabled, created FROM principals ORDER BY created, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PrincipalRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    token_hash: r.get(2)?,
                    enabled: r.get(3)?,
                    created: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Enables or disables a principal; false if there is none with that id.
    pub fn set_principal_enabled(&self, id: &str, enabled: bool) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE principals SET enabled = ?2 WHERE id = ?1",
                params![id, enabled],
            )? == 1)
        })
    }

    /// Replaces a principal's token hash; false if there is none with that id.
    pub fn set_principal_token(&self, id: &str, token_hash: &[u8]) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE principals SET token_hash = ?2 WHERE id = ?1",
                params![id, token_hash],
            )? == 1)
        })
    }

    /// Removes a principal and every role assignment it holds; false if there is none.
    pub fn delete_principal(&self, id: &str) -> Result<bool> {
        self.write(|tx| {
            tx.execute("DELETE FROM role_assignments WHERE principal_id = ?1", [id])?;
            Ok(tx.execute("DELETE FROM principals WHERE id = ?1", [id])? == 1)
        })
    }

    // ----- role definitions and assignments -------------------------------------------------

    /// The custom role definitions (built-in ones live in the code).
    pub fn custom_roles(&self) -> Result<Vec<RoleDefinition>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, role_name, description, permissions, assignable_scopes
                 FROM role_definitions ORDER BY created, name",
            )?;
            let rows = stmt.query_map([], |r| {
                let permissions: String = r.get(3)?;
                let scopes: String = r.get(4)?;
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, permissions, scopes))
            })?;
            rows.map(|row| {
                let (name, role_name, description, permissions, scopes) = row?;
                Ok(RoleDefinition {
                    name,
                    role_name,
                    description,
                    role_type: RoleType::Custom,
                    permissions: from_json(&permissions, "role permissions")?,
                    assignable_scopes: from_json(&scopes, "assignable scopes")?,
                })
            })
            .collect()
        })
    }

    /// Creates or replaces a custom role definition.
    pub fn put_custom_role(&self, role: &RoleDefinition, now: i64) -> Result<()> {
        let permissions = to_json(&role.permissions)?;
        let scopes = to_json(&role.assignable_scopes)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO role_definitions(name, role_name, description, permissions, assignable_scopes, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT(name) DO UPDATE SET role_name = excluded.role_name,
                    description = excluded.description, permissions = excluded.permissions,
                    assignable_scopes = excluded.assignable_scopes, updated = excluded.updated",
                params![role.name, role.role_name, role.description, permissions, scopes, now],
            )?;
            Ok(())
        })
    }

    /// Removes a custom role definition unless an assignment uses it.
    pub fn delete_custom_role(&self, name: &str) -> Result<RoleRemoval> {
        self.write(|tx| {
            let in_use: i64 = tx.query_row(
                "SELECT count(*) FROM role_assignments WHERE role_definition = ?1",
                [name],
                |r| r.get(0),
            )?;
            if in_use > 0 {
                return Ok(RoleRemoval::InUse(in_use as u64));
            }
            Ok(
                match tx.execute("DELETE FROM role_definitions WHERE name = ?1", [name])? {
                    0 => RoleRemoval::NotFound,
                    _ => RoleRemoval::Removed,
                },
            )
        })
    }

    pub fn role_assignments(&self) -> Result<Vec<RoleAssignment>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, scope, principal_id, role_definition FROM role_assignments
                 ORDER BY created, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            rows.map(|row| {
                let (name, scope, principal_id, role_definition) = row?;
                Ok(RoleAssignment {
                    scope: Scope::parse(&scope).ok_or_else(|| {
                        Error::Corrupt(format!("role assignment scope {scope:?}"))
                    })?,
                    name,
                    principal_id,
                    role_definition,
                })
            })
            .collect()
        })
    }

    /// Adds an assignment; false (and nothing written) if its name is taken.
    pub fn insert_role_assignment(&self, assignment: &RoleAssignment, now: i64) -> Result<bool> {
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM role_assignments WHERE name = ?1)",
                [&assignment.name],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(false);
            }
            insert_assignment(tx, assignment, now)?;
            Ok(true)
        })
    }

    /// Removes an assignment by name; false if there is none.
    pub fn delete_role_assignment(&self, name: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute("DELETE FROM role_assignments WHERE name = ?1", [name])? == 1)
        })
    }
}

/// What removing a custom role definition did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleRemoval {
    Removed,
    NotFound,
    /// Assignments still use it; nothing was removed.
    InUse(u64),
}

fn insert_assignment(tx: &Transaction, a: &RoleAssignment, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO role_assignments(name, scope, principal_id, role_definition, created)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            a.name,
            a.scope.to_string(),
            a.principal_id,
            a.role_definition,
            now
        ],
    )?;
    Ok(())
}
