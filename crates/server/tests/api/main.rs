//! HTTP integration tests: the real server on a random port, a fresh embedded store per test.
//! `tests/api_postgres` runs the same modules on PostgreSQL.

/// The store every test of this binary runs on.
const BACKEND: harness::Backend = harness::Backend::Embedded;

mod admin;
/// Embedded only: PostgreSQL is backed up with its own tools.
mod backup;
mod batch;
mod cli;
mod console;
/// The console in Chromium; embedded only (the console is the same on both stores).
mod console_browser;
/// Embedded only: PostgreSQL keeps no data directory.
mod data_dir;
mod delivery;
mod dependency_faults;
mod destination_kinds;
/// Embedded only: a data directory on a small filesystem of its own.
mod disk_full;
mod durability;
mod erasure;
mod harness;
mod hostile;
mod idempotency;
mod ingest;
mod inputs;
mod lifecycle;
mod load;
mod openapi;
mod operations;
mod rate_limits;
mod receiver;
mod retention;
mod sdks;
mod search;
mod security;
/// Many SIGKILLs in a row under mixed load (`PULSESTREAM_SOAK_CYCLES`).
mod soak;
mod tls;
