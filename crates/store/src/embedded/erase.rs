//! Erasure on the embedded store: events removed with a tombstone kept, and the tenant's
//! audit log.
//!
//! An erased event loses its `events` entry (the JSON), its `by_type` entry and its dead
//! letters in one commit; its queued deliveries are dropped when next claimed (the claim
//! finds no JSON). Its `dedup` entry stays — id and content hash, no payload — so a resend
//! is a `duplicate`, and an `erased` entry (tenant, id) → dedup key lets retention find that
//! tombstone by time and drop it with the rest of the tenant's expired events.
//!
//! Removing a key in an LSM tree writes a tombstone: the JSON stays in fjall's journal and
//! blob files until fjall retires them (the journal after 64 MB of later writes, the blob
//! file when its compaction rewrites it). A purge that forces both was tried and did not
//! hold (ARCHITECTURE.md, Erasure): making the bytes leave the disk on time is part of
//! the store-v2 layout.

use pulsestream_core::{EventId, TenantId};

use super::activity::Keyed;
use super::{EmbeddedStore, keys};
use crate::{Erasure, StoreError};

/// `erasures`: tenant id, erasure id (UUID v7, so time order) → the entry as JSON.
fn erasure_key(tenant: TenantId, id: uuid::Uuid) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(tenant.0.as_bytes());
    key[16..].copy_from_slice(id.as_bytes());
    key
}

impl EmbeddedStore {
    /// See `EventStore::erase_events`.
    pub(crate) fn erase(&self, tenant: TenantId, ids: &[EventId]) -> Result<u64, StoreError> {
        let ks = &self.keyspaces;
        let Some(number) = ks.numbers.get(tenant) else {
            return Ok(0);
        };
        let destinations = self.queue.destination_ids(tenant);
        let mut batch = self.db.batch();
        let mut erased = Vec::new();
        let mut values = Vec::new();
        for &id in ids {
            let key = keys::event_key(number, id);
            let Some(value) = ks.events.get(key).map_err(StoreError::unavailable)? else {
                continue;
            };
            let (json, _) = ks.segments.event_json(&value)?;
            let keyed: Keyed<'_> = serde_json::from_slice(&json)
                .map_err(|err| StoreError::Corrupt(format!("stored event {id}: {err}")))?;
            batch.remove(&ks.events, key);
            batch.remove(&ks.by_type, keys::type_key(number, &keyed.event_type, id));
            // The tombstone's dedup key, for retention to drop it by time.
            batch.insert(&ks.erased, key, keys::hashed_key(number, &keyed.event_id));
            for destination in &destinations {
                batch.remove(
                    &ks.dead_letters,
                    super::delivery::dead_letter_key(*destination, id),
                );
            }
            erased.push(id);
            values.push(value.to_vec());
        }
        if erased.is_empty() {
            return Ok(0);
        }
        // Their records are rewritten out of the segment log (see `reclaim`).
        super::reclaim::mark_erased(&mut batch, ks, &values)?;
        {
            let _relocation = ks
                .relocation
                .lock()
                .expect("the relocation lock is never poisoned");
            batch
                .durability(Some(fjall::PersistMode::SyncData))
                .commit()
                .map_err(StoreError::unavailable)?;
        }
        self.reclaimer.wake();
        let count = erased.len() as u64;
        // Out of the search index before the erasure answers.
        if let Some(index) = &self.index {
            index.erase(number, erased)?;
        }
        Ok(count)
    }

    /// Drops the tombstones of erased events whose ids are in `range` (by time), with the
    /// dedup entries they kept: called by retention with the bounds it expires.
    pub(crate) fn expire_tombstones(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        range: std::ops::Range<[u8; keys::EVENT_KEY_LEN]>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let ks = &self.keyspaces;
        let mut dropped = 0;
        for entry in ks.erased.range(range).take(limit) {
            let (key, dedup_key) = entry.into_inner().map_err(StoreError::unavailable)?;
            let id = keys::id_suffix(&key)?;
            // Only this event's own dedup entry (a hash collision names another).
            if let Some(dedup) = ks.dedup.get(&dedup_key).map_err(StoreError::unavailable)?
                && keys::decode_dedup(&dedup)?.0 == id
            {
                batch.remove(&ks.dedup, dedup_key);
            }
            batch.remove(&ks.erased, key);
            dropped += 1;
        }
        Ok(dropped)
    }

    pub(crate) fn put_erasure(
        &self,
        tenant: TenantId,
        erasure: &Erasure,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(erasure).map_err(StoreError::unavailable)?;
        let mut batch = self.db.batch();
        batch.insert(
            &self.keyspaces.erasures,
            erasure_key(tenant, erasure.id),
            value,
        );
        batch
            .durability(Some(fjall::PersistMode::SyncData))
            .commit()
            .map_err(StoreError::unavailable)
    }

    pub(crate) fn list_erasures(
        &self,
        tenant: TenantId,
        before: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<Erasure>, StoreError> {
        let low = erasure_key(tenant, uuid::Uuid::nil());
        let high = erasure_key(tenant, before.unwrap_or(uuid::Uuid::max()));
        let mut page = Vec::new();
        for entry in self.keyspaces.erasures.range(low..high).rev().take(limit) {
            let (_, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            page.push(
                serde_json::from_slice(&value)
                    .map_err(|err| StoreError::Corrupt(format!("erasure entry: {err}")))?,
            );
        }
        Ok(page)
    }
}
