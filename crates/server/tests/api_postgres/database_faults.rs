//! PostgreSQL going away under load: clients get fast 503s with `Retry-After`, `/readyz` says
//! not ready, nothing acknowledged is lost, and everything comes back by itself.
//!
//! The server reaches PostgreSQL through a TCP proxy that the test can cut (every open
//! connection reset, new ones refused) and restore, so the outage hits only this test's
//! server while the rest of the suite keeps the real database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestApp, TestStore, test_database_url};
use crate::load::{Answer, Load, Shape, acknowledged_event_ids};
use crate::receiver::wait_until;

/// A TCP proxy (to PostgreSQL, to Redis) that can be cut and restored, and can hold what it
/// forwards for a while (a slow link).
pub(crate) struct Proxy {
    pub(crate) port: u16,
    up: Arc<AtomicBool>,
    /// How long each chunk waits before it is forwarded, each way (milliseconds).
    delay: Arc<AtomicU64>,
    /// Cancelled on a cut: every connection made before it is reset.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        Self::listen("127.0.0.1", upstream).await
    }

    /// A proxy listening on `address` (any free port) and forwarding to `upstream`.
    pub(crate) async fn listen(address: &str, upstream: String) -> Self {
        let listener = TcpListener::bind((address, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let delay = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (accept_up, accept_generation) = (up.clone(), generation.clone());
        let accept_delay = delay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = accept_generation.lock().unwrap().clone();
                let upstream = upstream.clone();
                let delay = accept_delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = futures::future::join(
                            pump(client_read, server_write, delay.clone()),
                            pump(server_read, client_write, delay),
                        ) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            delay,
            generation,
        }
    }

    /// Every chunk forwarded from now on waits `delay` first, each way.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay.store(delay.as_millis() as u64, Ordering::SeqCst);
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

/// Forwards one direction of a connection, each chunk `delay` after it was read (a chunk read
/// later never overtakes one read before it, and reading goes on meanwhile).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer).await {
            let at = Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            if chunks.send((at, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    futures::future::join(read, write).await;
}

/// `host:port` of the test database (it must be reached over TCP).
pub(crate) fn database_address() -> String {
    let base: tokio_postgres::Config = test_database_url().parse().unwrap();
    let host = match &base.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test database must be reached over TCP, not {other:?}"),
    };
    format!(
        "{host}:{}",
        base.get_ports().first().copied().unwrap_or(5432)
    )
}

/// The store's database URL with the database's `host:port` replaced by `via`.
pub(crate) fn database_url_via(store: &TestStore, database: &str, via: &str) -> String {
    let url = store.database_url.clone().expect("a PostgreSQL store");
    let replaced = url.replacen(database, via, 1);
    assert_ne!(replaced, url, "the URL names host:port");
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_going_away_gets_fast_503s_and_nothing_acknowledged_is_lost() {
    let store = TestStore::new().await;
    let upstream = database_address();
    let proxy = Proxy::start(upstream.clone()).await;
    let via_proxy = database_url_via(&store, &upstream, &format!("127.0.0.1:{}", proxy.port));
    let app = TestApp::spawn_with(|config| {
        store.apply(config);
        config.database_url = Some(pulsestream_server::config::Secret(via_proxy.clone()));
        config.database_timeout_ms = 1_000;
    })
    .await;
    let tenant = app.create_tenant().await;

    // Four clients send events one at a time for the whole test.
    let load = Load::start(
        &app,
        &tenant,
        "outage.test",
        Shape {
            single_clients: 4,
            batch_clients: 0,
            batch_size: 1,
            pause: Duration::from_millis(20),
        },
    );

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
    let answers = load.stop().await;

    let acknowledged = acknowledged_event_ids(&answers);
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|answer| !answer.acknowledged())
        .collect();
    assert!(!refused.is_empty(), "the outage was seen by clients");
    for answer in &refused {
        let event_id = &answer.events[0]["event_id"];
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{event_id}");
        assert!(answer.retry_after, "{event_id}: 503 without Retry-After");
        // Bounded by the database timeout (1 s) plus connection set-up, never the client's.
        assert!(
            answer.took < Duration::from_secs(5),
            "{event_id} waited {:?}",
            answer.took
        );
    }
    let last = answers.iter().rev().find(|answer| answer.acknowledged());
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
    for answer in refused.iter().take(20) {
        let sent = &answer.events[0];
        let event_id = sent["event_id"].as_str().unwrap();
        let retried = app.post_event(&tenant, sent).await;
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
    refused: &[&Answer],
) -> usize {
    let mut stored = 0;
    for event_id in refused.iter().flat_map(|answer| answer.event_ids()) {
        stored += app
            .count_events(tenant, &format!("event_id={event_id}"))
            .await;
    }
    stored
}
