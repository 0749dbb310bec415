//! Free disk space on the data directory: below the configured minimum, ingest is refused
//! with 507 (and `/readyz` says why) before the filesystem fills, while reads go on.
//!
//! The server measures the space (`statvfs`) every second and records it here; the API only
//! reads the flag, so the check costs an atomic load per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::ApiError;

/// How long a refused client is told to wait.
const RETRY_AFTER_SECS: u64 = 30;

/// The last measurement of free space and the minimum it is held to.
#[derive(Debug, Default)]
pub struct DiskSpace {
    low: AtomicBool,
    free: AtomicU64,
    required: AtomicU64,
}

impl DiskSpace {
    /// Records a measurement; returns whether space is now below the minimum.
    pub fn record(&self, free: u64, required: u64) -> bool {
        self.free.store(free, Ordering::Relaxed);
        self.required.store(required, Ordering::Relaxed);
        let low = free < required;
        self.low.store(low, Ordering::Release);
        low
    }

    /// Whether the last measurement was below the minimum.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    /// What is wrong, in words, when space is low.
    pub fn shortage(&self) -> Option<String> {
        self.is_low().then(|| {
            format!(
                "free disk space on the data directory is {} bytes, below the minimum of {} (--min-free-disk)",
                self.free.load(Ordering::Relaxed),
                self.required.load(Ordering::Relaxed)
            )
        })
    }

    /// Refuses a write when space is low: 507 with `Retry-After`, nothing stored.
    ///
    /// # Errors
    /// 507 `insufficient_storage` while free space is below the minimum.
    pub fn check_write(&self) -> Result<(), ApiError> {
        match self.shortage() {
            None => Ok(()),
            Some(detail) => {
                metrics::counter!("pulsestream_disk_refusals_total").increment(1);
                Err(ApiError::insufficient_storage(
                    format!("{detail}: nothing was stored; reads and search still work"),
                    RETRY_AFTER_SECS,
                ))
            }
        }
    }
}
