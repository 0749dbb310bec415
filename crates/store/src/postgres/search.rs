//! Searches: SQL narrows with the indexes, `event_matches` decides.
//!
//! Every filter that an index can serve becomes a condition with bound parameters: time
//! bounds and the cursor as a range of ids (ids start with the timestamp), `event_id`,
//! `event_type` and `source` by equality, and full text and payload paths as one `tsquery`
//! over the `search` column ([`document`]: the word starts and payload keys that the
//! embedded store's search index holds too), served by a GIN index. Each condition admits a
//! superset of what the filter means, and each candidate then goes through the same
//! [`event_matches`] as in the embedded store, so both stores answer alike.
//!
//! A search with a `tsquery` does not leave the plan to PostgreSQL: its estimate of how many
//! rows a prefix matches is a guess, and a wrong guess either walks the newest rows one by
//! one through millions that do not match (seconds) or sorts every match of a common term
//! for the newest hundred. It first reads the newest [`PROBE_ROWS`] candidates in id order
//! (a common filter fills the page there), then asks the GIN index for the matches inside
//! windows of ids that grow eightfold, starting from what the probe saw of the filter's
//! density, with index scans of rows one by one turned off for those statements.

use pulsestream_core::{EventId, TenantId};
use std::fmt::Write as _;

use pulsestream_core::filter::{
    path_filter_keys, payload_index_keys, text_index_starts, text_query_prefix,
};
use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Db, pg_error};
use crate::event_matches;
use crate::record::{micros_ceil, micros_of};
use crate::search::over_bytes;
use crate::{Cursor, Order, SearchPage, SearchQuery, StoreError, StoredEvent};

type Param = Box<dyn ToSql + Sync + Send>;

/// Bodies up to this size come with the candidates; larger ones are read one at a time.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// Rows an indexed search reads in id order before it asks the GIN index.
const PROBE_ROWS: i64 = 2_000;

/// The settings of the statements that ask the GIN index for a window's matches: bitmap
/// scans only, and none of the start-up costs (parallel workers, JIT compilation: 20-30 ms
/// measured) that the planner's guess of many matches would otherwise buy.
const WINDOW_SETTINGS: &str = "SET LOCAL enable_indexscan = off; SET LOCAL enable_seqscan = off; \
     SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off";

/// Settings of a search without a `tsquery`: its pages come in id order from a btree index
/// (by tenant, type or source, then id), read only as far as the page needs. Left to its
/// estimates — none on a table never analyzed, or one tenant's share of a shared table —
/// PostgreSQL chose a bitmap scan that reads every row of a type to sort them: 0.64 s for a
/// page of two types over 400,000 events, 0.55 ms with these.
const PAGE_SETTINGS: &str = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off";

/// The narrowest window of event time an indexed search asks the GIN index about, in
/// microseconds (one of the smallest [`BUCKETS`]).
const MIN_WINDOW: i64 = 1 << 20;

/// How much each window grows over the one before when it held too few matches.
const WINDOW_GROWTH: i64 = 4;

