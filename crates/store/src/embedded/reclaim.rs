//! Giving the segment log's bytes back: whole files dropped, sparse ones rewritten.
//!
//! Retention and erasure delete `events` entries; their records stay in the segment files
//! until this thread runs (woken by each deletion, after a second of quiet). It reads every
//! `events` pointer from one snapshot and sums the live bytes of each closed segment (closed:
//! below the writer's segment, or written by this thread). Then:
//!
//! - a closed segment with no live record is deleted;
//! - a closed segment that holds an erased event's record (marked by the erasure, in its own
//!   commit), or whose live records are under half its size, is *rewritten*: its live
//!   records are copied into a new segment (numbered from [`RECLAIMED_BASE`]), synced, and
//!   their pointers moved in commits that first check each pointer is still the one read
//!   (under the store's `relocation` lock, which retention and erasure hold while they
//!   commit, so a moved pointer never brings back an event deleted meanwhile); then the old
//!   file is deleted.
//!
//! The segment the writer appends to is not closed: an erasure in it asks the writer to
//! start its next group in a new segment, and the rewrite follows the next write.
//! A file is deleted only [`ReclaimConfig::grace`] after no pointer names it (a search may
//! still hold a pointer it read from an older snapshot), and never while a backup runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode, Readable};

use super::Keyspaces;
use super::keys::{self, EventBody};
use super::segments::{self, LogEnd, RECLAIMED_BASE, SegmentFile};
use crate::StoreError;

/// How long after the last deletion a pass starts (deletions come in batches).
const SETTLE: Duration = Duration::from_secs(1);

/// How often a pass looks again at a marked segment that was still being written.
const RECHECK: Duration = Duration::from_secs(5);

/// Segments rewritten per pass at most (each pass reads every pointer once).
const REWRITES_PER_PASS: usize = 8;

/// Records copied before their pointers are committed.
const COPY_BYTES: usize = 8 * 1024 * 1024;

/// The meta key marking a segment that holds an erased event's record.
fn erased_mark(segment: u32) -> [u8; 18] {
    let mut key = [0; 18];
    key[..14].copy_from_slice(b"segment_erase/");
    key[14..].copy_from_slice(&segment.to_be_bytes());
    key
}

const ERASED_MARK_PREFIX: &[u8] = b"segment_erase/";

/// Marks the segments holding these `events` values' records for rewriting, in `batch`
/// (the erasure's own commit); a segment still being written is closed at the next group.
pub(crate) fn mark_erased(
    batch: &mut fjall::OwnedWriteBatch,
    ks: &Keyspaces,
    values: &[Vec<u8>],
) -> Result<(), StoreError> {
    let mut marked = BTreeSet::new();
    for value in values {
        if let (EventBody::Logged(pointer), _) = keys::decode_event_value(value)? {
            marked.insert(pointer.segment);
        }
    }
    let writing = ks.segments.writing();
    for segment in marked {
        batch.insert(&ks.meta, erased_mark(segment), []);
        if segment >= writing && segment < RECLAIMED_BASE {
            ks.segments.request_rotation();
        }
    }
    Ok(())
}

/// The reclaimer's settings.
#[derive(Debug, Clone, Copy)]
pub struct ReclaimConfig {
    /// How long a file no pointer names is kept before it is deleted.
    pub grace: Duration,
}

impl Default for ReclaimConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(60),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Segments whose live records were moved.
    pub rewritten: u64,
    /// Records moved.
    pub moved: u64,
    /// Segment files deleted.
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
}

#[derive(Default)]
struct Signal {
    wanted: bool,
    stop: bool,
    /// Passes started (when `wanted` was taken) and finished, for whoever waits for one.
    started: u64,
    finished: u64,
}

/// The reclaimer thread's handle. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Reclaimer {
    signal: Arc<(Mutex<Signal>, Condvar)>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Reclaimer {
    pub fn start(db: Database, ks: Keyspaces, config: ReclaimConfig) -> Self {
        let signal: Arc<(Mutex<Signal>, Condvar)> = Arc::default();
        let thread = {
            let signal = signal.clone();
            std::thread::Builder::new()
                .name("pulsestream-reclaim".into())
                .spawn(move || {
                    // Behind ingest, as the search index is.
                    if let Err(err) =
                        rustix::process::setpriority_process(None, super::index::INDEX_NICENESS)
                    {
                        tracing::warn!(error = %err, "segment reclaimer: could not lower its priority");
                    }
                    Work {
                        db,
                        ks,
                        config,
                        doomed: Vec::new(),
                        recheck: None,
                    }
                    .run(&signal);
                })
                .expect("spawning a thread only fails when the OS is out of resources")
        };
        let reclaimer = Self {
            signal,
            thread: Arc::new(Mutex::new(Some(thread))),
        };
        // Whatever an earlier run left (marked segments, files no pointer names).
        reclaimer.wake();
        reclaimer
    }

    /// Something was deleted: a pass follows shortly.
    pub fn wake(&self) {
        let (lock, condvar) = &*self.signal;
        lock.lock().expect("signal lock is never poisoned").wanted = true;
        condvar.notify_all();
    }

    /// Asks for a pass and waits until one that started after this call has finished.
    pub fn wait_for_pass(&self) {
        let (lock, condvar) = &*self.signal;
        let mut signal = lock.lock().expect("signal lock is never poisoned");
        // The next pass to start takes this request.
        let target = signal.started + 1;
        signal.wanted = true;
        condvar.notify_all();
        while signal.finished < target && !signal.stop {
            signal = condvar.wait(signal).expect("signal lock is never poisoned");
        }
    }

    pub fn stop(&self) {
        let (lock, condvar) = &*self.signal;
        lock.lock().expect("signal lock is never poisoned").stop = true;
        condvar.notify_all();
        if let Some(thread) = self
            .thread
            .lock()
            .expect("thread lock is never poisoned")
            .take()
        {
            let _ = thread.join();
        }
    }
}

