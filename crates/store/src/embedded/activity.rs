//! The embedded store's live tail, delivery attempts and counts (see `crate::activity`).
//!
//! - `tail` (written by the writer, in each event's commit): tenant, commit time, id.
//! - `attempts`: destination, time, attempt id → the attempt as JSON; and
//!   `attempts_by_event`: tenant, event, time, attempt id → destination, to find an event's
//!   attempts without scanning. Written without fsync: losing the last few in a crash loses
//!   a log line, not a delivery.
//! - `counts`: tenant id, minute → seven counters; the minute `i64::MAX` holds all-time
//!   counts. One process owns the store, so adding is a read-modify-write under a lock.

use std::ops::Bound;

use pulsestream_core::{DestinationId, EventId, TenantId};
use time::OffsetDateTime;

use super::keys::{self, TenantNo};
use super::{EmbeddedStore, read};
use crate::record::micros_of;
use crate::{
    Attempt, AttemptCursor, Counts, MinuteCounts, StoreError, TailPage, TailPosition, TenantCounts,
};

/// The `counts` minute that holds a tenant's all-time counts.
const ALL_TIME: i64 = i64::MAX;

fn attempt_key(destination: DestinationId, at_micros: i64, id: uuid::Uuid) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..16].copy_from_slice(destination.as_bytes());
    key[16..24].copy_from_slice(&keys::order_preserving(at_micros));
    key[24..].copy_from_slice(id.as_bytes());
    key
}

fn by_event_key(tenant: TenantNo, event: EventId, at_micros: i64, id: uuid::Uuid) -> [u8; 44] {
    let mut key = [0u8; 44];
    key[..4].copy_from_slice(&tenant.bytes());
    key[4..20].copy_from_slice(event.as_bytes());
    key[20..28].copy_from_slice(&keys::order_preserving(at_micros));
    key[28..].copy_from_slice(id.as_bytes());
    key
}

fn counts_key(tenant: TenantId, minute: i64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(tenant.as_bytes());
    key[16..].copy_from_slice(&keys::order_preserving(minute));
    key
}

pub(crate) fn decode_counts(value: &[u8]) -> Result<Counts, StoreError> {
    let mut values = [0u64; 7];
    for (i, slot) in values.iter_mut().enumerate() {
        *slot = u64::from_be_bytes(keys::bytes_at(value, i * 8, "counts value")?);
    }
    Ok(Counts::from_array(values))
}

fn encode_counts(counts: Counts) -> Vec<u8> {
    counts
        .to_array()
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect()
}

pub(crate) fn decode_attempt(value: &[u8]) -> Result<Attempt, StoreError> {
    serde_json::from_slice(value).map_err(|err| StoreError::Corrupt(format!("attempt: {err}")))
}

