//! Sinks send a batch of deliveries to one destination and say how it went.
//!
//! `WebhookSink` POSTs `{"events": [...]}` signed the Standard Webhooks way; `NatsSink`
//! publishes each event to JetStream with `Nats-Msg-Id` set to the event id, so the stream's
//! duplicate window drops redeliveries. Both must tolerate duplicates: a worker that dies
//! after sending but before recording sends again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use pulsestream_core::secret::SecretCipher;
use pulsestream_core::{Destination, DestinationKind};
use pulsestream_store::Delivery;
use sha2::Sha256;
use xxhash_rust::xxh3::Xxh3;

use crate::brokers::{AmqpSink, MqttSink};
use crate::public_dns::{PublicOnlyResolver, refusal_in, refused_literal};
use crate::table::PostgresSink;

/// How a send went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Taken; `status` is the receiver's HTTP status (webhooks).
    Delivered { status: Option<u16> },
    /// Try again later, not sooner than `retry_after` if the receiver said so.
    Failed {
        error: String,
        retry_after: Option<Duration>,
        /// The receiver's HTTP status, when it answered.
        status: Option<u16>,
    },
    /// The receiver answered 410 Gone: disable the destination.
    Gone,
    /// The receiver answered 413: the batch is too large for it (a smaller one may pass).
    TooLarge { error: String, status: Option<u16> },
}

/// Sends deliveries to destinations of the kinds it handles.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome;
}

/// Sends each destination through the sink of its kind.
#[derive(Debug)]
pub struct Sinks {
    pub webhook: WebhookSink,
    /// Present when the server is configured with NATS.
    pub nats: Option<NatsSink>,
    pub amqp: AmqpSink,
    pub mqtt: MqttSink,
    pub postgres: PostgresSink,
}

impl Sinks {
    /// Every sink kind, with requests timing out after `timeout`; NATS when `nats` is given.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS backend).
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        secrets: Arc<SecretCipher>,
        nats: Option<NatsSink>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            webhook: WebhookSink::new(timeout, allow_private, secrets.clone())?,
            nats,
            amqp: AmqpSink::new(timeout, allow_private, secrets.clone()),
            mqtt: MqttSink::new(timeout, allow_private, secrets.clone()),
            postgres: PostgresSink::new(timeout, allow_private, secrets),
        })
    }
}

#[async_trait]
impl Sink for Sinks {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome {
        match (&destination.kind, &self.nats) {
            (DestinationKind::Webhook { .. }, _) => {
                self.webhook.send(destination, deliveries).await
            }
            (DestinationKind::Nats { .. }, Some(nats)) => nats.send(destination, deliveries).await,
            (DestinationKind::Nats { .. }, None) => SendOutcome::Failed {
                status: None,
                error: "this server runs without NATS (set PULSESTREAM_NATS_URL)".into(),
                retry_after: None,
            },
            (DestinationKind::Amqp { .. }, _) => self.amqp.send(destination, deliveries).await,
            (DestinationKind::Mqtt { .. }, _) => self.mqtt.send(destination, deliveries).await,
            (DestinationKind::Postgres { .. }, _) => {
                self.postgres.send(destination, deliveries).await
            }
        }
    }
}

/// HTTP POST of a batch, with `webhook-id`, `webhook-timestamp` and `webhook-signature`.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    allow_private: bool,
    secrets: Arc<SecretCipher>,
}

impl WebhookSink {
    /// A sink whose requests time out after `timeout`. Unless `allow_private`, it connects
    /// only to public addresses (see `public_dns`), whatever the URL's name resolves to now.
    /// `secrets` opens the sealed signing secrets of destinations.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS backend).
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        secrets: Arc<SecretCipher>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect would lead to a URL nobody checked; a proxy would resolve names
            // where the resolver below cannot see them.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("pulsestream/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
            secrets,
        })
    }
}

/// The `webhook-id` of a batch: stable for the same destination and events, so a receiver
/// can drop a retried batch; each event also carries its own stable `id`.
pub fn message_id(destination: &Destination, deliveries: &[Delivery]) -> String {
    let mut hasher = Xxh3::new();
    hasher.update(destination.id.as_bytes());
    for delivery in deliveries {
        hasher.update(delivery.event.as_bytes());
    }
    format!("msg_{:032x}", hasher.digest128())
}

/// Signs `{id}.{timestamp}.{body}` with the destination's secret: `v1,<base64 HMAC-SHA256>`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

fn batch_body(deliveries: &[Delivery]) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        deliveries
            .iter()
            .map(|delivery| delivery.json.len() + 1)
            .sum::<usize>()
            + 12,
    );
    body.extend_from_slice(b"{\"events\":[");
    for (index, delivery) in deliveries.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&delivery.json);
    }
    body.extend_from_slice(b"]}");
    body
}

