//! `TestApp`: the real server on 127.0.0.1:0 with a fresh store (a temporary data dir, and a
//! fresh PostgreSQL schema when the suite runs on PostgreSQL), and helpers named after what a
//! client does.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pulsestream_server::config::Secret;
use pulsestream_server::{ServeConfig, Server};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The secret key of servers on PostgreSQL, where every node needs the same one.
pub const SECRET_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The store a suite runs on: each test binary's root sets `BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "each test binary constructs one of them")]
pub enum Backend {
    Embedded,
    Postgres,
}

/// The PostgreSQL server the suite uses (a fresh schema per test is made in it).
pub use pulsestream_store::postgres::test_database_url;

/// One test's store: a temporary data dir, plus a fresh PostgreSQL schema (dropped at the
/// end) when the suite runs on PostgreSQL. Several servers given the same `TestStore` share
/// it, as the nodes of a cluster do.
pub struct TestStore {
    pub dir: TempDir,
    /// The URL servers are given: the test database with `search_path` set to the schema.
    pub database_url: Option<String>,
    schema: Option<String>,
}

impl TestStore {
    pub async fn new() -> Self {
        Self::for_backend(crate::BACKEND).await
    }

    pub async fn for_backend(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if backend == Backend::Embedded {
            return Self {
                dir,
                database_url: None,
                schema: None,
            };
        }
        let schema = format!("pstest_{}", uuid::Uuid::new_v4().simple());
        pulsestream_store::postgres::test_client()
            .await
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create a schema for the test");
        Self {
            dir,
            database_url: Some(pulsestream_store::postgres::url_in_schema(
                &test_database_url(),
                &schema,
            )),
            schema: Some(schema),
        }
    }

    /// The PostgreSQL schema of this store, if it is on PostgreSQL.
    #[allow(dead_code)] // used by the PostgreSQL suite
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Points a server's settings at this store.
    pub fn apply(&self, config: &mut ServeConfig) {
        config.data_dir = self.dir.path().to_path_buf();
        config.database_url = self.database_url.clone().map(Secret);
        config.secret_key = self
            .database_url
            .as_ref()
            .map(|_| Secret(SECRET_KEY.into()));
    }

    /// The command-line flags that point a `pulsestream serve` process at this store.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_owned(),
            self.dir.path().display().to_string(),
        ];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
            args.extend(["--secret-key".to_owned(), SECRET_KEY.to_owned()]);
        }
        args
    }
}

/// The real `pulsestream` binary in a child process, killed with SIGKILL at the end.
pub struct ServerProcess {
    child: std::process::Child,
    pub base: String,
}

impl ServerProcess {
    /// Starts `pulsestream serve` on a free port, on `store`, with extra flags.
    pub fn start(store: &TestStore, flags: &[&str]) -> Self {
        Self::spawn(store, flags, &[], None)
    }

    /// Like [`ServerProcess::start`], with more environment variables (`LD_PRELOAD`, …).
    #[allow(dead_code, reason = "only the PostgreSQL suite's clock test sets any")]
    pub fn start_with_env(store: &TestStore, flags: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(store, flags, env, None)
    }

    /// Like [`ServerProcess::start`], with every log line (stderr) written to `log` at
    /// `RUST_LOG=debug`, for tests that read what the server logs.
    #[allow(dead_code, reason = "only the log tests read logs")]
    pub fn start_logging_to(store: &TestStore, flags: &[&str], log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn(store, flags, &[], Some(file))
    }

