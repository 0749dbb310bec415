//! The event as clients send it, and the rules that turn it into a [`NewEvent`].
//!
//! Validation never stops at the first problem: every field error is reported with its
//! location, so a client can fix a whole batch in one go. The payload is kept as the raw
//! JSON text the client sent; it is checked (an object, not nested absurdly deep) but not
//! re-serialised, which keeps ingestion cheap.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use xxhash_rust::xxh3::Xxh3;

/// The most events one batch may carry.
pub const MAX_BATCH_EVENTS: usize = 1_000;
/// The longest `event_id`, `event_type` or `source`, in characters.
pub const MAX_STRING_CHARS: usize = 256;
/// The deepest nesting of objects and arrays allowed in a payload.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// An event as it arrives, each field still raw JSON so that every field can be checked
/// on its own. Unknown fields are ignored, as Segment and Stripe do.
#[derive(Debug, Deserialize)]
pub struct WireEvent<'a> {
    #[serde(borrow, default)]
    pub event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
}

/// One problem with one field of an event. `loc` is relative to the event; the API
/// layer prefixes it with the event's place in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub loc: Vec<Cow<'static, str>>,
    pub kind: &'static str,
    pub msg: String,
}

impl FieldError {
    fn new(field: &'static str, kind: &'static str, msg: impl Into<String>) -> Self {
        Self {
            loc: vec![Cow::Borrowed(field)],
            kind,
            msg: msg.into(),
        }
    }

    /// An error about the event as a whole (it is not an object, or not valid JSON).
    pub fn whole(kind: &'static str, msg: impl Into<String>) -> Self {
        Self {
            loc: Vec::new(),
            kind,
            msg: msg.into(),
        }
    }
}

/// A 128-bit hash of what the client sent (`event_type`, `source`, `timestamp`, payload
/// bytes), used to tell a retried event from a different event reusing an `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHash(pub u128);

/// A validated event, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The client's id; `None` when the server is to assign one.
    pub event_id: Option<String>,
    pub event_type: String,
    pub source: Option<String>,
    /// The client's timestamp, if it sent one.
    pub timestamp: Option<OffsetDateTime>,
    /// The payload's JSON text, always an object (`{}` when absent).
    pub payload: String,
    pub content_hash: ContentHash,
}

impl NewEvent {
    /// About how many bytes the event takes as stored JSON (its strings and payload, plus
    /// the fixed fields): what a tenant's storage use counts.
    pub fn approximate_json_len(&self) -> usize {
        const FIXED: usize = 160;
        FIXED
            + self.event_id.as_ref().map_or(36, String::len)
            + self.event_type.len()
            + self.source.as_ref().map_or(0, String::len)
            + self.payload.len()
    }

    /// Validates one event, reporting every problem.
    ///
    /// # Errors
    /// Each field that breaks a rule of API.md gives one [`FieldError`].
    pub fn from_wire(wire: &WireEvent<'_>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let event_id = match wire.event_id {
            None => None,
            Some(raw) => bounded_string(raw, "event_id", 1, &mut errors),
        };
        let event_type = match wire.event_type {
            None => {
                errors.push(FieldError::new("event_type", "missing", "field required"));
                None
            }
            Some(raw) => bounded_string(raw, "event_type", 1, &mut errors),
        };
        let source = match wire.source {
            None => None,
            Some(raw) => bounded_string(raw, "source", 0, &mut errors),
        };
        let timestamp = match wire.timestamp {
            None => None,
            Some(raw) => match serde_json::from_str::<Cow<'_, str>>(raw.get()) {
                Ok(text) => match parse_timestamp(&text).and_then(storable_timestamp) {
                    Some(ts) => Some(ts),
                    None => {
                        errors.push(FieldError::new(
                            "timestamp",
                            "datetime_parsing",
                            "must be an RFC 3339 date-time between years 0000 and 9999 in UTC, e.g. 2025-10-02T12:00:00Z",
                        ));
                        None
                    }
                },
                Err(_) => {
                    errors.push(FieldError::new(
                        "timestamp",
                        "string_type",
                        "must be a string",
                    ));
                    None
                }
            },
        };
        let payload = match wire.payload {
            None => Some("{}"),
            Some(raw) => check_payload(raw.get(), &mut errors),
        };
        match (event_type, payload) {
            (Some(event_type), Some(payload)) if errors.is_empty() => {
                let payload = payload.to_owned();
                let content_hash = content_hash(
                    &event_type,
                    source.as_deref(),
                    timestamp,
                    payload.as_bytes(),
                );
                Ok(Self {
                    event_id,
                    event_type,
                    source,
                    timestamp,
                    payload,
                    content_hash,
                })
            }
            _ => Err(errors),
        }
    }

    /// Parses and validates one event from its JSON text (an NDJSON line, for instance).
    ///
    /// # Errors
    /// The text is not a JSON object, or a field breaks a rule.
    pub fn from_json(text: &str) -> Result<Self, Vec<FieldError>> {
        match serde_json::from_str::<WireEvent<'_>>(text) {
            Ok(wire) => Self::from_wire(&wire),
            Err(err) => Err(vec![wire_error(&err)]),
        }
    }
}

