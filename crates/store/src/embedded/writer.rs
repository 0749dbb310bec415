//! The single writer: group commit of concurrent appends.
//!
//! Requests queue in a bounded channel. Before a request is queued, its task gives each event
//! an id and builds its stored JSON ([`prepare`]), in parallel with other requests. The writer
//! thread takes whatever is queued (up to [`MAX_GROUP_EVENTS`]) as one group and decides each
//! event's fate against the dedup index, the groups still being committed and the group
//! itself. Being the only decider is what makes the duplicate check and the insert one
//! atomic step: 50 concurrent requests with one `event_id` meet here in sequence, so one is
//! stored and the rest are duplicates.
//!
//! The committer thread then writes the group in one atomic fjall batch with `fdatasync`, and
//! only then answers every request of the group, while the writer decides the next group
//! (a two-stage pipeline: groups are committed in the order decided, and the writer sees
//! what the group before is writing through its in-memory maps until the commit is done).
//!
//! A failed commit leaves the writer stopped: no later request can be acknowledged on top
//! of a state that is not known to be durable (the group decided after it is refused too).
//! Reopening the store recovers from fjall's journal.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fjall::{Database, OwnedWriteBatch as WriteBatch, PersistMode, Readable};
use pulsestream_core::{Destination, EventId, NewEvent, Routable, format_timestamp};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::Keyspaces;
use super::dedup_filter::DedupFilter;
use super::delivery::{self, DestinationCache};
use super::keys::{self, TenantNo};
use super::segments::{self, LogEnd, Pointer, Segments};
use crate::plan::{Decide, GroupPlan};
use crate::record::{self, IdGen, same_content, write_event_json};
use crate::{AppendOutcome, AppendStatus, IdempotencyRecord, StoreError};

/// The most events one group commit takes; more wait for the next one.
pub const MAX_GROUP_EVENTS: usize = 20_000;

pub(crate) struct Job {
    pub batch: crate::AppendBatch,
    /// Per event, its id and stored value if it is accepted: built by the request's task,
    /// in parallel with other requests, so that the writer only decides and writes.
    pub prepared: Vec<Prepared>,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// An event's id and its segment-log record, built before it reaches the writer.
pub(crate) struct Prepared {
    id: EventId,
    /// The record: header (length, CRC) and the event's JSON as the API returns it.
    record: Vec<u8>,
    timestamp_given: bool,
}

thread_local! {
    /// The random half of event ids, one generator per thread.
    static IDS: std::cell::RefCell<IdGen> = std::cell::RefCell::new(IdGen::new());
}

/// Gives each event of the batch its id and builds its stored value.
pub(crate) fn prepare(batch: &crate::AppendBatch) -> Result<Vec<Prepared>, StoreError> {
    let received_at = format_timestamp(batch.received_at);
    IDS.with_borrow_mut(|ids| {
        batch
            .events
            .iter()
            .map(|event| {
                let id = ids.next(event, batch.received_at);
                let mut record = segments::new_record(event.payload.len() + 320);
                let generated;
                let event_id = match &event.event_id {
                    Some(event_id) => event_id.as_str(),
                    None => {
                        generated = id.to_string();
                        &generated
                    }
                };
                write_event_json(&mut record, id, event, event_id, &received_at)?;
                segments::seal_record(&mut record)?;
                Ok(Prepared {
                    id,
                    record,
                    timestamp_given: event.timestamp.is_some(),
                })
            })
            .collect()
    })
}

/// Declares the writer's metrics with their help text.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "pulsestream_commit_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one group commit: dedup checks, writes and fdatasync"
    );
    metrics::describe_histogram!(
        "pulsestream_commit_batch_events",
        "Events in one group commit"
    );
    metrics::describe_gauge!(
        "pulsestream_write_queue_requests",
        "Requests waiting for the writer"
    );
    metrics::describe_counter!(
        "pulsestream_commit_failures_total",
        "Commits that failed (on the embedded store, the store then stops acknowledging writes)"
    );
    metrics::describe_counter!(
        "pulsestream_search_index_documents_total",
        "Events added to the embedded store's search index"
    );
    metrics::describe_gauge!(
        "pulsestream_search_index_lag_seconds",
        metrics::Unit::Seconds,
        "How far behind the store the search index is (0 when it holds every committed event; searches read what it lacks from the store)"
    );
    metrics::describe_counter!(
        "pulsestream_segments_deleted_total",
        "Segment files of the embedded store's log deleted after retention or erasure left them empty or moved their live events"
    );
    metrics::describe_counter!(
        "pulsestream_search_index_commit_failures_total",
        "Search index commits that failed (retried; searches read what it lacks from the store)"
    );
}

