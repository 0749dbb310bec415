//! The delivery queue of the embedded store.
//!
//! `outbox` holds one entry per (destination, event) to deliver, keyed by destination, due
//! time and event id, so a worker's claim is one range scan of its own destination and a
//! slow destination never gets in another's way. Entries are written by the writer thread
//! in the same commit as their events. Outcomes (delivered, rescheduled, dead-lettered) are
//! atomic fjall batches without fsync: losing one in a crash only means a redelivery, which
//! at-least-once allows. Destinations are cached in memory, shared with the writer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fjall::{Database, Keyspace, Readable};
use pulsestream_core::{Destination, DestinationId, EventId, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::keys;
use crate::{Circuit, DeadLetter, Delivery, DeliveryStats, QueueOrder, QueuePosition, StoreError};
use std::ops::Bound;

/// Destinations by tenant, read by the writer on every commit.
pub(crate) type DestinationCache = Arc<RwLock<HashMap<TenantId, Vec<Destination>>>>;

const DESTINATION_PREFIX: &[u8] = b"destination/";
/// Counting a queue stops here: past it, "at least this many" is all an operator needs.
const COUNT_CAP: usize = 1_000_000;

pub(crate) fn destination_key(id: DestinationId) -> Vec<u8> {
    [DESTINATION_PREFIX, id.as_bytes().as_slice()].concat()
}

pub(crate) fn load_destinations(
    meta: &Keyspace,
) -> Result<HashMap<TenantId, Vec<Destination>>, StoreError> {
    let mut by_tenant: HashMap<TenantId, Vec<Destination>> = HashMap::new();
    for entry in meta.prefix(DESTINATION_PREFIX) {
        let (_, value) = entry.into_inner().map_err(StoreError::unavailable)?;
        let destination: Destination = serde_json::from_slice(&value)
            .map_err(|err| StoreError::Corrupt(format!("destination record: {err}")))?;
        by_tenant
            .entry(destination.tenant)
            .or_default()
            .push(destination);
    }
    for destinations in by_tenant.values_mut() {
        destinations.sort_by_key(|destination| (destination.created_at, destination.id));
    }
    Ok(by_tenant)
}

/// `outbox` key: destination, due time, event.
pub(crate) fn outbox_key(destination: DestinationId, due_micros: i64, event: EventId) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..16].copy_from_slice(destination.as_bytes());
    key[16..24].copy_from_slice(&keys::order_preserving(due_micros));
    key[24..].copy_from_slice(event.as_bytes());
    key
}

pub(crate) fn decode_outbox_key(key: &[u8]) -> Result<(i64, EventId), StoreError> {
    let due = keys::from_order_preserving(keys::bytes_at(key, 16, "outbox key")?);
    Ok((
        due,
        EventId::from_bytes(keys::bytes_at(key, 24, "outbox key")?),
    ))
}

/// Marks the order at the end of an `outbox` value: 0xFF never occurs in the UTF-8 error
/// before it, so values written before ordering existed read as they always did.
const ORDER_MARK: u8 = 0xFF;

/// `outbox` value: attempts so far, the last error, then (for a destination that delivers
/// in order) the mark, the event's ordering key and its sequence number.
pub(crate) fn outbox_value(attempts: u32, error: &str, order: Option<QueueOrder>) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + error.len() + 17);
    value.extend_from_slice(&attempts.to_be_bytes());
    value.extend_from_slice(error.as_bytes());
    if let Some(order) = order {
        value.push(ORDER_MARK);
        value.extend_from_slice(&order.key.to_be_bytes());
        value.extend_from_slice(&order.seq.to_be_bytes());
    }
    value
}

/// Attempts and order of an `outbox` value.
pub(crate) fn decode_outbox_value(value: &[u8]) -> (u32, Option<QueueOrder>) {
    let attempts = value.get(..4).map_or(0, |bytes| {
        u32::from_be_bytes(bytes.try_into().expect("sliced to 4 bytes"))
    });
    let at = value.len().wrapping_sub(17);
    let order = (value.len() >= 21 && value[at] == ORDER_MARK).then(|| {
        let number = |from: usize| {
            i64::from_be_bytes(value[from..from + 8].try_into().expect("sliced to 8 bytes"))
        };
        QueueOrder {
            key: number(at + 1),
            seq: number(at + 9),
        }
    });
    (attempts, order)
}

pub(crate) fn dead_letter_key(destination: DestinationId, event: EventId) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(destination.as_bytes());
    key[16..].copy_from_slice(event.as_bytes());
    key
}

