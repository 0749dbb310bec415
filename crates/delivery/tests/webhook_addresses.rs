//! The webhook sink against a real receiver on loopback: without private destinations
//! allowed, nothing reaches it, whether the URL names it by an IP literal or by a name that
//! resolves to it (as a rebound DNS name would); with them allowed, the batch arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use pulsestream_core::secret::{SecretCipher, SecretKey};
use pulsestream_core::{Destination, DestinationId, DestinationKind, EventId, TenantId};
use pulsestream_delivery::{SendOutcome, Sink, WebhookSink};
use pulsestream_store::Delivery;

/// Counts the requests that reach it.
struct Receiver {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().route(
            "/hook",
            post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn webhook(url: String) -> Destination {
    Destination {
        id: DestinationId::random(),
        tenant: TenantId::random(),
        kind: DestinationKind::Webhook {
            url,
            sealed_url: None,
        },
        event_types: Vec::new(),
        max_attempts: 3,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        disabled: false,
        filter: None,
        ordering: None,
        max_batch_bytes: None,
        paused: false,
        created_at: time::OffsetDateTime::now_utc(),
    }
}

fn one_delivery(tenant: TenantId) -> Vec<Delivery> {
    vec![Delivery {
        tenant,
        event: EventId::from_parts(1_700_000_000_000_000, 7),
        attempts: 0,
        due_micros: 1_700_000_000_000_000,
        json: br#"{"id":"x","event_type":"t"}"#.to_vec(),
        order: None,
    }]
}

fn sink(allow_private: bool) -> WebhookSink {
    // The server installs the provider at start; the sink's client needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secrets = SecretCipher::new(&SecretKey::generate().unwrap());
    WebhookSink::new(Duration::from_secs(5), allow_private, Arc::new(secrets)).unwrap()
}

async fn send(sink: &WebhookSink, url: String) -> SendOutcome {
    let destination = webhook(url);
    sink.send(&destination, &one_delivery(destination.tenant))
        .await
}

#[tokio::test]
async fn loopback_receivers_get_nothing_unless_private_destinations_are_allowed() {
    let receiver = Receiver::start().await;
    let guarded = sink(false);

    for url in [
        format!("http://localhost:{}/hook", receiver.port),
        format!("http://127.0.0.1:{}/hook", receiver.port),
        format!("http://[::ffff:127.0.0.1]:{}/hook", receiver.port),
    ] {
        let outcome = send(&guarded, url.clone()).await;

        let SendOutcome::Failed { error, .. } = outcome else {
            panic!("{url} was sent to: {outcome:?}");
        };
        assert!(
            error.contains("PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS"),
            "{url}: {error}"
        );
    }
    assert_eq!(receiver.hits(), 0, "no request reached the receiver");

    let allowed = sink(true);
    let outcome = send(&allowed, format!("http://localhost:{}/hook", receiver.port)).await;

    assert_eq!(outcome, SendOutcome::Delivered { status: Some(200) });
    assert_eq!(receiver.hits(), 1);
}
