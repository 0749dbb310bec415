//! One request's events in one transaction: dedup by the unique constraint, outbox rows and
//! the idempotency record committed together.
//!
//! The events are inserted with one multi-row `INSERT ... SELECT FROM unnest(...)` ordered
//! by `event_id` (two requests with overlapping events lock them in the same order, so they
//! wait for each other instead of deadlocking), `ON CONFLICT DO NOTHING`. Rows the insert
//! skipped were stored before, or by a concurrent request that committed while this one
//! waited on the constraint: one more query reads them and tells duplicates from conflicts
//! exactly as the embedded writer does.

use std::collections::{HashMap, HashSet};

use pulsestream_core::{Destination, EventId, NewEvent, format_timestamp};
use uuid::Uuid;

use super::{PostgresStore, decode_json, pg_error};
use crate::record::{self, StoredContent, same_content, write_event_json};
use crate::{AppendBatch, AppendOutcome, AppendStatus, IdempotencyRecord, StoreError};

/// An event of the request that is to be inserted.
struct Insert<'a> {
    index: usize,
    id: EventId,
    event_id: String,
    event: &'a NewEvent,
    body: String,
}

pub(super) async fn append(
    store: &PostgresStore,
    batch: &AppendBatch,
) -> Result<AppendOutcome, StoreError> {
    let tenant = batch.tenant.0;
    let mut client = store.client().await?;
    let transaction = client.transaction().await.map_err(pg_error)?;

    if let Some(claim) = &batch.idempotency {
        // Requests sharing a key (on any node) take turns; the loser replays the record.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&format!("idempotency/{tenant}/{}", claim.key)],
            )
            .await
            .map_err(pg_error)?;
        let row = transaction
            .query_opt(
                "SELECT record FROM idempotency WHERE tenant_id = $1 AND key = $2",
                &[&tenant, &claim.key],
            )
            .await
            .map_err(pg_error)?;
        if let Some(row) = row {
            let recorded = record::decode_idempotency(row.get::<_, &[u8]>(0))?;
            if recorded.request_hash == claim.request_hash
                && recorded.created_at + time::Duration::hours(24) > batch.received_at
            {
                return Ok(AppendOutcome {
                    statuses: recorded.statuses,
                });
            }
        }
    }

    let destinations_statement = transaction
        .prepare_cached("SELECT record FROM destinations WHERE tenant_id = $1 ORDER BY created_at")
        .await
        .map_err(pg_error)?;
    let destinations: Vec<Destination> = transaction
        .query(&destinations_statement, &[&tenant])
        .await
        .map_err(pg_error)?
        .into_iter()
        .map(|row| decode_json::<Destination>(row.get(0), "destination"))
        .filter(|destination| destination.as_ref().map_or(true, |d| !d.disabled))
        .collect::<Result<_, _>>()?;

    // Decide ids and bodies; later copies of an event_id in the request wait for the first.
    let received_at = format_timestamp(batch.received_at);
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut later: Vec<usize> = Vec::new();
    let mut inserts: Vec<Insert<'_>> = Vec::with_capacity(batch.events.len());
    for (index, event) in batch.events.iter().enumerate() {
        if let Some(event_id) = event.event_id.as_deref() {
            if first_of.contains_key(event_id) {
                later.push(index);
                continue;
            }
            first_of.insert(event_id, index);
        }
        let id = store.next_id(event, batch.received_at);
        let event_id = event.event_id.clone().unwrap_or_else(|| id.to_string());
        let body = event_body(id, event, &event_id, &received_at)?;
        inserts.push(Insert {
            index,
            id,
            event_id,
            event,
            body,
        });
    }
    inserts.sort_by(|a, b| a.event_id.cmp(&b.event_id));

    let inserted: HashSet<String> = if inserts.is_empty() {
        HashSet::new()
    } else {
        let ids: Vec<Uuid> = inserts.iter().map(|row| row.id.0).collect();
        let event_ids: Vec<&str> = inserts.iter().map(|row| row.event_id.as_str()).collect();
        let types: Vec<&str> = inserts
            .iter()
            .map(|row| row.event.event_type.as_str())
            .collect();
        let sources: Vec<Option<&str>> = inserts
            .iter()
            .map(|row| row.event.source.as_deref())
            .collect();
        let hashes: Vec<Vec<u8>> = inserts
            .iter()
            .map(|row| row.event.content_hash.0.to_be_bytes().to_vec())
            .collect();
        let given: Vec<bool> = inserts
            .iter()
            .map(|row| row.event.timestamp.is_some())
            .collect();
        let payloads: Vec<&str> = inserts
            .iter()
            .map(|row| row.event.payload.as_str())
            .collect();
        let bodies: Vec<&str> = inserts.iter().map(|row| row.body.as_str()).collect();
        let statement = transaction
            .prepare_cached(
                "INSERT INTO events
                     (tenant_id, id, event_id, event_type, source, content_hash,
                      timestamp_given, payload, body)
                 SELECT $1, u.id, u.event_id, u.event_type, u.source, u.content_hash,
                        u.given, u.payload::jsonb, u.body
                 FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::bytea[],
                             $7::bool[], $8::text[], $9::text[])
                      AS u(id, event_id, event_type, source, content_hash, given, payload, body)
                 ORDER BY u.event_id
                 ON CONFLICT (tenant_id, event_id) DO NOTHING
                 RETURNING event_id",
            )
            .await
            .map_err(pg_error)?;
        transaction
            .query(
                &statement,
                &[
                    &tenant, &ids, &event_ids, &types, &sources, &hashes, &given, &payloads,
                    &bodies,
                ],
            )
            .await
            .map_err(pg_error)?
            .into_iter()
            .map(|row| row.get::<_, String>(0))
            .collect()
    };

    let mut statuses: Vec<Option<AppendStatus>> = vec![None; batch.events.len()];
    let mut skipped: Vec<&str> = Vec::new();
    for row in &inserts {
        if inserted.contains(&row.event_id) {
            statuses[row.index] = Some(AppendStatus::Accepted(row.id));
        } else {
            skipped.push(&row.event_id);
        }
    }
    let stored = stored_events(&transaction, tenant, &skipped).await?;
    for row in inserts
        .iter()
        .filter(|row| !inserted.contains(&row.event_id))
    {
        statuses[row.index] = Some(compare_with_stored(&stored, &row.event_id, row.event)?);
    }
    for index in later {
        let event = &batch.events[index];
        let event_id = event.event_id.as_deref().unwrap_or_default();
        let first = first_of[event_id];
        statuses[index] = Some(match statuses[first] {
            Some(AppendStatus::Accepted(id)) => {
                if same_content(&batch.events[first], event) {
                    AppendStatus::Duplicate(id)
                } else {
                    AppendStatus::Conflict(id)
                }
            }
            _ => compare_with_stored(&stored, event_id, event)?,
        });
    }
    let statuses: Vec<AppendStatus> = statuses
        .into_iter()
        .map(|status| status.expect("every event got a status above"))
        .collect();

    // Save and enqueue atomically: the outbox rows ride in the same transaction.
    let mut queued_destinations: Vec<Uuid> = Vec::new();
    let mut queued_events: Vec<Uuid> = Vec::new();
    for row in inserts
        .iter()
        .filter(|row| inserted.contains(&row.event_id))
    {
        for destination in destinations
            .iter()
            .filter(|destination| destination.wants(&row.event.event_type))
        {
            queued_destinations.push(destination.id.0);
            queued_events.push(row.id.0);
        }
    }
    if !queued_events.is_empty() {
        let due = record::micros_of(time::OffsetDateTime::now_utc());
        transaction
            .execute(
                "INSERT INTO outbox (destination_id, event, tenant_id, due)
                 SELECT d, e, $3, $4 FROM unnest($1::uuid[], $2::uuid[]) AS u(d, e)",
                &[&queued_destinations, &queued_events, &tenant, &due],
            )
            .await
            .map_err(pg_error)?;
    }

    if let Some(claim) = &batch.idempotency {
        let recorded = record::encode_idempotency(&IdempotencyRecord {
            request_hash: claim.request_hash,
            created_at: batch.received_at,
            statuses: statuses.clone(),
        });
        transaction
            .execute(
                "INSERT INTO idempotency (tenant_id, key, created_at, record)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, key)
                 DO UPDATE SET created_at = EXCLUDED.created_at, record = EXCLUDED.record",
                &[&tenant, &claim.key, &batch.received_at, &recorded],
            )
            .await
            .map_err(pg_error)?;
    }

    // Commit before answering: a 2xx promises that this request survives a crash.
    transaction.commit().await.map_err(pg_error)?;
    Ok(AppendOutcome { statuses })
}

