//! The client half of the `pulsestream` binary: `tenant`, `destination` and `events` talk to
//! a running server over its HTTP API, as an operator or a tenant would with curl.
//!
//! Every command prints what the server answered, as text for a person (tables, one line
//! per item) or, with `--output json`, the server's JSON as it came, for scripts. A refusal
//! prints the problem's title, detail and each field error, and the command exits non-zero.

use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use pulsestream_server::config::Secret;
use pulsestream_server::read_admin_token;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Whether a refusal may go away by itself: worth sending the same request again.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504 | 507)
}

/// How a command prints what the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and lines for a person.
    Text,
    /// The server's JSON, one document per answer.
    Json,
}

/// Where the server is and how to print its answers.
#[derive(Debug, Args)]
pub struct Connection {
    /// Base URL of a running server.
    #[arg(
        long,
        global = true,
        env = "PULSESTREAM_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// `text` for a person, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The admin token, given or read from the server's data dir.
#[derive(Debug, Args)]
pub struct AdminAuth {
    /// The admin token; by default the one the server generated in its data dir.
    #[arg(long, env = "PULSESTREAM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<Secret>,
    /// The server's data dir, to read a generated admin token from.
    #[arg(
        long,
        env = "PULSESTREAM_DATA_DIR",
        default_value = pulsestream_server::config::defaults::DATA_DIR
    )]
    data_dir: PathBuf,
}

impl AdminAuth {
    /// The token given, or the one the server generated in its data dir.
    fn token(self) -> anyhow::Result<String> {
        Ok(match self.admin_token {
            Some(token) => token.0,
            None => read_admin_token(&self.data_dir).with_context(|| {
                format!(
                    "no admin token: set PULSESTREAM_ADMIN_TOKEN or point --data-dir at the server's data dir (tried {})",
                    self.data_dir
                        .join(pulsestream_server::ADMIN_TOKEN_FILE)
                        .display()
                )
            })?,
        })
    }
}

