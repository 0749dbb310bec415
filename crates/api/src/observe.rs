//! Observing every request: a span with the request id, one log line when it ends (tenant,
//! route, status, events, latency), and the HTTP and ingest metrics.
//!
//! Metric names follow Prometheus conventions (`pulsestream_<noun>_<unit>`, `_total` for
//! counters) and labels stay bounded: routes are templates, and only the first
//! [`TenantLabels`] tenants get their own `tenant` label, the rest share `other`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pulsestream_core::TenantId;
use tracing::Instrument;

use crate::error::ApiError;

/// HTTP/1.1's framing rules that hyper leaves to the application (RFC 9112): exactly one
/// `Host` (none is allowed only in HTTP/1.0), and no transfer coding but `chunked`, which
/// hyper decodes (a `gzip, chunked` body would otherwise be read as plain text).
pub async fn framing(request: Request, next: Next) -> Response {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let needs_host = request.version() == axum::http::Version::HTTP_11;
    if hosts > 1 || (needs_host && hosts == 0) {
        return ApiError::bad_request(
            "bad_host",
            "an HTTP/1.1 request carries exactly one Host header",
        )
        .into_response();
    }
    for value in request.headers().get_all(header::TRANSFER_ENCODING) {
        let codings = value.to_str().unwrap_or("?");
        if codings
            .split(',')
            .any(|coding| !coding.trim().eq_ignore_ascii_case("chunked"))
        {
            return ApiError::not_implemented(format!(
                "Transfer-Encoding {codings:?} is not supported; send chunked, or a Content-Length (compress with Content-Encoding instead)"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// What a handler learned about its request, for the log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    pub tenant: Option<TenantId>,
    /// Events the request carried, for ingest requests.
    pub events: Option<usize>,
}

/// Hands out `tenant` label values: the id for the first `max` tenants seen, `other` after.
#[derive(Debug)]
pub struct TenantLabels {
    max: usize,
    known: Mutex<HashSet<TenantId>>,
}

impl TenantLabels {
    /// Labels at most `max` tenants by id.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            known: Mutex::new(HashSet::new()),
        }
    }

    /// Returns the label value for a tenant.
    pub fn label(&self, tenant: TenantId) -> String {
        let mut known = self
            .known
            .lock()
            .expect("tenant label lock is never poisoned");
        if known.contains(&tenant) || (known.len() < self.max && known.insert(tenant)) {
            tenant.to_string()
        } else {
            "other".to_owned()
        }
    }
}

/// Declares every metric of the API with its help text.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "pulsestream_disk_free_bytes",
        "Free bytes on the data directory's filesystem (embedded store), measured every second"
    );
    metrics::describe_gauge!(
        "pulsestream_disk_low",
        "1 while free disk space is below --min-free-disk and ingest answers 507"
    );
    metrics::describe_counter!(
        "pulsestream_disk_refusals_total",
        "Ingest requests refused with 507 for lack of disk space"
    );
    metrics::describe_counter!(
        "pulsestream_retention_deleted_events_total",
        "Events deleted because they were older than their tenant's retention"
    );
    metrics::describe_counter!(
        "pulsestream_partitions_dropped_total",
        "Month partitions of events dropped whole by retention (PostgreSQL)"
    );
    metrics::describe_counter!(
        "pulsestream_erasures_total",
        "Erasures carried out (POST /v1/events/erase without dry_run)"
    );
    metrics::describe_counter!(
        "pulsestream_erased_events_total",
        "Events erased by POST /v1/events/erase"
    );
    metrics::describe_histogram!(
        "pulsestream_backup_duration_seconds",
        "How long online backups took (POST /admin/backups)"
    );
    metrics::describe_counter!(
        "pulsestream_exported_events_total",
        "Events streamed by GET /v1/events/export"
    );
    metrics::describe_counter!(
        "pulsestream_tail_cut_total",
        "Live-tail streams ended early, by reason (slow_reader, shutdown, unavailable)"
    );
    metrics::describe_counter!(
        "pulsestream_http_requests_total",
        "HTTP requests answered, by route, method and status"
    );
    metrics::describe_histogram!(
        "pulsestream_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from the request's arrival to its answer, by route and method"
    );
    metrics::describe_counter!(
        "pulsestream_events_total",
        "Events by outcome (accepted, duplicate, rejected, rate_limited) and tenant"
    );
    metrics::describe_counter!(
        "pulsestream_ingest_messages_total",
        "Messages received through another product's wire format, by protocol (segment, posthog, cloudevents)"
    );
    metrics::describe_counter!(
        "pulsestream_compat_rejected_total",
        "Messages of another product's wire format not stored, by protocol and reason"
    );
}

/// The longest client `X-Request-Id` kept.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// Outermost middleware: a client's `X-Request-Id` that is empty, longer than 128
/// characters, or holds anything but letters, digits and `-_.:/+=` is dropped, so that a new
/// one is made for the request. The id is logged and echoed: a quote or a space in it could
/// forge fields in a text log line (`abc" status=200 injected="1`), and its length is the
/// client's to choose.
pub async fn drop_unsafe_request_id(mut request: Request, next: Next) -> Response {
    let unsafe_id = request.headers().get_all("x-request-id").iter().count() > 1
        || request.headers().get("x-request-id").is_some_and(|value| {
            let bytes = value.as_bytes();
            bytes.is_empty()
                || bytes.len() > MAX_REQUEST_ID_CHARS
                || !bytes
                    .iter()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:/+=".contains(byte))
        });
    if unsafe_id {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// Middleware around every route.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!("request", %method, route = %route, request_id = %request_id);
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::counter!("pulsestream_http_requests_total", "route" => route.clone(), "method" => method.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("pulsestream_http_request_duration_seconds", "route" => route, "method" => method.to_string())
        .record(elapsed.as_secs_f64());
    let facts = response
        .extensions()
        .get::<RequestFacts>()
        .copied()
        .unwrap_or_default();
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1_000.0,
            tenant_id = facts.tenant.map(tracing::field::display),
            events = facts.events,
            "request finished"
        );
    });
    response
}

/// Middleware: answers 408 (problem+json) when a request, body upload included, takes
/// longer than `limit`, so a slow client cannot hold a connection and a task forever.
pub async fn time_limit(limit: std::time::Duration, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => crate::error::ApiError::request_timeout(format!(
            "the request took longer than {} s, body upload included",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// Counts events by outcome for a tenant.
pub fn count_events(labels: &TenantLabels, tenant: TenantId, outcome: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!("pulsestream_events_total", "outcome" => outcome, "tenant" => labels.label(tenant))
            .increment(count as u64);
    }
}
