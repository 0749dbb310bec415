//! Sinks for message brokers: RabbitMQ (AMQP 0-9-1) and MQTT.
//!
//! Each destination keeps one connection of its own (opened on its first send, dropped and
//! opened again after any failure), so a broker that is down or slow for one destination
//! never holds up another. A batch counts as delivered only when the broker has taken every
//! message of it: a publisher confirm (AMQP) or a PUBACK (MQTT QoS 1). Both sinks may send a
//! message twice (a confirm lost with the connection): consumers deduplicate by the event's
//! id, which every message carries (`message_id` in AMQP, the JSON's `id` everywhere).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use pulsestream_core::address::is_public;
use pulsestream_core::secret::SecretCipher;
use pulsestream_core::{Destination, DestinationId, DestinationKind, render_template};
use pulsestream_store::Delivery;
use serde::Deserialize;
use tokio::sync::{Mutex, mpsc};

use crate::sink::{SendOutcome, Sink};

/// A connection unused this long is closed (its destination may be gone).
const IDLE_LINK: Duration = Duration::from_secs(600);

/// The fields of a delivered event's JSON that templates and tables use.
#[derive(Deserialize)]
pub(crate) struct EventFields<'a> {
    #[serde(borrow)]
    pub event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub source: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub received_at: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub payload: &'a serde_json::value::RawValue,
}

impl<'a> EventFields<'a> {
    pub fn of(delivery: &'a Delivery) -> Result<Self, SendOutcome> {
        serde_json::from_slice(&delivery.json).map_err(|err| {
            failed(format!(
                "stored event {} cannot be read: {err}",
                delivery.event
            ))
        })
    }

    fn render(&self, template: &str) -> String {
        render_template(
            template,
            &self.event_type,
            self.source.as_deref(),
            &self.event_id,
        )
    }
}

pub(crate) fn failed(error: impl Into<String>) -> SendOutcome {
    SendOutcome::Failed {
        status: None,
        error: error.into(),
        retry_after: None,
    }
}

/// A destination's link, when open, with when it was last used.
pub(crate) type Slot<T> = Arc<Mutex<Option<(T, Instant)>>>;

/// One connection per destination, each behind its own lock: sends to one destination are
/// sequential (its worker is), sends to different destinations never wait for each other.
#[derive(Debug)]
pub(crate) struct Links<T> {
    links: std::sync::Mutex<HashMap<DestinationId, Slot<T>>>,
}

impl<T> Default for Links<T> {
    fn default() -> Self {
        Self {
            links: std::sync::Mutex::default(),
        }
    }
}

/// A connection a sink keeps for a destination.
#[async_trait]
pub(crate) trait Link: Send + Sized {
    /// Whether it can still be used (a link that broke is replaced before a send).
    fn alive(&self) -> bool;

    /// Ends it after a failed send, so the next send starts clean.
    async fn close(self) {}
}

impl<T: Link> Links<T> {
    /// Sends through the destination's link, connecting first when there is none (or it
    /// broke). A link that sent is kept; one that failed is closed and dropped.
    pub async fn send<C, CF, S, SF>(
        &self,
        destination: DestinationId,
        connect: C,
        send: S,
    ) -> SendOutcome
    where
        C: FnOnce() -> CF,
        CF: Future<Output = Result<T, SendOutcome>>,
        S: FnOnce(T) -> SF,
        SF: Future<Output = (T, Result<(), SendOutcome>)>,
    {
        let slot = self.slot(destination);
        let mut slot = slot.lock().await;
        let link = match slot.take() {
            Some((link, _)) if link.alive() => link,
            _ => match connect().await {
                Ok(link) => link,
                Err(outcome) => return outcome,
            },
        };
        match send(link).await {
            (link, Ok(())) => {
                *slot = Some((link, Instant::now()));
                SendOutcome::Delivered { status: None }
            }
            (link, Err(outcome)) => {
                link.close().await;
                outcome
            }
        }
    }
}

impl<T> Links<T> {
    /// The slot of a destination's link; drops slots idle for long (their link closes).
    pub fn slot(&self, destination: DestinationId) -> Slot<T> {
        let mut links = self.links.lock().expect("link map lock is never poisoned");
        links.retain(|_, slot| {
            slot.try_lock().map_or(true, |link| {
                link.as_ref()
                    .is_none_or(|(_, used)| used.elapsed() < IDLE_LINK)
            })
        });
        links.entry(destination).or_default().clone()
    }
}

/// What every broker and database sink needs to reach a destination: the key that opens its
/// sealed connection URL, whether private addresses are allowed, and how long to wait.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    secrets: Arc<SecretCipher>,
    allow_private: bool,
    pub timeout: Duration,
}

