//! The `pulsestream` server: configuration, telemetry and wiring of store and API.
//!
//! `main` and the integration tests start the server the same way, through
//! [`Server::bind`] and [`Server::run`].

mod activity;
pub mod config;
mod disk;
pub mod http;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pulsestream_api::admin::backups::BackupFn;
use pulsestream_api::auth::secret_hash;
use pulsestream_api::{ApiConfig, AppState, MetricsRender, SegmentLimits};
use pulsestream_core::RetryPolicy;
use pulsestream_core::secret::{SecretCipher, SecretKey};
use pulsestream_delivery::{DeliveryConfig, DeliveryStores, Dispatcher, NatsSink, Sinks, Tester};
use pulsestream_limits::{RateLimiter, RedisSettings};
use pulsestream_store::embedded::{
    BACKUP_MARKER, BackupReport, EmbeddedConfig, EmbeddedStore, backup_report,
};
use pulsestream_store::postgres::PostgresStore;
use pulsestream_store::{ActivityStore, DeliveryQueue, DestinationStore, Store, TenantStore};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ServeConfig;

/// The file in the data directory that holds a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The file in the data directory that holds a generated secret key (embedded store only).
pub const SECRET_KEY_FILE: &str = "secret-key";

/// A bound, ready-to-run server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    store: Arc<dyn Store>,
    sinks: Arc<Sinks>,
    delivery: DeliveryConfig,
    /// How long delivery attempts are kept.
    attempts_retention: Duration,
    /// Event retention: the default days and how often it is applied.
    retention: activity::Retention,
    /// The embedded store's directory and the free space it keeps (none on PostgreSQL).
    disk_guard: Option<(std::path::PathBuf, config::MinFreeDisk)>,
    /// Set when a certificate and key are configured: the listener speaks HTTPS only.
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: http::ConnectionLimits,
}

impl Server {
    /// Opens the store, settles the admin token and prepares the API on `listener`.
    ///
    /// # Errors
    /// Invalid settings, or a store that cannot be opened.
    pub async fn bind(config: &ServeConfig, listener: TcpListener) -> anyhow::Result<Self> {
        config.validate()?;
        // Bad TLS files are refused before anything else is opened.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let (store, embedded) = open_store(config).await?;
        let admin_token_hash = admin_token_hash(config, store.as_ref()).await?;
        let secrets = Arc::new(SecretCipher::new(&secret_key(config)?));
        let api_config = ApiConfig {
            body_limit_bytes: config.body_limit_bytes,
            request_timeout: config.request_timeout(),
            allow_private_destinations: config.allow_private_destinations,
            nats_enabled: config.nats_url.is_some(),
            max_destinations_per_tenant: config.max_destinations_per_tenant,
            search_max_page_bytes: usize::try_from(config.search_max_page_bytes)
                .unwrap_or(usize::MAX),
            tail_buffer_events: config.tail_buffer_events,
            secrets: secrets.clone(),
            segment: SegmentLimits {
                max_message_bytes: config.segment_max_message_bytes,
                max_batch_bytes: config.segment_max_batch_bytes,
            },
        };
        let metrics = telemetry::metrics();
        let sinks = Arc::new(sinks(config, secrets).await?);
        let limiter = Arc::new(rate_limiter(config)?);
        let state = AppState::new(
            store.clone(),
            limiter,
            admin_token_hash,
            api_config,
            MetricsRender(Arc::new(|| metrics.render())),
        )
        .with_test_sender(Arc::new(Tester::new(
            sinks.clone(),
            store.clone() as Arc<dyn ActivityStore>,
        )));
        let mut state = state;
        state.backup = embedded.map(|store| backup_fn(store, config.data_dir.clone()));
        // A server started on a full disk refuses ingest from its first request.
        let disk_guard = (config.postgres().is_none()
            && config.min_free_disk != config::MinFreeDisk::Bytes(0))
        .then(|| (config.data_dir.clone(), config.min_free_disk));
        if let Some((dir, min)) = &disk_guard {
            disk::measure(dir, *min, &state.disk);
        }
        let delivery = DeliveryConfig {
            retry: RetryPolicy {
                base: time::Duration::milliseconds(config.delivery_retry_base_ms as i64),
                ..RetryPolicy::default()
            },
            breaker_cool_down: Duration::from_millis(config.delivery_breaker_cool_down_ms),
            batch_max_bytes: usize::try_from(config.delivery_batch_max_bytes).unwrap_or(usize::MAX),
            ..DeliveryConfig::default()
        };
        Ok(Self {
            listener,
            state,
            store,
            sinks,
            delivery,
            attempts_retention: Duration::from_secs(config.attempts_retention_hours * 3600),
            retention: activity::Retention {
                default_days: config.retention_days,
                every: Duration::from_secs(config.retention_check_secs),
            },
            disk_guard,
            tls,
            connections: http::ConnectionLimits {
                header_read_timeout: config.header_read_timeout(),
            },
        })
    }

