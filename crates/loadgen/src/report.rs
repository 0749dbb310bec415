//! What a run measured and how it is shown: per-worker [`Stats`] (HDR latency histograms
//! at microsecond resolution, answers by status, transport errors, events ingested),
//! merged at the end and rendered as a table or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::client::TransportError;

/// The longest latency the histograms track exactly, in microseconds (one hour).
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// What one request was, for the latency split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ingest,
    Search,
}

/// Counters of one worker, or of the whole run once merged. Only requests that complete
/// inside the measured window are recorded.
#[derive(Debug, Clone)]
pub struct Stats {
    ingest: Histogram<u64>,
    search: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport: BTreeMap<&'static str, u64>,
    /// Events the server stored (or recognised as duplicates) in 2xx answers.
    events: u64,
    /// Of `events`, the ones answered as duplicates.
    duplicates: u64,
    /// Open loop only: requests not sent because the schedule was too far behind.
    dropped: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            ingest: histogram(),
            search: histogram(),
            statuses: BTreeMap::new(),
            transport: BTreeMap::new(),
            events: 0,
            duplicates: 0,
            dropped: 0,
        }
    }

    /// Records an HTTP answer and its latency.
    pub fn answer(&mut self, op: Op, status: u16, latency: Duration, stored: Stored) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match op {
            Op::Ingest => self.ingest.saturating_record(micros.max(1)),
            Op::Search => self.search.saturating_record(micros.max(1)),
        }
        *self.statuses.entry(status).or_default() += 1;
        self.events += stored.events;
        self.duplicates += stored.duplicates;
    }

    /// Records a request that got no HTTP answer.
    pub fn transport_error(&mut self, error: TransportError) {
        *self.transport.entry(error.name()).or_default() += 1;
    }

    /// Records requests the open loop could not send in time.
    pub fn drop_requests(&mut self, count: u64) {
        self.dropped += count;
    }

    /// Adds another worker's counters to these.
    ///
    /// # Errors
    /// The histograms disagree on their bounds (they never do: all come from [`Stats::new`]).
    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.ingest.add(&other.ingest)?;
        self.search.add(&other.search)?;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        for (name, count) in &other.transport {
            *self.transport.entry(name).or_default() += count;
        }
        self.events += other.events;
        self.duplicates += other.duplicates;
        self.dropped += other.dropped;
        Ok(())
    }

    /// Requests that got an answer or failed below HTTP.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport.values().sum::<u64>()
    }

    /// Requests answered 2xx.
    pub fn successes(&self) -> u64 {
        self.statuses.range(200..300).map(|(_, count)| count).sum()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .expect("constant bounds with 3 significant figures are valid")
}

/// Events an answer says were stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub events: u64,
    pub duplicates: u64,
}

/// How a run was set up, for the report's header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub url: String,
    pub scenario: &'static str,
    /// `None` when ingest sends single events.
    pub batch_size: Option<usize>,
    pub concurrency: usize,
    /// Requests per second for an open loop; `None` for a closed loop.
    pub rate: Option<f64>,
    /// The open loop's bound on requests behind schedule.
    pub max_backlog: Option<u64>,
    pub duplicate_share: f64,
    pub search_share: f64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Latency percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// `None` when nothing was recorded.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Some(Self {
            count: histogram.len(),
            mean: histogram.mean() / 1_000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }

    fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "mean": round3(self.mean),
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "p99.9": round3(self.p999),
            "max": round3(self.max),
        })
    }
}