pub(super) async fn search(
    store: &Db,
    tenant: TenantId,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    let mut client = store.client().await?;
    let chunk = (query.limit + 1).clamp(100, 1_001) as i64;
    let mut page = Page::new(query);
    let after = query.cursor.map(|Cursor(id)| id);
    match index_query(query) {
        None => {
            let transaction = client.transaction().await.map_err(pg_error)?;
            transaction
                .batch_execute(PAGE_SETTINGS)
                .await
                .map_err(pg_error)?;
            let mut after = after;
            loop {
                let sql = candidates(tenant, query, after, None, None, chunk);
                match page.fill(&*transaction, tenant, &sql).await? {
                    Filled::Full => break,
                    Filled::Rows(rows, last) if rows == chunk as usize => after = last,
                    Filled::Rows(..) => break,
                }
            }
            transaction.commit().await.map_err(pg_error)?;
        }
        Some(tsquery) => {
            // The newest candidates one by one: a filter that matches often is done here.
            let probe = candidates(tenant, query, after, None, Some(&tsquery), PROBE_ROWS);
            let (rows, last) = match page.fill(&**client, tenant, &probe).await? {
                Filled::Full => return Ok(page.finish()),
                Filled::Rows(rows, last) => (rows, last),
            };
            if rows < PROBE_ROWS as usize {
                return Ok(page.finish());
            }
            let last = last.expect("a full probe read rows");
            let Some((oldest, newest)) = id_range(&**client, tenant).await? else {
                return Ok(page.finish());
            };
            // The time the tenant's events (within the query's bounds) span.
            let oldest = query
                .since
                .map_or(i64::MIN, micros_of)
                .max(oldest.timestamp_micros());
            let newest = query
                .until
                .map_or(i64::MAX, micros_ceil)
                .min(newest.timestamp_micros());
            let transaction = client.transaction().await.map_err(pg_error)?;
            transaction
                .batch_execute(WINDOW_SETTINGS)
                .await
                .map_err(pg_error)?;
            // The first window: as much event time as should hold four times the matches
            // still wanted, at the rate of events and of matches the probe saw (a probe
            // without a match counts as one; a window with too few grows fourfold).
            let start = match (after, query.order) {
                (Some(after), _) => after.timestamp_micros(),
                (None, Order::Desc) => newest,
                (None, Order::Asc) => oldest,
            };
            let probed = (start - last.timestamp_micros()).unsigned_abs() as f64;
            let wanted = (query.limit + 1).saturating_sub(page.events.len()).max(1) as f64;
            let seen = page.events.len().max(1) as f64;
            let mut width = ((probed * 4.0 * wanted / seen) as i64).max(MIN_WINDOW);
            let mut from = (last, false);
            loop {
                let at = from.0.timestamp_micros();
                let (low, high, final_window) = match query.order {
                    Order::Desc => {
                        let low = at.saturating_sub(width);
                        (low.max(oldest), at, low <= oldest)
                    }
                    Order::Asc => {
                        let high = at.saturating_add(width);
                        (at, high.min(newest), high >= newest)
                    }
                };
                let edge = match query.order {
                    Order::Desc => EventId::from_parts(low, 0),
                    Order::Asc => EventId::from_parts(high, 0),
                };
                let window = Window {
                    from,
                    edge: (!final_window).then_some(edge),
                    buckets: BUCKETS
                        .iter()
                        .find_map(|bucket| bucket.covering(tenant.0, low, high)),
                };
                let sql = window_candidates(tenant, query, &tsquery, &window, chunk);
                match page.fill(&*transaction, tenant, &sql).await? {
                    Filled::Full => break,
                    // The window holds more: go on inside it.
                    Filled::Rows(rows, last) if rows == chunk as usize => {
                        from = (last.expect("a full chunk read rows"), false);
                    }
                    Filled::Rows(..) if final_window => break,
                    Filled::Rows(..) => {
                        // The edge was inside this window; the next one starts there.
                        from = (edge, true);
                        width = width.saturating_mul(WINDOW_GROWTH);
                    }
                }
            }
            transaction.commit().await.map_err(pg_error)?;
        }
    }
    Ok(page.finish())
}

/// A page being filled from candidate rows.
struct Page<'q> {
    query: &'q SearchQuery,
    events: Vec<StoredEvent>,
    bytes: usize,
    more: bool,
}

/// What one statement's candidates did to the page.
enum Filled {
    /// The page is full and more match past it.
    Full,
    /// This many rows were read, the last one this.
    Rows(usize, Option<EventId>),
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

