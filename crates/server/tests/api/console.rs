//! What the console is built on, through the API: the live tail (SSE), delivery attempts,
//! pause and resume, test sends, per-minute stats, and the console's own pages.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::delivery::{create_destination, delivering_app};
use crate::harness::{TestApp, TestTenant, body, event};
use crate::receiver::{Behaviour, Receiver, wait_until};

const PATIENCE: Duration = Duration::from_secs(20);

/// One server-sent event.
#[derive(Debug, Clone, Default)]
struct Sse {
    id: Option<String>,
    event: String,
    data: String,
}

/// Reads a live tail through reqwest, event by event.
struct Tail {
    response: reqwest::Response,
    buffer: String,
}

impl Tail {
    async fn open(app: &TestApp, tenant: &TestTenant, query: &str, last: Option<&str>) -> Self {
        let mut request = app
            .client
            .get(app.url(&format!("/v1/events/stream?{query}")))
            .bearer_auth(&tenant.api_key);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut tail = Self {
            response,
            buffer: String::new(),
        };
        let ready = tail.next().await.expect("a ready event");
        assert_eq!(ready.event, "ready");
        tail
    }

    /// The next event (comments skipped), or `None` when the stream ends or stays quiet
    /// for the patience.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        sse.id = Some(value.trim_start().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        sse.event = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    }
                }
                if sse.event.is_empty() && data.is_empty() {
                    continue; // a heartbeat comment
                }
                sse.data = data.join("\n");
                return Some(sse);
            }
            match tokio::time::timeout(PATIENCE, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    async fn next_event(&mut self) -> (String, Value) {
        let sse = self.next().await.expect("an event on the tail");
        assert_eq!(sse.event, "event", "{sse:?}");
        (
            sse.id.expect("an id"),
            serde_json::from_str(&sse.data).unwrap(),
        )
    }
}

