//! The load loop: one task per connection, closed loop (back to back) or open loop (a
//! shared arrival schedule), each keeping its own [`Stats`] so the hot path shares nothing
//! but the schedule's counter.
//!
//! In an open loop, a request sent late because every connection was busy is measured
//! from its intended send time, so a stalled server shows in the percentiles instead of
//! silently slowing the generator down (coordinated omission). A request whose worker was
//! idle and waiting for its slot is measured from when the timer woke it: tokio's timer
//! has millisecond granularity, and that slack belongs to the generator, not the server.
//!
//! The run is bounded: no request starts after `end`, and one still in flight at `end` is
//! abandoned and not counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use tokio::time::Instant;

use crate::client::{self, Connection, Requests, TransportError};
use crate::report::{Op, Stats, Stored};
use crate::scenario::{Call, Catalog, Generator, Mix};

/// How long a worker waits before reconnecting after a failed connect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Everything the workers of one run share.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub requests: Requests,
    pub mix: Mix,
    pub run_id: String,
    pub catalog: Arc<Catalog>,
    /// Answers that arrive before this are warmup and not recorded.
    pub measure_from: Instant,
    pub end: Instant,
    /// The longest a request may take before it counts as a timeout.
    pub timeout: Duration,
    /// The arrival schedule of an open loop; `None` for a closed loop.
    pub schedule: Option<Schedule>,
}

/// The open loop's arrival schedule: request `n` is due at `start + n / rate`.
///
/// Workers claim requests in order. One claimed more than `max_behind` requests after it
/// was due is dropped instead of sent, which bounds the requests outstanding (in flight
/// or overdue) at about `concurrency + max_behind`.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    max_behind: u64,
    next: AtomicU64,
}

impl Schedule {
    pub fn new(start: Instant, rate: f64, max_behind: u64) -> Self {
        Self {
            start,
            rate,
            max_behind,
            next: AtomicU64::new(0),
        }
    }

    /// When request `ticket` is due.
    fn intended(&self, ticket: u64) -> Instant {
        self.start + Duration::from_secs_f64(ticket as f64 / self.rate)
    }

    /// How many requests are due at `now`.
    fn due(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_secs_f64() * self.rate) as u64 + 1
    }

    /// Claims the next request to send: its intended send time, and how many requests
    /// were dropped on the way because they were too far behind.
    pub fn claim(&self, now: Instant) -> (Instant, u64) {
        let mut dropped = 0;
        loop {
            let ticket = self.next.fetch_add(1, Ordering::Relaxed);
            let due = self.due(now);
            if ticket + self.max_behind >= due {
                return (self.intended(ticket), dropped);
            }
            // Drop this one and, in one step, every other request that is too late.
            let keep_from = due - self.max_behind;
            let before = self.next.fetch_max(keep_from, Ordering::Relaxed);
            dropped += 1 + keep_from.saturating_sub(before);
        }
    }
}

/// Runs `concurrency` workers until the plan's end and returns their merged counters.
///
/// # Errors
/// A worker panicked.
pub async fn run(plan: Arc<Plan>, concurrency: usize) -> anyhow::Result<Stats> {
    let workers: Vec<_> = (0..concurrency)
        .map(|index| {
            let worker = Worker::new(Arc::clone(&plan), index as u32);
            tokio::spawn(worker.run())
        })
        .collect();
    let mut total = Stats::new();
    for worker in workers {
        let stats = worker.await.context("a load worker failed")?;
        total.merge(&stats)?;
    }
    Ok(total)
}

/// One connection's worth of load.
#[derive(Debug)]
struct Worker {
    plan: Arc<Plan>,
    generator: Generator,
    connection: Option<Connection>,
    stats: Stats,
}

/// What a request was, kept after its body has been handed to the connection.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Single,
    Batch(u64),
    Search,
}

impl Kind {
    fn of(call: &Call) -> Self {
        match call {
            Call::Single(_) => Self::Single,
            Call::Batch { events, .. } => Self::Batch(*events),
            Call::Search(_) => Self::Search,
        }
    }

    fn op(self) -> Op {
        match self {
            Self::Search => Op::Search,
            Self::Single | Self::Batch(_) => Op::Ingest,
        }
    }
}

impl Worker {
    fn new(plan: Arc<Plan>, index: u32) -> Self {
        let generator = Generator::new(&plan.run_id, index, plan.mix, Arc::clone(&plan.catalog));
        Self {
            plan,
            generator,
            connection: None,
            stats: Stats::new(),
        }
    }

