//! The store contract: the same cases, through the traits, against every store.
//!
//! Each case is an `async fn(&Arc<dyn Store>)` and runs once on a fresh embedded store (a
//! temporary data dir) and once on a fresh PostgreSQL schema (`PULSESTREAM_TEST_DATABASE_URL`,
//! by default `postgres://postgres@127.0.0.1:5432/test`). A new store, or a new layout of an
//! existing one, passes this suite before any HTTP test runs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

mod support;

use pulsestream_core::{
    Destination, DestinationId, DestinationKind, EventFilter, EventId, KeyId, KeyScope, NewEvent,
    OrderingKey, RateLimit, Tenant, TenantChange, TenantChangeError, TenantId, TenantKey,
};
use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};
use pulsestream_store::{
    AppendBatch, AppendStatus, Circuit, IdempotencyClaim, Order, PayloadFilter, SearchQuery, Store,
    StoreError, TenantChangeFailed,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Runs each named case on both stores: `embedded::<case>` and `postgres::<case>`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fresh = super::Fresh::embedded();
                    super::$case(&fresh.store).await;
                    fresh.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fresh = super::Fresh::postgres().await;
                    super::$case(&fresh.store).await;
                    fresh.finish().await;
                }
            )*
        }
    };
}

conformance!(
    attempts_counts_and_expiry_follow_their_horizons,
    an_event_id_is_stored_once_and_a_changed_copy_is_a_conflict,
    copies_in_one_batch_the_first_wins,
    numbers_written_differently_are_the_same_content,
    timestamps_keep_their_nanoseconds,
    concurrent_copies_are_stored_once,
    an_idempotency_key_replays_its_statuses_and_refuses_another_body,
    events_are_read_back_only_by_their_tenant,
    search_filters_agree,
    search_pages_walk_every_event_once_in_both_orders,
    search_pages_are_capped_by_bytes,
    an_event_is_enqueued_for_each_matching_destination_in_its_commit,
    a_destination_filter_chooses_what_is_enqueued,
    ordered_claims_hold_a_key_until_its_earlier_event_is_done,
    outcomes_move_entries_delivered_rescheduled_dead_lettered_replayed_purged,
    counts_read_while_deliveries_are_recorded_add_up,
    deleting_a_destination_drops_its_queue,
    tenants_are_created_found_by_key_and_changed,
    concurrent_tenant_changes_never_bring_a_revoked_key_back,
);

/// A store made for one case, and what it takes to clean it up.
struct Fresh {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
    schema: Option<support::PostgresSchema>,
}

impl Fresh {
    fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
        Self {
            store: Arc::new(store),
            _dir: dir,
            schema: None,
        }
    }

    async fn postgres() -> Self {
        let fresh = support::PostgresSchema::new("psconf").await;
        Self {
            store: Arc::new(fresh.store.clone()),
            _dir: tempfile::tempdir().expect("temp dir"),
            schema: Some(fresh),
        }
    }

    async fn finish(self) {
        self.store.close().await.expect("close");
        if let Some(schema) = self.schema {
            schema.drop_schema().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn new_event(json: Value) -> NewEvent {
    NewEvent::from_json(&json.to_string()).expect("a valid event")
}

fn batch(tenant: TenantId, events: Vec<Value>) -> AppendBatch {
    AppendBatch {
        tenant,
        events: events.into_iter().map(new_event).collect(),
        received_at: OffsetDateTime::now_utc(),
        idempotency: None,
    }
}

async fn append(store: &Arc<dyn Store>, tenant: TenantId, events: Vec<Value>) -> Vec<AppendStatus> {
    store
        .append_batch(batch(tenant, events))
        .await
        .expect("append")
        .statuses
}

fn accepted(status: AppendStatus) -> EventId {
    match status {
        AppendStatus::Accepted(id) => id,
        other => panic!("expected accepted, got {other:?}"),
    }
}

async fn search(store: &Arc<dyn Store>, tenant: TenantId, query: SearchQuery) -> Vec<Value> {
    let query = SearchQuery {
        limit: if query.limit == 0 { 1_000 } else { query.limit },
        ..query
    };
    store
        .search(tenant, query)
        .await
        .expect("search")
        .events
        .iter()
        .map(|event| serde_json::from_slice(&event.json).expect("stored JSON"))
        .collect()
}

fn event_ids(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["event_id"].as_str().expect("event_id"))
        .collect()
}

fn webhook(tenant: TenantId, event_types: &[&str], max_attempts: u32) -> Destination {
    Destination {
        id: DestinationId::random(),
        tenant,
        kind: DestinationKind::Webhook {
            url: "https://example.com/hook".into(),
            sealed_url: None,
        },
        event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
        max_attempts,
        secret: "whsec_test".into(),
        disabled: false,
        filter: None,
        ordering: None,
        max_batch_bytes: None,
        paused: false,
        created_at: OffsetDateTime::now_utc(),
    }
}

/// Everything due for `destination` by `at`.
async fn due(
    store: &Arc<dyn Store>,
    destination: DestinationId,
    at: OffsetDateTime,
) -> Vec<pulsestream_store::Delivery> {
    store
        .claim_due(destination, at, None, 1_000)
        .await
        .expect("claim")
}

fn far_future() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::from_secs(365 * 24 * 3600)
}

