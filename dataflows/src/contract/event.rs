//! What a family's decoder makes of a record: an event with its identity and event time,
//! and what ingest turned away (for the families' data-quality features).

use serde::{Deserialize, Serialize};

use crate::contract::record::ErrorKind;

/// An event's identity: a 128-bit hash of its `event_id`, so dedup state is fixed-size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub u128);

impl EventId {
    pub fn of(event_id: &str) -> Self {
        EventId(xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()))
    }
}

/// A decoded event with its identity and event time (epoch ms).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timed<E> {
    pub id: EventId,
    pub ts: u64,
    pub event: E,
}

/// Why ingest turned a record away, for the families' data-quality counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rejected {
    Invalid(ErrorKind),
    Duplicate,
}

/// A record ingest turned away and its time: the event time of a duplicate; for an
/// invalid record the integer `ts` it carries (unless it is ahead of the clock's
/// allowance), else its Kafka append time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: Rejected,
    pub ts: u64,
}