/// Describes why an item could not even be read as an event object.
pub fn wire_error(err: &serde_json::Error) -> FieldError {
    if err.is_data() {
        let msg = err.to_string();
        // serde says "invalid type: integer `5`, expected struct WireEvent"; say it plainly.
        if msg.contains("expected struct WireEvent") {
            return FieldError::whole("model_type", "each event must be a JSON object");
        }
        FieldError::whole("value_error", strip_position(&msg))
    } else {
        FieldError::whole("json_invalid", strip_position(&err.to_string()))
    }
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(at) => msg[..at].to_owned(),
        None => msg.to_owned(),
    }
}

/// Returns the timestamp as stored: in UTC years 0000-9999 (RFC 3339 checks only the local
/// date, so `0000-01-01T00:00:00+01:00` is year -1 in UTC), to the nanosecond the client
/// sent. (Event ids carry it to the microsecond, which orders events; the stored JSON, dedup
/// and search keep every digit, so `…00.000000001Z` is not `…00Z`.)
fn storable_timestamp(ts: OffsetDateTime) -> Option<OffsetDateTime> {
    let utc = OffsetDateTime::from_unix_timestamp(ts.unix_timestamp()).ok()?;
    if !(0..=9999).contains(&utc.year()) {
        return None;
    }
    utc.replace_nanosecond(ts.nanosecond()).ok()
}

/// Parses an RFC 3339 date-time.
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Formats a date-time as RFC 3339 in UTC, as every response shows it.
pub fn format_timestamp(ts: OffsetDateTime) -> String {
    ts.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .expect("a UTC date-time between years 0 and 9999 always formats as RFC 3339")
}

fn bounded_string(
    raw: &RawValue,
    field: &'static str,
    min_chars: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw.get()) else {
        errors.push(FieldError::new(field, "string_type", "must be a string"));
        return None;
    };
    let chars = text.chars().count();
    if chars < min_chars {
        errors.push(FieldError::new(
            field,
            "string_too_short",
            "must not be empty",
        ));
        return None;
    }
    if chars > MAX_STRING_CHARS {
        errors.push(FieldError::new(
            field,
            "string_too_long",
            format!("must be at most {MAX_STRING_CHARS} characters, got {chars}"),
        ));
        return None;
    }
    if text.contains('\0') {
        errors.push(FieldError::new(
            field,
            "string_invalid",
            "must not contain NUL characters",
        ));
        return None;
    }
    Some(text.into_owned())
}