fn key(hash: &str) -> TenantKey {
    TenantKey {
        id: KeyId::random(),
        hash: hash.into(),
        prefix: "ps_test".into(),
        created_at: OffsetDateTime::now_utc(),
        scope: KeyScope::Full,
    }
}

fn tenant(name: &str, hash: &str) -> Tenant {
    Tenant {
        id: TenantId::random(),
        name: name.into(),
        rate_limit: RateLimit::new(600, None).expect("a valid limit"),
        retention_days: None,
        keys: vec![key(hash)],
        created_at: OffsetDateTime::now_utc(),
    }
}

// ---------------------------------------------------------------------------------------
// Events: exactly once, idempotency, reads

/// Attempts are listed per destination and per event until pruned; counts add up per
/// minute and all-time; expiry deletes old events with their dedup entries.
async fn attempts_counts_and_expiry_follow_their_horizons(store: &Arc<dyn Store>) {
    use pulsestream_store::{Attempt, AttemptOutcome, Counts, MinuteCounts};
    let tenant = TenantId::random();
    let old_ts = (OffsetDateTime::now_utc() - time::Duration::days(10))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let ids: Vec<EventId> = append(
        store,
        tenant,
        vec![
            json!({"event_id": "old", "event_type": "t", "timestamp": old_ts}),
            json!({"event_id": "new", "event_type": "t"}),
        ],
    )
    .await
    .into_iter()
    .map(accepted)
    .collect();
    let destination = webhook(tenant, &[], 3);
    store.put_destination(&destination).await.unwrap();
    let attempt = |at: OffsetDateTime, events: Vec<EventId>| Attempt {
        id: uuid::Uuid::now_v7(),
        tenant,
        destination: destination.id,
        at,
        events,
        outcome: AttemptOutcome::Failed,
        status: Some(503),
        error: Some("the receiver answered 503".into()),
        latency_ms: 7,
        next_retry_at: None,
        dead_lettered: 0,
        test: false,
    };
    let now = OffsetDateTime::now_utc();
    let stale = attempt(now - time::Duration::days(8), vec![ids[1]]);
    let fresh = attempt(now, vec![ids[1]]);
    store.record_attempt(&stale).await.unwrap();
    store.record_attempt(&fresh).await.unwrap();
    let listed = store.attempts(destination.id, None, 10).await.unwrap();
    assert_eq!(listed, vec![fresh.clone(), stale.clone()], "newest first");
    assert_eq!(
        store
            .event_attempts(tenant, ids[1], 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        store
            .event_attempts(TenantId::random(), ids[1], 10)
            .await
            .unwrap()
            .is_empty()
    );
    let pruned = store
        .prune_activity(now - time::Duration::days(7), 0)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(
        store.attempts(destination.id, None, 10).await.unwrap(),
        vec![fresh.clone()]
    );
    assert_eq!(
        store.event_attempts(tenant, ids[1], 10).await.unwrap(),
        vec![fresh]
    );

    // Counts: two nodes' additions to one minute add up.
    let minute = pulsestream_store::minute_of(now);
    let some = Counts {
        accepted: 2,
        delivered: 1,
        stored_bytes: 100,
        ..Counts::default()
    };
    for _ in 0..2 {
        store
            .add_counts(&[MinuteCounts {
                tenant,
                minute,
                counts: some,
            }])
            .await
            .unwrap();
    }
    let counts = store.counts(tenant, minute - 5).await.unwrap();
    assert_eq!(counts.minutes.len(), 1);
    assert_eq!(counts.minutes[0].1.accepted, 4);
    assert_eq!(counts.all_time.stored_bytes, 200);

    // Expiry: the old event goes with its dedup entry; its event_id may be stored again.
    let expired = store
        .expire_events(tenant, now - time::Duration::days(2), 100)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    assert!(store.event(tenant, ids[0]).await.unwrap().is_none());
    assert!(store.event(tenant, ids[1]).await.unwrap().is_some());
    let again = append(
        store,
        tenant,
        vec![json!({"event_id": "old", "event_type": "t", "timestamp": old_ts})],
    )
    .await;
    assert!(matches!(again[0], AppendStatus::Accepted(_)), "{again:?}");
    let still = append(
        store,
        tenant,
        vec![json!({"event_id": "new", "event_type": "t"})],
    )
    .await;
    assert!(matches!(still[0], AppendStatus::Duplicate(_)), "{still:?}");
}

async fn an_event_id_is_stored_once_and_a_changed_copy_is_a_conflict(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let sent = json!({"event_id": "order-1", "event_type": "order.created", "payload": {"n": 1}});
    let id = accepted(append(store, tenant, vec![sent.clone()]).await[0]);
    // The same content, keys in another order: a retry.
    let reordered =
        json!({"payload": {"n": 1}, "event_type": "order.created", "event_id": "order-1"});
    assert_eq!(
        append(store, tenant, vec![reordered]).await,
        vec![AppendStatus::Duplicate(id)]
    );
    let changed =
        json!({"event_id": "order-1", "event_type": "order.created", "payload": {"n": 2}});
    assert_eq!(
        append(store, tenant, vec![changed]).await,
        vec![AppendStatus::Conflict(id)]
    );
    // Another tenant's `order-1` is its own event.
    let other = TenantId::random();
    accepted(append(store, other, vec![sent]).await[0]);
    assert_eq!(search(store, tenant, SearchQuery::default()).await.len(), 1);
}

async fn numbers_written_differently_are_the_same_content(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    // Raw text, as clients send it: a client library that writes its numbers its own way on
    // a retry is retrying, not conflicting.
    let raw = |body: &str| AppendBatch {
        tenant,
        events: vec![NewEvent::from_json(body).expect("a valid event")],
        received_at: OffsetDateTime::now_utc(),
        idempotency: None,
    };
    let statuses = |outcome: Result<pulsestream_store::AppendOutcome, StoreError>| {
        outcome.expect("append").statuses
    };
    let first = statuses(
        store
            .append_batch(raw(
                r#"{"event_id":"n","event_type":"t","payload":{"a":1.0,"b":1e2,"c":-0,"d":[0.5]}}"#,
            ))
            .await,
    );
    let id = accepted(first[0]);
    let again = statuses(
        store
            .append_batch(raw(
                r#"{"event_id":"n","event_type":"t","payload":{"d":[5e-1],"c":0,"b":100,"a":1}}"#,
            ))
            .await,
    );
    assert_eq!(again, vec![AppendStatus::Duplicate(id)]);
    let changed = statuses(
        store
            .append_batch(raw(
                r#"{"event_id":"n","event_type":"t","payload":{"a":1,"b":101,"c":0,"d":[0.5]}}"#,
            ))
            .await,
    );
    assert_eq!(changed, vec![AppendStatus::Conflict(id)]);
}

async fn timestamps_keep_their_nanoseconds(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let fine = append(
        store,
        tenant,
        vec![json!({"event_id": "ns", "event_type": "t",
                    "timestamp": "2026-01-01T00:00:00.000000001Z"})],
    )
    .await;
    let id = accepted(fine[0]);
    let stored = store
        .event(tenant, id)
        .await
        .expect("read")
        .expect("stored");
    let json: Value = serde_json::from_slice(&stored.json).unwrap();
    assert_eq!(json["timestamp"], "2026-01-01T00:00:00.000000001Z");
    // One nanosecond apart is another event, not a retry.
    let coarse = append(
        store,
        tenant,
        vec![json!({"event_id": "ns", "event_type": "t", "timestamp": "2026-01-01T00:00:00Z"})],
    )
    .await;
    assert_eq!(coarse, vec![AppendStatus::Conflict(id)]);
    // The same instant in another offset is the same event.
    let again = append(
        store,
        tenant,
        vec![json!({"event_id": "ns", "event_type": "t",
                    "timestamp": "2026-01-01T01:00:00.000000001+01:00"})],
    )
    .await;
    assert_eq!(again, vec![AppendStatus::Duplicate(id)]);
}

async fn copies_in_one_batch_the_first_wins(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let statuses = append(
        store,
        tenant,
        vec![
            json!({"event_id": "a", "event_type": "t", "payload": {"v": 1}}),
            json!({"event_id": "a", "event_type": "t", "payload": {"v": 1}}),
            json!({"event_id": "a", "event_type": "t", "payload": {"v": 2}}),
            json!({"event_type": "t"}),
            json!({"event_type": "t"}),
        ],
    )
    .await;
    let first = accepted(statuses[0]);
    assert_eq!(statuses[1], AppendStatus::Duplicate(first));
    assert_eq!(statuses[2], AppendStatus::Conflict(first));
    // Events without an event_id are each their own.
    let (fourth, fifth) = (accepted(statuses[3]), accepted(statuses[4]));
    assert_ne!(fourth, fifth);
    assert_eq!(search(store, tenant, SearchQuery::default()).await.len(), 3);
}

async fn concurrent_copies_are_stored_once(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    for round in 0..10 {
        let sent = json!({"event_id": format!("twin-{round}"), "event_type": "t"});
        let statuses: Vec<AppendStatus> = join(
            (0..8)
                .map(|_| {
                    let (store, batch) = (Arc::clone(store), batch(tenant, vec![sent.clone()]));
                    tokio::spawn(async move { store.append_batch(batch).await })
                })
                .collect(),
        )
        .await
        .into_iter()
        .map(|outcome| outcome.expect("append").statuses[0])
        .collect();
        let stored: Vec<EventId> = statuses
            .iter()
            .filter_map(|status| match status {
                AppendStatus::Accepted(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(stored.len(), 1, "round {round}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|status| matches!(status, AppendStatus::Accepted(id) | AppendStatus::Duplicate(id) if *id == stored[0])),
            "round {round}: {statuses:?}"
        );
    }
    assert_eq!(
        search(store, tenant, SearchQuery::default()).await.len(),
        10
    );
}

/// Awaits every spawned task, in order.
async fn join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

async fn an_idempotency_key_replays_its_statuses_and_refuses_another_body(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let claim = |request_hash| IdempotencyClaim {
        key: "retry-1".into(),
        request_hash,
    };
    let keyed = |request_hash| AppendBatch {
        idempotency: Some(claim(request_hash)),
        ..batch(
            tenant,
            vec![
                json!({"event_type": "signup"}),
                json!({"event_type": "signup"}),
            ],
        )
    };
    let first = store.append_batch(keyed(7)).await.expect("append");
    let replayed = store.append_batch(keyed(7)).await.expect("replay");
    assert_eq!(replayed, first, "the same key and body replay the statuses");
    let other = store.append_batch(keyed(8)).await;
    assert!(
        matches!(other, Err(StoreError::IdempotencyKeyReused)),
        "{other:?}"
    );
    let record = store
        .idempotency_record(tenant, "retry-1")
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!((record.request_hash, record.statuses), (7, first.statuses));
    assert!(
        store
            .idempotency_record(TenantId::random(), "retry-1")
            .await
            .expect("read")
            .is_none(),
        "a key is the tenant's own"
    );
    assert_eq!(search(store, tenant, SearchQuery::default()).await.len(), 2);
}

async fn events_are_read_back_only_by_their_tenant(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let id = accepted(
        append(
            store,
            tenant,
            vec![json!({"event_id": "e", "event_type": "t", "source": "s", "payload": {"a": [1, "x"]}})],
        )
        .await[0],
    );
    let stored = store.event(tenant, id).await.expect("read").expect("found");
    let json: Value = serde_json::from_slice(&stored.json).expect("JSON");
    assert_eq!(json["id"], id.to_string());
    assert_eq!(
        (&json["event_id"], &json["event_type"], &json["source"]),
        (&json!("e"), &json!("t"), &json!("s"))
    );
    assert_eq!(json["payload"], json!({"a": [1, "x"]}));
    assert!(json["timestamp"].is_string() && json["received_at"].is_string());
    assert!(
        store
            .event(TenantId::random(), id)
            .await
            .expect("read")
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------
// Search

async fn search_filters_agree(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    append(
        store,
        tenant,
        vec![
            json!({"event_id": "1", "event_type": "order.created", "source": "web",
                   "timestamp": "2026-01-01T00:00:00Z",
                   "payload": {"user": {"id": 42, "plan": "pro"}, "note": "Blue Ocean"}}),
            json!({"event_id": "2", "event_type": "order.paid", "source": "web",
                   "timestamp": "2026-01-02T00:00:00Z",
                   "payload": {"user": {"id": 7, "plan": "free"}, "flag": true}}),
            json!({"event_id": "3", "event_type": "user.signup", "source": "ios",
                   "timestamp": "2026-01-03T00:00:00Z",
                   "payload": {"user": {"id": 42.0}, "flag": null, "note": "green ocean"}}),
        ],
    )
    .await;
    let ids = |query: SearchQuery| async move {
        let events = search(store, tenant, query).await;
        let mut ids: Vec<String> = event_ids(&events)
            .iter()
            .map(|id| (*id).to_owned())
            .collect();
        ids.sort();
        ids
    };
    let payload = |path: &str, value: &str| PayloadFilter {
        path: path.split('.').map(str::to_owned).collect(),
        value: value.into(),
    };
    let at = |text: &str| pulsestream_core::parse_timestamp(text).expect("a timestamp");

    let cases: Vec<(&str, SearchQuery, Vec<&str>)> = vec![
        ("everything", SearchQuery::default(), vec!["1", "2", "3"]),
        (
            "event_id",
            SearchQuery {
                event_id: Some("2".into()),
                ..Default::default()
            },
            vec!["2"],
        ),
        (
            "one type",
            SearchQuery {
                event_types: vec!["order.paid".into()],
                ..Default::default()
            },
            vec!["2"],
        ),
        (
            "a type named twice",
            SearchQuery {
                event_types: vec!["order.paid".into(), "order.paid".into()],
                ..Default::default()
            },
            vec!["2"],
        ),
        (
            "two types",
            SearchQuery {
                event_types: vec!["order.created".into(), "user.signup".into()],
                ..Default::default()
            },
            vec!["1", "3"],
        ),
        (
            "source",
            SearchQuery {
                source: Some("web".into()),
                ..Default::default()
            },
            vec!["1", "2"],
        ),
        (
            "since (inclusive) and until (exclusive)",
            SearchQuery {
                since: Some(at("2026-01-02T00:00:00Z")),
                until: Some(at("2026-01-03T00:00:00Z")),
                ..Default::default()
            },
            vec!["2"],
        ),
        (
            "a number by value",
            SearchQuery {
                payload: vec![payload("user.id", "42")],
                ..Default::default()
            },
            vec!["1", "3"],
        ),
        (
            "a string",
            SearchQuery {
                payload: vec![payload("user.plan", "pro")],
                ..Default::default()
            },
            vec!["1"],
        ),
        (
            "a boolean",
            SearchQuery {
                payload: vec![payload("flag", "true")],
                ..Default::default()
            },
            vec!["2"],
        ),
        (
            "null",
            SearchQuery {
                payload: vec![payload("flag", "null")],
                ..Default::default()
            },
            vec!["3"],
        ),
        (
            "full text, any case, every term",
            SearchQuery {
                text: Some("OCEAN blue".into()),
                ..Default::default()
            },
            vec!["1"],
        ),
        (
            "full text and a type",
            SearchQuery {
                text: Some("ocean".into()),
                event_types: vec!["user.signup".into()],
                ..Default::default()
            },
            vec!["3"],
        ),
        (
            "nothing matches",
            SearchQuery {
                text: Some("absent".into()),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (name, query, expected) in cases {
        assert_eq!(ids(query).await, expected, "{name}");
    }
    // Another tenant sees none of it.
    assert!(
        search(store, TenantId::random(), SearchQuery::default())
            .await
            .is_empty()
    );
}

async fn search_pages_walk_every_event_once_in_both_orders(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let events: Vec<Value> = (0..25)
        .map(|i| {
            json!({"event_id": format!("{i:02}"), "event_type": "page.test",
                        "timestamp": format!("2026-02-01T00:00:{i:02}Z")})
        })
        .collect();
    append(store, tenant, events).await;
    for order in [Order::Desc, Order::Asc] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .search(
                    tenant,
                    SearchQuery {
                        event_types: vec!["page.test".into()],
                        limit: 10,
                        cursor,
                        order,
                        ..Default::default()
                    },
                )
                .await
                .expect("search");
            for event in &page.events {
                let json: Value = serde_json::from_slice(&event.json).expect("JSON");
                seen.push(json["event_id"].as_str().expect("id").to_owned());
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected: Vec<String> = (0..25).map(|i| format!("{i:02}")).collect();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Delivery queue

async fn search_pages_are_capped_by_bytes(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    // Large events (read apart from their candidates on PostgreSQL) between small ones.
    let events: Vec<Value> = (0..12)
        .map(|i| {
            let size = if i % 3 == 0 { 10 } else { 200_000 };
            json!({"event_id": format!("b-{i:02}"), "event_type": "t",
                   "payload": {"blob": "x".repeat(size)}})
        })
        .collect();
    append(store, tenant, events).await;
    let cap = 500_000;
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .search(
                tenant,
                SearchQuery {
                    limit: 1_000,
                    max_bytes: cap,
                    cursor,
                    order: Order::Asc,
                    ..SearchQuery::default()
                },
            )
            .await
            .expect("search");
        pages += 1;
        let bytes: usize = page.events.iter().map(|event| event.json.len()).sum();
        assert!(
            bytes <= cap || page.events.len() == 1,
            "a page of {bytes} bytes in {} events",
            page.events.len()
        );
        assert!(!page.events.is_empty());
        for event in &page.events {
            let json: Value = serde_json::from_slice(&event.json).unwrap();
            seen.push(json["event_id"].as_str().unwrap().to_owned());
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..12).map(|i| format!("b-{i:02}")).collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every event once");
    assert!(
        pages >= 4,
        "8 events of 200 KB in pages of 500 KB: {pages} pages"
    );
}

async fn an_event_is_enqueued_for_each_matching_destination_in_its_commit(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let orders = webhook(tenant, &["order.*"], 3);
    let everything = webhook(tenant, &[], 3);
    store.put_destination(&orders).await.expect("put");
    store.put_destination(&everything).await.expect("put");
    let mut ids: Vec<String> = store
        .destinations(tenant)
        .await
        .expect("list")
        .iter()
        .map(|destination| destination.id.to_string())
        .collect();
    ids.sort();
    let mut expected = vec![orders.id.to_string(), everything.id.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(
        store
            .all_destinations()
            .await
            .expect("all")
            .iter()
            .any(|destination| destination.id == orders.id)
    );

    let statuses = append(
        store,
        tenant,
        vec![
            json!({"event_id": "o", "event_type": "order.created"}),
            json!({"event_id": "u", "event_type": "user.signup"}),
        ],
    )
    .await;
    let (order, user) = (accepted(statuses[0]), accepted(statuses[1]));
    // A duplicate enqueues nothing more.
    append(
        store,
        tenant,
        vec![json!({"event_id": "o", "event_type": "order.created"})],
    )
    .await;

    let now = OffsetDateTime::now_utc() + Duration::from_secs(1);
    let for_orders: Vec<EventId> = due(store, orders.id, now)
        .await
        .iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(for_orders, vec![order]);
    let mut for_all: Vec<EventId> = due(store, everything.id, now)
        .await
        .iter()
        .map(|d| d.event)
        .collect();
    for_all.sort();
    let mut both = vec![order, user];
    both.sort();
    assert_eq!(for_all, both);
    let delivery = &store
        .claim_due(orders.id, far_future(), None, 1)
        .await
        .expect("claim");
    // PostgreSQL leases claimed rows: a second claim may see none; the embedded store may
    // see it again. Either way the entry carries the event's JSON and no attempts yet.
    for delivery in delivery {
        let json: Value = serde_json::from_slice(&delivery.json).expect("JSON");
        assert_eq!(json["event_id"], "o");
        assert_eq!(delivery.attempts, 0);
    }
    let stats = store.delivery_stats(orders.id).await.expect("stats");
    assert_eq!(stats.pending, 1);
}

async fn a_destination_filter_chooses_what_is_enqueued(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let mut filtered = webhook(tenant, &["order.*"], 3);
    filtered.filter = Some(EventFilter {
        source: Some("web".into()),
        payload: vec![PayloadFilter {
            path: vec!["plan".into(), "seats".into()],
            value: "5".into(),
        }],
        text: Some("ada".into()),
    });
    store.put_destination(&filtered).await.expect("put");
    let shown = store.destinations(tenant).await.expect("list");
    assert_eq!(shown[0].filter, filtered.filter, "the filter is stored");
    let statuses = append(
        store,
        tenant,
        vec![
            // Numbers compare by value, text case-insensitively: this one matches.
            json!({"event_id": "yes", "event_type": "order.paid", "source": "web",
                   "payload": {"plan": {"seats": 5.0}, "name": "Ada Lovelace"}}),
            json!({"event_id": "type", "event_type": "user.signup", "source": "web",
                   "payload": {"plan": {"seats": 5}, "name": "Ada"}}),
            json!({"event_id": "source", "event_type": "order.paid", "source": "ios",
                   "payload": {"plan": {"seats": 5}, "name": "Ada"}}),
            json!({"event_id": "path", "event_type": "order.paid", "source": "web",
                   "payload": {"plan": {"seats": 6}, "name": "Ada"}}),
            json!({"event_id": "text", "event_type": "order.paid", "source": "web",
                   "payload": {"plan": {"seats": 5}, "name": "Grace"}}),
            json!({"event_id": "nosource", "event_type": "order.paid",
                   "payload": {"plan": {"seats": 5}, "name": "Ada"}}),
        ],
    )
    .await;
    let queued: Vec<EventId> = due(store, filtered.id, far_future())
        .await
        .iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(queued, vec![accepted(statuses[0])]);
}

async fn ordered_claims_hold_a_key_until_its_earlier_event_is_done(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let mut ordered = webhook(tenant, &[], 2);
    ordered.ordering = Some(OrderingKey::Payload(vec!["user".into()]));
    store.put_destination(&ordered).await.expect("put");
    // One request per event: ingest order is the order of these calls. The events' own
    // timestamps run backwards, so the ids (which carry them) sort the other way round.
    let mut ids = HashMap::new();
    let sent = [
        ("a1", "a"),
        ("b1", "b"),
        ("a2", "a"),
        ("b2", "b"),
        ("a3", "a"),
    ];
    for (n, (event_id, user)) in sent.into_iter().enumerate() {
        let status = append(
            store,
            tenant,
            vec![
                json!({"event_id": event_id, "event_type": "t", "payload": {"user": user},
                        "timestamp": format!("2026-01-01T00:00:0{}Z", 9 - n)}),
            ],
        )
        .await;
        ids.insert(accepted(status[0]), event_id);
    }
    let names = |claimed: &[pulsestream_store::Delivery]| -> Vec<&str> {
        claimed
            .iter()
            .map(|delivery| ids[&delivery.event])
            .collect()
    };
    let now = OffsetDateTime::now_utc() + Duration::from_secs(1);
    let first = store
        .claim_ordered(ordered.id, now, 1)
        .await
        .expect("claim");
    assert_eq!(names(&first), ["a1"]);
    assert!(first[0].order.is_some());
    // a1 fails and waits a minute: a2 and a3 wait behind it, b keeps flowing.
    store
        .reschedule(
            ordered.id,
            &first,
            now + Duration::from_secs(60),
            "HTTP 500",
        )
        .await
        .expect("reschedule");
    let flowing = store
        .claim_ordered(ordered.id, now, 100)
        .await
        .expect("claim");
    assert_eq!(names(&flowing), ["b1", "b2"]);
    store
        .record_delivered(ordered.id, &flowing)
        .await
        .expect("delivered");
    assert!(
        store
            .claim_ordered(ordered.id, now, 100)
            .await
            .expect("claim")
            .is_empty(),
        "a's later events wait for a1"
    );
    // Once a1 is dead-lettered, a2 and a3 go, in order.
    let a1 = store
        .claim_ordered(ordered.id, now + Duration::from_secs(61), 1)
        .await
        .expect("claim");
    assert_eq!(names(&a1), ["a1"]);
    store
        .dead_letter(ordered.id, &a1, "HTTP 500")
        .await
        .expect("dead letter");
    let rest = store
        .claim_ordered(ordered.id, now, 100)
        .await
        .expect("claim");
    assert_eq!(names(&rest), ["a2", "a3"]);
    store
        .record_delivered(ordered.id, &rest)
        .await
        .expect("delivered");
    // A replayed dead letter keeps its key.
    assert_eq!(
        store
            .replay_dead_letters(ordered.id, None)
            .await
            .expect("replay"),
        1
    );
    let replayed = store
        .claim_ordered(ordered.id, far_future(), 100)
        .await
        .expect("claim");
    assert_eq!(names(&replayed), ["a1"]);
    assert_eq!(replayed[0].order, a1[0].order);
}

async fn outcomes_move_entries_delivered_rescheduled_dead_lettered_replayed_purged(
    store: &Arc<dyn Store>,
) {
    let tenant = TenantId::random();
    let destination = webhook(tenant, &[], 2);
    store.put_destination(&destination).await.expect("put");
    let ids: Vec<EventId> = append(
        store,
        tenant,
        (0..3)
            .map(|i| json!({"event_id": format!("e{i}"), "event_type": "t"}))
            .collect(),
    )
    .await
    .into_iter()
    .map(accepted)
    .collect();
    let now = OffsetDateTime::now_utc() + Duration::from_secs(1);
    let mut claimed = due(store, destination.id, now).await;
    assert_eq!(claimed.len(), 3);
    // The queue is ordered by due time, then event id: put the entries in `ids` order.
    claimed.sort_by_key(|delivery| ids.iter().position(|id| *id == delivery.event));

    // e0 delivered; e1 fails once (due again later); e2 out of attempts.
    store
        .record_delivered(destination.id, &claimed[0..1])
        .await
        .expect("delivered");
    let later = now + Duration::from_secs(60);
    store
        .reschedule(destination.id, &claimed[1..2], later, "HTTP 500")
        .await
        .expect("reschedule");
    store
        .dead_letter(destination.id, &claimed[2..3], "HTTP 400")
        .await
        .expect("dead letter");

    let stats = store.delivery_stats(destination.id).await.expect("stats");
    assert_eq!(
        (stats.pending, stats.delivered, stats.dead_lettered),
        (1, 1, 1),
        "{stats:?}"
    );
    assert!(
        due(store, destination.id, now).await.is_empty(),
        "the rescheduled entry is not due before its time"
    );
    let retried = due(store, destination.id, later + Duration::from_secs(1)).await;
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].event, retried[0].attempts), (ids[1], 1));

    let letters = store
        .dead_letters(destination.id, 100)
        .await
        .expect("letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].event, letters[0].last_error.as_str()),
        (ids[2], "HTTP 400")
    );

    // Replayed: due now with fresh attempts, and no longer a dead letter.
    assert_eq!(
        store
            .replay_dead_letters(destination.id, Some(&[ids[2]]))
            .await
            .expect("replay"),
        1
    );
    assert!(
        store
            .dead_letters(destination.id, 100)
            .await
            .expect("letters")
            .is_empty()
    );
    let replayed: Vec<_> = due(store, destination.id, far_future())
        .await
        .into_iter()
        .filter(|delivery| delivery.event == ids[2])
        .collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attempts, 0);

    // Dead-lettered again, then purged.
    store
        .dead_letter(destination.id, &replayed, "HTTP 400")
        .await
        .expect("dead letter");
    assert_eq!(
        store
            .purge_dead_letters(destination.id)
            .await
            .expect("purge"),
        1
    );
    assert!(
        store
            .dead_letters(destination.id, 100)
            .await
            .expect("letters")
            .is_empty()
    );

    store
        .record_circuit(destination.id, Circuit::Open, Some("HTTP 503"))
        .await
        .expect("circuit");
    let stats = store.delivery_stats(destination.id).await.expect("stats");
    assert_eq!(stats.circuit, Circuit::Open);
    assert_eq!(stats.last_error.as_deref(), Some("HTTP 503"));
}

/// A delivery removes its queue entries and counts them delivered in one commit: counts read
/// meanwhile must see both or neither (the crash soak saw `pending + delivered` dip by the
/// batch in flight on the embedded store, which read the two apart).
async fn counts_read_while_deliveries_are_recorded_add_up(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let destination = webhook(tenant, &[], 5);
    store.put_destination(&destination).await.expect("put");
    let events = 2_000;
    for chunk in 0..events / 500 {
        append(
            store,
            tenant,
            (0..500)
                .map(|i| json!({"event_id": format!("e{chunk}-{i}"), "event_type": "t"}))
                .collect(),
        )
        .await;
    }
    let deliverer = {
        let store = store.clone();
        tokio::spawn(async move {
            let now = OffsetDateTime::now_utc() + Duration::from_secs(1);
            loop {
                let claimed = store
                    .claim_due(destination.id, now, None, 10)
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    return;
                }
                store
                    .record_delivered(destination.id, &claimed)
                    .await
                    .expect("delivered");
            }
        })
    };
    let mut reads = 0;
    while !deliverer.is_finished() {
        let stats = store.delivery_stats(destination.id).await.expect("stats");
        assert_eq!(
            stats.pending + stats.delivered + stats.dead_lettered,
            events,
            "after {reads} reads: {stats:?}"
        );
        reads += 1;
    }
    deliverer.await.expect("the deliverer");
    let stats = store.delivery_stats(destination.id).await.expect("stats");
    assert_eq!((stats.pending, stats.delivered), (0, events), "{stats:?}");
}

async fn deleting_a_destination_drops_its_queue(store: &Arc<dyn Store>) {
    let tenant = TenantId::random();
    let destination = webhook(tenant, &[], 3);
    store.put_destination(&destination).await.expect("put");
    append(store, tenant, vec![json!({"event_type": "t"})]).await;
    assert!(
        !store
            .delete_destination(TenantId::random(), destination.id)
            .await
            .expect("delete"),
        "another tenant cannot delete it"
    );
    assert!(
        store
            .delete_destination(tenant, destination.id)
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_destination(tenant, destination.id)
            .await
            .expect("delete")
    );
    assert!(store.destinations(tenant).await.expect("list").is_empty());
    assert!(due(store, destination.id, far_future()).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Tenants

async fn tenants_are_created_found_by_key_and_changed(store: &Arc<dyn Store>) {
    let acme = tenant("acme", "hash-acme");
    store.create_tenant(&acme).await.expect("create");
    let found = store
        .tenant_by_key_hash("hash-acme")
        .await
        .expect("find")
        .expect("by key");
    assert_eq!((found.id, found.name.as_str()), (acme.id, "acme"));
    assert!(
        store
            .tenant_by_key_hash("nobody")
            .await
            .expect("find")
            .is_none()
    );
    // Pages, oldest first, each after the last of the one before.
    let mut created = vec![acme.id];
    for n in 0..3 {
        let more = tenant(&format!("t{n}"), &format!("hash-t{n}"));
        store.create_tenant(&more).await.expect("create");
        created.push(more.id);
    }
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.tenants(after, 3).await.expect("list");
        listed.extend(page.iter().map(|tenant| tenant.id));
        match page.last() {
            Some(last) if page.len() == 3 => after = Some(last.id),
            _ => break,
        }
    }
    assert_eq!(listed, created, "every tenant once, in creation order");

    let changed = store
        .change_tenant(
            acme.id,
            &TenantChange::Update {
                name: Some("acme inc".into()),
                per_minute: Some(1_200),
                burst: None,
                retention_days: None,
            },
        )
        .await
        .expect("update");
    assert_eq!(changed.name, "acme inc");
    assert_eq!(
        changed.rate_limit,
        RateLimit::new(1_200, None).expect("limit")
    );

    let second = key("hash-second");
    store
        .change_tenant(acme.id, &TenantChange::AddKey(second.clone()))
        .await
        .expect("add key");
    let first = acme.keys[0].id;
    let after = store
        .change_tenant(acme.id, &TenantChange::RevokeKey(first))
        .await
        .expect("revoke");
    assert_eq!(after.keys.len(), 1);
    assert!(
        store
            .tenant_by_key_hash("hash-acme")
            .await
            .expect("find")
            .is_none()
    );
    assert_eq!(
        store
            .tenant_by_key_hash("hash-second")
            .await
            .expect("find")
            .map(|tenant| tenant.id),
        Some(acme.id)
    );
    let stored = store.tenant(acme.id).await.expect("read").expect("found");
    assert_eq!(
        (
            stored.name.as_str(),
            stored.keys.len(),
            stored.rate_limit.per_minute
        ),
        ("acme inc", 1, 1_200)
    );

    assert!(matches!(
        store
            .change_tenant(acme.id, &TenantChange::RevokeKey(first))
            .await,
        Err(TenantChangeFailed::Rejected(TenantChangeError::NoSuchKey(
            _
        )))
    ));
    assert!(matches!(
        store
            .change_tenant(
                acme.id,
                &TenantChange::Update {
                    name: None,
                    per_minute: Some(0),
                    burst: None,
                    retention_days: None,
                }
            )
            .await,
        Err(TenantChangeFailed::Rejected(TenantChangeError::RateLimit(
            _
        )))
    ));
    assert!(matches!(
        store
            .change_tenant(TenantId::random(), &TenantChange::RevokeKey(first))
            .await,
        Err(TenantChangeFailed::NotFound)
    ));
    let unchanged = store.tenant(acme.id).await.expect("read").expect("found");
    assert_eq!(
        unchanged.rate_limit.per_minute, 1_200,
        "a refused change changes nothing"
    );
}

async fn concurrent_tenant_changes_never_bring_a_revoked_key_back(store: &Arc<dyn Store>) {
    let acme = tenant("acme", "hash-keep");
    store.create_tenant(&acme).await.expect("create");
    let mut revoked = HashSet::new();
    for round in 0..20_u32 {
        let added = key(&format!("hash-{round}"));
        store
            .change_tenant(acme.id, &TenantChange::AddKey(added.clone()))
            .await
            .expect("add");
        let mut changes = vec![TenantChange::RevokeKey(added.id)];
        changes.extend((0..4).map(|n| TenantChange::Update {
            name: None,
            per_minute: Some(600 + round * 10 + n),
            burst: None,
            retention_days: None,
        }));
        let results = join(
            changes
                .into_iter()
                .map(|change| {
                    let store = Arc::clone(store);
                    tokio::spawn(
                        async move { store.change_tenant(acme.id, &change).await.map(|_| ()) },
                    )
                })
                .collect(),
        )
        .await;
        assert!(
            results.iter().all(Result::is_ok),
            "round {round}: {results:?}"
        );
        revoked.insert(added.hash.clone());
        let stored = store.tenant(acme.id).await.expect("read").expect("found");
        let hashes: Vec<&str> = stored.keys.iter().map(|key| key.hash.as_str()).collect();
        assert_eq!(hashes, vec!["hash-keep"], "round {round}");
    }
    for hash in &revoked {
        assert!(
            store
                .tenant_by_key_hash(hash)
                .await
                .expect("find")
                .is_none()
        );
    }
}
