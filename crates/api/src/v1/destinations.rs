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
    Destination, DestinationId, DestinationKind, EventFilter, EventId, OrderingKey, PayloadFilter,
    TableColumns, TenantId, check_template, format_timestamp,
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
const MAX_BATCH_BYTES: u64 = 100 * 1024 * 1024;

/// A new destination. By `kind`: `webhook` with `url`; `nats` with `subject`; `amqp` with
/// `url` (`amqp://` or `amqps://`), `exchange` and `routing_key`; `mqtt` with `url`
/// (`mqtt://` or `mqtts://`) and `topic`; `postgres` with `url`, `table`, and optionally
/// `columns` and `create_table`. Every kind takes `event_types`, `filter`, `ordering` and
/// `max_attempts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDestination {
    #[schema(value_type = doc::DestinationKindName, inline)]
    kind: String,
    /// The webhook's URL, or the broker's or database's connection URL (sealed at rest,
    /// shown without its password).
    #[schema(min_length = 1)]
    url: Option<String>,
    /// NATS: the subject.
    subject: Option<String>,
    /// AMQP: the exchange (`""` is the default exchange, which routes by queue name).
    exchange: Option<String>,
    /// AMQP: the routing key, a template: `{event_type}`, `{source}`, `{event_id}`.
    routing_key: Option<String>,
    /// MQTT: the topic, a template like `routing_key`.
    topic: Option<String>,
    /// PostgreSQL: `table` or `schema.table`.
    table: Option<String>,
    /// PostgreSQL: the column of each event field (`id`, `event_id`, `event_type`,
    /// `source`, `timestamp`, `received_at`, `payload`); `null` leaves a field out; a field
    /// not named keeps its own name. `id` must be the table's primary key or unique.
    #[schema(value_type = Option<Object>)]
    columns: Option<Value>,
    /// PostgreSQL: create the table if it does not exist.
    #[serde(default)]
    create_table: bool,
    #[serde(default)]
    event_types: Vec<String>,
    /// Only events that match, in the search language: `{"source": "web",
    /// "payload.plan": "pro", "q": "words"}`.
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
    /// Deliver events with the same key in ingest order: `{"key": "payload.user_id"}`,
    /// `{"key": "event_type"}` or `{"key": "destination"}`.
    #[schema(value_type = Option<Object>)]
    ordering: Option<Value>,
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
    /// The most bytes of events in one delivery (a webhook body, a round of messages), 1 KiB
    /// to 100 MiB; default: the server's (`--delivery-batch-max-bytes`, 1 MiB).
    #[schema(minimum = 1024, maximum = 104857600)]
    max_batch_bytes: Option<u64>,
}

