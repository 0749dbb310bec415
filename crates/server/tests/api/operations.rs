//! Operating PulseStream: metrics that move with the traffic and pass promtool, request ids.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, event, metric_sum};

#[tokio::test]
async fn event_counters_move_by_what_was_ingested() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let label = format!("tenant=\"{}\"", tenant.id);
    let events: Vec<Value> = (0..7)
        .map(|i| event(&format!("m-{i}"), "t", json!({})))
        .collect();

    app.post_batch(&tenant, &events).await;
    app.post_batch(&tenant, &events[..3]).await;
    app.post_batch(
        &tenant,
        &[json!({"event_id": "no-type"}), event("m-9", "t", json!({}))],
    )
    .await;
    app.post_event(&tenant, &json!({"payload": {}})).await;

    let text = app.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "pulsestream_events_total",
            &[&label, "outcome=\"accepted\""]
        ),
        8.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "pulsestream_events_total",
            &[&label, "outcome=\"duplicate\""]
        ),
        3.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "pulsestream_events_total",
            &[&label, "outcome=\"rejected\""]
        ),
        2.0
    );
    assert!(
        metric_sum(
            &text,
            "pulsestream_http_requests_total",
            &["route=\"/v1/events/batch\"", "status=\"200\""]
        ) >= 2.0
    );
    assert!(
        metric_sum(
            &text,
            "pulsestream_http_request_duration_seconds_count",
            &["route=\"/v1/events/batch\""]
        ) >= 3.0
    );
    assert!(metric_sum(&text, "pulsestream_commit_batch_events_count", &[]) >= 1.0);
    assert!(
        text.contains("pulsestream_rate_limiter_backend{backend=\"local\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn refused_events_are_counted_as_rate_limited() {
    let app = TestApp::spawn().await;
    let tenant = app
        .create_tenant_with(json!({"name": "tight", "rate_limit_per_minute": 60, "burst": 2}))
        .await;
    let label = format!("tenant=\"{}\"", tenant.id);

    app.post_batch(
        &tenant,
        &[event("a", "t", json!({})), event("b", "t", json!({}))],
    )
    .await;
    let refused = app
        .post_batch(
            &tenant,
            &[event("c", "t", json!({})), event("d", "t", json!({}))],
        )
        .await;

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let text = app.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "pulsestream_events_total",
            &[&label, "outcome=\"rate_limited\""]
        ),
        2.0
    );
}

#[tokio::test]
async fn the_metrics_pass_promtool() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    app.post_event(&tenant, &event("p-1", "t", json!({}))).await;
    app.search_raw(&tenant, "").await;
    let text = app.metrics().await;

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package prometheus) for this test");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();

    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {report}");
    assert!(
        report.trim().is_empty(),
        "promtool found problems: {report}"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = TestApp::spawn().await;

    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    let made = app.client.get(app.url("/healthz")).send().await.unwrap();

    assert_eq!(given.headers()["x-request-id"], "req-42");
    assert_eq!(made.headers()["x-request-id"].to_str().unwrap().len(), 36);

    // An id that could forge log fields, or of any length the client likes, is replaced.
    for forged in [
        "abc\" status=200 injected=\"1".to_owned(),
        "x".repeat(129),
        "tab\there".to_owned(),
    ] {
        let response = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", forged.as_str())
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(echoed, forged);
        assert_eq!(echoed.len(), 36, "a fresh id instead of {forged:?}");
    }
}
