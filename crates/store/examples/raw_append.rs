//! The storage ceiling for BENCHMARKS.md: appends batches straight into a store, with the same
//! schema and durability as the server, but no HTTP.
//!
//! `cargo run --release -p pulsestream-store --example raw_append -- DIR EVENTS BATCH CONCURRENCY`
//! (DIR may be a `postgres://` URL: then the PostgreSQL store, one transaction per batch.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pulsestream_core::{NewEvent, TenantId};
use std::sync::Arc;

use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore};
use pulsestream_store::postgres::{PostgresConfig, PostgresStore};
use pulsestream_store::{AppendBatch, EventStore};

/// The same allocator as the server, so this ceiling is a fair comparison.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "raw-append-data".into());
    let total: usize = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let batch_size: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let concurrency: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(4);
    let mut config = EmbeddedConfig::new(&dir);
    if let Some(mb) = std::env::var("MEMTABLE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.index_memtable_bytes = mb * 1024 * 1024;
    }
    let store: Arc<dyn EventStore> = if dir.starts_with("postgres://") {
        let mut config = PostgresConfig::new(&dir);
        config.pool_size = concurrency.max(2);
        Arc::new(PostgresStore::connect(&config).await.expect("connect"))
    } else {
        Arc::new(EmbeddedStore::open(&config).expect("open store"))
    };
    let tenant = TenantId::random();
    let batches = total / batch_size;
    let started = Instant::now();
    let json_bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let store = store.clone();
        let json_bytes = json_bytes.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while n < batches {
                let events = (0..batch_size)
                    .map(|i| {
                        // One millisecond apart in sending order, as `pulsestream-bench`
                        // stamps its events: ids (which start with the timestamp) then grow
                        // roughly in order, as they do for clients sending live events.
                        let seq = n * batch_size + i;
                        let millis = seq % 86_400_000;
                        let json = format!(
                            r#"{{"event_id":"w{worker}-b{n}-e{i}-{seq}","event_type":"order.created","source":"checkout","timestamp":"2025-10-02T{:02}:{:02}:{:02}.{:03}Z","payload":{{"order_id":{i},"total":99.5,"currency":"EUR","customer":{{"id":"cus_{n}","email":"someone@example.com"}},"items":[{{"sku":"SKU-1","qty":2}},{{"sku":"SKU-2","qty":1}}]}}}}"#,
                            millis / 3_600_000,
                            millis / 60_000 % 60,
                            millis / 1_000 % 60,
                            millis % 1_000,
                        );
                        json_bytes.fetch_add(json.len() as u64, Ordering::Relaxed);
                        NewEvent::from_json(&json).expect("valid event")
                    })
                    .collect();
                let batch = AppendBatch {
                    tenant,
                    events,
                    received_at: time::OffsetDateTime::now_utc(),
                    idempotency: None,
                };
                loop {
                    match store.append_batch(batch_clone(&batch)).await {
                        Ok(_) => break,
                        Err(pulsestream_store::StoreError::Overloaded) => tokio::task::yield_now().await,
                        Err(err) => panic!("append failed: {err}"),
                    }
                }
                n += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = batches * batch_size;
    println!(
        "raw_append: {events} events in {batch_size}-event batches, concurrency {concurrency}: {elapsed:.2}s, {:.0} events/s",
        events as f64 / elapsed
    );
    store.close().await.expect("close");
    // What reached the disk, by the kernel's count for this process: bytes written per byte
    // of event JSON (embedded store only; PostgreSQL writes from its own processes).
    if let Some(written) = std::fs::read_to_string("/proc/self/io")
        .ok()
        .filter(|_| !dir.starts_with("postgres://"))
        .and_then(|io| {
            io.lines().find_map(|line| {
                line.strip_prefix("write_bytes: ")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
    {
        let json = json_bytes.load(Ordering::Relaxed);
        println!(
            "disk: {written} bytes written for {json} bytes of event JSON ({:.2} per byte)",
            written as f64 / json.max(1) as f64
        );
    }
}

fn batch_clone(batch: &AppendBatch) -> AppendBatch {
    AppendBatch {
        tenant: batch.tenant,
        events: batch.events.clone(),
        received_at: batch.received_at,
        idempotency: batch.idempotency.clone(),
    }
}
