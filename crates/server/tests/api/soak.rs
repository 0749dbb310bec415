//! The crash soak: one store, one tenant, one live webhook receiver, and the real binary
//! SIGKILLed again and again under mixed load — batches, single events and batches with an
//! `Idempotency-Key` — at a random moment of each cycle. After every restart:
//!
//! - the requests that got no answer are sent again, as a careful client would;
//! - every event acknowledged in the cycle is stored exactly once (searched by its cycle);
//! - the last acknowledged keyed request replays its answer;
//! - the destination's queue holds one entry per stored event (pending, delivered and
//!   dead-lettered together): save and enqueue are one commit.
//!
//! At the end every acknowledged event is stored exactly once (every page read) and has been
//! delivered at least once to the receiver.
//!
//! `PULSESTREAM_SOAK_CYCLES` sets the number of cycles (3 by default, as the test suite runs
//! it); `scripts/soak-crash.sh` runs it long on release builds.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ServerProcess, TestApp, TestStore};

const FLAGS: &[&str] = &[
    "--allow-private-destinations",
    "true",
    "--delivery-retry-base-ms",
    "50",
];

/// A receiver that keeps only what the soak needs: each delivered `event_id`, and how many
/// deliveries there were (millions of events would not fit as whole requests).
#[derive(Clone, Default)]
struct Deliveries {
    ids: Arc<Mutex<HashSet<String>>>,
    total: Arc<Mutex<u64>>,
}

impl Deliveries {
    async fn start(self) -> String {
        let app = Router::new().route("/hook", post(receive)).with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// How many of `acknowledged` never reached the receiver.
    fn missing(&self, acknowledged: &HashSet<String>) -> usize {
        let ids = self.ids.lock().unwrap();
        acknowledged.iter().filter(|id| !ids.contains(*id)).count()
    }
}

async fn receive(State(deliveries): State<Deliveries>, body: Bytes) -> StatusCode {
    let body: Value = serde_json::from_slice(&body).expect("webhook bodies are JSON");
    let events = body["events"].as_array().expect("an events array");
    *deliveries.total.lock().unwrap() += events.len() as u64;
    let mut ids = deliveries.ids.lock().unwrap();
    for event in events {
        ids.insert(event["event_id"].as_str().expect("an event_id").to_owned());
    }
    StatusCode::OK
}

/// How one writer sends.
#[derive(Clone, Copy)]
enum Kind {
    Batch,
    Single,
    /// A batch with an `Idempotency-Key`.
    Keyed,
}

/// One request a writer sent: its events, its key, and whether it was acknowledged.
#[derive(Clone)]
struct Request {
    kind: Kind,
    events: Vec<Value>,
    key: Option<String>,
}

impl Request {
    async fn send(&self, client: &reqwest::Client, base: &str, api_key: &str) -> Option<Value> {
        let request = match self.kind {
            Kind::Single => client
                .post(format!("{base}/v1/events"))
                .json(&self.events[0]),
            Kind::Batch | Kind::Keyed => client
                .post(format!("{base}/v1/events/batch"))
                .json(&json!({"events": self.events})),
        };
        let request = match &self.key {
            Some(key) => request.header("idempotency-key", key),
            None => request,
        };
        let response = request.bearer_auth(api_key).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let replayed = response.headers().contains_key("idempotent-replayed");
        let mut answer: Value = response.json().await.ok()?;
        answer["replayed"] = json!(replayed);
        Some(answer)
    }

    fn event_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.events
            .iter()
            .map(|event| event["event_id"].as_str().unwrap().to_owned())
    }
}

/// What one cycle's writers saw.
#[derive(Default)]
struct Outcome {
    acknowledged: Vec<Request>,
    /// Sent without an answer (the server died under them, or answered 5xx): sent again
    /// after the restart.
    unanswered: Vec<Request>,
    /// The last acknowledged keyed request and its answer.
    last_keyed: Option<(Request, Value)>,
}

fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u64
}

