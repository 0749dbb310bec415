//! The generic cell rate algorithm (GCRA): a token bucket kept as one number, the
//! theoretical arrival time (TAT) of the next event.
//!
//! A tenant with `per_minute` events and `burst` may send `burst` events at once, then one
//! every `60 s / per_minute`; the limit holds over any window, not only aligned minutes.
//! Time is passed in (microseconds), so the arithmetic is tested without sleeping. The same
//! formulas run in Redis as a Lua script.

use pulsestream_core::RateLimit;

/// The outcome of asking for `cost` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The most events admitted at once (the tenant's burst).
    pub limit: u32,
    /// Events that could be sent right now.
    pub remaining: u32,
    /// Microseconds until the bucket is full again.
    pub reset_micros: u64,
    /// When refused: microseconds until the same request would fit.
    pub retry_after_micros: u64,
}

impl Decision {
    /// Seconds until the bucket is full, rounded up (for `RateLimit-Reset`).
    pub fn reset_secs(&self) -> u64 {
        self.reset_micros.div_ceil(1_000_000)
    }

    /// Seconds until a refused request would fit, rounded up and at least 1 (`Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_micros.div_ceil(1_000_000).max(1)
    }
}

/// Microseconds between two events at the tenant's rate.
pub fn interval_micros(limit: RateLimit) -> u64 {
    (60_000_000 / u64::from(limit.per_minute)).max(1)
}

/// A tenant's stored state: the TAT (µs) and the interval (µs per event) it was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    pub tat: u64,
    pub interval: u64,
}

/// Decides a request of `cost` events at `now`, given the stored bucket. Returns the
/// decision and the bucket to store (unchanged when refused). A cost of 0 only reports.
///
/// When the tenant's rate changed since the bucket was stored, the events still owed are
/// re-timed at the new rate, so a raised limit helps at once and a lowered one bites at once.
pub fn decide(limit: RateLimit, stored: Bucket, now: u64, cost: u32) -> (Decision, Bucket) {
    let interval = interval_micros(limit);
    let capacity = interval * u64::from(limit.burst);
    let mut tat = stored.tat.max(now);
    if stored.interval != 0 && stored.interval != interval {
        let owed_events = (tat - now) as u128 / u128::from(stored.interval);
        tat = now + (owed_events * u128::from(interval)) as u64;
    }
    let new_tat = tat + interval * u64::from(cost);
    let remaining_after = |tat: u64| (capacity.saturating_sub(tat - now) / interval) as u32;
    if new_tat - now > capacity {
        let decision = Decision {
            allowed: false,
            limit: limit.burst,
            remaining: remaining_after(tat),
            reset_micros: tat - now,
            retry_after_micros: new_tat - now - capacity,
        };
        return (decision, stored);
    }
    let decision = Decision {
        allowed: true,
        limit: limit.burst,
        remaining: remaining_after(new_tat),
        reset_micros: new_tat - now,
        retry_after_micros: 0,
    };
    (
        decision,
        Bucket {
            tat: new_tat,
            interval,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn limit(per_minute: u32, burst: u32) -> RateLimit {
        RateLimit::new(per_minute, Some(burst)).unwrap()
    }

    #[test]
    fn a_full_bucket_admits_burst_events_then_refuses() {
        let limit = limit(100, 100);
        let now = 1_000 * SECOND;
        let mut tat = Bucket::default();
        let mut admitted = 0;
        for _ in 0..150 {
            let (decision, next) = decide(limit, tat, now, 1);
            tat = next;
            admitted += u32::from(decision.allowed);
        }
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_refusal_says_when_the_request_would_fit() {
        let limit = limit(60, 10);
        let now = 1_000 * SECOND;
        let (_, tat) = decide(limit, Bucket::default(), now, 10);
        let (refused, unchanged) = decide(limit, tat, now, 3);
        assert!(!refused.allowed);
        assert_eq!(unchanged, tat);
        assert_eq!(refused.retry_after_micros, 3 * SECOND);
        assert_eq!(refused.retry_after_secs(), 3);
        let (later, _) = decide(limit, tat, now + 3 * SECOND, 3);
        assert!(later.allowed);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let limit = limit(120, 10);
        let now = 1_000 * SECOND;
        let (_, tat) = decide(limit, Bucket::default(), now, 10);
        let (peek, _) = decide(limit, tat, now + 2 * SECOND, 0);
        assert_eq!(peek.remaining, 4, "two events a second");
        assert_eq!(peek.reset_secs(), 3);
    }

    #[test]
    fn a_peek_changes_nothing() {
        let limit = limit(60, 5);
        let (decision, bucket) = decide(limit, Bucket::default(), 10 * SECOND, 0);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 5);
        assert_eq!(bucket.tat, 10 * SECOND);
    }

    #[test]
    fn the_limit_holds_over_any_window() {
        // 60/min with burst 60: at most 60 + 60 events in any 60-second window after a full bucket.
        let limit = limit(60, 60);
        let mut tat = Bucket::default();
        let mut admitted = 0;
        let start = 100 * SECOND;
        for step in 0..600 {
            let (decision, next) = decide(limit, tat, start + step * SECOND / 10, 1);
            tat = next;
            admitted += u32::from(decision.allowed);
        }
        assert!(admitted <= 60 + 60, "{admitted}");
        assert!(admitted >= 60 + 59, "{admitted}");
    }

    #[test]
    fn a_changed_rate_re_times_what_is_owed() {
        let now = 1_000 * SECOND;
        let slow = limit(60, 2);
        let (_, bucket) = decide(slow, Bucket::default(), now, 2);
        assert!(!decide(slow, bucket, now, 1).0.allowed);

        let fast = limit(60_000, 1_000);
        let (decision, _) = decide(fast, bucket, now, 998);
        assert!(
            decision.allowed,
            "two events owed at the new rate leave 998"
        );
        assert!(!decide(fast, bucket, now, 999).0.allowed);
    }
}
