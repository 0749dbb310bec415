//! PulseStream's storage seam and its embedded implementation.
//!
//! The HTTP layer talks to storage only through [`EventStore`] and [`TenantStore`]. Their
//! operations carry the rules that make PulseStream safe: `append_batch` deduplicates by
//! `(tenant, event_id)`, records the idempotency outcome and commits durably before it
//! returns; every call is scoped to a tenant. The embedded implementation lives in
//! [`embedded`]; a PostgreSQL one can stand behind the same traits.

mod activity;
pub mod embedded;
mod plan;
pub mod postgres;
mod record;
mod search;
mod wakeups;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
pub use pulsestream_core::Circuit;
use pulsestream_core::{
    Destination, DestinationId, EventId, NewEvent, Tenant, TenantChange, TenantChangeError,
    TenantId,
};
use time::OffsetDateTime;

pub use activity::{
    ActivityStore, Attempt, AttemptCursor, AttemptOutcome, Counts, MinuteCounts, TailPage,
    TailPosition, Tally, TenantCounts, TestSend, minute_of,
};
pub use plan::IDEMPOTENCY_WINDOW;
pub use postgres::PartitionPass;
pub use search::{Cursor, Order, PayloadFilter, SearchQuery, event_matches};
pub use wakeups::Wakeups;

/// What the store can fail with, as its callers handle it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full: the server is shedding load and the request had no effect.
    #[error("store is overloaded")]
    Overloaded,
    /// The store cannot serve requests (I/O failure, shutting down, database down).
    #[error("store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored bytes could not be decoded: a bug or disk corruption, never the client's fault.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The request's `Idempotency-Key` is recorded (within 24 hours) for a different request
    /// body, by a request that finished while this one waited: nothing of it was stored.
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
}

/// Why `TenantStore::change_tenant` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum TenantChangeFailed {
    #[error("no such tenant")]
    NotFound,
    /// The change does not apply to the tenant as stored (a zero limit, an unknown key).
    #[error(transparent)]
    Rejected(#[from] TenantChangeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StoreError {
    pub(crate) fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(err))
    }
}

/// Validated events of one request, to be stored together.
#[derive(Debug)]
pub struct AppendBatch {
    pub tenant: TenantId,
    pub events: Vec<NewEvent>,
    /// When the request came in: each event's `received_at`, and its timestamp if it had none.
    pub received_at: OffsetDateTime,
    /// The `Idempotency-Key` of the request, recorded in the same commit as its events.
    pub idempotency: Option<IdempotencyClaim>,
}

/// An `Idempotency-Key` and the hash of the request body it was first used with.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    pub request_hash: u128,
}

/// What became of one event of an [`AppendBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendStatus {
    /// Stored now, under this id.
    Accepted(EventId),
    /// The same event (same `event_id`, same content) was stored before, under this id.
    Duplicate(EventId),
    /// Another event with this `event_id` but different content is stored, under this id.
    Conflict(EventId),
}

/// The outcome of `append_batch`, one status per event in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub statuses: Vec<AppendStatus>,
}

impl AppendOutcome {
    /// Whether any event was stored by this append (and so maybe enqueued). A replayed
    /// idempotent request says yes too; a wakeup too many costs one claim.
    pub fn stored_any(&self) -> bool {
        self.statuses
            .iter()
            .any(|status| matches!(status, AppendStatus::Accepted(_)))
    }
}

/// A finished request's outcome, kept under its `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_hash: u128,
    pub created_at: OffsetDateTime,
    pub statuses: Vec<AppendStatus>,
}

/// One erasure, as the tenant's audit log keeps it (and the API shows it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Erasure {
    /// Time-ordered (UUID v7): the audit log's order and its cursor.
    pub id: uuid::Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// The API key that asked for it.
    pub requested_by: ErasureKey,
    /// The filter as the request gave it.
    pub filter: serde_json::Map<String, serde_json::Value>,
    /// How many events were erased.
    pub erased: u64,
}

/// The key an erasure was asked with: its id and first characters (never the key).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErasureKey {
    pub key_id: String,
    pub key_prefix: String,
}

/// A stored event as the API shows it: `json` is the complete JSON object, ready to send.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: EventId,
    pub json: Vec<u8>,
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub events: Vec<StoredEvent>,
    pub next_cursor: Option<Cursor>,
}

impl SearchPage {
    /// A page of `events`; when `more` match past it, the cursor points after its last event.
    pub fn new(events: Vec<StoredEvent>, more: bool) -> Self {
        let next_cursor = if more {
            events.last().map(|event| Cursor(event.id))
        } else {
            None
        };
        Self {
            events,
            next_cursor,
        }
    }
}

