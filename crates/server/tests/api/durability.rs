//! Acknowledged events survive restarts: graceful ones, and a SIGKILL right after the answer,
//! each with exactly one delivery entry per matching destination.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ServerProcess, TestApp, TestStore, body, event, http_client};

#[tokio::test]
async fn events_and_tenants_survive_a_restart_and_duplicates_are_still_caught() {
    let mut app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent = event("durable-1", "order.created", json!({"total": 1}));
    let stored = body(app.post_event(&tenant, &sent).await).await;

    app.restart().await;

    let read = body(app.get_event(&tenant, stored["id"].as_str().unwrap()).await).await;
    assert_eq!(read["event_id"], "durable-1");
    let again = app.post_event(&tenant, &sent).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(body(again).await["id"], stored["id"]);
}

/// Flags of the crash test's server: its webhook points at loopback.
const CRASH_FLAGS: &[&str] = &["--allow-private-destinations", "true"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_a_sigkill_mid_load() {
    let store = TestStore::new().await;
    let client = http_client();
    let server = ServerProcess::start(&store, CRASH_FLAGS);
    server.wait_ready(&client).await;
    let tenant = TestApp::attach(&server.base, client.clone())
        .create_tenant()
        .await;
    // Nothing listens on port 1: every delivery fails and its entry stays queued (retried,
    // far from its last attempt), so the queue still holds one entry per stored event when
    // the test reads it back.
    let destination: Value = client
        .post(format!("{}/v1/destinations", server.base))
        .bearer_auth(&tenant.api_key)
        .json(&json!({"kind": "webhook", "url": "http://127.0.0.1:1/hook", "event_types": ["crash.*"], "max_attempts": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let destination_id = destination["id"].as_str().unwrap().to_owned();

    // Eight writers send batches until the server dies under them.
    let base = server.base.clone();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (client, base, key) = (client.clone(), base.clone(), tenant.api_key.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for round in 0.. {
                    let events: Vec<Value> = (0..50)
                        .map(|i| {
                            event(
                                &format!("w{writer}-r{round}-{i}"),
                                "crash.test",
                                json!({"i": i, "tag": "kilo"}),
                            )
                        })
                        .collect();
                    let sent = client
                        .post(format!("{base}/v1/events/batch"))
                        .bearer_auth(&key)
                        .json(&json!({"events": events}));
                    match sent.send().await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            acknowledged.extend((0..50).map(|i| format!("w{writer}-r{round}-{i}")));
                        }
                        _ => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 100,
        "the load ran before the kill ({} acknowledged)",
        acknowledged.len()
    );

    let server = ServerProcess::start(&store, CRASH_FLAGS);
    server.wait_ready(&client).await;
    let app = TestApp::attach(&server.base, client.clone());
    let stored = app.count_events(&tenant, "event_type=crash.test").await;
    assert!(
        stored >= acknowledged.len(),
        "{stored} stored < {} acknowledged",
        acknowledged.len()
    );
    for event_id in acknowledged.iter().step_by(7) {
        assert_eq!(
            app.count_events(&tenant, &format!("event_id={event_id}"))
                .await,
            1,
            "{event_id}"
        );
    }
    // Full text and payload paths find every stored event: the search index resumes from
    // its last commit and reads the rest from the store (batches are stored whole).
    assert_eq!(app.count_events(&tenant, "q=kilo").await, stored);
    assert_eq!(
        app.count_events(&tenant, "payload.i=7&event_type=crash.test")
            .await
            * 50,
        stored
    );
    // Save and enqueue are one commit: every stored event has exactly one queue entry, and
    // nothing else is queued (pending, delivered and dead-lettered together).
    assert_eq!(
        app.queue_entries(&tenant, &destination_id).await,
        stored as u64,
        "queue entries vs stored events"
    );
    // A client retrying its last acknowledged batch after the crash gets duplicates.
    let retried: Vec<Value> = acknowledged[..50]
        .iter()
        .map(|id| {
            event(
                id,
                "crash.test",
                json!({"i": id.rsplit('-').next().unwrap().parse::<u32>().unwrap(), "tag": "kilo"}),
            )
        })
        .collect();
    let answer = body(app.post_batch(&tenant, &retried).await).await;
    assert_eq!(answer["duplicates"], 50, "{answer}");
    assert_eq!(
        app.count_events(&tenant, "event_type=crash.test").await,
        stored
    );
    assert_eq!(
        app.queue_entries(&tenant, &destination_id).await,
        stored as u64,
        "a duplicate enqueues nothing"
    );
    server.kill();
}
