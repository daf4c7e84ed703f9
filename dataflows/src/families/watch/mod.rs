//! A recommender's watch loop (DESIGN §5.5, seed 004): impressions and watches persisted
//! idempotently as raw rows, and the features they feed — each item's popularity (Σ signal
//! weight), watches, impressions and watch-through over 7 and 30 days (`items`, windowed
//! sums of `operators::window_sums`), each viewer's recent history and the co-visitation
//! of the items they watch (`history`: a viewer is a function of their watches in the
//! window, by `window_map`; the pairs it makes feed the items' sums as derived updates).

pub mod decode;
mod events;
pub mod generate;
mod history;
mod items;
mod raw;
mod tables;

pub use events::*;
pub use history::{Seen, ViewerOut};
pub use items::{smoothed, Entity, Measure, Neighbour};
pub use tables::*;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Map;

use crate::contract::counters::Counters;
use crate::contract::dataflow::{Dataflow, GenerateSpec, Produced};
use crate::contract::dimension::DimRow;
use crate::contract::event::{Rejection, Timed};
use crate::contract::quality::{CheckName, ExpectSpec};
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window, DAY, WINDOW_30D};
use crate::operators::once_per_key::once_per_key;
use crate::operators::window_sums::window_rows;
use crate::operators::windowed::with_expiries;

/// A signal's thresholds: a watch reaches it at `percent` watched or `seconds` watched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub percent: f64,
    pub seconds: f64,
    pub weight: u32,
}

/// `[dataflows.watch]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    pub impressions_topic: String,
    pub watches_topic: String,
    /// Seed 004: strong at ≥ 80 % or ≥ 120 s, weight 10.
    pub strong: Threshold,
    /// Seed 004: medium at ≥ 40 % or ≥ 30 s, weight 3.
    pub medium: Threshold,
    /// Any other watch (seed 004: 1).
    pub view_weight: u32,
    /// Items in a viewer's history (seed 004's `STREAM_FEATURE_HISTORY_SIZE`: 20).
    pub history_size: usize,
    /// Neighbours in an item's `co_visit` list.
    pub neighbours: usize,
    /// How long a watch stays in its viewer's history and its pairs count, in days.
    pub co_visitation_days: u64,
    /// Smoothing prior of the watch-through rate: `(watches + alpha) / (impressions +
    /// alpha + beta)`.
    pub alpha: f64,
    pub beta: f64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            impressions_topic: "impressions".into(),
            watches_topic: "watches".into(),
            strong: Threshold {
                percent: 80.0,
                seconds: 120.0,
                weight: 10,
            },
            medium: Threshold {
                percent: 40.0,
                seconds: 30.0,
                weight: 3,
            },
            view_weight: 1,
            history_size: 20,
            neighbours: 20,
            co_visitation_days: 30,
            alpha: 1.0,
            beta: 20.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Watches {
    config: WatchConfig,
}

impl Watches {
    /// A watch's signal and its weight.
    pub fn signal(&self, w: &Watch) -> (Signal, u32) {
        let c = &self.config;
        let reaches =
            |t: &Threshold| w.percent_watched.0 >= t.percent || w.watch_time_sec.0 >= t.seconds;
        if reaches(&c.strong) {
            (Signal::Strong, c.strong.weight)
        } else if reaches(&c.medium) {
            (Signal::Medium, c.medium.weight)
        } else {
            (Signal::View, c.view_weight)
        }
    }

    pub fn co_visitation_window(&self) -> Window {
        Window::days(self.config.co_visitation_days)
    }
}

impl Dataflow for Watches {
    type Event = WatchEvent;
    type Config = WatchConfig;
    const NAME: &'static str = "watch";