fn check_payload<'a>(text: &'a str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    if text == "null" {
        return Some("{}");
    }
    if !text.starts_with('{') {
        errors.push(FieldError::new(
            "payload",
            "dict_type",
            "must be a JSON object",
        ));
        return None;
    }
    let scan = scan(text);
    if scan.number_out_of_range {
        errors.push(FieldError::new(
            "payload",
            "number_out_of_range",
            "holds a number too large for a 64-bit float (such as 1e999)",
        ));
        return None;
    }
    if scan.lone_surrogate {
        errors.push(FieldError::new(
            "payload",
            "string_unicode",
            "holds a \\u escape of a lone UTF-16 surrogate, which is not a character",
        ));
        return None;
    }
    if scan.nul {
        errors.push(FieldError::new(
            "payload",
            "string_invalid",
            "holds a NUL character (\\u0000), which cannot be stored",
        ));
        return None;
    }
    let depth = scan.depth;
    if depth > MAX_PAYLOAD_DEPTH {
        errors.push(FieldError::new(
            "payload",
            "too_deep",
            format!("must not nest objects and arrays more than {MAX_PAYLOAD_DEPTH} levels deep, got {depth}"),
        ));
        return None;
    }
    if let Some(path) = scan.duplicate_key {
        let key = path.last().cloned().unwrap_or_default();
        let mut loc = vec![Cow::Borrowed("payload")];
        loc.extend(path.into_iter().map(Cow::Owned));
        errors.push(FieldError {
            loc,
            kind: "duplicate_key",
            msg: format!(
                "has the key {key:?} twice in one object; readers disagree on which one counts"
            ),
        });
        return None;
    }
    Some(text)
}

/// One open object or array of the scan. An object's keys so far are `Keys::keys[start..]`;
/// `current` is the index there of the key whose value is being read; `index` counts an
/// array's elements.
struct Frame {
    object: bool,
    start: usize,
    current: usize,
    expecting_key: bool,
    index: usize,
}

/// The keys of every open object, innermost last, each with a hash, in one stack that is
/// reused from object to object (no allocation per object). A key is looked for among its
/// object's keys by hash; an object of more than 64 keys gets a set of its hashes, so no
/// payload costs quadratic time.
#[derive(Default)]
struct Keys<'a> {
    keys: Vec<(u64, Cow<'a, str>)>,
    /// For the large open objects: (their frame's start, the hashes of their keys).
    large: Vec<(usize, std::collections::HashSet<u64>)>,
}

impl<'a> Keys<'a> {
    /// Adds a key to the object whose keys start at `start`; false if it is there already.
    fn insert(&mut self, start: usize, key: Cow<'a, str>) -> bool {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        let count = self.keys.len() - start;
        let seen = if count > 64 {
            let set = match self.large.last_mut() {
                Some((at, set)) if *at == start => set,
                _ => {
                    let set = self.keys[start..].iter().map(|(hash, _)| *hash).collect();
                    self.large.push((start, set));
                    &mut self.large.last_mut().expect("just pushed").1
                }
            };
            !set.insert(hash)
                && self.keys[start..]
                    .iter()
                    .any(|(other, name)| *other == hash && *name == key)
        } else {
            self.keys[start..]
                .iter()
                .any(|(other, name)| *other == hash && *name == key)
        };
        if !seen {
            self.keys.push((hash, key));
        }
        !seen
    }

    /// Forgets the keys of the object that started at `start` (it closed).
    fn close(&mut self, start: usize) {
        self.keys.truncate(start);
        if self.large.last().is_some_and(|(at, _)| *at == start) {
            self.large.pop();
        }
    }
}

/// The path to a key just found twice: the key each enclosing object is in, the index each
/// enclosing array is at, then the key.
fn path_to(frames: &[Frame], keys: &Keys<'_>, key: &str) -> Vec<String> {
    let mut path: Vec<String> = frames
        .iter()
        .map(|frame| {
            if frame.object {
                keys.keys
                    .get(frame.current)
                    .map(|(_, name)| name.to_string())
                    .unwrap_or_default()
            } else {
                frame.index.to_string()
            }
        })
        .collect();
    path.push(key.to_owned());
    path
}

