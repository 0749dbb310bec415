//! The embedded store's segment log, looked at on disk: erased bytes leave the data files,
//! retention drops whole segments, and damage or torn writes are found, never read wrongly.

use std::path::Path;
use std::time::Duration;

use pulsestream_core::{EventId, NewEvent, TenantId};
use pulsestream_store::embedded::{EmbeddedConfig, EmbeddedStore, ReclaimConfig};
use pulsestream_store::{AppendBatch, AppendStatus, EventStore, SearchQuery, StoreError};
use time::OffsetDateTime;

fn config(dir: &Path) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir);
    // Small segments, deleted as soon as nothing names them: what takes hours in
    // production takes a test a few kilobytes.
    config.segment_bytes = 64 * 1024;
    config.reclaim = ReclaimConfig {
        grace: Duration::ZERO,
    };
    config
}

async fn append_all(store: &EmbeddedStore, tenant: TenantId, events: &[String]) -> Vec<EventId> {
    let outcome = store
        .append_batch(AppendBatch {
            tenant,
            events: events
                .iter()
                .map(|json| NewEvent::from_json(json).expect("an event"))
                .collect(),
            received_at: OffsetDateTime::now_utc(),
            idempotency: None,
        })
        .await
        .expect("append");
    outcome
        .statuses
        .iter()
        .map(|status| match status {
            AppendStatus::Accepted(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Every file under `dir` whose bytes contain `marker`.
fn files_holding(dir: &Path, marker: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker))
            {
                found.push(path);
            }
        }
    }
    found
}

fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata().expect("metadata").len(),
            )
        })
        .collect();
    files.sort();
    files
}

