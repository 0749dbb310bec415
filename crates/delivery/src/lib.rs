//! PulseStream's outbound half: every stored event that matches a destination is delivered
//! at least once, with retries, a circuit breaker per destination and dead letters.
//!
//! The [`Dispatcher`] keeps one worker task per enabled destination, so a slow or dead
//! destination never delays another. A worker claims due entries from the store's queue,
//! sends them through its [`Sink`], and records the outcome: delivered, rescheduled with
//! exponential backoff and full jitter (never sooner than `Retry-After`), or moved to the
//! dead letters after `max_attempts`. Pending work lives in the store, never in memory, so
//! a destination that is down for hours costs no memory, and a restart resumes where the
//! queue stands.

mod brokers;
mod public_dns;
mod sink;
mod table;
mod turns;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulsestream_core::{Breaker, Circuit};
use pulsestream_core::{Destination, DestinationId, RetryPolicy};
use pulsestream_store::{
    ActivityStore, Attempt, AttemptOutcome, Delivery, DeliveryQueue, DestinationStore,
    QueuePosition, StoreError, Tally,
};
use rand::Rng;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use brokers::{AmqpSink, MqttSink};
pub use public_dns::{AddressRefused, PublicOnlyResolver};
pub use sink::{NatsSink, SendOutcome, Sink, Sinks, WebhookSink, message_id, signature};
pub use table::{PostgresSink, create_statement, insert_statement, quote_name};

/// Settings of the delivery workers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Most events sent in one request (webhook) or one round (NATS).
    pub batch_size: usize,
    /// Most bytes of events in one request or round (a destination may set its own); a
    /// single larger event still goes alone.
    pub batch_max_bytes: usize,
    /// How often an idle worker looks for due entries.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    /// Consecutive failures that open a destination's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit waits before a probe.
    pub breaker_cool_down: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            batch_max_bytes: 1024 * 1024,
            poll_interval: Duration::from_millis(100),
            retry: RetryPolicy::default(),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
        }
    }
}

/// Declares the delivery metrics with their help text.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "pulsestream_deliveries_total",
        "Delivery outcomes per destination: delivered, retried, dead_lettered"
    );
    metrics::describe_counter!(
        "pulsestream_delivery_claims_total",
        "Claims of due entries per destination (an idle destination makes none)"
    );
    metrics::describe_gauge!(
        "pulsestream_delivery_pending_events",
        "Events waiting for a destination"
    );
    metrics::describe_gauge!(
        "pulsestream_delivery_in_flight_events",
        "Events being sent to a destination right now"
    );
    metrics::describe_gauge!(
        "pulsestream_delivery_circuit_open",
        "1 while a destination's circuit is open or half-open, 0 when closed"
    );
}

/// Runs one worker per enabled destination until cancelled.
#[derive(Debug)]
pub struct Dispatcher {
    task: JoinHandle<()>,
}

impl Dispatcher {
    /// Starts the dispatcher.
    pub fn spawn(
        stores: DeliveryStores,
        sink: Arc<dyn Sink>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let task = tokio::spawn(dispatch(stores, sink, config, shutdown));
        Self { task }
    }