    fn new(config: WatchConfig) -> Self {
        Watches { config }
    }
    fn config(&self) -> &WatchConfig {
        &self.config
    }
    fn check(&self) -> Result<(), String> {
        let c = &self.config;
        let finite = c.alpha.is_finite() && c.beta.is_finite();
        if !(finite && c.alpha >= 0.0 && c.beta >= 0.0 && c.alpha + c.beta > 0.0) {
            return Err(format!(
                "dataflows.watch.alpha = {} and beta = {}: both must be finite, ≥ 0 and not both 0 (e.g. alpha = 1, beta = 20)",
                c.alpha, c.beta
            ));
        }
        for (name, t) in [("strong", &c.strong), ("medium", &c.medium)] {
            let fine =
                (0.0..=100.0).contains(&t.percent) && t.seconds >= 0.0 && t.seconds.is_finite();
            if !fine {
                return Err(format!(
                    "dataflows.watch.{name}: percent = {} must be 0 to 100 and seconds = {} a finite number ≥ 0 (seed 004: strong 80 % or 120 s, medium 40 % or 30 s)",
                    t.percent, t.seconds
                ));
            }
        }
        for (name, w) in [
            ("strong.weight", c.strong.weight),
            ("medium.weight", c.medium.weight),
            ("view_weight", c.view_weight),
        ] {
            if w > 1_000_000 {
                return Err(format!(
                    "dataflows.watch.{name} = {w}: must be at most 1000000 (seed 004: 10, 3, 1)"
                ));
            }
        }
        for (name, n) in [
            ("history_size", c.history_size),
            ("neighbours", c.neighbours),
        ] {
            if n == 0 || n > 1_000 {
                return Err(format!(
                    "dataflows.watch.{name} = {n}: must be 1 to 1000 (default 20)"
                ));
            }
        }
        if c.co_visitation_days == 0 || c.co_visitation_days > 365 {
            return Err(format!(
                "dataflows.watch.co_visitation_days = {}: must be 1 to 365 (default 30)",
                c.co_visitation_days
            ));
        }
        if c.impressions_topic.trim().is_empty()
            || c.watches_topic.trim().is_empty()
            || c.impressions_topic == c.watches_topic
        {
            return Err(format!(
                "dataflows.watch.impressions_topic = {:?} and watches_topic = {:?}: name two different Kafka topics (e.g. impressions and watches)",
                c.impressions_topic, c.watches_topic
            ));
        }
        Ok(())
    }
    fn topics(&self) -> Vec<String> {
        vec![
            self.config.impressions_topic.clone(),
            self.config.watches_topic.clone(),
        ]
    }
    /// Its ranges, checked on every change (`[quality]`, issue #22).
    fn expectations(&self) -> Vec<ExpectSpec> {
        vec![ExpectSpec::new(
            "strong_share_7d in [0, 1]",
            "feature:item.strong_share_7d",
            CheckName::Between,
        )
        .bounds(Some(0.0), Some(1.0))]
    }
    fn tables(&self) -> Vec<TableSpec> {
        self.table_specs()
    }
    fn horizon(&self) -> Window {
        Window {
            length_ms: WINDOW_30D
                .length_ms
                .max(self.config.co_visitation_days * DAY),
        }
    }
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<WatchEvent>, DecodeError> {
        decode::decode(record, record.topic == self.config.watches_topic)
    }
    fn keys(&self, event: &WatchEvent, visit: &mut dyn FnMut(&'static str, &str)) {
        match event {
            WatchEvent::Impression(i) => {
                visit("event_id", &i.event_id);
                visit("user_id", &i.user.0);
                i.items.iter().for_each(|s| visit("items", &s.item.0));
                for (field, value) in [("request_id", &i.request_id), ("surface", &i.surface)] {
                    if let Some(v) = value {
                        visit(field, v);
                    }
                }
            }
            WatchEvent::Watch(w) => {
                visit("event_id", &w.event_id);
                visit("user_id", &w.user.0);
                visit("item_id", &w.item.0);
            }
        }
    }
    fn kind(&self, event: &WatchEvent) -> usize {
        match event {
            WatchEvent::Impression(_) => 0,
            WatchEvent::Watch(_) => 1,
        }
    }
    /// Seed 004's worker status: watches that updated features (accepted, not duplicates),
    /// duplicate watches, and the history's configured size.
    fn feature_loop(&self, counters: &Counters) -> Option<serde_json::Value> {
        let (watches, duplicates) = counters.of_kind(1);
        let (impressions, impression_duplicates) = counters.of_kind(0);
        Some(serde_json::json!({
            "watch_feature_updates": watches,
            "watch_duplicates": duplicates,
            "history_size": self.config.history_size,
            "impressions": impressions,
            "impression_duplicates": impression_duplicates,
        }))
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<WatchEvent>>,
        _dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        _rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let this = self.clone();
        let durable = with_expiries(events.clone(), move |e| this.contributions_of(e));
        let viewers = self.viewers(events.clone(), state);
        // each pair a viewer's watch makes, as derived updates of both items and the pair
        let pairs = viewers.inner.clone().flat_map(|(out, t, r)| {
            let ViewerOut::Pair {
                item,
                earlier,
                weight,
                ..
            } = out
            else {
                return Vec::new();
            };
            let r = r * weight;
            let pair = if item < earlier {
                Entity::Pair(item.clone(), earlier.clone())
            } else {
                Entity::Pair(earlier.clone(), item.clone())
            };
            let neighbour = |i: &ItemId| Measure::Neighbour(Neighbour::of(i.clone()));
            vec![
                ((Entity::Item(item.clone()), neighbour(&earlier)), t, r),
                ((Entity::Item(earlier), neighbour(&item)), t, r),
                ((pair, Measure::Score), t, r),
            ]
        });
        let rows = viewers.flat_map(|out| match out {
            ViewerOut::Row(row) => Some(row),
            ViewerOut::Pair { .. } => None,
        });
        let this = self.clone();
        let items = window_rows("watch_items", state, durable, pairs, move |e, sums, out| {
            this.item_rows(e, sums, out)
        });
        let this = self.clone();
        // one row per key and tick even when a copy beyond the dedup horizon comes along
        let raw = once_per_key(events.flat_map(move |e| this.raw_rows(&e)));
        items.concat(rows).concat(raw)
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::WatchTraffic::new(
            self.config.impressions_topic.clone(),
            self.config.watches_topic.clone(),
            spec.clone(),
        ))
    }
}