    /// Starts `pulsestream serve` inside the network namespace `netns` (`ip netns exec`),
    /// listening on `host` (an address of that namespace), with `store_args` in place of the
    /// store's own flags (a database reached another way).
    #[allow(
        dead_code,
        reason = "only the PostgreSQL suite's network fault test uses it"
    )]
    pub fn start_in_netns(
        netns: &str,
        host: &str,
        store_args: Vec<String>,
        flags: &[&str],
    ) -> Self {
        Self::launch(
            &["ip", "netns", "exec", netns],
            host,
            store_args,
            flags,
            &[],
            None,
        )
    }

    fn spawn(
        store: &TestStore,
        flags: &[&str],
        env: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> Self {
        Self::launch(&[], "127.0.0.1", store.serve_args(), flags, env, log)
    }

    fn launch(
        prefix: &[&str],
        host: &str,
        store_args: Vec<String>,
        flags: &[&str],
        env: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> Self {
        let port = free_port();
        let binary = env!("CARGO_BIN_EXE_pulsestream");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => std::process::Command::new(binary),
        };
        command
            .args(["serve", "--listen", &format!("{host}:{port}")])
            .args(store_args)
            .args(flags)
            .env("PULSESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null());
        match log {
            Some(file) => command
                .env("RUST_LOG", "debug,fjall=info,lsm_tree=info")
                .stderr(file),
            None => command.stderr(std::process::Stdio::null()),
        };
        let child = command.spawn().expect("start pulsestream");
        Self {
            child,
            base: format!("http://{host}:{port}"),
        }
    }

    pub async fn wait_ready(&self, client: &reqwest::Client) {
        for _ in 0..200 {
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    /// The process's resident memory (`VmRSS` in /proc), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("a VmRSS line in kB")
            * 1024
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed on the way out.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for a test that starts no in-process server. reqwest is built without
/// a TLS provider of its own: the server installs ring when it starts, and a test that only
/// drives a child process must do the same before building a client.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = pulsestream_store::postgres::drop_schema(&client, &schema).await;
                }
            });
        })
        .join();
    }
}

/// A client of a running server, with helpers named after what a user does.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub client: reqwest::Client,
}

/// The real server, in-process, on a temporary data dir. Dereferences to its client.
pub struct TestApp {
    api: ApiClient,
    /// Kept so the data dir (and schema) live as long as the server.
    _store: TestStore,
    config: ServeConfig,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A tenant created through the admin API, with its API key.
#[derive(Clone, Debug)]
pub struct TestTenant {
    pub id: String,
    pub api_key: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::spawn_on(crate::BACKEND, adjust).await
    }

