//! Versioned schema migrations, run at start-up and by `pulsestream migrate`.
//!
//! Each migration runs in its own transaction and is recorded in `schema_migrations`. A
//! session-level advisory lock makes concurrent runs (several nodes starting at once) take
//! turns: the first applies what is missing, the others find nothing left to do.

use deadpool_postgres::Object;

use super::pg_error;
use crate::StoreError;

/// The migrations, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "ordered delivery",
        include_str!("migrations/0002_ordered_delivery.sql"),
    ),
    (3, "activity", include_str!("migrations/0003_activity.sql")),
    (4, "erasure", include_str!("migrations/0004_erasure.sql")),
    (5, "search", include_str!("migrations/0005_search.sql")),
    (
        6,
        "partitions",
        include_str!("migrations/0006_partitions.sql"),
    ),
];

/// The advisory lock every migrating session takes (an arbitrary constant: "pulsestr").
const MIGRATION_LOCK: i64 = 0x7075_6c73_6573_7472;

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

/// Applies the migrations the database lacks. Returns the versions applied now.
pub(crate) async fn run(client: &mut Object) -> Result<Vec<i32>, StoreError> {
    // Waiting for another node's migration, and building indexes on a big table, may take
    // longer than any request may: no statement timeout in this session until it is done.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(pg_error)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let result = apply(client).await;
    // Unlock even when a migration failed; a closed session would release it anyway.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error);
    let reset = client
        .batch_execute("RESET statement_timeout")
        .await
        .map_err(pg_error);
    let applied = result?;
    unlocked?;
    reset?;
    Ok(applied)
}

async fn apply(client: &mut Object) -> Result<Vec<i32>, StoreError> {
    client
        .batch_execute(
            "SET client_min_messages TO warning;
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(pg_error)?;
    let current: i32 = client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if current > latest_version() {
        return Err(StoreError::Corrupt(format!(
            "the database schema is at version {current}, newer than this build knows ({}); upgrade pulsestream",
            latest_version()
        )));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        let transaction = client.transaction().await.map_err(pg_error)?;
        transaction.batch_execute(sql).await.map_err(pg_error)?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        tracing::info!(version, name, "applied schema migration");
        applied.push(*version);
    }
    Ok(applied)
}
