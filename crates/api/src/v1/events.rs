//! `POST /v1/events`, `POST /v1/events/batch`, `GET /v1/events/{id}` and `GET /v1/events`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pulsestream_core::{EventId, NewEvent, Tenant, parse_timestamp};
use pulsestream_store::{
    AppendBatch, AppendStatus, Counts, Cursor, Order, PayloadFilter, SearchQuery,
};
use time::OffsetDateTime;
use xxhash_rust::xxh3::Xxh3;

use super::idempotency::{self, Idempotency};
use super::ingest::{BatchResponse, Checked, Endpoint, SingleAnswer};
use super::rate_limit;
use crate::AppState;
use crate::auth::AuthTenant;
use crate::body::{BodyFormat, TextBody, read_text_body};
use crate::error::{ApiError, ErrorItem};
use crate::extract::{Path, Query};
use crate::observe::RequestFacts;
use crate::openapi as doc;

/// `POST /v1/events`: one event.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    summary = "Ingest one event",
    description = "Stores the event durably; a 2xx answer means it survives a crash and is \
        already visible to reads. `event_id` deduplicates: the same `event_id` with the same \
        content answers 200 `duplicate` with the original id, with different content 409.",
    params(doc::IngestHeaders),
    request_body(content = doc::EventIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored", body = SingleAnswer, headers(
            ("Location" = String, description = "`/v1/events/{id}`"),
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 200, description = "Already stored with the same content (`status: duplicate`)",
            body = SingleAnswer, headers(
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 409, response = doc::Conflict),
        (status = 413, response = doc::PayloadTooLarge),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::ValidationFailed),
        (status = 429, response = doc::RateLimited),
        (status = 507, response = doc::InsufficientStorage),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn post_event(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = OffsetDateTime::now_utc();
    ingest(&app, &tenant, &headers, body, received_at, Endpoint::Single).await
}

