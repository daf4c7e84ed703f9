//! The decayed CTR (forward decay, DESIGN §3): sums weighted by a fixed landmark per
//! epoch, so the feature changes only when events arrive; readers compute its value.

use serde::{Deserialize, Serialize};

use super::*;

/// Forward decay (Cormode et al.) with a landmark per epoch of four half-lives: an event's
/// weight `2^((ts - L)/h)` then stays below 2^4, so sums fit an `isize` exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

const DECAY_SCALE: f64 = (1u64 << 20) as f64;

const HALF_LIVES_PER_EPOCH: u64 = 4;

impl Epoch {
    fn length(half_life: u64) -> u64 {
        HALF_LIVES_PER_EPOCH * half_life
    }
    pub fn landmark(self, half_life: u64) -> u64 {
        self.0 * Self::length(half_life)
    }
    /// The epoch of `ts` and the event's weight at that epoch's landmark, in fixed point.
    pub fn weigh(ts: u64, half_life: u64) -> (Epoch, isize) {
        let epoch = Epoch(ts / Self::length(half_life));
        let since = (ts - epoch.landmark(half_life)) as f64 / half_life as f64;
        (epoch, (since.exp2() * DECAY_SCALE).round() as isize)
    }
}

/// Forward-decayed sums relative to one landmark: the value at time `t` is `sum · 2^(-(t - L)/h)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecayedSums {
    pub landmark_ms: u64,
    pub clicks: f64,
    pub impressions: f64,
}

impl DecayedSums {
    /// Smoothed decayed CTR at `at_ms`: what the read API serves as `ctr_decay`.
    pub fn ctr_at(&self, at_ms: u64, half_life: u64, alpha: f64, beta: f64) -> f64 {
        let f = (-(at_ms as f64 - self.landmark_ms as f64) / half_life as f64).exp2();
        (self.clicks * f + alpha) / (self.impressions * f + alpha + beta)
    }
}

impl Search {
    /// Sums the per-epoch fixed-point weights relative to the newest landmark.
    pub(super) fn decayed(&self, sums: &[(Measure, isize)]) -> DecayedSums {
        let h = self.config.decay_half_life_ms;
        let newest = sums
            .iter()
            .filter_map(|(m, _)| match m {
                Measure::DecayClicks(e) | Measure::DecayImpressions(e) => Some(e.0),
                _ => None,
            })
            .max();
        let Some(newest) = newest else {
            return DecayedSums::default();
        };
        let mut out = DecayedSums {
            landmark_ms: Epoch(newest).landmark(h),
            ..Default::default()
        };
        for (m, n) in sums {
            let (epoch, slot) = match m {
                Measure::DecayClicks(e) => (e, &mut out.clicks),
                Measure::DecayImpressions(e) => (e, &mut out.impressions),
                _ => continue,
            };
            let shift = ((newest - epoch.0) * HALF_LIVES_PER_EPOCH) as i32;
            *slot += *n as f64 / DECAY_SCALE * 2f64.powi(-shift);
        }
        out
    }
}
