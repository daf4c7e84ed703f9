//! The windowed views: each event's contributions to the sums of the documents,
//! query×document pairs and prefixes it names, and the row an entity's sums make.

use serde::{Deserialize, Serialize};

use crate::contract::event::Timed;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Span, Tick, WINDOW_30D, WINDOW_7D};

use super::*;

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
    /// `batch` only: popularity over 90 days (view `doc_long`).
    Popularity90,
}

/// The batch-only window of `popularity_90d`.
pub const WINDOW_90D: crate::contract::time::Window = crate::contract::time::Window::days(90);

pub fn smoothed(hits: i64, trials: i64, alpha: f64, beta: f64) -> f64 {
    (hits as f64 + alpha) / (trials as f64 + alpha + beta)
}

impl Search {
    /// What one event adds to which sums, for how long.
    pub(super) fn contributions_of(
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
                if self.batch {
                    out.push((
                        (Entity::Doc(doc.clone()), Popularity90),
                        w as isize,
                        Some(WINDOW_90D.expiry(e.ts)),
                    ));
                }
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
    pub fn row(&self, entity: &Entity, sums: &[(Measure, isize)]) -> Option<FeatureRow> {
        use Measure::*;
        let c = &self.config;
        let sum = |m: Measure| {
            sums.iter()
                .find(|(k, _)| *k == m)
                .map_or(0, |(_, n)| *n as i64)
        };
        let windowed = sums.iter().any(|(m, n)| {
            *n != 0 && !matches!(m, DecayClicks(_) | DecayImpressions(_) | Popularity90)
        });
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
                (DOC, vec![doc.0.to_string()], values)
            }
            Entity::QueryDoc(query, doc) => {
                let (imp, clk) = (sum(Impressions(Span::D7)), sum(Clicks(Span::D7)));
                let values = vec![
                    Value::Int(imp),
                    Value::Int(clk),
                    Value::float(smoothed(clk, imp, c.alpha, c.beta)),
                ];
                (QD, vec![query.to_string(), doc.0.to_string()], values)
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
                (AC, vec![prefix.0.to_string()], values)
            }
        };
        Some(FeatureRow { table, key, values })
    }

    /// A document's row of the batch-only view `doc_long`; `None` when its 90-day
    /// popularity is zero.
    pub fn long_row(&self, entity: &Entity, sums: &[(Measure, isize)]) -> Option<FeatureRow> {
        let Entity::Doc(doc) = entity else {
            return None;
        };
        let n = sums
            .iter()
            .find(|(m, _)| *m == Measure::Popularity90)
            .map_or(0, |(_, n)| *n as i64);
        (n != 0).then(|| FeatureRow {
            table: DOC_LONG,
            key: vec![doc.0.to_string()],
            values: vec![Value::Int(n)],
        })
    }
}