async fn count(store: &EmbeddedStore, tenant: TenantId) -> usize {
    let mut total = 0;
    let mut cursor = None;
    loop {
        let page = store
            .search(
                tenant,
                SearchQuery {
                    limit: 1_000,
                    cursor,
                    ..SearchQuery::default()
                },
            )
            .await
            .expect("search");
        total += page.events.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return total,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_payload_bytes_leave_the_data_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tenant = TenantId::random();
    let store = EmbeddedStore::open(&config(dir.path())).expect("open");
    let filler: Vec<String> = (0..300)
        .map(|n| {
            format!(
                r#"{{"event_type":"t","event_id":"f-{n}","payload":{{"n":{n},"pad":"{}"}}}}"#,
                "x".repeat(200)
            )
        })
        .collect();
    append_all(&store, tenant, &filler).await;
    let secret = append_all(
        &store,
        tenant,
        &[r#"{"event_type":"t","event_id":"secret-1","payload":{"email":"q7marker@example.com"}}"#.into()],
    )
    .await[0];
    let more: Vec<String> = filler[..100]
        .iter()
        .map(|json| json.replace("\"f-", "\"g-"))
        .collect();
    append_all(&store, tenant, &more).await;
    store.close().await.expect("close");
    drop(store);
    assert!(
        !files_holding(dir.path(), b"q7marker").is_empty(),
        "the marker is on disk before the erasure"
    );

    let store = EmbeddedStore::open(&config(dir.path())).expect("open");
    assert_eq!(
        store.erase_events(tenant, &[secret]).await.expect("erase"),
        1
    );
    // The segment holding it is the one being written: the reclaimer's first pass (a second
    // after the erasure) cannot rewrite it; the next group closes it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    append_all(
        &store,
        tenant,
        &[r#"{"event_type":"t","event_id":"after","payload":{}}"#.into()],
    )
    .await;
    // No further deletion wakes the reclaimer: it looks again by itself once the segment
    // it could not rewrite yet is closed (every 5 s).
    let mut left = files_holding(dir.path(), b"q7marker");
    for _ in 0..150 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = files_holding(dir.path(), b"q7marker");
    }
    assert!(left.is_empty(), "erased bytes still in {left:?}");
    store.close().await.expect("close");
    drop(store);

    // Everything else is still there, and the erased id stays taken.
    let store = EmbeddedStore::open(&config(dir.path())).expect("open");
    assert_eq!(count(&store, tenant).await, 401);
    let resent = store
        .append_batch(AppendBatch {
            tenant,
            events: vec![
                NewEvent::from_json(
                    r#"{"event_type":"t","event_id":"secret-1","payload":{"email":"q7marker@example.com"}}"#,
                )
                .expect("an event"),
            ],
            received_at: OffsetDateTime::now_utc(),
            idempotency: None,
        })
        .await
        .expect("append");
    assert!(
        matches!(resent.statuses[0], AppendStatus::Duplicate(_)),
        "{:?}",
        resent.statuses
    );
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_segments_and_keeps_the_rest_readable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tenant = TenantId::random();
    let store = EmbeddedStore::open(&config(dir.path())).expect("open");
    let event = |n: usize, timestamp: &str| {
        format!(
            r#"{{"event_type":"t","event_id":"e-{n}","timestamp":"{timestamp}","payload":{{"pad":"{}"}}}}"#,
            "y".repeat(400)
        )
    };
    // ~1 MB of old events (16 segments of 64 KiB), then ~250 KB of new ones.
    for batch in 0..20 {
        let events: Vec<String> = (0..100)
            .map(|n| event(batch * 100 + n, "2020-01-01T00:00:00Z"))
            .collect();
        append_all(&store, tenant, &events).await;
    }
    let recent = (OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    for batch in 0..5 {
        let events: Vec<String> = (0..100)
            .map(|n| event(10_000 + batch * 100 + n, &recent))
            .collect();
        append_all(&store, tenant, &events).await;
    }
    let before: u64 = segment_files(dir.path()).iter().map(|(_, len)| len).sum();
    let cutoff = OffsetDateTime::now_utc() - time::Duration::days(30);
    let mut expired = 0;
    loop {
        let batch = store
            .expire_events(tenant, cutoff, 500)
            .await
            .expect("expire");
        if batch == 0 {
            break;
        }
        expired += batch;
    }
    assert_eq!(expired, 2_000);
    store.reclaim_now();
    let after = segment_files(dir.path());
    let after_bytes: u64 = after.iter().map(|(_, len)| len).sum();
    assert!(
        after_bytes * 3 < before,
        "{before} bytes of segments before, {after_bytes} after: {after:?}"
    );
    assert_eq!(count(&store, tenant).await, 500);
    store.close().await.expect("close");
    drop(store);
    let store = EmbeddedStore::open(&config(dir.path())).expect("open");
    assert_eq!(count(&store, tenant).await, 500);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_skipped_and_a_pointer_past_the_log_is_corruption() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tenant = TenantId::random();
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let events: Vec<String> = (0..10)
        .map(|n| format!(r#"{{"event_type":"t","event_id":"a-{n}","payload":{{"n":{n}}}}}"#))
        .collect();
    append_all(&store, tenant, &events).await;
    store.close().await.expect("close");
    drop(store);
    let segment = dir.path().join("segments/00000001.seg");

    // Log ahead of the index: a group written, never committed (the process died between
    // the segment's sync and fjall's commit, or in the middle of the write).
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&segment, &bytes).expect("torn tail");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    assert_eq!(count(&store, tenant).await, 10);
    let more: Vec<String> = (10..20)
        .map(|n| format!(r#"{{"event_type":"t","event_id":"a-{n}","payload":{{"n":{n}}}}}"#))
        .collect();
    append_all(&store, tenant, &more).await;
    assert_eq!(count(&store, tenant).await, 20);
    store.close().await.expect("close");
    drop(store);

    // Index ahead of the log: the file lost its last bytes (a disk that lied about a sync).
    let len = std::fs::metadata(&segment).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|file| file.set_len(len - 5))
        .expect("truncate");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let newest = store
        .search(
            tenant,
            SearchQuery {
                limit: 100,
                ..SearchQuery::default()
            },
        )
        .await;
    assert!(
        matches!(newest, Err(StoreError::Corrupt(_))),
        "a record cut short must be reported, got {:?}",
        newest.map(|page| page.events.len())
    );
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_holds_the_events_in_its_own_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = tempfile::tempdir().expect("temp dir");
    let tenant = TenantId::random();
    let store = EmbeddedStore::open(&config(dir.path())).expect("open");
    let events: Vec<String> = (0..500)
        .map(|n| {
            format!(
                r#"{{"event_type":"t","event_id":"b-{n}","payload":{{"pad":"{}"}}}}"#,
                "z".repeat(300)
            )
        })
        .collect();
    let ids = append_all(&store, tenant, &events).await;
    store
        .erase_events(tenant, &ids[..250])
        .await
        .expect("erase");
    let report = store
        .backup_to(&target.path().join("copy"))
        .expect("backup");
    assert_eq!(report.events, 250);
    store.close().await.expect("close");
    let copy = target.path().join("copy");
    std::fs::remove_file(copy.join(pulsestream_store::embedded::BACKUP_MARKER)).expect("marker");
    let restored = EmbeddedStore::open(&config(&copy)).expect("open the copy");
    assert_eq!(count(&restored, tenant).await, 250);
    // 250 records of ~600 bytes: the erased ones were not copied.
    let copied: u64 = segment_files(&copy).iter().map(|(_, len)| len).sum();
    assert!(
        (250 * 300..250 * 700).contains(&copied),
        "the copy's log holds live records only: {copied} bytes"
    );
    restored.close().await.expect("close");
}
