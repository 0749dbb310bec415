//! What the endpoints of other products' wire formats share (`segment`, `posthog`): each
//! message becomes an ordinary PulseStream event, then goes through the same rate limit
//! and the same store call as `/v1/events/batch`, so every guarantee holds. A protocol
//! module only says how its messages map to events and how its answers look.

use std::borrow::Cow;
use std::collections::BTreeMap;

use pulsestream_core::{NewEvent, Tenant};
use pulsestream_limits::Decision;
use pulsestream_store::{AppendBatch, AppendStatus, Counts as Stats};
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::rate_limit;
use crate::AppState;
use crate::auth::secret_hash;
use crate::error::ApiError;
use crate::observe;

/// A message that was not stored, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Rejection {
    /// Its place in the request (0 for a single message).
    pub index: usize,
    /// Its id (`messageId`, `uuid`), if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `invalid_json`, `unknown_type`, `missing_field`, `too_large`, `invalid`,
    /// `other_key` or `conflict`.
    pub reason: &'static str,
    pub msg: String,
}

/// The event a message becomes, in PulseStream's own wire format.
#[derive(Serialize)]
pub(crate) struct WireEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<&'a str>,
    pub event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<&'a str>,
    pub payload: &'a RawValue,
}

impl WireEvent<'_> {
    /// Validates the event as `/v1/events` would; an error names the protocol's fields
    /// (`names` maps `event_id`, `event_type`, `source`, `timestamp` to them).
    pub fn check(&self, names: [&str; 4]) -> Result<NewEvent, (&'static str, String)> {
        let wire = serde_json::to_string(self).map_err(|err| ("invalid", err.to_string()))?;
        NewEvent::from_json(&wire).map_err(|errors| {
            let msg = errors
                .iter()
                .map(|error| {
                    let field = match error.loc.first().map(AsRef::as_ref) {
                        Some("event_id") => names[0],
                        Some("event_type") => names[1],
                        Some("source") => names[2],
                        Some("timestamp") => names[3],
                        _ => "the message",
                    };
                    format!("{field}: {}", error.msg)
                })
                .collect::<Vec<_>>()
                .join("; ");
            ("invalid", msg)
        })
    }
}

/// The tenant whose API key is the first non-empty one of `keys` (in the protocol's order
/// of precedence); 401 for none or an unknown one. Any scope may send.
pub(crate) async fn tenant_of_key<'a>(
    app: &AppState,
    keys: impl IntoIterator<Item = Option<Cow<'a, str>>>,
    how: &str,
) -> Result<Tenant, ApiError> {
    let key = keys
        .into_iter()
        .flatten()
        .find(|key| !key.trim().is_empty())
        .ok_or_else(|| ApiError::unauthorized(format!("send a tenant API key as {how}")))?;
    app.tenants
        .tenant_by_key_hash(&secret_hash(&key))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))
}

/// The messages of one request: the events of the valid ones, and why the others are not.
#[derive(Debug, Default)]
pub(crate) struct Converted {
    pub events: Vec<NewEvent>,
    /// (index in the request, id) of each event, in the order of `events`.
    pub valid: Vec<(usize, Option<String>)>,
    pub rejections: Vec<Rejection>,
    /// Every message the request carried.
    pub carried: usize,
}

impl Converted {
    /// Records one message's conversion.
    pub fn push(
        &mut self,
        index: usize,
        id: Option<String>,
        result: Result<NewEvent, (&'static str, String)>,
    ) {
        self.carried += 1;
        match result {
            Ok(event) => {
                self.events.push(event);
                self.valid.push((index, id));
            }
            Err((reason, msg)) => self.rejections.push(Rejection {
                index,
                id,
                reason,
                msg,
            }),
        }
    }
}

/// What became of a request's messages, as every protocol's answer shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Counts {
    /// Messages stored now.
    pub accepted: usize,
    /// Messages whose id was stored before with the same content.
    pub duplicates: usize,
    /// Messages not stored: invalid, too large, or an id stored with other content.
    pub rejected: usize,
    /// One entry per message not stored, in request order.
    pub errors: Vec<Rejection>,
}

/// What became of a request's messages, and the rate-limit decision that admitted them.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub counts: Counts,
    pub decision: Decision,
}

impl Outcome {
    /// The 200 answer: the protocol's `body` (which flattens the counts in), the
    /// `PulseStream-Rejected` header (SDKs ignore bodies), the `RateLimit-*` headers.
    pub fn respond(
        &self,
        body: impl Serialize,
        tenant: &Tenant,
        carried: usize,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut response = axum::Json(body).into_response();
        response.headers_mut().insert(
            "pulsestream-rejected",
            axum::http::HeaderValue::from(self.counts.rejected),
        );
        rate_limit::set_headers(response.headers_mut(), tenant.rate_limit, &self.decision);
        // Read by `auth::tenant_context` (on routes behind it), which would otherwise ask
        // the limiter again.
        response.extensions_mut().insert(self.decision);
        response.extensions_mut().insert(observe::RequestFacts {
            tenant: Some(tenant.id),
            events: Some(carried),
        });
        response
    }
}

