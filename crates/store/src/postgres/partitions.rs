//! Time partitions of `events` (migration 0006): a partition per calendar month (UTC), made
//! ahead, and dropped whole once every tenant's retention has passed it.
//!
//! Each pass of the server's retention upkeep calls [`maintain`] (and a node calls it once
//! when it connects). It makes the partitions of the two months before this one, this one
//! and the two after (`events_y2026m12`: ids from the month's first microsecond to the next
//! month's), unless retention would drop them at once or `events_before` (the table as it
//! was before partitioning) already covers them; rows of that month waiting in the DEFAULT
//! partition move in first. Then it drops each partition — a month's, or `events_before` —
//! whose range ends before `drop_before`, the earliest retention cutoff over all tenants
//! (none while some tenant keeps its events forever), with its events' dedup keys, queue
//! entries, dead letters and live-tail retries, in one transaction.
//!
//! Retention still deletes expired rows one by one every pass (a tenant whose retention is
//! shorter than another's finds its events in partitions that cannot go yet, and an event
//! must leave reads within the hour); what a partition drop adds is the disk: deleted rows
//! stay in the table's files until a vacuum makes the space reusable, and the files never
//! shrink, while a dropped partition's files are gone at once.
//!
//! No step waits longer than 2 s for a lock ([`UPKEEP_SETTINGS`]): a pass that cannot get
//! one gives up and the next pass tries again, so upkeep never queues ingest or search
//! behind it for longer than that. A drop holds its partition against writes while it
//! deletes the keys (inserts of events dated in that month, past every retention, wait). Creating and attaching a month under traffic can race
//! an insert that had routed a row of that month to the DEFAULT partition; that insert fails
//! with 23514 and is retried (`Failure::LostRace`). Months are made two ahead, so only an
//! event dated that far in the future can meet the race.

use pulsestream_core::EventId;
use time::{Date, Month, OffsetDateTime, Time};
use uuid::Uuid;

use super::{Db, pg_error};
use crate::StoreError;
use crate::record::micros_of;

/// Months of partitions made before and after the current one.
const MONTHS_AROUND: i32 = 2;
/// A month whose rows in the DEFAULT partition are more than this is not made (moving them
/// would hold inserts into the DEFAULT partition too long); its rows stay where they are.
const MOVE_AT_MOST: i64 = 100_000;
/// Advisory lock of partition upkeep ("pulspart"): nodes take turns.
const PARTITION_LOCK: i64 = 0x7075_6c73_7061_7274;
/// Each step of upkeep waits at most 2 s for a table lock (then gives up until the next
/// pass), and may run for up to 10 minutes: dropping a month deletes its events' keys, which
/// may be millions; the requests' own deadline (`--database-timeout-ms`) is not for this.
const UPKEEP_SETTINGS: &str =
    "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10min'";

/// A month, as partitions are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct YearMonth {
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
            // In 1..=12 by construction.
            month: u8::try_from(index.rem_euclid(12) + 1).unwrap_or(1),
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
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPass {
    /// Month partitions made.
    pub created: u32,
    /// Partitions dropped.
    pub dropped: u32,
    /// Events that went with them.
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
        let Some((low, high)) = month.bounds() else {
            continue;
        };
        // Not a month that retention would drop again at once.
        if cutoff.is_some_and(|cutoff| high <= cutoff) {
            continue;
        }
        if create(db, month, low, high).await? {
            pass.created += 1;
        }
    }
    let Some(cutoff) = cutoff else {
        return Ok(pass);
    };
    for partition in existing(db).await? {
        if partition.high.is_some_and(|high| high <= cutoff.0) {
            pass.events_dropped += drop(db, &partition).await?;
            pass.dropped += 1;
        }
    }
    Ok(pass)
}

/// A partition of `events` other than the DEFAULT one, with its range of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Partition {
    table: String,
    /// `None`: MINVALUE.
    low: Option<Uuid>,
    /// `None`: MAXVALUE.
    high: Option<Uuid>,
}

/// Every partition of `events` with its bounds as the catalog writes them.
const PARTITIONS: &str = "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
                            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                           WHERE i.inhparent = 'events'::regclass";

/// The range partitions among the rows of [`PARTITIONS`].
fn range_partitions(rows: &[tokio_postgres::Row]) -> Vec<Partition> {
    rows.iter()
        .filter_map(|row| parse_bound(row.get(0), row.get(1)))
        .collect()
}

/// The range partitions that exist.
async fn existing(db: &Db) -> Result<Vec<Partition>, StoreError> {
    Ok(range_partitions(&db.query(PARTITIONS, &[]).await?))
}

/// Reads `FOR VALUES FROM ('…') TO ('…')` (either side may be MINVALUE or MAXVALUE); `None`
/// for the DEFAULT partition or anything else.
fn parse_bound(table: String, bound: &str) -> Option<Partition> {
    let rest = bound.strip_prefix("FOR VALUES FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    let value = |text: &str| -> Option<Option<Uuid>> {
        match text {
            "MINVALUE" | "MAXVALUE" => Some(None),
            quoted => Some(Some(
                quoted
                    .strip_prefix('\'')?
                    .strip_suffix('\'')?
                    .parse()
                    .ok()?,
            )),
        }
    };
    Some(Partition {
        table,
        low: value(from)?,
        high: value(to)?,
    })
}

