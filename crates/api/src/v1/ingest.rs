//! Turning a request body into checked events, and outcomes into answers.
//!
//! Parsing and answering are pure functions of the body and the store's statuses, which is
//! what lets an `Idempotency-Key` replay rebuild exactly the first answer from the recorded
//! statuses alone.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pulsestream_core::{FieldError, MAX_BATCH_EVENTS, NewEvent, WireEvent, wire_error};
use pulsestream_store::AppendStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::body::{BodyFormat, TextBody};
use crate::error::{ApiError, ErrorItem};

/// Which endpoint the events came through: it decides which bodies are read and the shape
/// of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/events`: one JSON event.
    Single,
    /// `POST /v1/events/batch`: `{"events": [...]}` or NDJSON.
    Batch,
}

impl Endpoint {
    /// The body formats the endpoint reads.
    pub fn formats(self) -> &'static [BodyFormat] {
        match self {
            Self::Single => &[BodyFormat::Json],
            Self::Batch => &[BodyFormat::Json, BodyFormat::Ndjson],
        }
    }
}

/// One input item after validation: where it was and whether it is an event to store.
#[derive(Debug)]
pub struct Item {
    /// The `index` of its result and of its `loc`: its place in `events`, or for NDJSON its
    /// line (blank lines count, so a client can find the line in what it sent).
    position: usize,
    /// The client's `event_id`, if it sent a string one.
    event_id: Option<String>,
    /// Why it was rejected; `None` when it is one of the request's valid events.
    rejection: Option<Vec<FieldError>>,
}

/// What one input item is answered with: its rejection, or what the store did with it.
enum Answer<'a> {
    Rejected(&'a [FieldError]),
    Stored(AppendStatus),
}

/// The events of one request after validation.
#[derive(Debug)]
pub struct Checked {
    pub endpoint: Endpoint,
    pub format: BodyFormat,
    /// Every input item, in input order: each gets exactly one answer.
    items: Vec<Item>,
    /// The valid items' events, in input order; taken by the store call, so answers are
    /// built from the items and the store's statuses alone.
    events: Vec<NewEvent>,
}

impl Checked {
    /// Parses and validates a body of `endpoint`.
    ///
    /// # Errors
    /// 400 for JSON that does not parse; 422 for a single event that breaks the schema, or
    /// a batch's wrong envelope (no `events` array, empty, or over 1,000 events). Bad events
    /// of a batch do not fail the request; they become rejections.
    pub fn new(endpoint: Endpoint, body: &TextBody) -> Result<Self, ApiError> {
        match endpoint {
            Endpoint::Single => Self::single(body),
            Endpoint::Batch => Self::batch(body),
        }
    }

    /// How many items the request carries (what it costs of the rate limit).
    pub fn carried(&self) -> usize {
        self.items.len()
    }

    /// Takes the valid events, to be stored; the answer needs one status for each.
    pub fn take_events(&mut self) -> Vec<NewEvent> {
        std::mem::take(&mut self.events)
    }

