//! The embedded store's writer, driven directly.

use pulsestream_core::{NewEvent, TenantId};
use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};
use pulsestream_store::{
    AppendBatch, AppendStatus, EventStore, IdempotencyClaim, SearchQuery, StoreError,
};

fn batch(tenant: TenantId, claim: Option<IdempotencyClaim>) -> AppendBatch {
    AppendBatch {
        tenant,
        events: vec![NewEvent::from_json(r#"{"event_type":"signup"}"#).unwrap()],
        received_at: time::OffsetDateTime::now_utc(),
        idempotency: claim,
    }
}

#[tokio::test]
async fn a_request_whose_idempotency_key_already_finished_stores_nothing_more() {
    // The API's in-memory claim is released when a request times out while its write is
    // still queued; the retry's write must then replay, not store the events again.
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap();
    let tenant = TenantId::random();
    let claim = IdempotencyClaim {
        key: "k".into(),
        request_hash: 7,
    };

    let first = store
        .append_batch(batch(tenant, Some(claim.clone())))
        .await
        .unwrap();
    let retried = store
        .append_batch(batch(tenant, Some(claim)))
        .await
        .unwrap();
    let other_body = store
        .append_batch(batch(
            tenant,
            Some(IdempotencyClaim {
                key: "k".into(),
                request_hash: 8,
            }),
        ))
        .await;

    assert_eq!(retried, first);
    assert!(
        matches!(other_body, Err(StoreError::IdempotencyKeyReused)),
        "a different body under a finished key is refused: {other_body:?}"
    );
    assert_eq!(stored(&store, tenant).await, 1);
    store.close().await.unwrap();
}

/// How many events the tenant has stored.
async fn stored(store: &EmbeddedStore, tenant: TenantId) -> usize {
    let page = store
        .search(
            tenant,
            SearchQuery {
                limit: 100,
                ..SearchQuery::default()
            },
        )
        .await
        .unwrap();
    page.events.len()
}

fn one_event(tenant: TenantId, json: &str, claim: Option<IdempotencyClaim>) -> AppendBatch {
    AppendBatch {
        tenant,
        events: vec![NewEvent::from_json(json).unwrap()],
        received_at: time::OffsetDateTime::now_utc(),
        idempotency: claim,
    }
}

/// Copies of one event sent at once land in consecutive groups, the later ones decided while
/// the earlier is still being committed: each must see the other's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_decided_while_an_earlier_group_commits_are_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap());
    let tenant = TenantId::random();
    for round in 0..20 {
        let same = format!(r#"{{"event_id":"e-{round}","event_type":"t","payload":{{"n":1}}}}"#);
        let other = format!(r#"{{"event_id":"e-{round}","event_type":"t","payload":{{"n":2}}}}"#);
        let mut tasks = Vec::new();
        for copy in 0..40 {
            let store = store.clone();
            let json = if copy % 10 == 9 {
                other.clone()
            } else {
                same.clone()
            };
            tasks.push(tokio::spawn(async move {
                let outcome = store
                    .append_batch(one_event(tenant, &json, None))
                    .await
                    .unwrap();
                (json, outcome.statuses[0])
            }));
        }
        let mut winner = None;
        let mut outcomes = Vec::new();
        for task in tasks {
            let (json, status) = task.await.unwrap();
            if let AppendStatus::Accepted(id) = status {
                assert!(
                    winner.replace((id, json.clone())).is_none(),
                    "two copies stored in round {round}"
                );
            }
            outcomes.push((json, status));
        }
        let (id, stored_json) = winner.expect("one copy is stored");
        for (json, status) in outcomes {
            match status {
                AppendStatus::Accepted(_) => {}
                AppendStatus::Duplicate(earlier) => {
                    assert_eq!(earlier, id);
                    assert_eq!(json, stored_json, "only the same content is a duplicate");
                }
                AppendStatus::Conflict(earlier) => {
                    assert_eq!(earlier, id);
                    assert_ne!(json, stored_json, "only other content is a conflict");
                }
            }
        }
    }
    assert_eq!(stored(&store, tenant).await, 20);
}

/// Requests under one Idempotency-Key sent at once, past the API's in-memory claim: one
/// stores, the others replay its outcome, whichever group they land in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_in_consecutive_groups_stores_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).unwrap());
    let tenant = TenantId::random();
    for round in 0..20 {
        let claim = IdempotencyClaim {
            key: format!("key-{round}"),
            request_hash: 1,
        };
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let store = store.clone();
            let claim = claim.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .append_batch(one_event(tenant, r#"{"event_type":"t"}"#, Some(claim)))
                    .await
                    .unwrap()
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        assert!(
            outcomes.windows(2).all(|pair| pair[0] == pair[1]),
            "round {round}: every request gets the first one's outcome"
        );
    }
    assert_eq!(stored(&store, tenant).await, 20, "one event stored per key");
}