impl EmbeddedStore {
    pub(crate) fn read_tail(
        &self,
        tenant: TenantId,
        after: Option<TailPosition>,
        limit: usize,
    ) -> Result<TailPage, StoreError> {
        let ks = &self.keyspaces;
        let Some(number) = ks.numbers.get(tenant) else {
            return Ok(TailPage::default());
        };
        // The commit of `after` is read again, from the entry after it.
        let from = after.map_or(i64::MIN, |after| after.commit);
        let low = keys::tail_key(number, from);
        let high = keys::tail_key(number, i64::MAX);
        let mut page = TailPage::default();
        let mut read = 0usize;
        'groups: for entry in ks.tail.range(low..=high) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let commit = keys::decode_tail_key(&key)?;
            for (within, (id, duplicate)) in keys::decode_tail_value(&value)?.enumerate() {
                let position = TailPosition {
                    commit,
                    within: within as u128,
                    duplicate,
                };
                if after
                    .is_some_and(|after| (commit, position.within) <= (after.commit, after.within))
                {
                    continue;
                }
                if read == limit {
                    break 'groups;
                }
                read += 1;
                // An event deleted since (retention) is skipped, its place kept.
                if let Some(stored) = read::event(ks, tenant, id)? {
                    page.events.push((position, stored));
                }
            }
        }
        Ok(page)
    }

    pub(crate) fn tail_end_of(&self, tenant: TenantId) -> Result<Option<TailPosition>, StoreError> {
        let ks = &self.keyspaces;
        let Some(number) = ks.numbers.get(tenant) else {
            return Ok(None);
        };
        match ks.tail.prefix(number.bytes()).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
                let commit = keys::decode_tail_key(&key)?;
                let Some((within, (_, duplicate))) =
                    keys::decode_tail_value(&value)?.enumerate().last()
                else {
                    return Ok(None);
                };
                Ok(Some(TailPosition {
                    commit,
                    within: within as u128,
                    duplicate,
                }))
            }
        }
    }

    pub(crate) fn write_attempt(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let ks = &self.keyspaces;
        let at = micros_of(attempt.at);
        let value = serde_json::to_vec(attempt).map_err(StoreError::unavailable)?;
        let mut batch = self.db.batch();
        batch.insert(
            &ks.attempts,
            attempt_key(attempt.destination, at, attempt.id),
            value,
        );
        if !attempt.events.is_empty() {
            let number = ks.numbers.get_or_assign(attempt.tenant)?;
            for event in &attempt.events {
                batch.insert(
                    &ks.attempts_by_event,
                    by_event_key(number, *event, at, attempt.id),
                    attempt.destination.as_bytes(),
                );
            }
        }
        batch.commit().map_err(StoreError::unavailable)
    }

    pub(crate) fn read_attempts(
        &self,
        destination: DestinationId,
        before: Option<AttemptCursor>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let low = Bound::Included(attempt_key(destination, i64::MIN, uuid::Uuid::nil()).to_vec());
        let high = match before {
            Some(cursor) => {
                Bound::Excluded(attempt_key(destination, cursor.at_micros, cursor.id).to_vec())
            }
            None => Bound::Included(attempt_key(destination, i64::MAX, uuid::Uuid::max()).to_vec()),
        };
        let mut attempts = Vec::new();
        for entry in self
            .keyspaces
            .attempts
            .range::<Vec<u8>, _>((low, high))
            .rev()
            .take(limit)
        {
            let (_, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            attempts.push(decode_attempt(&value)?);
        }
        Ok(attempts)
    }

    pub(crate) fn read_event_attempts(
        &self,
        tenant: TenantId,
        event: EventId,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let ks = &self.keyspaces;
        let Some(number) = ks.numbers.get(tenant) else {
            return Ok(Vec::new());
        };
        let mut prefix = number.bytes().to_vec();
        prefix.extend_from_slice(event.as_bytes());
        let mut attempts = Vec::new();
        for entry in ks.attempts_by_event.prefix(&prefix).rev().take(limit) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let at = keys::bytes_at::<8>(&key, 20, "attempt index key")?;
            let id = keys::bytes_at::<16>(&key, 28, "attempt index key")?;
            let destination =
                DestinationId::from_bytes(keys::bytes_at(&value, 0, "attempt index")?);
            let mut attempt_key = [0u8; 40];
            attempt_key[..16].copy_from_slice(destination.as_bytes());
            attempt_key[16..24].copy_from_slice(&at);
            attempt_key[24..].copy_from_slice(&id);
            // Gone with its destination, or pruned: the index entry outlived it.
            if let Some(value) = ks
                .attempts
                .get(attempt_key)
                .map_err(StoreError::unavailable)?
            {
                let attempt = decode_attempt(&value)?;
                if attempt.tenant == tenant {
                    attempts.push(attempt);
                }
            }
        }
        Ok(attempts)
    }

    pub(crate) fn write_counts(&self, counts: &[MinuteCounts]) -> Result<(), StoreError> {
        let ks = &self.keyspaces;
        let _serial = self
            .counts_writes
            .lock()
            .expect("counts lock is never poisoned");
        let mut sums: std::collections::BTreeMap<[u8; 24], Counts> = Default::default();
        for entry in counts {
            for minute in [entry.minute, ALL_TIME] {
                sums.entry(counts_key(entry.tenant, minute))
                    .or_default()
                    .add(&entry.counts);
            }
        }
        let mut batch = self.db.batch();
        for (key, add) in sums {
            let mut total = match ks.counts.get(key).map_err(StoreError::unavailable)? {
                Some(value) => decode_counts(&value)?,
                None => Counts::default(),
            };
            total.add(&add);
            batch.insert(&ks.counts, key, encode_counts(total));
        }
        batch.commit().map_err(StoreError::unavailable)
    }

    pub(crate) fn read_counts(
        &self,
        tenant: TenantId,
        since_minute: i64,
    ) -> Result<TenantCounts, StoreError> {
        let ks = &self.keyspaces;
        let mut result = TenantCounts::default();
        let low = counts_key(tenant, since_minute);
        let high = counts_key(tenant, ALL_TIME);
        for entry in ks.counts.range(low..high) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let minute = keys::from_order_preserving(keys::bytes_at(&key, 16, "counts key")?);
            result.minutes.push((minute, decode_counts(&value)?));
        }
        if let Some(value) = ks.counts.get(high).map_err(StoreError::unavailable)? {
            result.all_time = decode_counts(&value)?;
        }
        Ok(result)
    }

    pub(crate) fn prune(
        &self,
        attempts_before: OffsetDateTime,
        minutes_before: i64,
    ) -> Result<u64, StoreError> {
        let ks = &self.keyspaces;
        let cutoff = micros_of(attempts_before);
        let mut pruned = 0u64;
        let mut batch = self.db.batch();
        // Attempts are keyed by destination, then time: each destination's old ones are one
        // range at its start (a deleted destination's went with it).
        let destinations: Vec<DestinationId> = self
            .queue
            .destinations
            .read()
            .expect("destination cache lock is never poisoned")
            .values()
            .flatten()
            .map(|destination| destination.id)
            .collect();
        let old = destinations.iter().flat_map(|destination| {
            let low = attempt_key(*destination, i64::MIN, uuid::Uuid::nil());
            let high = attempt_key(*destination, cutoff, uuid::Uuid::nil());
            ks.attempts.range(low..high)
        });
        for entry in old {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let attempt = decode_attempt(&value)?;
            if let Some(number) = ks.numbers.get(attempt.tenant) {
                for event in &attempt.events {
                    batch.remove(
                        &ks.attempts_by_event,
                        by_event_key(number, *event, micros_of(attempt.at), attempt.id),
                    );
                }
            }
            batch.remove(&ks.attempts, key);
            pruned += 1;
            if pruned.is_multiple_of(10_000) {
                batch.commit().map_err(StoreError::unavailable)?;
                batch = self.db.batch();
            }
        }
        for entry in ks.counts.iter() {
            let key = entry.key().map_err(StoreError::unavailable)?;
            let minute = keys::from_order_preserving(keys::bytes_at(&key, 16, "counts key")?);
            if minute < minutes_before {
                batch.remove(&ks.counts, key);
            }
        }
        batch.commit().map_err(StoreError::unavailable)?;
        Ok(pruned)
    }
}

