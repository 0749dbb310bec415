//! `POST /v1/events` and `GET /v1/events/{id}`: the report's ingestion and duplicate scenarios.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestApp, body, event};

#[tokio::test]
async fn an_event_is_stored_and_readable_at_its_location() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = app
        .post_event(
            &tenant,
            &event("order-1", "order.created", json!({"total": 99.5})),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer = body(response).await;
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["event_id"], "order-1");
    assert_eq!(
        location,
        format!("/v1/events/{}", answer["id"].as_str().unwrap())
    );
    let stored = body(
        app.client
            .get(app.url(&location))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stored["id"], answer["id"]);
    assert_eq!(stored["event_type"], "order.created");
    assert_eq!(stored["source"], "checkout");
    assert_eq!(stored["payload"], json!({"total": 99.5}));
    assert!(stored["received_at"].is_string());
    assert!(stored["timestamp"].is_string());
}

#[tokio::test]
async fn an_event_without_event_id_gets_one_from_the_server() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = app
        .post_event(&tenant, &json!({"event_type": "page.viewed"}))
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let answer = body(response).await;
    assert_eq!(answer["event_id"], answer["id"]);
    let stored = body(app.get_event(&tenant, answer["id"].as_str().unwrap()).await).await;
    assert_eq!(stored["payload"], json!({}));
}

#[tokio::test]
async fn the_same_event_sent_twice_is_stored_once() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent = event("dup-1", "order.created", json!({"total": 5}));

    let first = app.post_event(&tenant, &sent).await;
    let second = app.post_event(&tenant, &sent).await;

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(second.status(), StatusCode::OK);
    let (first, second) = (body(first).await, body(second).await);
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(app.count_events(&tenant, "event_id=dup-1").await, 1);
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test]
async fn a_retry_with_reordered_keys_and_another_offset_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let first = json!({"event_id": "e", "event_type": "t", "timestamp": "2025-10-02T12:00:00Z", "payload": {"a": 1, "b": [1, 2]}});
    app.post_event(&tenant, &first).await;

    let retry = br#"{"payload": {"b": [1, 2],  "a": 1}, "timestamp": "2025-10-02T14:00:00+02:00", "event_type": "t", "event_id": "e"}"#;
    let response = app
        .post_raw(&tenant, "/v1/events", "application/json", retry.to_vec())
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await["status"], "duplicate");
}

#[tokio::test]
async fn a_retry_with_nanosecond_timestamp_and_reordered_payload_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let first = br#"{"event_id":"ns","event_type":"t","timestamp":"2025-10-02T12:00:00.1234567Z","payload":{"x":1,"y":2}}"#;
    let retry = br#"{"event_id":"ns","event_type":"t","timestamp":"2025-10-02T12:00:00.1234567Z","payload":{"y":2,"x":1}}"#;

    app.post_raw(&tenant, "/v1/events", "application/json", first.to_vec())
        .await;
    let response = app
        .post_raw(&tenant, "/v1/events", "application/json", retry.to_vec())
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await["status"], "duplicate");
}

#[tokio::test]
async fn the_same_event_id_with_other_content_is_a_conflict() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let original = body(
        app.post_event(&tenant, &event("c-1", "order.created", json!({"total": 5})))
            .await,
    )
    .await;

    let response = app
        .post_event(&tenant, &event("c-1", "order.created", json!({"total": 6})))
        .await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem = body(response).await;
    assert_eq!(problem["existing_id"], original["id"]);
    assert_eq!(problem["status"], 409);
    let stored = body(
        app.get_event(&tenant, original["id"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(stored["payload"], json!({"total": 5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_requests_store_one_event() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent = event("race-1", "order.created", json!({"total": 1}));

    let requests = (0..50).map(|_| app.post_event(&tenant, &sent));
    let responses = futures::future::join_all(requests).await;

    let statuses: Vec<StatusCode> = responses.iter().map(|response| response.status()).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        49,
        "{statuses:?}"
    );
    let mut ids = Vec::new();
    for response in responses {
        ids.push(body(response).await["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the one stored event");
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_distinct_events_are_all_stored() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let requests = (0..100).map(|i| {
        let app = &app;
        let tenant = &tenant;
        async move {
            app.post_event(
                tenant,
                &event(&format!("load-{i}"), "load.test", json!({"i": i})),
            )
            .await
            .status()
        }
    });
    let statuses = futures::future::join_all(requests).await;

    assert!(
        statuses.iter().all(|status| *status == StatusCode::CREATED),
        "{statuses:?}"
    );
    assert_eq!(app.count_events(&tenant, "event_type=load.test").await, 100);
}

#[tokio::test]
async fn a_tenant_cannot_see_another_tenants_events() {
    let app = TestApp::spawn().await;
    let owner = app.create_tenant().await;
    let other = app.create_tenant().await;
    let stored = body(
        app.post_event(&owner, &event("secret-1", "order.created", json!({})))
            .await,
    )
    .await;
    let id = stored["id"].as_str().unwrap();

    assert_eq!(
        app.get_event(&other, id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.count_events(&other, "").await, 0);
    assert_eq!(app.count_events(&other, "event_id=secret-1").await, 0);
    let same_id = app
        .post_event(&other, &event("secret-1", "order.created", json!({"x": 1})))
        .await;
    assert_eq!(
        same_id.status(),
        StatusCode::CREATED,
        "event ids are unique per tenant, not globally"
    );
}

#[tokio::test]
async fn validation_errors_name_every_field() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = app
        .post_event(
            &tenant,
            &json!({"event_id": "", "source": 5, "payload": [1]}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = body(response).await;
    let locs: Vec<String> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loc"].to_string())
        .collect();
    assert_eq!(
        locs,
        vec![
            r#"["body","event_id"]"#,
            r#"["body","event_type"]"#,
            r#"["body","source"]"#,
            r#"["body","payload"]"#
        ]
    );
    assert_eq!(problem["errors"][1]["type"], "missing");
    assert_eq!(app.count_events(&tenant, "").await, 0);
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    assert_eq!(
        app.get_event(&tenant, "not-an-id").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get_event(&tenant, "00000000-0000-0000-0000-000000000000")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}