    fn single(body: &TextBody) -> Result<Self, ApiError> {
        let wire = serde_json::from_str::<WireEvent<'_>>(&body.text).map_err(|err| {
            if err.is_data() {
                let item = wire_error(&err);
                ApiError::validation(item.msg.clone(), vec![error_item(&["body"], item)])
            } else {
                json_syntax_error(&err)
            }
        })?;
        match NewEvent::from_wire(&wire) {
            Ok(event) => Ok(Self {
                endpoint: Endpoint::Single,
                format: body.format,
                items: vec![Item {
                    position: 0,
                    event_id: event.event_id.clone(),
                    rejection: None,
                }],
                events: vec![event],
            }),
            Err(errors) => {
                let detail = count_errors(errors.len());
                let items = errors
                    .into_iter()
                    .map(|err| error_item(&["body"], err))
                    .collect();
                Err(ApiError::validation(detail, items))
            }
        }
    }

    fn batch(body: &TextBody) -> Result<Self, ApiError> {
        let raw_items: Vec<(usize, RawItem<'_>)> = match body.format {
            BodyFormat::Json => envelope_items(&body.text)?
                .into_iter()
                .enumerate()
                .collect(),
            BodyFormat::Ndjson => body
                .text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(line, text)| (line, Ok(text)))
                .collect(),
        };
        if raw_items.is_empty() {
            return Err(envelope_error("too_short", "must hold at least one event"));
        }
        if raw_items.len() > MAX_BATCH_EVENTS {
            return Err(envelope_error(
                "too_long",
                &format!(
                    "must hold at most {MAX_BATCH_EVENTS} events, got {}",
                    raw_items.len()
                ),
            ));
        }
        let mut items = Vec::with_capacity(raw_items.len());
        let mut events = Vec::with_capacity(raw_items.len());
        for (position, item) in raw_items {
            let parsed = item.and_then(|text| {
                serde_json::from_str::<WireEvent<'_>>(text).map_err(|err| vec![wire_error(&err)])
            });
            let (event_id, result) = match parsed {
                Ok(wire) => {
                    let event_id = wire
                        .event_id
                        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
                    (event_id, NewEvent::from_wire(&wire))
                }
                Err(errors) => (None, Err(errors)),
            };
            let rejection = match result {
                Ok(event) => {
                    events.push(event);
                    None
                }
                Err(errors) => Some(errors),
            };
            items.push(Item {
                position,
                event_id,
                rejection,
            });
        }
        Ok(Self {
            endpoint: Endpoint::Batch,
            format: body.format,
            items,
            events,
        })
    }

    /// Pairs every item with its answer: its rejection, or the next of `statuses` (one per
    /// valid item, in order). The one place where the two are matched.
    fn answers(&self, statuses: &[AppendStatus]) -> Result<Vec<(&Item, Answer<'_>)>, ApiError> {
        let mut statuses = statuses.iter();
        let mut answers = Vec::with_capacity(self.items.len());
        for item in &self.items {
            let answer = match &item.rejection {
                Some(errors) => Answer::Rejected(errors),
                None => Answer::Stored(*statuses.next().ok_or_else(|| {
                    ApiError::internal("the store answered fewer statuses than events")
                })?),
            };
            answers.push((item, answer));
        }
        if statuses.next().is_some() {
            return Err(ApiError::internal(
                "the store answered more statuses than events",
            ));
        }
        Ok(answers)
    }

    /// Builds the answer from the store's statuses, one per valid event.
    ///
    /// # Errors
    /// A single event that conflicts (409), or a batch in which everything was rejected (422).
    pub fn respond(&self, statuses: &[AppendStatus]) -> Result<Response, ApiError> {
        let answers = self.answers(statuses)?;
        match (self.endpoint, answers.as_slice()) {
            (Endpoint::Single, [(item, Answer::Stored(status))]) => {
                single_response(item.event_id.as_deref(), *status)
            }
            (Endpoint::Single, _) => Err(ApiError::internal(
                "a single event's request holds one valid item",
            )),
            (Endpoint::Batch, _) => self.batch_response(&answers),
        }
    }

    fn batch_response(&self, answers: &[(&Item, Answer<'_>)]) -> Result<Response, ApiError> {
        let mut response = BatchResponse {
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            results: Vec::with_capacity(answers.len()),
        };
        let mut all_errors = Vec::new();
        for (item, answer) in answers {
            let index = item.position;
            let prefix: Vec<Value> = match self.format {
                BodyFormat::Json => vec!["body".into(), "events".into(), index.into()],
                BodyFormat::Ndjson => vec!["body".into(), index.into()],
            };
            let client_event_id = item.event_id.clone();
            let result = match *answer {
                Answer::Rejected(errors) => {
                    response.rejected += 1;
                    let errors: Vec<ErrorItem> = errors
                        .iter()
                        .map(|err| prefixed(&prefix, err.clone()))
                        .collect();
                    all_errors.extend(errors.iter().cloned());
                    BatchResult::rejected(index, client_event_id, errors, None)
                }
                Answer::Stored(AppendStatus::Accepted(id)) => {
                    response.accepted += 1;
                    BatchResult::stored(
                        index,
                        client_event_id.unwrap_or_else(|| id.to_string()),
                        id,
                        Outcome::Accepted,
                    )
                }
                Answer::Stored(AppendStatus::Duplicate(id)) => {
                    response.duplicates += 1;
                    BatchResult::stored(
                        index,
                        client_event_id.unwrap_or_default(),
                        id,
                        Outcome::Duplicate,
                    )
                }
                Answer::Stored(AppendStatus::Conflict(existing)) => {
                    response.rejected += 1;
                    let mut loc = prefix.clone();
                    loc.push("event_id".into());
                    let error = ErrorItem {
                        loc,
                        kind: "conflict".into(),
                        msg: format!(
                            "an event with this event_id and different content is stored as {existing}"
                        ),
                    };
                    all_errors.push(error.clone());
                    BatchResult::rejected(
                        index,
                        client_event_id,
                        vec![error],
                        Some(existing.to_string()),
                    )
                }
            };
            response.results.push(result);
        }
        if response.accepted + response.duplicates == 0 {
            let detail = format!("all {} events were rejected", response.rejected);
            return Err(ApiError::validation(detail, all_errors)
                .with_field("accepted", 0)
                .with_field("duplicates", 0)
                .with_field("rejected", response.rejected)
                .with_field(
                    "results",
                    serde_json::to_value(&response.results).unwrap_or_default(),
                ));
        }
        let status = if response.rejected == 0 {
            StatusCode::OK
        } else {
            StatusCode::MULTI_STATUS
        };
        Ok((status, axum::Json(response)).into_response())
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// Stored now.
    Accepted,
    /// Already stored with the same content; `id` is the original one.
    Duplicate,
    /// Not stored; `errors` says why (`type: conflict` when another event has this `event_id`).
    Rejected,
}

/// The answer to `POST /v1/events` for a stored or duplicate event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SingleAnswer<'a> {
    /// The server's id of the event.
    id: String,
    /// The client's `event_id`, or the server's id when the client sent none.
    event_id: &'a str,
    /// `accepted` (201) or `duplicate` (200).
    status: Outcome,
}

fn single_response(
    client_event_id: Option<&str>,
    status: AppendStatus,
) -> Result<Response, ApiError> {
    match status {
        AppendStatus::Accepted(id) => {
            let event_id = client_event_id.map_or_else(|| id.to_string(), str::to_owned);
            let location =
                HeaderValue::try_from(format!("/v1/events/{id}")).map_err(ApiError::internal)?;
            let answer = SingleAnswer {
                id: id.to_string(),
                event_id: &event_id,
                status: Outcome::Accepted,
            };
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                axum::Json(answer),
            )
                .into_response())
        }
        AppendStatus::Duplicate(id) => {
            let event_id = client_event_id.unwrap_or_default();
            Ok((
                StatusCode::OK,
                axum::Json(SingleAnswer {
                    id: id.to_string(),
                    event_id,
                    status: Outcome::Duplicate,
                }),
            )
                .into_response())
        }
        AppendStatus::Conflict(existing) => Err(ApiError::conflict(
            "conflict",
            format!(
                "an event with this event_id and different content is already stored as {existing}"
            ),
        )
        .with_field("existing_id", existing.to_string())),
    }
}

