//! The embedded store's key and value decoders on any bytes (a damaged file): a value or a
//! corruption error, never a panic; and every encoder's output decodes to what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pulsestream_store::embedded::stored_decoders(data);
});