/// A destination's connection URL, opened, with the address checked for its host.
pub(crate) struct Endpoint {
    pub url: url::Url,
    pub host: String,
    pub address: SocketAddr,
}

impl Reach {
    pub fn new(timeout: Duration, allow_private: bool, secrets: Arc<SecretCipher>) -> Self {
        Self {
            secrets,
            allow_private,
            timeout,
        }
    }

    /// Opens the sealed URL and resolves its host (at `default_port` when the URL names
    /// none): unless private addresses are allowed, only a public address, checked now (the
    /// name may resolve elsewhere than when the destination was created).
    pub async fn endpoint(
        &self,
        destination: &Destination,
        sealed: &str,
        default_port: fn(&url::Url) -> u16,
    ) -> Result<Endpoint, SendOutcome> {
        let text = self
            .secrets
            .open(sealed, destination.id.as_bytes())
            .map_err(|err| {
                failed(format!(
                    "the destination's connection URL cannot be read: {err}"
                ))
            })?;
        let url = url::Url::parse(&text)
            .map_err(|_| failed("the destination's connection URL is malformed"))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port().unwrap_or_else(|| default_port(&url));
        let name = host.trim_matches(['[', ']']);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| failed(format!("the host {name} does not resolve")))?
            .collect();
        let address = addresses
            .into_iter()
            .find(|address| self.allow_private || is_public(address.ip()))
            .ok_or_else(|| {
                failed(
                    "the host resolves only to loopback, private or link-local addresses; they are refused unless the server runs with PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true",
                )
            })?;
        Ok(Endpoint { url, host, address })
    }
}

/// An open AMQP connection with a channel in confirm mode.
#[derive(Debug)]
pub(crate) struct AmqpLink {
    connection: Connection,
    channel: Channel,
}

#[async_trait]
impl Link for AmqpLink {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    async fn close(self) {
        // A channel that saw an error may be closed already; do not wait long on it.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.connection.close(200, "".into()),
        )
        .await;
    }
}

/// Publishes to RabbitMQ: one persistent message per event, `message_id` the event's id,
/// `mandatory` so that a message no queue takes comes back and is retried instead of lost.
#[derive(Debug)]
pub struct AmqpSink {
    links: Links<AmqpLink>,
    reach: Reach,
}

impl AmqpSink {
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
    ) -> Result<AmqpLink, SendOutcome> {
        let Endpoint {
            mut url, address, ..
        } = self
            .reach
            .endpoint(destination, sealed, |url| {
                if url.scheme() == "amqps" { 5671 } else { 5672 }
            })
            .await?;
        if url.scheme() != "amqps" {
            // Connect to the address just checked, not to a name that may resolve again.
            // (With TLS the name must stay, for the certificate.)
            let _ = url.set_ip_host(address.ip());
            let _ = url.set_port(Some(address.port()));
        }
        let connected = tokio::time::timeout(self.reach.timeout, async {
            let connection =
                Connection::connect(url.as_str(), ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(AmqpLink {
                connection,
                channel,
            })
        })
        .await;
        match connected {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(err)) => Err(failed(format!(
                "could not connect to the AMQP broker: {err}"
            ))),
            Err(_) => Err(failed("the AMQP broker did not answer in time")),
        }
    }

    async fn publish(
        &self,
        link: &AmqpLink,
        exchange: &str,
        routing_key: &str,
        deliveries: &[Delivery],
    ) -> Result<(), SendOutcome> {
        let mut confirms = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let fields = EventFields::of(delivery)?;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(delivery.event.to_string().into());
            let confirm = link
                .channel
                .basic_publish(
                    exchange.into(),
                    fields.render(routing_key).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.json,
                    properties,
                )
                .await
                .map_err(|err| failed(format!("AMQP publish failed: {err}")))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match tokio::time::timeout(self.reach.timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {}
                Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                    return Err(failed(format!(
                        "the broker returned a message: {} {} (no queue is bound for its routing key)",
                        returned.reply_code, returned.reply_text
                    )));
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    return Err(failed("the broker refused a message (nack)"));
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    return Err(failed("the channel is not in confirm mode"));
                }
                Ok(Err(err)) => return Err(failed(format!("AMQP confirm failed: {err}"))),
                Err(_) => return Err(failed("the AMQP broker did not confirm in time")),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome {
        let DestinationKind::Amqp {
            connection,
            exchange,
            routing_key,
            ..
        } = &destination.kind
        else {
            return failed("not an AMQP destination");
        };
        self.links
            .send(
                destination.id,
                || self.connect(destination, connection),
                |link| async move {
                    let sent = self.publish(&link, exchange, routing_key, deliveries).await;
                    (link, sent)
                },
            )
            .await
    }
}

