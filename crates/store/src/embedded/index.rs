//! The embedded store's search index: tantivy, beside fjall, for the two filters no key
//! order serves — full text (`q`) and payload paths (`payload.<path>=value`).
//!
//! Each stored event is one document: its tenant, its key (tenant and id, to delete it), its id (as two
//! fast columns, to order candidates), its type, the text from every word start of its
//! payload's values ([`text_index_starts`]) and a hash per payload scalar ([`payload_index_keys`]). The index
//! holds *candidates*: every search still reads the stored JSON and keeps what
//! `event_matches` accepts, so a hash collision, a cut word or a stale document can only cost
//! time, never a wrong answer.
//!
//! One thread keeps it: it follows each tenant's commit-ordered `tail` (written in the same
//! commit as the events), adds the events it finds there, and commits about every
//! [`REFRESH`], with the tail position it reached per tenant as the commit's payload —
//! tantivy commits are atomic, so after a crash the thread resumes exactly where the index
//! stopped, and nothing acknowledged is left out. Searches take the index's searcher
//! together with those positions and read the events committed after them from the tail
//! directly, so every filter stays read-your-writes.
//!
//! Erased events are deleted from the index before the erasure answers (and again at every
//! start, from the tombstones); expired ones when retention removes them. A missing or
//! unreadable index is rebuilt from the tail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pulsestream_core::EventId;
use pulsestream_core::filter::{
    path_filter_keys, payload_index_keys, text_index_starts, text_query_prefix,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, NumericOptions, STRING, Schema, SchemaBuilder,
};
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader, Term, doc,
};

use super::Keyspaces;
use super::keys::{self, TenantNo};
use crate::{Order, SearchQuery, StoreError};

/// How often the index commits what it added: the age of the events a search reads from the
/// tail instead of the index.
pub(crate) const REFRESH: Duration = Duration::from_millis(500);

/// Events added between two looks at the command channel.
const BATCH: usize = 10_000;

/// How long a graceful stop goes on indexing what the store holds.
const STOP_CATCH_UP: Duration = Duration::from_secs(5);

/// The index's version: a payload of another version is rebuilt.
const FORMAT: u32 = 3;

/// The nice value of the index's threads (ingest runs at 0).
pub(crate) const INDEX_NICENESS: i32 = 10;

/// Memory of tantivy's indexing buffer.
const WRITER_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
struct Fields {
    tenant: Field,
    id: Field,
    id_hi: Field,
    id_lo: Field,
    event_type: Field,
    starts: Field,
    paths: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = SchemaBuilder::new();
    let fast = NumericOptions::default().set_fast();
    let fields = Fields {
        tenant: builder.add_u64_field("tenant", INDEXED),
        id: builder.add_bytes_field("id", INDEXED),
        id_hi: builder.add_u64_field("id_hi", fast.clone()),
        id_lo: builder.add_u64_field("id_lo", fast),
        event_type: builder.add_text_field("event_type", STRING),
        starts: builder.add_text_field("starts", STRING),
        paths: builder.add_u64_field("paths", INDEXED),
    };
    (builder.build(), fields)
}

/// What a commit of the index records: per tenant, the last `tail` commit it holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    format: u32,
    tenants: HashMap<u32, i64>,
}

/// What searches see: the index as of one commit, and the tail positions it holds.
#[derive(Clone)]
pub(crate) struct View {
    pub searcher: Searcher,
    pub indexed: Arc<HashMap<u32, i64>>,
}

impl View {
    /// The last tail commit of the tenant's that the index holds.
    pub fn indexed_until(&self, tenant: TenantNo) -> i64 {
        self.indexed.get(&tenant.0).copied().unwrap_or(i64::MIN)
    }
}

enum Command {
    /// Delete these events now and commit before answering.
    Erase(TenantNo, Vec<EventId>, mpsc::Sender<Result<(), String>>),
    /// Delete the tenant's events with ids below this one.
    ExpireBefore(TenantNo, EventId),
    /// Commit and end the thread.
    Stop,
}

