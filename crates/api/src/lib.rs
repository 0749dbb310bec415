//! PulseStream's HTTP API: every route, its extractors and its answers.
//!
//! Handlers turn wire input into `core` types, call the store once and answer; they hold
//! no storage logic. [`error::ApiError`] is the only way a handler fails, and the only
//! place that picks an error status.

pub mod admin;
pub mod auth;
pub mod body;
pub mod console;
pub mod disk;
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
use pulsestream_core::secret::SecretCipher;
use pulsestream_limits::RateLimiter;
use pulsestream_store::{
    ActivityStore, Counts, DeliveryQueue, DestinationStore, EventStore, Store, Tally, TenantStore,
    TestSend,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// The most destinations a tenant may have.
    pub max_destinations_per_tenant: usize,
    /// A search page ends before the event that would take it past this many bytes.
    pub search_max_page_bytes: usize,
    /// Events a live-tail subscriber may have waiting before it is cut.
    pub tail_buffer_events: usize,
    /// Seals webhook signing secrets before they are stored.
    pub secrets: Arc<SecretCipher>,
    /// The Segment endpoints' size limits.
    pub segment: SegmentLimits,
}

/// How large a Segment message and a Segment request may be (Segment's own limits by
/// default: 32 KB and 500 KB; RudderStack's SDKs send batches of up to 4 MB).
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    pub max_message_bytes: usize,
    /// Counted after decompression.
    pub max_batch_bytes: usize,
}

/// How many searches are served at once.
const SEARCHES_AT_ONCE: usize = 16;

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
    pub destinations: Arc<dyn DestinationStore>,
    pub deliveries: Arc<dyn DeliveryQueue>,
    pub activity: Arc<dyn ActivityStore>,
    /// Counts of this node not yet written to the store.
    pub tally: Arc<Tally>,
    /// Sends test events (`POST /v1/destinations/{id}/test`); absent, that answers 503.
    pub test_sender: Option<Arc<dyn TestSend>>,
    /// Takes backups (the embedded store); `None` on PostgreSQL.
    pub backup: Option<admin::backups::BackupFn>,
    pub backups: Arc<admin::backups::Backups>,
    /// Free space on the data directory, measured by the server (never low on PostgreSQL).
    pub disk: Arc<disk::DiskSpace>,
    /// Cancelled when the server shuts down: live tails end (with a `cut` event) instead
    /// of holding the shutdown up.
    pub tail_stop: tokio_util::sync::CancellationToken,
    /// Live tails open on this node, per tenant: each costs a task and a store read every
    /// 200 ms, so their number is bounded too.
    pub tail_streams: Arc<v1::stream::TailStreams>,
    pub limiter: Arc<RateLimiter>,
    /// SHA-256 (hex) of the admin token.
    pub admin_token_hash: Arc<str>,
    pub config: ApiConfig,
    pub metrics: MetricsRender,
    pub tenant_labels: Arc<observe::TenantLabels>,
    in_flight: v1::idempotency::InFlightKeys,
    /// Searches served at once (each may hold a page of up to `search_max_page_bytes`):
    /// more wait their turn, so concurrent large reads cannot take the memory.
    search_turns: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Builds the state from its store and settings.
    pub fn new(
        store: Arc<dyn Store>,
        limiter: Arc<RateLimiter>,
        admin_token_hash: String,
        config: ApiConfig,
        metrics: MetricsRender,
    ) -> Self {
        Self {
            events: store.clone(),
            tenants: store.clone(),
            destinations: store.clone(),
            deliveries: store.clone(),
            activity: store,
            tally: Arc::default(),
            test_sender: None,
            tail_stop: tokio_util::sync::CancellationToken::new(),
            tail_streams: Arc::default(),
            disk: Arc::default(),
            backup: None,
            backups: Arc::default(),
            limiter,
            admin_token_hash: admin_token_hash.into(),
            config,
            metrics,
            tenant_labels: Arc::new(observe::TenantLabels::new(100)),
            in_flight: Default::default(),
            search_turns: Arc::new(tokio::sync::Semaphore::new(SEARCHES_AT_ONCE)),
        }
    }
}

