//! PostgreSQL is backed up with its own tools: a `pg_dump` of a node's schema, restored into
//! another database, serves every event, tenant, key, destination and idempotency record.

use std::process::Command;

use pulsestream_server::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{SECRET_KEY, TestApp, body, event, test_database_url};

/// A database made for the test, dropped (with its connections) when dropped.
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    fn create() -> Self {
        let mut admin = reqwest::Url::parse(&test_database_url()).unwrap();
        admin.set_path("/postgres");
        admin.set_query(None);
        let name = format!("pstest_restore_{}", uuid::Uuid::new_v4().simple());
        let database = Self {
            admin_url: admin.to_string(),
            name,
        };
        database.psql(&format!("CREATE DATABASE {}", database.name));
        database
    }

    fn psql(&self, sql: &str) {
        let status = Command::new("psql")
            .args([&self.admin_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .status()
            .expect("psql runs");
        assert!(status.success(), "{sql}");
    }

    fn url(&self) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&test_database_url()).unwrap();
        url.set_path(&format!("/{}", self.name));
        url
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_restored_into_another_database_serves_everything() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let events: Vec<Value> = (0..50)
        .map(|n| event(&format!("d-{n}"), "dumped", json!({"n": n})))
        .collect();
    let keyed = app
        .client
        .post(app.url("/v1/events/batch"))
        .bearer_auth(&tenant.api_key)
        .header("idempotency-key", "before-the-dump")
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::OK);
    let schema = app.store().schema().expect("a PostgreSQL suite").to_owned();

    let restored_db = Database::create();
    let dump = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; pg_dump --no-owner -n {schema} '{}' | psql -q -v ON_ERROR_STOP=1 '{}'",
            test_database_url(),
            restored_db.url()
        ))
        .output()
        .expect("pg_dump and psql run");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );

    let mut url = restored_db.url();
    url.set_query(Some(&format!("options=-csearch_path%3D{schema}")));
    let restored = TestApp::spawn_with(|config| {
        config.database_url = Some(Secret(url.to_string()));
        config.secret_key = Some(Secret(SECRET_KEY.into()));
    })
    .await;
    assert_eq!(
        restored.count_events(&tenant, "event_type=dumped").await,
        50
    );
    let replay = restored
        .client
        .post(restored.url("/v1/events/batch"))
        .bearer_auth(&tenant.api_key)
        .header("idempotency-key", "before-the-dump")
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let fresh = restored
        .post_event(&tenant, &event("after-restore", "dumped", json!({})))
        .await;
    assert_eq!(fresh.status(), StatusCode::CREATED);
    let again = body(
        restored
            .post_event(&tenant, &event("d-3", "dumped", json!({"n": 3})))
            .await,
    )
    .await;
    assert_eq!(again["status"], "duplicate");
    drop(restored);
}
