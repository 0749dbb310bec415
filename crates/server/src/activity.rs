//! Upkeep: counts written out every few seconds, old attempts and minute counts pruned now
//! and then, and events past their tenant's retention deleted.

use std::sync::Arc;
use std::time::Duration;

use pulsestream_store::{ActivityStore, Store, Tally, minute_of};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often counts are written: the delay before `GET /v1/stats` shows them.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How often old attempts and counts are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Minute counts are kept two days (the API shows at most one).
const MINUTES_KEPT: i64 = 2 * 24 * 60;

/// Event retention: the server's default days (0: forever) and how often it is applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub default_days: u32,
    pub every: Duration,
}

/// Events deleted per store call: a bounded batch, so ingest is never held up long.
const EXPIRE_BATCH: usize = 10_000;

/// The running upkeep task.
#[derive(Debug)]
pub(crate) struct Upkeep {
    task: JoinHandle<()>,
}

impl Upkeep {
    pub(crate) fn spawn(
        store: Arc<dyn Store>,
        tally: Arc<Tally>,
        attempts_retention: Duration,
        retention: Retention,
        shutdown: CancellationToken,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            let mut expire = tokio::time::interval(retention.every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = flush.tick() => flush_counts(store.as_ref(), &tally).await,
                    _ = prune.tick() => prune_old(store.as_ref(), attempts_retention).await,
                    _ = expire.tick() => expire_events(store.as_ref(), retention, &shutdown).await,
                }
            }
            flush_counts(store.as_ref(), &tally).await;
        });
        Self { task }
    }

    /// Waits for the final flush (after the shutdown token is cancelled).
    pub(crate) async fn join(self) {
        let _ = self.task.await;
    }
}

async fn flush_counts(store: &dyn ActivityStore, tally: &Tally) {
    let counts = tally.take();
    if counts.is_empty() {
        return;
    }
    if let Err(err) = store.add_counts(&counts).await {
        tracing::warn!(error = %err, "cannot write counts; keeping them for the next try");
        tally.put_back(counts);
    }
}

/// Applies retention: first the store's time partitions (made ahead; dropped whole once
/// every tenant's retention has passed them: PostgreSQL), then every tenant's remaining
/// expired events, a batch at a time. Each batch reads its tenant again, so a retention made
/// longer (or forever) while a pass runs holds from the next batch on.
async fn expire_events(store: &dyn Store, retention: Retention, shutdown: &CancellationToken) {
    match store.maintain_partitions(retention.default_days).await {
        Ok(pass) => {
            metrics::counter!("pulsestream_retention_deleted_events_total")
                .increment(pass.events_dropped);
            metrics::counter!("pulsestream_partitions_dropped_total")
                .increment(u64::from(pass.dropped));
        }
        Err(err) => tracing::warn!(error = %err, "cannot maintain the event partitions"),
    }
    let mut tenants = Vec::new();
    let mut after = None;
    loop {
        match store.tenants(after, 100).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => {
                after = page.last().map(|tenant| tenant.id);
                tenants.extend(page.into_iter().map(|tenant| tenant.id));
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot list tenants for retention");
                return;
            }
        }
    }
    let now = OffsetDateTime::now_utc();
    for id in tenants {
        let mut deleted = 0u64;
        let mut days = 0;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let tenant = match store.tenant(id).await {
                Ok(Some(tenant)) => tenant,
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(tenant_id = %id, error = %err, "cannot read a tenant for retention");
                    break;
                }
            };
            let Some(kept) = tenant.retention(retention.default_days) else {
                break;
            };
            days = kept;
            let before = now - time::Duration::days(i64::from(kept));
            match store.expire_events(id, before, EXPIRE_BATCH).await {
                Ok(count) => {
                    deleted += count;
                    metrics::counter!("pulsestream_retention_deleted_events_total")
                        .increment(count);
                    if count < EXPIRE_BATCH as u64 {
                        break;
                    }
                    // Between batches, ingest goes first.
                    tokio::task::yield_now().await;
                }
                Err(err) => {
                    tracing::warn!(tenant_id = %id, error = %err, "cannot delete expired events");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(tenant_id = %id, deleted, retention_days = days, "deleted events past their retention");
        }
    }
}

async fn prune_old(store: &dyn ActivityStore, attempts_retention: Duration) {
    let now = OffsetDateTime::now_utc();
    let before = now - time::Duration::try_from(attempts_retention).unwrap_or(time::Duration::WEEK);
    match store
        .prune_activity(before, minute_of(now) - MINUTES_KEPT)
        .await
    {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, "deleted old delivery attempts"),
        Err(err) => tracing::warn!(error = %err, "cannot prune old delivery attempts"),
    }
}
