//! PulseStream's HTTP API: every route, its extractors and its answers.
//!
//! Handlers turn wire input into `core` types, call the store once and answer; they hold
//! no storage logic. [`error::ApiError`] is the only way a handler fails, and the only
//! place that picks an error status.

pub mod admin;
pub mod auth;
pub mod body;
pub mod error;
pub mod extract;
pub mod health;
pub mod observe;
pub mod openapi;
pub mod v1;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderName;
use axum::routing::{delete, get, post};
use pulsestream_core::secret::SecretCipher;
use pulsestream_limits::RateLimiter;
use pulsestream_store::{DeliveryQueue, EventStore, TenantStore};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::error::ApiError;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The largest request body, after decompression.
    pub body_limit_bytes: usize,
    /// How long a request may take, body upload included.
    pub request_timeout: Duration,
    /// Accept webhook URLs on loopback, private and link-local addresses (development, tests).
    pub allow_private_destinations: bool,
    /// NATS is configured, so `nats` destinations can be created.
    pub nats_enabled: bool,
    /// Seals webhook signing secrets before they are stored.
    pub secrets: Arc<SecretCipher>,
}

/// Renders the process's metrics in Prometheus text format.
#[derive(Clone)]
pub struct MetricsRender(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsRender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRender")
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub events: Arc<dyn EventStore>,
    pub tenants: Arc<dyn TenantStore>,
    pub deliveries: Arc<dyn DeliveryQueue>,
    pub limiter: Arc<RateLimiter>,
    /// SHA-256 (hex) of the admin token.
    pub admin_token_hash: Arc<str>,
    pub config: ApiConfig,
    pub metrics: MetricsRender,
    pub tenant_labels: Arc<observe::TenantLabels>,
    in_flight: v1::idempotency::InFlightKeys,
    /// Serialises changes to tenants (each rewrites the whole record).
    tenant_writes: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// Builds the state from its stores and settings.
    pub fn new(
        events: Arc<dyn EventStore>,
        tenants: Arc<dyn TenantStore>,
        deliveries: Arc<dyn DeliveryQueue>,
        limiter: Arc<RateLimiter>,
        admin_token_hash: String,
        config: ApiConfig,
        metrics: MetricsRender,
    ) -> Self {
        Self {
            events,
            tenants,
            deliveries,
            limiter,
            admin_token_hash: admin_token_hash.into(),
            config,
            metrics,
            tenant_labels: Arc::new(observe::TenantLabels::new(100)),
            in_flight: Default::default(),
            tenant_writes: Default::default(),
        }
    }
}

/// Returns the router with every route of API.md and its middleware.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = state.config.request_timeout;
    let tenant_routes = Router::new()
        .route(
            "/v1/events",
            post(v1::events::post_event).get(v1::events::list_events),
        )
        .route("/v1/events/batch", post(v1::events::post_batch))
        .route("/v1/events/{id}", get(v1::events::get_event))
        .route(
            "/v1/destinations",
            post(v1::destinations::create).get(v1::destinations::list),
        )
        .route(
            "/v1/destinations/{id}",
            get(v1::destinations::get).delete(v1::destinations::delete),
        )
        .route(
            "/v1/destinations/{id}/dead-letters",
            get(v1::destinations::dead_letters).delete(v1::destinations::purge),
        )
        .route(
            "/v1/destinations/{id}/dead-letters/replay",
            post(v1::destinations::replay),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::tenant_context,
        ));
    Router::new()
        .merge(tenant_routes)
        .route(
            "/admin/tenants",
            post(admin::tenants::create).get(admin::tenants::list),
        )
        .route(
            "/admin/tenants/{id}",
            get(admin::tenants::get).patch(admin::tenants::update),
        )
        .route("/admin/tenants/{id}/keys", post(admin::tenants::create_key))
        .route(
            "/admin/tenants/{id}/keys/{key_id}",
            delete(admin::tenants::revoke_key),
        )
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::method_not_allowed(format!("this endpoint does not take {method}"))
        })
        .with_state(state)
        .layer(axum::middleware::from_fn(move |request, next| {
            observe::time_limit(timeout, request, next)
        }))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