/// Events: appended durably and exactly once, read back at once.
#[async_trait]
pub trait EventStore: Send + Sync + Debug + 'static {
    /// Stores the batch's new events, reports duplicates and conflicts, and records the
    /// idempotency outcome, all in one durable commit. Returns only once it is durable.
    ///
    /// # Errors
    /// [`StoreError::Overloaded`] when the write queue is full, [`StoreError::Unavailable`]
    /// when the commit failed; in both cases nothing of the batch was stored.
    async fn append_batch(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError>;

    /// Returns the tenant's event with this id, if there is one.
    async fn event(&self, tenant: TenantId, id: EventId)
    -> Result<Option<StoredEvent>, StoreError>;

    /// Returns one page of the tenant's events that match the query.
    async fn search(&self, tenant: TenantId, query: SearchQuery) -> Result<SearchPage, StoreError>;

    /// Returns the outcome recorded under an `Idempotency-Key`, if any.
    async fn idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Deletes up to `limit` of the tenant's events whose `timestamp` is before `before`,
    /// with their index and dedup entries and dead letters (their queued deliveries are
    /// dropped when next claimed, or with them). Returns how many went: call again until 0.
    /// An `event_id` deleted so may be stored again: retention is the dedup horizon.
    async fn expire_events(
        &self,
        tenant: TenantId,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Time partitions: makes the partitions of the months around now, and drops whole the
    /// ones that end before the earliest retention cutoff over all tenants (none while
    /// some tenant keeps its events forever; a tenant without its own retention keeps its
    /// events `default_retention_days`, 0: forever), with what refers to their events. The
    /// tenants are read again once a partition is held against writes, so a tenant made or
    /// changed while a pass runs never loses events to it.
    /// PostgreSQL only (`postgres::partitions`); the embedded store gives bytes back by
    /// segment files (`embedded::reclaim`) and does nothing here.
    async fn maintain_partitions(
        &self,
        default_retention_days: u32,
    ) -> Result<PartitionPass, StoreError> {
        let _ = default_retention_days;
        Ok(PartitionPass::default())
    }

    /// Erases the tenant's events with these ids: their JSON, index entries, queued
    /// deliveries and dead letters go in one commit. Each keeps a tombstone without payload
    /// (its `event_id`, id and content hash), so a resend is answered `duplicate` instead of
    /// storing the data again, until the tenant's retention passes its timestamp. Ids that
    /// are not (or no longer) stored are skipped. Returns how many were erased now.
    ///
    /// The erased JSON may stay in the store's files until they are compacted (embedded:
    /// fjall's journal and blob files; PostgreSQL: old row versions until VACUUM).
    async fn erase_events(&self, tenant: TenantId, ids: &[EventId]) -> Result<u64, StoreError>;

    /// Adds an entry to the tenant's erasure audit log.
    async fn record_erasure(&self, tenant: TenantId, erasure: &Erasure) -> Result<(), StoreError>;

    /// The tenant's erasure audit log, newest first: up to `limit` entries older than the
    /// entry `before` (the last of the previous page).
    async fn erasures(
        &self,
        tenant: TenantId,
        before: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Erasure>, StoreError>;

    /// Checks that the store can serve requests.
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Flushes everything and stops accepting writes.
    async fn close(&self) -> Result<(), StoreError>;
}

/// Tenants, their key hashes and the admin token's hash.
#[async_trait]
pub trait TenantStore: Send + Sync + Debug + 'static {
    /// Stores a new tenant durably.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;

    /// Applies `change` to the tenant as stored and stores the result durably, as one atomic
    /// step against every other change on any node (a revoked key never comes back because
    /// a concurrent change rewrote an older copy). Returns the tenant as changed.
    ///
    /// # Errors
    /// [`TenantChangeFailed::NotFound`], [`TenantChangeFailed::Rejected`] (nothing changed),
    /// or the store's own failure.
    async fn change_tenant(
        &self,
        id: TenantId,
        change: &TenantChange,
    ) -> Result<Tenant, TenantChangeFailed>;

    /// Returns up to `limit` tenants, oldest first, starting after the tenant `after` (the
    /// last of the previous page).
    async fn tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, StoreError>;

    /// Returns one tenant.
    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError>;

    /// Returns the tenant owning the key whose SHA-256 (hex) is given.
    async fn tenant_by_key_hash(&self, hash: &str) -> Result<Option<Tenant>, StoreError>;

    /// Returns the stored hash of the admin token, if one was stored.
    async fn admin_token_hash(&self) -> Result<Option<String>, StoreError>;

    /// Stores the hash of the admin token.
    async fn set_admin_token_hash(&self, hash: &str) -> Result<(), StoreError>;
}

/// Everything a server needs from its store: events, tenants, destinations and their
/// queues, and what happened to them.
pub trait Store:
    EventStore + TenantStore + DestinationStore + DeliveryQueue + ActivityStore
{
}

impl<T: EventStore + TenantStore + DestinationStore + DeliveryQueue + ActivityStore> Store for T {}

/// One event waiting for one destination, as claimed by a delivery worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tenant: TenantId,
    pub event: EventId,
    /// Attempts made so far (0 for a fresh entry).
    pub attempts: u32,
    /// When it became due: the claim's identity in the queue.
    pub due_micros: i64,
    /// The event's JSON, as the API returns it.
    pub json: Vec<u8>,
    /// For a destination that delivers in order: the event's key and place.
    pub order: Option<QueueOrder>,
}

