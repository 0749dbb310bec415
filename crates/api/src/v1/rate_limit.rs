//! Rate limits as the API shows them: 429 with `Retry-After`, 422 for a batch that can never
//! fit, and the `RateLimit-*` headers on every tenant response.

use axum::http::{HeaderMap, HeaderValue};
use pulsestream_core::{RateLimit, Tenant};
use pulsestream_limits::Decision;

use crate::AppState;
use crate::error::ApiError;

/// Takes `cost` events from the tenant's budget.
///
/// # Errors
/// 422 when `cost` exceeds the burst (no wait would help), 429 when the budget cannot cover
/// it now; in both cases nothing of the request may be stored.
pub async fn admit(app: &AppState, tenant: &Tenant, cost: u32) -> Result<Decision, ApiError> {
    if cost > tenant.rate_limit.burst {
        return Err(ApiError::unprocessable(
            "batch_exceeds_burst",
            format!(
                "this request carries {cost} events but the tenant's burst is {}; split it into requests of at most {} events",
                tenant.rate_limit.burst, tenant.rate_limit.burst
            ),
        ));
    }
    let decision = app.limiter.admit(tenant.id, tenant.rate_limit, cost).await;
    if decision.allowed {
        Ok(decision)
    } else {
        Err(ApiError::rate_limited(
            format!(
                "rate limit of {} events per minute (burst {}) exceeded; this request of {cost} events fits in {} s",
                tenant.rate_limit.per_minute,
                tenant.rate_limit.burst,
                decision.retry_after_secs()
            ),
            decision.retry_after_secs(),
        ))
    }
}

/// Writes `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy`.
pub fn set_headers(headers: &mut HeaderMap, limit: RateLimit, decision: &Decision) {
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(decision.reset_secs()));
    if let Ok(policy) =
        HeaderValue::try_from(format!("{};w=60;burst={}", limit.per_minute, limit.burst))
    {
        headers.insert("ratelimit-policy", policy);
    }
}
