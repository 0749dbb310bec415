//! The one typed configuration of `pulsestream serve`, read from flags and `PULSESTREAM_*`
//! environment variables (flags win). No other module reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pulsestream_store::postgres::PostgresConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that must never be printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Every default of `pulsestream serve`, written once: the flags and `ServeConfig::new`
/// (the settings tests start from) both take them from here.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const SEGMENT_MAX_MESSAGE_BYTES: usize = 32 * 1024;
    pub const SEGMENT_MAX_BATCH_BYTES: usize = 500 * 1024;
    pub const DATA_DIR: &str = "./pulsestream-data";
    pub const REDIS_KEY_PREFIX: &str = "pulsestream";
    pub const DATABASE_POOL_SIZE: usize = 32;
    pub const DATABASE_TIMEOUT_MS: u64 = 5_000;
    pub const REDIS_TIMEOUT_MS: u64 = 50;
    pub const DELIVERY_RETRY_BASE_MS: u64 = 1_000;
    pub const DELIVERY_BATCH_MAX_BYTES: u64 = 1024 * 1024;
    pub const MAX_DESTINATIONS_PER_TENANT: usize = 100;
    pub const ATTEMPTS_RETENTION_HOURS: u64 = 24;
    pub const MIN_FREE_DISK: &str = "5%";
    pub const RETENTION_DAYS: u32 = 0;
    pub const RETENTION_CHECK_SECS: u64 = 600;
    pub const TAIL_BUFFER_EVENTS: usize = 1_000;
    pub const SEARCH_MAX_PAGE_BYTES: u64 = 8 * 1024 * 1024;
    pub const DELIVERY_BREAKER_COOL_DOWN_MS: u64 = 30_000;
    pub const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
    pub const BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;
    pub const REQUEST_TIMEOUT_SECS: u64 = 30;
    pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
    pub const WRITE_QUEUE_CAPACITY: usize = 1024;
}

