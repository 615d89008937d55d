//! The request URL as the Azure front ends read it (ARCHITECTURE "Decisions": the wire).
//!
//! Query strings: names and values are percent-decoded exactly once (RFC 3986 §2.1, so the JS
//! SDK's `api%2Dversion` is `api-version` and `%24skiptoken` is `$skiptoken`), `+` is a space
//! (HTML form encoding, which .NET and the WHATWG URL parser apply and clients that form-encode
//! rely on), names match ASCII-case-insensitively (the .NET query collection does), a
//! parameter the service does not read is ignored, and one it reads that appears more than
//! once with different values is a 400 — the service never guesses which one a client meant.
//! A malformed escape or a name or value that is not UTF-8 is a 400 too.
//!
//! Paths: before routing, a percent-encoded unreserved character (`ALPHA DIGIT - . _ ~`) is
//! replaced by the character itself, the normalisation RFC 3986 §6.2.2.2 allows, so
//! `/keys/my%2Dkey/%63reate` is the route `/keys/{name}/create` with the name `my-key`. Every
//! other escape is left for the router's one decoding of each path parameter (`%252D` stays
//! the text `%2D`, which no key name may contain; `%2F` stays inside its segment).

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::uri::{PathAndQuery, Uri};

use crate::error::Error;
use crate::model::truncate_for_message;

/// A decoded query string: every `name=value` pair in the order sent.
#[derive(Clone, Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Decodes a raw query string (without the `?`). Empty pieces (`a=1&&b=2`) are skipped; a
    /// piece without `=` is a name with an empty value.
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for piece in raw.unwrap_or_default().split('&') {
            if piece.is_empty() {
                continue;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, if given. Given twice with the same value it is that value; with
    /// different values, a 400.
    pub fn get(&self, name: &str) -> Result<Option<&str>, Error> {
        let mut found: Option<&str> = None;
        for (k, v) in &self.pairs {
            if !k.eq_ignore_ascii_case(name) {
                continue;
            }
            match found {
                Some(earlier) if earlier != v => {
                    return Err(Error::BadParameter(format!(
                        "The query parameter '{name}' is given more than once with different values ('{}' and '{}'); give it once.",
                        truncate_for_message(earlier),
                        truncate_for_message(v)
                    )));
                }
                _ => found = Some(v),
            }
        }
        Ok(found)
    }
}

/// Percent-decodes one name or value, `+` as a space.
fn decode(component: &str) -> Result<String, Error> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?))
                    .ok_or_else(|| {
                        Error::BadParameter(format!(
                            "The query string is malformed: '{}' has a '%' that is not followed by two hexadecimal digits.",
                            truncate_for_message(component)
                        ))
                    })?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        Error::BadParameter(format!(
            "The query string is malformed: '{}' does not decode to UTF-8 text.",
            truncate_for_message(component)
        ))
    })
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// The query string of a request as handlers read it. The api-version check decodes it first
/// and leaves the result on the request, so it is decoded once per request.
pub struct AzQuery(pub QueryParams);

impl<S: Send + Sync> FromRequestParts<S> for AzQuery {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<QueryParams>() {
            Some(query) => Ok(AzQuery(query.clone())),
            None => QueryParams::parse(parts.uri.query()).map(AzQuery),
        }
    }
}

