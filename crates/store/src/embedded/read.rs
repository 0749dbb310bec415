//! Reads: one event by id, and searches driven by the best index for the query.
//!
//! A search walks one index in id order, which is time order — the dedup index for
//! `event_id`, the type index for `event_type` (merging one range per requested type),
//! otherwise the events themselves — within the time bounds and after the cursor, loads
//! each candidate and keeps those that pass `event_matches`. Full text and payload paths
//! are narrowed by the search index instead ([`indexed`]), merged with the events committed
//! since the index's last commit, so everything committed is visible either way.

use std::ops::Bound;

use pulsestream_core::{EventId, TenantId};

use super::Keyspaces;
use super::index::SearchIndex;
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
    let (json, _) = ks.segments.event_json(&value)?;
    Ok(Some(StoredEvent {
        id,
        json: json.into_owned(),
    }))
}

pub(crate) fn search(
    ks: &Keyspaces,
    index: Option<&SearchIndex>,
    tenant: TenantId,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    // A tenant without a number has stored nothing.
    let Some(tenant) = ks.numbers.get(tenant) else {
        return Ok(SearchPage::new(Vec::new(), false));
    };
    if query.event_id.is_none()
        && let Some(index) = index
        && let Some(narrowing) = index.narrowing(tenant, query)
    {
        return indexed(ks, index, narrowing.as_ref(), tenant, query);
    }
    let mut page = Page::new(query);
    page.fill(ks, tenant, candidates(ks, tenant, query)?)?;
    Ok(page.finish())
}

/// The events of the tenant in the query's order, narrowed by the best key order.
fn candidates(
    ks: &Keyspaces,
    tenant: TenantNo,
    query: &SearchQuery,
) -> Result<Candidates, StoreError> {
    Ok(if let Some(event_id) = &query.event_id {
        Box::new(by_event_id(ks, tenant, event_id)?.into_iter().map(Ok))
    } else if !query.event_types.is_empty() {
        let ranges = query
            .distinct_types()
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
    })
}

/// What a candidate whose event is not stored means.
#[derive(Clone, Copy)]
enum Missing {
    /// A key order of the same store points to it: the store is damaged.
    Corrupt,
    /// The search index or the tail names it: deleted since (retention, erasure).
    Gone,
}

/// A page being filled, candidate by candidate, in the query's order.
struct Page<'q> {
    query: &'q SearchQuery,
    events: Vec<StoredEvent>,
    bytes: usize,
    more: bool,
}

impl<'q> Page<'q> {
    fn new(query: &'q SearchQuery) -> Self {
        Self {
            query,
            events: Vec::with_capacity(query.limit.min(1_000)),
            bytes: 0,
            more: false,
        }
    }

    /// Looks at one candidate; false once the page is done (full, and another event
    /// matches).
    fn consider(
        &mut self,
        ks: &Keyspaces,
        tenant: TenantNo,
        id: EventId,
        missing: Missing,
    ) -> Result<bool, StoreError> {
        if !within(self.query, id) {
            return Ok(true);
        }
        let Some(stored) = stored(ks, tenant, id)? else {
            return match missing {
                Missing::Corrupt => Err(StoreError::Corrupt(format!(
                    "index entry points to missing event {id}"
                ))),
                Missing::Gone => Ok(true),
            };
        };
        if !event_matches(&stored.json, self.query) {
            return Ok(true);
        }
        if self.events.len() == self.query.limit
            || over_bytes(self.query, self.bytes, stored.json.len(), &self.events)
        {
            self.more = true;
            return Ok(false);
        }
        self.bytes += stored.json.len();
        self.events.push(stored);
        Ok(true)
    }

    /// Considers the store's own candidates in order until the page is done.
    fn fill(
        &mut self,
        ks: &Keyspaces,
        tenant: TenantNo,
        candidates: Candidates,
    ) -> Result<(), StoreError> {
        for candidate in candidates {
            if !self.consider(ks, tenant, candidate?, Missing::Corrupt)? {
                break;
            }
        }
        Ok(())
    }

    fn finish(self) -> SearchPage {
        SearchPage::new(self.events, self.more)
    }
}

/// Unindexed events beyond which a search scans instead of merging them (an index being
/// rebuilt, say).
const UNINDEXED_MAX: usize = 200_000;

