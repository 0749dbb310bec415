//! Retention on PostgreSQL drops whole partitions of `events`: the server makes the month
//! partitions around now, and once every tenant's retention has passed a partition, it goes
//! with its events' dedup keys and queue entries (`postgres/partitions.rs`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::delivery::create_destination;
use crate::harness::{ADMIN_TOKEN, TestApp, TestTenant, body, metric_sum};
use crate::receiver::{Behaviour, Receiver};

const PATIENCE: Duration = Duration::from_secs(30);

async fn sql(app: &TestApp) -> tokio_postgres::Client {
    let url = app.store().database_url.clone().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The partitions of `events` in the test's schema, by table name.
async fn partitions(app: &TestApp) -> Vec<String> {
    let rows = sql(app)
        .await
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'events'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

async fn rows_in(app: &TestApp, table: &str) -> i64 {
    sql(app)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn table_of(at: OffsetDateTime) -> String {
    format!("events_y{:04}m{:02}", at.year(), u8::from(at.month()))
}

fn dated(event_id: &str, at: OffsetDateTime) -> Value {
    json!({"event_id": event_id, "event_type": "dated", "timestamp": at.format(&Rfc3339).unwrap(),
           "payload": {"marker": event_id}})
}

async fn store(app: &TestApp, tenant: &TestTenant, prefix: &str, at: OffsetDateTime, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| dated(&format!("{prefix}-{i}"), at))
        .collect();
    assert_eq!(
        app.post_batch(tenant, &events).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_partitions_once_every_tenant_is_past_them() {
    // The server keeps events forever unless a tenant says otherwise: nothing is dropped
    // until the tenant's retention is set, after its events are in place.
    let app = TestApp::spawn_with(|config| {
        config.retention_check_secs = 1;
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 60_000;
    })
    .await;
    let now = OffsetDateTime::now_utc();
    // A new schema: `events_before` ends two months back; the month partitions from there
    // to two months ahead; the DEFAULT partition.
    let made = partitions(&app).await;
    assert_eq!(made.len(), 7, "{made:?}");
    for table in ["events_before", "events_default"] {
        assert!(made.contains(&table.to_owned()), "{made:?}");
    }
    assert!(made.contains(&table_of(now)), "{made:?}");
    assert!(
        made.contains(&table_of(now + time::Duration::days(40))),
        "{made:?}"
    );

    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 100}),
    )
    .await;
    let destination_id = created["id"].as_str().unwrap().to_owned();
    // 45 days old: in a month partition that ended at least 14 days ago, past a 7-day
    // retention. From 2001: `events_before`.
    let old = now - time::Duration::days(45);
    let old_table = table_of(old);
    assert!(made.contains(&old_table), "{made:?}");
    store(&app, &tenant, "old", old, 30).await;
    store(
        &app,
        &tenant,
        "ancient",
        now - time::Duration::days(9_000),
        5,
    )
    .await;
    store(&app, &tenant, "recent", now - time::Duration::days(1), 10).await;
    assert_eq!(rows_in(&app, &old_table).await, 30);
    assert_eq!(rows_in(&app, "events_before").await, 5);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(rows_in(&app, &old_table).await, 30, "kept while forever");

    let patched = app
        .client
        .patch(app.url(&format!("/admin/tenants/{}", tenant.id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"retention_days": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = app.count_events(&tenant, "event_type=dated").await;
        let tables = partitions(&app).await;
        if left == 10
            && !tables.contains(&old_table)
            && !tables.iter().any(|t| t == "events_before")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} events left; partitions {tables:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Gone whole, not row by row: the metric counts the partitions.
    let metrics = app.metrics().await;
    assert!(
        metric_sum(&metrics, "pulsestream_partitions_dropped_total", &[]) >= 2.0,
        "{metrics}"
    );
    // The dropped months are not made again; this month's stays.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let tables = partitions(&app).await;
    assert!(!tables.contains(&old_table), "{tables:?}");
    assert!(tables.contains(&table_of(now)), "{tables:?}");
    assert_eq!(app.count_events(&tenant, "q=old-3").await, 0);
    assert_eq!(app.count_events(&tenant, "event_id=old-3").await, 0);
    assert_eq!(app.count_events(&tenant, "event_id=ancient-3").await, 0);
    assert_eq!(app.count_events(&tenant, "event_id=recent-3").await, 1);

    // Their dedup keys went with them: the event_ids may be stored again (a late event of a
    // dropped month goes to the DEFAULT partition); a recent one is still a duplicate.
    let again = app.post_event(&tenant, &dated("old-0", old)).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let recent = app
        .post_event(&tenant, &dated("recent-0", now - time::Duration::days(1)))
        .await;
    assert_eq!(body(recent).await["status"], "duplicate");
    // Their queued deliveries went too: the 10 recent events wait, and nothing else (the one
    // stored again is past retention, and goes row by row within the second).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let queued = app.queue_entries(&tenant, &destination_id).await;
        let stored = rows_in(&app, "event_keys").await;
        if queued == 10 && stored == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queued} queued, {stored} keys"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_keeps_its_events_forever_keeps_every_partition() {
    let app = TestApp::spawn_with(|config| {
        config.retention_days = 7;
        config.retention_check_secs = 1;
    })
    .await;
    let now = OffsetDateTime::now_utc();
    let short = app.create_tenant().await;
    let forever = app
        .create_tenant_with(json!({"name": "forever", "rate_limit_per_minute": 100000,
                                   "burst": 10000, "retention_days": 0}))
        .await;
    let old = now - time::Duration::days(45);
    store(&app, &short, "old", old, 10).await;
    store(&app, &forever, "old", old, 10).await;
    // The short tenant's old events go row by row; the partition stays for the other's.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.count_events(&short, "event_type=dated").await != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.count_events(&forever, "event_type=dated").await, 10);
    assert_eq!(rows_in(&app, &table_of(old)).await, 10);
    assert_eq!(partitions(&app).await.len(), 7);
}
