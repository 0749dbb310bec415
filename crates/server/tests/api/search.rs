//! `GET /v1/events`: read-after-write, every filter, ordering and cursor pagination.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, TestTenant, body, event};

fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn seed(app: &TestApp, tenant: &TestTenant) {
    let events = vec![
        json!({"event_id": "e1", "event_type": "order.created", "source": "web", "timestamp": "2025-10-01T10:00:00Z",
               "payload": {"user": {"id": 42}, "note": "Gift wrap please"}}),
        json!({"event_id": "e2", "event_type": "order.paid", "source": "web", "timestamp": "2025-10-02T10:00:00Z",
               "payload": {"user": {"id": 7}, "note": "card"}}),
        json!({"event_id": "e3", "event_type": "order.created", "source": "app", "timestamp": "2025-10-03T10:00:00Z",
               "payload": {"user": {"id": "42"}, "note": "express delivery"}}),
        json!({"event_id": "e4", "event_type": "user.signup", "source": "app", "timestamp": "2025-10-04T10:00:00Z",
               "payload": {"plan": "pro"}}),
    ];
    assert_eq!(
        app.post_batch(tenant, &events).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_acknowledged_event_is_found_by_search_at_once() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    for i in 0..20 {
        let event_id = format!("consistency-{i}");
        let response = app
            .post_event(
                &tenant,
                &event(&event_id, "consistency.check", json!({"marker": event_id})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);

        assert_eq!(
            ids(&app.search(&tenant, &format!("event_id={event_id}")).await),
            vec![event_id.clone()]
        );
        assert_eq!(
            ids(&app
                .search(&tenant, "event_type=consistency.check&limit=1")
                .await),
            vec![event_id.clone()]
        );
        assert_eq!(
            ids(&app
                .search(&tenant, &format!("payload.marker={event_id}"))
                .await),
            vec![event_id.clone()]
        );
        assert_eq!(
            ids(&app.search(&tenant, &format!("q={event_id}")).await),
            vec![event_id]
        );
    }
}

#[tokio::test]
async fn filters_combine_with_and() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    seed(&app, &tenant).await;

    assert_eq!(
        ids(&app.search(&tenant, "").await),
        ["e4", "e3", "e2", "e1"]
    );
    assert_eq!(
        ids(&app.search(&tenant, "order=asc").await),
        ["e1", "e2", "e3", "e4"]
    );
    assert_eq!(
        ids(&app.search(&tenant, "event_type=order.created").await),
        ["e3", "e1"]
    );
    assert_eq!(
        ids(&app
            .search(&tenant, "event_type=order.paid&event_type=user.signup")
            .await),
        ["e4", "e2"]
    );
    assert_eq!(
        ids(&app
            .search(
                &tenant,
                "event_type=order.paid&event_type=user.signup&order=asc"
            )
            .await),
        ["e2", "e4"]
    );
    assert_eq!(ids(&app.search(&tenant, "source=web").await), ["e2", "e1"]);
    assert_eq!(
        ids(&app
            .search(&tenant, "event_type=order.created&source=app")
            .await),
        ["e3"]
    );
    assert_eq!(
        ids(&app
            .search(
                &tenant,
                "since=2025-10-02T10:00:00Z&until=2025-10-04T10:00:00Z"
            )
            .await),
        ["e3", "e2"]
    );
    assert_eq!(
        ids(&app.search(&tenant, "payload.user.id=42").await),
        ["e3", "e1"]
    );
    assert_eq!(ids(&app.search(&tenant, "payload.plan=pro").await), ["e4"]);
    assert_eq!(ids(&app.search(&tenant, "q=GIFT").await), ["e1"]);
    assert_eq!(
        ids(&app.search(&tenant, "q=delivery%20express").await),
        ["e3"]
    );
    assert_eq!(ids(&app.search(&tenant, "event_id=e2").await), ["e2"]);
    assert_eq!(
        ids(&app.search(&tenant, "event_id=e2&source=app").await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&app.search(&tenant, "event_type=nothing").await),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn cursors_walk_every_event_once_in_both_orders() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    // Many events share one timestamp: ties must still page without gaps or repeats.
    let events: Vec<Value> = (0..250)
        .map(|i| json!({"event_id": format!("p-{i:03}"), "event_type": "page", "timestamp": format!("2025-10-01T10:00:{:02}Z", i % 7)}))
        .collect();
    app.post_batch(&tenant, &events).await;

    for (order, filter) in [
        ("desc", ""),
        ("asc", ""),
        ("desc", "&event_type=page"),
        ("asc", "&event_type=page"),
    ] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = app
                .search(&tenant, &format!("limit=40&order={order}{filter}{cursor}"))
                .await;
            seen.extend(ids(&page));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 250, "{order}{filter}");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 250, "{order}{filter}: no event twice");
    }
}