/// Stores the valid messages as one `/v1/events/batch` would: the whole request costs every
/// message it carried of the tenant's rate limit (429 + `Retry-After` when it does not fit:
/// nothing stored), then one durable commit. A request without a valid message is refused
/// (400) before it costs anything.
pub(crate) async fn store(
    app: &AppState,
    tenant: &Tenant,
    protocol: &'static str,
    received_at: OffsetDateTime,
    converted: Converted,
) -> Result<Outcome, ApiError> {
    let Converted {
        events,
        valid,
        mut rejections,
        carried,
    } = converted;
    for rejection in &rejections {
        metrics::counter!("pulsestream_compat_rejected_total", "protocol" => protocol, "reason" => rejection.reason)
            .increment(1);
    }
    metrics::counter!("pulsestream_ingest_messages_total", "protocol" => protocol)
        .increment(carried as u64);
    if events.is_empty() {
        app.count_events(
            tenant.id,
            Stats {
                rejected: rejections.len() as u64,
                ..Stats::default()
            },
        );
        let detail = match rejections.as_slice() {
            [only] => format!("the message was not stored: {}", only.msg),
            all => format!("none of the {} messages could be stored", all.len()),
        };
        return Err(
            ApiError::bad_request("no_valid_message", detail).with_field(
                "errors",
                serde_json::to_value(&rejections).unwrap_or_default(),
            ),
        );
    }
    app.disk.check_write()?;
    let decision = rate_limit::admit(app, tenant, carried as u32)
        .await
        .inspect_err(|_| {
            app.count_events(
                tenant.id,
                Stats {
                    rate_limited: carried as u64,
                    ..Stats::default()
                },
            );
        })?;
    let sizes: Vec<usize> = events.iter().map(NewEvent::approximate_json_len).collect();
    let statuses = app
        .events
        .append_batch(AppendBatch {
            tenant: tenant.id,
            events,
            received_at,
            idempotency: None,
        })
        .await?
        .statuses;
    let stored_bytes = super::events::accepted_bytes(&statuses, &sizes);
    let (mut accepted, mut duplicates) = (0, 0);
    for ((index, id), status) in valid.into_iter().zip(statuses) {
        match status {
            AppendStatus::Accepted(_) => accepted += 1,
            AppendStatus::Duplicate(_) => duplicates += 1,
            AppendStatus::Conflict(existing) => {
                metrics::counter!("pulsestream_compat_rejected_total", "protocol" => protocol, "reason" => "conflict")
                    .increment(1);
                rejections.push(Rejection {
                    index,
                    id,
                    reason: "conflict",
                    msg: format!(
                        "a message with this id and other content is stored as {existing}"
                    ),
                });
            }
        }
    }
    rejections.sort_by_key(|rejection| rejection.index);
    app.count_events(
        tenant.id,
        Stats {
            accepted: accepted as u64,
            duplicates: duplicates as u64,
            rejected: rejections.len() as u64,
            stored_bytes: stored_bytes as u64,
            ..Stats::default()
        },
    );
    Ok(Outcome {
        counts: Counts {
            accepted,
            duplicates,
            rejected: rejections.len(),
            errors: rejections,
        },
        decision,
    })
}

/// Turns a 413 from reading the body into the 400 the SDKs expect (they do not retry it).
pub(crate) fn oversize_is_bad_request(limit: usize) -> impl FnOnce(ApiError) -> ApiError {
    move |err| {
        if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad_request(
                "payload_too_large",
                format!("the body is over this server's limit of {limit} bytes"),
            )
        } else {
            err
        }
    }
}

/// A message's members, as sent.
pub(crate) type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// Reads a message's members once: its id (member `id_name`, for the answer, even when the
/// message is rejected) and the members, or `invalid_json` when it is not a JSON object.
pub(crate) fn read<'a>(
    raw: &'a RawValue,
    id_name: &str,
) -> (Option<String>, Result<Fields<'a>, (&'static str, String)>) {
    let fields = fields(raw);
    let id = fields
        .as_ref()
        .ok()
        .and_then(|fields| text(fields, id_name).ok().flatten())
        .map(Cow::into_owned);
    (id, fields)
}

/// The members of a message; `invalid_json` when it is not a JSON object.
pub(crate) fn fields(raw: &RawValue) -> Result<Fields<'_>, (&'static str, String)> {
    serde_json::from_str(raw.get())
        .map_err(|_| ("invalid_json", "a message must be a JSON object".into()))
}

/// A string member: `None` when absent or null, `invalid` (naming it) when not a string.
pub(crate) fn text<'a>(
    fields: &Fields<'a>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, (&'static str, String)> {
    match fields.get(name) {
        None => Ok(None),
        Some(value) if value.get() == "null" => Ok(None),
        Some(value) => serde_json::from_str::<Cow<'a, str>>(value.get())
            .map(Some)
            .map_err(|_| ("invalid", format!("`{name}` must be a string"))),
    }
}

/// `other_key` when a message carries a key that is not one of the tenant's own: a message
/// of another project must not be stored under this one.
pub(crate) fn own_key(tenant: &Tenant, key: Option<&str>) -> Result<(), (&'static str, String)> {
    match key {
        Some(key) if !key.is_empty() && tenant.key_scope(&secret_hash(key)).is_none() => Err((
            "other_key",
            "the message carries a key that is not this tenant's".into(),
        )),
        _ => Ok(()),
    }
}

/// Whether a member of a JSON object is there with a value (not null, not "").
pub(crate) fn present(value: Option<&&RawValue>) -> bool {
    value.is_some_and(|value| {
        let text = value.get();
        text != "null" && text != "\"\""
    })
}
