//! Time partitions of `events` (migration 0006): a partition per calendar month (UTC), made
//! ahead, and dropped whole once every tenant's retention has passed it.
//!
//! Each pass of the server's retention upkeep calls [`maintain`] (and a node calls it once
//! when it connects). It makes the partitions of the two months before this one, this one
//! and the two after (`events_y2026m12`: ids from the month's first microsecond to the next
//! month's), unless retention would drop them at once or `events_before` (the table as it
//! was before partitioning) already covers them; rows of that month waiting in the DEFAULT
//! partition move in first. Then it drops each partition — a month's, or `events_before` —
//! whose range ends before the earliest retention cutoff over all tenants (none while some
//! tenant keeps its events forever), with its events' dedup keys, queue entries, dead
//! letters and live-tail retries, in one transaction. That transaction holds the partition
//! against writes first and then reads the tenants again: a tenant made (or given a longer
//! retention) after the pass began may already have events in the partition, and the
//! partition then stays.
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
//! deletes the keys (inserts of events dated in that month, past every retention, wait).
//! Creating and attaching a month under traffic can race an insert that had routed a row of
//! that month to the DEFAULT partition; that insert fails with 23514 and is retried
//! (`Failure::LostRace`). Months are made two ahead, so only an event dated that far in the
//! future can meet the race. A month whose rows wait in the DEFAULT partition is made with
//! all of `events` locked for that moment: a read planned before the attach would look for
//! them in the DEFAULT partition only, and miss them once moved.

use pulsestream_core::{EventId, Tenant, earliest_retention_cutoff};
use time::{Date, Month, OffsetDateTime, Time};
use uuid::Uuid;

use super::{Db, decode_json, pg_error};
use crate::StoreError;
use crate::record::micros_of;

/// Months of partitions made before and after the current one.
const MONTHS_AROUND: i32 = 2;
/// A month whose rows in the DEFAULT partition are more than this is not made (moving them
/// would hold inserts into the DEFAULT partition too long); its rows stay where they are.
const MOVE_AT_MOST: i64 = 100_000;
/// Advisory lock of partition upkeep ("pulspart", with the schema's hash mixed in: stores
/// in other schemas of the database do not wait for each other): nodes take turns.
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
    default_retention_days: u32,
) -> Result<PartitionPass, StoreError> {
    let cutoff = drop_cutoff(&db.query(TENANTS, &[]).await?, default_retention_days, now)?;
    let mut pass = PartitionPass {
        created: make_months(db, now, cutoff).await?,
        ..PartitionPass::default()
    };
    let Some(cutoff) = cutoff else {
        return Ok(pass);
    };
    for partition in existing(db).await? {
        if partition.high.is_some_and(|high| high <= cutoff.0)
            && let Some(events) = drop(db, &partition, now, default_retention_days).await?
        {
            pass.events_dropped += events;
            pass.dropped += 1;
        }
    }
    Ok(pass)
}

