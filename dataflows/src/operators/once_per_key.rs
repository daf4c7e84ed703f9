//! Rows that enter once and never leave (a raw table's: each received event as a row,
//! upserted by its key), at most one per key and tick.
//!
//! Two records with one key in a tick are two copies of an event that dedup did not take
//! for one (read further apart in stream time than the dedup horizon: DESIGN §3 counts
//! them twice), and a sink that writes one row per key must not get both. The rows of a
//! key are on one worker (dedup routes an event's copies there), so nothing is exchanged;
//! only the ticks not yet complete are kept.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use crate::contract::table::FeatureRow;
use crate::contract::time::Tick;

/// `rows` (each with multiplicity 1), keeping in each tick the greatest row of each
/// `(table, key)`: the same choice whatever the batching within the tick.
pub fn once_per_key<'s>(
    rows: VecCollection<'s, Tick, FeatureRow>,
) -> VecCollection<'s, Tick, FeatureRow> {
    rows.inner
        .unary_frontier(Pipeline, "OncePerKey", |_, _| {
            let mut pending: BTreeMap<Tick, (Capability<Tick>, Vec<FeatureRow>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (row, t, r) in data.drain(..) {
                        debug_assert!(r > 0, "rows that only enter");
                        let slot = pending
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                        slot.1.push(row);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let t = *entry.key();
                    if frontier.frontier().iter().any(|f| *f <= t) {
                        break;
                    }
                    let (cap, mut rows) = entry.remove();
                    rows.sort_unstable_by(|a, b| (a.table, &a.key, b).cmp(&(b.table, &b.key, a)));
                    rows.dedup_by(|later, first| {
                        (later.table, &later.key) == (first.table, &first.key)
                    });
                    output
                        .session(&cap)
                        .give_iterator(rows.into_iter().map(|row| (row, t, 1)));
                }
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::table::Value;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, Input};
    use timely::dataflow::InputHandle;

    fn row(key: &str, offset: i64) -> FeatureRow {
        FeatureRow {
            table: 6,
            key: vec![key.into()],
            values: vec![Value::Int(offset)],
        }
    }

    #[test]
    fn two_copies_of_a_key_in_a_tick_become_the_greatest_and_other_ticks_keep_theirs() {
        let got = timely::example(|scope| {
            let mut input = InputHandle::new();
            let stream = scope.input_from(&mut input);
            let captured = once_per_key(stream.as_collection()).inner.capture();
            input.send((row("a", 7), 5, 1));
            input.send((row("b", 1), 5, 1));
            input.send((row("a", 9), 5, 1));
            // tick 5 completes while tick 6 is still open
            input.advance_to(6);
            input.send((row("a", 3), 6, 1));
            input.advance_to(10);
            captured
        });
        let mut rows: Vec<_> = got.extract().into_iter().flat_map(|(_, d)| d).collect();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                (row("a", 3), 6, 1),
                (row("a", 9), 5, 1),
                (row("b", 1), 5, 1)
            ]
        );
    }
}