    /// Runs a candidate statement (rows of id, whether the conditions hold, the body when it
    /// is small, its length) and adds the events that match.
    async fn fill<C: GenericClient + Sync>(
        &mut self,
        client: &C,
        tenant: TenantId,
        (sql, params): &(String, Vec<Param>),
    ) -> Result<Filled, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(sql, &params).await.map_err(pg_error)?;
        let mut last = None;
        for row in &rows {
            let id = EventId(row.get(0));
            last = Some(id);
            if !row.get::<_, bool>(1) {
                continue;
            }
            let len = row.get::<_, i32>(3).max(0) as usize;
            // A large body is left out of the chunk (a chunk of them could be gigabytes)
            // and read alone, once it is known to fit the page.
            if self.events.len() == self.query.limit
                || over_bytes(self.query, self.bytes, len, &self.events)
            {
                self.more = true;
                return Ok(Filled::Full);
            }
            let body: String = match row.get::<_, Option<String>>(2) {
                Some(body) => body,
                // Erased or expired since the candidates were read: not there to find.
                None => match client
                    .query_opt(
                        "SELECT body FROM events WHERE tenant_id = $1 AND id = $2 AND NOT erased",
                        &[&tenant.0, &id.0],
                    )
                    .await
                    .map_err(pg_error)?
                {
                    Some(row) => row.get(0),
                    None => continue,
                },
            };
            if !event_matches(body.as_bytes(), self.query) {
                continue;
            }
            self.bytes += body.len();
            self.events.push(StoredEvent {
                id,
                json: body.into_bytes(),
            });
        }
        Ok(Filled::Rows(rows.len(), last))
    }

    fn finish(self) -> SearchPage {
        SearchPage::new(self.events, self.more)
    }
}

/// The tenant's oldest and newest ids, if it has events.
async fn id_range<C: GenericClient + Sync>(
    client: &C,
    tenant: TenantId,
) -> Result<Option<(EventId, EventId)>, StoreError> {
    let row = client
        .query_one(
            "SELECT (SELECT id FROM events WHERE tenant_id = $1 ORDER BY id LIMIT 1),
                    (SELECT id FROM events WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1)",
            &[&tenant.0],
        )
        .await
        .map_err(pg_error)?;
    Ok(row
        .get::<_, Option<Uuid>>(0)
        .zip(row.get::<_, Option<Uuid>>(1))
        .map(|(oldest, newest)| (EventId(oldest), EventId(newest))))
}

/// A window of ids an indexed search asks the GIN index about.
struct Window {
    /// Where it starts (exclusive unless the flag says inclusive): the last id read, or the
    /// edge of the window before.
    from: (EventId, bool),
    /// Where it ends (exclusive), unless it runs to the end of the tenant's ids.
    edge: Option<EventId>,
    /// The bucket lexemes that cover it, if few enough.
    buckets: Option<Vec<String>>,
}

