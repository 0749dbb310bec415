//! The PostgreSQL store: several stateless `pulsestream serve` nodes on one database.
//!
//! The same traits as the embedded store, the same answers. What the embedded store gets
//! from its single writer, PostgreSQL gets from constraints and locks: the unique
//! constraint on `(tenant_id, event_id)` decides which of two concurrent copies of an event
//! is stored (the other waits for it, then reads it as a duplicate); an advisory lock per
//! `Idempotency-Key` serialises requests that share a key; each request's events, outbox
//! rows and idempotency record are one transaction, committed with `synchronous_commit` on
//! before the request is answered. Delivery workers on every node share each destination's
//! queue through `FOR UPDATE SKIP LOCKED` and leases ([`queue`]).
//!
//! When the database is down or slow, calls fail fast: every operation has a deadline, the
//! pool waits a bounded time for a connection, and after a few outage errors in a row a
//! breaker refuses calls for a second without touching the network, so the API answers 503
//! with `Retry-After` at once and `/readyz` says not ready. The first call after the pause
//! tries the database again; recovery needs nobody.

mod activity;
mod append;
mod migrate;
mod partitions;
mod queue;
mod search;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use pulsestream_core::{Breaker, Circuit, EventId, Tenant, TenantChange, TenantId};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::record::IdGen;
use crate::{
    AppendBatch, AppendOutcome, EventStore, IdempotencyRecord, SearchPage, SearchQuery, StoreError,
    StoredEvent, TenantChangeFailed, TenantStore,
};

pub use migrate::latest_version;
pub use partitions::PartitionPass;

/// The PostgreSQL the tests use: `PULSESTREAM_TEST_DATABASE_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/test` (test support, like [`drop_schema`]).
#[doc(hidden)]
#[must_use]
pub fn test_database_url() -> String {
    std::env::var("PULSESTREAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A client of the tests' PostgreSQL ([`test_database_url`]), its connection driven by a
/// task of its own.
///
/// # Panics
/// PostgreSQL is not there: a test that needs it fails rather than skips.
#[doc(hidden)]
pub async fn test_client() -> tokio_postgres::Client {
    let base = test_database_url();
    let (client, connection) = tokio_postgres::connect(&base, NoTls)
        .await
        .unwrap_or_else(|err| {
            panic!("PostgreSQL at {base} (PULSESTREAM_TEST_DATABASE_URL) is needed: {err}")
        });
    tokio::spawn(connection);
    client
}

/// `base` with `schema` as the search path of every session: a store connected to it keeps
/// its tables there.
#[doc(hidden)]
#[must_use]
pub fn url_in_schema(base: &str, schema: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}")
}

/// A store of its own for a unit test: a new schema named from `prefix` in the tests'
/// PostgreSQL, the store connected there, and an admin client (give both to
/// [`drop_schema`] at the end).
#[cfg(test)]
pub(crate) async fn test_store_in_new_schema(
    prefix: &str,
) -> (tokio_postgres::Client, String, PostgresStore) {
    let admin = test_client().await;
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create a schema");
    let url = url_in_schema(&test_database_url(), &schema);
    let store = PostgresStore::connect(&PostgresConfig::new(url))
        .await
        .expect("connect");
    (admin, schema, store)
}

/// Drops a schema with everything in it (tests and benchmarks make one each). A session that
/// still holds a lock there — a stopping node's statement, a node a fault test cut off, or a
/// background statement of a store just closed, which can deadlock with the drop now that
/// dropping `events` locks each of its partitions — must neither hang the caller nor leave
/// the schema behind: after a 5 s wait, or a deadlock, the sessions holding locks on this
/// schema's relations (no other) are ended and the drop tried again, three times at most.
///
/// # Errors
/// The last attempt's error.
#[doc(hidden)]
pub async fn drop_schema(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dropped = client
            .batch_execute(&format!(
                "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
            ))
            .await;
        if dropped.is_ok() || attempt == 3 {
            return dropped;
        }
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM (
                     SELECT DISTINCT l.pid FROM pg_locks l
                     JOIN pg_class c ON c.oid = l.relation
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()) holders",
                &[&schema],
            )
            .await?;
    }
}

