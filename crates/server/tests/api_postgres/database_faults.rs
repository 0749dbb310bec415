//! PostgreSQL going away under load: clients get fast 503s with `Retry-After`, `/readyz` says
//! not ready, nothing acknowledged is lost, and everything comes back by itself.
//!
//! The server reaches PostgreSQL through a TCP proxy that the test can cut (every open
//! connection reset, new ones refused) and restore, so the outage hits only this test's
//! server while the rest of the suite keeps the real database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::{TestApp, TestStore, event, test_database_url};
use crate::receiver::wait_until;

/// A TCP proxy to PostgreSQL that can be cut and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Cancelled on a cut: every connection made before it is reset.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (accept_up, accept_generation) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = accept_generation.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_going_away_gets_fast_503s_and_nothing_acknowledged_is_lost() {
    let store = TestStore::new().await;
    let base: tokio_postgres::Config = test_database_url().parse().unwrap();
    let host = match &base.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test database must be reached over TCP, not {other:?}"),
    };
    let upstream_port = base.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{upstream_port}")).await;
    let schema_url = store.database_url.clone().unwrap();
    let via_proxy = schema_url.replacen(
        &format!("{host}:{upstream_port}"),
        &format!("127.0.0.1:{}", proxy.port),
        1,
    );
    assert_ne!(via_proxy, schema_url, "the URL names host:port");
    let app = TestApp::spawn_with(|config| {
        store.apply(config);
        config.database_url = Some(pulsestream_server::config::Secret(via_proxy.clone()));
        config.database_timeout_ms = 1_000;
    })
    .await;
    let tenant = app.create_tenant().await;

    // Four clients send events one at a time for the whole test.
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (api, tenant, stop) = ((*app).clone(), tenant.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while !stop.is_cancelled() {
                    let event_id = format!("c{client}-{n}");
                    n += 1;
                    let started = Instant::now();
                    let response = api
                        .post_event(&tenant, &event(&event_id, "outage.test", json!({"n": n})))
                        .await;
                    let retry_after = response.headers().get("retry-after").is_some();
                    answers.push((event_id, response.status(), started.elapsed(), retry_after));
                    if response.status() != StatusCode::CREATED {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    wait_until(
        "/readyz says not ready",
        Duration::from_secs(10),
        || async {
            let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
            ready.status() == StatusCode::SERVICE_UNAVAILABLE
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    wait_until(
        "/readyz is ready again",
        Duration::from_secs(15),
        || async {
            let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
            ready.status() == StatusCode::OK
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }

    let acknowledged: Vec<&String> = answers
        .iter()
        .filter(|(_, status, _, _)| *status == StatusCode::CREATED)
        .map(|(event_id, _, _, _)| event_id)
        .collect();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, status, _, _)| *status != StatusCode::CREATED)
        .collect();
    assert!(!refused.is_empty(), "the outage was seen by clients");
    for (event_id, status, took, retry_after) in &refused {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{event_id}");
        assert!(retry_after, "{event_id}: 503 without Retry-After");
        // Bounded by the database timeout (1 s) plus connection set-up, never the client's.
        assert!(*took < Duration::from_secs(5), "{event_id} waited {took:?}");
    }
    let last = answers
        .iter()
        .rev()
        .find(|(_, status, _, _)| *status == StatusCode::CREATED);
    assert!(last.is_some(), "writes succeed again after the outage");

    // Nothing acknowledged is lost; a refused event retried now is stored exactly once.
    assert_eq!(
        app.count_events(&tenant, "event_type=outage.test").await,
        acknowledged.len() + count_committed_but_refused(&app, &tenant, &refused).await
    );
    for event_id in acknowledged.iter().step_by(5) {
        assert_eq!(
            app.count_events(&tenant, &format!("event_id={event_id}"))
                .await,
            1,
            "{event_id}"
        );
    }
    for (event_id, _, _, _) in refused.iter().take(20) {
        let n: u64 = event_id.rsplit('-').next().unwrap().parse().unwrap();
        let retried = app
            .post_event(
                &tenant,
                &event(event_id, "outage.test", json!({"n": n + 1})),
            )
            .await;
        assert!(
            matches!(retried.status(), StatusCode::CREATED | StatusCode::OK),
            "{event_id}: {}",
            retried.status()
        );
        assert_eq!(
            app.count_events(&tenant, &format!("event_id={event_id}"))
                .await,
            1
        );
    }
}

/// A 503 can come after the commit (the answer was lost with the connection): such events
/// are stored, and a retry gets 200. Counts them, so the total above is exact.
async fn count_committed_but_refused(
    app: &TestApp,
    tenant: &crate::harness::TestTenant,
    refused: &[&(String, StatusCode, Duration, bool)],
) -> usize {
    let mut stored = 0;
    for (event_id, _, _, _) in refused {
        stored += app
            .count_events(tenant, &format!("event_id={event_id}"))
            .await;
    }
    stored
}
