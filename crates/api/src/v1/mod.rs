//! The tenant API, `/v1/...`.

pub mod events;
pub(crate) mod idempotency;
mod ingest;
pub mod rate_limit;
