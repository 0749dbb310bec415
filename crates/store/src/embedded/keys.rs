//! Byte layouts of the embedded store's keys and values.
//!
//! Every key holds the tenant's 16 bytes; the keys that are scanned start with them, so one
//! tenant's entries are contiguous and no scan can cross into another tenant. Event ids
//! start with the event's timestamp, so byte order is time order. Client ids and types are
//! hashed to keep index entries small; whoever reads through a hash checks the real value.

use pulsestream_core::{ContentHash, EventId, TenantId};
use time::OffsetDateTime;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::{AppendStatus, IdempotencyRecord, StoreError};

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

pub(crate) fn micros_of(ts: OffsetDateTime) -> i64 {
    // RFC 3339 years 0000-9999 fit in i64 microseconds many times over.
    (ts.unix_timestamp_nanos() / 1_000) as i64
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

const STATUS_ACCEPTED: u8 = 0;
const STATUS_DUPLICATE: u8 = 1;
const STATUS_CONFLICT: u8 = 2;

/// `idempotency` value: request hash, creation time (unix seconds), then a status and an
/// id per event.
pub(crate) fn encode_idempotency(record: &IdempotencyRecord) -> Vec<u8> {
    let mut value = Vec::with_capacity(24 + record.statuses.len() * 17);
    value.extend_from_slice(&record.request_hash.to_be_bytes());
    value.extend_from_slice(&record.created_at.unix_timestamp().to_be_bytes());
    for status in &record.statuses {
        let (tag, id) = match status {
            AppendStatus::Accepted(id) => (STATUS_ACCEPTED, id),
            AppendStatus::Duplicate(id) => (STATUS_DUPLICATE, id),
            AppendStatus::Conflict(id) => (STATUS_CONFLICT, id),
        };
        value.push(tag);
        value.extend_from_slice(id.as_bytes());
    }
    value
}

pub(crate) fn decode_idempotency(value: &[u8]) -> Result<IdempotencyRecord, StoreError> {
    let corrupt = || StoreError::Corrupt("malformed idempotency record".into());
    if value.len() < 24 || !(value.len() - 24).is_multiple_of(17) {
        return Err(corrupt());
    }
    let request_hash = u128::from_be_bytes(value[..16].try_into().map_err(|_| corrupt())?);
    let seconds = i64::from_be_bytes(value[16..24].try_into().map_err(|_| corrupt())?);
    let created_at = OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| corrupt())?;
    let statuses = value[24..]
        .chunks_exact(17)
        .map(|chunk| {
            let id = EventId::from_bytes(chunk[1..].try_into().expect("chunks are 17 bytes"));
            match chunk[0] {
                STATUS_ACCEPTED => Ok(AppendStatus::Accepted(id)),
                STATUS_DUPLICATE => Ok(AppendStatus::Duplicate(id)),
                STATUS_CONFLICT => Ok(AppendStatus::Conflict(id)),
                _ => Err(corrupt()),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(IdempotencyRecord {
        request_hash,
        created_at,
        statuses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_records_round_trip() {
        let record = IdempotencyRecord {
            request_hash: 7,
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            statuses: vec![
                AppendStatus::Accepted(EventId::from_parts(1, 2)),
                AppendStatus::Conflict(EventId::from_parts(1, 2)),
            ],
        };
        assert_eq!(
            decode_idempotency(&encode_idempotency(&record)).unwrap(),
            record
        );
    }
}
