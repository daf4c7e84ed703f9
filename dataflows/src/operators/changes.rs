//! The operator at the dataflow's end: a worker's feature updates grouped by completed
//! tick, each entity's `{-old, +new}` turned into one change naming only the fields that
//! differ. Only these changes leave the dataflow.

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::contract::table::{EntityChange, EntityKey, FeatureRow, SinkEvent, TickChanges, Value};
use crate::contract::time::Tick;

/// A worker's feature updates, grouped by tick until the tick completes.
#[derive(Default)]
pub struct ChangeBuffer {
    pending: BTreeMap<Tick, Vec<(FeatureRow, isize)>>,
}

impl ChangeBuffer {
    pub fn push(&mut self, updates: &mut Vec<(FeatureRow, Tick, isize)>) {
        for (row, t, r) in updates.drain(..) {
            self.pending.entry(t).or_default().push((row, r));
        }
    }
    /// The changes of every tick before `upto` (all of them when `None`), in tick order;
    /// ticks whose updates cancel out are left out.
    pub fn complete(&mut self, upto: Option<Tick>) -> Vec<TickChanges> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if upto.is_some_and(|f| f <= *entry.key()) {
                break;
            }
            let (tick, mut updates) = entry.remove_entry();
            differential_dataflow::consolidation::consolidate(&mut updates);
            let changes = changes_of(updates);
            if !changes.is_empty() {
                out.push(TickChanges { tick, changes });
            }
        }
        out
    }
}

/// Groups a worker's feature updates by completed tick and turns each entity's
/// `{-old, +new}` into one change naming only the fields that differ.
///
/// `rows` must be partitioned by entity (as `reduce` output is), so one worker sees
/// every update of an entity.
pub fn feature_changes<'s, F>(rows: VecCollection<'s, Tick, FeatureRow>, mut emit: F)
where
    F: FnMut(SinkEvent) + 'static,
{
    let mut buffer = ChangeBuffer::default();
    let mut reported: Tick = 0;
    rows.inner
        .sink(Pipeline, "FeatureChanges", move |(input, frontier)| {
            input.for_each(|_cap, updates| buffer.push(updates));
            let upto = frontier.frontier().iter().next().copied();
            for tick in buffer.complete(upto) {
                emit(SinkEvent::Changes(tick));
            }
            if let Some(f) = upto {
                if f > reported {
                    reported = f;
                    emit(SinkEvent::Progress(f));
                }
            }
        });
}

/// Pairs the retraction and insertion of each entity in one tick's consolidated updates.
fn changes_of(updates: Vec<(FeatureRow, isize)>) -> Vec<EntityChange> {
    type BeforeAfter = (Option<Vec<Value>>, Option<Vec<Value>>);
    let mut by_key: BTreeMap<EntityKey, BeforeAfter> = BTreeMap::new();
    for (row, r) in updates {
        let slot = by_key.entry((row.table, row.key)).or_default();
        match r {
            1 => slot.1 = Some(row.values),
            -1 => slot.0 = Some(row.values),
            r => panic!("an entity row has multiplicity {r}: its reduce must emit one row per key"),
        }
    }
    by_key
        .into_iter()
        .map(|((table, key), (before, after))| {
            let changed = match (&before, &after) {
                (Some(b), Some(a)) => (0..a.len()).filter(|&i| b.get(i) != a.get(i)).collect(),
                (None, Some(a)) => (0..a.len()).collect(),
                (_, None) => Vec::new(),
            };
            EntityChange {
                table,
                key,
                after,
                changed,
            }
        })
        .collect()
}
