//! `pulsestream`: `serve` runs the server; `migrate` prepares a PostgreSQL database;
//! `tenant`, `destination` and `events` talk to a running server's API (`cli`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cli::{AdminAuth, Connection, DestinationCommand, EventsCommand, TenantAuth, TenantCommand};
use pulsestream_server::config::ServeConfig;
use pulsestream_server::{Server, shutdown_signal, telemetry};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: the request path allocates per event (JSON,
/// keys, answers) and glibc's malloc/free were ~17 % of the store's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "pulsestream",
    version,
    about = "Multi-tenant event ingestion: durable, exactly once, searchable at once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server.
    Serve(ServeConfig),
    /// Applies pending PostgreSQL schema migrations and exits (`serve` also applies them at
    /// start; safe to run from several nodes at once).
    Migrate(ServeConfig),
    /// Manages tenants through a running server's admin API (with the admin token).
    Tenant {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        auth: AdminAuth,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manages a tenant's destinations and dead letters (with the tenant's API key).
    Destination {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        auth: TenantAuth,
        #[command(subcommand)]
        command: DestinationCommand,
    },
    /// Takes an online backup of a running server's embedded store into a directory on the
    /// server's machine (with the admin token); ingest goes on meanwhile.
    Backup {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        auth: AdminAuth,
        /// An absolute directory on the server's machine, absent or empty.
        #[arg(long)]
        to: PathBuf,
    },
    /// Makes a new data directory from a complete backup (offline: no server needed), then
    /// `pulsestream serve --data-dir` serves it.
    Restore {
        /// The backup (a directory `pulsestream backup` wrote).
        #[arg(long)]
        from: PathBuf,
        /// The data directory to make: absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Sends, reads and searches a tenant's events (with the tenant's API key).
    Events {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        auth: TenantAuth,
        #[command(subcommand)]
        command: EventsCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Blocking work (the embedded store's reads and queue operations) runs on at most 64
    // threads, not tokio's default 512: a burst (thousands of destination workers starting at
    // once) queues instead of parking hundreds of threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (result, connection) = match cli.command {
        Command::Serve(config) => (runtime.block_on(serve(config)), None),
        Command::Migrate(config) => (runtime.block_on(migrate(config)), None),
        Command::Backup {
            connection,
            auth,
            to,
        } => (
            runtime.block_on(cli::backup(&connection, auth, to)),
            Some(connection),
        ),
        Command::Restore { from, data_dir } => (restore(&from, &data_dir), None),
        Command::Tenant {
            connection,
            auth,
            command,
        } => (
            runtime.block_on(cli::tenant(&connection, auth, command)),
            Some(connection),
        ),
        Command::Destination {
            connection,
            auth,
            command,
        } => (
            runtime.block_on(cli::destination(&connection, auth, command)),
            Some(connection),
        ),
        Command::Events {
            connection,
            auth,
            command,
        } => (
            runtime.block_on(cli::events(&connection, auth, command)),
            Some(connection),
        ),
    };
    match (result, connection) {
        (Ok(()), _) => ExitCode::SUCCESS,
        (Err(err), Some(connection)) => {
            connection.report(&err);
            ExitCode::FAILURE
        }
        (Err(err), None) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let report = pulsestream_server::restore(from, data_dir)?;
    println!(
        "restored {} events ({} entries, {} bytes) of the backup taken at {} into {} in {:.1} s",
        report.events,
        report.entries,
        report.bytes,
        report
            .taken_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "serve it with: pulsestream serve --data-dir {}",
        data_dir.display()
    );
    Ok(())
}

async fn migrate(config: ServeConfig) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    let applied = pulsestream_server::migrate(&config).await?;
    if applied.is_empty() {
        println!("the database schema is up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let server = Server::bind(&config, listener).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
        trigger.cancel();
    });
    server.run(shutdown).await
}
