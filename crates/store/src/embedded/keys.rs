//! Byte layouts of the embedded store's keys and values.
//!
//! Keys name a tenant by its [`TenantNo`], four bytes, instead of its 16-byte id, and hash
//! the client's strings, so that every key of the keyspaces written per event (events,
//! types, dedup) is at most 20 bytes. fjall's memtable keeps keys of up to 20 bytes inline
//! in the skiplist node and longer ones on the heap, so each comparison of a long key
//! costs another cache miss; the writer makes about 20 comparisons per insert. Measured:
//! 110,000 → 135,000 events/s on the raw store (BENCHMARKS.md).
//!
//! The keys that are scanned start with the tenant's number (or a hash that includes it),
//! so one tenant's entries are contiguous and no scan can cross into another tenant. Event
//! ids start with the event's timestamp, so byte order is time order. Whoever reads through
//! a hash checks the real value.

use pulsestream_core::{ContentHash, EventId};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, xxh3_128_with_seed};

use super::segments::Pointer;
use crate::StoreError;

/// A tenant's number in this store, assigned on its first write (see `numbers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TenantNo(pub u32);

impl TenantNo {
    pub fn bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

pub(crate) const EVENT_KEY_LEN: usize = 4 + 16;
pub(crate) const TYPE_KEY_LEN: usize = 4 + 16;
pub(crate) const HASHED_KEY_LEN: usize = 16 + 4;

/// `events`: tenant, id. Ids start with the event's timestamp, so a tenant's events are
/// stored in time order and this keyspace is also the time index.
pub(crate) fn event_key(tenant: TenantNo, id: EventId) -> [u8; EVENT_KEY_LEN] {
    let mut key = [0u8; EVENT_KEY_LEN];
    key[..4].copy_from_slice(&tenant.bytes());
    key[4..].copy_from_slice(id.as_bytes());
    key
}

pub(crate) const TAIL_KEY_LEN: usize = 4 + 8;

/// `tail`: tenant, commit time (microseconds, the writer's, which only grows) → the ids of
/// the tenant's entries in that commit, in order, 17 bytes each (id, then 1 for a retry of a
/// stored event, 0 for an event stored now). One entry per tenant and commit, not per event:
/// the live tail costs the writer one small insert per group.
pub(crate) fn tail_key(tenant: TenantNo, commit_micros: i64) -> [u8; TAIL_KEY_LEN] {
    let mut key = [0u8; TAIL_KEY_LEN];
    key[..4].copy_from_slice(&tenant.bytes());
    key[4..].copy_from_slice(&order_preserving(commit_micros));
    key
}

/// One entry of a `tail` value: the event's id and whether it is a retry.
pub(crate) fn tail_entry(id: EventId, duplicate: bool) -> [u8; 17] {
    let mut entry = [u8::from(duplicate); 17];
    entry[..16].copy_from_slice(id.as_bytes());
    entry
}

/// The commit time of a `tail` key.
pub(crate) fn decode_tail_key(key: &[u8]) -> Result<i64, StoreError> {
    Ok(from_order_preserving(bytes_at(key, 4, "tail key")?))
}

/// The entries of a `tail` value: (id, is a retry).
pub(crate) fn decode_tail_value(
    value: &[u8],
) -> Result<impl Iterator<Item = (EventId, bool)> + '_, StoreError> {
    if !value.len().is_multiple_of(17) {
        return Err(StoreError::Corrupt(format!(
            "tail entry of {} bytes",
            value.len()
        )));
    }
    Ok(value.chunks_exact(17).map(|entry| {
        let mut id = [0u8; 16];
        id.copy_from_slice(&entry[..16]);
        (EventId::from_bytes(id), entry[16] == 1)
    }))
}

/// The i64 of 8 bytes made by [`order_preserving`].
pub(crate) fn from_order_preserving(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// An i64 as 8 bytes that sort like the number (sign bit flipped, big-endian).
pub(crate) fn order_preserving(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// `meta` key of the last commit time written (see `tail_key`).
pub(crate) const COMMIT_MICROS_KEY: &[u8] = b"commit_micros";

/// The last commit time written, if any commit stored an event.
pub(crate) fn last_commit_micros(meta: &fjall::Keyspace) -> Option<i64> {
    let value = meta.get(COMMIT_MICROS_KEY).ok()??;
    let bytes: [u8; 8] = value.as_ref().try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// The 64-bit hash of an event type, kept in `by_type` values.
pub(crate) fn type_hash(event_type: &str) -> u64 {
    xxh3_64(event_type.as_bytes())
}

/// The first four bytes of every `by_type` key of one tenant's event type.
///
/// Two (tenant, type) pairs may share a stream; the entry's value tells them apart.
pub(crate) fn type_stream(tenant: TenantNo, event_type: &str) -> [u8; 4] {
    let hash = xxh3_64_with_seed(event_type.as_bytes(), u64::from(tenant.0));
    // Truncation is the point: the stream is the hash's top four bytes.
    #[allow(clippy::cast_possible_truncation)]
    ((hash >> 32) as u32).to_be_bytes()
}

/// `by_type`: stream of (tenant, type), id.
pub(crate) fn type_key(tenant: TenantNo, event_type: &str, id: EventId) -> [u8; TYPE_KEY_LEN] {
    let mut key = [0u8; TYPE_KEY_LEN];
    key[..4].copy_from_slice(&type_stream(tenant, event_type));
    key[4..].copy_from_slice(id.as_bytes());
    key
}

/// `by_type` value: the tenant and the full hash of the type, so that a scan of one stream
/// skips the entries of another (tenant, type) whose stream is the same.
pub(crate) fn type_value(tenant: TenantNo, event_type: &str) -> [u8; 12] {
    let mut value = [0u8; 12];
    value[..4].copy_from_slice(&tenant.bytes());
    value[4..].copy_from_slice(&type_hash(event_type).to_be_bytes());
    value
}

/// `N` bytes of a stored key or value from `at`, or a corruption error naming `what` when
/// it is too short (a damaged file must not panic the server).
pub(crate) fn bytes_at<const N: usize>(
    bytes: &[u8],
    at: usize,
    what: &str,
) -> Result<[u8; N], StoreError> {
    bytes
        .get(at..at + N)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{what} of {} bytes, expected at least {}",
                bytes.len(),
                at + N
            ))
        })
}