/// The answer to `POST /v1/events/batch`: counts, and one result per input event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchResponse {
    accepted: usize,
    duplicates: usize,
    rejected: usize,
    /// One entry per input event, in input order.
    results: Vec<BatchResult>,
}

/// What became of one event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchResult {
    /// The event's place in the batch (its line, for NDJSON).
    index: usize,
    /// The client's `event_id` (the server's id for an accepted event sent without one);
    /// null when the event carried no readable `event_id`.
    #[schema(required = true)]
    event_id: Option<String>,
    /// The server's id; absent for a rejected event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    id: Option<String>,
    status: Outcome,
    /// For a conflict: the id of the stored event that has this `event_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    existing_id: Option<String>,
    /// Why a rejected event was rejected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ErrorItem>,
}

impl BatchResult {
    fn stored(
        index: usize,
        event_id: String,
        id: pulsestream_core::EventId,
        status: Outcome,
    ) -> Self {
        Self {
            index,
            event_id: Some(event_id),
            id: Some(id.to_string()),
            status,
            existing_id: None,
            errors: Vec::new(),
        }
    }

    fn rejected(
        index: usize,
        event_id: Option<String>,
        errors: Vec<ErrorItem>,
        existing_id: Option<String>,
    ) -> Self {
        Self {
            index,
            event_id,
            id: None,
            status: Outcome::Rejected,
            existing_id,
            errors,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    events: Option<&'a RawValue>,
}

/// One event's text, or why it could not even be cut out of the body.
type RawItem<'a> = Result<&'a str, Vec<FieldError>>;

fn envelope_items(text: &str) -> Result<Vec<RawItem<'_>>, ApiError> {
    let envelope = serde_json::from_str::<Envelope<'_>>(text).map_err(|err| {
        if err.is_data() {
            ApiError::validation(
                "the body must be an object with an events array",
                vec![ErrorItem {
                    loc: vec!["body".into()],
                    kind: "model_type".into(),
                    msg: "must be a JSON object".into(),
                }],
            )
        } else {
            json_syntax_error(&err)
        }
    })?;
    let Some(events) = envelope.events else {
        return Err(envelope_error("missing", "field required"));
    };
    let items = serde_json::from_str::<Vec<&RawValue>>(events.get())
        .map_err(|_| envelope_error("list_type", "must be an array of events"))?;
    Ok(items.into_iter().map(|item| Ok(item.get())).collect())
}

fn envelope_error(kind: &str, msg: &str) -> ApiError {
    ApiError::validation(
        format!("events {msg}"),
        vec![ErrorItem {
            loc: vec!["body".into(), "events".into()],
            kind: kind.into(),
            msg: msg.into(),
        }],
    )
}

/// A 400 that says where the JSON broke.
pub fn json_syntax_error(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {err}"))
        .with_field("line", err.line())
        .with_field("column", err.column())
}

fn count_errors(count: usize) -> String {
    if count == 1 {
        "1 error in the request body".into()
    } else {
        format!("{count} errors in the request body")
    }
}

fn error_item(prefix: &[&str], err: FieldError) -> ErrorItem {
    let prefix: Vec<Value> = prefix.iter().map(|part| Value::from(*part)).collect();
    prefixed(&prefix, err)
}

fn prefixed(prefix: &[Value], err: FieldError) -> ErrorItem {
    let mut loc = prefix.to_vec();
    loc.extend(
        err.loc
            .into_iter()
            .map(|part| Value::from(part.into_owned())),
    );
    ErrorItem {
        loc,
        kind: err.kind.into(),
        msg: err.msg,
    }
}
