//! Retention: events older (by `timestamp`) than their tenant's `retention_days` disappear
//! from reads, search, export and storage, their queued deliveries and dead letters with
//! them; their `event_id`s may be stored again (retention is the dedup horizon).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::delivery::{create_destination, destination};
use crate::harness::{ADMIN_TOKEN, TestApp, TestTenant, body};
use crate::receiver::{Behaviour, Receiver};

const PATIENCE: Duration = Duration::from_secs(30);

/// The moment the test's events are dated from, so that a resend is the same event.
fn base() -> OffsetDateTime {
    static BASE: std::sync::OnceLock<OffsetDateTime> = std::sync::OnceLock::new();
    *BASE.get_or_init(OffsetDateTime::now_utc)
}

fn aged(event_id: &str, days: i64) -> Value {
    let timestamp = (base() - time::Duration::days(days))
        .format(&Rfc3339)
        .unwrap();
    json!({"event_id": event_id, "event_type": "kept", "timestamp": timestamp,
           "payload": {"marker": format!("retention-{event_id}")}})
}

/// Stores `n` events dated `days` ago; returns the server's id of the first.
async fn store(app: &TestApp, tenant: &TestTenant, prefix: &str, days: i64, n: usize) -> String {
    let events: Vec<Value> = (0..n)
        .map(|i| aged(&format!("{prefix}-{i}"), days))
        .collect();
    let response = app.post_batch(tenant, &events).await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn patch(app: &TestApp, tenant: &TestTenant, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/admin/tenants/{}", tenant.id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_their_retention_go_and_their_event_ids_may_come_back() {
    let app = TestApp::spawn_with(|config| {
        config.retention_check_secs = 1;
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 20;
    })
    .await;
    let tenant = app
        .create_tenant_with(json!({"name": "short", "rate_limit_per_minute": 100000,
                                   "burst": 10000, "retention_days": 2}))
        .await;
    let forever = app.create_tenant().await; // the server's default: 0, keep forever
    // A destination that never takes anything: old events wait in its queue.
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 100}),
    )
    .await;
    let destination_id = created["id"].as_str().unwrap().to_owned();
    // The id from the answer: a search could come after the old events already went.
    let old_id = store(&app, &tenant, "old", 3, 10).await;
    store(&app, &tenant, "recent", 1, 10).await;
    store(&app, &forever, "old", 3, 10).await;
    let view = body(
        app.client
            .get(app.url(&format!("/admin/tenants/{}", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(view["retention_days"], 2);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.count_events(&tenant, "event_type=kept").await != 10 {
        assert!(tokio::time::Instant::now() < deadline, "the old events go");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.get_event(&tenant, &old_id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.count_events(&tenant, "q=retention-old-3").await, 0);
    let export = app
        .client
        .get(app.url("/v1/events/export"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(export.lines().count(), 10);
    assert!(!export.contains("retention-old"));
    assert_eq!(
        app.count_events(&forever, "event_type=kept").await,
        10,
        "another tenant's retention is its own"
    );

    // The dedup horizon: inside retention a resend is a duplicate; past it, a new event.
    let recent = app.post_event(&tenant, &aged("recent-0", 1)).await;
    assert_eq!(recent.status(), StatusCode::OK);
    assert_eq!(body(recent).await["status"], "duplicate");
    let again = app.post_event(&tenant, &aged("old-0", 1)).await;
    assert_eq!(again.status(), StatusCode::CREATED, "stored again");

    // The expired events' queued deliveries are dropped, not delivered.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let view = destination(&app, &tenant, &destination_id).await;
        if view["pending"] == 11 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Forever, and a retention that is a typo.
    let kept = patch(&app, &tenant, json!({"retention_days": 0})).await;
    assert_eq!(body(kept).await["retention_days"], 0);
    let typo = patch(&app, &tenant, json!({"retention_days": 40000})).await;
    assert_eq!(typo.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body(typo).await["errors"][0]["loc"],
        json!(["body", "retention_days"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_events_tombstone_expires_with_the_events_of_its_time() {
    let app = TestApp::spawn_with(|config| config.retention_check_secs = 1).await;
    // Kept forever at first, so the event is there to erase.
    let tenant = app
        .create_tenant_with(json!({"name": "erased", "rate_limit_per_minute": 100000,
                                   "burst": 10000, "retention_days": 0}))
        .await;
    store(&app, &tenant, "gone", 3, 1).await;
    let erased = app
        .client
        .post(app.url("/v1/events/erase"))
        .bearer_auth(&tenant.api_key)
        .json(&json!({"filter": {"event_id": "gone-0"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(body(erased).await["erased"], 1);
    // Inside the retention the tombstone holds: the same event is a duplicate, not stored.
    let resent = app.post_event(&tenant, &aged("gone-0", 3)).await;
    assert_eq!(body(resent).await["status"], "duplicate");
    assert_eq!(app.count_events(&tenant, "event_id=gone-0").await, 0);

    // Once retention passes the event's time, the tombstone goes and the event_id is free.
    assert_eq!(
        patch(&app, &tenant, json!({"retention_days": 2}))
            .await
            .status(),
        StatusCode::OK
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let again = app.post_event(&tenant, &aged("gone-0", 1)).await;
        if again.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(
            again.status(),
            StatusCode::CONFLICT,
            "the tombstone, until it expires"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tombstone never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.count_events(&tenant, "event_id=gone-0").await, 1);
}
