//! Typed identifiers, so that a tenant id can never be passed where an event id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An identifier that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid id")]
pub struct IdParseError(pub String);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Returns the id's 16 bytes, big-endian, which sort like the id.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Builds the id from 16 bytes produced by [`Self::as_bytes`].
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self).map_err(|_| IdParseError(s.to_owned()))
            }
        }
    };
}

uuid_id!(
    /// A tenant: the unit of isolation, authentication and quota.
    TenantId
);
uuid_id!(
    /// The server's id of a stored event. Its first 8 bytes are the event's timestamp
    /// (microseconds, sign bit flipped, big-endian) and the last 8 are random, so ids sort
    /// by event time and one index serves both lookup by id and scans in time order.
    /// Written like a UUID, but it is not one of UUID's versions: treat it as opaque.
    EventId
);
uuid_id!(
    /// One API key of a tenant (not the key itself, which is never stored).
    KeyId
);

uuid_id!(
    /// A tenant's destination (a webhook or a NATS subject).
    DestinationId
);

impl DestinationId {
    /// Makes a new random destination id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl TenantId {
    /// Makes a new random tenant id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl KeyId {
    /// Makes a new random key id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl EventId {
    /// Builds the id of an event with this timestamp; `entropy` tells apart events of the
    /// same microsecond.
    pub fn from_parts(timestamp_micros: i64, entropy: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&((timestamp_micros as u64) ^ (1 << 63)).to_be_bytes());
        bytes[8..].copy_from_slice(&entropy.to_be_bytes());
        Self(Uuid::from_bytes(bytes))
    }

    /// Returns the event timestamp the id was built from, in microseconds since the epoch.
    pub fn timestamp_micros(&self) -> i64 {
        let high: [u8; 8] = self.as_bytes()[..8]
            .try_into()
            .expect("a UUID has 16 bytes");
        (u64::from_be_bytes(high) ^ (1 << 63)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_sort_by_timestamp_across_the_epoch() {
        let before = EventId::from_parts(-1_000, u64::MAX);
        let at = EventId::from_parts(0, 0);
        let after = EventId::from_parts(1_000, 0);
        assert!(before < at && at < after);
        assert!(before.as_bytes() < at.as_bytes());
        assert_eq!(before.timestamp_micros(), -1_000);
        assert_eq!(after.to_string().parse::<EventId>().unwrap(), after);
    }
}
