//! fjall's background workers, as patched in `vendor/fjall` (see `vendor/README.md`).
//!
//! With two workers, worker 0 keeps itself free for flushes by handing every compaction
//! message back to the queue. Unpatched, it took its own message straight back and spun for as
//! long as worker 1 compacted: a whole core of a two-core machine, ~12 % of all CPU samples
//! of the server during batched ingest. The patch pauses 1 ms after each hand-back, so the
//! hand-backs are bounded by the time that passes.

use std::time::{Duration, Instant};

use fjall::{Database, KeyspaceCreateOptions, PersistMode};

#[test]
fn worker_zero_does_not_spin_while_another_worker_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::builder(dir.path())
        .worker_threads(2)
        .open()
        .unwrap();
    let keyspace = db
        .keyspace("random", || {
            KeyspaceCreateOptions::default().max_memtable_size(1 << 20)
        })
        .unwrap();
    // Random keys, so that every flush overlaps the tables before it and compactions run
    // (and run long) while later flushes queue more compaction messages.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(4);
    let mut written = 0_u64;
    while Instant::now() < deadline {
        let mut batch = db.batch().durability(Some(PersistMode::Buffer));
        for _ in 0..1_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            batch.insert(&keyspace, state.to_be_bytes(), [b'v'; 200]);
        }
        batch.commit().unwrap();
        written += 1_000;
    }
    // Let the compactions the writes queued run out, as the server's would between bursts.
    while db.active_compactions() > 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
    let requeues = db.compaction_requeues();
    let compacting_ms = db.time_compacting().as_millis();
    eprintln!(
        "{written} entries in {elapsed_ms} ms, {compacting_ms} ms compacting, \
         {requeues} compaction messages handed back"
    );
    assert!(
        db.compactions_completed() > 0 && compacting_ms > 0,
        "the test must make the workers compact ({written} entries written)"
    );
    // At most one hand-back per millisecond of the pause, plus scheduling slack.
    assert!(
        requeues <= elapsed_ms + 200,
        "worker 0 handed compaction messages back {requeues} times in {elapsed_ms} ms \
         ({compacting_ms} ms compacting, {written} entries written): it spins"
    );
}
