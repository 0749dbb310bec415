//! The segment log: every event's JSON, written once, beside fjall.
//!
//! fjall with key-value separation wrote an event's JSON three times or more: into its
//! journal, into a blob file when the memtable was flushed, and again whenever blob files were
//! compacted; and the journal, full of payloads, forced flushes of every keyspace long before
//! their memtables were full. Here the JSON goes once into an append-only segment file
//! (`DATA_DIR/segments/NNNNNNNN.seg`) and the `events` keyspace keeps an 18-byte pointer.
//!
//! A record is `[length u32 LE][crc32 u32 LE][JSON]`. The committer writes a group's records
//! at the offsets the writer gave them and `fdatasync`s the file *before* it commits the fjall
//! batch holding the pointers, so a committed pointer always names synced bytes. A crash in
//! between leaves records no pointer names (never acknowledged): the log goes on after them.
//! A read checks the length and the checksum, so a pointer past the end of a damaged file or
//! into torn bytes is `Corrupt`, never wrong JSON.
//!
//! Segments are owned by this store, so whole files can be dropped and rewritten
//! (see [`Segments::collect`]): that is how retention and erasure give the disk back.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::keys::{self, EventBody};
use crate::StoreError;

/// A segment is closed once it holds this many bytes (a group never spans two): the unit of
/// what retention drops whole. The default of `EmbeddedConfig::segment_bytes`.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes before a record's JSON: its length and its CRC-32.
pub(crate) const RECORD_HEADER: usize = 8;

/// Where an event's JSON is: segment, offset of its record, length of the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl Pointer {
    /// The bytes of the record, header included.
    pub fn record_len(self) -> u64 {
        RECORD_HEADER as u64 + u64::from(self.len)
    }
}

/// A record ready to append: header space, then the JSON (see [`seal_record`]).
pub(crate) fn new_record(capacity: usize) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER + capacity);
    record.extend_from_slice(&[0; RECORD_HEADER]);
    record
}

/// Writes the header of a record built by [`new_record`] and the JSON after it.
///
/// # Errors
/// The JSON is longer than a record can say (4 GiB).
pub(crate) fn seal_record(record: &mut [u8]) -> Result<(), StoreError> {
    let (header, json) = record.split_at_mut(RECORD_HEADER);
    let len = u32::try_from(json.len())
        .map_err(|_| StoreError::Corrupt("an event of 4 GiB or more".into()))?;
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(json).to_le_bytes());
    Ok(())
}

/// Appends a record of `json` to `records`, a run of records that will be written at `at`;
/// returns the record's pointer.
///
/// # Errors
/// See [`seal_record`].
pub(crate) fn push_record(
    records: &mut Vec<u8>,
    at: LogEnd,
    json: &[u8],
) -> Result<Pointer, StoreError> {
    let start = records.len();
    records.extend_from_slice(&[0; RECORD_HEADER]);
    records.extend_from_slice(json);
    seal_record(&mut records[start..])?;
    Ok(Pointer {
        segment: at.segment,
        offset: at.offset + start as u64,
        len: u32::try_from(json.len()).expect("seal_record refused longer ones"),
    })
}

fn file_name(segment: u32) -> String {
    format!("{segment:08}.seg")
}

fn segment_of(name: &str) -> Option<u32> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// Segments written by the reclaimer (live records moved out of sparse segments) are
/// numbered from here, apart from the writer's.
pub(crate) const RECLAIMED_BASE: u32 = 1 << 31;

/// The segment files of a store: reading, appending, dropping.
pub(crate) struct Segments {
    dir: PathBuf,
    /// Size at which a segment is closed.
    full: u64,
    /// Open files for reading, by segment.
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// The writer's segment of the last committed group: every lower one is closed, and
    /// every group that wrote to one is committed (groups commit in order).
    writing: AtomicU32,
    /// Asks the writer to close its segment (an erased event is in it).
    rotate: AtomicBool,
    /// Backups reading the store: no segment file is deleted while one runs.
    holds: AtomicUsize,
}

/// A segment file open for appending.
pub(crate) struct SegmentFile {
    segment: u32,
    file: File,
}

