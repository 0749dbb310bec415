//! Bad and unusual input: sizes, encodings, content types, broken JSON, hostile nesting.

use std::io::Write;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestApp, body};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn a_five_megabyte_payload_is_accepted_and_read_back_whole() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let blob = "x".repeat(5 * 1024 * 1024);

    let response = app
        .post_event(
            &tenant,
            &json!({"event_id": "big", "event_type": "blob", "payload": {"blob": blob}}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let id = body(response).await["id"].as_str().unwrap().to_owned();
    let stored = body(app.get_event(&tenant, &id).await).await;
    assert_eq!(
        stored["payload"]["blob"].as_str().unwrap().len(),
        blob.len()
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_naming_the_limit() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let blob = "x".repeat(11 * 1024 * 1024);

    let response = app
        .post_event(
            &tenant,
            &json!({"event_type": "blob", "payload": {"blob": blob}}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let problem = body(response).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("10485760 bytes"),
        "{problem}"
    );
    assert_eq!(problem["limit_bytes"], 10485760);
}

#[tokio::test]
async fn gzip_and_zstd_bodies_are_accepted() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let sent =
        serde_json::to_vec(&json!({"events": [{"event_id": "z1", "event_type": "t"}]})).unwrap();

    for (encoding, compressed) in [
        ("gzip", gzip(&sent)),
        (
            "zstd",
            ruzstd::encoding::compress_to_vec(
                &sent[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        ),
    ] {
        let response = app
            .client
            .post(app.url("/v1/events/batch"))
            .bearer_auth(&tenant.api_key)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(compressed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{encoding}");
    }
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test]
async fn a_decompression_bomb_gets_413() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let mut inflated = br#"{"event_type":"bomb","payload":{"pad":""#.to_vec();
    inflated.extend(std::iter::repeat_n(b'a', 64 * 1024 * 1024));
    inflated.extend_from_slice(br#""}}"#);
    let bomb = gzip(&inflated);
    assert!(bomb.len() < 1024 * 1024);

    let response = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(&tenant.api_key)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.count_events(&tenant, "").await, 0);
}

#[tokio::test]
async fn broken_bodies_get_clear_4xx_answers() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode)> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"event_type\": ".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "trailing garbage",
            "application/json",
            b"{\"event_type\": \"a\"} x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "invalid UTF-8",
            "application/json",
            b"{\"event_type\": \"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong content type",
            "text/plain",
            b"{\"event_type\": \"a\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "ndjson on the single endpoint",
            "application/x-ndjson",
            b"{\"event_type\": \"a\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "not an object",
            "application/json",
            b"[1, 2]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "duplicate keys",
            "application/json",
            b"{\"event_type\": \"a\", \"event_type\": \"b\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NUL in a field",
            "application/json",
            b"{\"event_type\": \"a\\u0000b\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NUL in the payload (PostgreSQL cannot store it; neither store takes it)",
            "application/json",
            b"{\"event_type\": \"a\", \"payload\": {\"k\": \"a\\u0000b\"}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "number beyond f64",
            "application/json",
            b"{\"event_type\": \"a\", \"payload\": {\"n\": 1e999}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (name, content_type, sent, expected) in cases {
        let response = app
            .post_raw(&tenant, "/v1/events", content_type, sent)
            .await;
        assert_eq!(response.status(), expected, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem = body(response).await;
        assert_eq!(problem["status"], expected.as_u16(), "{name}");
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    assert_eq!(app.count_events(&tenant, "").await, 0);
}

#[tokio::test]
async fn payloads_and_timestamps_no_reader_could_load_are_refused_and_writes_go_on() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let huge_integer = format!(
        r#"{{"event_id":"n","event_type":"t","payload":{{"n":1{}}}}}"#,
        "0".repeat(400)
    );
    let cases = [
        r#"{"event_id":"s","event_type":"t","payload":{"s":"\ud800"}}"#.to_owned(),
        huge_integer,
        r#"{"event_id":"y0","event_type":"t","timestamp":"0000-01-01T00:00:00+01:00"}"#.to_owned(),
        r#"{"event_id":"y9","event_type":"t","timestamp":"9999-12-31T23:59:59-01:00"}"#.to_owned(),
    ];

    for sent in &cases {
        // Twice: a retry of an event that slipped through once used to stop the writer.
        for _ in 0..2 {
            let response = app
                .post_raw(
                    &tenant,
                    "/v1/events",
                    "application/json",
                    sent.clone().into_bytes(),
                )
                .await;
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{sent}"
            );
        }
    }

    let after = app
        .post_event(&tenant, &json!({"event_type": "after"}))
        .await;
    assert_eq!(after.status(), StatusCode::CREATED);
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn absurd_nesting_is_refused_and_the_server_stays_up() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    for depth in [100, 100_000, 1_000_000] {
        let payload = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let sent = format!(r#"{{"event_type":"deep","payload":{{"a":{payload}}}}}"#);
        let response = app
            .post_raw(
                &tenant,
                "/v1/events",
                "application/json",
                sent.clone().into_bytes(),
            )
            .await;
        assert!(
            response.status().is_client_error(),
            "depth {depth}: {}",
            response.status()
        );
        let batch = format!(r#"{{"events":[{sent}]}}"#);
        let response = app
            .post_raw(
                &tenant,
                "/v1/events/batch",
                "application/json",
                batch.into_bytes(),
            )
            .await;
        assert!(
            response.status().is_client_error(),
            "batch depth {depth}: {}",
            response.status()
        );
    }

    let ok = app
        .post_event(
            &tenant,
            &json!({"event_type": "after", "payload": {"a": {"b": {"c": [1]}}}}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(app.count_events(&tenant, "event_type=deep").await, 0);
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let missing = app
        .client
        .post(app.url("/v1/events"))
        .json(&json!({"event_type": "a"}))
        .send()
        .await
        .unwrap();
    let unknown = app
        .client
        .get(app.url("/v1/events"))
        .bearer_auth("ps_nope")
        .send()
        .await
        .unwrap();
    let admin_with_tenant_key = app
        .client
        .get(app.url("/admin/tenants"))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();

    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(admin_with_tenant_key.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_as_a_problem() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(|config| config.request_timeout_secs = 1).await;
    let tenant = app.create_tenant().await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();

    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"event_type\":",
        tenant.api_key
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("request_timeout") {
                break;
            }
        }
    })
    .await;

    assert!(read.is_ok(), "the server answered a stalled upload");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(app.count_events(&tenant, "").await, 0);
}

#[tokio::test]
async fn bad_json_paths_queries_and_methods_get_problem_documents_on_every_destination_route() {
    let app = TestApp::spawn_with(|config| config.allow_private_destinations = true).await;
    let tenant = app.create_tenant().await;
    let created = app
        .client
        .post(app.url("/v1/destinations"))
        .bearer_auth(&tenant.api_key)
        .json(&json!({"kind": "webhook", "url": "http://127.0.0.1:1/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = body(created).await["id"].as_str().unwrap().to_owned();
    let json = "application/json";
    // Method, path, optional (content type, body), expected status.
    type Case<'a> = (
        reqwest::Method,
        String,
        Option<(&'a str, &'a str)>,
        StatusCode,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            reqwest::Method::POST,
            "/v1/destinations".into(),
            Some((json, "{\"kind\":")),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/destinations".into(),
            Some((json, "{\"kind\": 5}")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Method::POST,
            "/v1/destinations".into(),
            Some(("text/plain", "{}")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            reqwest::Method::PUT,
            "/v1/destinations".into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            "/v1/destinations/%FF".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::DELETE,
            "/v1/destinations/%FF%FE".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/destinations/{id}"),
            Some((json, "{}")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            format!("/v1/destinations/{id}/dead-letters?limit=abc"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Method::GET,
            format!("/v1/destinations/{id}/dead-letters?limit=-1"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Method::DELETE,
            "/v1/destinations/%C0/dead-letters".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/destinations/{id}/dead-letters/replay"),
            Some((json, "{\"ids\":")),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/destinations/{id}/dead-letters/replay"),
            Some((json, "{\"ids\": 5}")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/destinations/{id}/dead-letters/replay"),
            Some(("text/plain", "{}")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            reqwest::Method::GET,
            format!("/v1/destinations/{id}/dead-letters/replay"),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            "/v1/events/%FF".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::DELETE,
            "/v1/events".into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];

    for (method, path, sent, expected) in cases {
        let case = format!("{method} {path} {sent:?}");
        let mut request = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&tenant.api_key);
        if let Some((content_type, text)) = sent {
            request = request.header("content-type", content_type).body(text);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem = body(response).await;
        assert_eq!(problem["status"], expected.as_u16(), "{case}");
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{case}");
    }
}

#[tokio::test]
async fn a_key_twice_in_one_payload_object_is_refused_with_its_path() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let response = app
        .post_raw(
            &tenant,
            "/v1/events",
            "application/json",
            br#"{"event_type": "a", "payload": {"user": {"id": 1, "id": 2}}}"#.to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = body(response).await;
    assert_eq!(
        problem["errors"][0]["loc"],
        json!(["body", "payload", "user", "id"]),
        "{problem}"
    );
    assert_eq!(problem["errors"][0]["type"], "duplicate_key");
    // In a batch, only that event is refused.
    let response = app
        .post_raw(
            &tenant,
            "/v1/events/batch",
            "application/x-ndjson",
            b"{\"event_type\": \"a\", \"payload\": {\"k\": 1}}\n{\"event_type\": \"b\", \"payload\": {\"k\": 1, \"k\": 1}}\n"
                .to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::MULTI_STATUS);
    let answer = body(response).await;
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(
        answer["results"][1]["errors"][0]["loc"],
        json!(["body", 1, "payload", "k"]),
        "{answer}"
    );
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test]
async fn every_endpoint_with_a_body_reads_gzip_and_zstd_and_refuses_other_encodings() {
    let app = TestApp::spawn_with(|config| config.allow_private_destinations = true).await;
    let tenant_body = br#"{"name": "encoded"}"#;
    let send = |path: &'static str, token: String, encoding: &'static str, body: Vec<u8>| {
        let app = &app;
        async move {
            app.client
                .post(app.url(path))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("content-encoding", encoding)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let admin = crate::harness::ADMIN_TOKEN.to_owned();
    let created = send("/admin/tenants", admin.clone(), "gzip", gzip(tenant_body)).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let tenant = body(created).await;
    let key = tenant["api_key"].as_str().unwrap().to_owned();
    let zstd = ruzstd::encoding::compress_to_vec(
        &br#"{"kind": "webhook", "url": "http://127.0.0.1:9/hook"}"#[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let destination = send("/v1/destinations", key.clone(), "zstd", zstd).await;
    assert_eq!(destination.status(), StatusCode::CREATED);
    for (path, token, plain) in [
        ("/admin/tenants", admin.clone(), tenant_body.to_vec()),
        (
            "/v1/destinations",
            key.clone(),
            br#"{"kind": "webhook", "url": "http://127.0.0.1:9/hook"}"#.to_vec(),
        ),
    ] {
        // A br body is not read as plain JSON: 415, and nothing is created.
        let refused = send(path, token.clone(), "br", plain).await;
        assert_eq!(
            refused.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path}"
        );
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        let corrupt = send(path, token, "gzip", b"not gzip".to_vec()).await;
        assert_eq!(corrupt.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    let listed = body(
        app.client
            .get(app.url("/v1/destinations"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["destinations"].as_array().unwrap().len(), 1);
}

/// Sends raw bytes to the server and returns the status line of its answer.
async fn raw_status(app: &TestApp, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    socket
        .write_all(request.replace("{host}", &address).as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn request_framing_follows_rfc_9112() {
    let app = TestApp::spawn().await;
    for (what, request, status) in [
        (
            "two Host headers",
            "GET /healthz HTTP/1.1\r\nhost: {host}\r\nhost: example.com\r\n\r\n",
            "400",
        ),
        (
            "no Host in HTTP/1.1",
            "GET /healthz HTTP/1.1\r\n\r\n",
            "400",
        ),
        (
            "no Host in HTTP/1.0",
            "GET /healthz HTTP/1.0\r\n\r\n",
            "200",
        ),
        (
            "a transfer coding besides chunked",
            "POST /v1/events HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "501",
        ),
        (
            "plain chunked",
            "GET /healthz HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "200",
        ),
    ] {
        let line = raw_status(&app, request.to_owned()).await;
        assert!(
            line.split(' ').nth(1) == Some(status),
            "{what}: {line:?}, expected {status}"
        );
    }
}

#[tokio::test]
async fn idempotency_keys_search_parameters_and_byte_order_marks_are_read_strictly() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let send = |keys: Vec<&'static str>| {
        let (app, tenant) = (&app, &tenant);
        async move {
            let mut request = app
                .client
                .post(app.url("/v1/events"))
                .bearer_auth(&tenant.api_key)
                .json(&json!({"event_type": "t"}));
            for key in keys {
                request = request.header("idempotency-key", key);
            }
            request.send().await.unwrap().status()
        }
    };
    assert_eq!(send(vec!["one", "two"]).await, StatusCode::BAD_REQUEST);
    assert_eq!(send(vec!["a\tb"]).await, StatusCode::BAD_REQUEST);
    assert_eq!(send(vec!["fine-key"]).await, StatusCode::CREATED);

    for (query, name) in [
        ("event_id=", "event_id"),
        ("limit=1&limit=2", "limit"),
        ("q=%FF%FE", "q"),
    ] {
        let response = app.search_raw(&tenant, query).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        let problem = body(response).await;
        assert_eq!(
            problem["errors"][0]["loc"],
            json!(["query", name]),
            "{query}"
        );
    }
    // Repeatable ones stay repeatable.
    let response = app
        .search_raw(&tenant, "event_type=a&event_type=t&payload.x=1&payload.x=1")
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A byte-order mark at the start of a body (an editor's) is not an error.
    let response = app
        .post_raw(
            &tenant,
            "/v1/events/batch",
            "application/x-ndjson",
            "\u{feff}{\"event_type\": \"bom\"}\n{\"event_type\": \"bom\"}\n"
                .as_bytes()
                .to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_zstd_frame_that_declares_more_than_the_limit_is_refused_unread() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    // Magic number; a header with an 8-byte content size and one segment; 1 TiB declared;
    // then one empty raw block, the last.
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0];
    frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
    frame.extend_from_slice(&[0x01, 0x00, 0x00]);
    let response = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(&tenant.api_key)
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let problem = body(response).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("declares 1099511627776 bytes")),
        "{problem}"
    );
}