/// One writer of cycle `cycle`: sends until the server stops answering.
async fn writer(
    client: reqwest::Client,
    base: String,
    api_key: String,
    cycle: usize,
    number: usize,
    kind: Kind,
) -> Outcome {
    let mut outcome = Outcome::default();
    for n in 0.. {
        let size = match kind {
            Kind::Single => 1,
            Kind::Batch | Kind::Keyed => 5 + random_below(16) as usize,
        };
        let type_name = match kind {
            Kind::Batch => "soak.batch",
            Kind::Single => "soak.single",
            Kind::Keyed => "soak.keyed",
        };
        let events = (0..size)
            .map(|i| {
                json!({
                    "event_id": format!("c{cycle}-w{number}-{n}-{i}"),
                    "event_type": type_name,
                    "payload": {"c": cycle, "n": n, "i": i, "note": "soak"},
                })
            })
            .collect();
        let request = Request {
            kind,
            events,
            key: matches!(kind, Kind::Keyed).then(|| format!("soak-c{cycle}-w{number}-{n}")),
        };
        match request.send(&client, &base, &api_key).await {
            Some(answer) => {
                if matches!(kind, Kind::Keyed) {
                    outcome.last_keyed = Some((request.clone(), answer));
                }
                outcome.acknowledged.push(request);
            }
            None => {
                outcome.unanswered.push(request);
                return outcome;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    outcome
}

/// Starts the server and waits until it is ready (a growing store may take a while).
async fn start(store: &TestStore, client: &reqwest::Client) -> ServerProcess {
    let server = ServerProcess::start(store, FLAGS);
    server.wait_ready(client).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_sigkilled_every_cycle_loses_doubles_and_leaves_undelivered_nothing() {
    let cycles: usize = std::env::var("PULSESTREAM_SOAK_CYCLES")
        .ok()
        .map(|n| n.parse().expect("PULSESTREAM_SOAK_CYCLES is a number"))
        .unwrap_or(3);
    let started = Instant::now();
    let store = TestStore::new().await;
    let client = crate::harness::http_client();
    let deliveries = Deliveries::default();
    let hook = deliveries.clone().start().await;

    let mut server = start(&store, &client).await;
    let tenant = TestApp::attach(&server.base, client.clone())
        .create_tenant()
        .await;
    let destination: Value = client
        .post(format!("{}/v1/destinations", server.base))
        .bearer_auth(&tenant.api_key)
        .json(&json!({"kind": "webhook", "url": hook, "event_types": ["soak.*"], "max_attempts": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let destination = destination["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a destination: {destination}"))
        .to_owned();

    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut requests = 0usize;
    let mut resent = 0usize;
    // The last cycle's outcomes, checked after the restart.
    let mut pending: Vec<Outcome> = Vec::new();
    for cycle in 0..=cycles {
        let app = TestApp::attach(&server.base, client.clone());
        if cycle > 0 {
            // The previous cycle, checked after its SIGKILL and this restart.
            let previous = cycle - 1;
            let outcomes = std::mem::take(&mut pending);
            let mut this_cycle: HashSet<String> = HashSet::new();
            for outcome in &outcomes {
                for request in &outcome.acknowledged {
                    this_cycle.extend(request.event_ids());
                }
                // What got no answer may or may not be stored: a retry makes it stored once.
                for request in &outcome.unanswered {
                    let answer = request.send(&client, &server.base, &tenant.api_key).await;
                    assert!(answer.is_some(), "cycle {previous}: a retry was refused");
                    this_cycle.extend(request.event_ids());
                    resent += 1;
                }
                if let Some((request, first)) = &outcome.last_keyed {
                    let replay = request
                        .send(&client, &server.base, &tenant.api_key)
                        .await
                        .expect("a keyed replay is answered");
                    assert_eq!(replay["replayed"], true, "cycle {previous}: {replay}");
                    assert_eq!(replay["results"], first["results"], "cycle {previous}");
                }
            }
            let found = app
                .event_id_counts(&tenant, &format!("payload.c={previous}"))
                .await;
            let doubled: Vec<_> = found.iter().filter(|(_, n)| **n > 1).collect();
            assert!(doubled.is_empty(), "cycle {previous}: doubled {doubled:?}");
            let lost: Vec<_> = this_cycle
                .iter()
                .filter(|id| !found.contains_key(*id))
                .collect();
            assert!(lost.is_empty(), "cycle {previous}: lost {lost:?}");
            assert_eq!(
                found.len(),
                this_cycle.len(),
                "cycle {previous}: stored events nobody sent"
            );
            acknowledged.extend(this_cycle);
            let entries = app.queue_entries(&tenant, &destination).await;
            if entries != acknowledged.len() as u64 {
                let metrics = app.metrics().await;
                let outcomes: Vec<&str> = metrics
                    .lines()
                    .filter(|line| line.starts_with("pulsestream_deliveries_total"))
                    .collect();
                tokio::time::sleep(Duration::from_secs(5)).await;
                let stats = app.destination(&tenant, &destination).await;
                panic!(
                    "cycle {previous}: {entries} queue entries for {} stored events; this \
                     run's deliveries: {outcomes:?}; 5 s later: {} never delivered, \
                     destination {stats}",
                    acknowledged.len(),
                    deliveries.missing(&acknowledged),
                );
            }
        }
        if cycle == cycles {
            break;
        }

        let kinds = [
            Kind::Batch,
            Kind::Batch,
            Kind::Batch,
            Kind::Single,
            Kind::Single,
            Kind::Keyed,
            Kind::Keyed,
        ];
        let writers: Vec<_> = kinds
            .iter()
            .enumerate()
            .map(|(number, kind)| {
                tokio::spawn(writer(
                    client.clone(),
                    server.base.clone(),
                    tenant.api_key.clone(),
                    cycle,
                    number,
                    *kind,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200 + random_below(1_000))).await;
        server.kill();
        for writer in writers {
            let outcome = writer.await.unwrap();
            requests += outcome.acknowledged.len() + outcome.unanswered.len();
            pending.push(outcome);
        }
        server = start(&store, &client).await;
    }

    // Everything, every page: each acknowledged event stored once, nothing else stored.
    let app = TestApp::attach(&server.base, client.clone());
    let found = app
        .event_id_counts(
            &tenant,
            "event_type=soak.batch&event_type=soak.single&event_type=soak.keyed",
        )
        .await;
    let doubled = found.values().filter(|n| **n > 1).count();
    assert_eq!(doubled, 0, "events stored more than once");
    assert_eq!(
        found.len(),
        acknowledged.len(),
        "stored vs acknowledged events"
    );
    assert!(acknowledged.iter().all(|id| found.contains_key(id)));
    // At least once to a live receiver: what was claimed when a SIGKILL came is sent again
    // (on PostgreSQL once its lease has run out).
    let deadline = Instant::now() + Duration::from_secs(120 + acknowledged.len() as u64 / 2_000);
    while deliveries.missing(&acknowledged) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged events never delivered",
            deliveries.missing(&acknowledged),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivered = *deliveries.total.lock().unwrap();
    println!(
        "soak: {cycles} SIGKILL cycles, {requests} requests ({resent} resent after a kill), \
         {} events acknowledged, stored once each, {delivered} deliveries ({} redelivered), \
         {:.0} s",
        acknowledged.len(),
        delivered - acknowledged.len() as u64,
        started.elapsed().as_secs_f64()
    );
    server.kill();
}
