//! `GET /healthz` (the process answers), `GET /readyz` (the store can serve requests) and
//! `GET /metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
use crate::openapi as doc;

/// The answer to `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    #[schema(examples("ok"))]
    status: &'static str,
}

/// The answer to `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    #[schema(examples("ready"))]
    status: &'static str,
    /// Where rate limits are decided: `local`, `redis`, or `local_fallback` while a
    /// configured Redis is unreachable. It does not affect readiness.
    #[schema(examples("local", "redis", "local_fallback"))]
    rate_limiter: &'static str,
}

/// `GET /healthz`: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "The process runs", body = Health)),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// `GET /readyz`: 200 when the store can take writes, 503 otherwise. The body also says
/// where rate limits are being decided (`local`, `redis`, or `local_fallback` while a
/// configured Redis is unreachable), which does not affect readiness.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the store can take writes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, response = doc::Unavailable),
    ),
)]
pub async fn readyz(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if let Some(shortage) = app.disk.shortage() {
        tracing::warn!(reason = %shortage, "not ready");
        return Err(ApiError::unavailable(format!("not ready: {shortage}"), 30)
            .with_field("reason", "disk_space_low"));
    }
    if let Err(err) = app.events.check_ready().await {
        // An operator asks why: the root cause goes into the answer (`reason`) and the log.
        let reason = crate::error::root_cause(&err);
        tracing::warn!(reason = %reason, "not ready");
        return Err(
            ApiError::unavailable(format!("not ready: {reason}"), 5).with_field("reason", reason)
        );
    }
    Ok(Json(Readiness {
        status: "ready",
        rate_limiter: app.limiter.backend().as_str(),
    }))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Metrics in Prometheus text format",
    responses((
        status = 200,
        description = "The process's metrics",
        body = String,
        content_type = "text/plain; version=0.0.4",
    )),
)]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (app.metrics.0)(),
    )
}