/// The fields of a stored event's JSON that its index entries are keyed by (read by
/// retention and by erasure).
#[derive(serde::Deserialize)]
pub(crate) struct Keyed<'a> {
    #[serde(borrow)]
    pub event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
}

impl EmbeddedStore {
    /// See `EventStore::expire_events`. The events, their type-index and dedup entries and
    /// their dead letters go in one batch, with the tombstones of erased events of the same
    /// time (counted with them); the `tail` entries stay (the tail skips events it
    /// cannot find) and queue entries are dropped when claimed.
    pub(crate) fn expire(
        &self,
        tenant: TenantId,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let ks = &self.keyspaces;
        let Some(number) = ks.numbers.get(tenant) else {
            return Ok(0);
        };
        let low = keys::event_key(number, EventId::from_parts(i64::MIN, 0));
        let high = keys::event_key(number, EventId::from_parts(micros_of(before), 0));
        let destinations = self.queue.destination_ids(tenant);
        let mut batch = self.db.batch();
        let mut expired = 0u64;
        for entry in ks.events.range(low..high).take(limit) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let id = keys::id_suffix(&key)?;
            let (json, _) = ks.segments.event_json(&value)?;
            let keyed: Keyed<'_> = serde_json::from_slice(&json)
                .map_err(|err| StoreError::Corrupt(format!("stored event {id}: {err}")))?;
            batch.remove(&ks.events, key);
            batch.remove(&ks.by_type, keys::type_key(number, &keyed.event_type, id));
            let dedup_key = keys::hashed_key(number, &keyed.event_id);
            // Only this event's own dedup entry (a hash collision names another).
            if let Some(dedup) = ks.dedup.get(dedup_key).map_err(StoreError::unavailable)?
                && keys::decode_dedup(&dedup)?.0 == id
            {
                batch.remove(&ks.dedup, dedup_key);
            }
            for destination in &destinations {
                batch.remove(
                    &ks.dead_letters,
                    super::delivery::dead_letter_key(*destination, id),
                );
            }
            expired += 1;
        }
        // Erased events' tombstones go with the events of their time.
        let left = limit.saturating_sub(expired as usize);
        if left > 0 {
            expired += self.expire_tombstones(&mut batch, low..high, left)?;
        }
        {
            let _relocation = ks
                .relocation
                .lock()
                .expect("the relocation lock is never poisoned");
            batch.commit().map_err(StoreError::unavailable)?;
        }
        if expired > 0 {
            self.reclaimer.wake();
            if let Some(index) = &self.index {
                index.expire(number, EventId::from_parts(micros_of(before), 0));
            }
        }
        Ok(expired)
    }
}
