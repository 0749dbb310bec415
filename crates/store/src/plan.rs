//! The rules that decide a group commit, written once for every store.
//!
//! A *group* is the requests a store commits together (one fjall batch, one PostgreSQL
//! transaction). Per request, in order:
//!
//! - An `Idempotency-Key` used by an earlier request of the group, or recorded within
//!   [`IDEMPOTENCY_WINDOW`], *replays* that request's statuses when the body is the same
//!   and refuses the request (`KeyReused`, 422) when it is not; nothing of it is stored.
//! - Otherwise each event is decided. The first copy of an event in the group (same tenant
//!   and `event_id`, or the event's own id when it has none) is the store's to decide
//!   against what it holds: a duplicate or a conflict of a stored event, or accepted now.
//!   A later copy is a duplicate of the first (same content) or a conflict with it when
//!   the first was accepted, and is compared with the stored event when it was not.
//! - A request with a key that was decided event by event gets its outcome recorded under
//!   the key, in the same commit.
//!
//! The module does no I/O. A store makes a [`GroupPlan`] with a lookup of recorded keys,
//! stores what the plan's first copies need (the embedded writer looks each one up; the
//! PostgreSQL store inserts them all with `ON CONFLICT DO NOTHING`), then has the plan
//! [`GroupPlan::decide`] every status through its [`Decide`].

use std::collections::HashMap;
use std::hash::Hash;

use pulsestream_core::{EventId, TenantId};
use time::Duration;

use crate::record::same_content;
use crate::{AppendBatch, AppendOutcome, AppendStatus, IdempotencyRecord, StoreError};

/// How long an `Idempotency-Key`'s outcome is kept and replayed.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::hours(24);

/// How one request of a group is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestPlan {
    /// Its key is recorded for the same body: these statuses again, nothing stored.
    Replay(Vec<AppendStatus>),
    /// Its key is recorded, or used earlier in the group, for another body.
    KeyReused,
    /// An earlier request of the group has the same key and body: its answer.
    SameAs(usize),
    /// One plan per event.
    Events(Vec<EventPlan>),
}

/// How one event of a request is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventPlan {
    /// The group's first copy of this event: the store decides it.
    First,
    /// A later copy of the event first seen at (request, index).
    CopyOf { request: usize, index: usize },
}

/// The plan of a group: one [`RequestPlan`] per request, in order.
#[derive(Debug)]
pub(crate) struct GroupPlan {
    pub requests: Vec<RequestPlan>,
}

