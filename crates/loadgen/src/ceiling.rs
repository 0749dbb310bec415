//! `pulsestream-bench ceiling`: a bare axum server that accepts the same requests as
//! PulseStream and parses the same JSON (payloads as raw JSON, as the real server keeps
//! them), but stores nothing and answers small fixed-shape JSON. Its throughput is the
//! network + HTTP + parse ceiling that BENCHMARKS.md compares the real server against.
//!
//! Authorization is not checked and idempotency keys are ignored; everything else a run
//! sends gets an answer of the same status and shape the real server would give.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpListener;

/// The real server's body limit, so oversized requests fail the same way.
const BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;
/// The most events one batch may carry.
const MAX_BATCH_EVENTS: usize = 1_000;
/// The longest `event_id`, `event_type` or `source`, in characters.
const MAX_STRING_CHARS: usize = 256;

/// Serves the ceiling on `listen` until Ctrl-C.
///
/// # Errors
/// The address cannot be bound, or the server fails.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!(
        "ceiling server listening on http://{}",
        listener.local_addr()?
    );
    serve_on(listener).await
}

/// Serves the ceiling on an already bound listener until Ctrl-C.
///
/// # Errors
/// The server fails.
pub async fn serve_on(listener: TcpListener) -> anyhow::Result<()> {
    let listener = listener.tap_io(|tcp| {
        // As the real server does: answers are small and latency matters.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the ceiling server failed")
}

/// Every route a run can call.
pub fn router() -> Router {
    Router::new()
        .route("/v1/events", post(post_event).get(search))
        .route("/v1/events/batch", post(post_batch))
        .route("/admin/tenants", post(create_tenant))
        .route("/readyz", get(ready))
        .route("/healthz", get(ready))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
}

/// An event as the real server reads it: known fields, the payload kept as raw JSON.
#[derive(Debug, Deserialize)]
struct Event {
    event_id: Option<String>,
    event_type: String,
    source: Option<String>,
    timestamp: Option<String>,
    payload: Option<Box<RawValue>>,
}

impl Event {
    /// The first rule of API.md the event breaks, cheaply checked.
    fn problem(&self) -> Option<&'static str> {
        let bad = |text: &str, min: usize| {
            let chars = text.chars().count();
            chars < min || chars > MAX_STRING_CHARS
        };
        if bad(&self.event_type, 1) {
            return Some("event_type must be 1 to 256 characters");
        }
        if self.event_id.as_deref().is_some_and(|id| bad(id, 1)) {
            return Some("event_id must be 1 to 256 characters");
        }
        if self.source.as_deref().is_some_and(|source| bad(source, 0)) {
            return Some("source must be at most 256 characters");
        }
        if self.timestamp.as_deref().is_some_and(|ts| ts.len() < 20) {
            return Some("timestamp must be an RFC 3339 date-time");
        }
        if self
            .payload
            .as_deref()
            .is_some_and(|payload| !payload.get().starts_with('{'))
        {
            return Some("payload must be an object");
        }
        None
    }
}

/// An error answer: a status and a short explanation.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// 400 for JSON that does not parse, 422 for JSON of the wrong shape.
    fn json(err: &serde_json::Error) -> Self {
        if err.is_data() {
            Self::invalid(err.to_string())
        } else {
            Self::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {err}"),
            )
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "status": self.status.as_u16(), "detail": self.detail });
        (self.status, Json(body)).into_response()
    }
}

fn utf8(body: &[u8]) -> Result<&str, Problem> {
    std::str::from_utf8(body)
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the body is not valid UTF-8"))
}

/// Counts fake ids, so every accepted event gets a distinct one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Serialize)]
struct Accepted {
    id: String,
    event_id: Option<String>,
    status: &'static str,
}

