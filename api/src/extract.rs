//! Our own extractors, so that every body, query or path problem answers in
//! the problem format with the field at fault: malformed JSON (trailing data
//! included), a body that is not a JSON object, unknown fields, wrong types,
//! missing fields, and text that is not NUL-free UTF-8 are 422
//! `validation_failed`; a body over the limit is 413; a path id that is not
//! NUL-free UTF-8 is 404 like any unknown id. Checking text here, once, keeps
//! NUL bytes (which PostgreSQL refuses in text) away from both backends alike.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body. An empty body reads as `{}` so that commands whose fields are
/// all optional may be posted without one.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = object_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON body of records (the usage batch) whose text the handler checks
/// record by record with [`parse_json`], so that one record with a NUL is
/// rejected alone, like any other bad record, instead of the whole batch.
pub struct JsonRecords<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonRecords<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = object_body(req, state).await?;
        parse(&bytes, false).map(JsonRecords)
    }
}

/// The body, which must be JSON (by its content type, when it has one) and
/// one object; an empty body reads as `{}`.
async fn object_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let content_type_ok = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::field("body", e.body_text())
        }
    })?;
    if !content_type_ok {
        return Err(ApiError::field(
            "body",
            "Content-Type must be application/json",
        ));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Bytes::from_static(b"{}"));
    }
    // serde reads a struct from an array too (`[]` as `{}`): every request
    // body of this API is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    Ok(bytes)
}

/// Parses one JSON document, naming the field at fault on error: trailing
/// data after the document (`{}}`, `{} {}`) and text with a NUL are refused.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse(bytes, true)
}

fn parse<T: DeserializeOwned>(bytes: &[u8], check_text: bool) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = clean_message(&inner.to_string());
        let top = path == "." || path.is_empty();
        // serde reports a missing field at its parent: name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        let field = match (missing, top) {
            (Some(name), true) => name.to_string(),
            (Some(name), false) => format!("{path}.{name}"),
            (None, true) => "body".to_string(),
            (None, false) => path,
        };
        ApiError::Validation {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    })?;
    de.end().map_err(|e| {
        ApiError::field(
            "body",
            format!("{} after the JSON document", clean_message(&e.to_string())),
        )
    })?;
    if check_text {
        refuse_nul(bytes)?;
    }
    Ok(value)
}

/// A NUL can only reach a JSON string as the escape `\u0000` (raw control
/// characters are a syntax error), so only a document holding that escape is
/// walked to name the field.
fn refuse_nul(bytes: &[u8]) -> Result<(), ApiError> {
    let escaped = bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\\' && bytes.get(i + 1..i + 6) == Some(&b"u0000"[..]));
    if !escaped {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    match nul_field(&value, String::new()) {
        Some(field) => Err(ApiError::field(
            if field.is_empty() { "body" } else { &field },
            "must not contain a NUL character",
        )),
        None => Ok(()),
    }
}

/// The path (`records[2].meter`) of the first string or key with a NUL.
fn nul_field(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::String(s) => s.contains('\0').then_some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_field(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let path = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(path)
            } else {
                nul_field(v, path)
            }
        }),
        _ => None,
    }
}

/// serde's messages end with " at line 1 column 9": clients want the field.
fn clean_message(m: &str) -> String {
    match m.find(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

/// Query parameters with the same error shape. Unknown parameters are refused.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_deserializer(q);
        de.map(QueryParams)
    }
}

fn serde_urlencoded_deserializer<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    // Parse into a flat JSON object of strings, then reuse the JSON path
    // (which also refuses a NUL, naming the parameter).
    let mut map = serde_json::Map::new();
    for (k, v) in url_pairs(q)? {
        map.insert(k, serde_json::Value::String(v));
    }
    let bytes = serde_json::to_vec(&map).unwrap_or_default();
    parse_json(&bytes)
}

/// `a=1&b=x+y` → pairs, percent-decoded; a name or value that does not
/// decode to UTF-8 is refused (rather than silently replaced), naming it.
fn url_pairs(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = form_decode(k).ok_or_else(|| ApiError::field("query", "must be UTF-8"))?;
        let v = form_decode(v).ok_or_else(|| ApiError::field(&k, "must be UTF-8"))?;
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is
/// a space, `%XX` a byte (a `%` not followed by two hex digits stays as is).
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Path parameters, each percent-decoded to NUL-free UTF-8; anything else in
/// a path (`x%ff`, `%00`, a value of the wrong type) names no resource, so it
/// is 404 `not_found` in the problem format, like an unknown id.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        if raw.iter().any(|(_, v)| v.contains('\0')) {
            return Err(ApiError::NotFound);
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParams(v))
            .map_err(|_| ApiError::NotFound)
    }
}

/// `If-Match: "<n>"` → Some(n).
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::field("If-Match", "must be a quoted version"))?;
    let trimmed = s.trim().trim_start_matches("W/").trim_matches('"');
    trimmed
        .parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::field("If-Match", "must be a quoted version, e.g. \"3\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            url_pairs("status=active&customer_id=cus%201&x=a+b&y=%25zz&z=%zz&w=%4").unwrap(),
            vec![
                ("status".into(), "active".into()),
                ("customer_id".into(), "cus 1".into()),
                ("x".into(), "a b".into()),
                ("y".into(), "%zz".into()),
                ("z".into(), "%zz".into()),
                ("w".into(), "%4".into())
            ]
        );
        assert!(url_pairs("customer_id=x%ff").is_err());
        assert_eq!(url_pairs("a=%00").unwrap(), vec![("a".into(), "\0".into())]);
    }

    #[test]
    fn trailing_data_and_nul_text_are_refused() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        assert!(parse_json::<Empty>(b"{}").is_ok());
        assert!(parse_json::<Empty>(b" {} ").is_ok());
        for bad in [&b"{}}"[..], b"{} {}", b"{}x"] {
            assert!(parse_json::<Empty>(bad).is_err(), "{bad:?}");
        }
        let v = br#"{"a": [{"b": "x"}, {"c": "y\u0000"}]}"#;
        match parse_json::<serde_json::Value>(v) {
            Err(ApiError::Validation { errors, .. }) => assert_eq!(errors[0].field, "a[1].c"),
            other => panic!("{other:?}"),
        }
        // An escaped backslash before `u0000` is no NUL.
        assert!(parse_json::<serde_json::Value>(br#"{"a": "\\u0000"}"#).is_ok());
    }
}
