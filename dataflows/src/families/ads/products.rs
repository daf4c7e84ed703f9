//! Product quality scores, each in force from its `effective_from`.

use differential_dataflow::VecCollection;

use crate::contract::event::{EventId, Timed};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{ceil_to, Tick, MINUTE};
use crate::operators::windowed::intervals;

use super::*;

/// A quality update as the products `reduce` sorts it: by effective time, then event time,
/// then identity — the last one is in force.
pub type Update = (u64, u64, EventId, QualityUpdate);

impl Ads {
    /// A product's score in force: the latest update whose `effective_from` has come.
    pub(super) fn product_row(
        &self,
        product: &ProductId,
        updates: &[(&Update, isize)],
    ) -> Option<FeatureRow> {
        let n = updates.len();
        let ((_, ts, _, last), _) = updates.last()?;
        let previous = last
            .previous
            .map(|p| p.0)
            .or_else(|| (n > 1).then(|| updates[n - 2].0 .3.score.0))
            .unwrap_or(last.score.0);
        Some(FeatureRow {
            table: table::PRODUCT,
            key: vec![product.0.clone()],
            values: vec![
                Value::float(last.score.0),
                Value::float(previous),
                Value::Text(last.category.clone()),
                Value::Text(last.reason.clone()),
                Value::Text(iso(last.effective_from)),
                Value::Int(last.effective_from as i64),
                Value::Text(iso(*ts)),
            ],
        })
    }

    /// Quality scores in force from their `effective_from`.
    pub(super) fn products<'s>(
        &self,
        updates: VecCollection<'s, Tick, Timed<QualityUpdate>>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let retention = self.config.quality_retention_ms;
        let updates = intervals(state, updates, move |e: &Timed<QualityUpdate>| {
            let q = &e.event;
            Some((
                (q.product.clone(), (q.effective_from, e.ts, e.id, q.clone())),
                1,
                q.effective_from,
                Some(ceil_to(q.effective_from.max(e.ts) + retention, MINUTE)),
            ))
        });
        let this = self.clone();
        updates
            .reduce_named("Products", move |product, updates, out| {
                if let Some(row) = this.product_row(product, updates) {
                    out.push((row, 1));
                }
            })
            .map(|(_, row)| row)
    }
}
