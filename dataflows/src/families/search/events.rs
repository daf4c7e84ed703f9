//! What the search topic carries, decoded: the events and the ids they name.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prefix(pub String);

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
