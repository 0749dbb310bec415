//! The circuit breaker every dependency call goes through: closed, open after `threshold`
//! consecutive failures, half-open once the cool-down has passed (calls are let through as
//! probes), closed again by a success; a failed probe opens it again.
//!
//! One type serves a destination's delivery worker (while open, nothing is sent, so no
//! event spends an attempt against a destination known to be down), the PostgreSQL store
//! (while open, calls fail fast with 503 instead of waiting on a dead database) and the
//! Redis rate limiter (while open, decisions are made in-process). Time is passed in, so the
//! states are tested without sleeping.

use std::time::{Duration, Instant};

/// A circuit's state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Circuit {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    /// The API's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// One circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// Returns the state at `now`.
    pub fn state(&self, now: Instant) -> Circuit {
        match self.open_until {
            None => Circuit::Closed,
            Some(until) if now < until => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }

    /// Returns whether a call may be made at `now` (closed, or half-open: a probe).
    pub fn allows(&self, now: Instant) -> bool {
        self.state(now) != Circuit::Open
    }

    /// Returns how long to wait before the next attempt may be made (zero unless open).
    pub fn wait(&self, now: Instant) -> Duration {
        self.open_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Records a success; returns the new state if it changed.
    pub fn on_success(&mut self, now: Instant) -> Option<Circuit> {
        let before = self.state(now);
        self.consecutive_failures = 0;
        self.open_until = None;
        (before != Circuit::Closed).then_some(Circuit::Closed)
    }

    /// Records a failure; returns the new state if it changed.
    pub fn on_failure(&mut self, now: Instant) -> Option<Circuit> {
        let before = self.state(now);
        self.consecutive_failures += 1;
        if before == Circuit::HalfOpen || self.consecutive_failures >= self.threshold {
            self.open_until = Some(now + self.cool_down);
        }
        let after = self.state(now);
        (before != after).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_cool_down_and_closes_on_success() {
        let start = Instant::now();
        let mut breaker = Breaker::new(5, Duration::from_secs(10));
        for _ in 0..4 {
            assert_eq!(breaker.on_failure(start), None);
        }
        assert_eq!(breaker.on_failure(start), Some(Circuit::Open));
        assert_eq!(breaker.wait(start), Duration::from_secs(10));

        let later = start + Duration::from_secs(10);
        assert_eq!(breaker.state(later), Circuit::HalfOpen);
        assert_eq!(
            breaker.on_failure(later),
            Some(Circuit::Open),
            "a failed probe opens it again"
        );

        let much_later = later + Duration::from_secs(10);
        assert_eq!(breaker.state(much_later), Circuit::HalfOpen);
        assert_eq!(breaker.on_success(much_later), Some(Circuit::Closed));
        assert_eq!(breaker.wait(much_later), Duration::ZERO);
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut breaker = Breaker::new(3, Duration::from_secs(1));
        breaker.on_failure(now);
        breaker.on_failure(now);
        breaker.on_success(now);
        breaker.on_failure(now);
        breaker.on_failure(now);
        assert_eq!(breaker.state(now), Circuit::Closed);
    }
}
