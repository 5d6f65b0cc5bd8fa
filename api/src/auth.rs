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
    match keys::authenticate(&app.db, secret).await {
        Ok(Some(key)) => {
            tracing::Span::current().record("key_id", key.id.as_str());
            req.extensions_mut().insert(Principal(key));
            next.run(req).await
        }
        Ok(None) => ApiError::Unauthorized.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
