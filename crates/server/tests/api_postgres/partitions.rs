//! Retention on PostgreSQL drops whole month partitions of `events`: the server makes the
//! partitions of the months around now, and once every tenant's retention has passed a
//! month, that partition goes with its events' dedup keys and queue entries; what lies
//! outside the month partitions (odd timestamps) is still deleted row by row.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::delivery::{create_destination, destination};
use crate::harness::{TestApp, TestTenant, body};
use crate::receiver::{Behaviour, Receiver};

const PATIENCE: Duration = Duration::from_secs(30);

/// The month partitions of `events` in the test's schema, by table name.
async fn partitions(app: &TestApp) -> Vec<String> {
    let url = app.store().database_url.clone().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'events'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// Rows in one table of the test's schema.
async fn rows_in(app: &TestApp, table: &str) -> i64 {
    let url = app.store().database_url.clone().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
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
async fn retention_drops_whole_month_partitions_once_every_tenant_is_past_them() {
    // The server keeps events forever unless a tenant says otherwise: nothing is dropped
    // until the tenant's retention is set, after its events are in place.
    let app = TestApp::spawn_with(|config| {
        config.retention_check_secs = 1;
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 60_000;
    })
    .await;
    let now = OffsetDateTime::now_utc();
    // The partitions of the two months before this one, this one and the two after.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while partitions(&app).await.len() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            partitions(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let made = partitions(&app).await;
    assert!(made.contains(&"events_default".to_owned()), "{made:?}");
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
    // 45 days old: in a month partition that ends at least 14 days ago, past the 7-day
    // retention of every tenant. From 2001: no month partition, the DEFAULT one.
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
    assert_eq!(
        rows_in(&app, &old_table).await,
        30,
        "the old month's events are in its partition"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        rows_in(&app, &old_table).await,
        30,
        "kept while retention is forever"
    );

    let patched = app
        .client
        .patch(app.url(&format!("/admin/tenants/{}", tenant.id)))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&json!({"retention_days": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = app.count_events(&tenant, "event_type=dated").await;
        let tables = partitions(&app).await;
        if left == 10 && !tables.contains(&old_table) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} events left; partitions {tables:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The dropped month is not made again; the others stay.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let tables = partitions(&app).await;
    assert!(!tables.contains(&old_table), "{tables:?}");
    assert!(tables.contains(&table_of(now)), "{tables:?}");
    assert_eq!(app.count_events(&tenant, "q=old-3").await, 0);
    assert_eq!(app.count_events(&tenant, "event_id=old-3").await, 0);
    assert_eq!(app.count_events(&tenant, "event_id=recent-3").await, 1);

    // Their dedup keys went with them: the event_ids may be stored again; a recent one is
    // still a duplicate.
    let again = app
        .post_event(&tenant, &dated("old-0", now - time::Duration::days(1)))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let recent = app
        .post_event(&tenant, &dated("recent-0", now - time::Duration::days(1)))
        .await;
    assert_eq!(body(recent).await["status"], "duplicate");
    // And their queued deliveries: 10 recent events and the one stored again wait.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let view = destination(&app, &tenant, &destination_id).await;
        if view["pending"] == 11 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
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
    assert!(partitions(&app).await.contains(&table_of(old)));
}
