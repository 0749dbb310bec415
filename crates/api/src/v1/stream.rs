//! `GET /v1/events/stream`: the live tail, as Server-Sent Events.
//!
//! Each subscriber has a task that reads the tenant's tail from the store (events in commit
//! order, see `pulsestream_store::TailPosition`) and puts the events that pass the filters
//! into a bounded channel; the response body drains it. Reading from the store, never from
//! the ingest path, is what keeps a slow reader from slowing ingest: the worst it can do is
//! fill its own channel, and then it is cut with a final `cut` event naming where it got
//! to, so it can resume with `Last-Event-ID` and miss nothing.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use pulsestream_core::TenantId;
use pulsestream_store::{ActivityStore, SearchQuery, TailPosition, event_matches};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::events::parse_search;
use crate::AppState;
use crate::auth::AuthTenant;
use crate::error::{ApiError, ErrorItem};
use crate::extract::Query;
use crate::openapi as doc;

/// How often a subscriber looks for new events: an event is on the stream well within a
/// second of its 2xx.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Events read from the store at once.
const PAGE: usize = 200;
/// How long a full channel may stay full before its reader is cut.
const SLOW_READER_GRACE: Duration = Duration::from_secs(5);
/// A heartbeat comment this often keeps proxies from closing an idle stream.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// How long the store may fail before the stream gives up (the client resumes later).
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Live tails one node serves at once, and one tenant of them.
const MAX_STREAMS: usize = 1_024;
const MAX_STREAMS_PER_TENANT: usize = 32;

/// The live tails open on this node, by tenant.
#[derive(Debug, Default)]
pub struct TailStreams {
    open: std::sync::Mutex<std::collections::HashMap<TenantId, usize>>,
}

/// One open live tail; closes itself when dropped.
struct StreamSlot {
    streams: std::sync::Arc<TailStreams>,
    tenant: TenantId,
}

impl TailStreams {
    /// Takes a slot for a new stream, or says why there is none.
    fn open(self: &std::sync::Arc<Self>, tenant: TenantId) -> Result<StreamSlot, ApiError> {
        let mut open = self
            .open
            .lock()
            .expect("stream count lock is never poisoned");
        let total: usize = open.values().sum();
        let mine = open.get(&tenant).copied().unwrap_or(0);
        if total >= MAX_STREAMS || mine >= MAX_STREAMS_PER_TENANT {
            return Err(ApiError::unavailable(
                format!(
                    "too many live tails open ({mine} of this tenant's {MAX_STREAMS_PER_TENANT}, \
                     {total} of this node's {MAX_STREAMS}); close one or try again later"
                ),
                30,
            ));
        }
        *open.entry(tenant).or_default() += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            tenant,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .expect("stream count lock is never poisoned");
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// `GET /v1/events/stream`.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    summary = "Live tail of the tenant's events (Server-Sent Events)",
    description = "Events as they are stored, in commit order, as `text/event-stream`. Takes the \
        search filters (`event_id`, `event_type`, `source`, `since`, `until`, `payload.<path>`, \
        `q`). Starts with the next event stored, or after `Last-Event-ID` (header, or the \
        `last_event_id` parameter) without gaps or repeats. Sends `event: ready` first, then \
        `event: event` with `id:` and the stored event as `data:`, `event: duplicate` (the \
        stored event again) when a client's retry of it was answered `duplicate`, a \
        `: heartbeat` comment every \
        15 s, and `event: cut` before it ends early (`slow_reader`, `shutdown`, `unavailable`), \
        with the `last_event_id` to resume from.",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event's `id:`"),
        ("last_event_id" = Option<String>, Query, description = "The same, for clients that cannot set headers"),
        ("event_type" = Option<String>, Query, description = "As in search; repeatable"),
        ("source" = Option<String>, Query, description = "As in search"),
        ("q" = Option<String>, Query, description = "As in search"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 401, response = doc::Unauthorized),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn stream(
    State(app): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (query, resume) = parse_stream(&headers, params)?;
    let slot = app.tail_streams.open(tenant.id)?;
    let start = match resume {
        Some(position) => Some(position),
        None => app.activity.tail_end(tenant.id).await?,
    };
    let (events, received) = mpsc::channel(app.config.tail_buffer_events.max(1));
    let (cut, cut_received) = oneshot::channel();
    let reader = TailReader {
        store: app.activity.clone(),
        tenant: tenant.id,
        query,
        after: start,
        events,
        stop: app.tail_stop.clone(),
        _slot: slot,
    };
    tokio::spawn(reader.run(cut));
    let ready = Event::default()
        .event("ready")
        .data(json!({ "last_event_id": start.map(|p| p.token()) }).to_string());
    let body = futures::stream::once(async { ready })
        .chain(futures::stream::unfold(received, |mut received| async {
            received.recv().await.map(|event| (event, received))
        }))
        .chain(futures::stream::once(cut_received).filter_map(|cut| async { cut.ok() }))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT_EVERY).text("heartbeat"))
        .into_response())
}

