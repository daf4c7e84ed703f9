//! The campaign view: rolling 1-hour and 24-hour sums per campaign.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::state::State;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Tick, Window, DAY, HOUR};
use crate::operators::windowed::{derived_intervals, intervals, Interval};

use super::*;

/// The sliding windows of the campaign view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rolling {
    H1,
    H24,
}

impl Rolling {
    pub(super) fn window(self) -> Window {
        match self {
            Rolling::H1 => Window { length_ms: HOUR },
            Rolling::H24 => Window { length_ms: DAY },
        }
    }
}

/// One sum of the campaign view (the weight is the count, or the amount for money).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CampaignMeasure {
    /// `Closed` counts are those of closed metrics windows, for the latest one.
    Closed {
        start: u64,
        kind: Kind,
    },
    Impressions(Rolling),
    Clicks(Rolling),
    Conversions(Rolling),
    Spend(Rolling),
    Revenue(Rolling),
    Unattributed,
}

impl Ads {
    /// What one count adds to its campaign's view: both rolling windows and the closed
    /// metrics window (shown for an hour after it closes).
    pub(super) fn campaign_counts(
        &self,
        campaign: &CampaignId,
        kind: Kind,
        ts: u64,
        amount: Option<i64>,
    ) -> Vec<Interval<(CampaignId, CampaignMeasure)>> {
        let length = self.config.metrics_window_ms;
        let start = ts - ts % length;
        let closes = self.closes(start, length);
        let mut out = vec![(
            (campaign.clone(), CampaignMeasure::Closed { start, kind }),
            1,
            closes,
            Some(closes + HOUR),
        )];
        for rolling in [Rolling::H1, Rolling::H24] {
            let until = Some(rolling.window().expiry(ts));
            let count = match kind {
                Kind::Impression => CampaignMeasure::Impressions(rolling),
                Kind::Click => CampaignMeasure::Clicks(rolling),
                Kind::Conversion => CampaignMeasure::Conversions(rolling),
            };
            out.push(((campaign.clone(), count), 1, 0, until));
        }
        if let Some(amount) = amount.filter(|a| *a != 0) {
            out.extend(self.campaign_money(campaign, kind, ts, amount));
        }
        out
    }

    /// What an amount adds to its campaign's rolling spend (clicks) or revenue.
    pub(super) fn campaign_money(
        &self,
        campaign: &CampaignId,
        kind: Kind,
        ts: u64,
        amount: i64,
    ) -> impl Iterator<Item = Interval<(CampaignId, CampaignMeasure)>> {
        let campaign = campaign.clone();
        [Rolling::H1, Rolling::H24].into_iter().map(move |rolling| {
            let money = match kind {
                Kind::Click => CampaignMeasure::Spend(rolling),
                _ => CampaignMeasure::Revenue(rolling),
            };
            let until = Some(rolling.window().expiry(ts));
            ((campaign.clone(), money), amount as isize, 0, until)
        })
    }

    /// A campaign's view: the latest closed window and the rolling sums.
    pub(super) fn campaign_row(
        &self,
        campaign: &CampaignId,
        measures: &[(&CampaignMeasure, isize)],
    ) -> FeatureRow {
        let mut latest: Option<u64> = None;
        let mut closed = [0i64; 3];
        let mut sums = [[0i64; 5]; 2]; // per rolling window: impressions, clicks, conversions, spend, revenue
        let mut unattributed = 0;
        for (m, n) in measures {
            let n = *n as i64;
            match m {
                CampaignMeasure::Closed { start, kind } => {
                    if latest != Some(*start) {
                        // `Closed` measures sort by start: a later one replaces the counts
                        latest = Some(*start);
                        closed = [0; 3];
                    }
                    closed[*kind as usize] += n;
                }
                CampaignMeasure::Impressions(r) => sums[*r as usize][0] += n,
                CampaignMeasure::Clicks(r) => sums[*r as usize][1] += n,
                CampaignMeasure::Conversions(r) => sums[*r as usize][2] += n,
                CampaignMeasure::Spend(r) => sums[*r as usize][3] += n,
                CampaignMeasure::Revenue(r) => sums[*r as usize][4] += n,
                CampaignMeasure::Unattributed => unattributed += n,
            }
        }
        let mut values = match latest {
            Some(start) => vec![
                Value::Text(iso(start)),
                Value::Int(closed[0]),
                Value::Int(closed[1]),
                Value::Int(closed[2]),
                Value::float(rate(closed[1], closed[0])),
                Value::float(rate(closed[2], closed[1])),
            ],
            // no window shown: its fields are absent, not an empty window
            None => vec![Value::Null; 6],
        };
        for s in sums {
            values.extend([
                Value::Int(s[0]),
                Value::Int(s[1]),
                Value::Int(s[2]),
                Value::float(rate(s[1], s[0])),
                Value::float(rate(s[2], s[1])),
                Value::Int(s[3]),
                Value::Int(s[4]),
            ]);
        }
        values.push(Value::Int(unattributed));
        FeatureRow {
            table: table::CAMPAIGN,
            key: vec![campaign.0.clone()],
            values,
        }
    }

    /// The campaign view: rolling sums per campaign.
    pub(super) fn campaigns<'s>(
        &self,
        tallies: VecCollection<'s, Tick, Tally>,
        attribution: VecCollection<'s, Tick, Attribution>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        // the campaign view
        let this = self.clone();
        let campaign_events = intervals(state, tallies, move |t: &Tally| {
            let campaign = &t.slot.campaign;
            match t.measure {
                Measure::Impressions => {
                    this.campaign_counts(campaign, Kind::Impression, t.at, None)
                }
                Measure::Clicks => this.campaign_counts(campaign, Kind::Click, t.at, None),
                Measure::Spend => this
                    .campaign_money(campaign, Kind::Click, t.at, 1)
                    .collect(),
            }
        });
        let this = self.clone();
        let campaign_conversions = derived_intervals(attribution, move |a: &Attribution| {
            let c = &a.conversion;
            match a.click {
                Some(_) => {
                    this.campaign_counts(&c.campaign, Kind::Conversion, c.ts, Some(c.revenue))
                }
                None => vec![(
                    (c.campaign.clone(), CampaignMeasure::Unattributed),
                    1,
                    0,
                    Some(Rolling::H24.window().expiry(c.ts)),
                )],
            }
        });
        let this = self.clone();
        campaign_events
            .concat(campaign_conversions)
            .consolidate_stream()
            .reduce_named("Campaigns", move |campaign, measures, out| {
                out.push((this.campaign_row(campaign, measures), 1));
            })
            .map(|(_, row)| row)
    }
}
