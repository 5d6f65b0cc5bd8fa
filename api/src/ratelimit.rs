//! Per-API-key rate limiting: a token bucket per key, refilled at `per_sec`
//! up to `burst`. A request that finds the bucket empty is answered 429
//! `rate_limited` with `Retry-After`, before it does any work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// Requests per second per key and the burst a key may spend at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// 0 turns the limit off.
    pub per_sec: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    /// Far above what one client of a two-core server can use: a guard
    /// against a runaway client, not a quota.
    fn default() -> Self {
        Self {
            per_sec: 1000.0,
            burst: 2000.0,
        }
    }
}

/// The buckets of every key seen. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Key id → (tokens, when they were counted).
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Arc::default(),
        }
    }

    /// Takes a token for `key` at `now`, or says how many whole seconds until
    /// one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let RateLimit { per_sec, burst } = self.limit;
        if per_sec <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("rate limit buckets");
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// The middleware, after authentication: it limits by the key's id.
pub async fn limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(principal) = req.extensions().get::<Principal>() {
        if let Err(secs) = app.rate.take(&principal.0.id, Instant::now()) {
            metrics::counter!("tally_rate_limited_total").increment(1);
            return ApiError::RateLimited(secs).into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let r = RateLimiter::new(RateLimit {
            per_sec: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(r.take("k", t0), Ok(()));
        }
        assert_eq!(r.take("k", t0), Err(1));
        // Another key has its own bucket.
        assert_eq!(r.take("other", t0), Ok(()));
        // Half a second gives one token back (2 per second), not more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(r.take("k", t1), Ok(()));
        assert_eq!(r.take("k", t1), Err(1));
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(r.take("k", t2), Ok(()));
        }
        assert!(r.take("k", t2).is_err());
    }

    #[test]
    fn a_slow_rate_asks_for_a_longer_wait_and_zero_is_off() {
        let r = RateLimiter::new(RateLimit {
            per_sec: 0.1,
            burst: 1.0,
        });
        let t0 = Instant::now();
        assert_eq!(r.take("k", t0), Ok(()));
        assert_eq!(r.take("k", t0), Err(10));
        let off = RateLimiter::new(RateLimit {
            per_sec: 0.0,
            burst: 0.0,
        });
        for _ in 0..10_000 {
            assert_eq!(off.take("k", t0), Ok(()));
        }
    }
}