/// A search narrowed by the search index (full text, payload paths).
///
/// When every part of the query is common enough that a short scan should fill the page, the
/// events are first scanned in order a little (a filter most events pass fills its page
/// sooner that way than by collecting every match from the index); then the index's
/// candidates past that point, merged with the events committed after the index's position,
/// are read in order.
fn indexed(
    ks: &Keyspaces,
    index: &SearchIndex,
    narrowing: &dyn tantivy::query::Query,
    tenant: TenantNo,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    let view = index.view();
    let mut page = Page::new(query);
    let mut from = query.cursor.map(|Cursor(id)| id);
    // Scan first when the filters are common enough that a scan of at most `budget` events
    // is expected to fill the page: at least (limit + 1) / budget of the tenant's events.
    let budget = 2_000 + 4 * query.limit;
    let documents = index.documents_of(&view, tenant);
    let dense = (documents.saturating_mul(query.limit as u64 + 1) / budget as u64).max(1);
    if index.candidates_at_most(&view, tenant, query, dense) >= dense {
        let mut scanned = 0usize;
        for candidate in candidates(ks, tenant, query)? {
            let id = candidate?;
            if !page.consider(ks, tenant, id, Missing::Corrupt)? {
                return Ok(page.finish());
            }
            from = Some(id);
            scanned += 1;
            if scanned == budget {
                break;
            }
        }
        if scanned < budget {
            return Ok(page.finish());
        }
    }
    let past = |id: EventId, from: Option<EventId>| {
        from.is_none_or(|from| match query.order {
            Order::Desc => id < from,
            Order::Asc => id > from,
        })
    };
    let Some(mut unindexed) = unindexed(ks, tenant, view.indexed_until(tenant))? else {
        // Too far behind to merge: scan the rest.
        let mut rest = query.clone();
        rest.cursor = from.map(Cursor);
        page.fill(ks, tenant, candidates(ks, tenant, &rest)?)?;
        return Ok(page.finish());
    };
    unindexed.retain(|id| past(*id, from) && within(query, *id));
    sort_in_order(&mut unindexed, query.order);
    let mut unindexed = unindexed.into_iter().peekable();
    let low = EventId::from_parts(query.since.map_or(i64::MIN, crate::record::micros_of), 0);
    let high = query
        .until
        .map(|until| EventId::from_parts(crate::record::micros_ceil(until), 0));
    // Each round collects every match past the last one and keeps the first `keep`; candidates
    // the rule turns down (a term whose parts are all common words) make more rounds, so
    // each keeps four times as many as the last.
    let mut keep = 2 * (query.limit + 1).max(64);
    loop {
        let found = view
            .searcher
            .search(narrowing, &index.ids(query.order, from, low, high, keep))
            .map_err(super::index::index_error)?;
        let complete = found.matched <= found.ids.len() as u64;
        let boundary = found.ids.last().copied();
        let mut round = found.ids;
        // The unindexed events up to where the index's candidates of this round reach.
        while let Some(id) = unindexed.peek() {
            if !complete && boundary.is_some_and(|boundary| past(*id, Some(boundary))) {
                break;
            }
            round.push(*id);
            unindexed.next();
        }
        sort_in_order(&mut round, query.order);
        for id in round {
            if !page.consider(ks, tenant, id, Missing::Gone)? {
                return Ok(page.finish());
            }
        }
        if complete {
            return Ok(page.finish());
        }
        from = boundary;
        keep = (keep * 4).min(1 << 18);
    }
}

fn sort_in_order(ids: &mut Vec<EventId>, order: Order) {
    ids.sort_unstable();
    ids.dedup();
    if order == Order::Desc {
        ids.reverse();
    }
}

/// The tenant's events committed after the tail position `after`, or `None` when there are
/// more than [`UNINDEXED_MAX`].
fn unindexed(
    ks: &Keyspaces,
    tenant: TenantNo,
    after: i64,
) -> Result<Option<Vec<EventId>>, StoreError> {
    let mut ids = Vec::new();
    if after == i64::MAX {
        return Ok(Some(ids));
    }
    let low = keys::tail_key(tenant, after + 1);
    let high = keys::tail_key(tenant, i64::MAX);
    for entry in ks.tail.range(low..=high) {
        let value = entry.value().map_err(StoreError::unavailable)?;
        for (id, duplicate) in keys::decode_tail_value(&value)? {
            if !duplicate {
                ids.push(id);
            }
        }
        if ids.len() > UNINDEXED_MAX {
            return Ok(None);
        }
    }
    Ok(Some(ids))
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