/// The id at the end of an `events` or `by_type` key.
pub(crate) fn id_suffix(key: &[u8]) -> Result<EventId, StoreError> {
    let at = key.len().saturating_sub(16);
    bytes_at(key, at, "index key").map(EventId::from_bytes)
}

/// `dedup` and `idempotency`: 128-bit hash of the client's string (seeded with the tenant),
/// tenant. Point lookups only, so the random hash comes first and key comparisons end at
/// the first bytes.
pub(crate) fn hashed_key(tenant: TenantNo, text: &str) -> [u8; HASHED_KEY_LEN] {
    let mut key = [0u8; HASHED_KEY_LEN];
    key[..16]
        .copy_from_slice(&xxh3_128_with_seed(text.as_bytes(), u64::from(tenant.0)).to_be_bytes());
    key[16..].copy_from_slice(&tenant.bytes());
    key
}

/// `dedup` value: the stored event's id and content hash.
pub(crate) fn encode_dedup(id: EventId, hash: ContentHash) -> [u8; 32] {
    let mut value = [0u8; 32];
    value[..16].copy_from_slice(id.as_bytes());
    value[16..].copy_from_slice(&hash.0.to_be_bytes());
    value
}

pub(crate) fn decode_dedup(value: &[u8]) -> Result<(EventId, ContentHash), StoreError> {
    if value.len() != 32 {
        return Err(StoreError::Corrupt(format!(
            "dedup entry of {} bytes",
            value.len()
        )));
    }
    let id = EventId::from_bytes(bytes_at(value, 0, "dedup value")?);
    let hash = u128::from_be_bytes(bytes_at(value, 16, "dedup value")?);
    Ok((id, ContentHash(hash)))
}

/// Version 1: the event's JSON inline (stores written before the segment log).
const EVENT_VALUE_INLINE: u8 = 1;
/// Version 2: a pointer into the segment log.
const EVENT_VALUE_LOGGED: u8 = 2;
const FLAG_TIMESTAMP_GIVEN: u8 = 1;
/// The length of a version-2 value.
pub(crate) const EVENT_VALUE_LEN: usize = 18;

/// Where an event's JSON is.
#[derive(Debug)]
pub(crate) enum EventBody<'a> {
    /// In the value itself (version 1).
    Inline(&'a [u8]),
    /// In the segment log.
    Logged(Pointer),
}

/// `events` value: version 2, flags, then where the JSON is in the segment log.
pub(crate) fn event_value(timestamp_given: bool, pointer: Pointer) -> [u8; EVENT_VALUE_LEN] {
    let mut value = [0; EVENT_VALUE_LEN];
    value[0] = EVENT_VALUE_LOGGED;
    value[1] = if timestamp_given {
        FLAG_TIMESTAMP_GIVEN
    } else {
        0
    };
    value[2..6].copy_from_slice(&pointer.segment.to_be_bytes());
    value[6..14].copy_from_slice(&pointer.offset.to_be_bytes());
    value[14..18].copy_from_slice(&pointer.len.to_be_bytes());
    value
}

/// Returns where the event's JSON is and whether the client gave its timestamp.
pub(crate) fn decode_event_value(value: &[u8]) -> Result<(EventBody<'_>, bool), StoreError> {
    match value {
        [EVENT_VALUE_INLINE, flags, json @ ..] => {
            Ok((EventBody::Inline(json), flags & FLAG_TIMESTAMP_GIVEN != 0))
        }
        [EVENT_VALUE_LOGGED, flags, pointer @ ..] if value.len() == EVENT_VALUE_LEN => {
            let pointer = Pointer {
                segment: u32::from_be_bytes(bytes_at(pointer, 0, "event pointer")?),
                offset: u64::from_be_bytes(bytes_at(pointer, 4, "event pointer")?),
                len: u32::from_be_bytes(bytes_at(pointer, 12, "event pointer")?),
            };
            Ok((
                EventBody::Logged(pointer),
                flags & FLAG_TIMESTAMP_GIVEN != 0,
            ))
        }
        _ => Err(StoreError::Corrupt(
            "event value with unknown version".into(),
        )),
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn short_stored_keys_and_values_are_corruption_not_panics() {
        assert!(matches!(id_suffix(&[1, 2, 3]), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            decode_dedup(&[0; 31]),
            Err(StoreError::Corrupt(_))
        ));
        let id = EventId::from_bytes([7; 16]);
        assert_eq!(id_suffix(&event_key(TenantNo(1), id)).unwrap(), id);
    }
}
