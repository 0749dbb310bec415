//! `GET /openapi.json`: every route is documented, every documented operation is routed,
//! and real answers have the members their schemas declare.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, TestApp, body, event};

/// The routes of API.md (destinations aside) that the document must list.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/events"),
    ("get", "/v1/events"),
    ("post", "/v1/events/batch"),
    ("get", "/v1/events/{id}"),
    ("post", "/admin/tenants"),
    ("get", "/admin/tenants"),
    ("get", "/admin/tenants/{id}"),
    ("patch", "/admin/tenants/{id}"),
    ("post", "/admin/tenants/{id}/keys"),
    ("delete", "/admin/tenants/{id}/keys/{key_id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// Every `(method, path)` the document lists.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.clone(), path.clone()));
        }
    }
    operations
}

/// Asserts that `value` has only members the schema declares, and all it requires.
fn assert_fits(doc: &Value, schema: &str, value: &Value) {
    let schema_doc = &doc["components"]["schemas"][schema];
    let properties = schema_doc["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"));
    let members = value.as_object().unwrap();
    for member in members.keys() {
        assert!(properties.contains_key(member), "{schema} lacks {member:?}");
    }
    for required in schema_doc["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap();
        assert!(
            members.contains_key(required),
            "{schema} requires {required:?}: {value}"
        );
    }
}

