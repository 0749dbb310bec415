//! Searches: SQL narrows with the indexes, `event_matches` decides.
//!
//! Every filter that an index can serve becomes a condition with bound parameters: time
//! bounds and the cursor as a range of ids (ids start with the timestamp), `event_id`,
//! `event_type` and `source` by equality, payload paths as JSONB containment (GIN), full
//! text as `ILIKE` over the payload's text (no index: evaluated in the database on the rows the
//! others select, which spares shipping them). Each condition admits a superset
//! of what the filter means, and each candidate then goes through the same
//! [`event_matches`] as in the embedded store, so both stores answer alike.

use pulsestream_core::{EventId, TenantId};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use super::{Db, pg_error};
use crate::event_matches;
use crate::record::{micros_ceil, micros_of};
use crate::search::over_bytes;
use crate::{Cursor, Order, PayloadFilter, SearchPage, SearchQuery, StoreError, StoredEvent};

type Param = Box<dyn ToSql + Sync + Send>;

pub(super) async fn search(
    store: &Db,
    tenant: TenantId,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    let client = store.client().await?;
    let chunk = (query.limit + 1).clamp(100, 1_001) as i64;
    let mut events = Vec::with_capacity(query.limit.min(1_000));
    let mut more = false;
    let mut bytes = 0usize;
    let mut after = query.cursor.map(|Cursor(id)| id);
    'pages: loop {
        let (sql, params) = candidates_sql(tenant, query, after, chunk);
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&sql, &params).await.map_err(pg_error)?;
        let exhausted = (rows.len() as i64) < chunk;
        for row in rows {
            let id = EventId(row.get(0));
            after = Some(id);
            let len = row.get::<_, i32>(2).max(0) as usize;
            // A large body is left out of the chunk (a chunk of them could be gigabytes) and
            // read alone, once it is known to fit the page.
            if events.len() == query.limit || over_bytes(query, bytes, len, &events) {
                more = true;
                break 'pages;
            }
            let body: String = match row.get::<_, Option<String>>(1) {
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
            if !event_matches(body.as_bytes(), query) {
                continue;
            }
            bytes += body.len();
            events.push(StoredEvent {
                id,
                json: body.into_bytes(),
            });
        }
        if exhausted {
            break;
        }
    }
    Ok(SearchPage::new(events, more))
}

/// Builds the candidate query: one page of ids past `after`, in the query's order.
/// Bodies up to this size come with the candidates; larger ones are read one at a time.
const INLINE_BODY_BYTES: usize = 64 * 1024;

fn candidates_sql(
    tenant: TenantId,
    query: &SearchQuery,
    after: Option<EventId>,
    chunk: i64,
) -> (String, Vec<Param>) {
    let mut sql = format!(
        "SELECT id, CASE WHEN octet_length(body) <= {INLINE_BODY_BYTES} THEN body END, \
         octet_length(body) FROM events WHERE tenant_id = $1 AND NOT erased"
    );
    let mut params: Vec<Param> = vec![Box::new(tenant.0)];
    let mut push = |sql: &mut String, condition: &str, param: Param| {
        params.push(param);
        sql.push_str(&condition.replace('?', &format!("${}", params.len())));
    };
    if let Some(since) = query.since {
        let low = EventId::from_parts(micros_of(since), 0);
        push(&mut sql, " AND id >= ?", Box::new(low.0));
    }
    if let Some(until) = query.until {
        let high = EventId::from_parts(micros_ceil(until), 0);
        push(&mut sql, " AND id < ?", Box::new(high.0));
    }
    if let Some(after) = after {
        let condition = match query.order {
            Order::Desc => " AND id < ?",
            Order::Asc => " AND id > ?",
        };
        push(&mut sql, condition, Box::new(after.0));
    }
    if let Some(event_id) = &query.event_id {
        push(&mut sql, " AND event_id = ?", Box::new(event_id.clone()));
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
    for filter in &query.payload {
        let shapes = containment_shapes(filter);
        if shapes.is_empty() {
            continue;
        }
        sql.push_str(" AND (");
        for (n, shape) in shapes.into_iter().enumerate() {
            if n > 0 {
                sql.push_str(" OR ");
            }
            push(&mut sql, "payload @> ?", Box::new(shape));
        }
        sql.push(')');
    }
    if let Some(text) = &query.text {
        for term in text.split_whitespace().filter(|term| narrowable_term(term)) {
            let pattern = format!("%{}%", term.replace('_', "\\_"));
            push(&mut sql, " AND payload::text ILIKE ?", Box::new(pattern));
        }
    }
    sql.push_str(match query.order {
        Order::Desc => " ORDER BY id DESC",
        Order::Asc => " ORDER BY id ASC",
    });
    push(&mut sql, " LIMIT ?", Box::new(chunk));
    (sql, params)
}

/// The JSONB documents one of which a payload contains when the filter holds: the value as
/// a string, and as a boolean or null when it is spelt as one. Values that read as numbers
/// get no SQL condition: the filter compares numbers as f64 while JSONB compares them
/// exactly (`1.00000000000000001` is 1 to the one, not to the other), so containment could
/// exclude an event the filter accepts; `event_matches` decides them. Paths with a segment
/// that could be an array index get no SQL condition either (containment cannot say
/// "element 0").
fn containment_shapes(filter: &PayloadFilter) -> Vec<Value> {
    if filter
        .path
        .iter()
        .any(|segment| segment.parse::<usize>().is_ok())
        || filter.value.parse::<f64>().is_ok()
    {
        return Vec::new();
    }
    let mut leaves = vec![Value::String(filter.value.clone())];
    match filter.value.as_str() {
        "true" => leaves.push(Value::Bool(true)),
        "false" => leaves.push(Value::Bool(false)),
        "null" => leaves.push(Value::Null),
        _ => {}
    }
    leaves
        .into_iter()
        .map(|leaf| {
            filter.path.iter().rev().fold(leaf, |inner, segment| {
                let mut object = Map::new();
                object.insert(segment.clone(), inner);
                Value::Object(object)
            })
        })
        .collect()
}

/// Whether `ILIKE '%term%'` over the payload's JSON text admits every payload whose strings
/// contain the term: plain ASCII words (JSON escapes nothing in them) with a letter no
/// number's spelling has (numbers are spelt differently by JSONB and by the filter).
fn narrowable_term(term: &str) -> bool {
    term.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && term
            .chars()
            .any(|c| c.is_ascii_alphabetic() && !matches!(c, 'e' | 'E'))
}