/// The API side of the writer: submits jobs, stops the thread.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    sender: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    /// The writer's current dedup filter (only tests look at it from outside).
    #[cfg_attr(not(test), allow(dead_code))]
    filter: Arc<Mutex<Arc<DedupFilter>>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    failed: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the store's writer has stopped")]
struct WriterStopped;

impl WriterHandle {
    pub fn start(
        db: Database,
        keyspaces: Keyspaces,
        destinations: DestinationCache,
        capacity: usize,
        filter_keys: u64,
        identity: super::identity::DirIdentity,
        log_end: LogEnd,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(capacity);
        let failed = Arc::new(AtomicBool::new(false));
        // Filled from a scan opened before any write of this process: whatever the scan
        // misses, the writer adds.
        let stored = keyspaces.dedup.approximate_len() as u64;
        let dedup_filter = Arc::new(DedupFilter::with_capacity(
            stored.saturating_mul(2).max(filter_keys),
        ));
        dedup_filter.fill_in_background(keyspaces.dedup.iter());
        let filter = Arc::new(Mutex::new(dedup_filter.clone()));
        // Commit times only grow, across restarts too (the live tail's positions and the
        // queues' due times are built on them), even if the clock went back in between.
        let last_commit_micros = keys::last_commit_micros(&keyspaces.meta).unwrap_or(i64::MIN);
        let writer = Writer {
            db,
            keyspaces,
            destinations,
            failed: failed.clone(),
            last_commit_micros,
            in_flight: VecDeque::new(),
            finished: Arc::new(AtomicU64::new(0)),
            next_group: 0,
            dedup_filter,
            shared_filter: filter.clone(),
            identity,
            // Above every number of an earlier run (a run takes fewer than 1,000 per
            // microsecond), unless the clock went back between the runs.
            order_seq: std::cell::Cell::new(
                record::micros_of(OffsetDateTime::now_utc()).saturating_mul(1_000),
            ),
            log_end,
        };
        let thread = std::thread::Builder::new()
            .name("pulsestream-writer".into())
            .spawn(move || writer.run(receiver))
            .expect("spawning a thread only fails when the OS is out of resources at startup");
        Self {
            sender: Arc::new(Mutex::new(Some(sender))),
            filter,
            thread: Arc::new(Mutex::new(Some(thread))),
            failed,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), StoreError> {
        let sender = self
            .sender
            .lock()
            .expect("writer sender lock is never poisoned")
            .clone();
        let Some(sender) = sender else {
            return Err(StoreError::unavailable(WriterStopped));
        };
        sender.try_send(job).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::unavailable(WriterStopped),
        })
    }

    /// Whether the writer's dedup filter holds every stored key (tests wait for it).
    #[cfg(test)]
    pub fn dedup_filter_complete(&self) -> bool {
        self.filter
            .lock()
            .expect("filter lock is never poisoned")
            .is_complete()
    }

    pub fn check_alive(&self) -> Result<(), StoreError> {
        let open = self
            .sender
            .lock()
            .expect("writer sender lock is never poisoned")
            .is_some();
        if open && !self.failed.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::unavailable(WriterStopped))
        }
    }

    /// Stops taking jobs, lets the writer finish those already queued, and waits for it.
    pub fn stop(&self) {
        self.sender
            .lock()
            .expect("writer sender lock is never poisoned")
            .take();
        if let Some(thread) = self
            .thread
            .lock()
            .expect("writer thread lock is never poisoned")
            .take()
        {
            let _ = thread.join();
        }
    }
}

