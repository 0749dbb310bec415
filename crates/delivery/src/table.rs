//! A sink into a table of the tenant's own PostgreSQL database.
//!
//! A batch is one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` on the id
//! column, so a redelivered event never makes a second row: delivery into a table is
//! exactly once, and "delivered" means the insert committed. The table is created (with
//! `CREATE TABLE IF NOT EXISTS`) on the first connection when the destination asked for it;
//! otherwise the given columns must exist, with a primary key or unique index on the id
//! column.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pulsestream_core::secret::SecretCipher;
use pulsestream_core::{Destination, DestinationKind, TableColumns, parse_timestamp};
use pulsestream_store::Delivery;
use tokio_postgres::NoTls;

use crate::brokers::{Endpoint, EventFields, Link, Links, Reach, failed};
use crate::sink::{SendOutcome, Sink};

/// An open connection and the statement that inserts a batch.
#[derive(Debug)]
pub(crate) struct TableLink {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TableLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link for TableLink {
    fn alive(&self) -> bool {
        !self.client.is_closed()
    }
}

/// Inserts events as rows, exactly once.
#[derive(Debug)]
pub struct PostgresSink {
    links: Links<TableLink>,
    reach: Reach,
}

/// Quotes a table name (`table` or `schema.table`) or column name as SQL identifiers.
pub fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The SQL type of each event field in a created table.
fn column_type(field: &str) -> &'static str {
    match field {
        "id" => "uuid PRIMARY KEY",
        "timestamp" | "received_at" => "timestamptz NOT NULL",
        "payload" => "jsonb NOT NULL",
        "source" => "text",
        _ => "text NOT NULL",
    }
}

/// The array type of each field's parameter.
fn array_type(field: &str) -> &'static str {
    match field {
        "id" => "uuid[]",
        "timestamp" | "received_at" => "timestamptz[]",
        "payload" => "jsonb[]",
        _ => "text[]",
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the mapped columns.
pub fn create_statement(table: &str, columns: &TableColumns) -> String {
    let definitions: Vec<String> = columns
        .mapped()
        .iter()
        .map(|(field, column)| format!("{} {}", quote_name(column), column_type(field)))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_name(table),
        definitions.join(", ")
    )
}

/// The batch insert: one array parameter per mapped column, in `mapped()` order.
pub fn insert_statement(table: &str, columns: &TableColumns) -> String {
    let mapped = columns.mapped();
    let names: Vec<String> = mapped
        .iter()
        .map(|(_, column)| quote_name(column))
        .collect();
    let arrays: Vec<String> = mapped
        .iter()
        .enumerate()
        .map(|(index, (field, _))| format!("${}::{}", index + 1, array_type(field)))
        .collect();
    format!(
        "INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT ({id}) DO NOTHING",
        table = quote_name(table),
        names = names.join(", "),
        arrays = arrays.join(", "),
        id = quote_name(&columns.id),
    )
}

impl PostgresSink {
    pub fn new(timeout: Duration, allow_private: bool, secrets: Arc<SecretCipher>) -> Self {
        Self {
            links: Links::default(),
            reach: Reach::new(timeout, allow_private, secrets),
        }
    }