/// Renders the event's JSON as the API returns it.
fn event_body(
    id: EventId,
    event: &NewEvent,
    event_id: &str,
    received_at: &str,
) -> Result<String, StoreError> {
    let timestamp =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(id.timestamp_micros()) * 1_000)
            .map_err(|err| StoreError::Corrupt(format!("event id timestamp: {err}")))?;
    let mut body = Vec::with_capacity(event.payload.len() + 320);
    write_event_json(
        &mut body,
        id,
        event,
        event_id,
        &format_timestamp(timestamp),
        received_at,
    )?;
    String::from_utf8(body).map_err(|err| StoreError::Corrupt(format!("event JSON: {err}")))
}

/// A stored event that an incoming one collided with.
struct Stored {
    id: EventId,
    content_hash: u128,
    timestamp_given: bool,
    body: String,
}

async fn stored_events(
    transaction: &deadpool_postgres::Transaction<'_>,
    tenant: Uuid,
    event_ids: &[&str],
) -> Result<HashMap<String, Stored>, StoreError> {
    if event_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let statement = transaction
        .prepare_cached(
            "SELECT event_id, id, content_hash, timestamp_given, body FROM events
             WHERE tenant_id = $1 AND event_id = ANY($2)",
        )
        .await
        .map_err(pg_error)?;
    let rows = transaction
        .query(&statement, &[&tenant, &event_ids])
        .await
        .map_err(pg_error)?;
    rows.into_iter()
        .map(|row| {
            let hash: &[u8] = row.get(2);
            let content_hash = u128::from_be_bytes(
                hash.try_into()
                    .map_err(|_| StoreError::Corrupt("content hash of the wrong size".into()))?,
            );
            Ok((
                row.get::<_, String>(0),
                Stored {
                    id: EventId(row.get(1)),
                    content_hash,
                    timestamp_given: row.get(3),
                    body: row.get(4),
                },
            ))
        })
        .collect()
}

/// A duplicate when the stored event has the same content, a conflict otherwise.
fn compare_with_stored(
    stored: &HashMap<String, Stored>,
    event_id: &str,
    event: &NewEvent,
) -> Result<AppendStatus, StoreError> {
    let Some(stored) = stored.get(event_id) else {
        // The insert skipped the row, so it exists; not finding it means it was deleted in
        // between, which PulseStream never does.
        return Err(StoreError::Corrupt(format!(
            "event_id {event_id:?} conflicted but is not stored"
        )));
    };
    if stored.content_hash == event.content_hash.0 {
        return Ok(AppendStatus::Duplicate(stored.id));
    }
    match StoredContent::parse(stored.body.as_bytes(), stored.timestamp_given) {
        Ok(content) if content.same_as(event) => Ok(AppendStatus::Duplicate(stored.id)),
        Ok(_) => Ok(AppendStatus::Conflict(stored.id)),
        Err(err) => {
            tracing::error!(error = %err, event = %stored.id, "stored event cannot be compared");
            Ok(AppendStatus::Conflict(stored.id))
        }
    }
}
