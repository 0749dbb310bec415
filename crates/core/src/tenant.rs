//! Tenants, their API keys (as hashes) and their rate limits.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{KeyId, TenantId};

/// A tenant's quota: `per_minute` events refill continuously, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

/// A rate limit that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateLimitError {
    #[error("rate_limit_per_minute must be at least 1")]
    ZeroRate,
    #[error("burst must be at least 1")]
    ZeroBurst,
}

impl RateLimit {
    /// Builds a limit; `burst` defaults to `per_minute`.
    ///
    /// # Errors
    /// A zero rate or burst, which would refuse every request forever.
    pub fn new(per_minute: u32, burst: Option<u32>) -> Result<Self, RateLimitError> {
        let burst = burst.unwrap_or(per_minute);
        if per_minute == 0 {
            return Err(RateLimitError::ZeroRate);
        }
        if burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        Ok(Self { per_minute, burst })
    }
}

/// One API key of a tenant: only its SHA-256 is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantKey {
    pub id: KeyId,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The key's first characters, so an operator can tell keys apart.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A tenant as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub rate_limit: RateLimit,
    pub keys: Vec<TenantKey>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}