/// The answer to a valid single event.
fn ingest_single(body: &[u8]) -> Result<Accepted, Problem> {
    let event: Event = serde_json::from_str(utf8(body)?).map_err(|err| Problem::json(&err))?;
    if let Some(problem) = event.problem() {
        return Err(Problem::invalid(problem));
    }
    Ok(Accepted {
        id: format!("evt_{:016x}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        event_id: event.event_id,
        status: "accepted",
    })
}

#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct BatchAnswer {
    accepted: usize,
    duplicates: usize,
    rejected: usize,
}

/// The answer to a batch: each event parsed on its own, as the real server does, so one
/// bad event rejects only itself.
fn ingest_batch(body: &[u8]) -> Result<(StatusCode, BatchAnswer), Problem> {
    let envelope: Envelope<'_> =
        serde_json::from_str(utf8(body)?).map_err(|err| Problem::json(&err))?;
    let total = envelope.events.len();
    if total == 0 || total > MAX_BATCH_EVENTS {
        return Err(Problem::invalid(format!(
            "events must hold 1 to {MAX_BATCH_EVENTS} events, got {total}"
        )));
    }
    let accepted = envelope
        .events
        .iter()
        .filter(|raw| {
            serde_json::from_str::<Event>(raw.get()).is_ok_and(|event| event.problem().is_none())
        })
        .count();
    let answer = BatchAnswer {
        accepted,
        duplicates: 0,
        rejected: total - accepted,
    };
    let status = match (answer.accepted, answer.rejected) {
        (0, _) => StatusCode::UNPROCESSABLE_ENTITY,
        (_, 0) => StatusCode::OK,
        _ => StatusCode::MULTI_STATUS,
    };
    Ok((status, answer))
}

/// `POST /v1/events`.
async fn post_event(body: Bytes) -> Response {
    match ingest_single(&body) {
        Ok(accepted) => (StatusCode::CREATED, Json(accepted)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `POST /v1/events/batch`.
async fn post_batch(body: Bytes) -> Response {
    match ingest_batch(&body) {
        Ok((status, answer)) => (status, Json(answer)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `GET /v1/events`: always an empty page.
async fn search() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"events":[],"next_cursor":null}"#,
    )
        .into_response()
}

/// `POST /admin/tenants`: a fake tenant whose key the ceiling never checks.
async fn create_tenant() -> Response {
    let tenant = serde_json::json!({
        "id": "ten_ceiling",
        "name": "ceiling",
        "rate_limit_per_minute": 1_000_000_000,
        "burst": 1_000_000_000,
        "api_key": "ps_ceiling_key_not_checked",
    });
    (StatusCode::CREATED, Json(tenant)).into_response()
}

/// `GET /readyz` and `GET /healthz`.
async fn ready() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ready" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"event_id":"e1","event_type":"order.created","source":"checkout","timestamp":"2025-10-02T12:00:00Z","payload":{"total":1}}"#;

    #[test]
    fn a_valid_event_is_accepted_and_a_bad_one_is_not() {
        let accepted = ingest_single(EVENT.as_bytes()).expect("a valid event");
        assert_eq!(accepted.event_id.as_deref(), Some("e1"));
        let status = |body: &str| {
            ingest_single(body.as_bytes())
                .err()
                .map(|problem| problem.status)
        };
        assert_eq!(status("{"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status("{}"), Some(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(
            status(r#"{"event_type":"x","payload":[1]}"#),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
    }

    #[test]
    fn batches_count_each_event_on_its_own() {
        let all_good = format!(r#"{{"events":[{EVENT},{EVENT}]}}"#);
        let (status, answer) = ingest_batch(all_good.as_bytes()).expect("a valid batch");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer.accepted, 2);

        let partial = format!(r#"{{"events":[{EVENT},{{"payload":{{}}}}]}}"#);
        let (status, answer) = ingest_batch(partial.as_bytes()).expect("a valid envelope");
        assert_eq!(status, StatusCode::MULTI_STATUS);
        assert_eq!((answer.accepted, answer.rejected), (1, 1));

        let empty = ingest_batch(br#"{"events":[]}"#).err().map(|p| p.status);
        assert_eq!(empty, Some(StatusCode::UNPROCESSABLE_ENTITY));
    }
}