/// Settings of `pulsestream serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "PULSESTREAM_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Directory of the embedded store (used when no database URL is given).
    #[arg(
        long,
        env = "PULSESTREAM_DATA_DIR",
        default_value = defaults::DATA_DIR
    )]
    pub data_dir: PathBuf,
    /// `postgres://user@host:5432/db` selects PostgreSQL instead of the embedded store: every
    /// node started with the same URL shares events, tenants and delivery queues.
    #[arg(long, env = "PULSESTREAM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Connections this node keeps to PostgreSQL.
    #[arg(long, env = "PULSESTREAM_DATABASE_POOL_SIZE", default_value_t = defaults::DATABASE_POOL_SIZE)]
    pub database_pool_size: usize,
    /// Longest a PostgreSQL operation may take (connection wait included) before the request
    /// gets 503.
    #[arg(long, env = "PULSESTREAM_DATABASE_TIMEOUT_MS", default_value_t = defaults::DATABASE_TIMEOUT_MS)]
    pub database_timeout_ms: u64,
    /// Redis (`redis://host:6379`) for rate limits shared by several nodes. Unset: limits
    /// are counted in this process.
    #[arg(long, env = "PULSESTREAM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(
        long,
        env = "PULSESTREAM_REDIS_KEY_PREFIX",
        default_value = defaults::REDIS_KEY_PREFIX
    )]
    pub redis_key_prefix: String,
    /// The longest a rate-limit decision waits for Redis before falling back to in-process
    /// limits, in milliseconds.
    #[arg(long, env = "PULSESTREAM_REDIS_TIMEOUT_MS", default_value_t = defaults::REDIS_TIMEOUT_MS)]
    pub redis_timeout_ms: u64,
    /// NATS (`nats://host:4222`) for JetStream destinations. Unset: only webhooks.
    #[arg(long, env = "PULSESTREAM_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<Secret>,
    /// Accept webhook URLs that resolve to loopback, private or link-local addresses
    /// (local development and tests only).
    #[arg(long, env = "PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_destinations: bool,
    /// First retry delay of a failed delivery, in milliseconds; it doubles per attempt
    /// (with full jitter) up to an hour.
    #[arg(
        long,
        env = "PULSESTREAM_DELIVERY_RETRY_BASE_MS",
        default_value_t = defaults::DELIVERY_RETRY_BASE_MS
    )]
    pub delivery_retry_base_ms: u64,
    /// The most bytes of events in one delivery (a webhook request's body, or one round of
    /// broker messages), unless a destination sets its own `max_batch_bytes`. A single
    /// larger event still goes, alone.
    #[arg(
        long,
        env = "PULSESTREAM_DELIVERY_BATCH_MAX_BYTES",
        default_value_t = defaults::DELIVERY_BATCH_MAX_BYTES
    )]
    pub delivery_batch_max_bytes: u64,
    /// The most bytes of events in one page of search results: a page ends before the event
    /// that would pass it (it always holds one), and `next_cursor` goes on from there.
    #[arg(
        long,
        env = "PULSESTREAM_SEARCH_MAX_PAGE_BYTES",
        default_value_t = defaults::SEARCH_MAX_PAGE_BYTES
    )]
    pub search_max_page_bytes: u64,
    /// The most destinations one tenant may have (a create beyond it gets 422). Each costs a
    /// worker task, and a connection for brokers and databases.
    #[arg(
        long,
        env = "PULSESTREAM_MAX_DESTINATIONS_PER_TENANT",
        default_value_t = defaults::MAX_DESTINATIONS_PER_TENANT
    )]
    pub max_destinations_per_tenant: usize,
    /// Free space the data directory's filesystem keeps (embedded store): below it, ingest
    /// answers 507 and `/readyz` 503 until space comes back. Bytes (`500MB`, `2GiB`,
    /// `1073741824`) or a share of the filesystem (`5%`); `0` turns the check off.
    #[arg(
        long,
        env = "PULSESTREAM_MIN_FREE_DISK",
        default_value = defaults::MIN_FREE_DISK,
        value_parser = MinFreeDisk::parse
    )]
    pub min_free_disk: MinFreeDisk,
    /// Days events are kept, by their `timestamp`, for tenants that do not set their own
    /// `retention_days`; `0` keeps them forever.
    #[arg(
        long,
        env = "PULSESTREAM_RETENTION_DAYS",
        default_value_t = defaults::RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(0..=36_500)
    )]
    pub retention_days: u32,
    /// How often expired events are looked for and deleted, in seconds.
    #[arg(
        long,
        env = "PULSESTREAM_RETENTION_CHECK_SECS",
        default_value_t = defaults::RETENTION_CHECK_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub retention_check_secs: u64,
    /// How long delivery attempts are kept (for the API and the console), in hours.
    #[arg(
        long,
        env = "PULSESTREAM_ATTEMPTS_RETENTION_HOURS",
        default_value_t = defaults::ATTEMPTS_RETENTION_HOURS,
        value_parser = clap::value_parser!(u64).range(1..=24 * 366)
    )]
    pub attempts_retention_hours: u64,
    /// Events a live-tail subscriber may have waiting; one that falls further behind is cut
    /// with a final `cut` event (it can resume with `Last-Event-ID`).
    #[arg(
        long,
        env = "PULSESTREAM_TAIL_BUFFER_EVENTS",
        default_value_t = defaults::TAIL_BUFFER_EVENTS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000)
    )]
    pub tail_buffer_events: usize,
    /// How long an open circuit waits before probing its destination again, in milliseconds.
    #[arg(
        long,
        env = "PULSESTREAM_DELIVERY_BREAKER_COOL_DOWN_MS",
        default_value_t = defaults::DELIVERY_BREAKER_COOL_DOWN_MS
    )]
    pub delivery_breaker_cool_down_ms: u64,
    /// How long a webhook receiver may take to answer, in milliseconds.
    #[arg(long, env = "PULSESTREAM_WEBHOOK_TIMEOUT_MS", default_value_t = defaults::WEBHOOK_TIMEOUT_MS)]
    pub webhook_timeout_ms: u64,
    /// The admin API's bearer token. Unset: generated at first start and written to
    /// `<data-dir>/admin-token`.
    #[arg(long, env = "PULSESTREAM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// The key that seals webhook signing secrets at rest (AES-256-GCM): 32 bytes as 64 hex
    /// digits or base64. Unset on the embedded store: generated at first start and written to
    /// `<data-dir>/secret-key`. Required with a database URL, since every node must share it.
    #[arg(long, env = "PULSESTREAM_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,
    /// PEM certificate chain: with `--tls-key`, the listener speaks HTTPS only.
    #[arg(long, env = "PULSESTREAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "PULSESTREAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The largest request body in bytes, after decompression.
    #[arg(long, env = "PULSESTREAM_BODY_LIMIT_BYTES", default_value_t = defaults::BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
    /// How long one request may take, in seconds, body upload included.
    #[arg(long, env = "PULSESTREAM_REQUEST_TIMEOUT_SECS", default_value_t = defaults::REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// How long a client may take to send a request's headers, in seconds; it also bounds
    /// how long a connection may sit idle between requests. Then the connection is closed,
    /// so slow or silent clients cannot hold connections and memory forever.
    #[arg(
        long,
        env = "PULSESTREAM_HEADER_READ_TIMEOUT_SECS",
        default_value_t = defaults::HEADER_READ_TIMEOUT_SECS
    )]
    pub header_read_timeout_secs: u64,
    /// The largest Segment message (`/v1/track`, … and each message of `/v1/batch`), in bytes.
    #[arg(
        long,
        env = "PULSESTREAM_SEGMENT_MAX_MESSAGE_BYTES",
        default_value_t = defaults::SEGMENT_MAX_MESSAGE_BYTES
    )]
    pub segment_max_message_bytes: usize,
    /// The largest Segment request body, in bytes after decompression (Segment's limit;
    /// RudderStack's SDKs send up to 4 MB: set 4194304 for them).
    #[arg(
        long,
        env = "PULSESTREAM_SEGMENT_MAX_BATCH_BYTES",
        default_value_t = defaults::SEGMENT_MAX_BATCH_BYTES
    )]
    pub segment_max_batch_bytes: usize,
    /// Requests waiting for the store's writer beyond which new ones get 503.
    #[arg(long, env = "PULSESTREAM_WRITE_QUEUE_CAPACITY", default_value_t = defaults::WRITE_QUEUE_CAPACITY)]
    pub write_queue_capacity: usize,
    /// Keep the embedded store's search index, which serves full text (`q`) and payload
    /// paths; without it those filters read every event of the tenant.
    #[arg(long, env = "PULSESTREAM_SEARCH_INDEX", default_value_t = true, action = clap::ArgAction::Set)]
    pub search_index: bool,
    /// Log format.
    #[arg(long, env = "PULSESTREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// Settings for a server on `listen` with its store in `data_dir`, everything else default.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            database_url: None,
            database_pool_size: defaults::DATABASE_POOL_SIZE,
            database_timeout_ms: defaults::DATABASE_TIMEOUT_MS,
            redis_url: None,
            redis_key_prefix: defaults::REDIS_KEY_PREFIX.into(),
            redis_timeout_ms: defaults::REDIS_TIMEOUT_MS,
            nats_url: None,
            allow_private_destinations: false,
            delivery_retry_base_ms: defaults::DELIVERY_RETRY_BASE_MS,
            delivery_batch_max_bytes: defaults::DELIVERY_BATCH_MAX_BYTES,
            max_destinations_per_tenant: defaults::MAX_DESTINATIONS_PER_TENANT,
            attempts_retention_hours: defaults::ATTEMPTS_RETENTION_HOURS,
            retention_days: defaults::RETENTION_DAYS,
            retention_check_secs: defaults::RETENTION_CHECK_SECS,
            min_free_disk: MinFreeDisk::parse(defaults::MIN_FREE_DISK).expect("the default parses"),
            tail_buffer_events: defaults::TAIL_BUFFER_EVENTS,
            search_max_page_bytes: defaults::SEARCH_MAX_PAGE_BYTES,
            delivery_breaker_cool_down_ms: defaults::DELIVERY_BREAKER_COOL_DOWN_MS,
            webhook_timeout_ms: defaults::WEBHOOK_TIMEOUT_MS,
            admin_token: None,
            secret_key: None,
            tls_cert: None,
            tls_key: None,
            body_limit_bytes: defaults::BODY_LIMIT_BYTES,
            request_timeout_secs: defaults::REQUEST_TIMEOUT_SECS,
            header_read_timeout_secs: defaults::HEADER_READ_TIMEOUT_SECS,
            write_queue_capacity: defaults::WRITE_QUEUE_CAPACITY,
            search_index: true,
            segment_max_message_bytes: defaults::SEGMENT_MAX_MESSAGE_BYTES,
            segment_max_batch_bytes: defaults::SEGMENT_MAX_BATCH_BYTES,
            log_format: LogFormat::Text,
        }
    }

    /// Checks what flags alone cannot.
    ///
    /// # Errors
    /// Names the setting that cannot be used and why.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.database_pool_size >= 2,
            "database_pool_size must be at least 2"
        );
        anyhow::ensure!(
            self.database_timeout_ms >= 100,
            "database_timeout_ms must be at least 100"
        );
        anyhow::ensure!(
            self.delivery_retry_base_ms >= 1,
            "delivery_retry_base_ms must be at least 1"
        );
        anyhow::ensure!(
            self.webhook_timeout_ms >= 1,
            "webhook_timeout_ms must be at least 1"
        );
        anyhow::ensure!(
            self.redis_timeout_ms >= 1,
            "redis_timeout_ms must be at least 1"
        );
        anyhow::ensure!(
            self.body_limit_bytes >= 1024,
            "body_limit_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.request_timeout_secs >= 1,
            "request_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.header_read_timeout_secs >= 1,
            "header_read_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.write_queue_capacity >= 1,
            "write_queue_capacity must be at least 1"
        );
        anyhow::ensure!(
            self.database_url.is_none() || self.secret_key.is_some(),
            "PULSESTREAM_SECRET_KEY (--secret-key) is required with PULSESTREAM_DATABASE_URL: \
             every node must seal and open webhook secrets with the same key \
             (32 bytes as 64 hex digits, e.g. from `openssl rand -hex 32`)"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key must be given together"
        );
        Ok(())
    }

    /// The PostgreSQL store's settings, when a database URL is configured.
    pub fn postgres(&self) -> Option<PostgresConfig> {
        let url = self.database_url.as_ref()?;
        let mut config = PostgresConfig::new(url.0.clone());
        config.pool_size = self.database_pool_size;
        config.queue_capacity = self.write_queue_capacity;
        // A claim must outlast the slowest send, or another node could send the same events.
        config.lease = config.lease.max(Duration::from_millis(
            self.webhook_timeout_ms.saturating_mul(3),
        ));
        config.operation_timeout = Duration::from_millis(self.database_timeout_ms);
        Some(config)
    }

    /// The header read timeout as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_without_a_secret_key_is_refused_with_the_setting_named() {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), "data".into());
        config.database_url = Some(Secret("postgres://localhost/db".into()));

        let refused = config.validate().unwrap_err().to_string();
        config.secret_key = Some(Secret("00".repeat(32)));

        assert!(refused.contains("PULSESTREAM_SECRET_KEY"), "{refused}");
        assert!(config.validate().is_ok());
    }
}