struct Writer {
    db: Database,
    keyspaces: Keyspaces,
    /// Events are enqueued for the tenant's destinations in the commit that stores them.
    destinations: DestinationCache,
    failed: Arc<AtomicBool>,
    /// The enqueue time of the previous group.
    last_commit_micros: i64,
    /// Groups handed to the committer whose commit has not finished, oldest first: what they
    /// write is not in fjall yet, so later groups look here first.
    in_flight: VecDeque<InFlight>,
    /// The number of the last group whose commit has finished (committed or failed).
    finished: Arc<AtomicU64>,
    next_group: u64,
    /// Every dedup key stored, once complete (see `dedup_filter`).
    dedup_filter: Arc<DedupFilter>,
    shared_filter: Arc<Mutex<Arc<DedupFilter>>>,
    /// The data directory as opened: checked after each commit, before answering.
    identity: super::identity::DirIdentity,
    /// The next sequence number of an ordered destination's entry: ingest order.
    order_seq: std::cell::Cell<i64>,
    /// Where the next group's records go in the segment log.
    log_end: LogEnd,
}

/// What every event of one request shares.
struct Context {
    tenant: TenantNo,
    /// Due time of the group's outbox entries: the commit's start, which only grows from
    /// one group to the next, so delivery workers can scan their queue from where they left.
    enqueue_micros: i64,
    /// The tenant's enabled destinations when the group was committed.
    destinations: Vec<Destination>,
}

/// Where an accepted event of a group is: its id, and its request and place in the request.
#[derive(Clone, Copy)]
struct Pending {
    id: EventId,
    request: usize,
    index: usize,
}

type DedupKey = [u8; keys::HASHED_KEY_LEN];

/// A decided group whose commit has not finished.
struct InFlight {
    number: u64,
    batches: Vec<crate::AppendBatch>,
    accepted: HashMap<DedupKey, Pending>,
    records: HashMap<DedupKey, IdempotencyRecord>,
}

