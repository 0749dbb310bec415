//! What happened, as the console and the API show it: the live tail (a tenant's events in
//! commit order), delivery attempts, and counts per minute.
//!
//! None of this decides anything: an event's fate is in `EventStore` and `DeliveryQueue`.
//! Attempts and counts are written after the fact, so a crash between a delivery's outcome
//! and its attempt record loses the record, never the delivery.

use std::fmt::Debug;

use async_trait::async_trait;
use pulsestream_core::{DestinationId, EventId, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{StoreError, StoredEvent};

/// A place in a tenant's live tail. Events are in the order their commits became visible:
/// whatever is read after a position was committed after everything before it, so reading
/// on from the last position seen misses nothing and repeats nothing.
///
/// `commit` is the embedded writer's commit time in microseconds, or the PostgreSQL
/// transaction id (a `xid8`) that stored the event; `within` orders one commit's entries
/// (the embedded store: the entry's place in its commit; PostgreSQL: the event id's bits).
/// `duplicate` marks a retry of a stored event (the tail shows it again, marked) rather
/// than the event's storing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TailPosition {
    pub commit: i64,
    pub within: u128,
    pub duplicate: bool,
}

/// Two numbers as 48 hex digits that sort like the pair.
fn hex_pair(high: i64, low: uuid::Uuid) -> String {
    format!("{:016x}{}", (high as u64) ^ (1 << 63), low.simple())
}

fn parse_hex_pair(token: &str) -> Option<(i64, uuid::Uuid)> {
    if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let high = u64::from_str_radix(&token[..16], 16).ok()? ^ (1 << 63);
    let low = uuid::Uuid::try_parse(&token[16..]).ok()?;
    Some((high as i64, low))
}

impl TailPosition {
    /// The opaque token clients see (`id:` of the SSE stream): 49 hex digits.
    pub fn token(&self) -> String {
        let mut token = hex_pair(self.commit, uuid::Uuid::from_u128(self.within));
        token.push(if self.duplicate { '1' } else { '0' });
        token
    }

    /// Reads a token made by [`Self::token`].
    pub fn parse(token: &str) -> Option<Self> {
        let (pair, kind) = token.split_at_checked(48)?;
        let (commit, within) = parse_hex_pair(pair)?;
        let duplicate = match kind {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(Self {
            commit,
            within: within.as_u128(),
            duplicate,
        })
    }
}

/// Up to a page of a tenant's tail after a position.
#[derive(Debug, Clone, Default)]
pub struct TailPage {
    /// Each position with the event (for a duplicate: the stored event it repeats).
    pub events: Vec<(TailPosition, StoredEvent)>,
}

/// How one delivery attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Delivered,
    Failed,
    /// The receiver refused the batch as too large (it is sent again in halves).
    TooLarge,
    /// The receiver answered 410 Gone: the destination was disabled.
    Gone,
}

/// One attempt to deliver events to a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Time-ordered (a UUIDv7).
    pub id: uuid::Uuid,
    pub tenant: TenantId,
    pub destination: DestinationId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The events sent together (none for a test send).
    pub events: Vec<EventId>,
    pub outcome: AttemptOutcome,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// When the events are tried again (failed, with attempts left).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_retry_at: Option<OffsetDateTime>,
    /// How many of the events ran out of attempts and went to the dead letters.
    pub dead_lettered: u32,
    /// A test send (`POST /v1/destinations/{id}/test`), not an event's delivery.
    pub test: bool,
}

/// A place in a destination's attempts, newest first: the last attempt of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCursor {
    pub at_micros: i64,
    pub id: uuid::Uuid,
}

impl AttemptCursor {
    pub fn of(attempt: &Attempt) -> Self {
        Self {
            at_micros: crate::record::micros_of(attempt.at),
            id: attempt.id,
        }
    }

    /// The opaque token clients see: 48 hex digits.
    pub fn token(&self) -> String {
        hex_pair(self.at_micros, self.id)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (at_micros, id) = parse_hex_pair(token)?;
        Some(Self { at_micros, id })
    }
}

/// Counts of one tenant over some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rate_limited: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    /// Bytes of the accepted events' JSON.
    pub stored_bytes: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.rate_limited += other.rate_limited;
        self.delivered += other.delivered;
        self.dead_lettered += other.dead_lettered;
        self.stored_bytes += other.stored_bytes;
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The seven counters in a fixed order (the embedded store's value layout).
    pub(crate) fn to_array(self) -> [u64; 7] {
        [
            self.accepted,
            self.duplicates,
            self.rejected,
            self.rate_limited,
            self.delivered,
            self.dead_lettered,
            self.stored_bytes,
        ]
    }

    pub(crate) fn from_array(values: [u64; 7]) -> Self {
        let [
            accepted,
            duplicates,
            rejected,
            rate_limited,
            delivered,
            dead_lettered,
            stored_bytes,
        ] = values;
        Self {
            accepted,
            duplicates,
            rejected,
            rate_limited,
            delivered,
            dead_lettered,
            stored_bytes,
        }
    }
}

/// A tenant's counts of one minute (minutes since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCounts {
    pub tenant: TenantId,
    pub minute: i64,
    pub counts: Counts,
}