    /// Returns the address the server listens on.
    ///
    /// # Errors
    /// The socket cannot tell (it is closed).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests and closes
    /// the store cleanly.
    ///
    /// # Errors
    /// The store cannot be closed cleanly.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, tls = self.tls.is_some(), "pulsestream is listening");
        let tally = self.state.tally.clone();
        let disk_space = self.state.disk.clone();
        // Live tails end when shutdown begins: open streams would hold the graceful
        // shutdown up forever.
        let tail_stop = self.state.tail_stop.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            tail_stop.cancel();
        });
        let router = pulsestream_api::router(self.state);
        let workers = shutdown.child_token();
        let activity = self.store.clone() as Arc<dyn ActivityStore>;
        let dispatcher = Dispatcher::spawn(
            DeliveryStores {
                destinations: self.store.clone() as Arc<dyn DestinationStore>,
                queue: self.store.clone() as Arc<dyn DeliveryQueue>,
                activity: activity.clone(),
                tally: tally.clone(),
            },
            self.sinks,
            self.delivery,
            workers.clone(),
        );
        let upkeep = activity::Upkeep::spawn(
            self.store.clone(),
            tally,
            self.attempts_retention,
            self.retention,
            workers.clone(),
        );
        let disk_monitor = self
            .disk_guard
            .map(|(dir, min)| disk::spawn(dir, min, disk_space, workers.clone()));
        http::serve(self.listener, router, self.connections, self.tls, shutdown).await;
        tracing::info!("in-flight requests finished; stopping delivery workers");
        workers.cancel();
        dispatcher.join().await;
        // The last counts, written before the store closes.
        upkeep.join().await;
        if let Some(monitor) = disk_monitor {
            let _ = monitor.await;
        }
        tracing::info!("delivery workers stopped; closing the store");
        self.store
            .close()
            .await
            .context("failed to close the store cleanly")?;
        tracing::info!("store closed");
        Ok(())
    }
}

/// The files of a data directory beside the store that a backup carries.
const DATA_DIR_FILES: [&str; 2] = [ADMIN_TOKEN_FILE, SECRET_KEY_FILE];

/// Backs up the embedded store, and the admin token and secret key files beside it.
fn backup_fn(store: EmbeddedStore, data_dir: std::path::PathBuf) -> BackupFn {
    BackupFn(Arc::new(move |to: &Path| {
        let report = store
            .backup_to(to)
            .map_err(|err| pulsestream_api::error::error_chain(&err))?;
        for name in DATA_DIR_FILES {
            let from = data_dir.join(name);
            if from.exists() {
                std::fs::copy(&from, to.join(name))
                    .map_err(|err| format!("failed to copy {}: {err}", from.display()))?;
            }
        }
        serde_json::to_value(&report).map_err(|err| err.to_string())
    }))
}

/// Makes `data_dir` (absent or empty) a data directory that serves the complete backup in
/// `from`: copies it, refusing an incomplete backup. Returns the backup's report.
///
/// # Errors
/// `from` is not a complete backup, `data_dir` is not empty, or copying fails.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<BackupReport> {
    let report = backup_report(from).map_err(|err| match err {
        // Not "stored data is corrupt": it is not a (whole) backup.
        pulsestream_store::StoreError::Corrupt(why) => anyhow::anyhow!(why),
        other => other.into(),
    })?;
    anyhow::ensure!(
        std::fs::read_dir(data_dir).map_or(true, |mut entries| entries.next().is_none()),
        "{} is not empty: restore into a new directory",
        data_dir.display()
    );
    copy_tree(from, data_dir).with_context(|| {
        format!(
            "failed to copy {} to {}",
            from.display(),
            data_dir.display()
        )
    })?;
    // The marker says where the data came from; it is no part of a data directory.
    std::fs::rename(
        data_dir.join(BACKUP_MARKER),
        data_dir.join("restored-from-backup.json"),
    )?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(report)
}

/// Copies a directory tree, each file synced.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}

/// Opens PostgreSQL when a database URL is configured (applying pending migrations),
/// otherwise the embedded store in the data dir (returned also as itself, for backups).
async fn open_store(
    config: &ServeConfig,
) -> anyhow::Result<(Arc<dyn Store>, Option<EmbeddedStore>)> {
    if let Some(postgres) = config.postgres() {
        let store = PostgresStore::connect(&postgres)
            .await
            .context("failed to open the PostgreSQL store at PULSESTREAM_DATABASE_URL")?;
        tracing::info!(
            pool_size = postgres.pool_size,
            schema_version = pulsestream_store::postgres::latest_version(),
            "events are stored in PostgreSQL"
        );
        return Ok((Arc::new(store), None));
    }
    let mut store_config = EmbeddedConfig::new(&config.data_dir);
    store_config.queue_capacity = config.write_queue_capacity;
    store_config.search_index = config.search_index;
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&store_config))
        .await?
        .with_context(|| format!("failed to open the embedded store in {}", dir.display()))?;
    Ok((Arc::new(store.clone()), Some(store)))
}

