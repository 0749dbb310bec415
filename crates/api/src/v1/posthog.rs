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

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use pulsestream_core::{NewEvent, Tenant};
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
                (status = 507, response = doc::InsufficientStorage),
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

/// The key an event carries: `api_key`, `token`, or (posthog-js) `properties.token`.
fn event_key(fields: &compat::Fields<'_>) -> Option<String> {
    let own = |fields: &compat::Fields<'_>| {
        compat::text(fields, "api_key")
            .ok()
            .flatten()
            .or_else(|| compat::text(fields, "token").ok().flatten())
            .map(Cow::into_owned)
    };
    own(fields).or_else(|| {
        let properties = compat::fields(fields.get("properties")?).ok()?;
        compat::text(&properties, "token")
            .ok()
            .flatten()
            .map(Cow::into_owned)
    })
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
            .and_then(|first| compat::fields(first).ok())
            .and_then(|first| event_key(&first));
        (events, key.map(Cow::Owned))
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
            None => {
                let event: &RawValue = serde_json::from_str(text)
                    .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?;
                let key = key.or_else(|| {
                    compat::fields(event)
                        .ok()
                        .and_then(|fields| event_key(&fields))
                        .map(Cow::Owned)
                });
                (vec![event], key)
            }
        }
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Cow::Owned(token.trim().to_owned()));
    let tenant = compat::tenant_of_key(
        app,
        [bearer, body_key],
        "`api_key` in the body (or an event's `properties.token`), or a bearer token",
    )
    .await?;
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
        let (uuid, fields) = compat::read(raw, "uuid");
        converted.push(
            index,
            uuid,
            fields.and_then(|fields| convert(fields, &tenant)),
        );
    }
    let carried = converted.carried;
    let outcome = compat::store(app, &tenant, "posthog", received_at, converted).await?;
    let answer = CaptureAnswer {
        status: 1,
        counts: &outcome.counts,
    };
    Ok(outcome.respond(answer, &tenant, carried))
}

/// One event (its members) as a PulseStream event, or why it cannot be stored.
fn convert(
    fields: compat::Fields<'_>,
    tenant: &Tenant,
) -> Result<NewEvent, (&'static str, String)> {
    // An event may carry its own key; one of another project is not this tenant's to store.
    compat::own_key(tenant, event_key(&fields).as_deref())?;
    let event_type =
        compat::text(&fields, "event")?.ok_or(("missing_field", "`event` is required".into()))?;
    let uuid = compat::text(&fields, "uuid")?;
    let timestamp = compat::text(&fields, "timestamp")?;
    let mut properties = match fields.get("properties") {
        Some(properties) if properties.get() != "null" => compat::fields(properties)
            .map_err(|_| ("invalid", "`properties` must be an object".to_owned()))?,
        _ => compat::Fields::new(),
    };
    if !present(fields.get("distinct_id")) && !present(properties.get("distinct_id")) {
        return Err((
            "missing_field",
            "`distinct_id` (or `properties.distinct_id`) is required".into(),
        ));
    }
    let source = compat::text(&properties, "$lib")?.map(Cow::into_owned);
    // The payload: the event as sent, less its key (posthog-js puts it in
    // `properties.token`) and the per-attempt `sent_at`.
    let cleaned_properties;
    // Rebound so it may also hold values of this function (`cleaned_properties`).
    let mut fields: compat::Fields<'_> = fields;
    if properties.remove("token").is_some() {
        cleaned_properties = serde_json::value::to_raw_value(&properties)
            .map_err(|err| ("invalid", err.to_string()))?;
        fields.insert("properties".to_owned(), &cleaned_properties);
    }
    for volatile in ["api_key", "token", "sent_at"] {
        fields.remove(volatile);
    }
    let payload =
        serde_json::value::to_raw_value(&fields).map_err(|err| ("invalid", err.to_string()))?;
    WireEvent {
        event_id: uuid.as_deref(),
        event_type: &event_type,
        source: source.as_deref(),
        timestamp: timestamp.as_deref(),
        payload: &payload,
    }
    .check(["uuid", "event", "properties.$lib", "timestamp"])
}
