//! Indexed search and the filter rule agree: random events, random filters, every page.
//!
//! Each store narrows `q` and `payload.<path>` with its own index (the embedded store's
//! search index, PostgreSQL's conditions); `event_matches` is what a filter means. Here a
//! few hundred random events go into a store, and every random query, paged through with a
//! small limit in both orders, must return exactly the events that `event_matches` accepts,
//! in order, each once. On the embedded store it runs three times: right after the appends
//! (the events not yet in the index are read from the tail), after a reopen (everything
//! committed to the index), and with the index turned off (the plain scan).

use std::sync::Arc;

use pulsestream_core::{NewEvent, TenantId};
use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};
use pulsestream_store::{
    AppendBatch, Cursor, Order, PayloadFilter, SearchQuery, Store, event_matches,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

mod support;

/// A small deterministic generator (xorshift64*), seeded per run and printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const WORDS: &[&str] = &[
    "Ada",
    "Lovelace",
    "ada@example.com",
    "SKU-12",
    "sku-1",
    "Ünïcode",
    "straße",
    "GIFT",
    "gift-wrap",
    "a-a",
    "x.y.z",
    "42",
    "4.5",
    "-3",
    "blue",
    "Blueberry",
    "İstanbul",
    "ba-a-a",
    "O'Brien",
    "C:\\path\\it's",
];
const KEYS: &[&str] = &["user", "name", "plan", "items", "n", "flag", "note", "0"];
const NUMBERS: &[&str] = &[
    "42",
    "42.0",
    "4.5",
    "-3",
    "0",
    "-0.0",
    "1e2",
    "100",
    "9007199254740993",
];

fn text(rng: &mut Rng) -> String {
    let mut text = (*rng.pick(WORDS)).to_owned();
    for _ in 0..rng.below(3) {
        text.push_str(rng.pick::<&str>(&[" ", "-", "@", ".", "_", ""]));
        text.push_str(rng.pick::<&str>(WORDS));
    }
    text
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth < 2 { 7 } else { 5 }) {
        0 | 1 => Value::String(text(rng)),
        2 => serde_json::from_str(rng.pick::<&str>(NUMBERS)).expect("a number"),
        3 => Value::Bool(rng.chance(50)),
        4 => Value::Null,
        5 => Value::Array((0..rng.below(3)).map(|_| value(rng, depth + 1)).collect()),
        _ => object(rng, depth + 1),
    }
}

fn object(rng: &mut Rng, depth: usize) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..1 + rng.below(4) {
        map.insert((*rng.pick(KEYS)).to_owned(), value(rng, depth));
    }
    Value::Object(map)
}

/// A (path, value) of one of the payload's scalars, spelt as a query would.
fn leaf_of(rng: &mut Rng, payload: &Value) -> Option<(Vec<String>, String)> {
    let mut path = Vec::new();
    let mut node = payload;
    loop {
        match node {
            Value::Object(map) if !map.is_empty() => {
                let (key, child) = map.iter().nth(rng.below(map.len()))?;
                path.push(key.clone());
                node = child;
            }
            Value::Array(items) if !items.is_empty() => {
                let n = rng.below(items.len());
                path.push(n.to_string());
                node = &items[n];
            }
            Value::String(text) => return Some((path, text.clone())),
            Value::Number(number) => {
                let spelt = match rng.below(3) {
                    0 => number.to_string(),
                    1 => format!("{:e}", number.as_f64()?),
                    _ => format!("{}", number.as_f64()?),
                };
                return Some((path, spelt));
            }
            Value::Bool(flag) => return Some((path, flag.to_string())),
            Value::Null => return Some((path, "null".into())),
            _ => return None,
        }
    }
}

