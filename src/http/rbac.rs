//! The role definitions and role assignments endpoints of rbac.json, at scopes `/`, `/keys` and
//! `/keys/{name}`, in the shapes `KeyVaultAccessControlClient` reads.

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{AzJson, AzPath, AzQuery};
use crate::access::RoleDefinitionInput;
use crate::auth::roles::{Permission, RoleAssignment, RoleDefinition, Scope};
use crate::error::Error;
use crate::model::truncate_for_message;

const DEFINITION_PREFIX: &str =
    "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/";

/// The scope a request's path names: the part before `/providers/Microsoft.Authorization`.
pub struct RbacScope(pub Scope);

impl<S: Send + Sync> FromRequestParts<S> for RbacScope {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::BadParameter("The path could not be read.".into()))?;
        scope_of(&route, &params).map(RbacScope)
    }
}

/// The scope of an RBAC route, given its template and parameters.
pub fn scope_of(route: &str, params: &RawPathParams) -> Result<Scope, Error> {
    if route.starts_with("/keys/{scope_key}/") {
        let key = params
            .iter()
            .find(|(k, _)| *k == "scope_key")
            .map(|(_, v)| v)
            .unwrap_or_default();
        Scope::parse(&format!("/keys/{key}")).ok_or_else(|| {
            Error::BadParameter(format!(
                "'{}' is not a valid key name for a scope.",
                truncate_for_message(key)
            ))
        })
    } else if route.starts_with("/keys/") {
        Ok(Scope::AllKeys)
    } else {
        Ok(Scope::Global)
    }
}