/// What the MQTT event loop reports to the sender.
#[derive(Debug)]
enum MqttNews {
    Sent(u16),
    Acked(u16),
    Lost(String),
}

/// An MQTT connection: the client, and the news of its event loop, which a task polls.
#[derive(Debug)]
pub(crate) struct MqttLink {
    client: rumqttc::AsyncClient,
    news: mpsc::UnboundedReceiver<MqttNews>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link for MqttLink {
    fn alive(&self) -> bool {
        !self.task.is_finished()
    }
}

/// Publishes to an MQTT broker at QoS 1, one message per event; delivered on every PUBACK.
#[derive(Debug)]
pub struct MqttSink {
    links: Links<MqttLink>,
    reach: Reach,
}

impl MqttSink {
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
    ) -> Result<MqttLink, SendOutcome> {
        let Endpoint { url, host, address } = self
            .reach
            .endpoint(destination, sealed, |url| {
                if url.scheme() == "mqtts" { 8883 } else { 1883 }
            })
            .await?;
        let tls = url.scheme() == "mqtts";
        // Unique per connection: two nodes with the same client id would throw each other
        // off the broker.
        let client_id = format!(
            "pulsestream-{}-{:08x}",
            &destination.id.to_string()[..8],
            rand::random::<u32>()
        );
        let target = if tls { host } else { address.ip().to_string() };
        let mut options = rumqttc::MqttOptions::new(client_id, target, address.port());
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        if !url.username().is_empty() {
            let password = url.password().map(percent_decode).unwrap_or_default();
            options.set_credentials(percent_decode(url.username()), password);
        }
        if tls {
            options.set_transport(rumqttc::Transport::tls_with_config(mqtt_tls()?));
        }
        let (client, mut event_loop) = rumqttc::AsyncClient::new(options, 1_024);
        event_loop
            .network_options
            .set_connection_timeout(self.reach.timeout.as_secs().max(1));
        let (tell, news) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let news = match event_loop.poll().await {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(id))) => {
                        MqttNews::Sent(id)
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                        MqttNews::Acked(ack.pkid)
                    }
                    Ok(_) => continue,
                    Err(err) => {
                        let _ = tell.send(MqttNews::Lost(format!("MQTT connection lost: {err}")));
                        // The link is dropped by the sender and made anew: no half-known
                        // state (messages in flight on a dead connection) carries over.
                        return;
                    }
                };
                if tell.send(news).is_err() {
                    return;
                }
            }
        });
        Ok(MqttLink { client, news, task })
    }

    async fn publish(
        &self,
        link: &mut MqttLink,
        topic: &str,
        deliveries: &[Delivery],
    ) -> Result<(), SendOutcome> {
        for delivery in deliveries {
            let fields = EventFields::of(delivery)?;
            // `+` and `#` are wildcards, never part of a topic one publishes to.
            let topic = fields.render(topic).replace(['+', '#', '\0'], "_");
            link.client
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    delivery.json.clone(),
                )
                .await
                .map_err(|err| failed(format!("MQTT publish failed: {err}")))?;
        }
        let deadline = tokio::time::Instant::now() + self.reach.timeout;
        let mut sent = 0;
        let mut waiting: HashSet<u16> = HashSet::new();
        while sent < deliveries.len() || !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, link.news.recv()).await {
                Ok(Some(MqttNews::Sent(id))) => {
                    sent += 1;
                    waiting.insert(id);
                }
                Ok(Some(MqttNews::Acked(id))) => {
                    waiting.remove(&id);
                }
                Ok(Some(MqttNews::Lost(error))) => return Err(failed(error)),
                Ok(None) => return Err(failed("MQTT connection closed")),
                Err(_) => return Err(failed("the MQTT broker did not acknowledge in time")),
            }
        }
        Ok(())
    }
}

/// TLS for `mqtts://`: the system's root certificates (rumqttc's own default panics when
/// they cannot be read; this fails the send instead).
fn mqtt_tls() -> Result<rumqttc::TlsConfiguration, SendOutcome> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(failed(
            "no root certificates could be read from the system for mqtts://",
        ));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[async_trait]
impl Sink for MqttSink {
    async fn send(&self, destination: &Destination, deliveries: &[Delivery]) -> SendOutcome {
        let DestinationKind::Mqtt {
            connection, topic, ..
        } = &destination.kind
        else {
            return failed("not an MQTT destination");
        };
        self.links
            .send(
                destination.id,
                || self.connect(destination, connection),
                |mut link| async move {
                    let sent = self.publish(&mut link, topic, deliveries).await;
                    // A failed link is dropped: that stops its event loop.
                    (link, sent)
                },
            )
            .await
    }
}
