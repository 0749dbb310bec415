//! `/v1/destinations`: where a tenant's events are delivered, with counts, circuit state and
//! dead letters.
//!
//! The signing secret is shown once, in the answer that creates the destination, and stored
//! only sealed with the server's secret key (`pulsestream_core::secret`). Webhook
//! URLs that resolve to loopback, private or link-local addresses are refused unless the
//! server allows private destinations (for local development and tests), so a tenant cannot
//! point PulseStream at the network it runs in. The webhook client checks every address it
//! connects to again with the same `is_public`, since DNS can change after creation.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use pulsestream_core::address::is_public;
use pulsestream_core::{
    Destination, DestinationId, DestinationKind, EventId, TenantId, format_timestamp,
};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::AuthTenant;
use crate::error::{ApiError, ErrorItem};
use crate::extract;
use crate::extract::{Path, Query};
use crate::openapi as doc;

const DEFAULT_MAX_ATTEMPTS: u32 = 10;
const MAX_MAX_ATTEMPTS: u32 = 100;

/// A new destination: `kind` `webhook` with `url`, or `nats` with `subject`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDestination {
    #[schema(value_type = doc::DestinationKindName, inline)]
    kind: String,
    url: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    event_types: Vec<String>,
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
}

/// `POST /v1/destinations`.
#[utoipa::path(
    post,
    path = "/v1/destinations",
    operation_id = "create_destination",
    tag = "destinations",
    summary = "Create a webhook or NATS destination",
    request_body = CreateDestination,
    responses(
        (status = 201, description = "Created; the signing `secret` is shown only here", body = serde_json::Value),
        (status = 400, response = doc::BadRequest),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::ValidationFailed),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn create(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    extract::Json(request): extract::Json<CreateDestination>,
) -> Result<Response, ApiError> {
    let kind = match request.kind.as_str() {
        "webhook" => {
            let url = request
                .url
                .ok_or_else(|| field_error("url", "missing", "a webhook needs a url"))?;
            check_webhook_url(&url, app.config.allow_private_destinations).await?;
            DestinationKind::Webhook { url }
        }
        "nats" => {
            let subject = request.subject.ok_or_else(|| {
                field_error("subject", "missing", "a NATS destination needs a subject")
            })?;
            if subject.is_empty()
                || subject.contains(char::is_whitespace)
                || subject.contains(['*', '>'])
            {
                return Err(field_error(
                    "subject",
                    "value_error",
                    "must be a NATS subject without spaces or wildcards",
                ));
            }
            // `$JS.API.…` and friends are control subjects: publishing there could delete or
            // purge streams. `_INBOX.…` carries other clients' replies.
            if subject.starts_with('$') || subject.starts_with("_INBOX") {
                return Err(field_error(
                    "subject",
                    "value_error",
                    "must not be a system subject (starting with $ or _INBOX)",
                ));
            }
            if !app.config.nats_enabled {
                return Err(field_error(
                    "kind",
                    "value_error",
                    "this server runs without NATS; set PULSESTREAM_NATS_URL to use NATS destinations",
                ));
            }
            DestinationKind::Nats { subject }
        }
        _ => return Err(field_error("kind", "enum", "must be webhook or nats")),
    };
    if request
        .event_types
        .iter()
        .any(|pattern| pattern.is_empty() || pattern.len() > 256)
    {
        return Err(field_error(
            "event_types",
            "value_error",
            "patterns must be 1 to 256 characters",
        ));
    }
    let max_attempts = request.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(field_error(
            "max_attempts",
            "range",
            &format!("must be from 1 to {MAX_MAX_ATTEMPTS}"),
        ));
    }
    let id = DestinationId::random();
    let secret = new_secret();
    // Only the sealed form is stored; the plaintext exists in this answer and nowhere else.
    let sealed = app
        .config
        .secrets
        .seal(&secret, id.as_bytes())
        .map_err(ApiError::internal)?;
    let destination = Destination {
        id,
        tenant: tenant.id,
        kind,
        event_types: request.event_types,
        max_attempts,
        secret: sealed,
        disabled: false,
        created_at: OffsetDateTime::now_utc(),
    };
    app.destinations.put_destination(&destination).await?;
    let mut view = view(&destination);
    view["secret"] = secret.into();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /v1/destinations`.
#[utoipa::path(
    get,
    path = "/v1/destinations",
    operation_id = "list_destinations",
    tag = "destinations",
    summary = "List the tenant's destinations",
    responses(
        (status = 200, description = "`{\"destinations\": [...]}`", body = serde_json::Value),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn list(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
) -> Result<Response, ApiError> {
    let destinations: Vec<Value> = app
        .destinations
        .destinations(tenant.id)
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({ "destinations": destinations })).into_response())
}