/// How much free space the data directory keeps: bytes, or a share of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFreeDisk {
    Bytes(u64),
    Percent(f64),
}

impl MinFreeDisk {
    /// Reads `5%`, `0.5%`, `500MB`, `2GiB`, `1073741824` or `0`.
    ///
    /// # Errors
    /// Anything else, with what is expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let expected = || {
            format!("{text:?} is not a size: give bytes (500MB, 2GiB, 1073741824) or a share (5%)")
        };
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| expected())?;
            if !(0.0..=100.0).contains(&value) {
                return Err(format!("{text:?}: a share must be from 0% to 100%"));
            }
            return Ok(Self::Percent(value));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| expected())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(expected()),
        };
        number
            .checked_mul(scale)
            .map(Self::Bytes)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    /// The bytes to keep free on a filesystem of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes,
            // Exact enough: a share of a filesystem's size.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            Self::Percent(share) => (total as f64 * share / 100.0) as u64,
        }
    }
}

#[cfg(test)]
mod min_free_disk_tests {
    use super::MinFreeDisk;

    #[test]
    fn sizes_and_shares_parse_and_nonsense_does_not() {
        assert_eq!(MinFreeDisk::parse("5%"), Ok(MinFreeDisk::Percent(5.0)));
        assert_eq!(MinFreeDisk::parse("0"), Ok(MinFreeDisk::Bytes(0)));
        assert_eq!(
            MinFreeDisk::parse("500MB"),
            Ok(MinFreeDisk::Bytes(500_000_000))
        );
        assert_eq!(MinFreeDisk::parse("2GiB"), Ok(MinFreeDisk::Bytes(2 << 30)));
        assert_eq!(MinFreeDisk::parse("1024"), Ok(MinFreeDisk::Bytes(1024)));
        for bad in ["", "%", "-1", "5 bananas", "101%", "1e3", "99999999999TiB"] {
            assert!(MinFreeDisk::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MinFreeDisk::Percent(10.0).bytes_of(1_000), 100);
        assert_eq!(MinFreeDisk::Bytes(7).bytes_of(1_000), 7);
    }
}
