//! `GET /healthz` (the process answers), `GET /readyz` (the store can serve requests) and
//! `GET /metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;

/// `GET /healthz`: 200 while the process runs.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store can take writes, 503 otherwise. The body also says
/// where rate limits are being decided (`local`, `redis`, or `local_fallback` while a
/// configured Redis is unreachable), which does not affect readiness.
pub async fn readyz(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    app.events.check_ready().await?;
    Ok(Json(
        json!({"status": "ready", "rate_limiter": app.limiter.backend().as_str()}),
    ))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (app.metrics.0)(),
    )
}
