//! Search queries and the filters every store applies to candidate events.
//!
//! A store narrows candidates with its indexes (tenant, time, type, event id); the filters
//! that no index serves (source, payload paths, full text) are checked here on the stored
//! JSON, the same way for every backend.

pub use pulsestream_core::filter::PayloadFilter;
use pulsestream_core::filter::{path_equals, text_matches};
use pulsestream_core::{EventId, parse_timestamp};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

/// Newest first (the default) or oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

/// Where the previous page stopped: the last event's id (which carries its timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub EventId);

impl Cursor {
    /// Encodes the cursor as an opaque token.
    pub fn encode(&self) -> String {
        self.0.0.simple().to_string()
    }

    /// Decodes a token made by [`Cursor::encode`].
    pub fn decode(token: &str) -> Option<Self> {
        if token.len() != 32 {
            return None;
        }
        token.parse().ok().map(Self)
    }
}

/// A search over one tenant's events; every filter is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub event_id: Option<String>,
    /// Any of these types.
    pub event_types: Vec<String>,
    pub source: Option<String>,
    /// Inclusive.
    pub since: Option<OffsetDateTime>,
    /// Exclusive.
    pub until: Option<OffsetDateTime>,
    pub payload: Vec<PayloadFilter>,
    /// Full text over the payload's strings: every term must appear, case-insensitively.
    pub text: Option<String>,
    pub limit: usize,
    /// A page ends before the event that would take its events' JSON past this many bytes
    /// (it always holds one event); 0 means no byte limit.
    pub max_bytes: usize,
    pub cursor: Option<Cursor>,
    pub order: Order,
}

impl SearchQuery {
    /// The query's types, sorted and each once: each store reads one ordered run per type,
    /// and a type named twice must not be read (and its events returned) twice.
    pub(crate) fn distinct_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.event_types.iter().map(String::as_str).collect();
        types.sort_unstable();
        types.dedup();
        types
    }
}

/// Whether an event of `len` bytes would take a page of `bytes` past the query's byte limit
/// (never for the page's first event).
pub(crate) fn over_bytes<T>(query: &SearchQuery, bytes: usize, len: usize, page: &[T]) -> bool {
    query.max_bytes > 0 && !page.is_empty() && bytes.saturating_add(len) > query.max_bytes
}

/// The fields of a stored event's JSON that filters look at.
#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    source: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Returns whether a stored event (its JSON) passes every filter of the query.
/// Cursor and index bounds are the store's business; this checks the rest again, so a
/// store may hand over a superset of candidates (hash collisions included).
pub fn event_matches(json: &[u8], query: &SearchQuery) -> bool {
    let Ok(view) = serde_json::from_slice::<EventView<'_>>(json) else {
        return false;
    };
    if query
        .event_id
        .as_deref()
        .is_some_and(|id| id != view.event_id)
    {
        return false;
    }
    if !query.event_types.is_empty() && !query.event_types.iter().any(|t| *t == view.event_type) {
        return false;
    }
    if query.source.is_some() && query.source.as_deref() != view.source.as_deref() {
        return false;
    }
    if query.since.is_some() || query.until.is_some() {
        let Some(ts) = parse_timestamp(&view.timestamp) else {
            return false;
        };
        if query.since.is_some_and(|since| ts < since)
            || query.until.is_some_and(|until| ts >= until)
        {
            return false;
        }
    }
    if query.payload.is_empty() && query.text.is_none() {
        return true;
    }
    let Ok(payload) = serde_json::from_str::<Value>(view.payload.get()) else {
        return false;
    };
    query
        .payload
        .iter()
        .all(|filter| path_equals(&payload, filter))
        && query
            .text
            .as_deref()
            .is_none_or(|text| text_matches(&payload, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"id":"0190a8c4-0000-7000-8000-000000000000","event_id":"e1",
        "event_type":"order.created","source":"checkout","timestamp":"2025-10-02T12:00:00Z",
        "received_at":"2025-10-02T12:00:01Z",
        "payload":{"user":{"id":42,"name":"Ada Lovelace"},"items":[{"sku":"A-1"}],"paid":true}}"#;

    fn matches(query: SearchQuery) -> bool {
        event_matches(EVENT.as_bytes(), &query)
    }

    fn payload(path: &str, value: &str) -> SearchQuery {
        SearchQuery {
            payload: vec![PayloadFilter {
                path: path.split('.').map(str::to_owned).collect(),
                value: value.into(),
            }],
            ..SearchQuery::default()
        }
    }

    #[test]
    fn payload_paths_compare_numbers_strings_and_booleans() {
        assert!(matches(payload("user.id", "42")));
        assert!(matches(payload("user.id", "42.0")));
        assert!(!matches(payload("user.id", "43")));
        assert!(matches(payload("user.name", "Ada Lovelace")));
        assert!(matches(payload("items.0.sku", "A-1")));
        assert!(matches(payload("paid", "true")));
        assert!(!matches(payload("user.missing", "1")));
    }

    #[test]
    fn full_text_needs_every_term() {
        let text = |q: &str| SearchQuery {
            text: Some(q.into()),
            ..SearchQuery::default()
        };
        assert!(matches(text("lovelace")));
        assert!(matches(text("ADA a-1")));
        assert!(!matches(text("ada babbage")));
    }

    #[test]
    fn time_bounds_are_inclusive_then_exclusive() {
        let at = parse_timestamp("2025-10-02T12:00:00Z");
        assert!(matches(SearchQuery {
            since: at,
            ..SearchQuery::default()
        }));
        assert!(!matches(SearchQuery {
            until: at,
            ..SearchQuery::default()
        }));
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor(EventId::from_parts(-5, 9));
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("zz"), None);
    }
}