/// A tenant's API key.
#[derive(Debug, Args)]
pub struct TenantAuth {
    /// The tenant's API key (`ps_…`).
    #[arg(long, env = "PULSESTREAM_API_KEY", hide_env_values = true)]
    api_key: Secret,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Creates a tenant and prints it with its first API key (shown only this once).
    Create {
        #[arg(long)]
        name: String,
        /// Events per minute (server default: 6,000).
        #[arg(long)]
        rate_limit_per_minute: Option<u32>,
        /// Most events at once (default: the per-minute rate).
        #[arg(long)]
        burst: Option<u32>,
        /// Days events are kept, by their timestamp (0: forever; default: the server's
        /// --retention-days).
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Lists tenants.
    List,
    /// Shows one tenant with its keys.
    Get { id: String },
    /// Changes a tenant's name or limits (only what is given changes).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        rate_limit_per_minute: Option<u32>,
        #[arg(long)]
        burst: Option<u32>,
        /// Days events are kept, by their timestamp (0: forever).
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Issues a new API key (shown only this once); the other keys keep working.
    AddKey {
        id: String,
        /// `ingest`: the key may only send events (for browser and mobile SDKs, where anyone
        /// can read it); `full` (the default): everything.
        #[arg(long, value_parser = ["full", "ingest"], default_value = "full")]
        scope: String,
    },
    /// Revokes an API key: it stops working at once.
    RevokeKey { id: String, key_id: String },
}

// What `destination create` sends (boxed in the enum: it is much larger than the others).
#[derive(Debug, clap::Args)]
pub struct NewDestination {
    #[arg(long, value_parser = ["webhook", "nats", "amqp", "mqtt", "postgres"])]
    kind: String,
    /// The webhook's URL, or the broker's or database's connection URL
    /// (amqp://, mqtt://, postgres://; stored sealed, shown without its password).
    #[arg(long, required_if_eq_any([("kind", "webhook"), ("kind", "amqp"), ("kind", "mqtt"), ("kind", "postgres")]))]
    url: Option<String>,
    /// The NATS subject.
    #[arg(long, required_if_eq("kind", "nats"))]
    subject: Option<String>,
    /// RabbitMQ: the exchange (default: the default exchange).
    #[arg(long)]
    exchange: Option<String>,
    /// RabbitMQ: the routing key; `{event_type}`, `{source}` and `{event_id}` are filled
    /// in (default `{event_type}`).
    #[arg(long)]
    routing_key: Option<String>,
    /// MQTT: the topic, a template like the routing key.
    #[arg(long, required_if_eq("kind", "mqtt"))]
    topic: Option<String>,
    /// PostgreSQL: the table, `table` or `schema.table`.
    #[arg(long, required_if_eq("kind", "postgres"))]
    table: Option<String>,
    /// PostgreSQL: create the table if it does not exist.
    #[arg(long)]
    create_table: bool,
    /// PostgreSQL: `field=column` for each event field stored under another name, or
    /// `field=` to leave it out; repeat or separate by commas.
    #[arg(long = "column", value_delimiter = ',')]
    columns: Vec<String>,
    /// Event types to deliver (`order.*` matches a prefix); repeat or separate by commas.
    /// None: every event.
    #[arg(long = "event-type", value_delimiter = ',')]
    event_types: Vec<String>,
    /// Only events that match, in the search's terms: `source=web`, `payload.plan=pro`,
    /// `q=words`; repeat for several (all must match).
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Deliver events with the same key in ingest order: `destination`, `event_type`
    /// or `payload.<path>`.
    #[arg(long)]
    ordering: Option<String>,
    /// Attempts before an event goes to the dead letters (1-100, default 10).
    #[arg(long)]
    max_attempts: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Creates a destination (webhook, NATS, RabbitMQ, MQTT or a PostgreSQL table); its
    /// signing secret is shown only once.
    Create(Box<NewDestination>),
    /// Lists the tenant's destinations.
    List,
    /// Shows a destination with its pending, delivered and dead-lettered counts and circuit.
    Get { id: String },
    /// Deletes a destination with its queue and dead letters.
    Delete { id: String },
    /// Lists a destination's dead letters.
    DeadLetters {
        id: String,
        /// At most this many (1-1,000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Puts dead letters back in the queue with fresh attempts: all, or the events named.
    Replay {
        id: String,
        /// Event ids to replay (repeat or separate by commas); none: all.
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Sends one event from flags, or NDJSON (one event per line) from a file or `-` (stdin),
    /// in batches of up to 1,000.
    Send {
        /// NDJSON file of events, `-` for stdin.
        #[arg(long, conflicts_with_all = ["event_type", "event_id", "source", "payload"])]
        file: Option<PathBuf>,
        /// The event's type (one event).
        #[arg(long = "type", required_unless_present = "file")]
        event_type: Option<String>,
        /// The client's id of the event, for deduplication.
        #[arg(long)]
        event_id: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// The payload, a JSON object.
        #[arg(long)]
        payload: Option<String>,
        /// An `Idempotency-Key` for the request (one event or one batch).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Searches the tenant's events, newest first (filters combine with AND).
    Search {
        #[command(flatten)]
        filters: Filters,
        #[arg(long)]
        event_id: Option<String>,
        /// Events per page (1-1,000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        /// Oldest first.
        #[arg(long)]
        asc: bool,
        /// Follows the cursor to the last page.
        #[arg(long)]
        all: bool,
    },
    /// Shows one event.
    Get { id: String },
    /// Exports the tenant's events as NDJSON, oldest first, to stdout or `--to FILE`; an
    /// export that breaks off goes on after the last line written. `events send --file`
    /// imports it (on this server or another).
    Export {
        #[command(flatten)]
        filters: Filters,
        /// Write to this file instead of stdout.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Erases the events that match the filters (GDPR-style): their payload, index
    /// entries, queued deliveries and dead letters. Without `--yes` only counts them.
    Erase {
        #[command(flatten)]
        filters: Filters,
        /// The client's id of the event to erase.
        #[arg(long)]
        event_id: Option<String>,
        /// Erase for real (without it: a dry run that counts what would be erased).
        #[arg(long)]
        yes: bool,
    },
    /// Lists the tenant's erasures (the audit log), newest first.
    Erasures {
        /// Entries to show (1-1,000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// The search filters, as `events search` and `events export` take them.
#[derive(Debug, Args)]
pub struct Filters {
    /// Event type, exact (repeatable: any of them).
    #[arg(long = "type")]
    event_types: Vec<String>,
    #[arg(long)]
    source: Option<String>,
    /// RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// `path=value` on the payload, e.g. `user.plan=pro` (repeatable).
    #[arg(long = "payload")]
    payload: Vec<String>,
    /// Full text over payload strings and numbers (each term where a word starts).
    #[arg(long)]
    q: Option<String>,
}

impl Filters {
    /// The query parameters of these filters.
    fn query(self) -> anyhow::Result<Vec<(String, String)>> {
        let mut query: Vec<(String, String)> = self
            .event_types
            .into_iter()
            .map(|event_type| ("event_type".to_owned(), event_type))
            .collect();
        for (name, value) in [
            ("source", self.source),
            ("since", self.since),
            ("until", self.until),
            ("q", self.q),
        ] {
            if let Some(value) = value {
                query.push((name.to_owned(), value));
            }
        }
        for filter in self.payload {
            let (path, value) = filter
                .split_once('=')
                .with_context(|| format!("--payload {filter:?} is not path=value"))?;
            query.push((format!("payload.{path}"), value.to_owned()));
        }
        Ok(query)
    }
}

/// An HTTP client for one server, with one credential.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    output: Output,
}

/// The server refused a request: its problem document, as a person reads it.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    document: Value,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let title = self.document["title"]
            .as_str()
            .or(self.status.canonical_reason())
            .unwrap_or("refused");
        write!(f, "{title} ({})", self.status.as_u16())?;
        if let Some(detail) = self.document["detail"].as_str() {
            write!(f, ": {detail}")?;
        }
        for error in self.document["errors"].as_array().into_iter().flatten() {
            write!(
                f,
                "\n  {}: {}",
                location(&error["loc"]),
                error["msg"].as_str().unwrap_or("")
            )?;
        }
        if let Some(retry) = self.document["retry_after"].as_u64() {
            write!(f, "\n  retry after {retry} s")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl Client {
    fn new(connection: &Connection, token: String) -> anyhow::Result<Self> {
        // The server installs this provider too; reqwest is built without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            http,
            base: connection.server.trim_end_matches('/').to_owned(),
            token,
            output: connection.output,
        })
    }

    /// A request to `path` with the client's credential.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends one request with an optional JSON body; see `answer`.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request).await
    }

    /// Sends a request: a 2xx answer's JSON (`null` for an empty body), or the problem.
    async fn answer(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("failed to reach the server at {}", self.base))?;
        self.read(response).await
    }

    /// Sends the request `make` builds, again after a network error, 408, 429, 500, 502,
    /// 503, 504 or 507: after `Retry-After` when the server says, else after a delay that
    /// doubles from 0.5 s to 30 s; `waiting` hears of each wait. Gives up after `RETRIES`
    /// tries in a row. Safe for ingest when the events carry `event_id`s or the request an
    /// `Idempotency-Key`.
    async fn answer_retrying(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
        mut waiting: impl FnMut(&str, Duration),
    ) -> anyhow::Result<Value> {
        const RETRIES: u32 = 12;
        let mut backoff = Duration::from_millis(500);
        for attempt in 1.. {
            let (why, retry_after) = match make().send().await {
                Ok(response) if retryable(response.status()) => {
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (response.status().to_string(), retry_after)
                }
                Ok(response) => return self.read(response).await,
                Err(err) if attempt < RETRIES => (format!("{err}"), None),
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("failed to reach the server at {}", self.base));
                }
            };
            anyhow::ensure!(
                attempt < RETRIES,
                "gave up after {RETRIES} tries: the server answered {why}"
            );
            let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(300));
            waiting(&why, wait);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        unreachable!("the loop returns")
    }

