//! What the reading topic carries, decoded.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpisodeId(pub String);

/// What a reader did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Enter,
    /// Scroll depth in percent, 0..=100.
    Scroll(u8),
    Complete,
    Exit,
}

/// An A/B experiment and the group the reader is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Arm {
    pub experiment: String,
    pub group: String,
}

/// Who reads what, where: the same on every event of a session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reader {
    pub user: UserId,
    pub episode: EpisodeId,
    pub country: String,
    pub device: String,
    pub platform: String,
    /// IANA zone: the event's `tz`, else the country's main zone, else UTC.
    pub tz: String,
    pub arm: Option<Arm>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadingEvent {
    pub session: SessionId,
    pub action: Action,
    pub reader: Reader,
}
