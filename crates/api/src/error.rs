//! `ApiError`: the one error type of the HTTP boundary, and the only place that turns
//! errors into responses (RFC 9457 problem+json).
//!
//! Each kind has one status from API.md and a stable `code`. Server-side failures are
//! logged here with their cause chain; the client gets a generic message. Client errors
//! say exactly what to fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pulsestream_store::StoreError;
use serde::Serialize;
use serde_json::{Map, Value};

/// One problem with one part of the request, located by `loc`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorItem {
    /// Where: `"body"` or `"query"`, then field names and array indexes, e.g.
    /// `["body", "events", 5, "event_type"]`.
    #[schema(schema_with = crate::openapi::loc_schema)]
    pub loc: Vec<Value>,
    /// A stable code for the kind of problem, e.g. `missing`, `string_too_long`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What is wrong, for a human.
    pub msg: String,
}

/// An error answer. Build it with the constructors; each picks the status. Boxed, so
/// `Result<_, ApiError>` stays one word wide on the happy path.
#[derive(Debug)]
pub struct ApiError(Box<Problem>);

#[derive(Debug)]
struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<ErrorItem>,
    extra: Map<String, Value>,
    retry_after_secs: Option<u64>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Problem {
            status,
            code,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            extra: Map::new(),
            retry_after_secs: None,
            source: None,
        }))
    }

    /// 400: the body is not valid JSON or UTF-8, or a header is malformed.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Malformed request", detail)
    }

    /// 501: a request framing the server does not implement (a transfer coding).
    pub fn not_implemented(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "Not implemented",
            detail,
        )
    }

    /// 401: missing or unknown credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 403: the credentials are good but may not do this (an ingest-only key reading).
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404: no such resource for this tenant.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }

    /// 405: the path exists, but not with this method.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            detail,
        )
    }

    /// 409: a conflicting event, or an `Idempotency-Key` still in flight.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, "Conflict", detail)
    }

    /// 413: the body is over the limit.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Request body too large",
            detail,
        )
    }

    /// 415: a content type or encoding the endpoint does not take.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            detail,
        )
    }

    /// 422: well-formed JSON that breaks the schema; `errors` says where.
    pub fn validation(detail: impl Into<String>, errors: Vec<ErrorItem>) -> Self {
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            detail,
        );
        err.0.errors = errors;
        err
    }

    /// 422 for a request that is understood but cannot be honoured as sent.
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "Unprocessable request",
            detail,
        )
    }

    /// 422: one bad query parameter, located at `["query", name]`.
    /// The same problem with each error's location moved from under `from` to under `to`
    /// (a filter checked by the query parser but sent in a body).
    pub(crate) fn relocated(mut self, from: &str, to: &[&str]) -> Self {
        for item in &mut self.0.errors {
            if item.loc.first().is_some_and(|first| first == from) {
                item.loc
                    .splice(..1, to.iter().map(|part| Value::from(*part)));
            }
        }
        self
    }

    pub fn bad_query(name: &str, kind: &str, msg: impl Into<String>) -> Self {
        Self::validation(
            "1 bad query parameter",
            vec![ErrorItem {
                loc: vec!["query".into(), name.into()],
                kind: kind.into(),
                msg: msg.into(),
            }],
        )
    }

    /// 422: the `Idempotency-Key` belongs to a different request body.
    pub fn idempotency_key_reused() -> Self {
        Self::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request; use a new key for a new request",
        )
    }

    /// 429: the tenant's budget cannot cover the request now.
    pub fn rate_limited(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
            detail,
        );
        err.0.retry_after_secs = Some(retry_after_secs);
        err
    }

    /// 507: the data directory's filesystem is short of free space: nothing was stored.
    pub fn insufficient_storage(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "Insufficient storage",
            detail,
        );
        err.0.retry_after_secs = Some(retry_after_secs);
        err
    }

    /// 408: the request (its body upload included) took too long.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request timeout",
            detail,
        )
    }

    /// 503: a dependency is unavailable or the server sheds load; the request had no effect.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        err.0.retry_after_secs = Some(retry_after_secs);
        err
    }

    /// 500: a bug or corrupt data; the cause is logged, never shown.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut err = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle this request; it has been logged",
        );
        err.0.source = Some(source.into());
        err
    }

    /// Adds a field to the problem document (`existing_id`, batch `results`, ...).
    pub fn with_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.0.extra.insert(name.to_owned(), value.into());
        self
    }

    fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// Adds `code` and `message`, the members Segment's SDKs read from an error answer
    /// (to log it), to the problem document.
    pub fn with_segment_members(self) -> Self {
        let (code, message) = (self.0.code, self.0.detail.clone());
        self.with_field("code", code).with_field("message", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Overloaded => {
                ApiError::unavailable("the server is overloaded; retry after a moment", 1)
                    .with_source(err)
            }
            StoreError::Unavailable(_) => {
                ApiError::unavailable("storage is unavailable; retry after a moment", 2)
                    .with_source(err)
            }
            StoreError::Corrupt(_) => ApiError::internal(err),
            StoreError::IdempotencyKeyReused => ApiError::idempotency_key_reused(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = *self.0;
        problem.into_response()
    }
}

impl Problem {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            let chain = self
                .source
                .as_deref()
                .map(|err| error_chain(err))
                .unwrap_or_default();
            tracing::error!(status = self.status.as_u16(), code = self.code, error = %chain, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), code = self.code, detail = %self.detail, "request refused");
        }
        let mut body = Map::new();
        body.insert("type".into(), format!("/problems/{}", self.code).into());
        body.insert("title".into(), self.title.into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.into());
        if !self.errors.is_empty() {
            body.insert(
                "errors".into(),
                serde_json::to_value(&self.errors).unwrap_or_default(),
            );
        }
        body.extend(self.extra);
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The innermost cause of an error: what an operator needs to read.
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(err), |err| err.source())
        .last()
        .map_or_else(String::new, ToString::to_string)
}

/// An error and its causes, `error: cause: cause…`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
