//! Destinations and their queues on PostgreSQL, shared by the workers of every node.
//!
//! A claim takes due rows with `FOR UPDATE SKIP LOCKED` (two nodes claiming at once get
//! different rows) and stamps them with a lease; rows under a lease are not due for anyone
//! else. The worker records an outcome well before the lease ends (delete, reschedule,
//! dead-letter, each clearing the lease); if its node dies, the lease runs out and another
//! node delivers the rows: at least once, never lost. Outcomes name rows by (event, due),
//! so an outcome for an old claim cannot touch a row that was re-queued since.

use async_trait::async_trait;
use pulsestream_core::{Destination, DestinationId, EventId, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PostgresStore, decode_json, pg_error};
use crate::{
    Circuit, DeadLetter, Delivery, DeliveryQueue, DeliveryStats, DestinationStore, QueueOrder,
    QueuePosition, StoreError,
};

/// Counting a queue stops here: past it, "at least this many" is all an operator needs.
const COUNT_CAP: i64 = 1_000_000;

/// The (event, due) pairs that identify claimed rows.
fn claimed_rows(deliveries: &[Delivery]) -> (Vec<Uuid>, Vec<i64>) {
    deliveries
        .iter()
        .map(|delivery| (delivery.event.0, delivery.due_micros))
        .unzip()
}

/// Claimed rows (event, tenant, attempts, due, order key, order sequence) with their events' JSON, in
/// queue order.
async fn with_bodies(
    client: &impl tokio_postgres::GenericClient,
    rows: Vec<tokio_postgres::Row>,
) -> Result<Vec<Delivery>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let tenant: Uuid = rows[0].get(1);
    let events: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    let bodies = client
        .query(
            "SELECT id, body FROM events WHERE tenant_id = $1 AND id = ANY($2) AND NOT erased",
            &[&tenant, &events],
        )
        .await
        .map_err(pg_error)?;
    let mut bodies: std::collections::HashMap<Uuid, String> = bodies
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // An event erased or expired after the claim took its row is skipped: the statement that
    // removed it deleted its queue rows too (it committed after the claim read them).
    let mut claimed = rows
        .iter()
        .filter_map(|row| {
            let event: Uuid = row.get(0);
            let Some(json) = bodies.remove(&event) else {
                tracing::debug!(%event, "a claimed event was erased or expired meanwhile");
                return None;
            };
            Some(Delivery {
                tenant: TenantId(row.get(1)),
                event: EventId(event),
                attempts: row.get::<_, i32>(2).max(0) as u32,
                due_micros: row.get(3),
                json: json.into_bytes(),
                order: row.get::<_, Option<i64>>(4).map(|key| QueueOrder {
                    key,
                    seq: row.get::<_, Option<i64>>(5).unwrap_or(0),
                }),
            })
        })
        .collect::<Vec<_>>();
    claimed.sort_by_key(Delivery::position);
    Ok(claimed)
}

#[async_trait]
impl DestinationStore for PostgresStore {
    async fn put_destination(&self, destination: &Destination) -> Result<(), StoreError> {
        let record = serde_json::to_value(destination).map_err(StoreError::unavailable)?;
        self.db
            .execute(
                "INSERT INTO destinations (id, tenant_id, created_at, record)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &[
                    &destination.id.0,
                    &destination.tenant.0,
                    &destination.created_at,
                    &record,
                ],
            )
            .await?;
        Ok(())
    }

    async fn destinations(&self, tenant: TenantId) -> Result<Vec<Destination>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT record FROM destinations WHERE tenant_id = $1 ORDER BY created_at, id",
                &[&tenant.0],
            )
            .await?;
        rows.into_iter()
            .map(|row| decode_json(row.get(0), "destination"))
            .collect()
    }

    async fn all_destinations(&self) -> Result<Vec<Destination>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT record FROM destinations ORDER BY created_at, id",
                &[],
            )
            .await?;
        rows.into_iter()
            .map(|row| decode_json(row.get(0), "destination"))
            .collect()
    }

    async fn delete_destination(
        &self,
        tenant: TenantId,
        id: DestinationId,
    ) -> Result<bool, StoreError> {
        // The queue and dead letters go with it (ON DELETE CASCADE).
        let deleted = self
            .db
            .execute(
                "DELETE FROM destinations WHERE id = $1 AND tenant_id = $2",
                &[&id.0, &tenant.0],
            )
            .await?;
        Ok(deleted > 0)
    }
}

/// How far past this node's clock a claim's `now` is, in microseconds: 0 for a worker
/// (it passes the current time), more for a caller asking what will be due later. Laid on
/// the database's clock, so what is due is decided in one clock whatever the node's says.
fn ahead_of_now(now: OffsetDateTime) -> i64 {
    (now - OffsetDateTime::now_utc())
        .whole_microseconds()
        .clamp(0, i128::from(i64::MAX / 2)) as i64
}

/// The database's clock in microseconds: every due time and lease of the outbox is stamped
/// and compared in it, so that nodes whose clocks disagree, or jump, agree on what is due.
pub(super) const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

