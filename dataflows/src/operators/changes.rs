//! The operator at the dataflow's end: a worker's feature updates grouped by completed
//! tick, each entity's `{-old, +new}` turned into one change naming only the fields that
//! differ. Only these changes leave the dataflow.

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::contract::table::{EntityChange, FeatureRow, SinkEvent, TickChanges};
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
            let (tick, updates) = entry.remove_entry();
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

/// Pairs the retraction and insertion of each entity in one tick's updates, in key order.
///
/// Sorted by entity only: an entity's updates of a tick are its old row and its new one
/// (more only when rows come and go within the tick, then summed per row here), so
/// sorting whole rows to consolidate them and then finding each key again compared every
/// key many times over (a fifth of a replay's time).
fn changes_of(mut updates: Vec<(FeatureRow, isize)>) -> Vec<EntityChange> {
    updates.sort_unstable_by(|(a, _), (b, _)| (a.table, &a.key).cmp(&(b.table, &b.key)));
    let mut out = Vec::new();
    let mut rest = &mut updates[..];
    while !rest.is_empty() {
        let first = &rest[0].0;
        let n = rest
            .iter()
            .take_while(|(r, _)| r.table == first.table && r.key == first.key)
            .count();
        let (mine, tail) = rest.split_at_mut(n);
        rest = tail;
        if let Some(change) = change_of(mine) {
            out.push(change);
        }
    }
    out
}

/// One entity's change from its updates of a tick, `None` when they cancel out.
fn change_of(updates: &mut [(FeatureRow, isize)]) -> Option<EntityChange> {
    let (mut before, mut after) = (None, None);
    let mut summed;
    let updates: &mut [(FeatureRow, isize)] = if updates.len() > 2 {
        summed = updates.to_vec();
        differential_dataflow::consolidation::consolidate(&mut summed);
        &mut summed[..]
    } else {
        updates
    };
    if updates.is_empty() {
        return None;
    }
    for (row, r) in updates.iter_mut() {
        let values = std::mem::take(&mut row.values);
        match *r {
            1 if after.is_none() => after = Some(values),
            -1 if before.is_none() => before = Some(values),
            r => panic!(
                "an entity row has multiplicity {r} (table {}, key {:?}, {values:?}): its operator must emit one row per key",
                row.table, row.key
            ),
        }
    }
    let changed = match (&before, &after) {
        (Some(b), Some(a)) if a == b => return None,
        (Some(b), Some(a)) => (0..a.len()).filter(|&i| b.get(i) != a.get(i)).collect(),
        (None, Some(a)) => (0..a.len()).collect(),
        (_, None) => Vec::new(),
    };
    let row = &mut updates[0].0;
    Some(EntityChange {
        table: row.table,
        key: std::mem::take(&mut row.key),
        after,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::table::Value;

    fn row(key: &str, v: &[i64]) -> FeatureRow {
        FeatureRow {
            table: 0,
            key: vec![key.into()],
            values: v.iter().map(|x| Value::Int(*x)).collect(),
        }
    }

    #[test]
    fn each_entity_becomes_one_change_naming_the_fields_that_differ() {
        let updates = vec![
            (row("b", &[1, 2]), -1),
            (row("c", &[5]), 1),
            (row("b", &[1, 3]), 1),
            (row("a", &[7]), -1),
            // the same row out and in: no change
            (row("d", &[4]), 1),
            (row("d", &[4]), -1),
            // came and went within the tick, then back with other values
            (row("e", &[1]), -1),
            (row("e", &[2]), 1),
            (row("e", &[2]), -1),
            (row("e", &[3]), 1),
            // came and went: nothing
            (row("f", &[1]), 1),
            (row("f", &[1]), -1),
            (row("f", &[2]), 1),
            (row("f", &[2]), -1),
        ];
        let got: Vec<(String, Option<Vec<Value>>, Vec<usize>)> = changes_of(updates)
            .into_iter()
            .map(|c| (c.key[0].clone(), c.after, c.changed))
            .collect();
        let ints = |v: &[i64]| Some(v.iter().map(|x| Value::Int(*x)).collect::<Vec<_>>());
        assert_eq!(
            got,
            vec![
                ("a".to_string(), None, vec![]),
                ("b".to_string(), ints(&[1, 3]), vec![1]),
                ("c".to_string(), ints(&[5]), vec![0]),
                ("e".to_string(), ints(&[3]), vec![0]),
            ]
        );
    }
}