#[derive(Serialize)]
pub struct ListOut<T> {
    value: Vec<T>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionProperties {
    role_name: String,
    description: String,
    #[serde(rename = "type")]
    role_type: &'static str,
    permissions: Vec<Permission>,
    assignable_scopes: Vec<String>,
}

#[derive(Serialize)]
pub struct DefinitionOut {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    properties: DefinitionProperties,
}

impl From<RoleDefinition> for DefinitionOut {
    fn from(role: RoleDefinition) -> Self {
        Self {
            id: format!("{DEFINITION_PREFIX}{}", role.name),
            name: role.name,
            kind: "Microsoft.Authorization/roleDefinitions",
            properties: DefinitionProperties {
                role_name: role.role_name,
                description: role.description,
                role_type: role.role_type.as_str(),
                permissions: role.permissions,
                assignable_scopes: role.assignable_scopes,
            },
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentProperties {
    scope: String,
    role_definition_id: String,
    principal_id: String,
}

#[derive(Serialize)]
pub struct AssignmentOut {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    properties: AssignmentProperties,
}

impl From<RoleAssignment> for AssignmentOut {
    fn from(a: RoleAssignment) -> Self {
        let prefix = match &a.scope {
            Scope::Global => String::new(),
            other => other.to_string(),
        };
        Self {
            id: format!(
                "{prefix}/providers/Microsoft.Authorization/roleAssignments/{}",
                a.name
            ),
            name: a.name,
            kind: "Microsoft.Authorization/roleAssignments",
            properties: AssignmentProperties {
                scope: a.scope.to_string(),
                role_definition_id: format!("{DEFINITION_PREFIX}{}", a.role_definition),
                principal_id: a.principal_id,
            },
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionPropertiesIn {
    role_name: Option<String>,
    description: Option<String>,
    #[serde(rename = "type")]
    role_type: Option<String>,
    permissions: Option<Vec<Permission>>,
    assignable_scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub struct DefinitionIn {
    properties: Option<DefinitionPropertiesIn>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentPropertiesIn {
    role_definition_id: Option<String>,
    principal_id: Option<String>,
}

#[derive(Deserialize)]
pub struct AssignmentIn {
    properties: Option<AssignmentPropertiesIn>,
}

/// Reads `name eq 'value'` out of a `$filter`; the only other form accepted is `atScope()`.
fn filter_value<'a>(filter: &'a str, field: &str) -> Option<&'a str> {
    let rest = filter.trim().strip_prefix(field)?.trim_start();
    let rest = rest.strip_prefix("eq")?.trim();
    rest.strip_prefix('\'')?.strip_suffix('\'')
}

fn bad_filter(filter: &str) -> Error {
    Error::BadParameter(format!(
        "The filter '{}' is not supported.",
        truncate_for_message(filter)
    ))
}

pub async fn list_definitions(
    State(state): State<AppState>,
    RbacScope(_scope): RbacScope,
    AzQuery(query): AzQuery,
) -> Result<Json<ListOut<DefinitionOut>>, Error> {
    let role_name = match query.get("$filter")? {
        None => None,
        Some(f) => Some(filter_value(f, "roleName").ok_or_else(|| bad_filter(f))?),
    };
    Ok(Json(ListOut {
        value: state
            .access
            .role_definitions(role_name)?
            .into_iter()
            .map(DefinitionOut::from)
            .collect(),
        next_link: None,
    }))
}

pub async fn get_definition(
    State(state): State<AppState>,
    RbacScope(_scope): RbacScope,
    AzPath(name): AzPath<Vec<(String, String)>>,
) -> Result<Json<DefinitionOut>, Error> {
    let name = param(&name, "definition")?;
    Ok(Json(state.access.role_definition(name)?.into()))
}

pub async fn put_definition(
    State(state): State<AppState>,
    RbacScope(scope): RbacScope,
    AzPath(name): AzPath<Vec<(String, String)>>,
    AzJson(body): AzJson<DefinitionIn>,
) -> Result<(StatusCode, Json<DefinitionOut>), Error> {
    let name = param(&name, "definition")?;
    let p = body.properties.unwrap_or_default();
    let role = state
        .access
        .put_role_definition(
            &scope,
            name,
            RoleDefinitionInput {
                role_name: p.role_name,
                description: p.description,
                role_type: p.role_type,
                permissions: p.permissions,
                assignable_scopes: p.assignable_scopes,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(role.into())))
}

pub async fn delete_definition(
    State(state): State<AppState>,
    RbacScope(_scope): RbacScope,
    AzPath(name): AzPath<Vec<(String, String)>>,
) -> Result<Json<DefinitionOut>, Error> {
    let name = param(&name, "definition")?;
    Ok(Json(
        state.access.delete_role_definition(name).await?.into(),
    ))
}

pub async fn list_assignments(
    State(state): State<AppState>,
    RbacScope(scope): RbacScope,
    AzQuery(query): AzQuery,
) -> Result<Json<ListOut<AssignmentOut>>, Error> {
    let (at_scope, principal) = match query.get("$filter")?.map(|f| f.trim()) {
        None => (false, None),
        Some("atScope()") => (true, None),
        Some(f) => (
            false,
            Some(filter_value(f, "principalId").ok_or_else(|| bad_filter(f))?),
        ),
    };
    Ok(Json(ListOut {
        value: state
            .access
            .role_assignments(&scope, at_scope, principal)?
            .into_iter()
            .map(AssignmentOut::from)
            .collect(),
        next_link: None,
    }))
}

pub async fn get_assignment(
    State(state): State<AppState>,
    RbacScope(scope): RbacScope,
    AzPath(name): AzPath<Vec<(String, String)>>,
) -> Result<Json<AssignmentOut>, Error> {
    let name = param(&name, "assignment")?;
    Ok(Json(state.access.role_assignment(&scope, name)?.into()))
}

pub async fn put_assignment(
    State(state): State<AppState>,
    RbacScope(scope): RbacScope,
    AzPath(name): AzPath<Vec<(String, String)>>,
    AzJson(body): AzJson<AssignmentIn>,
) -> Result<(StatusCode, Json<AssignmentOut>), Error> {
    let name = param(&name, "assignment")?;
    let p = body.properties.unwrap_or_default();
    let assignment = state
        .access
        .create_role_assignment(
            &scope,
            name,
            p.role_definition_id.as_deref(),
            p.principal_id.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(assignment.into())))
}

pub async fn delete_assignment(
    State(state): State<AppState>,
    RbacScope(scope): RbacScope,
    AzPath(name): AzPath<Vec<(String, String)>>,
) -> Result<Json<AssignmentOut>, Error> {
    let name = param(&name, "assignment")?;
    Ok(Json(
        state
            .access
            .delete_role_assignment(&scope, name)
            .await?
            .into(),
    ))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, Error> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| Error::BadParameter(format!("The path lacks the {name} name.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_read() {
        assert_eq!(
            filter_value("principalId eq 'abc'", "principalId"),
            Some("abc")
        );
        assert_eq!(
            filter_value("roleName eq 'Managed HSM Crypto User'", "roleName"),
            Some("Managed HSM Crypto User")
        );
        assert_eq!(filter_value("roleName ne 'x'", "roleName"), None);
        assert_eq!(filter_value("principalId eq abc", "principalId"), None);
    }
}
