//! Event validation: any text either becomes a valid event or a list of located errors, and
//! a valid event's content hash does not depend on how its JSON was spaced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsestream_core::NewEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match NewEvent::from_json(text) {
        Ok(event) => {
            // The same event, spaced differently, is the same content.
            let spaced = format!(" \n{text}\t ");
            let again = NewEvent::from_json(&spaced).expect("whitespace around a valid event");
            assert_eq!(event.content_hash, again.content_hash);
        }
        Err(errors) => assert!(!errors.is_empty(), "a rejection says why"),
    }
});
