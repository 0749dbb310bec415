//! A node whose wall clock jumps, in a two-node cluster (one PostgreSQL schema, one Redis):
//! libfaketime (Debian's `faketime`) moves the second node's clock 5 minutes forward, then
//! 5 minutes back, while both serve — what an NTP step or a bad VM clock does. The monotonic
//! clock is left alone, as a real wall-clock step leaves it.
//!
//! What must not depend on the node's clock: exactly-once storage (the unique constraint),
//! rate limits (Redis's clock), what is due in the delivery queue and whose lease has run
//! out (the database's clock), and `Idempotency-Key` replays.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::harness::{ADMIN_TOKEN, ServerProcess, TestApp, TestStore, TestTenant, body, event};
use crate::receiver::{Behaviour, Receiver, wait_until};

/// Debian's libfaketime (package `faketime`; `.ci/run` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

async fn tenant(client: &reqwest::Client, base: &str, limits: Value) -> TestTenant {
    let created: Value = client
        .post(format!("{base}/admin/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&limits)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    TestTenant {
        id: created["id"].as_str().unwrap().into(),
        api_key: created["api_key"].as_str().unwrap().into(),
    }
}

/// Sets the skewed node's clock offset (libfaketime re-reads the file on every call).
fn set_clock(file: &Path, spec: &str) {
    std::fs::write(file, spec).expect("write the faketime file");
}

/// How far the skewed node's clock is from ours, as it stamps an event it receives.
async fn skew_of(node: &crate::harness::ApiClient, tenant: &TestTenant) -> Duration {
    let response = node
        .post_event(tenant, &json!({"event_type": "clock.probe"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let stored = body(response).await;
    let read = body(node.get_event(tenant, stored["id"].as_str().unwrap()).await).await;
    let received = OffsetDateTime::parse(read["received_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let skew = received - OffsetDateTime::now_utc();
    Duration::from_secs(skew.whole_seconds().unsigned_abs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_clock_jumps_stores_once_limits_and_delivers_on_time() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is needed (apt-get install faketime)"
    );
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("faketime");
    set_clock(&clock, "+0");
    let store = TestStore::new().await;
    let prefix = format!("pstest-{}", uuid::Uuid::new_v4().simple());
    let redis = crate::rate_limits::test_redis_url();
    let flags = [
        "--redis-url",
        redis.as_str(),
        "--redis-key-prefix",
        prefix.as_str(),
        "--allow-private-destinations",
        "true",
        "--delivery-retry-base-ms",
        "20",
    ];
    let steady = ServerProcess::start(&store, &flags);
    let clock_path = clock.display().to_string();
    let skewed = ServerProcess::start_with_env(
        &store,
        &flags,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", clock_path.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    steady.wait_ready(&client).await;
    skewed.wait_ready(&client).await;
    let nodes = [
        TestApp::attach(&steady.base, client.clone()),
        TestApp::attach(&skewed.base, client.clone()),
    ];
    let open = tenant(
        &client,
        &steady.base,
        json!({"name": "clock", "rate_limit_per_minute": 10_000_000, "burst": 1_000_000}),
    )
    .await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = client
        .post(format!("{}/v1/destinations", steady.base))
        .bearer_auth(&open.api_key)
        .json(&json!({"kind": "webhook", "url": receiver.url, "event_types": ["clock.test"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let destination: Value = created.json().await.unwrap();
    let switch = |action: &'static str| {
        let request = client
            .post(format!(
                "{}/v1/destinations/{}/{action}",
                steady.base,
                destination["id"].as_str().unwrap()
            ))
            .bearer_auth(&open.api_key);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{action}");
        }
    };

    // Each round stores events under one clock while the destination is paused, and has
    // them delivered under the next: a due time stamped in a node's clock that jumped back
    // would hold them for minutes.
    let mut sent = 0;
    for (spec, expected) in [("+5m", 300), ("-5m", 300), ("+0", 0)] {
        set_clock(&clock, spec);
        // The jump is real: the skewed node stamps what it receives with its clock.
        let skew = skew_of(&nodes[1], &open).await;
        assert!(
            skew.as_secs().abs_diff(expected) <= 30,
            "clock {spec}: the node's clock is {skew:?} off"
        );
        switch("resume").await;
        wait_until(
            &format!("clock {spec}: every event stored under the last clock is delivered"),
            Duration::from_secs(30),
            || async { receiver.delivered_events().len() >= sent },
        )
        .await;

        // Exactly once: one copy through each node at the same time.
        let copy = event(&format!("once-{spec}"), "clock.once", json!({"spec": spec}));
        let (a, b) = tokio::join!(
            nodes[0].post_event(&open, &copy),
            nodes[1].post_event(&open, &copy)
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 201], "clock {spec}");

        // Idempotency-Key: stored through one node, replayed by the other.
        let keyed = json!({"events": [event(&format!("keyed-{spec}"), "clock.keyed", json!({}))]});
        let key = format!("clock-{spec}");
        for (n, node) in nodes.iter().enumerate() {
            let response = client
                .post(node.url("/v1/events/batch"))
                .bearer_auth(&open.api_key)
                .header("idempotency-key", &key)
                .json(&keyed)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "clock {spec}");
            let replayed = response.headers().get("idempotent-replayed").is_some();
            assert_eq!(replayed, n == 1, "clock {spec}: node {n}");
        }

        switch("pause").await;
        for (n, node) in nodes.iter().enumerate() {
            let events: Vec<Value> = (0..20)
                .map(|i| event(&format!("d-{spec}-{n}-{i}"), "clock.test", json!({"i": i})))
                .collect();
            assert_eq!(
                node.post_batch(&open, &events).await.status(),
                StatusCode::OK
            );
            sent += 20;
        }
    }
    switch("resume").await;
    wait_until("every event delivered", Duration::from_secs(30), || async {
        receiver.delivered_events().len() >= sent
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for delivered in receiver.delivered_events() {
        *seen
            .entry(delivered["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), sent);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");

    // Rate limits hold whichever clock the node has: Redis's clock decides.
    let limited = tenant(
        &client,
        &steady.base,
        json!({"name": "limited", "rate_limit_per_minute": 60, "burst": 10}),
    )
    .await;
    for spec in ["+5m", "-5m"] {
        set_clock(&clock, spec);
        let started = Instant::now();
        let mut accepted = 0u64;
        for i in 0..30 {
            let response = nodes[i % 2]
                .post_event(
                    &limited,
                    &event(&format!("rl-{spec}-{i}"), "clock.limited", json!({})),
                )
                .await;
            match response.status() {
                StatusCode::CREATED => accepted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("clock {spec}: {other}"),
            }
        }
        // The burst, plus what one per second refilled meanwhile (and one for rounding).
        let allowed = 10 + started.elapsed().as_secs() + 1;
        assert!(
            accepted <= allowed,
            "clock {spec}: {accepted} accepted, at most {allowed} allowed"
        );
        assert!(accepted >= 5, "clock {spec}: only {accepted} accepted");
        // The next round starts from a full bucket.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