/// Declares the PostgreSQL store's own metrics (commits share the embedded writer's names).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "pulsestream_database_breaker_opened_total",
        "Times PostgreSQL failed often enough that calls were paused (answered 503 at once)"
    );
}

/// Settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user@host:5432/db`; `?options=-csearch_path%3Dname` picks a schema.
    pub url: String,
    /// Connections in this node's pool.
    pub pool_size: usize,
    /// Transactions committing appends at once; each takes every request waiting for it.
    pub committers: usize,
    /// Requests waiting for a committer beyond which new ones get 503.
    pub queue_capacity: usize,
    /// Longest any store operation may take, waiting for a connection included.
    pub operation_timeout: Duration,
    /// How long a delivery worker holds claimed queue rows before another node may take
    /// them (it records an outcome long before, unless it died).
    pub lease: Duration,
    /// How long a node trusts its cached copy of a tenant (API keys, rate limit) before it
    /// reads the database again: the delay for a change made through another node.
    pub tenant_cache_ttl: Duration,
}

impl PostgresConfig {
    /// Default settings for the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 32,
            committers: 4,
            queue_capacity: 1024,
            operation_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            tenant_cache_ttl: Duration::from_secs(1),
        }
    }
}

/// PulseStream's store on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    db: Db,
    writes: Arc<Writes>,
    /// Signalled by this node's appends and replays. Every node runs a worker for every
    /// destination, so the node that stored an event always has one awake to deliver it;
    /// the other nodes' workers learn of it when they next look (their queue's next due
    /// time, or `IDLE_MAX`).
    wakeups: Arc<crate::Wakeups>,
}

/// The pool and what guards it; shared with the committer tasks.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<Inner>,
}

/// The queue of appends and the committer tasks that drain it.
struct Writes {
    sender: Mutex<Option<mpsc::Sender<append::Job>>>,
    committers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The search index's upkeep: filling `search` where it is missing, merging the
    /// index's pending entries (see `search::merge_pending`).
    maintenance: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    pool: Pool,
    config: PostgresConfig,
    breaker: DatabaseBreaker,
    tenants: Mutex<TenantCache>,
    ids: Mutex<IdGen>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool_size", &self.db.inner.config.pool_size)
            .finish_non_exhaustive()
    }
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
enum Outage {
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the database failed repeatedly; calls are paused for a moment")]
    BreakerOpen,
}

/// The store was closed (the server is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the store is closed")]
struct Closed;

