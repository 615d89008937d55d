//! `GET` and `PUT /keys/{name}/rotationpolicy`: a key's rotation policy in Azure's
//! `KeyRotationPolicy` shape, and the wire-level rules of Managed HSM's policies (the Rotate
//! action only, at most one, one trigger each). The interval limits are `model::RotationPolicy`'s.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{AzJson, AzPath};
use crate::error::Error;
use crate::model::{IsoDuration, KeyName, PolicyRecord, RotationPolicy, RotationTrigger};

// ----- request body -----------------------------------------------------------------------

/// `KeyRotationPolicy` as a client sends it. `id`, `created` and `updated` are read-only and
/// ignored (a client may send back a policy it read).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyIn {
    lifetime_actions: Option<Vec<LifetimeActionIn>>,
    attributes: Option<PolicyAttributesIn>,
}

#[derive(Deserialize)]
struct LifetimeActionIn {
    trigger: Option<TriggerIn>,
    action: Option<ActionIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TriggerIn {
    time_after_create: Option<String>,
    time_before_expiry: Option<String>,
}

#[derive(Deserialize)]
struct ActionIn {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyAttributesIn {
    expiry_time: Option<String>,
}

/// The policy a request asks for, or a 400 saying what Managed HSM would refuse.
fn policy_from(body: PolicyIn) -> Result<RotationPolicy, Error> {
    let actions = body.lifetime_actions.unwrap_or_default();
    let mut trigger = None;
    for action in &actions {
        let kind = action.action.as_ref().and_then(|a| a.kind.as_deref());
        match kind {
            Some(k) if k.eq_ignore_ascii_case("rotate") => {}
            Some(k) if k.eq_ignore_ascii_case("notify") => {
                return Err(Error::BadParameter(
                    "Managed HSM supports only the Rotate lifetime action: Notify sends Event Grid notifications near expiry, which only Key Vault offers.".into(),
                ));
            }
            Some(k) => {
                return Err(Error::BadParameter(format!(
                    "The lifetime action type '{}' is unknown; Managed HSM supports Rotate.",
                    crate::model::truncate_for_message(k)
                )));
            }
            None => {
                return Err(Error::BadParameter(
                    "A lifetime action lacks its 'action': {\"type\": \"Rotate\"}.".into(),
                ));
            }
        }
        trigger = Some(trigger_from(action.trigger.as_ref())?);
    }
    if actions.len() > 1 {
        return Err(Error::BadParameter(format!(
            "A Managed HSM rotation policy has at most one lifetime action (Rotate); this one has {}.",
            actions.len()
        )));
    }
    let expiry = body
        .attributes
        .and_then(|a| a.expiry_time)
        .filter(|e| !e.is_empty())
        .map(|e| duration("expiryTime", &e))
        .transpose()?;
    Ok(RotationPolicy::new(trigger, expiry)?)
}

/// The one trigger of a Rotate action. An empty string counts as absent (as a `null` does).
fn trigger_from(trigger: Option<&TriggerIn>) -> Result<RotationTrigger, Error> {
    let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let (after, before) = match trigger {
        Some(t) => (given(&t.time_after_create), given(&t.time_before_expiry)),
        None => (None, None),
    };
    match (after, before) {
        (Some(a), None) => Ok(RotationTrigger::AfterCreate(duration("timeAfterCreate", &a)?)),
        (None, Some(b)) => Ok(RotationTrigger::BeforeExpiry(duration(
            "timeBeforeExpiry",
            &b,
        )?)),
        (Some(_), Some(_)) => Err(Error::BadParameter(
            "A trigger has either 'timeAfterCreate' or 'timeBeforeExpiry', not both.".into(),
        )),
        (None, None) => Err(Error::BadParameter(
            "The Rotate action needs a trigger: 'timeAfterCreate' or 'timeBeforeExpiry', an ISO 8601 duration.".into(),
        )),
    }
}

fn duration(field: &str, raw: &str) -> Result<IsoDuration, Error> {
    IsoDuration::parse(raw).map_err(|e| Error::BadParameter(format!("{field}: {e}")))
}

// ----- response body ----------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOut {
    id: String,
    lifetime_actions: Vec<LifetimeActionOut>,
    attributes: PolicyAttributesOut,
}

#[derive(Serialize)]
struct LifetimeActionOut {
    trigger: TriggerOut,
    action: ActionOut,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    time_after_create: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_before_expiry: Option<String>,
}

#[derive(Serialize)]
struct ActionOut {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyAttributesOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated: Option<i64>,
}

/// A key's policy as Azure shows it. A key that never had one shows the empty default policy
/// (no action, no expiry), as the service does rather than a 404.
fn policy_out(state: &AppState, name: &KeyName, record: Option<&PolicyRecord>) -> PolicyOut {
    let policy = record.map(|r| &r.policy);
    let lifetime_actions = policy
        .and_then(RotationPolicy::trigger)
        .map(|t| LifetimeActionOut {
            trigger: match t {
                RotationTrigger::AfterCreate(d) => TriggerOut {
                    time_after_create: Some(d.as_str().to_owned()),
                    time_before_expiry: None,
                },
                RotationTrigger::BeforeExpiry(d) => TriggerOut {
                    time_after_create: None,
                    time_before_expiry: Some(d.as_str().to_owned()),
                },
            },
            action: ActionOut { kind: "Rotate" },
        })
        .into_iter()
        .collect();
    PolicyOut {
        id: format!("{}/keys/{name}/rotationpolicy", state.public_url),
        lifetime_actions,
        attributes: PolicyAttributesOut {
            expiry_time: policy
                .and_then(RotationPolicy::expiry)
                .map(|e| e.as_str().to_owned()),
            created: record.map(|r| r.created),
            updated: record.map(|r| r.updated),
        },
    }
}

// ----- handlers ---------------------------------------------------------------------------

pub async fn get_policy(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
) -> Result<Json<PolicyOut>, Error> {
    let name = KeyName::parse(&name)?;
    let (name, record) = state.keys.rotation_policy(&name).await?;
    Ok(Json(policy_out(&state, &name, record.as_ref())))
}

pub async fn put_policy(
    State(state): State<AppState>,
    AzPath(name): AzPath<String>,
    AzJson(body): AzJson<PolicyIn>,
) -> Result<Json<PolicyOut>, Error> {
    let name = KeyName::parse(&name)?;
    let policy = policy_from(body)?;
    let (name, record) = state.keys.set_rotation_policy(name, policy).await?;
    Ok(Json(policy_out(&state, &name, Some(&record))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: serde_json::Value) -> Result<RotationPolicy, Error> {
        policy_from(serde_json::from_value(body).expect("the shape"))
    }

    fn refused(body: serde_json::Value) -> String {
        match parse(body.clone()) {
            Err(Error::BadParameter(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn what_the_sdks_send_is_read() {
        use serde_json::json;
        let empty = parse(json!({"lifetimeActions": [], "attributes": {}})).expect("blank");
        assert_eq!(empty, RotationPolicy::default());
        assert_eq!(
            parse(json!({})).expect("nothing"),
            RotationPolicy::default()
        );
        let policy = parse(json!({
            "id": "https://h/keys/k/rotationpolicy",
            "lifetimeActions": [{"trigger": {"timeAfterCreate": "P18M", "timeBeforeExpiry": null},
                                 "action": {"type": "rotate"}}],
            "attributes": {"expiryTime": "P2Y", "created": 1, "updated": 2}
        }))
        .expect("the docs' first example, read back with its read-only fields");
        assert!(
            matches!(policy.trigger(), Some(RotationTrigger::AfterCreate(d)) if d.as_str() == "P18M")
        );
        assert_eq!(policy.expiry().map(IsoDuration::as_str), Some("P2Y"));
        let before = parse(json!({
            "lifetimeActions": [{"trigger": {"timeAfterCreate": "", "timeBeforeExpiry": "P28D"},
                                 "action": {"type": "Rotate"}}],
            "attributes": {"expiryTime": "P1Y"}
        }))
        .expect("the docs' second example");
        assert!(matches!(
            before.trigger(),
            Some(RotationTrigger::BeforeExpiry(_))
        ));
    }

    #[test]
    fn managed_hsm_refusals_say_why() {
        use serde_json::json;
        let rotate =
            |trigger: serde_json::Value| json!({"trigger": trigger, "action": {"type": "Rotate"}});
        for (body, says) in [
            (
                json!({"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}]}),
                "only the Rotate",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P90D"})),
                                           {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "notify"}}]}),
                "only the Rotate",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P90D"})),
                                           rotate(json!({"timeAfterCreate": "P60D"}))]}),
                "at most one",
            ),
            (
                json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Delete"}}]}),
                "unknown",
            ),
            (
                json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}}]}),
                "lacks its 'action'",
            ),
            (
                json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {}}]}),
                "lacks its 'action'",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({}))]}),
                "needs a trigger",
            ),
            (
                json!({"lifetimeActions": [{"action": {"type": "Rotate"}}]}),
                "needs a trigger",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P90D", "timeBeforeExpiry": "P30D"}))]}),
                "not both",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "90 days"}))]}),
                "timeAfterCreate: '90 days' is not an ISO 8601",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P7D"}))]}),
                "shorter than 28 days",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeBeforeExpiry": "P30D"}))]}),
                "needs the policy's expiryTime",
            ),
            (
                json!({"lifetimeActions": [rotate(json!({"timeBeforeExpiry": "P30D"}))], "attributes": {"expiryTime": "P56D"}}),
                "minus 28 days",
            ),
            (
                json!({"attributes": {"expiryTime": "P27D"}}),
                "shorter than 28 days",
            ),
            (
                json!({"attributes": {"expiryTime": "P1Q"}}),
                "expiryTime: 'P1Q'",
            ),
        ] {
            let message = refused(body.clone());
            assert!(message.contains(says), "{body}: {message}");
        }
    }
}