/// A decided group on its way to the committer.
struct Group {
    number: u64,
    /// The group's records and where they go: synced before `batch` is committed.
    log: LogWrite,
    batch: WriteBatch,
    answers: Vec<(Reply, Result<AppendOutcome, StoreError>)>,
    events: usize,
    started: std::time::Instant,
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

/// A group's records in the segment log.
struct LogWrite {
    at: LogEnd,
    records: Vec<u8>,
}

/// What deciding a group produces.
struct Decision {
    log: LogWrite,
    batch: WriteBatch,
    outcomes: Vec<Result<AppendOutcome, StoreError>>,
    accepted: HashMap<DedupKey, Pending>,
    records: HashMap<DedupKey, IdempotencyRecord>,
}

impl Writer {
    /// Decides groups and hands them to the committer thread, which writes and syncs one
    /// group while this thread decides the next: the dedup reads and the bookkeeping of group
    /// N + 1 overlap the log's and the journal's writes, fdatasyncs and memtable inserts of
    /// group N. (A third stage, a log thread syncing group N + 1's records while the
    /// committer commits group N, was measured and not kept: batches the same, single events
    /// −6 to −12 %, the hand-off costing more than the overlap gave.)
    fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        let (groups, committer_groups) = std::sync::mpsc::sync_channel::<Group>(0);
        let committer = {
            let failed = self.failed.clone();
            let finished = self.finished.clone();
            let identity = self.identity.clone();
            let segments = self.keyspaces.segments.clone();
            std::thread::Builder::new()
                .name("pulsestream-commit".into())
                .spawn(move || {
                    commit_groups(&committer_groups, &segments, &failed, &finished, &identity);
                })
                .expect("spawning a thread only fails when the OS is out of resources")
        };
        while let Some(first) = receiver.blocking_recv() {
            let mut events = first.batch.events.len();
            let mut jobs = vec![first];
            while events < MAX_GROUP_EVENTS {
                match receiver.try_recv() {
                    Ok(job) => {
                        events += job.batch.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            metrics::gauge!("pulsestream_write_queue_requests").set(receiver.len() as f64);
            let started = std::time::Instant::now();
            let mut replies = Vec::with_capacity(jobs.len());
            let mut batches = Vec::with_capacity(jobs.len());
            let mut prepared = Vec::with_capacity(jobs.len());
            for job in jobs {
                replies.push(job.reply);
                batches.push(job.batch);
                prepared.push(job.prepared);
            }
            if self.failed.load(Ordering::Acquire) {
                refuse(replies);
                continue;
            }
            let done = self.finished.load(Ordering::Acquire);
            while self
                .in_flight
                .front()
                .is_some_and(|group| group.number <= done)
            {
                self.in_flight.pop_front();
            }
            // A panic here would end the thread while `/readyz` still said ready: turn it into
            // a failed commit, which stops writes visibly.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.decide(&batches, &prepared)
            }))
            .unwrap_or_else(|_| {
                Err(StoreError::Corrupt(
                    "the writer panicked while deciding a group".into(),
                ))
            });
            drop(prepared);
            match decided {
                Ok(decision) => {
                    self.next_group += 1;
                    let number = self.next_group;
                    self.in_flight.push_back(InFlight {
                        number,
                        batches,
                        accepted: decision.accepted,
                        records: decision.records,
                    });
                    if self.dedup_filter.is_full() {
                        self.grow_dedup_filter();
                    }
                    self.log_end = LogEnd {
                        segment: decision.log.at.segment,
                        offset: decision.log.at.offset + decision.log.records.len() as u64,
                    };
                    let group = Group {
                        number,
                        log: decision.log,
                        batch: decision.batch,
                        answers: replies.into_iter().zip(decision.outcomes).collect(),
                        events,
                        started,
                    };
                    if let Err(std::sync::mpsc::SendError(group)) = groups.send(group) {
                        // The committer is gone (it panicked outside a commit): stop.
                        stop_writes(&self.failed, &StoreError::unavailable(WriterStopped));
                        refuse(group.answers.into_iter().map(|(reply, _)| reply));
                    }
                }
                Err(err) => {
                    stop_writes(&self.failed, &err);
                    refuse(replies);
                }
            }
        }
        drop(groups);
        let _ = committer.join();
    }

    /// Replaces the dedup filter with one twice its size, filled like the first: the keys
    /// of groups still being committed now, the committed ones by a background scan, the
    /// next ones as they are written. Until it is complete, lookups go to fjall.
    fn grow_dedup_filter(&mut self) {
        let filter = Arc::new(DedupFilter::with_capacity(
            self.dedup_filter.capacity().saturating_mul(2),
        ));
        for group in &self.in_flight {
            for key in group.accepted.keys() {
                filter.insert(key);
            }
        }
        filter.fill_in_background(self.keyspaces.dedup.iter());
        self.dedup_filter = filter.clone();
        *self
            .shared_filter
            .lock()
            .expect("filter lock is never poisoned") = filter;
    }