/// Replaces every percent-encoded unreserved character of the path by itself, before routing.
pub fn normalize_path(mut req: Request) -> Request {
    if let Some(path) = decode_unreserved(req.uri().path()) {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// The path with its encoded unreserved characters decoded, or `None` if it has none. A `%`
/// that starts no escape is written `%25`, so that what follows it can never be decoded a
/// second time by the router (`%%32%44` must not become `-`).
fn decode_unreserved(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?));
        match escaped {
            Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(b);
                changed = true;
            }
            Some(_) => out.extend_from_slice(&bytes[i..i + 3]),
            None => {
                out.extend_from_slice(b"%25");
                changed = true;
                i += 1;
                continue;
            }
        }
        i += 3;
    }
    // Only ASCII was replaced by ASCII, so the rest of the path is as valid UTF-8 as before.
    changed.then(|| String::from_utf8(out).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> QueryParams {
        QueryParams::parse(Some(raw)).expect("parses")
    }

    #[test]
    fn a_path_is_decoded_once_even_around_a_lone_percent() {
        assert_eq!(
            decode_unreserved("/keys/my%2Dkey").as_deref(),
            Some("/keys/my-key")
        );
        assert_eq!(
            decode_unreserved("/keys/a%2Fb"),
            None,
            "reserved stays escaped"
        );
        assert_eq!(
            decode_unreserved("/keys/my%%32%44key").as_deref(),
            Some("/keys/my%252Dkey"),
            "the lone % is escaped, so the router cannot make a - of it"
        );
        assert_eq!(decode_unreserved("/keys/%C3%A9t%C3%A9"), None);
        assert_eq!(
            decode_unreserved("/keys/été%2D1").as_deref(),
            Some("/keys/été-1"),
            "raw UTF-8 survives"
        );
    }

    #[test]
    fn names_and_values_are_decoded_once() {
        let q = parse("api%2Dversion=2025%2D07%2D01&%24skiptoken=YWJj&%24top=3&maxresults=2");
        assert_eq!(q.get("api-version").expect("one"), Some("2025-07-01"));
        assert_eq!(q.get("$skiptoken").expect("one"), Some("YWJj"));
        assert_eq!(q.get("$top").expect("one"), Some("3"));
        assert_eq!(q.get("maxresults").expect("one"), Some("2"));
        // Once: an encoded '%' stays a '%'.
        let q = parse("api%252Dversion=7.4");
        assert_eq!(q.get("api-version").expect("none"), None);
        assert_eq!(q.get("api%2Dversion").expect("one"), Some("7.4"));
        // Lower-case hex, '+' as a space, an encoded '+'.
        let q = parse("%24filter=principalId+eq+%27a%2bb%27&api%2dversion=7.4");
        assert_eq!(q.get("$filter").expect("one"), Some("principalId eq 'a+b'"));
        assert_eq!(q.get("api-version").expect("one"), Some("7.4"));
    }

    #[test]
    fn names_match_case_insensitively() {
        let q = parse("API-Version=7.4&MaxResults=5");
        assert_eq!(q.get("api-version").expect("one"), Some("7.4"));
        assert_eq!(q.get("maxresults").expect("one"), Some("5"));
    }

    #[test]
    fn duplicates_with_different_values_are_refused_only_when_read() {
        let q = parse("api-version=7.4&api%2Dversion=7.4&maxresults=1&MAXRESULTS=2&x=1&x=2");
        assert_eq!(
            q.get("api-version").expect("the same value twice"),
            Some("7.4")
        );
        assert!(matches!(q.get("maxresults"), Err(Error::BadParameter(_))));
        // Unknown parameters are never read, so their duplicates refuse nothing.
        assert_eq!(q.get("absent").expect("none"), None);
    }

    #[test]
    fn empty_pieces_and_bare_names_are_accepted() {
        let q = parse("&&flag&api-version=7.4&=orphan&");
        assert_eq!(q.get("flag").expect("one"), Some(""));
        assert_eq!(q.get("api-version").expect("one"), Some("7.4"));
        assert_eq!(
            QueryParams::parse(None)
                .expect("empty")
                .get("a")
                .expect("none"),
            None
        );
    }

    #[test]
    fn malformed_escapes_and_non_utf8_are_refused() {
        for bad in [
            "a=%", "a=%2", "a=%zz", "a=%+1", "%-1=b", "a=%C3%28", "a=%FF",
        ] {
            assert!(
                matches!(QueryParams::parse(Some(bad)), Err(Error::BadParameter(_))),
                "{bad} accepted"
            );
        }
        assert_eq!(
            parse("a=%C3%A9").get("a").expect("one"),
            Some("\u{e9}"),
            "UTF-8 decodes"
        );
    }

    #[test]
    fn paths_decode_only_unreserved_characters() {
        assert_eq!(
            decode_unreserved("/keys/my%2Dkey/%63reate").as_deref(),
            Some("/keys/my-key/create")
        );
        assert_eq!(
            decode_unreserved("/keys/a%2d%5F%7e%2E").as_deref(),
            Some("/keys/a-_~.")
        );
        // Reserved or other characters stay encoded, for the router's one decoding.
        assert_eq!(decode_unreserved("/keys/a%2Fb/create"), None);
        assert_eq!(
            decode_unreserved("/keys/my%252Dkey").as_deref(),
            None,
            "an encoded '%' is not decoded here"
        );
        assert_eq!(
            decode_unreserved("/keys/a%zz%2").as_deref(),
            Some("/keys/a%25zz%252"),
            "lone '%'s are escaped: the router's decoding gives back a%zz%2"
        );
        assert_eq!(decode_unreserved("/keys/plain"), None);
    }

    #[test]
    fn normalizing_keeps_the_query() {
        let req = Request::builder()
            .uri("/keys/k%2D1/versions?api%2Dversion=7.4&maxresults=1")
            .body(axum::body::Body::empty())
            .expect("a request");
        let req = normalize_path(req);
        assert_eq!(req.uri().path(), "/keys/k-1/versions");
        assert_eq!(req.uri().query(), Some("api%2Dversion=7.4&maxresults=1"));
    }
}