/// Makes the month's partition unless it exists or its range is taken; true if made.
async fn create(
    db: &Db,
    month: YearMonth,
    low: EventId,
    high: EventId,
) -> Result<bool, StoreError> {
    let table = month.table();
    let mut client = db.client().await?;
    let transaction = client.transaction().await.map_err(pg_error)?;
    // Made already, or inside another partition's range (`events_before`, or a month
    // made by hand): nothing to do.
    let Some(exists) = take_turn(&transaction, &table).await? else {
        return Ok(false);
    };
    if exists || overlaps(&transaction, low, high).await? {
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
}

/// Sets the upkeep's limits and takes its lock for this transaction: `None` when another
/// node holds the lock (that node is doing the same work; this one tries again at its next
/// pass), else whether `table` exists.
async fn take_turn(
    transaction: &deadpool_postgres::Transaction<'_>,
    table: &str,
) -> Result<Option<bool>, StoreError> {
    transaction
        .batch_execute(UPKEEP_SETTINGS)
        .await
        .map_err(pg_error)?;
    let row = transaction
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1), to_regclass($2) IS NOT NULL",
            &[&PARTITION_LOCK, &table],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.get::<_, bool>(0).then(|| row.get(1)))
}

/// Whether another range partition already takes part of `[low, high)`.
async fn overlaps(
    transaction: &deadpool_postgres::Transaction<'_>,
    low: EventId,
    high: EventId,
) -> Result<bool, StoreError> {
    let rows = transaction.query(PARTITIONS, &[]).await.map_err(pg_error)?;
    Ok(range_partitions(&rows).into_iter().any(|other| {
        other.low.is_none_or(|other_low| other_low < high.0)
            && other.high.is_none_or(|other_high| low.0 < other_high)
    }))
}

/// Drops a partition with what refers to its events; returns how many it held.
async fn drop(db: &Db, partition: &Partition) -> Result<u64, StoreError> {
    let table = &partition.table;
    let low = partition.low.unwrap_or(Uuid::nil());
    let high = partition.high.unwrap_or(Uuid::max());
    let mut client = db.client().await?;
    let transaction = client.transaction().await.map_err(pg_error)?;
    let Some(true) = take_turn(&transaction, table).await? else {
        return Ok(0);
    };
    // No insert, erasure or expiry in the partition from here on (reads go on): a row
    // that landed after its keys were deleted would leave a key without its event.
    transaction
        .batch_execute(&format!("LOCK TABLE {table} IN SHARE MODE"))
        .await
        .map_err(pg_error)?;
    let events: i64 = transaction
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(pg_error)?
        .get(0);
    // The keys through the partition's own rows (their primary key: no index on id).
    transaction
        .batch_execute(&format!(
            "DELETE FROM event_keys k USING {table} e
              WHERE k.tenant_id = e.tenant_id AND k.event_id = e.event_id AND k.id = e.id"
        ))
        .await
        .map_err(pg_error)?;
    for statement in [
        "DELETE FROM outbox WHERE event >= $1 AND event < $2",
        "DELETE FROM dead_letters WHERE event >= $1 AND event < $2",
        "DELETE FROM tail_duplicates WHERE id >= $1 AND id < $2",
    ] {
        transaction
            .execute(statement, &[&low, &high])
            .await
            .map_err(pg_error)?;
    }
    // Takes the parent's lock for a moment (its wait bounded by `lock_timeout`).
    transaction
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .map_err(pg_error)?;
    transaction.commit().await.map_err(pg_error)?;
    tracing::info!(partition = %table, events, "dropped a partition of events past every tenant's retention");
    Ok(u64::try_from(events).unwrap_or(0))
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
        let (low, high) = december.bounds().unwrap();
        assert!(low < high);
        assert_eq!(december.plus(1).bounds().unwrap().0, high);
        assert_eq!(
            low.timestamp_micros(),
            micros_of(time::macros::datetime!(2026-12-01 0:00 UTC))
        );
    }

    #[test]
    fn partition_bounds_are_read_back_from_the_catalog_text() {
        let id = "80064aa1-2c6e-4000-0000-000000000000";
        let before = parse_bound(
            "events_before".into(),
            &format!("FOR VALUES FROM (MINVALUE) TO ('{id}')"),
        )
        .unwrap();
        assert_eq!(before.low, None);
        assert_eq!(before.high, Some(id.parse().unwrap()));
        let month = parse_bound(
            "events_y2026m12".into(),
            &format!("FOR VALUES FROM ('{id}') TO ('{id}')"),
        )
        .unwrap();
        assert_eq!(month.low, month.high);
        assert_eq!(parse_bound("events_default".into(), "DEFAULT"), None);
        assert_eq!(
            parse_bound("x".into(), "FOR VALUES FROM ('nope') TO (MAXVALUE)"),
            None
        );
    }
}