impl PostgresStore {
    /// Connects, applies pending migrations and returns the store.
    ///
    /// # Errors
    /// The URL is invalid, the database cannot be reached, or a migration fails.
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(config)?;
        store.migrate().await?;
        // The month partitions around now, before this node takes writes. Never a reason
        // not to start: without them, rows go to the DEFAULT partition, and the retention
        // pass tries again.
        if let Err(err) =
            partitions::make_months(&store.db, time::OffsetDateTime::now_utc(), None).await
        {
            tracing::warn!(error = %err, "cannot make the month partitions of events yet");
        }
        // Rows from before the `search` column (or written by an older node since) get it
        // in the background; searches find them meanwhile. And the search index's pending
        // entries are merged in bulk, off the ingest path.
        store
            .writes
            .maintenance
            .lock()
            .expect("maintenance lock is never poisoned")
            .extend([
                tokio::spawn(search::backfill(store.db.clone())),
                tokio::spawn(search::merge_pending(store.db.clone())),
            ]);
        Ok(store)
    }

    /// Builds the pool and starts the committer tasks without touching the database. Must be
    /// called inside a Tokio runtime.
    ///
    /// # Errors
    /// The URL is not a PostgreSQL connection string.
    pub fn connect_lazy(config: &PostgresConfig) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(pg_error)?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(2));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("pulsestream");
        }
        // No statement may outlive the operation deadline on the server either.
        let timeout_ms = config.operation_timeout.as_millis();
        // Acknowledged means flushed to the WAL, whatever the role's or database's default.
        let ours = format!("-c statement_timeout={timeout_ms} -c synchronous_commit=on");
        let options = match pg.get_options() {
            Some(options) => format!("{options} {ours}"),
            None => ours,
        };
        pg.options(&options);
        // A database host that vanishes without a reset must not hold connections for the
        // OS's 15-minute retransmission timeout: keepalives, and a cap on unacknowledged data.
        pg.keepalives_idle(Duration::from_secs(10));
        pg.keepalives_interval(Duration::from_secs(2));
        pg.keepalives_retries(3);
        pg.tcp_user_timeout(config.operation_timeout.max(Duration::from_secs(1)));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let bounded = Some(config.operation_timeout.min(Duration::from_secs(2)));
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(bounded)
            .create_timeout(bounded)
            .recycle_timeout(bounded)
            .build()
            .map_err(StoreError::unavailable)?;
        let db = Db {
            inner: Arc::new(Inner {
                pool,
                config: config.clone(),
                breaker: DatabaseBreaker::default(),
                tenants: Mutex::new(TenantCache::default()),
                ids: Mutex::new(IdGen::new()),
            }),
        };
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let committers = (0..config.committers.max(1))
            .map(|_| tokio::spawn(append::run_committer(db.clone(), receiver.clone())))
            .collect();
        Ok(Self {
            db,
            writes: Arc::new(Writes {
                sender: Mutex::new(Some(sender)),
                committers: Mutex::new(committers),
                maintenance: Mutex::default(),
            }),
            wakeups: Arc::default(),
        })
    }

    /// Applies the migrations the database lacks (safe from several nodes at once).
    /// Returns the versions applied now.
    ///
    /// # Errors
    /// The database cannot be reached or a migration fails.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.db.client().await?;
        migrate::run(&mut client).await
    }
}

impl Db {
    /// Takes a pooled connection (bounded wait).
    async fn client(&self) -> Result<Object, StoreError> {
        self.inner.pool.get().await.map_err(StoreError::unavailable)
    }

    /// Runs one statement on a pooled connection, under the breaker and the deadline, and
    /// returns how many rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.guarded(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
            client.execute(&statement, params).await.map_err(pg_error)
        })
        .await
    }

    /// Runs one query on a pooled connection, under the breaker and the deadline.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.guarded(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
            client.query(&statement, params).await.map_err(pg_error)
        })
        .await
    }

    /// Runs one query that returns at most one row.
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        self.guarded(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
            client.query_opt(&statement, params).await.map_err(pg_error)
        })
        .await
    }

    /// Runs one store operation under the breaker and the operation deadline.
    async fn guarded<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        self.guarded_as(operation, true).await
    }

    /// Runs one search under the breaker and the deadline. A search that runs out of time
    /// is slow, not a sign that the database is down: it does not count towards the breaker
    /// (else three heavy searches would turn a node's writes away).
    async fn guarded_search<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        self.guarded_as(operation, false).await
    }

    async fn guarded_as<T, F>(&self, operation: F, timeouts_count: bool) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let breaker = &self.inner.breaker;
        if !breaker.allows(Instant::now()) {
            return Err(StoreError::unavailable(Outage::BreakerOpen));
        }
        let deadline = self.inner.config.operation_timeout;
        let (result, timed_out) = match tokio::time::timeout(deadline, operation).await {
            Ok(result) => {
                let timed_out = result
                    .as_ref()
                    .is_err_and(|err| Failure::of(err) == Failure::StatementTimeout);
                (result, timed_out)
            }
            Err(_) => (
                Err(StoreError::unavailable(Outage::Timeout(deadline))),
                true,
            ),
        };
        match &result {
            Err(_) if timed_out && !timeouts_count => {}
            Err(err) if Failure::of(err).is_outage() => breaker.failure(Instant::now()),
            Err(_) => {}
            Ok(_) => breaker.success(Instant::now()),
        }
        result
    }

    fn next_id(&self, event: &pulsestream_core::NewEvent, at: time::OffsetDateTime) -> EventId {
        self.inner
            .ids
            .lock()
            .expect("id generator lock is never poisoned")
            .next(event, at)
    }
}

