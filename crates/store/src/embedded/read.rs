//! Reads: one event by id, and searches driven by the best index for the query.
//!
//! A search walks one index in id order, which is time order — the dedup index for
//! `event_id`, the type index for `event_type` (merging one range per requested type),
//! otherwise the events themselves — within the time bounds and after the cursor, loads
//! each candidate and keeps those that pass `event_matches`. Everything committed is
//! visible: there is no separate indexing step to wait for.

use std::ops::Bound;

use pulsestream_core::{EventId, TenantId};

use super::Keyspaces;
use super::keys::{self, TenantNo};
use crate::search::over_bytes;
use crate::{Cursor, Order, SearchPage, SearchQuery, StoreError, StoredEvent, event_matches};

type Candidates = Box<dyn Iterator<Item = Result<EventId, StoreError>>>;

pub(crate) fn event(
    ks: &Keyspaces,
    tenant: TenantId,
    id: EventId,
) -> Result<Option<StoredEvent>, StoreError> {
    match ks.numbers.get(tenant) {
        Some(number) => stored(ks, number, id),
        None => Ok(None),
    }
}

fn stored(
    ks: &Keyspaces,
    tenant: TenantNo,
    id: EventId,
) -> Result<Option<StoredEvent>, StoreError> {
    let Some(value) = ks
        .events
        .get(keys::event_key(tenant, id))
        .map_err(StoreError::unavailable)?
    else {
        return Ok(None);
    };
    let (json, _) = keys::decode_event_value(&value)?;
    Ok(Some(StoredEvent {
        id,
        json: json.to_vec(),
    }))
}

pub(crate) fn search(
    ks: &Keyspaces,
    tenant: TenantId,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    // A tenant without a number has stored nothing.
    let Some(tenant) = ks.numbers.get(tenant) else {
        return Ok(SearchPage::new(Vec::new(), false));
    };
    let candidates: Candidates = if let Some(event_id) = &query.event_id {
        Box::new(by_event_id(ks, tenant, event_id)?.into_iter().map(Ok))
    } else if !query.event_types.is_empty() {
        let mut types: Vec<&String> = query.event_types.iter().collect();
        types.sort();
        types.dedup();
        let ranges = types
            .into_iter()
            .map(|event_type| {
                let stream = keys::type_stream(tenant, event_type);
                let value = keys::type_value(tenant, event_type);
                id_range(&ks.by_type, &stream, query, Some(value))
            })
            .collect();
        Box::new(Merge::new(ranges, query.order))
    } else {
        id_range(&ks.events, &tenant.bytes(), query, None)
    };

    let mut events = Vec::with_capacity(query.limit.min(1_000));
    let mut more = false;
    let mut bytes = 0usize;
    for candidate in candidates {
        let id = candidate?;
        if !within(query, id) {
            continue;
        }
        let Some(stored) = stored(ks, tenant, id)? else {
            return Err(StoreError::Corrupt(format!(
                "index entry points to missing event {id}"
            )));
        };
        if !event_matches(&stored.json, query) {
            continue;
        }
        if events.len() == query.limit || over_bytes(query, bytes, stored.json.len(), &events) {
            more = true;
            break;
        }
        bytes += stored.json.len();
        events.push(stored);
    }
    Ok(SearchPage::new(events, more))
}

fn by_event_id(
    ks: &Keyspaces,
    tenant: TenantNo,
    event_id: &str,
) -> Result<Option<EventId>, StoreError> {
    match ks
        .dedup
        .get(keys::hashed_key(tenant, event_id))
        .map_err(StoreError::unavailable)?
    {
        Some(value) => {
            let id = keys::decode_dedup(&value)?.0;
            // An erased event's dedup entry stays as its tombstone: nothing to find.
            let erased = ks
                .erased
                .contains_key(keys::event_key(tenant, id))
                .map_err(StoreError::unavailable)?;
            Ok((!erased).then_some(id))
        }
        None => Ok(None),
    }
}

/// Returns whether the id lies inside the query's time bounds and after its cursor.
fn within(query: &SearchQuery, id: EventId) -> bool {
    if let Some(Cursor(after)) = query.cursor {
        let past = match query.order {
            Order::Desc => id < after,
            Order::Asc => id > after,
        };
        if !past {
            return false;
        }
    }
    let micros = id.timestamp_micros();
    query
        .since
        .is_none_or(|since| micros >= crate::record::micros_of(since))
        && query
            .until
            .is_none_or(|until| micros < crate::record::micros_ceil(until))
}

/// Scans the keys `prefix` + id in the query's order, from its cursor or time bound on,
/// keeping only the entries whose value is `value` when one is given.
fn id_range(
    keyspace: &fjall::Keyspace,
    prefix: &[u8],
    query: &SearchQuery,
    value: Option<[u8; 12]>,
) -> Candidates {
    let key = |id: EventId| -> Vec<u8> { [prefix, id.as_bytes().as_slice()].concat() };
    let mut low = key(EventId::from_parts(
        query.since.map_or(i64::MIN, crate::record::micros_of),
        0,
    ));
    let mut high = match query.until {
        Some(until) => Bound::Excluded(key(EventId::from_parts(
            crate::record::micros_ceil(until),
            0,
        ))),
        None => Bound::Included(key(EventId::from_parts(i64::MAX, u64::MAX))),
    };
    if let Some(Cursor(after)) = query.cursor {
        let at = key(after);
        match query.order {
            Order::Desc => {
                let below_high = match &high {
                    Bound::Included(bound) | Bound::Excluded(bound) => at <= *bound,
                    Bound::Unbounded => true,
                };
                if below_high {
                    high = Bound::Excluded(at);
                }
            }
            Order::Asc => low = low.max(at),
        }
    }
    let range = keyspace.range::<Vec<u8>, _>((Bound::Included(low), high));
    let decode = move |entry: fjall::Guard| -> Option<Result<EventId, StoreError>> {
        let Some(wanted) = value else {
            return Some(
                entry
                    .key()
                    .map_err(StoreError::unavailable)
                    .and_then(|key| keys::id_suffix(&key)),
            );
        };
        match entry.into_inner() {
            Ok((key, found)) => (*found == wanted).then(|| keys::id_suffix(&key)),
            Err(err) => Some(Err(StoreError::unavailable(err))),
        }
    };
    match query.order {
        Order::Desc => Box::new(range.rev().filter_map(decode)),
        Order::Asc => Box::new(range.filter_map(decode)),
    }
}

/// Merges index ranges that are each in order into one ordered stream.
struct Merge {
    sources: Vec<std::iter::Peekable<Candidates>>,
    order: Order,
}

impl Merge {
    fn new(sources: Vec<Candidates>, order: Order) -> Self {
        Self {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
            order,
        }
    }
}

impl Iterator for Merge {
    type Item = Result<EventId, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, EventId)> = None;
        for (index, source) in self.sources.iter_mut().enumerate() {
            match source.peek() {
                None => continue,
                Some(Err(_)) => return source.next(),
                Some(Ok(head)) => {
                    let better = match (best, self.order) {
                        (None, _) => true,
                        (Some((_, current)), Order::Desc) => *head > current,
                        (Some((_, current)), Order::Asc) => *head < current,
                    };
                    if better {
                        best = Some((index, *head));
                    }
                }
            }
        }
        let (index, _) = best?;
        self.sources[index].next()
    }
}