/// `GET url` as the tenant; the JSON body.
async fn get_json(app: &TestApp, tenant: &TestTenant, url: impl reqwest::IntoUrl) -> Value {
    body(
        app.client
            .get(url)
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_shows_new_events_and_resumes_without_gaps_or_repeats() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    // Stored before the tail opened: not on it.
    app.post_event(&tenant, &event("old", "order.created", json!({})))
        .await;
    let mut tail = Tail::open(&app, &tenant, "", None).await;
    for n in 0..3 {
        let response = app
            .post_event(
                &tenant,
                &event(&format!("o-{n}"), "order.created", json!({"n": n})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let mut last = String::new();
    for n in 0..3 {
        let (id, event) = tail.next_event().await;
        assert_eq!(event["event_id"], format!("o-{n}"));
        assert_eq!(event["payload"]["n"], n);
        last = id;
    }
    drop(tail);
    // Gone for a while: what was stored meanwhile comes on resume, once.
    app.post_batch(
        &tenant,
        &[
            event("o-3", "order.created", json!({})),
            event("o-4", "order.created", json!({})),
        ],
    )
    .await;
    // A retry: not stored again, but shown again, marked.
    app.post_event(&tenant, &event("o-3", "order.created", json!({})))
        .await;
    let mut tail = Tail::open(&app, &tenant, "", Some(&last)).await;
    let (_, third) = tail.next_event().await;
    let (_, fourth) = tail.next_event().await;
    let mut got = vec![third["event_id"].clone(), fourth["event_id"].clone()];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, vec![json!("o-3"), json!("o-4")]);
    let retry = tail.next().await.expect("the retry");
    assert_eq!(retry.event, "duplicate", "{retry:?}");
    let repeated: Value = serde_json::from_str(&retry.data).unwrap();
    assert_eq!(repeated["event_id"], "o-3");
    let retry_id = retry.id.unwrap();
    app.post_event(&tenant, &event("o-5", "order.created", json!({})))
        .await;
    let (_, fifth) = tail.next_event().await;
    assert_eq!(fifth["event_id"], "o-5");
    drop(tail);
    // Resuming from the retry's own id goes on after it.
    let mut tail = Tail::open(&app, &tenant, "", Some(&retry_id)).await;
    let (_, again) = tail.next_event().await;
    assert_eq!(again["event_id"], "o-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_filters_and_keeps_tenants_apart() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let other = app.create_tenant().await;
    let mut tail = Tail::open(
        &app,
        &tenant,
        "event_type=order.created&payload.region=eu&q=blue",
        None,
    )
    .await;
    app.post_event(
        &other,
        &event("x", "order.created", json!({"region": "eu", "c": "blue"})),
    )
    .await;
    app.post_event(
        &tenant,
        &event("a", "user.signup", json!({"region": "eu", "c": "blue"})),
    )
    .await;
    app.post_event(
        &tenant,
        &event("b", "order.created", json!({"region": "us", "c": "blue"})),
    )
    .await;
    app.post_event(
        &tenant,
        &event("c", "order.created", json!({"region": "eu", "c": "red"})),
    )
    .await;
    app.post_event(
        &tenant,
        &event("d", "order.created", json!({"region": "eu", "c": "Blue"})),
    )
    .await;
    let (_, only) = tail.next_event().await;
    assert_eq!(only["event_id"], "d");

    // Parameters the stream does not take, and ids that are not its own.
    for (query, last, loc) in [
        ("limit=5", None, json!(["query", "limit"])),
        ("cursor=abc", None, json!(["query", "cursor"])),
        ("", Some("not-an-id"), json!(["header", "Last-Event-ID"])),
        ("last_event_id=zz", None, json!(["query", "last_event_id"])),
    ] {
        let mut request = app
            .client
            .get(app.url(&format!("/v1/events/stream?{query}")))
            .bearer_auth(&tenant.api_key);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        assert_eq!(body(response).await["errors"][0]["loc"], loc, "{query}");
    }
    let response = app
        .client
        .get(app.url("/v1/events/stream"))
        .bearer_auth("ps_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A tenant's live tails are bounded (32 per node); a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tails_are_bounded_per_tenant_and_free_their_place_when_closed() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let other = app.create_tenant().await;
    let mut open = Vec::new();
    for _ in 0..32 {
        open.push(Tail::open(&app, &tenant, "", None).await);
    }
    let refused = app
        .client
        .get(app.url("/v1/events/stream"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        body(refused).await["detail"]
            .as_str()
            .unwrap()
            .contains("too many live tails")
    );
    // Another tenant is not held up by this one.
    Tail::open(&app, &other, "", None).await;
    // Closing one frees its place once its reader notices (within a poll).
    open.pop();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = app
            .client
            .get(app.url("/v1/events/stream"))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reader that stops reading is cut with a final event once its buffer stays full;
/// ingest goes on meanwhile, and a resume from the cut's id gets every event left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_and_can_resume_where_it_was_cut() {
    let app = TestApp::spawn_with(|config| config.tail_buffer_events = 4).await;
    let tenant = app.create_tenant().await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /v1/events/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        tenant.api_key
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // Let the stream start before the events come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 400 events of 64 KB: far more than the socket buffers and the 4-event channel hold.
    let filler = "x".repeat(64 * 1024);
    let total = 400;
    for batch in 0..total / 10 {
        let events: Vec<Value> = (0..10)
            .map(|n| {
                event(
                    &format!("big-{batch}-{n}"),
                    "big",
                    json!({"filler": filler}),
                )
            })
            .collect();
        let response = app.post_batch(&tenant, &events).await;
        assert_eq!(response.status(), StatusCode::OK, "ingest is never held up");
    }
    // Past the grace the reader is given, then read everything that was sent.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the stream ended after the cut");
    let text = String::from_utf8_lossy(&raw);
    let received = text.matches("event: event").count();
    assert!(text.contains("event: cut"), "a final cut event");
    assert!(text.contains("\"reason\":\"slow_reader\""));
    assert!(received < total, "cut before the end: {received}");
    let cut = text.rsplit("event: cut").next().unwrap();
    let last = cut
        .split("\"last_event_id\":\"")
        .nth(1)
        .and_then(|rest| rest.get(..49))
        .expect("the cut names where to resume")
        .to_owned();
    // The id of the last event received is the one the cut names.
    let ids: Vec<&str> = text
        .match_indices("id: ")
        .map(|(at, _)| &text[at + 4..at + 4 + 49])
        .collect();
    if let Some(last_received) = ids.last() {
        assert_eq!(*last_received, last);
    }
    let mut tail = Tail::open(&app, &tenant, "", Some(&last)).await;
    for _ in received..total {
        tail.next_event().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_recorded_per_destination_and_per_event() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::FailNext(2, 500)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 5}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let stored = body(
        app.post_event(&tenant, &event("e-1", "order.created", json!({})))
            .await,
    )
    .await;
    let event_id = stored["id"].as_str().unwrap().to_owned();
    let attempts_url = app.url(&format!("/v1/destinations/{id}/attempts"));
    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while attempts.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three attempts are recorded: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let page = get_json(&app, &tenant, &attempts_url).await;
        attempts = page["attempts"].as_array().unwrap().clone();
    }
    // Newest first: delivered after two failures.
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["status"], 200);
    for failed in &attempts[1..] {
        assert_eq!(failed["outcome"], "failed");
        assert_eq!(failed["status"], 500);
        assert!(failed["error"].as_str().unwrap().contains("500"));
        assert!(failed["next_retry_at"].is_string());
        assert_eq!(failed["events"], json!([event_id]));
        assert_eq!(failed["test"], false);
    }
    // Pages.
    let first = get_json(&app, &tenant, format!("{attempts_url}?limit=2")).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get_json(
        &app,
        &tenant,
        format!("{attempts_url}?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(second["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    assert_eq!(second["attempts"][0]["id"], attempts[2]["id"]);
    // Per event.
    let by_event = get_json(
        &app,
        &tenant,
        app.url(&format!("/v1/events/{event_id}/attempts")),
    )
    .await;
    assert_eq!(by_event["attempts"].as_array().unwrap().len(), 3);
    // Another tenant sees neither.
    let other = app.create_tenant().await;
    for url in [
        attempts_url.clone(),
        app.url(&format!("/v1/events/{event_id}/attempts")),
    ] {
        let response = app
            .client
            .get(&url)
            .bearer_auth(&other.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{url}");
    }
    let response = app
        .client
        .get(format!("{attempts_url}?cursor=nope"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_destination_sends_nothing_and_catches_up_on_resume() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let post = |action: &'static str| {
        let url = app.url(&format!("/v1/destinations/{id}/{action}"));
        let key = tenant.api_key.clone();
        let client = app.client.clone();
        async move { client.post(url).bearer_auth(key).send().await.unwrap() }
    };
    let paused = post("pause").await;
    assert_eq!(paused.status(), StatusCode::OK);
    assert_eq!(body(paused).await["paused"], true);
    // Pausing takes effect within two seconds on every node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 0..5 {
        app.post_event(
            &tenant,
            &event(&format!("p-{n}"), "order.created", json!({})),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        receiver.delivered_events().is_empty(),
        "nothing sent while paused"
    );
    let view = crate::delivery::destination(&app, &tenant, &id).await;
    assert_eq!(view["paused"], true);
    assert_eq!(view["pending"], 5, "queued, not lost");

    // A test send goes out even while paused, and is recorded as a test.
    let tested = post("test").await;
    assert_eq!(tested.status(), StatusCode::OK);
    let tested = body(tested).await;
    assert_eq!(tested["outcome"], "delivered", "{tested}");
    assert_eq!(tested["test"], true);
    assert_eq!(receiver.delivered_events().len(), 1);
    assert_eq!(
        receiver.delivered_events()[0]["event_type"],
        "pulsestream.test"
    );

    let resumed = post("resume").await;
    assert_eq!(body(resumed).await["paused"], false);
    wait_until("the queued events arrive", PATIENCE, || async {
        receiver.delivered_events().len() == 6
    })
    .await;
    let attempts = get_json(
        &app,
        &tenant,
        app.url(&format!("/v1/destinations/{id}/attempts")),
    )
    .await;
    let attempts = attempts["attempts"].as_array().unwrap();
    assert!(attempts.iter().any(|attempt| attempt["test"] == true));
    // A test send to a destination that fails says so, with a 200.
    receiver.set(Behaviour::AlwaysFail(503));
    let failed = body(post("test").await).await;
    assert_eq!(failed["outcome"], "failed");
    assert_eq!(failed["status"], 503);
    let missing = app
        .client
        .post(app.url("/v1/destinations/00000000-0000-0000-0000-000000000000/pause"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_each_outcome_per_minute() {
    let app = delivering_app().await;
    let tenant = app
        .create_tenant_with(json!({"name": "small", "rate_limit_per_minute": 5, "burst": 5}))
        .await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url}),
    )
    .await;
    for n in 0..3 {
        app.post_event(
            &tenant,
            &event(&format!("s-{n}"), "order.created", json!({"n": n})),
        )
        .await;
    }
    app.post_event(&tenant, &event("s-0", "order.created", json!({"n": 0})))
        .await; // duplicate
    app.post_event(&tenant, &json!({"event_id": "bad"})).await; // rejected
    app.post_event(&tenant, &event("s-9", "order.created", json!({})))
        .await; // the fifth: still admitted
    let limited = app
        .post_event(&tenant, &event("s-10", "order.created", json!({})))
        .await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stats = loop {
        let stats = get_json(&app, &tenant, app.url("/v1/stats?minutes=5")).await;
        if stats["totals"]["delivered"] == 4 && stats["totals"]["rate_limited"] == 1 {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counts are written: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        stats["totals"],
        json!({"accepted": 4, "duplicates": 1, "rejected": 1, "rate_limited": 1,
               "delivered": 4, "dead_lettered": 0}),
        "{stats}"
    );
    let minutes = stats["minutes"].as_array().unwrap();
    assert!(!minutes.is_empty() && minutes.len() <= 2, "{stats}");
    assert!(minutes[0]["minute"].as_str().unwrap().ends_with(":00Z"));
    assert_eq!(stats["storage"]["events"], 4);
    assert!(stats["storage"]["bytes"].as_u64().unwrap() > 4 * 100);
    let bad = app
        .client
        .get(app.url("/v1/stats?minutes=0"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirects.get(app.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/console");
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let text = response.text().await.unwrap();
        assert!(!text.is_empty());
        if path == "/console" {
            assert!(text.contains("/console/app.js"));
            assert!(!text.contains("<script>"), "no inline script");
        }
    }
    // The console's pages are not API operations.
    let spec = body(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(spec["paths"].get("/console").is_none());
    assert!(spec["paths"].get("/v1/events/stream").is_some());
}