    async fn run(mut self) -> Stats {
        loop {
            // The body is built before the clock starts, so its cost is not latency.
            let call = self.generator.next_call();
            let Some(start) = self.next_start().await else {
                break;
            };
            if !self.send(call, start).await {
                break;
            }
        }
        self.stats
    }

    /// When the next request counts as sent: now, in a closed loop. In an open loop, its
    /// intended time if that has passed, else the end of the wait for it. `None` once the
    /// run is over.
    async fn next_start(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let Some(schedule) = &self.plan.schedule else {
            return (now < self.plan.end).then_some(now);
        };
        let (intended, dropped) = schedule.claim(now);
        if now >= self.plan.measure_from {
            self.stats.drop_requests(dropped);
        }
        if intended >= self.plan.end {
            return None;
        }
        if intended <= now {
            // Behind schedule (every connection was busy): the wait since `intended` counts.
            return Some(intended);
        }
        tokio::time::sleep_until(intended).await;
        // On time: lateness past `intended` is the timer's slack, not the server's.
        Some(Instant::now())
    }

    /// Makes one request and records it; `false` once the run is over.
    async fn send(&mut self, call: Call, start: Instant) -> bool {
        let kind = Kind::of(&call);
        let request = self.plan.requests.build(call);
        let deadline = (Instant::now() + self.plan.timeout).min(self.plan.end);
        let answer = tokio::time::timeout_at(deadline, self.exchange(request)).await;
        let done = Instant::now();
        let result = match answer {
            Err(_) if done >= self.plan.end => return false,
            Err(_) => Err(TransportError::Timeout),
            Ok(result) => result,
        };
        if done >= self.plan.measure_from {
            self.record(kind, result.as_ref(), done - start);
        }
        if let Err(TransportError::Connect) = result {
            tokio::time::sleep_until((done + RECONNECT_PAUSE).min(self.plan.end)).await;
        }
        true
    }

    /// Sends on the worker's connection, opening one if needed; a connection is kept for
    /// the next request only after a complete answer.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let mut connection = self.ready_connection().await?;
        let answer = client::exchange(&mut connection, request).await?;
        self.connection = Some(connection);
        Ok(answer)
    }

    /// The kept connection if it is still open (an idle connection the server closed is
    /// replaced silently: no request was lost), else a new one.
    async fn ready_connection(&mut self) -> Result<Connection, TransportError> {
        if let Some(mut connection) = self.connection.take()
            && connection.ready().await.is_ok()
        {
            return Ok(connection);
        }
        client::connect(self.plan.addr)
            .await
            .map_err(|_| TransportError::Connect)
    }

    fn record(
        &mut self,
        kind: Kind,
        result: Result<&(StatusCode, Bytes), &TransportError>,
        latency: Duration,
    ) {
        match result {
            Ok((status, body)) => {
                let stored = stored(kind, *status, body);
                self.stats
                    .answer(kind.op(), status.as_u16(), latency, stored);
            }
            Err(error) => self.stats.transport_error(*error),
        }
    }
}

/// The events an answer says were stored: a 201 or 200 (duplicate) single event, or the
/// `accepted` and `duplicates` counts of a 200 or 207 batch answer.
fn stored(kind: Kind, status: StatusCode, body: &[u8]) -> Stored {
    match (kind, status.as_u16()) {
        (Kind::Single, 201) => Stored {
            events: 1,
            duplicates: 0,
        },
        (Kind::Single, 200) => Stored {
            events: 1,
            duplicates: 1,
        },
        (Kind::Batch(events), code @ (200 | 207)) => {
            match (
                leading_count(body, b"\"accepted\":"),
                leading_count(body, b"\"duplicates\":"),
            ) {
                (Some(accepted), Some(duplicates)) => Stored {
                    events: accepted + duplicates,
                    duplicates,
                },
                // A 200 stored every event even if its answer is not in the usual shape.
                _ if code == 200 => Stored {
                    events,
                    duplicates: 0,
                },
                _ => Stored::default(),
            }
        }
        _ => Stored::default(),
    }
}

/// How far into a batch answer its counts are looked for; they come before `results`.
const COUNTS_WITHIN: usize = 256;

