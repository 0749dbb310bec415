//! Delivery to webhooks and NATS JetStream: filters, signatures, retries, dead letters,
//! circuit breakers, 410, isolation, restarts, and the tenant boundary.

use std::time::Duration;

use pulsestream_server::ServeConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, TestStore, TestTenant, body, event, metric_sum};
use crate::receiver::{Behaviour, Receiver, wait_for, wait_until};

const PATIENCE: Duration = Duration::from_secs(15);

pub async fn delivering_app() -> TestApp {
    delivering_app_with(|_| {}).await
}

/// [`delivering_app`] with more changes to its configuration.
pub async fn delivering_app_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
    TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 20;
        config.delivery_breaker_cool_down_ms = 1_000;
        config.webhook_timeout_ms = 2_000;
        adjust(config);
    })
    .await
}

pub async fn create_destination(app: &TestApp, tenant: &TestTenant, spec: Value) -> Value {
    let response = app
        .client
        .post(app.url("/v1/destinations"))
        .bearer_auth(&tenant.api_key)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{spec}");
    body(response).await
}

pub async fn destination(app: &TestApp, tenant: &TestTenant, id: &str) -> Value {
    body(
        app.client
            .get(app.url(&format!("/v1/destinations/{id}")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_events_reach_the_webhook_signed_and_only_once() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "event_types": ["order.*"]}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    app.post_event(&tenant, &event("o-1", "order.created", json!({"n": 1})))
        .await;
    app.post_event(&tenant, &event("u-1", "user.signup", json!({})))
        .await;
    app.post_batch(
        &tenant,
        &[
            event("o-2", "order.paid", json!({})),
            event("o-1", "order.created", json!({"n": 1})),
        ],
    )
    .await;

    wait_until("two order events are delivered", PATIENCE, || async {
        receiver.delivered_events().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = receiver.delivered_events();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "the duplicate ingest enqueued nothing, the signup matched no filter: {ids:?}"
    );
    assert!(ids.contains(&"o-1") && ids.contains(&"o-2"));
    for request in receiver.received() {
        let id = request.headers["webhook-id"].to_str().unwrap();
        let timestamp: i64 = request.headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let expected =
            pulsestream_delivery::signature(&secret, id, timestamp, &request.body).unwrap();
        assert_eq!(
            request.headers["webhook-signature"].to_str().unwrap(),
            expected
        );
        assert!(id.starts_with("msg_"));
    }
    let view = destination(&app, &tenant, created["id"].as_str().unwrap()).await;
    assert_eq!(
        (view["delivered"].as_u64(), view["pending"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(
        view.get("secret").is_none(),
        "the secret is shown only once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_stored_sealed_and_still_sign_after_a_restart() {
    let mut app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();

    // The restarted server opens the sealed secret with the same key (read back from the
    // data dir on the embedded store, configured on PostgreSQL).
    app.restart().await;
    app.post_event(&tenant, &event("k-1", "t", json!({}))).await;
    wait_until("the event is delivered", PATIENCE, || async {
        receiver.delivered_events().len() == 1
    })
    .await;
    app.stop().await;

    let request = &receiver.received()[0];
    let id = request.headers["webhook-id"].to_str().unwrap();
    let timestamp: i64 = request.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        request.headers["webhook-signature"].to_str().unwrap(),
        pulsestream_delivery::signature(&secret, id, timestamp, &request.body).unwrap()
    );
    let records = stored_destination_records(app.store()).await;
    assert_eq!(records.len(), 1);
    let record: Value = serde_json::from_str(&records[0]).unwrap();
    assert!(
        record["secret"].as_str().unwrap().starts_with("enc:v1:"),
        "{record}"
    );
    let key_material = secret.trim_start_matches("whsec_");
    assert!(
        !records[0].contains(key_material),
        "the stored record holds the secret in plaintext: {}",
        records[0]
    );
}

/// Every destination record as the store keeps it, read straight from the PostgreSQL table
/// or from the embedded store's files (the server must be stopped).
pub async fn stored_destination_records(store: &TestStore) -> Vec<String> {
    use pulsestream_store::DestinationStore;
    use pulsestream_store::EventStore;
    use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};

    if let Some(url) = &store.database_url {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        return client
            .query("SELECT record::text FROM destinations", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
    }
    let dir = store.dir.path().to_path_buf();
    let embedded =
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&EmbeddedConfig::new(&dir)))
            .await
            .unwrap()
            .unwrap();
    let records = embedded
        .all_destinations()
        .await
        .unwrap()
        .iter()
        .map(|destination| serde_json::to_string(destination).unwrap())
        .collect();
    embedded.close().await.unwrap();
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_until_the_receiver_accepts() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::FailNext(3, 503)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url}),
    )
    .await;

    app.post_event(&tenant, &event("r-1", "t", json!({}))).await;

    wait_until("the event is delivered after retries", PATIENCE, || async {
        receiver.delivered_events().len() == 1
    })
    .await;
    let requests = receiver.received();
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    let first_id = requests[0].headers["webhook-id"].clone();
    assert!(
        requests.iter().all(|r| r.headers["webhook-id"] == first_id),
        "webhook-id is stable across retries"
    );
    let view = destination(&app, &tenant, created["id"].as_str().unwrap()).await;
    assert_eq!(view["delivered"], 1);
    assert_eq!(view["circuit"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_events_go_to_dead_letters_and_come_back_on_replay() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 2}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.post_batch(
        &tenant,
        &[event("d-1", "t", json!({})), event("d-2", "t", json!({}))],
    )
    .await;

    wait_until("both events are dead letters", PATIENCE, || async {
        destination(&app, &tenant, &id).await["dead_lettered"] == 2
    })
    .await;
    let letters = body(
        app.client
            .get(app.url(&format!("/v1/destinations/{id}/dead-letters")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 2);
    assert_eq!(letters["dead_letters"][0]["attempts"], 2);
    assert!(
        letters["dead_letters"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    let view = destination(&app, &tenant, &id).await;
    assert_eq!(view["pending"], 0);

    receiver.set(Behaviour::Accept);
    let first = letters["dead_letters"][0]["id"].as_str().unwrap();
    let replayed = body(
        app.client
            .post(app.url(&format!("/v1/destinations/{id}/dead-letters/replay")))
            .bearer_auth(&tenant.api_key)
            .json(&json!({"ids": [first]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(replayed["replayed"], 1);
    wait_until("the replayed event is delivered", PATIENCE, || async {
        receiver.delivered_events().len() == 1
    })
    .await;

    let purged = body(
        app.client
            .delete(app.url(&format!("/v1/destinations/{id}/dead-letters")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(purged["purged"], 1);
    let view = destination(&app, &tenant, &id).await;
    assert_eq!(
        (view["dead_lettered"].as_u64(), view["delivered"].as_u64()),
        (Some(0), Some(1))
    );
    // A `null` body is no body: replay everything (nothing is left).
    let null = app
        .post_raw(
            &tenant,
            &format!("/v1/destinations/{id}/dead-letters/replay"),
            "application/json",
            b"null".to_vec(),
        )
        .await;
    assert_eq!(null.status(), StatusCode::OK);
    assert_eq!(body(null).await["replayed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_spends_no_attempts_while_open_and_closes_after_a_good_probe() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(503)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 100}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.post_event(&tenant, &event("c-1", "t", json!({}))).await;

    wait_until("the circuit opens", PATIENCE, || async {
        destination(&app, &tenant, &id).await["circuit"] == "open"
    })
    .await;
    let attempts_when_open = receiver.received().len();
    assert_eq!(attempts_when_open, 5, "it opens after 5 failures in a row");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        attempts_when_open,
        "no attempts while open"
    );

    receiver.set(Behaviour::Accept);
    wait_until(
        "the probe succeeds and the circuit closes",
        PATIENCE,
        || async { destination(&app, &tenant, &id).await["circuit"] == "closed" },
    )
    .await;
    assert_eq!(receiver.delivered_events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_destination() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(410)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();

    app.post_event(&tenant, &event("g-1", "t", json!({}))).await;

    wait_until("the destination is disabled", PATIENCE, || async {
        destination(&app, &tenant, &id).await["disabled"] == true
    })
    .await;
    app.post_event(&tenant, &event("g-2", "t", json!({}))).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.received().len(), 1, "nothing more is sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_destination_does_not_delay_another() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let stalled = Receiver::start(Behaviour::Stall(Duration::from_secs(10))).await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": stalled.url}),
    )
    .await;
    create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": healthy.url}),
    )
    .await;

    for i in 0..5 {
        app.post_event(&tenant, &event(&format!("s-{i}"), "t", json!({})))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    wait_until(
        "the healthy destination gets every event",
        Duration::from_secs(2),
        || async { healthy.delivered_events().len() == 5 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_resume_after_a_restart() {
    let mut app = delivering_app().await;
    let tenant = app.create_tenant().await;
    // Nothing listens on the receiver's port yet: every attempt is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": format!("http://127.0.0.1:{port}/hook")}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.post_event(&tenant, &event("p-1", "t", json!({}))).await;
    wait_until("an attempt has failed", PATIENCE, || async {
        destination(&app, &tenant, &id).await["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("connect"))
    })
    .await;

    app.restart().await;
    let receiver = Receiver::start_on(port, Behaviour::Accept).await;

    wait_until(
        "the pending event is delivered after the restart",
        PATIENCE,
        || async { receiver.delivered_events().len() == 1 },
    )
    .await;
    assert_eq!(receiver.delivered_events()[0]["event_id"], "p-1");
    // The worker records the outcome once the receiver has answered: a moment after the
    // receiver saw the event (asserting at once raced with it on a loaded machine).
    wait_until("the delivery is recorded", PATIENCE, || async {
        destination(&app, &tenant, &id).await["pending"] == 0
    })
    .await;
}

#[tokio::test]
async fn destinations_belong_to_their_tenant_and_private_urls_are_refused() {
    let app = TestApp::spawn().await;
    let owner = app.create_tenant().await;

    let private = app
        .client
        .post(app.url("/v1/destinations"))
        .bearer_auth(&owner.api_key)
        .json(&json!({"kind": "webhook", "url": "http://127.0.0.1:9/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body(private).await["errors"][0]["type"], "url_not_public");
    for url in [
        "ftp://example.com/x",
        "not a url",
        "http://169.254.169.254/latest",
    ] {
        let refused = app
            .client
            .post(app.url("/v1/destinations"))
            .bearer_auth(&owner.api_key)
            .json(&json!({"kind": "webhook", "url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
    }
    let nats = app
        .client
        .post(app.url("/v1/destinations"))
        .bearer_auth(&owner.api_key)
        .json(&json!({"kind": "nats", "subject": "orders"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        nats.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "no NATS configured"
    );
    for subject in ["$JS.API.STREAM.DELETE.ORDERS", "_INBOX.abc"] {
        let system = app
            .client
            .post(app.url("/v1/destinations"))
            .bearer_auth(&owner.api_key)
            .json(&json!({"kind": "nats", "subject": subject}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            system.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{subject}"
        );
        assert_eq!(
            body(system).await["errors"][0]["loc"][1],
            "subject",
            "{subject}"
        );
    }

    let app = delivering_app().await;
    let owner = app.create_tenant().await;
    let other_tenant = app.create_tenant().await;
    let created = create_destination(
        &app,
        &owner,
        json!({"kind": "webhook", "url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/destinations/{id}")),
        (reqwest::Method::DELETE, format!("/v1/destinations/{id}")),
        (
            reqwest::Method::GET,
            format!("/v1/destinations/{id}/dead-letters"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/destinations/{id}/dead-letters/replay"),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/destinations/{id}/dead-letters"),
        ),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&other_tenant.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    let listed = body(
        app.client
            .get(app.url("/v1/destinations"))
            .bearer_auth(&other_tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["destinations"].as_array().unwrap().len(), 0);
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/destinations/{id}")))
        .bearer_auth(&owner.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_receives_each_event_once() {
    let nats_url = std::env::var("PULSESTREAM_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let subject = format!("pulsestream.test.{suffix}");
    let client = async_nats::connect(&nats_url)
        .await
        .expect("NATS must be running for this test");
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: format!("PS_TEST_{suffix}"),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let app = TestApp::spawn_with(|config| {
        config.nats_url = Some(pulsestream_server::config::Secret(nats_url.clone()));
        config.delivery_retry_base_ms = 20;
    })
    .await;
    let tenant = app.create_tenant().await;
    create_destination(&app, &tenant, json!({"kind": "nats", "subject": subject})).await;
    let events: Vec<Value> = (0..20)
        .map(|i| event(&format!("n-{i}"), "order.created", json!({"i": i})))
        .collect();

    let stored = body(app.post_batch(&tenant, &events).await).await;
    app.post_batch(&tenant, &events).await;

    let stream_name = format!("PS_TEST_{suffix}");
    wait_until("20 messages are in the stream", PATIENCE, || {
        let (jetstream, name) = (jetstream.clone(), stream_name.clone());
        async move {
            match jetstream.get_stream(&name).await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map(|info| info.state.messages >= 20)
                    .unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = stream;
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 20, "each event once");
    let mut published = Vec::new();
    for sequence in 1..=20 {
        let message = stream.get_raw_message(sequence).await.unwrap();
        published.push(
            message
                .headers
                .get("Nats-Msg-Id")
                .unwrap()
                .as_str()
                .to_owned(),
        );
    }
    let mut expected: Vec<String> = stored["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    published.sort();
    expected.sort();
    assert_eq!(published, expected, "Nats-Msg-Id is the event's id");
    jetstream
        .delete_stream(format!("PS_TEST_{suffix}"))
        .await
        .unwrap();
}

fn big_event(event_id: &str, bytes: usize) -> Value {
    event(event_id, "big.event", json!({"blob": "x".repeat(bytes)}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batches_are_capped_by_bytes() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_batch_bytes": 1_048_576}),
    )
    .await;
    assert_eq!(created["max_batch_bytes"], 1_048_576);
    let events: Vec<Value> = (0..12)
        .map(|i| big_event(&format!("big-{i}"), 300_000))
        .collect();
    assert_eq!(
        app.post_batch(&tenant, &events).await.status(),
        StatusCode::OK
    );
    wait_until("every event is delivered", PATIENCE, || async {
        receiver.delivered_events().len() >= 12
    })
    .await;
    let requests = receiver.received();
    assert!(
        requests.len() >= 4,
        "12 events of 300 KB need 4 requests at least"
    );
    for request in &requests {
        assert!(
            request.body.len() <= 1_048_576 + 64,
            "a body of {} bytes",
            request.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_down_to_single_events_before_counting_an_attempt() {
    // Megabyte bodies through debug builds on a loaded 2-core CI machine: a send that timed
    // out would dead-letter (one attempt) what this test expects delivered, so the timeout
    // is not what is tested here.
    let app = delivering_app_with(|config| config.webhook_timeout_ms = 60_000).await;
    let tenant = app.create_tenant().await;
    // The receiver takes at most ~700 KB; every event alone fits but one.
    let receiver = Receiver::start(Behaviour::MaxBody(700_000)).await;
    let created = create_destination(
        &app,
        &tenant,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 1,
               "max_batch_bytes": 104_857_600}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut events: Vec<Value> = (0..6)
        .map(|i| big_event(&format!("fits-{i}"), 300_000))
        .collect();
    events.push(big_event("too-big", 800_000));
    assert_eq!(
        app.post_batch(&tenant, &events).await.status(),
        StatusCode::OK
    );
    let view = wait_for("everything is settled", PATIENCE * 2, async || {
        let view = destination(&app, &tenant, &id).await;
        if view["pending"] == 0 && view["delivered"] == 6 {
            return Ok(view);
        }
        let sent: Vec<(u16, usize)> = receiver
            .received()
            .iter()
            .map(|request| (request.status, request.body.len()))
            .collect();
        Err(format!(
            "{view}; the receiver answered (status, bytes) {sent:?}"
        ))
    })
    .await;
    assert_eq!(view["dead_lettered"], 1, "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("too large")),
        "{view}"
    );
    let mut delivered: Vec<String> = receiver
        .delivered_events()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        ["fits-0", "fits-1", "fits-2", "fits-3", "fits-4", "fits-5"]
    );
    assert!(
        receiver
            .received()
            .iter()
            .any(|request| request.status == 413),
        "the receiver refused the first batch"
    );
}

/// The sum of a destination's claims so far, from `/metrics`.
async fn claims(app: &TestApp, destination: &str) -> u64 {
    metric_sum(
        &app.metrics().await,
        "pulsestream_delivery_claims_total",
        &[&format!("destination=\"{destination}\"")],
    ) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_destinations_make_no_claims_and_wake_when_an_event_arrives() {
    let app = delivering_app().await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let created = create_destination(
            &app,
            &tenant,
            json!({"kind": "webhook", "url": receiver.url}),
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    wait_until("every worker has looked at its queue", PATIENCE, || async {
        for id in &ids {
            if claims(&app, id).await == 0 {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut before = Vec::new();
    for id in &ids {
        before.push(claims(&app, id).await);
    }
    // A worker that polled every 100 ms would claim ~30 times here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, before) in ids.iter().zip(&before) {
        assert_eq!(
            claims(&app, id).await,
            *before,
            "the idle destination {id} claimed while nothing was queued"
        );
    }
    // One event wakes every worker of the tenant at once.
    app.post_event(&tenant, &event("wake-1", "t", json!({})))
        .await;
    wait_until("each destination received the event", PATIENCE, || async {
        receiver.delivered_events().len() == ids.len()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_has_at_most_the_configured_number_of_destinations() {
    let app = TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.max_destinations_per_tenant = 3;
    })
    .await;
    let tenant = app.create_tenant().await;
    let other = app.create_tenant().await;
    let spec = json!({"kind": "webhook", "url": "http://127.0.0.1:9/hook"});
    for _ in 0..3 {
        create_destination(&app, &tenant, spec.clone()).await;
    }
    let refused = app
        .client
        .post(app.url("/v1/destinations"))
        .bearer_auth(&tenant.api_key)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = body(refused).await;
    assert_eq!(
        problem["errors"][0]["type"], "too_many_destinations",
        "{problem}"
    );
    // The limit is per tenant.
    create_destination(&app, &other, spec.clone()).await;
}