impl SegmentFile {
    pub fn segment(&self) -> u32 {
        self.segment
    }

    /// Writes records at `offset` and syncs them.
    ///
    /// # Errors
    /// Writing or syncing failed: the records may or may not be on disk, and no pointer
    /// to them may be committed.
    pub fn write_at(&self, offset: u64, records: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(records, offset)
            .map_err(StoreError::unavailable)?;
        self.file.sync_data().map_err(StoreError::unavailable)
    }
}

/// The committer's side of the log: the segment it appends to.
#[derive(Default)]
pub(crate) struct Appender {
    file: Option<SegmentFile>,
}

impl Appender {
    /// Writes a group's records at `at` and syncs them (the committer's step before the
    /// fjall commit that holds their pointers).
    ///
    /// # Errors
    /// See [`SegmentFile::write_at`].
    pub fn append(
        &mut self,
        segments: &Segments,
        at: LogEnd,
        records: &[u8],
    ) -> Result<(), StoreError> {
        if self
            .file
            .as_ref()
            .is_none_or(|file| file.segment != at.segment)
        {
            self.file = Some(segments.create(at.segment)?);
        }
        self.file
            .as_ref()
            .expect("set above")
            .write_at(at.offset, records)
    }
}

/// Keeps segment files from being deleted while it lives (see [`Segments::hold`]).
pub(crate) struct Hold<'a>(&'a Segments);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments").field("dir", &self.dir).finish()
    }
}

/// Where the next group's records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogEnd {
    pub segment: u32,
    pub offset: u64,
}

impl LogEnd {
    /// Where a group starts: here, or at the start of the next segment once this one holds
    /// `full` bytes.
    pub fn for_next_group(self, full: u64) -> Self {
        if self.offset >= full {
            Self {
                segment: self.segment + 1,
                offset: 0,
            }
        } else {
            self
        }
    }
}

