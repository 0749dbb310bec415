//! The `Idempotency-Key` header: replay a finished request's answer, refuse a different
//! body under the same key (422) and a request whose twin is still running (409).
//!
//! A key's outcome is recorded by the store in the same commit as the request's events, so
//! a crash can never leave events stored without the record that makes a retry a replay.
//! Requests in flight are tracked in memory; after claiming a key the record is looked up
//! again, which closes the window in which a twin finished between the two steps.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use pulsestream_core::TenantId;
use pulsestream_store::{IDEMPOTENCY_WINDOW, IdempotencyClaim, IdempotencyRecord};
use time::OffsetDateTime;

use crate::AppState;
use crate::error::ApiError;

const MAX_KEY_CHARS: usize = 255;

/// Keys of requests being processed right now, per tenant.
pub type InFlightKeys = Arc<Mutex<HashSet<(TenantId, String)>>>;

/// What to do with a request, as far as its `Idempotency-Key` is concerned.
#[derive(Debug)]
pub enum Idempotency {
    /// No key: process normally.
    Absent,
    /// The key's first request finished: answer as it did.
    Replay(IdempotencyRecord),
    /// A new key, now claimed by this request until the guard drops.
    Claimed(ClaimGuard),
}

/// Holds a key in flight; dropping it releases the key.
#[derive(Debug)]
pub struct ClaimGuard {
    in_flight: InFlightKeys,
    entry: (TenantId, String),
    pub claim: IdempotencyClaim,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .expect("in-flight key lock is never poisoned")
            .remove(&self.entry);
    }
}

/// Reads the header and decides.
///
/// # Errors
/// 400 for a malformed key, 422 for a key reused with another body, 409 while the key's
/// first request is still being processed.
pub async fn begin(
    app: &AppState,
    tenant: TenantId,
    headers: &HeaderMap,
    request_hash: u128,
) -> Result<Idempotency, ApiError> {
    let Some(key) = parse_key(headers)? else {
        return Ok(Idempotency::Absent);
    };
    if let Some(record) = finished(app, tenant, &key, request_hash).await? {
        return Ok(Idempotency::Replay(record));
    }
    let entry = (tenant, key.clone());
    if !app
        .in_flight
        .lock()
        .expect("in-flight key lock is never poisoned")
        .insert(entry.clone())
    {
        return Err(ApiError::conflict(
            "idempotency_in_flight",
            "a request with this Idempotency-Key is still being processed; retry after a moment",
        ));
    }
    let guard = ClaimGuard {
        in_flight: app.in_flight.clone(),
        entry,
        claim: IdempotencyClaim {
            key: key.clone(),
            request_hash,
        },
    };
    if let Some(record) = finished(app, tenant, &key, request_hash).await? {
        return Ok(Idempotency::Replay(record));
    }
    Ok(Idempotency::Claimed(guard))
}

async fn finished(
    app: &AppState,
    tenant: TenantId,
    key: &str,
    request_hash: u128,
) -> Result<Option<IdempotencyRecord>, ApiError> {
    let Some(record) = app.events.idempotency_record(tenant, key).await? else {
        return Ok(None);
    };
    if record.created_at + IDEMPOTENCY_WINDOW <= OffsetDateTime::now_utc() {
        return Ok(None);
    }
    if record.request_hash != request_hash {
        return Err(ApiError::idempotency_key_reused());
    }
    Ok(Some(record))
}

/// Reads `Idempotency-Key`, bare or as a quoted string.
fn parse_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "bad_idempotency_key",
            "send one Idempotency-Key header, not several",
        ));
    }
    let bad = || {
        ApiError::bad_request(
            "bad_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters, bare or quoted"
            ),
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let key = match text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => inner,
        None => text,
    };
    // Visible ASCII only: a tab or space inside a key is refused, not stored.
    if key.is_empty()
        || key.len() > MAX_KEY_CHARS
        || !key.bytes().all(|byte| byte.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}
