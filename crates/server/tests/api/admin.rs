//! `/admin/tenants`: tenants, limits and keys.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, TestApp, TestTenant, body};

#[tokio::test]
async fn tenants_are_created_listed_read_and_changed() {
    let app = TestApp::spawn().await;
    let created = body(
        app.client
            .post(app.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "acme", "rate_limit_per_minute": 100}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(created["burst"], 100, "burst defaults to the rate");
    assert!(created["api_key"].as_str().unwrap().starts_with("ps_"));
    let id = created["id"].as_str().unwrap();

    let listed = body(
        app.client
            .get(app.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let patched = body(
        app.client
            .patch(app.url(&format!("/admin/tenants/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"rate_limit_per_minute": 500, "burst": 50}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let read = body(
        app.client
            .get(app.url(&format!("/admin/tenants/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(listed["tenants"][0]["id"], id);
    assert!(
        listed["tenants"][0].get("api_key").is_none(),
        "keys are shown only once"
    );
    assert_eq!(
        (
            patched["rate_limit_per_minute"].as_u64(),
            patched["burst"].as_u64()
        ),
        (Some(500), Some(50))
    );
    assert_eq!(read["burst"], 50);
}

#[tokio::test]
async fn a_new_key_works_alongside_the_old_until_the_old_is_revoked() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let new_key: Value = body(
        app.client
            .post(app.url(&format!("/admin/tenants/{}/keys", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let second = TestTenant {
        id: tenant.id.clone(),
        api_key: new_key["api_key"].as_str().unwrap().into(),
    };
    assert_eq!(app.search_raw(&tenant, "").await.status(), StatusCode::OK);
    assert_eq!(app.search_raw(&second, "").await.status(), StatusCode::OK);
    let tenant_view = body(
        app.client
            .get(app.url(&format!("/admin/tenants/{}", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let first_key_id = tenant_view["keys"][0]["id"].as_str().unwrap();

    let revoked = app
        .client
        .delete(app.url(&format!("/admin/tenants/{}/keys/{first_key_id}", tenant.id)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.search_raw(&tenant, "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.search_raw(&second, "").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_tenant_requests_are_refused() {
    let app = TestApp::spawn().await;
    let post = |body: Value| {
        app.client
            .post(app.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };

    assert_eq!(
        post(json!({"name": ""})).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post(json!({"name": "x", "rate_limit_per_minute": 0}))
            .await
            .unwrap()
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post(json!({"nam": "x"})).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let wrong_token = app
        .client
        .post(app.url("/admin/tenants"))
        .bearer_auth("wrong")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), StatusCode::UNAUTHORIZED);
    let missing = app
        .client
        .get(app.url("/admin/tenants/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;

    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let unknown = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_changes_lose_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let requests = (0..20).map(|_| {
        app.client
            .post(app.url(&format!("/admin/tenants/{}/keys", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    });
    let responses = futures::future::join_all(requests).await;

    assert!(
        responses
            .iter()
            .all(|response| response.as_ref().unwrap().status() == StatusCode::CREATED)
    );
    let view = body(
        app.client
            .get(app.url(&format!("/admin/tenants/{}", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        view["keys"].as_array().unwrap().len(),
        21,
        "every issued key is kept"
    );
}

/// An ingest-only key (for browser and mobile SDKs, where anyone can read it) sends events
/// through every ingest route and the compatible formats, and is refused everything else.
#[tokio::test]
async fn an_ingest_only_key_sends_events_and_can_read_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let created = app
        .client
        .post(app.url(&format!("/admin/tenants/{}/keys", tenant.id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"scope": "ingest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created = body(created).await;
    assert_eq!(created["scope"], "ingest");
    let ingest = TestTenant {
        id: tenant.id.clone(),
        api_key: created["api_key"].as_str().unwrap().to_owned(),
    };
    let shown = body(
        app.client
            .get(app.url(&format!("/admin/tenants/{}", tenant.id)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let scopes: Vec<&str> = shown["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["scope"].as_str().unwrap())
        .collect();
    assert_eq!(scopes, ["full", "ingest"]);

    let sent = app
        .post_event(&ingest, &json!({"event_type": "from.browser"}))
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let batch = app
        .post_batch(&ingest, &[json!({"event_type": "from.browser"})])
        .await;
    assert_eq!(batch.status(), StatusCode::OK);
    let segment = app
        .client
        .post(app.url("/v1/track"))
        .basic_auth(&ingest.api_key, Some(""))
        .json(&json!({"userId": "u", "event": "from.browser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(segment.status(), StatusCode::OK);

    let id = body(sent).await["id"].as_str().unwrap().to_owned();
    for (method, path) in [
        (reqwest::Method::GET, "/v1/events".to_owned()),
        (reqwest::Method::GET, format!("/v1/events/{id}")),
        (reqwest::Method::GET, "/v1/destinations".to_owned()),
        (reqwest::Method::POST, "/v1/destinations".to_owned()),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&ingest.api_key)
            .json(&json!({"kind": "webhook", "url": "https://example.com/"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(body(response).await["type"], "/problems/forbidden");
    }
    assert_eq!(
        app.count_events(&tenant, "event_type=from.browser").await,
        3
    );
}

/// `GET /admin/tenants` pages like search: `limit`, then `next_cursor` until the last page.
#[tokio::test]
async fn the_tenant_list_is_paginated() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.create_tenant().await.id);
    }
    let mut listed = Vec::new();
    let mut query = "limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = body(
            app.client
                .get(app.url(&format!("/admin/tenants?{query}")))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        pages += 1;
        let tenants = page["tenants"].as_array().unwrap();
        assert!(tenants.len() <= 2, "{page}");
        listed.extend(tenants.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        (listed, pages),
        (created, 3),
        "every tenant once, oldest first"
    );
    for bad in ["limit=0", "limit=1001", "cursor=nope"] {
        let response = app
            .client
            .get(app.url(&format!("/admin/tenants?{bad}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn counts_are_whole_numbers_however_they_are_written() {
    let app = TestApp::spawn().await;
    let create = |body: Value| {
        let request = app
            .client
            .post(app.url("/admin/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    // JSON Schema calls 6104.0 an integer: so does the API.
    let written =
        create(json!({"name": "float", "rate_limit_per_minute": 6104.0, "burst": 10.0})).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    let tenant = body(written).await;
    assert_eq!(tenant["rate_limit_per_minute"], 6104);
    assert_eq!(tenant["burst"], 10);
    for (wrong, field) in [
        (
            json!({"name": "x", "rate_limit_per_minute": 6104.5}),
            "rate_limit_per_minute",
        ),
        (
            json!({"name": "x", "rate_limit_per_minute": 4_294_967_296_u64}),
            "rate_limit_per_minute",
        ),
        (json!({"name": "x", "burst": -1}), "burst"),
        (
            json!({"name": "x", "retention_days": "7"}),
            "retention_days",
        ),
    ] {
        let refused = create(wrong.clone()).await;
        assert_eq!(
            refused.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{wrong}"
        );
        let problem = body(refused).await;
        assert!(
            problem["errors"][0]["msg"]
                .as_str()
                .unwrap()
                .contains(field),
            "{wrong}: {problem}"
        );
    }
    let changed = app
        .client
        .patch(app.url(&format!(
            "/admin/tenants/{}",
            tenant["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"retention_days": 30.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(body(changed).await["retention_days"], 30);
    // A body that is not an object is not a change.
    let array = app
        .client
        .patch(app.url(&format!(
            "/admin/tenants/{}",
            tenant["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!([null, null]))
        .send()
        .await
        .unwrap();
    assert_eq!(array.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A `null` body for a new key is no body: a full key.
    let key = app
        .client
        .post(app.url(&format!(
            "/admin/tenants/{}/keys",
            tenant["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .json(&Value::Null)
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::CREATED);
    assert_eq!(body(key).await["scope"], "full");
}
