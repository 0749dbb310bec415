//! The tenant API, `/v1/...`.

pub mod activity;
pub mod cloudevents;
pub(crate) mod compat;
pub mod destinations;
pub mod erase;
pub mod events;
pub mod export;
pub(crate) mod idempotency;
pub mod ingest;
pub mod posthog;
pub mod rate_limit;
pub mod segment;
pub mod stream;
