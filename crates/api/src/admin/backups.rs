//! `/admin/backups`: an online backup of the embedded store, taken by the server into a
//! directory on its own machine while it goes on taking writes. It can take longer than a
//! request may, so it runs as a job: `POST` starts it (one at a time), `GET …/latest` says
//! how it goes. `pulsestream backup --to DIR` does both.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pulsestream_core::format_timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorItem};
use crate::extract;
use crate::openapi as doc;

/// Takes a backup into a directory: what the server was built with (the embedded store and
/// the files of its data directory), or nothing on PostgreSQL.
#[derive(Clone)]
pub struct BackupFn(pub Arc<TakeBackup>);

/// Writes a backup into a directory; its report, or why it failed.
pub type TakeBackup = dyn Fn(&std::path::Path) -> Result<Value, String> + Send + Sync;

impl std::fmt::Debug for BackupFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupFn")
    }
}

/// The latest backup job of this server.
#[derive(Debug, Default)]
pub struct Backups {
    latest: Mutex<Option<Job>>,
}

#[derive(Debug, Clone)]
struct Job {
    to: PathBuf,
    started_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
    /// The backup's report when done, or why it failed.
    outcome: Option<Result<Value, String>>,
}

impl Job {
    fn view(&self) -> Value {
        let status = match &self.outcome {
            None => "running",
            Some(Ok(_)) => "done",
            Some(Err(_)) => "failed",
        };
        json!({
            "status": status,
            "to": self.to.display().to_string(),
            "started_at": format_timestamp(self.started_at),
            "finished_at": self.finished_at.map(format_timestamp),
            "report": self.outcome.as_ref().and_then(|outcome| outcome.as_ref().ok()),
            "error": self.outcome.as_ref().and_then(|outcome| outcome.as_ref().err()),
        })
    }
}

/// Where to write the backup.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// An absolute directory on the server's machine, absent or empty.
    #[schema(min_length = 1, pattern = "^/")]
    to: String,
}

/// `POST /admin/backups`.
#[utoipa::path(
    post,
    path = "/admin/backups",
    operation_id = "start_backup",
    tag = "operations",
    summary = "Start an online backup of the embedded store",
    description = "Copies one consistent snapshot of the store (every event acknowledged \
        before it, with its deliveries and idempotency records) into `to`, a directory on \
        the server's machine that is absent or empty, while ingest goes on; the admin token \
        and secret key files come along. `to` is then a data directory: `pulsestream restore` \
        puts it in place. One backup at a time. Not on PostgreSQL (use its own tools).",
    request_body = BackupRequest,
    responses(
        (status = 202, description = "Started: the job, as `GET /admin/backups/latest` shows it", body = serde_json::Value),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 409, response = doc::Conflict),
        (status = 422, response = doc::ValidationFailed),
        (status = 501, description = "The server stores in PostgreSQL", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn start(
    _: Admin,
    State(app): State<AppState>,
    extract::Json(request): extract::Json<BackupRequest>,
) -> Result<Response, ApiError> {
    let Some(backup) = app.backup.clone() else {
        return Err(ApiError::not_implemented(
            "this server stores in PostgreSQL: back it up with pg_dump or a base backup",
        ));
    };
    let to = PathBuf::from(&request.to);
    if !to.is_absolute() {
        return Err(ApiError::validation(
            "1 bad field",
            vec![ErrorItem {
                loc: vec!["body".into(), "to".into()],
                kind: "value_error".into(),
                msg: "must be an absolute directory on the server's machine".into(),
            }],
        ));
    }
    let job = {
        let mut latest = app
            .backups
            .latest
            .lock()
            .expect("backup lock is never poisoned");
        if latest.as_ref().is_some_and(|job| job.outcome.is_none()) {
            return Err(ApiError::conflict(
                "backup_running",
                "a backup is running; wait for it (GET /admin/backups/latest)",
            ));
        }
        let job = Job {
            to: to.clone(),
            started_at: OffsetDateTime::now_utc(),
            finished_at: None,
            outcome: None,
        };
        *latest = Some(job.clone());
        job
    };
    let backups = app.backups.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || (backup.0)(&to))
            .await
            .unwrap_or_else(|err| Err(format!("the backup task failed: {err}")));
        metrics::histogram!("pulsestream_backup_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(_) => tracing::info!(seconds = started.elapsed().as_secs_f64(), "backup done"),
            Err(err) => tracing::error!(error = %err, "backup failed"),
        }
        let mut latest = backups
            .latest
            .lock()
            .expect("backup lock is never poisoned");
        if let Some(job) = latest.as_mut() {
            job.finished_at = Some(OffsetDateTime::now_utc());
            job.outcome = Some(outcome);
        }
    });
    let mut response = (StatusCode::ACCEPTED, Json(job.view())).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/admin/backups/latest"),
    );
    Ok(response)
}

/// `GET /admin/backups/latest`.
#[utoipa::path(
    get,
    path = "/admin/backups/latest",
    operation_id = "latest_backup",
    tag = "operations",
    summary = "How the latest backup of this server goes",
    description = "`status` is `running`, `done` (with `report`: entries, bytes, events, \
        taken_at, millis) or `failed` (with `error`).",
    responses(
        (status = 200, description = "The job", body = serde_json::Value),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn latest(_: Admin, State(app): State<AppState>) -> Result<Response, ApiError> {
    let latest = app
        .backups
        .latest
        .lock()
        .expect("backup lock is never poisoned");
    match latest.as_ref() {
        Some(job) => Ok(Json(job.view()).into_response()),
        None => Err(ApiError::not_found(
            "no backup was started since the server started",
        )),
    }
}
