//! PostgreSQL really restarted under load (issue #5): clients see fast 503s with
//! `Retry-After`, then success, and no acknowledged event is lost or stored twice.
//!
//! Restarting a machine's PostgreSQL is not something `cargo test` should do to a developer
//! unasked, so the test is opt-in: it runs only when `PULSESTREAM_TEST_PG_RESTART` is set,
//! to the command that restarts the server, run by `sh -c` (`.ci/run` sets it to
//! `pg_ctlcluster --skip-systemctl-redirect <version> main restart`; `auto` picks that
//! command for the one cluster under /etc/postgresql). Unset, it says so and passes; unset
//! under `CI=true`, it fails. This is its own test binary because restarting the shared
//! server would break the parallel tests of `api_postgres`; cargo runs test binaries one
//! after another.

/// The store every test of this binary runs on.
const BACKEND: harness::Backend = harness::Backend::Postgres;

#[path = "api/harness.rs"]
#[allow(dead_code, reason = "this binary uses a few of the suite's helpers")]
mod harness;
#[path = "api/load.rs"]
#[allow(dead_code, reason = "this binary uses a few of the suite's helpers")]
mod load;
#[path = "api/receiver.rs"]
#[allow(dead_code, reason = "this binary uses a few of the suite's helpers")]
mod receiver;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use harness::{ApiClient, TestApp, TestTenant, test_database_url};
use load::{Answer, Load, Shape};
use receiver::wait_until;

const EVENT_TYPE: &str = "restart.test";

/// The database timeout (1 s) plus connection set-up, with room for a loaded machine.
const SLOWEST_ANSWER: Duration = Duration::from_secs(5);

/// The restart command, or `None` when the test is not asked for.
fn restart_command() -> Option<String> {
    let Ok(command) = std::env::var("PULSESTREAM_TEST_PG_RESTART") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the PostgreSQL restart test: set PULSESTREAM_TEST_PG_RESTART"
        );
        return None;
    };
    if command != "auto" {
        return Some(command);
    }
    {
        let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .expect("/etc/postgresql lists the clusters (or set PULSESTREAM_TEST_PG_RESTART)")
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            versions.len(),
            1,
            "one PostgreSQL version under /etc/postgresql, or set PULSESTREAM_TEST_PG_RESTART"
        );
        Some(format!(
            "pg_ctlcluster --skip-systemctl-redirect {} main restart",
            versions[0]
        ))
    }
}

