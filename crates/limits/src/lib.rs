//! Per-tenant rate limits, counted in events.
//!
//! [`RateLimiter`] decides with GCRA ([`gcra`]). On one node it keeps each tenant's state in
//! memory. With Redis it keeps the state there, decided atomically by one Lua script per
//! request, so several nodes share one limit; when Redis is unreachable it falls back to the
//! in-process state within a bounded time (a short timeout and a circuit breaker) and returns
//! to Redis by itself. Limits are passed in with every call, so a change applies at once.

mod gcra;
mod redis_backend;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pulsestream_core::{RateLimit, TenantId};

pub use gcra::{Bucket, Decision, decide};
pub use redis_backend::{RedisSettings, RedisUnavailable};

/// Where decisions are being made right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In this process only (no Redis configured).
    Local,
    /// In Redis, shared by every node.
    Redis,
    /// Redis is configured but unreachable: in this process until it is back.
    LocalFallback,
}

impl Backend {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Redis => "redis",
            Self::LocalFallback => "local_fallback",
        }
    }
}

/// Decides whether a tenant may send `cost` more events now.
#[derive(Debug)]
pub struct RateLimiter {
    local: LocalLimiter,
    redis: Option<redis_backend::RedisBackend>,
}

impl RateLimiter {
    /// A limiter that keeps its state in this process.
    pub fn local() -> Self {
        record_backend(Backend::Local);
        Self {
            local: LocalLimiter::default(),
            redis: None,
        }
    }

    /// A limiter that shares its state through Redis, falling back to this process's state
    /// while Redis cannot be reached.
    ///
    /// # Errors
    /// The URL is not a Redis URL. An unreachable server is not an error: the limiter
    /// starts on its fallback and connects when it can.
    pub fn with_redis(settings: RedisSettings) -> Result<Self, RedisUnavailable> {
        let redis = redis_backend::RedisBackend::new(settings)?;
        record_backend(Backend::Redis);
        Ok(Self {
            local: LocalLimiter::default(),
            redis: Some(redis),
        })
    }

    /// Takes `cost` events from the tenant's budget if they fit; `cost` 0 only reports.
    pub async fn admit(&self, tenant: TenantId, limit: RateLimit, cost: u32) -> Decision {
        if let Some(redis) = &self.redis
            && let Some(decision) = redis.admit(tenant, limit, cost).await
        {
            return decision;
        }
        self.local.admit(tenant, limit, cost, now_micros())
    }

    /// Returns where decisions are made right now.
    pub fn backend(&self) -> Backend {
        match &self.redis {
            None => Backend::Local,
            Some(redis) if redis.is_healthy() => Backend::Redis,
            Some(_) => Backend::LocalFallback,
        }
    }
}

/// Per-tenant GCRA state in memory: one number per tenant.
#[derive(Debug, Default)]
struct LocalLimiter {
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl LocalLimiter {
    fn admit(&self, tenant: TenantId, limit: RateLimit, cost: u32, now: u64) -> Decision {
        let mut buckets = self
            .buckets
            .lock()
            .expect("rate limiter lock is never poisoned: nothing panics while holding it");
        let stored = buckets.get(&tenant).copied().unwrap_or_default();
        let (decision, bucket) = decide(limit, stored, now, cost);
        if bucket != stored {
            buckets.insert(tenant, bucket);
        }
        decision
    }
}

/// Declares the limiter's metrics with their help text.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "pulsestream_rate_limiter_backend",
        "1 for the backend deciding rate limits now (local, redis, local_fallback), 0 for the others"
    );
    metrics::describe_counter!(
        "pulsestream_rate_limiter_fallbacks_total",
        "Times the Redis limiter became unreachable and limits fell back to this process"
    );
}

/// Sets the backend gauge: 1 for `current`, 0 for the others.
pub(crate) fn record_backend(current: Backend) {
    for backend in [Backend::Local, Backend::Redis, Backend::LocalFallback] {
        metrics::gauge!("pulsestream_rate_limiter_backend", "backend" => backend.as_str())
            .set(if backend == current { 1.0 } else { 0.0 });
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_tenant_has_its_own_budget() {
        let limiter = RateLimiter::local();
        let limit = RateLimit::new(60, Some(3)).unwrap();
        let (first, second) = (TenantId::random(), TenantId::random());

        assert!(limiter.admit(first, limit, 3).await.allowed);
        assert!(!limiter.admit(first, limit, 1).await.allowed);
        assert!(limiter.admit(second, limit, 3).await.allowed);
        assert_eq!(limiter.backend(), Backend::Local);
    }

    #[tokio::test]
    async fn a_raised_limit_applies_to_the_next_request() {
        let limiter = RateLimiter::local();
        let tenant = TenantId::random();
        assert!(
            limiter
                .admit(tenant, RateLimit::new(60, Some(2)).unwrap(), 2)
                .await
                .allowed
        );
        assert!(
            !limiter
                .admit(tenant, RateLimit::new(60, Some(2)).unwrap(), 1)
                .await
                .allowed
        );

        assert!(
            limiter
                .admit(tenant, RateLimit::new(60, Some(10)).unwrap(), 5)
                .await
                .allowed
        );
    }
}
