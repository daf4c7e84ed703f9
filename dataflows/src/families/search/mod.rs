//! Search and autocomplete: CTR and popularity per document, query×document and prefix
//! (DESIGN §5.1, seed 000).
//!
//! Every feature is a sum of event contributions over a window; rows are rebuilt per
//! entity from its sums by `window_rows`, so an entity exists exactly while one of its
//! windowed sums is non-zero, and then carries all its features.

mod assist;
mod decay;
mod decode;
mod events;
pub mod generate;
mod tables;
mod windows;

pub use decay::*;
pub use events::*;
pub use tables::*;
pub use windows::*;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::dataflow::{Dataflow, GenerateSpec, Produced};
use crate::contract::event::Timed;
use crate::contract::quality::{CheckName, ExpectSpec};
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window, DAY, MINUTE, WINDOW_30D};
use crate::operators::window_sums::window_rows;
use crate::operators::windowed::with_expiries;

pub use decode::{normalize_query, QueryHash};

/// Popularity weight of each kind of interaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopularityWeights {
    pub click: u32,
    pub long_dwell: u32,
    pub add_to_cart: u32,
    pub purchase: u32,
}

impl Default for PopularityWeights {
    fn default() -> Self {
        PopularityWeights {
            click: 1,
            long_dwell: 2,
            add_to_cart: 3,
            purchase: 5,
        }
    }
}

/// `[dataflows.search]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub topic: String,
    /// Smoothing prior: `(clicks + alpha) / (impressions + alpha + beta)`.
    pub alpha: f64,
    pub beta: f64,
    pub popularity: PopularityWeights,
    /// A dwell at least this long counts as a long dwell for popularity.
    pub long_dwell_ms: u64,
    /// Half-life of `ctr_decay`.
    pub decay_half_life_ms: u64,
    /// A select is assisted when a click of the same session follows within this long.
    pub assist_window_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            topic: "search-events".into(),
            alpha: 1.0,
            beta: 20.0,
            popularity: PopularityWeights::default(),
            long_dwell_ms: 30_000,
            decay_half_life_ms: 7 * DAY,
            assist_window_ms: 10 * MINUTE,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Search {
    config: SearchConfig,
    /// `batch`: also the 90-day popularity (view `doc_long`).
    batch: bool,
}

impl Dataflow for Search {
    type Event = SearchEvent;
    type Config = SearchConfig;
    const NAME: &'static str = "search";

    fn new(config: SearchConfig) -> Self {
        Search {
            config,
            batch: false,
        }
    }
    fn config(&self) -> &SearchConfig {
        &self.config
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone()]
    }
    /// Its ranges, checked on every change (`[quality]`, issue #22).
    fn expectations(&self) -> Vec<ExpectSpec> {
        vec![
            ExpectSpec::new(
                "ctr_doc in [0, 1]",
                "feature:doc.ctr_doc",
                CheckName::Between,
            )
            .bounds(Some(0.0), Some(1.0)),
            ExpectSpec::new("ctr_qd in [0, 1]", "feature:qd.ctr_qd", CheckName::Between)
                .bounds(Some(0.0), Some(1.0)),
            ExpectSpec::new(
                "assist_rate in [0, 1]",
                "feature:ac.assist_rate",
                CheckName::Between,
            )
            .bounds(Some(0.0), Some(1.0)),
        ]
    }
    fn tables(&self) -> Vec<TableSpec> {
        self.table_specs()
    }
    fn horizon(&self) -> Window {
        WINDOW_30D
    }
    fn with_batch_windows(&mut self) {
        self.batch = true;
    }
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<SearchEvent>, DecodeError> {
        decode::decode(record.payload)
    }
    fn keys(&self, event: &SearchEvent, visit: &mut dyn FnMut(&'static str, &str)) {
        match event {
            SearchEvent::Impression { docs, .. } => {
                docs.iter().for_each(|d| visit("doc_ids", &d.0))
            }
            SearchEvent::Click { session, doc, .. } => {
                visit("session_id", &session.0);
                visit("doc_id", &doc.0);
            }
            SearchEvent::Dwell { doc, .. }
            | SearchEvent::AddToCart { doc }
            | SearchEvent::Purchase { doc } => visit("doc_id", &doc.0),
            SearchEvent::AcImpression { prefix } => visit("prefix", &prefix.0),
            SearchEvent::AcSelect { session, prefix } => {
                visit("session_id", &session.0);
                visit("prefix", &prefix.0);
            }
        }
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<SearchEvent>>,
        _dimensions: Vec<VecCollection<'s, Tick, crate::contract::dimension::DimRow>>,
        _rejected: VecCollection<'s, Tick, crate::contract::event::Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let this = self.clone();
        let durable = with_expiries(events.clone(), move |e| this.contributions_of(e));
        let derived = self.assisted_selects(events, state).inner;
        let this = self.clone();
        window_rows(
            "search",
            state,
            durable,
            derived,
            move |entity, sums, out| {
                out.extend(this.row(entity, sums));
                if this.batch {
                    out.extend(this.long_row(entity, sums));
                }
            },
        )
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::SearchTraffic::new(
            self.config.topic.clone(),
            spec.clone(),
        ))
    }
    /// `ctr_decay` at read time, from the forward-decayed sums.
    fn at_read(
        &self,
        table: &str,
        fields: &mut serde_json::Map<String, serde_json::Value>,
        now_ms: u64,
    ) {
        if table != "doc" {
            return;
        }
        let num = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
        };
        let (Some(clicks), Some(impressions), Some(landmark)) = (
            num(doc_fields::DECAY_CLICKS),
            num(doc_fields::DECAY_IMPRESSIONS),
            num(doc_fields::DECAY_LANDMARK),
        ) else {
            return;
        };
        let sums = DecayedSums {
            landmark_ms: landmark as u64,
            clicks,
            impressions,
        };
        let c = &self.config;
        fields.insert(
            "ctr_decay".into(),
            sums.ctr_at(now_ms, c.decay_half_life_ms, c.alpha, c.beta)
                .into(),
        );
    }
    fn read_time_features(&self, table: &str) -> Vec<&'static str> {
        match table {
            "doc" => vec!["ctr_decay"],
            _ => Vec::new(),
        }
    }
}
