//! Online backup and restore of the embedded store, under load: every event acknowledged
//! before the backup began is in the restored node exactly once, with its queued deliveries
//! and idempotency records. Embedded only: PostgreSQL is backed up with its own tools.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::delivery::create_destination;
use crate::harness::{ADMIN_TOKEN, TestApp, body, event, pulsestream};
use crate::receiver::{Behaviour, Receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_under_load_restores_every_acknowledged_event_once() {
    let app = TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 60_000;
    })
    .await;
    let tenant = app.create_tenant().await;
    // A destination that never takes anything: every stored event stays queued for it.
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let destination = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 100}),
    )
    .await;
    let destination = destination["id"].as_str().unwrap().to_owned();
    // An idempotent request before the backup: the restored node replays its answer.
    let keyed = app
        .client
        .post(app.url("/v1/events/batch"))
        .bearer_auth(&tenant.api_key)
        .header("idempotency-key", "before-the-backup")
        .json(&json!({"events": [event("keyed", "load", json!({}))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::OK);

    // Three clients ingest until told to stop; each acknowledged event with when.
    let acknowledged: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..3 {
        let (api, tenant, acknowledged, stop) = (
            (*app).clone(),
            tenant.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut request = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                request += 1;
                let events: Vec<Value> = (0..20)
                    .map(|n| event(&format!("c{client}-{request}-{n}"), "load", json!({"n": n})))
                    .collect();
                let response = api.post_batch(&tenant, &events).await;
                if response.status() == StatusCode::OK {
                    let at = Instant::now();
                    let mut acknowledged = acknowledged.lock().unwrap();
                    for event in &events {
                        acknowledged.push((event["event_id"].as_str().unwrap().to_owned(), at));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    let began = Instant::now();
    let run = pulsestream(
        &app.base,
        &["backup", "--to", backup_dir.to_str().unwrap()],
        &[("PULSESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)],
        "",
    )
    .await
    .ok();
    let took = began.elapsed();
    assert!(run.stdout.contains("backed up"), "{run:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: Vec<&String> = acknowledged
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(id, _)| id)
        .collect();
    let during = acknowledged.iter().filter(|(_, at)| *at >= began).count();
    assert!(
        !before.is_empty() && during > 0,
        "ingest went on during the backup"
    );

    // A second backup into the same place is refused; the first is complete.
    let latest = body(
        app.client
            .get(app.url("/admin/backups/latest"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(latest["status"], "done", "{latest}");

    // Restore into a new data dir, and serve it.
    let restored_dir = dir.path().join("restored");
    let restored_arg = restored_dir.to_str().unwrap().to_owned();
    let restore = pulsestream(
        &app.base,
        &[
            "restore",
            "--from",
            backup_dir.to_str().unwrap(),
            "--data-dir",
            &restored_arg,
        ],
        &[],
        "",
    )
    .await
    .ok();
    assert!(restore.stdout.contains("restored"), "{restore:#?}");
    let opening = Instant::now();
    let restored = TestApp::spawn_with(|config| {
        config.data_dir = restored_dir.clone();
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 60_000;
    })
    .await;
    let opened = opening.elapsed();
    eprintln!(
        "backup: {} events acknowledged before it, {during} during it; backup took {took:?}, \
         the restored node opened in {opened:?}; {}",
        before.len(),
        latest["report"]
    );

    // Every event acknowledged before the backup, exactly once; nothing twice at all.
    let export = restored
        .client
        .get(restored.url("/v1/events/export?event_type=load"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        export.status(),
        StatusCode::OK,
        "the tenant and its key came along"
    );
    let text = export.text().await.unwrap();
    let mut stored: Vec<String> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let total = stored.len();
    stored.sort();
    stored.dedup();
    assert_eq!(stored.len(), total, "no event twice");
    for event_id in &before {
        assert!(
            stored.binary_search(event_id).is_ok(),
            "{event_id} is in the backup"
        );
    }
    // Each stored event is queued for the destination: saved and enqueued together.
    let view = body(
        restored
            .client
            .get(restored.url(&format!("/v1/destinations/{destination}")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let queued = view["pending"].as_u64().unwrap()
        + view["delivered"].as_u64().unwrap()
        + view["dead_lettered"].as_u64().unwrap();
    assert_eq!(queued as usize, total, "{view}");
    // The idempotency record came along.
    let replay = restored
        .client
        .post(restored.url("/v1/events/batch"))
        .bearer_auth(&tenant.api_key)
        .header("idempotency-key", "before-the-backup")
        .json(&json!({"events": [event("keyed", "load", json!({}))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // The restored node takes new events.
    let fresh = restored
        .post_event(&tenant, &event("after-restore", "load", json!({})))
        .await;
    assert_eq!(fresh.status(), StatusCode::CREATED);
    let again = restored
        .post_event(&tenant, &event(before[0], "load", json!({"n": 0})))
        .await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "a resent event is a duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_an_incomplete_backup_and_a_used_directory() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let incomplete = dir.path().join("incomplete");
    std::fs::create_dir_all(incomplete.join("fjall")).unwrap();
    let refused = pulsestream(
        &app.base,
        &[
            "restore",
            "--from",
            incomplete.to_str().unwrap(),
            "--data-dir",
            dir.path().join("new").to_str().unwrap(),
        ],
        &[],
        "",
    )
    .await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(
        refused.stderr.contains("not a complete backup"),
        "{refused:#?}"
    );

    // A relative path is refused; a non-empty one fails the job.
    let relative = app
        .client
        .post(app.url("/admin/backups"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"to": "relative/dir"}))
        .send()
        .await
        .unwrap();
    assert_eq!(relative.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let used = pulsestream(
        &app.base,
        &["backup", "--to", dir.path().to_str().unwrap()],
        &[("PULSESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)],
        "",
    )
    .await;
    assert_eq!(used.code, Some(1), "{used:#?}");
    assert!(used.stderr.contains("is not empty"), "{used:#?}");
}
