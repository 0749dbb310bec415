//! Group commit on PostgreSQL: the requests waiting when a committer is free are stored in
//! one transaction, and none of them is answered before it commits.
//!
//! A few committer tasks (`PostgresConfig::committers`) take jobs from one bounded queue (full:
//! 503, as with the embedded writer). Each takes every queued job, up to
//! [`MAX_GROUP_EVENTS`] events, and runs [`commit_group`]: advisory locks on the group's
//! `Idempotency-Key`s (sorted, so two groups cannot deadlock on them) and their recorded
//! outcomes; the tenants' destinations; one multi-row `INSERT … SELECT FROM unnest(…) ORDER BY
//! (tenant_id, event_id) ON CONFLICT DO NOTHING` for every new event of the group; one read of
//! the rows it skipped (stored before, or by another node's transaction that committed while
//! this one waited on the constraint), compared exactly as the embedded writer compares;
//! outbox rows and idempotency records; `COMMIT`. A handful of round trips per group, however
//! many requests it carries, and one WAL flush.
//!
//! If a group fails for a reason other than the database being unreachable, its jobs are
//! retried one per transaction, so one request that the database refuses cannot fail others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use pulsestream_core::{ContentHash, Destination, EventId, NewEvent, format_timestamp};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Db, decode_json, is_outage, is_retryable, pg_error};
use crate::record::{self, same_content, write_event_json};
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
            Err(err) if batches.len() > 1 && !is_outage(&err) => {
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
            Err(err) if is_retryable(&err) && attempt < 3 => {
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
    event_id: String,
    event: &'a NewEvent,
    body: String,
}

/// How one event of the group is decided.
enum Plan {
    /// Inserted as `inserts[n]`, unless the row already exists.
    Insert(usize),
    /// The same (tenant, event_id) as an earlier event of the group, at (job, event).
    Later((usize, usize)),
}

/// How one request of the group is decided.
enum JobPlan {
    /// Its `Idempotency-Key` has a recorded outcome for the same body: replay it.
    Replay(Vec<AppendStatus>),
    /// Its `Idempotency-Key` is recorded, or claimed earlier in the group, for another body
    /// (a twin on another node finished first): refused with 422, nothing stored.
    KeyReused,
    /// An earlier request of the group has the same key and body: answer as it is answered.
    SameAs(usize),
    /// One plan per event.
    Events(Vec<Plan>),
}

/// Commits a group; per request, its outcome or why it was refused.
async fn commit_group(
    store: &Db,
    batches: &[&AppendBatch],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut client = store.client().await?;
    let transaction = client.transaction().await.map_err(pg_error)?;

    // Idempotency: lock the group's keys (sorted by lock id, so groups never deadlock on
    // them), then read what is recorded under them.
    let claims: Vec<(Uuid, &str)> = batches
        .iter()
        .filter_map(|batch| {
            batch
                .idempotency
                .as_ref()
                .map(|claim| (batch.tenant.0, claim.key.as_str()))
        })
        .collect();
    let mut recorded: HashMap<(Uuid, String), IdempotencyRecord> = HashMap::new();
    if !claims.is_empty() {
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
    }

    // The enabled destinations of every tenant of the group, for the outbox.
    let mut tenants: Vec<Uuid> = batches.iter().map(|batch| batch.tenant.0).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let destinations_statement = transaction
        .prepare_cached(
            "SELECT record FROM destinations WHERE tenant_id = ANY($1) ORDER BY created_at, id",
        )
        .await
        .map_err(pg_error)?;
    let mut destinations: HashMap<Uuid, Vec<Destination>> = HashMap::new();
    for row in transaction
        .query(&destinations_statement, &[&tenants])
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

    // Plan every event: ids, bodies, and which copy of an event_id goes in.
    let mut plans: Vec<JobPlan> = Vec::with_capacity(batches.len());
    let mut inserts: Vec<Insert<'_>> = Vec::new();
    let mut first_of: HashMap<(Uuid, &str), (usize, usize)> = HashMap::new();
    let mut claimed_in_group: HashMap<(Uuid, &str), usize> = HashMap::new();
    for (job, batch) in batches.iter().enumerate() {
        let tenant = batch.tenant.0;
        if let Some(claim) = &batch.idempotency {
            // Recorded within 24 hours: replay it for this body, refuse another body.
            let earlier = recorded
                .get(&(tenant, claim.key.clone()))
                .filter(|record| record.created_at + time::Duration::hours(24) > batch.received_at);
            if let Some(record) = earlier {
                plans.push(if record.request_hash == claim.request_hash {
                    JobPlan::Replay(record.statuses.clone())
                } else {
                    JobPlan::KeyReused
                });
                continue;
            }
            if let Some(&twin) = claimed_in_group.get(&(tenant, claim.key.as_str())) {
                let same_body = batches[twin]
                    .idempotency
                    .as_ref()
                    .is_some_and(|first| first.request_hash == claim.request_hash);
                plans.push(if same_body {
                    JobPlan::SameAs(twin)
                } else {
                    JobPlan::KeyReused
                });
                continue;
            }
            claimed_in_group.insert((tenant, claim.key.as_str()), job);
        }
        let received_at = format_timestamp(batch.received_at);
        let mut plan = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.iter().enumerate() {
            if let Some(event_id) = event.event_id.as_deref() {
                if let Some(&first) = first_of.get(&(tenant, event_id)) {
                    plan.push(Plan::Later(first));
                    continue;
                }
                first_of.insert((tenant, event_id), (job, index));
            }
            let id = store.next_id(event, batch.received_at);
            let event_id = event.event_id.clone().unwrap_or_else(|| id.to_string());
            let body = event_body(id, event, &event_id, &received_at)?;
            plan.push(Plan::Insert(inserts.len()));
            inserts.push(Insert {
                tenant,
                id,
                event_id,
                event,
                body,
            });
        }
        plans.push(JobPlan::Events(plan));
    }

    // One insert for the whole group, in (tenant, event_id) order.
    let mut order: Vec<usize> = (0..inserts.len()).collect();
    order.sort_by(|&a, &b| {
        (inserts[a].tenant, &inserts[a].event_id).cmp(&(inserts[b].tenant, &inserts[b].event_id))
    });
    let inserted: HashSet<(Uuid, String)> = if inserts.is_empty() {
        HashSet::new()
    } else {
        let column = |f: &dyn Fn(&Insert<'_>) -> String| -> Vec<String> {
            order.iter().map(|&n| f(&inserts[n])).collect()
        };
        let tenant_ids: Vec<Uuid> = order.iter().map(|&n| inserts[n].tenant).collect();
        let ids: Vec<Uuid> = order.iter().map(|&n| inserts[n].id.0).collect();
        let event_ids = column(&|row| row.event_id.clone());
        let types = column(&|row| row.event.event_type.clone());
        let sources: Vec<Option<&str>> = order
            .iter()
            .map(|&n| inserts[n].event.source.as_deref())
            .collect();
        let hashes: Vec<Vec<u8>> = order
            .iter()
            .map(|&n| inserts[n].event.content_hash.0.to_be_bytes().to_vec())
            .collect();
        let given: Vec<bool> = order
            .iter()
            .map(|&n| inserts[n].event.timestamp.is_some())
            .collect();
        let payloads: Vec<&str> = order
            .iter()
            .map(|&n| inserts[n].event.payload.as_str())
            .collect();
        let bodies: Vec<&str> = order.iter().map(|&n| inserts[n].body.as_str()).collect();
        let statement = transaction
            .prepare_cached(
                "INSERT INTO events
                     (tenant_id, id, event_id, event_type, source, content_hash,
                      timestamp_given, payload, body)
                 SELECT u.tenant_id, u.id, u.event_id, u.event_type, u.source, u.content_hash,
                        u.given, u.payload::jsonb, u.body
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                             $6::bytea[], $7::bool[], $8::text[], $9::text[])
                      AS u(tenant_id, id, event_id, event_type, source, content_hash, given,
                           payload, body)
                 ORDER BY u.tenant_id, u.event_id
                 ON CONFLICT (tenant_id, event_id) DO NOTHING
                 RETURNING tenant_id, event_id",
            )
            .await
            .map_err(pg_error)?;
        transaction
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
                ],
            )
            .await
            .map_err(pg_error)?
            .into_iter()
            .map(|row| (row.get::<_, Uuid>(0), row.get::<_, String>(1)))
            .collect()
    };
    let was_inserted = |row: &Insert<'_>| inserted.contains(&(row.tenant, row.event_id.clone()));

    // The rows the insert skipped: stored before (or by a concurrent transaction).
    let skipped: Vec<(Uuid, &str)> = inserts
        .iter()
        .filter(|row| !was_inserted(row))
        .map(|row| (row.tenant, row.event_id.as_str()))
        .collect();
    let stored = stored_events(&transaction, &skipped).await?;

    // Statuses, in input order, job by job.
    let mut statuses: Vec<Vec<AppendStatus>> = Vec::with_capacity(batches.len());
    for (job, batch) in batches.iter().enumerate() {
        let plan = match &plans[job] {
            JobPlan::Replay(recorded) => {
                statuses.push(recorded.clone());
                continue;
            }
            JobPlan::SameAs(twin) => {
                statuses.push(statuses[*twin].clone());
                continue;
            }
            JobPlan::KeyReused => {
                statuses.push(Vec::new());
                continue;
            }
            JobPlan::Events(plan) => plan,
        };
        let mut job_statuses = Vec::with_capacity(batch.events.len());
        for (index, plan) in plan.iter().enumerate() {
            let event = &batch.events[index];
            let status = match plan {
                Plan::Insert(n) => {
                    let row = &inserts[*n];
                    if was_inserted(row) {
                        AppendStatus::Accepted(row.id)
                    } else {
                        compare_with_stored(&stored, row.tenant, &row.event_id, event)?
                    }
                }
                Plan::Later((first_job, first_index)) => {
                    let first = &batches[*first_job].events[*first_index];
                    let first_status = if *first_job == job {
                        job_statuses[*first_index]
                    } else {
                        statuses[*first_job][*first_index]
                    };
                    match first_status {
                        AppendStatus::Accepted(id) => {
                            if same_content(first, event) {
                                AppendStatus::Duplicate(id)
                            } else {
                                AppendStatus::Conflict(id)
                            }
                        }
                        _ => compare_with_stored(
                            &stored,
                            batch.tenant.0,
                            event.event_id.as_deref().unwrap_or_default(),
                            event,
                        )?,
                    }
                }
            };
            job_statuses.push(status);
        }
        statuses.push(job_statuses);
    }

    // Save and enqueue atomically: the outbox rows ride in the same transaction.
    let mut queued: (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) = Default::default();
    for row in inserts.iter().filter(|row| was_inserted(row)) {
        for destination in destinations
            .get(&row.tenant)
            .into_iter()
            .flatten()
            .filter(|destination| destination.wants(&row.event.event_type))
        {
            queued.0.push(destination.id.0);
            queued.1.push(row.id.0);
            queued.2.push(row.tenant);
        }
    }
    if !queued.0.is_empty() {
        let due = record::micros_of(time::OffsetDateTime::now_utc());
        transaction
            .execute(
                "INSERT INTO outbox (destination_id, event, tenant_id, due)
                 SELECT d, e, t, $4 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(d, e, t)",
                &[&queued.0, &queued.1, &queued.2, &due],
            )
            .await
            .map_err(pg_error)?;
    }

    // The outcome of every request that carried a key, committed with its events.
    let (mut key_tenants, mut keys, mut created, mut encoded) = (
        Vec::<Uuid>::new(),
        Vec::<&str>::new(),
        Vec::<time::OffsetDateTime>::new(),
        Vec::<Vec<u8>>::new(),
    );
    for (job, batch) in batches.iter().enumerate() {
        let Some(claim) = &batch.idempotency else {
            continue;
        };
        if !matches!(plans[job], JobPlan::Events(_)) {
            continue;
        }
        key_tenants.push(batch.tenant.0);
        keys.push(claim.key.as_str());
        created.push(batch.received_at);
        encoded.push(record::encode_idempotency(&IdempotencyRecord {
            request_hash: claim.request_hash,
            created_at: batch.received_at,
            statuses: statuses[job].clone(),
        }));
    }
    if !key_tenants.is_empty() {
        transaction
            .execute(
                "INSERT INTO idempotency (tenant_id, key, created_at, record)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bytea[])
                 ON CONFLICT (tenant_id, key)
                 DO UPDATE SET created_at = EXCLUDED.created_at, record = EXCLUDED.record",
                &[&key_tenants, &keys, &created, &encoded],
            )
            .await
            .map_err(pg_error)?;
    }

    // Commit before answering: a 2xx promises that these requests survive a crash.
    transaction.commit().await.map_err(pg_error)?;
    Ok(statuses
        .into_iter()
        .zip(&plans)
        .map(|(statuses, plan)| match plan {
            JobPlan::KeyReused => Err(StoreError::IdempotencyKeyReused),
            _ => Ok(AppendOutcome { statuses }),
        })
        .collect())
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
            "SELECT e.tenant_id, e.event_id, e.id, e.content_hash, e.timestamp_given, e.body
             FROM events e
             JOIN unnest($1::uuid[], $2::text[]) AS k(tenant_id, event_id)
               ON e.tenant_id = k.tenant_id AND e.event_id = k.event_id",
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
    Ok(record::stored_status(
        stored.id,
        stored.content_hash,
        stored.body.as_bytes(),
        stored.timestamp_given,
        event,
    ))
}