    /// Decides the fate of every event of the group (by the rules of `plan`) and builds
    /// its write batch.
    fn decide(
        &mut self,
        batches: &[crate::AppendBatch],
        prepared: &[Vec<Prepared>],
    ) -> Result<Decision, StoreError> {
        let enqueue_micros = self.next_commit_micros();
        let ks = &self.keyspaces;
        let mut contexts = Vec::with_capacity(batches.len());
        let mut dedup_keys: Vec<Vec<DedupKey>> = Vec::with_capacity(batches.len());
        for (append, prepared) in batches.iter().zip(prepared) {
            let tenant = ks.numbers.get_or_assign(append.tenant)?;
            // An event without `event_id` is keyed by its fresh id, so that a later
            // `event_id` equal to that id finds it.
            dedup_keys.push(
                append
                    .events
                    .iter()
                    .zip(prepared)
                    .map(|(event, prepared)| match &event.event_id {
                        Some(event_id) => keys::hashed_key(tenant, event_id),
                        None => keys::hashed_key(tenant, &prepared.id.to_string()),
                    })
                    .collect(),
            );
            let destinations = self
                .destinations
                .read()
                .expect("destination cache lock is never poisoned")
                .get(&append.tenant)
                .map(|all| {
                    all.iter()
                        .filter(|destination| !destination.disabled)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            contexts.push(Context {
                tenant,
                enqueue_micros,
                destinations,
            });
        }
        let requests: Vec<&crate::AppendBatch> = batches.iter().collect();
        // A request whose key already finished (its twin timed out or disconnected before
        // the answer, and the client retried) replays the recorded outcome and stores
        // nothing: the API's in-memory claim alone cannot see requests still queued here.
        let plan = GroupPlan::new(&requests, &dedup_keys, |request| {
            let claim = requests[request]
                .idempotency
                .as_ref()
                .expect("the plan asks only about requests with a key");
            self.recorded(&keys::hashed_key(contexts[request].tenant, &claim.key))
        })?;
        let events = dedup_keys.iter().map(Vec::len).sum();
        let mut deciding = Deciding {
            writer: self,
            batches,
            prepared,
            dedup_keys: &dedup_keys,
            contexts: &contexts,
            writes: Writes {
                batch: self.db.batch().durability(Some(PersistMode::SyncData)),
                log: LogWrite {
                    at: self.keyspaces.segments.next_group_at(self.log_end),
                    records: Vec::new(),
                },
                dedup: Vec::with_capacity(events),
            },
            accepted: HashMap::with_capacity(events),
        };
        let decided = plan.decide(&requests, &mut deciding)?;
        let Deciding {
            writes:
                Writes {
                    mut batch,
                    log,
                    dedup,
                },
            accepted,
            ..
        } = deciding;
        insert_dedup_sorted(&mut batch, ks, dedup);
        let mut records = HashMap::with_capacity(decided.records.len());
        for (request, record) in decided.records {
            let claim = requests[request]
                .idempotency
                .as_ref()
                .expect("records are made for requests with a key");
            let key = keys::hashed_key(contexts[request].tenant, &claim.key);
            batch.insert(&ks.idempotency, key, record::encode_idempotency(&record));
            records.insert(key, record);
        }
        // The live tail: per tenant, one entry of this commit's events in the order decided,
        // then the retries of stored events, marked.
        let mut tail: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        let mut stored: Vec<&Pending> = accepted.values().collect();
        stored.sort_unstable_by_key(|pending| (pending.request, pending.index));
        for pending in stored {
            tail.entry(contexts[pending.request].tenant.0)
                .or_default()
                .extend_from_slice(&keys::tail_entry(pending.id, false));
        }
        for (request, id) in &decided.duplicates {
            tail.entry(contexts[*request].tenant.0)
                .or_default()
                .extend_from_slice(&keys::tail_entry(*id, true));
        }
        for (tenant, entries) in tail {
            batch.insert(
                &ks.tail,
                keys::tail_key(TenantNo(tenant), enqueue_micros),
                entries,
            );
        }
        if !accepted.is_empty() || !decided.duplicates.is_empty() {
            batch.insert(
                &ks.meta,
                keys::COMMIT_MICROS_KEY,
                enqueue_micros.to_be_bytes(),
            );
        }
        Ok(Decision {
            log,
            batch,
            outcomes: decided.outcomes,
            accepted,
            records,
        })
    }

    /// The event accepted under the dedup key by a group whose commit has not finished.
    fn in_flight_event(&self, dedup_key: &DedupKey) -> Option<(EventId, &NewEvent)> {
        self.in_flight.iter().rev().find_map(|group| {
            group.accepted.get(dedup_key).map(|pending| {
                (
                    pending.id,
                    &group.batches[pending.request].events[pending.index],
                )
            })
        })
    }

    /// Returns the record under an `Idempotency-Key` (hashed with its tenant): in a group
    /// being committed, or committed, whatever its age (the plan applies the window).
    fn recorded(&self, key: &DedupKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        let in_flight = self
            .in_flight
            .iter()
            .rev()
            .find_map(|group| group.records.get(key));
        if let Some(record) = in_flight {
            return Ok(Some(record.clone()));
        }
        match self
            .keyspaces
            .idempotency
            .get(key)
            .map_err(StoreError::unavailable)?
        {
            Some(value) => Ok(Some(record::decode_idempotency(&value)?)),
            None => Ok(None),
        }
    }

    /// A duplicate or a conflict if the event is in a group being committed or stored.
    fn known(
        &self,
        tenant: TenantNo,
        dedup_key: &DedupKey,
        event: &NewEvent,
    ) -> Result<Option<AppendStatus>, StoreError> {
        match self.in_flight_event(dedup_key) {
            Some((id, earlier)) if same_content(earlier, event) => {
                Ok(Some(AppendStatus::Duplicate(id)))
            }
            Some((id, _)) => Ok(Some(AppendStatus::Conflict(id))),
            None => self.existing(tenant, dedup_key, event),
        }
    }

    /// Looks the event up by its dedup key: a duplicate or a conflict if one is stored.
    fn existing(
        &self,
        tenant: TenantNo,
        dedup_key: &DedupKey,
        event: &NewEvent,
    ) -> Result<Option<AppendStatus>, StoreError> {
        // Certainly new: no need to prove it in fjall.
        if self.dedup_filter.is_complete() && !self.dedup_filter.may_contain(dedup_key) {
            return Ok(None);
        }
        let Some(value) = self
            .keyspaces
            .dedup
            .get(dedup_key)
            .map_err(StoreError::unavailable)?
        else {
            return Ok(None);
        };
        let (id, hash) = keys::decode_dedup(&value)?;
        let stored = match self
            .keyspaces
            .events
            .get(keys::event_key(tenant, id))
            .map_err(StoreError::unavailable)?
        {
            Some(stored) => stored,
            None => {
                // Retention deletes an event with its dedup entry in one batch, maybe
                // between the two reads above: one snapshot sees both or neither.
                let snapshot = self.db.snapshot();
                let dedup = snapshot
                    .get(&self.keyspaces.dedup, dedup_key)
                    .map_err(StoreError::unavailable)?;
                let in_snapshot = snapshot
                    .get(&self.keyspaces.events, keys::event_key(tenant, id))
                    .map_err(StoreError::unavailable)?;
                match (dedup, in_snapshot) {
                    (None, _) => return Ok(None),
                    (Some(_), Some(stored)) => stored,
                    // An erased event: its dedup entry is the tombstone.
                    (Some(_), None)
                        if snapshot
                            .contains_key(&self.keyspaces.erased, keys::event_key(tenant, id))
                            .map_err(StoreError::unavailable)? =>
                    {
                        return Ok(Some(record::tombstone_status(id, hash, event)));
                    }
                    (Some(_), None) => {
                        return Err(StoreError::Corrupt(format!(
                            "dedup entry points to missing event {id}"
                        )));
                    }
                }
            }
        };
        let (json, timestamp_given) = self.keyspaces.segments.event_json(&stored)?;
        Ok(Some(record::stored_status(
            id,
            hash,
            &json,
            timestamp_given,
            event,
        )))
    }

    /// Returns this group's enqueue time: now, or one microsecond past the previous group's
    /// if the clock went back, so due times never decrease.
    fn next_commit_micros(&mut self) -> i64 {
        let now = record::micros_of(OffsetDateTime::now_utc());
        let next = now.max(self.last_commit_micros.saturating_add(1));
        self.last_commit_micros = next;
        next
    }

    /// Adds an accepted event's entries to the group's batch; its `dedup` entry goes to
    /// `dedup`, which the group inserts in key order (see [`insert_dedup_sorted`]).
    fn insert(
        &self,
        writes: &mut Writes,
        context: &Context,
        prepared: &Prepared,
        event: &NewEvent,
        dedup_key: DedupKey,
    ) {
        let ks = &self.keyspaces;
        let Writes { batch, log, dedup } = writes;
        let (tenant, id) = (context.tenant, prepared.id);
        let pointer = Pointer {
            segment: log.at.segment,
            offset: log.at.offset + log.records.len() as u64,
            len: u32::try_from(prepared.record.len() - segments::RECORD_HEADER)
                .expect("seal_record refused longer ones"),
        };
        log.records.extend_from_slice(&prepared.record);
        batch.insert(
            &ks.events,
            keys::event_key(tenant, id),
            keys::event_value(prepared.timestamp_given, pointer),
        );
        batch.insert(
            &ks.by_type,
            keys::type_key(tenant, &event.event_type, id),
            keys::type_value(tenant, &event.event_type),
        );
        self.dedup_filter.insert(&dedup_key);
        dedup.push((dedup_key, keys::encode_dedup(id, event.content_hash)));
        // Save and enqueue atomically: the outbox entries ride in the same commit.
        let routable = Routable::new(&event.event_type, event.source.as_deref(), &event.payload);
        for destination in context
            .destinations
            .iter()
            .filter(|destination| destination.wants(&routable))
        {
            batch.insert(
                &ks.outbox,
                delivery::outbox_key(destination.id, context.enqueue_micros, id),
                delivery::outbox_value(
                    0,
                    "",
                    destination.order_key(&routable).map(|key| {
                        let seq = self.order_seq.get();
                        self.order_seq.set(seq + 1);
                        crate::QueueOrder { key, seq }
                    }),
                ),
            );
        }
    }
}

/// The writer's answers to what a group's plan leaves to the store.
struct Deciding<'a> {
    writer: &'a Writer,
    batches: &'a [crate::AppendBatch],
    prepared: &'a [Vec<Prepared>],
    dedup_keys: &'a [Vec<DedupKey>],
    contexts: &'a [Context],
    writes: Writes,
    accepted: HashMap<DedupKey, Pending>,
}

type DedupEntry = (DedupKey, [u8; 32]);

/// What a group writes: its batch, its records in the log, its `dedup` entries (inserted in
/// key order at the end).
struct Writes {
    batch: WriteBatch,
    log: LogWrite,
    dedup: Vec<DedupEntry>,
}

/// Puts a group's `dedup` entries into its write batch in key order. fjall applies a batch
/// to each memtable (a skiplist) in the order given; `dedup` keys are random hashes, so in
/// request order each insert searched its way down a 64 MB skiplist from the top, missing
/// the cache at each level, while in key order each lands next to the one before.
/// Measured (`raw_append DIR 1000000 1000 8`, one binary with either order, alternating,
/// seven pairs, every pair faster): +19 % events per second (BENCHMARKS.md). Sorting `events` and `by_type` too,
/// whose keys start with a timestamp and come nearly in order, made no difference beyond
/// the noise (three pairs).
fn insert_dedup_sorted(batch: &mut WriteBatch, ks: &Keyspaces, mut dedup: Vec<DedupEntry>) {
    dedup.sort_unstable_by_key(|entry| entry.0);
    for (key, value) in dedup {
        batch.insert(&ks.dedup, key, value);
    }
}

impl Decide for Deciding<'_> {
    fn first(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError> {
        let event = &self.batches[request].events[index];
        let dedup_key = self.dedup_keys[request][index];
        let context = &self.contexts[request];
        // A fresh id cannot collide: no lookup needed.
        if event.event_id.is_some()
            && let Some(status) = self.writer.known(context.tenant, &dedup_key, event)?
        {
            return Ok(status);
        }
        let prepared = &self.prepared[request][index];
        self.writer
            .insert(&mut self.writes, context, prepared, event, dedup_key);
        self.accepted.insert(
            dedup_key,
            Pending {
                id: prepared.id,
                request,
                index,
            },
        );
        Ok(AppendStatus::Accepted(prepared.id))
    }

    fn against_stored(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError> {
        let event = &self.batches[request].events[index];
        self.writer
            .known(
                self.contexts[request].tenant,
                &self.dedup_keys[request][index],
                event,
            )?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "event_id {:?} was found a moment ago and is gone",
                    event.event_id
                ))
            })
    }
}