/// Turns a driver error into the store's: the database failed, not the client.
fn pg_error(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable(err)
}

/// What a failed database call means, decided in one place from the driver's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Unreachable, closed, shutting down, not answering in time (connection exceptions
    /// 08…, shutdowns 57P…, no SQLSTATE with a closed or broken socket, our own deadline or
    /// open breaker): what the breaker counts.
    Outage,
    /// `statement_timeout` cancelled the statement (57014): the server is not answering in
    /// time, an outage for writes; a search that ran out of time is only slow.
    StatementTimeout,
    /// A deadlock (40P01), a serialization failure (40001), or a row routed to the DEFAULT
    /// partition of `events` just before a month partition for it was attached (23514; see
    /// `partitions`): the transaction lost a race the database detected and may be retried.
    LostRace,
    /// Anything else: one statement's problem, or every pooled connection busy (load).
    Other,
}

impl Failure {
    fn of(err: &StoreError) -> Self {
        let StoreError::Unavailable(source) = err else {
            return Self::Other;
        };
        if source.downcast_ref::<Outage>().is_some() {
            return Self::Outage;
        }
        if let Some(pool) = source.downcast_ref::<deadpool_postgres::PoolError>() {
            return match pool {
                // Every connection busy: load, not an outage.
                deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                    Self::Other
                }
                deadpool_postgres::PoolError::Backend(err) => Self::of_driver(err),
                _ => Self::Outage,
            };
        }
        source
            .downcast_ref::<tokio_postgres::Error>()
            .map_or(Self::Other, Self::of_driver)
    }

    fn of_driver(err: &tokio_postgres::Error) -> Self {
        match err.code().map(tokio_postgres::error::SqlState::code) {
            Some("57014") => Self::StatementTimeout,
            Some("40P01" | "40001" | "23514") => Self::LostRace,
            Some(code) if code.starts_with("08") || code.starts_with("57P") => Self::Outage,
            Some(_) => Self::Other,
            // No SQLSTATE: a closed connection or a socket error.
            None if err.is_closed()
                || std::error::Error::source(err)
                    .is_some_and(|source| source.is::<std::io::Error>()) =>
            {
                Self::Outage
            }
            None => Self::Other,
        }
    }

    /// Whether the database is down or not answering, as opposed to one statement failing.
    fn is_outage(self) -> bool {
        matches!(self, Self::Outage | Self::StatementTimeout)
    }
}

/// Consecutive outages that open the breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_PAUSE: Duration = Duration::from_secs(1);

/// Fails calls fast while the database is known to be down: the shared breaker, with the
/// transitions logged and counted.
struct DatabaseBreaker(Mutex<Breaker>);

impl Default for DatabaseBreaker {
    fn default() -> Self {
        Self(Mutex::new(Breaker::new(BREAKER_THRESHOLD, BREAKER_PAUSE)))
    }
}

impl DatabaseBreaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.0.lock().expect("breaker lock is never poisoned")
    }

    fn allows(&self, now: Instant) -> bool {
        self.lock().allows(now)
    }

    fn failure(&self, now: Instant) {
        if self.lock().on_failure(now) == Some(Circuit::Open) {
            tracing::warn!("PostgreSQL is failing; pausing calls for a second");
            metrics::counter!("pulsestream_database_breaker_opened_total").increment(1);
        }
    }

    fn success(&self, now: Instant) {
        if self.lock().on_success(now).is_some() {
            tracing::info!("PostgreSQL answers again");
        }
    }
}

/// Tenants by API key hash, each read from the database at most once per TTL per node.
#[derive(Default)]
struct TenantCache {
    by_key_hash: HashMap<String, (Option<Tenant>, Instant)>,
}

/// Cached key lookups beyond which the cache starts over (unknown keys are cached too).
const TENANT_CACHE_ENTRIES: usize = 10_000;

