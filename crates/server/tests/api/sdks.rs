//! Real client libraries against the real server: Segment's Python SDK
//! (`segment-analytics-python`) and Node SDK (`@segment/analytics-node`), and PostHog's
//! Python SDK (`posthog`), unchanged but for their host and key.
//!
//! The SDKs are installed on first use into `target/sdk-env` (a Python venv and an npm
//! prefix, pinned versions); `.ci/run` installs them before the tests. Without Python or
//! npm the tests fail, as a test whose dependency is missing must.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, TestTenant, metric_sum};

const SEGMENT_PYTHON: &str = "segment-analytics-python==2.4.0";
const POSTHOG_PYTHON: &str = "posthog==7.91.1";
const CLOUDEVENTS_PYTHON: &str = "cloudevents==2.2.0";
const CLOUDEVENTS_NODE: &str = "cloudevents@10.0.0";
const SEGMENT_NODE: &str = "@segment/analytics-node@3.1.0";

/// Where the SDKs are installed: `target/sdk-env` of the workspace.
fn sdk_env() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk-env")
}

/// One installation at a time, whichever test asks first.
static INSTALL: Mutex<()> = Mutex::new(());

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The venv's python, with the Python SDKs installed.
fn python() -> PathBuf {
    let _one = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = sdk_env().join("python");
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    let wanted = format!("{SEGMENT_PYTHON} {POSTHOG_PYTHON} {CLOUDEVENTS_PYTHON}");
    if std::fs::read_to_string(&marker).ok() != Some(wanted.clone()) {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "-q",
                SEGMENT_PYTHON,
                POSTHOG_PYTHON,
                CLOUDEVENTS_PYTHON,
            ]),
            "pip install",
        );
        std::fs::write(&marker, wanted).expect("write the marker");
    }
    python
}

/// The npm prefix with the Node SDKs installed.
fn node_modules() -> PathBuf {
    let _one = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let prefix = sdk_env().join("node");
    let marker = prefix.join(".installed");
    let wanted = format!("{SEGMENT_NODE} {CLOUDEVENTS_NODE}");
    if std::fs::read_to_string(&marker).ok() != Some(wanted.clone()) {
        std::fs::create_dir_all(&prefix).expect("create the npm prefix");
        run(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .args([SEGMENT_NODE, CLOUDEVENTS_NODE]),
            "npm install",
        );
        std::fs::write(&marker, wanted).expect("write the marker");
    }
    prefix.join("node_modules")
}

