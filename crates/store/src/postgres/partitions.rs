//! Month partitions of `events` (see migration 0005): made ahead of time, dropped whole once
//! every tenant's retention has passed them.
//!
//! Each pass of the server's retention upkeep calls [`maintain`]: under one advisory lock
//! (so nodes take turns), it creates the partitions of the two months before this one, this
//! one and the two after (`events_y2026m12`: ids from the month's first microsecond to the
//! next month's), moving any rows the DEFAULT partition holds for that month into it first;
//! then it drops each month partition that ends before `drop_before` — the earliest
//! retention cutoff over all tenants — with its events' dedup keys, queue entries, dead
//! letters and live-tail retries, in one transaction. The dedup keys go by an index range
//! scan; the events themselves cost nothing to delete.

use pulsestream_core::EventId;
use time::{Date, Month, OffsetDateTime, Time};

use super::{Db, pg_error};
use crate::StoreError;
use crate::record::micros_of;

/// Months of partitions made before and after the current one.
const MONTHS_AROUND: i32 = 2;
/// A month whose rows in the DEFAULT partition are more than this is left there (moving
/// them would hold inserts into the DEFAULT partition too long); retention deletes them
/// row by row as before.
const MOVE_AT_MOST: i64 = 100_000;
/// Advisory lock of partition upkeep ("pulspart").
const PARTITION_LOCK: i64 = 0x7075_6c73_7061_7274;

/// A month, as partitions are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct YearMonth {
    year: i32,
    month: u8,
}

impl YearMonth {
    fn of(at: OffsetDateTime) -> Self {
        Self {
            year: at.year(),
            month: u8::from(at.month()),
        }
    }

    fn plus(self, months: i32) -> Self {
        let index = self.year * 12 + i32::from(self.month) - 1 + months;
        Self {
            year: index.div_euclid(12),
            month: (index.rem_euclid(12) + 1) as u8,
        }
    }

    fn start(self) -> Option<OffsetDateTime> {
        let month = Month::try_from(self.month).ok()?;
        Some(
            Date::from_calendar_date(self.year, month, 1)
                .ok()?
                .with_time(Time::MIDNIGHT)
                .assume_utc(),
        )
    }

    /// The ids of this month: `[low, high)`.
    fn bounds(self) -> Option<(EventId, EventId)> {
        let low = EventId::from_parts(micros_of(self.start()?), 0);
        let high = EventId::from_parts(micros_of(self.plus(1).start()?), 0);
        Some((low, high))
    }

    fn table(self) -> String {
        format!("events_y{:04}m{:02}", self.year, self.month)
    }

