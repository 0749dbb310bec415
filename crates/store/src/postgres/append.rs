//! Group commit on PostgreSQL: the requests waiting when a committer is free are stored in
//! one transaction, and none of them is answered before it commits.
//!
//! A few committer tasks (`PostgresConfig::committers`) take jobs from one bounded queue (full:
//! 503, as with the embedded writer). Each takes every queued job, up to
//! [`MAX_GROUP_EVENTS`] events, and runs [`commit_group`], which decides the group by the
//! rules of `plan` (shared with the embedded writer) in named steps: advisory locks on the
//! group's `Idempotency-Key`s (sorted, so two groups cannot deadlock on them) and their
//! recorded outcomes; the tenants' destinations; the plan; one multi-row `INSERT … SELECT
//! FROM unnest(…) ORDER BY (tenant_id, event_id) ON CONFLICT DO NOTHING` for the first copy
//! of every event; one read of the rows it skipped (stored before, or by another node's
//! transaction that committed while this one waited on the constraint); the statuses; outbox
//! rows and idempotency records; `COMMIT`. A handful of round trips per group, however many
//! requests it carries, and one WAL flush.
//!
//! If a group fails for a reason other than the database being unreachable, its jobs are
//! retried one per transaction, so one request that the database refuses cannot fail others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use pulsestream_core::{ContentHash, Destination, EventId, NewEvent, Routable, format_timestamp};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Db, Failure, decode_json, pg_error};
use crate::plan::{Decide, GroupPlan};
use crate::record::{self, write_event_json};
use crate::{AppendBatch, AppendOutcome, AppendStatus, IdempotencyRecord, StoreError};

/// The most events one transaction takes; more wait for the next one.
pub const MAX_GROUP_EVENTS: usize = 5_000;
/// The most payload bytes one transaction takes (a group of large events must not outgrow
/// the operation deadline): a request alone may exceed it.
pub const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

fn payload_bytes(batch: &AppendBatch) -> usize {
    batch.events.iter().map(|event| event.payload.len()).sum()
}