/// `POST /v1/destinations`.
#[utoipa::path(
    post,
    path = "/v1/destinations",
    operation_id = "create_destination",
    tag = "destinations",
    summary = "Create a destination: webhook, NATS, RabbitMQ, MQTT or a PostgreSQL table",
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
    let id = DestinationId::random();
    let allow_private = app.config.allow_private_destinations;
    let seal = |url: &str| {
        app.config
            .secrets
            .seal(url, id.as_bytes())
            .map_err(ApiError::internal)
    };
    let kind = match request.kind.as_str() {
        "webhook" => {
            let url = request
                .url
                .ok_or_else(|| field_error("url", "missing", "a webhook needs a url"))?;
            let shown = check_url(&url, &["http", "https"], allow_private).await?;
            // Credentials in the URL are a secret like the signing secret: sealed, and the
            // URL shown (and stored in clear) without its password.
            let has_password =
                url::Url::parse(&url).is_ok_and(|parsed| parsed.password().is_some());
            if has_password {
                DestinationKind::Webhook {
                    url: shown,
                    sealed_url: Some(seal(&url)?),
                }
            } else {
                DestinationKind::Webhook {
                    url,
                    sealed_url: None,
                }
            }
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
        "amqp" => {
            let url = required(request.url, "url", "an AMQP destination needs a url")?;
            let endpoint = check_url(&url, &["amqp", "amqps"], allow_private).await?;
            let exchange = request.exchange.unwrap_or_default();
            if exchange.len() > 255 {
                return Err(field_error(
                    "exchange",
                    "value_error",
                    "must be at most 255 bytes",
                ));
            }
            let routing_key = request.routing_key.unwrap_or_else(|| "{event_type}".into());
            template(&routing_key, "routing_key")?;
            DestinationKind::Amqp {
                connection: seal(&url)?,
                endpoint,
                exchange,
                routing_key,
            }
        }
        "mqtt" => {
            let url = required(request.url, "url", "an MQTT destination needs a url")?;
            let endpoint = check_url(&url, &["mqtt", "mqtts"], allow_private).await?;
            let topic = required(request.topic, "topic", "an MQTT destination needs a topic")?;
            template(&topic, "topic")?;
            if topic.contains(['+', '#']) {
                return Err(field_error(
                    "topic",
                    "value_error",
                    "must not contain the wildcards + or #",
                ));
            }
            DestinationKind::Mqtt {
                connection: seal(&url)?,
                endpoint,
                topic,
            }
        }
        "postgres" => {
            let url = required(request.url, "url", "a PostgreSQL destination needs a url")?;
            let endpoint = check_url(&url, &["postgres", "postgresql"], allow_private).await?;
            let table = required(
                request.table,
                "table",
                "a PostgreSQL destination needs a table",
            )?;
            let parts: Vec<&str> = table.split('.').collect();
            if parts.len() > 2 || parts.iter().any(|part| !identifier(part)) {
                return Err(field_error(
                    "table",
                    "value_error",
                    "must be table or schema.table, each 1 to 63 characters without quotes or NUL",
                ));
            }
            DestinationKind::Postgres {
                connection: seal(&url)?,
                endpoint,
                table,
                columns: table_columns(request.columns.as_ref())?,
                create_table: request.create_table,
            }
        }
        _ => {
            return Err(field_error(
                "kind",
                "enum",
                "must be webhook, nats, amqp, mqtt or postgres",
            ));
        }
    };
    if request
        .max_batch_bytes
        .is_some_and(|bytes| !(1_024..=MAX_BATCH_BYTES).contains(&bytes))
    {
        return Err(field_error(
            "max_batch_bytes",
            "range",
            &format!("must be from 1024 to {MAX_BATCH_BYTES}"),
        ));
    }
    let filter = request.filter.as_ref().map(event_filter).transpose()?;
    let limit = app.config.max_destinations_per_tenant;
    if app.destinations.destinations(tenant.id).await?.len() >= limit {
        return Err(ApiError::validation(
            format!("this tenant has {limit} destinations, the most it may have"),
            vec![ErrorItem {
                loc: vec!["body".into()],
                kind: "too_many_destinations".into(),
                msg: format!(
                    "a tenant may have at most {limit} destinations (the server's --max-destinations-per-tenant); delete one first"
                ),
            }],
        ));
    }
    let ordering = request.ordering.as_ref().map(ordering_key).transpose()?;
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
        filter,
        ordering,
        max_batch_bytes: request.max_batch_bytes,
        paused: false,
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
    let limit = page_limit(query.limit)?;
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
        (status = 400, response = doc::BadRequest),
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
    // No body, `null` and `{}` all mean every dead letter.
    body: Option<extract::Json<Option<ReplayRequest>>>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    let ids = match body.and_then(|extract::Json(request)| request.and_then(|request| request.ids))
    {
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

/// `POST /v1/destinations/{id}/pause`.
#[utoipa::path(
    post,
    path = "/v1/destinations/{id}/pause",
    operation_id = "pause_destination",
    tag = "destinations",
    summary = "Pause a destination: nothing is sent, events keep queueing",
    description = "Takes effect within two seconds on every node (a batch already on its way \
        finishes). Events stored meanwhile wait in the queue and go out on resume.",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    responses(
        (status = 200, description = "The destination, with `paused: true`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn pause(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&app, tenant.id, &id, true).await
}

/// `POST /v1/destinations/{id}/resume`.
#[utoipa::path(
    post,
    path = "/v1/destinations/{id}/resume",
    operation_id = "resume_destination",
    tag = "destinations",
    summary = "Resume a paused destination: what queued up is sent",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    responses(
        (status = 200, description = "The destination, with `paused: false`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn resume(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&app, tenant.id, &id, false).await
}

async fn set_paused(
    app: &AppState,
    tenant: TenantId,
    id: &str,
    paused: bool,
) -> Result<Response, ApiError> {
    let mut destination = find(app, tenant, id).await?;
    if destination.paused != paused {
        destination.paused = paused;
        // On resume, the dispatcher starts the destination's worker within a second.
        app.destinations.put_destination(&destination).await?;
    }
    Ok(Json(view(&destination)).into_response())
}

/// `POST /v1/destinations/{id}/test`.
#[utoipa::path(
    post,
    path = "/v1/destinations/{id}/test",
    operation_id = "test_destination",
    tag = "destinations",
    summary = "Send a made-up test event to the destination now",
    description = "Sends one event of type `pulsestream.test` (not stored, not queued, not \
        retried) and answers with the attempt, which is also listed in the destination's \
        attempts with `test: true`. Works while the destination is paused.",
    params(("id" = String, Path, format = "uuid", description = "The destination's id")),
    responses(
        (status = 200, description = "The attempt: `outcome`, `status`, `error`, `latency_ms`", body = serde_json::Value),
        (status = 404, response = doc::NotFound),
        (status = 401, response = doc::Unauthorized),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn test(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let destination = find(&app, tenant.id, &id).await?;
    let Some(sender) = &app.test_sender else {
        return Err(ApiError::unavailable(
            "this server cannot send test events",
            60,
        ));
    };
    let attempt = sender.send_test(&destination).await?;
    Ok(Json(super::activity::attempt_view(&attempt)).into_response())
}

/// A list's `limit`: 1 to 1,000, 100 when absent.
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(ApiError::bad_query(
            "limit",
            "limit_range",
            "must be an integer from 1 to 1000",
        ));
    }
    Ok(limit)
}

pub(crate) async fn find(
    app: &AppState,
    tenant: TenantId,
    id: &str,
) -> Result<Destination, ApiError> {
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
        "paused": destination.paused,
        "created_at": format_timestamp(destination.created_at),
    });
    match &destination.kind {
        DestinationKind::Webhook { url, .. } => {
            view["kind"] = "webhook".into();
            view["url"] = url.clone().into();
        }
        DestinationKind::Nats { subject } => {
            view["kind"] = "nats".into();
            view["subject"] = subject.clone().into();
        }
        DestinationKind::Amqp {
            endpoint,
            exchange,
            routing_key,
            ..
        } => {
            view["kind"] = "amqp".into();
            view["url"] = endpoint.clone().into();
            view["exchange"] = exchange.clone().into();
            view["routing_key"] = routing_key.clone().into();
        }
        DestinationKind::Mqtt {
            endpoint, topic, ..
        } => {
            view["kind"] = "mqtt".into();
            view["url"] = endpoint.clone().into();
            view["topic"] = topic.clone().into();
        }
        DestinationKind::Postgres {
            endpoint,
            table,
            columns,
            create_table,
            ..
        } => {
            view["kind"] = "postgres".into();
            view["url"] = endpoint.clone().into();
            view["table"] = table.clone().into();
            view["create_table"] = (*create_table).into();
            view["columns"] = json!({
                "id": columns.id,
                "event_id": columns.event_id,
                "event_type": columns.event_type,
                "source": columns.source,
                "timestamp": columns.timestamp,
                "received_at": columns.received_at,
                "payload": columns.payload,
            });
        }
    }
    if let Some(filter) = &destination.filter {
        let mut shown = serde_json::Map::new();
        if let Some(source) = &filter.source {
            shown.insert("source".into(), source.clone().into());
        }
        for path in &filter.payload {
            shown.insert(
                format!("payload.{}", path.path.join(".")),
                path.value.clone().into(),
            );
        }
        if let Some(text) = &filter.text {
            shown.insert("q".into(), text.clone().into());
        }
        view["filter"] = shown.into();
    }
    if let Some(ordering) = &destination.ordering {
        view["ordering"] = json!({ "key": ordering.name() });
    }
    if let Some(bytes) = destination.max_batch_bytes {
        view["max_batch_bytes"] = bytes.into();
    }
    view
}

fn required(value: Option<String>, field: &str, msg: &str) -> Result<String, ApiError> {
    value.ok_or_else(|| field_error(field, "missing", msg))
}

fn template(text: &str, field: &str) -> Result<(), ApiError> {
    if text.is_empty() || text.len() > 255 {
        return Err(field_error(field, "value_error", "must be 1 to 255 bytes"));
    }
    check_template(text).map_err(|msg| field_error(field, "value_error", &msg))
}

/// A PostgreSQL identifier PulseStream will quote: 1 to 63 bytes, no quotes, no NUL.
fn identifier(name: &str) -> bool {
    (1..=63).contains(&name.len()) && !name.contains(['"', '\0'])
}

fn table_columns(given: Option<&Value>) -> Result<TableColumns, ApiError> {
    let mut columns = TableColumns::default();
    let Some(given) = given else {
        return Ok(columns);
    };
    let bad = |field: &str, msg: &str| member_error("columns", field, "value_error", msg);
    let Some(given) = given.as_object() else {
        return Err(field_error("columns", "type_error", "must be an object"));
    };
    for (field, column) in given {
        let column = match column {
            Value::Null => None,
            Value::String(name) if identifier(name) => Some(name.clone()),
            _ => {
                return Err(bad(
                    field,
                    "must be a column name of 1 to 63 characters without quotes, or null",
                ));
            }
        };
        let slot = match field.as_str() {
            "id" => {
                columns.id =
                    column.ok_or_else(|| bad(field, "is required: rows are deduplicated by it"))?;
                continue;
            }
            "event_id" => &mut columns.event_id,
            "event_type" => &mut columns.event_type,
            "source" => &mut columns.source,
            "timestamp" => &mut columns.timestamp,
            "received_at" => &mut columns.received_at,
            "payload" => &mut columns.payload,
            _ => {
                return Err(bad(
                    field,
                    "is not a field of an event (id, event_id, event_type, source, timestamp, received_at, payload)",
                ));
            }
        };
        *slot = column;
    }
    let mapped = columns.mapped();
    let mut seen = std::collections::HashSet::new();
    if let Some((field, _)) = mapped.iter().find(|(_, column)| !seen.insert(*column)) {
        return Err(bad(field, "names a column that another field uses too"));
    }
    Ok(columns)
}

/// Reads a destination's filter: `source`, `q` and `payload.<path>`, the search's names.
fn event_filter(given: &Value) -> Result<EventFilter, ApiError> {
    let bad = |key: &str, kind: &str, msg: &str| member_error("filter", key, kind, msg);
    let Some(given) = given.as_object() else {
        return Err(field_error("filter", "type_error", "must be an object"));
    };
    let mut filter = EventFilter::default();
    for (key, value) in given {
        let value = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Null => "null".into(),
            _ => {
                return Err(bad(
                    key,
                    "type_error",
                    "must be a string, number, boolean or null",
                ));
            }
        };
        if value.len() > 1_024 {
            return Err(bad(key, "value_error", "must be at most 1024 bytes"));
        }
        match key.as_str() {
            "source" => filter.source = Some(value),
            "q" if value.trim().is_empty() => {
                return Err(bad(key, "value_error", "must have at least one word"));
            }
            "q" => filter.text = Some(value),
            _ => match key.strip_prefix("payload.") {
                Some(path) if !path.is_empty() && path.split('.').all(|part| !part.is_empty()) => {
                    filter.payload.push(PayloadFilter {
                        path: path.split('.').map(str::to_owned).collect(),
                        value,
                    });
                }
                _ => {
                    return Err(bad(
                        key,
                        "unknown_filter",
                        "is not a filter; use source, q or payload.<path>",
                    ));
                }
            },
        }
    }
    if filter == EventFilter::default() {
        return Err(field_error(
            "filter",
            "value_error",
            "must name at least one filter",
        ));
    }
    Ok(filter)
}