/// `GET /v1/destinations/{id}`: with pending, delivered and dead-lettered counts and the circuit.
#[utoipa::path(
    get,
    path = "/v1/destinations/{id}",
    operation_id = "get_destination",
    tag = "destinations",
    summary = "Read a destination with its counts and circuit",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    responses(
        (status = 200, description = "The destination with `pending`, `delivered`, `dead_lettered`, `circuit` (closed, open, half_open) and `last_error`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn get(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    let stats = app.deliveries.delivery_stats(destination.id).await?;
    let mut view = view(&destination);
    view["pending"] = stats.pending.into();
    view["delivered"] = stats.delivered.into();
    view["dead_lettered"] = stats.dead_lettered.into();
    view["circuit"] = stats.circuit.as_str().into();
    view["last_error"] = stats.last_error.into();
    Ok(Json(view).into_response())
}

/// `DELETE /v1/destinations/{id}`: stops deliveries and drops the queue and dead letters.
#[utoipa::path(
    delete,
    path = "/v1/destinations/{id}",
    operation_id = "delete_destination",
    tag = "destinations",
    summary = "Delete a destination with its queue and dead letters",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn delete(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    app.destinations
        .delete_destination(tenant.id, destination.id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
pub struct DeadLetterQuery {
    limit: Option<usize>,
}

/// `GET /v1/destinations/{id}/dead-letters`.
#[utoipa::path(
    get,
    path = "/v1/destinations/{id}/dead-letters",
    operation_id = "list_dead_letters",
    tag = "destinations",
    summary = "List dead letters",
    params(
        ("id" = String, Path, format = "uuid", description = "The destination's id"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "`{\"dead_letters\": [{\"id\", \"attempts\", \"last_error\", \"failed_at\"}]}`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::ValidationFailed),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn dead_letters(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(ApiError::validation(
            "1 bad query parameter",
            vec![ErrorItem {
                loc: vec!["query".into(), "limit".into()],
                kind: "limit_range".into(),
                msg: "must be an integer from 1 to 1000".into(),
            }],
        ));
    }
    let letters: Vec<Value> = app
        .deliveries
        .dead_letters(destination.id, limit)
        .await?
        .into_iter()
        .map(|letter| {
            json!({
                "id": letter.event.to_string(),
                "attempts": letter.attempts,
                "last_error": letter.last_error,
                "failed_at": format_timestamp(letter.failed_at),
            })
        })
        .collect();
    Ok(Json(json!({ "dead_letters": letters })).into_response())
}

/// Which dead letters to replay: `ids`, or all when absent.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    ids: Option<Vec<String>>,
}

/// `POST /v1/destinations/{id}/dead-letters/replay`: all, or `{"ids": [...]}`, back into the
/// queue with fresh attempts.
#[utoipa::path(
    post,
    path = "/v1/destinations/{id}/dead-letters/replay",
    operation_id = "replay_dead_letters",
    tag = "destinations",
    summary = "Put dead letters back in the queue with fresh attempts",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    request_body = Option<ReplayRequest>,
    responses(
        (status = 200, description = "`{\"replayed\": n}`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::ValidationFailed),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn replay(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    body: Option<extract::Json<ReplayRequest>>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    let ids = match body.and_then(|extract::Json(request)| request.ids) {
        Some(ids) => Some(
            ids.iter()
                .map(|id| {
                    id.parse::<EventId>().map_err(|_| {
                        field_error("ids", "value_error", &format!("{id:?} is not an event id"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let replayed = app
        .deliveries
        .replay_dead_letters(destination.id, ids.as_deref())
        .await?;
    Ok(Json(json!({ "replayed": replayed })).into_response())
}

/// `DELETE /v1/destinations/{id}/dead-letters`.
#[utoipa::path(
    delete,
    path = "/v1/destinations/{id}/dead-letters",
    operation_id = "purge_dead_letters",
    tag = "destinations",
    summary = "Delete every dead letter",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    responses(
        (status = 200, description = "`{\"purged\": n}`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn purge(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    let purged = app.deliveries.purge_dead_letters(destination.id).await?;
    Ok(Json(json!({ "purged": purged })).into_response())
}

async fn find(app: &AppState, tenant: TenantId, id: &str) -> Result<Destination, ApiError> {
    let not_found = || ApiError::not_found(format!("no destination with id {id:?}"));
    let id = id.parse::<DestinationId>().map_err(|_| not_found())?;
    app.destinations
        .destinations(tenant)
        .await?
        .into_iter()
        .find(|destination| destination.id == id)
        .ok_or_else(not_found)
}

fn view(destination: &Destination) -> Value {
    let mut view = json!({
        "id": destination.id,
        "event_types": destination.event_types,
        "max_attempts": destination.max_attempts,
        "disabled": destination.disabled,
        "created_at": format_timestamp(destination.created_at),
    });
    match &destination.kind {
        DestinationKind::Webhook { url } => {
            view["kind"] = "webhook".into();
            view["url"] = url.clone().into();
        }
        DestinationKind::Nats { subject } => {
            view["kind"] = "nats".into();
            view["subject"] = subject.clone().into();
        }
    }
    view
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn field_error(field: &str, kind: &str, msg: &str) -> ApiError {
    ApiError::validation(
        format!("{field} {msg}"),
        vec![ErrorItem {
            loc: vec!["body".into(), field.into()],
            kind: kind.into(),
            msg: msg.to_owned(),
        }],
    )
}

/// Refuses URLs that are not http(s) or that resolve to addresses inside the server's network.
async fn check_webhook_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let invalid = |msg: &str| field_error("url", "url_invalid", msg);
    let parsed =
        url::Url::parse(url).map_err(|_| invalid("must be an absolute http or https URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https URL"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| invalid("must name a host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| invalid("the host does not resolve"))?
        .map(|address| address.ip())
        .collect();
    if addresses.is_empty() {
        return Err(invalid("the host does not resolve"));
    }
    if addresses.iter().any(|address| !is_public(*address)) {
        return Err(field_error(
            "url",
            "url_not_public",
            "resolves to a loopback, private or link-local address; such destinations are refused unless the server runs with PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true",
        ));
    }
    Ok(())
}