#[async_trait]
impl EventStore for PostgresStore {
    async fn append_batch(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        // While the database is known to be down, refuse at once rather than queue.
        if !self.db.inner.breaker.allows(Instant::now()) {
            return Err(StoreError::unavailable(Outage::BreakerOpen));
        }
        let sender = self
            .writes
            .sender
            .lock()
            .expect("append queue lock is never poisoned")
            .clone()
            .ok_or_else(|| StoreError::unavailable(Closed))?;
        let (reply, outcome) = oneshot::channel();
        let tenant = batch.tenant;
        sender
            .try_send(append::Job { batch, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::unavailable(Closed),
            })?;
        let outcome = outcome.await.map_err(StoreError::unavailable)??;
        if outcome.stored_any() {
            self.wakeups.stored(tenant);
        }
        Ok(outcome)
    }

    async fn event(
        &self,
        tenant: TenantId,
        id: EventId,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT body FROM events WHERE tenant_id = $1 AND id = $2 AND NOT erased",
                &[&tenant.0, &id.0],
            )
            .await?;
        Ok(row.map(|row| StoredEvent {
            id,
            json: row.get::<_, String>(0).into_bytes(),
        }))
    }

    async fn search(&self, tenant: TenantId, query: SearchQuery) -> Result<SearchPage, StoreError> {
        self.db
            .guarded_search(search::search(&self.db, tenant, &query))
            .await
    }

    async fn idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT record FROM idempotency WHERE tenant_id = $1 AND key = $2",
                &[&tenant.0, &key],
            )
            .await?;
        row.map(|row| crate::record::decode_idempotency(row.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn expire_events(
        &self,
        tenant: TenantId,
        before: time::OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        // Ids start with the event's timestamp: the primary key is the time index. The
        // events' dedup keys, queued deliveries and dead letters go in the same statement.
        let bound = EventId::from_parts(crate::record::micros_of(before), 0);
        let row = self
            .db
            .query_opt(
                "WITH gone AS (
                     DELETE FROM events WHERE tenant_id = $1 AND id IN (
                         SELECT id FROM events WHERE tenant_id = $1 AND id < $2
                          ORDER BY id LIMIT $3)
                     RETURNING id, event_id),
                 keys AS (
                     DELETE FROM event_keys
                      WHERE tenant_id = $1 AND event_id IN (SELECT event_id FROM gone)),
                 queued AS (
                     DELETE FROM outbox WHERE tenant_id = $1 AND event IN (SELECT id FROM gone)),
                 dead AS (
                     DELETE FROM dead_letters
                      WHERE tenant_id = $1 AND event IN (SELECT id FROM gone))
                 SELECT count(*) FROM gone",
                &[&tenant.0, &bound.0, &(limit as i64)],
            )
            .await?;
        Ok(row.map_or(0, |row| row.get::<_, i64>(0).max(0) as u64))
    }

    async fn maintain_partitions(
        &self,
        default_retention_days: u32,
    ) -> Result<PartitionPass, StoreError> {
        partitions::maintain(
            &self.db,
            time::OffsetDateTime::now_utc(),
            default_retention_days,
        )
        .await
    }

    async fn erase_events(&self, tenant: TenantId, ids: &[EventId]) -> Result<u64, StoreError> {
        // The row stays as the tombstone: no payload, no source, out of every read. Its
        // queued deliveries and dead letters go in the same statement.
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
        let row = self
            .db
            .query_opt(
                "WITH gone AS (
                     UPDATE events SET erased = true, payload = '{}'::jsonb, body = '',
                                       source = NULL, search = ''::tsvector
                      WHERE tenant_id = $1 AND id = ANY($2) AND NOT erased
                     RETURNING id),
                 queued AS (
                     DELETE FROM outbox WHERE tenant_id = $1 AND event IN (SELECT id FROM gone)),
                 dead AS (
                     DELETE FROM dead_letters
                      WHERE tenant_id = $1 AND event IN (SELECT id FROM gone))
                 SELECT count(*) FROM gone",
                &[&tenant.0, &ids],
            )
            .await?;
        Ok(row.map_or(0, |row| row.get::<_, i64>(0).max(0) as u64))
    }

    async fn record_erasure(
        &self,
        tenant: TenantId,
        erasure: &crate::Erasure,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_value(erasure).map_err(StoreError::unavailable)?;
        self.db
            .execute(
                "INSERT INTO erasures (tenant_id, id, record) VALUES ($1, $2, $3)",
                &[&tenant.0, &erasure.id, &record],
            )
            .await?;
        Ok(())
    }

    async fn erasures(
        &self,
        tenant: TenantId,
        before: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<crate::Erasure>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT record FROM erasures WHERE tenant_id = $1 AND id < $2
                  ORDER BY id DESC LIMIT $3",
                &[
                    &tenant.0,
                    &before.unwrap_or(uuid::Uuid::max()),
                    &(limit as i64),
                ],
            )
            .await?;
        rows.into_iter()
            .map(|row| decode_json(row.get::<_, serde_json::Value>(0), "erasure"))
            .collect()
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.db
            .guarded(async {
                let client = self.db.client().await?;
                client.simple_query("SELECT 1").await.map_err(pg_error)?;
                Ok(())
            })
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Stop taking appends, let the committers finish what is queued, then disconnect.
        self.writes
            .sender
            .lock()
            .expect("append queue lock is never poisoned")
            .take();
        let committers = std::mem::take(
            &mut *self
                .writes
                .committers
                .lock()
                .expect("committer list lock is never poisoned"),
        );
        for committer in committers {
            let _ = committer.await;
        }
        // Each step of the upkeep is one transaction: cut short, it is redone later.
        for task in self
            .writes
            .maintenance
            .lock()
            .expect("maintenance lock is never poisoned")
            .drain(..)
        {
            task.abort();
        }
        self.db.inner.pool.close();
        Ok(())
    }
}

