//! PulseStream's domain: tenants, events and the rules an event must satisfy.
//!
//! This crate performs no I/O. It turns wire input into validated [`NewEvent`]s (or
//! per-field [`FieldError`]s) and defines the identifiers every other crate speaks in.

pub mod address;
pub mod breaker;
mod destination;
mod event;
pub mod filter;
mod ids;
pub mod secret;
mod tenant;

pub use breaker::{Breaker, Circuit};
pub use destination::{
    Destination, DestinationKind, RetryPolicy, Routable, TableColumns, check_template,
    glob_matches, render_template,
};
pub use event::{
    ContentHash, FieldError, MAX_BATCH_EVENTS, MAX_PAYLOAD_DEPTH, MAX_STRING_CHARS, NewEvent,
    WireEvent, format_timestamp, parse_timestamp, wire_error,
};
pub use filter::{EventFilter, OrderingKey, PayloadFilter};
pub use ids::{DestinationId, EventId, IdParseError, KeyId, TenantId};
pub use tenant::{
    KeyScope, RateLimit, RateLimitError, Tenant, TenantChange, TenantChangeError, TenantKey,
    earliest_retention_cutoff,
};
