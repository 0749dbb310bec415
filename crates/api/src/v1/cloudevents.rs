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
//! | `source` + `id` (the spec's uniqueness key) | `event_id` = `source#id` (a `#` or `%` in `source` percent-encoded), so a resend of JSON data is a duplicate |
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
use serde::Serialize;
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
struct Attributes<'a> {
    specversion: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
}

impl<'a> Attributes<'a> {
    /// The event's `source#id`, when it has both.
    fn key(&self) -> Option<String> {
        Some(event_id(self.source.as_deref()?, self.id.as_deref()?))
    }

    /// Reads them from a structured event's members; an attribute that is not a string is
    /// `invalid`, naming it.
    fn of(fields: &compat::Fields<'a>) -> Result<Self, (&'static str, String)> {
        Ok(Self {
            specversion: compat::text(fields, "specversion")?,
            id: compat::text(fields, "id")?,
            source: compat::text(fields, "source")?,
            kind: compat::text(fields, "type")?,
            time: compat::text(fields, "time")?,
        })
    }
}

/// One structured-mode event, as [`check`] takes it: `specversion` `1.0`, and `id`, `source`
/// and `type` as non-empty strings; the other attributes and `data` as the spec has them.
#[derive(Debug)]
pub struct CloudEvent;

impl utoipa::PartialSchema for CloudEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let text = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
        };
        ObjectBuilder::new()
            .property(
                "specversion",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["1.0"])),
            )
            .property("id", text())
            .property("source", text())
            .property("type", text())
            .required("specversion")
            .required("id")
            .required("source")
            .required("type")
            .build()
            .into()
    }
}

impl utoipa::ToSchema for CloudEvent {}

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
    request_body(content = CloudEvent, content_type = "application/cloudevents+json"),
    responses(
        (status = 200, description = "The valid events are stored", body = CloudEventsAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 413, response = doc::PayloadTooLarge),
        (status = 429, response = doc::RateLimited),
        (status = 507, response = doc::InsufficientStorage),
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
    let full_content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let content_type = full_content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
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
            // The body is the event's data, kept as sent: no content coding is undone here.
            if headers
                .get(header::CONTENT_ENCODING)
                .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"))
            {
                return Err(ApiError::unsupported_media_type(
                    "binary-mode CloudEvents take no Content-Encoding: send the data as it is, or use structured mode",
                ));
            }
            let data = axum::body::to_bytes(body, limit).await.map_err(|err| {
                let too_long = std::error::Error::source(&err)
                    .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
                if too_long {
                    ApiError::too_large(format!("the body is over {limit} bytes"))
                        .with_field("limit_bytes", limit)
                } else {
                    ApiError::bad_request(
                        "body_read",
                        "the request body could not be read to its end",
                    )
                }
            })?;
            let (id, result) = binary(&headers, &content_type, &full_content_type, &data);
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
    let parsed = compat::fields(raw).and_then(|fields| Ok((Attributes::of(&fields)?, fields)));
    let (attributes, mut fields) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return (None, Err(err)),
    };
    let key = attributes.key();
    let result = (|| {
        check(&attributes)?;
        // JSON is the default: one event sent in either mode is stored alike.
        if compat::text(&fields, "datacontenttype")?.is_some_and(|value| is_json_default(&value)) {
            fields.remove("datacontenttype");
        }
        let payload =
            serde_json::value::to_raw_value(&fields).map_err(|err| ("invalid", err.to_string()))?;
        to_event(&attributes, key.as_deref(), &payload)
    })();
    (key, result)
}

/// A binary-mode event: attributes from `ce-*` headers, the body as `data`: JSON data as
/// the JSON sent (its bytes kept, as structured mode keeps them), text as a string, anything
/// else as `data_base64`. `content_type` is the media type alone, `full_content_type` with its
/// parameters (what `datacontenttype` keeps).
fn binary(
    headers: &HeaderMap,
    content_type: &str,
    full_content_type: &str,
    data: &[u8],
) -> (Option<String>, Result<NewEvent, (&'static str, String)>) {
    let mut attributes_sent: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let Ok(value) = value.to_str() else {
            continue;
        };
        attributes_sent.insert(attribute.to_owned(), percent_decode(value));
    }
    let text = |name: &str| {
        attributes_sent
            .get(name)
            .map(|value| Cow::Borrowed(value.as_str()))
    };
    let attributes = Attributes {
        specversion: text("specversion"),
        id: text("id"),
        source: text("source"),
        kind: text("type"),
        time: text("time"),
    };
    let key = attributes.key();
    let result = (|| {
        check(&attributes)?;
        let invalid = |err: serde_json::Error| ("invalid", err.to_string());
        let mut payload: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
        for (name, value) in &attributes_sent {
            payload.insert(
                name.clone(),
                serde_json::value::to_raw_value(value).map_err(invalid)?,
            );
        }
        // JSON is the default: one event sent in either mode is stored alike.
        if !full_content_type.is_empty() && !is_json_default(content_type) {
            payload.insert(
                "datacontenttype".into(),
                serde_json::value::to_raw_value(full_content_type).map_err(invalid)?,
            );
        }
        let json_data = content_type.is_empty()
            || is_json_default(content_type)
            || content_type.ends_with("+json")
            || content_type == "text/json";
        let utf8 = std::str::from_utf8(data).ok();
        if !data.is_empty() {
            let value = match utf8 {
                Some(text) if json_data => {
                    let json: &RawValue = serde_json::from_str(text).map_err(|err| {
                        (
                            "invalid",
                            format!("the data is not the JSON its type says: {err}"),
                        )
                    })?;
                    Some(("data", json.to_owned()))
                }
                Some(text) if content_type.starts_with("text/") => Some((
                    "data",
                    serde_json::value::to_raw_value(text).map_err(invalid)?,
                )),
                _ => None,
            };
            let (name, value) = match value {
                Some(value) => value,
                None => (
                    "data_base64",
                    serde_json::value::to_raw_value(
                        &base64::engine::general_purpose::STANDARD.encode(data),
                    )
                    .map_err(invalid)?,
                ),
            };
            payload.insert(name.into(), value);
        }
        let payload = serde_json::value::to_raw_value(&payload).map_err(invalid)?;
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
