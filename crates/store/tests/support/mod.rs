//! What the store's integration tests share (each test binary uses part of it).
#![allow(dead_code)]

use pulsestream_store::postgres::{self, PostgresConfig, PostgresStore};

/// A migrated PostgreSQL store in a schema of its own (`PULSESTREAM_TEST_DATABASE_URL`, by
/// default `postgres://postgres@127.0.0.1:5432/test`), and the client that drops it.
pub struct PostgresSchema {
    pub store: PostgresStore,
    schema: String,
    url: String,
    client: tokio_postgres::Client,
}

impl PostgresSchema {
    /// Creates the schema, named `<prefix>_<random>`; panics when PostgreSQL is not there.
    pub async fn new(prefix: &str) -> Self {
        let client = postgres::test_client().await;
        let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create a schema");
        let url = postgres::url_in_schema(&postgres::test_database_url(), &schema);
        let store = PostgresStore::connect(&PostgresConfig::new(url.clone()))
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        Self {
            store,
            schema,
            url,
            client,
        }
    }

    /// Connects another store to the same schema (another node, or the same one restarted).
    pub async fn connect_again(&self) -> PostgresStore {
        PostgresStore::connect(&PostgresConfig::new(self.url.clone()))
            .await
            .expect("connect")
    }

    /// Runs statements in the schema and returns the first column of the last row, if any.
    pub async fn sql(&self, statements: &str) -> Option<String> {
        self.client
            .batch_execute(&format!("SET search_path = {}", self.schema))
            .await
            .expect("set the search path");
        let messages = self
            .client
            .simple_query(statements)
            .await
            .unwrap_or_else(|err| panic!("{statements}: {err}"));
        messages
            .into_iter()
            .rev()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
    }

    /// Drops the schema (close the store first).
    pub async fn drop_schema(self) {
        pulsestream_store::postgres::drop_schema(&self.client, &self.schema)
            .await
            .expect("drop the schema");
    }
}
