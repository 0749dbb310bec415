//! The embedded store's data directory removed under a running server (only the embedded
//! suite has one): nothing more is acknowledged, and `/readyz` says why.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, body, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_removed_under_the_server_stops_acknowledgements_and_readyz_says_why() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let first = app
        .post_event(&tenant, &event("before", "t", json!({})))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    remove_while_written(app.store().dir.path());

    // Every request after the removal is refused: an acknowledged event must survive a
    // restart, and nothing written now would.
    for round in 0..20 {
        let events: Vec<Value> = (0..100)
            .map(|i| event(&format!("after-{round}-{i}"), "t", json!({})))
            .collect();
        let response = app.post_batch(&tenant, &events).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round} was acknowledged"
        );
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = body(ready).await;
    assert!(
        problem["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("was removed or replaced")),
        "{problem}"
    );
}

/// Removes a directory the server's background threads (fjall's flushes, the search index,
/// the segment reclaimer) may be writing into: a file created between `remove_dir_all`'s
/// listing and its final `rmdir` makes that fail with "Directory not empty" (seen in CI), so
/// it is tried again.
fn remove_while_written(dir: &std::path::Path) {
    for _ in 0..50 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("removing {}: {error}", dir.display()),
        }
    }
    panic!("{} kept being written to for a second", dir.display());
}
