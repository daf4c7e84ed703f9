//! Search and autocomplete: CTR and popularity per document, query×document and prefix
//! (DESIGN §5.1, seed 000).
//!
//! Every feature is a sum of event contributions over a window; rows are rebuilt per
//! entity by one `reduce`, so an entity exists exactly while one of its windowed sums is
//! non-zero, and then carries all its features.

mod decode;
pub mod generate;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::dataflow::{Dataflow, GenerateSpec, Produced};
use crate::contract::event::Timed;
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{float, int, FeatureRow, SinkKind, TableSpec, Value};
pub use crate::contract::time::Span;
use crate::contract::time::{Tick, Window, DAY, MINUTE, WINDOW_30D, WINDOW_7D};
use crate::operators::windowed::contributions;

pub use decode::{normalize_query, QueryHash};

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
}

/// Table indices, in `tables()` order.
pub const DOC: u8 = 0;
pub const QD: u8 = 1;
pub const AC: u8 = 2;

/// An entity of one of the three feature views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entity {
    Doc(DocId),
    QueryDoc(QueryHash, DocId),
    Prefix(Prefix),
}

/// What a contribution adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Impressions(Span),
    Clicks(Span),
    Popularity(Span),
    DwellSum,
    AcImpressions,
    AcSelects,
    AssistedSelects,
    /// Forward-decayed clicks and impressions, in fixed point, per landmark epoch.
    DecayClicks(Epoch),
    DecayImpressions(Epoch),
}

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

pub fn smoothed(hits: i64, trials: i64, alpha: f64, beta: f64) -> f64 {
    (hits as f64 + alpha) / (trials as f64 + alpha + beta)
}

/// Field names of `feat_doc`, which the read API also uses to compute `ctr_decay`.
pub mod doc_fields {
    pub const DECAY_CLICKS: &str = "decay_clicks";
    pub const DECAY_IMPRESSIONS: &str = "decay_impressions";
    pub const DECAY_LANDMARK: &str = "decay_landmark_ms";
}

impl Search {
    /// What one event adds to which sums, for how long.
    fn contributions_of(
        &self,
        e: &Timed<SearchEvent>,
    ) -> Vec<((Entity, Measure), isize, Option<Tick>)> {
        use Measure::*;
        let c = &self.config;
        let (d7, d30) = (Some(WINDOW_7D.expiry(e.ts)), Some(WINDOW_30D.expiry(e.ts)));
        let h = c.decay_half_life_ms;
        let mut out = Vec::new();
        let popularity = |out: &mut Vec<_>, doc: &DocId, w: u32| {
            if w > 0 {
                out.push((
                    (Entity::Doc(doc.clone()), Popularity(Span::D7)),
                    w as isize,
                    d7,
                ));
                out.push((
                    (Entity::Doc(doc.clone()), Popularity(Span::D30)),
                    w as isize,
                    d30,
                ));
            }
        };
        match &e.event {
            SearchEvent::Impression { query, docs } => {
                let (epoch, weight) = Epoch::weigh(e.ts, h);
                let mut distinct: Vec<&DocId> = docs.iter().collect();
                distinct.sort();
                distinct.dedup();
                for doc in distinct {
                    let d = Entity::Doc(doc.clone());
                    out.push(((d.clone(), Impressions(Span::D7)), 1, d7));
                    out.push(((d.clone(), Impressions(Span::D30)), 1, d30));
                    out.push(((d, DecayImpressions(epoch)), weight, None));
                    out.push((
                        (Entity::QueryDoc(*query, doc.clone()), Impressions(Span::D7)),
                        1,
                        d7,
                    ));
                }
            }
            SearchEvent::Click { query, doc, .. } => {
                let (epoch, weight) = Epoch::weigh(e.ts, h);
                let d = Entity::Doc(doc.clone());
                out.push(((d.clone(), Clicks(Span::D7)), 1, d7));
                out.push(((d.clone(), Clicks(Span::D30)), 1, d30));
                out.push(((d, DecayClicks(epoch)), weight, None));
                out.push((
                    (Entity::QueryDoc(*query, doc.clone()), Clicks(Span::D7)),
                    1,
                    d7,
                ));
                popularity(&mut out, doc, c.popularity.click);
            }
            SearchEvent::Dwell { doc, dwell_ms } => {
                if *dwell_ms > 0 {
                    out.push(((Entity::Doc(doc.clone()), DwellSum), *dwell_ms as isize, d7));
                }
                if *dwell_ms >= c.long_dwell_ms {
                    popularity(&mut out, doc, c.popularity.long_dwell);
                }
            }
            SearchEvent::AddToCart { doc } => popularity(&mut out, doc, c.popularity.add_to_cart),
            SearchEvent::Purchase { doc } => popularity(&mut out, doc, c.popularity.purchase),
            SearchEvent::AcImpression { prefix } => {
                out.push(((Entity::Prefix(prefix.clone()), AcImpressions), 1, d7))
            }
            SearchEvent::AcSelect { prefix, .. } => {
                out.push(((Entity::Prefix(prefix.clone()), AcSelects), 1, d7))
            }
        }
        out
    }