/// A store's answers for what the plan leaves to it.
pub(crate) trait Decide {
    /// The group's first copy of the event at (request, index): `Duplicate` or `Conflict`
    /// of what is stored, or `Accepted` (stored by this commit). Called in input order.
    fn first(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError>;

    /// A later copy of an event whose first copy was not accepted: compared with the
    /// stored event (which exists, since the first copy was a duplicate or a conflict).
    fn against_stored(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError>;
}

/// A decided group: one outcome per request, and the records to commit with it.
#[derive(Debug)]
pub(crate) struct Decided {
    pub outcomes: Vec<Result<AppendOutcome, StoreError>>,
    /// (request, record) for each request with a key whose events were decided.
    pub records: Vec<(usize, IdempotencyRecord)>,
    /// (request, id) of each event decided a duplicate of a stored one: a client's retry,
    /// which the live tail shows (a replayed or twin request is not a new retry).
    pub duplicates: Vec<(usize, EventId)>,
}

impl GroupPlan {
    /// Plans a group.
    ///
    /// `keys[r][i]` names event `i` of request `r` (equal keys are copies of one event, so
    /// a key must include the tenant). `recorded(r)` returns what the store holds under
    /// request `r`'s `Idempotency-Key`, whatever its age; it is asked only for requests
    /// with a key that no earlier request of the group used.
    ///
    /// # Errors
    /// What `recorded` fails with.
    pub fn new<K: Hash + Eq>(
        batches: &[&AppendBatch],
        keys: &[Vec<K>],
        mut recorded: impl FnMut(usize) -> Result<Option<IdempotencyRecord>, StoreError>,
    ) -> Result<Self, StoreError> {
        let events: usize = keys.iter().map(Vec::len).sum();
        let mut first_of: HashMap<&K, (usize, usize)> = HashMap::with_capacity(events);
        let mut claimed: HashMap<(TenantId, &str), usize> = HashMap::new();
        let mut requests = Vec::with_capacity(batches.len());
        for (request, (batch, keys)) in batches.iter().zip(keys).enumerate() {
            if let Some(claim) = &batch.idempotency {
                let same_body = |hash: u128| hash == claim.request_hash;
                if let Some(&twin) = claimed.get(&(batch.tenant, claim.key.as_str())) {
                    let twin_hash = batches[twin]
                        .idempotency
                        .as_ref()
                        .map(|twin| twin.request_hash);
                    requests.push(if twin_hash.is_some_and(same_body) {
                        RequestPlan::SameAs(twin)
                    } else {
                        RequestPlan::KeyReused
                    });
                    continue;
                }
                let live = recorded(request)?
                    .filter(|record| record.created_at + IDEMPOTENCY_WINDOW > batch.received_at);
                if let Some(record) = live {
                    requests.push(if same_body(record.request_hash) {
                        RequestPlan::Replay(record.statuses)
                    } else {
                        RequestPlan::KeyReused
                    });
                    continue;
                }
                claimed.insert((batch.tenant, claim.key.as_str()), request);
            }
            let plans = keys
                .iter()
                .enumerate()
                .map(|(index, key)| match first_of.get(key) {
                    Some(&(request, index)) => EventPlan::CopyOf { request, index },
                    None => {
                        first_of.insert(key, (request, index));
                        EventPlan::First
                    }
                })
                .collect();
            requests.push(RequestPlan::Events(plans));
        }
        Ok(Self { requests })
    }

    /// The (request, index) of every first copy, in input order: what the store decides.
    pub fn firsts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.requests
            .iter()
            .enumerate()
            .filter_map(|(request, plan)| match plan {
                RequestPlan::Events(events) => Some((request, events)),
                _ => None,
            })
            .flat_map(|(request, events)| {
                events
                    .iter()
                    .enumerate()
                    .filter(|(_, plan)| **plan == EventPlan::First)
                    .map(move |(index, _)| (request, index))
            })
    }

    /// Decides every status, asking `store` for what the plan leaves to it.
    ///
    /// # Errors
    /// What `store` fails with: the group cannot be committed.
    pub fn decide(
        &self,
        batches: &[&AppendBatch],
        store: &mut impl Decide,
    ) -> Result<Decided, StoreError> {
        let mut statuses: Vec<Vec<AppendStatus>> = Vec::with_capacity(batches.len());
        let mut records = Vec::new();
        let mut duplicates = Vec::new();
        for (request, (batch, plan)) in batches.iter().zip(&self.requests).enumerate() {
            let decided = match plan {
                RequestPlan::Replay(recorded) => recorded.clone(),
                RequestPlan::SameAs(twin) => statuses[*twin].clone(),
                RequestPlan::KeyReused => Vec::new(),
                RequestPlan::Events(events) => {
                    let mut decided = Vec::with_capacity(events.len());
                    for (index, event) in events.iter().enumerate() {
                        let status = match *event {
                            EventPlan::First => store.first(request, index)?,
                            EventPlan::CopyOf {
                                request: first_request,
                                index: first_index,
                            } => {
                                let first_status = if first_request == request {
                                    decided[first_index]
                                } else {
                                    statuses[first_request][first_index]
                                };
                                match first_status {
                                    AppendStatus::Accepted(id) => {
                                        let first = &batches[first_request].events[first_index];
                                        if same_content(first, &batch.events[index]) {
                                            AppendStatus::Duplicate(id)
                                        } else {
                                            AppendStatus::Conflict(id)
                                        }
                                    }
                                    _ => store.against_stored(request, index)?,
                                }
                            }
                        };
                        if let AppendStatus::Duplicate(id) = status {
                            duplicates.push((request, id));
                        }
                        decided.push(status);
                    }
                    if let Some(claim) = &batch.idempotency {
                        records.push((
                            request,
                            IdempotencyRecord {
                                request_hash: claim.request_hash,
                                created_at: batch.received_at,
                                statuses: decided.clone(),
                            },
                        ));
                    }
                    decided
                }
            };
            statuses.push(decided);
        }
        let outcomes = statuses
            .into_iter()
            .zip(&self.requests)
            .map(|(statuses, plan)| match plan {
                RequestPlan::KeyReused => Err(StoreError::IdempotencyKeyReused),
                _ => Ok(AppendOutcome { statuses }),
            })
            .collect();
        Ok(Decided {
            outcomes,
            records,
            duplicates,
        })
    }
}

#[cfg(test)]
mod tests {
    use pulsestream_core::{EventId, NewEvent};
    use time::OffsetDateTime;