/// The search index and the thread that keeps it.
#[derive(Clone)]
pub(crate) struct SearchIndex {
    fields: Fields,
    view: Arc<RwLock<View>>,
    commands: mpsc::Sender<Command>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir` (rebuilding it when it is missing, unreadable or of another
    /// version) and starts the thread that keeps it up with the store.
    pub fn open(dir: &Path, ks: Keyspaces) -> Result<Self, StoreError> {
        let (index, progress) = match open_existing(dir) {
            Ok(Some(opened)) => opened,
            Ok(None) => (create(dir)?, Progress::default()),
            Err(err) => {
                tracing::warn!(error = %err, dir = %dir.display(), "search index unreadable: rebuilding it from the store");
                (create(dir)?, Progress::default())
            }
        };
        let (_, fields) = schema();
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(index_error)?;
        let indexed = Arc::new(progress.tenants);
        let view = Arc::new(RwLock::new(View {
            searcher: reader.searcher(),
            indexed: indexed.clone(),
        }));
        let (commands, inbox) = mpsc::channel();
        let (started, start) = mpsc::channel();
        let thread_view = view.clone();
        let thread = std::thread::Builder::new()
            .name("search-index".into())
            .spawn(move || {
                // Below ingest: under a full load the index falls behind (searches then read
                // the rest from the store) rather than slow the writes. tantivy's threads,
                // made next by this one, inherit it.
                if let Err(err) = rustix::process::setpriority_process(None, INDEX_NICENESS) {
                    tracing::warn!(error = %err, "search index: could not lower its priority");
                }
                let keeper = index
                    .writer_with_num_threads(1, WRITER_BYTES)
                    .map_err(index_error)
                    .and_then(|writer| {
                        let mut policy = tantivy::merge_policy::LogMergePolicy::default();
                        policy.set_del_docs_ratio_before_merge(0.2);
                        writer.set_merge_policy(Box::new(policy));
                        // Erasures that a crash kept from reaching the index: again.
                        let mut tombstones = 0u64;
                        for entry in ks.erased.iter() {
                            let key = entry.key().map_err(StoreError::unavailable)?;
                            writer.delete_term(Term::from_field_bytes(fields.id, &key));
                            tombstones += 1;
                        }
                        Ok(Keeper {
                            ks,
                            fields,
                            writer,
                            reader,
                            view: thread_view,
                            indexed: (*indexed).clone(),
                            dirty: tombstones > 0,
                            reached: i64::MAX,
                            last_commit: Instant::now(),
                            waiting: Vec::new(),
                        })
                    });
                match keeper {
                    Ok(mut keeper) => {
                        let _ = started.send(Ok(()));
                        keeper.run(&inbox);
                    }
                    Err(err) => {
                        let _ = started.send(Err(err));
                    }
                }
            })
            .map_err(StoreError::unavailable)?;
        start
            .recv()
            .map_err(|_| index_error("its thread ended while starting"))??;
        Ok(Self {
            fields,
            view,
            commands,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// The index as searches see it now.
    pub fn view(&self) -> View {
        self.view
            .read()
            .expect("index view lock is never poisoned")
            .clone()
    }

    /// Deletes erased events from the index and waits until that is committed.
    ///
    /// # Errors
    /// The index has stopped, or its commit failed (the deletions stay queued for the next
    /// commit that succeeds; the events are already gone from the store and from searches).
    pub fn erase(&self, tenant: TenantNo, ids: Vec<EventId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (done, wait) = mpsc::channel();
        self.commands
            .send(Command::Erase(tenant, ids, done))
            .map_err(|_| index_error("stopped"))?;
        wait.recv()
            .map_err(|_| index_error("stopped"))?
            .map_err(index_error)
    }

    /// Deletes the tenant's events with ids below `before` at the next commit.
    pub fn expire(&self, tenant: TenantNo, before: EventId) {
        // A stopped index has nothing to delete from.
        let _ = self.commands.send(Command::ExpireBefore(tenant, before));
    }

    /// Commits what the thread holds and stops it.
    pub fn stop(&self) {
        let thread = self
            .thread
            .lock()
            .expect("index thread lock is never poisoned")
            .take();
        if let Some(thread) = thread {
            let _ = self.commands.send(Command::Stop);
            let _ = thread.join();
        }
    }

    /// The query that narrows a search to its candidates, or `None` when neither full text
    /// nor a payload path can narrow it.
    pub fn narrowing(&self, tenant: TenantNo, query: &SearchQuery) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let term = |term: Term| -> Box<dyn Query> {
            Box::new(TermQuery::new(term, IndexRecordOption::Basic))
        };
        let mut narrowing: Vec<Box<dyn Query>> = Vec::new();
        for filter in &query.payload {
            let any: Vec<Box<dyn Query>> = path_filter_keys(filter)
                .into_iter()
                .map(|key| term(Term::from_field_u64(f.paths, tenant_key(tenant, key))))
                .collect();
            narrowing.push(Box::new(BooleanQuery::union(any)));
        }
        for prefix in query
            .text
            .iter()
            .flat_map(|text| text.split_whitespace())
            .filter_map(text_query_prefix)
        {
            narrowing.push(prefix_query(f.starts, &tenant_text(tenant, &prefix)));
        }
        if narrowing.is_empty() {
            return None;
        }
        if !query.event_types.is_empty() {
            let any = query
                .event_types
                .iter()
                .map(|event_type| {
                    term(Term::from_field_text(
                        f.event_type,
                        &tenant_text(tenant, event_type),
                    ))
                })
                .collect();
            narrowing.push(Box::new(BooleanQuery::union(any)));
        }
        Some(Box::new(BooleanQuery::intersection(narrowing)))
    }

    /// How many documents the index holds for the tenant (deleted ones included until merged).
    pub fn documents_of(&self, view: &View, tenant: TenantNo) -> u64 {
        view.searcher
            .doc_freq(&Term::from_field_u64(
                self.fields.tenant,
                u64::from(tenant.0),
            ))
            .unwrap_or(0)
    }

    /// The fewest events a part of the query (a word, a word's start, a payload filter) is
    /// in, counted up to `cap`: an upper bound of the candidates when it is below `cap`.
    pub fn candidates_at_most(
        &self,
        view: &View,
        tenant: TenantNo,
        query: &SearchQuery,
        cap: u64,
    ) -> u64 {
        let f = self.fields;
        let freq = |term: Term| view.searcher.doc_freq(&term).unwrap_or(u64::MAX);
        let payload = query.payload.iter().map(|filter| {
            path_filter_keys(filter)
                .into_iter()
                .map(|key| freq(Term::from_field_u64(f.paths, tenant_key(tenant, key))))
                .fold(0u64, u64::saturating_add)
        });
        let words = query
            .text
            .iter()
            .flat_map(|text| text.split_whitespace())
            .filter_map(text_query_prefix)
            .map(|prefix| prefix_freq(view, f.starts, &tenant_text(tenant, &prefix), cap));
        payload.chain(words).min().unwrap_or(u64::MAX)
    }
}

/// A text term of the tenant's: its number, in 8 hex digits, then the text. Every term a
/// search looks up is its tenant's, so a lookup never walks another tenant's documents and
/// no search intersects with a tenant's whole posting list.
fn tenant_text(tenant: TenantNo, text: &str) -> String {
    format!("{:08x}{text}", tenant.0)
}

/// A payload key of the tenant's (distinct tenants' keys differ; a clash only adds candidates).
fn tenant_key(tenant: TenantNo, key: u64) -> u64 {
    key ^ u64::from(tenant.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The events with an indexed text that starts with `prefix`.
fn prefix_query(field: Field, prefix: &str) -> Box<dyn Query> {
    let mut high = prefix.to_owned();
    // Indexed texts start with a letter or digit and never hold the last code point.
    high.push(char::MAX);
    Box::new(RangeQuery::new(
        std::ops::Bound::Included(Term::from_field_text(field, prefix)),
        std::ops::Bound::Excluded(Term::from_field_text(field, &high)),
    ))
}

/// How many events hold an indexed text that starts with `prefix`, counted up to `cap` (a
/// common prefix ends the count early).
fn prefix_freq(view: &View, field: Field, prefix: &str, cap: u64) -> u64 {
    let mut high = prefix.to_owned();
    high.push(char::MAX);
    let mut total = 0u64;
    for segment in view.searcher.segment_readers() {
        let Ok(inverted) = segment.inverted_index(field) else {
            return u64::MAX;
        };
        let Ok(mut terms) = inverted.terms().range().ge(prefix).lt(&high).into_stream() else {
            return u64::MAX;
        };
        while terms.advance() {
            total = total.saturating_add(u64::from(terms.value().doc_freq));
            if total >= cap {
                return total;
            }
        }
    }
    total
}

/// Collects the ids of matching documents in the query's order past a bound, keeping the
/// first `keep`; `matched` counts them all.
pub(crate) struct Ids {
    pub fields: (Field, Field),
    pub order: Order,
    /// Ids strictly past this (in the query's order) are kept.
    pub after: Option<u128>,
    /// Ids inside [low, high) are kept.
    pub low: u128,
    pub high: u128,
    pub keep: usize,
}

pub(crate) struct Found {
    /// In the query's order.
    pub ids: Vec<EventId>,
    /// Every match past the bound, kept or not.
    pub matched: u64,
}

pub(crate) struct IdsInSegment {
    hi: Column<u64>,
    lo: Column<u64>,
    order: Order,
    after: Option<u128>,
    low: u128,
    high: u128,
    keep: usize,
    /// Candidates as (key of the id's high half, document): smaller keys are better. The low
    /// half is read only where the high half cannot decide (a bound, a tie) and for the
    /// documents kept at the end: reading it (64 random bits, bit-packed) cost a third of a
    /// search that collects many matches.
    kept: Vec<(u64, DocId)>,
    /// The worst high-half key kept by the last pruning: a worse one cannot be among the best.
    threshold: Option<u64>,
    matched: u64,
}

impl IdsInSegment {
    /// The key of an id's high half: smaller is better (for newest-first, the complement).
    fn key(&self, hi: u64) -> u64 {
        match self.order {
            Order::Asc => hi,
            Order::Desc => u64::MAX - hi,
        }
    }

    fn id(&self, doc: DocId, hi: u64) -> Option<u128> {
        Some((u128::from(hi) << 64) | u128::from(self.lo.first(doc)?))
    }

    /// Whether the id is inside the bounds, reading its low half only when its high half is
    /// a bound's.
    fn wanted(&self, doc: DocId, hi: u64) -> bool {
        let at_bound = |bound: u128| (bound >> 64) as u64 == hi;
        let needs_lo =
            at_bound(self.low) || at_bound(self.high) || self.after.is_some_and(at_bound);
        let id = if needs_lo {
            match self.id(doc, hi) {
                Some(id) => id,
                None => return false,
            }
        } else {
            u128::from(hi) << 64
        };
        if id < self.low || id >= self.high {
            return false;
        }
        match self.after {
            Some(after) => match self.order {
                Order::Desc => id < after,
                Order::Asc => id > after,
            },
            None => true,
        }
    }

    /// Keeps the best `keep` high-half keys and every document that ties with the worst of
    /// them (the low half decides among those at the end).
    fn prune(&mut self) {
        if self.kept.len() > self.keep {
            self.kept.select_nth_unstable(self.keep - 1);
            let cut = self.kept[self.keep - 1].0;
            self.kept.retain(|(key, _)| *key <= cut);
            self.threshold = Some(cut);
        }
    }
}

impl SegmentCollector for IdsInSegment {
    type Fruit = (Vec<u128>, u64);

    fn collect(&mut self, doc: DocId, _score: Score) {
        let Some(hi) = self.hi.first(doc) else {
            return;
        };
        if !self.wanted(doc, hi) {
            return;
        }
        self.matched += 1;
        let key = self.key(hi);
        if self.threshold.is_some_and(|worst| key > worst) {
            return;
        }
        self.kept.push((key, doc));
        if self.kept.len() >= 2 * self.keep {
            self.prune();
        }
    }

    fn harvest(mut self) -> Self::Fruit {
        self.prune();
        let order = self.order;
        let mut ids: Vec<u128> = std::mem::take(&mut self.kept)
            .into_iter()
            .filter_map(|(key, doc)| {
                let hi = match order {
                    Order::Asc => key,
                    Order::Desc => u64::MAX - key,
                };
                self.id(doc, hi)
            })
            .collect();
        ids.sort_unstable();
        if order == Order::Desc {
            ids.reverse();
        }
        ids.truncate(self.keep);
        (ids, self.matched)
    }
}

impl Collector for Ids {
    type Fruit = Found;
    type Child = IdsInSegment;

    fn for_segment(&self, _: u32, segment: &SegmentReader) -> tantivy::Result<IdsInSegment> {
        let fast = segment.fast_fields();
        let name = |field: Field| segment.schema().get_field_name(field).to_owned();
        Ok(IdsInSegment {
            hi: fast.u64(&name(self.fields.0))?,
            lo: fast.u64(&name(self.fields.1))?,
            order: self.order,
            after: self.after,
            low: self.low,
            high: self.high,
            keep: self.keep,
            kept: Vec::with_capacity(2 * self.keep),
            threshold: None,
            matched: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<(Vec<u128>, u64)>) -> tantivy::Result<Found> {
        let matched = fruits.iter().map(|(_, matched)| matched).sum();
        let mut ids: Vec<u128> = fruits.into_iter().flat_map(|(ids, _)| ids).collect();
        ids.sort_unstable();
        ids.dedup();
        if self.order == Order::Desc {
            ids.reverse();
        }
        ids.truncate(self.keep);
        Ok(Found {
            ids: ids
                .into_iter()
                .map(|id| EventId(uuid::Uuid::from_u128(id)))
                .collect(),
            matched,
        })
    }
}

impl SearchIndex {
    /// The collector of a search's candidate ids.
    pub fn ids(
        &self,
        order: Order,
        after: Option<EventId>,
        low: EventId,
        high: Option<EventId>,
        keep: usize,
    ) -> Ids {
        Ids {
            fields: (self.fields.id_hi, self.fields.id_lo),
            order,
            after: after.map(|id| id.0.as_u128()),
            low: low.0.as_u128(),
            high: high.map_or(u128::MAX, |id| id.0.as_u128()),
            keep,
        }
    }
}

/// The thread's state.
struct Keeper {
    ks: Keyspaces,
    fields: Fields,
    writer: IndexWriter,
    reader: IndexReader,
    view: Arc<RwLock<View>>,
    indexed: HashMap<u32, i64>,
    dirty: bool,
    /// The commit time of the last tail entry added (for the lag gauge).
    reached: i64,
    last_commit: Instant,
    /// Erasures waiting for the next commit.
    waiting: Vec<mpsc::Sender<Result<(), String>>>,
}

/// The fields of a stored event that the index reads.
#[derive(Deserialize)]
struct Indexed<'a> {
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

impl Keeper {
    fn run(&mut self, inbox: &mpsc::Receiver<Command>) {
        loop {
            // Commands first: an erasure waits for them.
            loop {
                match inbox.try_recv() {
                    Ok(Command::Stop) => {
                        self.finish();
                        return;
                    }
                    Ok(command) => self.apply(command),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.finish();
                        return;
                    }
                }
            }
            let added = match self.add_new() {
                Ok(added) => added,
                Err(err) => {
                    tracing::error!(error = %err, "search index: reading the store failed");
                    0
                }
            };
            metrics::counter!("pulsestream_search_index_documents_total").increment(added as u64);
            // Behind when this round stopped at its batch size: by the age of what it reached.
            let lag = if added >= BATCH {
                let now = crate::record::micros_of(time::OffsetDateTime::now_utc());
                (now.saturating_sub(self.reached) as f64 / 1e6).max(0.0)
            } else {
                0.0
            };
            metrics::gauge!("pulsestream_search_index_lag_seconds").set(lag);
            if self.dirty && (!self.waiting.is_empty() || self.last_commit.elapsed() >= REFRESH) {
                self.commit_logged();
            }
            if added < BATCH && self.waiting.is_empty() {
                match inbox.recv_timeout(REFRESH / 5) {
                    Ok(Command::Stop) => {
                        self.finish();
                        return;
                    }
                    Ok(command) => self.apply(command),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.finish();
                        return;
                    }
                }
            }
        }
    }

    /// At a graceful stop: indexes what the store committed (for up to [`STOP_CATCH_UP`];
    /// the next start does the rest) and commits.
    fn finish(&mut self) {
        let started = Instant::now();
        while started.elapsed() < STOP_CATCH_UP {
            match self.add_new() {
                Ok(added) if added >= BATCH => {}
                Ok(_) => break,
                Err(err) => {
                    tracing::error!(error = %err, "search index: reading the store failed");
                    break;
                }
            }
        }
        self.commit_logged();
    }

    fn apply(&mut self, command: Command) {
        let f = self.fields;
        match command {
            Command::Erase(tenant, ids, done) => {
                for id in ids {
                    self.writer
                        .delete_term(Term::from_field_bytes(f.id, &keys::event_key(tenant, id)));
                }
                self.dirty = true;
                self.waiting.push(done);
            }
            Command::Stop => {}
            Command::ExpireBefore(tenant, before) => {
                let (hi, _) = split(before);
                let query = BooleanQuery::intersection(vec![
                    Box::new(TermQuery::new(
                        Term::from_field_u64(f.tenant, u64::from(tenant.0)),
                        IndexRecordOption::Basic,
                    )),
                    Box::new(RangeQuery::new(
                        std::ops::Bound::Unbounded,
                        std::ops::Bound::Excluded(Term::from_field_u64(f.id_hi, hi)),
                    )),
                ]);
                match self.writer.delete_query(Box::new(query)) {
                    Ok(_) => self.dirty = true,
                    Err(err) => tracing::error!(error = %err, "search index: expiring failed"),
                }
            }
        }
    }

    /// Adds the events committed since the index's positions, up to about [`BATCH`].
    fn add_new(&mut self) -> Result<usize, StoreError> {
        let mut added = 0usize;
        for tenant in self.ks.numbers.all() {
            let from = self.indexed.get(&tenant.0).copied().unwrap_or(i64::MIN);
            if from == i64::MAX {
                continue;
            }
            let low = keys::tail_key(tenant, from.saturating_add(1));
            let high = keys::tail_key(tenant, i64::MAX);
            for entry in self.ks.tail.range(low..=high) {
                let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
                let commit = keys::decode_tail_key(&key)?;
                for (id, duplicate) in keys::decode_tail_value(&value)? {
                    if !duplicate {
                        added += usize::from(self.add(tenant, id)?);
                    }
                }
                self.indexed.insert(tenant.0, commit);
                self.reached = commit;
                self.dirty = true;
                if added >= BATCH {
                    return Ok(added);
                }
            }
        }
        Ok(added)
    }

    /// Adds one stored event; false when it is gone (expired or erased since).
    fn add(&mut self, tenant: TenantNo, id: EventId) -> Result<bool, StoreError> {
        let Some(value) = self
            .ks
            .events
            .get(keys::event_key(tenant, id))
            .map_err(StoreError::unavailable)?
        else {
            return Ok(false);
        };
        let (json, _) = self.ks.segments.event_json(&value)?;
        let event: Indexed<'_> = serde_json::from_slice(&json)
            .map_err(|err| StoreError::Corrupt(format!("stored event {id}: {err}")))?;
        let payload: Value = serde_json::from_str(event.payload.get())
            .map_err(|err| StoreError::Corrupt(format!("stored event {id}: {err}")))?;
        let f = self.fields;
        let (hi, lo) = split(id);
        let mut document = doc!(
            f.tenant => u64::from(tenant.0),
            f.id => keys::event_key(tenant, id).to_vec(),
            f.id_hi => hi,
            f.id_lo => lo,
            f.event_type => tenant_text(tenant, &event.event_type),
        );
        for start in text_index_starts(&payload) {
            document.add_text(f.starts, tenant_text(tenant, &start));
        }
        for key in payload_index_keys(&payload) {
            document.add_u64(f.paths, tenant_key(tenant, key));
        }
        self.writer.add_document(document).map_err(index_error)?;
        Ok(true)
    }

    fn commit_logged(&mut self) {
        if !self.dirty {
            return;
        }
        if let Err(err) = self.commit() {
            metrics::counter!("pulsestream_search_index_commit_failures_total").increment(1);
            // Kept dirty: the next round tries again (a full disk, say). Erasures waiting for
            // this commit are told rather than kept waiting; their deletions stay queued for
            // the next commit that succeeds.
            tracing::error!(error = %err, "search index: commit failed");
            for done in self.waiting.drain(..) {
                let _ = done.send(Err(format!("commit failed: {err}")));
            }
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let progress = Progress {
            format: FORMAT,
            tenants: self.indexed.clone(),
        };
        let payload = serde_json::to_string(&progress).map_err(StoreError::unavailable)?;
        let mut prepared = self.writer.prepare_commit().map_err(index_error)?;
        prepared.set_payload(&payload);
        prepared.commit().map_err(index_error)?;
        self.reader.reload().map_err(index_error)?;
        *self
            .view
            .write()
            .expect("index view lock is never poisoned") = View {
            searcher: self.reader.searcher(),
            indexed: Arc::new(self.indexed.clone()),
        };
        self.dirty = false;
        self.last_commit = Instant::now();
        for done in self.waiting.drain(..) {
            let _ = done.send(Ok(()));
        }
        Ok(())
    }
}

fn split(id: EventId) -> (u64, u64) {
    let id = id.0.as_u128();
    ((id >> 64) as u64, id as u64)
}

pub(crate) fn index_error(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("search index: {err}").into())
}

/// Opens the index in `dir` with its progress: `None` when there is none yet.
fn open_existing(dir: &Path) -> Result<Option<(Index, Progress)>, StoreError> {
    if !dir.join("meta.json").exists() {
        return Ok(None);
    }
    let index = Index::open_in_dir(dir).map_err(index_error)?;
    if index.schema() != schema().0 {
        return Err(index_error("another schema"));
    }
    let metas = index.load_metas().map_err(index_error)?;
    let progress = match metas.payload.as_deref() {
        Some(payload) => serde_json::from_str::<Progress>(payload).map_err(index_error)?,
        None => Progress::default(),
    };
    if progress.format != FORMAT && metas.payload.is_some() {
        return Err(index_error(format!("format {}", progress.format)));
    }
    Ok(Some((index, progress)))
}

/// Creates an empty index in `dir`, replacing whatever is there.
fn create(dir: &Path) -> Result<Index, StoreError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(StoreError::unavailable)?;
    }
    std::fs::create_dir_all(dir).map_err(StoreError::unavailable)?;
    Index::create_in_dir(dir, schema().0).map_err(index_error)
}

/// Where the index of a data dir lives.
pub(crate) fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("search-index")
}
