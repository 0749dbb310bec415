//! A real webhook receiver for delivery tests: records every request and fails, stalls or
//! answers 410 on demand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.body).expect("webhook bodies are JSON");
        body["events"].as_array().expect("an events array").clone()
    }
}

/// What the receiver does with the next requests.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    Accept,
    /// Fail the next `n` requests with this status, then accept.
    FailNext(usize, u16),
    AlwaysFail(u16),
    /// Wait this long before answering 200.
    Stall(Duration),
    /// Fail the next `n` requests whose body contains this text with 500; accept the rest.
    FailWhileContains(&'static str, usize),
    /// 413 for a body over this many bytes; accept the rest.
    MaxBody(usize),
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A running receiver (on 127.0.0.1 unless started elsewhere).
pub struct Receiver {
    pub url: String,
    shared: Shared,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on(0, behaviour).await
    }

    /// Starts on a given port (0: any free one).
    pub async fn start_on(port: u16, behaviour: Behaviour) -> Self {
        Self::serve("127.0.0.1", port, behaviour).await
    }

    /// Starts on another local address than 127.0.0.1 (one a network namespace reaches).
    #[allow(
        dead_code,
        reason = "only the PostgreSQL suite's network fault test uses it"
    )]
    pub async fn start_at(address: &str, behaviour: Behaviour) -> Self {
        Self::serve(address, 0, behaviour).await
    }

    async fn serve(address: &str, port: u16, behaviour: Behaviour) -> Self {
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(behaviour)),
            received: Arc::default(),
        };
        // No body limit of axum's own (2 MB): every 413 is the behaviour's, and recorded.
        let app = Router::new()
            .route("/hook", post(receive))
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind((address, port))
            .await
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { serve.await.unwrap() });
        Self {
            url,
            shared,
            shutdown,
            server: Some(server),
        }
    }

    /// Stops the receiver as a deploy would: it stops accepting, answers the requests in
    /// flight, closes every connection, and frees its port. What it received stays readable.
    #[allow(dead_code, reason = "only the fault tests stop a receiver")]
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("the receiver stops");
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Events in requests that were answered 2xx.
    pub fn delivered_events(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(Received::events)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn receive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let behaviour = *shared.behaviour.lock().unwrap();
    let status = match behaviour {
        Behaviour::Accept => StatusCode::OK,
        Behaviour::FailNext(0, _) => StatusCode::OK,
        Behaviour::FailNext(n, status) => {
            *shared.behaviour.lock().unwrap() = Behaviour::FailNext(n - 1, status);
            StatusCode::from_u16(status).unwrap()
        }
        Behaviour::AlwaysFail(status) => StatusCode::from_u16(status).unwrap(),
        Behaviour::Stall(pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::OK
        }
        Behaviour::MaxBody(limit) if body.len() > limit => StatusCode::PAYLOAD_TOO_LARGE,
        Behaviour::MaxBody(_) => StatusCode::OK,
        Behaviour::FailWhileContains(text, n) => {
            if n > 0 && String::from_utf8_lossy(&body).contains(text) {
                *shared.behaviour.lock().unwrap() = Behaviour::FailWhileContains(text, n - 1);
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    };
    shared.received.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}

/// Polls `check` every 25 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, timeout, async || {
        if check().await {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await;
}

/// Polls `check` every 25 ms until it answers `Ok`, and returns that; after `timeout`,
/// panics with `what` and the last `Err` (what was seen instead).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            if seen.is_empty() {
                panic!("timed out waiting until {what}");
            }
            panic!("timed out waiting until {what}: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