    fn parse(table: &str) -> Option<Self> {
        let rest = table.strip_prefix("events_y")?;
        let (year, month) = rest.split_once('m')?;
        let month: u8 = month.parse().ok()?;
        (1..=12).contains(&month).then_some(())?;
        Some(Self {
            year: year.parse().ok()?,
            month,
        })
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPass {
    pub created: u32,
    pub dropped: u32,
    pub events_dropped: u64,
}

/// See the module documentation.
pub(super) async fn maintain(
    db: &Db,
    now: OffsetDateTime,
    drop_before: Option<OffsetDateTime>,
) -> Result<PartitionPass, StoreError> {
    let mut pass = PartitionPass::default();
    let cutoff = drop_before.map(|before| EventId::from_parts(micros_of(before), 0));
    let this_month = YearMonth::of(now);
    for offset in -MONTHS_AROUND..=MONTHS_AROUND {
        let month = this_month.plus(offset);
        // Not a month that retention would drop again at once.
        let expired = month
            .bounds()
            .is_none_or(|(_, high)| cutoff.is_some_and(|cutoff| high <= cutoff));
        if !expired && create(db, month).await? {
            pass.created += 1;
        }
    }
    let Some(cutoff) = cutoff else {
        return Ok(pass);
    };
    for month in existing(db).await? {
        let Some((_, high)) = month.bounds() else {
            continue;
        };
        if high <= cutoff {
            pass.events_dropped += drop(db, month).await?;
            pass.dropped += 1;
        }
    }
    Ok(pass)
}

/// The month partitions that exist, oldest first.
async fn existing(db: &Db) -> Result<Vec<YearMonth>, StoreError> {
    let rows = db
        .query(
            "SELECT c.relname::text FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await?;
    let mut months: Vec<YearMonth> = rows
        .iter()
        .filter_map(|row| YearMonth::parse(row.get::<_, &str>(0)))
        .collect();
    months.sort();
    Ok(months)
}

/// Makes the month's partition unless it exists; false if it existed or was left alone.
async fn create(db: &Db, month: YearMonth) -> Result<bool, StoreError> {
    let Some((low, high)) = month.bounds() else {
        return Ok(false);
    };
    let table = month.table();
    db.guarded(async {
        let mut client = db.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .map_err(pg_error)?;
        let exists: bool = transaction
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(pg_error)?
            .get(0);
        if exists {
            return Ok(false);
        }
        // Rows of this month already in the DEFAULT partition move with it, with inserts
        // into the DEFAULT partition held for that moment (attaching checks it holds none).
        transaction
            .batch_execute("LOCK TABLE events_default IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(pg_error)?;
        let waiting: i64 = transaction
            .query_one(
                "SELECT count(*) FROM events_default WHERE id >= $1 AND id < $2",
                &[&low.0, &high.0],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        if waiting > MOVE_AT_MOST {
            tracing::warn!(
                partition = %table,
                rows = waiting,
                "not making a month partition: too many of its rows wait in events_default"
            );
            return Ok(false);
        }
        // Identifiers and bounds are made here, never taken from a client.
        transaction
            .batch_execute(&format!(
                "CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS);
                 INSERT INTO {table} SELECT * FROM events_default
                  WHERE id >= '{low}' AND id < '{high}';
                 DELETE FROM events_default WHERE id >= '{low}' AND id < '{high}';
                 ALTER TABLE events ATTACH PARTITION {table}
                   FOR VALUES FROM ('{low}') TO ('{high}');",
                low = low.0,
                high = high.0,
            ))
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        tracing::info!(partition = %table, moved = waiting, "made a month partition of events");
        Ok(true)
    })
    .await
}

/// Drops a month partition with what refers to its events; returns how many it held.
async fn drop(db: &Db, month: YearMonth) -> Result<u64, StoreError> {
    let Some((low, high)) = month.bounds() else {
        return Ok(0);
    };
    let table = month.table();
    db.guarded(async {
        let mut client = db.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .map_err(pg_error)?;
        let exists: bool = transaction
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(pg_error)?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let events: i64 = transaction
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(pg_error)?
            .get(0);
        for statement in [
            "DELETE FROM event_keys WHERE id >= $1 AND id < $2",
            "DELETE FROM outbox WHERE event >= $1 AND event < $2",
            "DELETE FROM dead_letters WHERE event >= $1 AND event < $2",
            "DELETE FROM tail_duplicates WHERE id >= $1 AND id < $2",
        ] {
            transaction
                .execute(statement, &[&low.0, &high.0])
                .await
                .map_err(pg_error)?;
        }
        transaction
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        tracing::info!(partition = %table, events, "dropped a month partition past every tenant's retention");
        Ok(events.max(0) as u64)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_step_across_years_and_name_their_tables() {
        let december = YearMonth {
            year: 2026,
            month: 12,
        };
        assert_eq!(
            december.plus(1),
            YearMonth {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(
            december.plus(-12),
            YearMonth {
                year: 2025,
                month: 12
            }
        );
        assert_eq!(december.table(), "events_y2026m12");
        assert_eq!(YearMonth::parse("events_y2026m12"), Some(december));
        assert_eq!(YearMonth::parse("events_default"), None);
        let (low, high) = december.bounds().unwrap();
        assert!(low < high);
        assert_eq!(december.plus(1).bounds().unwrap().0, high);
    }
}
