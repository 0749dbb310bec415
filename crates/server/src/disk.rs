//! Measures free space on the data directory's filesystem every second and records it in
//! the API's [`DiskSpace`], which refuses ingest below `--min-free-disk`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pulsestream_api::disk::DiskSpace;
use tokio_util::sync::CancellationToken;

use crate::config::MinFreeDisk;

const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// Measures once and records it. Returns whether space is low.
pub(crate) fn measure(dir: &Path, min: MinFreeDisk, space: &DiskSpace) -> bool {
    match rustix::fs::statvfs(dir) {
        Ok(stats) => {
            let block = stats.f_frsize.max(1);
            let free = stats.f_bavail.saturating_mul(block);
            let total = stats.f_blocks.saturating_mul(block);
            let was_low = space.is_low();
            let low = space.record(free, min.bytes_of(total));
            metrics::gauge!("pulsestream_disk_free_bytes").set(free as f64);
            metrics::gauge!("pulsestream_disk_low").set(if low { 1.0 } else { 0.0 });
            if low && !was_low {
                tracing::error!(free, required = min.bytes_of(total), dir = %dir.display(), "free disk space is below --min-free-disk: refusing ingest (507) until it comes back");
            } else if was_low && !low {
                tracing::info!(
                    free,
                    "free disk space is back above --min-free-disk: taking ingest again"
                );
            }
            low
        }
        Err(err) => {
            tracing::warn!(error = %err, dir = %dir.display(), "cannot measure free disk space");
            space.is_low()
        }
    }
}

/// Measures every second until cancelled.
pub(crate) fn spawn(
    dir: PathBuf,
    min: MinFreeDisk,
    space: Arc<DiskSpace>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(MEASURE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {
                    let (dir, space) = (dir.clone(), space.clone());
                    let _ = tokio::task::spawn_blocking(move || measure(&dir, min, &space)).await;
                }
            }
        }
    })
}
