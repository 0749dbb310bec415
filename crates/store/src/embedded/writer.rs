//! The single writer: group commit of concurrent appends.
//!
//! Requests queue in a bounded channel. The writer thread takes whatever is queued (up to
//! [`MAX_GROUP_EVENTS`]), decides each event's fate against the dedup index and the group
//! itself, writes everything in one atomic fjall batch with `fdatasync`, and only then
//! answers every request of the group. Being the only writer is what makes the
//! duplicate check and the insert one atomic step: 50 concurrent requests with one
//! `event_id` meet here in sequence, so one is stored and the rest are duplicates.
//!
//! A failed commit leaves the writer stopped: no later request can be acknowledged on top
//! of a state that is not known to be durable. Reopening the store recovers from fjall's
//! journal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fjall::{Database, OwnedWriteBatch as WriteBatch, PersistMode};
use pulsestream_core::{Destination, EventId, NewEvent, format_timestamp};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::Keyspaces;
use super::delivery::{self, DestinationCache};
use super::keys::{self, TenantNo};
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

/// An event's id and `events` value, built before it reaches the writer.
pub(crate) struct Prepared {
    id: EventId,
    value: Vec<u8>,
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
                let mut value = Vec::with_capacity(event.payload.len() + 320);
                value.extend_from_slice(&keys::event_value_header(event.timestamp.is_some()));
                match &event.event_id {
                    Some(event_id) => {
                        write_event_json(&mut value, id, event, event_id, &received_at)?;
                    }
                    None => {
                        write_event_json(&mut value, id, event, &id.to_string(), &received_at)?;
                    }
                }
                Ok(Prepared { id, value })
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
}

/// The API side of the writer: submits jobs, stops the thread.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    sender: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
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
    ) -> Self {
        let (sender, receiver) = mpsc::channel(capacity);
        let failed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            db,
            keyspaces,
            destinations,
            failed: failed.clone(),
            last_commit_micros: std::cell::Cell::new(i64::MIN),
        };
        let thread = std::thread::Builder::new()
            .name("pulsestream-writer".into())
            .spawn(move || writer.run(receiver))
            .expect("spawning a thread only fails when the OS is out of resources at startup");
        Self {
            sender: Arc::new(Mutex::new(Some(sender))),
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
    last_commit_micros: std::cell::Cell<i64>,
}

/// What every event of one request shares.
struct Context<'a> {
    tenant: TenantNo,
    /// Due time of the group's outbox entries: the commit's start, which only grows from
    /// one group to the next, so delivery workers can scan their queue from where they left.
    enqueue_micros: i64,
    /// The tenant's enabled destinations when the group was committed.
    destinations: &'a [Destination],
}

/// An event accepted earlier in the same group, for in-group duplicates.
struct Pending<'a> {
    id: EventId,
    event: &'a NewEvent,
}

