//! What the impression and watch topics carry, decoded: the events, the ids they name and
//! where each record came from (its raw row keeps that).

use compact_str::CompactString;
use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

/// A viewer. Inline up to 24 bytes, like the other families' ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub CompactString);

/// A watchable item (a video, an episode).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemId(pub CompactString);

/// Where a record was read: the raw tables keep it (seed 004's `server_received_ts_ms` is
/// the broker's append time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Source {
    pub append_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

/// One shown item of a slate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Shown {
    pub item: ItemId,
    pub position: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Impression {
    /// The producer's `event_id`, kept for the raw rows' key.
    pub event_id: String,
    pub user: UserId,
    pub items: Vec<Shown>,
    pub request_id: Option<String>,
    pub surface: Option<String>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Watch {
    pub event_id: String,
    pub user: UserId,
    pub item: ItemId,
    /// 0..=100.
    pub percent_watched: OrderedFloat<f64>,
    /// ≥ 0.
    pub watch_time_sec: OrderedFloat<f64>,
    pub source: Source,
}

/// A record of either topic. Boxed: an impression holds a whole slate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WatchEvent {
    Impression(Box<Impression>),
    Watch(Box<Watch>),
}

/// How strongly a watch signals interest (seed 004: strong → "purchase", medium →
/// "click", else "view").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Signal {
    View,
    Medium,
    Strong,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::View => "view",
            Signal::Medium => "medium",
            Signal::Strong => "strong",
        }
    }
}