#[async_trait]
impl TenantStore for PostgresStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.db
            .guarded(async {
                let mut client = self.db.client().await?;
                let transaction = client.transaction().await.map_err(pg_error)?;
                let record = serde_json::to_value(tenant).map_err(StoreError::unavailable)?;
                transaction
                    .execute(
                        "INSERT INTO tenants (id, created_at, record) VALUES ($1, $2, $3)",
                        &[&tenant.id.0, &tenant.created_at, &record],
                    )
                    .await
                    .map_err(pg_error)?;
                write_tenant_keys(&transaction, tenant).await?;
                transaction.commit().await.map_err(pg_error)
            })
            .await?;
        self.forget_cached_keys();
        Ok(())
    }

    async fn change_tenant(
        &self,
        id: TenantId,
        change: &TenantChange,
    ) -> Result<Tenant, TenantChangeFailed> {
        let changed = self
            .db
            .guarded(async {
                let mut client = self.db.client().await?;
                let transaction = client.transaction().await.map_err(pg_error)?;
                // The row lock makes concurrent changes (from any node) take turns, each
                // applied to the tenant as the one before it left it.
                let row = transaction
                    .query_opt(
                        "SELECT record FROM tenants WHERE id = $1 FOR UPDATE",
                        &[&id.0],
                    )
                    .await
                    .map_err(pg_error)?;
                let Some(row) = row else {
                    return Ok(Err(TenantChangeFailed::NotFound));
                };
                let mut tenant: Tenant = decode_json(row.get(0), "tenant")?;
                if let Err(err) = change.apply(&mut tenant) {
                    return Ok(Err(err.into()));
                }
                let record = serde_json::to_value(&tenant).map_err(StoreError::unavailable)?;
                transaction
                    .execute(
                        "UPDATE tenants SET record = $2 WHERE id = $1",
                        &[&id.0, &record],
                    )
                    .await
                    .map_err(pg_error)?;
                transaction
                    .execute("DELETE FROM tenant_keys WHERE tenant_id = $1", &[&id.0])
                    .await
                    .map_err(pg_error)?;
                write_tenant_keys(&transaction, &tenant).await?;
                transaction.commit().await.map_err(pg_error)?;
                Ok(Ok(tenant))
            })
            .await??;
        self.forget_cached_keys();
        Ok(changed)
    }

    async fn tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map(|id| id.0);
        let rows = self
            .db
            .query(
                "SELECT record FROM tenants
                 WHERE $1::uuid IS NULL
                    OR (created_at, id) > (SELECT created_at, id FROM tenants WHERE id = $1)
                 ORDER BY created_at, id LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| decode_json(row.get(0), "tenant"))
            .collect()
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        let row = self
            .db
            .query_opt("SELECT record FROM tenants WHERE id = $1", &[&id.0])
            .await?;
        row.map(|row| decode_json(row.get(0), "tenant")).transpose()
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> Result<Option<Tenant>, StoreError> {
        let ttl = self.db.inner.config.tenant_cache_ttl;
        if let Some((tenant, at)) = self
            .db
            .inner
            .tenants
            .lock()
            .expect("tenant cache lock is never poisoned")
            .by_key_hash
            .get(hash)
            && at.elapsed() < ttl
        {
            return Ok(tenant.clone());
        }
        let row = self
            .db
            .query_opt(
                "SELECT t.record FROM tenant_keys k JOIN tenants t ON t.id = k.tenant_id
                 WHERE k.key_hash = $1",
                &[&hash],
            )
            .await?;
        let tenant = row
            .map(|row| decode_json::<Tenant>(row.get(0), "tenant"))
            .transpose()?;
        let mut cache = self
            .db
            .inner
            .tenants
            .lock()
            .expect("tenant cache lock is never poisoned");
        if cache.by_key_hash.len() >= TENANT_CACHE_ENTRIES {
            cache.by_key_hash.clear();
        }
        cache
            .by_key_hash
            .insert(hash.to_owned(), (tenant.clone(), Instant::now()));
        Ok(tenant)
    }

    async fn admin_token_hash(&self) -> Result<Option<String>, StoreError> {
        let row = self
            .db
            .query_opt(
                "SELECT value FROM settings WHERE name = 'admin_token_sha256'",
                &[],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn set_admin_token_hash(&self, hash: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO settings (name, value) VALUES ('admin_token_sha256', $1)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&hash],
            )
            .await?;
        Ok(())
    }
}