/// Runs a script off the runtime's threads (the server under test runs on them); returns
/// its stdout, failing on a non-zero exit.
async fn script(mut command: Command) -> String {
    let output = tokio::task::spawn_blocking(move || command.output().expect("run the SDK"))
        .await
        .expect("task");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the SDK script failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Sends, with the Python SDK in sync mode, one message of every call type; `gzip` as the
/// SDK offers it. Prints the errors the SDK reported (none expected). Each message has its
/// own `messageId` and `timestamp` (the SDK stamps "now" otherwise), so a second run sends
/// exactly the same messages, as an SDK's retry does.
const PYTHON_ALL_CALLS: &str = r#"
import json, sys
from datetime import datetime, timezone
from segment.analytics.client import Client
host, key, gzip = sys.argv[1], sys.argv[2], sys.argv[3] == "gzip"
at = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
errors = []
client = Client(key, host=host, sync_mode=True, gzip=gzip, max_retries=5,
                on_error=lambda error, batch: errors.append(str(error)))
client.track(user_id="u-1", event="Order Completed", properties={"total": 10, "currency": "EUR"},
             context={"ip": "203.0.113.9"}, timestamp=at, message_id="py-track-1")
client.identify(user_id="u-1", traits={"plan": "pro", "email": "ada@example.com"},
                timestamp=at, message_id="py-identify-1")
client.page(user_id="u-1", category="Docs", name="Quickstart", properties={"path": "/docs"},
            timestamp=at, message_id="py-page-1")
client.screen(user_id="u-1", name="Settings", timestamp=at, message_id="py-screen-1")
client.group(user_id="u-1", group_id="g-42", traits={"name": "Acme"}, timestamp=at,
             message_id="py-group-1")
client.alias(previous_id="anon-7", user_id="u-1", timestamp=at, message_id="py-alias-1")
client.flush()
print(json.dumps(errors))
"#;

async fn send_every_call(app: &TestApp, tenant: &TestTenant, gzip: bool) -> Vec<Value> {
    let mut command = Command::new(python());
    command.args([
        "-c",
        PYTHON_ALL_CALLS,
        &app.base,
        &tenant.api_key,
        if gzip { "gzip" } else { "plain" },
    ]);
    serde_json::from_str(script(command).await.trim()).expect("the errors as JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segment_python_sdk_stores_every_call_once_and_its_resend_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let errors = send_every_call(&app, &tenant, false).await;
    assert!(errors.is_empty(), "the SDK reported {errors:?}");
    let stored = app.search(&tenant, "limit=100").await;
    let events = stored["events"].as_array().unwrap();
    assert_eq!(events.len(), 6, "{stored}");

    let track = &app
        .search(
            &tenant,
            "event_type=Order%20Completed&payload.properties.total=10",
        )
        .await["events"][0];
    assert_eq!(track["event_id"], "py-track-1", "messageId is the event_id");
    assert_eq!(
        track["source"], "analytics-python",
        "the library is the source"
    );
    assert_eq!(
        track["timestamp"], "2026-11-30T12:00:00Z",
        "the timestamp as sent"
    );
    assert_eq!(track["payload"]["type"], "track");
    assert_eq!(track["payload"]["userId"], "u-1");
    assert_eq!(track["payload"]["context"]["ip"], "203.0.113.9");
    assert!(
        track["payload"].get("writeKey").is_none() && track["payload"].get("sentAt").is_none(),
        "the key and the send time are not stored: {track}"
    );
    for (event_type, message_id) in [
        ("identify", "py-identify-1"),
        ("page", "py-page-1"),
        ("screen", "py-screen-1"),
        ("group", "py-group-1"),
        ("alias", "py-alias-1"),
    ] {
        let found = app
            .search(&tenant, &format!("event_type={event_type}"))
            .await;
        assert_eq!(found["events"][0]["event_id"], message_id, "{found}");
    }
    let identify = app.search(&tenant, "payload.traits.plan=pro").await;
    assert_eq!(identify["events"].as_array().unwrap().len(), 1);

    // The same messages again, gzipped this time: every one a duplicate, nothing stored.
    let errors = send_every_call(&app, &tenant, true).await;
    assert!(errors.is_empty(), "the SDK reported {errors:?}");
    assert_eq!(app.count_events(&tenant, "").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segment_python_sdk_retries_a_429_and_then_succeeds() {
    let app = TestApp::spawn().await;
    // Two events at once, then one every half second.
    let tenant = app
        .create_tenant_with(
            serde_json::json!({"name": "slow", "rate_limit_per_minute": 120, "burst": 2}),
        )
        .await;
    let mut command = Command::new(python());
    command.args([
        "-c",
        r#"
import json, sys
from segment.analytics.client import Client
errors = []
# The SDK's own consumer thread (sync_mode posts once, without retries), one message a
# request: the third meets the limit, gets 429 + Retry-After, and is sent again.
client = Client(sys.argv[2], host=sys.argv[1], upload_size=1, max_retries=10,
                on_error=lambda error, batch: errors.append(str(error)))
for n in range(5):
    client.track(user_id="u", event="Tick", properties={"n": n}, message_id=f"tick-{n}")
client.flush()
client.join()
print(json.dumps(errors))
"#,
        &app.base,
        &tenant.api_key,
    ]);
    let errors: Vec<Value> = serde_json::from_str(script(command).await.trim()).unwrap();
    assert!(errors.is_empty(), "the SDK gave up: {errors:?}");
    assert_eq!(app.count_events(&tenant, "event_type=Tick").await, 5);
    assert!(
        rate_limited_events(&app).await >= 1.0,
        "the SDK met a 429 on the way"
    );
}

/// Events answered 429 so far, from `/metrics`.
async fn rate_limited_events(app: &TestApp) -> f64 {
    metric_sum(
        &app.metrics().await,
        "pulsestream_events_total{",
        &["outcome=\"rate_limited\""],
    )
}

/// What the SDKs do not send, by hand: other ways to give the key, bad messages among good
/// ones, and bodies that cannot be stored.
#[tokio::test]
async fn segment_requests_are_authenticated_checked_per_message_and_answered_as_sdks_expect() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let post = |path: &str, body: Value| {
        app.client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    // The key in X-Write-Key, or in the body.
    let by_header = post(
        "/v1/track",
        json!({"userId": "u", "event": "A", "messageId": "k-1"}),
    )
    .header("x-write-key", &tenant.api_key)
    .send()
    .await
    .unwrap();
    assert_eq!(by_header.status(), StatusCode::OK);
    let by_body = post(
        "/v1/identify",
        json!({"userId": "u", "writeKey": tenant.api_key, "messageId": "k-2"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(by_body.status(), StatusCode::OK);
    let stored = app.search(&tenant, "event_id=k-2").await;
    assert_eq!(stored["events"][0]["event_type"], "identify");
    assert!(stored["events"][0]["payload"].get("writeKey").is_none());
    for (name, request) in [
        (
            "no key",
            post("/v1/track", json!({"userId": "u", "event": "A"})),
        ),
        (
            "unknown key",
            post("/v1/track", json!({"userId": "u", "event": "A"})).basic_auth("ps_nope", Some("")),
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "unauthorized", "{name}: {problem}");
    }

    // One batch: good messages stored, bad ones rejected alone, each with its reason.
    let batch = json!({
        "context": {"library": {"name": "hand-written"}},
        "batch": [
            {"type": "track", "userId": "u", "event": "Kept", "messageId": "b-1"},
            {"type": "track", "userId": "u", "messageId": "b-2"},
            {"type": "identify", "messageId": "b-3"},
            {"type": "teleport", "userId": "u", "messageId": "b-4"},
            {"type": "group", "anonymousId": "a", "messageId": "b-5"},
            {"type": "alias", "userId": "u", "previousId": "old", "messageId": "b-6"},
            {"type": "track", "userId": "u", "event": "Kept", "messageId": "b-1",
             "properties": {"other": true}},
            {"type": "page", "userId": "u", "messageId": "b-8", "timestamp": "yesterday"},
            {"type": "track", "userId": "u", "event": "Big", "messageId": "b-9",
             "properties": {"blob": "x".repeat(40_000)}},
        ]
    });
    let response = post("/v1/batch", batch)
        .basic_auth(&tenant.api_key, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["pulsestream-rejected"], "7");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (&answer["success"], &answer["accepted"], &answer["rejected"]),
        (&json!(true), &json!(2), &json!(7)),
        "{answer}"
    );
    let reasons: Vec<(u64, &str)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            (
                error["index"].as_u64().unwrap(),
                error["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (1, "missing_field"),
            (2, "missing_field"),
            (3, "unknown_type"),
            (4, "missing_field"),
            (6, "conflict"),
            (7, "invalid"),
            (8, "too_large"),
        ],
        "{answer}"
    );
    let kept = app.search(&tenant, "event_id=b-1").await;
    assert_eq!(
        kept["events"][0]["source"], "hand-written",
        "the batch's context applies"
    );

    // Nothing storable, bad JSON, or too large: 400, which SDKs do not retry.
    for (name, request) in [
        (
            "no valid message",
            post("/v1/batch", json!({"batch": [{"type": "track"}]})),
        ),
        (
            "not JSON",
            app.client
                .post(app.url("/v1/batch"))
                .header("content-type", "application/json")
                .body("{nope"),
        ),
        (
            "over 500 KB",
            post(
                "/v1/batch",
                json!({"batch": (0..20).map(|n| json!({"type": "track", "userId": "u", "event": "E",
                    "properties": {"blob": "y".repeat(30_000)}, "messageId": format!("big-{n}")}))
                    .collect::<Vec<_>>()}),
            ),
        ),
    ] {
        let response = request
            .basic_auth(&tenant.api_key, Some(""))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
    }
    assert_eq!(app.count_events(&tenant, "").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segment_node_sdk_stores_its_batch() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let mut command = Command::new("node");
    command.env("NODE_PATH", node_modules()).args([
        "-e",
        r#"
const { Analytics } = require('@segment/analytics-node');
const [host, writeKey] = process.argv.slice(1);
const analytics = new Analytics({ writeKey, host, path: '/v1/batch', flushAt: 3, maxRetries: 3 });
analytics.on('error', (error) => { console.error('SDK error', error); process.exitCode = 1; });
analytics.track({ userId: 'n-1', event: 'Signed Up', properties: { plan: 'pro' } });
analytics.identify({ userId: 'n-1', traits: { name: 'Ada' } });
analytics.page({ anonymousId: 'a-9', name: 'Pricing' });
analytics.closeAndFlush().then(() => console.log('flushed'));
"#,
        &app.base,
        &tenant.api_key,
    ]);
    assert_eq!(script(command).await.trim(), "flushed");
    let signed_up = app.search(&tenant, "event_type=Signed%20Up").await;
    let event = &signed_up["events"][0];
    assert_eq!(event["source"], "@segment/analytics-node", "{event}");
    assert_eq!(event["payload"]["properties"]["plan"], "pro");
    assert!(event["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(app.count_events(&tenant, "").await, 3);
}

/// PostHog's Python SDK: captures (plain and gzipped) stored once each, mapped, and a
/// resend of the same `uuid` stored nothing new.
const POSTHOG_CAPTURES: &str = r#"
import json, sys
from datetime import datetime, timezone
from posthog import Posthog
host, key, gzip = sys.argv[1], sys.argv[2], sys.argv[3] == "gzip"
at = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
errors = []
posthog = Posthog(key, host=host, sync_mode=True, gzip=gzip, max_retries=5,
                  on_error=lambda error, batch: errors.append(str(error)))
posthog.capture("signed up", distinct_id="d-1", properties={"plan": "pro", "seats": 3},
                timestamp=at, uuid="0190a8c4-0000-7000-8000-00000000aaa1")
posthog.capture("$pageview", distinct_id="d-1", properties={"$current_url": "https://example.com/"},
                timestamp=at, uuid="0190a8c4-0000-7000-8000-00000000aaa2")
posthog.flush()
print(json.dumps(errors))
"#;

async fn posthog_captures(app: &TestApp, tenant: &TestTenant, gzip: bool) {
    let mut command = Command::new(python());
    command.args([
        "-c",
        POSTHOG_CAPTURES,
        &app.base,
        &tenant.api_key,
        if gzip { "gzip" } else { "plain" },
    ]);
    let errors: Vec<Value> = serde_json::from_str(script(command).await.trim()).unwrap();
    assert!(errors.is_empty(), "the SDK reported {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posthog_python_sdk_stores_captures_once_and_its_resend_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    posthog_captures(&app, &tenant, false).await;
    assert_eq!(app.count_events(&tenant, "").await, 2);
    let signed_up = app
        .search(&tenant, "event_type=signed%20up&payload.properties.seats=3")
        .await;
    let event = &signed_up["events"][0];
    assert_eq!(
        event["event_id"], "0190a8c4-0000-7000-8000-00000000aaa1",
        "uuid is the event_id"
    );
    assert_eq!(event["source"], "posthog-python", "$lib is the source");
    assert_eq!(event["timestamp"], "2026-11-30T12:00:00Z");
    assert_eq!(event["payload"]["distinct_id"], "d-1");
    assert!(
        event["payload"].get("api_key").is_none(),
        "the key is not stored: {event}"
    );
    let pageview = app.search(&tenant, "event_type=%24pageview").await;
    assert_eq!(
        pageview["events"][0]["payload"]["properties"]["$current_url"],
        "https://example.com/"
    );
    // The same captures again, gzipped: duplicates, nothing stored.
    posthog_captures(&app, &tenant, true).await;
    assert_eq!(app.count_events(&tenant, "").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posthog_python_sdk_retries_a_429_and_then_succeeds() {
    let app = TestApp::spawn().await;
    let tenant = app
        .create_tenant_with(json!({"name": "slow", "rate_limit_per_minute": 120, "burst": 2}))
        .await;
    let mut command = Command::new(python());
    command.args([
        "-c",
        r#"
import json, sys
from posthog import Posthog
errors = []
# The SDK's consumer thread (it retries 429 after Retry-After), one event a request.
posthog = Posthog(sys.argv[2], host=sys.argv[1], flush_at=1, max_retries=10,
                  on_error=lambda error, batch: errors.append(str(error)))
for n in range(5):
    posthog.capture("tick", distinct_id="d", properties={"n": n})
posthog.flush()
posthog.shutdown()
print(json.dumps(errors))
"#,
        &app.base,
        &tenant.api_key,
    ]);
    let errors: Vec<Value> = serde_json::from_str(script(command).await.trim()).unwrap();
    assert!(errors.is_empty(), "the SDK gave up: {errors:?}");
    assert_eq!(app.count_events(&tenant, "event_type=tick").await, 5);
    assert!(
        rate_limited_events(&app).await >= 1.0,
        "the SDK met a 429 on the way"
    );
}

/// What the PostHog SDKs send in other shapes: posthog-js's `?compression=gzip-js` with
/// text/plain, a single event on `/i/v0/e/`, an array on `/e/`, and events without a key
/// or a distinct_id.
#[tokio::test]
async fn posthog_bodies_of_every_shape_are_read_and_checked_per_event() {
    use std::io::Write as _;

    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let key = tenant.api_key.as_str();
    let body = json!({"api_key": key, "batch": [
        {"event": "a", "distinct_id": "d", "uuid": "0190a8c4-0000-7000-8000-00000000bbb1"},
        {"event": "b", "properties": {"distinct_id": "d", "$lib": "web"}},
        {"event": "c"},
        {"distinct_id": "d"},
        {"event": "e", "distinct_id": "d", "api_key": "ps_someone_else"},
    ]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).unwrap();
    let response = app
        .client
        .post(app.url("/batch/?compression=gzip-js&ver=1.0"))
        .header("content-type", "text/plain")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (&answer["status"], &answer["accepted"]),
        (&json!(1), &json!(2)),
        "{answer}"
    );
    let reasons: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["missing_field", "missing_field", "other_key"]);
    let web = app.search(&tenant, "event_type=b").await;
    assert_eq!(web["events"][0]["source"], "web");

    let single = app
        .client
        .post(app.url("/i/v0/e/"))
        .json(&json!({"api_key": key, "event": "single", "distinct_id": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), StatusCode::OK);
    let array = app
        .client
        .post(app.url("/e/"))
        .json(
            &json!([{"api_key": key, "event": "arr", "distinct_id": "d"},
                      {"api_key": key, "event": "arr", "distinct_id": "e"}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(array.status(), StatusCode::OK);
    assert_eq!(app.count_events(&tenant, "event_type=arr").await, 2);

    let no_key = app
        .client
        .post(app.url("/capture/"))
        .json(&json!({"event": "x", "distinct_id": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    let nothing_valid = app
        .client
        .post(app.url("/batch/"))
        .json(&json!({"api_key": key, "batch": [{"event": "no distinct id"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing_valid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.count_events(&tenant, "").await, 5);
}

/// CloudEvents' Python SDK: structured and binary mode (JSON data, and bytes that are kept
/// as `data_base64`), a batched body built by hand (the SDKs do not emit one), and a resend.
const CLOUDEVENTS_PYTHON_SCRIPT: &str = r#"
import json, sys, requests
from datetime import datetime, timezone
from cloudevents.core.v1.event import CloudEvent
from cloudevents.core.bindings import http
url, key = sys.argv[1] + "/v1/cloudevents", sys.argv[2]
auth = {"Authorization": "Bearer " + key}
at = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
def send(message):
    response = requests.post(url, data=message.body, headers={**message.headers, **auth})
    return [response.status_code, response.json()]
order = CloudEvent(attributes={"type": "order.created", "source": "/shop", "id": "o-1",
                               "time": at, "region": "eu"}, data={"total": 10})
blob = CloudEvent(attributes={"type": "file.uploaded", "source": "/files", "id": "f-1",
                              "time": at, "datacontenttype": "application/octet-stream"},
                  data=b"\x00\x01raw")
answers = [send(http.to_structured_event(order)), send(http.to_binary_event(blob)),
           send(http.to_binary_event(order))]
batch = [json.loads(http.to_structured_event(CloudEvent(
            attributes={"type": "tick", "source": "/clock", "id": f"t-{n}", "time": at},
            data={"n": n})).body) for n in range(3)]
batch.append({"specversion": "1.0", "id": "bad", "type": "tick"})
response = requests.post(url, data=json.dumps(batch),
                         headers={"content-type": "application/cloudevents-batch+json", **auth})
answers.append([response.status_code, response.json()])
print(json.dumps(answers))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_python_sdk_stores_structured_binary_and_batched_events_once() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let mut command = Command::new(python());
    command.args(["-c", CLOUDEVENTS_PYTHON_SCRIPT, &app.base, &tenant.api_key]);
    let answers: Value = serde_json::from_str(script(command).await.trim()).unwrap();
    assert_eq!(
        answers[0],
        json!([200, {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}])
    );
    assert_eq!(answers[1][1]["accepted"], 1, "{answers}");
    assert_eq!(
        answers[2][1]["duplicates"], 1,
        "the same event in binary mode is a duplicate: {answers}"
    );
    assert_eq!(answers[3][0], 200, "{answers}");
    assert_eq!(
        (&answers[3][1]["accepted"], &answers[3][1]["rejected"]),
        (&json!(3), &json!(1)),
        "{answers}"
    );
    assert_eq!(answers[3][1]["errors"][0]["reason"], "missing_field");

    let order = &app.search(&tenant, "event_type=order.created").await["events"][0];
    assert_eq!(order["event_id"], "/shop#o-1", "source#id is the event_id");
    assert_eq!(order["source"], "/shop");
    assert_eq!(order["timestamp"], "2026-11-30T12:00:00Z");
    assert_eq!(order["payload"]["data"]["total"], 10);
    assert_eq!(order["payload"]["region"], "eu", "extensions are kept");
    let file = &app.search(&tenant, "event_type=file.uploaded").await["events"][0];
    assert_eq!(file["payload"]["data_base64"], "AAFyYXc=", "{file}");
    assert_eq!(
        file["payload"]["datacontenttype"],
        "application/octet-stream"
    );
    assert_eq!(app.count_events(&tenant, "event_type=tick").await, 3);
    assert_eq!(app.count_events(&tenant, "").await, 5);

    // Without a key: 401, as on every /v1 route.
    let anonymous = app
        .client
        .post(app.url("/v1/cloudevents"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"x","source":"/s","type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_node_sdk_emits_structured_and_binary_events() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let mut command = Command::new("node");
    command.env("NODE_PATH", node_modules()).args([
        "-e",
        r#"
const { CloudEvent, emitterFor, httpTransport, Mode } = require('cloudevents');
const [base, key] = process.argv.slice(1);
const options = { headers: { Authorization: `Bearer ${key}` } };
const transport = httpTransport(`${base}/v1/cloudevents`);
const structured = emitterFor(transport, { mode: Mode.STRUCTURED });
const binary = emitterFor(transport, { mode: Mode.BINARY });
(async () => {
  const answers = [];
  const signup = new CloudEvent({ type: 'user.signup', source: '/auth', id: 's-1',
                                  data: { plan: 'pro' }, tenantregion: 'eu' });
  answers.push(JSON.parse((await structured(signup, options)).body));
  const login = new CloudEvent({ type: 'user.login', source: '/auth', id: 'l-1', data: { ok: true } });
  answers.push(JSON.parse((await binary(login, options)).body));
  answers.push(JSON.parse((await binary(signup, options)).body));
  console.log(JSON.stringify(answers));
})().catch((error) => { console.error(error); process.exit(1); });
"#,
        &app.base,
        &tenant.api_key,
    ]);
    let answers: Value = serde_json::from_str(script(command).await.trim()).unwrap();
    assert_eq!(answers[0]["accepted"], 1, "{answers}");
    assert_eq!(answers[1]["accepted"], 1, "{answers}");
    assert_eq!(
        answers[2]["duplicates"], 1,
        "a resend in another mode: {answers}"
    );
    let signup = &app.search(&tenant, "event_type=user.signup").await["events"][0];
    assert_eq!(signup["event_id"], "/auth#s-1");
    assert_eq!(signup["payload"]["data"]["plan"], "pro");
    assert_eq!(signup["payload"]["tenantregion"], "eu");
    let login = &app
        .search(&tenant, "event_type=user.login&payload.data.ok=true")
        .await;
    assert_eq!(login["events"].as_array().unwrap().len(), 1, "{login}");
}

/// What reviewing the formats found: posthog-js puts its key in `properties.token` (and it is
/// not stored), an event or message carrying another tenant's real key is rejected, a
/// binary-mode CloudEvent refuses a content coding, and JSON data with several members is
/// one event in both CloudEvents modes.
#[tokio::test]
async fn keys_inside_messages_codings_and_modes_are_handled_as_documented() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let other = app.create_tenant().await;
    let key = tenant.api_key.as_str();

    // posthog-js: an array of events, the key in each event's properties.token.
    let js = app
        .client
        .post(app.url("/e/"))
        .json(&json!([
            {"event": "$pageview", "properties": {"distinct_id": "d", "token": key, "$lib": "web"}},
            {"event": "$pageview", "properties": {"distinct_id": "d", "token": other.api_key}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    let answer: Value = js.json().await.unwrap();
    assert_eq!(
        (&answer["accepted"], &answer["errors"][0]["reason"]),
        (&json!(1), &json!("other_key")),
        "{answer}"
    );
    let stored = app.search(&tenant, "event_type=%24pageview").await;
    let properties = &stored["events"][0]["payload"]["properties"];
    assert_eq!(properties["distinct_id"], "d");
    assert!(
        properties.get("token").is_none(),
        "the key is not stored: {stored}"
    );

    // Segment: a message carrying another tenant's writeKey is not this tenant's.
    let segment = app
        .client
        .post(app.url("/v1/batch"))
        .basic_auth(key, Some(""))
        .json(&json!({"batch": [
            {"type": "track", "userId": "u", "event": "mine"},
            {"type": "track", "userId": "u", "event": "theirs", "writeKey": other.api_key},
        ]}))
        .send()
        .await
        .unwrap();
    let answer: Value = segment.json().await.unwrap();
    assert_eq!(
        (&answer["accepted"], &answer["errors"][0]["reason"]),
        (&json!(1), &json!("other_key")),
        "{answer}"
    );
    assert_eq!(app.count_events(&other, "").await, 0);

    // CloudEvents: binary mode stores the data as sent, so a coding is refused...
    let coded = app
        .client
        .post(app.url("/v1/cloudevents"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("ce-specversion", "1.0")
        .header("ce-id", "z-1")
        .header("ce-source", "/z")
        .header("ce-type", "zipped")
        .body(vec![0x1f, 0x8b, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(coded.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // ... and JSON data with several members, sent in each mode, is one event.
    let structured = app
        .client
        .post(app.url("/v1/cloudevents"))
        .bearer_auth(key)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"m-1","source":"/m","type":"multi","data":{"b":1,"a":[2,3]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(structured.json::<Value>().await.unwrap()["accepted"], 1);
    let binary = app
        .client
        .post(app.url("/v1/cloudevents"))
        .bearer_auth(key)
        .header("content-type", "application/json; charset=utf-8")
        .header("ce-specversion", "1.0")
        .header("ce-id", "m-1")
        .header("ce-source", "/m")
        .header("ce-type", "multi")
        .body(r#"{"b": 1, "a": [2, 3]}"#)
        .send()
        .await
        .unwrap();
    let answer: Value = binary.json().await.unwrap();
    assert_eq!(answer["duplicates"], 1, "{answer}");
}
