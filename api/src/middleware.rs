//! Request middleware: request ids and the request log line and metrics, and
//! Idempotency-Key handling for POSTs.

use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tally_commands::idempotency::{self, Reservation, StoredResponse};
use tracing::Instrument;

use crate::auth::Principal;
use crate::error::{ApiError, InternalCause};
use crate::extract::MAX_BODY_BYTES;
use crate::AppState;

/// Request and correlation ids of the current request.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    pub correlation_id: String,
}

const REQUEST_ID: &str = "x-request-id";
const CORRELATION_ID: &str = "x-correlation-id";

fn client_id(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
}

/// Gives every request an id (the client's `X-Request-Id` when sane), a
/// tracing span that carries it into every log line, one log line at the end,
/// and the request metrics. Never logs bodies or keys.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let request_id =
        client_id(req.headers(), REQUEST_ID).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let correlation_id =
        client_id(req.headers(), CORRELATION_ID).unwrap_or_else(|| request_id.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    req.extensions_mut().insert(RequestIds {
        request_id: request_id.clone(),
        correlation_id,
    });
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = %route, key_id = tracing::field::Empty);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
            tracing::error!(status = status.as_u16(), cause = %cause, elapsed_ms = elapsed.as_millis() as u64, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request");
        }
    });
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("tally_http_requests_total", &labels).increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
    response
}

/// Headers a replayed response repeats.
const REPLAYED_HEADERS: [&str; 4] = ["content-type", "etag", "x-log-position", "location"];

/// Admission of commands: a request that may change something waits (at
/// most a second) while this process's consumers are far behind the log head
/// (`Runtime::admit`, ADR 0015), so the read models stay close to the
/// commands answered. Reads never wait here. Usage batches wait too: let
/// through unheld, ingest ran hundreds of thousands of events ahead of the
/// usage projection, and the quota policy, which reads it, suspended nothing
/// within 20 s of a cap being crossed.
pub async fn admit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !req.method().is_safe() {
        app.runtime.admit().await;
    }
    next.run(req).await
}

/// `Idempotency-Key` on POST: the first request with a key runs and its
/// response is stored; a repeat with the same body gets that response, a
/// repeat with another body 422 `idempotency_key_reused`.
pub async fn idempotency(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
    else {
        return next.run(req).await;
    };
    let key = match key {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k,
        _ => {
            return ApiError::field("Idempotency-Key", "must be 1-255 visible characters")
                .into_response()
        }
    };
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return ApiError::PayloadTooLarge(MAX_BODY_BYTES).into_response(),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b" ");
    hasher.update(parts.uri.path());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let hash = hex::encode(hasher.finalize());
    let tenant = principal.tenant().to_string();
    match idempotency::reserve(&app.db, &tenant, &key, &hash).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Reservation::Mismatch) => return ApiError::IdempotencyKeyReused.into_response(),
        Ok(Reservation::InFlight) => return ApiError::IdempotencyInFlight.into_response(),
        Ok(Reservation::Applied) => return applied(&app, &tenant, &key).await,
        Ok(Reservation::Replay(stored)) => return replay(&app, &tenant, stored).await,
        Ok(Reservation::Proceed) => {}
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(IdempotencyKey(key.clone()));
    let response = next.run(req).await;
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = idempotency::release(&app.db, &tenant, &key).await;
            return ApiError::Internal(e.to_string()).into_response();
        }
    };
    let retryable = parts.status.is_server_error()
        || parts.status == StatusCode::CONFLICT
            && body_code(&body) == Some("concurrent_modification".into())
        || parts.status == StatusCode::PRECONDITION_FAILED;
    if retryable {
        let _ = idempotency::release(&app.db, &tenant, &key).await;
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = REPLAYED_HEADERS
            .iter()
            .filter_map(|h| {
                parts
                    .headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (h.to_string(), v.into()))
            })
            .collect();
        let mut headers = headers;
        let mut stored_body = String::from_utf8_lossy(&body).into_owned();
        if let Some(DerivedSecret(endpoint_id)) = parts.extensions.get::<DerivedSecret>() {
            if let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_slice(&body) {
                doc.remove("secret");
                stored_body = serde_json::Value::Object(doc).to_string();
                headers.insert(DERIVED_SECRET_MARK.into(), endpoint_id.clone().into());
            }
        }
        let stored = StoredResponse {
            status: parts.status.as_u16(),
            body: stored_body,
            headers: serde_json::Value::Object(headers).to_string(),
        };
        if let Err(e) = idempotency::complete(&app.db, &tenant, &key, &stored).await {
            tracing::error!(error = %e, "could not store the idempotent response");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// The answer to a key whose first request took effect but never stored
/// its answer (its process died): 409 `idempotency_key_applied`, stored so
/// that every later repeat gets the same.
async fn applied(app: &AppState, tenant: &str, key: &str) -> Response {
    let (parts, body) = ApiError::IdempotencyKeyApplied.into_response().into_parts();
    let Ok(body) = to_bytes(body, usize::MAX).await else {
        return ApiError::IdempotencyKeyApplied.into_response();
    };
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        headers: serde_json::json!({"content-type": "application/problem+json"}).to_string(),
    };
    if let Err(e) = idempotency::complete(&app.db, tenant, key, &stored).await {
        tracing::error!(error = %e, "could not store the idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

/// The Idempotency-Key of the current request, for event metadata.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

fn body_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string))
}

/// Marks a response whose `secret` field is derivable from the webhook
/// endpoint named here: the idempotency store keeps the response without it.
#[derive(Debug, Clone)]
pub struct DerivedSecret(pub String);

/// The stored-headers entry that says a replay must derive the secret again.
const DERIVED_SECRET_MARK: &str = "tally-derived-secret";

async fn replay(app: &AppState, tenant: &str, stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut headers = match serde_json::from_str(&stored.headers) {
        Ok(serde_json::Value::Object(h)) => h,
        _ => serde_json::Map::new(),
    };
    let mut body = stored.body;
    if let Some(endpoint_id) = headers
        .remove(DERIVED_SECRET_MARK)
        .and_then(|v| v.as_str().map(str::to_string))
    {
        let secret = match app.webhooks.endpoint_secret(tenant, &endpoint_id).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return ApiError::NotFound.into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        };
        if let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_str(&body) {
            doc.insert("secret".into(), secret.into());
            body = serde_json::Value::Object(doc).to_string();
        }
    }
    let mut response = (status, body).into_response();
    {
        for (name, value) in headers {
            if let (Ok(n), Some(Ok(v))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(n, v);
            }
        }
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
