//! CloudEvents 1.0 over HTTP: `POST /v1/cloudevents` in the three modes of the HTTP binding,
//! picked by `Content-Type`:
//!
//! - structured, `application/cloudevents+json`: one event, attributes and `data` in the body;
//! - batched, `application/cloudevents-batch+json`: a JSON array of such events;
//! - binary, any other type: attributes in `ce-*` headers (percent-encoded), the body is the
//!   event's `data` and its `Content-Type` the `datacontenttype`.
//!
//! Authenticated like the rest of `/v1` (`Authorization: Bearer <tenant API key>`). Each
//! CloudEvent becomes an ordinary event, through the same rate limit and store call:
//!
//! | CloudEvents | PulseStream |
//! |---|---|
//! | `source` + `id` (the spec's uniqueness key) | `event_id` = `source#id` (a `#` or `%` in `source` percent-encoded), so a resend is a duplicate |
//! | `type` | `event_type` |
//! | `time` | `timestamp` (else the time of receipt) |
//! | `source` | `source` |
//! | every attribute, extensions included, and `data` (JSON as JSON; anything else as `data_base64`) | `payload` |
//!
//! `datacontenttype` is left out of the payload when it is `application/json`, the default:
//! one event sent in structured mode and again in binary mode (where the SDKs put
//! `Content-Type: application/json`) is then the same event, a duplicate.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use base64::Engine;
use pulsestream_core::NewEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::compat::{self, Converted, Counts, WireEvent};
use crate::AppState;
use crate::auth::AuthTenant;
use crate::body::{BodyFormat, read_text_body};
use crate::error::ApiError;
use crate::openapi as doc;

/// The most events one batched request may carry.
pub const MAX_BATCH_EVENTS: usize = 1_000;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCHED: &str = "application/cloudevents-batch+json";

/// The answer: the counts, as the other compatible endpoints give them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CloudEventsAnswer<'a> {
    /// A rejected event's `id` is its `source#id`.
    #[serde(flatten)]
    counts: &'a Counts,
}

/// The attributes every CloudEvent has, as the mapping reads them.
#[derive(Deserialize)]
struct Attributes<'a> {
    #[serde(borrow, default)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
}

/// `POST /v1/cloudevents`.
#[utoipa::path(
    post,
    path = "/v1/cloudevents",
    operation_id = "cloudevents",
    tag = "events",
    summary = "CloudEvents 1.0: structured, batched or binary mode",
    description = "The CloudEvents HTTP binding. `application/cloudevents+json`: one event in \
        the body. `application/cloudevents-batch+json`: an array of events (valid ones are \
        stored even when others are not). Any other content type: binary mode, attributes in \
        `ce-*` headers and the body as `data`. `source` + `id` is the deduplication key \
        (`event_id` = `source#id`). 200 with the counts once the valid events are stored; \
        400 when none is valid.",
    request_body(content = Object, content_type = "application/cloudevents+json"),
    responses(
        (status = 200, description = "The valid events are stored", body = CloudEventsAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 413, response = doc::PayloadTooLarge),
        (status = 429, response = doc::RateLimited),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn post_cloudevents(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    mut headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = OffsetDateTime::now_utc();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let mode = match content_type.as_str() {
        STRUCTURED => Mode::Structured,
        BATCHED => Mode::Batched,
        _ => Mode::Binary,
    };
    // The body is read as text for the JSON modes (and binary mode with JSON data); other
    // binary data is kept as bytes.
    let limit = app.config.body_limit_bytes;
    let mut converted = Converted::default();
    match mode {
        Mode::Structured | Mode::Batched => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body = read_text_body(&headers, body, limit, &[BodyFormat::Json]).await?;
            let events: Vec<&RawValue> = if matches!(mode, Mode::Batched) {
                serde_json::from_str(&body.text).map_err(|err| {
                    ApiError::bad_request("invalid_json", format!("not a JSON array: {err}"))
                })?
            } else {
                vec![
                    serde_json::from_str(&body.text)
                        .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?,
                ]
            };
            if events.len() > MAX_BATCH_EVENTS {
                return Err(ApiError::bad_request(
                    "invalid_batch",
                    format!(
                        "a batch holds at most {MAX_BATCH_EVENTS} events, got {}",
                        events.len()
                    ),
                ));
            }
            for (index, raw) in events.iter().enumerate() {
                let (id, result) = structured(raw);
                converted.push(index, id, result);
            }
        }
        Mode::Binary => {
            let data = axum::body::to_bytes(body, limit)
                .await
                .map_err(|_| ApiError::too_large(format!("the body is over {limit} bytes")))?;
            let (id, result) = binary(&headers, &content_type, &data);
            converted.push(0, id, result);
        }
    }
    if converted.carried == 0 {
        return Err(ApiError::bad_request(
            "invalid_batch",
            "the batch holds no event",
        ));
    }
    let carried = converted.carried;
    let outcome = compat::store(&app, &tenant, "cloudevents", received_at, converted).await?;
    let answer = CloudEventsAnswer {
        counts: &outcome.counts,
    };
    Ok(outcome.respond(answer, &tenant, carried))
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Structured,
    Batched,
    Binary,
}