/// The statement for one window: matching rows only, in the query's order, found through
/// the GIN index alone. Every other condition is written so that no btree index can serve
/// it (`uuid_send`), or the planner, which often thinks a range of recent ids holds one
/// row, would read the window row by row.
fn window_candidates(
    tenant: TenantId,
    query: &SearchQuery,
    tsquery: &str,
    window: &Window,
    rows: i64,
) -> (String, Vec<Param>) {
    let bytes = |id: EventId| id.0.as_bytes().to_vec();
    let tsquery = match &window.buckets {
        Some(buckets) => format!("({tsquery}) & ({})", buckets.join(" | ")),
        None => tsquery.to_owned(),
    };
    let mut params: Vec<Param> = vec![
        Box::new(tenant.0),
        Box::new(bytes(EventId(tenant.0))),
        Box::new(tsquery),
    ];
    let mut push = |sql: &mut String, condition: &str, param: Param| {
        params.push(param);
        sql.push_str(&condition.replace('?', &format!("${}", params.len())));
    };
    let mut sql = format!(
        "SELECT id, true, CASE WHEN octet_length(body) <= {INLINE_BODY_BYTES} THEN body END, \
         octet_length(body) FROM events \
         WHERE ((search @@ $3::text::tsquery AND uuid_send(tenant_id) = $2) \
                OR (search IS NULL AND tenant_id = $1)) AND NOT erased"
    );
    if let Some(since) = query.since {
        let low = EventId::from_parts(micros_of(since), 0);
        push(&mut sql, " AND uuid_send(id) >= ?", Box::new(bytes(low)));
    }
    if let Some(until) = query.until {
        let high = EventId::from_parts(micros_ceil(until), 0);
        push(&mut sql, " AND uuid_send(id) < ?", Box::new(bytes(high)));
    }
    let (from, edge) = match (query.order, window.from.1) {
        (Order::Desc, false) => (" AND uuid_send(id) < ?", " AND uuid_send(id) >= ?"),
        (Order::Desc, true) => (" AND uuid_send(id) < ?", " AND uuid_send(id) >= ?"),
        (Order::Asc, false) => (" AND uuid_send(id) > ?", " AND uuid_send(id) < ?"),
        (Order::Asc, true) => (" AND uuid_send(id) >= ?", " AND uuid_send(id) < ?"),
    };
    push(&mut sql, from, Box::new(bytes(window.from.0)));
    if let Some(edge_id) = window.edge {
        push(&mut sql, edge, Box::new(bytes(edge_id)));
    }
    if let Some(event_id) = &query.event_id {
        // Through the dedup keys: no index of `events` leads with event_id.
        push(
            &mut sql,
            " AND id = (SELECT k.id FROM event_keys k WHERE k.tenant_id = $1 AND k.event_id = ?)",
            Box::new(event_id.clone()),
        );
    }
    if !query.event_types.is_empty() {
        push(
            &mut sql,
            " AND event_type = ANY(?)",
            Box::new(query.event_types.clone()),
        );
    }
    if let Some(source) = &query.source {
        push(&mut sql, " AND source = ?", Box::new(source.clone()));
    }
    push(
        &mut sql,
        match query.order {
            Order::Desc => " ORDER BY id DESC LIMIT ?",
            Order::Asc => " ORDER BY id ASC LIMIT ?",
        },
        Box::new(rows),
    );
    (sql, params)
}

