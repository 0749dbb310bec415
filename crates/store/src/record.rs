//! What every store writes and compares the same way: the event's JSON as the API returns
//! it, event ids, the content comparison that tells a retry from a conflict, and the
//! encoding of idempotency records.

use std::io::Write;

use pulsestream_core::{ContentHash, EventId, NewEvent};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{AppendStatus, IdempotencyRecord, StoreError};

/// Microseconds since the Unix epoch: the precision events are ordered and compared at.
pub(crate) fn micros_of(ts: OffsetDateTime) -> i64 {
    // RFC 3339 years 0000-9999 fit in i64 microseconds many times over.
    (ts.unix_timestamp_nanos() / 1_000) as i64
}

/// Microseconds since the Unix epoch, rounded up: the first id time not before `ts`, for an
/// exclusive upper bound given with sub-microsecond precision.
pub(crate) fn micros_ceil(ts: OffsetDateTime) -> i64 {
    let nanos = ts.unix_timestamp_nanos();
    (nanos.div_euclid(1_000) + i128::from(nanos.rem_euclid(1_000) != 0)) as i64
}

/// Makes the random half of event ids (SplitMix64 from a random seed): fast, and 64 bits
/// make two events of one tenant in one microsecond collide with negligible odds.
#[derive(Debug)]
pub(crate) struct IdGen {
    state: u64,
}

impl IdGen {
    pub(crate) fn new() -> Self {
        let seed = u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .expect("a UUID has 16 bytes"),
        );
        Self { state: seed }
    }

    /// Returns a fresh id for the event: its timestamp (or the receipt time) and 64 random bits.
    pub(crate) fn next(&mut self, event: &NewEvent, received_at: OffsetDateTime) -> EventId {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        EventId::from_parts(
            micros_of(event.timestamp.unwrap_or(received_at)),
            z ^ (z >> 31),
        )
    }
}

/// Writes the event's JSON exactly as the API returns it.
/// The timestamp is the client's, to the nanosecond it sent (the id carries it to the
/// microsecond), or else the receipt time the id carries.
pub(crate) fn write_event_json(
    json: &mut Vec<u8>,
    id: EventId,
    event: &NewEvent,
    event_id: &str,
    received_at: &str,
) -> Result<(), StoreError> {
    let timestamp = match event.timestamp {
        Some(sent) => sent,
        None => {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(id.timestamp_micros()) * 1_000)
                .map_err(|err| StoreError::Corrupt(format!("event id timestamp: {err}")))?
        }
    };
    let timestamp = pulsestream_core::format_timestamp(timestamp);
    let encode = |json: &mut Vec<u8>, text: &str| {
        serde_json::to_writer(json, text).map_err(StoreError::unavailable)
    };
    write!(json, "{{\"id\":\"{id}\",\"event_id\":").map_err(StoreError::unavailable)?;
    encode(json, event_id)?;
    json.extend_from_slice(b",\"event_type\":");
    encode(json, &event.event_type)?;
    json.extend_from_slice(b",\"source\":");
    match &event.source {
        Some(source) => encode(json, source)?,
        None => json.extend_from_slice(b"null"),
    }
    write!(
        json,
        ",\"timestamp\":\"{timestamp}\",\"received_at\":\"{received_at}\",\"payload\":"
    )
    .map_err(StoreError::unavailable)?;
    json.extend_from_slice(event.payload.as_bytes());
    json.push(b'}');
    Ok(())
}

/// Tells a retry from a conflict: `event` against the event stored under its `event_id`
/// (that event's id, content hash, JSON and whether its client gave the timestamp). Never
/// fails: a stored event no reader can load makes the newcomer a conflict, logged, so one
/// odd event cannot stop every tenant's writes.
pub(crate) fn stored_status(
    id: EventId,
    stored_hash: ContentHash,
    json: &[u8],
    timestamp_given: bool,
    event: &NewEvent,
) -> AppendStatus {
    let stored = match StoredContent::parse(json, timestamp_given) {
        Ok(stored) => stored,
        Err(err) => {
            tracing::error!(error = %err, event = %id, "stored event cannot be compared");
            return AppendStatus::Conflict(id);
        }
    };
    if stored.event_id != event.event_id.as_deref().unwrap_or_default() {
        // Found under another event_id (two ids with one 128-bit lookup hash, or a server-made
        // id that met a client's): a conflict rather than an overwrite; astronomically
        // unlikely, but never silently wrong.
        return AppendStatus::Conflict(id);
    }
    if stored_hash == event.content_hash || stored.same_as(event) {
        AppendStatus::Duplicate(id)
    } else {
        AppendStatus::Conflict(id)
    }
}

/// Tells a retry from a conflict against an erased event's tombstone, which keeps only the
/// content hash: the same bytes are a duplicate, anything else a conflict (nothing of it is
/// stored either way).
pub(crate) fn tombstone_status(
    id: EventId,
    stored_hash: ContentHash,
    event: &NewEvent,
) -> AppendStatus {
    if stored_hash == event.content_hash {
        AppendStatus::Duplicate(id)
    } else {
        AppendStatus::Conflict(id)
    }
}

/// What the client sent of a stored event, for comparing with a retry.
#[derive(serde::Deserialize)]
struct StoredContent {
    event_id: String,
    event_type: String,
    source: Option<String>,
    timestamp: String,
    payload: Box<serde_json::value::RawValue>,
    #[serde(skip)]
    timestamp_given: bool,
}

impl StoredContent {
    fn parse(json: &[u8], timestamp_given: bool) -> Result<Self, StoreError> {
        let mut content: Self = serde_json::from_slice(json)
            .map_err(|err| StoreError::Corrupt(format!("stored event: {err}")))?;
        content.timestamp_given = timestamp_given;
        Ok(content)
    }

    /// Compares by meaning: key order and spacing of the payload do not matter, nor the
    /// offset a timestamp was written in.
    fn same_as(&self, event: &NewEvent) -> bool {
        let timestamp = pulsestream_core::parse_timestamp(&self.timestamp);
        let same_timestamp = match (self.timestamp_given, event.timestamp) {
            (true, Some(ts)) => timestamp == Some(ts),
            (false, None) => true,
            _ => false,
        };
        self.event_type == event.event_type
            && self.source == event.source
            && same_timestamp
            && same_payload(self.payload.get(), &event.payload)
    }
}

/// Compares two payloads' JSON by meaning (`core::filter::same_json`: key order, spacing and
/// how a number is written do not matter, as in search). Never fails: a payload no reader
/// can load as a value (validation should have refused it) is compared by its bytes, so one
/// odd event can never stop the writer.
fn same_payload(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => pulsestream_core::filter::same_json(&a, &b),
        _ => false,
    }
}

pub(crate) fn same_content(a: &NewEvent, b: &NewEvent) -> bool {
    a.content_hash == b.content_hash
        || (a.event_type == b.event_type
            && a.source == b.source
            && a.timestamp == b.timestamp
            && same_payload(&a.payload, &b.payload))
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

    #[test]
    fn upper_bounds_round_up_to_the_next_microsecond() {
        let at = |nanos: i128| OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
        assert_eq!(micros_ceil(at(1_000)), 1);
        assert_eq!(micros_ceil(at(1_500)), 2);
        assert_eq!(micros_ceil(at(-1_500)), -1);
        assert_eq!(micros_of(at(1_500)), 1);
    }
}
