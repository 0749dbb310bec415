//! The tenant API, `/v1/...`.

pub mod events;
mod idempotency;
mod ingest;
