//! Delivery dependencies stopped and restarted under load: a NATS server killed (SIGKILL) and
//! started again on the same port and store, and a webhook receiver stopped and started again
//! on its port. Ingestion keeps answering 2xx at once (delivery is asynchronous: what cannot
//! be sent waits in the outbox), the destination's circuit opens while the dependency is
//! down and closes by itself when it is back, and every acknowledged event arrives.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{Value, json};

use crate::delivery::{create_destination, delivering_app, destination};
use crate::harness::{TestApp, TestTenant, free_port};
use crate::load::{Load, Shape, acknowledged_event_ids, assert_every_answer_was_2xx_within};
use crate::receiver::{Behaviour, Receiver, wait_until};

const PATIENCE: Duration = Duration::from_secs(20);

/// Ingestion never waits for delivery: an answer slower than this would mean it did.
const FAST: Duration = Duration::from_secs(2);

/// Two clients sending single events and one sending batches of 10, each pausing 20 ms.
const LOAD: Shape = Shape {
    single_clients: 2,
    batch_clients: 1,
    batch_size: 10,
    pause: Duration::from_millis(20),
};

/// A private `nats-server` with JetStream, on its own port and store directory.
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    fn start(port: u16, store: &Path) -> Self {
        let binary = std::env::var("PULSESTREAM_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{binary} (PULSESTREAM_TEST_NATS_SERVER): {err}"));
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        wait_until(
            "nats-server accepts connections",
            Duration::from_secs(10),
            || async { std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() },
        )
        .await;
    }

    /// SIGKILL: no shutdown, nothing flushed on the way out.
    fn kill(mut self) {
        self.child.kill().expect("kill nats-server");
        self.child.wait().expect("reap nats-server");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn circuit_is(app: &TestApp, tenant: &TestTenant, id: &str, circuit: &str) -> bool {
    destination(app, tenant, id).await["circuit"] == circuit
}

/// Waits until the destination has nothing left to send, then checks none was given up on.
async fn wait_until_everything_is_sent(app: &TestApp, tenant: &TestTenant, id: &str) {
    wait_until("the destination has nothing pending", PATIENCE, || async {
        destination(app, tenant, id).await["pending"] == 0
    })
    .await;
    let view = destination(app, tenant, id).await;
    assert_eq!(view["dead_lettered"], 0, "nothing was given up on: {view}");
    assert_eq!(view["circuit"], "closed", "{view}");
}

const STREAM: &str = "PS_FAULTS";

async fn stream_message_count(jetstream: &jetstream::Context) -> u64 {
    match jetstream.get_stream(STREAM).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// Every message in the stream: its `Nats-Msg-Id` and the event it carries.
async fn messages_in_stream(jetstream: &jetstream::Context) -> Vec<(String, Value)> {
    let mut stream = jetstream.get_stream(STREAM).await.expect("the stream");
    let info = stream.info().await.expect("the stream's info");
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut messages = Vec::new();
    for sequence in first..=last {
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|err| panic!("message {sequence}: {err}"));
        let msg_id = message
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has a Nats-Msg-Id")
            .as_str()
            .to_owned();
        messages.push((msg_id, serde_json::from_slice(&message.payload).unwrap()));
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_under_load_loses_and_duplicates_no_event() {
    let started = Instant::now();
    let port = free_port();
    let nats_store = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(port, nats_store.path());
    nats.wait_ready().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = jetstream::new(client);
    let subject = "pulsestream.faults.orders";
    jetstream
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![subject.into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the stream");
    let app = TestApp::spawn_with(|config| {
        config.nats_url = Some(pulsestream_server::config::Secret(nats.url()));
        config.delivery_retry_base_ms = 20;
        config.delivery_breaker_cool_down_ms = 1_000;
        config.webhook_timeout_ms = 1_000;
    })
    .await;
    let tenant = app.create_tenant().await;
    // Enough attempts that the outage cannot exhaust them: this test is about loss.
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "nats", "subject": subject, "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let load = Load::start(&app, &tenant, "nats.fault", LOAD);
    wait_until("events reach the stream", PATIENCE, || async {
        stream_message_count(&jetstream).await >= 20
    })
    .await;

    nats.kill();
    let killed = Instant::now();
    wait_until("the destination's circuit opens", PATIENCE, || async {
        circuit_is(&app, &tenant, id, "open").await
    })
    .await;
    let opened_after = killed.elapsed();
    let last_error = destination(&app, &tenant, id).await["last_error"].clone();
    // Five failures open the circuit. Waiting for acknowledgements would take five ack
    // timeouts (5 s here); a sink that sees the client is disconnected fails at once.
    assert!(
        opened_after < Duration::from_secs(3),
        "the circuit opened {opened_after:?} after the kill ({last_error})"
    );
    load.wait_for_more_acknowledged(100, "events are acknowledged while NATS is down")
        .await;

    let nats = NatsServer::start(port, nats_store.path());
    nats.wait_ready().await;
    let restarted = Instant::now();
    wait_until("the circuit closes once NATS is back", PATIENCE, || async {
        circuit_is(&app, &tenant, id, "closed").await
    })
    .await;
    let closed_after = restarted.elapsed();
    load.wait_for_more_acknowledged(100, "events are acknowledged after NATS is back")
        .await;
    let answers = load.stop().await;
    wait_until_everything_is_sent(&app, &tenant, id).await;

    assert_every_answer_was_2xx_within(&answers, FAST);
    let acknowledged = acknowledged_event_ids(&answers);
    let messages = messages_in_stream(&jetstream).await;
    let msg_ids: HashSet<&str> = messages.iter().map(|(msg_id, _)| msg_id.as_str()).collect();
    let event_ids: HashSet<String> = messages
        .iter()
        .map(|(_, event)| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    for (msg_id, event) in &messages {
        assert_eq!(
            event["id"],
            msg_id.as_str(),
            "Nats-Msg-Id is the event's id"
        );
    }
    assert_eq!(
        msg_ids.len(),
        messages.len(),
        "the stream's duplicate window dropped every redelivery"
    );
    assert_eq!(
        messages.len(),
        acknowledged.len(),
        "the stream holds each acknowledged event once"
    );
    assert_eq!(
        event_ids, acknowledged,
        "the stream holds exactly the acknowledged events"
    );
    eprintln!(
        "NATS fault: {} events acknowledged, {} messages; circuit open {opened_after:?} \
         after the kill ({last_error}), closed {closed_after:?} after the restart; {:?} in all",
        acknowledged.len(),
        messages.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_stopped_and_started_again_under_load_gets_every_event() {
    let started = Instant::now();
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let port = free_port();
    let mut receiver = Receiver::start_on(port, Behaviour::Accept).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let load = Load::start(&app, &tenant, "hook.fault", LOAD);
    wait_until("events reach the receiver", PATIENCE, || async {
        receiver.delivered_events().len() >= 20
    })
    .await;

    receiver.stop().await;
    let stopped = Instant::now();
    wait_until("the destination's circuit opens", PATIENCE, || async {
        circuit_is(&app, &tenant, id, "open").await
    })
    .await;
    let opened_after = stopped.elapsed();
    let last_error = destination(&app, &tenant, id).await["last_error"].clone();
    assert!(
        last_error
            .as_str()
            .is_some_and(|error| error.contains("connect")),
        "the stopped receiver refused connections: {last_error}"
    );
    load.wait_for_more_acknowledged(100, "events are acknowledged while the receiver is down")
        .await;

    let again = Receiver::start_on(port, Behaviour::Accept).await;
    let restarted = Instant::now();
    wait_until(
        "the circuit closes once the receiver is back",
        PATIENCE,
        || async { circuit_is(&app, &tenant, id, "closed").await },
    )
    .await;
    let closed_after = restarted.elapsed();
    load.wait_for_more_acknowledged(100, "events are acknowledged after the receiver is back")
        .await;
    let answers = load.stop().await;
    wait_until_everything_is_sent(&app, &tenant, id).await;

    assert_every_answer_was_2xx_within(&answers, FAST);
    let acknowledged = acknowledged_event_ids(&answers);
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for event in receiver
        .delivered_events()
        .into_iter()
        .chain(again.delivered_events())
    {
        *deliveries
            .entry(event["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let delivered: HashSet<String> = deliveries.keys().cloned().collect();
    assert!(
        !again.delivered_events().is_empty(),
        "delivery resumed to the restarted receiver"
    );
    assert_eq!(
        delivered, acknowledged,
        "every acknowledged event was delivered, and nothing else"
    );
    eprintln!(
        "webhook fault: {} events acknowledged, {} deliveries; circuit open {opened_after:?} \
         after the stop, closed {closed_after:?} after the restart; {:?} in all",
        acknowledged.len(),
        deliveries.values().sum::<usize>(),
        started.elapsed()
    );
}