/// `source#id`, with `%` and `#` of the source percent-encoded so that the first `#` always
/// ends it.
fn event_id(source: &str, id: &str) -> String {
    let source = source.replace('%', "%25").replace('#', "%23");
    format!("{source}#{id}")
}

/// One structured-mode event: (its key, the event or why not).
fn structured(raw: &RawValue) -> (Option<String>, Result<NewEvent, (&'static str, String)>) {
    let Ok(attributes) = serde_json::from_str::<Attributes<'_>>(raw.get()) else {
        return (
            None,
            Err(("invalid_json", "an event must be a JSON object".into())),
        );
    };
    let key = match (&attributes.source, &attributes.id) {
        (Some(source), Some(id)) => Some(event_id(source, id)),
        _ => None,
    };
    let result = (|| {
        check(&attributes)?;
        let mut fields: BTreeMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|err| ("invalid_json", err.to_string()))?;
        // JSON is the default: one event sent in either mode is stored alike.
        if fields
            .get("datacontenttype")
            .and_then(|value| serde_json::from_str::<Cow<'_, str>>(value.get()).ok())
            .is_some_and(|value| is_json_default(&value))
        {
            fields.remove("datacontenttype");
        }
        let payload =
            serde_json::value::to_raw_value(&fields).map_err(|err| ("invalid", err.to_string()))?;
        to_event(&attributes, key.as_deref(), &payload)
    })();
    (key, result)
}

/// A binary-mode event: attributes from `ce-*` headers, the body as `data`.
fn binary(
    headers: &HeaderMap,
    content_type: &str,
    data: &[u8],
) -> (Option<String>, Result<NewEvent, (&'static str, String)>) {
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let Ok(value) = value.to_str() else {
            continue;
        };
        let decoded = percent_decode(value);
        fields.insert(attribute.to_owned(), Value::String(decoded));
    }
    let text = |name: &str| fields.get(name).and_then(Value::as_str).map(Cow::Borrowed);
    let attributes = Attributes {
        specversion: text("specversion"),
        id: text("id"),
        source: text("source"),
        kind: text("type"),
        time: text("time"),
    };
    let key = match (&attributes.source, &attributes.id) {
        (Some(source), Some(id)) => Some(event_id(source, id)),
        _ => None,
    };
    let result = (|| {
        check(&attributes)?;
        let mut payload = fields.clone();
        // JSON is the default: one event sent in either mode is stored alike.
        if !content_type.is_empty() && !is_json_default(content_type) {
            payload.insert("datacontenttype".into(), Value::String(content_type.into()));
        }
        let json_data = content_type.is_empty()
            || is_json_default(content_type)
            || content_type.ends_with("+json")
            || content_type == "text/json";
        match serde_json::from_slice::<Value>(data) {
            _ if data.is_empty() => {}
            Ok(value) if json_data => {
                payload.insert("data".into(), value);
            }
            _ => {
                payload.insert(
                    "data_base64".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                );
            }
        }
        let payload = serde_json::value::to_raw_value(&payload)
            .map_err(|err| ("invalid", err.to_string()))?;
        to_event(&attributes, key.as_deref(), &payload)
    })();
    (key, result)
}

/// Whether a `datacontenttype` (or binary mode's `Content-Type`) is the default JSON, with
/// or without parameters.
fn is_json_default(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The attributes the spec requires.
fn check(attributes: &Attributes<'_>) -> Result<(), (&'static str, String)> {
    for (name, value) in [
        ("specversion", &attributes.specversion),
        ("id", &attributes.id),
        ("source", &attributes.source),
        ("type", &attributes.kind),
    ] {
        if value.as_deref().is_none_or(str::is_empty) {
            return Err(("missing_field", format!("`{name}` is required")));
        }
    }
    if attributes.specversion.as_deref() != Some("1.0") {
        return Err((
            "invalid",
            format!(
                "specversion {:?} is not supported; send 1.0",
                attributes.specversion
            ),
        ));
    }
    Ok(())
}

fn to_event(
    attributes: &Attributes<'_>,
    event_id: Option<&str>,
    payload: &RawValue,
) -> Result<NewEvent, (&'static str, String)> {
    WireEvent {
        event_id,
        event_type: attributes.kind.as_deref().unwrap_or_default(),
        source: attributes.source.as_deref(),
        timestamp: attributes.time.as_deref(),
        payload,
    }
    .check(["source#id", "type", "source", "time"])
}

/// Decodes `%XX` escapes (the binding percent-encodes header values); anything that is not
/// a valid escape is kept as it is.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_keeps_source_and_id_apart() {
        assert_eq!(event_id("/shop", "1"), "/shop#1");
        assert_ne!(event_id("a#b", "c"), event_id("a", "b#c"));
        assert_eq!(event_id("a#b%", "c"), "a%23b%25#c");
    }

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode("caf%C3%A9%20bar"), "café bar");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
