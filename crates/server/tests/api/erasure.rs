//! Erasure (`POST /v1/events/erase`, `GET /v1/erasures`): the events a filter finds leave
//! reads, search, export, queued deliveries and dead letters; their `event_id`s keep a
//! tombstone (a resend is a `duplicate`, nothing is stored again); every erasure is in the
//! tenant's audit log; bad filters are refused before anything is erased.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::delivery::{create_destination, destination};
use crate::harness::{TestApp, TestTenant, body, tenant_cli};
use crate::receiver::{Behaviour, Receiver};

const PATIENCE: Duration = Duration::from_secs(30);

async fn erase(app: &TestApp, tenant: &TestTenant, request: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/events/erase"))
        .bearer_auth(&tenant.api_key)
        .json(&request)
        .send()
        .await
        .unwrap()
}

async fn erasures(app: &TestApp, tenant: &TestTenant, query: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/v1/erasures?{query}")))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await
}

fn user_event(n: usize, user: &str) -> Value {
    json!({"event_id": format!("{user}-{n}"), "event_type": "page.viewed",
           "timestamp": "2026-11-30T10:00:00Z",
           "payload": {"user_id": user, "email": format!("{user}@example.com"), "n": n}})
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> Option<Value>) {
    crate::receiver::wait_for(what, PATIENCE, async || match done().await {
        None => Ok(()),
        Some(seen) => Err(format!("still {seen}")),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_removes_the_matching_events_everywhere_and_keeps_tombstones() {
    let app = TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 20;
    })
    .await;
    let tenant = app.create_tenant().await;
    let other = app.create_tenant().await;
    // One destination dead-letters everything at once, one keeps everything pending.
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let dead = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 1}),
    )
    .await;
    let dead = dead["id"].as_str().unwrap().to_owned();
    let pending = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 100}),
    )
    .await;
    let pending = pending["id"].as_str().unwrap().to_owned();

    let mut events: Vec<Value> = (0..6).map(|n| user_event(n, "u1")).collect();
    events.extend((0..4).map(|n| user_event(n, "u2")));
    assert_eq!(
        app.post_batch(&tenant, &events).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.post_event(&other, &user_event(0, "u1")).await.status(),
        StatusCode::CREATED
    );
    let erased_id = app.search(&tenant, "event_id=u1-0").await["events"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dead_letters = |app: &TestApp, tenant: &TestTenant, id: String| {
        let request = app
            .client
            .get(app.url(&format!("/v1/destinations/{id}/dead-letters")))
            .bearer_auth(&tenant.api_key);
        async move { body(request.send().await.unwrap()).await["dead_letters"].clone() }
    };
    wait_for("every event dead-lettered", async || {
        let letters = dead_letters(&app, &tenant, dead.clone()).await;
        (letters.as_array().unwrap().len() != 10).then_some(letters)
    })
    .await;

    // A dry run counts and changes nothing.
    let dry = erase(
        &app,
        &tenant,
        json!({"filter": {"payload.user_id": "u1"}, "dry_run": true}),
    )
    .await;
    assert_eq!(dry.status(), StatusCode::OK);
    assert_eq!(body(dry).await["matching"], 6);
    assert_eq!(app.count_events(&tenant, "payload.user_id=u1").await, 6);
    assert_eq!(erasures(&app, &tenant, "").await["erasures"], json!([]));

    let response = erase(&app, &tenant, json!({"filter": {"payload.user_id": "u1"}})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = body(response).await;
    assert_eq!(first["erased"], 6, "{first}");
    assert_eq!(first["filter"], json!({"payload.user_id": "u1"}));

    // Gone from search (every filter kind), reads and export; the rest is untouched.
    assert_eq!(app.count_events(&tenant, "payload.user_id=u1").await, 0);
    assert_eq!(app.count_events(&tenant, "q=u1@example.com").await, 0);
    assert_eq!(app.count_events(&tenant, "event_id=u1-3").await, 0);
    assert_eq!(app.count_events(&tenant, "event_type=page.viewed").await, 4);
    assert_eq!(
        app.get_event(&tenant, &erased_id).await.status(),
        StatusCode::NOT_FOUND
    );
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
    assert_eq!(export.lines().count(), 4);
    assert!(!export.contains("u1@example.com"));
    assert_eq!(
        app.count_events(&other, "payload.user_id=u1").await,
        1,
        "another tenant's events are its own"
    );

    // Dead letters go with the events; queued deliveries are never made.
    let letters = dead_letters(&app, &tenant, dead.clone()).await;
    assert_eq!(letters.as_array().unwrap().len(), 4, "{letters}");
    wait_for("the erased events' deliveries dropped", async || {
        let view = destination(&app, &tenant, &pending).await;
        (view["pending"] != 4).then_some(view)
    })
    .await;

    // A resend of an erased event is a duplicate: the data does not come back.
    let again = app.post_event(&tenant, &user_event(0, "u1")).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again = body(again).await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["id"], erased_id);
    let batch = app.post_batch(&tenant, &[user_event(1, "u1")]).await;
    assert_eq!(body(batch).await["results"][0]["status"], "duplicate");
    assert_eq!(app.count_events(&tenant, "payload.user_id=u1").await, 0);
    assert_eq!(
        app.get_event(&tenant, &erased_id).await.status(),
        StatusCode::NOT_FOUND
    );

    // By event_id; the same filter again erases nothing more.
    let second = body(erase(&app, &tenant, json!({"filter": {"event_id": "u2-3"}})).await).await;
    assert_eq!(second["erased"], 1);
    let nothing = body(erase(&app, &tenant, json!({"filter": {"event_id": "u2-3"}})).await).await;
    assert_eq!(nothing["erased"], 0);
    // Typed payload values and lists: numbers compare by value, a list is any-of for types.
    let typed = body(
        erase(
            &app,
            &tenant,
            json!({"filter": {"payload.n": 2, "event_type": ["page.viewed", "other"]}}),
        )
        .await,
    )
    .await;
    assert_eq!(typed["erased"], 1, "{typed}");
    assert_eq!(app.count_events(&tenant, "event_type=page.viewed").await, 2);

    // The audit log: newest first, who, when, what, how many; paged; per tenant.
    let log = erasures(&app, &tenant, "").await;
    let entries = log["erasures"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{log}");
    assert_eq!(entries[3]["id"], first["id"]);
    assert_eq!(entries[2]["erased"], 1);
    assert_eq!(entries[2]["filter"], json!({"event_id": "u2-3"}));
    let prefix = entries[0]["requested_by"]["key_prefix"].as_str().unwrap();
    assert!(
        !prefix.is_empty() && tenant.api_key.starts_with(prefix),
        "{log}"
    );
    assert!(
        entries[0]["requested_at"].as_str().unwrap() <= entries[0]["finished_at"].as_str().unwrap()
    );
    let page = erasures(&app, &tenant, "limit=3").await;
    assert_eq!(page["erasures"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = erasures(&app, &tenant, &format!("limit=3&cursor={cursor}")).await;
    assert_eq!(rest["erasures"][0]["id"], first["id"]);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert_eq!(erasures(&app, &other, "").await["erasures"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_erasure_requests_are_refused_before_anything_is_erased() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let events: Vec<Value> = (0..3).map(|n| user_event(n, "u1")).collect();
    assert_eq!(
        app.post_batch(&tenant, &events).await.status(),
        StatusCode::OK
    );
    for (request, loc) in [
        (json!({"filter": {}}), json!(["body", "filter"])),
        (
            json!({"filter": {"limit": "5"}}),
            json!(["body", "filter", "limit"]),
        ),
        (
            json!({"filter": {"payload.user": {"id": 1}}}),
            json!(["body", "filter", "payload.user"]),
        ),
        (
            json!({"filter": {"since": "yesterday"}}),
            json!(["body", "filter", "since"]),
        ),
        (
            json!({"filter": {"colour": "red"}}),
            json!(["body", "filter", "colour"]),
        ),
        (
            json!({"filter": {"source": 5}}),
            json!(["body", "filter", "source"]),
        ),
    ] {
        let response = erase(&app, &tenant, request.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}"
        );
        let problem = body(response).await;
        assert_eq!(problem["errors"][0]["loc"], loc, "{request}: {problem}");
    }
    let unknown = erase(
        &app,
        &tenant,
        json!({"filter": {"event_id": "u1-0"}, "all": true}),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let not_json = app
        .post_raw(
            &tenant,
            "/v1/events/erase",
            "application/json",
            b"{".to_vec(),
        )
        .await;
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let cursor = app
        .client
        .get(app.url("/v1/erasures?cursor=nope"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(cursor.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.count_events(&tenant, "payload.user_id=u1").await, 3);
    assert_eq!(erasures(&app, &tenant, "").await["erasures"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_counts_first_and_erases_with_yes() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let events: Vec<Value> = (0..5).map(|n| user_event(n, "u7")).collect();
    assert_eq!(
        app.post_batch(&tenant, &events).await.status(),
        StatusCode::OK
    );

    let dry = tenant_cli(
        &app,
        &tenant,
        &["events", "erase", "--payload", "user_id=u7"],
        "",
    )
    .await
    .ok();
    assert_eq!(
        dry.stdout,
        "5 events match; nothing was erased (run again with --yes to erase them)\n"
    );
    assert_eq!(app.count_events(&tenant, "payload.user_id=u7").await, 5);
    let none = tenant_cli(&app, &tenant, &["events", "erase"], "")
        .await
        .failed();
    assert!(
        none.stderr.contains("name at least one filter"),
        "{}",
        none.stderr
    );

    let real = tenant_cli(
        &app,
        &tenant,
        &[
            "events",
            "erase",
            "--payload",
            "user_id=u7",
            "--type",
            "page.viewed",
            "--yes",
        ],
        "",
    )
    .await
    .ok();
    assert!(real.stdout.starts_with("erased    5\n"), "{}", real.stdout);
    assert_eq!(app.count_events(&tenant, "payload.user_id=u7").await, 0);

    let log = tenant_cli(&app, &tenant, &["events", "erasures"], "")
        .await
        .ok();
    let lines: Vec<&str> = log.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", log.stdout);
    assert!(lines[0].starts_with("ID "), "{}", log.stdout);
    assert!(
        lines[1].contains(r#"{"event_type":"page.viewed","payload.user_id":"u7"}"#),
        "{}",
        log.stdout
    );
}
