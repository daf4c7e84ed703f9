//! What the reading topic carries, decoded.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub CompactString);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub CompactString);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpisodeId(pub CompactString);

/// A scroll depth in thousandths of a percent (0..=100,000): `scroll_pct` as given, to
/// three decimals (rounded to the nearest). Whole numbers sum exactly in the windows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Depth(pub u32);

impl Depth {
    pub const FULL: Depth = Depth(100_000);
    /// `pct` in 0..=100 (the decoder checks the range).
    pub fn from_pct(pct: f64) -> Depth {
        Depth((pct.clamp(0.0, 100.0) * 1000.0).round() as u32)
    }
    pub fn pct(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// What a reader did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Enter,
    /// How far down the episode the reader is.
    Scroll(Depth),
    Complete,
    Exit,
}

/// An A/B experiment and the group the reader is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Arm {
    pub experiment: CompactString,
    pub group: CompactString,
}

/// Who reads what, where: the same on every event of a session. Its ids are inline up to
/// 24 bytes (`CompactString`): a session's pieces and the views' contributions copy them
/// dozens of times per event, and each copy was a heap allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reader {
    pub user: UserId,
    pub episode: EpisodeId,
    pub country: CompactString,
    pub device: CompactString,
    pub platform: CompactString,
    /// IANA zone: the event's `tz`, else the country's main zone; `None` when the country
    /// has no known zone (its local time is read in UTC, and counted as `unzoned_events`).
    pub tz: Option<CompactString>,
    pub arm: Option<Arm>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadingEvent {
    pub session: SessionId,
    pub action: Action,
    pub reader: Reader,
}
