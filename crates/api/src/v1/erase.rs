//! `POST /v1/events/erase` (erase a tenant's events matching a filter, GDPR-style) and
//! `GET /v1/erasures` (the tenant's audit log of erasures).
//!
//! The filter is the search's, sent in the body under the query parameters' names and
//! checked by the same parser, so "what an erasure erases" is exactly "what the same search
//! finds" (`event_matches`). The matching events are found page by page, oldest first, and
//! each page is erased in one store commit; the work runs in a task of its own, so a client
//! that hangs up does not leave an erasure half done without its audit entry. A resend of
//! an erased `event_id` is answered `duplicate` (the store keeps a tombstone without payload
//! until retention passes the event's timestamp).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use pulsestream_core::{EventId, format_timestamp};
use pulsestream_store::{Erasure, ErasureKey, Order};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::events::parse_search;
use crate::AppState;
use crate::auth::{AuthTenant, calling_key};
use crate::error::{ApiError, ErrorItem};
use crate::extract::{self, Query};
use crate::openapi as doc;

/// Events found and erased per store commit.
const PAGE: usize = 1_000;

/// What to erase.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// The search's filters under their query-parameter names: `event_id`, `event_type`
    /// (a string or a list: any of them), `source`, `since`, `until`, `q` and any number of
    /// `payload.<path>` (a string, number, boolean or null; a list: all must match). At
    /// least one is required.
    #[schema(schema_with = filter_schema)]
    filter: Map<String, Value>,
    /// Count what would be erased, erase nothing, record nothing.
    #[serde(default)]
    dry_run: bool,
}

/// An object of at least one filter (`{}` would erase everything, and is refused).
fn filter_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .min_properties(Some(1))
        .property_names(Some(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(
                    r"^(event_id|event_type|source|since|until|q|payload\..+)$",
                )),
        ))
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(true),
        ))
        .description(Some(
            "The search's filters under their query-parameter names, at least one",
        ))
        .examples([json!({"payload.user_id": "u_123"})])
        .build()
}

