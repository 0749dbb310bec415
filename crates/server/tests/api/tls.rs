//! HTTPS on the listener: a client that trusts the server's certificate ingests over TLS,
//! plain HTTP to the same port gets no answer, and the server still shuts down cleanly.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestApp, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_ingested_over_https_and_plain_http_is_refused() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = tempfile::tempdir().unwrap();
    let cert_path = pem.path().join("cert.pem");
    let key_path = pem.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let mut app = TestApp::spawn_with(|config| {
        config.tls_cert = Some(cert_path.clone());
        config.tls_key = Some(key_path.clone());
    })
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let https = TestApp::attach(&app.base, trusting);

    let tenant = https.create_tenant().await;
    let stored = https
        .post_event(&tenant, &event("tls-1", "t", json!({"n": 1})))
        .await;

    assert_eq!(stored.status(), StatusCode::CREATED);
    let plain = reqwest::Client::new()
        .get(app.base.replacen("https://", "http://", 1) + "/healthz")
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let untrusting = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(untrusting.is_err(), "an unknown certificate was accepted");
    app.stop().await;
}