impl Writer {
    fn run(self, mut receiver: mpsc::Receiver<Job>) {
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
            if self.failed.load(Ordering::Acquire) {
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::unavailable(WriterStopped)));
                }
                continue;
            }
            metrics::gauge!("pulsestream_write_queue_requests").set(receiver.len() as f64);
            let started = std::time::Instant::now();
            // A panic here would end the thread while `/readyz` still said ready: turn it into
            // a failed commit, which stops writes visibly.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_group(&jobs)))
                    .unwrap_or_else(|_| {
                        Err(StoreError::Corrupt(
                            "the writer panicked during a commit".into(),
                        ))
                    });
            metrics::histogram!("pulsestream_commit_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("pulsestream_commit_batch_events").record(events as f64);
            match result {
                Ok(outcomes) => {
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(outcome);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, source = ?std::error::Error::source(&err), "group commit failed; the store stops taking writes");
                    self.failed.store(true, Ordering::Release);
                    metrics::counter!("pulsestream_commit_failures_total").increment(1);
                    for job in jobs {
                        let _ = job.reply.send(Err(StoreError::unavailable(WriterStopped)));
                    }
                }
            }
        }
    }

    fn commit_group(
        &self,
        jobs: &[Job],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let ks = &self.keyspaces;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let events: usize = jobs.iter().map(|job| job.batch.events.len()).sum();
        let mut pending: HashMap<[u8; keys::HASHED_KEY_LEN], Pending<'_>> =
            HashMap::with_capacity(events);
        let commit_micros = self.next_commit_micros();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut group_records: HashMap<[u8; keys::HASHED_KEY_LEN], IdempotencyRecord> =
            HashMap::new();
        for job in jobs {
            let tenant = self.keyspaces.numbers.get_or_assign(job.batch.tenant)?;
            // A request whose key already finished (its twin timed out or disconnected
            // before the answer, and the client retried) gets the recorded outcome and stores
            // nothing: the in-memory claim alone cannot see requests still queued here.
            if let Some(claim) = &job.batch.idempotency
                && let Some(record) =
                    self.recorded(&group_records, tenant, claim, job.batch.received_at)?
            {
                // The same body replays the outcome; another body is refused (422).
                outcomes.push(if record.request_hash == claim.request_hash {
                    Ok(AppendOutcome {
                        statuses: record.statuses,
                    })
                } else {
                    Err(StoreError::IdempotencyKeyReused)
                });
                continue;
            }
            let destinations: Vec<Destination> = self
                .destinations
                .read()
                .expect("destination cache lock is never poisoned")
                .get(&job.batch.tenant)
                .map(|all| {
                    all.iter()
                        .filter(|destination| !destination.disabled)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let context = Context {
                tenant,
                enqueue_micros: commit_micros,
                destinations: &destinations,
            };
            let mut statuses = Vec::with_capacity(job.batch.events.len());
            for (event, prepared) in job.batch.events.iter().zip(&job.prepared) {
                let status = match &event.event_id {
                    Some(event_id) => {
                        let dedup_key = keys::hashed_key(tenant, event_id);
                        if let Some(earlier) = pending.get(&dedup_key) {
                            if same_content(earlier.event, event) {
                                AppendStatus::Duplicate(earlier.id)
                            } else {
                                AppendStatus::Conflict(earlier.id)
                            }
                        } else if let Some(existing) = self.existing(tenant, &dedup_key, event)? {
                            existing
                        } else {
                            self.insert(&mut batch, &context, prepared, event, dedup_key);
                            pending.insert(
                                dedup_key,
                                Pending {
                                    id: prepared.id,
                                    event,
                                },
                            );
                            AppendStatus::Accepted(prepared.id)
                        }
                    }
                    None => {
                        // A fresh id cannot collide: no lookup needed.
                        let dedup_key = keys::hashed_key(tenant, &prepared.id.to_string());
                        self.insert(&mut batch, &context, prepared, event, dedup_key);
                        AppendStatus::Accepted(prepared.id)
                    }
                };
                statuses.push(status);
            }
            if let Some(claim) = &job.batch.idempotency {
                let record = IdempotencyRecord {
                    request_hash: claim.request_hash,
                    created_at: job.batch.received_at,
                    statuses: statuses.clone(),
                };
                let key = keys::hashed_key(tenant, &claim.key);
                batch.insert(&ks.idempotency, key, record::encode_idempotency(&record));
                group_records.insert(key, record);
            }
            outcomes.push(Ok(AppendOutcome { statuses }));
        }
        // Commit before answering: a 2xx promises that this group survives a crash.
        batch.commit().map_err(StoreError::unavailable)?;
        Ok(outcomes)
    }

    /// Returns the record under the request's `Idempotency-Key` (in this group, or committed
    /// within 24 hours), whichever body it was recorded for.
    fn recorded(
        &self,
        group_records: &HashMap<[u8; keys::HASHED_KEY_LEN], IdempotencyRecord>,
        tenant: TenantNo,
        claim: &crate::IdempotencyClaim,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = keys::hashed_key(tenant, &claim.key);
        let record = match group_records.get(&key) {
            Some(record) => Some(record.clone()),
            None => match self
                .keyspaces
                .idempotency
                .get(key)
                .map_err(StoreError::unavailable)?
            {
                Some(value) => Some(record::decode_idempotency(&value)?),
                None => None,
            },
        };
        Ok(record.filter(|record| record.created_at + time::Duration::hours(24) > now))
    }

    /// Looks the event up by its dedup key: a duplicate or a conflict if one is stored.
    fn existing(
        &self,
        tenant: TenantNo,
        dedup_key: &[u8; keys::HASHED_KEY_LEN],
        event: &NewEvent,
    ) -> Result<Option<AppendStatus>, StoreError> {
        let Some(value) = self
            .keyspaces
            .dedup
            .get(dedup_key)
            .map_err(StoreError::unavailable)?
        else {
            return Ok(None);
        };
        let (id, hash) = keys::decode_dedup(&value)?;
        let Some(stored) = self
            .keyspaces
            .events
            .get(keys::event_key(tenant, id))
            .map_err(StoreError::unavailable)?
        else {
            return Err(StoreError::Corrupt(format!(
                "dedup entry points to missing event {id}"
            )));
        };
        let (json, timestamp_given) = keys::decode_event_value(&stored)?;
        Ok(Some(record::stored_status(
            id,
            hash,
            json,
            timestamp_given,
            event,
        )))
    }

    /// Returns this group's enqueue time: now, or one microsecond past the previous group's
    /// if the clock went back, so due times never decrease.
    fn next_commit_micros(&self) -> i64 {
        let now = record::micros_of(OffsetDateTime::now_utc());
        let next = now.max(self.last_commit_micros.get() + 1);
        self.last_commit_micros.set(next);
        next
    }

    fn insert(
        &self,
        batch: &mut WriteBatch,
        context: &Context<'_>,
        prepared: &Prepared,
        event: &NewEvent,
        dedup_key: [u8; keys::HASHED_KEY_LEN],
    ) {
        let ks = &self.keyspaces;
        let (tenant, id) = (context.tenant, prepared.id);
        batch.insert(
            &ks.events,
            keys::event_key(tenant, id),
            prepared.value.as_slice(),
        );
        batch.insert(
            &ks.by_type,
            keys::type_key(tenant, &event.event_type, id),
            keys::type_value(tenant, &event.event_type),
        );
        batch.insert(
            &ks.dedup,
            dedup_key,
            keys::encode_dedup(id, event.content_hash),
        );
        // Save and enqueue atomically: the outbox entries ride in the same commit.
        for destination in context
            .destinations
            .iter()
            .filter(|destination| destination.wants(&event.event_type))
        {
            batch.insert(
                &ks.outbox,
                delivery::outbox_key(destination.id, context.enqueue_micros, id),
                delivery::outbox_value(0, ""),
            );
        }
    }
}