/// `POST /v1/events/erase`.
#[utoipa::path(
    post,
    path = "/v1/events/erase",
    tag = "events",
    summary = "Erase the events matching a filter (GDPR-style)",
    description = "Erases every event of the tenant that the same search would find: its \
        JSON, its index entries, its queued deliveries and its dead letters. The answer is \
        the audit entry (`id`, `requested_at`, `finished_at`, `requested_by`, `filter`, \
        `erased`), also listed by `GET /v1/erasures`. An erased event's `event_id` keeps a \
        tombstone without payload: sent again, it is answered `duplicate` (200) and nothing \
        is stored, until the tenant's retention passes the event's timestamp. The erased JSON \
        may stay in the store's files until they are rewritten (the embedded store's journal \
        and blob files; PostgreSQL's old row versions until VACUUM). With `dry_run: true` the answer is \
        `{\"dry_run\": true, \"matching\": n, \"filter\": ...}` and nothing changes.",
    request_body = EraseRequest,
    responses(
        (status = 200, description = "The audit entry of the erasure (or the dry run's count)", body = serde_json::Value),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn erase(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    extract::Json(request): extract::Json<EraseRequest>,
) -> Result<Response, ApiError> {
    let requested_at = OffsetDateTime::now_utc();
    let mut query = parse_search(filter_params(&request.filter)?)
        .map_err(|err| err.relocated("query", &["body", "filter"]))?;
    query.limit = PAGE;
    query.order = Order::Asc;
    query.max_bytes = app.config.search_max_page_bytes;
    let requested_by = calling_key(&tenant, &headers).map_or_else(
        || ErasureKey {
            key_id: String::new(),
            key_prefix: String::new(),
        },
        |key| ErasureKey {
            key_id: key.id.to_string(),
            key_prefix: key.prefix.clone(),
        },
    );
    let dry_run = request.dry_run;
    let filter = request.filter;
    let tenant_id = tenant.id;
    // Its own task: a client that hangs up does not stop an erasure half way.
    let job = tokio::spawn(async move {
        let mut matching = 0u64;
        let mut erased = 0u64;
        loop {
            let page = {
                let _turn = app
                    .search_turns
                    .acquire()
                    .await
                    .map_err(ApiError::internal)?;
                app.events.search(tenant_id, query.clone()).await?
            };
            let ids: Vec<EventId> = page.events.iter().map(|event| event.id).collect();
            matching += ids.len() as u64;
            if !dry_run && !ids.is_empty() {
                erased += app.events.erase_events(tenant_id, &ids).await?;
            }
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        if dry_run {
            return Ok(json!({ "dry_run": true, "matching": matching, "filter": filter }));
        }
        let erasure = Erasure {
            id: uuid::Uuid::now_v7(),
            requested_at,
            finished_at: OffsetDateTime::now_utc(),
            requested_by,
            filter,
            erased,
        };
        app.events.record_erasure(tenant_id, &erasure).await?;
        metrics::counter!("pulsestream_erasures_total").increment(1);
        metrics::counter!("pulsestream_erased_events_total").increment(erased);
        tracing::info!(tenant = %tenant_id, erasure = %erasure.id, erased, "events erased");
        Ok::<_, ApiError>(erasure_view(&erasure))
    });
    let answer = job.await.map_err(ApiError::internal)??;
    Ok(Json(answer).into_response())
}

/// The body's filter as the query parameters `parse_search` reads, refusing what is not a
/// filter (paging, order, nested values) and an empty filter.
fn filter_params(filter: &Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    let mut params = Vec::new();
    let mut errors = Vec::new();
    let mut bad = |name: &str, kind: &str, msg: &str| {
        errors.push(ErrorItem {
            loc: vec!["body".into(), "filter".into(), name.into()],
            kind: kind.into(),
            msg: msg.into(),
        });
    };
    if filter.is_empty() {
        return Err(ApiError::validation(
            "filter names no filter",
            vec![ErrorItem {
                loc: vec!["body".into(), "filter".into()],
                kind: "filter_empty".into(),
                msg: "name at least one filter (erasing everything is never taken by accident)"
                    .into(),
            }],
        ));
    }
    for (name, value) in filter {
        if matches!(name.as_str(), "limit" | "cursor" | "order") {
            bad(name, "unknown_parameter", "is not a filter");
            continue;
        }
        let payload = name.starts_with("payload.");
        let text = |value: &Value| match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(_) | Value::Bool(_) | Value::Null if payload => Some(value.to_string()),
            _ => None,
        };
        let values: Vec<&Value> = match value {
            Value::Array(values) if !values.is_empty() => values.iter().collect(),
            value => vec![value],
        };
        for value in values {
            match text(value) {
                Some(text) => params.push((name.clone(), text)),
                None if payload => bad(
                    name,
                    "type",
                    "must be a string, number, boolean or null (or a list of them)",
                ),
                None => bad(name, "type", "must be a string (or a list of strings)"),
            }
        }
    }
    if errors.is_empty() {
        Ok(params)
    } else {
        let detail = format!("{} bad filter entries", errors.len());
        Err(ApiError::validation(detail, errors))
    }
}

fn erasure_view(erasure: &Erasure) -> Value {
    json!({
        "id": erasure.id,
        "requested_at": format_timestamp(erasure.requested_at),
        "finished_at": format_timestamp(erasure.finished_at),
        "requested_by": erasure.requested_by,
        "filter": erasure.filter,
        "erased": erasure.erased,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasuresQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/erasures`.
#[utoipa::path(
    get,
    path = "/v1/erasures",
    tag = "events",
    summary = "List the tenant's erasures, newest first",
    description = "The audit log of `POST /v1/events/erase`: who (`requested_by`: the key's \
        `key_id` and `key_prefix`), when (`requested_at`, `finished_at`), what (`filter`, as \
        sent) and how many (`erased`). Kept as long as the tenant.",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$", description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "`{\"erasures\": [...], \"next_cursor\": \"...\" | null}`", body = serde_json::Value),
        (status = 401, response = doc::Unauthorized),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn erasures(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Query(query): Query<ErasuresQuery>,
) -> Result<Response, ApiError> {
    let limit = super::destinations::page_limit(query.limit)?;
    let before = match &query.cursor {
        Some(token) => Some(token.parse::<uuid::Uuid>().map_err(|_| {
            ApiError::bad_query(
                "cursor",
                "cursor_invalid",
                "is not a cursor returned by this endpoint",
            )
        })?),
        None => None,
    };
    let mut page = app.events.erasures(tenant.id, before, limit + 1).await?;
    let next_cursor = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|erasure| erasure.id.to_string())
    });
    let erasures: Vec<Value> = page.iter().map(erasure_view).collect();
    Ok(Json(json!({ "erasures": erasures, "next_cursor": next_cursor.flatten() })).into_response())
}
