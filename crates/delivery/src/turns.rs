//! Store turns for delivery workers: at most a few of them use the store at once.
//!
//! Thousands of destinations can wake together (one event fanned out to each). Without a
//! bound, each worker's claim and outcome records would take a blocking thread of the
//! embedded store, or a pooled connection of PostgreSQL, at once, and a search or an ingest
//! arriving then would wait behind all of them. Workers take turns here instead, waiting as
//! cheap async tasks; sends are not counted (they do not touch the store), so a slow receiver
//! holds no turn.

use std::sync::Arc;

use async_trait::async_trait;
use pulsestream_core::{DestinationId, EventId};
use pulsestream_store::{
    Circuit, DeadLetter, Delivery, DeliveryQueue, DeliveryStats, QueuePosition, StoreError, Wakeups,
};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// A delivery queue whose calls take a turn first.
#[derive(Debug)]
pub(crate) struct Turns {
    queue: Arc<dyn DeliveryQueue>,
    turns: Semaphore,
}

impl Turns {
    pub fn new(queue: Arc<dyn DeliveryQueue>, at_once: usize) -> Self {
        Self {
            queue,
            turns: Semaphore::new(at_once.max(1)),
        }
    }

    async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.turns
            .acquire()
            .await
            .expect("the turns semaphore is never closed")
    }
}

#[async_trait]
impl DeliveryQueue for Turns {
    async fn claim_due(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        after: Option<QueuePosition>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let _turn = self.turn().await;
        self.queue.claim_due(destination, now, after, limit).await
    }

    async fn claim_ordered(
        &self,
        destination: DestinationId,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let _turn = self.turn().await;
        self.queue.claim_ordered(destination, now, limit).await
    }

    async fn next_due(
        &self,
        destination: DestinationId,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let _turn = self.turn().await;
        self.queue.next_due(destination).await
    }

    fn wakeups(&self) -> Arc<Wakeups> {
        self.queue.wakeups()
    }

    async fn release(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        let _turn = self.turn().await;
        self.queue.release(destination, deliveries).await
    }

    async fn record_delivered(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        let _turn = self.turn().await;
        self.queue.record_delivered(destination, deliveries).await
    }

    async fn reschedule(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        due: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let _turn = self.turn().await;
        self.queue
            .reschedule(destination, deliveries, due, error)
            .await
    }

    async fn dead_letter(
        &self,
        destination: DestinationId,
        deliveries: &[Delivery],
        error: &str,
    ) -> Result<(), StoreError> {
        let _turn = self.turn().await;
        self.queue.dead_letter(destination, deliveries, error).await
    }

    async fn record_circuit(
        &self,
        destination: DestinationId,
        circuit: Circuit,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let _turn = self.turn().await;
        self.queue.record_circuit(destination, circuit, error).await
    }

    async fn delivery_stats(
        &self,
        destination: DestinationId,
    ) -> Result<DeliveryStats, StoreError> {
        let _turn = self.turn().await;
        self.queue.delivery_stats(destination).await
    }

    async fn dead_letters(
        &self,
        destination: DestinationId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let _turn = self.turn().await;
        self.queue.dead_letters(destination, limit).await
    }

    async fn replay_dead_letters(
        &self,
        destination: DestinationId,
        events: Option<&[EventId]>,
    ) -> Result<usize, StoreError> {
        let _turn = self.turn().await;
        self.queue.replay_dead_letters(destination, events).await
    }

    async fn purge_dead_letters(&self, destination: DestinationId) -> Result<usize, StoreError> {
        let _turn = self.turn().await;
        self.queue.purge_dead_letters(destination).await
    }
}