/// The committer thread: writes each decided group in one atomic fjall batch with
/// `fdatasync`, in the order decided, and only then answers its requests.
///
/// A failed commit stops the store taking writes: the groups decided after it counted on
/// its events, so they are refused too, and no later request can be acknowledged on top of
/// a state that is not known to be durable.
fn commit_groups(
    groups: &std::sync::mpsc::Receiver<Group>,
    segments: &Segments,
    failed: &AtomicBool,
    finished: &AtomicU64,
    identity: &super::identity::DirIdentity,
) {
    let mut appender = segments::Appender::default();
    for group in groups {
        let Group {
            number,
            log,
            batch,
            answers,
            events,
            started,
        } = group;
        let result = if failed.load(Ordering::Acquire) {
            Err(StoreError::unavailable(WriterStopped))
        } else {
            // Commit before answering: a 2xx promises that this group survives a crash. The
            // records first: a committed pointer must name synced bytes.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if !log.records.is_empty() {
                    appender.append(segments, log.at, &log.records)?;
                }
                batch.commit().map_err(StoreError::unavailable)
            }))
            .unwrap_or_else(|_| {
                Err(StoreError::Corrupt(
                    "the writer panicked during a commit".into(),
                ))
            })
            // Synced, but into the directory the store opened? If it was removed or replaced,
            // no restart will find this group: refuse it rather than acknowledge it.
            .and_then(|()| identity.check())
        };
        match &result {
            Err(err) => stop_writes(failed, err),
            // Every group before this one is committed too: the reclaimer may treat the
            // segments below this group's as closed.
            Ok(()) if !log.records.is_empty() => segments.note_committed(log.at.segment),
            Ok(()) => {}
        }
        // The group's writes are in fjall (or never will be): the writer may forget them.
        finished.store(number, Ordering::Release);
        metrics::histogram!("pulsestream_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("pulsestream_commit_batch_events").record(events as f64);
        match result {
            Ok(()) => {
                for (reply, outcome) in answers {
                    let _ = reply.send(outcome);
                }
            }
            Err(_) => refuse(answers.into_iter().map(|(reply, _)| reply)),
        }
    }
}

/// Stops the store taking writes (once: the first failure is the one logged and counted).
fn stop_writes(failed: &AtomicBool, err: &StoreError) {
    if !failed.swap(true, Ordering::AcqRel) {
        tracing::error!(error = %err, source = ?std::error::Error::source(err), "group commit failed; the store stops taking writes");
        metrics::counter!("pulsestream_commit_failures_total").increment(1);
    }
}

/// Answers requests the stopped writer will not store.
fn refuse(replies: impl IntoIterator<Item = Reply>) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::unavailable(WriterStopped)));
    }
}
