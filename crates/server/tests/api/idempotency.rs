//! The `Idempotency-Key` header: replays, reuse with another body, concurrent twins.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, TestTenant, body};

async fn post_with_key(
    app: &TestApp,
    tenant: &TestTenant,
    path: &str,
    key: &str,
    sent: &Value,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(&tenant.api_key)
        .header("idempotency-key", key)
        .json(sent)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_request_without_event_id_is_replayed_not_stored_again() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent = json!({"event_type": "signup", "payload": {"plan": "pro"}});

    let first = post_with_key(&app, &tenant, "/v1/events", "retry-1", &sent).await;
    let retried = post_with_key(&app, &tenant, "/v1/events", "\"retry-1\"", &sent).await;

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(
        retried.status(),
        StatusCode::CREATED,
        "a replay repeats the first status"
    );
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(body(first).await, body(retried).await);
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test]
async fn a_replayed_batch_answers_exactly_as_the_first_time() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent = json!({"events": [{"event_type": "a"}, {"payload": {}}, {"event_type": "b"}]});

    let first = post_with_key(&app, &tenant, "/v1/events/batch", "batch-1", &sent).await;
    let retried = post_with_key(&app, &tenant, "/v1/events/batch", "batch-1", &sent).await;

    assert_eq!(first.status(), StatusCode::MULTI_STATUS);
    assert_eq!(retried.status(), StatusCode::MULTI_STATUS);
    assert_eq!(body(first).await, body(retried).await);
    assert_eq!(app.count_events(&tenant, "").await, 2);
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    post_with_key(
        &app,
        &tenant,
        "/v1/events",
        "k",
        &json!({"event_type": "a"}),
    )
    .await;

    let reused = post_with_key(
        &app,
        &tenant,
        "/v1/events",
        "k",
        &json!({"event_type": "b"}),
    )
    .await;

    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body(reused).await["type"],
        "/problems/idempotency_key_reused"
    );
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test]
async fn keys_belong_to_one_tenant() {
    let app = TestApp::spawn().await;
    let first = app.create_tenant().await;
    let second = app.create_tenant().await;
    post_with_key(
        &app,
        &first,
        "/v1/events",
        "shared",
        &json!({"event_type": "a"}),
    )
    .await;

    let other = post_with_key(
        &app,
        &second,
        "/v1/events",
        "shared",
        &json!({"event_type": "b"}),
    )
    .await;

    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_twins_store_once_and_the_others_replay_or_wait() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent = json!({"events": (0..200).map(|i| json!({"event_type": "twin", "payload": {"i": i}})).collect::<Vec<_>>()});

    let requests =
        (0..20).map(|_| post_with_key(&app, &tenant, "/v1/events/batch", "twins", &sent));
    let responses = futures::future::join_all(requests).await;

    let mut fresh = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK if response.headers().get("idempotent-replayed").is_some() => {}
            StatusCode::OK => fresh += 1,
            StatusCode::CONFLICT => assert_eq!(
                body(response).await["type"],
                "/problems/idempotency_in_flight"
            ),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(app.count_events(&tenant, "").await, 200);
}

#[tokio::test]
async fn malformed_keys_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = post_with_key(
        &app,
        &tenant,
        "/v1/events",
        &"k".repeat(256),
        &json!({"event_type": "a"}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.count_events(&tenant, "").await, 0);
}
