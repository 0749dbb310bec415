//! `POST /v1/events/batch`: partial batches, in-batch duplicates, NDJSON, envelope errors.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, body, event};

fn ten_events_with_the_sixth_broken(prefix: &str) -> Vec<Value> {
    (0..10)
        .map(|i| {
            if i == 5 {
                json!({"event_id": format!("{prefix}-{i}"), "payload": {}})
            } else {
                event(&format!("{prefix}-{i}"), "order.created", json!({"i": i}))
            }
        })
        .collect()
}

#[tokio::test]
async fn a_batch_with_one_bad_event_stores_the_other_nine() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = app
        .post_batch(&tenant, &ten_events_with_the_sixth_broken("p"))
        .await;

    assert_eq!(response.status(), StatusCode::MULTI_STATUS);
    let answer = body(response).await;
    assert_eq!(
        (
            answer["accepted"].as_u64(),
            answer["duplicates"].as_u64(),
            answer["rejected"].as_u64()
        ),
        (Some(9), Some(0), Some(1))
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    assert_eq!(results[5]["status"], "rejected");
    assert_eq!(results[5]["event_id"], "p-5");
    assert_eq!(
        results[5]["errors"][0]["loc"],
        json!(["body", "events", 5, "event_type"])
    );
    assert_eq!(results[5]["errors"][0]["type"], "missing");
    for (index, result) in results.iter().enumerate().filter(|(i, _)| *i != 5) {
        assert_eq!(result["index"], index);
        assert_eq!(result["status"], "accepted");
        let read = app.get_event(&tenant, result["id"].as_str().unwrap()).await;
        let status = read.status();
        let stored = body(read).await;
        assert_eq!(
            stored["event_id"],
            format!("p-{index}"),
            "{status}: {stored}"
        );
    }
    assert_eq!(app.count_events(&tenant, "").await, 9);
}

#[tokio::test]
async fn a_fully_valid_batch_answers_200_and_a_resent_one_reports_duplicates() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let events: Vec<Value> = (0..3)
        .map(|i| event(&format!("b-{i}"), "t", json!({})))
        .collect();

    let first = app.post_batch(&tenant, &events).await;
    let second = app.post_batch(&tenant, &events).await;

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let (first, second) = (body(first).await, body(second).await);
    assert_eq!(first["accepted"], 3);
    assert_eq!(second["duplicates"], 3);
    for i in 0..3 {
        assert_eq!(second["results"][i]["status"], "duplicate");
        assert_eq!(second["results"][i]["id"], first["results"][i]["id"]);
    }
    assert_eq!(app.count_events(&tenant, "").await, 3);
}

#[tokio::test]
async fn two_items_with_one_event_id_in_a_batch_store_the_first() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let same = event("twin", "t", json!({"n": 1}));
    let different = event("twin", "t", json!({"n": 2}));

    let answer = body(
        app.post_batch(&tenant, &[same.clone(), same, different])
            .await,
    )
    .await;

    assert_eq!(answer["results"][0]["status"], "accepted");
    assert_eq!(answer["results"][1]["status"], "duplicate");
    assert_eq!(answer["results"][1]["id"], answer["results"][0]["id"]);
    assert_eq!(answer["results"][2]["status"], "rejected");
    assert_eq!(answer["results"][2]["errors"][0]["type"], "conflict");
    assert_eq!(
        answer["results"][2]["existing_id"],
        answer["results"][0]["id"]
    );
    assert_eq!(app.count_events(&tenant, "").await, 1);
}

#[tokio::test]
async fn a_batch_in_which_everything_is_rejected_answers_422_with_every_error() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    let response = app
        .post_batch(&tenant, &[json!({"event_id": "x"}), json!(5)])
        .await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem = body(response).await;
    assert_eq!(problem["rejected"], 2);
    assert_eq!(
        problem["errors"][0]["loc"],
        json!(["body", "events", 0, "event_type"])
    );
    assert_eq!(problem["errors"][1]["loc"], json!(["body", "events", 1]));
    assert_eq!(problem["results"][1]["status"], "rejected");
}

#[tokio::test]
async fn wrong_envelopes_are_refused_with_their_location() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let too_many: Vec<Value> = (0..1001)
        .map(|i| event(&format!("m-{i}"), "t", json!({})))
        .collect();

    for (sent, kind) in [
        (json!({}), "missing"),
        (json!({"events": {}}), "list_type"),
        (json!({"events": []}), "too_short"),
        (json!({"events": too_many}), "too_long"),
    ] {
        let response = app
            .client
            .post(app.url("/v1/events/batch"))
            .bearer_auth(&tenant.api_key)
            .json(&sent)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{kind}"
        );
        let problem = body(response).await;
        assert_eq!(problem["errors"][0]["loc"], json!(["body", "events"]));
        assert_eq!(problem["errors"][0]["type"], kind);
    }
    assert_eq!(app.count_events(&tenant, "").await, 0);
}

#[tokio::test]
async fn a_batch_of_a_thousand_events_is_stored_whole() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let events: Vec<Value> = (0..1000)
        .map(|i| event(&format!("k-{i}"), "bulk", json!({"i": i})))
        .collect();

    let response = app.post_batch(&tenant, &events).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await["accepted"], 1000);
    assert_eq!(app.count_events(&tenant, "event_type=bulk").await, 1000);
}

#[tokio::test]
async fn ndjson_batches_locate_errors_by_line() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    let ndjson = "{\"event_id\":\"n-0\",\"event_type\":\"t\"}\n{\"event_id\":\"n-1\"}\nnot json\n{\"event_id\":\"n-3\",\"event_type\":\"t\"}\n";

    let response = app
        .post_raw(
            &tenant,
            "/v1/events/batch",
            "application/x-ndjson",
            ndjson.into(),
        )
        .await;

    assert_eq!(response.status(), StatusCode::MULTI_STATUS);
    let answer = body(response).await;
    assert_eq!(answer["accepted"], 2);
    assert_eq!(
        answer["results"][1]["errors"][0]["loc"],
        json!(["body", 1, "event_type"])
    );
    assert_eq!(answer["results"][2]["errors"][0]["loc"], json!(["body", 2]));
    assert_eq!(answer["results"][2]["errors"][0]["type"], "json_invalid");
    assert_eq!(app.count_events(&tenant, "").await, 2);
}

#[tokio::test]
async fn ndjson_blank_lines_carry_no_event_but_count_as_lines() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;
    // Lines 0 and 2 are blank (one only spaces), line 4 is the bad event.
    let ndjson = "\n{\"event_id\":\"b-1\",\"event_type\":\"t\"}\n   \r\n{\"event_id\":\"b-3\",\"event_type\":\"t\"}\n{\"event_id\":\"b-4\"}\n\n";

    let response = app
        .post_raw(
            &tenant,
            "/v1/events/batch",
            "application/x-ndjson",
            ndjson.into(),
        )
        .await;

    assert_eq!(response.status(), StatusCode::MULTI_STATUS);
    let answer = body(response).await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{answer}");
    let indexes: Vec<&Value> = results.iter().map(|result| &result["index"]).collect();
    assert_eq!(indexes, [&json!(1), &json!(3), &json!(4)]);
    assert_eq!(
        results[2]["errors"][0]["loc"],
        json!(["body", 4, "event_type"])
    );
    assert_eq!(app.count_events(&tenant, "").await, 2);
}