/// A `q` term: a word, its start, a piece of its middle, or a piece with punctuation.
fn term(rng: &mut Rng, payloads: &[Value]) -> String {
    let payload = rng.pick(payloads).clone();
    let source = match leaf_of(rng, &payload) {
        Some((_, value)) if rng.chance(70) && !value.trim().is_empty() => value,
        _ => text(rng),
    };
    let chars: Vec<char> = source.chars().collect();
    let start = if rng.chance(60) {
        0
    } else {
        rng.below(chars.len())
    };
    let end = start + 1 + rng.below(chars.len() - start);
    let term: String = chars[start..end].iter().collect();
    let term = term.split_whitespace().next().unwrap_or("ada").to_owned();
    if rng.chance(50) {
        term.to_uppercase()
    } else {
        term
    }
}

fn random_query(rng: &mut Rng, payloads: &[Value]) -> SearchQuery {
    let mut query = SearchQuery::default();
    if rng.chance(60) {
        // Filters of one event's payload, so that together they still find it.
        let payload = rng.pick(payloads).clone();
        for _ in 0..1 + rng.below(2) {
            if let Some((path, value)) = leaf_of(rng, &payload) {
                let value = if rng.chance(15) { text(rng) } else { value };
                query.payload.push(PayloadFilter { path, value });
            }
        }
    }
    if query.payload.is_empty() || rng.chance(25) {
        let terms: Vec<String> = (0..1 + rng.below(2)).map(|_| term(rng, payloads)).collect();
        query.text = Some(terms.join(" "));
    }
    if rng.chance(25) {
        query.event_types = (0..1 + rng.below(2))
            .map(|_| (*rng.pick(&["a", "b", "c"])).to_owned())
            .collect();
    }
    if rng.chance(10) {
        query.since = Some(
            OffsetDateTime::UNIX_EPOCH
                + time::Duration::seconds(1_800_000_000 + rng.below(86_400) as i64),
        );
    }
    if rng.chance(10) {
        query.until = Some(
            OffsetDateTime::UNIX_EPOCH
                + time::Duration::seconds(1_800_000_000 + 43_200 + rng.below(86_400) as i64),
        );
    }
    query.order = if rng.chance(50) {
        Order::Asc
    } else {
        Order::Desc
    };
    query.limit = 1 + rng.below(7);
    query
}

/// Appends `count` random events for the tenant, their timestamps spread over two days from
/// 2027-01-15, and returns their payloads.
async fn fill(store: &Arc<dyn Store>, rng: &mut Rng, tenant: TenantId, count: usize) -> Vec<Value> {
    fill_over(store, rng, tenant, count, 2 * 86_400).await
}

/// [`fill`] with the timestamps spread over `spread` seconds.
async fn fill_over(
    store: &Arc<dyn Store>,
    rng: &mut Rng,
    tenant: TenantId,
    count: usize,
    spread: usize,
) -> Vec<Value> {
    let mut payloads = Vec::new();
    for chunk in 0..count / 50 {
        let mut events = Vec::new();
        for n in 0..50 {
            let payload = object(rng, 0);
            payloads.push(payload.clone());
            let seconds = 1_800_000_000 + rng.below(spread) as i64;
            let timestamp = (OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(seconds))
                .format(&time::format_description::well_known::Rfc3339)
                .expect("a timestamp");
            let event = json!({"event_id": format!("e{chunk}-{n}"), "event_type": rng.pick(&["a", "b", "c"]),
                "timestamp": timestamp, "payload": payload});
            events.push(NewEvent::from_json(&event.to_string()).expect("an event"));
        }
        store
            .append_batch(AppendBatch {
                tenant,
                events,
                received_at: OffsetDateTime::now_utc(),
                idempotency: None,
            })
            .await
            .expect("append");
    }
    payloads
}