impl AppState {
    /// Sets what sends test events.
    #[must_use]
    pub fn with_test_sender(mut self, sender: Arc<dyn TestSend>) -> Self {
        self.test_sender = Some(sender);
        self
    }

    /// Counts what became of a request's events: in the metrics, by outcome, and in the
    /// tenant's stats with one lock of the tally.
    pub(crate) fn count_events(&self, tenant: pulsestream_core::TenantId, counts: Counts) {
        for (outcome, n) in [
            ("accepted", counts.accepted),
            ("duplicate", counts.duplicates),
            ("rejected", counts.rejected),
            ("rate_limited", counts.rate_limited),
        ] {
            observe::count_events(&self.tenant_labels, tenant, outcome, n as usize);
        }
        if !counts.is_zero() {
            self.tally.add(tenant, |pending| pending.add(&counts));
        }
    }
}

/// Every operation of the API, each registered with its OpenAPI description
/// (`routes!` reads the handler's `#[utoipa::path]`): tenant routes, which go through
/// `auth::tenant_context`, and the others.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(tenant_routes())
        .merge(other_routes())
}

fn tenant_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(v1::events::post_event, v1::events::list_events))
        .routes(routes!(v1::events::post_batch))
        .routes(routes!(v1::events::get_event))
        .routes(routes!(v1::stream::stream))
        .routes(routes!(v1::export::export))
        .routes(routes!(v1::erase::erase))
        .routes(routes!(v1::erase::erasures))
        .routes(routes!(v1::activity::event_attempts))
        .routes(routes!(v1::activity::stats))
        .routes(routes!(v1::cloudevents::post_cloudevents))
        .routes(routes!(v1::destinations::create, v1::destinations::list))
        .routes(routes!(v1::destinations::get, v1::destinations::delete))
        .routes(routes!(
            v1::destinations::dead_letters,
            v1::destinations::purge
        ))
        .routes(routes!(v1::destinations::replay))
        .routes(routes!(v1::destinations::pause))
        .routes(routes!(v1::destinations::resume))
        .routes(routes!(v1::destinations::test))
        .routes(routes!(v1::activity::destination_attempts))
}

fn other_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(v1::segment::track))
        .routes(routes!(v1::segment::identify))
        .routes(routes!(v1::segment::page))
        .routes(routes!(v1::segment::screen))
        .routes(routes!(v1::segment::group))
        .routes(routes!(v1::segment::alias))
        .routes(routes!(v1::segment::batch))
        .routes(routes!(v1::segment::import))
        .routes(routes!(v1::posthog::batch))
        .routes(routes!(v1::posthog::e))
        .routes(routes!(v1::posthog::capture))
        .routes(routes!(v1::posthog::v0_e))
        .routes(routes!(admin::tenants::create, admin::tenants::list))
        .routes(routes!(admin::tenants::get, admin::tenants::update))
        .routes(routes!(admin::tenants::create_key))
        .routes(routes!(admin::tenants::revoke_key))
        .routes(routes!(admin::backups::start))
        .routes(routes!(admin::backups::latest))
        .routes(routes!(health::healthz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}

/// Returns the router with every route of the API (`routes`) and its middleware.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = state.config.request_timeout;
    let (tenant_routes, _) = tenant_routes().split_for_parts();
    let (other_routes, _) = other_routes().split_for_parts();
    let tenant_routes = tenant_routes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::tenant_context,
    ));
    Router::new()
        .merge(tenant_routes)
        .merge(other_routes)
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::method_not_allowed(format!("this endpoint does not take {method}"))
        })
        .with_state(state)
        .layer(axum::middleware::from_fn(move |request, next| {
            observe::time_limit(timeout, request, next)
        }))
        .layer(axum::middleware::from_fn(observe::framing))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn(observe::drop_unsafe_request_id))
}