/// The candidate statement: up to `rows` rows past `after` in the query's order (and not past
/// `edge`, a window's far end, inclusive), each with whether the indexable conditions hold.
///
/// Without `edge`, the rows are the next ones in id order, matching or not, and the
/// conditions are only evaluated on them (the probe, and a search without a `tsquery` where
/// every condition is in the `WHERE` instead); with `edge`, only matching rows come back.
fn candidates(
    tenant: TenantId,
    query: &SearchQuery,
    after: Option<EventId>,
    edge: Option<EventId>,
    tsquery: Option<&str>,
    rows: i64,
) -> (String, Vec<Param>) {
    let mut params: Vec<Param> = vec![Box::new(tenant.0)];
    let mut push = |sql: &mut String, condition: &str, param: Param| {
        params.push(param);
        sql.push_str(&condition.replace('?', &format!("${}", params.len())));
    };
    let mut range = String::new();
    if let Some(since) = query.since {
        let low = EventId::from_parts(micros_of(since), 0);
        push(&mut range, " AND id >= ?", Box::new(low.0));
    }
    if let Some(until) = query.until {
        let high = EventId::from_parts(micros_ceil(until), 0);
        push(&mut range, " AND id < ?", Box::new(high.0));
    }
    let (past, to) = match query.order {
        Order::Desc => (" AND id < ?", " AND id >= ?"),
        Order::Asc => (" AND id > ?", " AND id <= ?"),
    };
    if let Some(after) = after {
        push(&mut range, past, Box::new(after.0));
    }
    if let Some(edge) = edge {
        push(&mut range, to, Box::new(edge.0));
    }
    let mut conditions = String::from("NOT erased");
    if let Some(event_id) = &query.event_id {
        // Through the dedup keys: no index of `events` leads with event_id.
        push(
            &mut conditions,
            " AND id = (SELECT k.id FROM event_keys k WHERE k.tenant_id = $1 AND k.event_id = ?)",
            Box::new(event_id.clone()),
        );
    }
    // Types without a `tsquery`: one ordered index scan per type, merged. An index scan of
    // `event_type = ANY($n)` does not come in id order (even for one type: the planner does
    // not know the array's length), so PostgreSQL read every row of those types to sort them
    // (0.86 s for a page of one type of 133,000; the crash soak's final read of 1.3 M events
    // of three types ran into the 5 s timeout).
    let by_type = tsquery.is_none() && !query.event_types.is_empty();
    if !query.event_types.is_empty() && !by_type {
        push(
            &mut conditions,
            " AND event_type = ANY(?)",
            Box::new(query.event_types.clone()),
        );
    }
    if let Some(source) = &query.source {
        push(&mut conditions, " AND source = ?", Box::new(source.clone()));
    }
    if let Some(tsquery) = tsquery {
        // Rows without `search` (written before it existed, until the backfill reaches
        // them) are candidates whatever the query.
        push(
            &mut conditions,
            " AND (search @@ ?::text::tsquery OR search IS NULL)",
            Box::new(tsquery.to_owned()),
        );
    }
    let order = match query.order {
        Order::Desc => "ORDER BY id DESC",
        Order::Asc => "ORDER BY id ASC",
    };
    params.push(Box::new(rows));
    let limit = params.len();
    // Every row of these two shapes is a hit (its conditions are in the WHERE clause).
    let columns = format!(
        "id, true, CASE WHEN octet_length(body) <= {INLINE_BODY_BYTES} THEN body END, \
         octet_length(body)"
    );
    let sql = if by_type {
        let types: Vec<String> = query
            .distinct_types()
            .into_iter()
            .map(str::to_owned)
            .collect();
        params.push(Box::new(types));
        let types = params.len();
        format!(
            "SELECT typed.* FROM unnest(${types}::text[]) AS wanted(event_type), LATERAL \
             (SELECT {columns} FROM events WHERE tenant_id = $1{range} AND {conditions} \
             AND events.event_type = wanted.event_type {order} LIMIT ${limit}) AS typed \
             {order} LIMIT ${limit}"
        )
    } else if tsquery.is_some() && edge.is_none() {
        format!(
            "SELECT id, hit, CASE WHEN hit AND octet_length(body) <= {INLINE_BODY_BYTES} \
             THEN body END, octet_length(body) FROM (SELECT id, body, ({conditions}) AS hit \
             FROM events WHERE tenant_id = $1{range} {order} LIMIT ${limit}) AS newest {order}"
        )
    } else {
        format!(
            "SELECT {columns} FROM events WHERE tenant_id = $1{range} AND {conditions} \
             {order} LIMIT ${limit}"
        )
    };
    (sql, params)
}

/// A lexeme that no payload gives (word starts begin with a letter or digit, keys with
/// `=`) and that every indexed query accepts: the `search` of a payload too large to index.
const EVERYTHING: &str = "*";

/// The most bytes of lexemes one event's `search` holds (PostgreSQL takes at most 1 MiB per
/// `tsvector`, and every lexeme is a GIN entry written with the row: a batch of 1,000 events
/// with 4,000-element arrays, 80 KB of keys each, took the insert past the statement timeout
/// at 256 KB). A payload with more is marked [`EVERYTHING`]: found by every indexed search,
/// decided by [`event_matches`].
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The `search` column of an event with this payload JSON, in `tsvector` input syntax:
/// every [`text_index_starts`] of the payload and `=` followed by each of its
/// [`payload_index_keys`] in hex (the embedded store's index holds the same terms). Payload
/// text that does not parse (never from the API, which validates it) is found by every
/// indexed search, and [`event_matches`] decides, as for any candidate.
pub(super) fn document(payload: &str, tenant: Uuid, id: EventId) -> String {
    let mut out = String::new();
    for bucket in BUCKETS {
        let _ = write!(out, "{} ", bucket.lexeme(tenant, id.timestamp_micros()));
    }
    let Ok(payload) = serde_json::from_str::<Value>(payload) else {
        push_lexeme(&mut out, EVERYTHING);
        return out;
    };
    for start in text_index_starts(&payload) {
        push_lexeme(&mut out, &start);
        out.push(' ');
    }
    for key in payload_index_keys(&payload) {
        let _ = write!(out, "'={key:016x}' ");
    }
    if out.len() > MAX_DOCUMENT_BYTES {
        out.clear();
        for bucket in BUCKETS {
            let _ = write!(out, "{} ", bucket.lexeme(tenant, id.timestamp_micros()));
        }
        push_lexeme(&mut out, EVERYTHING);
    }
    out
}

