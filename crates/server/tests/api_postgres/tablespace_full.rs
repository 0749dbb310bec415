//! PostgreSQL on a full disk: the test's schema lives in a tablespace of its own on a small
//! tmpfs (root only; the test mounts it for the `postgres` user, creates the tablespace, and
//! removes both at the end), and files of ours fill that filesystem under a running server.
//! No event is acknowledged that was not stored; reads go on; and once space is freed,
//! ingest comes back without a restart, every acknowledged event stored exactly once.
//!
//! The write-ahead log stays on the cluster's own disk: a full WAL disk stops the whole
//! PostgreSQL server (a PANIC), which no test on a shared machine may cause.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ServerProcess, TestApp, TestStore, event, test_database_url};

/// A tmpfs owned by the PostgreSQL server's user, with a tablespace on it; both removed
/// when dropped (after the schema that uses the tablespace).
struct Tablespace {
    name: String,
    mount: tempfile::TempDir,
    /// The schema whose tables live in it, dropped first.
    schema: Option<String>,
}

impl Tablespace {
    async fn create(megabytes: u32) -> Option<Self> {
        let owner = |flag: &str| {
            Command::new("id")
                .args([flag, "postgres"])
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        let (Some(uid), Some(gid)) = (owner("-u"), owner("-g")) else {
            let why = "no `postgres` user on this machine to own the tablespace";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipping: {why}");
            return None;
        };
        let mount = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=0700,uid={uid},gid={gid}"),
                "pulsestream-test",
            ])
            .arg(mount.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => {}
            other => {
                let why = format!("cannot mount a tmpfs (needs root): {other:?}");
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("skipping: {why}");
                return None;
            }
        }
        // The tempdir itself is the mount point: /tmp above it is open to every user.
        let name = format!("pstest_ts_{}", uuid::Uuid::new_v4().simple());
        let tablespace = Self {
            name,
            mount,
            schema: None,
        };
        admin_sql(&format!(
            "CREATE TABLESPACE {} LOCATION '{}'",
            tablespace.name,
            tablespace.mount.path().display()
        ))
        .await;
        Some(tablespace)
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for Tablespace {
    fn drop(&mut self) {
        // Drop runs outside the test's runtime: a small one of its own for the statement.
        let name = self.name.clone();
        let schema = self.schema.take();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    if let Some(schema) = schema {
                        admin_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
                    }
                    admin_sql(&format!("DROP TABLESPACE IF EXISTS {name}")).await;
                });
        })
        .join();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

/// Runs one statement on the test database, outside any transaction (CREATE TABLESPACE).
async fn admin_sql(sql: &str) {
    let url = test_database_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(connection);
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

/// Writes 1 MiB files into `dir` until the filesystem is full; returns them.
fn fill(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut files = Vec::new();
    for n in 0.. {
        let path = dir.join(format!("filler-{n}"));
        if std::fs::write(&path, &chunk).is_err() {
            let _ = std::fs::remove_file(&path);
            return files;
        }
        files.push(path);
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tablespace_never_acknowledges_an_event_it_did_not_store() {
    let Some(mut tablespace) = Tablespace::create(64).await else {
        return;
    };
    // The schema's tables and indexes are created in the tablespace (the server's
    // migrations run with `default_tablespace` set on its connections).
    let mut store = TestStore::new().await;
    tablespace.schema = store.schema().map(str::to_owned);
    let url = store.database_url.take().unwrap();
    store.database_url = Some(format!(
        "{url}%20-cdefault_tablespace%3D{}",
        tablespace.name
    ));
    let server = ServerProcess::start(&store, &[]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    server.wait_ready(&client).await;
    let api = TestApp::attach(&server.base, client.clone());
    let created: Value = client
        .post(api.url("/admin/tenants"))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&json!({"name": "full", "rate_limit_per_minute": 10_000_000, "burst": 1_000_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant = crate::harness::TestTenant {
        id: created["id"].as_str().unwrap().into(),
        api_key: created["api_key"].as_str().unwrap().into(),
    };
    let first = api
        .post_event(&tenant, &event("first", "full.test", json!({})))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    // Our files take the filesystem but for 2 MiB; then batches until the database refuses.
    let mut filler = fill(&tablespace.path().join("filler"));
    for path in filler.drain(filler.len().saturating_sub(2)..) {
        std::fs::remove_file(path).unwrap();
    }
    let payload = "p".repeat(8 * 1024);
    let mut acknowledged: HashSet<String> = HashSet::from(["first".to_owned()]);
    let mut sent: HashSet<String> = acknowledged.clone();
    let mut refused = 0;
    for batch in 0..400 {
        let events: Vec<Value> = (0..50)
            .map(|n| {
                event(
                    &format!("e-{batch}-{n}"),
                    "full.test",
                    json!({"p": payload}),
                )
            })
            .collect();
        sent.extend(
            events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        let response = api.post_batch(&tenant, &events).await;
        match response.status() {
            StatusCode::OK => acknowledged.extend(
                events
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_owned()),
            ),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            other => panic!("batch {batch}: {other}"),
        }
    }
    assert_eq!(refused, 5, "the tablespace never filled");
    assert!(
        acknowledged.len() > 1,
        "nothing was stored before it filled"
    );

    // Reads go on while it is full.
    let page = api.search(&tenant, "event_id=first").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);

    // Space comes back: ingest does too, without a restart.
    for path in filler {
        std::fs::remove_file(path).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = api
            .post_event(&tenant, &event("after", "full.test", json!({})))
            .await;
        if response.status().is_success() {
            acknowledged.insert("after".to_owned());
            sent.insert("after".to_owned());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest did not come back: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every acknowledged event exactly once; nothing that was not sent.
    let mut stored: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = "event_type=full.test&limit=1000".to_owned();
        if let Some(cursor) = &cursor {
            query.push_str(&format!("&cursor={cursor}"));
        }
        let page = api.search(&tenant, &query).await;
        stored.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
    let lost: Vec<&String> = acknowledged.difference(&unique).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert!(unique.is_subset(&sent));
    eprintln!(
        "tablespace full: {} acknowledged, {} batches refused with 503, {} stored",
        acknowledged.len(),
        refused,
        unique.len()
    );
    // The server goes, then (dropping `tablespace`) the schema and the tablespace.
    drop(server);
}
