//! The search query parser: any query string is a search or a 422 naming bad parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsestream_api::v1::events::parse_search;

fuzz_target!(|data: &[u8]| {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(data)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    if let Ok(query) = parse_search(params) {
        assert!((1..=1_000).contains(&query.limit));
        if let (Some(since), Some(until)) = (query.since, query.until) {
            assert!(since < until);
        }
    }
});
