//! `GET /openapi.json`: the API as an OpenAPI 3.1 document, generated from the code.
//!
//! Each handler carries its `#[utoipa::path(...)]` next to its code, and the wire types it
//! serializes derive `ToSchema`, so the document follows the code. This module holds the
//! rest: schemas of what handlers read as raw bodies or write by hand (events in and out,
//! the problem document), the reusable error responses, the `bearerAuth` scheme and
//! [`ApiDoc`]. The operations come from `crate::routes`, where each handler is registered
//! with `utoipa_axum::routes!`: routing a handler documents it.

use std::sync::LazyLock;

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, Modify, OpenApi, ToResponse, ToSchema};

use crate::error::ErrorItem;
use crate::v1::ingest::BatchResult;

/// What the document holds besides its operations, which `crate::routes` registers with
/// their handlers: the info, shared components, the security scheme and the tags.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "PulseStream",
        description = "Multi-tenant event ingestion: ingest events one by one or in batches, \
            read and search them, administer tenants and their API keys. Every error is an \
            RFC 9457 problem document (`application/problem+json`)."
    ),
    components(
        schemas(Problem, ErrorItem),
        responses(
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            RateLimited,
            InsufficientStorage,
            Unavailable,
        )
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "events", description = "Ingest and read a tenant's events (tenant API key)"),
        (name = "tenants", description = "Tenants and their API keys (admin token)"),
        (name = "segment", description = "Segment's HTTP Tracking API, for Segment, RudderStack and Jitsu SDKs (write key = tenant API key)"),
        (name = "posthog", description = "PostHog's capture API, for PostHog SDKs (project API key = tenant API key)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This API as an OpenAPI 3.1 document",
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
pub async fn openapi_json() -> impl IntoResponse {
    static DOC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(document);
    Json(&*DOC)
}

/// The whole document: [`ApiDoc`] with every operation that `crate::routes` serves, each
/// registered together with its handler (so nothing routed goes undocumented, and nothing
/// documented goes unrouted), and the `RateLimit-*` headers on tenant answers.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = crate::routes().split_for_parts();
    RateLimitHeaders.modify(&mut doc);
    doc
}

/// An event as a client sends it. Unknown fields are ignored.
#[derive(Debug, ToSchema)]
#[schema(examples(json!({
    "event_id": "order-1234-created",
    "event_type": "order.created",
    "source": "checkout",
    "timestamp": "2025-10-02T12:00:00Z",
    "payload": {"order_id": 1234, "total": 99.5}
})))]
pub struct EventIn {
    /// The client's id and the deduplication key, unique per tenant. When absent the
    /// server assigns one (and cannot deduplicate retries).
    #[schema(min_length = 1, max_length = 256)]
    pub event_id: Option<String>,
    #[schema(min_length = 1, max_length = 256)]
    pub event_type: String,
    #[schema(max_length = 256)]
    pub source: Option<String>,
    /// When the event happened; defaults to the time of receipt.
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    /// Any JSON object, up to the body limit; defaults to `{}`.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

/// The JSON body of `POST /v1/events/batch`.
#[derive(Debug, ToSchema)]
pub struct BatchIn {
    /// 1 to 1,000 events. A bad event is rejected alone; its errors' `loc` is
    /// `["body", "events", <index>, ...]`.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<EventIn>,
}

/// The NDJSON body of `POST /v1/events/batch`: one `EventIn` object per line, 1 to 1,000
/// lines (blank lines are skipped). A bad line's errors have `loc` `["body", <line index>, ...]`.
#[derive(Debug, ToSchema)]
#[schema(examples(json!(NDJSON_EXAMPLE)))]
pub struct NdjsonBatch(pub String);

const NDJSON_EXAMPLE: &str = concat!(
    r#"{"event_type": "page.viewed", "payload": {"path": "/"}}"#,
    "\n",
    r#"{"event_type": "page.viewed", "payload": {"path": "/pricing"}}"#,
    "\n",
);

/// A stored event: what the client sent, completed by the server.
#[derive(Debug, ToSchema)]
pub struct StoredEvent {
    /// The server's id. Ids sort by `timestamp`; treat them as opaque.
    pub id: String,
    /// The client's `event_id`, or `id` when the client sent none.
    pub event_id: String,
    pub event_type: String,
    #[schema(required = true)]
    pub source: Option<String>,
    /// The client's timestamp, or the time of receipt.
    #[schema(format = DateTime)]
    pub timestamp: String,
    #[schema(format = DateTime)]
    pub received_at: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// One page of `GET /v1/events`.
#[derive(Debug, ToSchema)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The order of `GET /v1/events`, by `timestamp`.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

/// A key's scope: `full` (everything a tenant may do) or `ingest` (send events only).
#[derive(Debug, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyScopeName {
    Full,
    Ingest,
}

/// The kinds of destination, for the schema of `POST /v1/destinations`.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKindName {
    Webhook,
    Nats,
    Amqp,
    Mqtt,
    Postgres,
}

