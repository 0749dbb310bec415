//! Migration 0006 on a database that holds events: a schema at version 5 (the migrations of
//! the time, applied by hand, with events stored as version 5 stored them) is opened by this
//! build. The old table becomes the partition `events_before` without a row copied (only
//! future-dated rows move, to the DEFAULT partition, and from there into their month's
//! partition once it is made); every event reads back, search by `event_id` finds it, a
//! resend is still a duplicate (its dedup key was carried over), and new events land in the
//! partition of their time.

use pulsestream_core::{EventId, NewEvent, TenantId};
use pulsestream_store::postgres::{self, PostgresConfig, PostgresStore};
use pulsestream_store::{AppendBatch, AppendStatus, EventStore, SearchQuery};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BEFORE: [&str; 5] = [
    include_str!("../src/postgres/migrations/0001_init.sql"),
    include_str!("../src/postgres/migrations/0002_ordered_delivery.sql"),
    include_str!("../src/postgres/migrations/0003_activity.sql"),
    include_str!("../src/postgres/migrations/0004_erasure.sql"),
    include_str!("../src/postgres/migrations/0005_search.sql"),
];

fn month_table(at: OffsetDateTime) -> String {
    format!("events_y{:04}m{:02}", at.year(), u8::from(at.month()))
}

/// The first instant of the month `months` after `at`'s.
fn month_start(at: OffsetDateTime, months: i32) -> OffsetDateTime {
    let index = at.year() * 12 + i32::from(u8::from(at.month())) - 1 + months;
    let month = time::Month::try_from(u8::try_from(index.rem_euclid(12) + 1).unwrap()).unwrap();
    time::Date::from_calendar_date(index.div_euclid(12), month, 1)
        .unwrap()
        .midnight()
        .assume_utc()
}

#[tokio::test]
async fn a_version_5_schema_with_events_is_partitioned_in_place() {
    let client = postgres::test_client().await;
    let schema = format!("psmig_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};"
        ))
        .await
        .unwrap();
    for sql in BEFORE {
        client.batch_execute(sql).await.unwrap();
    }
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                             applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version, name)
                 VALUES (1, 'init'), (2, 'ordered delivery'), (3, 'activity'), (4, 'erasure'),
                        (5, 'search');",
        )
        .await
        .unwrap();
    // Events as version 5 stored them (without `search`: the backfill fills it), a week
    // apart up to now, and two dated ahead: next month's first day, and 200 days on.
    let tenant = TenantId::random();
    let now = OffsetDateTime::now_utc();
    let next_month = month_start(now, 1);
    let mut dates: Vec<OffsetDateTime> = (0..20i64)
        .map(|n| now - time::Duration::days(7 * n))
        .collect();
    dates.push(next_month + time::Duration::hours(1));
    dates.push(now + time::Duration::days(200));
    let mut stored = Vec::new();
    for (n, at) in dates.iter().enumerate() {
        let micros = i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap();
        let id = EventId::from_parts(micros, n as u64 + 1);
        let timestamp = at.format(&Rfc3339).unwrap();
        let event = NewEvent::from_json(&format!(
            r#"{{"event_id":"old-{n}","event_type":"t","timestamp":"{timestamp}","payload":{{"n":{n}}}}}"#,
        ))
        .unwrap();
        let body = format!(
            r#"{{"id":"{id}","event_id":"old-{n}","event_type":"t","source":null,"timestamp":"{timestamp}","received_at":"{timestamp}","payload":{{"n":{n}}}}}"#,
        );
        client
            .execute(
                "INSERT INTO events (tenant_id, id, event_id, event_type, source, content_hash,
                                     timestamp_given, payload, body)
                 VALUES ($1, $2, $3, 't', NULL, $4, true, $5::text::jsonb, $6)",
                &[
                    &tenant.0,
                    &id.0,
                    &format!("old-{n}"),
                    &event.content_hash.0.to_be_bytes().to_vec(),
                    &format!("{{\"n\":{n}}}"),
                    &body,
                ],
            )
            .await
            .unwrap();
        stored.push((id, event));
    }

    let url = postgres::url_in_schema(&postgres::test_database_url(), &schema);
    let store = PostgresStore::connect(&PostgresConfig::new(url))
        .await
        .expect("this build opens and migrates the version 5 schema");
    let version: i32 = client
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 6);
    let count = |table: String| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let mut partitions: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'events'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    partitions.sort();
    // Up to this month, the old table; the next two months made when the store opened (the
    // months before are the old table's); the DEFAULT partition for the rest.
    let mut expected = vec![
        "events_before".to_owned(),
        "events_default".to_owned(),
        month_table(next_month),
        month_table(month_start(now, 2)),
    ];
    expected.sort();
    assert_eq!(partitions, expected);
    assert_eq!(count("events".into()).await, 22);
    assert_eq!(count("events_before".into()).await, 20, "no past row moved");
    assert_eq!(count(month_table(next_month)).await, 1, "next month's row");
    assert_eq!(
        count("events_default".into()).await,
        1,
        "the row 200 days on"
    );
    assert_eq!(count("event_keys".into()).await, 22);

    for (n, (id, event)) in stored.iter().enumerate() {
        assert!(
            store.event(tenant, *id).await.unwrap().is_some(),
            "event {n} reads back"
        );
        let found = store
            .search(
                tenant,
                SearchQuery {
                    event_id: Some(format!("old-{n}")),
                    limit: 10,
                    ..SearchQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(found.events.len(), 1, "search by event_id finds old-{n}");
        let resent = store
            .append_batch(AppendBatch {
                tenant,
                events: vec![event.clone()],
                received_at: now,
                idempotency: None,
            })
            .await
            .unwrap();
        assert_eq!(
            resent.statuses,
            vec![AppendStatus::Duplicate(*id)],
            "old-{n}"
        );
    }

    // Nothing left to make; new events land by their time.
    let pass = store.maintain_partitions(0).await.unwrap();
    assert_eq!(pass.created, 0, "{pass:?}");
    let in_a_month = (next_month + time::Duration::days(2))
        .format(&Rfc3339)
        .unwrap();
    let new = [
        NewEvent::from_json(r#"{"event_id":"new","event_type":"t"}"#).unwrap(),
        NewEvent::from_json(&format!(
            r#"{{"event_id":"new-ahead","event_type":"t","timestamp":"{in_a_month}"}}"#
        ))
        .unwrap(),
        NewEvent::from_json(
            r#"{"event_id":"new-ancient","event_type":"t","timestamp":"1999-01-01T00:00:00Z"}"#,
        )
        .unwrap(),
    ];
    let appended = store
        .append_batch(AppendBatch {
            tenant,
            events: new.to_vec(),
            received_at: OffsetDateTime::now_utc(),
            idempotency: None,
        })
        .await
        .unwrap();
    assert!(
        appended
            .statuses
            .iter()
            .all(|status| matches!(status, AppendStatus::Accepted(_))),
        "{:?}",
        appended.statuses
    );
    assert_eq!(count("events_before".into()).await, 22, "now and 1999");
    assert_eq!(count(month_table(next_month)).await, 2);
    assert_eq!(count("events".into()).await, 25);
    store.close().await.unwrap();
    pulsestream_store::postgres::drop_schema(&client, &schema)
        .await
        .unwrap();
}
