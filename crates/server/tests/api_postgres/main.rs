//! The HTTP integration suite of `tests/api`, run against the real PostgreSQL: each test gets
//! a fresh schema in `PULSESTREAM_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), and fails when PostgreSQL cannot be reached.
//! The modules are the same files as the embedded suite's, plus what only a shared database
//! has: several nodes on one database, and the database failing under load.

/// The store every test of this binary runs on.
const BACKEND: harness::Backend = harness::Backend::Postgres;

#[path = "../api/admin.rs"]
mod admin;
#[path = "../api/batch.rs"]
mod batch;
/// A node whose wall clock jumps (libfaketime) in a two-node cluster.
mod clock;
mod cluster;
#[path = "../api/console.rs"]
mod console;
mod database_faults;
#[path = "../api/delivery.rs"]
mod delivery;
#[path = "../api/dependency_faults.rs"]
mod dependency_faults;
#[path = "../api/destination_kinds.rs"]
mod destination_kinds;
#[path = "../api/durability.rs"]
mod durability;
#[path = "../api/erasure.rs"]
mod erasure;
#[path = "../api/harness.rs"]
mod harness;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/idempotency.rs"]
mod idempotency;
#[path = "../api/ingest.rs"]
mod ingest;
#[path = "../api/inputs.rs"]
mod inputs;
#[path = "../api/lifecycle.rs"]
mod lifecycle;
#[path = "../api/load.rs"]
mod load;
/// Root only: a node in a network namespace partitioned from PostgreSQL and Redis (netem).
mod network_faults;
#[path = "../api/openapi.rs"]
mod openapi;
#[path = "../api/operations.rs"]
mod operations;
/// Retention drops whole partitions of `events`.
mod partitions;
mod pg_dump;
#[path = "../api/rate_limits.rs"]
mod rate_limits;
#[path = "../api/receiver.rs"]
mod receiver;
#[path = "../api/retention.rs"]
mod retention;
#[path = "../api/sdks.rs"]
mod sdks;
#[path = "../api/search.rs"]
mod search;
#[path = "../api/security.rs"]
mod security;
#[path = "../api/soak.rs"]
mod soak;
/// Root only: the schema in a tablespace on a small tmpfs that fills up.
mod tablespace_full;
#[path = "../api/tls.rs"]
mod tls;
