//! What the search topic carries, decoded: the events and the ids they name.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::*;

/// A document id. Kept inline up to 24 bytes: an event's contributions name its documents
/// a dozen times over, and a heap copy each time was a fifth of the dataflow's time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub CompactString);

/// An autocomplete prefix, inline like [`DocId`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prefix(pub CompactString);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub String);

/// A search or autocomplete event, reduced to what the features read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SearchEvent {
    /// One impression per distinct listed document.
    Impression {
        query: QueryHash,
        docs: Vec<DocId>,
    },
    Click {
        session: SessionId,
        query: QueryHash,
        doc: DocId,
    },
    Dwell {
        doc: DocId,
        dwell_ms: u64,
    },
    AcImpression {
        prefix: Prefix,
    },
    AcSelect {
        session: SessionId,
        prefix: Prefix,
    },
    AddToCart {
        doc: DocId,
    },
    Purchase {
        doc: DocId,
    },
}
