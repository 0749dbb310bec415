//! PostHog's capture API: `/batch/`, `/e/`, `/capture/` and `/i/v0/e/`, as PostHog's SDKs
//! send them. Only the host and the project API key change in the SDK's configuration (the
//! key is a tenant API key); each event then goes through the same rate limit and store call
//! as `/v1/events/batch`.
//!
//! | PostHog | PulseStream |
//! |---|---|
//! | `api_key` (or `token`) of the body or of the event; or `Authorization: Bearer` | a tenant API key |
//! | `uuid` | `event_id` (an SDK's retry is a duplicate, stored once) |
//! | `event` | `event_type` |
//! | `timestamp`, as sent | `timestamp` (else the time of receipt) |
//! | `properties.$lib` | `source` |
//! | the event, less `api_key`, `token` and `sent_at` | `payload` (`distinct_id` and `properties` included) |
//!
//! Every path takes every body shape PostHog's capture takes: `{"batch": [...]}`, one
//! event, or an array of events; gzip as `Content-Encoding: gzip` or as
//! `?compression=gzip-js` (posthog-js sends that without the header), and any content type
//! (the body must be JSON). Over the tenant's rate limit the answer is 429 with
//! `Retry-After`, which the SDKs retry — never a 200 that drops events.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use pulsestream_core::NewEvent;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::compat::{self, Converted, Counts, WireEvent, present};
use crate::AppState;
use crate::body::{BodyFormat, read_text_body};
use crate::error::ApiError;
use crate::openapi as doc;

/// The most events one request may carry.
pub const MAX_BATCH_EVENTS: usize = 2_500;

macro_rules! capture_endpoint {
    ($name:ident, $path:literal, $id:literal) => {
        #[doc = concat!("`POST ", $path, "`: PostHog capture.")]
        #[utoipa::path(
            post,
            path = $path,
            operation_id = $id,
            tag = "posthog",
            summary = "PostHog: capture events",
            description = "PostHog's capture API as PostHog's SDKs send it: `{\"api_key\": …, \
                \"batch\": [...]}`, one event, or an array of events; the project API key is a \
                tenant API key. Valid events are stored even when others are rejected.",
            params(("compression" = Option<String>, Query,
                description = "`gzip-js` or `gzip`: the body is gzipped (without Content-Encoding)")),
            request_body(content = Object, content_type = "application/json"),
            responses(
                (status = 200, description = "The valid events are stored", body = CaptureAnswer),
                (status = 400, response = doc::BadRequest),
                (status = 401, response = doc::Unauthorized),
                (status = 429, response = doc::RateLimited),
                (status = 503, response = doc::Unavailable),
            ),
            security(("bearerAuth" = [])),
        )]
        pub async fn $name(
            State(app): State<AppState>,
            RawQuery(query): RawQuery,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Response, ApiError> {
            ingest(&app, query.as_deref(), headers, body).await
        }
    };
}

capture_endpoint!(batch, "/batch/", "posthog_batch");
capture_endpoint!(e, "/e/", "posthog_e");
capture_endpoint!(capture, "/capture/", "posthog_capture");
capture_endpoint!(v0_e, "/i/v0/e/", "posthog_i_v0_e");

/// The answer to every capture endpoint: PostHog's `{"status": 1}` with the counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CaptureAnswer<'a> {
    /// `1`: the valid events are durably stored.
    status: u8,
    /// The counts; a rejected event's `id` is its `uuid`.
    #[serde(flatten)]
    counts: &'a Counts,
}

/// The body: `{"batch": [...]}` or one event (with `api_key`), or an array of events.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    batch: Option<&'a RawValue>,
    #[serde(borrow, default)]
    api_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

/// The fields of an event that the mapping and the checks read.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uuid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    api_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
}

/// `properties.distinct_id` and `properties.$lib`.
#[derive(Deserialize)]
struct Properties<'a> {
    #[serde(borrow, default)]
    distinct_id: Option<&'a RawValue>,
    #[serde(rename = "$lib", borrow, default)]
    lib: Option<Cow<'a, str>>,
}

