//! The brokers and warehouse as destinations — RabbitMQ, MQTT (Mosquitto) and a PostgreSQL
//! table, each the real server on this machine — and what every kind takes: filters in the
//! search language and ordered delivery.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{ConnectionProperties, ExchangeKind};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::delivery::{
    create_destination, delivering_app, destination, stored_destination_records,
};
use crate::harness::{TestApp, TestTenant, body, event, test_database_url};
use crate::receiver::{Behaviour, Receiver, wait_until};

const PATIENCE: Duration = Duration::from_secs(20);

/// The machine's RabbitMQ, or `PULSESTREAM_TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("PULSESTREAM_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The machine's Mosquitto, or `PULSESTREAM_TEST_MQTT_URL`.
pub fn mqtt_url() -> String {
    std::env::var("PULSESTREAM_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

async fn refused(app: &TestApp, tenant: &TestTenant, spec: Value) -> Value {
    let response = app
        .client
        .post(app.url("/v1/destinations"))
        .bearer_auth(&tenant.api_key)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "{spec}"
    );
    body(response).await
}

fn loc(problem: &Value) -> Vec<String> {
    problem["errors"][0]["loc"]
        .as_array()
        .unwrap_or_else(|| panic!("a loc: {problem}"))
        .iter()
        .map(|part| part.as_str().unwrap().to_owned())
        .collect()
}

async fn send_one(app: &TestApp, tenant: &TestTenant, event: Value) {
    let response = app.post_event(tenant, &event).await;
    assert!(response.status().is_success(), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_ordering_are_checked_and_shown() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url,
               "filter": {"source": "web", "payload.plan.seats": 5, "q": "ada"},
               "ordering": {"key": "payload.user.id"}}),
    )
    .await;
    assert_eq!(
        created["filter"],
        json!({"source": "web", "payload.plan.seats": "5", "q": "ada"})
    );
    assert_eq!(created["ordering"], json!({"key": "payload.user.id"}));
    let id = created["id"].as_str().unwrap();
    let shown = destination(&app, &tenant, id).await;
    assert_eq!(shown["filter"], created["filter"]);
    assert_eq!(shown["ordering"], created["ordering"]);

    for (spec, expected) in [
        (
            json!({"filter": {"colour": "red"}}),
            vec!["body", "filter", "colour"],
        ),
        (
            json!({"filter": {"payload.": "x"}}),
            vec!["body", "filter", "payload."],
        ),
        (
            json!({"filter": {"source": ["a"]}}),
            vec!["body", "filter", "source"],
        ),
        (json!({"filter": {"q": "  "}}), vec!["body", "filter", "q"]),
        (json!({"filter": {}}), vec!["body", "filter"]),
        (json!({"filter": "source=web"}), vec!["body", "filter"]),
        (
            json!({"ordering": {"key": "user_id"}}),
            vec!["body", "ordering", "key"],
        ),
        (json!({"ordering": "event_type"}), vec!["body", "ordering"]),
        (
            json!({"ordering": {"key": "event_type", "x": 1}}),
            vec!["body", "ordering"],
        ),
    ] {
        let mut spec = spec;
        spec["kind"] = "webhook".into();
        spec["url"] = receiver.url.clone().into();
        let problem = refused(&app, &tenant, spec.clone()).await;
        assert_eq!(loc(&problem), expected, "{spec}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_delivers_only_the_events_search_would_find() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "event_types": ["order.*"],
               "filter": {"source": "web", "payload.total": 10, "q": "express"}}),
    )
    .await;
    let events = vec![
        json!({"event_id": "yes", "event_type": "order.paid", "source": "web",
               "payload": {"total": 10.0, "shipping": "Express"}}),
        json!({"event_id": "other-type", "event_type": "user.signup", "source": "web",
               "payload": {"total": 10, "shipping": "express"}}),
        json!({"event_id": "other-source", "event_type": "order.paid", "source": "ios",
               "payload": {"total": 10, "shipping": "express"}}),
        json!({"event_id": "other-total", "event_type": "order.paid", "source": "web",
               "payload": {"total": 11, "shipping": "express"}}),
        json!({"event_id": "no-word", "event_type": "order.paid", "source": "web",
               "payload": {"total": 10, "shipping": "standard"}}),
        json!({"event_id": "yes-too", "event_type": "order.created", "source": "web",
               "payload": {"total": 1e1, "note": "EXPRESS please"}}),
    ];
    assert!(app.post_batch(&tenant, &events).await.status().is_success());
    // Search with the same filters finds the same two.
    let found = body(
        app.client
            .get(app.url(
                "/v1/events?source=web&payload.total=10&q=express&event_type=order.paid&event_type=order.created",
            ))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mut searched: Vec<&str> = found["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap())
        .collect();
    searched.sort_unstable();
    assert_eq!(searched, ["yes", "yes-too"]);
    wait_until("the matching events are delivered", PATIENCE, || async {
        receiver.delivered_events().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut delivered: Vec<String> = receiver
        .delivered_events()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, ["yes", "yes-too"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery_keeps_each_key_in_order_while_other_keys_flow() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    // Every request that carries a1 fails, four times: a1's key waits, b's does not.
    let receiver = Receiver::start(Behaviour::FailWhileContains("\"event_id\":\"a1\"", 4)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 10,
               "ordering": {"key": "payload.user"}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let sent = ["a1", "b1", "a2", "b2", "a3", "b3"];
    for event_id in sent {
        let user = &event_id[..1];
        send_one(
            &app,
            &tenant,
            event(event_id, "page.view", json!({"user": user})),
        )
        .await;
    }
    wait_until("every event is delivered", PATIENCE, || async {
        destination(&app, &tenant, &id).await["delivered"] == sent.len()
    })
    .await;
    let delivered: Vec<String> = receiver
        .delivered_events()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    let first = |name: &str| {
        delivered
            .iter()
            .position(|delivered| delivered == name)
            .unwrap_or_else(|| panic!("{name} delivered: {delivered:?}"))
    };
    assert!(
        first("a1") < first("a2") && first("a2") < first("a3"),
        "a's events in ingest order: {delivered:?}"
    );
    assert!(
        first("b1") < first("b2") && first("b2") < first("b3"),
        "b's events in ingest order: {delivered:?}"
    );
    assert!(
        first("b3") < first("a1"),
        "b's key kept flowing while a1 was retried: {delivered:?}"
    );
    let failures = receiver
        .received()
        .iter()
        .filter(|request| request.status == 500)
        .count();
    assert_eq!(failures, 4, "a1 was refused four times");
    // Nothing of a's key reached the receiver before a1 did.
    let before_a1: Vec<&String> = delivered[..first("a1")]
        .iter()
        .filter(|name| name.starts_with('a'))
        .collect();
    assert!(before_a1.is_empty(), "{delivered:?}");
}

/// Tests that use the machine's RabbitMQ take turns with the one that stops it.
pub static RABBITMQ: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A topic exchange of the test's own, deleted at the end, with a queue bound to it.
pub struct AmqpFixture {
    pub connection: lapin::Connection,
    pub channel: lapin::Channel,
    pub exchange: String,
    pub queue: String,
}

impl AmqpFixture {
    pub async fn new(binding: &str) -> Self {
        let connection = lapin::Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running for this test (PULSESTREAM_TEST_AMQP_URL)");
        let channel = connection.create_channel().await.unwrap();
        let exchange = unique("pulsestream-test-");
        // Durable, like the queue: both outlive a stop and start of the broker.
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                unique("pulsestream-test-q-").as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    auto_delete: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = queue.name().as_str().to_owned();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            connection,
            channel,
            exchange,
            queue,
        }
    }

    /// Reconnects after the broker went away and came back.
    #[allow(dead_code, reason = "only the fault test stops the broker")]
    pub async fn reconnect(&mut self) {
        self.connection = lapin::Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        self.channel = self.connection.create_channel().await.unwrap();
    }

    /// Every message in the queue now: (routing key, message id, delivery mode, body).
    pub async fn drain(&self) -> Vec<(String, String, u8, Value)> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            messages.push((
                delivery.routing_key.as_str().to_owned(),
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                delivery.properties.delivery_mode().unwrap_or(0),
                serde_json::from_slice(&delivery.data).unwrap(),
            ));
        }
        messages
    }

    pub async fn remove(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), Default::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_gets_each_event_persistent_and_confirmed_with_its_id() {
    let _turn = RABBITMQ.lock().await;
    let fixture = AmqpFixture::new("events.order.#").await;
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "amqp", "url": amqp_url(), "exchange": fixture.exchange,
               "routing_key": "events.{event_type}", "event_types": ["order.*"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["url"], "amqp://guest@127.0.0.1:5672/%2f",
        "no password shown"
    );
    assert_eq!(created["routing_key"], "events.{event_type}");

    let events: Vec<Value> = (0..25)
        .map(|i| event(&format!("r-{i}"), "order.created", json!({"i": i})))
        .chain([event("skip", "user.signup", json!({}))])
        .collect();
    let stored = body(app.post_batch(&tenant, &events).await).await;
    app.post_batch(&tenant, &events).await;
    wait_until("25 are delivered", PATIENCE, || async {
        destination(&app, &tenant, &id).await["delivered"] == 25
    })
    .await;
    let messages = fixture.drain().await;
    assert_eq!(messages.len(), 25, "each matching event once");
    let ids: HashMap<String, String> = stored["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| {
            (
                result["id"].as_str().unwrap_or_default().to_owned(),
                result["event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (routing_key, message_id, mode, event) in &messages {
        assert_eq!(routing_key, "events.order.created");
        assert_eq!(*mode, 2, "persistent");
        assert_eq!(
            event["id"],
            message_id.as_str(),
            "message_id is the event's id"
        );
        assert_eq!(
            ids.get(message_id).map(String::as_str),
            event["event_id"].as_str()
        );
    }
    fixture.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_message_no_queue_takes_is_retried_not_lost() {
    let _turn = RABBITMQ.lock().await;
    let fixture = AmqpFixture::new("bound.only").await;
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "amqp", "url": amqp_url(), "exchange": fixture.exchange,
               "routing_key": "unbound.{event_type}", "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    send_one(&app, &tenant, event("lost?", "x", json!({}))).await;
    wait_until("the broker's return is recorded", PATIENCE, || async {
        destination(&app, &tenant, &id).await["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("NO_ROUTE"))
    })
    .await;
    let view = destination(&app, &tenant, &id).await;
    assert_eq!(view["pending"], 1, "still queued: {view}");
    assert_eq!(view["delivered"], 0, "{view}");
    fixture.remove().await;
}

/// A subscriber on the machine's Mosquitto: every message of `filter`, with its topic.
pub struct MqttSubscriber {
    pub received: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttSubscriber {
    pub async fn start(port: u16, filter: &str) -> Self {
        Self::connect(port, filter, true).await
    }

    /// With a session the broker keeps (clean session off): what is published while the
    /// subscriber reconnects waits for it.
    #[allow(dead_code, reason = "only the fault test keeps a session")]
    pub async fn persistent(port: u16, filter: &str) -> Self {
        Self::connect(port, filter, false).await
    }

    async fn connect(port: u16, filter: &str, clean: bool) -> Self {
        let mut options = rumqttc::MqttOptions::new(unique("pulsestream-test-"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(clean);
        options.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut event_loop) = rumqttc::AsyncClient::new(options, 100);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let received: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed = Some(subscribed);
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match event_loop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(subscribed) = subscribed.take() {
                            let _ = subscribed.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                        sink.lock().unwrap().push((
                            publish.topic.clone(),
                            serde_json::from_slice(&publish.payload).unwrap(),
                        ));
                    }
                    Ok(_) => {}
                    // The broker went away: try again shortly (clean session: resubscribe).
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), is_subscribed)
            .await
            .expect("Mosquitto must be running for this test (PULSESTREAM_TEST_MQTT_URL)")
            .unwrap();
        Self { received, task }
    }

    pub fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn port_of(url: &str) -> u16 {
    reqwest::Url::parse(url).unwrap().port().unwrap_or(1883)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_gets_each_event_at_qos_1_on_its_topic() {
    let prefix = unique("pulsestream-test/");
    let subscriber = MqttSubscriber::start(port_of(&mqtt_url()), &format!("{prefix}/#")).await;
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "mqtt", "url": mqtt_url(), "topic": format!("{prefix}/{{source}}/{{event_type}}")}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let events: Vec<Value> = (0..30)
        .map(|i| {
            let mut event = event(&format!("m-{i}"), "sensor.reading", json!({"i": i}));
            event["source"] = "device-7".into();
            event
        })
        .collect();
    assert!(app.post_batch(&tenant, &events).await.status().is_success());
    wait_until("30 are delivered", PATIENCE, || async {
        destination(&app, &tenant, &id).await["delivered"] == 30
    })
    .await;
    wait_until("the subscriber has 30", PATIENCE, || async {
        subscriber.received().len() >= 30
    })
    .await;
    let received = subscriber.received();
    let ids: HashSet<&str> = received
        .iter()
        .map(|(topic, event)| {
            assert_eq!(topic, &format!("{prefix}/device-7/sensor.reading"));
            event["event_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 30);

    // Wildcards in a topic are refused.
    let problem = refused(
        &app,
        &tenant,
        json!({"kind": "mqtt", "url": mqtt_url(), "topic": "a/+/b"}),
    )
    .await;
    assert_eq!(loc(&problem), ["body", "topic"]);
}

/// A schema of the test's own in the test database, dropped at the end.
pub struct SinkSchema {
    pub client: tokio_postgres::Client,
    pub name: String,
}

impl SinkSchema {
    pub async fn new(url: &str) -> Self {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running for this test");
        tokio::spawn(connection);
        let name = unique("ps_sink_");
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self { client, name }
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.client
            .query_one(&format!("SELECT count(*) FROM {}.{table}", self.name), &[])
            .await
            .map(|row| row.get(0))
            .unwrap_or(0)
    }

    pub async fn drop_schema(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_gets_each_event_once_created_or_mapped() {
    let url = test_database_url();
    let schema = SinkSchema::new(&url).await;
    // The tenant's own table, with its own column names.
    schema
        .client
        .batch_execute(&format!(
            "CREATE TABLE {}.mapped (event_uuid uuid PRIMARY KEY, kind text NOT NULL,
                 body jsonb NOT NULL, at timestamptz NOT NULL, note text)",
            schema.name
        ))
        .await
        .unwrap();
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "postgres", "url": url, "table": format!("{}.created", schema.name),
               "create_table": true}),
    )
    .await;
    let created_id = created["id"].as_str().unwrap().to_owned();
    let mapped = create_destination(
        &app,
        &tenant,
        json!({"kind": "postgres", "url": url, "table": format!("{}.mapped", schema.name),
               "columns": {"id": "event_uuid", "event_type": "kind", "payload": "body",
                           "timestamp": "at", "event_id": null, "source": null,
                           "received_at": null}}),
    )
    .await;
    let mapped_id = mapped["id"].as_str().unwrap().to_owned();
    assert_eq!(mapped["columns"]["source"], Value::Null);
    assert_eq!(mapped["columns"]["id"], "event_uuid");

    let events: Vec<Value> = (0..40)
        .map(|i| {
            event(
                &format!("p-{i}"),
                "order.created",
                json!({"i": i, "nested": {"ok": true}}),
            )
        })
        .collect();
    assert!(app.post_batch(&tenant, &events).await.status().is_success());
    assert!(app.post_batch(&tenant, &events).await.status().is_success());
    for id in [&created_id, &mapped_id] {
        wait_until("40 are delivered", PATIENCE, || async {
            destination(&app, &tenant, id).await["delivered"] == 40
        })
        .await;
    }
    assert_eq!(schema.count("created").await, 40);
    assert_eq!(schema.count("mapped").await, 40);
    let row = schema
        .client
        .query_one(
            &format!(
                "SELECT event_type, payload, source, event_id FROM {}.created WHERE event_id = 'p-7'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "order.created");
    assert_eq!(
        row.get::<_, Value>(1),
        json!({"i": 7, "nested": {"ok": true}})
    );
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("checkout"));
    let row = schema
        .client
        .query_one(
            &format!(
                "SELECT kind, body FROM {}.mapped WHERE body->>'i' = '7'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "order.created");
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_database_addresses_are_checked_and_their_urls_kept_sealed() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    for spec in [
        json!({"kind": "amqp", "url": "amqp://guest:guest@127.0.0.1:5672/%2f", "exchange": "x"}),
        json!({"kind": "mqtt", "url": "mqtt://10.0.0.8:1883", "topic": "t"}),
        json!({"kind": "postgres", "url": "postgres://u:p@localhost/db", "table": "events"}),
    ] {
        let problem = refused(&app, &tenant, spec.clone()).await;
        assert_eq!(
            problem["errors"][0]["type"], "url_not_public",
            "{spec}: {problem}"
        );
    }
    // The other checks, on a server that allows private addresses (the names need not resolve).
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    for (spec, field) in [
        (json!({"kind": "amqp", "url": "http://broker/"}), "url"),
        (json!({"kind": "amqp"}), "url"),
        (
            json!({"kind": "amqp", "url": "amqp://h/", "routing_key": "{payload}"}),
            "routing_key",
        ),
        (json!({"kind": "mqtt", "url": "mqtt://h"}), "topic"),
        (
            json!({"kind": "postgres", "url": "postgres://h/db"}),
            "table",
        ),
        (
            json!({"kind": "postgres", "url": "postgres://h/db", "table": "a.b.c"}),
            "table",
        ),
        (
            json!({"kind": "postgres", "url": "postgres://h/db", "table": "t",
                "columns": {"id": null}}),
            "columns",
        ),
        (
            json!({"kind": "postgres", "url": "postgres://h/db", "table": "t",
                "columns": {"colour": "c"}}),
            "columns",
        ),
        (
            json!({"kind": "postgres", "url": "postgres://h/db", "table": "t",
                "columns": {"payload": "id"}}),
            "columns",
        ),
        (json!({"kind": "kafka"}), "kind"),
    ] {
        let problem = refused(&app, &tenant, spec.clone()).await;
        assert_eq!(loc(&problem)[1], field, "{spec}: {problem}");
    }

    // A connection URL's password is sealed at rest and never shown.
    let mut app = app;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "postgres", "table": "t",
               "url": "postgres://writer:pw-4b1d@db.internal:5432/warehouse?password=pw-4b1d&application_name=x"}),
    )
    .await;
    assert_eq!(
        created["url"],
        "postgres://writer@db.internal:5432/warehouse?application_name=x"
    );
    app.stop().await;
    let records = stored_destination_records(app.store()).await;
    assert_eq!(records.len(), 1);
    assert!(!records[0].contains("pw-4b1d"), "{}", records[0]);
    let record: Value = serde_json::from_str(&records[0]).unwrap();
    assert!(
        record["connection"]
            .as_str()
            .unwrap()
            .starts_with("enc:v1:"),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_webhook_url_are_sealed_and_not_shown_but_still_sent() {
    let mut app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let with_credentials = receiver
        .url
        .replace("http://", "http://hook-user:hook-pass-7f3e@");
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": with_credentials}),
    )
    .await;
    let shown = created["url"].as_str().unwrap().to_owned();
    assert!(!shown.contains("hook-pass-7f3e"), "{shown}");
    assert!(shown.contains("hook-user@"), "{shown}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(destination(&app, &tenant, &id).await["url"], shown.as_str());
    send_one(&app, &tenant, event("cred-1", "t", json!({}))).await;
    wait_until("the event is delivered", PATIENCE, || async {
        receiver.delivered_events().len() == 1
    })
    .await;
    // The receiver got the credentials (Basic auth from the sealed URL).
    let request = &receiver.received()[0];
    let authorization = request.headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(authorization.starts_with("Basic "), "{authorization}");
    app.stop().await;
    let records = stored_destination_records(app.store()).await;
    assert!(!records[0].contains("hook-pass-7f3e"), "{}", records[0]);
}