impl Segments {
    /// Opens the segment directory under `data_dir` (creating it); segments are closed
    /// once they hold `full` bytes.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(data_dir: &Path, full: u64) -> Result<Self, StoreError> {
        let dir = data_dir.join("segments");
        std::fs::create_dir_all(&dir).map_err(StoreError::unavailable)?;
        let segments = Self {
            dir,
            full: full.max(1),
            readers: RwLock::default(),
            writing: AtomicU32::new(0),
            rotate: AtomicBool::new(false),
            holds: AtomicUsize::new(0),
        };
        segments
            .writing
            .store(segments.end()?.segment, Ordering::Release);
        Ok(segments)
    }

    /// The writer's segment of the last committed group (every lower one is closed).
    pub fn writing(&self) -> u32 {
        self.writing.load(Ordering::Acquire)
    }

    /// A group whose records are in `segment` was committed (the committer, in order).
    pub fn note_committed(&self, segment: u32) {
        self.writing.fetch_max(segment, Ordering::AcqRel);
    }

    /// The size at which a segment is closed.
    pub fn full(&self) -> u64 {
        self.full
    }

    /// Asks the writer to start its next group in a new segment.
    pub fn request_rotation(&self) {
        self.rotate.store(true, Ordering::Release);
    }

    /// Where the writer's next group goes: after `end`, or in a new segment when `end`'s is
    /// full or its closing was asked for.
    pub fn next_group_at(&self, end: LogEnd) -> LogEnd {
        if end.offset > 0 && self.rotate.swap(false, Ordering::AcqRel) {
            LogEnd {
                segment: end.segment + 1,
                offset: 0,
            }
        } else {
            end.for_next_group(self.full)
        }
    }

    /// No segment file is deleted while the returned guard lives.
    pub fn hold(&self) -> Hold<'_> {
        self.holds.fetch_add(1, Ordering::AcqRel);
        Hold(self)
    }

    pub fn held(&self) -> bool {
        self.holds.load(Ordering::Acquire) > 0
    }

    /// Creates (or opens) a segment file for appending; a new file's directory entry is
    /// synced, so the file survives a crash too.
    ///
    /// # Errors
    /// Creating the file or syncing the directory failed.
    pub fn create(&self, segment: u32) -> Result<SegmentFile, StoreError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.dir.join(file_name(segment)))
            .map_err(StoreError::unavailable)?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(StoreError::unavailable)?;
        Ok(SegmentFile { segment, file })
    }

    /// The segment numbers on disk, in order.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn list(&self) -> Result<Vec<u32>, StoreError> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(StoreError::unavailable)? {
            let entry = entry.map_err(StoreError::unavailable)?;
            if let Some(number) = entry.file_name().to_str().and_then(segment_of) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Where the writer's appends go on: after the end of its last segment, whatever that
    /// holds past its last committed record (bytes of a group that was never committed stay
    /// unreferenced until the segment is dropped).
    ///
    /// # Errors
    /// The directory or the last file cannot be read.
    pub fn end(&self) -> Result<LogEnd, StoreError> {
        match self
            .list()?
            .into_iter()
            .rfind(|&segment| segment < RECLAIMED_BASE)
        {
            Some(segment) => {
                let len = std::fs::metadata(self.dir.join(file_name(segment)))
                    .map_err(StoreError::unavailable)?
                    .len();
                Ok(LogEnd {
                    segment,
                    offset: len,
                })
            }
            None => Ok(LogEnd {
                segment: 1,
                offset: 0,
            }),
        }
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, StoreError> {
        if let Some(file) = self
            .readers
            .read()
            .expect("the reader map lock is never poisoned")
            .get(&segment)
        {
            return Ok(file.clone());
        }
        let file = File::open(self.dir.join(file_name(segment))).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                StoreError::Corrupt(format!("segment {segment} is missing"))
            } else {
                StoreError::unavailable(err)
            }
        })?;
        let file = Arc::new(file);
        self.readers
            .write()
            .expect("the reader map lock is never poisoned")
            .insert(segment, file.clone());
        Ok(file)
    }

    /// Reads the JSON a pointer names, checking its record's length and checksum.
    ///
    /// # Errors
    /// `Corrupt` when the record is not what the pointer says (a file cut short, torn or
    /// damaged bytes); `Unavailable` when reading fails.
    pub fn read(&self, pointer: Pointer) -> Result<Vec<u8>, StoreError> {
        let file = self.reader(pointer.segment)?;
        let mut record = vec![0; RECORD_HEADER + pointer.len as usize];
        file.read_exact_at(&mut record, pointer.offset)
            .map_err(|err| {
                if err.kind() == std::io::ErrorKind::UnexpectedEof {
                    StoreError::Corrupt(format!(
                        "segment {} ends before the record at {} ({} bytes)",
                        pointer.segment, pointer.offset, pointer.len
                    ))
                } else {
                    StoreError::unavailable(err)
                }
            })?;
        let (header, json) = record.split_at(RECORD_HEADER);
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len != pointer.len || crc != crc32fast::hash(json) {
            return Err(StoreError::Corrupt(format!(
                "the record at {} of segment {} does not match its pointer or checksum",
                pointer.offset, pointer.segment
            )));
        }
        record.drain(..RECORD_HEADER);
        Ok(record)
    }

    /// An event's JSON from its `events` value (in the log, or inline in a value written
    /// before the log), and whether the client gave its timestamp.
    ///
    /// # Errors
    /// An unknown value, or a record that does not match its pointer (see [`Self::read`]).
    pub fn event_json<'a>(&self, value: &'a [u8]) -> Result<(Cow<'a, [u8]>, bool), StoreError> {
        let (body, timestamp_given) = keys::decode_event_value(value)?;
        let json = match body {
            EventBody::Inline(json) => Cow::Borrowed(json),
            EventBody::Logged(pointer) => Cow::Owned(self.read(pointer)?),
        };
        Ok((json, timestamp_given))
    }

    /// Deletes a segment file (one no pointer names any more).
    ///
    /// # Errors
    /// Removing the file or syncing the directory failed.
    pub fn remove(&self, segment: u32) -> Result<(), StoreError> {
        self.readers
            .write()
            .expect("the reader map lock is never poisoned")
            .remove(&segment);
        match std::fs::remove_file(self.dir.join(file_name(segment))) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(StoreError::unavailable(err)),
        }
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(StoreError::unavailable)
    }

    /// The size of a segment file, 0 if it is gone.
    pub fn size(&self, segment: u32) -> u64 {
        std::fs::metadata(self.dir.join(file_name(segment))).map_or(0, |meta| meta.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &[u8]) -> Vec<u8> {
        let mut record = new_record(json.len());
        record.extend_from_slice(json);
        seal_record(&mut record).unwrap();
        record
    }

    #[test]
    fn records_read_back_and_damage_is_corruption_not_wrong_json() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), SEGMENT_BYTES).unwrap();
        let end = segments.end().unwrap();
        assert_eq!(
            end,
            LogEnd {
                segment: 1,
                offset: 0
            }
        );
        let (a, b) = (record(br#"{"a":1}"#), record(br#"{"b":22}"#));
        let mut group = a.clone();
        group.extend_from_slice(&b);
        Appender::default().append(&segments, end, &group).unwrap();
        let first = Pointer {
            segment: 1,
            offset: 0,
            len: 7,
        };
        let second = Pointer {
            segment: 1,
            offset: a.len() as u64,
            len: 8,
        };
        assert_eq!(segments.read(first).unwrap(), br#"{"a":1}"#);
        assert_eq!(segments.read(second).unwrap(), br#"{"b":22}"#);
        // A pointer that does not name a record's start, or names more than is there.
        assert!(matches!(
            segments.read(Pointer { offset: 1, ..first }),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            segments.read(Pointer {
                offset: 10_000,
                ..first
            }),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            segments.read(Pointer {
                segment: 9,
                ..first
            }),
            Err(StoreError::Corrupt(_))
        ));
        // A flipped byte in the JSON.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("segments/00000001.seg"))
            .unwrap();
        file.write_all_at(b"X", (RECORD_HEADER + 2) as u64).unwrap();
        assert!(matches!(segments.read(first), Err(StoreError::Corrupt(_))));
        assert_eq!(segments.read(second).unwrap(), br#"{"b":22}"#);
    }

    #[test]
    fn appends_go_on_after_a_torn_tail_and_full_segments_close() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), SEGMENT_BYTES).unwrap();
        let a = record(b"\"first\"");
        Appender::default()
            .append(&segments, segments.end().unwrap(), &a)
            .unwrap();
        drop(segments);
        // A group that was being written when the process died: half a record.
        let torn = record(b"\"never committed\"");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("segments/00000001.seg"))
            .unwrap();
        std::io::Write::write_all(&mut &file, &torn[..10]).unwrap();
        drop(file);
        let segments = Segments::open(dir.path(), SEGMENT_BYTES).unwrap();
        let end = segments.end().unwrap();
        assert_eq!(end.offset, (a.len() + 10) as u64);
        let b = record(b"\"second\"");
        let mut appender = Appender::default();
        appender.append(&segments, end, &b).unwrap();
        assert_eq!(
            segments
                .read(Pointer {
                    segment: 1,
                    offset: end.offset,
                    len: 8
                })
                .unwrap(),
            b"\"second\""
        );
        assert_eq!(
            segments
                .read(Pointer {
                    segment: 1,
                    offset: 0,
                    len: 7
                })
                .unwrap(),
            b"\"first\""
        );
        let full = LogEnd {
            segment: 1,
            offset: SEGMENT_BYTES,
        };
        assert_eq!(
            full.for_next_group(SEGMENT_BYTES),
            LogEnd {
                segment: 2,
                offset: 0
            }
        );
        assert_eq!(end.for_next_group(SEGMENT_BYTES), end);
        appender
            .append(&segments, full.for_next_group(SEGMENT_BYTES), &a)
            .unwrap();
        assert_eq!(segments.list().unwrap(), vec![1, 2]);
        assert_eq!(
            segments.writing(),
            1,
            "closed only once a group in 2 is committed"
        );
        segments.note_committed(2);
        assert_eq!(segments.writing(), 2);
        segments.remove(1).unwrap();
        assert_eq!(segments.list().unwrap(), vec![2]);
        assert!(matches!(
            segments.read(Pointer {
                segment: 1,
                offset: 0,
                len: 7
            }),
            Err(StoreError::Corrupt(_))
        ));
    }
}
