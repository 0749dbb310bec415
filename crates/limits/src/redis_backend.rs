//! GCRA in Redis: one Lua script per decision, atomic on the server, one round trip.
//!
//! Calls are bounded by a short timeout. After a failure the breaker opens: for
//! `cool_down` every decision is made in-process without touching Redis, then one request
//! probes Redis again (half-open) and success closes the breaker. Each change of state is
//! logged once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pulsestream_core::{Breaker, Circuit, RateLimit, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::{Decision, interval_micros};

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// The longest a decision waits for Redis before falling back.
    pub timeout: Duration,
    /// How long to stay on the fallback after a failure before probing Redis again.
    pub cool_down: Duration,
}

impl RedisSettings {
    /// Settings with the default prefix (`pulsestream`), a 50 ms timeout and a 2 s cool-down.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "pulsestream".into(),
            timeout: Duration::from_millis(50),
            cool_down: Duration::from_secs(2),
        }
    }
}

/// Redis cannot be used: a malformed URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL")]
pub struct RedisUnavailable(#[source] redis::RedisError);

/// The script returns {allowed, remaining, reset µs, retry-after µs} and stores the bucket
/// (TAT and interval, µs) with an expiry once it would be full again; it re-times what is
/// owed when the rate changed, exactly like `gcra::decide`. It reads the clock of Redis, so nodes
/// with skewed clocks still share one timeline. Lua numbers are doubles: `%.0f` writes the
/// TAT whole, where `tostring` would round it to 14 digits.
const SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local capacity = interval * burst
local stored = redis.call('HMGET', KEYS[1], 'tat', 'interval')
local tat = tonumber(stored[1] or '0')
local stored_interval = tonumber(stored[2] or '0')
if tat < now then tat = now end
if stored_interval ~= 0 and stored_interval ~= interval then
  tat = now + math.floor((tat - now) / stored_interval) * interval
end
local new_tat = tat + interval * cost
if new_tat - now > capacity then
  return {0, math.floor((capacity - (tat - now)) / interval), tat - now, new_tat - now - capacity}
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', new_tat), 'interval', string.format('%.0f', interval))
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1000))
end
return {1, math.floor((capacity - (new_tat - now)) / interval), new_tat - now, 0}
";

pub(crate) struct RedisBackend {
    client: redis::Client,
    settings: RedisSettings,
    script: redis::Script,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("key_prefix", &self.settings.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    pub fn new(settings: RedisSettings) -> Result<Self, RedisUnavailable> {
        let client = redis::Client::open(settings.url.as_str()).map_err(RedisUnavailable)?;
        Ok(Self {
            client,
            script: redis::Script::new(SCRIPT),
            connection: tokio::sync::Mutex::new(None),
            // One failure opens it: a decision must never wait on Redis twice in a row.
            breaker: Mutex::new(Breaker::new(1, settings.cool_down)),
            settings,
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.breaker().state(Instant::now()) == Circuit::Closed
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock is never poisoned")
    }

    /// Decides in Redis, or returns `None` when Redis is not to be used right now.
    pub async fn admit(&self, tenant: TenantId, limit: RateLimit, cost: u32) -> Option<Decision> {
        if !self.breaker().allows(Instant::now()) {
            return None;
        }
        match tokio::time::timeout(self.settings.timeout, self.run(tenant, limit, cost)).await {
            Ok(Ok(decision)) => {
                self.close_breaker();
                Some(decision)
            }
            Ok(Err(err)) => {
                self.open_breaker(&err.to_string());
                None
            }
            Err(_) => {
                self.open_breaker(&format!("no answer within {:?}", self.settings.timeout));
                None
            }
        }
    }

    async fn run(
        &self,
        tenant: TenantId,
        limit: RateLimit,
        cost: u32,
    ) -> redis::RedisResult<Decision> {
        let mut connection = self.connection().await?;
        let key = format!("{}:ratelimit:{tenant}", self.settings.key_prefix);
        let (allowed, remaining, reset, retry_after): (i64, i64, i64, i64) = self
            .script
            .key(key)
            .arg(interval_micros(limit))
            .arg(limit.burst)
            .arg(cost)
            .invoke_async(&mut connection)
            .await?;
        Ok(Decision {
            allowed: allowed == 1,
            limit: limit.burst,
            remaining: remaining.max(0) as u32,
            reset_micros: reset.max(0) as u64,
            retry_after_micros: retry_after.max(0) as u64,
        })
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.settings.timeout)
            .set_response_timeout(self.settings.timeout)
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn open_breaker(&self, reason: &str) {
        let now = Instant::now();
        let mut breaker = self.breaker();
        // Counted once per outage: a failed probe (half-open) re-opens it silently.
        let was_closed = breaker.state(now) == Circuit::Closed;
        breaker.on_failure(now);
        if was_closed {
            metrics::counter!("pulsestream_rate_limiter_fallbacks_total").increment(1);
            crate::record_backend(crate::Backend::LocalFallback);
            tracing::warn!(reason, cool_down = ?self.settings.cool_down, "Redis rate limiter unreachable; limiting in-process until it is back");
        }
    }

    fn close_breaker(&self) {
        if self.breaker().on_success(Instant::now()).is_some() {
            crate::record_backend(crate::Backend::Redis);
            tracing::info!("Redis rate limiter reachable again; limits are shared once more");
        }
    }
}
