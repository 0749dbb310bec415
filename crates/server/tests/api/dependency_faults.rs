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

/// What an outage under load showed.
struct Outage {
    answers: Vec<crate::load::Answer>,
    opened_after: Duration,
    closed_after: Duration,
    last_error: Value,
}

/// Runs the load, waits for the first deliveries, stops the dependency, checks the circuit
/// opens while ingest goes on, starts it again, checks the circuit closes, and waits until
/// the destination has sent everything (none dead-lettered).
async fn outage_under_load(
    app: &TestApp,
    tenant: &TestTenant,
    id: &str,
    stop: impl AsyncFnOnce(),
    start: impl AsyncFnOnce(),
) -> Outage {
    let load = Load::start(app, tenant, "broker.fault", LOAD);
    wait_until("the first events are delivered", PATIENCE, || async {
        destination(app, tenant, id).await["delivered"]
            .as_u64()
            .is_some_and(|delivered| delivered >= 20)
    })
    .await;
    stop().await;
    let stopped = Instant::now();
    wait_until("the destination's circuit opens", PATIENCE, || async {
        circuit_is(app, tenant, id, "open").await
    })
    .await;
    let opened_after = stopped.elapsed();
    let last_error = destination(app, tenant, id).await["last_error"].clone();
    load.wait_for_more_acknowledged(100, "events are acknowledged while the dependency is down")
        .await;
    start().await;
    let restarted = Instant::now();
    wait_until(
        "the circuit closes once the dependency is back",
        PATIENCE,
        || async { circuit_is(app, tenant, id, "closed").await },
    )
    .await;
    let closed_after = restarted.elapsed();
    load.wait_for_more_acknowledged(100, "events are acknowledged after the dependency is back")
        .await;
    let answers = load.stop().await;
    wait_until_everything_is_sent(app, tenant, id).await;
    assert_every_answer_was_2xx_within(&answers, FAST);
    Outage {
        answers,
        opened_after,
        closed_after,
        last_error,
    }
}

fn faulty_app_config(config: &mut pulsestream_server::config::ServeConfig) {
    config.allow_private_destinations = true;
    config.delivery_retry_base_ms = 20;
    config.delivery_breaker_cool_down_ms = 1_000;
    config.webhook_timeout_ms = 1_000;
}

fn rabbitmqctl(command: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("rabbitmqctl (RabbitMQ's own tool) runs");
    assert!(status.success(), "rabbitmqctl {command}");
}

/// Starts the machine's RabbitMQ application again however the test ends.
struct RabbitMqRestarted;

