//! Byte layouts of the embedded store's keys and values.
//!
//! Every key holds the tenant's 16 bytes; the keys that are scanned start with them, so one
//! tenant's entries are contiguous and no scan can cross into another tenant. Event ids
//! start with the event's timestamp, so byte order is time order. Client ids and types are
//! hashed to keep index entries small; whoever reads through a hash checks the real value.

use pulsestream_core::{ContentHash, EventId, TenantId};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::StoreError;

pub(crate) const EVENT_KEY_LEN: usize = 16 + 16;
pub(crate) const TYPE_KEY_LEN: usize = 16 + 8 + 16;

/// `events`: tenant, id. Ids start with the event's timestamp, so a tenant's events are
/// stored in time order and this keyspace is also the time index.
pub(crate) fn event_key(tenant: TenantId, id: EventId) -> [u8; EVENT_KEY_LEN] {
    let mut key = [0u8; EVENT_KEY_LEN];
    key[..16].copy_from_slice(tenant.as_bytes());
    key[16..].copy_from_slice(id.as_bytes());
    key
}

pub(crate) fn type_hash(event_type: &str) -> [u8; 8] {
    xxh3_64(event_type.as_bytes()).to_be_bytes()
}

/// `by_type`: tenant, hash of the type, id.
pub(crate) fn type_key(tenant: TenantId, event_type: &str, id: EventId) -> [u8; TYPE_KEY_LEN] {
    let mut key = [0u8; TYPE_KEY_LEN];
    key[..16].copy_from_slice(tenant.as_bytes());
    key[16..24].copy_from_slice(&type_hash(event_type));
    key[24..].copy_from_slice(id.as_bytes());
    key
}

/// The id at the end of an `events` or `by_type` key.
pub(crate) fn id_suffix(key: &[u8]) -> EventId {
    EventId::from_bytes(
        key[key.len() - 16..]
            .try_into()
            .expect("keys end with 16 id bytes"),
    )
}

/// `dedup` and `idempotency`: 128-bit hash of the client's string, tenant. Point lookups
/// only, so the random hash comes first and key comparisons end at the first bytes.
pub(crate) fn hashed_key(tenant: TenantId, text: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&xxh3_128(text.as_bytes()).to_be_bytes());
    key[16..].copy_from_slice(tenant.as_bytes());
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
    let id = EventId::from_bytes(value[..16].try_into().expect("length checked above"));
    let hash = u128::from_be_bytes(value[16..].try_into().expect("length checked above"));
    Ok((id, ContentHash(hash)))
}

const EVENT_VALUE_VERSION: u8 = 1;
const FLAG_TIMESTAMP_GIVEN: u8 = 1;

/// `events` value: version, flags, then the event's JSON as the API returns it. Returns
/// the header; the JSON is written right after it into the same buffer.
pub(crate) fn event_value_header(timestamp_given: bool) -> [u8; 2] {
    [
        EVENT_VALUE_VERSION,
        if timestamp_given {
            FLAG_TIMESTAMP_GIVEN
        } else {
            0
        },
    ]
}

/// Returns the event's JSON and whether the client gave its timestamp.
pub(crate) fn decode_event_value(value: &[u8]) -> Result<(&[u8], bool), StoreError> {
    match value {
        [EVENT_VALUE_VERSION, flags, json @ ..] => Ok((json, flags & FLAG_TIMESTAMP_GIVEN != 0)),
        _ => Err(StoreError::Corrupt(
            "event value with unknown version".into(),
        )),
    }
}
