//! The embedded store: fjall (an LSM tree) in the data directory, nothing to install.
//!
//! Writes go through one writer thread ([`writer`]) that groups concurrent requests into a
//! single atomic, fdatasync'd commit; reads ([`read`]) run on the blocking pool and see every
//! committed write at once. Event JSON is written once into an append-only segment log
//! ([`segments`]) that the store owns, so retention and erasure drop and rewrite whole files
//! ([`reclaim`]); fjall keys a pointer to it by (tenant, id), ids starting with the event's
//! timestamp, so that keyspace is also the time index, and the LSM compacts only small
//! entries. Per event, a commit writes a record and three entries: the event's pointer, its
//! type-index entry and its dedup entry, each under a key of at most 20 bytes ([`keys`]).
//! Tenants are few and read on every request, so they are also cached in memory.

mod activity;
mod backup;
mod dedup_filter;
mod delivery;
mod erase;
mod fuzz;
mod identity;
mod index;
mod keys;
mod numbers;
mod read;
mod reclaim;
mod segments;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use pulsestream_core::{Destination, DestinationId, EventId, Tenant, TenantChange, TenantId};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::{
    AppendBatch, AppendOutcome, Circuit, DeadLetter, Delivery, DeliveryQueue, DeliveryStats,
    DestinationStore, EventStore, IdempotencyRecord, QueuePosition, SearchPage, SearchQuery,
    StoreError, StoredEvent, TenantChangeFailed, TenantStore,
};

pub use backup::{BACKUP_MARKER, BackupReport, backup_report};
pub use fuzz::stored_decoders;
pub use reclaim::{ReclaimConfig, ReclaimReport};
pub use writer::MAX_GROUP_EVENTS;

pub use writer::describe_metrics;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub dir: PathBuf,
    /// Requests waiting for the writer beyond which new ones are refused with 503.
    pub queue_capacity: usize,
    /// Block cache, in bytes.
    pub cache_bytes: u64,
    /// Memtable size of each index keyspace, in bytes: smaller ones keep the writer's
    /// skiplist searches in cache, larger ones flush less often.
    pub index_memtable_bytes: u64,
    /// Keys the in-memory dedup filter is first sized for (10 bits each; it doubles when
    /// full, and starts at twice the stored keys if that is more).
    pub dedup_filter_keys: u64,
    /// Keep the search index (full text and payload paths); without it those filters scan.
    pub search_index: bool,
    /// How the segment log gives bytes back (see `reclaim`).
    pub reclaim: ReclaimConfig,
    /// Size at which a segment file of the log is closed (retention drops whole files).
    pub segment_bytes: u64,
}

impl EmbeddedConfig {
    /// Default settings for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            queue_capacity: 1024,
            cache_bytes: 256 * 1024 * 1024,
            index_memtable_bytes: 16 * 1024 * 1024,
            dedup_filter_keys: 16 * 1024 * 1024,
            search_index: true,
            reclaim: ReclaimConfig::default(),
            segment_bytes: segments::SEGMENT_BYTES,
        }
    }
}

/// The keyspaces of the embedded store (see `keys` for their layouts).
#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub events: Keyspace,
    pub by_type: Keyspace,
    pub dedup: Keyspace,
    pub idempotency: Keyspace,
    pub meta: Keyspace,
    pub outbox: Keyspace,
    pub dead_letters: Keyspace,
    pub delivery_stats: Keyspace,
    pub tail: Keyspace,
    pub attempts: Keyspace,
    pub attempts_by_event: Keyspace,
    pub counts: Keyspace,
    /// Tombstones of erased events: (tenant, id) → the dedup key they keep (see `erase`).
    pub erased: Keyspace,
    /// The tenants' erasure audit logs (see `erase`).
    pub erasures: Keyspace,
    /// The tenants' numbers in keys.
    pub numbers: numbers::TenantNumbers,
    /// The events' JSON (see `segments`).
    pub segments: Arc<segments::Segments>,
    /// Held by whoever deletes `events` entries while committing, and by the reclaimer
    /// while it checks and moves pointers (see `reclaim`).
    pub relocation: Arc<Mutex<()>>,
}