/// The number after `key` (e.g. `"accepted":`) near the start of `body`, without parsing
/// the (possibly large) rest of the answer.
fn leading_count(body: &[u8], key: &[u8]) -> Option<u64> {
    let head = &body[..body.len().min(COUNTS_WITHIN)];
    let at = head.windows(key.len()).position(|window| window == key)? + key.len();
    let digits: Vec<u8> = head[at..]
        .iter()
        .skip_while(|byte| byte.is_ascii_whitespace())
        .take_while(|byte| byte.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Ingest;

    /// Runs a short load against an in-process ceiling server.
    async fn run_against_ceiling(mix: Mix, schedule: Option<f64>) -> Stats {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        tokio::spawn(async move { axum::serve(listener, crate::ceiling::router()).await });
        let target = client::Target::resolve(&format!("http://{addr}"))
            .await
            .expect("a valid URL");
        let start = Instant::now();
        let plan = Plan {
            addr,
            requests: Requests::new(&target, "ps_test", None).expect("valid headers"),
            mix,
            run_id: "rtest".into(),
            catalog: Arc::new(Catalog::new()),
            measure_from: start + Duration::from_millis(100),
            end: start + Duration::from_millis(600),
            timeout: Duration::from_secs(5),
            schedule: schedule.map(|rate| Schedule::new(start, rate, 2)),
        };
        run(Arc::new(plan), 2).await.expect("workers finish")
    }

    #[tokio::test]
    async fn a_closed_loop_against_the_ceiling_gets_only_2xx() {
        let mix = Mix {
            ingest: Ingest::Batch(100),
            duplicate_share: 0.1,
            search_share: 0.2,
        };
        let stats = run_against_ceiling(mix, None).await;
        assert!(stats.successes() > 10, "{stats:?}");
        assert_eq!(stats.requests(), stats.successes(), "{stats:?}");
    }

    #[tokio::test]
    async fn an_open_loop_sends_at_the_configured_rate() {
        let mix = Mix {
            ingest: Ingest::Single,
            duplicate_share: 0.0,
            search_share: 0.0,
        };
        let stats = run_against_ceiling(mix, Some(200.0)).await;
        // 0.5 s measured at 200 requests/s: about 100, allowing for a slow test machine.
        assert!((80..=102).contains(&stats.successes()), "{stats:?}");
        assert_eq!(stats.requests(), stats.successes(), "{stats:?}");
    }

    #[test]
    fn batch_counts_are_read_from_the_head_of_the_answer() {
        let body = br#"{"accepted":990,"duplicates":7,"rejected":3,"results":[{"index":0}]}"#;
        let stored = stored(Kind::Batch(1_000), StatusCode::MULTI_STATUS, body);
        assert_eq!(
            stored,
            Stored {
                events: 997,
                duplicates: 7
            }
        );
        assert_eq!(
            leading_count(b"{\"accepted\": 12}", b"\"accepted\":"),
            Some(12)
        );
        assert_eq!(leading_count(b"{}", b"\"accepted\":"), None);
    }

    #[test]
    fn only_2xx_ingest_answers_store_events() {
        let single = |code| {
            stored(
                Kind::Single,
                StatusCode::from_u16(code).expect("valid"),
                b"{}",
            )
        };
        assert_eq!(single(201).events, 1);
        assert_eq!(single(200).duplicates, 1);
        assert_eq!(single(409), Stored::default());
        assert_eq!(single(503), Stored::default());
        assert_eq!(stored(Kind::Batch(10), StatusCode::OK, b"{}").events, 10);
        assert_eq!(
            stored(Kind::Batch(10), StatusCode::UNPROCESSABLE_ENTITY, b"{}"),
            Stored::default()
        );
        assert_eq!(
            stored(Kind::Search, StatusCode::OK, b"{}"),
            Stored::default()
        );
    }

    /// Float arithmetic may be off by a nanosecond.
    fn assert_close(actual: Instant, expected: Instant) {
        let gap = actual.max(expected) - actual.min(expected);
        assert!(gap <= Duration::from_micros(1), "off by {gap:?}");
    }

    #[test]
    fn the_schedule_spaces_requests_by_the_rate() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1_000.0, 10);
        let (first, dropped) = schedule.claim(start);
        let (second, _) = schedule.claim(start);
        assert_eq!((first, dropped), (start, 0));
        assert_close(second, start + Duration::from_millis(1));
    }

    #[test]
    fn requests_too_far_behind_schedule_are_dropped_and_counted() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1_000.0, 10);
        // One second later, 1,001 requests are due and none was claimed: all but the last
        // 10 are too late.
        let (intended, dropped) = schedule.claim(start + Duration::from_secs(1));
        assert_eq!(dropped, 991);
        assert_close(intended, start + Duration::from_millis(991));
        let (next, dropped) = schedule.claim(start + Duration::from_secs(1));
        assert_eq!(dropped, 0);
        assert_close(next, start + Duration::from_millis(992));
    }
}
