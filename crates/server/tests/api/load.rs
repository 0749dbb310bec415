//! Clients that keep sending events while a dependency fails, recording every answer: what
//! was sent, the status, whether it carried `Retry-After`, and how long it took.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::{ApiClient, TestTenant, event};

/// How many clients send, and how.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Clients that send one event per request (`POST /v1/events`).
    pub single_clients: usize,
    /// Clients that send batches of `batch_size` (`POST /v1/events/batch`).
    pub batch_clients: usize,
    pub batch_size: usize,
    /// Each client's pause between two requests (and after a refusal).
    pub pause: Duration,
}

/// One request of the load and its answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The events the request carried, to send it again.
    pub events: Vec<Value>,
    /// `true` for a batch request.
    #[allow(dead_code, reason = "read only by the PostgreSQL test binaries")]
    pub batch: bool,
    pub status: StatusCode,
    #[allow(dead_code, reason = "read only by the PostgreSQL test binaries")]
    pub retry_after: bool,
    pub took: Duration,
    /// When the answer arrived.
    #[allow(dead_code, reason = "read only by the PostgreSQL test binaries")]
    pub at: Instant,
}

impl Answer {
    pub fn acknowledged(&self) -> bool {
        self.status.is_success()
    }

    pub fn event_ids(&self) -> impl Iterator<Item = &str> {
        self.events
            .iter()
            .map(|event| event["event_id"].as_str().expect("an event_id"))
    }
}

/// Every `event_id` of the acknowledged answers.
pub fn acknowledged_event_ids(answers: &[Answer]) -> HashSet<String> {
    answers
        .iter()
        .filter(|answer| answer.acknowledged())
        .flat_map(|answer| answer.event_ids().map(str::to_owned))
        .collect()
}

/// Clients sending events to one tenant until stopped.
pub struct Load {
    stop: CancellationToken,
    answers: Arc<Mutex<Vec<Answer>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the clients. Event ids are `{event_type}-{client}-{n}`, unique across clients.
    pub fn start(api: &ApiClient, tenant: &TestTenant, event_type: &str, shape: Shape) -> Self {
        let stop = CancellationToken::new();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..shape.single_clients + shape.batch_clients)
            .map(|client| {
                let batch_size = if client < shape.single_clients {
                    None
                } else {
                    Some(shape.batch_size)
                };
                tokio::spawn(send_until_stopped(
                    api.clone(),
                    tenant.clone(),
                    format!("{event_type}-{client}"),
                    event_type.to_owned(),
                    batch_size,
                    shape.pause,
                    answers.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Self {
            stop,
            answers,
            clients,
        }
    }

    /// The answers so far.
    #[allow(dead_code, reason = "read only by the PostgreSQL test binaries")]
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// How many events have been acknowledged so far.
    pub fn acknowledged_events(&self) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|answer| answer.acknowledged())
            .map(|answer| answer.events.len())
            .sum()
    }

    /// Waits until `more` events beyond those acknowledged now have been acknowledged.
    pub async fn wait_for_more_acknowledged(&self, more: usize, what: &str) {
        let target = self.acknowledged_events() + more;
        crate::receiver::wait_until(what, Duration::from_secs(15), || async {
            self.acknowledged_events() >= target
        })
        .await;
    }

    /// Stops the clients (each finishes its request in flight) and returns every answer.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.cancel();
        for client in self.clients {
            client.await.expect("a load client panicked");
        }
        Arc::try_unwrap(self.answers)
            .expect("the clients are done")
            .into_inner()
            .unwrap()
    }
}

#[allow(clippy::too_many_arguments, reason = "one client's whole setup")]
async fn send_until_stopped(
    api: ApiClient,
    tenant: TestTenant,
    prefix: String,
    event_type: String,
    batch_size: Option<usize>,
    pause: Duration,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: CancellationToken,
) {
    let mut n = 0;
    while !stop.is_cancelled() {
        let events: Vec<Value> = (0..batch_size.unwrap_or(1))
            .map(|_| {
                n += 1;
                event(&format!("{prefix}-{n}"), &event_type, json!({"n": n}))
            })
            .collect();
        let started = Instant::now();
        let response = match batch_size {
            Some(_) => api.post_batch(&tenant, &events).await,
            None => api.post_event(&tenant, &events[0]).await,
        };
        let answer = Answer {
            events,
            batch: batch_size.is_some(),
            status: response.status(),
            retry_after: response.headers().contains_key("retry-after"),
            took: started.elapsed(),
            at: Instant::now(),
        };
        answers.lock().unwrap().push(answer);
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Asserts that every answer was a 2xx, and none took longer than `limit`.
pub fn assert_every_answer_was_2xx_within(answers: &[Answer], limit: Duration) {
    for answer in answers {
        let first = answer.event_ids().next().unwrap_or_default();
        assert!(
            answer.acknowledged(),
            "{first}: ingestion answered {} while a delivery dependency was down",
            answer.status
        );
        assert!(
            answer.took < limit,
            "{first}: ingestion took {:?} while a delivery dependency was down",
            answer.took
        );
    }
}