    /// A server on the given store, whatever the suite's own.
    pub async fn spawn_on(backend: Backend, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let store = TestStore::for_backend(backend).await;
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), store.dir.path().into());
        store.apply(&mut config);
        config.admin_token = Some(Secret(ADMIN_TOKEN.into()));
        adjust(&mut config);
        let (base, shutdown, task) = start(&config).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            api: ApiClient { base, client },
            _store: store,
            config,
            shutdown,
            task: Some(task),
        }
    }

    /// The store this server runs on (to inspect what it wrote, once stopped).
    pub fn store(&self) -> &TestStore {
        &self._store
    }

    /// Drives a server this test did not start (a child process).
    pub fn attach(base: &str, client: reqwest::Client) -> ApiClient {
        ApiClient {
            base: base.to_owned(),
            client,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (base, shutdown, task) = start(&self.config).await;
        self.api.base = base;
        self.shutdown = shutdown;
        self.task = Some(task);
    }

    #[allow(dead_code)] // used by the embedded-only disk tests
    /// Stops the server, whatever its store went through (a failed store may not close
    /// cleanly), and starts a new one on the same data dir.
    pub async fn restart_after_failure(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let stopped = task.await.expect("server task");
            eprintln!("the server stopped with {stopped:?}");
        }
        let (base, shutdown, task) = start(&self.config).await;
        self.api.base = base;
        self.shutdown = shutdown;
        self.task = Some(task);
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server shut down cleanly");
        }
    }
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl ApiClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The Prometheus text of `/metrics` (answered 200 as `text/plain`).
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        response.text().await.unwrap()
    }

    pub async fn create_tenant(&self) -> TestTenant {
        // Limits far above what any test sends, unless the test is about limits.
        self.create_tenant_with(
            json!({"name": "acme", "rate_limit_per_minute": 10_000_000, "burst": 1_000_000}),
        )
        .await
    }

    /// `GET /v1/destinations/{id}`: the destination with its counts.
    pub async fn destination(&self, tenant: &TestTenant, id: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/v1/destinations/{id}")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "destination {id}");
        response.json().await.unwrap()
    }

    /// Entries the destination's queue ever took: pending, delivered and dead-lettered.
    pub async fn queue_entries(&self, tenant: &TestTenant, destination: &str) -> u64 {
        let stats = self.destination(tenant, destination).await;
        ["pending", "delivered", "dead_lettered"]
            .iter()
            .map(|count| {
                stats[count]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{count}: {stats}"))
            })
            .sum()
    }

    pub async fn create_tenant_with(&self, body: Value) -> TestTenant {
        let response = self
            .client
            .post(self.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        TestTenant {
            id: body["id"].as_str().unwrap().into(),
            api_key: body["api_key"].as_str().unwrap().into(),
        }
    }

    pub async fn post_event(&self, tenant: &TestTenant, event: &Value) -> Response {
        self.client
            .post(self.url("/v1/events"))
            .bearer_auth(&tenant.api_key)
            .json(event)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_batch(&self, tenant: &TestTenant, events: &[Value]) -> Response {
        self.client
            .post(self.url("/v1/events/batch"))
            .bearer_auth(&tenant.api_key)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_raw(
        &self,
        tenant: &TestTenant,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&tenant.api_key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_event(&self, tenant: &TestTenant, id: &str) -> Response {
        self.client
            .get(self.url(&format!("/v1/events/{id}")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/events?query`; asserts 200 and returns the body.
    pub async fn search(&self, tenant: &TestTenant, query: &str) -> Value {
        let response = self.search_raw(tenant, query).await;
        assert_eq!(response.status(), StatusCode::OK, "search {query}");
        response.json().await.unwrap()
    }

    pub async fn search_raw(&self, tenant: &TestTenant, query: &str) -> Response {
        self.client
            .get(self.url(&format!("/v1/events?{query}")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap()
    }

    /// Counts the tenant's events matching `query` by walking every page.
    pub async fn count_events(&self, tenant: &TestTenant, query: &str) -> usize {
        let mut count = 0;
        self.for_each_event(tenant, query, |_| count += 1).await;
        count
    }

    /// Every stored `event_id` matching `query`, with how many times it is stored.
    pub async fn event_id_counts(
        &self,
        tenant: &TestTenant,
        query: &str,
    ) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        self.for_each_event(tenant, query, |event| {
            *counts
                .entry(event["event_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        })
        .await;
        counts
    }

    /// Calls `each` with every one of the tenant's events matching `query`, page by page.
    pub async fn for_each_event(
        &self,
        tenant: &TestTenant,
        query: &str,
        mut each: impl FnMut(&Value),
    ) {
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("limit=1000&{query}");
            if let Some(cursor) = &cursor {
                q.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.search(tenant, &q).await;
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .for_each(&mut each);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return,
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(
    config: &ServeConfig,
) -> (String, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::bind(config, listener).await.expect("server binds");
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{}", server.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    (base, shutdown, task)
}

pub fn event(event_id: &str, event_type: &str, payload: Value) -> Value {
    json!({"event_id": event_id, "event_type": event_type, "source": "checkout", "payload": payload})
}

pub async fn body(response: Response) -> Value {
    response.json().await.expect("JSON body")
}

/// What one run of the binary printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }

    #[allow(dead_code)]
    pub fn failed(self) -> Self {
        assert_eq!(self.code, Some(1), "{self:#?}");
        self
    }

    #[allow(dead_code)]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| panic!("{err}: {self:#?}"))
    }
}

/// Runs `pulsestream ARGS` against `base`, with `stdin` as its input, off the runtime's
/// threads (the server under test runs on them).
pub async fn pulsestream(base: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pulsestream"));
    command
        .args(args)
        .env("PULSESTREAM_URL", base)
        .env_remove("PULSESTREAM_ADMIN_TOKEN")
        .env_remove("PULSESTREAM_API_KEY")
        .env("PULSESTREAM_DATA_DIR", "/nonexistent-pulsestream-data")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let stdin = stdin.to_owned();
    let output: Output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("run pulsestream");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait for pulsestream")
    })
    .await
    .expect("task");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub async fn tenant_cli(app: &TestApp, tenant: &TestTenant, args: &[&str], stdin: &str) -> Run {
    pulsestream(
        &app.base,
        args,
        &[("PULSESTREAM_API_KEY", tenant.api_key.as_str())],
        stdin,
    )
    .await
}

/// The sum of the samples in a `/metrics` text whose name starts with `name` and whose line
/// contains every one of `fragments` (labels, usually).
pub fn metric_sum(text: &str, name: &str, fragments: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(name) && fragments.iter().all(|fragment| line.contains(fragment))
        })
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap_or_default();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("a sample without a number: {line}"))
        })
        .sum()
}