    /// Reads an answer: a 2xx answer's JSON (`null` for an empty body), or the problem.
    async fn read(&self, response: reqwest::Response) -> anyhow::Result<Value> {
        let status = response.status();
        let text = response
            .text()
            .await
            .context("the server's answer broke off")?;
        let document: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| {
                format!("the server answered {status} with a body that is not JSON")
            })?
        };
        if status.is_success() {
            Ok(document)
        } else {
            Err(Problem { status, document }.into())
        }
    }

    /// Prints an answer: its JSON, or `text` of it.
    fn print(&self, answer: &Value, text: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(answer)?),
            Output::Text => print!("{}", text(answer)),
        }
        Ok(())
    }
}

impl Connection {
    /// Reports a command's failure: on stderr as text, and with `--output json` the
    /// server's problem document on stdout too.
    pub fn report(&self, err: &anyhow::Error) {
        if self.output == Output::Json
            && let Some(problem) = err.downcast_ref::<Problem>()
        {
            println!(
                "{}",
                serde_json::to_string_pretty(&problem.document).unwrap_or_default()
            );
        }
        eprintln!("error: {err:#}");
    }
}

/// Starts an online backup on the server and waits for it, showing how it goes.
pub async fn backup(connection: &Connection, auth: AdminAuth, to: PathBuf) -> anyhow::Result<()> {
    let client = Client::new(connection, auth.token()?)?;
    let to = to.to_str().context("--to is not UTF-8")?.to_owned();
    client
        .call(Method::POST, "/admin/backups", Some(json!({ "to": to })))
        .await?;
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let job = client
            .call(Method::GET, "/admin/backups/latest", None)
            .await?;
        match job["status"].as_str() {
            Some("running") => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    eprint!(
                        "\r\x1b[2Kbacking up… {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Some("done") => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    eprint!("\r\x1b[2K");
                }
                return client.print(&job, |job| {
                    let report = &job["report"];
                    format!(
                        "backed up {} events ({} entries, {} bytes) to {} in {} ms\nrestore with: pulsestream restore --from {} --data-dir NEW_DIR\n",
                        text(&report["events"]),
                        text(&report["entries"]),
                        text(&report["bytes"]),
                        text(&job["to"]),
                        text(&report["millis"]),
                        text(&job["to"]),
                    )
                });
            }
            _ => anyhow::bail!("the backup failed: {}", text(&job["error"])),
        }
    }
}

