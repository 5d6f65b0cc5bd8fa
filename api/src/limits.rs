//! Server-wide request limits: a deadline per request and a cap on requests
//! in flight. Above the cap a request is answered at once with 503
//! `overloaded` instead of queueing; past the deadline with 503 `timeout`.
//! Both carry `Retry-After`.
//!
//! A request runs in a task of its own that holds its slot. When the deadline
//! passes, a read is aborted, but a command is left to finish: cancelling it
//! part-way could leave its Idempotency-Key pending although its events are
//! committed, so a retry with that key would run it twice. Finished, its
//! effect is there exactly once (the append is one transaction) and a retry
//! with the same key gets its stored response. Its slot stays taken until
//! it finishes, so timed-out commands still count against the cap.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::ApiError;

/// How long a request may take and how many may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    /// Well above a query that waits 2 s for `X-Min-Position`; a cap a
    /// two-core server reaches only when it is already far behind.
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
        }
    }
}

/// The shared slots of [`Limits`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Limiter {
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Requests running now, timed-out commands that still finish included.
    pub fn in_flight(&self) -> usize {
        self.limits.max_concurrent_requests - self.slots.available_permits()
    }
}

/// Takes a slot or answers 503 `overloaded`; runs the request under the
/// deadline or answers 503 `timeout` (see the module doc for what happens to
/// the request then).
pub async fn limit(State(limiter): State<Limiter>, req: Request, next: Next) -> Response {
    let Ok(slot) = limiter.slots.clone().try_acquire_owned() else {
        return ApiError::Overloaded(limiter.limits.max_concurrent_requests).into_response();
    };
    let is_read = req.method().is_safe();
    let mut task = tokio::spawn(
        async move {
            let response = next.run(req).await;
            drop(slot);
            response
        }
        .in_current_span(),
    );
    let timeout = limiter.limits.request_timeout;
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => ApiError::Internal(format!("request task failed: {e}")).into_response(),
        Err(_) => {
            if is_read {
                task.abort();
            }
            ApiError::Timeout(timeout.as_millis() as u64).into_response()
        }
    }
}