#[derive(Serialize, Deserialize)]
struct DeadLetterValue {
    attempts: u32,
    last_error: String,
    failed_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_key: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_seq: Option<i64>,
}

fn decode_stats(value: Option<&[u8]>) -> Result<StatsValue, StoreError> {
    match value {
        Some(value) => serde_json::from_slice(value)
            .map_err(|err| StoreError::Corrupt(format!("delivery stats: {err}"))),
        None => Ok(StatsValue::default()),
    }
}

#[derive(Serialize, Deserialize, Default)]
struct StatsValue {
    delivered: u64,
    circuit: String,
    last_error: Option<String>,
}

/// The embedded store's delivery queue.
#[derive(Clone)]
pub(crate) struct Queue {
    pub db: Database,
    pub outbox: Keyspace,
    pub dead_letters: Keyspace,
    pub stats: Keyspace,
    pub events: Keyspace,
    pub segments: Arc<super::segments::Segments>,
    pub numbers: super::numbers::TenantNumbers,
    pub destinations: DestinationCache,
    /// Serialises read-modify-write of the stats entries.
    pub stats_lock: Arc<std::sync::Mutex<()>>,
}

impl Queue {
    /// The ids of the tenant's destinations (from the cache).
    pub(crate) fn destination_ids(&self, tenant: TenantId) -> Vec<DestinationId> {
        self.destinations
            .read()
            .expect("destination cache lock is never poisoned")
            .get(&tenant)
            .map(|all| all.iter().map(|destination| destination.id).collect())
            .unwrap_or_default()
    }

    pub fn tenant_of(&self, destination: DestinationId) -> Option<TenantId> {
        let cache = self
            .destinations
            .read()
            .expect("destination cache lock is never poisoned");
        cache
            .values()
            .flatten()
            .find(|candidate| candidate.id == destination)
            .map(|found| found.tenant)
    }