#[tokio::test]
async fn the_document_lists_every_route_with_its_security_and_bodies() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");

    let listed = operations(&doc);
    for (method, path) in ROUTES {
        assert!(
            listed.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not documented"
        );
        let operation = &doc["paths"][path][method];
        let secured = operation["security"] == json!([{"bearerAuth": []}]);
        assert_eq!(
            secured,
            path.starts_with("/v1/") || path.starts_with("/admin/"),
            "{method} {path}: security"
        );
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path}: no responses"
        );
    }

    let search = &doc["paths"]["/v1/events"]["get"];
    let params: Vec<&str> = search["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|param| param["name"].as_str().unwrap())
        .collect();
    for name in [
        "event_id",
        "event_type",
        "source",
        "since",
        "until",
        "q",
        "limit",
        "cursor",
        "order",
    ] {
        assert!(
            params.contains(&name),
            "GET /v1/events lacks {name}: {params:?}"
        );
    }
    assert!(
        search["description"]
            .as_str()
            .unwrap()
            .contains("payload.<path>")
    );

    let content = |method: &str, path: &str| {
        doc["paths"][path][method]["requestBody"]["content"]
            .as_object()
            .map(|content| content.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(content("post", "/v1/events"), ["application/json"]);
    assert_eq!(
        content("post", "/v1/events/batch"),
        ["application/json", "application/x-ndjson"]
    );
    assert_eq!(content("post", "/admin/tenants"), ["application/json"]);
    assert_eq!(
        content("patch", "/admin/tenants/{id}"),
        ["application/json"]
    );

    // The statuses of API.md, each error a problem document with located errors.
    let statuses = |method: &str, path: &str| {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        statuses("post", "/v1/events"),
        [
            "200", "201", "400", "401", "409", "413", "415", "422", "429", "503", "507"
        ]
    );
    assert_eq!(
        statuses("post", "/v1/events/batch"),
        [
            "200", "207", "400", "401", "409", "413", "415", "422", "429", "503", "507"
        ]
    );
    let rate_limited = &doc["components"]["responses"]["RateLimited"];
    assert!(rate_limited["headers"]["Retry-After"].is_object());
    assert_eq!(
        rate_limited["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    let error_item = &doc["components"]["schemas"]["ErrorItem"]["properties"];
    for member in ["loc", "type", "msg"] {
        assert!(error_item[member].is_object(), "ErrorItem lacks {member}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    for (method, path) in operations(&doc) {
        let url = app.url(
            &path
                .replace("{id}", "0190a8c4-0000-7000-8000-000000000000")
                .replace("{key_id}", "0190a8c4-0000-7000-8000-000000000001"),
        );
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        // Without credentials: 401 for the API, the answer itself for the rest; never the
        // fallback's 404 nor a 405.
        let response = app
            .client
            .request(method.clone(), url)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but answers {status}"
        );
    }
}

#[tokio::test]
async fn answers_have_the_members_their_schemas_declare() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;

    let response = app
        .client
        .post(app.url("/admin/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "acme", "rate_limit_per_minute": 1_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created = body(response).await;
    assert_fits(&doc, "TenantView", &created);
    let tenant = crate::harness::TestTenant {
        id: created["id"].as_str().unwrap().into(),
        api_key: created["api_key"].as_str().unwrap().into(),
    };
    let response = app
        .client
        .post(app.url(&format!("/admin/tenants/{}/keys", tenant.id)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_fits(&doc, "NewKeyView", &body(response).await);
    let response = app
        .client
        .get(app.url("/admin/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let tenants = body(response).await;
    assert_fits(&doc, "TenantList", &tenants);
    assert_fits(&doc, "TenantView", &tenants["tenants"][0]);
    assert_fits(&doc, "KeyView", &tenants["tenants"][0]["keys"][0]);

    let response = app
        .post_event(&tenant, &event("e-1", "t", json!({"a": 1})))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let single = body(response).await;
    assert_fits(&doc, "SingleAnswer", &single);
    let response = app
        .post_batch(&tenant, &[event("e-2", "t", json!({})), json!({})])
        .await;
    assert_eq!(response.status(), StatusCode::MULTI_STATUS);
    let batch = body(response).await;
    assert_fits(&doc, "BatchResponse", &batch);
    assert_fits(&doc, "BatchResult", &batch["results"][0]);
    assert_fits(&doc, "BatchResult", &batch["results"][1]);
    let response = app.post_batch(&tenant, &[json!({})]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_fits(&doc, "Problem", &body(response).await);

    let response = app.get_event(&tenant, single["id"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_fits(&doc, "StoredEvent", &body(response).await);
    let page = app.search(&tenant, "limit=1").await;
    assert_fits(&doc, "EventPage", &page);
    assert_fits(&doc, "StoredEvent", &page["events"][0]);

    for (path, schema) in [("/healthz", "Health"), ("/readyz", "Readiness")] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_fits(&doc, schema, &body(response).await);
    }
}

#[tokio::test]
async fn the_documented_query_parameters_are_the_ones_search_reads() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let tenant = app.create_tenant().await;
    let unknown = |problem: &Value| {
        problem["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|error| error["type"] == "unknown_parameter")
    };

    let params = doc["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .clone();
    for param in &params {
        let name = param["name"].as_str().unwrap();
        let response = app.search_raw(&tenant, &format!("{name}=x")).await;
        if response.status() != StatusCode::OK {
            assert!(
                !unknown(&body(response).await),
                "{name} is documented, not read"
            );
        }
    }
    let response = app.search_raw(&tenant, "payload.user.id=42").await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.search_raw(&tenant, "bogus=1").await;
    assert!(unknown(&body(response).await));

    let limit = params
        .iter()
        .find(|param| param["name"] == "limit")
        .unwrap();
    let max = limit["schema"]["maximum"].as_u64().unwrap();
    let response = app.search_raw(&tenant, &format!("limit={max}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.search_raw(&tenant, &format!("limit={}", max + 1)).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// `docs/API.md`, the reference that ships with the repository, has one heading per
/// operation (`` ### `POST /v1/events` ``): exactly the operations `/openapi.json` lists.
#[tokio::test]
async fn the_api_reference_documents_exactly_the_served_operations() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let mut served: Vec<String> = operations(&doc)
        .into_iter()
        .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
        .collect();
    served.sort();
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/API.md"),
    )
    .expect("docs/API.md");
    let mut documented: Vec<String> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("### `"))
        .filter_map(|rest| {
            rest.split_once('`')
                .map(|(operation, _)| operation.to_owned())
        })
        .collect();
    documented.sort();
    assert_eq!(documented, served, "docs/API.md headings vs /openapi.json");
    assert!(
        !reference.contains("../shared") && !reference.contains("](http"),
        "docs/API.md links outside the repository"
    );
}
