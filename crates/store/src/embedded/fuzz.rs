//! One entry point for the fuzz target `stored_decoders`: every decoder of the embedded
//! store's keys and values on arbitrary bytes (what a damaged file could hand it) must
//! answer a value or `StoreError::Corrupt`, never panic; and what the encoders write must
//! decode to what they were given.

use pulsestream_core::{ContentHash, DestinationId, EventId};

use super::{activity, delivery, keys};
use crate::record;
use crate::{AppendStatus, IdempotencyRecord, StoreError};

/// Runs every decoder on `data`, and every encoder/decoder pair on values made from it.
/// Panics (the fuzzer's finding) when a decoder panics or a round trip differs.
#[doc(hidden)]
pub fn stored_decoders(data: &[u8]) {
    let corrupt_or_ok = |result: Result<(), StoreError>| match result {
        Ok(()) | Err(StoreError::Corrupt(_)) => {}
        Err(other) => panic!("a decoder failed with something else than corruption: {other}"),
    };
    corrupt_or_ok(keys::id_suffix(data).map(drop));
    corrupt_or_ok(keys::decode_dedup(data).map(drop));
    corrupt_or_ok(keys::decode_event_value(data).map(drop));
    corrupt_or_ok(keys::decode_tail_key(data).map(drop));
    corrupt_or_ok(keys::decode_tail_value(data).map(|entries| {
        assert_eq!(entries.count(), data.len() / 17);
    }));
    corrupt_or_ok(delivery::decode_outbox_key(data).map(drop));
    let _ = delivery::decode_outbox_value(data);
    corrupt_or_ok(activity::decode_counts(data).map(drop));
    corrupt_or_ok(activity::decode_attempt(data).map(drop));
    corrupt_or_ok(record::decode_idempotency(data).map(drop));

    // Round trips of values built from the input.
    let number = |at: usize| {
        let mut bytes = [0u8; 8];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = data.get(at + i).copied().unwrap_or(0);
        }
        i64::from_be_bytes(bytes)
    };
    let id = EventId::from_parts(number(0), number(8) as u64);
    let hash = ContentHash((number(16) as u128) << 64 | number(24) as u128);
    assert_eq!(
        keys::decode_dedup(&keys::encode_dedup(id, hash)).unwrap(),
        (id, hash)
    );
    assert_eq!(
        keys::from_order_preserving(keys::order_preserving(number(0))),
        number(0)
    );
    assert_eq!(
        keys::id_suffix(&keys::event_key(keys::TenantNo(number(8) as u32), id)).unwrap(),
        id
    );
    let pointer = super::segments::Pointer {
        segment: number(0) as u32,
        offset: number(8) as u64,
        len: number(16) as u32,
    };
    let timestamp_given = number(24) & 1 == 1;
    match keys::decode_event_value(&keys::event_value(timestamp_given, pointer)).unwrap() {
        (keys::EventBody::Logged(decoded), given) => {
            assert_eq!((decoded, given), (pointer, timestamp_given));
        }
        other => panic!("a pointer decoded as {other:?}"),
    }
    let due = number(32);
    let destination = DestinationId(uuid::Uuid::from_u128(number(40) as u128));
    assert_eq!(
        delivery::decode_outbox_key(&delivery::outbox_key(destination, due, id)).unwrap(),
        (due, id)
    );
    let error = String::from_utf8_lossy(data.get(48..).unwrap_or_default());
    let order = (number(40) & 1 == 1).then(|| crate::QueueOrder {
        key: number(0),
        seq: number(8),
    });
    let attempts = number(16) as u32;
    assert_eq!(
        delivery::decode_outbox_value(&delivery::outbox_value(attempts, &error, order)),
        (attempts, order)
    );
    let statuses: Vec<AppendStatus> = data
        .chunks(16)
        .take(64)
        .enumerate()
        .map(|(i, chunk)| {
            let id = EventId::from_parts(i as i64, chunk.len() as u64);
            match chunk[0] % 3 {
                0 => AppendStatus::Accepted(id),
                1 => AppendStatus::Duplicate(id),
                _ => AppendStatus::Conflict(id),
            }
        })
        .collect();
    let record = IdempotencyRecord {
        request_hash: hash.0,
        created_at: time::OffsetDateTime::from_unix_timestamp(number(24).rem_euclid(1 << 37))
            .expect("within time's range"),
        statuses,
    };
    assert_eq!(
        record::decode_idempotency(&record::encode_idempotency(&record)).unwrap(),
        record
    );
}

#[cfg(test)]
mod tests {
    /// The fuzz target's checks on a few thousand pseudo-random inputs of every length up to
    /// 200 bytes, so the normal test run keeps them true (the fuzzer searches far wider).
    #[test]
    fn the_stored_decoders_survive_arbitrary_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 0..200 {
            for _ in 0..20 {
                let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                super::stored_decoders(&data);
            }
        }
    }
}