    pub fn claim_due(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        after: Option<QueuePosition>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let Some(tenant) = self.tenant_of(destination) else {
            return Ok(Vec::new());
        };
        // A tenant without a number has stored nothing, so nothing is queued for it.
        let Some(number) = self.numbers.get(tenant) else {
            return Ok(Vec::new());
        };
        let low = match after {
            Some(position) => {
                Bound::Excluded(outbox_key(destination, position.due_micros, position.event))
            }
            None => Bound::Included(outbox_key(
                destination,
                i64::MIN,
                EventId::from_bytes([0; 16]),
            )),
        };
        let high = outbox_key(
            destination,
            crate::record::micros_of(now),
            EventId::from_bytes([0xff; 16]),
        );
        let mut claimed = Vec::new();
        let mut expired = Vec::new();
        for entry in self.outbox.range((low, Bound::Included(high))).take(limit) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let (due_micros, event) = decode_outbox_key(&key)?;
            let (attempts, order) = decode_outbox_value(&value);
            match self.event_json(number, event)? {
                Some(json) => claimed.push(Delivery {
                    tenant,
                    event,
                    attempts,
                    due_micros,
                    json,
                    order,
                }),
                None => expired.push(key),
            }
        }
        self.drop_expired(destination, expired)?;
        Ok(claimed)
    }

    /// The due time of the destination's first entry: the queue is ordered by due time.
    pub fn next_due(
        &self,
        destination: DestinationId,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let Some(entry) = self.outbox.prefix(destination.as_bytes()).next() else {
            return Ok(None);
        };
        let key = entry.key().map_err(StoreError::unavailable)?;
        let (due_micros, _) = decode_outbox_key(&key)?;
        Ok(Some(
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(due_micros) * 1_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ))
    }

    /// Removes queue entries whose events are gone (past their tenant's retention): they
    /// are dropped, not delivered, and counted.
    fn drop_expired(
        &self,
        destination: DestinationId,
        keys: Vec<fjall::Slice>,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        metrics::counter!("pulsestream_deliveries_total", "destination" => destination.to_string(), "outcome" => "expired")
            .increment(keys.len() as u64);
        let mut batch = self.db.batch();
        for key in keys {
            batch.remove(&self.outbox, key);
        }
        batch.commit().map_err(StoreError::unavailable)
    }

    /// The stored JSON of a queued event, or `None` when the event is gone (expired).
    fn event_json(
        &self,
        number: keys::TenantNo,
        event: EventId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self
            .events
            .get(keys::event_key(number, event))
            .map_err(StoreError::unavailable)?
        {
            Some(stored) => Ok(Some(self.segments.event_json(&stored)?.0.into_owned())),
            None => Ok(None),
        }
    }

    /// See `DeliveryQueue::claim_ordered`. Only this process's one worker per destination
    /// claims, and it records an outcome before its next claim, so claimed entries need no
    /// lease: an entry still in the queue is waiting, whatever its due time says.
    pub fn claim_ordered(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let Some(tenant) = self.tenant_of(destination) else {
            return Ok(Vec::new());
        };
        let Some(number) = self.numbers.get(tenant) else {
            return Ok(Vec::new());
        };
        let mut queued = Vec::new();
        for entry in self.outbox.prefix(destination.as_bytes()) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let (due_micros, event) = decode_outbox_key(&key)?;
            let (attempts, order) = decode_outbox_value(&value);
            // Entries from before the destination had an order go first, as one key.
            let order = order.unwrap_or(QueueOrder { key: 0, seq: 0 });
            queued.push((event, due_micros, attempts, order));
        }
        queued.sort_unstable_by_key(|(.., order)| order.seq);
        let now = crate::record::micros_of(now);
        let mut held: std::collections::HashSet<i64> = std::collections::HashSet::new();
        let mut expired = Vec::new();
        let mut claimed = Vec::new();
        for (event, due_micros, attempts, order) in queued {
            if claimed.len() == limit {
                break;
            }
            if held.contains(&order.key) {
                continue;
            }
            if due_micros > now {
                // Waiting for a retry: every later event of its key waits behind it.
                held.insert(order.key);
                continue;
            }
            let Some(json) = self.event_json(number, event)? else {
                expired.push(outbox_key(destination, due_micros, event));
                continue;
            };
            claimed.push(Delivery {
                tenant,
                event,
                attempts,
                due_micros,
                json,
                order: Some(order),
            });
        }
        self.drop_expired(
            destination,
            expired.into_iter().map(|key| key.to_vec().into()).collect(),
        )?;
        Ok(claimed)
    }

    pub fn record_delivered(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        let _guard = self
            .stats_lock
            .lock()
            .expect("stats lock is never poisoned");
        let mut stats = self.read_stats(destination)?;
        stats.delivered += deliveries.len() as u64;
        let mut batch = self.db.batch();
        for delivery in deliveries {
            batch.remove(
                &self.outbox,
                outbox_key(destination, delivery.due_micros, delivery.event),
            );
        }
        batch.insert(
            &self.stats,
            destination.as_bytes(),
            serde_json::to_vec(&stats).map_err(StoreError::unavailable)?,
        );
        batch.commit().map_err(StoreError::unavailable)
    }

    pub fn reschedule(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        due: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let due_micros = crate::record::micros_of(due);
        let mut batch = self.db.batch();
        for delivery in deliveries {
            batch.remove(
                &self.outbox,
                outbox_key(destination, delivery.due_micros, delivery.event),
            );
            batch.insert(
                &self.outbox,
                outbox_key(destination, due_micros, delivery.event),
                outbox_value(delivery.attempts + 1, error, delivery.order),
            );
        }
        batch.commit().map_err(StoreError::unavailable)
    }

    pub fn dead_letter(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        error: &str,
    ) -> Result<(), StoreError> {
        let failed_at = OffsetDateTime::now_utc().unix_timestamp();
        let mut batch = self.db.batch();
        for delivery in deliveries {
            batch.remove(
                &self.outbox,
                outbox_key(destination, delivery.due_micros, delivery.event),
            );
            let value = DeadLetterValue {
                attempts: delivery.attempts + 1,
                last_error: error.to_owned(),
                failed_at,
                order_key: delivery.order.map(|order| order.key),
                order_seq: delivery.order.map(|order| order.seq),
            };
            batch.insert(
                &self.dead_letters,
                dead_letter_key(destination, delivery.event),
                serde_json::to_vec(&value).map_err(StoreError::unavailable)?,
            );
        }
        batch.commit().map_err(StoreError::unavailable)
    }

    pub fn record_circuit(
        &self,
        destination: DestinationId,
        circuit: Circuit,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let _guard = self
            .stats_lock
            .lock()
            .expect("stats lock is never poisoned");
        let mut stats = self.read_stats(destination)?;
        stats.circuit = circuit.as_str().to_owned();
        if let Some(error) = error {
            stats.last_error = Some(error.to_owned());
        }
        self.stats
            .insert(
                destination.as_bytes(),
                serde_json::to_vec(&stats).map_err(StoreError::unavailable)?,
            )
            .map_err(StoreError::unavailable)
    }

    fn read_stats(&self, destination: DestinationId) -> Result<StatsValue, StoreError> {
        let value = self
            .stats
            .get(destination.as_bytes())
            .map_err(StoreError::unavailable)?;
        decode_stats(value.as_deref())
    }

    /// The destination's counts, read from one snapshot: a delivery commits the removal of
    /// its queue entries and the count of delivered events together, and reading them apart
    /// could see one without the other (pending + delivered would dip while events go out).
    pub fn stats(&self, destination: DestinationId) -> Result<DeliveryStats, StoreError> {
        let snapshot = self.db.snapshot();
        let stored = decode_stats(
            snapshot
                .get(&self.stats, destination.as_bytes())
                .map_err(StoreError::unavailable)?
                .as_deref(),
        )?;
        let circuit = match stored.circuit.as_str() {
            "open" => Circuit::Open,
            "half_open" => Circuit::HalfOpen,
            _ => Circuit::Closed,
        };
        Ok(DeliveryStats {
            pending: snapshot
                .prefix(&self.outbox, destination.as_bytes())
                .take(COUNT_CAP)
                .count() as u64,
            delivered: stored.delivered,
            dead_lettered: snapshot
                .prefix(&self.dead_letters, destination.as_bytes())
                .take(COUNT_CAP)
                .count() as u64,
            circuit,
            last_error: stored.last_error,
        })
    }

    pub fn dead_letters(
        &self,
        destination: DestinationId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut letters = Vec::new();
        for entry in self.dead_letters.prefix(destination.as_bytes()).take(limit) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let event = EventId::from_bytes(keys::bytes_at(&key, 16, "dead letter key")?);
            let value: DeadLetterValue = serde_json::from_slice(&value)
                .map_err(|err| StoreError::Corrupt(format!("dead letter: {err}")))?;
            letters.push(DeadLetter {
                event,
                attempts: value.attempts,
                last_error: value.last_error,
                failed_at: OffsetDateTime::from_unix_timestamp(value.failed_at)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            });
        }
        Ok(letters)
    }

    pub fn replay(
        &self,
        destination: DestinationId,
        events: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        let read =
            |event: EventId, value: &[u8]| -> Result<(EventId, Option<QueueOrder>), StoreError> {
                let value: DeadLetterValue = serde_json::from_slice(value)
                    .map_err(|err| StoreError::Corrupt(format!("dead letter: {err}")))?;
                let order = value.order_key.map(|key| QueueOrder {
                    key,
                    seq: value.order_seq.unwrap_or(0),
                });
                Ok((event, order))
            };
        let chosen: Vec<(EventId, Option<QueueOrder>)> = match events {
            Some(events) => {
                let mut chosen = Vec::new();
                for event in events {
                    if let Some(value) = self
                        .dead_letters
                        .get(dead_letter_key(destination, *event))
                        .map_err(StoreError::unavailable)?
                    {
                        chosen.push(read(*event, &value)?);
                    }
                }
                chosen
            }
            None => self
                .dead_letters
                .prefix(destination.as_bytes())
                .map(|entry| {
                    let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
                    read(
                        EventId::from_bytes(keys::bytes_at(&key, 16, "dead letter key")?),
                        &value,
                    )
                })
                .collect::<Result<_, StoreError>>()?,
        };
        let now = crate::record::micros_of(OffsetDateTime::now_utc());
        let mut batch = self.db.batch();
        for (event, order) in &chosen {
            batch.remove(&self.dead_letters, dead_letter_key(destination, *event));
            batch.insert(
                &self.outbox,
                outbox_key(destination, now, *event),
                outbox_value(0, "", *order),
            );
        }
        batch.commit().map_err(StoreError::unavailable)?;
        Ok(chosen.len())
    }

    pub fn purge_dead_letters(&self, destination: DestinationId) -> Result<usize, StoreError> {
        self.remove_prefix(&self.dead_letters.clone(), destination)
    }

    /// Removes every entry of a destination from a keyspace, in batches.
    pub fn remove_prefix(
        &self,
        keyspace: &Keyspace,
        destination: DestinationId,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let keys: Vec<_> = keyspace
                .prefix(destination.as_bytes())
                .take(10_000)
                .map(|entry| entry.key().map_err(StoreError::unavailable))
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(removed);
            }
            removed += keys.len();
            let mut batch = self.db.batch();
            for key in keys {
                batch.remove(keyspace, key);
            }
            batch.commit().map_err(StoreError::unavailable)?;
        }
    }
}
