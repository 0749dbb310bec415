//! `GET /v1/events/export`: every event of the tenant that matches the search filters, as
//! NDJSON (one stored event per line, exactly as `GET /v1/events/{id}` shows it), oldest
//! first, in constant memory however many match.
//!
//! A task reads search pages one after another and hands them to the body through a
//! channel of two pages, so a slow client holds at most that much. A failure mid-way aborts
//! the response (no final chunk): a client can never take a cut export for a whole one, and
//! resumes with `after=<id of the last line it got>`. Each line can be sent back to
//! `POST /v1/events/batch` as is (the fields the batch does not take are ignored), which is
//! what `pulsestream events send --file` does: an export is also an import file.

use std::io::Write;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use pulsestream_core::{EventId, TenantId};
use pulsestream_store::{Cursor, EventStore, Order, SearchQuery};
use tokio::sync::mpsc;

use super::events::parse_search;
use crate::AppState;
use crate::auth::AuthTenant;
use crate::error::ApiError;
use crate::extract::Query;
use crate::openapi as doc;

/// Events read from the store at once.
const PAGE: usize = 1_000;

/// `GET /v1/events/export`.
#[utoipa::path(
    get,
    path = "/v1/events/export",
    tag = "events",
    summary = "Export events as NDJSON",
    description = "Every event that matches the search filters (`event_id`, `event_type`, \
        `source`, `since`, `until`, `payload.<path>`, `q`), one per line as stored, oldest \
        first (`order=desc` for newest first), streamed in constant memory. `after=<id>` \
        resumes after the event of that `id` (the last line received). Compressed with gzip \
        when the request says `Accept-Encoding: gzip`. A failure mid-way cuts the response \
        off without its end, so a partial export is never mistaken for a whole one.",
    params(
        ("after" = Option<String>, Query, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "Resume after the event with this `id`"),
        ("order" = Option<doc::SortOrder>, Query, description = "`asc` (default) or `desc`"),
        ("event_type" = Option<String>, Query, description = "As in search; repeatable"),
    ),
    responses(
        (status = 200, description = "NDJSON, one event per line", content_type = "application/x-ndjson", body = String),
        (status = 401, response = doc::Unauthorized),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn export(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut query = parse_export(params)?;
    query.limit = PAGE;
    query.max_bytes = app.config.search_max_page_bytes;
    let gzip = accepts_gzip(&headers);
    // The first page is read before answering: a store that cannot serve gets a 503, not a
    // 200 that breaks off at once.
    let first = {
        let _turn = app
            .search_turns
            .acquire()
            .await
            .map_err(ApiError::internal)?;
        app.events.search(tenant.id, query.clone()).await?
    };
    let (chunks, received) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(stream_pages(
        app.events.clone(),
        app.search_turns.clone(),
        tenant.id,
        query,
        first,
        gzip,
        chunks,
    ));
    let body = Body::from_stream(futures::stream::unfold(received, |mut received| async {
        received.recv().await.map(|chunk| (chunk, received))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"))
                && !parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                })
        })
}

/// The search filters, `order` (ascending unless said) and `after`; no `limit` or `cursor`.
fn parse_export(params: Vec<(String, String)>) -> Result<SearchQuery, ApiError> {
    let mut after = None;
    let mut order = Order::Asc;
    let mut filters = Vec::with_capacity(params.len());
    for (name, value) in params {
        match name.as_str() {
            "after" => {
                after = Some(value.parse::<EventId>().map_err(|_| {
                    ApiError::bad_query("after", "cursor_invalid", "is not the id of an event")
                })?);
            }
            "order" => match value.as_str() {
                "asc" => order = Order::Asc,
                "desc" => order = Order::Desc,
                _ => return Err(ApiError::bad_query("order", "enum", "must be asc or desc")),
            },
            "limit" | "cursor" => {
                return Err(ApiError::bad_query(
                    &name,
                    "unknown_parameter",
                    "is not a parameter of the export (it has no pages; resume with after)",
                ));
            }
            _ => filters.push((name, value)),
        }
    }
    let mut query = parse_search(filters)?;
    query.order = order;
    query.cursor = after.map(Cursor);
    Ok(query)
}

/// Sends every page as NDJSON (gzip-compressed when asked) until the last; a failure ends
/// the body with an error, which aborts the response.
async fn stream_pages(
    events: std::sync::Arc<dyn EventStore>,
    turns: std::sync::Arc<tokio::sync::Semaphore>,
    tenant: TenantId,
    mut query: SearchQuery,
    first: pulsestream_store::SearchPage,
    gzip: bool,
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut encoder = gzip.then(|| GzEncoder::new(Vec::new(), Compression::fast()));
    let mut page = first;
    let mut exported = 0u64;
    loop {
        let mut lines = Vec::with_capacity(page.events.iter().map(|e| e.json.len() + 1).sum());
        for event in &page.events {
            lines.extend_from_slice(&event.json);
            lines.push(b'\n');
        }
        exported += page.events.len() as u64;
        let chunk = match &mut encoder {
            None => Ok(lines),
            Some(encoder) => encoder
                .write_all(&lines)
                .and_then(|()| encoder.flush())
                .map(|()| std::mem::take(encoder.get_mut())),
        };
        let failed = chunk.is_err();
        if chunks.send(chunk.map(Bytes::from)).await.is_err() || failed {
            return; // the client left, or compression failed (the body ends in error)
        }
        let Some(cursor) = page.next_cursor else {
            break;
        };
        query.cursor = Some(cursor);
        // One turn per page, like any search: exports cannot crowd searches out.
        let Ok(_turn) = turns.acquire().await else {
            return;
        };
        page = match events.search(tenant, query.clone()).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(tenant_id = %tenant, exported, error = %err, "export cut off: the store failed");
                let _ = chunks
                    .send(Err(std::io::Error::other(format!(
                        "the store failed: {err}"
                    ))))
                    .await;
                return;
            }
        };
    }
    if let Some(encoder) = encoder {
        match encoder.finish() {
            Ok(rest) => {
                let _ = chunks.send(Ok(Bytes::from(rest))).await;
            }
            Err(err) => {
                let _ = chunks.send(Err(err)).await;
            }
        }
    }
    metrics::counter!("pulsestream_exported_events_total").increment(exported);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_used_only_when_the_client_takes_it() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(with("gzip"));
        assert!(with("br, GZIP;q=0.5"));
        assert!(!with("gzip;q=0"));
        assert!(!with("identity"));
        assert!(!with("x-gzip-ish"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
