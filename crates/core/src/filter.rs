//! The search language's event filters, shared by search and by destinations.
//!
//! A payload path compares a JSON scalar with a string the way `GET /v1/events` does
//! (strings as text, numbers by value, booleans and null by their spelling), and full text
//! needs every term somewhere in the payload's strings and numbers, case-insensitively.
//! A destination's [`EventFilter`] uses the same rules, so "what search shows for
//! `source=web&payload.plan=pro`" is exactly "what a destination with that filter receives".

use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

/// Equality on a JSON path inside the payload: `payload.user.id=42`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadFilter {
    pub path: Vec<String>,
    pub value: String,
}

/// What a destination receives beside its `event_types`: every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<PayloadFilter>,
    /// Full text: every term must appear in the payload's strings or numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl EventFilter {
    /// Whether the payload must be parsed to decide.
    pub fn reads_payload(&self) -> bool {
        !self.payload.is_empty() || self.text.is_some()
    }

    /// Returns whether an event with this `source` and `payload` passes. `payload` is only
    /// looked at when [`reads_payload`](Self::reads_payload); pass `None` when it is not
    /// valid JSON (it then matches no payload filter).
    pub fn matches(&self, source: Option<&str>, payload: Option<&Value>) -> bool {
        if self.source.is_some() && self.source.as_deref() != source {
            return false;
        }
        if !self.reads_payload() {
            return true;
        }
        let Some(payload) = payload else {
            return false;
        };
        self.payload
            .iter()
            .all(|filter| path_equals(payload, filter))
            && self
                .text
                .as_deref()
                .is_none_or(|text| text_matches(payload, text))
    }
}

/// What orders a destination's deliveries: events with the same key are delivered in
/// ingest order, one key's events never overtaking each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderingKey {
    /// Every event of the destination: one ordered stream.
    Destination,
    /// Events of the same type.
    EventType,
    /// Events whose payload has the same value at this path (a missing value is a key of
    /// its own, shared by all events that lack it).
    Payload(Vec<String>),
}

impl OrderingKey {
    /// Parses `destination`, `event_type` or `payload.<path>`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "destination" => Some(Self::Destination),
            "event_type" => Some(Self::EventType),
            _ => {
                let path = text.strip_prefix("payload.")?;
                let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
                (!path.is_empty() && parts.iter().all(|part| !part.is_empty()))
                    .then_some(Self::Payload(parts))
            }
        }
    }

    /// The spelling [`parse`](Self::parse) reads.
    pub fn name(&self) -> String {
        match self {
            Self::Destination => "destination".into(),
            Self::EventType => "event_type".into(),
            Self::Payload(path) => format!("payload.{}", path.join(".")),
        }
    }

    /// The key of an event, as a 64-bit hash. Two different keys may share a hash: their
    /// events are then ordered together, which costs some parallelism and never order.
    pub fn of(&self, event_type: &str, payload: Option<&Value>) -> i64 {
        let hash = match self {
            Self::Destination => 0,
            Self::EventType => xxh3_64(event_type.as_bytes()),
            Self::Payload(path) => match payload.and_then(|payload| lookup(payload, path)) {
                // Numbers by value, like the filters: 1, 1.0 and 1e0 are one key.
                Some(Value::Number(number)) => match number.as_i64() {
                    Some(integer) => xxh3_64(format!("n{integer}").as_bytes()),
                    None => xxh3_64(format!("n{}", number.as_f64().unwrap_or(f64::NAN)).as_bytes()),
                },
                Some(Value::String(text)) => xxh3_64(format!("s{text}").as_bytes()),
                Some(other) => xxh3_64(format!("j{other}").as_bytes()),
                None => xxh3_64(b"missing"),
            },
        };
        hash as i64
    }

    /// Whether the payload must be parsed to find the key.
    pub fn reads_payload(&self) -> bool {
        matches!(self, Self::Payload(_))
    }
}

fn lookup<'a>(payload: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = payload;
    for segment in path {
        node = match node {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Whether the value at the filter's path equals its value.
pub fn path_equals(payload: &Value, filter: &PayloadFilter) -> bool {
    lookup(payload, &filter.path).is_some_and(|node| scalar_equals(node, &filter.value))
}

/// Compares a JSON scalar with a query-string value: strings as text, numbers by value,
/// booleans and null by their JSON spelling.
fn scalar_equals(node: &Value, wanted: &str) -> bool {
    match node {
        Value::String(text) => text == wanted,
        Value::Number(number) => match (number.as_i64(), wanted.parse::<i64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => match (number.as_f64(), wanted.parse::<f64>()) {
                (Some(a), Ok(b)) => a == b,
                _ => false,
            },
        },
        Value::Bool(flag) => wanted == if *flag { "true" } else { "false" },
        Value::Null => wanted == "null",
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// Whether two JSON values mean the same: objects whatever their key order, numbers by value
/// (`1`, `1.0`, `1e0` and `-0`/`0` are equal; integers exactly, other numbers as doubles), the
/// rule search uses for `payload.<path>=<number>`.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
                return a == b;
            }
            if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
                return a == b;
            }
            matches!((a.as_f64(), b.as_f64()), (Some(a), Some(b)) if a == b)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, value)| b.get(key).is_some_and(|other| same_json(value, other)))
        }
        _ => a == b,
    }
}

