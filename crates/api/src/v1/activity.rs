//! What happened to a tenant's events: delivery attempts (per destination, per event) and
//! counts per minute (`GET /v1/stats`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use pulsestream_core::format_timestamp;
use pulsestream_store::{Attempt, AttemptCursor, Counts, minute_of};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::AuthTenant;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::openapi as doc;

/// An attempt as the API shows it.
pub(crate) fn attempt_view(attempt: &Attempt) -> Value {
    json!({
        "id": attempt.id,
        "destination_id": attempt.destination,
        "at": format_timestamp(attempt.at),
        "events": attempt.events,
        "outcome": attempt.outcome,
        "status": attempt.status,
        "error": attempt.error,
        "latency_ms": attempt.latency_ms,
        "next_retry_at": attempt.next_retry_at.map(format_timestamp),
        "dead_lettered": attempt.dead_lettered,
        "test": attempt.test,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/destinations/{id}/attempts`.
#[utoipa::path(
    get,
    path = "/v1/destinations/{id}/attempts",
    operation_id = "list_destination_attempts",
    tag = "destinations",
    summary = "List a destination's delivery attempts, newest first",
    description = "Each attempt: `id`, `destination_id`, `at`, `events` (the event ids sent \
        together), `outcome` (`delivered`, `failed`, `too_large`, `gone`), `status` (the \
        webhook receiver's HTTP status, when it answered), `error`, `latency_ms`, \
        `next_retry_at`, `dead_lettered` (how many of the events ran out of attempts) and \
        `test`. Kept for `--attempts-retention-hours` (24 hours by default).",
    params(
        ("id" = String, Path, format = "uuid", description = "The destination's id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9a-fA-F]{48}$", description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "`{\"attempts\": [...], \"next_cursor\": \"...\" | null}`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::ValidationFailed),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn destination_attempts(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    Query(query): Query<AttemptsQuery>,
) -> Result<Response, ApiError> {
    let destination = super::destinations::find(&app, tenant.id, &id).await?;
    let limit = super::destinations::page_limit(query.limit)?;
    let before = match &query.cursor {
        Some(token) => Some(AttemptCursor::parse(token).ok_or_else(|| {
            ApiError::bad_query(
                "cursor",
                "cursor_invalid",
                "is not a cursor returned by this endpoint",
            )
        })?),
        None => None,
    };
    let attempts = app
        .activity
        .attempts(destination.id, before, limit + 1)
        .await?;
    let more = attempts.len() > limit;
    let page = &attempts[..attempts.len().min(limit)];
    let next_cursor = if more {
        page.last().map(|last| AttemptCursor::of(last).token())
    } else {
        None
    };
    Ok(Json(json!({
        "attempts": page.iter().map(attempt_view).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
    .into_response())
}

/// `GET /v1/events/{id}/attempts`.
#[utoipa::path(
    get,
    path = "/v1/events/{id}/attempts",
    operation_id = "list_event_attempts",
    tag = "events",
    summary = "List the delivery attempts that carried an event, newest first",
    description = "Up to 100 attempts, to every destination, shaped as in \
        `GET /v1/destinations/{id}/attempts`.",
    params(("id" = String, Path, description = "The server's id of the event")),
    responses(
        (status = 200, description = "`{\"attempts\": [...]}`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn event_attempts(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let event = super::events::find(&app, tenant.id, &id).await?;
    let attempts = app
        .activity
        .event_attempts(tenant.id, event.id, 100)
        .await?;
    Ok(Json(json!({
        "attempts": attempts.iter().map(attempt_view).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    minutes: Option<i64>,
}

fn counts_view(counts: &Counts) -> Value {
    json!({
        "accepted": counts.accepted,
        "duplicates": counts.duplicates,
        "rejected": counts.rejected,
        "rate_limited": counts.rate_limited,
        "delivered": counts.delivered,
        "dead_lettered": counts.dead_lettered,
    })
}

/// `GET /v1/stats`.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "stats",
    summary = "The tenant's counts per minute, and its storage",
    description = "Events accepted, duplicates, rejected, rate-limited, delivered and \
        dead-lettered in each minute of the last `minutes` (1 to 1440, default 60; minutes \
        with nothing are left out), their totals over that window, and `storage`: the events \
        stored and their approximate bytes since counting began. Each node writes its counts \
        every 2 seconds, so the current minute lags by that much.",
    params(("minutes" = Option<u32>, Query, minimum = 1, maximum = 1440, description = "1 to 1440, default 60")),
    responses(
        (status = 200, description = "`{\"minutes\": [{\"minute\", ...counts}], \"totals\": {...}, \"storage\": {\"events\", \"bytes\"}}`", body = serde_json::Value),
        (status = 422, response = doc::ValidationFailed),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn stats(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Query(query): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    let window = query.minutes.unwrap_or(60);
    if !(1..=1_440).contains(&window) {
        return Err(ApiError::bad_query(
            "minutes",
            "range",
            "must be an integer from 1 to 1440",
        ));
    }
    let now = minute_of(OffsetDateTime::now_utc());
    let counts = app.activity.counts(tenant.id, now - window + 1).await?;
    let mut totals = Counts::default();
    let minutes: Vec<Value> = counts
        .minutes
        .iter()
        .filter(|(minute, _)| *minute <= now)
        .map(|(minute, counts)| {
            totals.add(counts);
            let mut view = counts_view(counts);
            let at = OffsetDateTime::from_unix_timestamp(minute * 60)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            view["minute"] = format_timestamp(at).into();
            view
        })
        .collect();
    Ok(Json(json!({
        "minutes": minutes,
        "totals": counts_view(&totals),
        "storage": {
            "events": counts.all_time.accepted,
            "bytes": counts.all_time.stored_bytes,
        },
    }))
    .into_response())
}