/// Runs a `tenant` command with the admin token.
pub async fn tenant(
    connection: &Connection,
    auth: AdminAuth,
    command: TenantCommand,
) -> anyhow::Result<()> {
    let token = auth.token()?;
    let client = Client::new(connection, token)?;
    match command {
        TenantCommand::Create {
            name,
            rate_limit_per_minute,
            burst,
            retention_days,
        } => {
            let mut body = json!({ "name": name });
            set_some(&mut body, "rate_limit_per_minute", rate_limit_per_minute);
            set_some(&mut body, "burst", burst);
            set_some(&mut body, "retention_days", retention_days);
            let answer = client
                .call(Method::POST, "/admin/tenants", Some(body))
                .await?;
            client.print(&answer, tenant_text)
        }
        TenantCommand::List => {
            // Every page, in one list.
            let mut tenants = Vec::new();
            let mut path = "/admin/tenants?limit=1000".to_owned();
            loop {
                let page = client.call(Method::GET, &path, None).await?;
                tenants.extend(items(&page, "tenants").cloned());
                match page["next_cursor"].as_str() {
                    Some(cursor) => path = format!("/admin/tenants?limit=1000&cursor={cursor}"),
                    None => break,
                }
            }
            let answer = json!({ "tenants": tenants });
            client.print(&answer, |answer| {
                let rows = items(answer, "tenants").map(|tenant| {
                    vec![
                        text(&tenant["id"]),
                        text(&tenant["name"]),
                        text(&tenant["rate_limit_per_minute"]),
                        text(&tenant["burst"]),
                        tenant["keys"].as_array().map_or(0, Vec::len).to_string(),
                        text(&tenant["created_at"]),
                    ]
                });
                table(
                    &["ID", "NAME", "PER MINUTE", "BURST", "KEYS", "CREATED"],
                    rows,
                )
            })
        }
        TenantCommand::Get { id } => {
            let path = format!("/admin/tenants/{}", segment(&id));
            let answer = client.call(Method::GET, &path, None).await?;
            client.print(&answer, tenant_text)
        }
        TenantCommand::Update {
            id,
            name,
            rate_limit_per_minute,
            burst,
            retention_days,
        } => {
            let mut body = json!({});
            set_some(&mut body, "name", name);
            set_some(&mut body, "rate_limit_per_minute", rate_limit_per_minute);
            set_some(&mut body, "burst", burst);
            set_some(&mut body, "retention_days", retention_days);
            let path = format!("/admin/tenants/{}", segment(&id));
            let answer = client.call(Method::PATCH, &path, Some(body)).await?;
            client.print(&answer, tenant_text)
        }
        TenantCommand::AddKey { id, scope } => {
            let path = format!("/admin/tenants/{}/keys", segment(&id));
            let answer = client
                .call(Method::POST, &path, Some(json!({ "scope": scope })))
                .await?;
            client.print(&answer, |key| {
                fields(&[
                    ("key id", text(&key["id"])),
                    ("tenant", text(&key["tenant_id"])),
                    ("api key", text(&key["api_key"])),
                    ("scope", text(&key["scope"])),
                    ("created", text(&key["created_at"])),
                ]) + "The API key is shown only this once: keep it now.\n"
            })
        }
        TenantCommand::RevokeKey { id, key_id } => {
            let path = format!("/admin/tenants/{}/keys/{}", segment(&id), segment(&key_id));
            client.call(Method::DELETE, &path, None).await?;
            let answer = json!({ "revoked": key_id });
            client.print(&answer, |_| format!("revoked key {key_id}\n"))
        }
    }
}

/// Runs a `destination` command with a tenant's key.
pub async fn destination(
    connection: &Connection,
    auth: TenantAuth,
    command: DestinationCommand,
) -> anyhow::Result<()> {
    let client = Client::new(connection, auth.api_key.0)?;
    match command {
        DestinationCommand::Create(new) => {
            let NewDestination {
                kind,
                url,
                subject,
                exchange,
                routing_key,
                topic,
                table,
                create_table,
                columns,
                event_types,
                filters,
                ordering,
                max_attempts,
            } = *new;
            let mut body = json!({ "kind": kind, "event_types": event_types });
            set_some(&mut body, "url", url);
            set_some(&mut body, "subject", subject);
            set_some(&mut body, "exchange", exchange);
            set_some(&mut body, "routing_key", routing_key);
            set_some(&mut body, "topic", topic);
            set_some(&mut body, "table", table);
            set_some(&mut body, "max_attempts", max_attempts);
            if create_table {
                body["create_table"] = true.into();
            }
            if !columns.is_empty() {
                let mut mapped = serde_json::Map::new();
                for pair in &columns {
                    let (field, column) = pair.split_once('=').with_context(|| {
                        format!("--column {pair}: write field=column, or field= to leave it out")
                    })?;
                    let column = if column.is_empty() {
                        Value::Null
                    } else {
                        column.into()
                    };
                    mapped.insert(field.to_owned(), column);
                }
                body["columns"] = mapped.into();
            }
            if !filters.is_empty() {
                let mut filter = serde_json::Map::new();
                for pair in &filters {
                    let (name, value) = pair.split_once('=').with_context(|| {
                        format!("--filter {pair}: write name=value, e.g. source=web")
                    })?;
                    filter.insert(name.to_owned(), value.into());
                }
                body["filter"] = filter.into();
            }
            if let Some(key) = ordering {
                body["ordering"] = json!({ "key": key });
            }
            let answer = client
                .call(Method::POST, "/v1/destinations", Some(body))
                .await?;
            client.print(&answer, destination_text)
        }
        DestinationCommand::List => {
            let answer = client.call(Method::GET, "/v1/destinations", None).await?;
            client.print(&answer, |answer| {
                let rows = items(answer, "destinations").map(|destination| {
                    vec![
                        text(&destination["id"]),
                        text(&destination["kind"]),
                        target(destination),
                        types(destination),
                        if destination["disabled"] == true {
                            "disabled".into()
                        } else {
                            "enabled".into()
                        },
                    ]
                });
                table(&["ID", "KIND", "TARGET", "EVENT TYPES", "STATE"], rows)
            })
        }
        DestinationCommand::Get { id } => {
            let path = format!("/v1/destinations/{}", segment(&id));
            let answer = client.call(Method::GET, &path, None).await?;
            client.print(&answer, destination_text)
        }
        DestinationCommand::Delete { id } => {
            let path = format!("/v1/destinations/{}", segment(&id));
            client.call(Method::DELETE, &path, None).await?;
            let answer = json!({ "deleted": id });
            client.print(&answer, |_| format!("deleted destination {id}\n"))
        }
        DestinationCommand::DeadLetters { id, limit } => {
            let path = format!(
                "/v1/destinations/{}/dead-letters?limit={limit}",
                segment(&id)
            );
            let answer = client.call(Method::GET, &path, None).await?;
            client.print(&answer, |answer| {
                let rows = items(answer, "dead_letters").map(|letter| {
                    vec![
                        text(&letter["id"]),
                        text(&letter["attempts"]),
                        text(&letter["failed_at"]),
                        text(&letter["last_error"]),
                    ]
                });
                table(&["EVENT", "ATTEMPTS", "FAILED AT", "LAST ERROR"], rows)
            })
        }
        DestinationCommand::Replay { id, events } => {
            let path = format!("/v1/destinations/{}/dead-letters/replay", segment(&id));
            let body = (!events.is_empty()).then(|| json!({ "ids": events }));
            let answer = client.call(Method::POST, &path, body).await?;
            client.print(&answer, |answer| {
                format!("replayed {} dead letters\n", text(&answer["replayed"]))
            })
        }
    }
}