/// One request waiting for a committer.
pub(super) struct Job {
    pub batch: AppendBatch,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Takes groups of jobs off the queue and commits them, until the queue closes.
pub(super) async fn run_committer(store: Db, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut events = first.batch.events.len();
            let mut bytes = payload_bytes(&first.batch);
            let mut jobs = vec![first];
            while events < MAX_GROUP_EVENTS && bytes < MAX_GROUP_BYTES {
                match queue.try_recv() {
                    Ok(job) => {
                        events += job.batch.events.len();
                        bytes += payload_bytes(&job.batch);
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            metrics::gauge!("pulsestream_write_queue_requests").set(queue.len() as f64);
            jobs
        };
        let batches: Vec<&AppendBatch> = jobs.iter().map(|job| &job.batch).collect();
        let outcomes = commit_with_retries(&store, &batches).await;
        let outcomes = match outcomes {
            Err(err) if batches.len() > 1 && !Failure::of(&err).is_outage() => {
                tracing::warn!(error = %err, requests = batches.len(), "a group commit failed; committing its requests one by one");
                let mut one_by_one = Vec::with_capacity(batches.len());
                for batch in &batches {
                    one_by_one.push(
                        commit_with_retries(&store, std::slice::from_ref(batch))
                            .await
                            .and_then(|mut outcomes| outcomes.remove(0)),
                    );
                }
                one_by_one
            }
            Err(err) => {
                let shared = Arc::new(err);
                (0..batches.len())
                    .map(|_| {
                        Err(StoreError::Unavailable(Box::new(SharedError(
                            shared.clone(),
                        ))))
                    })
                    .collect()
            }
            Ok(outcomes) => outcomes,
        };
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// One error answered to every request of a failed group.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SharedError(Arc<StoreError>);

/// Commits a group, retrying when the database detected a lost race (deadlock).
async fn commit_with_retries(
    store: &Db,
    batches: &[&AppendBatch],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let started = Instant::now();
    let mut attempt = 0;
    let result = loop {
        match store.guarded(commit_group(store, batches)).await {
            Err(err) if Failure::of(&err) == Failure::LostRace && attempt < 3 => {
                attempt += 1;
                tracing::debug!(
                    attempt,
                    "a group commit lost a race in the database; retrying"
                );
            }
            other => break other,
        }
    };
    match &result {
        Ok(_) => {
            let events: usize = batches.iter().map(|batch| batch.events.len()).sum();
            metrics::histogram!("pulsestream_commit_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("pulsestream_commit_batch_events").record(events as f64);
        }
        Err(_) => metrics::counter!("pulsestream_commit_failures_total").increment(1),
    }
    result
}

/// An event of the group that is to be inserted.
struct Insert<'a> {
    tenant: Uuid,
    id: EventId,
    event_id: &'a str,
    event: &'a NewEvent,
    body: String,
    /// Whether the insert stored it (else the row existed): set once the insert has run.
    inserted: bool,
}

/// Commits a group by the rules of `plan`; per request, its outcome or why it was refused.
async fn commit_group(
    store: &Db,
    batches: &[&AppendBatch],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut client = store.client().await?;
    let transaction = client.transaction().await.map_err(pg_error)?;
    let recorded = lock_and_read_keys(&transaction, batches).await?;
    let destinations = enabled_destinations(&transaction, batches).await?;

    // Every event's id, and its key in the group: (tenant, event_id or the id).
    let ids: Vec<Vec<EventId>> = batches
        .iter()
        .map(|batch| {
            batch
                .events
                .iter()
                .map(|event| store.next_id(event, batch.received_at))
                .collect()
        })
        .collect();
    let keys: Vec<Vec<(Uuid, String)>> = batches
        .iter()
        .zip(&ids)
        .map(|(batch, ids)| {
            batch
                .events
                .iter()
                .zip(ids)
                .map(|(event, id)| {
                    let event_id = event.event_id.clone().unwrap_or_else(|| id.to_string());
                    (batch.tenant.0, event_id)
                })
                .collect()
        })
        .collect();
    let plan = GroupPlan::new(batches, &keys, |request| {
        let batch = batches[request];
        let claim = batch
            .idempotency
            .as_ref()
            .expect("the plan asks only about requests with a key");
        Ok(recorded.get(&(batch.tenant.0, claim.key.clone())).cloned())
    })?;

    // The first copy of every event is inserted; the constraint decides against what is
    // stored (or being stored by another node).
    let received_at: Vec<String> = batches
        .iter()
        .map(|batch| format_timestamp(batch.received_at))
        .collect();
    let mut inserts: Vec<Insert<'_>> = Vec::new();
    let mut slots: HashMap<(usize, usize), usize> = HashMap::new();
    for (request, index) in plan.firsts() {
        let batch = batches[request];
        let (tenant, event_id) = &keys[request][index];
        let event = &batch.events[index];
        let id = ids[request][index];
        slots.insert((request, index), inserts.len());
        inserts.push(Insert {
            tenant: *tenant,
            id,
            event_id,
            event,
            body: event_body(id, event, event_id, &received_at[request])?,
            inserted: false,
        });
    }
    let inserted = insert_events(&transaction, &inserts).await?;
    for row in &mut inserts {
        row.inserted = inserted.contains(&(row.tenant, row.event_id.to_owned()));
    }
    // The rows the insert skipped: stored before (or by a concurrent transaction).
    let skipped: Vec<(Uuid, &str)> = inserts
        .iter()
        .filter(|row| !row.inserted)
        .map(|row| (row.tenant, row.event_id))
        .collect();
    let stored = stored_events(&transaction, &skipped).await?;
    let decided = plan.decide(
        batches,
        &mut Inserted {
            batches,
            keys: &keys,
            inserts: &inserts,
            slots: &slots,
            stored: &stored,
        },
    )?;

    // Save and enqueue atomically: the outbox rows and the keys' outcomes ride in the same
    // transaction; commit before answering, since a 2xx promises they survive a crash.
    enqueue(&transaction, &inserts, &destinations).await?;
    record_outcomes(&transaction, batches, &decided.records).await?;
    record_duplicates(&transaction, batches, &decided.duplicates).await?;
    transaction.commit().await.map_err(pg_error)?;
    Ok(decided.outcomes)
}

/// Puts the group's retries of stored events on the live tail (`tail_duplicates`, in this
/// transaction, so under its id).
async fn record_duplicates(
    transaction: &deadpool_postgres::Transaction<'_>,
    batches: &[&AppendBatch],
    duplicates: &[(usize, EventId)],
) -> Result<(), StoreError> {
    if duplicates.is_empty() {
        return Ok(());
    }
    let (tenants, ids): (Vec<Uuid>, Vec<Uuid>) = duplicates
        .iter()
        .map(|(request, id)| (batches[*request].tenant.0, id.0))
        .unzip();
    transaction
        .execute(
            "INSERT INTO tail_duplicates (tenant_id, id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
            &[&tenants, &ids],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Locks the group's `Idempotency-Key`s (sorted by lock id, so two groups never deadlock on
/// them) and reads what is recorded under them.
async fn lock_and_read_keys(
    transaction: &deadpool_postgres::Transaction<'_>,
    batches: &[&AppendBatch],
) -> Result<HashMap<(Uuid, String), IdempotencyRecord>, StoreError> {
    let claims: Vec<(Uuid, &str)> = batches
        .iter()
        .filter_map(|batch| {
            batch
                .idempotency
                .as_ref()
                .map(|claim| (batch.tenant.0, claim.key.as_str()))
        })
        .collect();
    let mut recorded = HashMap::new();
    if claims.is_empty() {
        return Ok(recorded);
    }
    let lock_names: Vec<String> = claims
        .iter()
        .map(|(tenant, key)| format!("idempotency/{tenant}/{key}"))
        .collect();
    transaction
        .execute(
            "SELECT count(pg_advisory_xact_lock(lock)) FROM
                 (SELECT DISTINCT hashtextextended(name, 0) AS lock
                  FROM unnest($1::text[]) AS name ORDER BY 1) AS locks",
            &[&lock_names],
        )
        .await
        .map_err(pg_error)?;
    let (tenants, keys): (Vec<Uuid>, Vec<&str>) = claims.iter().copied().unzip();
    let rows = transaction
        .query(
            "SELECT i.tenant_id, i.key, i.record FROM idempotency i
             JOIN unnest($1::uuid[], $2::text[]) AS c(tenant_id, key)
               ON i.tenant_id = c.tenant_id AND i.key = c.key",
            &[&tenants, &keys],
        )
        .await
        .map_err(pg_error)?;
    for row in rows {
        let record = record::decode_idempotency(row.get::<_, &[u8]>(2))?;
        recorded.insert((row.get(0), row.get(1)), record);
    }
    Ok(recorded)
}

/// The enabled destinations of every tenant of the group, for the outbox.
async fn enabled_destinations(
    transaction: &deadpool_postgres::Transaction<'_>,
    batches: &[&AppendBatch],
) -> Result<HashMap<Uuid, Vec<Destination>>, StoreError> {
    let mut tenants: Vec<Uuid> = batches.iter().map(|batch| batch.tenant.0).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let statement = transaction
        .prepare_cached(
            "SELECT record FROM destinations WHERE tenant_id = ANY($1) ORDER BY created_at, id",
        )
        .await
        .map_err(pg_error)?;
    let mut destinations: HashMap<Uuid, Vec<Destination>> = HashMap::new();
    for row in transaction
        .query(&statement, &[&tenants])
        .await
        .map_err(pg_error)?
    {
        let destination: Destination = decode_json(row.get(0), "destination")?;
        if !destination.disabled {
            destinations
                .entry(destination.tenant.0)
                .or_default()
                .push(destination);
        }
    }
    Ok(destinations)
}

/// One multi-row insert for the whole group, in (tenant, event_id) order; returns the rows
/// it inserted (the others exist already).
async fn insert_events(
    transaction: &deadpool_postgres::Transaction<'_>,
    inserts: &[Insert<'_>],
) -> Result<HashSet<(Uuid, String)>, StoreError> {
    if inserts.is_empty() {
        return Ok(HashSet::new());
    }
    let mut order: Vec<&Insert<'_>> = inserts.iter().collect();
    order.sort_by(|a, b| (a.tenant, a.event_id).cmp(&(b.tenant, b.event_id)));
    let tenant_ids: Vec<Uuid> = order.iter().map(|row| row.tenant).collect();
    let ids: Vec<Uuid> = order.iter().map(|row| row.id.0).collect();
    let event_ids: Vec<&str> = order.iter().map(|row| row.event_id).collect();
    let types: Vec<&str> = order
        .iter()
        .map(|row| row.event.event_type.as_str())
        .collect();
    let sources: Vec<Option<&str>> = order
        .iter()
        .map(|row| row.event.source.as_deref())
        .collect();
    let hashes: Vec<Vec<u8>> = order
        .iter()
        .map(|row| row.event.content_hash.0.to_be_bytes().to_vec())
        .collect();
    let given: Vec<bool> = order
        .iter()
        .map(|row| row.event.timestamp.is_some())
        .collect();
    let payloads: Vec<&str> = order.iter().map(|row| row.event.payload.as_str()).collect();
    let bodies: Vec<&str> = order.iter().map(|row| row.body.as_str()).collect();
    let documents: Vec<String> = order
        .iter()
        .map(|row| super::search::document(&row.event.payload, row.tenant, row.id))
        .collect();
    let statement = transaction
        .prepare_cached(
            // The key first: its primary key decides exactly-once (a second copy, here or
            // in another node's transaction, is skipped: that one waits for this one's
            // commit, then skips); the event only for the keys taken.
            "WITH u AS (
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                      $5::text[], $6::bytea[], $7::bool[], $8::text[],
                                      $9::text[], $10::text[])
                     AS u(tenant_id, id, event_id, event_type, source, content_hash, given,
                          payload, body, search)),
             taken AS (
                 INSERT INTO event_keys (tenant_id, event_id, id, content_hash)
                 SELECT tenant_id, event_id, id, content_hash FROM u
                 ORDER BY tenant_id, event_id
                 ON CONFLICT (tenant_id, event_id) DO NOTHING
                 RETURNING tenant_id, id),
             stored AS (
                 INSERT INTO events
                     (tenant_id, id, event_id, event_type, source, content_hash,
                      timestamp_given, payload, body, search)
                 SELECT u.tenant_id, u.id, u.event_id, u.event_type, u.source,
                        u.content_hash, u.given, u.payload::jsonb, u.body, u.search::tsvector
                 FROM u JOIN taken ON taken.tenant_id = u.tenant_id AND taken.id = u.id
                 RETURNING tenant_id, event_id)
             SELECT tenant_id, event_id FROM stored",
        )
        .await
        .map_err(pg_error)?;
    Ok(transaction
        .query(
            &statement,
            &[
                &tenant_ids,
                &ids,
                &event_ids,
                &types,
                &sources,
                &hashes,
                &given,
                &payloads,
                &bodies,
                &documents,
            ],
        )
        .await
        .map_err(pg_error)?
        .into_iter()
        .map(|row| (row.get::<_, Uuid>(0), row.get::<_, String>(1)))
        .collect())
}

/// Outbox rows for every inserted event and each of its tenant's matching destinations.
async fn enqueue(
    transaction: &deadpool_postgres::Transaction<'_>,
    inserts: &[Insert<'_>],
    destinations: &HashMap<Uuid, Vec<Destination>>,
) -> Result<(), StoreError> {
    let mut queued: (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>, Vec<Option<i64>>) = Default::default();
    for row in inserts.iter().filter(|row| row.inserted) {
        let routable = Routable::new(
            &row.event.event_type,
            row.event.source.as_deref(),
            &row.event.payload,
        );
        for destination in destinations
            .get(&row.tenant)
            .into_iter()
            .flatten()
            .filter(|destination| destination.wants(&routable))
        {
            queued.0.push(destination.id.0);
            queued.1.push(row.id.0);
            queued.2.push(row.tenant);
            queued.3.push(destination.order_key(&routable));
        }
    }
    if queued.0.is_empty() {
        return Ok(());
    }
    transaction
        .execute(
            // Entries of ordered destinations draw their sequence numbers in the order of
            // the request's events: ingest order. Due now, in the database's clock.
            &format!(
                "INSERT INTO outbox (destination_id, event, tenant_id, due, order_key, order_seq)
             SELECT d, e, t, {DB_NOW}, k, CASE WHEN k IS NULL THEN NULL ELSE nextval('outbox_order_seq') END
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[])
                 WITH ORDINALITY AS u(d, e, t, k, n)
             ORDER BY n",
                DB_NOW = super::queue::DB_NOW
            ),
            &[&queued.0, &queued.1, &queued.2, &queued.3],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// The outcome of every request that carried a key and was decided event by event.
async fn record_outcomes(
    transaction: &deadpool_postgres::Transaction<'_>,
    batches: &[&AppendBatch],
    records: &[(usize, IdempotencyRecord)],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let (mut tenants, mut keys, mut created, mut encoded) = (
        Vec::<Uuid>::new(),
        Vec::<&str>::new(),
        Vec::<time::OffsetDateTime>::new(),
        Vec::<Vec<u8>>::new(),
    );
    for (request, record) in records {
        let batch = batches[*request];
        let Some(claim) = &batch.idempotency else {
            continue;
        };
        tenants.push(batch.tenant.0);
        keys.push(claim.key.as_str());
        created.push(record.created_at);
        encoded.push(record::encode_idempotency(record));
    }
    transaction
        .execute(
            "INSERT INTO idempotency (tenant_id, key, created_at, record)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bytea[])
             ON CONFLICT (tenant_id, key)
             DO UPDATE SET created_at = EXCLUDED.created_at, record = EXCLUDED.record",
            &[&tenants, &keys, &created, &encoded],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// The group's answers to what the plan leaves to the store, once the insert has run.
struct Inserted<'a> {
    batches: &'a [&'a AppendBatch],
    keys: &'a [Vec<(Uuid, String)>],
    inserts: &'a [Insert<'a>],
    slots: &'a HashMap<(usize, usize), usize>,
    stored: &'a HashMap<(Uuid, String), Stored>,
}

impl Decide for Inserted<'_> {
    fn first(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError> {
        let row = &self.inserts[self.slots[&(request, index)]];
        if row.inserted {
            Ok(AppendStatus::Accepted(row.id))
        } else {
            self.against_stored(request, index)
        }
    }

    fn against_stored(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError> {
        let (tenant, event_id) = &self.keys[request][index];
        compare_with_stored(
            self.stored,
            *tenant,
            event_id,
            &self.batches[request].events[index],
        )
    }
}

/// Renders the event's JSON as the API returns it.
fn event_body(
    id: EventId,
    event: &NewEvent,
    event_id: &str,
    received_at: &str,
) -> Result<String, StoreError> {
    let mut body = Vec::with_capacity(event.payload.len() + 320);
    write_event_json(&mut body, id, event, event_id, received_at)?;
    String::from_utf8(body).map_err(|err| StoreError::Corrupt(format!("event JSON: {err}")))
}

/// A stored event that an incoming one collided with.
struct Stored {
    id: EventId,
    content_hash: ContentHash,
    timestamp_given: bool,
    body: String,
    /// An erased event's tombstone: no body to compare with.
    erased: bool,
}

async fn stored_events(
    transaction: &deadpool_postgres::Transaction<'_>,
    keys: &[(Uuid, &str)],
) -> Result<HashMap<(Uuid, String), Stored>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, event_ids): (Vec<Uuid>, Vec<&str>) = keys.iter().copied().unzip();
    let statement = transaction
        .prepare_cached(
            // The key decides; the event's row tells a retry from a conflict by content
            // (an erased row, or none: the key's hash alone).
            "SELECT k.tenant_id, k.event_id, k.id, k.content_hash,
                    coalesce(e.timestamp_given, false), coalesce(e.body, ''),
                    coalesce(e.erased, true)
             FROM event_keys k
             JOIN unnest($1::uuid[], $2::text[]) AS w(tenant_id, event_id)
               ON k.tenant_id = w.tenant_id AND k.event_id = w.event_id
             LEFT JOIN events e ON e.tenant_id = k.tenant_id AND e.id = k.id",
        )
        .await
        .map_err(pg_error)?;
    let rows = transaction
        .query(&statement, &[&tenants, &event_ids])
        .await
        .map_err(pg_error)?;
    rows.into_iter()
        .map(|row| {
            let hash: &[u8] = row.get(3);
            let content_hash =
                ContentHash(u128::from_be_bytes(hash.try_into().map_err(|_| {
                    StoreError::Corrupt("content hash of the wrong size".into())
                })?));
            Ok((
                (row.get::<_, Uuid>(0), row.get::<_, String>(1)),
                Stored {
                    id: EventId(row.get(2)),
                    content_hash,
                    timestamp_given: row.get(4),
                    body: row.get(5),
                    erased: row.get(6),
                },
            ))
        })
        .collect()
}

/// A duplicate when the stored event has the same content, a conflict otherwise.
fn compare_with_stored(
    stored: &HashMap<(Uuid, String), Stored>,
    tenant: Uuid,
    event_id: &str,
    event: &NewEvent,
) -> Result<AppendStatus, StoreError> {
    let Some(stored) = stored.get(&(tenant, event_id.to_owned())) else {
        // The insert skipped the row, so it exists; not finding it means it was deleted in
        // between, which PulseStream never does.
        return Err(StoreError::Corrupt(format!(
            "event_id {event_id:?} conflicted but is not stored"
        )));
    };
    if stored.erased {
        return Ok(record::tombstone_status(
            stored.id,
            stored.content_hash,
            event,
        ));
    }
    Ok(record::stored_status(
        stored.id,
        stored.content_hash,
        stored.body.as_bytes(),
        stored.timestamp_given,
        event,
    ))
}
