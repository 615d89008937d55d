//! The settings endpoints of Managed HSM (settings.json). Besides Azure's one known setting,
//! `EnablePurgeProtection` switches purge protection on; nothing switches it off.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{AzJson, AzPath};
use crate::error::{Error, Reason};

const PURGE_PROTECTION: &str = "EnablePurgeProtection";
const ARM_OPERATIONS: &str = "AllowKeyManagementOperationsThroughARM";

#[derive(Serialize)]
pub struct SettingOut {
    name: &'static str,
    value: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
pub struct SettingsOut {
    settings: Vec<SettingOut>,
}

#[derive(Deserialize)]
pub struct SettingIn {
    value: Option<String>,
}

async fn current(state: &AppState) -> Result<Vec<SettingOut>, Error> {
    let protected = state.keys.refresh_purge_protection().await?;
    Ok(vec![
        SettingOut {
            name: ARM_OPERATIONS,
            value: "false".into(),
            kind: "boolean",
        },
        SettingOut {
            name: PURGE_PROTECTION,
            value: protected.to_string(),
            kind: "boolean",
        },
    ])
}

fn unknown(name: &str) -> Error {
    Error::BadParameter(format!(
        "There is no setting named '{}'; known settings: {ARM_OPERATIONS}, {PURGE_PROTECTION}.",
        crate::model::truncate_for_message(name)
    ))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<SettingsOut>, Error> {
    Ok(Json(SettingsOut {
        settings: current(&state).await?,
    }))
}

pub async fn get_one(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<SettingOut>, Error> {
    current(&state)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(Json)
        .ok_or_else(|| unknown(&name))
}

pub async fn update(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzJson(body): AzJson<SettingIn>,
) -> Result<Json<SettingOut>, Error> {
    let value = body
        .value
        .ok_or_else(|| Error::BadParameter("The request lacks the setting's 'value'.".into()))?;
    let wanted = match value.to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(Error::BadParameter(format!(
                "The value of a boolean setting is \"true\" or \"false\", not '{}'.",
                crate::model::truncate_for_message(&value)
            )));
        }
    };
    match name.as_str() {
        PURGE_PROTECTION => {
            let on = state.keys.refresh_purge_protection().await?;
            match (on, wanted) {
                (_, true) => state.keys.enable_purge_protection().await?,
                (true, false) => {
                    return Err(Error::Forbidden {
                        message: "Purge protection cannot be disabled once it is enabled.".into(),
                        inner: Some(Reason::PurgeProtectionCannotBeDisabled),
                    });
                }
                (false, false) => {}
            }
        }
        ARM_OPERATIONS if !wanted => {}
        ARM_OPERATIONS => {
            return Err(Error::BadParameter(
                "This service has no Azure Resource Manager: AllowKeyManagementOperationsThroughARM stays false.".into(),
            ));
        }
        other => return Err(unknown(other)),
    }
    get_one(State(state), AzPath(name)).await
}