impl Keyspaces {
    /// Opens (or creates) every keyspace of the store in `db`.
    fn open(
        db: &Database,
        data_dir: &Path,
        memtable_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        let meta = open_keyspace(db, "meta", memtable_bytes)?;
        Ok(Self {
            events: db
                .keyspace("events", || {
                    KeyspaceCreateOptions::default().with_kv_separation(Some(
                        // Every event goes to the blob files (fjall's default threshold,
                        // 1 KiB, kept typical ~450-byte events inline in the tree, where
                        // flushes and compactions rewrote them). Measured: ingest +3 to
                        // +10 % on a growing store, search no slower.
                        KvSeparationOptions::default().separation_threshold(64),
                    ))
                })
                .map_err(StoreError::unavailable)?,
            by_type: open_keyspace(db, "by_type", memtable_bytes)?,
            dedup: open_keyspace(db, "dedup", memtable_bytes)?,
            idempotency: open_keyspace(db, "idempotency", memtable_bytes)?,
            meta: meta.clone(),
            outbox: open_keyspace(db, "outbox", memtable_bytes)?,
            dead_letters: open_keyspace(db, "dead_letters", memtable_bytes)?,
            delivery_stats: open_keyspace(db, "delivery_stats", memtable_bytes)?,
            tail: open_keyspace(db, "tail", memtable_bytes)?,
            attempts: open_keyspace(db, "attempts", memtable_bytes)?,
            attempts_by_event: open_keyspace(db, "attempts_by_event", memtable_bytes)?,
            counts: open_keyspace(db, "counts", memtable_bytes)?,
            erased: open_keyspace(db, "erased", memtable_bytes)?,
            erasures: open_keyspace(db, "erasures", memtable_bytes)?,
            numbers: numbers::TenantNumbers::load(&meta)?,
            segments: Arc::new(segments::Segments::open(data_dir, segment_bytes)?),
            relocation: Arc::default(),
        })
    }

