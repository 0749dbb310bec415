//! The batch body parser, JSON envelope and NDJSON, and the answer built from it: any body
//! gets a 4xx or one result per event, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsestream_api::body::{BodyFormat, TextBody};
use pulsestream_api::v1::ingest::{Checked, Endpoint};
use pulsestream_core::EventId;
use pulsestream_store::AppendStatus;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first & 1 == 0 {
        BodyFormat::Json
    } else {
        BodyFormat::Ndjson
    };
    let body = TextBody {
        format,
        text: text.to_owned(),
    };
    let Ok(mut checked) = Checked::new(Endpoint::Batch, &body) else {
        return;
    };
    let events = checked.take_events();
    assert!(events.len() <= checked.carried());
    // Answer as a store would: the valid events stored, duplicates or conflicts by turn.
    let statuses: Vec<AppendStatus> = (0..events.len())
        .map(|i| {
            let id = EventId::from_bytes([i as u8; 16]);
            match (i + usize::from(*first >> 1)) % 3 {
                0 => AppendStatus::Accepted(id),
                1 => AppendStatus::Duplicate(id),
                _ => AppendStatus::Conflict(id),
            }
        })
        .collect();
    let answer = checked.respond(&statuses);
    if let Ok(response) = answer {
        assert!(response.status().is_success());
    }
    let single = Checked::new(
        Endpoint::Single,
        &TextBody {
            format: BodyFormat::Json,
            text: text.to_owned(),
        },
    );
    if let Ok(mut single) = single {
        assert_eq!(single.take_events().len(), 1);
    }
});