/// Whether every whitespace-separated term appears in the payload's strings or numbers,
/// case-insensitively, at the start of a word: where a value begins or after a character
/// that is not alphanumeric (`lovelace` and `ada@exa` find `Ada Lovelace <ada@example.com>`,
/// `ovelace` does not). A term that begins with a non-alphanumeric character may begin
/// anywhere. This is what an index of word starts can answer ([`text_index_starts`] and
/// [`text_query_prefix`] are the index's side of the same rule).
pub fn text_matches(payload: &Value, text: &str) -> bool {
    let haystack = payload_text(payload);
    text.split_whitespace()
        .all(|term| starts_a_word_in(&haystack, &term.to_lowercase()))
}

/// The payload's strings and numbers, lowercased, one per line: what full text reads.
pub fn payload_text(payload: &Value) -> String {
    let mut haystack = String::new();
    collect_text(payload, &mut haystack);
    haystack.to_lowercase()
}

fn collect_text(node: &Value, out: &mut String) {
    match node {
        Value::String(text) => {
            out.push_str(text);
            out.push('\n');
        }
        Value::Number(number) => {
            out.push_str(&number.to_string());
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|item| collect_text(item, out)),
        Value::Object(map) => map.values().for_each(|value| collect_text(value, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

fn starts_a_word_in(haystack: &str, term: &str) -> bool {
    let anywhere = !term.starts_with(char::is_alphanumeric);
    let mut from = 0;
    // Occurrences may overlap ("a-a" in "ba-a-a" starts a word only the second time).
    while let Some(found) = haystack[from..].find(term) {
        let at = from + found;
        if anywhere
            || haystack[..at]
                .chars()
                .next_back()
                .is_none_or(|before| !before.is_alphanumeric())
        {
            return true;
        }
        from = at + haystack[at..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// The longest text a full-text index keeps from one word start, in bytes; a longer rest of
/// the value is cut (at a character boundary), and a longer query term is looked up by its
/// first [`INDEX_QUERY_BYTES`].
pub const INDEX_START_BYTES: usize = 40;

/// The longest prefix a query looks up, short enough to lie inside every cut text it could
/// start.
pub const INDEX_QUERY_BYTES: usize = INDEX_START_BYTES - 4;

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a full-text index keeps for a payload: from every place where a word starts in one
/// of its lowercased strings and numbers, the rest of that value, cut to
/// [`INDEX_START_BYTES`]; each once. A `q` term matches the payload only if one of these
/// starts with [`text_query_prefix`] of the term.
pub fn text_index_starts(payload: &Value) -> Vec<String> {
    let text = payload_text(payload);
    let mut starts = Vec::new();
    for value in text.split('\n') {
        let mut previous_is_word = false;
        for (at, c) in value.char_indices() {
            let is_word = c.is_alphanumeric();
            if is_word && !previous_is_word {
                starts.push(cut(&value[at..], INDEX_START_BYTES).to_owned());
            }
            previous_is_word = is_word;
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// The prefix that one of an event's [`text_index_starts`] has when `term` matches it (see
/// [`text_matches`]): the lowercased term from its first letter or digit on (a term that
/// starts with punctuation matches anywhere, so what follows the punctuation starts a
/// word), cut to [`INDEX_QUERY_BYTES`]. `None` for a term without a letter or digit: no
/// index narrows it.
pub fn text_query_prefix(term: &str) -> Option<String> {
    let term = term.to_lowercase();
    let from = term.find(char::is_alphanumeric)?;
    Some(cut(&term[from..], INDEX_QUERY_BYTES).to_owned())
}

/// The keys under which a payload index holds every scalar of a payload: a hash of its path
/// and its value, numbers by value (as doubles), so that [`path_filter_keys`] of a filter
/// that matches the payload always includes one of them.
pub fn payload_index_keys(payload: &Value) -> Vec<u64> {
    let mut keys = Vec::new();
    let mut path = String::new();
    collect_keys(payload, &mut path, &mut keys);
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Separates path segments inside a key (a segment holding it only adds candidates).
const SEGMENT_SEPARATOR: char = '\u{1f}';

fn collect_keys(node: &Value, path: &mut String, keys: &mut Vec<u64>) {
    let descend = |segment: &str, child: &Value, path: &mut String, keys: &mut Vec<u64>| {
        let len = path.len();
        path.push(SEGMENT_SEPARATOR);
        path.push_str(segment);
        collect_keys(child, path, keys);
        path.truncate(len);
    };
    match node {
        Value::Object(map) => map
            .iter()
            .for_each(|(key, child)| descend(key, child, path, keys)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(n, child)| descend(&n.to_string(), child, path, keys)),
        Value::String(text) => keys.push(leaf_key(path, b's', text.as_bytes())),
        Value::Number(number) => {
            if let Some(value) = number.as_f64() {
                keys.push(number_key(path, value));
            }
        }
        Value::Bool(flag) => keys.push(leaf_key(path, b'b', &[u8::from(*flag)])),
        Value::Null => keys.push(leaf_key(path, b'z', &[])),
    }
}

fn leaf_key(path: &str, kind: u8, value: &[u8]) -> u64 {
    let mut bytes = Vec::with_capacity(path.len() + 2 + value.len());
    bytes.extend_from_slice(path.as_bytes());
    bytes.push(0);
    bytes.push(kind);
    bytes.extend_from_slice(value);
    xxh3_64(&bytes)
}

fn number_key(path: &str, value: f64) -> u64 {
    // -0 and 0 are one value.
    let value = if value == 0.0 { 0.0 } else { value };
    leaf_key(path, b'n', &value.to_bits().to_be_bytes())
}

/// The keys one of which an event's [`payload_index_keys`] holds when the filter matches
/// it: the value as a string, and as a number, boolean or null when it reads as one.
pub fn path_filter_keys(filter: &PayloadFilter) -> Vec<u64> {
    let mut path = String::new();
    for segment in &filter.path {
        path.push(SEGMENT_SEPARATOR);
        path.push_str(segment);
    }
    let wanted = filter.value.as_str();
    let mut keys = vec![leaf_key(&path, b's', wanted.as_bytes())];
    if let Ok(value) = wanted.parse::<f64>() {
        keys.push(number_key(&path, value));
    }
    match wanted {
        "true" => keys.push(leaf_key(&path, b'b', &[1])),
        "false" => keys.push(leaf_key(&path, b'b', &[0])),
        "null" => keys.push(leaf_key(&path, b'z', &[])),
        _ => {}
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_need_every_part() {
        let filter = EventFilter {
            source: Some("web".into()),
            payload: vec![PayloadFilter {
                path: vec!["plan".into()],
                value: "pro".into(),
            }],
            text: Some("ada".into()),
        };
        let payload = json!({"plan": "pro", "name": "Ada"});
        assert!(filter.matches(Some("web"), Some(&payload)));
        assert!(!filter.matches(Some("ios"), Some(&payload)));
        assert!(!filter.matches(None, Some(&payload)));
        assert!(!filter.matches(Some("web"), Some(&json!({"plan": "free", "name": "Ada"}))));
        assert!(!filter.matches(Some("web"), Some(&json!({"plan": "pro"}))));
        assert!(EventFilter::default().matches(None, None));
    }

    #[test]
    fn full_text_terms_start_a_word() {
        let payload = json!({"name": "Ada Lovelace", "email": "ada@example.com", "sku": "A-1",
            "order": "ba-a-a", "total": 12.5, "flag": true});
        let q = |text: &str| text_matches(&payload, text);
        assert!(q("lovelace"));
        assert!(q("LOVE"));
        assert!(q("ada@exa"));
        assert!(q("example.com"));
        assert!(q("a-1"));
        assert!(q("12.5"));
        assert!(
            q("-1"),
            "a term that starts with punctuation may start anywhere"
        );
        assert!(q("a-a"), "the second, overlapping occurrence starts a word");
        assert!(!q("ovelace"));
        assert!(!q("xample"));
        assert!(!q("true"), "booleans are not text");
        assert!(!q("name"), "keys are not text");
        assert!(!q("ada babbage"));
    }

    #[test]
    fn the_start_index_admits_every_text_match() {
        let long = "x".repeat(30) + "ÿ" + &"y".repeat(30);
        let payload = json!({"a": "Ada Lovelace <ada@example.com>", "n": [12.5, -3],
            "long": long, "i": "İstanbul", "id": "ord-1-0"});
        let starts = text_index_starts(&payload);
        let admitted = |term: &str| {
            text_query_prefix(term).is_none_or(|prefix| {
                starts
                    .iter()
                    .any(|start| start.starts_with(prefix.as_str()))
            })
        };
        for term in [
            "ada",
            "lovelace",
            "<ada@exa",
            "example.com>",
            "12.5",
            "-3",
            "İst",
            &long,
            &long[..35],
            &long[..38],
            "ord-1-0",
            "1-0",
            "-0",
        ] {
            assert!(text_matches(&payload, term), "{term}");
            assert!(
                admitted(term),
                "{term}: {:?} in {starts:?}",
                text_query_prefix(term)
            );
        }
        assert!(!admitted("babbage"));
        assert!(
            !admitted("ord-1-1"),
            "a term's words must follow each other"
        );
        assert_eq!(text_query_prefix("-Ada@exa"), Some("ada@exa".into()));
        assert_eq!(text_query_prefix("--"), None);
        assert!(starts.contains(&"lovelace <ada@example.com>".to_owned()));
    }

    #[test]
    fn payload_keys_hold_every_matching_filter() {
        let payload = json!({"user": {"id": 42, "name": "Ada", "vip": true, "nick": null},
            "items": [{"sku": "A-1"}], "zero": -0.0, "big": 9007199254740993u64});
        let keys = payload_index_keys(&payload);
        let filter = |path: &str, value: &str| PayloadFilter {
            path: path.split('.').map(str::to_owned).collect(),
            value: value.into(),
        };
        for (path, value) in [
            ("user.id", "42"),
            ("user.id", "42.0"),
            ("user.id", "4.2e1"),
            ("user.name", "Ada"),
            ("user.vip", "true"),
            ("user.nick", "null"),
            ("items.0.sku", "A-1"),
            ("zero", "0"),
            ("big", "9007199254740993"),
        ] {
            let filter = filter(path, value);
            assert!(path_equals(&payload, &filter), "{path}={value}");
            assert!(
                path_filter_keys(&filter)
                    .iter()
                    .any(|key| keys.contains(key)),
                "{path}={value}"
            );
        }
        for (path, value) in [
            ("user.id", "43"),
            ("user.name", "ada"),
            ("items.1.sku", "A-1"),
        ] {
            assert!(
                !path_filter_keys(&filter(path, value))
                    .iter()
                    .any(|key| keys.contains(key))
            );
        }
    }

    #[test]
    fn json_is_compared_by_meaning_and_numbers_by_value() {
        let same = |a: &str, b: &str| {
            same_json(
                &serde_json::from_str(a).unwrap(),
                &serde_json::from_str(b).unwrap(),
            )
        };
        assert!(same(
            r#"{"a":1.0,"b":1e2,"c":-0,"d":[0.5]}"#,
            r#"{"d":[5e-1],"c":0,"b":100,"a":1}"#
        ));
        assert!(same("-0.0", "0"));
        assert!(same("18446744073709551615", "18446744073709551615"));
        assert!(!same("9007199254740993", "9007199254740992"));
        assert!(!same(r#"{"a":1}"#, r#"{"a":2}"#));
        assert!(!same(r#"{"a":1}"#, r#"{"a":"1"}"#));
        assert!(!same(r#"{"a":1}"#, r#"{"a":1,"b":null}"#));
        assert!(!same("[1,2]", "[2,1]"));
    }

    #[test]
    fn ordering_keys_parse_and_compare_numbers_by_value() {
        assert_eq!(
            OrderingKey::parse("event_type"),
            Some(OrderingKey::EventType)
        );
        assert_eq!(
            OrderingKey::parse("payload.user.id"),
            Some(OrderingKey::Payload(vec!["user".into(), "id".into()]))
        );
        for bad in ["payload.", "payload.a..b", "user_id", ""] {
            assert_eq!(OrderingKey::parse(bad), None, "{bad}");
        }
        let key = OrderingKey::parse("payload.user").unwrap();
        let of = |payload: Value| key.of("t", Some(&payload));
        assert_eq!(of(json!({"user": 1})), of(json!({"user": 1.0})));
        assert_ne!(of(json!({"user": 1})), of(json!({"user": "1"})));
        assert_ne!(of(json!({"user": 1})), of(json!({"user": 2})));
        assert_eq!(of(json!({})), of(json!({"other": 1})));
        assert_eq!(
            OrderingKey::EventType.of("a", None),
            OrderingKey::EventType.of("a", None)
        );
        assert_ne!(
            OrderingKey::EventType.of("a", None),
            OrderingKey::EventType.of("b", None)
        );
    }
}