#[async_trait]
impl DeliveryQueue for PostgresStore {
    async fn claim_due(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        // Leases keep claimed rows out of every scan, so there is no cursor to follow.
        _after: Option<QueuePosition>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let ahead = ahead_of_now(now);
        let lease = self.db.inner.config.lease.as_micros() as i64;
        let limit = limit as i64;
        self.db
            .guarded(async {
                let client = self.db.client().await?;
                let statement = client
                    .prepare_cached(
                        // Due times and leases are stamped and compared in the database's
                        // clock, so nodes whose clocks disagree (or jump) still agree on
                        // what is due and whose lease has run out.
                        "WITH clock AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now),
                     due AS (
                         SELECT event FROM outbox, clock
                         WHERE destination_id = $1 AND due <= clock.now + $4
                           AND leased_until < clock.now
                         ORDER BY due, event
                         LIMIT $2
                         FOR UPDATE OF outbox SKIP LOCKED)
                     UPDATE outbox o SET leased_until = clock.now + $3
                     FROM due, clock
                     WHERE o.destination_id = $1 AND o.event = due.event
                     RETURNING o.event, o.tenant_id, o.attempts, o.due, o.order_key, o.order_seq",
                    )
                    .await
                    .map_err(pg_error)?;
                let rows = client
                    .query(&statement, &[&destination.0, &limit, &lease, &ahead])
                    .await
                    .map_err(pg_error)?;
                with_bodies(&**client, rows).await
            })
            .await
    }