    use super::*;
    use crate::IdempotencyClaim;

    /// A store in memory: events by (tenant, event_id), records by (tenant, key).
    #[derive(Default)]
    struct Memory {
        events: HashMap<(TenantId, String), (EventId, NewEvent)>,
        records: HashMap<(TenantId, String), IdempotencyRecord>,
        next: u128,
    }

    struct Group<'a> {
        memory: &'a mut Memory,
        batches: &'a [&'a AppendBatch],
        /// What this commit stores, applied by `commit`.
        stored: Vec<((TenantId, String), (EventId, NewEvent))>,
    }

    fn key_of(batch: &AppendBatch, index: usize) -> (TenantId, String) {
        let event_id = batch.events[index].event_id.clone();
        // An event without event_id is its own (no two share one in these tests).
        (
            batch.tenant,
            event_id.unwrap_or_else(|| format!("own-{index}-{}", rand_u64())),
        )
    }

    fn rand_u64() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    impl Decide for Group<'_> {
        fn first(&mut self, request: usize, index: usize) -> Result<AppendStatus, StoreError> {
            let batch = self.batches[request];
            let key = key_of(batch, index);
            if batch.events[index].event_id.is_some()
                && let Some(status) = self.stored_status(&key, &batch.events[index])
            {
                return Ok(status);
            }
            self.memory.next += 1;
            let id = EventId(uuid::Uuid::from_u128(self.memory.next));
            self.stored.push((key, (id, batch.events[index].clone())));
            Ok(AppendStatus::Accepted(id))
        }

        fn against_stored(
            &mut self,
            request: usize,
            index: usize,
        ) -> Result<AppendStatus, StoreError> {
            let batch = self.batches[request];
            self.stored_status(&key_of(batch, index), &batch.events[index])
                .ok_or_else(|| StoreError::Corrupt("not stored".into()))
        }
    }

    impl Group<'_> {
        fn stored_status(
            &self,
            key: &(TenantId, String),
            event: &NewEvent,
        ) -> Option<AppendStatus> {
            self.memory.events.get(key).map(|(id, stored)| {
                if same_content(stored, event) {
                    AppendStatus::Duplicate(*id)
                } else {
                    AppendStatus::Conflict(*id)
                }
            })
        }
    }

    /// Plans, decides and commits a group the way a store does.
    fn commit(memory: &mut Memory, batches: &[AppendBatch]) -> Vec<Result<AppendOutcome, String>> {
        let batches: Vec<&AppendBatch> = batches.iter().collect();
        let keys: Vec<Vec<(TenantId, Option<String>, usize)>> = batches
            .iter()
            .enumerate()
            .map(|(request, batch)| {
                batch
                    .events
                    .iter()
                    .enumerate()
                    .map(|(index, event)| match &event.event_id {
                        Some(event_id) => (batch.tenant, Some(event_id.clone()), 0),
                        None => (batch.tenant, None, request * 10_000 + index),
                    })
                    .collect()
            })
            .collect();
        let plan = GroupPlan::new(&batches, &keys, |request| {
            let batch = batches[request];
            let claim = batch.idempotency.as_ref().expect("asked only with a key");
            Ok(memory
                .records
                .get(&(batch.tenant, claim.key.clone()))
                .cloned())
        })
        .unwrap();
        let mut group = Group {
            memory,
            batches: &batches,
            stored: Vec::new(),
        };
        let decided = plan.decide(&batches, &mut group).unwrap();
        let stored = std::mem::take(&mut group.stored);
        memory.events.extend(stored);
        for (request, record) in decided.records {
            let batch = batches[request];
            let key = batch.idempotency.as_ref().unwrap().key.clone();
            memory.records.insert((batch.tenant, key), record);
        }
        decided
            .outcomes
            .into_iter()
            .map(|outcome| outcome.map_err(|err| err.to_string()))
            .collect()
    }

    fn event(event_id: Option<&str>, payload: &str) -> NewEvent {
        let id = event_id.map_or(String::new(), |id| format!(r#""event_id":"{id}","#));
        NewEvent::from_json(&format!(r#"{{{id}"event_type":"t","payload":{payload}}}"#)).unwrap()
    }

    fn request(tenant: TenantId, events: Vec<NewEvent>) -> AppendBatch {
        AppendBatch {
            tenant,
            events,
            received_at: OffsetDateTime::UNIX_EPOCH + Duration::days(100),
            idempotency: None,
        }
    }

    fn keyed(batch: AppendBatch, key: &str, request_hash: u128) -> AppendBatch {
        AppendBatch {
            idempotency: Some(IdempotencyClaim {
                key: key.into(),
                request_hash,
            }),
            ..batch
        }
    }

    fn statuses(outcome: &Result<AppendOutcome, String>) -> Vec<&'static str> {
        outcome
            .as_ref()
            .unwrap()
            .statuses
            .iter()
            .map(|status| match status {
                AppendStatus::Accepted(_) => "accepted",
                AppendStatus::Duplicate(_) => "duplicate",
                AppendStatus::Conflict(_) => "conflict",
            })
            .collect()
    }

    fn id(status: AppendStatus) -> EventId {
        match status {
            AppendStatus::Accepted(id)
            | AppendStatus::Duplicate(id)
            | AppendStatus::Conflict(id) => id,
        }
    }

    #[test]
    fn a_stored_event_id_is_a_duplicate_with_the_same_content_and_a_conflict_otherwise() {
        let mut memory = Memory::default();
        let tenant = TenantId::random();
        let first = commit(
            &mut memory,
            &[request(tenant, vec![event(Some("a"), "{}")])],
        );
        let again = commit(
            &mut memory,
            &[request(
                tenant,
                vec![event(Some("a"), "{}"), event(Some("a"), r#"{"x":1}"#)],
            )],
        );
        assert_eq!(statuses(&first[0]), ["accepted"]);
        assert_eq!(statuses(&again[0]), ["duplicate", "conflict"]);
        let stored = id(first[0].as_ref().unwrap().statuses[0]);
        assert!(
            again[0]
                .as_ref()
                .unwrap()
                .statuses
                .iter()
                .all(|s| id(*s) == stored)
        );
        // Another tenant's "a" is another event.
        let other = commit(
            &mut memory,
            &[request(TenantId::random(), vec![event(Some("a"), "{}")])],
        );
        assert_eq!(statuses(&other[0]), ["accepted"]);
    }

    #[test]
    fn the_first_copy_in_a_group_wins_across_requests() {
        let mut memory = Memory::default();
        let tenant = TenantId::random();
        let outcomes = commit(
            &mut memory,
            &[
                request(tenant, vec![event(Some("a"), "{}"), event(Some("a"), "{}")]),
                request(
                    tenant,
                    vec![event(Some("a"), r#"{"x":1}"#), event(Some("b"), "{}")],
                ),
                request(tenant, vec![event(Some("b"), "{}")]),
            ],
        );
        assert_eq!(statuses(&outcomes[0]), ["accepted", "duplicate"]);
        assert_eq!(statuses(&outcomes[1]), ["conflict", "accepted"]);
        assert_eq!(statuses(&outcomes[2]), ["duplicate"]);
        assert_eq!(memory.events.len(), 2);
    }

    #[test]
    fn a_copy_of_an_event_that_was_stored_before_is_compared_with_the_stored_one() {
        let mut memory = Memory::default();
        let tenant = TenantId::random();
        commit(
            &mut memory,
            &[request(tenant, vec![event(Some("a"), "{}")])],
        );
        // The first copy is a conflict; the second has the stored content: a duplicate.
        let outcomes = commit(
            &mut memory,
            &[request(
                tenant,
                vec![event(Some("a"), r#"{"x":1}"#), event(Some("a"), "{}")],
            )],
        );
        assert_eq!(statuses(&outcomes[0]), ["conflict", "duplicate"]);
    }

    #[test]
    fn events_without_event_id_are_each_accepted() {
        let mut memory = Memory::default();
        let outcomes = commit(
            &mut memory,
            &[request(
                TenantId::random(),
                vec![event(None, "{}"), event(None, "{}")],
            )],
        );
        assert_eq!(statuses(&outcomes[0]), ["accepted", "accepted"]);
    }

    #[test]
    fn a_recorded_key_replays_for_its_body_and_refuses_another() {
        let mut memory = Memory::default();
        let tenant = TenantId::random();
        let body = || request(tenant, vec![event(None, "{}")]);
        let first = commit(&mut memory, &[keyed(body(), "k", 1)]);
        let replay = commit(&mut memory, &[keyed(body(), "k", 1)]);
        let other = commit(&mut memory, &[keyed(body(), "k", 2)]);
        assert_eq!(replay[0], first[0]);
        assert_eq!(other[0], Err(StoreError::IdempotencyKeyReused.to_string()));
        assert_eq!(memory.events.len(), 1, "a replay stores nothing");
        // Another tenant's "k" is its own key.
        let elsewhere = commit(
            &mut memory,
            &[keyed(
                request(TenantId::random(), vec![event(None, "{}")]),
                "k",
                2,
            )],
        );
        assert_eq!(statuses(&elsewhere[0]), ["accepted"]);
    }

    #[test]
    fn a_key_recorded_longer_ago_than_the_window_is_free_again() {
        let mut memory = Memory::default();
        let tenant = TenantId::random();
        let at = |age: Duration| {
            let mut batch = keyed(request(tenant, vec![event(None, "{}")]), "k", 1);
            batch.received_at += age;
            batch
        };
        commit(&mut memory, &[at(Duration::ZERO)]);
        let just_inside = commit(
            &mut memory,
            &[at(IDEMPOTENCY_WINDOW - Duration::seconds(1))],
        );
        assert_eq!(
            memory.events.len(),
            1,
            "replayed inside the window: {just_inside:?}"
        );
        let at_the_edge = commit(&mut memory, &[at(IDEMPOTENCY_WINDOW)]);
        assert_eq!(statuses(&at_the_edge[0]), ["accepted"]);
        assert_eq!(
            memory.events.len(),
            2,
            "decided again once the window has passed"
        );
        // ... and recorded again, from the new request's time.
        assert_eq!(
            memory.records[&(tenant, "k".to_owned())].created_at,
            at(IDEMPOTENCY_WINDOW).received_at
        );
    }

    #[test]
    fn twins_in_one_group_share_the_first_answer_or_are_refused() {
        let mut memory = Memory::default();
        let tenant = TenantId::random();
        let body = || request(tenant, vec![event(None, "{}")]);
        let outcomes = commit(
            &mut memory,
            &[
                keyed(body(), "k", 1),
                keyed(body(), "k", 1),
                keyed(body(), "k", 2),
            ],
        );
        assert_eq!(outcomes[1], outcomes[0]);
        assert_eq!(
            outcomes[2],
            Err(StoreError::IdempotencyKeyReused.to_string())
        );
        assert_eq!(memory.events.len(), 1);
        assert_eq!(memory.records.len(), 1);
    }

    #[test]
    fn only_requests_decided_event_by_event_are_recorded() {
        let tenant = TenantId::random();
        let body = || request(tenant, vec![event(None, "{}")]);
        let batches = [
            keyed(body(), "new", 1),
            body(),
            keyed(body(), "old", 1),
            keyed(body(), "new", 1),
        ];
        let batches: Vec<&AppendBatch> = batches.iter().collect();
        let keys: Vec<Vec<usize>> = (0..4).map(|request| vec![request]).collect();
        let recorded = IdempotencyRecord {
            request_hash: 1,
            created_at: batches[0].received_at,
            statuses: Vec::new(),
        };
        let plan = GroupPlan::new(&batches, &keys, |request| {
            Ok((request == 2).then(|| recorded.clone()))
        })
        .unwrap();
        assert_eq!(
            plan.requests,
            [
                RequestPlan::Events(vec![EventPlan::First]),
                RequestPlan::Events(vec![EventPlan::First]),
                RequestPlan::Replay(Vec::new()),
                RequestPlan::SameAs(0),
            ]
        );
        assert_eq!(plan.firsts().collect::<Vec<_>>(), [(0, 0), (1, 0)]);
    }
}
