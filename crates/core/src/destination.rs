//! Destinations: where a tenant's events are delivered, which of them, and how hard to try.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ids::{DestinationId, TenantId};

/// How events reach a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DestinationKind {
    /// HTTP POST of a batch of events, signed the Standard Webhooks way.
    Webhook { url: String },
    /// Publish to a NATS JetStream subject, one message per event.
    Nats { subject: String },
}

/// A tenant's destination as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Destination {
    pub id: DestinationId,
    pub tenant: TenantId,
    #[serde(flatten)]
    pub kind: DestinationKind,
    /// Patterns of event types to deliver (`order.*`, `*`, `user.signup`); empty means all.
    pub event_types: Vec<String>,
    /// Attempts per event before it goes to the dead letters.
    pub max_attempts: u32,
    /// The Standard Webhooks signing secret (`whsec_...`).
    pub secret: String,
    /// Set when a receiver answered 410 Gone: nothing more is sent.
    pub disabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Destination {
    /// Returns whether events of this type go to this destination.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty()
            || self
                .event_types
                .iter()
                .any(|pattern| glob_matches(pattern, event_type))
    }
}

/// Matches `*` as any run of characters (including none); everything else literally.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// When to try again after a failed attempt: exponential backoff with full jitter, capped,
/// and never sooner than the receiver's `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::seconds(1),
            cap: Duration::hours(1),
        }
    }
}

impl RetryPolicy {
    /// Returns the time of the next attempt after `attempts` failed ones. `jitter` is a
    /// uniform random number in [0, 1), passed in so that tests need no randomness.
    pub fn next_attempt(
        &self,
        attempts: u32,
        now: OffsetDateTime,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> OffsetDateTime {
        let exponent = attempts.saturating_sub(1).min(30);
        let ceiling = (self.base * 2f64.powi(exponent as i32)).min(self.cap);
        let delay = (ceiling * jitter.clamp(0.0, 1.0)).max(Duration::milliseconds(50));
        now + retry_after.map_or(delay, |after| delay.max(after.min(self.cap)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_prefixes_suffixes_and_everything() {
        assert!(glob_matches("order.*", "order.created"));
        assert!(glob_matches("order.*", "order."));
        assert!(!glob_matches("order.*", "orders.created"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("*.created", "user.created"));
        assert!(glob_matches("a*b*c", "a-x-b-y-c"));
        assert!(!glob_matches("a*b*c", "a-x-c"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn backoff_grows_exponentially_within_the_cap_with_full_jitter() {
        let policy = RetryPolicy::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            policy.next_attempt(1, now, 0.999_999, None) - now,
            Duration::seconds(1) * 0.999_999
        );
        assert_eq!(
            policy.next_attempt(4, now, 0.5, None) - now,
            Duration::seconds(4)
        );
        assert_eq!(
            policy.next_attempt(40, now, 1.0, None) - now,
            Duration::hours(1)
        );
        assert_eq!(
            policy.next_attempt(3, now, 0.0, None) - now,
            Duration::milliseconds(50)
        );
    }

    #[test]
    fn retry_after_is_honoured() {
        let policy = RetryPolicy::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            policy.next_attempt(1, now, 0.1, Some(Duration::seconds(30))) - now,
            Duration::seconds(30)
        );
    }
}
