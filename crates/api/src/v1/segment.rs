//! The Segment HTTP Tracking API: `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
//! `/v1/group`, `/v1/alias`, `/v1/batch` and `/v1/import`, as Segment's SDKs (and
//! RudderStack's and Jitsu's, which speak the same) send them. Only the host and the key
//! change in the SDK's configuration; every PulseStream guarantee holds, since each message
//! becomes an ordinary event and goes through the same rate limit and the same store call.
//!
//! | Segment | PulseStream |
//! |---|---|
//! | the write key (HTTP Basic user name, `Authorization: Bearer`, `X-Write-Key` or the body's `writeKey`) | a tenant API key |
//! | `messageId` | `event_id` (so an SDK's retry is a duplicate, stored once) |
//! | `event` of a `track`; the `type` of the other calls | `event_type` |
//! | `timestamp`, else `originalTimestamp`, as sent | `timestamp` (else the time of receipt) |
//! | `context.library.name` | `source` |
//! | the whole message, less `writeKey` and `sentAt` | `payload` |
//!
//! Timestamps are kept as sent, not corrected for the client's clock skew: the correction
//! uses the time of receipt, so a retried message would get another timestamp and read as
//! a conflict instead of a duplicate. `sentAt` and the write key are left out of the payload
//! for the same reason and because a key is a secret.
//!
//! Answers are what the SDKs expect: 200 `{"success": true}` once the valid messages are
//! durably stored (with the counts, the rejected messages, and a `PulseStream-Rejected`
//! header, since SDKs ignore the body); 400 for a body that cannot be read or has no valid
//! message (SDKs do not retry it); 401 for a missing or unknown key; 429 with `Retry-After`
//! over the tenant's rate limit (SDKs retry it); 503 while the store cannot write.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use base64::Engine;
use pulsestream_core::{NewEvent, Tenant};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::compat::{self, Converted, Counts, WireEvent, present};
use crate::AppState;
use crate::body::{BodyFormat, read_text_body};
use crate::error::ApiError;
use crate::openapi as doc;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, SchemaType, Type,
};
use utoipa::openapi::{RefOr, Schema};

/// The most messages one batch may carry, as Segment allows.
pub const MAX_BATCH_MESSAGES: usize = 2_500;

/// The Segment call types, each with the field it requires besides `userId` or
/// `anonymousId`.
const CALLS: [(&str, Option<&str>); 6] = [
    ("track", Some("event")),
    ("identify", None),
    ("page", None),
    ("screen", None),
    ("group", Some("groupId")),
    ("alias", Some("previousId")),
];

/// A field that must be given: any JSON but `null` and `""` (what [`compat::present`] takes).
fn given() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![
            Type::String,
            Type::Number,
            Type::Integer,
            Type::Boolean,
            Type::Object,
            Type::Array,
        ]))
        .min_length(Some(1))
        .build()
}

/// An object that has `field`, given.
fn requires(field: &str, schema: Object) -> Object {
    ObjectBuilder::new()
        .property(field, schema)
        .required(field)
        .build()
}

/// What a message of `call` must have, as [`message`] checks it: `userId` or `anonymousId`,
/// and the call's own field (`event`, a string, on track; `groupId` on group; `previousId`
/// on alias). Everything else is the message as Segment's SDKs send it.
fn message_schema(call: &str) -> RefOr<Schema> {
    let mut all = AllOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Object).build())
        .item(
            AnyOfBuilder::new()
                .item(requires("userId", given()))
                .item(requires("anonymousId", given())),
        );
    match CALLS.iter().find(|(name, _)| *name == call) {
        Some(("track", Some(field))) => {
            let text = ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .build();
            all = all.item(requires(field, text));
        }
        Some((_, Some(field))) => all = all.item(requires(field, given())),
        _ => {}
    }
    RefOr::T(Schema::AllOf(all.build()))
}

