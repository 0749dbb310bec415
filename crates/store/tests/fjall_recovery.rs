//! fjall's journal recovery, as patched in `vendor/fjall` (see `vendor/README.md`): keyspace
//! names resolved once per recovery instead of once per replayed item, the reader's position
//! counted instead of asked of the file after every entry, and each batch's items given room
//! at once. A start after a crash replays the journal; these tests pin down what the replay
//! must still do: every committed batch back, each item in its own keyspace, a torn last
//! batch cut off at the right byte so that the journal takes writes again.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

const BATCHES: u32 = 200;
const ITEMS: u32 = 50;

fn open(dir: &Path) -> (Database, Keyspace, Keyspace) {
    let db = Database::builder(dir).open().unwrap();
    let left = db.keyspace("left", KeyspaceCreateOptions::default).unwrap();
    let right = db
        .keyspace("right", KeyspaceCreateOptions::default)
        .unwrap();
    (db, left, right)
}

/// One batch: `ITEMS` keys in each keyspace, the values saying which keyspace they went to.
fn write_batch(db: &Database, left: &Keyspace, right: &Keyspace, batch: u32) {
    let mut writes = db.batch().durability(Some(PersistMode::SyncData));
    for item in 0..ITEMS {
        let key = format!("{batch:05}-{item:03}");
        writes.insert(left, key.as_bytes(), format!("left {key}").as_bytes());
        writes.insert(right, key.as_bytes(), format!("right {key}").as_bytes());
    }
    writes.commit().unwrap();
}

/// Whether the batch is whole in both keyspaces, each value where it was written.
fn batch_is_there(left: &Keyspace, right: &Keyspace, batch: u32) -> bool {
    (0..ITEMS).all(|item| {
        let key = format!("{batch:05}-{item:03}");
        let read = |keyspace: &Keyspace| keyspace.get(key.as_bytes()).unwrap();
        read(left).as_deref() == Some(format!("left {key}").as_bytes())
            && read(right).as_deref() == Some(format!("right {key}").as_bytes())
    })
}

/// The active journal: the highest-numbered `.jnl` file.
fn active_journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jnl"))
        .max_by_key(|path| {
            path.file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok())
        })
        .expect("a journal")
}

/// The end of the written part of a journal (fjall preallocates its files with zeros).
fn written_end(journal: &Path) -> u64 {
    let mut bytes = Vec::new();
    std::fs::File::open(journal)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |at| at as u64 + 1)
}

/// A database holding `BATCHES` batches in its journal only: fjall does not flush memtables
/// when it closes, so the next open replays them.
fn written_and_closed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (db, left, right) = open(dir.path());
    for batch in 0..BATCHES {
        write_batch(&db, &left, &right, batch);
    }
    dir
}

#[test]
fn a_replayed_journal_brings_back_every_batch_into_its_own_keyspace() {
    let dir = written_and_closed();
    let (_db, left, right) = open(dir.path());
    for batch in 0..BATCHES {
        assert!(batch_is_there(&left, &right, batch), "batch {batch}");
    }
    assert_eq!(left.len().unwrap(), (BATCHES * ITEMS) as usize);
    assert_eq!(right.len().unwrap(), (BATCHES * ITEMS) as usize);
}

#[test]
fn a_torn_last_batch_is_cut_off_and_the_journal_takes_writes_again() {
    let dir = written_and_closed();
    // The last batch's last bytes never reached the disk.
    let journal = active_journal(dir.path());
    let end = written_end(&journal);
    let mut file = OpenOptions::new().write(true).open(&journal).unwrap();
    file.seek(SeekFrom::Start(end - 5)).unwrap();
    file.write_all(&[0; 5]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    {
        let (db, left, right) = open(dir.path());
        for batch in 0..BATCHES - 1 {
            assert!(batch_is_there(&left, &right, batch), "batch {batch}");
        }
        assert!(
            (0..ITEMS).all(|item| {
                left.get(format!("{:05}-{item:03}", BATCHES - 1).as_bytes())
                    .unwrap()
                    .is_none()
            }),
            "the torn batch is not applied, not even in part"
        );
        // Written after the cut: it must land right after the last whole batch.
        write_batch(&db, &left, &right, BATCHES);
    }
    let (_db, left, right) = open(dir.path());
    for batch in (0..BATCHES - 1).chain([BATCHES]) {
        assert!(batch_is_there(&left, &right, batch), "batch {batch}");
    }
    assert_eq!(left.len().unwrap(), (BATCHES * ITEMS) as usize);
}