/// Makes the partitions of the months around `now` that do not end before `cutoff` (those
/// retention would drop again at once); returns how many it made.
pub(super) async fn make_months(
    db: &Db,
    now: OffsetDateTime,
    cutoff: Option<EventId>,
) -> Result<u32, StoreError> {
    let mut created = 0;
    let this_month = YearMonth::of(now);
    for offset in -MONTHS_AROUND..=MONTHS_AROUND {
        let month = this_month.plus(offset);
        let Some((low, high)) = month.bounds() else {
            continue;
        };
        if cutoff.is_some_and(|cutoff| high <= cutoff) {
            continue;
        }
        if create(db, month, low, high).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// Every tenant's record.
const TENANTS: &str = "SELECT record FROM tenants";

/// The first id past every tenant's retention, from the rows of [`TENANTS`]: a partition
/// whose range ends at or before it holds only expired events.
fn drop_cutoff(
    tenants: &[tokio_postgres::Row],
    default_retention_days: u32,
    now: OffsetDateTime,
) -> Result<Option<EventId>, StoreError> {
    let tenants = tenants
        .iter()
        .map(|row| decode_json(row.get(0), "tenant"))
        .collect::<Result<Vec<Tenant>, _>>()?;
    Ok(
        earliest_retention_cutoff(&tenants, default_retention_days, now)
            .map(|before| EventId::from_parts(micros_of(before), 0)),
    )
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
    // Rows of this month already in the DEFAULT partition move with it. A read planned
    // before the attach commits looks for them in the DEFAULT partition only, and would
    // miss them once they moved: so a month with rows to move is made with the whole table
    // held (reads wait for that moment); one without, with inserts into the DEFAULT
    // partition held (attaching checks it holds none), and reads go on.
    let count_waiting = || async {
        transaction
            .query_one(
                "SELECT count(*) FROM events_default WHERE id >= $1 AND id < $2",
                &[&low.0, &high.0],
            )
            .await
            .map(|row| row.get::<_, i64>(0))
            .map_err(pg_error)
    };
    let waiting = count_waiting().await?;
    if waiting > MOVE_AT_MOST {
        tracing::warn!(
            partition = %table,
            rows = waiting,
            "not making a month partition: too many of its rows wait in events_default"
        );
        return Ok(false);
    }
    let exclusive = waiting > 0;
    transaction
        .batch_execute(if exclusive {
            "LOCK TABLE events IN ACCESS EXCLUSIVE MODE"
        } else {
            "LOCK TABLE events_default IN SHARE ROW EXCLUSIVE MODE"
        })
        .await
        .map_err(pg_error)?;
    let waiting = count_waiting().await?;
    if waiting > 0 && !exclusive || waiting > MOVE_AT_MOST {
        // Rows came meanwhile: the next pass moves them, with the table held.
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
            "SELECT pg_try_advisory_xact_lock($1 # hashtextextended(current_schema(), 0)),
                    to_regclass($2) IS NOT NULL",
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

/// Drops a partition with what refers to its events, if every tenant's retention (read
/// once the partition is held against writes) has passed its range; returns how many
/// events it held, `None` when it stays.
async fn drop(
    db: &Db,
    partition: &Partition,
    now: OffsetDateTime,
    default_retention_days: u32,
) -> Result<Option<u64>, StoreError> {
    let table = &partition.table;
    let low = partition.low.unwrap_or(Uuid::nil());
    let high = partition.high.unwrap_or(Uuid::max());
    let mut client = db.client().await?;
    let transaction = client.transaction().await.map_err(pg_error)?;
    let Some(true) = take_turn(&transaction, table).await? else {
        return Ok(None);
    };
    // No insert, erasure or expiry in the partition from here on (reads go on): a row
    // that landed after its keys were deleted would leave a key without its event.
    transaction
        .batch_execute(&format!("LOCK TABLE {table} IN SHARE MODE"))
        .await
        .map_err(pg_error)?;
    // The tenants as they are now that nothing more can land in the partition: one made
    // or changed since the pass read them may keep events here.
    let tenants = transaction.query(TENANTS, &[]).await.map_err(pg_error)?;
    let cutoff = drop_cutoff(&tenants, default_retention_days, now)?;
    let past = |cutoff: EventId| partition.high.is_some_and(|high| high <= cutoff.0);
    if !cutoff.is_some_and(past) {
        tracing::info!(partition = %table, "a partition stays: a tenant's retention changed since the pass began");
        return Ok(None);
    }
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
    Ok(Some(u64::try_from(events).unwrap_or(0)))
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

    /// A pass that read the tenants before a tenant keeping its events forever was made
    /// (and stored events in an old month) would have dropped that month with the events:
    /// the drop reads the tenants again once the partition is held, and it stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_stays_for_a_tenant_made_after_the_pass_read_the_tenants() {
        use crate::{AppendBatch, EventStore, TenantStore};
        use pulsestream_core::{NewEvent, RateLimit, TenantChange, TenantId};

        let (admin, schema, store) = super::super::test_store_in_new_schema("psdrop").await;
        let now = OffsetDateTime::now_utc();
        let tenant = |name: &str, retention_days| Tenant {
            id: TenantId::random(),
            name: name.into(),
            rate_limit: RateLimit::new(600, None).expect("a valid limit"),
            retention_days,
            keys: Vec::new(),
            created_at: now,
        };
        let short = tenant("short", Some(7));
        store.create_tenant(&short).await.expect("a tenant");
        // The pass has read the tenants: only `short`, so the old month may go.
        let stale = drop_cutoff(&store.db.query(TENANTS, &[]).await.unwrap(), 0, now)
            .unwrap()
            .expect("a cutoff");
        let old = now - time::Duration::days(45);
        let month = YearMonth::of(old);
        assert!(month.bounds().unwrap().1 <= stale);
        // Then a tenant that keeps its events forever comes, with events of that month.
        let forever = tenant("forever", Some(0));
        store.create_tenant(&forever).await.expect("a tenant");
        let stamp = old
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let events = (0..10)
            .map(|n| {
                NewEvent::from_json(&format!(
                    r#"{{"event_id":"old-{n}","event_type":"t","timestamp":"{stamp}"}}"#
                ))
                .unwrap()
            })
            .collect();
        store
            .append_batch(AppendBatch {
                tenant: forever.id,
                events,
                received_at: now,
                idempotency: None,
            })
            .await
            .expect("append");
        let partition = existing(&store.db)
            .await
            .unwrap()
            .into_iter()
            .find(|partition| partition.table == month.table())
            .expect("the old month's partition (made when there was no tenant)");
        let rows = |table: String| {
            let db = &store.db;
            async move {
                db.query(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .map(|rows| rows[0].get::<_, i64>(0))
            }
        };

        assert_eq!(drop(&store.db, &partition, now, 0).await.unwrap(), None);
        assert_eq!(rows(month.table()).await.unwrap(), 10);

        // Once that tenant's retention passes the month too, it goes, with its events.
        store
            .change_tenant(
                forever.id,
                &TenantChange::Update {
                    name: None,
                    per_minute: None,
                    burst: None,
                    retention_days: Some(30),
                },
            )
            .await
            .expect("a change");
        assert_eq!(drop(&store.db, &partition, now, 0).await.unwrap(), Some(10));
        assert!(rows(month.table()).await.is_err());
        store.close().await.expect("close");
        super::super::drop_schema(&admin, &schema)
            .await
            .expect("drop the schema");
    }

    /// Making a month moves its rows out of the DEFAULT partition. A read planned before
    /// that commits looked in the DEFAULT partition only and, once it got its lock, found
    /// the rows gone (a clean-clone CI run: an event just acknowledged answered 404). Here a
    /// session holding the DEFAULT partition makes the month wait, and a read of a moving
    /// row starts while it waits; it must find the row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_meets_a_month_being_made_finds_the_rows_that_move() {
        use crate::{AppendBatch, AppendStatus, EventStore};
        use pulsestream_core::{NewEvent, TenantId};

        let (admin, schema, store) = super::super::test_store_in_new_schema("psmove").await;
        // Three months ahead: past the months made, so in the DEFAULT partition.
        let now = OffsetDateTime::now_utc();
        let ahead = YearMonth::of(now).plus(3).start().unwrap() + time::Duration::days(3);
        let stamp = ahead
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let tenant = TenantId::random();
        let outcome = store
            .append_batch(AppendBatch {
                tenant,
                events: vec![
                    NewEvent::from_json(&format!(
                        r#"{{"event_id":"ahead","event_type":"t","timestamp":"{stamp}"}}"#
                    ))
                    .unwrap(),
                ],
                received_at: now,
                idempotency: None,
            })
            .await
            .expect("append");
        let AppendStatus::Accepted(id) = outcome.statuses[0] else {
            panic!("{outcome:?}");
        };

        let holder = super::super::test_client().await;
        holder
            .batch_execute(&format!(
                "SET search_path = {schema}; BEGIN; SELECT count(*) FROM events_default"
            ))
            .await
            .expect("hold the DEFAULT partition");
        let store = std::sync::Arc::new(store);
        let maker = {
            let store = store.clone();
            tokio::spawn(async move {
                // A month later, that month is among the two ahead.
                make_months(&store.db, now + time::Duration::days(31), None).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let reader = {
            let store = store.clone();
            tokio::spawn(async move { store.event(tenant, id).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        holder.batch_execute("COMMIT").await.expect("commit");

        assert!(maker.await.unwrap().expect("the month is made") >= 1);
        let read = reader.await.unwrap().expect("a read");
        assert!(read.is_some(), "the moved event was not found");
        let table = YearMonth::of(ahead).table();
        let moved = admin
            .query_one(&format!("SELECT count(*) FROM {schema}.{table}"), &[])
            .await
            .expect("the month's partition");
        assert_eq!(moved.get::<_, i64>(0), 1);
        std::sync::Arc::into_inner(store)
            .expect("the only handle")
            .close()
            .await
            .expect("close");
        super::super::drop_schema(&admin, &schema)
            .await
            .expect("drop the schema");
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