#[async_trait]
impl Sink for WebhookSink {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome {
        let DestinationKind::Webhook { url, sealed_url } = &destination.kind else {
            return SendOutcome::Failed {
                status: None,
                error: "not a webhook destination".into(),
                retry_after: None,
            };
        };
        let url = match sealed_url {
            Some(sealed) => match self.secrets.open(sealed, destination.id.as_bytes()) {
                Ok(url) => url.into_owned(),
                Err(err) => {
                    return SendOutcome::Failed {
                        status: None,
                        error: format!("the destination's URL cannot be read: {err}"),
                        retry_after: None,
                    };
                }
            },
            None => url.clone(),
        };
        let url = match reqwest::Url::parse(&url) {
            Ok(url) => url,
            Err(_) => {
                return SendOutcome::Failed {
                    status: None,
                    error: "the destination's URL is malformed".into(),
                    retry_after: None,
                };
            }
        };
        if !self.allow_private
            && let Some(refused) = refused_literal(&url)
        {
            return SendOutcome::Failed {
                status: None,
                error: refused.to_string(),
                retry_after: None,
            };
        }
        let body = batch_body(deliveries);
        let id = message_id(destination, deliveries);
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let secret = match self
            .secrets
            .open(&destination.secret, destination.id.as_bytes())
        {
            Ok(secret) => secret,
            Err(err) => {
                return SendOutcome::Failed {
                    status: None,
                    error: format!("the destination's secret cannot be read: {err}"),
                    retry_after: None,
                };
            }
        };
        let Some(signature) = signature(&secret, &id, timestamp, &body) else {
            return SendOutcome::Failed {
                status: None,
                error: "the destination's secret is malformed".into(),
                retry_after: None,
            };
        };
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => SendOutcome::Delivered {
                status: Some(response.status().as_u16()),
            },
            Ok(response) if response.status() == reqwest::StatusCode::GONE => SendOutcome::Gone,
            Ok(response) if response.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
                SendOutcome::TooLarge {
                    status: Some(413),
                    error: format!("the receiver answered {}", response.status()),
                }
            }
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                SendOutcome::Failed {
                    status: Some(response.status().as_u16()),
                    error: format!("the receiver answered {}", response.status()),
                    retry_after,
                }
            }
            Err(err) => failure(err),
        }
    }
}

/// Describes a request that got no answer, without the URL (it may carry credentials).
fn failure(err: reqwest::Error) -> SendOutcome {
    let error = if let Some(refused) = refusal_in(&err) {
        refused.to_string()
    } else if err.is_timeout() {
        "the receiver did not answer in time".into()
    } else if err.is_connect() {
        "could not connect to the receiver".into()
    } else {
        format!("request failed: {}", err.without_url())
    };
    SendOutcome::Failed {
        status: None,
        error,
        retry_after: None,
    }
}

/// Publishes to NATS JetStream and waits for the stream's acknowledgement of every event.
///
/// While the client is not connected (NATS went away; the client reconnects by itself), a
/// send fails at once instead of queueing publishes in the client and waiting `timeout` for
/// each batch's acknowledgements: the destination's circuit opens after a few quick failures
/// rather than after several timeouts, and no stale publishes pile up to be flushed on
/// reconnection (they would be dropped by the stream's duplicate window, but cost a round).
#[derive(Debug, Clone)]
pub struct NatsSink {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    timeout: Duration,
}

impl NatsSink {
    /// Connects to NATS. The client reconnects by itself if the server goes away later.
    ///
    /// # Errors
    /// The first connection fails.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, async_nats::ConnectError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .retry_on_initial_connect()
            .connect(url)
            .await?;
        Ok(Self {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            timeout,
        })
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome {
        let DestinationKind::Nats { subject } = &destination.kind else {
            return SendOutcome::Failed {
                status: None,
                error: "not a NATS destination".into(),
                retry_after: None,
            };
        };
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return SendOutcome::Failed {
                status: None,
                error: "NATS is not connected (the client is reconnecting)".into(),
                retry_after: None,
            };
        }
        let mut acks = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", delivery.event.to_string().as_str());
            let published = self
                .jetstream
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    bytes::Bytes::from(delivery.json.clone()),
                )
                .await;
            match published {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    return SendOutcome::Failed {
                        status: None,
                        error: format!("NATS publish failed: {err}"),
                        retry_after: None,
                    };
                }
            }
        }
        for ack in acks {
            match tokio::time::timeout(self.timeout, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    return SendOutcome::Failed {
                        status: None,
                        error: format!("JetStream did not store the message: {err}"),
                        retry_after: None,
                    };
                }
                Err(_) => {
                    return SendOutcome::Failed {
                        status: None,
                        error: "JetStream did not acknowledge in time".into(),
                        retry_after: None,
                    };
                }
            }
        }
        SendOutcome::Delivered { status: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let signature = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }
}
