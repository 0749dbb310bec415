//! Online backup: a consistent copy of a running store, made while it takes writes.
//!
//! fjall has no checkpoint of its files (copying them while compactions rewrite them would
//! not be consistent), so the backup is logical: one cross-keyspace snapshot (fjall's
//! `Database::snapshot`, a sequence number every read below sees) is read keyspace by
//! keyspace and written into a new store directory. Each commit of the writer is one fjall
//! batch, visible all at once, so the copy holds every group committed before the snapshot
//! and nothing of later ones: an event with its dedup entry, outbox entries and idempotency
//! record, or none of them. The directory is marked complete (`BACKUP_COMPLETE`) only after
//! everything in it is synced; a backup cut off half way has no marker and is refused.
//!
//! The events' JSON is read through their pointers and written into the backup's own segment
//! log (synced before the batch holding the new pointers is committed, as the writer does),
//! so a backup holds no bytes of erased or expired events, and its segments are compact.

use std::io::Write;
use std::path::Path;

use fjall::{Database, PersistMode, Readable};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::keys;
use super::segments::{self, LogEnd, Pointer, Segments};
use super::{EmbeddedStore, Keyspaces};
use crate::StoreError;

/// The file that marks a backup as complete, with its report.
pub const BACKUP_MARKER: &str = "BACKUP_COMPLETE";

/// Entries written per batch into the backup: bounded memory however large the store.
const BATCH_BYTES: usize = 32 * 1024 * 1024;

/// What a backup copied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReport {
    /// Entries of every keyspace.
    pub entries: u64,
    /// Their keys and values.
    pub bytes: u64,
    /// Events (entries of `events`).
    pub events: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    pub millis: u64,
}

impl EmbeddedStore {
    /// Writes a consistent copy of the store into `target/fjall` and `target/segments`
    /// (`target` must be absent or empty) while the store goes on taking writes, then marks it complete.
    ///
    /// # Errors
    /// `target` is not empty, or reading or writing fails (the backup is then incomplete
    /// and has no marker).
    pub fn backup_to(&self, target: &Path) -> Result<BackupReport, StoreError> {
        let started = std::time::Instant::now();
        if std::fs::read_dir(target).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(StoreError::unavailable(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is not empty", target.display()),
            )));
        }
        let path = target.join("fjall");
        std::fs::create_dir_all(&path).map_err(StoreError::unavailable)?;
        let taken_at = OffsetDateTime::now_utc();
        // The snapshot's pointers must stay readable until the copy is done.
        let _hold = self.keyspaces.segments.hold();
        let snapshot = self.db.snapshot();
        let copy = Database::builder(&path)
            .open()
            .map_err(StoreError::unavailable)?;
        let into = Keyspaces::open(
            &copy,
            target,
            16 * 1024 * 1024,
            self.keyspaces.segments.full(),
        )?;
        let mut log = Log {
            at: into.segments.end()?,
            records: Vec::new(),
            appender: segments::Appender::default(),
        };
        let mut report = BackupReport {
            entries: 0,
            bytes: 0,
            events: 0,
            taken_at,
            millis: 0,
        };
        for ((name, from), (_, to)) in self.keyspaces.all().into_iter().zip(into.all()) {
            let mut batch = copy.batch();
            let mut pending = 0usize;
            for entry in snapshot.iter(from) {
                let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
                pending += key.len() + value.len();
                report.bytes += (key.len() + value.len()) as u64;
                report.entries += 1;
                if name == "events" {
                    report.events += 1;
                    let (json, timestamp_given) = self.keyspaces.segments.event_json(&value)?;
                    pending += json.len();
                    let pointer = log.push(&json)?;
                    batch.insert(to, key, keys::event_value(timestamp_given, pointer));
                } else {
                    batch.insert(to, key, value);
                }
                if pending >= BATCH_BYTES {
                    log.flush(&into.segments)?;
                    batch.commit().map_err(StoreError::unavailable)?;
                    batch = copy.batch();
                    pending = 0;
                }
            }
            log.flush(&into.segments)?;
            batch.commit().map_err(StoreError::unavailable)?;
        }
        drop(snapshot);
        copy.persist(PersistMode::SyncAll)
            .map_err(StoreError::unavailable)?;
        drop(into);
        drop(copy);
        report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let marker = serde_json::to_vec_pretty(&report).map_err(StoreError::unavailable)?;
        let mut file =
            std::fs::File::create(target.join(BACKUP_MARKER)).map_err(StoreError::unavailable)?;
        file.write_all(&marker).map_err(StoreError::unavailable)?;
        file.sync_all().map_err(StoreError::unavailable)?;
        std::fs::File::open(target)
            .and_then(|dir| dir.sync_all())
            .map_err(StoreError::unavailable)?;
        Ok(report)
    }
}

/// Records on their way into a backup's segment log.
struct Log {
    at: LogEnd,
    records: Vec<u8>,
    appender: segments::Appender,
}

impl Log {
    /// Adds a record; returns where it will be.
    fn push(&mut self, json: &[u8]) -> Result<Pointer, StoreError> {
        segments::push_record(&mut self.records, self.at, json)
    }

    /// Writes and syncs what was pushed (before the batch naming it is committed).
    fn flush(&mut self, segments: &Segments) -> Result<(), StoreError> {
        if !self.records.is_empty() {
            self.appender.append(segments, self.at, &self.records)?;
            self.at = LogEnd {
                segment: self.at.segment,
                offset: self.at.offset + self.records.len() as u64,
            }
            .for_next_group(segments.full());
            self.records.clear();
        }
        Ok(())
    }
}

/// The report of a complete backup in `dir`.
///
/// # Errors
/// No marker (the backup is incomplete, or this is not a backup) or an unreadable one.
pub fn backup_report(dir: &Path) -> Result<BackupReport, StoreError> {
    let marker = std::fs::read(dir.join(BACKUP_MARKER)).map_err(|err| {
        StoreError::Corrupt(format!(
            "{} is not a complete backup (no {BACKUP_MARKER}: {err})",
            dir.display()
        ))
    })?;
    serde_json::from_slice(&marker)
        .map_err(|err| StoreError::Corrupt(format!("{BACKUP_MARKER}: {err}")))
}
