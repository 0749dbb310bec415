//! axum's `Path`, `Query` and `Json` extractors with [`ApiError`] as their rejection, so a bad
//! path, query string or JSON body gets a problem document like every other error, never
//! axum's plain-text rejection.
//!
//! Handlers use these instead of axum's; the extraction itself is axum's, unchanged.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::body::{SMALL_BODY_LIMIT, decode_content};
use crate::error::{ApiError, ErrorItem};

/// Path parameters; a path that cannot be read as `T` gets 404 (no such resource) or 400.
#[derive(Debug)]
pub struct Path<T>(pub T);

/// The query string; one that cannot be read as `T` gets 422 naming the query.
#[derive(Debug)]
pub struct Query<T>(pub T);

/// A JSON body: 400 for broken JSON, 415 for another content type or an unsupported
/// `Content-Encoding` (gzip and zstd are decoded, as on every endpoint), 422 for the wrong
/// shape.
/// As `Option<Json<T>>`, a request without a `Content-Type` has no body.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Self(value))
    }
}

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(query_rejection)?;
        Ok(Self(value))
    }
}

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let request = decode_content(request, SMALL_BODY_LIMIT).await?;
        let axum::Json(value) = <axum::Json<T> as FromRequest<S>>::from_request(request, state)
            .await
            .map_err(json_rejection)?;
        Ok(Self(value))
    }
}

impl<S, T> OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let request = decode_content(request, SMALL_BODY_LIMIT).await?;
        let value = <axum::Json<T> as OptionalFromRequest<S>>::from_request(request, state)
            .await
            .map_err(json_rejection)?;
        Ok(value.map(|axum::Json(value)| Self(value)))
    }
}

/// Turns axum's JSON rejection into our problem documents (400 syntax, 415 type, 422 schema).
fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large(rejection.body_text());
    }
    match rejection {
        JsonRejection::JsonDataError(err) => ApiError::validation(
            err.body_text(),
            vec![ErrorItem {
                loc: vec!["body".into()],
                kind: "value_error".into(),
                msg: err.body_text(),
            }],
        ),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::unsupported_media_type("send the body as application/json")
        }
        other => ApiError::bad_request("invalid_json", other.body_text()),
    }
}

/// A query string that does not fit the endpoint's parameters (`limit=abc`).
fn query_rejection(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    ApiError::validation(
        "1 bad query parameter",
        vec![ErrorItem {
            loc: vec!["query".into()],
            kind: "query_parsing".into(),
            msg: text,
        }],
    )
}

/// A path segment that cannot be read (percent-encoding that is not UTF-8): no resource has
/// such an id, so the answer is 404 like for any unknown id. A server-side rejection (a
/// handler asking for parameters its route lacks) is a bug and logged as such.
fn path_rejection(rejection: PathRejection) -> ApiError {
    if rejection.status().is_client_error() {
        ApiError::not_found(format!("no such resource: {}", rejection.body_text()))
    } else {
        ApiError::internal(rejection)
    }
}