/// Runs the restart command; returns when it has finished.
fn restart_postgres(command: &str) {
    let output = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run the restart command");
    assert!(
        output.status.success(),
        "`{command}` failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// When the PostgreSQL server last started, or `None` if it cannot be reached.
async fn postmaster_start_time() -> Option<String> {
    let (client, connection) = tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

/// Leaves PostgreSQL running whatever happens to the test: if it does not answer when the
/// guard is dropped (the test failed during the restart), it is restarted.
struct KeepPostgresRunning {
    restart: String,
}

impl Drop for KeepPostgresRunning {
    fn drop(&mut self) {
        let restart = self.restart.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            for _ in 0..10 {
                if runtime.block_on(postmaster_start_time()).is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!("PostgreSQL does not answer: running `{restart}`");
            restart_postgres(&restart);
        })
        .join();
    }
}

/// Whether every answer of the last `quiet` was a 2xx, counting from `since` at the earliest,
/// and at least one arrived.
fn answered_2xx_for(answers: &[Answer], since: Instant, quiet: Duration) -> bool {
    let from = answers
        .iter()
        .filter(|answer| !answer.acknowledged())
        .map(|answer| answer.at)
        .fold(since, Instant::max);
    from.elapsed() >= quiet
        && answers
            .iter()
            .any(|answer| answer.acknowledged() && answer.at > from)
}

/// How many times each `event_id` of the test's type is stored, walking every page.
async fn stored_event_ids(api: &ApiClient, tenant: &TestTenant) -> HashMap<String, usize> {
    let mut stored = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = format!("limit=1000&event_type={EVENT_TYPE}");
        if let Some(cursor) = &cursor {
            query.push_str(&format!("&cursor={cursor}"));
        }
        let page = api.search(tenant, &query).await;
        for event in page["events"].as_array().unwrap() {
            *stored
                .entry(event["event_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return stored,
        }
    }
}

/// Sends a refused request again, as a client honouring `Retry-After` would.
async fn send_again(api: &ApiClient, tenant: &TestTenant, answer: &Answer) -> StatusCode {
    let response = if answer.batch {
        api.post_batch(tenant, &answer.events).await
    } else {
        api.post_event(tenant, &answer.events[0]).await
    };
    response.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_answers_503_then_recovers_and_loses_nothing() {
    let Some(restart) = restart_command() else {
        eprintln!(
            "not run: set PULSESTREAM_TEST_PG_RESTART to the command that restarts the test PostgreSQL (or `auto`) to run it"
        );
        return;
    };
    let started = Instant::now();
    let app = TestApp::spawn_with(|config| config.database_timeout_ms = 1_000).await;
    // Dropped before the app and its store (whose schema is dropped through PostgreSQL).
    let _postgres = KeepPostgresRunning {
        restart: restart.clone(),
    };
    let tenant = app.create_tenant().await;
    let first_start = postmaster_start_time()
        .await
        .expect("PostgreSQL answers before the restart");

    let load = Load::start(
        &app,
        &tenant,
        EVENT_TYPE,
        Shape {
            single_clients: 4,
            batch_clients: 1,
            batch_size: 50,
            pause: Duration::from_millis(10),
        },
    );
    load.wait_for_more_acknowledged(200, "the load is under way")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarting = Instant::now();
    let command = restart.clone();
    tokio::task::spawn_blocking(move || restart_postgres(&command))
        .await
        .expect("the restart command ran");
    let restart_took = restarting.elapsed();
    wait_until(
        "every answer is a 2xx again for a second",
        Duration::from_secs(30),
        || async { answered_2xx_for(&load.answers(), restarting, Duration::from_secs(1)) },
    )
    .await;
    let recovered_after = restarting.elapsed();
    let answers = load.stop().await;

    assert_ne!(
        postmaster_start_time().await.as_deref(),
        Some(first_start.as_str()),
        "PostgreSQL was restarted"
    );
    let refused: Vec<&Answer> = answers.iter().filter(|a| !a.acknowledged()).collect();
    assert!(!refused.is_empty(), "clients saw the restart");
    for answer in &answers {
        let first = answer.event_ids().next().unwrap();
        assert!(
            answer.took < SLOWEST_ANSWER,
            "{first}: {} after {:?}",
            answer.status,
            answer.took
        );
    }
    for answer in &refused {
        let first = answer.event_ids().next().unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{first}");
        assert!(answer.retry_after, "{first}: 503 without Retry-After");
    }

    // Every acknowledged event is stored exactly once; a refused one at most once (a 503 can
    // follow a commit whose answer was lost with the connection); nothing else is stored.
    let acknowledged = load::acknowledged_event_ids(&answers);
    let stored = stored_event_ids(&app, &tenant).await;
    for event_id in &acknowledged {
        assert_eq!(stored.get(event_id), Some(&1), "acknowledged {event_id}");
    }
    let sent: HashMap<&str, bool> = answers
        .iter()
        .flat_map(|answer| answer.event_ids().map(|id| (id, answer.acknowledged())))
        .collect();
    for (event_id, count) in &stored {
        assert!(
            sent.contains_key(event_id.as_str()),
            "{event_id} was never sent"
        );
        assert_eq!(*count, 1, "{event_id} is stored {count} times");
    }
    let committed_but_refused = stored.len() - acknowledged.len();

    // A client retrying each refused request now succeeds, and each event is stored once.
    for answer in &refused {
        let status = send_again(&app, &tenant, answer).await;
        let first = answer.event_ids().next().unwrap();
        if answer.batch {
            assert_eq!(status, StatusCode::OK, "batch from {first} sent again");
        } else {
            assert!(
                matches!(status, StatusCode::CREATED | StatusCode::OK),
                "{first} sent again: {status}"
            );
        }
    }
    let stored = stored_event_ids(&app, &tenant).await;
    assert_eq!(stored.len(), sent.len(), "every event sent is stored");
    for (event_id, count) in &stored {
        assert_eq!(
            *count, 1,
            "{event_id} is stored {count} times after the retries"
        );
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "/readyz after the restart");

    let slowest = answers.iter().map(|answer| answer.took).max().unwrap();
    eprintln!(
        "PostgreSQL restart: {} requests, {} events acknowledged, {} requests refused (503), \
         {committed_but_refused} refused events found stored; restart command {restart_took:?}, \
         2xx for a second {recovered_after:?} after it began; slowest answer {slowest:?}; \
         {:?} in all",
        answers.len(),
        acknowledged.len(),
        refused.len(),
        started.elapsed()
    );
}
