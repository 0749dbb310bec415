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

/// Whether every whitespace-separated term appears in the payload's strings or numbers.
pub fn text_matches(payload: &Value, text: &str) -> bool {
    let mut haystack = String::new();
    collect_text(payload, &mut haystack);
    let haystack = haystack.to_lowercase();
    text.split_whitespace()
        .all(|term| haystack.contains(&term.to_lowercase()))
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
