//! Stream time and windows (DESIGN §3).

use serde::{Deserialize, Serialize};

/// Dataflow time: stream time in epoch milliseconds (UTC). One value is one *tick*.
pub type Tick = u64;

/// Rounds `x` up to a multiple of `resolution` (epoch-aligned).
pub fn ceil_to(x: u64, resolution: u64) -> u64 {
    x.div_ceil(resolution) * resolution
}

pub const SECOND: u64 = 1_000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;

/// A sliding window: an event is in it from its insertion until its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    pub length_ms: u64,
}

impl Window {
    pub const fn days(d: u64) -> Self {
        Window { length_ms: d * DAY }
    }
    pub const fn minutes(m: u64) -> Self {
        Window {
            length_ms: m * MINUTE,
        }
    }
    /// Windows of a day or more expire on minute boundaries, shorter ones on seconds: hot keys
    /// then cost at most one retraction per resolution step.
    pub const fn resolution_ms(&self) -> u64 {
        if self.length_ms >= DAY {
            MINUTE
        } else {
            SECOND
        }
    }
    /// The first tick at which an event with event time `ts` is no longer in the window.
    pub fn expiry(&self, ts: u64) -> Tick {
        ceil_to(ts.saturating_add(self.length_ms), self.resolution_ms())
    }
    /// Whether an event with event time `ts`, inserted at tick `at`, still counts at tick `at`.
    pub fn live_at(&self, ts: u64, at: Tick) -> bool {
        self.expiry(ts) > at
    }
}

pub const WINDOW_7D: Window = Window::days(7);
pub const WINDOW_30D: Window = Window::days(30);

/// The two window lengths most features come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Span {
    D7,
    D30,
}

impl Span {
    pub fn window(self) -> Window {
        match self {
            Span::D7 => WINDOW_7D,
            Span::D30 => WINDOW_30D,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_to_the_resolution() {
        assert_eq!(ceil_to(0, MINUTE), 0);
        assert_eq!(ceil_to(1, MINUTE), MINUTE);
        assert_eq!(ceil_to(MINUTE, MINUTE), MINUTE);
        let ts = 1_700_000_000_123;
        let e = WINDOW_7D.expiry(ts);
        assert_eq!(e % MINUTE, 0);
        assert!(e >= ts + 7 * DAY && e < ts + 7 * DAY + MINUTE);
        assert_eq!(Window::minutes(10).expiry(1_500), 10 * MINUTE + 2 * SECOND);
    }
}
