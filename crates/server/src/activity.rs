//! Upkeep of what the console shows: counts written out every few seconds, and old
//! attempts and minute counts pruned now and then.

use std::sync::Arc;
use std::time::Duration;

use pulsestream_store::{ActivityStore, Tally, minute_of};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often counts are written: the delay before `GET /v1/stats` shows them.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How often old attempts and counts are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Minute counts are kept two days (the API shows at most one).
const MINUTES_KEPT: i64 = 2 * 24 * 60;

/// The running upkeep task.
#[derive(Debug)]
pub(crate) struct Upkeep {
    task: JoinHandle<()>,
}

impl Upkeep {
    pub(crate) fn spawn(
        store: Arc<dyn ActivityStore>,
        tally: Arc<Tally>,
        attempts_retention: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = flush.tick() => flush_counts(store.as_ref(), &tally).await,
                    _ = prune.tick() => prune_old(store.as_ref(), attempts_retention).await,
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