/// A span of event time that the search index names with one lexeme per tenant, so that
/// a window of time is a handful of lexemes the GIN index intersects with the filter's:
/// PostgreSQL's estimate of the rows in a range of recent ids is often one (the newest ids
/// lie past the statistics' histogram), which makes it walk the range row by row instead.
#[derive(Clone, Copy)]
struct Bucket {
    /// The lexeme's letter.
    name: char,
    /// log2 of the span, in microseconds.
    shift: u32,
}

/// About a second, a minute, an hour and three days: each 64 times the one before, so that
/// a window just too wide for [`WINDOW_BUCKETS`] of one size takes a few of the next.
const BUCKETS: [Bucket; 4] = [
    Bucket {
        name: 's',
        shift: 20,
    },
    Bucket {
        name: 'm',
        shift: 26,
    },
    Bucket {
        name: 'h',
        shift: 32,
    },
    Bucket {
        name: 'd',
        shift: 38,
    },
];

/// The most lexemes of one size a window names; a wider window takes the next size, and
/// one wider than that none (the filter's own lexemes alone).
const WINDOW_BUCKETS: i64 = 32;

impl Bucket {
    fn of(self, micros: i64) -> i64 {
        micros >> self.shift
    }

    /// `@`, eight hex digits of the tenant, the size's letter and the bucket's number: no
    /// word start or payload key begins with `@`, and another tenant's lexeme differs
    /// (a clash of the eight digits only adds candidates).
    fn lexeme(self, tenant: Uuid, micros: i64) -> String {
        format!(
            "'@{:08x}{}{}'",
            tenant.as_u128() as u32,
            self.name,
            self.of(micros)
        )
    }

    /// The lexemes of the buckets that hold `[low, high]` (microseconds), if few enough.
    fn covering(self, tenant: Uuid, low: i64, high: i64) -> Option<Vec<String>> {
        let (first, last) = (self.of(low), self.of(high));
        (last - first < WINDOW_BUCKETS).then(|| {
            (first..=last)
                .map(|bucket| Bucket::lexeme(self, tenant, bucket << self.shift))
                .collect()
        })
    }
}

/// The `search` of a stored event from its JSON (the backfill's input). An erased event's
/// empty body has nothing to find.
pub(super) fn stored_document(body: &str, tenant: Uuid, id: EventId) -> String {
    #[derive(serde::Deserialize)]
    struct Stored<'a> {
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    if body.is_empty() {
        return String::new();
    }
    match serde_json::from_str::<Stored<'_>>(body) {
        Ok(stored) => document(stored.payload.get(), tenant, id),
        Err(_) => document("", tenant, id),
    }
}

/// The `tsquery` (input syntax) that every event's `search` matches when the query's full
/// text and payload filters hold: a prefix per `q` term ([`text_query_prefix`]) and, per
/// payload filter, one of its [`path_filter_keys`]; or [`EVERYTHING`]. `None` when neither
/// filter is given, or no term has a letter or digit to look up.
pub(super) fn index_query(query: &SearchQuery) -> Option<String> {
    let mut parts = Vec::new();
    for term in query.text.iter().flat_map(|text| text.split_whitespace()) {
        if let Some(prefix) = text_query_prefix(term) {
            let mut part = String::new();
            push_lexeme(&mut part, &prefix);
            part.push_str(":*");
            parts.push(part);
        }
    }
    for filter in &query.payload {
        let keys: Vec<String> = path_filter_keys(filter)
            .into_iter()
            .map(|key| format!("'={key:016x}'"))
            .collect();
        parts.push(format!("({})", keys.join(" | ")));
    }
    if parts.is_empty() {
        return None;
    }
    let mut out = format!("({}) | ", parts.join(" & "));
    push_lexeme(&mut out, EVERYTHING);
    Some(out)
}

