//! Dimension tables as live differential inputs: a changed row retracts the old one and
//! inserts the new, and every dependent feature follows.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::contract::dimension::{DimRow, TableSource};
use crate::contract::state::{Split, State};
use crate::contract::time::Tick;

/// A dimension as a collection. Only a worker handed a `TableSource` reads the table; the
/// initial rows go in at time 0, later changes at the time the events have reached
/// (`follow`'s frontier), so the dimension never holds the dataflow back: the operator
/// runs as soon as that frontier moves, and every `poll` for new rows when it does not.
///
/// The rows are checkpointed as of the ticks the frontier has passed: a change read while
/// the sources are paused for a checkpoint at `T` goes in at `T + 1`, so the snapshot of
/// `T` must not hold it (else a restore would show it at `T`, which is never written
/// again, and never write it at all). A restore puts the checkpoint's rows in at time 0,
/// so the restored tick's features are the checkpoint's; what the table holds now goes in
/// as a change at `not_before` (the restart's first tick), so a change made while the
/// engine was stopped reaches every dependent feature like one made while it runs.
///
/// Downstream, a checkpointed operator must not take these rows into its saved state
/// before the frontier passes their tick: the rows of a pause's `T + 1` reach every worker
/// while a slower one may still be taking its snapshot of `T`.
pub fn dimension<'s, D: Clone + 'static>(
    follow: &Stream<'s, Tick, Vec<D>>,
    table: Option<Box<dyn TableSource>>,
    poll: Duration,
    state: &State,
    not_before: Tick,
) -> VecCollection<'s, Tick, DimRow> {
    let scope = follow.scope();
    let rows: Rc<RefCell<BTreeSet<DimRow>>> = Rc::default();
    let restored: BTreeSet<DimRow> = state
        .register("dimension", Split::ByWorker, rows.clone())
        .into_iter()
        .flatten()
        .collect();
    let restoring = state.restore().is_some();
    follow
        .clone()
        .unary_frontier(Pipeline, "Dimension", move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut table = table;
            let mut cap = table.is_some().then_some(cap);
            let mut restored = restoring.then_some(restored);
            // every row given so far (what the next read is compared with), and the
            // changes given at ticks the frontier has not passed yet
            let mut given: BTreeSet<DimRow> = BTreeSet::new();
            let mut ahead: Vec<(Tick, DimRow, isize)> = Vec::new();
            move |(input, frontier), output| {
                // only the frontier matters
                input.for_each(|_, _| {});
                let (Some(held), Some(table)) = (cap.as_mut(), table.as_mut()) else {
                    return;
                };
                if let Some(old) = restored.take() {
                    output
                        .session(&*held)
                        .give_iterator(old.iter().map(|r| (r.clone(), 0, 1)));
                    given = old.clone();
                    *rows.borrow_mut() = old;
                    if *held.time() < not_before {
                        held.downgrade(&not_before);
                    }
                }
                if let Some(snapshot) = table.snapshot() {
                    let next: BTreeSet<DimRow> = snapshot.into_iter().collect();
                    let t = *held.time();
                    let mut session = output.session(&*held);
                    for gone in given.difference(&next) {
                        session.give((gone.clone(), t, -1));
                        ahead.push((t, gone.clone(), -1));
                    }
                    for new in next.difference(&given) {
                        session.give((new.clone(), t, 1));
                        ahead.push((t, new.clone(), 1));
                    }
                    given = next;
                }
                let reached = frontier.frontier().iter().next().copied();
                // the checkpointed rows take the changes of the ticks the frontier passed
                let passed = |t: &Tick| reached.is_none_or(|f| *t < f);
                if ahead.iter().any(|(t, _, _)| passed(t)) {
                    let mut current = rows.borrow_mut();
                    for (_, row, r) in ahead.extract_if(.., |(t, _, _)| passed(t)) {
                        match r > 0 {
                            true => current.insert(row),
                            false => current.remove(&row),
                        };
                    }
                }
                match reached {
                    None => cap = None,
                    Some(f) if f > *held.time() => held.downgrade(&f),
                    Some(_) => {}
                }
                if cap.is_some() {
                    activator.activate_after(poll);
                }
            }
        })
        .as_collection()
}
