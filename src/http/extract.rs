//! Extractors whose rejections are Azure error bodies: a JSON body with a size limit, path
//! parameters, and the query string.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use bytes::BytesMut;
use http_body_util::BodyExt;
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

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(crate::config::DEFAULT_MAX_BODY);
        let bytes = read_limited(req.into_body(), limit).await?;
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

/// The most a refused request body is read and thrown away before the connection is given up.
/// A client that writes its whole body before reading the answer (most do) would otherwise see
/// a reset instead of the 413 or 401 it was sent.
pub const DRAIN_CAP: usize = 64 * 1024 * 1024;

/// Reads a body of at most `limit` bytes. A longer body is read to its end (up to
/// [`DRAIN_CAP`]) and thrown away, and the answer is a 413.
pub async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, Error> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| Error::BadParameter("The request body could not be read.".into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            discard(body, DRAIN_CAP.saturating_sub(collected.len() + data.len())).await;
            return Err(Error::PayloadTooLarge { limit });
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

/// Reads and throws away at most `cap` more bytes of a body the answer does not need.
pub async fn discard(mut body: Body, cap: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > cap {
                return;
            }
        }
    }
}

/// The configured body limit, put into each request's extensions by the router so the
/// extractor can name it in its error.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// The query string (decoded as [`super::query`] says).
pub use super::query::AzQuery;

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
