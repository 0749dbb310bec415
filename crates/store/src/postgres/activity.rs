//! The live tail, delivery attempts and counts on PostgreSQL (schema: migration 0003).

use async_trait::async_trait;
use pulsestream_core::{DestinationId, EventId, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use super::PostgresStore;
use crate::record::micros_of;
use crate::{
    ActivityStore, Attempt, AttemptCursor, Counts, MinuteCounts, StoreError, StoredEvent, TailPage,
    TailPosition, TenantCounts,
};

/// The `activity_counts` minute that holds a tenant's all-time counts.
const ALL_TIME: i64 = i64::MAX;

fn position(xid: &str, id: Uuid, duplicate: bool) -> Result<TailPosition, StoreError> {
    let commit = xid
        .parse::<i64>()
        .map_err(|_| StoreError::Corrupt(format!("transaction id {xid:?}")))?;
    Ok(TailPosition {
        commit,
        within: id.as_u128(),
        duplicate,
    })
}

fn decode_attempt(value: serde_json::Value) -> Result<Attempt, StoreError> {
    serde_json::from_value(value).map_err(|err| StoreError::Corrupt(format!("attempt: {err}")))
}

fn counts_of(row: &tokio_postgres::Row, from: usize) -> Counts {
    let value = |i: usize| row.get::<_, i64>(from + i).max(0) as u64;
    Counts::from_array([
        value(0),
        value(1),
        value(2),
        value(3),
        value(4),
        value(5),
        value(6),
    ])
}

#[async_trait]
impl ActivityStore for PostgresStore {
    async fn tail(
        &self,
        tenant: TenantId,
        after: Option<TailPosition>,
        limit: usize,
    ) -> Result<TailPage, StoreError> {
        let (xid, id, duplicate) = after.map_or((0, Uuid::nil(), false), |after| {
            (after.commit, Uuid::from_u128(after.within), after.duplicate)
        });
        // Rows of transactions older than this statement's snapshot xmin only: every such
        // transaction has ended, so no row can appear behind what is returned. Positions
        // order by (xid, id, duplicate): a retry comes right after the event's own row.
        let rows = self
            .db
            .query(
                "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
                 tail AS (
                     SELECT tail_xid, id, false AS duplicate FROM events, horizon
                      WHERE tenant_id = $1 AND tail_xid IS NOT NULL AND tail_xid >= $2::text::xid8
                        AND tail_xid < horizon.xmin
                     UNION ALL
                     SELECT tail_xid, id, true FROM tail_duplicates, horizon
                      WHERE tenant_id = $1 AND tail_xid >= $2::text::xid8 AND tail_xid < horizon.xmin)
                 SELECT t.tail_xid::text, t.id, t.duplicate, e.body FROM tail t
                   JOIN events e ON e.tenant_id = $1 AND e.id = t.id AND NOT e.erased
                  WHERE (t.tail_xid, t.id, t.duplicate) > ($2::text::xid8, $3, $4)
                  ORDER BY t.tail_xid, t.id, t.duplicate LIMIT $5",
                &[&tenant.0, &xid.to_string(), &id, &duplicate, &(limit as i64)],
            )
            .await?;
        let mut page = TailPage::default();
        for row in rows {
            let xid: String = row.get(0);
            let id: Uuid = row.get(1);
            let body: String = row.get(3);
            page.events.push((
                position(&xid, id, row.get(2))?,
                StoredEvent {
                    id: EventId(id),
                    json: body.into_bytes(),
                },
            ));
        }
        Ok(page)
    }

    async fn tail_end(&self, tenant: TenantId) -> Result<Option<TailPosition>, StoreError> {
        let row = self
            .db
            .query_opt(
                "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
                 SELECT tail_xid::text, id, duplicate FROM (
                     SELECT tail_xid, id, false AS duplicate FROM events, horizon
                      WHERE tenant_id = $1 AND tail_xid IS NOT NULL AND tail_xid < horizon.xmin
                     UNION ALL
                     SELECT tail_xid, id, true FROM tail_duplicates, horizon
                      WHERE tenant_id = $1 AND tail_xid < horizon.xmin) AS tail
                  ORDER BY tail_xid DESC, id DESC, duplicate DESC LIMIT 1",
                &[&tenant.0],
            )
            .await?;
        row.map(|row| position(&row.get::<_, String>(0), row.get(1), row.get(2)))
            .transpose()
    }

    async fn record_attempt(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let record = serde_json::to_value(attempt).map_err(StoreError::unavailable)?;
        let events: Vec<Uuid> = attempt.events.iter().map(|event| event.0).collect();
        // A destination deleted meanwhile: its attempts went with it, this one too.
        self.db
            .execute(
                "INSERT INTO delivery_attempts (destination_id, at, id, tenant_id, events, record)
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM destinations WHERE id = $1)
                 ON CONFLICT DO NOTHING",
                &[
                    &attempt.destination.0,
                    &micros_of(attempt.at),
                    &attempt.id,
                    &attempt.tenant.0,
                    &events,
                    &record,
                ],
            )
            .await?;
        Ok(())
    }

    async fn attempts(
        &self,
        destination: DestinationId,
        before: Option<AttemptCursor>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let (at, id) = before.map_or((i64::MAX, Uuid::max()), |cursor| {
            (cursor.at_micros, cursor.id)
        });
        let rows = self
            .db
            .query(
                "SELECT record FROM delivery_attempts
                  WHERE destination_id = $1 AND (at, id) < ($2, $3)
                  ORDER BY at DESC, id DESC LIMIT $4",
                &[&destination.0, &at, &id, &(limit as i64)],
            )
            .await?;
        rows.into_iter()
            .map(|row| decode_attempt(row.get(0)))
            .collect()
    }

    async fn event_attempts(
        &self,
        tenant: TenantId,
        event: EventId,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT record FROM delivery_attempts
                  WHERE events @> ARRAY[$2::uuid] AND tenant_id = $1
                  ORDER BY at DESC, id DESC LIMIT $3",
                &[&tenant.0, &event.0, &(limit as i64)],
            )
            .await?;
        rows.into_iter()
            .map(|row| decode_attempt(row.get(0)))
            .collect()
    }

    async fn add_counts(&self, counts: &[MinuteCounts]) -> Result<(), StoreError> {
        let mut sums: std::collections::BTreeMap<(Uuid, i64), Counts> = Default::default();
        for entry in counts {
            for minute in [entry.minute, ALL_TIME] {
                sums.entry((entry.tenant.0, minute))
                    .or_default()
                    .add(&entry.counts);
            }
        }
        if sums.is_empty() {
            return Ok(());
        }
        let mut columns: [Vec<i64>; 7] = Default::default();
        let (mut tenants, mut minutes) = (Vec::new(), Vec::new());
        // In key order, so two nodes adding at once lock rows in the same order.
        for ((tenant, minute), add) in sums {
            tenants.push(tenant);
            minutes.push(minute);
            for (column, value) in columns.iter_mut().zip(add.to_array()) {
                column.push(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        let [a, d, r, l, v, x, b] = &columns;
        self.db
            .execute(
                "INSERT INTO activity_counts AS c (tenant_id, minute, accepted, duplicates, rejected,
                     rate_limited, delivered, dead_lettered, stored_bytes)
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[],
                     $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
                 ON CONFLICT (tenant_id, minute) DO UPDATE SET
                     accepted = c.accepted + EXCLUDED.accepted,
                     duplicates = c.duplicates + EXCLUDED.duplicates,
                     rejected = c.rejected + EXCLUDED.rejected,
                     rate_limited = c.rate_limited + EXCLUDED.rate_limited,
                     delivered = c.delivered + EXCLUDED.delivered,
                     dead_lettered = c.dead_lettered + EXCLUDED.dead_lettered,
                     stored_bytes = c.stored_bytes + EXCLUDED.stored_bytes",
                &[&tenants, &minutes, a, d, r, l, v, x, b],
            )
            .await?;
        Ok(())
    }

    async fn counts(
        &self,
        tenant: TenantId,
        since_minute: i64,
    ) -> Result<TenantCounts, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT minute, accepted, duplicates, rejected, rate_limited, delivered,
                        dead_lettered, stored_bytes
                   FROM activity_counts WHERE tenant_id = $1 AND minute >= $2 ORDER BY minute",
                &[&tenant.0, &since_minute],
            )
            .await?;
        let mut result = TenantCounts::default();
        for row in rows {
            let minute: i64 = row.get(0);
            if minute == ALL_TIME {
                result.all_time = counts_of(&row, 1);
            } else {
                result.minutes.push((minute, counts_of(&row, 1)));
            }
        }
        Ok(result)
    }

    async fn prune_activity(
        &self,
        attempts_before: OffsetDateTime,
        minutes_before: i64,
    ) -> Result<u64, StoreError> {
        let pruned = self
            .db
            .execute(
                "DELETE FROM delivery_attempts WHERE at < $1",
                &[&micros_of(attempts_before)],
            )
            .await?;
        self.db
            .execute(
                "DELETE FROM activity_counts WHERE minute < $1",
                &[&minutes_before],
            )
            .await?;
        self.db
            .execute(
                "DELETE FROM tail_duplicates WHERE seen_at < $1",
                &[&attempts_before],
            )
            .await?;
        Ok(pruned)
    }
}
