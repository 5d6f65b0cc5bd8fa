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

pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
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