    async fn connect(
        &self,
        destination: &Destination,
        sealed: &str,
        table: &str,
        columns: &TableColumns,
        create: bool,
    ) -> Result<TableLink, SendOutcome> {
        let Endpoint { url, address, .. } =
            self.reach.endpoint(destination, sealed, |_| 5432).await?;
        let timeout = self.reach.timeout;
        let mut config: tokio_postgres::Config = url
            .as_str()
            .parse()
            .map_err(|_| failed("the destination's connection URL is malformed"))?;
        // Connect to the address just checked (the URL's port, or 5432, stays as it is).
        config
            .hostaddr(address.ip())
            .connect_timeout(timeout)
            .application_name("pulsestream");
        let connected = tokio::time::timeout(timeout, config.connect(NoTls)).await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(err)) => return Err(failed(format!("could not connect to PostgreSQL: {err}"))),
            Err(_) => return Err(failed("PostgreSQL did not answer in time")),
        };
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let statement_timeout = format!("SET statement_timeout = {}", timeout.as_millis().max(1));
        let prepared = tokio::time::timeout(timeout, async {
            client.batch_execute(&statement_timeout).await?;
            if create {
                client
                    .batch_execute(&create_statement(table, columns))
                    .await?;
            }
            client.prepare(&insert_statement(table, columns)).await
        })
        .await;
        match prepared {
            Ok(Ok(insert)) => Ok(TableLink {
                client,
                insert,
                task,
            }),
            Ok(Err(err)) => Err(failed(format!(
                "the table cannot be written: {}",
                describe(&err)
            ))),
            Err(_) => Err(failed("PostgreSQL did not answer in time")),
        }
    }

    async fn insert(
        &self,
        link: &TableLink,
        columns: &TableColumns,
        deliveries: &[Delivery],
    ) -> Result<(), SendOutcome> {
        let mut ids = Vec::with_capacity(deliveries.len());
        let mut texts: [Vec<Option<String>>; 3] = Default::default();
        let mut times: [Vec<time::OffsetDateTime>; 2] = Default::default();
        let mut payloads = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let fields = EventFields::of(delivery)?;
            ids.push(delivery.event.0);
            texts[0].push(Some(fields.event_id.into_owned()));
            texts[1].push(Some(fields.event_type.into_owned()));
            texts[2].push(fields.source.map(std::borrow::Cow::into_owned));
            for (slot, text) in [(0, &fields.timestamp), (1, &fields.received_at)] {
                times[slot].push(parse_timestamp(text).ok_or_else(|| {
                    failed(format!("stored event {} has a bad time", delivery.event))
                })?);
            }
            payloads.push(
                serde_json::from_str::<serde_json::Value>(fields.payload.get())
                    .map_err(|err| failed(format!("stored payload cannot be read: {err}")))?,
            );
        }
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        for (field, _) in columns.mapped() {
            params.push(match field {
                "id" => &ids,
                "event_id" => &texts[0],
                "event_type" => &texts[1],
                "source" => &texts[2],
                "timestamp" => &times[0],
                "received_at" => &times[1],
                _ => &payloads,
            });
        }
        match tokio::time::timeout(
            self.reach.timeout,
            link.client.execute(&link.insert, &params),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(failed(format!("the insert failed: {}", describe(&err)))),
            Err(_) => Err(failed("PostgreSQL did not answer in time")),
        }
    }
}

/// A driver error with the server's message, when there is one.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome {
        let DestinationKind::Postgres {
            connection,
            table,
            columns,
            create_table,
            ..
        } = &destination.kind
        else {
            return failed("not a PostgreSQL destination");
        };
        self.links
            .send(
                destination.id,
                || self.connect(destination, connection, table, columns, *create_table),
                |link| async move {
                    let inserted = self.insert(&link, columns, deliveries).await;
                    (link, inserted)
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_every_name() {
        let columns = TableColumns {
            id: "event \"uuid\"".into(),
            payload: Some("data".into()),
            ..TableColumns::default()
        };
        assert_eq!(
            insert_statement("app.events", &columns),
            "INSERT INTO \"app\".\"events\" (\"event \"\"uuid\"\"\", \"event_id\", \"event_type\", \"source\", \"timestamp\", \"received_at\", \"data\") SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::jsonb[]) ON CONFLICT (\"event \"\"uuid\"\"\") DO NOTHING"
        );
        assert!(create_statement("t", &TableColumns::default()).starts_with(
            "CREATE TABLE IF NOT EXISTS \"t\" (\"id\" uuid PRIMARY KEY, \"event_id\" text NOT NULL"
        ));
    }
}
