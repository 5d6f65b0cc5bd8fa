//! Authentication (Bearer API key → tenant and role) and the role rules of
//! API.md: `reader` reads, `writer` reads and commands, `auditor` reads and
//! audits, `admin` does everything.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_commands::keys::{self, ApiKey, Role};

use crate::error::ApiError;
use crate::AppState;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Audit,
    Admin,
}

/// The authenticated caller, put in the request extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Principal(pub ApiKey);

impl Principal {
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    pub fn require(&self, access: Access) -> Result<(), ApiError> {
        let allowed = match (self.0.role, access) {
            (Role::Admin, _) => true,
            (_, Access::Read) => true,
            (Role::Writer, Access::Write) => true,
            (Role::Auditor, Access::Audit) => true,
            (Role::Writer | Role::Reader | Role::Auditor, _) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Longest key we look up.
const MAX_KEY_LEN: usize = 256;

/// Known keys, so that a request does not cost a key lookup. Entries live
/// [`KEY_CACHE_TTL`]; unknown keys are never cached.
#[derive(Debug, Default, Clone)]
pub struct KeyCache(
    std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (ApiKey, std::time::Instant)>>,
    >,
);

pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    fn get(&self, secret: &str) -> Option<ApiKey> {
        let map = self.0.lock().expect("key cache");
        map.get(secret)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(k, _)| k.clone())
    }

    fn put(&self, secret: &str, key: &ApiKey) {
        let mut map = self.0.lock().expect("key cache");
        if map.len() >= KEY_CACHE_MAX {
            map.clear();
        }
        map.insert(secret.to_string(), (key.clone(), std::time::Instant::now()));
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme name is
/// case-insensitive (RFC 9110 § 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN);
    let Some(secret) = secret else {
        return ApiError::Unauthorized.into_response();
    };
    let found = match app.keys.get(secret) {
        Some(key) => Ok(Some(key)),
        None => keys::authenticate(&app.db, secret).await.inspect(|k| {
            if let Some(k) = k {
                app.keys.put(secret, k);
            }
        }),
    };
    match found {
        Ok(Some(key)) => {
            tracing::Span::current().record("key_id", key.id.as_str());
            req.extensions_mut().insert(Principal(key));
            next.run(req).await
        }
        Ok(None) => ApiError::Unauthorized.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer k1", "bearer k1", "BEARER k1", "bEaReR   k1 "] {
            assert_eq!(bearer_token(v), Some("k1"), "{v}");
        }
        for v in ["Basic k1", "Bearerk1", "k1", "Bearer"] {
            assert_eq!(bearer_token(v), None, "{v}");
        }
    }
}
