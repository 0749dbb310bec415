//! The tenant API, `/v1/...`.

pub mod destinations;
pub mod events;
pub(crate) mod idempotency;
pub mod ingest;
pub mod rate_limit;
pub mod segment;