fn ordering_key(given: &Value) -> Result<OrderingKey, ApiError> {
    let key = given.get("key").and_then(Value::as_str);
    if given.as_object().is_none_or(|object| object.len() != 1) || key.is_none() {
        return Err(field_error(
            "ordering",
            "type_error",
            "must be {\"key\": \"destination\" | \"event_type\" | \"payload.<path>\"}",
        ));
    }
    OrderingKey::parse(key.unwrap_or_default()).ok_or_else(|| {
        member_error(
            "ordering",
            "key",
            "value_error",
            "must be destination, event_type or payload.<path>",
        )
    })
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A 422 for one member of an object field: `loc` is `["body", field, member]`.
fn member_error(field: &str, member: &str, kind: &str, msg: &str) -> ApiError {
    ApiError::validation(
        format!("{field}.{member} {msg}"),
        vec![ErrorItem {
            loc: vec!["body".into(), field.into(), member.into()],
            kind: kind.into(),
            msg: msg.to_owned(),
        }],
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

/// Refuses URLs of another scheme than `schemes`, and (unless private destinations are
/// allowed) URLs whose host resolves to an address inside the server's network. Returns the
/// URL without its password, for display.
async fn check_url(url: &str, schemes: &[&str], allow_private: bool) -> Result<String, ApiError> {
    let invalid = |msg: &str| field_error("url", "url_invalid", msg);
    let wanted = schemes
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let mut parsed =
        url::Url::parse(url).map_err(|_| invalid(&format!("must be an absolute {wanted} URL")))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(invalid(&format!("must be a {wanted} URL")));
    }
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| invalid("must name a host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let shown = {
        if parsed.password().is_some() {
            let _ = parsed.set_password(None);
        }
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(name, _)| name != "password")
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        if parsed.query().is_some() {
            parsed.set_query(None);
            if !kept.is_empty() {
                parsed.query_pairs_mut().extend_pairs(kept);
            }
        }
        parsed.to_string()
    };
    if allow_private {
        return Ok(shown);
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
    Ok(shown)
}
