//! Moving data: the NDJSON export (streamed, filtered, gzip, resumable) and its import with
//! `pulsestream events send --file`, including from the embedded store to PostgreSQL.

use std::io::Read;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, TestTenant, body, tenant_cli};

/// Stores `n` events of `event_type` in batches, with timestamps a second apart.
async fn store_events(app: &TestApp, tenant: &TestTenant, event_type: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "event_id": format!("{event_type}-{i}"),
                "event_type": event_type,
                "source": "lifecycle",
                "timestamp": format!("2026-01-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60),
                "payload": {"i": i, "name": format!("n{i}"), "nested": {"ok": i % 2 == 0}},
            })
        })
        .collect();
    for chunk in events.chunks(1_000) {
        let response = app.post_batch(tenant, chunk).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

async fn export(app: &TestApp, tenant: &TestTenant, query: &str, gzip: bool) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/v1/events/export?{query}")))
        .bearer_auth(&tenant.api_key);
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    request.send().await.unwrap()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_streams_every_matching_event_in_order_and_resumes_after_an_id() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    store_events(&app, &tenant, "order.created", 2_500).await;
    store_events(&app, &tenant, "other", 3).await;

    let response = export(&app, &tenant, "event_type=order.created", false).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let exported = lines(&response.text().await.unwrap());
    assert_eq!(exported.len(), 2_500);
    for (i, line) in exported.iter().enumerate() {
        assert_eq!(
            line["event_id"],
            format!("order.created-{i}"),
            "oldest first"
        );
    }
    // Each line is the event as stored.
    let one = body(
        app.get_event(&tenant, exported[7]["id"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(one, exported[7]);

    // gzip, when asked.
    let response = export(&app, &tenant, "event_type=order.created", true).await;
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(lines(&text), exported);

    // Resume after the 1,000th line; filters and newest-first work as in search.
    let after = exported[999]["id"].as_str().unwrap();
    let rest = export(
        &app,
        &tenant,
        &format!("event_type=order.created&after={after}"),
        false,
    )
    .await;
    let rest = lines(&rest.text().await.unwrap());
    assert_eq!(rest.len(), 1_500);
    assert_eq!(rest[0], exported[1_000]);
    let newest = export(&app, &tenant, "payload.nested.ok=true&order=desc", false).await;
    let newest = lines(&newest.text().await.unwrap());
    assert_eq!(newest.len(), 1_250 + 2, "every other event of both types");
    assert_eq!(newest[0]["event_id"], "order.created-2498");

    // No pages, no foreign ids.
    for (query, loc) in [
        ("limit=10", "limit"),
        ("cursor=abc", "cursor"),
        ("after=nope", "after"),
        ("order=sideways", "order"),
    ] {
        let response = export(&app, &tenant, query, false).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        assert_eq!(
            body(response).await["errors"][0]["loc"],
            json!(["query", loc])
        );
    }
    // Another tenant exports nothing of these.
    let other = app.create_tenant().await;
    let nothing = export(&app, &other, "", false).await;
    assert_eq!(nothing.text().await.unwrap(), "");
}

/// The round trip: export from this suite's store, import into a server on
/// PostgreSQL with the CLI, twice; the same events, by meaning, and nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imported_into_postgres_holds_the_same_events_once() {
    let source = TestApp::spawn().await;
    let tenant = source.create_tenant().await;
    store_events(&source, &tenant, "moved", 1_200).await;
    // An event without event_id travels with its id as event_id.
    source
        .post_event(
            &tenant,
            &json!({"event_type": "moved", "payload": {"anonymous": true}}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.ndjson");
    let file = file.to_str().unwrap();
    let run = tenant_cli(&source, &tenant, &["events", "export", "--to", file], "").await;
    let run = run.ok();
    assert!(run.stderr.contains("exported 1201 events"), "{run:#?}");

    let target = TestApp::spawn_on(Backend::Postgres, |_| {}).await;
    let moved_to = target.create_tenant().await;
    let first = tenant_cli(&target, &moved_to, &["events", "send", "--file", file], "").await;
    assert!(first.ok().stdout.contains("1201 stored, 0 duplicates"));
    let again = tenant_cli(&target, &moved_to, &["events", "send", "--file", file], "").await;
    assert!(again.ok().stdout.contains("0 stored, 1201 duplicates"));

    let exported = lines(&std::fs::read_to_string(file).unwrap());
    let imported = lines(
        &export(&target, &moved_to, "", false)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(imported.len(), exported.len());
    let key = |event: &Value| event["event_id"].as_str().unwrap().to_owned();
    let mut by_id: std::collections::HashMap<String, &Value> =
        imported.iter().map(|event| (key(event), event)).collect();
    for event in &exported {
        let moved = by_id.remove(&key(event)).expect("imported");
        for field in ["event_type", "source", "payload"] {
            assert_eq!(moved[field], event[field], "{field} of {}", key(event));
        }
        let instant = |value: &Value| {
            time::OffsetDateTime::parse(
                value.as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        assert_eq!(instant(&moved["timestamp"]), instant(&event["timestamp"]));
    }
}