/// Runs an `events` command with a tenant's key.
pub async fn events(
    connection: &Connection,
    auth: TenantAuth,
    command: EventsCommand,
) -> anyhow::Result<()> {
    let client = Client::new(connection, auth.api_key.0)?;
    match command {
        EventsCommand::Send {
            file: Some(file),
            idempotency_key,
            ..
        } => send_ndjson(&client, &file, idempotency_key).await,
        EventsCommand::Send {
            file: None,
            event_type,
            event_id,
            source,
            payload,
            idempotency_key,
        } => {
            let mut event = json!({ "event_type": event_type });
            set_some(&mut event, "event_id", event_id);
            set_some(&mut event, "source", source);
            if let Some(payload) = payload {
                event["payload"] = serde_json::from_str(&payload).context(
                    "--payload is not JSON (give an object, e.g. '{\"plan\": \"pro\"}')",
                )?;
            }
            let mut request = client.request(Method::POST, "/v1/events").json(&event);
            if let Some(key) = idempotency_key {
                request = request.header("idempotency-key", key);
            }
            let answer = client.answer(request).await?;
            client.print(&answer, |answer| {
                let id = text(&answer["id"]);
                match answer["status"].as_str() {
                    Some("duplicate") => format!("duplicate of {id}\n"),
                    _ => format!("stored {id}\n"),
                }
            })
        }
        EventsCommand::Export { filters, to } => export(&client, filters.query()?, to).await,
        EventsCommand::Erase {
            filters,
            event_id,
            yes,
        } => {
            let mut query = filters.query()?;
            if let Some(event_id) = event_id {
                query.push(("event_id".to_owned(), event_id));
            }
            if query.is_empty() {
                anyhow::bail!(
                    "name at least one filter (--event-id, --payload path=value, --type, ...)"
                );
            }
            // The search's parameters as the erase body's filter: repeated names as lists.
            let mut filter = serde_json::Map::new();
            for (name, value) in query {
                match filter.get_mut(&name) {
                    Some(Value::Array(values)) => values.push(Value::String(value)),
                    Some(first) => *first = json!([first.take(), value]),
                    None => {
                        filter.insert(name, Value::String(value));
                    }
                }
            }
            let body = json!({ "filter": filter, "dry_run": !yes });
            let answer = client
                .call(Method::POST, "/v1/events/erase", Some(body))
                .await?;
            client.print(&answer, |answer| {
                if yes {
                    fields(&[
                        ("erased", text(&answer["erased"])),
                        ("erasure", text(&answer["id"])),
                        ("finished", text(&answer["finished_at"])),
                    ])
                } else {
                    format!(
                        "{} events match; nothing was erased (run again with --yes to erase them)\n",
                        text(&answer["matching"])
                    )
                }
            })
        }
        EventsCommand::Erasures { limit } => {
            let answer = client
                .call(Method::GET, &format!("/v1/erasures?limit={limit}"), None)
                .await?;
            client.print(&answer, |answer| {
                let rows = items(answer, "erasures").map(|erasure| {
                    vec![
                        text(&erasure["id"]),
                        text(&erasure["finished_at"]),
                        text(&erasure["requested_by"]["key_prefix"]),
                        text(&erasure["erased"]),
                        erasure["filter"].to_string(),
                    ]
                });
                table(&["ID", "FINISHED", "KEY", "ERASED", "FILTER"], rows)
            })
        }
        EventsCommand::Search {
            filters,
            event_id,
            limit,
            cursor,
            asc,
            all,
        } => {
            let mut query = filters.query()?;
            if let Some(event_id) = event_id {
                query.push(("event_id".to_owned(), event_id));
            }
            query.push(("limit".into(), limit.to_string()));
            if asc {
                query.push(("order".into(), "asc".into()));
            }
            search(&client, query, cursor, all).await
        }
        EventsCommand::Get { id } => {
            let path = format!("/v1/events/{}", segment(&id));
            let answer = client.call(Method::GET, &path, None).await?;
            client.print(&answer, |event| {
                let mut out = fields(&[
                    ("id", text(&event["id"])),
                    ("event id", text(&event["event_id"])),
                    ("type", text(&event["event_type"])),
                    ("source", text(&event["source"])),
                    ("timestamp", text(&event["timestamp"])),
                    ("received", text(&event["received_at"])),
                ]);
                let payload = serde_json::to_string_pretty(&event["payload"]).unwrap_or_default();
                let _ = writeln!(out, "payload\n{payload}");
                out
            })
        }
    }
}

