//! `GET /p11vault/audit`: the audit records a Crypto Auditor may read, as JSON lines (one
//! stored record per line, unchanged, so a SIEM can check the chain itself). Not part of the
//! Azure API; the admin CLI's `audit show` reads it.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::AzQuery;
use crate::audit::Filter;
use crate::error::Error;

/// Records per answer unless the caller asks for fewer.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

pub async fn read(
    State(state): State<AppState>,
    AzQuery(query): AzQuery,
) -> Result<Response, Error> {
    let time = |field: &str| -> Result<Option<String>, Error> {
        query
            .get(field)?
            .map(|raw| {
                crate::clock::parse_time(raw)
                    .map(|secs| crate::clock::rfc3339_millis(secs * 1000))
                    .ok_or_else(|| {
                        Error::BadParameter(format!(
                            "'{field}' must be a date (2026-11-21), a UTC time (2026-11-21T10:00:00Z) or Unix seconds."
                        ))
                    })
            })
            .transpose()
    };
    let number = |field: &str| -> Result<Option<u64>, Error> {
        query
            .get(field)?
            .map(|raw| {
                raw.parse::<u64>().map_err(|_| {
                    Error::BadParameter(format!("'{field}' must be a non-negative integer."))
                })
            })
            .transpose()
    };
    let limit = number("limit")?.map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let filter = Filter {
        since: time("since")?,
        until: time("until")?,
        principal: query.get("principal")?.map(str::to_owned),
        key: query.get("key")?.map(str::to_owned),
        action: query.get("action")?.map(str::to_owned),
        outcome: query.get("outcome")?.map(str::to_owned),
        after_seq: number("after")?,
    };
    let path = state.audit_path.clone();
    let lines = tokio::task::spawn_blocking(move || crate::audit::read(&path, &filter, limit))
        .await
        .map_err(|e| Error::Internal(format!("the audit reader panicked: {e}")))?
        .map_err(|e| Error::Internal(format!("cannot read the audit log: {e}")))?;
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
