//! The item views: each event's contributions to its items' windowed sums, and the rows an
//! item's sums make — its popularity and watch-through (`item`), its top co-visited
//! neighbours (`co_visit`) — and a pair's co-visitation score (`co_visitation`).

use serde::{Deserialize, Serialize};

use crate::contract::event::Timed;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Span, Tick, WINDOW_30D, WINDOW_7D};

use super::table::{CO_VISIT, CO_VISITATION, ITEM};
use super::*;

/// An entity of the item views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entity {
    Item(ItemId),
    /// A co-visited pair, the smaller id first.
    Pair(ItemId, ItemId),
}

/// What a contribution adds to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Impressions(Span),
    Watches(Span),
    StrongWatches(Span),
    Popularity(Span),
    /// An item's co-visitation score with another (derived from the viewers' histories).
    Neighbour(Neighbour),
    /// A pair's co-visitation score.
    Score,
}

/// An item as another's neighbour, ordered by a hash of its id first: an item's sums hold
/// one per co-visited item, and sorting and finding them compared whole strings (a
/// quarter of the family's time). Equal hashes compare the ids, so two items never merge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Neighbour {
    hash: u64,
    pub item: ItemId,
}

impl Neighbour {
    pub fn of(item: ItemId) -> Self {
        Neighbour {
            hash: xxhash_rust::xxh3::xxh3_64(item.0.as_bytes()),
            item,
        }
    }
}

/// `(hits + alpha) / (trials + alpha + beta)`.
pub fn smoothed(hits: i64, trials: i64, alpha: f64, beta: f64) -> f64 {
    (hits as f64 + alpha) / (trials as f64 + alpha + beta)
}

impl Watches {
    /// What one event adds to which item sums, for how long. An impression counts once per
    /// distinct item it shows.
    pub(super) fn contributions_of(
        &self,
        e: &Timed<WatchEvent>,
    ) -> Vec<((Entity, Measure), isize, Option<Tick>)> {
        use Measure::*;
        let spans = [
            (Span::D7, Some(WINDOW_7D.expiry(e.ts))),
            (Span::D30, Some(WINDOW_30D.expiry(e.ts))),
        ];
        let mut out = Vec::new();
        match &e.event {
            WatchEvent::Impression(i) => {
                let mut distinct: Vec<&ItemId> = i.items.iter().map(|s| &s.item).collect();
                distinct.sort();
                distinct.dedup();
                for item in distinct {
                    for (span, until) in spans {
                        out.push(((Entity::Item(item.clone()), Impressions(span)), 1, until));
                    }
                }
            }
            WatchEvent::Watch(w) => {
                let (signal, weight) = self.signal(w);
                for (span, until) in spans {
                    let item = || Entity::Item(w.item.clone());
                    out.push(((item(), Watches(span)), 1, until));
                    out.push(((item(), Popularity(span)), weight as isize, until));
                    if signal == Signal::Strong {
                        out.push(((item(), StrongWatches(span)), 1, until));
                    }
                }
            }
        }
        out
    }

    /// The rows of one entity from its non-zero sums, sorted by measure.
    pub(super) fn item_rows(
        &self,
        entity: &Entity,
        sums: &[(Measure, isize)],
        out: &mut Vec<FeatureRow>,
    ) {
        use Measure::*;
        let (alpha, beta) = (self.config.alpha, self.config.beta);
        let sum = |m: Measure| {
            sums.iter()
                .find(|(k, _)| *k == m)
                .map_or(0, |(_, n)| *n as i64)
        };
        match entity {
            Entity::Item(item) => {
                let windowed = sums.iter().any(|(m, _)| !matches!(m, Neighbour(_) | Score));
                if windowed {
                    let mut values = Vec::with_capacity(12);
                    for span in [Span::D7, Span::D30] {
                        values.push(Value::Int(sum(Popularity(span))));
                    }
                    for m in [Watches, Impressions, StrongWatches] {
                        for span in [Span::D7, Span::D30] {
                            values.push(Value::Int(sum(m(span))));
                        }
                    }
                    for span in [Span::D7, Span::D30] {
                        let (w, i) = (sum(Watches(span)), sum(Impressions(span)));
                        values.push(Value::float(smoothed(w, i, alpha, beta)));
                    }
                    for span in [Span::D7, Span::D30] {
                        let (s, w) = (sum(StrongWatches(span)), sum(Watches(span)));
                        values.push(Value::float(if w > 0 { s as f64 / w as f64 } else { 0.0 }));
                    }
                    out.push(FeatureRow {
                        table: ITEM,
                        key: vec![item.0.to_string()],
                        values,
                    });
                }
                let mut neighbours: Vec<(&ItemId, isize)> = sums
                    .iter()
                    .filter_map(|(m, n)| match m {
                        Neighbour(other) if *n > 0 => Some((&other.item, *n)),
                        _ => None,
                    })
                    .collect();
                if !neighbours.is_empty() {
                    // the top ones first (a hot item has thousands), then only those sorted
                    let by = |(a, x): &(&ItemId, isize), (b, y): &(&ItemId, isize)| {
                        y.cmp(x).then_with(|| a.cmp(b))
                    };
                    let n = self.config.neighbours;
                    if neighbours.len() > n {
                        neighbours.select_nth_unstable_by(n - 1, by);
                        neighbours.truncate(n);
                    }
                    neighbours.sort_unstable_by(by);
                    let list: Vec<String> = neighbours
                        .iter()
                        .map(|(other, score)| format!("{}:{score}", other.0))
                        .collect();
                    out.push(FeatureRow {
                        table: CO_VISIT,
                        key: vec![item.0.to_string()],
                        values: vec![Value::Text(
                            serde_json::to_string(&list).expect("strings serialise"),
                        )],
                    });
                }
            }
            Entity::Pair(a, b) => {
                let score = sum(Score);
                if score > 0 {
                    out.push(FeatureRow {
                        table: CO_VISITATION,
                        key: vec![a.0.to_string(), b.0.to_string()],
                        values: vec![Value::Int(score)],
                    });
                }
            }
        }
    }
}