/// The most events one batch request carries.
const BATCH_LINES: usize = 1_000;

/// Sends NDJSON in batches of up to 1,000 lines; prints each batch's counts and every
/// rejected line (numbered from 1 in the whole input). Fails if any line was rejected.
/// A batch the server cannot take now (429, 503, 507, a network error) is sent again after
/// `Retry-After` or a backoff; the events' `event_id`s make that safe. This is also the
/// import of an export (`GET /v1/events/export`): its lines are batch lines as they are.
/// On a terminal, progress (events done, of how many, per second) goes to stderr.
async fn send_ndjson(
    client: &Client,
    file: &std::path::Path,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    let reader: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .with_context(|| format!("failed to open {}", file.display()))?,
        )
    };
    let mut lines = BufReader::new(reader).lines();
    let (mut totals, mut first_line, mut batch_no) = (Totals::default(), 0_usize, 0_usize);
    let mut progress = Progress::new(client.output, "sent", count_lines(file));
    loop {
        let mut batch = String::new();
        let mut count = 0;
        for line in lines.by_ref().take(BATCH_LINES) {
            batch.push_str(&line.context("failed to read the input")?);
            batch.push('\n');
            count += 1;
        }
        if count == 0 {
            break;
        }
        let make = || {
            let request = client
                .request(Method::POST, "/v1/events/batch")
                .header("content-type", "application/x-ndjson")
                .body(batch.clone());
            match &idempotency_key {
                // One key per batch: a rerun of the same file replays each batch's answer.
                Some(key) => request.header("idempotency-key", format!("{key}-{batch_no}")),
                None => request,
            }
        };
        let answered = client
            .answer_retrying(make, |why, wait| progress.waiting(why, wait))
            .await;
        let answer = match answered {
            Ok(answer) => answer,
            // Every line rejected: the 422 still carries per-line results.
            Err(err) => match err.downcast::<Problem>() {
                Ok(problem) if problem.document["results"].is_array() => problem.document,
                Ok(problem) => return Err(problem.into()),
                Err(err) => return Err(err),
            },
        };
        progress.clear();
        totals.add(&answer, first_line, client.output)?;
        first_line += count;
        batch_no += 1;
        progress.done(first_line);
    }
    progress.finish();
    if client.output == Output::Text {
        println!(
            "sent {} events: {} stored, {} duplicates, {} conflicts, {} rejected",
            first_line, totals.accepted, totals.duplicates, totals.conflicts, totals.rejected
        );
    }
    anyhow::ensure!(
        totals.rejected == 0 && totals.conflicts == 0,
        "{} of {first_line} events were not stored",
        totals.rejected + totals.conflicts
    );
    Ok(())
}

