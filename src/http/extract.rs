//! Extractors whose rejections are Azure error bodies: a JSON body with a size limit, and the
//! query string as a map.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// A JSON request body. Malformed JSON or a wrong shape is a 400; a body over the limit a 413.
pub struct AzJson<T>(pub T);

impl<S, T> FromRequest<S> for AzJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(crate::config::DEFAULT_MAX_BODY);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge { limit }
            } else {
                Error::BadParameter("The request body could not be read.".into())
            }
        })?;
        if bytes.is_empty() {
            return Err(Error::BadParameter(
                "The request body is missing; a JSON object is required.".into(),
            ));
        }
        serde_json::from_slice(&bytes).map(AzJson).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "is not valid JSON"
            } else {
                "does not have the expected shape"
            };
            Error::BadParameter(format!("The request body {what}: {e}."))
        })
    }
}

/// The configured body limit, put into each request's extensions by the router so the
/// extractor can name it in its error.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// The query string as a map; a string that cannot be decoded is a 400.
pub struct AzQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for AzQuery {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(map)| AzQuery(map))
            .map_err(|_| Error::BadParameter("The query string could not be decoded.".into()))
    }
}

/// Path parameters; a segment that cannot be decoded is a 400.
pub struct AzPath<T>(pub T);

impl<S, T> FromRequestParts<S> for AzPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| AzPath(v))
            .map_err(|_| Error::BadParameter("A path segment could not be decoded.".into()))
    }
}