/// Every event of the tenant (through a plain search) as (id, JSON).
async fn everything(
    store: &Arc<dyn Store>,
    tenant: TenantId,
) -> Vec<(pulsestream_core::EventId, Vec<u8>)> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .search(
                tenant,
                SearchQuery {
                    limit: 1_000,
                    cursor,
                    order: Order::Asc,
                    ..SearchQuery::default()
                },
            )
            .await
            .expect("search");
        all.extend(page.events.into_iter().map(|event| (event.id, event.json)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

/// Runs `queries` random queries and checks each against the rule.
async fn agree(
    store: &Arc<dyn Store>,
    tenant: TenantId,
    payloads: &[Value],
    seed: u64,
    queries: usize,
    phase: &str,
) {
    let all = everything(store, tenant).await;
    let mut rng = Rng(seed);
    let mut matched_some = 0;
    for n in 0..queries {
        let query = random_query(&mut rng, payloads);
        let mut expected: Vec<_> = all
            .iter()
            .filter(|(_, json)| event_matches(json, &query))
            .map(|(id, _)| *id)
            .collect();
        if query.order == Order::Desc {
            expected.reverse();
        }
        let mut got = Vec::new();
        let mut cursor: Option<Cursor> = None;
        for _ in 0..=all.len() {
            let page = store
                .search(
                    tenant,
                    SearchQuery {
                        cursor,
                        ..query.clone()
                    },
                )
                .await
                .expect("search");
            assert!(page.events.len() <= query.limit);
            got.extend(page.events.iter().map(|event| event.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(got, expected, "{phase}: seed {seed}, query {n}: {query:?}");
        matched_some += usize::from(!expected.is_empty());
    }
    // The generator is meant to find things: at least a fifth of the queries match some events.
    assert!(
        matched_some * 5 >= queries,
        "{phase}: only {matched_some} of {queries} queries matched anything"
    );
}

fn seed() -> u64 {
    std::env::var("PULSESTREAM_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 | 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_search_agrees_with_the_rule_before_and_after_indexing_and_without_the_index() {
    let seed = seed();
    println!("seed {seed} (PULSESTREAM_TEST_SEED)");
    let dir = tempfile::tempdir().expect("temp dir");
    let open = |index: bool| {
        let mut config = EmbeddedConfig::new(dir.path());
        config.search_index = index;
        Arc::new(EmbeddedStore::open(&config).expect("open")) as Arc<dyn Store>
    };
    let mut rng = Rng(seed);
    let (tenant, other) = (TenantId::random(), TenantId::random());
    let store = open(true);
    let payloads = fill(&store, &mut rng, tenant, 400).await;
    // Another tenant's events hold the same words and values: none may show.
    fill(&store, &mut rng, other, 100).await;
    agree(&store, tenant, &payloads, seed, 60, "just appended").await;
    store.close().await.expect("close");
    drop(store);

    let store = open(true);
    agree(&store, tenant, &payloads, seed ^ 1, 60, "reopened, indexed").await;
    store.close().await.expect("close");
    drop(store);

    let store = open(false);
    agree(&store, tenant, &payloads, seed ^ 2, 30, "without the index").await;
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_agrees_with_the_rule() {
    let seed = seed();
    println!("seed {seed} (PULSESTREAM_TEST_SEED)");
    let fresh = support::PostgresSchema::new("psagree").await;
    let store: Arc<dyn Store> = Arc::new(fresh.store.clone());
    let mut rng = Rng(seed);
    let (tenant, other) = (TenantId::random(), TenantId::random());
    let payloads = fill(&store, &mut rng, tenant, 400).await;
    fill(&store, &mut rng, other, 100).await;
    // The node merges the index's pending entries itself, every 250 ms: nothing is left for
    // a merge a few seconds later.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // Each partition's index has its own pending list.
    let pending = "SELECT coalesce(sum(gin_clean_pending_list(relid)), 0)
                     FROM pg_partition_tree('events_search') WHERE isleaf";
    assert_eq!(
        fresh.sql(pending).await.as_deref(),
        Some("0"),
        "pages still pending"
    );
    agree(&store, tenant, &payloads, seed, 60, "postgres").await;

    // Rows stored before the `search` column existed have none: searches take them as
    // candidates until the backfill of the next node that connects fills them in.
    fresh
        .sql(&format!(
            "UPDATE events SET search = NULL WHERE tenant_id = '{}' AND get_byte(uuid_send(id), 15) % 2 = 0",
            tenant.0
        ))
        .await;
    let unsearched = "SELECT count(*) FROM events WHERE search IS NULL";
    let half: u64 = fresh.sql(unsearched).await.unwrap().parse().unwrap();
    assert!(half > 100, "{half} rows without search");
    agree(
        &store,
        tenant,
        &payloads,
        seed ^ 1,
        30,
        "postgres, rows without search",
    )
    .await;
    let node = fresh.connect_again().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fresh.sql(unsearched).await.as_deref() != Some("0") {
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    pulsestream_store::EventStore::close(&node)
        .await
        .expect("close");
    agree(
        &store,
        tenant,
        &payloads,
        seed ^ 2,
        30,
        "postgres, backfilled",
    )
    .await;

    // More events than a search reads one by one before it asks the GIN index, over two
    // days and a few over three years: the windows of time, with bucket lexemes of both
    // sizes, then without.
    let deep = TenantId::random();
    let mut payloads = fill(&store, &mut rng, deep, 3_000).await;
    payloads.extend(fill_over(&store, &mut rng, deep, 100, 3 * 365 * 86_400).await);
    agree(
        &store,
        deep,
        &payloads,
        seed ^ 3,
        40,
        "postgres, past the probe",
    )
    .await;
    store.close().await.expect("close");
    fresh.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_finds_a_payload_too_large_to_index() {
    let fresh = support::PostgresSchema::new("psbig").await;
    let store: Arc<dyn Store> = Arc::new(fresh.store.clone());
    let tenant = TenantId::random();
    // About 30,000 distinct words: over 64 KB of word starts, more than one row's `search`
    // may hold, so the row is marked to be found by every indexed search.
    let words: Vec<String> = (0..30_000).map(|n| format!("w{n:05}x")).collect();
    let event = json!({"event_id": "big", "event_type": "a",
        "payload": {"text": words.join(" "), "n": 7}});
    let small = json!({"event_id": "small", "event_type": "a", "payload": {"n": 8}});
    store
        .append_batch(AppendBatch {
            tenant,
            events: vec![
                NewEvent::from_json(&event.to_string()).expect("an event"),
                NewEvent::from_json(&small.to_string()).expect("an event"),
            ],
            received_at: OffsetDateTime::now_utc(),
            idempotency: None,
        })
        .await
        .expect("append");
    let marked = fresh
        .sql("SELECT count(*) FROM events WHERE search @@ '''*'''::tsquery")
        .await;
    assert_eq!(marked.as_deref(), Some("1"));
    let found = |text: Option<&str>, payload: Option<(&str, &str)>| {
        let query = SearchQuery {
            text: text.map(str::to_owned),
            payload: payload
                .map(|(path, value)| PayloadFilter {
                    path: vec![path.to_owned()],
                    value: value.to_owned(),
                })
                .into_iter()
                .collect(),
            limit: 10,
            ..SearchQuery::default()
        };
        let store = store.clone();
        async move {
            let page = store.search(tenant, query).await.expect("search");
            page.events
                .iter()
                .map(|event| {
                    serde_json::from_slice::<Value>(&event.json).expect("json")["event_id"]
                        .as_str()
                        .expect("an event_id")
                        .to_owned()
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found(Some("w12345x"), None).await, ["big"]);
    assert_eq!(found(Some("w99999x"), None).await, Vec::<String>::new());
    assert_eq!(found(None, Some(("n", "7"))).await, ["big"]);
    assert_eq!(found(None, Some(("n", "8"))).await, ["small"]);
    store.close().await.expect("close");
    fresh.drop_schema().await;
}