/// A quoted lexeme as `tsvector` and `tsquery` input read it (quotes and backslashes doubled).
fn push_lexeme(out: &mut String, lexeme: &str) {
    out.push('\'');
    for c in lexeme.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
}

/// Rows the backfill fills per transaction.
const BACKFILL_BATCH: i64 = 1_000;

/// Fills `search` for the rows that lack it, a batch per transaction, until none is left.
/// Several nodes may run it at once: each takes rows the others have not locked.
pub(super) async fn backfill(db: Db) {
    let mut filled = 0u64;
    loop {
        match backfill_batch(&db).await {
            Ok(0) => break,
            Ok(rows) => filled += rows,
            Err(err) => {
                tracing::warn!(error = %err, "filling the search column failed; trying again in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
    if filled > 0 {
        tracing::info!(
            events = filled,
            "search column filled for events stored before it"
        );
    }
}

/// Fills one batch; returns how many rows lacked `search` when it looked (0: none left).
///
/// Each statement is a transaction of its own: a step cut short (the process stopping, or
/// its runtime busy) never holds a lock. Two nodes may compute the same rows; the update
/// only fills rows still without `search`, so an erasure meanwhile (which empties it) wins.
async fn backfill_batch(db: &Db) -> Result<u64, StoreError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT tenant_id, id, body FROM events WHERE search IS NULL LIMIT $1",
            &[&BACKFILL_BATCH],
        )
        .await
        .map_err(pg_error)?;
    let mut tenants = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut documents = Vec::with_capacity(rows.len());
    for row in &rows {
        tenants.push(row.get::<_, uuid::Uuid>(0));
        ids.push(row.get::<_, uuid::Uuid>(1));
        documents.push(stored_document(
            row.get::<_, &str>(2),
            tenants[tenants.len() - 1],
            EventId(ids[ids.len() - 1]),
        ));
    }
    if !rows.is_empty() {
        client
            .execute(
                "UPDATE events SET search = u.search::tsvector
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(tenant_id, id, search)
                  WHERE events.tenant_id = u.tenant_id AND events.id = u.id
                    AND events.search IS NULL",
                &[&tenants, &ids, &documents],
            )
            .await
            .map_err(pg_error)?;
    }
    Ok(rows.len() as u64)
}

/// How often a node merges the search index's pending entries into the index.
const MERGE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The advisory lock held by the node that is merging ("psmerge"): one at a time.
const MERGE_LOCK: i64 = 0x7073_6d65_7267_6500;

/// Merges the GIN index's pending list into the index, in bulk, every [`MERGE_EVERY`].
///
/// `events_search` is built with `fastupdate`: an insert appends its entries to a pending
/// list, which every search reads whole. PostgreSQL merges that list when autovacuum visits
/// the table or when an insert finds it over `gin_pending_list_limit`, inside that insert's
/// transaction. Measured under sustained 1,000-event batches with autovacuum off, the
/// inserts' own merges fell behind (2.3 GB of pending pages after 7 minutes, one search
/// 0.9 s) and stalled commits past the statement timeout (503s); the index's limit is
/// therefore set high (64 MB, migration 0005) and a node merges it here, off the ingest path, with
/// the memory of a maintenance operation. One node at a time: the others find the lock
/// taken and try again at their next turn.
pub(super) async fn merge_pending(db: Db) {
    loop {
        tokio::time::sleep(MERGE_EVERY).await;
        match merge_once(&db).await {
            Ok(Merge::Done) => {}
            Ok(Merge::NotOwner) => {
                tracing::warn!(
                    "this node's database role does not own the index events_search, so it \
                     cannot merge the index's pending entries; PostgreSQL merges them itself \
                     (autovacuum, or an insert past 64 MB), and searches read them meanwhile"
                );
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "merging the search index's pending entries failed; trying again in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}

/// How one merge went.
enum Merge {
    /// Merged, or another node holds the lock.
    Done,
    /// Only the index's owner may merge it (`pulsestream migrate` ran as another role).
    NotOwner,
}

async fn merge_once(db: &Db) -> Result<Merge, StoreError> {
    let client = db.client().await?;
    // One statement, so one transaction that never waits on this process: a merge cut short
    // holds no lock. Behind sustained load it runs until the statement timeout, and the next
    // turn goes on (what a cancelled merge moved stays moved, as when autovacuum's is).
    match client
        .query(
            // Each partition's index has its own pending list (`events_search` itself, on
            // the partitioned table, holds no entries).
            "SELECT gin_clean_pending_list(tree.relid)
               FROM (SELECT set_config('maintenance_work_mem', '128MB', true)) AS memory,
                    pg_partition_tree('events_search'::regclass) AS tree
              WHERE tree.isleaf AND pg_try_advisory_xact_lock($1)",
            &[&MERGE_LOCK],
        )
        .await
    {
        Ok(_) => Ok(Merge::Done),
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            Ok(Merge::Done)
        }
        Err(err)
            if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            Ok(Merge::NotOwner)
        }
        Err(err) => Err(pg_error(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppendBatch, EventStore};
    use pulsestream_core::NewEvent;

    /// The rows each scan of `events` (of each of its partitions) returned, from `EXPLAIN
    /// ANALYZE`'s text plan.
    fn rows_read(plan: &[String]) -> Vec<u64> {
        plan.iter()
            .filter(|line| line.contains(" on events"))
            .filter_map(|line| {
                let actual = &line[line.find("(actual")?..];
                let rows = &actual[actual.find("rows=")? + 5..];
                let loops = &actual[actual.find("loops=")? + 6..];
                let number = |text: &str| {
                    text.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse::<u64>()
                        .ok()
                };
                Some(number(rows)? * number(loops)?)
            })
            .collect()
    }

    /// A page of a search without a `tsquery` reads about as many rows as it returns, whatever
    /// PostgreSQL estimates: on a table never analyzed it read every row of the types asked
    /// for (a bitmap scan and a sort) — the crash soak's final read timed out on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_by_type_reads_only_the_rows_it_returns() {
        let (admin, schema, store) = crate::postgres::test_store_in_new_schema("psplan").await;
        let tenant = TenantId::random();
        for chunk in 0..6 {
            let events = (0..1_000)
                .map(|i| {
                    let json = format!(
                        r#"{{"event_id": "e{chunk}-{i}", "event_type": "{}", "payload": {{"i": {i}}}}}"#,
                        ["a", "b", "c"][i % 3]
                    );
                    NewEvent::from_json(&json).expect("an event")
                })
                .collect();
            store
                .append_batch(AppendBatch {
                    tenant,
                    events,
                    received_at: time::OffsetDateTime::now_utc(),
                    idempotency: None,
                })
                .await
                .expect("append");
        }
        for types in [vec!["a"], vec!["a", "b"]] {
            let query = SearchQuery {
                event_types: types.iter().map(|t| (*t).to_owned()).collect(),
                limit: 10,
                ..SearchQuery::default()
            };
            let (sql, params) = candidates(tenant, &query, None, None, None, 11);
            let params: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|param| param.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let mut client = store.db.client().await.expect("a connection");
            let transaction = client.transaction().await.expect("begin");
            transaction
                .batch_execute(PAGE_SETTINGS)
                .await
                .expect("settings");
            let plan: Vec<String> = transaction
                .query(&format!("EXPLAIN ANALYZE {sql}"), &params)
                .await
                .expect("explain")
                .iter()
                .map(|row| row.get(0))
                .collect();
            let read = rows_read(&plan);
            assert!(!read.is_empty(), "{}", plan.join("\n"));
            assert!(
                read.iter().sum::<u64>() <= 11 * types.len() as u64,
                "types {types:?}: {read:?} rows read for a page of 10\n{}",
                plan.join("\n")
            );
        }
        store.close().await.expect("close");
        super::super::drop_schema(&admin, &schema)
            .await
            .expect("drop the schema");
    }
}
