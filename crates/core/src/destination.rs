//! Destinations: where a tenant's events are delivered, which of them, and how hard to try.

use std::cell::OnceCell;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::filter::{EventFilter, OrderingKey};
use crate::ids::{DestinationId, TenantId};

/// How events reach a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DestinationKind {
    /// HTTP POST of a batch of events, signed the Standard Webhooks way.
    Webhook {
        /// The URL, without its password when it has one (then `sealed_url` holds it whole).
        url: String,
        /// A URL with credentials (`https://user:pass@host/`), sealed with the server's key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed_url: Option<String>,
    },
    /// Publish to a NATS JetStream subject, one message per event.
    Nats { subject: String },
    /// Publish to a RabbitMQ exchange (AMQP 0-9-1), one persistent message per event,
    /// delivered when the broker confirms it.
    Amqp {
        /// The connection URL, sealed with the server's key (it carries a password).
        connection: String,
        /// The URL without its password, for display.
        endpoint: String,
        exchange: String,
        /// A template: `{event_type}`, `{source}` and `{event_id}` are replaced.
        routing_key: String,
    },
    /// Publish to an MQTT broker at QoS 1, delivered on the broker's PUBACK.
    Mqtt {
        connection: String,
        endpoint: String,
        /// A template like `routing_key`.
        topic: String,
    },
    /// Insert rows into a table of the tenant's own PostgreSQL database.
    Postgres {
        connection: String,
        endpoint: String,
        /// `table` or `schema.table`.
        table: String,
        columns: TableColumns,
        /// Whether PulseStream creates the table (if it does not exist) on connecting.
        #[serde(default)]
        create_table: bool,
    },
}

impl DestinationKind {
    /// The name the API uses: `webhook`, `nats`, `amqp`, `mqtt` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Nats { .. } => "nats",
            Self::Amqp { .. } => "amqp",
            Self::Mqtt { .. } => "mqtt",
            Self::Postgres { .. } => "postgres",
        }
    }
}

/// Which column of a `postgres` destination's table gets which field of an event. `id` is
/// the table's primary key (or unique): a redelivered event never makes a second row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableColumns {
    pub id: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub timestamp: Option<String>,
    pub received_at: Option<String>,
    pub payload: Option<String>,
}

impl Default for TableColumns {
    fn default() -> Self {
        Self {
            id: "id".into(),
            event_id: Some("event_id".into()),
            event_type: Some("event_type".into()),
            source: Some("source".into()),
            timestamp: Some("timestamp".into()),
            received_at: Some("received_at".into()),
            payload: Some("payload".into()),
        }
    }
}

impl TableColumns {
    /// (field, column) for each field that is written, `id` first.
    pub fn mapped(&self) -> Vec<(&'static str, &str)> {
        let mut mapped = vec![("id", self.id.as_str())];
        for (field, column) in [
            ("event_id", &self.event_id),
            ("event_type", &self.event_type),
            ("source", &self.source),
            ("timestamp", &self.timestamp),
            ("received_at", &self.received_at),
            ("payload", &self.payload),
        ] {
            if let Some(column) = column {
                mapped.push((field, column.as_str()));
            }
        }
        mapped
    }
}

/// What routing looks at in an event; the payload is parsed only if a filter or an
/// ordering key needs it, and then once for all destinations.
#[derive(Debug)]
pub struct Routable<'a> {
    pub event_type: &'a str,
    pub source: Option<&'a str>,
    payload_text: &'a str,
    payload: OnceCell<Option<Value>>,
}

impl<'a> Routable<'a> {
    pub fn new(event_type: &'a str, source: Option<&'a str>, payload_text: &'a str) -> Self {
        Self {
            event_type,
            source,
            payload_text,
            payload: OnceCell::new(),
        }
    }

    fn payload(&self) -> Option<&Value> {
        self.payload
            .get_or_init(|| serde_json::from_str(self.payload_text).ok())
            .as_ref()
    }
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
    /// Set by the tenant: nothing is sent, events still queue up and go out on resume.
    #[serde(default)]
    pub paused: bool,
    /// Beside `event_types`, what an event must match (the search language's filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<EventFilter>,
    /// When set, events with the same key are delivered in ingest order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<OrderingKey>,
    /// The most bytes of events in one delivery; unset: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Destination {
    /// Returns whether the event goes to this destination: its type matches a pattern of
    /// `event_types` (or there are none) and it passes the filter.
    pub fn wants(&self, event: &Routable<'_>) -> bool {
        let typed = self.event_types.is_empty()
            || self
                .event_types
                .iter()
                .any(|pattern| glob_matches(pattern, event.event_type));
        typed
            && self.filter.as_ref().is_none_or(|filter| {
                let payload = if filter.reads_payload() {
                    event.payload()
                } else {
                    None
                };
                filter.matches(event.source, payload)
            })
    }

    /// The event's ordering key, when the destination delivers in order.
    pub fn order_key(&self, event: &Routable<'_>) -> Option<i64> {
        self.ordering.as_ref().map(|key| {
            let payload = if key.reads_payload() {
                event.payload()
            } else {
                None
            };
            key.of(event.event_type, payload)
        })
    }
}

/// The placeholders a routing key or topic template may use.
pub const TEMPLATE_FIELDS: [&str; 3] = ["event_type", "source", "event_id"];

/// Checks a routing key or topic template: every `{...}` names one of [`TEMPLATE_FIELDS`].
///
/// # Errors
/// What is wrong with it, for a 422.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err("has a { without a closing }".into());
        };
        let name = &rest[open + 1..open + close];
        if !TEMPLATE_FIELDS.contains(&name) {
            return Err(format!(
                "uses {{{name}}}; the placeholders are {{event_type}}, {{source}} and {{event_id}}"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("has a } without an opening {".into());
    }
    Ok(())
}

/// Fills a template checked by [`check_template`]; a missing source becomes an empty string.
pub fn render_template(
    template: &str,
    event_type: &str,
    source: Option<&str>,
    event_id: &str,
) -> String {
    template
        .replace("{event_type}", event_type)
        .replace("{source}", source.unwrap_or_default())
        .replace("{event_id}", event_id)
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
    fn templates_name_known_fields_only() {
        assert!(check_template("events.{event_type}").is_ok());
        assert!(check_template("plain").is_ok());
        assert!(check_template("{source}/{event_id}").is_ok());
        assert!(check_template("events.{payload}").is_err());
        assert!(check_template("events.{event_type").is_err());
        assert!(check_template("events.event_type}").is_err());
        assert_eq!(
            render_template("e.{event_type}.{source}", "order.paid", None, "x"),
            "e.order.paid."
        );
    }

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