    /// Every keyspace with its name (what a backup copies).
    fn all(&self) -> [(&'static str, &Keyspace); 14] {
        [
            ("events", &self.events),
            ("by_type", &self.by_type),
            ("dedup", &self.dedup),
            ("idempotency", &self.idempotency),
            ("meta", &self.meta),
            ("outbox", &self.outbox),
            ("dead_letters", &self.dead_letters),
            ("delivery_stats", &self.delivery_stats),
            ("tail", &self.tail),
            ("attempts", &self.attempts),
            ("attempts_by_event", &self.attempts_by_event),
            ("counts", &self.counts),
            ("erased", &self.erased),
            ("erasures", &self.erasures),
        ]
    }
}

/// PulseStream's zero-setup store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Database,
    keyspaces: Keyspaces,
    writer: writer::WriterHandle,
    /// Full text and payload paths (`None` when turned off).
    index: Option<index::SearchIndex>,
    /// Drops and rewrites segment files once retention and erasure left them empty or sparse.
    reclaimer: reclaim::Reclaimer,
    tenants: Arc<RwLock<TenantCache>>,
    /// Serialises tenant writes (read the stored tenant, change, persist, publish), so that
    /// two changes never rewrite the same old copy. One process owns the data dir.
    tenant_writes: Arc<Mutex<()>>,
    /// Serialises the read-modify-write of counts.
    counts_writes: Arc<Mutex<()>>,
    queue: delivery::Queue,
    /// Every append goes through this process: each one that stores events is signalled.
    wakeups: Arc<crate::Wakeups>,
    /// The directory opened, checked by `check_ready` (and by the committer after commits).
    identity: identity::DirIdentity,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct TenantCache {
    by_id: HashMap<TenantId, Tenant>,
    by_key_hash: HashMap<String, TenantId>,
}

impl TenantCache {
    fn put(&mut self, tenant: Tenant) {
        if let Some(old) = self.by_id.get(&tenant.id) {
            for key in &old.keys {
                self.by_key_hash.remove(&key.hash);
            }
        }
        for key in &tenant.keys {
            self.by_key_hash.insert(key.hash.clone(), tenant.id);
        }
        self.by_id.insert(tenant.id, tenant);
    }
}

const TENANT_PREFIX: &[u8] = b"tenant/";

impl EmbeddedStore {
    /// Writes a tenant record durably, then shows it to readers. The caller holds
    /// `tenant_writes`.
    fn write_tenant(&self, tenant: Tenant) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&tenant).map_err(StoreError::unavailable)?;
        self.keyspaces
            .meta
            .insert(tenant_key(tenant.id), value)
            .map_err(StoreError::unavailable)?;
        // Admin changes are rare: make each durable before answering.
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(StoreError::unavailable)?;
        self.tenants
            .write()
            .expect("tenant cache lock is never poisoned: no code panics while holding it")
            .put(tenant);
        Ok(())
    }
}
const ADMIN_TOKEN_KEY: &[u8] = b"admin_token_sha256";

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.dir` and starts its writer thread.
    ///
    /// # Errors
    /// The directory cannot be created or the database cannot be opened or recovered.
    pub fn open(config: &EmbeddedConfig) -> Result<Self, StoreError> {
        let path = config.dir.join("fjall");
        std::fs::create_dir_all(&path).map_err(StoreError::unavailable)?;
        let db = Database::builder(&path)
            .cache_size(config.cache_bytes)
            // What a start replays (after a crash, and after a clean stop too: fjall does not
            // flush its memtables when it closes) is bounded by the journals' total size:
            // fjall's default of 512 MiB took 6.7 s to replay on the benchmark's 4.7 GB store.
            .max_journaling_size(MAX_JOURNAL_BYTES)
            // fjall's default of one background thread per core (up to four) stays: with
            // one, flushes wait behind long compactions, memtables and the journal pile up
            // (measured: 1.3 GB RSS and an 18 s journal replay at the next start). With two,
            // worker 0 keeps itself free for flushes by handing compaction messages back to
            // the queue; unpatched it spun while worker 1 compacted, and `vendor/fjall`
            // pauses it 1 ms per hand-back (vendor/README.md, tests/fjall_workers.rs).
            .open()
            .map_err(StoreError::unavailable)?;
        let keyspaces = Keyspaces::open(
            &db,
            &config.dir,
            config.index_memtable_bytes,
            config.segment_bytes,
        )?;
        check_format(&db, &keyspaces)?;
        Self::start(config, db, keyspaces, &path)
    }

    fn start(
        config: &EmbeddedConfig,
        db: Database,
        keyspaces: Keyspaces,
        path: &Path,
    ) -> Result<Self, StoreError> {
        let tenants = Arc::new(RwLock::new(load_tenants(&keyspaces.meta)?));
        let destinations: delivery::DestinationCache =
            Arc::new(RwLock::new(delivery::load_destinations(&keyspaces.meta)?));
        let queue = delivery::Queue {
            db: db.clone(),
            outbox: keyspaces.outbox.clone(),
            dead_letters: keyspaces.dead_letters.clone(),
            stats: keyspaces.delivery_stats.clone(),
            events: keyspaces.events.clone(),
            segments: keyspaces.segments.clone(),
            numbers: keyspaces.numbers.clone(),
            destinations: destinations.clone(),
            stats_lock: Arc::default(),
        };
        let identity = identity::DirIdentity::of(path)?;
        let writer = writer::WriterHandle::start(
            db.clone(),
            keyspaces.clone(),
            destinations,
            config.queue_capacity,
            config.dedup_filter_keys,
            identity.clone(),
            keyspaces.segments.end()?,
        );
        let index = if config.search_index {
            Some(index::SearchIndex::open(
                &index::dir_of(&config.dir),
                keyspaces.clone(),
            )?)
        } else {
            None
        };
        let reclaimer = reclaim::Reclaimer::start(db.clone(), keyspaces.clone(), config.reclaim);
        Ok(Self {
            db,
            keyspaces,
            writer,
            index,
            reclaimer,
            tenants,
            tenant_writes: Arc::default(),
            counts_writes: Arc::default(),
            queue,
            wakeups: Arc::default(),
            identity,
        })
    }

    /// Runs a pass of the segment reclaimer now and waits for it (after an erasure, to have
    /// its bytes gone from the data directory at once; with `reclaim.grace` zero, files are
    /// deleted in the same pass).
    pub fn reclaim_now(&self) {
        self.reclaimer.wait_for_pass();
    }

    /// Returns the directory of a store opened with `config`.
    pub fn path_of(config: &EmbeddedConfig) -> &Path {
        &config.dir
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(StoreError::unavailable)?
    }
}

fn open_keyspace(db: &Database, name: &str, memtable_bytes: u64) -> Result<Keyspace, StoreError> {
    db.keyspace(name, || {
        KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes)
    })
    .map_err(StoreError::unavailable)
}

/// The journals' total size, fjall's smallest allowed: past it, fjall flushes the memtables
/// that hold the oldest journal's writes, so a start never replays more than this.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

const FORMAT_KEY: &[u8] = b"store_format";
/// The layout of keys and values. 1: 16-byte tenant ids in keys (until November 2026);
/// 2: tenant numbers, keys of at most 20 bytes; 3: as 2, and new events' JSON in the
/// segment log (values of version 2; version-1 values, inline, are still read).
const FORMAT: u8 = 3;
/// The format this binary reads and upgrades in place: its values stay readable as they are.
const FORMAT_UPGRADED: u8 = 2;

/// Refuses a store written in another layout; marks a new store with this one, and a
/// format-2 store too (before anything is written in the new layout, so that an older
/// binary refuses the directory instead of failing on the first new event).
fn check_format(db: &Database, keyspaces: &Keyspaces) -> Result<(), StoreError> {
    match keyspaces
        .meta
        .get(FORMAT_KEY)
        .map_err(StoreError::unavailable)?
    {
        Some(value) if *value == [FORMAT] => Ok(()),
        Some(value) if *value == [FORMAT_UPGRADED] => mark_format(db, keyspaces),
        Some(value) => Err(StoreError::Corrupt(format!(
            "the data directory holds store format {value:?}, this PulseStream reads formats {FORMAT_UPGRADED} and {FORMAT}"
        ))),
        None => {
            if keyspaces.events.first_key_value().is_some()
                || keyspaces.idempotency.first_key_value().is_some()
            {
                return Err(StoreError::Corrupt(
                    "the data directory was written by an earlier PulseStream (store format 1, 16-byte tenant ids in keys); this one reads formats 2 and 3 and cannot read it: keep the older binary for it, or start on an empty data directory".into(),
                ));
            }
            mark_format(db, keyspaces)
        }
    }
}

fn mark_format(db: &Database, keyspaces: &Keyspaces) -> Result<(), StoreError> {
    keyspaces
        .meta
        .insert(FORMAT_KEY, [FORMAT])
        .map_err(StoreError::unavailable)?;
    db.persist(PersistMode::SyncAll)
        .map_err(StoreError::unavailable)
}

fn load_tenants(meta: &Keyspace) -> Result<TenantCache, StoreError> {
    let mut cache = TenantCache::default();
    for entry in meta.prefix(TENANT_PREFIX) {
        let (_, value) = entry.into_inner().map_err(StoreError::unavailable)?;
        let tenant: Tenant = serde_json::from_slice(&value)
            .map_err(|err| StoreError::Corrupt(format!("tenant record: {err}")))?;
        cache.put(tenant);
    }
    Ok(cache)
}

fn tenant_key(id: TenantId) -> Vec<u8> {
    [TENANT_PREFIX, id.as_bytes()].concat()
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append_batch(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        let prepared = writer::prepare(&batch)?;
        let tenant = batch.tenant;
        let (reply, outcome) = oneshot::channel();
        self.writer.submit(writer::Job {
            batch,
            prepared,
            reply,
        })?;
        let outcome = outcome.await.map_err(StoreError::unavailable)??;
        if outcome.stored_any() {
            self.wakeups.stored(tenant);
        }
        Ok(outcome)
    }

    async fn event(
        &self,
        tenant: TenantId,
        id: EventId,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.blocking(move |store| read::event(&store.keyspaces, tenant, id))
            .await
    }

    async fn search(&self, tenant: TenantId, query: SearchQuery) -> Result<SearchPage, StoreError> {
        self.blocking(move |store| {
            read::search(&store.keyspaces, store.index.as_ref(), tenant, &query)
        })
        .await
    }

    async fn idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let Some(number) = self.keyspaces.numbers.get(tenant) else {
            return Ok(None);
        };
        let key = keys::hashed_key(number, key);
        self.blocking(move |store| {
            match store
                .keyspaces
                .idempotency
                .get(key)
                .map_err(StoreError::unavailable)?
            {
                Some(value) => crate::record::decode_idempotency(&value).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn expire_events(
        &self,
        tenant: TenantId,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.blocking(move |store| store.expire(tenant, before, limit))
            .await
    }

    async fn erase_events(&self, tenant: TenantId, ids: &[EventId]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |store| store.erase(tenant, &ids)).await
    }

    async fn record_erasure(
        &self,
        tenant: TenantId,
        erasure: &crate::Erasure,
    ) -> Result<(), StoreError> {
        let erasure = erasure.clone();
        self.blocking(move |store| store.put_erasure(tenant, &erasure))
            .await
    }

    async fn erasures(
        &self,
        tenant: TenantId,
        before: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<crate::Erasure>, StoreError> {
        self.blocking(move |store| store.list_erasures(tenant, before, limit))
            .await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        // The reason first: a removed directory also stops the writer.
        self.identity.check()?;
        self.writer.check_alive()
    }

    async fn close(&self) -> Result<(), StoreError> {
        let writer = self.writer.clone();
        let db = self.db.clone();
        let index = self.index.clone();
        let reclaimer = self.reclaimer.clone();
        tokio::task::spawn_blocking(move || {
            writer.stop();
            reclaimer.stop();
            if let Some(index) = index {
                index.stop();
            }
            db.persist(PersistMode::SyncAll)
                .map_err(StoreError::unavailable)
        })
        .await
        .map_err(StoreError::unavailable)?
    }
}

#[async_trait]
impl TenantStore for EmbeddedStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let _serial = store
                .tenant_writes
                .lock()
                .expect("tenant write lock is never poisoned: no code panics while holding it");
            store.write_tenant(tenant)
        })
        .await
    }

    async fn change_tenant(
        &self,
        id: TenantId,
        change: &TenantChange,
    ) -> Result<Tenant, TenantChangeFailed> {
        let change = change.clone();
        let work = self.blocking(move |store| {
            let _serial = store
                .tenant_writes
                .lock()
                .expect("tenant write lock is never poisoned: no code panics while holding it");
            let stored = store
                .tenants
                .read()
                .expect("tenant cache lock is never poisoned")
                .by_id
                .get(&id)
                .cloned();
            let Some(mut tenant) = stored else {
                return Ok(Err(TenantChangeFailed::NotFound));
            };
            if let Err(err) = change.apply(&mut tenant) {
                return Ok(Err(err.into()));
            }
            store.write_tenant(tenant.clone())?;
            Ok(Ok(tenant))
        });
        work.await?
    }

    async fn tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, StoreError> {
        let cache = self
            .tenants
            .read()
            .expect("tenant cache lock is never poisoned");
        let after = after
            .and_then(|id| cache.by_id.get(&id))
            .map(|tenant| (tenant.created_at, tenant.id));
        let mut tenants: Vec<&Tenant> = cache
            .by_id
            .values()
            .filter(|tenant| after.is_none_or(|after| (tenant.created_at, tenant.id) > after))
            .collect();
        tenants.sort_by_key(|tenant| (tenant.created_at, tenant.id));
        Ok(tenants.into_iter().take(limit).cloned().collect())
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .tenants
            .read()
            .expect("tenant cache lock is never poisoned")
            .by_id
            .get(&id)
            .cloned())
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> Result<Option<Tenant>, StoreError> {
        let cache = self
            .tenants
            .read()
            .expect("tenant cache lock is never poisoned");
        Ok(cache
            .by_key_hash
            .get(hash)
            .and_then(|id| cache.by_id.get(id))
            .cloned())
    }

    async fn admin_token_hash(&self) -> Result<Option<String>, StoreError> {
        let value = self
            .keyspaces
            .meta
            .get(ADMIN_TOKEN_KEY)
            .map_err(StoreError::unavailable)?;
        Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn set_admin_token_hash(&self, hash: &str) -> Result<(), StoreError> {
        let hash = hash.to_owned();
        self.blocking(move |store| {
            store
                .keyspaces
                .meta
                .insert(ADMIN_TOKEN_KEY, hash.as_bytes())
                .map_err(StoreError::unavailable)?;
            store
                .db
                .persist(PersistMode::SyncAll)
                .map_err(StoreError::unavailable)
        })
        .await
    }
}

#[async_trait]
impl DestinationStore for EmbeddedStore {
    async fn put_destination(&self, destination: &Destination) -> Result<(), StoreError> {
        let destination = destination.clone();
        self.blocking(move |store| {
            let value = serde_json::to_vec(&destination).map_err(StoreError::unavailable)?;
            store
                .keyspaces
                .meta
                .insert(delivery::destination_key(destination.id), value)
                .map_err(StoreError::unavailable)?;
            store
                .db
                .persist(PersistMode::SyncAll)
                .map_err(StoreError::unavailable)?;
            let mut cache = store
                .queue
                .destinations
                .write()
                .expect("destination cache lock is never poisoned");
            let list = cache.entry(destination.tenant).or_default();
            match list
                .iter_mut()
                .find(|existing| existing.id == destination.id)
            {
                Some(existing) => *existing = destination,
                None => list.push(destination),
            }
            Ok(())
        })
        .await
    }

    async fn destinations(&self, tenant: TenantId) -> Result<Vec<Destination>, StoreError> {
        let cache = self
            .queue
            .destinations
            .read()
            .expect("destination cache lock is never poisoned");
        Ok(cache.get(&tenant).cloned().unwrap_or_default())
    }

    async fn all_destinations(&self) -> Result<Vec<Destination>, StoreError> {
        let cache = self
            .queue
            .destinations
            .read()
            .expect("destination cache lock is never poisoned");
        Ok(cache.values().flatten().cloned().collect())
    }

    async fn delete_destination(
        &self,
        tenant: TenantId,
        id: DestinationId,
    ) -> Result<bool, StoreError> {
        self.blocking(move |store| {
            let existed = {
                let mut cache = store
                    .queue
                    .destinations
                    .write()
                    .expect("destination cache lock is never poisoned");
                let list = cache.entry(tenant).or_default();
                let before = list.len();
                list.retain(|destination| destination.id != id);
                before != list.len()
            };
            if !existed {
                return Ok(false);
            }
            store
                .keyspaces
                .meta
                .remove(delivery::destination_key(id))
                .map_err(StoreError::unavailable)?;
            store
                .db
                .persist(PersistMode::SyncAll)
                .map_err(StoreError::unavailable)?;
            store.queue.remove_prefix(&store.keyspaces.outbox, id)?;
            store
                .queue
                .remove_prefix(&store.keyspaces.dead_letters, id)?;
            store.queue.remove_prefix(&store.keyspaces.attempts, id)?;
            store
                .keyspaces
                .delivery_stats
                .remove(id.as_bytes())
                .map_err(StoreError::unavailable)?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl crate::ActivityStore for EmbeddedStore {
    async fn tail(
        &self,
        tenant: TenantId,
        after: Option<crate::TailPosition>,
        limit: usize,
    ) -> Result<crate::TailPage, StoreError> {
        self.blocking(move |store| store.read_tail(tenant, after, limit))
            .await
    }

    async fn tail_end(&self, tenant: TenantId) -> Result<Option<crate::TailPosition>, StoreError> {
        self.blocking(move |store| store.tail_end_of(tenant)).await
    }

    async fn record_attempt(&self, attempt: &crate::Attempt) -> Result<(), StoreError> {
        let attempt = attempt.clone();
        self.blocking(move |store| store.write_attempt(&attempt))
            .await
    }

    async fn attempts(
        &self,
        destination: DestinationId,
        before: Option<crate::AttemptCursor>,
        limit: usize,
    ) -> Result<Vec<crate::Attempt>, StoreError> {
        self.blocking(move |store| store.read_attempts(destination, before, limit))
            .await
    }

    async fn event_attempts(
        &self,
        tenant: TenantId,
        event: EventId,
        limit: usize,
    ) -> Result<Vec<crate::Attempt>, StoreError> {
        self.blocking(move |store| store.read_event_attempts(tenant, event, limit))
            .await
    }

    async fn add_counts(&self, counts: &[crate::MinuteCounts]) -> Result<(), StoreError> {
        let counts = counts.to_vec();
        self.blocking(move |store| store.write_counts(&counts))
            .await
    }

    async fn counts(
        &self,
        tenant: TenantId,
        since_minute: i64,
    ) -> Result<crate::TenantCounts, StoreError> {
        self.blocking(move |store| store.read_counts(tenant, since_minute))
            .await
    }

    async fn prune_activity(
        &self,
        attempts_before: OffsetDateTime,
        minutes_before: i64,
    ) -> Result<u64, StoreError> {
        self.blocking(move |store| store.prune(attempts_before, minutes_before))
            .await
    }
}

#[async_trait]
impl DeliveryQueue for EmbeddedStore {
    async fn claim_due(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        after: Option<QueuePosition>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.blocking(move |store| store.queue.claim_due(destination, now, after, limit))
            .await
    }

    async fn next_due(
        &self,
        destination: DestinationId,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        self.blocking(move |store| store.queue.next_due(destination))
            .await
    }

    fn wakeups(&self) -> Arc<crate::Wakeups> {
        self.wakeups.clone()
    }

    async fn claim_ordered(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.blocking(move |store| store.queue.claim_ordered(destination, now, limit))
            .await
    }

    async fn release(
        &self,
        _destination: DestinationId,
        _deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        // A claim marks nothing here: what was not sent is simply claimed again.
        Ok(())
    }

    async fn record_delivered(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        let deliveries = deliveries.to_vec();
        self.blocking(move |store| store.queue.record_delivered(destination, &deliveries))
            .await
    }

    async fn reschedule(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        due: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let (deliveries, error) = (deliveries.to_vec(), error.to_owned());
        self.blocking(move |store| {
            store
                .queue
                .reschedule(destination, &deliveries, due, &error)
        })
        .await
    }

    async fn dead_letter(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        error: &str,
    ) -> Result<(), StoreError> {
        let (deliveries, error) = (deliveries.to_vec(), error.to_owned());
        self.blocking(move |store| store.queue.dead_letter(destination, &deliveries, &error))
            .await
    }

    async fn record_circuit(
        &self,
        destination: DestinationId,
        circuit: Circuit,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let error = error.map(str::to_owned);
        self.blocking(move |store| {
            store
                .queue
                .record_circuit(destination, circuit, error.as_deref())
        })
        .await
    }

    async fn delivery_stats(
        &self,
        destination: DestinationId,
    ) -> Result<DeliveryStats, StoreError> {
        self.blocking(move |store| store.queue.stats(destination))
            .await
    }

    async fn dead_letters(
        &self,
        destination: DestinationId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.blocking(move |store| store.queue.dead_letters(destination, limit))
            .await
    }

    async fn replay_dead_letters(
        &self,
        destination: DestinationId,
        events: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        let events = events.map(<[EventId]>::to_vec);
        let replayed = self
            .blocking(move |store| store.queue.replay(destination, events.as_deref()))
            .await?;
        if replayed > 0 {
            self.wakeups.wake(destination);
        }
        Ok(replayed)
    }

    async fn purge_dead_letters(&self, destination: DestinationId) -> Result<usize, StoreError> {
        self.blocking(move |store| store.queue.purge_dead_letters(destination))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use pulsestream_core::{NewEvent, TenantId};

    use super::keys::{self, TenantNo};
    use super::{EmbeddedConfig, EmbeddedStore};
    use crate::{AppendBatch, AppendStatus, EventStore, SearchQuery, StoreError};

    /// Appends the events as one request; returns their statuses.
    async fn append_events(
        store: &EmbeddedStore,
        tenant: TenantId,
        events: Vec<NewEvent>,
    ) -> Vec<AppendStatus> {
        let outcome = store
            .append_batch(AppendBatch {
                tenant,
                events,
                received_at: time::OffsetDateTime::now_utc(),
                idempotency: None,
            })
            .await
            .unwrap();
        outcome.statuses
    }

    async fn append(store: &EmbeddedStore, tenant: TenantId, event_type: &str) -> AppendStatus {
        let event = NewEvent::from_json(&format!(r#"{{"event_type":{event_type:?}}}"#)).unwrap();
        append_events(store, tenant, vec![event]).await[0]
    }

    fn all_accepted(statuses: &[AppendStatus]) -> bool {
        statuses
            .iter()
            .all(|status| matches!(status, AppendStatus::Accepted(_)))
    }

    fn all_duplicates(statuses: &[AppendStatus]) -> bool {
        statuses
            .iter()
            .all(|status| matches!(status, AppendStatus::Duplicate(_)))
    }

    async fn ids_of(store: &EmbeddedStore, tenant: TenantId, types: &[&str]) -> Vec<String> {
        let page = store
            .search(
                tenant,
                SearchQuery {
                    event_types: types.iter().map(|t| (*t).to_string()).collect(),
                    limit: 100,
                    ..SearchQuery::default()
                },
            )
            .await
            .unwrap();
        page.events
            .iter()
            .map(|event| event.id.to_string())
            .collect()
    }

    fn accepted_id(status: &AppendStatus) -> String {
        match status {
            AppendStatus::Accepted(id) => id.to_string(),
            other => panic!("expected accepted, got {other:?}"),
        }
    }

    /// Two event types, of tenants 0 and 1, whose `by_type` streams are the same.
    fn colliding_types() -> (String, String) {
        let mut seen: HashMap<[u8; 4], String> = HashMap::new();
        for n in 0u32.. {
            let first = format!("a.{n}");
            seen.insert(keys::type_stream(TenantNo(0), &first), first);
            let second = format!("b.{n}");
            if let Some(first) = seen.get(&keys::type_stream(TenantNo(1), &second)) {
                return (first.clone(), second);
            }
        }
        unreachable!("a 32-bit stream collides within about 2^16 tries")
    }

    /// Sends events `from..to` (with `event_id`s) in requests of 50; returns their statuses.
    async fn send_numbered(
        store: &EmbeddedStore,
        tenant: TenantId,
        from: usize,
        to: usize,
    ) -> Vec<AppendStatus> {
        let mut statuses = Vec::new();
        for start in (from..to).step_by(50) {
            let events = (start..to.min(start + 50))
                .map(|n| {
                    NewEvent::from_json(&format!(r#"{{"event_id":"n-{n}","event_type":"t"}}"#))
                        .unwrap()
                })
                .collect();
            statuses.extend(append_events(store, tenant, events).await);
        }
        statuses
    }

    async fn wait_for_dedup_filter(store: &EmbeddedStore) {
        for _ in 0..500 {
            if store.writer.dedup_filter_complete() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the dedup filter was not filled within 5 s");
    }

    #[tokio::test]
    async fn the_dedup_filter_filled_at_start_up_still_finds_every_stored_event() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::random();
        {
            let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
            let first = send_numbered(&store, tenant, 0, 500).await;
            assert!(all_accepted(&first));
            store.close().await.unwrap();
        }
        let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
        wait_for_dedup_filter(&store).await;

        let again = send_numbered(&store, tenant, 0, 500).await;
        let fresh = send_numbered(&store, tenant, 500, 600).await;

        assert!(all_duplicates(&again), "{again:?}");
        assert!(all_accepted(&fresh));
    }

    #[tokio::test]
    async fn a_dedup_filter_that_grows_while_writing_still_finds_every_stored_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path());
        // Full after 64 keys: grows (to 128, 256, …) several times during the test.
        config.dedup_filter_keys = 64;
        let store = std::sync::Arc::new(EmbeddedStore::open(&config).unwrap());
        let tenant = TenantId::random();
        // Concurrent writers, so that groups are in flight whenever the filter grows.
        let mut tasks = Vec::new();
        for part in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                send_numbered(&store, tenant, part * 500, part * 500 + 500).await
            }));
        }
        for task in tasks {
            let statuses = task.await.unwrap();
            assert!(all_accepted(&statuses));
        }
        wait_for_dedup_filter(&store).await;

        let again = send_numbered(&store, tenant, 0, 2_000).await;

        assert!(all_duplicates(&again), "a stored event was taken for new");
    }

    #[tokio::test]
    async fn tenants_sharing_a_type_stream_see_only_their_own_events() {
        let (type_a, type_b) = colliding_types();
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
        let (first, second) = (TenantId::random(), TenantId::random());
        // Numbers are given in order of first write: `first` is 0, `second` is 1.
        let a = accepted_id(&append(&store, first, &type_a).await);
        let b = accepted_id(&append(&store, second, &type_b).await);

        assert_eq!(ids_of(&store, first, &[&type_a]).await, vec![a]);
        assert_eq!(ids_of(&store, second, &[&type_b]).await, vec![b]);
        assert!(ids_of(&store, second, &[&type_a]).await.is_empty());
        assert!(ids_of(&store, first, &[&type_b]).await.is_empty());
    }

    #[tokio::test]
    async fn tenant_numbers_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, third) = (TenantId::random(), TenantId::random(), TenantId::random());
        let (a, b) = {
            let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
            let a = accepted_id(&append(&store, first, "t").await);
            let b = accepted_id(&append(&store, second, "t").await);
            store.close().await.unwrap();
            (a, b)
        };
        let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
        // A tenant new after the restart must not be given a number already in use.
        let c = accepted_id(&append(&store, third, "t").await);

        assert_eq!(ids_of(&store, first, &[]).await, vec![a]);
        assert_eq!(ids_of(&store, second, &[]).await, vec![b]);
        assert_eq!(ids_of(&store, third, &["t"]).await, vec![c]);
    }

    #[tokio::test]
    async fn a_store_of_the_earlier_format_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::random();
        {
            let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
            append(&store, tenant, "t").await;
            store.close().await.unwrap();
        }
        // A store of format 1 had events and no format mark.
        {
            let db = fjall::Database::builder(dir.path().join("fjall"))
                .open()
                .unwrap();
            let meta = db
                .keyspace("meta", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            meta.remove(super::FORMAT_KEY).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }

        let refused = EmbeddedStore::open(&EmbeddedConfig::new(dir.path()));
        match refused {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("format 1"), "{message}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        let db = fjall::Database::builder(dir.path().join("fjall"))
            .open()
            .unwrap();
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        assert!(
            events.first_key_value().is_some(),
            "the refused store's events are left as they were"
        );
    }
}
