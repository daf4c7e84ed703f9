//! Closed 5-minute and 1-hour performance windows per campaign, placement and category,
//! with the defense values (DESIGN §5.3).

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::state::State;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::Tick;
use crate::operators::windowed::{derived_intervals, intervals, Interval};

use super::*;

/// What a window counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Impression,
    Click,
    Conversion,
}

/// A tumbling window of one category: the defense values need the category's totals, so
/// all its campaigns' counts meet in one place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub category: String,
    pub start: u64,
    pub length: u64,
}

/// What one count in a window is: whose, where, and of what.
pub type Counted = (CampaignId, Placement, Kind);

/// `hits / trials`, 0 without trials.
pub fn rate(hits: i64, trials: i64) -> f64 {
    if trials > 0 {
        hits as f64 / trials as f64
    } else {
        0.0
    }
}

/// Defense values (DESIGN §5.3): the campaign's rates smoothed toward its category's with a
/// prior of `m` impressions behaving like the category — `m·ctr_c` clicks and
/// `m·ctr_c·cvr_c` conversions.
pub fn defense(own: [i64; 3], category: [i64; 3], m: f64) -> (f64, f64) {
    let [impressions, clicks, conversions] = own;
    let ctr_c = rate(category[1], category[0]);
    let cvr_c = rate(category[2], category[1]);
    let prior_clicks = m * ctr_c;
    let ctr = (clicks as f64 + prior_clicks) / (impressions as f64 + m);
    let denominator = clicks as f64 + prior_clicks;
    let cvr = if denominator > 0.0 {
        (conversions as f64 + prior_clicks * cvr_c) / denominator
    } else {
        0.0
    };
    (ctr, cvr)
}

impl Ads {
    /// When a window's record may first show: its end plus the allowed lateness.
    pub(super) fn closes(&self, start: u64, length: u64) -> Tick {
        start + length + self.config.allowed_lateness_ms
    }

    /// A window leaves the dataflow once no event that is not too late can change it.
    pub(super) fn window_retires(&self, start: u64, length: u64) -> Tick {
        self.horizon_window().expiry(start + length)
    }

    pub(super) fn windows(&self) -> [u64; 2] {
        [self.config.metrics_window_ms, self.config.defense_window_ms]
    }

    /// A window contribution of `slot` for an event at `ts`: one per window length.
    pub(super) fn window_counts(
        &self,
        slot: &Slot,
        kind: Kind,
        ts: u64,
    ) -> impl Iterator<Item = Interval<(WindowKey, Counted)>> {
        let this = self.clone();
        let slot = slot.clone();
        self.windows().into_iter().map(move |length| {
            let start = ts - ts % length;
            (
                (
                    WindowKey {
                        category: slot.category.clone(),
                        start,
                        length,
                    },
                    (slot.campaign.clone(), slot.placement, kind),
                ),
                1,
                this.closes(start, length),
                Some(this.window_retires(start, length)),
            )
        })
    }

    /// The record of one window of one campaign and placement.
    pub(super) fn performance_values(
        &self,
        key: &WindowKey,
        own: [i64; 3],
        category: [i64; 3],
    ) -> Vec<Value> {
        let [impressions, clicks, conversions] = own;
        let (defense_ctr, defense_cvr) =
            defense(own, category, self.config.defense_prior_impressions);
        let end = iso(key.start + key.length);
        let sufficient = impressions as f64 >= self.config.defense_prior_impressions;
        vec![
            Value::Text(end.clone()),
            Value::Text(end),
            Value::Int(impressions),
            Value::Int(clicks),
            Value::Int(conversions),
            Value::float(rate(clicks, impressions)),
            Value::float(rate(conversions, clicks)),
            Value::float(defense_ctr),
            Value::float(defense_cvr),
            Value::Text(
                if sufficient {
                    "SUFFICIENT"
                } else {
                    "INSUFFICIENT"
                }
                .into(),
            ),
        ]
    }

    pub(super) fn metric_type(&self, length: u64) -> &'static str {
        if length == self.config.defense_window_ms {
            "DEFENSE_VALUE"
        } else {
            "CTR"
        }
    }

    /// The window records of one category's window: one per campaign and placement.
    pub(super) fn window_rows(
        &self,
        key: &WindowKey,
        counts: &[(&Counted, isize)],
    ) -> Vec<FeatureRow> {
        let idx = |k: Kind| k as usize;
        let mut category = [0i64; 3];
        let mut by_slot: Vec<((&CampaignId, Placement), [i64; 3])> = Vec::new();
        for ((campaign, placement, kind), n) in counts {
            category[idx(*kind)] += *n as i64;
            match by_slot.last_mut() {
                Some((s, c)) if *s == (campaign, *placement) => c[idx(*kind)] += *n as i64,
                _ => {
                    let mut c = [0; 3];
                    c[idx(*kind)] = *n as i64;
                    by_slot.push(((campaign, *placement), c));
                }
            }
        }
        let mut rows = Vec::with_capacity(2 * by_slot.len());
        for ((campaign, placement), own) in by_slot {
            let key_parts = vec![
                campaign.0.clone(),
                placement.as_str().to_string(),
                key.category.clone(),
                iso(key.start),
                self.metric_type(key.length).to_string(),
            ];
            let values = self.performance_values(key, own, category);
            for table in [table::PERFORMANCE, table::PERFORMANCE_HISTORY] {
                rows.push(FeatureRow {
                    table,
                    key: key_parts.clone(),
                    values: values.clone(),
                });
            }
        }
        rows
    }

    /// Closed tumbling windows, per category so the defense values see its totals.
    pub(super) fn performance_windows<'s>(
        &self,
        tallies: VecCollection<'s, Tick, Tally>,
        attribution: VecCollection<'s, Tick, Attribution>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        // closed tumbling windows, per category so the defense values see its totals
        let this = self.clone();
        let counted = intervals(state, tallies, move |t: &Tally| {
            let kind = match t.measure {
                Measure::Impressions => Kind::Impression,
                Measure::Clicks => Kind::Click,
                Measure::Spend => return Vec::new(),
            };
            this.window_counts(&t.slot, kind, t.at).collect()
        });
        let this = self.clone();
        let converted = derived_intervals(attribution, move |a: &Attribution| {
            let Some(click) = &a.click else {
                return Vec::new();
            };
            let c = &a.conversion;
            let slot = Slot {
                campaign: c.campaign.clone(),
                placement: click.placement,
                category: c.category.clone(),
            };
            this.window_counts(&slot, Kind::Conversion, c.ts).collect()
        });
        let this = self.clone();
        counted
            .concat(converted)
            .consolidate_stream()
            .reduce_named("PerformanceWindows", move |key, counts, out| {
                for row in this.window_rows(key, counts) {
                    out.push((row, 1));
                }
            })
            .map(|(_, row)| row)
    }
}