/// The body encodings the ingest endpoints read.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    Gzip,
    Zstd,
    Identity,
}

/// The query parameters of `GET /v1/events` (besides `payload.<path>`, see the operation).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only the event with this `event_id`.
    pub event_id: Option<String>,
    /// Only events of any of these types; repeat the parameter for several.
    #[param(style = Form, explode)]
    pub event_type: Option<Vec<String>>,
    /// Only events from this source.
    pub source: Option<String>,
    /// Only events whose `timestamp` is at or after this RFC 3339 date-time.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only events whose `timestamp` is before this RFC 3339 date-time; later than `since`.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Full text over the payload's strings and numbers: every whitespace-separated term must
    /// appear, case-insensitively, where a word starts (a term that starts with punctuation may
    /// start anywhere). Visible the moment an event is acknowledged.
    pub q: Option<String>,
    /// Events per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub cursor: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(inline, default = "desc")]
    pub order: Option<SortOrder>,
}

/// The headers both ingest endpoints read.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IngestHeaders {
    /// Up to 255 characters, bare or quoted. Per tenant, kept 24 hours: a repeat of a
    /// finished request with the same key and body gets the first answer again, with
    /// `Idempotent-Replayed: true`; the same key with another body answers 422; the same key
    /// while the first request is in flight answers 409.
    #[param(rename = "Idempotency-Key", max_length = 255, nullable = false)]
    pub idempotency_key: Option<String>,
    /// `gzip` or `zstd` for a compressed body; the size limit applies after decompression.
    #[param(rename = "Content-Encoding", nullable = false, inline)]
    pub content_encoding: Option<BodyEncoding>,
}

/// An error (RFC 9457 problem details), sent as `application/problem+json`. Members other
/// than `type`, `title`, `status` and `detail` appear only where said.
#[derive(Debug, ToSchema)]
#[schema(examples(json!({
    "type": "/problems/validation",
    "title": "Validation failed",
    "status": 422,
    "detail": "1 error in the request body",
    "errors": [{"loc": ["body", "events", 5, "event_type"], "type": "missing", "msg": "field required"}]
})))]
pub struct Problem {
    /// `/problems/<code>`, one stable code per kind of error, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// 422 validation errors: every problem found, each located by `loc`.
    #[schema(nullable = false)]
    pub errors: Option<Vec<ErrorItem>>,
    /// 409 for an `event_id` stored with other content: the stored event's id.
    #[schema(nullable = false)]
    pub existing_id: Option<String>,
    /// 400 for JSON that does not parse: the line where it broke.
    #[schema(nullable = false)]
    pub line: Option<usize>,
    /// 400 for JSON that does not parse: the column where it broke.
    #[schema(nullable = false)]
    pub column: Option<usize>,
    /// 422 for a batch whose events were all rejected: 0.
    #[schema(nullable = false)]
    pub accepted: Option<usize>,
    /// 422 for a batch whose events were all rejected: 0.
    #[schema(nullable = false)]
    pub duplicates: Option<usize>,
    /// 422 for a batch whose events were all rejected: how many there were.
    #[schema(nullable = false)]
    pub rejected: Option<usize>,
    /// 422 for a batch whose events were all rejected: one result per event, as in a 207.
    #[schema(nullable = false, value_type = Option<Vec<BatchResult>>)]
    pub results: Option<Vec<serde_json::Value>>,
}

/// The body is not valid JSON or UTF-8, a compressed body is corrupt, or a header is
/// malformed; `detail` says where.
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct BadRequest(pub Problem);

/// Missing, unknown or revoked credentials.
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Unauthorized(pub Problem);

/// No such resource (for this tenant).
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct NotFound(pub Problem);

/// An event with this `event_id` is stored with different content (`existing_id` names
/// it), or a request with this `Idempotency-Key` is still in flight (retry after a moment).
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Conflict(pub Problem);

/// The body, decompressed, is over the limit (default 10 MiB); `detail` names the limit
/// and the size received.
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PayloadTooLarge(pub Problem);

/// A content type other than JSON (or NDJSON where accepted), or an unsupported
/// `Content-Encoding`.
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UnsupportedMediaType(pub Problem);

/// Well-formed JSON that breaks the schema (`errors` lists every problem with its `loc`),
/// bad query parameters, or a request that cannot be honoured as sent (a batch larger than
/// the tenant's burst, an `Idempotency-Key` reused with another body).
#[derive(Debug, ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct ValidationFailed(pub Problem);