/// Applies the PostgreSQL migrations this build knows and returns the versions applied.
///
/// # Errors
/// No database URL, the database cannot be reached, or a migration fails.
pub async fn migrate(config: &ServeConfig) -> anyhow::Result<Vec<i32>> {
    let postgres = config
        .postgres()
        .context("migrate needs --database-url / PULSESTREAM_DATABASE_URL")?;
    let store = PostgresStore::connect_lazy(&postgres)?;
    Ok(store.migrate().await?)
}

/// Builds the sinks: every kind, with NATS when configured.
async fn sinks(config: &ServeConfig, secrets: Arc<SecretCipher>) -> anyhow::Result<Sinks> {
    // Webhook, NATS, AMQP and MQTT TLS use rustls with ring; installing twice (tests start
    // several servers) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = Duration::from_millis(config.webhook_timeout_ms);
    let nats = match &config.nats_url {
        Some(url) => Some(
            NatsSink::connect(&url.0, timeout)
                .await
                .context("failed to connect to NATS at PULSESTREAM_NATS_URL")?,
        ),
        None => None,
    };
    Sinks::new(timeout, config.allow_private_destinations, secrets, nats)
        .context("failed to build the webhook HTTP client")
}

/// Returns the in-process limiter, or the Redis one when a Redis URL is configured.
fn rate_limiter(config: &ServeConfig) -> anyhow::Result<RateLimiter> {
    let Some(url) = &config.redis_url else {
        return Ok(RateLimiter::local());
    };
    let mut settings = RedisSettings::new(url.0.clone());
    settings.key_prefix = config.redis_key_prefix.clone();
    settings.timeout = std::time::Duration::from_millis(config.redis_timeout_ms);
    tracing::info!(key_prefix = %settings.key_prefix, "rate limits are shared through Redis");
    RateLimiter::with_redis(settings).context("PULSESTREAM_REDIS_URL is not a Redis URL")
}

/// Returns the SHA-256 of the admin token: the configured one, else the stored one, else a
/// new one written to `<data-dir>/admin-token` for the operator.
async fn admin_token_hash(config: &ServeConfig, store: &dyn TenantStore) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        anyhow::ensure!(
            token.0.len() >= 16,
            "PULSESTREAM_ADMIN_TOKEN must be at least 16 characters"
        );
        return Ok(secret_hash(&token.0));
    }
    if let Some(hash) = store.admin_token_hash().await? {
        tracing::info!(path = %config.data_dir.join(ADMIN_TOKEN_FILE).display(), "using the admin token generated at first start");
        return Ok(hash);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    write_private(&path, &token)
        .with_context(|| format!("failed to write the admin token to {}", path.display()))?;
    let hash = secret_hash(&token);
    store.set_admin_token_hash(&hash).await?;
    tracing::info!(path = %path.display(), "generated an admin token; read it from this file");
    Ok(hash)
}

/// Returns the key that seals webhook secrets: the configured one, else the one generated
/// at first start in `<data-dir>/secret-key`, else a new one written there. (`validate` has
/// already refused PostgreSQL without a configured key: a key per node would make each node
/// unable to open what the others sealed.)
fn secret_key(config: &ServeConfig) -> anyhow::Result<SecretKey> {
    if let Some(key) = &config.secret_key {
        return SecretKey::parse(&key.0).context("PULSESTREAM_SECRET_KEY is not usable");
    }
    let path = config.data_dir.join(SECRET_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = SecretKey::parse(&text)
                .with_context(|| format!("{} does not hold a secret key", path.display()))?;
            tracing::info!(path = %path.display(), "using the secret key generated at first start");
            Ok(key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate().context("failed to generate a secret key")?;
            write_private(&path, &key.to_hex())
                .with_context(|| format!("failed to write the secret key to {}", path.display()))?;
            tracing::info!(
                path = %path.display(),
                "generated the key that seals webhook secrets; back it up with the data directory"
            );
            Ok(key)
        }
        Err(err) => {
            Err(err).with_context(|| format!("failed to read the secret key at {}", path.display()))
        }
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Reads an admin token written by a server at first start.
///
/// # Errors
/// The file cannot be read.
pub fn read_admin_token(data_dir: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE))?
        .trim()
        .to_owned())
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
