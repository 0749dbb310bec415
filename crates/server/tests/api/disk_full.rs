//! A data directory on a small filesystem of its own (a size-limited tmpfs the test mounts
//! and unmounts; root only): below `--min-free-disk` ingest gets 507 and comes back by
//! itself; an actual ENOSPC never acknowledges an event it did not store, and after space
//! is freed a restart serves every acknowledged event exactly once.
//!
//! Embedded only: PostgreSQL keeps no data directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pulsestream_server::config::MinFreeDisk;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, body, event};

/// A tmpfs of `megabytes`, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot (not root, no mount): a failure under `CI=true`.
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m"),
                "pulsestream-test",
            ])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self { dir }),
            other => {
                let why = format!("cannot mount a tmpfs (needs root): {other:?}");
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("skipping: {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes 1 MiB files into `dir` until the filesystem is full; returns them.
fn fill(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut files = Vec::new();
    for n in 0.. {
        let path = dir.join(format!("filler-{n}"));
        if std::fs::write(&path, &chunk).is_err() {
            let _ = std::fs::remove_file(&path);
            return files;
        }
        files.push(path);
    }
    unreachable!()
}

async fn post_until(
    app: &TestApp,
    tenant: &crate::harness::TestTenant,
    want: StatusCode,
) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let response = app
            .post_event(
                tenant,
                &event(&format!("probe-{n}-{want}"), "probe", json!({})),
            )
            .await;
        if response.status() == want {
            return response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} instead of {want}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_minimum_ingest_gets_507_and_resumes_by_itself() {
    let Some(tmpfs) = Tmpfs::mount(64) else {
        return;
    };
    let data = tmpfs.path().join("data");
    let app = TestApp::spawn_with(|config| {
        config.data_dir = data.clone();
        config.min_free_disk = MinFreeDisk::Percent(50.0);
    })
    .await;
    let tenant = app.create_tenant().await;
    let stored = app
        .post_event(&tenant, &event("before", "order.created", json!({"n": 1})))
        .await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    let stored = body(stored).await;

    // Something else takes the filesystem below half free.
    let filler = tmpfs.path().join("other");
    std::fs::create_dir_all(&filler).unwrap();
    let chunk = vec![1u8; 1 << 20];
    for n in 0..40 {
        std::fs::write(filler.join(format!("f{n}")), &chunk).unwrap();
    }
    let refused = post_until(&app, &tenant, StatusCode::INSUFFICIENT_STORAGE).await;
    assert!(refused.headers().contains_key("retry-after"));
    let problem = body(refused).await;
    assert_eq!(
        problem["type"], "/problems/insufficient_storage",
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--min-free-disk")
    );
    // Batches and the SDK endpoints are refused too; reads and search go on.
    let batch = app
        .post_batch(&tenant, &[event("b", "order.created", json!({}))])
        .await;
    assert_eq!(batch.status(), StatusCode::INSUFFICIENT_STORAGE);
    let read = app.get_event(&tenant, stored["id"].as_str().unwrap()).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(app.count_events(&tenant, "event_id=before").await, 1);
    assert_eq!(
        app.count_events(&tenant, "event_id=b").await,
        0,
        "nothing stored"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(ready).await["reason"], "disk_space_low");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("pulsestream_disk_low 1"),
        "the gauge says so"
    );
    assert!(metrics.contains("pulsestream_disk_refusals_total"));

    // Space comes back: so does ingest, without a restart.
    std::fs::remove_dir_all(&filler).unwrap();
    post_until(&app, &tenant, StatusCode::CREATED).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_acknowledges_an_event_it_did_not_store() {
    let Some(tmpfs) = Tmpfs::mount(48) else {
        return;
    };
    let data = tmpfs.path().join("data");
    let mut app = TestApp::spawn_with(|config| {
        config.data_dir = data.clone();
        // The check is off: the disk fills for real, under the writer's feet.
        config.min_free_disk = MinFreeDisk::Bytes(0);
    })
    .await;
    let tenant = app.create_tenant().await;
    // Fill the filesystem, then give back 3 MiB.
    let mut filler = fill(&tmpfs.path().join("filler"));
    for path in filler.drain(filler.len().saturating_sub(3)..) {
        std::fs::remove_file(path).unwrap();
    }
    let payload = "p".repeat(20 * 1024);
    let mut acknowledged: Vec<String> = Vec::new();
    let mut refused = 0;
    let mut failures_in_a_row = 0;
    for request in 0..2_000 {
        let events: Vec<Value> = (0..10)
            .map(|n| event(&format!("e-{request}-{n}"), "fill", json!({"p": payload})))
            .collect();
        let response = app.post_batch(&tenant, &events).await;
        if response.status().is_success() {
            failures_in_a_row = 0;
            let answer = body(response).await;
            for result in answer["results"].as_array().unwrap() {
                assert_eq!(result["status"], "accepted", "{result}");
                acknowledged.push(result["event_id"].as_str().unwrap().to_owned());
            }
        } else {
            assert!(
                response.status().is_server_error(),
                "a full disk is the server's trouble: {}",
                response.status()
            );
            refused += 1;
            failures_in_a_row += 1;
            if failures_in_a_row >= 20 {
                break;
            }
        }
    }
    assert!(
        refused > 0,
        "the disk filled up ({} events taken)",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty());
    eprintln!(
        "disk full: {} events acknowledged, {refused} requests refused",
        acknowledged.len()
    );

    // Space comes back; a restart serves every acknowledged event exactly once.
    for path in filler {
        std::fs::remove_file(path).unwrap();
    }
    app.restart_after_failure().await;
    let stored = app.count_events(&tenant, "event_type=fill").await;
    eprintln!("after the restart: {stored} stored");
    assert!(
        stored >= acknowledged.len(),
        "{stored} < {}",
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
    // Every acknowledged event sent again is a duplicate: stored once, not twice.
    let retry: Vec<Value> = acknowledged
        .iter()
        .take(10)
        .map(|event_id| event(event_id, "fill", json!({"p": payload})))
        .collect();
    let answer = body(app.post_batch(&tenant, &retry).await).await;
    assert_eq!(answer["duplicates"], retry.len(), "{answer}");
    let fresh = app
        .post_event(&tenant, &event("after", "fill", json!({})))
        .await;
    assert_eq!(fresh.status(), StatusCode::CREATED);
    drop(app);
    drop(tmpfs);
}