/// Reads the filters and where to resume: `Last-Event-ID`, or `last_event_id`.
fn parse_stream(
    headers: &HeaderMap,
    params: Vec<(String, String)>,
) -> Result<(SearchQuery, Option<TailPosition>), ApiError> {
    let bad = |loc: [&str; 2], kind: &str, msg: &str| {
        ApiError::validation(
            "1 bad parameter",
            vec![ErrorItem {
                loc: loc.iter().map(|part| (*part).into()).collect(),
                kind: kind.into(),
                msg: msg.into(),
            }],
        )
    };
    let mut token = match headers.get("last-event-id") {
        Some(value) => Some((
            ["header", "Last-Event-ID"],
            value
                .to_str()
                .map_err(|_| {
                    bad(
                        ["header", "Last-Event-ID"],
                        "cursor_invalid",
                        "is not an id of this stream",
                    )
                })?
                .to_owned(),
        )),
        None => None,
    };
    let mut filters = Vec::with_capacity(params.len());
    for (name, value) in params {
        match name.as_str() {
            "last_event_id" if token.is_none() => token = Some((["query", "last_event_id"], value)),
            "last_event_id" => {}
            "limit" | "cursor" | "order" => {
                return Err(bad(
                    ["query", &name],
                    "unknown_parameter",
                    "is not a parameter of the stream (it has no pages)",
                ));
            }
            _ => filters.push((name, value)),
        }
    }
    let query = parse_search(filters)?;
    let resume = match token {
        // An empty Last-Event-ID (EventSource's first connection) means "from now".
        Some((_, token)) if token.trim().is_empty() => None,
        Some((loc, token)) => Some(
            TailPosition::parse(token.trim())
                .ok_or_else(|| bad(loc, "cursor_invalid", "is not an id of this stream"))?,
        ),
        None => None,
    };
    Ok((query, resume))
}

/// One subscriber's reader: from the store into its channel.
struct TailReader {
    store: std::sync::Arc<dyn ActivityStore>,
    tenant: TenantId,
    query: SearchQuery,
    after: Option<TailPosition>,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
    /// Held while the reader runs: the stream counts as open until it ends.
    _slot: StreamSlot,
}

impl TailReader {
    async fn run(mut self, cut: oneshot::Sender<Event>) {
        let reason = self.read().await;
        if let Some((reason, detail)) = reason {
            tracing::debug!(tenant_id = %self.tenant, reason, "live tail cut");
            metrics::counter!("pulsestream_tail_cut_total", "reason" => reason).increment(1);
            let _ = cut.send(
                Event::default().event("cut").data(
                    json!({
                        "reason": reason,
                        "detail": detail,
                        "last_event_id": self.after.map(|p| p.token()),
                    })
                    .to_string(),
                ),
            );
        }
        // Dropping the sender ends the body after what is buffered, then the cut event.
    }

    /// Reads until the subscriber leaves (`None`) or must be cut (the reason and detail).
    async fn read(&mut self) -> Option<(&'static str, String)> {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            if self.stop.is_cancelled() {
                return Some((
                    "shutdown",
                    "the server is shutting down; resume with last_event_id".into(),
                ));
            }
            let page = match self.store.tail(self.tenant, self.after, PAGE).await {
                Ok(page) => {
                    failing_since = None;
                    page
                }
                Err(err) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > STORE_PATIENCE {
                        return Some(("unavailable", format!("the store cannot be read: {err}")));
                    }
                    tokio::time::sleep(POLL_EVERY * 5).await;
                    continue;
                }
            };
            let full = page.events.len() == PAGE;
            for (position, event) in page.events {
                // What the reader passes over counts as read: a resume starts after it.
                if event_matches(&event.json, &self.query) {
                    // A raw CR can only be whitespace in JSON (in strings it is escaped), and
                    // SSE reads it as a line break: leave it out.
                    let data = String::from_utf8_lossy(&event.json).replace('\r', "");
                    let kind = if position.duplicate {
                        "duplicate"
                    } else {
                        "event"
                    };
                    let frame = Event::default().id(position.token()).event(kind).data(data);
                    match tokio::time::timeout(SLOW_READER_GRACE, self.events.send(frame)).await {
                        Ok(Ok(())) => {}
                        // The subscriber left.
                        Ok(Err(_)) => return None,
                        Err(_) => {
                            return Some((
                                "slow_reader",
                                "the reader fell too far behind; resume with last_event_id".into(),
                            ));
                        }
                    }
                }
                self.after = Some(position);
            }
            if full {
                continue;
            }
            tokio::select! {
                () = self.events.closed() => return None,
                () = self.stop.cancelled() => {}
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}
