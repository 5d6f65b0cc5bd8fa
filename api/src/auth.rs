//! Authentication (Bearer API key → tenant and role) and the role rules of
//! API.md: `reader` reads, `writer` reads and commands, `auditor` reads and
//! audits, `admin` does everything.

use axum::extract::{FromRequestParts, Request, State};
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

impl<S: Send + Sync> FromRequestParts<S> for Principal {
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

/// The roles a route admits, declared once in its handler's signature: an
/// extractor per access level that answers 403 (`forbidden`) when the
/// caller's role lacks it, before the handler runs. It comes last before the
/// body, so malformed paths and queries answer as before; for a caller
/// without the role the request body is not read.
macro_rules! access_extractor {
    ($(#[$doc:meta])* $name:ident, $access:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl<S: Send + Sync> axum::extract::FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                let principal = Principal::from_request_parts(parts, state).await?;
                principal.require($access)?;
                Ok($name(principal))
            }
        }
    };
}

access_extractor!(
    /// Any role: every key reads.
    ReadAccess,
    Access::Read
);
access_extractor!(
    /// `writer` or `admin`: commands.
    WriteAccess,
    Access::Write
);
access_extractor!(
    /// `auditor` or `admin`: the audit endpoints.
    AuditAccess,
    Access::Audit
);
access_extractor!(
    /// `admin` only: keys, webhooks, payment providers, operations.
    AdminAccess,
    Access::Admin
);

/// Longest key we look up.
const MAX_KEY_LEN: usize = 256;

/// Known keys, so that a request does not cost a key lookup. Entries live
/// [`KEY_CACHE_TTL`]; unknown keys are never cached. A revocation empties
/// the cache: at once in the process that revoked, and within
/// [`REVOCATION_CHECK_EVERY`] in every other process ([`watch_revocations`]).
/// The generation makes a lookup that raced a revocation not cache its
/// (possibly stale) answer.
#[derive(Debug, Default, Clone)]
pub struct KeyCache(std::sync::Arc<std::sync::Mutex<CachedKeys>>);

#[derive(Debug, Default)]
pub struct CachedKeys {
    keys: std::collections::HashMap<String, (ApiKey, std::time::Instant)>,
    generation: u64,
}

pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const KEY_CACHE_MAX: usize = 10_000;
/// How often a process looks for revocations made by another process (the
/// API promises revocation everywhere within 1 s).
pub const REVOCATION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl KeyCache {
    /// The cached key, or the generation to pass to [`KeyCache::put`].
    fn get(&self, secret: &str) -> Result<ApiKey, u64> {
        let c = self.0.lock().expect("key cache");
        c.keys
            .get(secret)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(k, _)| k.clone())
            .ok_or(c.generation)
    }

    /// Caches a key looked up in `generation`, unless the cache was
    /// emptied since (the key may have been revoked meanwhile).
    fn put(&self, generation: u64, secret: &str, key: &ApiKey) {
        let mut c = self.0.lock().expect("key cache");
        if c.generation != generation {
            return;
        }
        if c.keys.len() >= KEY_CACHE_MAX {
            c.keys.clear();
        }
        c.keys
            .insert(secret.to_string(), (key.clone(), std::time::Instant::now()));
    }

    /// Forgets every key (a key was revoked).
    pub fn invalidate(&self) {
        let mut c = self.0.lock().expect("key cache");
        c.keys.clear();
        c.generation += 1;
    }
}

/// Empties `cache` whenever the number of revoked keys changes, checking
/// every [`REVOCATION_CHECK_EVERY`] until `stop`: how a revocation made by
/// another process (or `tally keys revoke`) reaches this one.
pub async fn watch_revocations(
    cache: KeyCache,
    db: tally_projections::Db,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen: Option<i64> = None;
    loop {
        match keys::revocations(&db).await {
            Ok(n) => {
                if seen.is_some_and(|s| s != n) {
                    cache.invalidate();
                }
                seen = Some(n);
            }
            Err(e) => {
                // Unknown whether a key was revoked: trust nothing cached.
                cache.invalidate();
                tracing::warn!(error = %e, "revocation check failed");
            }
        }
        if tokio::time::timeout(REVOCATION_CHECK_EVERY, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
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
        Ok(key) => Ok(Some(key)),
        Err(generation) => keys::authenticate(&app.db, secret).await.inspect(|k| {
            if let Some(k) = k {
                app.keys.put(generation, secret, k);
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