struct Work {
    db: Database,
    ks: Keyspaces,
    config: ReclaimConfig,
    /// Files no pointer names, and when they may be deleted.
    doomed: Vec<(u32, Instant)>,
    /// When to look again at a marked segment that was still being written, and the
    /// writer's segment then (a look is only worth a pass once that moved).
    recheck: Option<(Instant, u32)>,
}

impl Work {
    fn run(mut self, signal: &(Mutex<Signal>, Condvar)) {
        let (lock, condvar) = signal;
        loop {
            let mut asked = false;
            {
                let mut state = lock.lock().expect("signal lock is never poisoned");
                loop {
                    if state.stop {
                        return;
                    }
                    if state.wanted {
                        break;
                    }
                    let next_deletion = self
                        .doomed
                        .iter()
                        .map(|(_, at)| *at)
                        .chain(self.recheck.map(|(at, _)| at))
                        .min();
                    match next_deletion {
                        Some(at) if at <= Instant::now() => break,
                        Some(at) => {
                            state = condvar
                                .wait_timeout(state, at - Instant::now())
                                .expect("signal lock is never poisoned")
                                .0;
                        }
                        None => {
                            state = condvar.wait(state).expect("signal lock is never poisoned");
                        }
                    }
                }
                if state.wanted {
                    // Let a run of deletions finish first.
                    let (waited, _) = condvar
                        .wait_timeout_while(state, SETTLE, |state| !state.stop)
                        .expect("signal lock is never poisoned");
                    state = waited;
                    if state.stop {
                        return;
                    }
                    state.wanted = false;
                    asked = true;
                    state.started += 1;
                }
            }
            match self.pass(asked) {
                Ok(report) if report != ReclaimReport::default() => {
                    tracing::info!(?report, "segment log reclaimed");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "reclaiming the segment log failed; retried after the next deletion")
                }
            }
            let mut state = lock.lock().expect("signal lock is never poisoned");
            state.finished = state.started;
            condvar.notify_all();
        }
    }

    /// One pass: deletes doomed files past their grace, finds dead and sparse segments,
    /// rewrites the sparse ones.
    fn pass(&mut self, asked: bool) -> Result<ReclaimReport, StoreError> {
        let mut report = ReclaimReport::default();
        self.delete_due(&mut report)?;
        let segments = &self.ks.segments;
        // Every group that wrote below `writing` is committed: read it before the snapshot.
        let writing = segments.writing();
        // Woken by a deadline, not a deletion: a scan is only worth it once the segment an
        // erasure marked was closed.
        if !asked {
            match self.recheck {
                Some((at, then)) if at <= Instant::now() && writing > then => {}
                Some((at, then)) if at <= Instant::now() => {
                    self.recheck = Some((Instant::now() + RECHECK, then));
                    return Ok(report);
                }
                _ => return Ok(report),
            }
        }
        let snapshot = self.db.snapshot();
        let mut live: HashMap<u32, u64> = HashMap::new();
        for entry in snapshot.iter(&self.ks.events) {
            let (_, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            if let (EventBody::Logged(pointer), _) = keys::decode_event_value(&value)? {
                *live.entry(pointer.segment).or_default() += pointer.record_len();
            }
        }
        let mut marked = BTreeSet::new();
        for entry in snapshot.prefix(&self.ks.meta, ERASED_MARK_PREFIX) {
            let (key, _) = entry.into_inner().map_err(StoreError::unavailable)?;
            marked.insert(u32::from_be_bytes(keys::bytes_at(
                &key,
                14,
                "segment mark",
            )?));
        }
        drop(snapshot);
        let doomed: BTreeSet<u32> = self.doomed.iter().map(|(segment, _)| *segment).collect();
        let mut rewrite = BTreeSet::new();
        let mut dead = Vec::new();
        // An erasure marked the segment being written: it is closed at the next group (the
        // erasure asked for that); look again until then, deletions or not.
        self.recheck = marked
            .iter()
            .any(|&segment| segment >= writing && segment < RECLAIMED_BASE)
            .then(|| (Instant::now() + RECHECK, writing));
        for segment in segments.list()? {
            let closed = segment < writing || segment >= RECLAIMED_BASE;
            if !closed || doomed.contains(&segment) {
                continue;
            }
            match live.get(&segment) {
                None => dead.push(segment),
                Some(&bytes) => {
                    if (marked.contains(&segment)
                        || bytes.saturating_mul(2) < segments.size(segment))
                        && rewrite.len() < REWRITES_PER_PASS
                    {
                        rewrite.insert(segment);
                    }
                }
            }
        }
        let deadline = Instant::now() + self.config.grace;
        let mut unmark = Vec::new();
        for segment in dead {
            self.doomed.push((segment, deadline));
            unmark.push(segment);
        }
        if !rewrite.is_empty() {
            let moved = self.rewrite(&rewrite)?;
            report.rewritten += rewrite.len() as u64;
            report.moved += moved;
            for &segment in &rewrite {
                self.doomed.push((segment, deadline));
                unmark.push(segment);
            }
        }
        // Marks of segments no pointer names any more.
        let mut batch = self.db.batch();
        let mut any = false;
        for segment in unmark {
            if marked.contains(&segment) {
                batch.remove(&self.ks.meta, erased_mark(segment));
                any = true;
            }
        }
        if any {
            batch.commit().map_err(StoreError::unavailable)?;
        }
        // With no grace, what this pass doomed goes now.
        self.delete_due(&mut report)?;
        Ok(report)
    }

    /// Deletes the doomed files whose grace has passed (none while a backup runs).
    fn delete_due(&mut self, report: &mut ReclaimReport) -> Result<(), StoreError> {
        let segments = &self.ks.segments;
        if segments.held() {
            return Ok(());
        }
        let now = Instant::now();
        let mut kept = Vec::new();
        for (segment, at) in std::mem::take(&mut self.doomed) {
            if at <= now {
                report.deleted_bytes += segments.size(segment);
                segments.remove(segment)?;
                report.deleted += 1;
                metrics::counter!("pulsestream_segments_deleted_total").increment(1);
            } else {
                kept.push((segment, at));
            }
        }
        self.doomed = kept;
        Ok(())
    }

    /// Moves the live records of `from` into new segments; returns how many moved.
    fn rewrite(&self, from: &BTreeSet<u32>) -> Result<u64, StoreError> {
        let segments = &self.ks.segments;
        let snapshot = self.db.snapshot();
        let mut next = segments
            .list()?
            .into_iter()
            .filter(|&segment| segment >= RECLAIMED_BASE)
            .max()
            .map_or(RECLAIMED_BASE, |last| last + 1);
        let mut file: Option<SegmentFile> = None;
        let mut at = 0u64;
        let mut records = Vec::new();
        let mut moves: Vec<(fjall::Slice, fjall::Slice, [u8; keys::EVENT_VALUE_LEN])> = Vec::new();
        let mut moved = 0u64;
        for entry in snapshot.iter(&self.ks.events) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let (EventBody::Logged(pointer), timestamp_given) = keys::decode_event_value(&value)?
            else {
                continue;
            };
            if !from.contains(&pointer.segment) {
                continue;
            }
            let json = segments.read(pointer)?;
            if file.is_none() {
                file = Some(segments.create(next)?);
                next += 1;
                at = 0;
            }
            let new = segments::push_record(
                &mut records,
                LogEnd {
                    segment: file.as_ref().expect("set above").segment(),
                    offset: at,
                },
                &json,
            )?;
            moves.push((key, value, keys::event_value(timestamp_given, new)));
            if records.len() >= COPY_BYTES {
                moved +=
                    self.commit_moves(file.as_ref().expect("set above"), at, &records, &mut moves)?;
                at += records.len() as u64;
                records.clear();
                if at >= segments.full() {
                    file = None;
                }
            }
        }
        if let Some(file) = &file
            && !records.is_empty()
        {
            moved += self.commit_moves(file, at, &records, &mut moves)?;
        }
        Ok(moved)
    }

    /// Syncs copied records, then points their events at them, each only if its pointer is
    /// still the one read (an event deleted or moved meanwhile stays as it is).
    fn commit_moves(
        &self,
        file: &SegmentFile,
        at: u64,
        records: &[u8],
        moves: &mut Vec<(fjall::Slice, fjall::Slice, [u8; keys::EVENT_VALUE_LEN])>,
    ) -> Result<u64, StoreError> {
        file.write_at(at, records)?;
        let _relocation = self
            .ks
            .relocation
            .lock()
            .expect("the relocation lock is never poisoned");
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut moved = 0;
        for (key, old, new) in moves.drain(..) {
            let current = self.ks.events.get(&key).map_err(StoreError::unavailable)?;
            if current.as_deref() == Some(&*old) {
                batch.insert(&self.ks.events, key, new);
                moved += 1;
            }
        }
        batch.commit().map_err(StoreError::unavailable)?;
        Ok(moved)
    }
}