/// The body schemas of the single-message endpoints, one per call.
macro_rules! message_schemas {
    ($($name:ident => $call:literal),* $(,)?) => {$(
        #[doc = concat!("A Segment `", $call, "` message.")]
        #[derive(Debug)]
        pub struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                message_schema($call)
            }
        }
        impl utoipa::ToSchema for $name {}
    )*};
}

message_schemas!(
    SegmentTrack => "track",
    SegmentIdentify => "identify",
    SegmentPage => "page",
    SegmentScreen => "screen",
    SegmentGroup => "group",
    SegmentAlias => "alias",
);

/// `{"batch": [1 to 2,500 messages, each with its "type"], "context": {…}}`; a message that
/// is not valid is rejected alone in the answer, so the items are any objects here.
#[derive(Debug)]
pub struct SegmentBatch;

impl utoipa::PartialSchema for SegmentBatch {
    fn schema() -> RefOr<Schema> {
        let messages = ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::Object))
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH_MESSAGES));
        ObjectBuilder::new()
            .property("batch", messages)
            .required("batch")
            .build()
            .into()
    }
}

impl utoipa::ToSchema for SegmentBatch {}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    /// One message of this type (`/v1/track`, …).
    Single(&'static str),
    /// `{"batch": [...]}` (`/v1/batch`, `/v1/import`).
    Batch,
}

macro_rules! single_endpoint {
    ($name:ident, $call:literal, $summary:literal, $body:ty) => {
        #[doc = concat!("`POST /v1/", $call, "`: one Segment `", $call, "` message.")]
        #[utoipa::path(
            post,
            path = concat!("/v1/", $call),
            operation_id = concat!("segment_", $call),
            tag = "segment",
            summary = $summary,
            description = "Segment's HTTP Tracking API: the message as a Segment SDK sends it, \
                authenticated by the write key (a tenant API key) as the HTTP Basic user name, \
                a bearer token, `X-Write-Key` or the body's `writeKey`.",
            request_body(content = $body, content_type = "application/json"),
            responses(
                (status = 200, description = "Stored (or a duplicate of a stored message)", body = SegmentAnswer),
                (status = 400, response = doc::BadRequest),
                (status = 401, response = doc::Unauthorized),
                (status = 429, response = doc::RateLimited),
                (status = 507, response = doc::InsufficientStorage),
                (status = 503, response = doc::Unavailable),
            ),
            security(("basicAuth" = []), ("bearerAuth" = [])),
        )]
        pub async fn $name(
            State(app): State<AppState>,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Response, ApiError> {
            ingest(&app, &headers, body, Endpoint::Single($call))
                .await
                .map_err(ApiError::with_segment_members)
        }
    };
}

single_endpoint!(track, "track", "Segment: track an event", SegmentTrack);
single_endpoint!(
    identify,
    "identify",
    "Segment: identify a user",
    SegmentIdentify
);
single_endpoint!(page, "page", "Segment: a page view", SegmentPage);
single_endpoint!(screen, "screen", "Segment: a screen view", SegmentScreen);
single_endpoint!(
    group,
    "group",
    "Segment: associate a user with a group",
    SegmentGroup
);
single_endpoint!(
    alias,
    "alias",
    "Segment: alias one user id to another",
    SegmentAlias
);

/// `POST /v1/batch`: up to 2,500 Segment messages.
#[utoipa::path(
    post,
    path = "/v1/batch",
    operation_id = "segment_batch",
    tag = "segment",
    summary = "Segment: a batch of messages",
    description = "`{\"batch\": [...], \"context\": {...}}` as Segment's SDKs send it: each \
        message has its `type`; a batch-level `context` applies to messages without their \
        own. Valid messages are stored even when others are rejected; the answer lists the \
        rejected ones and counts them in the `PulseStream-Rejected` header.",
    request_body(content = SegmentBatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The valid messages are stored", body = SegmentAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 429, response = doc::RateLimited),
        (status = 507, response = doc::InsufficientStorage),
        (status = 503, response = doc::Unavailable),
    ),
    security(("basicAuth" = []), ("bearerAuth" = [])),
)]
pub async fn batch(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(&app, &headers, body, Endpoint::Batch)
        .await
        .map_err(ApiError::with_segment_members)
}