/// Streams `GET /v1/events/export` to stdout or a file, whole lines only; when the export
/// breaks off (or the server is briefly unavailable) it asks again with `after` the last
/// line's `id`, so nothing is written twice or left out.
async fn export(
    client: &Client,
    query: Vec<(String, String)>,
    to: Option<PathBuf>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out: Box<dyn Write> = match &to {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("failed to create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = Progress::new(client.output, "exported", None);
    let mut after: Option<String> = None;
    let (mut written, mut breaks) = (0usize, 0u32);
    loop {
        let mut params = query.clone();
        if let Some(after) = &after {
            params.push(("after".into(), after.clone()));
        }
        let mut url = reqwest::Url::parse(&format!("{}/v1/events/export", client.base))
            .with_context(|| format!("--server {:?} is not a URL", client.base))?;
        url.query_pairs_mut().extend_pairs(&params);
        let path_and_query = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let response = match client.request(Method::GET, &path_and_query).send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) if retryable(response.status()) && breaks < 12 => {
                breaks += 1;
                progress.waiting(response.status().as_str(), Duration::from_secs(1));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(response) => return client.read(response).await.map(|_| ()),
            Err(err) if breaks < 12 => {
                breaks += 1;
                progress.waiting(&err.to_string(), Duration::from_secs(1));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(err).context("failed to reach the server"),
        };
        let mut response = response;
        let mut pending: Vec<u8> = Vec::new();
        let ended = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    pending.extend_from_slice(&chunk);
                    if let Some(end) = pending.iter().rposition(|byte| *byte == b'\n') {
                        let lines: Vec<u8> = pending.drain(..=end).collect();
                        out.write_all(&lines)
                            .context("failed to write the export")?;
                        let last = lines[..lines.len() - 1]
                            .rsplit(|byte| *byte == b'\n')
                            .next()
                            .unwrap_or_default();
                        let event: Value = serde_json::from_slice(last)
                            .context("the export holds a line that is not JSON")?;
                        after = event["id"].as_str().map(str::to_owned);
                        written += lines.iter().filter(|byte| **byte == b'\n').count();
                        progress.done(written);
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        if ended {
            break;
        }
        // Broken off: what was not a whole line is asked for again.
        breaks += 1;
        anyhow::ensure!(
            breaks <= 12,
            "the export broke off 12 times; {written} events written"
        );
    }
    out.flush().context("failed to write the export")?;
    progress.clear();
    if client.output == Output::Text {
        match &to {
            Some(path) => eprintln!("exported {written} events to {}", path.display()),
            None => eprintln!("exported {written} events"),
        }
    }
    Ok(())
}

/// The lines of a file, for progress (none for stdin, or a file that cannot be read).
fn count_lines(file: &std::path::Path) -> Option<usize> {
    if file.as_os_str() == "-" {
        return None;
    }
    let reader = BufReader::new(std::fs::File::open(file).ok()?);
    Some(reader.split(b'\n').count())
}

/// A progress line on stderr, redrawn in place, only on a terminal and for text output.
struct Progress {
    shown: bool,
    /// What is done with events: `sent`, `exported`.
    verb: &'static str,
    total: Option<usize>,
    started: std::time::Instant,
    last: usize,
}

impl Progress {
    fn new(output: Output, verb: &'static str, total: Option<usize>) -> Self {
        Self {
            verb,
            shown: output == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            total,
            started: std::time::Instant::now(),
            last: 0,
        }
    }

    fn done(&mut self, events: usize) {
        self.last = events;
        if !self.shown {
            return;
        }
        let rate = events as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let of = self
            .total
            .map(|total| format!(" of {total}"))
            .unwrap_or_default();
        eprint!("\r\x1b[2K{events}{of} events {}, {rate:.0}/s", self.verb);
    }

    fn waiting(&mut self, why: &str, wait: Duration) {
        if self.shown {
            eprint!(
                "\r\x1b[2K{} events {}; the server answered {why}, trying again in {:.1} s",
                self.last,
                self.verb,
                wait.as_secs_f64()
            );
        } else {
            eprintln!(
                "the server answered {why}; trying again in {:.1} s",
                wait.as_secs_f64()
            );
        }
    }

    /// Clears the line before other output.
    fn clear(&self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

#[derive(Default)]
struct Totals {
    accepted: usize,
    duplicates: usize,
    conflicts: usize,
    rejected: usize,
}

impl Totals {
    /// Counts one batch answer and prints its rejections (text) or the answer (json).
    fn add(&mut self, answer: &Value, first_line: usize, output: Output) -> anyhow::Result<()> {
        if output == Output::Json {
            println!("{}", serde_json::to_string(answer)?);
        }
        for result in items(answer, "results") {
            let line = first_line + result["index"].as_u64().unwrap_or(0) as usize + 1;
            match result["status"].as_str() {
                Some("accepted") => self.accepted += 1,
                Some("duplicate") => self.duplicates += 1,
                Some("conflict") => {
                    self.conflicts += 1;
                    if output == Output::Text {
                        println!(
                            "line {line}: conflict: event_id {} is stored with other content as {}",
                            text(&result["event_id"]),
                            text(&result["existing_id"])
                        );
                    }
                }
                _ => {
                    self.rejected += 1;
                    if output == Output::Text {
                        for error in items(result, "errors") {
                            println!(
                                "line {line}: rejected: {}: {}",
                                location(&error["loc"]),
                                text(&error["msg"])
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Prints search pages: one, or all of them with `all`.
async fn search(
    client: &Client,
    query: Vec<(String, String)>,
    mut cursor: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let mut header = true;
    loop {
        let mut url = reqwest::Url::parse(&format!("{}/v1/events", client.base))
            .with_context(|| format!("--server {:?} is not a URL", client.base))?;
        url.query_pairs_mut().extend_pairs(&query);
        if let Some(cursor) = &cursor {
            url.query_pairs_mut().append_pair("cursor", cursor);
        }
        let path_and_query = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let answer = client.call(Method::GET, &path_and_query, None).await?;
        cursor = answer["next_cursor"].as_str().map(str::to_owned);
        match client.output {
            Output::Json => println!("{}", serde_json::to_string(&answer)?),
            Output::Text => {
                let rows = items(&answer, "events").map(|event| {
                    vec![
                        text(&event["timestamp"]),
                        text(&event["id"]),
                        text(&event["event_type"]),
                        text(&event["source"]),
                        shorten(&serde_json::to_string(&event["payload"]).unwrap_or_default()),
                    ]
                });
                let columns: &[&str] = if header {
                    &["TIMESTAMP", "ID", "TYPE", "SOURCE", "PAYLOAD"]
                } else {
                    &[]
                };
                print!("{}", table(columns, rows));
                header = false;
            }
        }
        match (&cursor, all) {
            (Some(_), true) => continue,
            (Some(next), false) if client.output == Output::Text => {
                println!("more: --cursor {next}");
            }
            _ => {}
        }
        return Ok(());
    }
}

fn tenant_text(tenant: &Value) -> String {
    let mut out = fields(&[
        ("id", text(&tenant["id"])),
        ("name", text(&tenant["name"])),
        (
            "rate limit",
            format!(
                "{} per minute, burst {}",
                text(&tenant["rate_limit_per_minute"]),
                text(&tenant["burst"])
            ),
        ),
        (
            "retention",
            match tenant["retention_days"].as_u64() {
                None => "the server's default".to_owned(),
                Some(0) => "forever".to_owned(),
                Some(days) => format!("{days} days"),
            },
        ),
        ("created", text(&tenant["created_at"])),
    ]);
    let keys: Vec<Vec<String>> = items(tenant, "keys")
        .map(|key| {
            vec![
                text(&key["id"]),
                text(&key["prefix"]),
                text(&key["scope"]),
                text(&key["created_at"]),
            ]
        })
        .collect();
    let _ = writeln!(out, "keys");
    out.push_str(&table(
        &["  KEY ID", "PREFIX", "SCOPE", "CREATED"],
        keys.into_iter().map(indent),
    ));
    if let Some(api_key) = tenant["api_key"].as_str() {
        let _ = writeln!(
            out,
            "api key     {api_key}\nThe API key is shown only this once: keep it now."
        );
    }
    out
}

fn destination_text(destination: &Value) -> String {
    let mut rows = vec![
        ("id", text(&destination["id"])),
        ("kind", text(&destination["kind"])),
        ("target", target(destination)),
        ("event types", types(destination)),
        ("max attempts", text(&destination["max_attempts"])),
        ("disabled", text(&destination["disabled"])),
    ];
    if let Some(filter) = destination["filter"].as_object() {
        let parts: Vec<String> = filter
            .iter()
            .map(|(name, value)| format!("{name}={}", text(value)))
            .collect();
        rows.push(("filter", parts.join(" ")));
    }
    if !destination["ordering"].is_null() {
        rows.push(("ordering", text(&destination["ordering"]["key"])));
    }
    for (label, member) in [
        ("pending", "pending"),
        ("delivered", "delivered"),
        ("dead letters", "dead_lettered"),
        ("circuit", "circuit"),
        ("last error", "last_error"),
        ("secret", "secret"),
    ] {
        if !destination[member].is_null() {
            rows.push((label, text(&destination[member])));
        }
    }
    let mut out = fields(&rows);
    if destination["secret"].is_string() {
        out.push_str("The signing secret is shown only this once: keep it now.\n");
    }
    out
}

fn target(destination: &Value) -> String {
    let url = text(&destination["url"]);
    match destination["kind"].as_str() {
        Some("nats") => text(&destination["subject"]),
        Some("amqp") => format!(
            "{url} exchange {:?} key {}",
            text(&destination["exchange"]),
            text(&destination["routing_key"])
        ),
        Some("mqtt") => format!("{url} topic {}", text(&destination["topic"])),
        Some("postgres") => format!("{url} table {}", text(&destination["table"])),
        _ => url,
    }
}

fn types(destination: &Value) -> String {
    let types: Vec<String> = items(destination, "event_types").map(text).collect();
    if types.is_empty() {
        "(all)".into()
    } else {
        types.join(",")
    }
}

/// The elements of an array member (none if it is missing).
fn items<'a>(value: &'a Value, member: &str) -> impl Iterator<Item = &'a Value> {
    value[member].as_array().into_iter().flatten()
}

/// A value as a person reads it: strings bare, `-` for null.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A problem's `loc`, e.g. `body.events.3.event_type`.
fn location(loc: &Value) -> String {
    let parts: Vec<String> = items(&json!({ "loc": loc }), "loc").map(text).collect();
    parts.join(".")
}

fn set_some<T: Into<Value>>(object: &mut Value, member: &str, value: Option<T>) {
    if let Some(value) = value {
        object[member] = value.into();
    }
}

/// A path segment, percent-encoded.
fn segment(value: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a constant URL parses");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .push(value);
    url.path()[1..].to_owned()
}

fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX - 1).collect();
        format!("{cut}…")
    }
}

fn indent(mut row: Vec<String>) -> Vec<String> {
    if let Some(first) = row.first_mut() {
        first.insert_str(0, "  ");
    }
    row
}

/// `label  value` lines, labels padded to one width.
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{label:width$}  {value}");
    }
    out
}

/// A table with columns padded to their widest cell; no header when `columns` is empty.
fn table(columns: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = Vec::new();
    if !columns.is_empty() {
        all.push(columns.iter().map(|column| (*column).to_owned()).collect());
    }
    all.extend(rows);
    let count = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            all.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}