/// Decodes a JSON record column.
impl PostgresStore {
    /// Drops this node's cached key lookups after a tenant write: a change made here is seen
    /// here at once; other nodes see it within the cache's TTL.
    fn forget_cached_keys(&self) {
        self.db
            .inner
            .tenants
            .lock()
            .expect("tenant cache lock is never poisoned")
            .by_key_hash
            .clear();
    }
}

/// Inserts the tenant's key hashes, which authentication looks up.
async fn write_tenant_keys(
    transaction: &tokio_postgres::Transaction<'_>,
    tenant: &Tenant,
) -> Result<(), StoreError> {
    let hashes: Vec<&str> = tenant.keys.iter().map(|key| key.hash.as_str()).collect();
    transaction
        .execute(
            "INSERT INTO tenant_keys (key_hash, tenant_id) SELECT unnest($1::text[]), $2",
            &[&hashes, &tenant.id.0],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

fn decode_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_value(value)
        .map_err(|err| StoreError::Corrupt(format!("{what} record: {err}")))
}

#[cfg(test)]
mod tests {
    /// A session holding a lock in the schema (here, an open transaction that read a table
    /// of it) would make `DROP SCHEMA` wait or deadlock: `drop_schema` ends it and drops.
    #[tokio::test]
    async fn drop_schema_ends_the_sessions_that_hold_its_locks() {
        let admin = super::test_client().await;
        let holder = super::test_client().await;
        let schema = format!("psdrop_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int)"
            ))
            .await
            .unwrap();
        holder
            .batch_execute(&format!("BEGIN; SELECT * FROM {schema}.t"))
            .await
            .unwrap();
        super::drop_schema(&admin, &schema).await.unwrap();
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
        assert!(holder.batch_execute("SELECT 1").await.is_err(), "ended");
    }
}