#[tokio::test]
async fn bad_parameters_are_refused_with_their_names() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = app
        .search_raw(
            &tenant,
            "limit=0&since=yesterday&order=up&cursor=zzz&colour=red",
        )
        .await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = body(response).await;
    let locs: Vec<Value> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loc"][1].clone())
        .collect();
    assert_eq!(
        locs,
        [
            json!("limit"),
            json!("since"),
            json!("order"),
            json!("cursor"),
            json!("colour")
        ]
    );
    assert_eq!(
        app.search_raw(&tenant, "limit=1001").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn nul_characters_in_parameters_are_refused_not_a_server_error() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    for query in [
        "event_id=a%00b",
        "source=%00",
        "event_type=x%00",
        "payload.user.id=4%002",
        "q=lo%00ve",
    ] {
        let response = app.search_raw(&tenant, query).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        let problem = body(response).await;
        assert_eq!(problem["errors"][0]["type"], "string_invalid", "{query}");
    }
}

#[tokio::test]
async fn bounds_and_numbers_at_the_edge_of_precision_match_as_the_filters_say() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    // A number JSON keeps exactly but f64 reads as 1: `payload.x=1` compares as f64.
    let sent = app
        .post_raw(
            &tenant,
            "/v1/events",
            "application/json",
            br#"{"event_id":"edge-1","event_type":"edge","timestamp":"2025-01-01T00:00:00.000001Z","payload":{"x":1.00000000000000001,"flag":true}}"#.to_vec(),
        )
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let found = |page: Value| page["events"].as_array().unwrap().len();
    assert_eq!(found(app.search(&tenant, "payload.x=1").await), 1);
    assert_eq!(found(app.search(&tenant, "payload.flag=true").await), 1);
    assert_eq!(found(app.search(&tenant, "payload.flag=false").await), 0);
    // `until` is exclusive at any precision: half a microsecond after the event includes it.
    assert_eq!(
        found(
            app.search(&tenant, "until=2025-01-01T00:00:00.0000015Z")
                .await
        ),
        1
    );
    assert_eq!(
        found(
            app.search(&tenant, "until=2025-01-01T00:00:00.000001Z")
                .await
        ),
        0
    );
    assert_eq!(
        found(
            app.search(&tenant, "since=2025-01-01T00:00:00.000001Z")
                .await
        ),
        1
    );
    assert_eq!(
        found(
            app.search(&tenant, "since=2025-01-01T00:00:00.0000011Z")
                .await
        ),
        0
    );
}

#[tokio::test]
async fn a_page_of_large_events_is_capped_by_bytes_and_the_cursor_goes_on() {
    let app = TestApp::spawn_with(|config| config.search_max_page_bytes = 1_000_000).await;
    let tenant = app.create_tenant().await;
    let events: Vec<Value> = (0..10)
        .map(|i| {
            event(
                &format!("big-{i}"),
                "big",
                json!({"blob": "x".repeat(300_000)}),
            )
        })
        .collect();
    assert_eq!(
        app.post_batch(&tenant, &events).await.status(),
        StatusCode::OK
    );
    let mut seen = std::collections::HashSet::new();
    let mut query = "limit=1000".to_owned();
    loop {
        let response = app.search_raw(&tenant, &query).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.bytes().await.unwrap();
        assert!(bytes.len() < 1_100_000, "a body of {} bytes", bytes.len());
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        for event in page["events"].as_array().unwrap() {
            assert!(seen.insert(event["event_id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=1000&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10);
}