/// The tenant's rate limit cannot cover the request now; nothing of it was stored.
#[derive(Debug, ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
)]
pub struct RateLimited(pub Problem);

/// Free disk space on the data directory is below `--min-free-disk`: nothing was stored.
#[derive(Debug, ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
)]
pub struct InsufficientStorage(pub Problem);

/// A dependency is unavailable or the server is shedding load; the request had no effect.
#[derive(Debug, ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
)]
pub struct Unavailable(pub Problem);

/// Declares `bearerAuth`, the scheme operations refer to in their `security`.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "`/v1/...`: a tenant API key. `/admin/...`: the admin token \
                 (`PULSESTREAM_ADMIN_TOKEN`).",
            ))
            .build();
        let basic = HttpBuilder::new()
            .scheme(HttpAuthScheme::Basic)
            .description(Some(
                "Segment endpoints: the write key (a tenant API key) as the user name, \
                 with an empty password.",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearerAuth", SecurityScheme::Http(scheme));
        components.add_security_scheme("basicAuth", SecurityScheme::Http(basic));
    }
}

/// Adds the `RateLimit-*` headers that every tenant (`/v1/...`) answer carries to the
/// success responses of those operations.
#[derive(Debug)]
struct RateLimitHeaders;

impl Modify for RateLimitHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let headers = [
            ("RateLimit-Limit", "The tenant's burst, in events"),
            ("RateLimit-Remaining", "Events the tenant may send now"),
            ("RateLimit-Reset", "Seconds until the budget is full again"),
        ];
        let policy = (
            "RateLimit-Policy",
            "`<events per minute>;w=60;burst=<burst>`",
        );
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/v1/") {
                continue;
            }
            for (_, operation) in operations_mut(item) {
                for (status, response) in &mut operation.responses.responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if !status.starts_with('2') {
                        continue;
                    }
                    for (name, description) in headers {
                        let header = HeaderBuilder::new()
                            .schema(
                                ObjectBuilder::new()
                                    .schema_type(Type::Integer)
                                    .minimum(Some(0)),
                            )
                            .description(Some(description))
                            .build();
                        response.headers.insert(name.into(), header);
                    }
                    let header = HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some(policy.1))
                        .build();
                    response.headers.insert(policy.0.into(), header);
                }
            }
        }
    }
}

/// The operations of a path item, with their lowercase methods.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|op| (method, op)))
}

/// The schema of [`ErrorItem::loc`]: field names and array indexes.
pub(crate) fn loc_schema() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new().schema_type(SchemaType::Array(vec![Type::String, Type::Integer])),
        )
        .description(Some(
            "Where: `body` or `query`, then field names and array indexes, e.g. \
             `[\"body\", \"events\", 5, \"event_type\"]`.",
        ))
        .examples([serde_json::json!(["body", "events", 5, "event_type"])])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_bearer_auth() {
        let doc = serde_json::to_value(document()).expect("serializes");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let secured = operation.get("security").is_some();
                let private =
                    !["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&path.as_str());
                assert_eq!(secured, private, "{method} {path}: security");
            }
        }
    }

    #[test]
    fn the_limits_in_the_document_are_the_code_s() {
        let doc = serde_json::to_value(document()).expect("serializes");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["BatchIn"]["properties"]["events"]["maxItems"],
            pulsestream_core::MAX_BATCH_EVENTS
        );
        assert_eq!(
            schemas["CreateTenant"]["properties"]["rate_limit_per_minute"]["default"],
            crate::admin::tenants::DEFAULT_RATE_LIMIT_PER_MINUTE
        );
    }

    /// The problem documents `ApiError` writes have only members that `Problem` declares.
    #[tokio::test]
    async fn problem_matches_what_api_error_writes() {
        use crate::error::ApiError;
        use http_body_util::BodyExt;

        let doc = serde_json::to_value(document()).expect("serializes");
        let properties = doc["components"]["schemas"]["Problem"]["properties"]
            .as_object()
            .expect("Problem properties")
            .clone();
        let errors = [
            ApiError::validation(
                "1 error",
                vec![ErrorItem {
                    loc: vec!["body".into(), 0.into()],
                    kind: "missing".into(),
                    msg: "field required".into(),
                }],
            ),
            ApiError::conflict("conflict", "taken").with_field("existing_id", "x"),
            crate::v1::ingest::json_syntax_error(
                &serde_json::from_str::<serde_json::Value>("{").expect_err("bad JSON"),
            ),
            ApiError::rate_limited("slow down", 1),
            ApiError::insufficient_storage("the disk is full", 30),
        ];
        for error in errors {
            let response = error.into_response();
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            for member in body.as_object().expect("object").keys() {
                assert!(properties.contains_key(member), "Problem lacks {member:?}");
            }
        }
    }
}