    /// The row of one entity from its sums; `None` when every windowed sum is zero.
    pub fn row(&self, entity: &Entity, sums: &[(&Measure, isize)]) -> Option<FeatureRow> {
        use Measure::*;
        let c = &self.config;
        let sum = |m: Measure| {
            sums.iter()
                .find(|(k, _)| **k == m)
                .map_or(0, |(_, n)| *n as i64)
        };
        let windowed = sums
            .iter()
            .any(|(m, n)| *n != 0 && !matches!(m, DecayClicks(_) | DecayImpressions(_)));
        if !windowed {
            return None;
        }
        let (table, key, values) = match entity {
            Entity::Doc(doc) => {
                let decay = self.decayed(sums);
                let (imp7, clk7) = (sum(Impressions(Span::D7)), sum(Clicks(Span::D7)));
                let values = vec![
                    Value::Int(imp7),
                    Value::Int(sum(Impressions(Span::D30))),
                    Value::Int(clk7),
                    Value::Int(sum(Clicks(Span::D30))),
                    Value::float(smoothed(clk7, imp7, c.alpha, c.beta)),
                    Value::Int(sum(Popularity(Span::D7))),
                    Value::Int(sum(Popularity(Span::D30))),
                    Value::Int(sum(DwellSum)),
                    Value::float(decay.clicks),
                    Value::float(decay.impressions),
                    Value::Int(decay.landmark_ms as i64),
                ];
                (DOC, vec![doc.0.clone()], values)
            }
            Entity::QueryDoc(query, doc) => {
                let (imp, clk) = (sum(Impressions(Span::D7)), sum(Clicks(Span::D7)));
                let values = vec![
                    Value::Int(imp),
                    Value::Int(clk),
                    Value::float(smoothed(clk, imp, c.alpha, c.beta)),
                ];
                (QD, vec![query.to_string(), doc.0.clone()], values)
            }
            Entity::Prefix(prefix) => {
                let (imp, sel, assisted) =
                    (sum(AcImpressions), sum(AcSelects), sum(AssistedSelects));
                let assist_click_rate = if sel > 0 {
                    assisted as f64 / sel as f64
                } else {
                    0.0
                };
                let values = vec![
                    Value::Int(imp),
                    Value::Int(sel),
                    Value::float(smoothed(sel, imp, c.alpha, c.beta)),
                    Value::float(assist_click_rate),
                ];
                (AC, vec![prefix.0.clone()], values)
            }
        };
        Some(FeatureRow { table, key, values })
    }

    /// Sums the per-epoch fixed-point weights relative to the newest landmark.
    fn decayed(&self, sums: &[(&Measure, isize)]) -> DecayedSums {
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

    /// Selects followed by a click of the same session within `assist_window_ms`.
    ///
    /// Both sides live for the select's 7-day window (a click lives as long as any select it
    /// can assist), so the joined pair holds exactly while the select counts.
    fn assisted_selects<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<SearchEvent>>,
        state: &State,
    ) -> VecCollection<'s, Tick, (Entity, Measure)> {
        let selects = contributions(state, events.clone(), |e: &Timed<SearchEvent>| {
            match &e.event {
                SearchEvent::AcSelect { session, prefix } => Some((
                    (session.clone(), (e.ts, prefix.clone())),
                    1,
                    Some(WINDOW_7D.expiry(e.ts)),
                )),
                _ => None,
            }
        });
        let clicks = contributions(state, events, |e: &Timed<SearchEvent>| match &e.event {
            SearchEvent::Click { session, .. } => {
                Some(((session.clone(), e.ts), 1, Some(WINDOW_7D.expiry(e.ts))))
            }
            _ => None,
        })
        .distinct();
        let within = self.config.assist_window_ms;
        let matched = selects
            .clone()
            .join(clicks)
            .filter(move |(_, ((select_ts, _), click_ts))| {
                *click_ts >= *select_ts && *click_ts - *select_ts <= within
            })
            .map(|(session, ((select_ts, prefix), _))| ((session, select_ts, prefix), ()))
            .distinct()
            .map(|(select, ())| select);
        selects
            .map(|(session, (ts, prefix))| ((session, ts, prefix), ()))
            .semijoin(matched)
            .map(|((_, _, prefix), ())| (Entity::Prefix(prefix), Measure::AssistedSelects))
    }
}

impl Dataflow for Search {
    type Event = SearchEvent;
    type Config = SearchConfig;
    const NAME: &'static str = "search";

    fn new(config: SearchConfig) -> Self {
        Search { config }
    }
    fn config(&self) -> &SearchConfig {
        &self.config
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone()]
    }
    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec {
                ns: "doc",
                keys: vec!["doc_id"],
                fields: vec![
                    int("impressions_7d"),
                    int("impressions_30d"),
                    int("clicks_7d"),
                    int("clicks_30d"),
                    float("ctr_doc"),
                    int("popularity_7d"),
                    int("popularity_30d"),
                    int("dwell_sum_7d"),
                    float(doc_fields::DECAY_CLICKS),
                    float(doc_fields::DECAY_IMPRESSIONS),
                    int(doc_fields::DECAY_LANDMARK),
                ],
                version: 1,
                sink: SinkKind::Store,
            },
            TableSpec {
                ns: "qd",
                keys: vec!["query_hash", "doc_id"],
                fields: vec![int("impressions_7d"), int("clicks_7d"), float("ctr_qd")],
                version: 1,
                sink: SinkKind::Store,
            },
            TableSpec {
                ns: "ac",
                keys: vec!["prefix"],
                fields: vec![
                    int("ac_impressions_7d"),
                    int("ac_selects_7d"),
                    float("assist_rate"),
                    float("assist_click_rate"),
                ],
                version: 1,
                sink: SinkKind::Store,
            },
        ]
    }
    fn horizon(&self) -> Window {
        WINDOW_30D
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
        let sums = contributions(state, events.clone(), move |e| this.contributions_of(e))
            .concat(self.assisted_selects(events, state))
            .consolidate_stream();
        let this = self.clone();
        sums.reduce_named("SearchFeatures", move |entity, measures, out| {
            if let Some(row) = this.row(entity, measures) {
                out.push((row, 1));
            }
        })
        .map(|(_, row)| row)
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
