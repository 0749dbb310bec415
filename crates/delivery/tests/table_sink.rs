//! The PostgreSQL table sink against the real PostgreSQL (`PULSESTREAM_TEST_DATABASE_URL`,
//! by default `postgres://postgres@127.0.0.1:5432/test`): a batch sent twice (a redelivery
//! after a lost acknowledgement) makes each row once, and the connection URL is checked
//! against private addresses when connecting.

use std::sync::Arc;
use std::time::Duration;

use pulsestream_core::secret::{SecretCipher, SecretKey};
use pulsestream_core::{
    Destination, DestinationId, DestinationKind, EventId, TableColumns, TenantId,
};
use pulsestream_delivery::{PostgresSink, SendOutcome, Sink};
use pulsestream_store::Delivery;
use pulsestream_store::postgres::test_database_url as database_url;

fn destination(secrets: &SecretCipher, url: &str, table: &str) -> Destination {
    let id = DestinationId::random();
    Destination {
        id,
        tenant: TenantId::random(),
        kind: DestinationKind::Postgres {
            connection: secrets.seal(url, id.as_bytes()).unwrap(),
            endpoint: String::new(),
            table: table.into(),
            columns: TableColumns::default(),
            create_table: true,
        },
        event_types: Vec::new(),
        max_attempts: 3,
        secret: String::new(),
        disabled: false,
        filter: None,
        ordering: None,
        max_batch_bytes: None,
        paused: false,
        created_at: time::OffsetDateTime::now_utc(),
    }
}

fn deliveries(tenant: TenantId, count: u64) -> Vec<Delivery> {
    (0..count)
        .map(|i| {
            let event = EventId::from_parts(1_700_000_000_000_000 + i as i64, i);
            Delivery {
                tenant,
                event,
                attempts: 0,
                due_micros: 1_700_000_000_000_000,
                json: format!(
                    r#"{{"id":"{event}","event_id":"e-{i}","event_type":"t","source":"s","timestamp":"2026-01-01T00:00:00Z","received_at":"2026-01-01T00:00:01.5Z","payload":{{"i":{i}}}}}"#
                )
                .into_bytes(),
                order: None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_twice_makes_each_row_once() {
    let url = database_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running for this test");
    tokio::spawn(connection);
    let schema = format!("ps_table_sink_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let secrets = SecretCipher::new(&SecretKey::generate().unwrap());
    let table = format!("{schema}.events");
    let destination = destination(&secrets, &url, &table);
    let sink = PostgresSink::new(Duration::from_secs(5), true, Arc::new(secrets));
    let batch = deliveries(destination.tenant, 50);
    assert_eq!(
        sink.send(&destination, &batch).await,
        SendOutcome::Delivered { status: None }
    );
    // Half of it again, then all of it: what is there already is left alone.
    assert_eq!(
        sink.send(&destination, &batch[..25]).await,
        SendOutcome::Delivered { status: None }
    );
    assert_eq!(
        sink.send(&destination, &batch).await,
        SendOutcome::Delivered { status: None }
    );
    let rows: i64 = client
        .query_one(&format!("SELECT count(DISTINCT id) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    let all: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((rows, all), (50, 50));
    let row = client
        .query_one(
            &format!("SELECT event_id, payload, received_at FROM {table} WHERE event_id = 'e-7'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, serde_json::Value>(1),
        serde_json::json!({"i": 7})
    );
    let received_at: time::OffsetDateTime = row.get(2);
    assert_eq!(received_at.millisecond(), 500);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_database_is_refused_when_connecting() {
    let secrets = SecretCipher::new(&SecretKey::generate().unwrap());
    let destination = destination(&secrets, &database_url(), "t");
    let sink = PostgresSink::new(Duration::from_secs(5), false, Arc::new(secrets));
    let SendOutcome::Failed { error, .. } = sink
        .send(&destination, &deliveries(destination.tenant, 1))
        .await
    else {
        panic!("a loopback database was connected to");
    };
    assert!(error.contains("loopback, private or link-local"), "{error}");
}
