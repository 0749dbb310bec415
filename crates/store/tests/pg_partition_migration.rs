//! Migration 0005 on a database that holds events: a schema at version 4 (the migrations
//! of the time, applied by hand, with events stored through them) is opened by this build.
//! The old table becomes the DEFAULT partition without a row copied; every event reads
//! back, search by `event_id` finds it, a resend is still a duplicate (its dedup key was
//! carried over), new events are stored, and month partitions are made around now.

use pulsestream_core::{EventId, NewEvent, TenantId};
use pulsestream_store::postgres::{PostgresConfig, PostgresStore};
use pulsestream_store::{AppendBatch, AppendStatus, EventStore, SearchQuery};
use time::OffsetDateTime;

const BEFORE: [&str; 4] = [
    include_str!("../src/postgres/migrations/0001_init.sql"),
    include_str!("../src/postgres/migrations/0002_ordered_delivery.sql"),
    include_str!("../src/postgres/migrations/0003_activity.sql"),
    include_str!("../src/postgres/migrations/0004_erasure.sql"),
];

#[tokio::test]
async fn a_version_4_schema_with_events_is_partitioned_in_place() {
    let base = std::env::var("PULSESTREAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|err| panic!("PostgreSQL at {base} is needed: {err}"));
    tokio::spawn(connection);
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
                 VALUES (1, 'init'), (2, 'ordered delivery'), (3, 'activity'), (4, 'erasure');",
        )
        .await
        .unwrap();
    // Events as version 4 stored them, a week apart, ids starting with their timestamps.
    let tenant = TenantId::random();
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for n in 0..20i64 {
        let at = now - time::Duration::days(7 * n);
        let micros = (at.unix_timestamp_nanos() / 1_000) as i64;
        let id = EventId::from_parts(micros, n as u64 + 1);
        let event = NewEvent::from_json(&format!(
            r#"{{"event_id":"old-{n}","event_type":"t","timestamp":"{}","payload":{{"n":{n}}}}}"#,
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        ))
        .unwrap();
        let body = format!(
            r#"{{"id":"{id}","event_id":"old-{n}","event_type":"t","source":null,"timestamp":"{}","received_at":"{}","payload":{{"n":{n}}}}}"#,
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
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
        ids.push((id, event));
    }

    let url = format!(
        "{base}{}options=-csearch_path%3D{schema}",
        if base.contains('?') { '&' } else { '?' }
    );
    let store = PostgresStore::connect(&PostgresConfig::new(url))
        .await
        .expect("this build opens and migrates the version 4 schema");
    let version: i32 = client
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    // The old table is the DEFAULT partition; opening the store made the month partitions
    // around now and moved their months' rows into them; the older ones stay where they were.
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("events").await, 20);
    let in_default = count("events_default").await;
    assert!(
        (1..20).contains(&in_default),
        "{in_default} rows left in the DEFAULT partition"
    );

    for (n, (id, event)) in ids.iter().enumerate() {
        let stored = store.event(tenant, *id).await.unwrap();
        assert!(stored.is_some(), "event {n} reads back");
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

    // The partitions around now were made when the store opened; a new event lands in
    // this month's.
    let partitions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 6, "five months and the DEFAULT partition");
    let pass = store.maintain_partitions(None).await.unwrap();
    assert_eq!(pass.created, 0, "{pass:?}");
    let new = NewEvent::from_json(r#"{"event_id":"new","event_type":"t"}"#).unwrap();
    let stored = store
        .append_batch(AppendBatch {
            tenant,
            events: vec![new],
            received_at: OffsetDateTime::now_utc(),
            idempotency: None,
        })
        .await
        .unwrap();
    assert!(matches!(stored.statuses[0], AppendStatus::Accepted(_)));
    let table = format!("events_y{:04}m{:02}", now.year(), u8::from(now.month()));
    let in_month: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    // This month's old events moved in with it, and the new one.
    assert!(in_month >= 2, "{in_month} in {table}");
    let total: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 21);
    store.close().await.unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