    async fn claim_ordered(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let ahead = ahead_of_now(now);
        let lease = self.db.inner.config.lease.as_micros() as i64;
        let limit = limit as i64;
        self.db
            .guarded(async {
                let mut client = self.db.client().await?;
                let transaction = client.transaction().await.map_err(pg_error)?;
                // One claim of this destination at a time, across every node: a second
                // claimer waits, then sees the first one's leases, which hold back the later
                // entries of the keys it took.
                transaction
                    .execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))",
                        &[&destination.0.to_string()],
                    )
                    .await
                    .map_err(pg_error)?;
                let rows = transaction
                    .query(
                        "WITH clock AS (
                             SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now),
                         ranked AS (
                             SELECT o.event, o.order_seq,
                                 bool_and(o.due <= clock.now + $4 AND o.leased_until < clock.now) OVER (
                                     PARTITION BY o.order_key ORDER BY o.order_seq
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS free
                             FROM outbox o, clock
                             WHERE o.destination_id = $1),
                         chosen AS (
                             SELECT event, order_seq FROM ranked WHERE free
                             ORDER BY order_seq LIMIT $2)
                         UPDATE outbox o SET leased_until = clock.now + $3
                         FROM chosen, clock
                         WHERE o.destination_id = $1 AND o.event = chosen.event
                         RETURNING o.event, o.tenant_id, o.attempts, o.due, o.order_key, o.order_seq",
                        &[&destination.0, &limit, &lease, &ahead],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut claimed = with_bodies(&*transaction, rows).await?;
                transaction.commit().await.map_err(pg_error)?;
                claimed.sort_by_key(|delivery| delivery.order.map(|order| order.seq));
                Ok(claimed)
            })
            .await
    }

    async fn next_due(
        &self,
        destination: DestinationId,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        // A leased row is due again only when its lease ends. Both are in the database's
        // clock: what comes back is how long from the database's now, put on this node's
        // clock, so a node whose clock is off neither spins nor oversleeps.
        let row = self
            .db
            .query_opt(
                &format!(
                    "SELECT min(GREATEST(due, leased_until)) - {DB_NOW}
                       FROM outbox WHERE destination_id = $1"
                ),
                &[&destination.0],
            )
            .await?;
        Ok(row
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .map(|micros| OffsetDateTime::now_utc() + time::Duration::microseconds(micros.max(0))))
    }

    fn wakeups(&self) -> std::sync::Arc<crate::Wakeups> {
        self.wakeups.clone()
    }

    async fn release(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let (events, dues) = claimed_rows(deliveries);
        self.db
            .execute(
                "UPDATE outbox o SET leased_until = 0
                     FROM unnest($2::uuid[], $3::bigint[]) AS u(event, due)
                     WHERE o.destination_id = $1 AND o.event = u.event AND o.due = u.due",
                &[&destination.0, &events, &dues],
            )
            .await?;
        Ok(())
    }

    async fn record_delivered(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        let (events, dues) = claimed_rows(deliveries);
        self.db
            .guarded(async {
                let mut client = self.db.client().await?;
                let transaction = client.transaction().await.map_err(pg_error)?;
                let removed = transaction
                .execute(
                    "DELETE FROM outbox o USING unnest($2::uuid[], $3::bigint[]) AS u(event, due)
                     WHERE o.destination_id = $1 AND o.event = u.event AND o.due = u.due",
                    &[&destination.0, &events, &dues],
                )
                .await
                .map_err(pg_error)?;
                transaction
                    .execute(
                        "UPDATE destinations SET delivered = delivered + $2 WHERE id = $1",
                        &[&destination.0, &(removed as i64)],
                    )
                    .await
                    .map_err(pg_error)?;
                transaction.commit().await.map_err(pg_error)
            })
            .await
    }

    async fn reschedule(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        due: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let (events, dues) = claimed_rows(deliveries);
        // The backoff, laid on the database's clock.
        let delay = (due - OffsetDateTime::now_utc())
            .whole_microseconds()
            .max(0) as i64;
        self.db
            .execute(
                &format!(
                    "UPDATE outbox o
                     SET due = {DB_NOW} + $4, attempts = o.attempts + 1, last_error = $5, leased_until = 0
                     FROM unnest($2::uuid[], $3::bigint[]) AS u(event, due)
                     WHERE o.destination_id = $1 AND o.event = u.event AND o.due = u.due"
                ),
                &[&destination.0, &events, &dues, &delay, &error],
            )
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        error: &str,
    ) -> Result<(), StoreError> {
        let (events, dues) = claimed_rows(deliveries);
        self.db
            .execute(
                "WITH gone AS (
                     DELETE FROM outbox o
                     USING unnest($2::uuid[], $3::bigint[]) AS u(event, due)
                     WHERE o.destination_id = $1 AND o.event = u.event AND o.due = u.due
                     RETURNING o.event, o.tenant_id, o.attempts, o.order_key, o.order_seq)
                 INSERT INTO dead_letters (destination_id, event, tenant_id, attempts, last_error,
                     failed_at, order_key, order_seq)
                 SELECT $1, event, tenant_id, attempts + 1, $4, now(), order_key, order_seq
                 FROM gone
                 ON CONFLICT (destination_id, event) DO UPDATE
                 SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
                     failed_at = EXCLUDED.failed_at",
                &[&destination.0, &events, &dues, &error],
            )
            .await?;
        Ok(())
    }

    async fn record_circuit(
        &self,
        destination: DestinationId,
        circuit: Circuit,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE destinations SET circuit = $2, last_error = COALESCE($3, last_error)
                     WHERE id = $1",
                &[&destination.0, &circuit.as_str(), &error],
            )
            .await?;
        Ok(())
    }

    async fn delivery_stats(
        &self,
        destination: DestinationId,
    ) -> Result<DeliveryStats, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT delivered, circuit, last_error,
                         (SELECT count(*) FROM (SELECT 1 FROM outbox
                              WHERE destination_id = $1 LIMIT $2) AS pending),
                         (SELECT count(*) FROM (SELECT 1 FROM dead_letters
                              WHERE destination_id = $1 LIMIT $2) AS dead)
                     FROM destinations WHERE id = $1",
                &[&destination.0, &COUNT_CAP],
            )
            .await?;
        let Some(row) = row else {
            return Ok(DeliveryStats::default());
        };
        let circuit = match row.get::<_, &str>(1) {
            "open" => Circuit::Open,
            "half_open" => Circuit::HalfOpen,
            _ => Circuit::Closed,
        };
        Ok(DeliveryStats {
            pending: row.get::<_, i64>(3) as u64,
            delivered: row.get::<_, i64>(0) as u64,
            dead_lettered: row.get::<_, i64>(4) as u64,
            circuit,
            last_error: row.get(2),
        })
    }

    async fn dead_letters(
        &self,
        destination: DestinationId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT event, attempts, last_error, failed_at FROM dead_letters
                     WHERE destination_id = $1 ORDER BY event LIMIT $2",
                &[&destination.0, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| DeadLetter {
                event: EventId(row.get(0)),
                attempts: row.get::<_, i32>(1).max(0) as u32,
                last_error: row.get(2),
                failed_at: row.get(3),
            })
            .collect())
    }

    async fn replay_dead_letters(
        &self,
        destination: DestinationId,
        events: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        let chosen: Option<Vec<Uuid>> =
            events.map(|events| events.iter().map(|event| event.0).collect());
        let row = self
            .db
            .query_opt(
                &format!(
                    "WITH moved AS (
                         DELETE FROM dead_letters
                         WHERE destination_id = $1 AND ($2::uuid[] IS NULL OR event = ANY($2))
                         RETURNING event, tenant_id, order_key, order_seq),
                     queued AS (
                         INSERT INTO outbox
                             (destination_id, event, tenant_id, due, order_key, order_seq)
                         SELECT $1, event, tenant_id, {DB_NOW}, order_key, order_seq FROM moved
                         ON CONFLICT (destination_id, event) DO NOTHING
                         RETURNING 1)
                     SELECT count(*) FROM moved"
                ),
                &[&destination.0, &chosen],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("a count query returned no row".into()))?;
        let replayed = row.get::<_, i64>(0) as usize;
        if replayed > 0 {
            self.wakeups.wake(destination);
        }
        Ok(replayed)
    }

    async fn purge_dead_letters(&self, destination: DestinationId) -> Result<usize, StoreError> {
        let purged = self
            .db
            .execute(
                "DELETE FROM dead_letters WHERE destination_id = $1",
                &[&destination.0],
            )
            .await?;
        Ok(purged as usize)
    }
}