/// What one pass over a payload's JSON text finds.
struct Scan {
    /// The deepest nesting of `{`/`[`, ignoring brackets in strings.
    depth: usize,
    /// A number that overflows f64, which no reader could load later.
    number_out_of_range: bool,
    /// A `\u` escape of a lone UTF-16 surrogate, which is not a character.
    lone_surrogate: bool,
    /// A `\u0000` escape: no store can keep it in text (PostgreSQL refuses it), so no store
    /// takes it, and both answer alike.
    nul: bool,
    /// The path of the first key found twice in one object (readers disagree on which copy
    /// counts: the store's dedup and search use the last, some parsers the first).
    duplicate_key: Option<Vec<String>>,
}

/// Scans valid JSON text once. Iterative, so no input can exhaust the stack.
fn scan(text: &str) -> Scan {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    let mut number_out_of_range = false;
    let mut lone_surrogate = false;
    let mut nul = false;
    let mut low_surrogate_at = usize::MAX;
    let mut frames: Vec<Frame> = Vec::new();
    let mut keys = Keys::default();
    let mut key_start: Option<usize> = None;
    let mut duplicate_key = None;
    let bytes = text.as_bytes();
    let hex4 = |from: usize| -> Option<u32> {
        let digits = text.get(from..from + 4)?;
        u32::from_str_radix(digits, 16).ok()
    };
    for (at, &byte) in bytes.iter().enumerate() {
        if in_string {
            match byte {
                b'u' if escaped => {
                    escaped = false;
                    match hex4(at + 1) {
                        Some(0) => nul = true,
                        Some(0xD800..=0xDBFF) => {
                            let pair = bytes.get(at + 5..at + 7) == Some(b"\\u".as_slice())
                                && matches!(hex4(at + 7), Some(0xDC00..=0xDFFF));
                            if pair {
                                low_surrogate_at = at + 6;
                            } else {
                                lone_surrogate = true;
                            }
                        }
                        Some(0xDC00..=0xDFFF) if at != low_surrogate_at => lone_surrogate = true,
                        _ => {}
                    }
                }
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if let Some(start) = key_start.take()
                        && duplicate_key.is_none()
                    {
                        let raw = &text[start..at];
                        // Two spellings of one key (`"a"`, `"\u0061"`) are one key.
                        let key = if raw.contains('\\') {
                            serde_json::from_str::<String>(&text[start - 1..=at])
                                .map_or(Cow::Borrowed(raw), Cow::Owned)
                        } else {
                            Cow::Borrowed(raw)
                        };
                        let last = frames.len().saturating_sub(1);
                        if let Some(frame) = frames.get_mut(last).filter(|frame| frame.object) {
                            if keys.insert(frame.start, key.clone()) {
                                frame.current = keys.keys.len() - 1;
                            } else {
                                duplicate_key = Some(path_to(&frames[..last], &keys, &key));
                            }
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                if let Some(frame) = frames.last_mut()
                    && frame.object
                    && frame.expecting_key
                {
                    frame.expecting_key = false;
                    key_start = Some(at + 1);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth <= MAX_PAYLOAD_DEPTH + 1 {
                    frames.push(Frame {
                        object: byte == b'{',
                        start: keys.keys.len(),
                        current: usize::MAX,
                        expecting_key: true,
                        index: 0,
                    });
                }
            }
            b'}' | b']' => {
                if depth <= MAX_PAYLOAD_DEPTH + 1
                    && let Some(frame) = frames.pop()
                {
                    keys.close(frame.start);
                }
                depth = depth.saturating_sub(1);
            }
            b',' => {
                if let Some(frame) = frames.last_mut() {
                    if frame.object {
                        frame.expecting_key = true;
                    } else {
                        frame.index += 1;
                    }
                }
            }
            b'0'..=b'9' | b'-'
                if at == 0
                    || !matches!(
                        bytes[at - 1],
                        b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E'
                    ) =>
            {
                // The start of a number: a long one without exponent may still overflow f64.
                let end = bytes[at..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E'))
                    .map_or(bytes.len(), |p| at + p);
                if end - at > 300 && text[at..end].parse::<f64>().is_ok_and(f64::is_infinite) {
                    number_out_of_range = true;
                }
            }
            b'e' | b'E' => {
                // Outside strings, an e is an exponent: check the number it belongs to.
                let start = bytes[..at]
                    .iter()
                    .rposition(|b| !matches!(b, b'0'..=b'9' | b'.' | b'-' | b'+'))
                    .map_or(0, |p| p + 1);
                let end = bytes[at + 1..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+'))
                    .map_or(bytes.len(), |p| at + 1 + p);
                if text[start..end].parse::<f64>().is_ok_and(f64::is_infinite) {
                    number_out_of_range = true;
                }
            }
            _ => {}
        }
    }
    Scan {
        depth: deepest,
        number_out_of_range,
        lone_surrogate,
        nul,
        duplicate_key,
    }
}

fn content_hash(
    event_type: &str,
    source: Option<&str>,
    timestamp: Option<OffsetDateTime>,
    payload: &[u8],
) -> ContentHash {
    let mut hasher = Xxh3::new();
    hasher.update(event_type.as_bytes());
    hasher.update(&[0]);
    match source {
        Some(source) => {
            hasher.update(&[1]);
            hasher.update(source.as_bytes());
            hasher.update(&[0]);
        }
        None => hasher.update(&[2]),
    }
    match timestamp {
        Some(ts) => {
            hasher.update(&[1]);
            hasher.update(&ts.unix_timestamp_nanos().to_be_bytes());
        }
        None => hasher.update(&[2]),
    }
    hasher.update(payload);
    ContentHash(hasher.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(json: &str) -> Vec<(String, &'static str)> {
        match NewEvent::from_json(json) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| (e.loc.join("."), e.kind))
                .collect(),
        }
    }

    #[test]
    fn a_complete_event_is_valid() {
        let event = NewEvent::from_json(
            r#"{"event_id":"e1","event_type":"order.created","source":"checkout",
                "timestamp":"2025-10-02T12:00:00Z","payload":{"total":99.5}}"#,
        )
        .unwrap();
        assert_eq!(event.event_id.as_deref(), Some("e1"));
        assert_eq!(event.payload, r#"{"total":99.5}"#);
    }

    #[test]
    fn a_missing_event_type_is_reported_with_its_location() {
        assert_eq!(
            errors_of(r#"{"event_id":"e1"}"#),
            vec![("event_type".into(), "missing")]
        );
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors =
            errors_of(r#"{"event_id":"","event_type":5,"timestamp":"yesterday","payload":[1]}"#);
        assert_eq!(
            errors,
            vec![
                ("event_id".into(), "string_too_short"),
                ("event_type".into(), "string_type"),
                ("timestamp".into(), "datetime_parsing"),
                ("payload".into(), "dict_type"),
            ]
        );
    }

    #[test]
    fn strings_over_256_characters_are_refused() {
        let long = "é".repeat(257);
        let json = format!(r#"{{"event_type":"{long}"}}"#);
        assert_eq!(
            errors_of(&json),
            vec![("event_type".into(), "string_too_long")]
        );
        let fits = "é".repeat(256);
        assert!(errors_of(&format!(r#"{{"event_type":"{fits}"}}"#)).is_empty());
    }

    #[test]
    fn deep_payloads_are_refused_and_brackets_in_strings_do_not_count() {
        let deep = format!(
            r#"{{"event_type":"t","payload":{}{}}}"#,
            "{\"a\":".repeat(70),
            "1".to_owned() + &"}".repeat(70)
        );
        assert_eq!(errors_of(&deep), vec![("payload".into(), "too_deep")]);
        assert_eq!(scan(r#"{"a":"[[[[{{{{\"]]"}"#).depth, 1);
    }

    #[test]
    fn numbers_beyond_f64_are_refused_but_big_ones_pass() {
        assert_eq!(
            errors_of(r#"{"event_type":"t","payload":{"n":1e999}}"#),
            vec![("payload".into(), "number_out_of_range")]
        );
        assert_eq!(
            errors_of(r#"{"event_type":"t","payload":{"n":-2.5E-999}}"#),
            Vec::<(String, &str)>::new()
        );
        assert!(errors_of(r#"{"event_type":"t","payload":{"n":1.5e300,"s":"1e999"}}"#).is_empty());
    }

    #[test]
    fn long_integers_beyond_f64_are_refused() {
        let huge = format!(
            r#"{{"event_type":"t","payload":{{"n":1{}}}}}"#,
            "0".repeat(400)
        );
        assert_eq!(
            errors_of(&huge),
            vec![("payload".into(), "number_out_of_range")]
        );
        let big = format!(
            r#"{{"event_type":"t","payload":{{"n":-1{}}}}}"#,
            "0".repeat(30)
        );
        assert!(errors_of(&big).is_empty());
    }

    #[test]
    fn lone_surrogates_are_refused_but_pairs_pass() {
        assert_eq!(
            errors_of(r#"{"event_type":"t","payload":{"s":"\ud800"}}"#),
            vec![("payload".into(), "string_unicode")]
        );
        assert_eq!(
            errors_of(r#"{"event_type":"t","payload":{"s":"x\udc00"}}"#),
            vec![("payload".into(), "string_unicode")]
        );
        assert!(
            errors_of(r#"{"event_type":"t","payload":{"s":"\ud83d\ude00 ok \u00e9"}}"#).is_empty()
        );
        assert!(
            errors_of(r#"{"event_type":"t","payload":{"s":"\\ud800"}}"#).is_empty(),
            "an escaped backslash"
        );
    }

    #[test]
    fn timestamps_outside_utc_years_0_to_9999_are_refused_and_others_kept_to_the_nanosecond() {
        for ts in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
            let json = format!(r#"{{"event_type":"t","timestamp":"{ts}"}}"#);
            assert_eq!(
                errors_of(&json),
                vec![("timestamp".into(), "datetime_parsing")],
                "{ts}"
            );
        }
        let event =
            NewEvent::from_json(r#"{"event_type":"t","timestamp":"2025-10-02T12:00:00.1234567Z"}"#)
                .unwrap();
        assert_eq!(event.timestamp.unwrap().nanosecond(), 123_456_700);
    }

    #[test]
    fn a_non_object_event_is_refused_whole() {
        assert_eq!(errors_of("5"), vec![(String::new(), "model_type")]);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let errors = errors_of(r#"{"event_type":"a","event_type":"b"}"#);
        assert_eq!(errors.len(), 1);
    }

    /// A second opinion on duplicate keys: serde's own reading of the JSON, with a set per
    /// object, against random payloads with few distinct keys (so duplicates are common),
    /// nesting, arrays and escaped spellings.
    #[test]
    fn the_payload_scan_finds_exactly_the_duplicate_keys_serde_finds() {
        struct Duplicates(bool);
        impl<'de> serde::Deserialize<'de> for Duplicates {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = Duplicates;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("JSON")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Duplicates, A::Error> {
                        let mut keys = std::collections::HashSet::new();
                        let mut found = false;
                        while let Some(key) = map.next_key::<String>()? {
                            found |= !keys.insert(key);
                            found |= map.next_value::<Duplicates>()?.0;
                        }
                        Ok(Duplicates(found))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<Duplicates, A::Error> {
                        let mut found = false;
                        while let Some(item) = seq.next_element::<Duplicates>()? {
                            found |= item.0;
                        }
                        Ok(Duplicates(found))
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Duplicates, E> {
                        Ok(Duplicates(false))
                    }
                    fn visit_i64<E>(self, _: i64) -> Result<Duplicates, E> {
                        Ok(Duplicates(false))
                    }
                    fn visit_u64<E>(self, _: u64) -> Result<Duplicates, E> {
                        Ok(Duplicates(false))
                    }
                    fn visit_f64<E>(self, _: f64) -> Result<Duplicates, E> {
                        Ok(Duplicates(false))
                    }
                    fn visit_str<E>(self, _: &str) -> Result<Duplicates, E> {
                        Ok(Duplicates(false))
                    }
                    fn visit_unit<E>(self) -> Result<Duplicates, E> {
                        Ok(Duplicates(false))
                    }
                }
                d.deserialize_any(Visit)
            }
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        fn value(next: &mut impl FnMut(u64) -> u64, depth: u32, out: &mut String) {
            match if depth > 4 { 3 } else { next(5) } {
                0 | 1 => {
                    out.push('{');
                    for i in 0..next(6) {
                        if i > 0 {
                            out.push(',');
                        }
                        // Few names, some spelled with an escape: duplicates are common.
                        out.push_str(
                            ["\"a\"", "\"b\"", "\"\\u0061\"", "\"a\\\"\"", "\"c\""]
                                [next(5) as usize],
                        );
                        out.push(':');
                        value(next, depth + 1, out);
                    }
                    out.push('}');
                }
                2 => {
                    out.push('[');
                    for i in 0..next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        value(next, depth + 1, out);
                    }
                    out.push(']');
                }
                _ => out
                    .push_str(["1", "\"a\"", "\"{\\\"a\\\":1}\"", "null", "[]"][next(5) as usize]),
            }
        }
        let (mut with, mut without) = (0, 0);
        for _ in 0..20_000 {
            let mut payload = String::from("{");
            for i in 0..next(5) {
                if i > 0 {
                    payload.push(',');
                }
                payload.push_str(["\"a\"", "\"b\"", "\"\\u0061\""][next(3) as usize]);
                payload.push(':');
                value(&mut next, 1, &mut payload);
            }
            payload.push('}');
            let expected = serde_json::from_str::<Duplicates>(&payload).unwrap().0;
            let found = scan(&payload).duplicate_key.is_some();
            assert_eq!(found, expected, "{payload}");
            if expected {
                with += 1;
            } else {
                without += 1;
            }
        }
        assert!(
            with > 1_000 && without > 1_000,
            "{with} with, {without} without"
        );
    }

    #[test]
    fn duplicate_keys_inside_the_payload_are_refused_with_their_path() {
        let loc = |json: &str| -> Option<Vec<String>> {
            let errors = NewEvent::from_json(json).err()?;
            assert_eq!(errors.len(), 1, "{json}");
            assert_eq!(errors[0].kind, "duplicate_key");
            Some(errors[0].loc.iter().map(|part| part.to_string()).collect())
        };
        assert_eq!(
            loc(r#"{"event_type":"t","payload":{"a":1,"a":2}}"#),
            Some(vec!["payload".into(), "a".into()])
        );
        assert_eq!(
            loc(r#"{"event_type":"t","payload":{"x":[1,{"b":{"c":1,"d":2,"c":3}}]}}"#),
            Some(vec![
                "payload".into(),
                "x".into(),
                "1".into(),
                "b".into(),
                "c".into()
            ])
        );
        // One key spelled two ways.
        assert_eq!(
            loc(r#"{"event_type":"t","payload":{"a":1,"\u0061":2}}"#),
            Some(vec!["payload".into(), "a".into()])
        );
        // Not duplicates: the same key in sibling objects, a key equal to a value, many keys.
        assert_eq!(
            loc(r#"{"event_type":"t","payload":{"a":{"k":1},"b":{"k":1},"k":"k"}}"#),
            None
        );
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        assert_eq!(
            loc(&format!(
                r#"{{"event_type":"t","payload":{{{}}}}}"#,
                many.join(",")
            )),
            None
        );
        let twice = format!(
            r#"{{"event_type":"t","payload":{{{},"k42":0}}}}"#,
            many.join(",")
        );
        assert_eq!(loc(&twice), Some(vec!["payload".into(), "k42".into()]));
        assert_eq!(
            loc(r#"{"event_type":"t","payload":{"s":"{\"a\":1,\"a\":2}"}}"#),
            None
        );
    }

    #[test]
    fn same_instant_in_another_offset_hashes_the_same() {
        let a = NewEvent::from_json(r#"{"event_type":"t","timestamp":"2025-10-02T12:00:00Z"}"#)
            .unwrap();
        let b =
            NewEvent::from_json(r#"{"event_type":"t","timestamp":"2025-10-02T14:00:00+02:00"}"#)
                .unwrap();
        let c = NewEvent::from_json(r#"{"event_type":"t"}"#).unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        assert_ne!(a.content_hash, c.content_hash);
    }
}
