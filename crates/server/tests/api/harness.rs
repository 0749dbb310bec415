//! `TestApp`: the real server on 127.0.0.1:0 with a temporary data dir, and helpers named
//! after what a client does.

use std::time::Duration;

use pulsestream_server::config::Secret;
use pulsestream_server::{ServeConfig, Server};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A client of a running server, with helpers named after what a user does.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub client: reqwest::Client,
}

/// The real server, in-process, on a temporary data dir. Dereferences to its client.
pub struct TestApp {
    api: ApiClient,
    /// Kept so the data dir lives as long as the server.
    _dir: TempDir,
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
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
        config.admin_token = Some(Secret(ADMIN_TOKEN.into()));
        adjust(&mut config);
        let (base, shutdown, task) = start(&config).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            api: ApiClient { base, client },
            _dir: dir,
            config,
            shutdown,
            task: Some(task),
        }
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

    pub async fn create_tenant(&self) -> TestTenant {
        // Limits far above what any test sends, unless the test is about limits.
        self.create_tenant_with(
            json!({"name": "acme", "rate_limit_per_minute": 10_000_000, "burst": 1_000_000}),
        )
        .await
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
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("limit=1000&{query}");
            if let Some(cursor) = &cursor {
                q.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.search(tenant, &q).await;
            count += page["events"].as_array().unwrap().len();
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return count,
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
    let base = format!("http://{}", server.local_addr().unwrap());
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