/// `POST /v1/import`: the same as `/v1/batch` (Segment's Ruby SDK posts here).
#[utoipa::path(
    post,
    path = "/v1/import",
    operation_id = "segment_import",
    tag = "segment",
    summary = "Segment: a batch of messages (the same as /v1/batch)",
    request_body(content = SegmentBatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The valid messages are stored", body = SegmentAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 429, response = doc::RateLimited),
        (status = 507, response = doc::InsufficientStorage),
        (status = 503, response = doc::Unavailable),
    ),
    security(("basicAuth" = []), ("bearerAuth" = [])),
)]
pub async fn import(
    state: State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    batch(state, headers, body).await
}

/// The answer to every Segment endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SegmentAnswer<'a> {
    /// Always `true` in a 200: the valid messages are durably stored.
    success: bool,
    /// The counts; a rejected message's `id` is its `messageId`.
    #[serde(flatten)]
    counts: &'a Counts,
}

/// The body of `/v1/batch`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    batch: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<Cow<'a, str>>,
}

/// `context.library.name`.
#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow, default)]
    library: Option<Library<'a>>,
}

#[derive(Deserialize)]
struct Library<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

async fn ingest(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let received_at = OffsetDateTime::now_utc();
    let limit = app.config.segment.max_batch_bytes;
    let body = read_text_body(headers, body, limit, &[BodyFormat::Json])
        .await
        .map_err(compat::oversize_is_bad_request(limit))?;
    let (messages, context, body_key) = match endpoint {
        Endpoint::Batch => {
            let envelope: Envelope<'_> = serde_json::from_str(&body.text)
                .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?;
            let batch = envelope.batch.ok_or_else(|| {
                ApiError::bad_request("invalid_batch", "the body needs a `batch` array")
            })?;
            let messages: Vec<&RawValue> = serde_json::from_str(batch.get()).map_err(|_| {
                ApiError::bad_request("invalid_batch", "`batch` must be an array of messages")
            })?;
            (messages, envelope.context, envelope.write_key)
        }
        Endpoint::Single(_) => {
            let message: &RawValue = serde_json::from_str(&body.text)
                .map_err(|err| ApiError::bad_request("invalid_json", err.to_string()))?;
            let key = compat::fields(message)
                .ok()
                .and_then(|fields| compat::text(&fields, "writeKey").ok().flatten())
                .map(|key| Cow::Owned(key.into_owned()));
            (vec![message], None, key)
        }
    };
    let tenant = authenticate(app, headers, body_key).await?;
    if messages.is_empty() || messages.len() > MAX_BATCH_MESSAGES {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "a batch holds 1 to {MAX_BATCH_MESSAGES} messages, got {}",
                messages.len()
            ),
        ));
    }
    let max_message = app.config.segment.max_message_bytes;
    let mut converted = Converted::default();
    for (index, raw) in messages.iter().enumerate() {
        let (message_id, fields) = compat::read(raw, "messageId");
        let result = if raw.get().len() > max_message {
            Err((
                "too_large",
                format!(
                    "the message is {} bytes, over the limit of {max_message}",
                    raw.get().len()
                ),
            ))
        } else {
            fields.and_then(|fields| convert(fields, endpoint, context, &tenant))
        };
        converted.push(index, message_id, result);
    }
    let carried = converted.carried;
    let outcome = compat::store(app, &tenant, "segment", received_at, converted).await?;
    let answer = SegmentAnswer {
        success: true,
        counts: &outcome.counts,
    };
    Ok(outcome.respond(answer, &tenant, carried))
}