    /// Waits for every worker to stop (after the shutdown token is cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// What the workers read and write: destinations, their queues, and the record of what
/// happened (attempts, counts).
#[derive(Debug, Clone)]
pub struct DeliveryStores {
    pub destinations: Arc<dyn DestinationStore>,
    pub queue: Arc<dyn DeliveryQueue>,
    pub activity: Arc<dyn ActivityStore>,
    pub tally: Arc<Tally>,
}

async fn dispatch(
    stores: DeliveryStores,
    sink: Arc<dyn Sink>,
    config: DeliveryConfig,
    shutdown: CancellationToken,
) {
    let DeliveryStores {
        destinations,
        queue,
        activity,
        tally,
    } = stores;
    let queue: Arc<dyn DeliveryQueue> = Arc::new(turns::Turns::new(queue, STORE_TURNS));
    let mut workers: HashMap<DestinationId, JoinHandle<()>> = HashMap::new();
    loop {
        workers.retain(|_, worker| !worker.is_finished());
        match destinations.all_destinations().await {
            Ok(all) => {
                for destination in all
                    .into_iter()
                    .filter(|destination| !destination.disabled && !destination.paused)
                {
                    workers.entry(destination.id).or_insert_with(|| {
                        let worker = Worker {
                            cursor: None,
                            last_read: Instant::now(),
                            last_full_scan: Instant::now(),
                            destinations: destinations.clone(),
                            queue: queue.clone(),
                            activity: activity.clone(),
                            tally: tally.clone(),
                            sink: sink.clone(),
                            breaker: Breaker::new(
                                config.breaker_threshold,
                                config.breaker_cool_down,
                            ),
                            config: config.clone(),
                            destination,
                            shutdown: shutdown.clone(),
                        };
                        tokio::spawn(worker.run())
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot list destinations"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            // New destinations get their worker within a second.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for (_, worker) in workers {
        let _ = worker.await;
    }
}

/// How often a worker scans its whole queue instead of going on from its cursor.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);

/// The longest an idle worker sleeps without a signal: a safety net, not the way it learns
/// of work (appends wake it; its queue's next due time is known).
const IDLE_MAX: Duration = Duration::from_secs(60);

/// How many workers use the store at once (see `turns`).
const STORE_TURNS: usize = 8;

/// How often a worker reads its destination again (deleted, or disabled by another node).
const REREAD_DESTINATION: Duration = Duration::from_secs(2);

/// Delivers one destination's queue.
struct Worker {
    /// Where the previous claim ended.
    cursor: Option<QueuePosition>,
    /// When the destination was last read from the store.
    last_read: Instant,
    last_full_scan: Instant,
    destinations: Arc<dyn DestinationStore>,
    queue: Arc<dyn DeliveryQueue>,
    activity: Arc<dyn ActivityStore>,
    tally: Arc<Tally>,
    sink: Arc<dyn Sink>,
    breaker: Breaker,
    config: DeliveryConfig,
    destination: Destination,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(mut self) {
        let id = self.destination.id;
        let tenant = self.destination.tenant;
        let label = id.to_string();
        tracing::debug!(destination_id = %id, "delivery worker started");
        let wakeups = self.queue.wakeups();
        let wake = wakeups.register(tenant, id);
        // The gauges exist from the start (at 0), as Prometheus advises.
        metrics::gauge!("pulsestream_delivery_circuit_open", "destination" => label.clone())
            .set(0.0);
        let mut last_gauge: Option<Instant> = None;
        // Whether the last round sent something.
        let mut busy = false;
        while !self.shutdown.is_cancelled() {
            // The pending count costs a count of the queue: only now and then, and only
            // while there is work (an idle destination costs nothing).
            if last_gauge.is_none_or(|at| busy && at.elapsed() > Duration::from_secs(5)) {
                last_gauge = Some(Instant::now());
                self.report_pending(&label).await;
            }
            match self.step(&label).await {
                Ok(Step::Continue) => busy = true,
                Ok(Step::Idle(pause)) => {
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Ok(Step::Drained) => {
                    if busy {
                        busy = false;
                        self.report_pending(&label).await;
                    }
                    let pause = match self.until_next_due().await {
                        Ok(pause) => pause,
                        Err(err) => {
                            tracing::warn!(destination_id = %id, error = %err, "cannot read the queue's next due time");
                            self.config.poll_interval * 10
                        }
                    };
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        () = wake.notified() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Ok(Step::Stop) => break,
                Err(err) => {
                    tracing::warn!(destination_id = %id, error = %err, "delivery step failed; retrying shortly");
                    tokio::time::sleep(self.config.poll_interval * 10).await;
                }
            }
        }
        wakeups.unregister(tenant, id);
        tracing::debug!(destination_id = %id, "delivery worker stopped");
    }

    /// Sets the pending gauge from a count of the queue.
    async fn report_pending(&self, label: &str) {
        if let Ok(stats) = self.queue.delivery_stats(self.destination.id).await {
            metrics::gauge!("pulsestream_delivery_pending_events", "destination" => label.to_owned())
                .set(stats.pending as f64);
        }
    }

    /// How long a worker with nothing to claim sleeps (unless woken by an append or a
    /// replay): until its queue's next entry falls due, at most `IDLE_MAX`; a short poll
    /// when something due was not claimed (it lies behind the cursor: the next claim scans
    /// from the start).
    async fn until_next_due(&mut self) -> Result<Duration, StoreError> {
        let Some(due) = self.queue.next_due(self.destination.id).await? else {
            return Ok(IDLE_MAX);
        };
        let ahead = due - OffsetDateTime::now_utc();
        if ahead <= time::Duration::ZERO {
            self.cursor = None;
            return Ok(self.config.poll_interval);
        }
        Ok(Duration::try_from(ahead).map_or(IDLE_MAX, |ahead| ahead.min(IDLE_MAX)))
    }

    /// One round: claim what is due, send it, record the outcome.
    async fn step(&mut self, label: &str) -> Result<Step, StoreError> {
        let id = self.destination.id;
        // The destination as stored (deleted, or disabled by another node): read again only
        // now and then, not on every round.
        if self.last_read.elapsed() >= REREAD_DESTINATION {
            let Some(current) = self
                .destinations
                .destinations(self.destination.tenant)
                .await?
                .into_iter()
                .find(|d| d.id == id)
            else {
                return Ok(Step::Stop);
            };
            // Paused: the worker stops; the dispatcher starts another on resume.
            if current.disabled || current.paused {
                return Ok(Step::Stop);
            }
            self.destination = current;
            self.last_read = Instant::now();
        }
        let now = Instant::now();
        let wait = self.breaker.wait(now);
        if !wait.is_zero() {
            return Ok(Step::Idle(wait.min(self.config.poll_interval * 10)));
        }
        // A half-open circuit risks one event's attempt on the probe, not a whole batch.
        let limit = if self.breaker.state(now) == Circuit::HalfOpen {
            1
        } else {
            self.config.batch_size
        };
        // Scan on from the previous claim; now and then from the start, to pick up what
        // landed behind the cursor (a replay racing a claim, a clock step).
        if self.last_full_scan.elapsed() >= FULL_SCAN_EVERY {
            self.cursor = None;
            self.last_full_scan = Instant::now();
        }
        metrics::counter!("pulsestream_delivery_claims_total", "destination" => label.to_owned())
            .increment(1);
        let due = if self.destination.ordering.is_some() {
            // In order: what is claimed depends on what waits before it, so no cursor.
            self.queue
                .claim_ordered(id, OffsetDateTime::now_utc(), limit)
                .await?
        } else {
            self.queue
                .claim_due(id, OffsetDateTime::now_utc(), self.cursor, limit)
                .await?
        };
        if due.is_empty() {
            return Ok(Step::Drained);
        }
        // The byte cap: the longest run that fits (one event at least); the rest goes back
        // to the queue untouched, for the next round.
        let cap = self
            .destination
            .max_batch_bytes
            .and_then(|bytes| usize::try_from(bytes).ok())
            .unwrap_or(self.config.batch_max_bytes);
        let (due, rest) = within_bytes(due, cap);
        if !rest.is_empty() {
            self.queue.release(id, &rest).await?;
        }
        let Some(last) = due.last() else {
            return Ok(Step::Drained);
        };
        self.cursor = Some(last.position());
        metrics::gauge!("pulsestream_delivery_in_flight_events", "destination" => label.to_owned())
            .set(due.len() as f64);
        let (outcome, took) = self.send(&due).await;
        metrics::gauge!("pulsestream_delivery_in_flight_events", "destination" => label.to_owned())
            .set(0.0);
        if matches!(outcome, SendOutcome::TooLarge { .. }) && due.len() > 1 {
            self.record_attempt(&due, &outcome, took, None, 0).await;
            return self.halve(due, label).await;
        }
        if self.destination.ordering.is_some()
            && matches!(outcome, SendOutcome::Failed { .. })
            && due
                .iter()
                .any(|delivery| order_key(delivery) != order_key(&due[0]))
        {
            self.record_attempt(&due, &outcome, took, None, 0).await;
            return self.split_by_key(due, outcome, label).await;
        }
        self.settle(&due, outcome, took, label).await
    }

    /// Sends through the sink; returns the outcome and how long it took.
    async fn send(&self, due: &[Delivery]) -> (SendOutcome, Duration) {
        let started = Instant::now();
        let outcome = self.sink.send(&self.destination, due).await;
        (outcome, started.elapsed())
    }

    /// Records an attempt for the console and the API. A failure to record is logged, not
    /// returned: the outcome of the delivery itself is already recorded.
    async fn record_attempt(
        &self,
        due: &[Delivery],
        outcome: &SendOutcome,
        took: Duration,
        next_retry_at: Option<OffsetDateTime>,
        dead_lettered: u32,
    ) {
        let attempt = attempt_of(
            &self.destination,
            due.iter().map(|delivery| delivery.event).collect(),
            outcome,
            took,
            next_retry_at,
            dead_lettered,
        );
        if let Err(err) = self.activity.record_attempt(&attempt).await {
            tracing::warn!(destination_id = %self.destination.id, error = %err, "cannot record a delivery attempt");
        }
    }

    /// A batch the receiver refused as too large (413), sent again in halves at once, and
    /// those in halves, down to single events: only an event that is too large on its own
    /// counts an attempt. In an ordered destination, what comes after a failed part and
    /// shares a key with it goes back to the queue unsent (it waits for its key).
    async fn halve(&mut self, due: Vec<Delivery>, label: &str) -> Result<Step, StoreError> {
        let id = self.destination.id;
        let ordered = self.destination.ordering.is_some();
        let mut parts: std::collections::VecDeque<Vec<Delivery>> = halves(due).into();
        let mut failed_keys: std::collections::HashSet<Option<i64>> = Default::default();
        while let Some(mut part) = parts.pop_front() {
            if ordered {
                let (held, free): (Vec<Delivery>, Vec<Delivery>) = part
                    .into_iter()
                    .partition(|delivery| failed_keys.contains(&order_key(delivery)));
                self.queue.release(id, &held).await?;
                part = free;
                if part.is_empty() {
                    continue;
                }
            }
            if !self.breaker.wait(Instant::now()).is_zero() {
                // The circuit opened on the way: the rest waits for the next round.
                self.queue.release(id, &part).await?;
                for rest in parts.drain(..) {
                    self.queue.release(id, &rest).await?;
                }
                break;
            }
            let (outcome, took) = self.send(&part).await;
            match outcome {
                SendOutcome::TooLarge { .. } if part.len() > 1 => {
                    self.record_attempt(&part, &outcome, took, None, 0).await;
                    for half in halves(part).into_iter().rev() {
                        parts.push_front(half);
                    }
                }
                outcome => {
                    let delivered = matches!(outcome, SendOutcome::Delivered { .. });
                    if !delivered {
                        failed_keys.extend(part.iter().map(order_key));
                    }
                    if let Step::Stop = self.settle(&part, outcome, took, label).await? {
                        return Ok(Step::Stop);
                    }
                }
            }
        }
        Ok(Step::Continue)
    }

    /// A failed batch of an ordered destination, sent again key by key at once: one key's
    /// failing event then holds back its own key only, never the others that shared its
    /// batch. Once the circuit opens, the groups not sent yet fail with the batch's error.
    async fn split_by_key(
        &mut self,
        due: Vec<Delivery>,
        failed: SendOutcome,
        label: &str,
    ) -> Result<Step, StoreError> {
        let mut groups: Vec<Vec<Delivery>> = Vec::new();
        for delivery in due {
            match groups
                .iter_mut()
                .find(|group| order_key(&group[0]) == order_key(&delivery))
            {
                Some(group) => group.push(delivery),
                None => groups.push(vec![delivery]),
            }
        }
        for group in groups {
            if !self.breaker.wait(Instant::now()).is_zero() {
                self.settle(&group, failed.clone(), Duration::ZERO, label)
                    .await?;
                continue;
            }
            let (outcome, took) = self.send(&group).await;
            if let Step::Stop = self.settle(&group, outcome, took, label).await? {
                return Ok(Step::Stop);
            }
        }
        Ok(Step::Continue)
    }

    /// Records how a send went: delivered, retried or dead-lettered, and the circuit.
    async fn settle(
        &mut self,
        due: &[Delivery],
        outcome: SendOutcome,
        took: Duration,
        label: &str,
    ) -> Result<Step, StoreError> {
        let id = self.destination.id;
        // Too large for the receiver even alone (a batch is halved first): a failure.
        let outcome = match outcome {
            SendOutcome::TooLarge { error, status } => SendOutcome::Failed {
                status,
                error: format!("{error}: the event alone is too large for the receiver"),
                retry_after: None,
            },
            outcome => outcome,
        };
        let SendOutcome::Failed {
            ref error,
            retry_after,
            ..
        } = outcome
        else {
            let step = self.settle_sent(due, &outcome, label).await?;
            self.record_attempt(due, &outcome, took, None, 0).await;
            return Ok(step);
        };
        // The destination's last error first, then the retry or dead letter: no transaction
        // spans the two, and a reader who sees the dead letter must also see why (the other
        // order let the destination's view show `dead_lettered: 1` with `last_error: null`
        // for a moment; the 413 test caught it on PostgreSQL).
        if let Some(circuit) = self.breaker.on_failure(Instant::now()) {
            self.circuit_changed(circuit, Some(error), label).await?;
        } else {
            self.queue
                .record_circuit(id, self.breaker.state(Instant::now()), Some(error))
                .await?;
        }
        let (next_retry_at, dead_lettered) =
            self.record_failure(due, error, retry_after, label).await?;
        self.record_attempt(due, &outcome, took, next_retry_at, dead_lettered)
            .await;
        Ok(Step::Continue)
    }

    /// Records a send that got through: delivered, or 410 Gone.
    async fn settle_sent(
        &mut self,
        due: &[Delivery],
        outcome: &SendOutcome,
        label: &str,
    ) -> Result<Step, StoreError> {
        let id = self.destination.id;
        match outcome {
            SendOutcome::Delivered { .. } => {
                self.queue.record_delivered(id, due).await?;
                self.tally.add(self.destination.tenant, |counts| {
                    counts.delivered += due.len() as u64;
                });
                metrics::counter!("pulsestream_deliveries_total", "destination" => label.to_owned(), "outcome" => "delivered")
                    .increment(due.len() as u64);
                if let Some(circuit) = self.breaker.on_success(Instant::now()) {
                    self.circuit_changed(circuit, None, label).await?;
                }
                Ok(Step::Continue)
            }
            SendOutcome::Gone => {
                tracing::warn!(destination_id = %id, "the receiver answered 410 Gone; disabling the destination");
                let mut disabled = self.destination.clone();
                disabled.disabled = true;
                self.destinations.put_destination(&disabled).await?;
                self.queue
                    .record_circuit(
                        id,
                        self.breaker.state(Instant::now()),
                        Some("the receiver answered 410 Gone; destination disabled"),
                    )
                    .await?;
                Ok(Step::Stop)
            }
            SendOutcome::Failed { .. } | SendOutcome::TooLarge { .. } => {
                // `settle` records failures before it gets here.
                Ok(Step::Continue)
            }
        }
    }

    /// Reschedules what has attempts left and dead-letters the rest. Returns the earliest
    /// retry and how many went to the dead letters.
    async fn record_failure(
        &self,
        due: &[Delivery],
        error: &str,
        retry_after: Option<Duration>,
        label: &str,
    ) -> Result<(Option<OffsetDateTime>, u32), StoreError> {
        let id = self.destination.id;
        let max_attempts = self.destination.max_attempts.max(1);
        let (exhausted, retry): (Vec<Delivery>, Vec<Delivery>) = due
            .iter()
            .cloned()
            .partition(|delivery| delivery.attempts + 1 >= max_attempts);
        let dead_lettered = u32::try_from(exhausted.len()).unwrap_or(u32::MAX);
        if !exhausted.is_empty() {
            self.queue.dead_letter(id, &exhausted, error).await?;
            self.tally.add(self.destination.tenant, |counts| {
                counts.dead_lettered += exhausted.len() as u64;
            });
            metrics::counter!("pulsestream_deliveries_total", "destination" => label.to_owned(), "outcome" => "dead_lettered")
                .increment(exhausted.len() as u64);
        }
        let mut by_attempts: HashMap<u32, Vec<Delivery>> = HashMap::new();
        for delivery in retry {
            by_attempts
                .entry(delivery.attempts)
                .or_default()
                .push(delivery);
        }
        let retry_after = retry_after.and_then(|after| time::Duration::try_from(after).ok());
        let mut earliest: Option<OffsetDateTime> = None;
        for (attempts, deliveries) in by_attempts {
            let jitter = rand::rng().random::<f64>();
            let next = self.config.retry.next_attempt(
                attempts + 1,
                OffsetDateTime::now_utc(),
                jitter,
                retry_after,
            );
            earliest = Some(earliest.map_or(next, |earliest| earliest.min(next)));
            self.queue.reschedule(id, &deliveries, next, error).await?;
            metrics::counter!("pulsestream_deliveries_total", "destination" => label.to_owned(), "outcome" => "retried")
                .increment(deliveries.len() as u64);
        }
        Ok((earliest, dead_lettered))
    }

    async fn circuit_changed(
        &self,
        circuit: Circuit,
        error: Option<&str>,
        label: &str,
    ) -> Result<(), StoreError> {
        let id = self.destination.id;
        match circuit {
            Circuit::Closed => {
                tracing::info!(destination_id = %id, "circuit closed: the destination answers again")
            }
            _ => {
                tracing::warn!(destination_id = %id, error = error.unwrap_or_default(), "circuit open: pausing deliveries")
            }
        }
        metrics::gauge!("pulsestream_delivery_circuit_open", "destination" => label.to_owned())
            .set(if circuit == Circuit::Closed { 0.0 } else { 1.0 });
        self.queue.record_circuit(id, circuit, error).await
    }
}

/// The record of one attempt to send `events` to a destination.
fn attempt_of(
    destination: &Destination,
    events: Vec<pulsestream_core::EventId>,
    outcome: &SendOutcome,
    took: Duration,
    next_retry_at: Option<OffsetDateTime>,
    dead_lettered: u32,
) -> Attempt {
    let (outcome, status, error) = match outcome {
        SendOutcome::Delivered { status } => (AttemptOutcome::Delivered, *status, None),
        SendOutcome::Gone => (AttemptOutcome::Gone, Some(410), None),
        SendOutcome::TooLarge { error, status } => {
            (AttemptOutcome::TooLarge, *status, Some(error.clone()))
        }
        SendOutcome::Failed { error, status, .. } => {
            (AttemptOutcome::Failed, *status, Some(error.clone()))
        }
    };
    Attempt {
        id: uuid::Uuid::now_v7(),
        tenant: destination.tenant,
        destination: destination.id,
        at: OffsetDateTime::now_utc(),
        events,
        outcome,
        status,
        error,
        latency_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        next_retry_at,
        dead_lettered,
        test: false,
    }
}

/// Sends test events: one made-up event, sent once through the destination's sink, its
/// outcome recorded as a test attempt (no queue, no retry, no dead letter).
#[derive(Debug)]
pub struct Tester {
    sink: Arc<dyn Sink>,
    activity: Arc<dyn ActivityStore>,
}

impl Tester {
    pub fn new(sink: Arc<dyn Sink>, activity: Arc<dyn ActivityStore>) -> Self {
        Self { sink, activity }
    }
}

#[async_trait::async_trait]
impl pulsestream_store::TestSend for Tester {
    async fn send_test(&self, destination: &Destination) -> Result<Attempt, StoreError> {
        let now = OffsetDateTime::now_utc();
        let id = pulsestream_core::EventId::from_parts(
            now.unix_timestamp_nanos().div_euclid(1_000) as i64,
            rand::rng().random(),
        );
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let json = serde_json::json!({
            "id": id.to_string(),
            "event_id": format!("test-{id}"),
            "event_type": "pulsestream.test",
            "source": "pulsestream",
            "timestamp": stamp,
            "received_at": stamp,
            "payload": {"message": "A test event from PulseStream: it is not stored."}
        });
        let delivery = Delivery {
            tenant: destination.tenant,
            event: id,
            attempts: 0,
            due_micros: 0,
            json: json.to_string().into_bytes(),
            order: None,
        };
        let started = Instant::now();
        let outcome = self
            .sink
            .send(destination, std::slice::from_ref(&delivery))
            .await;
        let mut attempt = attempt_of(
            destination,
            Vec::new(),
            &outcome,
            started.elapsed(),
            None,
            0,
        );
        attempt.test = true;
        self.activity.record_attempt(&attempt).await?;
        Ok(attempt)
    }
}

/// A batch cut in two, first half first.
fn halves(mut batch: Vec<Delivery>) -> [Vec<Delivery>; 2] {
    let second = batch.split_off(batch.len() / 2);
    [batch, second]
}

/// The longest run of `due` whose events' bytes fit `cap` (one event at least), and the rest.
fn within_bytes(mut due: Vec<Delivery>, cap: usize) -> (Vec<Delivery>, Vec<Delivery>) {
    let mut total = 0usize;
    let fits = due
        .iter()
        .position(|delivery| {
            total = total.saturating_add(delivery.json.len() + 1);
            total > cap
        })
        .unwrap_or(due.len())
        .max(1);
    let rest = due.split_off(fits.min(due.len()));
    (due, rest)
}

fn order_key(delivery: &Delivery) -> Option<i64> {
    delivery.order.map(|order| order.key)
}

enum Step {
    Continue,
    /// Wait this long (the circuit is open).
    Idle(Duration),
    /// Nothing to claim: sleep until woken or the next entry is due.
    Drained,
    Stop,
}
