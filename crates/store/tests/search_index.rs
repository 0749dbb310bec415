//! The embedded store's search index, looked at directly: what leaves it and how it comes
//! back. (That searches agree with the filter rule is `search_agreement`.)

use std::ops::Bound;
use std::time::Duration;

use pulsestream_core::{NewEvent, TenantId};
use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};
use pulsestream_store::{AppendBatch, AppendStatus, EventStore, SearchQuery};
use tantivy::collector::Count;
use tantivy::query::RangeQuery;
use tantivy::{Index, Term};
use time::OffsetDateTime;

/// How many live documents of the index in `dir` hold a text that starts with `word`, for
/// the first tenant that wrote to the store (number 0: the index's terms start with it).
fn documents_with(dir: &std::path::Path, word: &str) -> usize {
    let word = format!("00000000{word}");
    let index = Index::open_in_dir(dir.join("search-index")).expect("the index");
    let field = index.schema().get_field("starts").expect("a starts field");
    let reader = index.reader().expect("a reader");
    let high = format!("{word}{}", char::MAX);
    reader
        .searcher()
        .search(
            &RangeQuery::new(
                Bound::Included(Term::from_field_text(field, &word)),
                Bound::Excluded(Term::from_field_text(field, &high)),
            ),
            &Count,
        )
        .expect("a count")
}

/// Waits (up to 20 s) until the index holds the word in `count` documents.
async fn until_indexed(dir: &std::path::Path, word: &str, count: usize) {
    for _ in 0..200 {
        if documents_with(dir, word) == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the index never held {word:?} {count} times (holds {})",
        documents_with(dir, word)
    );
}

async fn append(store: &EmbeddedStore, tenant: TenantId, json: &str) -> pulsestream_core::EventId {
    let outcome = store
        .append_batch(AppendBatch {
            tenant,
            events: vec![NewEvent::from_json(json).expect("an event")],
            received_at: OffsetDateTime::now_utc(),
            idempotency: None,
        })
        .await
        .expect("append");
    match outcome.statuses[0] {
        AppendStatus::Accepted(id) => id,
        other => panic!("{other:?}"),
    }
}

async fn found(store: &EmbeddedStore, tenant: TenantId, q: &str) -> usize {
    store
        .search(
            tenant,
            SearchQuery {
                text: Some(q.into()),
                limit: 1_000,
                ..SearchQuery::default()
            },
        )
        .await
        .expect("search")
        .events
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_events_leave_the_index_before_the_erasure_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let tenant = TenantId::random();
    let erased = append(
        &store,
        tenant,
        r#"{"event_type":"t","payload":{"note":"zyxwv secret"}}"#,
    )
    .await;
    append(
        &store,
        tenant,
        r#"{"event_type":"t","payload":{"note":"zyxwv kept"}}"#,
    )
    .await;
    until_indexed(dir.path(), "zyxwv", 2).await;
    assert_eq!(
        store.erase_events(tenant, &[erased]).await.expect("erase"),
        1
    );
    // No waiting here: the erasure answered after the index committed the deletion.
    assert_eq!(documents_with(dir.path(), "secret"), 0);
    assert_eq!(documents_with(dir.path(), "zyxwv"), 1);
    assert_eq!(found(&store, tenant, "zyxwv").await, 1);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_events_leave_the_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let tenant = TenantId::random();
    append(
        &store,
        tenant,
        r#"{"event_type":"t","timestamp":"2020-01-01T00:00:00Z","payload":{"note":"qwertz old"}}"#,
    )
    .await;
    append(
        &store,
        tenant,
        r#"{"event_type":"t","payload":{"note":"qwertz new"}}"#,
    )
    .await;
    until_indexed(dir.path(), "qwertz", 2).await;
    let cutoff = OffsetDateTime::now_utc() - time::Duration::days(30);
    assert_eq!(
        store
            .expire_events(tenant, cutoff, 1_000)
            .await
            .expect("expire"),
        1
    );
    until_indexed(dir.path(), "old", 0).await;
    assert_eq!(documents_with(dir.path(), "qwertz"), 1);
    assert_eq!(found(&store, tenant, "qwertz").await, 1);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tenant = TenantId::random();
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    for n in 0..120 {
        append(
            &store,
            tenant,
            &format!(r#"{{"event_type":"t","payload":{{"note":"plugh {n}"}}}}"#),
        )
        .await;
    }
    store.close().await.expect("close");
    drop(store);
    assert_eq!(
        documents_with(dir.path(), "plugh"),
        120,
        "closing commits the index"
    );

    // Gone, then damaged: each time the next start rebuilds it from the store.
    std::fs::remove_dir_all(dir.path().join("search-index")).expect("remove the index");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    assert_eq!(
        found(&store, tenant, "plugh").await,
        120,
        "read from the store meanwhile"
    );
    until_indexed(dir.path(), "plugh", 120).await;
    store.close().await.expect("close");
    drop(store);
    std::fs::write(dir.path().join("search-index/meta.json"), b"{not json").expect("damage");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    assert_eq!(found(&store, tenant, "plugh").await, 120);
    until_indexed(dir.path(), "plugh", 120).await;
    store.close().await.expect("close");
}
