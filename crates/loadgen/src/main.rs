//! `pulsestream-bench`, the load generator behind BENCHMARKS.md: the command line and the
//! order of a run (wait for readiness, get an API key, load, report). It speaks HTTP only
//! and shares no code with the server, so it measures what a client would see.
//!
//! - [`scenario`]: what is sent (events, batches, duplicates, searches)
//! - [`client`]: HTTP/1.1 connections and requests
//! - [`worker`]: the closed and open load loops
//! - [`report`]: counters, percentiles, table and JSON
//! - [`ceiling`]: the store-nothing server the real one is compared against

mod ceiling;
mod client;
mod report;
mod scenario;
mod worker;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use tokio::time::Instant;

use crate::client::{Requests, Target};
use crate::report::RunInfo;
use crate::scenario::{Catalog, Ingest, Mix, Scenario};
use crate::worker::{Plan, Schedule};

/// Events per batch request when `--scenario batch` is given no `--batch-size`.
const DEFAULT_BATCH_SIZE: usize = 1_000;
/// Share of searches when `--scenario mixed` is given no `--search-share`.
const DEFAULT_SEARCH_SHARE: f64 = 0.1;
/// The open loop's default backlog bound, per connection.
const DEFAULT_BACKLOG_PER_CONNECTION: u64 = 10;
/// How long `run` waits for `GET /readyz` to answer 200.
const READY_PATIENCE: Duration = Duration::from_secs(10);

/// Load generator for PulseStream: drives its HTTP API and reports throughput, latency
/// percentiles and errors.
#[derive(Debug, Parser)]
#[command(name = "pulsestream-bench", version)]
struct Cli {
    /// Runtime worker threads [default: one per CPU]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send load to a server for warmup + duration, then report what was measured
    Run(RunArgs),
    /// Serve the same API without storing anything: the network + parse ceiling
    Ceiling(CeilingArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Base URL of the server (plain http)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,

    /// Admin token, used to create a tenant for this run
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PULSESTREAM_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// Send as this tenant instead of creating one
    #[arg(
        long,
        value_name = "KEY",
        env = "PULSESTREAM_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    /// What to send
    #[arg(long, value_enum, default_value_t = Scenario::Single)]
    scenario: Scenario,

    /// Events per batch request, 1 to 1000 [default: 1000 for batch]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch_size: Option<u16>,

    /// Connections; each has at most one request in flight
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,

    /// How long to measure, after the warmup (e.g. 20s, 500ms, 2m)
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,

    /// How long to send before measuring
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,

    /// Open loop: send N requests/s on a fixed schedule [default: closed loop]
    ///
    /// Latency is measured from each request's intended send time, so a stalled server
    /// shows up in the percentiles (no coordinated omission). Requests more than
    /// --max-backlog behind schedule are dropped and counted. Without --rate, each
    /// connection sends back to back.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Open loop: requests that may fall behind schedule before further ones are
    /// dropped [default: 10 × --concurrency]
    #[arg(long, value_name = "N", requires = "rate", value_parser = clap::value_parser!(u64).range(1..))]
    max_backlog: Option<u64>,

    /// Share of events that resend an event already sent (same id and content)
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    duplicates: f64,

    /// Share of requests that are GET /v1/events searches by event_type (mixed only)
    /// [default: 0.1]
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    search_share: Option<f64>,

    /// What every search asks instead of one event_type, as a query string
    /// (`q=ord-3-1234`, `payload.currency=EUR&limit=10`)
    #[arg(long, value_name = "QUERY")]
    search_query: Option<String>,

    /// A request without an answer after this long counts as a timeout
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,

    /// Print the report as one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CeilingArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

/// The same allocator as the server, so the bare-HTTP ceiling it hosts is a fair comparison.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime.build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Ceiling(args) => runtime.block_on(ceiling::serve(args.listen)),
    }
}

/// `pulsestream-bench run`.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() {
        bail!("--duration must be longer than zero");
    }
    let mix = args.mix();
    let target = Target::resolve(&args.url).await?;
    client::wait_ready(&target, READY_PATIENCE).await?;
    let run_id = scenario::new_run_id();
    let api_key = api_key(&args, &target, &run_id).await?;
    let info = run_info(&args, &mix, run_id);
    eprintln!(
        "run {}: {} against {} with {} connections, {:.1} s warmup + {:.1} s",
        info.run_id,
        info.scenario,
        info.url,
        info.concurrency,
        info.warmup.as_secs_f64(),
        info.duration.as_secs_f64()
    );
    let start = Instant::now();
    let plan = Plan {
        addr: target.addr,
        requests: Requests::new(&target, &api_key, args.search_query.as_deref())?,
        mix,
        run_id: info.run_id.clone(),
        catalog: Arc::new(Catalog::new()),
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
        timeout: args.timeout,
        schedule: args
            .rate
            .map(|rate| Schedule::new(start, rate, args.max_backlog())),
    };
    let stats = worker::run(Arc::new(plan), args.concurrency as usize).await?;
    if args.json {
        println!("{}", report::to_json(&info, &stats));
    } else {
        print!("{}", report::to_table(&info, &stats));
    }
    if stats.successes() == 0 {
        bail!("no request was answered 2xx during the measured window");
    }
    Ok(())
}

