//! The embedded store's writer, driven directly.

use pulsestream_core::{NewEvent, TenantId};
use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};
use pulsestream_store::{AppendBatch, EventStore, IdempotencyClaim, SearchQuery, StoreError};

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
    assert_eq!(page.events.len(), 1);
    store.close().await.unwrap();
}
