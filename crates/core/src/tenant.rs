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

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Everything a tenant may do: send, read and search events, manage destinations.
    #[default]
    Full,
    /// Send events only (`POST` of events, and the Segment, PostHog and CloudEvents
    /// endpoints): the key to put in browser and mobile apps, where anyone can read it.
    Ingest,
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
    /// Keys stored before scopes existed are full keys.
    #[serde(default)]
    pub scope: KeyScope,
}

impl Tenant {
    /// The scope of the tenant's key with this hash, if it is one of its keys.
    pub fn key_scope(&self, hash: &str) -> Option<KeyScope> {
        self.keys
            .iter()
            .find(|key| key.hash == hash)
            .map(|key| key.scope)
    }
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
    /// Days events are kept, by their `timestamp`; `0` keeps them forever; `None` follows
    /// the server's `--retention-days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

impl Tenant {
    /// The days this tenant's events are kept, given the server's default; `None`: forever.
    pub fn retention(&self, server_default: u32) -> Option<u32> {
        Some(self.retention_days.unwrap_or(server_default)).filter(|days| *days > 0)
    }

    /// The instant before which this tenant's events have expired at `now`; `None`: kept
    /// forever.
    pub fn retention_cutoff(
        &self,
        server_default: u32,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        self.retention(server_default)
            .map(|days| now - time::Duration::days(i64::from(days)))
    }
}

/// The earliest retention cutoff over `tenants` at `now`: before it, every tenant's events
/// have expired, so storage holding only events from before it may go whole. `None` while
/// some tenant keeps its events forever, or when there is no tenant.
pub fn earliest_retention_cutoff(
    tenants: &[Tenant],
    server_default: u32,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    tenants
        .iter()
        .map(|tenant| tenant.retention_cutoff(server_default, now))
        .try_fold(None, |earliest: Option<OffsetDateTime>, this| {
            this.map(|this| Some(earliest.map_or(this, |earliest| earliest.min(this))))
        })
        .flatten()
}

/// One change to a stored tenant, said as an intent rather than as a new record, so that the
/// store can apply it to the tenant *as stored* inside one atomic step: two changes made at
/// once (on one node or on two) both take effect, and a revoked key never comes back.
#[derive(Debug, Clone)]
pub enum TenantChange {
    /// Changes the fields given. A new `per_minute` without `burst` keeps `burst` equal to
    /// the rate when it was equal before.
    Update {
        name: Option<String>,
        per_minute: Option<u32>,
        burst: Option<u32>,
        /// `Some(0)`: keep forever.
        retention_days: Option<u32>,
    },
    /// Adds an API key; the other keys keep working.
    AddKey(TenantKey),
    /// Revokes an API key: it stops working at once.
    RevokeKey(KeyId),
}

/// Why a [`TenantChange`] cannot apply to the tenant as stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantChangeError {
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error("the tenant has no key {0}")]
    NoSuchKey(KeyId),
}