impl Drop for RabbitMqRestarted {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .arg("start_app")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_and_started_under_load_gets_every_event() {
    let started = Instant::now();
    let _turn = crate::destination_kinds::RABBITMQ.lock().await;
    let mut fixture = crate::destination_kinds::AmqpFixture::new("faults.#").await;
    let app = TestApp::spawn_with(faulty_app_config).await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "amqp", "url": crate::destination_kinds::amqp_url(),
               "exchange": fixture.exchange, "routing_key": "faults.{event_type}",
               "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let restarted = RabbitMqRestarted;
    let outage = outage_under_load(
        &app,
        &tenant,
        id,
        async || {
            tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
                .await
                .unwrap()
        },
        async || {
            tokio::task::spawn_blocking(|| rabbitmqctl("start_app"))
                .await
                .unwrap();
        },
    )
    .await;
    drop(restarted);
    fixture.reconnect().await;
    let messages = fixture.drain().await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for (_, message_id, _, event) in &messages {
        assert_eq!(event["id"], message_id.as_str());
        *copies
            .entry(event["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let delivered: HashSet<String> = copies.keys().cloned().collect();
    let acknowledged = acknowledged_event_ids(&outage.answers);
    assert_eq!(
        delivered, acknowledged,
        "every acknowledged event reached the queue, and nothing else"
    );
    fixture.remove().await;
    eprintln!(
        "RabbitMQ fault: {} events acknowledged, {} messages; circuit open {:?} after the stop ({}), \
         closed {:?} after the start; {:?} in all",
        acknowledged.len(),
        messages.len(),
        outage.opened_after,
        outage.last_error,
        outage.closed_after,
        started.elapsed()
    );
}

/// A private Mosquitto on its own port, keeping sessions in its own directory across a
/// stop (SIGTERM: it saves them on the way out) and a start.
struct Mosquitto {
    child: Child,
    config: std::path::PathBuf,
}

impl Mosquitto {
    fn start(port: u16, dir: &Path) -> Self {
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                // As root, Mosquitto would switch to its own user, which cannot write
                // the sessions into this directory.
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\nuser root\n",
                dir.display()
            ),
        )
        .unwrap();
        Self::run(config)
    }

    fn run(config: std::path::PathBuf) -> Self {
        let binary = std::env::var("PULSESTREAM_TEST_MOSQUITTO")
            .unwrap_or_else(|_| "/usr/sbin/mosquitto".into());
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{binary} (PULSESTREAM_TEST_MOSQUITTO): {err}"));
        Self { child, config }
    }

    async fn wait_ready(port: u16) {
        wait_until(
            "mosquitto accepts connections",
            Duration::from_secs(10),
            || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
        )
        .await;
    }

    /// SIGTERM, and waits for it to exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_stopped_and_started_under_load_gets_every_event() {
    let started = Instant::now();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(port, dir.path());
    Mosquitto::wait_ready(port).await;
    let subscriber = crate::destination_kinds::MqttSubscriber::persistent(port, "faults/#").await;
    let app = TestApp::spawn_with(faulty_app_config).await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "mqtt", "url": format!("mqtt://127.0.0.1:{port}"),
               "topic": "faults/{event_type}", "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    // The broker running now (none while it is stopped), and its configuration.
    let config = broker.config.clone();
    let running = std::sync::Mutex::new(Some(broker));
    let outage = outage_under_load(
        &app,
        &tenant,
        id,
        async || {
            let broker = running.lock().unwrap().take();
            broker.expect("the broker runs").stop();
        },
        async || {
            *running.lock().unwrap() = Some(Mosquitto::run(config.clone()));
            Mosquitto::wait_ready(port).await;
        },
    )
    .await;
    let acknowledged = acknowledged_event_ids(&outage.answers);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let received: HashSet<String> = subscriber
            .received()
            .iter()
            .map(|(_, event)| event["event_id"].as_str().unwrap().to_owned())
            .collect();
        if received.is_superset(&acknowledged) {
            break;
        }
        if Instant::now() > deadline {
            let mut missing: Vec<&String> = acknowledged.difference(&received).collect();
            missing.sort();
            panic!(
                "the subscriber lacks {} of {} acknowledged events: {:?}",
                missing.len(),
                acknowledged.len(),
                &missing[..missing.len().min(20)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = subscriber.received();
    let delivered: HashSet<String> = received
        .iter()
        .map(|(_, event)| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        delivered, acknowledged,
        "every acknowledged event, and nothing else"
    );
    drop(running);
    eprintln!(
        "MQTT fault: {} events acknowledged, {} messages; circuit open {:?} after the stop ({}), \
         closed {:?} after the start; {:?} in all",
        acknowledged.len(),
        received.len(),
        outage.opened_after,
        outage.last_error,
        outage.closed_after,
        started.elapsed()
    );
}

/// A private PostgreSQL cluster (initdb in a temporary directory, its own port), run with
/// `pg_ctl` as the `postgres` user when the tests run as root (PostgreSQL refuses root).
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn bin(tool: &str) -> String {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries are installed (/usr/lib/postgresql)")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .max_by_key(|name| name.parse::<u32>().unwrap_or(0))
            .expect("a PostgreSQL version");
        format!("/usr/lib/postgresql/{version}/bin/{tool}")
    }

    fn as_owner(tool: &str) -> Command {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        if root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", &Self::bin(tool)]);
            command
        } else {
            Command::new(Self::bin(tool))
        }
    }

    fn run(mut command: Command, what: &str) {
        let output = command
            .output()
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(
            output.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn create(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres", &dir.path().display().to_string()])
            .status();
        let mut initdb = Self::as_owner("initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.path().join("data"));
        Self::run(initdb, "initdb");
        let cluster = Self { dir, port };
        cluster.start();
        cluster
    }

    fn start(&self) {
        let mut pg_ctl = Self::as_owner("pg_ctl");
        pg_ctl
            .args(["-w", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start");
        Self::run(pg_ctl, "pg_ctl start");
    }

    /// An immediate shutdown: like a crash, no checkpoint.
    fn stop(&self) {
        let mut pg_ctl = Self::as_owner("pg_ctl");
        pg_ctl
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop");
        Self::run(pg_ctl, "pg_ctl stop");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut pg_ctl = Self::as_owner("pg_ctl");
        pg_ctl
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = pg_ctl.status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_stopped_and_started_under_load_gets_every_event_exactly_once() {
    let started = Instant::now();
    let cluster = PrivatePostgres::create(free_port());
    let app = TestApp::spawn_with(faulty_app_config).await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "postgres", "url": cluster.url(), "table": "events",
               "create_table": true, "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let outage = outage_under_load(
        &app,
        &tenant,
        id,
        async || cluster.stop(),
        async || cluster.start(),
    )
    .await;
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows: Vec<String> = client
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let stored: HashSet<String> = rows.iter().cloned().collect();
    let acknowledged = acknowledged_event_ids(&outage.answers);
    assert_eq!(rows.len(), stored.len(), "no event has two rows");
    assert_eq!(stored, acknowledged, "each acknowledged event has its row");
    eprintln!(
        "PostgreSQL table fault: {} events acknowledged, {} rows; circuit open {:?} after the stop ({}), \
         closed {:?} after the start; {:?} in all",
        acknowledged.len(),
        rows.len(),
        outage.opened_after,
        outage.last_error,
        outage.closed_after,
        started.elapsed()
    );
}