/// `POST /v1/events/batch`: up to 1,000 events, as JSON or NDJSON.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = "events",
    summary = "Ingest up to 1,000 events",
    description = "Each event is validated and stored on its own merits: the valid ones are \
        stored even when others are not. `results` has one entry per input event, in input \
        order. 200 when nothing was rejected, 207 when some events were, 422 when all were \
        or when the envelope itself is wrong. The whole request costs as many events of the \
        rate limit as it carries.",
    params(doc::IngestHeaders),
    request_body(
        description = "`{\"events\": [...]}`, or the events as NDJSON, one per line",
        content(
            (doc::BatchIn = "application/json"),
            (doc::NdjsonBatch = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 200, description = "Every event stored or duplicate", body = BatchResponse,
            headers(
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 207, description = "Some events were rejected; the others are stored",
            body = BatchResponse, headers(
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 409, response = doc::Conflict),
        (status = 413, response = doc::PayloadTooLarge),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::ValidationFailed),
        (status = 429, response = doc::RateLimited),
        (status = 507, response = doc::InsufficientStorage),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn post_batch(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = OffsetDateTime::now_utc();
    ingest(&app, &tenant, &headers, body, received_at, Endpoint::Batch).await
}

/// The path shared by both ingest endpoints: validate, settle the idempotency key, take the
/// events from the rate limit, store the valid ones in one durable commit, answer.
async fn ingest(
    app: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: Body,
    received_at: OffsetDateTime,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let body = read_text_body(
        headers,
        body,
        app.config.body_limit_bytes,
        endpoint.formats(),
    )
    .await?;
    let mut checked = Checked::new(endpoint, &body).inspect_err(|err| {
        // A single event refused whole was one event rejected; a batch's bad envelope is not.
        if endpoint == Endpoint::Single && err.status() == StatusCode::UNPROCESSABLE_ENTITY {
            app.count_events(
                tenant.id,
                Counts {
                    rejected: 1,
                    ..Counts::default()
                },
            );
        }
    })?;
    let request_hash = request_hash(endpoint, &body);
    let guard = match idempotency::begin(app, tenant.id, headers, request_hash).await? {
        Idempotency::Replay(record) => {
            let mut response = checked
                .respond(&record.statuses)
                .unwrap_or_else(IntoResponse::into_response);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Idempotency::Claimed(guard) => Some(guard),
        Idempotency::Absent => None,
    };
    // A request costs every event it carries, rejected ones included; a replay costs nothing.
    let carried = checked.carried();
    // Short of disk: refuse before the budget is charged.
    app.disk.check_write()?;
    let decision = rate_limit::admit(app, tenant, carried as u32)
        .await
        .inspect_err(|_| {
            app.count_events(
                tenant.id,
                Counts {
                    rate_limited: carried as u64,
                    ..Counts::default()
                },
            );
        })?;
    let events = checked.take_events();
    let sizes: Vec<usize> = events.iter().map(NewEvent::approximate_json_len).collect();
    let statuses = if events.is_empty() {
        Vec::new()
    } else {
        let batch = AppendBatch {
            tenant: tenant.id,
            events,
            received_at,
            idempotency: guard.as_ref().map(|guard| guard.claim.clone()),
        };
        app.events.append_batch(batch).await?.statuses
    };
    drop(guard);
    let accepted = statuses
        .iter()
        .filter(|status| matches!(status, AppendStatus::Accepted(_)))
        .count();
    let duplicates = statuses
        .iter()
        .filter(|status| matches!(status, AppendStatus::Duplicate(_)))
        .count();
    app.count_events(
        tenant.id,
        Counts {
            accepted: accepted as u64,
            duplicates: duplicates as u64,
            rejected: (carried - accepted - duplicates) as u64,
            stored_bytes: accepted_bytes(&statuses, &sizes) as u64,
            ..Counts::default()
        },
    );
    let facts = RequestFacts {
        tenant: Some(tenant.id),
        events: Some(carried),
    };
    checked.respond(&statuses).map(|mut response| {
        response.extensions_mut().insert(decision);
        response.extensions_mut().insert(facts);
        response
    })
}

/// The approximate bytes of the events of a request that were stored now.
pub(crate) fn accepted_bytes(statuses: &[AppendStatus], sizes: &[usize]) -> usize {
    statuses
        .iter()
        .zip(sizes)
        .filter(|(status, _)| matches!(status, AppendStatus::Accepted(_)))
        .map(|(_, size)| size)
        .sum()
}

/// Hashes what makes two requests "the same" for an `Idempotency-Key`: the endpoint, the
/// body's format and its (decompressed) text.
fn request_hash(endpoint: Endpoint, body: &TextBody) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(match (endpoint, body.format) {
        (Endpoint::Single, _) => b"single",
        (Endpoint::Batch, BodyFormat::Json) => b"batch:j",
        (Endpoint::Batch, BodyFormat::Ndjson) => b"batch:n",
    });
    hasher.update(body.text.as_bytes());
    hasher.digest128()
}

/// `GET /v1/events/{id}`.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    summary = "Read one event",
    params(("id" = String, Path, description = "The server's id of the event (not `event_id`)")),
    responses(
        (status = 200, description = "The event", body = doc::StoredEvent),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn get_event(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let event = find(&app, tenant.id, &id).await?;
    Ok(json_bytes(StatusCode::OK, event.json))
}

/// The tenant's event with the server id `id`: 404 for another tenant's, none, or an id
/// that does not parse.
pub(crate) async fn find(
    app: &AppState,
    tenant: pulsestream_core::TenantId,
    id: &str,
) -> Result<pulsestream_store::StoredEvent, ApiError> {
    let not_found = || ApiError::not_found(format!("no event with id {id:?}"));
    let event_id = id.parse::<EventId>().map_err(|_| not_found())?;
    app.events
        .event(tenant, event_id)
        .await?
        .ok_or_else(not_found)
}

/// `GET /v1/events`: search with filters and cursor pagination.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Search events",
    description = "Newest first by `timestamp` (`order=asc` for oldest first). Filters are \
        optional and combined with AND.\n\n\
        Besides the parameters listed, any number of `payload.<path>=<value>` parameters \
        filter on equality of a JSON path in the payload, e.g. `payload.user.id=42` or \
        `payload.status=paid`: `<path>` is one or more dot-separated keys, none empty.\n\n\
        Unknown or bad parameters answer 422, naming each one in `errors`.",
    params(doc::EventQuery),
    responses(
        (status = 200, description = "One page of events", body = doc::EventPage),
        (status = 401, response = doc::Unauthorized),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn list_events(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut query = parse_search(params)?;
    query.max_bytes = app.config.search_max_page_bytes;
    let _turn = app
        .search_turns
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let page = app.events.search(tenant.id, query).await?;
    Ok(page_response(page))
}

/// `{"events":[...],"next_cursor":...}` streamed from the page's own buffers: each event's
/// JSON is handed to the body as it was read, never copied into one body-sized buffer, so
/// a page (at most `--search-max-page-bytes`) is held in memory once.
fn page_response(page: pulsestream_store::SearchPage) -> Response {
    let cursor = match page.next_cursor {
        Some(cursor) => format!("],\"next_cursor\":\"{}\"}}", cursor.encode()),
        None => "],\"next_cursor\":null}".to_owned(),
    };
    let mut chunks: Vec<bytes::Bytes> = Vec::with_capacity(page.events.len() * 2 + 2);
    chunks.push(bytes::Bytes::from_static(b"{\"events\":["));
    for (index, event) in page.events.into_iter().enumerate() {
        if index > 0 {
            chunks.push(bytes::Bytes::from_static(b","));
        }
        chunks.push(bytes::Bytes::from(event.json));
    }
    chunks.push(bytes::Bytes::from(cursor));
    let length: usize = chunks.iter().map(bytes::Bytes::len).sum();
    let body = Body::from_stream(futures::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The length is known: no chunked encoding, as when the body was one buffer.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn json_bytes(status: StatusCode, json: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// Reads the query string of `GET /v1/events`, reporting every bad parameter. Public for the
/// fuzz targets: it is a pure function of what a client sends.
///
/// # Errors
/// 422 listing every bad parameter.
pub fn parse_search(params: Vec<(String, String)>) -> Result<SearchQuery, ApiError> {
    let mut query = SearchQuery {
        limit: DEFAULT_LIMIT,
        ..SearchQuery::default()
    };
    let mut errors = Vec::new();
    let mut bad = |name: &str, kind: &str, msg: String| {
        errors.push(ErrorItem {
            loc: vec!["query".into(), name.into()],
            kind: kind.into(),
            msg,
        });
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in params {
        // No stored string can hold NUL (validation refuses it), and PostgreSQL cannot even
        // compare with it: say so rather than answer 503 or nothing.
        if name.contains('\0') || value.contains('\0') {
            bad(
                &name.replace('\0', ""),
                "string_invalid",
                "must not contain NUL characters".into(),
            );
            continue;
        }
        // Percent-encoding that is not UTF-8 arrives as U+FFFD: no stored text was sent so.
        if value.contains('\u{fffd}') {
            bad(&name, "string_unicode", "is not valid UTF-8".into());
            continue;
        }
        // One value each, except the repeatable ones: a second `limit` is a mistake to
        // report, not a value to pick.
        let repeatable = name == "event_type" || name.starts_with("payload.");
        if !repeatable {
            if seen.contains(&name) {
                bad(&name, "repeated", "is given more than once".into());
                continue;
            }
            seen.push(name.clone());
        }
        match name.as_str() {
            "event_id" if value.is_empty() => {
                bad(&name, "string_too_short", "must not be empty".into());
            }
            "event_id" => query.event_id = Some(value),
            "event_type" => query.event_types.push(value),
            "source" => query.source = Some(value),
            "since" | "until" => match parse_timestamp(&value) {
                Some(ts) if name == "since" => query.since = Some(ts),
                Some(ts) => query.until = Some(ts),
                None => bad(
                    &name,
                    "datetime_parsing",
                    "must be an RFC 3339 date-time, e.g. 2025-10-02T12:00:00Z".into(),
                ),
            },
            "q" => query.text = Some(value).filter(|text| !text.trim().is_empty()),
            "limit" => match value.parse::<usize>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => query.limit = limit,
                _ => bad(
                    &name,
                    "limit_range",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ),
            },
            "cursor" => match Cursor::decode(&value) {
                Some(cursor) => query.cursor = Some(cursor),
                None => bad(
                    &name,
                    "cursor_invalid",
                    "is not a cursor returned by this endpoint".into(),
                ),
            },
            "order" => match value.as_str() {
                "asc" => query.order = Order::Asc,
                "desc" => query.order = Order::Desc,
                _ => bad(&name, "enum", "must be asc or desc".into()),
            },
            _ => match name.strip_prefix("payload.") {
                Some(path) if !path.is_empty() && path.split('.').all(|part| !part.is_empty()) => {
                    query.payload.push(PayloadFilter {
                        path: path.split('.').map(str::to_owned).collect(),
                        value,
                    });
                }
                _ => bad(
                    &name,
                    "unknown_parameter",
                    "is not a parameter of this endpoint".into(),
                ),
            },
        }
    }
    if let (Some(since), Some(until)) = (query.since, query.until)
        && since >= until
    {
        bad("until", "range", "must be later than since".into());
    }
    if errors.is_empty() {
        Ok(query)
    } else {
        let detail = if errors.len() == 1 {
            "1 bad query parameter".to_owned()
        } else {
            format!("{} bad query parameters", errors.len())
        };
        Err(ApiError::validation(detail, errors))
    }
}