impl TenantChange {
    /// Applies the change to `tenant`; on an error `tenant` is left as it was.
    ///
    /// # Errors
    /// A zero rate or burst, or a key to revoke that the tenant does not have.
    pub fn apply(&self, tenant: &mut Tenant) -> Result<(), TenantChangeError> {
        match self {
            Self::Update {
                name,
                per_minute,
                burst,
                retention_days,
            } => {
                if retention_days.is_some() {
                    tenant.retention_days = *retention_days;
                }
                let rate_limit = if per_minute.is_some() || burst.is_some() {
                    let current = tenant.rate_limit;
                    let per_minute = per_minute.unwrap_or(current.per_minute);
                    // A new rate without a burst keeps burst = rate when that is what it was.
                    let burst = burst
                        .or_else(|| (current.burst != current.per_minute).then_some(current.burst));
                    RateLimit::new(per_minute, burst)?
                } else {
                    tenant.rate_limit
                };
                tenant.rate_limit = rate_limit;
                if let Some(name) = name {
                    tenant.name.clone_from(name);
                }
            }
            Self::AddKey(key) => tenant.keys.push(key.clone()),
            Self::RevokeKey(id) => {
                let before = tenant.keys.len();
                tenant.keys.retain(|key| key.id != *id);
                if tenant.keys.len() == before {
                    return Err(TenantChangeError::NoSuchKey(*id));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(per_minute: u32, burst: u32) -> Tenant {
        Tenant {
            id: TenantId::random(),
            name: "t".into(),
            rate_limit: RateLimit { per_minute, burst },
            keys: vec![key()],
            created_at: OffsetDateTime::UNIX_EPOCH,
            retention_days: None,
        }
    }

    fn key() -> TenantKey {
        TenantKey {
            id: KeyId::random(),
            hash: "h".into(),
            prefix: "ps_".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            scope: KeyScope::Full,
        }
    }

    fn update(per_minute: Option<u32>, burst: Option<u32>) -> TenantChange {
        TenantChange::Update {
            name: None,
            per_minute,
            burst,
            retention_days: None,
        }
    }

    #[test]
    fn the_earliest_cutoff_is_none_while_any_tenant_keeps_its_events_forever() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1_000);
        let days = |retention_days| Tenant {
            retention_days,
            ..tenant(60, 60)
        };
        let at = |days: i64| Some(now - time::Duration::days(days));
        assert_eq!(earliest_retention_cutoff(&[], 7, now), None);
        assert_eq!(earliest_retention_cutoff(&[days(None)], 7, now), at(7));
        assert_eq!(earliest_retention_cutoff(&[days(None)], 0, now), None);
        assert_eq!(
            earliest_retention_cutoff(&[days(Some(30)), days(None), days(Some(3))], 7, now),
            at(30)
        );
        assert_eq!(
            earliest_retention_cutoff(&[days(Some(30)), days(Some(0))], 7, now),
            None
        );
    }

    #[test]
    fn a_new_rate_keeps_burst_equal_to_it_only_when_it_was() {
        let mut equal = tenant(60, 60);
        update(Some(120), None).apply(&mut equal).unwrap();
        assert_eq!(
            equal.rate_limit,
            RateLimit {
                per_minute: 120,
                burst: 120
            }
        );

        let mut apart = tenant(60, 10);
        update(Some(120), None).apply(&mut apart).unwrap();
        assert_eq!(
            apart.rate_limit,
            RateLimit {
                per_minute: 120,
                burst: 10
            }
        );

        update(None, Some(5)).apply(&mut apart).unwrap();
        assert_eq!(
            apart.rate_limit,
            RateLimit {
                per_minute: 120,
                burst: 5
            }
        );
    }

    #[test]
    fn a_rejected_change_leaves_the_tenant_as_it_was() {
        let mut stored = tenant(60, 60);
        let renamed = TenantChange::Update {
            name: Some("new".into()),
            per_minute: Some(0),
            burst: None,
            retention_days: None,
        };
        assert_eq!(
            renamed.apply(&mut stored),
            Err(TenantChangeError::RateLimit(RateLimitError::ZeroRate))
        );
        assert_eq!(
            (stored.name.as_str(), stored.rate_limit.per_minute),
            ("t", 60)
        );

        let missing = KeyId::random();
        assert_eq!(
            TenantChange::RevokeKey(missing).apply(&mut stored),
            Err(TenantChangeError::NoSuchKey(missing))
        );
        assert_eq!(stored.keys.len(), 1);
    }

    #[test]
    fn keys_are_added_and_revoked_by_id() {
        let mut stored = tenant(60, 60);
        let first = stored.keys[0].id;
        let added = key();
        TenantChange::AddKey(added.clone())
            .apply(&mut stored)
            .unwrap();
        TenantChange::RevokeKey(first).apply(&mut stored).unwrap();
        let ids: Vec<KeyId> = stored.keys.iter().map(|key| key.id).collect();
        assert_eq!(ids, vec![added.id]);
    }
}
