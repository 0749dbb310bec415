//! Waking delivery workers when their tenant's events are stored, so that an idle
//! destination costs nothing: its worker sleeps until an event is enqueued for its tenant or
//! its queue's next entry falls due, instead of polling.
//!
//! Each store signals its own appends (and dead-letter replays) as they commit. On
//! PostgreSQL every node runs a worker for every destination, so the node that stored an
//! event has one awake to deliver it; no signal needs to cross nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pulsestream_core::{DestinationId, TenantId};
use tokio::sync::Notify;

/// A tenant's workers: each destination's signal.
type Workers = Vec<(DestinationId, Arc<Notify>)>;

/// The workers waiting for their tenants' events.
#[derive(Debug, Default)]
pub struct Wakeups {
    waiting: Mutex<HashMap<TenantId, Workers>>,
}

impl Wakeups {
    /// The signal of one destination's worker (the same one for every call).
    pub fn register(&self, tenant: TenantId, destination: DestinationId) -> Arc<Notify> {
        let mut waiting = self.waiting.lock().expect("wakeups lock is never poisoned");
        let workers = waiting.entry(tenant).or_default();
        if let Some((_, notify)) = workers.iter().find(|(id, _)| *id == destination) {
            return notify.clone();
        }
        let notify = Arc::new(Notify::new());
        workers.push((destination, notify.clone()));
        notify
    }

    /// Forgets a worker that stopped.
    pub fn unregister(&self, tenant: TenantId, destination: DestinationId) {
        let mut waiting = self.waiting.lock().expect("wakeups lock is never poisoned");
        if let Some(workers) = waiting.get_mut(&tenant) {
            workers.retain(|(id, _)| *id != destination);
            if workers.is_empty() {
                waiting.remove(&tenant);
            }
        }
    }

    /// Events of `tenant` were stored (and enqueued for its matching destinations): wakes
    /// each of its workers, or leaves it a permit if it is busy.
    pub fn stored(&self, tenant: TenantId) {
        let waiting = self.waiting.lock().expect("wakeups lock is never poisoned");
        for (_, notify) in waiting.get(&tenant).into_iter().flatten() {
            notify.notify_one();
        }
    }

    /// Wakes one destination's worker (its dead letters were put back in its queue).
    pub fn wake(&self, destination: DestinationId) {
        let waiting = self.waiting.lock().expect("wakeups lock is never poisoned");
        for (id, notify) in waiting.values().flatten() {
            if *id == destination {
                notify.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_event_wakes_its_tenants_workers_even_when_they_are_busy() {
        let wakeups = Wakeups::default();
        let (tenant, other) = (TenantId::random(), TenantId::random());
        let first = wakeups.register(tenant, DestinationId::random());
        let second = wakeups.register(tenant, DestinationId::random());
        let elsewhere = wakeups.register(other, DestinationId::random());
        // Nobody is waiting yet: the permit is kept.
        wakeups.stored(tenant);
        first.notified().await;
        second.notified().await;
        let timeout = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(timeout, elsewhere.notified())
                .await
                .is_err(),
            "another tenant's worker sleeps on"
        );
    }
}