/// Where an entry of an ordered destination stands: its ordering key (a hash) and its
/// sequence number, which grows in the order events were stored (ingest order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOrder {
    pub key: i64,
    pub seq: i64,
}

/// A place in a destination's queue: entries are ordered by due time, then event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuePosition {
    pub due_micros: i64,
    pub event: EventId,
}

impl Delivery {
    /// Returns where this entry stands in its queue.
    pub fn position(&self) -> QueuePosition {
        QueuePosition {
            due_micros: self.due_micros,
            event: self.event,
        }
    }
}

/// An event that exhausted its attempts for a destination.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub event: EventId,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: OffsetDateTime,
}

/// What happened at a destination so far.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStats {
    pub pending: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub circuit: Circuit,
    pub last_error: Option<String>,
}

/// Where a tenant's events go: destinations, as stored. Every event stored after a
/// destination is put is enqueued for it (when it matches), in the event's own commit.
#[async_trait]
pub trait DestinationStore: Send + Sync + Debug + 'static {
    /// Stores a destination, new or changed; events stored from now on are enqueued for it.
    async fn put_destination(&self, destination: &Destination) -> Result<(), StoreError>;

    /// Returns a tenant's destinations, oldest first.
    async fn destinations(&self, tenant: TenantId) -> Result<Vec<Destination>, StoreError>;

    /// Returns every tenant's destinations (for the delivery dispatcher).
    async fn all_destinations(&self) -> Result<Vec<Destination>, StoreError>;

    /// Deletes a destination with its queue and dead letters. Returns whether it existed.
    async fn delete_destination(
        &self,
        tenant: TenantId,
        id: DestinationId,
    ) -> Result<bool, StoreError>;
}

/// The delivery queue of each destination. Entries are enqueued by
/// `EventStore::append_batch`, in the same commit as their events; delivery workers claim,
/// then record an outcome; what runs out of attempts waits in the dead letters.
#[async_trait]
pub trait DeliveryQueue: Send + Sync + Debug + 'static {
    /// Returns up to `limit` entries due at `now`, oldest first. Entries stay queued until
    /// an outcome is recorded, so a crash mid-delivery means a redelivery, never a loss.
    ///
    /// `after` is where the previous claim ended (`Delivery::position` of its last entry):
    /// the scan starts past it, so delivered entries (tombstones in an LSM) are not walked
    /// again and again. `None` scans the whole queue.
    async fn claim_due(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        after: Option<QueuePosition>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// For a destination that delivers in order: up to `limit` entries, in ingest order,
    /// each of which is due and has no earlier entry with the same ordering key still
    /// queued (waiting for a retry, or claimed and not yet recorded). Several entries of
    /// one key may come in one claim, in order. Costs a scan of the destination's whole
    /// queue. On a shared store, claims of one destination are serialised across nodes.
    async fn claim_ordered(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// When the destination's next queued entry falls due (a claimed one on PostgreSQL: when
    /// its lease ends), or `None` if its queue is empty.
    async fn next_due(
        &self,
        destination: DestinationId,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// The signals this store gives when it stores events, for the workers to sleep on.
    fn wakeups(&self) -> Arc<Wakeups>;

    /// Gives back claimed entries that were not sent (they did not fit a batch): due again
    /// at once for the next claim, no attempt counted.
    async fn release(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError>;

    /// Removes delivered entries from the queue.
    async fn record_delivered(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError>;

    /// Moves failed entries to a later due time, one more attempt counted.
    async fn reschedule(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        due: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Moves entries that ran out of attempts to the dead letters.
    async fn dead_letter(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        error: &str,
    ) -> Result<(), StoreError>;

    /// Records the destination's circuit state and last error, for the API.
    async fn record_circuit(
        &self,
        destination: DestinationId,
        circuit: Circuit,
        error: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Returns the destination's counts, circuit and last error.
    async fn delivery_stats(&self, destination: DestinationId)
    -> Result<DeliveryStats, StoreError>;

    /// Returns up to `limit` dead letters, oldest event first.
    async fn dead_letters(
        &self,
        destination: DestinationId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts dead letters (all, or these events) back in the queue with fresh attempts.
    /// Returns how many were replayed.
    async fn replay_dead_letters(
        &self,
        destination: DestinationId,
        events: Option<&[EventId]>,
    ) -> Result<usize, StoreError>;

    /// Deletes every dead letter of the destination. Returns how many there were.
    async fn purge_dead_letters(&self, destination: DestinationId) -> Result<usize, StoreError>;
}
