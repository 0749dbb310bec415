//! `GET /healthz` (the process answers) and `GET /readyz` (the store can serve requests).

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

/// `GET /readyz`: 200 when the store can take writes, 503 otherwise.
pub async fn readyz(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    app.events.check_ready().await?;
    Ok(Json(json!({"status": "ready"})))
}