/// A tenant's counts: per minute since some minute, and since the first count.
#[derive(Debug, Clone, Default)]
pub struct TenantCounts {
    pub minutes: Vec<(i64, Counts)>,
    pub all_time: Counts,
}

/// Counts not yet written to the store: every node adds to its own tally as things
/// happen (cheap, no I/O on the request path) and a task writes it out every few seconds
/// with [`ActivityStore::add_counts`]. A crash loses the last few seconds of counts, never
/// an event.
#[derive(Debug, Default)]
pub struct Tally {
    pending: std::sync::Mutex<std::collections::HashMap<(TenantId, i64), Counts>>,
}

/// Minutes since the epoch of a time.
pub fn minute_of(at: OffsetDateTime) -> i64 {
    at.unix_timestamp().div_euclid(60)
}

impl Tally {
    /// Adds to the tenant's counts of the current minute.
    pub fn add(&self, tenant: TenantId, change: impl FnOnce(&mut Counts)) {
        let minute = minute_of(OffsetDateTime::now_utc());
        let mut pending = self.pending.lock().expect("tally lock is never poisoned");
        change(pending.entry((tenant, minute)).or_default());
    }

    /// Takes everything counted so far.
    pub fn take(&self) -> Vec<MinuteCounts> {
        let pending =
            std::mem::take(&mut *self.pending.lock().expect("tally lock is never poisoned"));
        pending
            .into_iter()
            .filter(|(_, counts)| !counts.is_zero())
            .map(|((tenant, minute), counts)| MinuteCounts {
                tenant,
                minute,
                counts,
            })
            .collect()
    }

    /// Gives back counts that could not be written, to be written with the next ones.
    pub fn put_back(&self, counts: Vec<MinuteCounts>) {
        let mut pending = self.pending.lock().expect("tally lock is never poisoned");
        for entry in counts {
            pending
                .entry((entry.tenant, entry.minute))
                .or_default()
                .add(&entry.counts);
        }
    }
}

/// Sends one made-up event to a destination now and records the attempt (the delivery
/// side implements it; the API calls it for `POST /v1/destinations/{id}/test`).
#[async_trait]
pub trait TestSend: Send + Sync + Debug + 'static {
    async fn send_test(
        &self,
        destination: &pulsestream_core::Destination,
    ) -> Result<Attempt, StoreError>;
}

/// The live tail, delivery attempts and counts.
#[async_trait]
pub trait ActivityStore: Send + Sync + Debug + 'static {
    /// Up to `limit` of the tenant's events committed after `after`, in commit order.
    /// `None` reads from the oldest event the tail holds.
    async fn tail(
        &self,
        tenant: TenantId,
        after: Option<TailPosition>,
        limit: usize,
    ) -> Result<TailPage, StoreError>;

    /// The position of the tenant's newest event in the tail (where a tail starting
    /// now begins), or `None` if it holds none.
    async fn tail_end(&self, tenant: TenantId) -> Result<Option<TailPosition>, StoreError>;

    /// Records one attempt.
    async fn record_attempt(&self, attempt: &Attempt) -> Result<(), StoreError>;

    /// Up to `limit` of the destination's attempts, newest first, from before `before`.
    async fn attempts(
        &self,
        destination: DestinationId,
        before: Option<AttemptCursor>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError>;

    /// Up to `limit` attempts that carried this event, newest first.
    async fn event_attempts(
        &self,
        tenant: TenantId,
        event: EventId,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError>;

    /// Adds counts to their minutes (and to the tenants' all-time counts).
    async fn add_counts(&self, counts: &[MinuteCounts]) -> Result<(), StoreError>;

    /// The tenant's counts of each minute from `since_minute` on (minutes without any
    /// count are left out), and its all-time counts.
    async fn counts(&self, tenant: TenantId, since_minute: i64)
    -> Result<TenantCounts, StoreError>;

    /// Deletes attempts made before `attempts_before` and minute counts of minutes before
    /// `minutes_before`. Returns how many attempts went.
    async fn prune_activity(
        &self,
        attempts_before: OffsetDateTime,
        minutes_before: i64,
    ) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_tokens_round_trip_and_sort_like_positions() {
        let a = TailPosition {
            commit: -5,
            within: 7,
            duplicate: false,
        };
        let a_again = TailPosition {
            duplicate: true,
            ..a
        };
        let b = TailPosition {
            commit: 1_700_000_000_000_000,
            within: EventId::from_parts(-10, 0).0.as_u128(),
            duplicate: false,
        };
        for position in [a, a_again, b] {
            assert_eq!(TailPosition::parse(&position.token()), Some(position));
        }
        assert!(a < a_again && a_again < b);
        assert!(a.token() < a_again.token() && a_again.token() < b.token());
        assert_eq!(TailPosition::parse("zz"), None);
        assert_eq!(TailPosition::parse(&"g".repeat(49)), None);
        assert_eq!(TailPosition::parse(&format!("{}2", &a.token()[..48])), None);
        assert_eq!(TailPosition::parse(&"é".repeat(30)), None);
    }
}