async fn ingest(
    app: &AppState,
    query: Option<&str>,
    mut headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = OffsetDateTime::now_utc();
    // posthog-js gzips with `?compression=gzip-js` and no Content-Encoding, and may label
    // the JSON text/plain: read the body as what it is.
    let gzipped_by_query = query.is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "compression=gzip-js" || pair == "compression=gzip")
    });
    if gzipped_by_query && !headers.contains_key(header::CONTENT_ENCODING) {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let limit = app.config.body_limit_bytes;
    let body = read_text_body(&headers, body, limit, &[BodyFormat::Json])
        .await
        .map_err(compat::oversize_is_bad_request(limit))?;
    let text = body.text.trim_start();
    let (events, body_key): (Vec<&RawValue>, Option<Cow<'_, str>>) = if text.starts_with('[') {
        let events: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?;
        let key = events
            .first()
            .and_then(|first| serde_json::from_str::<Event<'_>>(first.get()).ok())
            .and_then(|first| first.api_key.or(first.token));
        (events, key)
    } else {
        let envelope: Envelope<'_> = serde_json::from_str(text)
            .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?;
        let key = envelope.api_key.or(envelope.token);
        match envelope.batch {
            Some(batch) => (
                serde_json::from_str(batch.get()).map_err(|_| {
                    ApiError::bad_request("invalid_batch", "`batch` must be an array of events")
                })?,
                key,
            ),
            None => (
                vec![
                    serde_json::from_str(text)
                        .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?,
                ],
                key,
            ),
        }
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Cow::Owned(token.trim().to_owned()));
    let key = bearer.or(body_key);
    let tenant_key = key.as_deref().map(str::to_owned);
    let tenant =
        compat::tenant_of_key(app, key, "`api_key` in the body, or a bearer token").await?;
    if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "a request holds 1 to {MAX_BATCH_EVENTS} events, got {}",
                events.len()
            ),
        ));
    }
    let mut converted = Converted::default();
    for (index, raw) in events.iter().enumerate() {
        let uuid = serde_json::from_str::<Event<'_>>(raw.get())
            .ok()
            .and_then(|event| event.uuid.map(Cow::into_owned));
        converted.push(index, uuid, convert(raw, tenant_key.as_deref()));
    }
    let carried = converted.carried;
    let outcome = compat::store(app, &tenant, "posthog", received_at, converted).await?;
    let answer = CaptureAnswer {
        status: 1,
        counts: &outcome.counts,
    };
    Ok(outcome.respond(answer, &tenant, carried))
}

/// One event as a PulseStream event, or why it cannot be stored.
fn convert(raw: &RawValue, tenant_key: Option<&str>) -> Result<NewEvent, (&'static str, String)> {
    let event: Event<'_> = serde_json::from_str(raw.get())
        .map_err(|err| ("invalid_json", format!("not an event object: {err}")))?;
    // An event may carry its own key; one of another project is not this tenant's to store.
    if let Some(own) = event.api_key.as_deref().or(event.token.as_deref())
        && Some(own) != tenant_key
    {
        return Err((
            "other_key",
            "the event carries another project's api_key".into(),
        ));
    }
    let mut fields: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|err| ("invalid_json", format!("not an event object: {err}")))?;
    let event_type = event
        .event
        .clone()
        .ok_or(("missing_field", "`event` is required".into()))?;
    let properties = event
        .properties
        .and_then(|properties| serde_json::from_str::<Properties<'_>>(properties.get()).ok());
    let distinct_id = fields.get("distinct_id").copied().or_else(|| {
        properties
            .as_ref()
            .and_then(|properties| properties.distinct_id)
    });
    if !present(distinct_id.as_ref()) {
        return Err((
            "missing_field",
            "`distinct_id` (or `properties.distinct_id`) is required".into(),
        ));
    }
    // The payload: the event as sent, less its key and the per-attempt `sent_at`.
    for volatile in ["api_key", "token", "sent_at"] {
        fields.remove(volatile);
    }
    let payload =
        serde_json::value::to_raw_value(&fields).map_err(|err| ("invalid", err.to_string()))?;
    let source = properties.and_then(|properties| properties.lib);
    WireEvent {
        event_id: event.uuid.as_deref(),
        event_type: &event_type,
        source: source.as_deref(),
        timestamp: event.timestamp.as_deref(),
        payload: &payload,
    }
    .check(["uuid", "event", "properties.$lib", "timestamp"])
}
