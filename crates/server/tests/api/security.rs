//! Security properties checked from outside: credentials never reach the logs, a tenant can
//! neither see nor change another tenant's destinations, and the admin API opens only to its
//! token.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::delivery::{create_destination, destination};
use crate::harness::{
    ADMIN_TOKEN, ServerProcess, TestApp, TestStore, TestTenant, body, event, http_client,
};
use crate::receiver::{Behaviour, Receiver, wait_until};

const PATIENCE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_admin_tokens_and_webhook_secrets_never_reach_the_logs() {
    let store = TestStore::new().await;
    let log_path = store.dir.path().join("server.log");
    let server = ServerProcess::start_logging_to(
        &store,
        &["--allow-private-destinations", "true"],
        &log_path,
    );
    let client = http_client();
    server.wait_ready(&client).await;
    let api = TestApp::attach(&server.base, client);
    let receiver = Receiver::start(Behaviour::FailNext(1, 503)).await;

    let tenant = api.create_tenant().await;
    let created = body(
        api.client
            .post(api.url("/v1/destinations"))
            .bearer_auth(&tenant.api_key)
            .json(&json!({"kind": "webhook", "url": receiver.url}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    api.post_event(&tenant, &event("log-1", "t", json!({"n": 1})))
        .await;
    api.post_batch(&tenant, &[event("log-2", "t", json!({}))])
        .await;
    let wrong_key = format!("{}x", tenant.api_key);
    let refused = api
        .client
        .get(api.url("/v1/events"))
        .bearer_auth(&wrong_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    wait_until(
        "both events are delivered after a retry",
        PATIENCE,
        || async { receiver.delivered_events().len() == 2 },
    )
    .await;
    server.kill();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("pulsestream is listening") && log.contains("/v1/destinations"),
        "the log was captured: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file carries no terminal colour codes"
    );
    for (what, credential) in [
        ("the API key", tenant.api_key.as_str()),
        ("a wrong API key", wrong_key.as_str()),
        ("the admin token", ADMIN_TOKEN),
        ("the webhook secret", secret.as_str()),
        (
            "the webhook secret's key",
            secret.trim_start_matches("whsec_"),
        ),
    ] {
        assert!(!log.contains(credential), "{what} is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_gets_404_on_every_destination_route_and_changes_nothing() {
    let app = TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 20;
    })
    .await;
    let owner = app.create_tenant().await;
    let intruder = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let created = create_destination(
        &app,
        &owner,
        json!({"kind": "webhook", "url": receiver.url, "max_attempts": 1}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.post_batch(
        &owner,
        &[event("i-1", "t", json!({})), event("i-2", "t", json!({}))],
    )
    .await;
    wait_until("both events are dead letters", PATIENCE, || async {
        destination(&app, &owner, &id).await["dead_lettered"] == 2
    })
    .await;
    let letters = dead_letters(&app, &owner, &id).await;
    let first_letter = letters[0]["id"].as_str().unwrap().to_owned();
    let attempts_before = receiver.received().len();

    for (method, path, request) in [
        (Method::GET, format!("/v1/destinations/{id}"), None),
        (
            Method::GET,
            format!("/v1/destinations/{id}/dead-letters"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/destinations/{id}/dead-letters/replay"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/destinations/{id}/dead-letters/replay"),
            Some(json!({"ids": [first_letter]})),
        ),
        (
            Method::DELETE,
            format!("/v1/destinations/{id}/dead-letters"),
            None,
        ),
        (Method::DELETE, format!("/v1/destinations/{id}"), None),
    ] {
        let mut call = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&intruder.api_key);
        if let Some(request) = &request {
            call = call.json(request);
        }
        let response = call.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    app.post_event(&intruder, &event("intruder-1", "t", json!({})))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let view = destination(&app, &owner, &id).await;
    assert_eq!(view["id"], id.as_str(), "the destination is still there");
    assert_eq!(view["dead_lettered"], 2, "nothing was purged or replayed");
    assert_eq!(view["pending"], 0);
    assert_eq!(dead_letters(&app, &owner, &id).await.len(), 2);
    assert_eq!(
        receiver.received().len(),
        attempts_before,
        "nothing was replayed, and the intruder's event went nowhere near the owner's webhook"
    );
    let listed = body(
        app.client
            .get(app.url("/v1/destinations"))
            .bearer_auth(&intruder.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["destinations"], json!([]));
}

#[tokio::test]
async fn every_admin_route_answers_401_without_the_admin_token_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let view = admin_view(&app, &tenant).await;
    let key_id = view["keys"][0]["id"].as_str().unwrap().to_owned();
    let tenant_path = format!("/admin/tenants/{}", tenant.id);
    let routes = [
        (
            Method::POST,
            "/admin/tenants".to_owned(),
            Some(json!({"name": "mallory"})),
        ),
        (Method::GET, "/admin/tenants".to_owned(), None),
        (Method::GET, tenant_path.clone(), None),
        (
            Method::PATCH,
            tenant_path.clone(),
            Some(json!({"rate_limit_per_minute": 1})),
        ),
        (Method::POST, format!("{tenant_path}/keys"), None),
        (Method::DELETE, format!("{tenant_path}/keys/{key_id}"), None),
    ];
    let credentials = [
        None,
        Some("wrong-admin-token-0123456789".to_owned()),
        Some(format!("{ADMIN_TOKEN}x")),
        Some(tenant.api_key.clone()),
    ];

    for (method, path, request) in &routes {
        for credential in &credentials {
            let mut call = app.client.request(method.clone(), app.url(path));
            if let Some(token) = credential {
                call = call.bearer_auth(token);
            }
            if let Some(request) = request {
                call = call.json(request);
            }
            let response = call.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {credential:?}"
            );
        }
    }
    let basic = app
        .client
        .get(app.url("/admin/tenants"))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED, "only Bearer");

    assert_eq!(
        admin_view(&app, &tenant).await,
        view,
        "the tenant is unchanged"
    );
    let all = body(
        app.client
            .get(app.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all["tenants"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(app.search_raw(&tenant, "").await.status(), StatusCode::OK);
}

async fn admin_view(app: &TestApp, tenant: &TestTenant) -> Value {
    body(
        app.client
            .get(app.url(&format!("/admin/tenants/{}", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn dead_letters(app: &TestApp, tenant: &TestTenant, id: &str) -> Vec<Value> {
    body(
        app.client
            .get(app.url(&format!("/v1/destinations/{id}/dead-letters")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await["dead_letters"]
        .as_array()
        .unwrap()
        .clone()
}