/// The tenant of the write key: HTTP Basic user name, bearer token, `X-Write-Key`, or the
/// body's `writeKey`, in that order.
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    body_key: Option<Cow<'_, str>>,
) -> Result<Tenant, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '));
    let basic = authorization
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, credentials)| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let user = decoded
                .split_once(':')
                .map_or(decoded.as_str(), |(user, _)| user);
            Some(Cow::Owned(user.to_owned()))
        });
    let bearer = authorization
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Cow::Owned(token.trim().to_owned()));
    let header_key = headers
        .get("x-write-key")
        .and_then(|value| value.to_str().ok())
        .map(|key| Cow::Owned(key.to_owned()));
    compat::tenant_of_key(
        app,
        [basic, bearer, header_key, body_key],
        "the write key: the HTTP Basic user name, a bearer token, X-Write-Key or writeKey",
    )
    .await
}

/// One message (its members) as an event, or why it cannot be stored.
fn convert<'a>(
    fields: compat::Fields<'a>,
    endpoint: Endpoint,
    batch_context: Option<&'a RawValue>,
    tenant: &Tenant,
) -> Result<NewEvent, (&'static str, String)> {
    compat::own_key(tenant, compat::text(&fields, "writeKey")?.as_deref())?;
    let kind = compat::text(&fields, "type")?;
    let message_id = compat::text(&fields, "messageId")?;
    let timestamp = match compat::text(&fields, "timestamp")? {
        Some(timestamp) => Some(timestamp),
        None => compat::text(&fields, "originalTimestamp")?,
    };
    let event = compat::text(&fields, "event")?;
    let call = match (endpoint, kind.as_deref()) {
        (Endpoint::Single(call), _) => call,
        (Endpoint::Batch, Some(kind)) => CALLS
            .iter()
            .map(|(call, _)| *call)
            .find(|call| *call == kind)
            .ok_or((
                "unknown_type",
                format!("`type` {kind:?} is not a Segment call"),
            ))?,
        (Endpoint::Batch, None) => return Err(("missing_field", "`type` is required".into())),
    };
    let present = |name: &str| present(fields.get(name));
    if !present("userId") && !present("anonymousId") {
        return Err((
            "missing_field",
            "`userId` or `anonymousId` is required".into(),
        ));
    }
    if let Some((_, Some(required))) = CALLS.iter().find(|(name, _)| *name == call)
        && !present(required)
    {
        return Err((
            "missing_field",
            format!("`{required}` is required on {call}"),
        ));
    }
    let event_type = match call {
        "track" => event.ok_or(("missing_field", "`event` is required on track".into()))?,
        other => Cow::Borrowed(other),
    };
    // What the payload keeps: the message as sent, less what changes between retries
    // (`sentAt`) or must not be stored (`writeKey`); the batch's context when it has none.
    let type_value: Box<RawValue> =
        serde_json::value::to_raw_value(call).map_err(|err| ("invalid", err.to_string()))?;
    // Rebound so it may also hold values of this function (`type_value`).
    let mut fields: compat::Fields<'_> = fields;
    fields.remove("writeKey");
    fields.remove("sentAt");
    fields.insert("type".to_owned(), &type_value);
    if let Some(context) = batch_context {
        fields.entry("context".to_owned()).or_insert(context);
    }
    let source = fields
        .get("context")
        .and_then(|context| serde_json::from_str::<Context<'_>>(context.get()).ok())
        .and_then(|context| context.library)
        .and_then(|library| library.name)
        .map(Cow::into_owned);
    let payload =
        serde_json::value::to_raw_value(&fields).map_err(|err| ("invalid", err.to_string()))?;
    WireEvent {
        event_id: message_id.as_deref(),
        event_type: &event_type,
        source: source.as_deref(),
        timestamp: timestamp.as_deref(),
        payload: &payload,
    }
    .check(["messageId", "event", "context.library.name", "timestamp"])
}