impl RunArgs {
    /// How many requests an open loop may fall behind before it drops some.
    fn max_backlog(&self) -> u64 {
        self.max_backlog
            .unwrap_or(u64::from(self.concurrency) * DEFAULT_BACKLOG_PER_CONNECTION)
    }

    /// The request mix; flags the scenario does not use are ignored with a note.
    fn mix(&self) -> Mix {
        let batch_size = self.batch_size.map(usize::from);
        let ingest = match (self.scenario, batch_size) {
            (Scenario::Batch, size) => Ingest::Batch(size.unwrap_or(DEFAULT_BATCH_SIZE)),
            (Scenario::Mixed, Some(size)) => Ingest::Batch(size),
            (Scenario::Single, Some(_)) => {
                eprintln!("note: --batch-size is ignored by --scenario single");
                Ingest::Single
            }
            (Scenario::Single | Scenario::Mixed, None) => Ingest::Single,
        };
        let search_share = match (self.scenario, self.search_share) {
            (Scenario::Mixed, share) => share.unwrap_or(DEFAULT_SEARCH_SHARE),
            (_, Some(_)) => {
                eprintln!("note: --search-share only applies to --scenario mixed");
                0.0
            }
            (_, None) => 0.0,
        };
        Mix {
            ingest,
            duplicate_share: self.duplicates,
            search_share,
        }
    }
}

/// The given API key, or the key of a tenant created for this run.
async fn api_key(args: &RunArgs, target: &Target, run_id: &str) -> anyhow::Result<String> {
    if let Some(key) = &args.api_key {
        return Ok(key.clone());
    }
    let Some(token) = &args.admin_token else {
        bail!(
            "give --admin-token (or PULSESTREAM_ADMIN_TOKEN) to create a tenant, \
             or --api-key to send as an existing one"
        );
    };
    let name = format!("bench-{run_id}");
    let key = client::create_tenant(target, token, &name).await?;
    eprintln!("created tenant {name}");
    Ok(key)
}

fn run_info(args: &RunArgs, mix: &Mix, run_id: String) -> RunInfo {
    RunInfo {
        run_id,
        url: args.url.clone(),
        scenario: args.scenario.name(),
        batch_size: match mix.ingest {
            Ingest::Single => None,
            Ingest::Batch(size) => Some(size),
        },
        concurrency: args.concurrency as usize,
        rate: args.rate,
        max_backlog: args.rate.map(|_| args.max_backlog()),
        duplicate_share: mix.duplicate_share,
        search_share: mix.search_share,
        warmup: args.warmup,
        duration: args.duration,
    }
}

/// Reads `20s`, `500ms`, `1.5s`, `2m`, `1h`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration such as 20s, 500ms or 2m");
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid())
}

/// Reads a share from 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share from 0 to 1 (e.g. 0.1)")),
    }
}

/// Reads a positive request rate.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of requests per second"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn shares_and_rates_are_bounded() {
        assert_eq!(parse_share("0.1"), Ok(0.1));
        assert!(parse_share("1.5").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("2500"), Ok(2_500.0));
    }

    #[test]
    fn scenarios_pick_their_endpoints() {
        let parse = |line: &str| {
            let cli = Cli::try_parse_from(line.split_whitespace()).expect("valid arguments");
            let Command::Run(args) = cli.command else {
                panic!("expected run");
            };
            args.mix()
        };
        let batch = parse("pulsestream-bench run --scenario batch");
        assert_eq!(batch.ingest, Ingest::Batch(1_000));
        assert_eq!(batch.search_share, 0.0);
        let mixed = parse("pulsestream-bench run --scenario mixed --duplicates 0.2");
        assert_eq!(mixed.ingest, Ingest::Single);
        assert_eq!((mixed.search_share, mixed.duplicate_share), (0.1, 0.2));
        let mixed_batches = parse("pulsestream-bench run --scenario mixed --batch-size 50");
        assert_eq!(mixed_batches.ingest, Ingest::Batch(50));
    }
}