fn round3(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

/// Per-second rates over the measured window.
fn per_second(count: u64, window: Duration) -> f64 {
    let seconds = window.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The report as one JSON object (`--json`).
pub fn to_json(info: &RunInfo, stats: &Stats) -> Value {
    let latency = |histogram| Latency::of(histogram).map_or(Value::Null, Latency::to_json);
    json!({
        "run_id": info.run_id,
        "url": info.url,
        "scenario": info.scenario,
        "batch_size": info.batch_size,
        "concurrency": info.concurrency,
        "mode": if info.rate.is_some() { "open" } else { "closed" },
        "target_rate": info.rate,
        "max_backlog": info.max_backlog,
        "duplicate_share": info.duplicate_share,
        "search_share": info.search_share,
        "warmup_s": info.warmup.as_secs_f64(),
        "duration_s": info.duration.as_secs_f64(),
        "requests": stats.requests(),
        "requests_2xx": stats.successes(),
        "requests_per_s": round3(per_second(stats.requests(), info.duration)),
        "events_ingested": stats.events,
        "events_per_s": round3(per_second(stats.events, info.duration)),
        "duplicates_answered": stats.duplicates,
        "dropped": stats.dropped,
        "latency_ms": {
            "ingest": latency(&stats.ingest),
            "search": latency(&stats.search),
        },
        "status": stats.statuses.iter().map(|(status, count)| (status.to_string(), json!(count))).collect::<serde_json::Map<_, _>>(),
        "transport_errors": stats.transport,
    })
}

/// The report as a human-readable table.
pub fn to_table(info: &RunInfo, stats: &Stats) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_table(&mut out, info, stats);
    out
}

fn write_table(out: &mut String, info: &RunInfo, stats: &Stats) -> std::fmt::Result {
    let mode = match info.rate {
        Some(rate) => format!("open loop at {rate} req/s"),
        None => "closed loop".to_owned(),
    };
    let ingest = match info.batch_size {
        Some(size) => format!("batches of {size}"),
        None => "single events".to_owned(),
    };
    writeln!(out, "pulsestream-bench  run {}", info.run_id)?;
    writeln!(out, "  target       {}", info.url)?;
    writeln!(
        out,
        "  scenario     {} ({ingest}), {} connections, {mode}",
        info.scenario, info.concurrency
    )?;
    writeln!(
        out,
        "  shares       duplicates {:.0}%, searches {:.0}%",
        info.duplicate_share * 100.0,
        info.search_share * 100.0
    )?;
    writeln!(
        out,
        "  measured     {:.2} s after {:.2} s warmup",
        info.duration.as_secs_f64(),
        info.warmup.as_secs_f64()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  requests     {:>12}  {:>12.1}/s   ({} answered 2xx)",
        stats.requests(),
        per_second(stats.requests(), info.duration),
        stats.successes()
    )?;
    writeln!(
        out,
        "  events       {:>12}  {:>12.1}/s   ingested in 2xx answers ({} duplicates)",
        stats.events,
        per_second(stats.events, info.duration),
        stats.duplicates
    )?;
    if let Some(backlog) = info.max_backlog {
        writeln!(
            out,
            "  dropped      {:>12}  (more than {backlog} requests behind schedule)",
            stats.dropped
        )?;
    }
    writeln!(out)?;
    write_latency(out, "ingest", &stats.ingest)?;
    write_latency(out, "search", &stats.search)?;
    writeln!(out)?;
    let statuses: Vec<String> = stats
        .statuses
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    writeln!(out, "  status       {}", join_or_none(&statuses))?;
    let transport: Vec<String> = stats
        .transport
        .iter()
        .map(|(name, count)| format!("{name}: {count}"))
        .collect();
    writeln!(out, "  transport    {}", join_or_none(&transport))
}

fn write_latency(out: &mut String, name: &str, histogram: &Histogram<u64>) -> std::fmt::Result {
    let Some(latency) = Latency::of(histogram) else {
        return Ok(());
    };
    writeln!(
        out,
        "  latency ms   {name:<7} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  p99.9 {:>9.3}  max {:>9.3}",
        latency.p50, latency.p90, latency.p99, latency.p999, latency.max
    )
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            run_id: "r0000000000".into(),
            url: "http://127.0.0.1:8090".into(),
            scenario: "batch",
            batch_size: Some(1_000),
            concurrency: 4,
            rate: None,
            max_backlog: None,
            duplicate_share: 0.0,
            search_share: 0.0,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
        }
    }

    fn stored(events: u64) -> Stored {
        Stored {
            events,
            duplicates: 0,
        }
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut stats = Stats::new();
        for millis in 1..=1_000 {
            stats.answer(Op::Ingest, 200, Duration::from_millis(millis), stored(10));
        }
        let latency = Latency::of(&stats.ingest).expect("latencies were recorded");
        assert_eq!(latency.count, 1_000);
        // Three significant figures: within 0.1% of the exact value.
        assert!((latency.p50 - 500.0).abs() <= 0.5, "p50 {}", latency.p50);
        assert!((latency.p90 - 900.0).abs() <= 0.9, "p90 {}", latency.p90);
        assert!((latency.p99 - 990.0).abs() <= 1.0, "p99 {}", latency.p99);
        assert!((latency.max - 1_000.0).abs() <= 1.0, "max {}", latency.max);
        assert!(Latency::of(&stats.search).is_none());
    }

    #[test]
    fn merged_stats_add_up_and_only_2xx_counts_as_success() {
        let mut first = Stats::new();
        first.answer(Op::Ingest, 200, Duration::from_micros(800), stored(1_000));
        first.answer(
            Op::Ingest,
            503,
            Duration::from_micros(50),
            Stored::default(),
        );
        let mut second = Stats::new();
        second.answer(
            Op::Search,
            200,
            Duration::from_micros(300),
            Stored::default(),
        );
        second.transport_error(TransportError::Timeout);
        second.drop_requests(3);
        first.merge(&second).expect("same bounds");

        assert_eq!(first.requests(), 4);
        assert_eq!(first.successes(), 2);
        let report = to_json(&info(), &first);
        assert_eq!(report["events_ingested"], 1_000);
        assert_eq!(report["events_per_s"], 100.0);
        assert_eq!(report["status"]["200"], 2);
        assert_eq!(report["status"]["503"], 1);
        assert_eq!(report["transport_errors"]["timeout"], 1);
        assert_eq!(report["dropped"], 3);
        assert_eq!(report["latency_ms"]["search"]["count"], 1);
    }

    #[test]
    fn the_table_names_every_figure() {
        let mut stats = Stats::new();
        stats.answer(Op::Ingest, 201, Duration::from_micros(250), stored(1));
        let table = to_table(&info(), &stats);
        for needle in [
            "requests",
            "events",
            "latency ms",
            "p99.9",
            "201: 1",
            "transport    none",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
    }
}
