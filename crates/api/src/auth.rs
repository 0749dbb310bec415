//! Who is calling: the `AuthTenant` extractor (API key -> tenant) and the `Admin` extractor
//! (admin token), both `Authorization: Bearer ...`.
//!
//! Keys and the admin token are only ever compared as SHA-256 digests: keys are looked up
//! by digest, and the admin token's digest is compared in constant time.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pulsestream_core::{KeyScope, Tenant, TenantKey};
use pulsestream_limits::Decision;

use crate::observe::RequestFacts;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The tenant whose API key authenticated this request.
#[derive(Debug, Clone)]
pub struct AuthTenant(pub Tenant);

/// Proof that the request carried the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// Returns the hex SHA-256 of a secret, the only form in which secrets are kept.
pub fn secret_hash(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        // Every request hashes its key: no formatting machinery per byte.
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send your key as Authorization: Bearer <key>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is malformed"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be Bearer <key>",
        )),
    }
}

impl FromRequestParts<AppState> for AuthTenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // `tenant_context` has usually authenticated the request already.
        if let Some(tenant) = parts.extensions.get::<AuthTenant>() {
            return Ok(tenant.clone());
        }
        authenticate(parts, state).await
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<AuthTenant, ApiError> {
    let hash = secret_hash(bearer(&parts.headers)?);
    let Some(tenant) = state.tenants.tenant_by_key_hash(&hash).await? else {
        return Err(ApiError::unauthorized("unknown or revoked API key"));
    };
    // An ingest-only key (made for browser and mobile SDKs, where anyone can read it) may
    // send events and nothing else: not read them, not manage destinations.
    if tenant.key_scope(&hash) == Some(KeyScope::Ingest) && !sends_events(parts) {
        return Err(ApiError::forbidden(
            "this key may only send events (its scope is ingest); read and manage with a full key",
        ));
    }
    Ok(AuthTenant(tenant))
}

/// The requests an ingest-only key may make.
fn sends_events(parts: &Parts) -> bool {
    parts.method == axum::http::Method::POST
        && matches!(
            parts.uri.path(),
            "/v1/events" | "/v1/events/batch" | "/v1/cloudevents"
        )
}

/// The key of `tenant` that authenticated a request with these headers.
pub(crate) fn calling_key<'a>(tenant: &'a Tenant, headers: &HeaderMap) -> Option<&'a TenantKey> {
    let hash = secret_hash(bearer(headers).ok()?);
    tenant.keys.iter().find(|key| key.hash == hash)
}

/// Middleware of every tenant route: authenticates once (401 otherwise), and puts the
/// tenant's `RateLimit-*` headers on whatever the route answers: the decision the handler
/// made, or else the current state of the budget.
pub async fn tenant_context(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let tenant = match authenticate(&parts, &state).await {
        Ok(tenant) => tenant,
        Err(err) => return err.into_response(),
    };
    parts.extensions.insert(tenant.clone());
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let decision = match response.extensions().get::<Decision>() {
        Some(decision) => *decision,
        None => {
            state
                .limiter
                .admit(tenant.0.id, tenant.0.rate_limit, 0)
                .await
        }
    };
    crate::v1::rate_limit::set_headers(response.headers_mut(), tenant.0.rate_limit, &decision);
    let facts = response
        .extensions()
        .get::<RequestFacts>()
        .copied()
        .unwrap_or_default();
    response.extensions_mut().insert(RequestFacts {
        tenant: Some(tenant.0.id),
        ..facts
    });
    response
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        if constant_time_eq(
            secret_hash(token).as_bytes(),
            state.admin_token_hash.as_bytes(),
        ) {
            Ok(Self)
        } else {
            Err(ApiError::unauthorized("the admin token is wrong"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_to_lowercase_hex_sha256() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
