//! Contributions of events to windowed sums.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::contract::state::{Split, State};
use crate::contract::time::Tick;
use crate::operators::ticks::PerTick;
use crate::operators::window_sums::NEVER;

/// Maps each event to weighted contributions. A contribution `(record, weight, expiry)` is
/// present from the event's insertion tick until `expiry` (forever when `None`): `+weight`
/// at the insertion tick and `-weight` at the expiry. One that has already expired
/// changes nothing.
///
/// What is live is checkpointed in `state`: the pending expiries are exactly the live
/// contributions, so a restore re-inserts them and keeps their expiries.
///
/// The weight travels as the update's multiplicity, so downstream arrangements hold one
/// count per (record, expiry) rather than one entry per event: window state grows with
/// keys × live expiry buckets, not with traffic.
pub fn contributions<'s, E, D, I, F>(
    state: &State,
    events: VecCollection<'s, Tick, E>,
    logic: F,
) -> VecCollection<'s, Tick, D>
where
    E: ExchangeData,
    D: ExchangeData + Hash,
    I: IntoIterator<Item = (D, isize, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    hold_until_due(Some(state), with_expiries(events, logic)).as_collection()
}

/// [`contributions`] of a collection the dataflow derives from checkpointed state (e.g.
/// sessions rebuilt from their restored events). A restore rebuilds the collection, and
/// with it these contributions and their expiries, so they are not checkpointed: restoring
/// them too would count them twice.
pub fn derived_contributions<'s, E, D, I, F>(
    derived: VecCollection<'s, Tick, E>,
    logic: F,
) -> VecCollection<'s, Tick, D>
where
    E: ExchangeData,
    D: ExchangeData + Hash,
    I: IntoIterator<Item = (D, isize, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    hold_until_due(None, with_expiries(derived, logic)).as_collection()
}

/// Each update's contributions now, and their retractions at their expiries, not held:
/// the updates [`crate::operators::window_sums::window_rows`] sums.
///
/// Not summed here: `window_rows` sums what is due at one tick per (entity, measure) in its
/// buckets, so a map per activation would hash and compare every key once more (in a
/// replay over weeks, where a batch passes hundreds of expiry minutes, that map was a
/// quarter of the dataflow's time).
pub fn with_expiries<'s, E, D, I, F>(
    events: VecCollection<'s, Tick, E>,
    logic: F,
) -> Stream<'s, Tick, Vec<(D, Tick, isize)>>
where
    E: ExchangeData,
    D: ExchangeData + Hash,
    I: IntoIterator<Item = (D, isize, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    events.inner.unary(Pipeline, "Contributions", move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for (e, t, r) in data.drain(..) {
                    for (d, w, until) in logic(&e) {
                        // a contribution that never ends waits for `NEVER`, never due
                        let end = until.unwrap_or(NEVER);
                        if end > t {
                            session.give((d.clone(), t, r * w));
                            session.give((d, end, -r * w));
                        }
                    }
                }
            });
        }
    })
}

/// A contribution `(record, weight, from, until)`: see [`intervals`].
pub type Interval<D> = (D, isize, Tick, Option<Tick>);

/// Contributions present over an interval of stream time: `(record, weight, from, until)`
/// counts from `from` (or the update's tick, if later) until `until` (forever when `None`).
/// A window's record that may only show once the window has closed is one that starts at
/// its close.
pub fn intervals<'s, E, D, I, F>(
    state: &State,
    events: VecCollection<'s, Tick, E>,
    logic: F,
) -> VecCollection<'s, Tick, D>
where
    E: ExchangeData,
    D: ExchangeData + Hash,
    I: IntoIterator<Item = (D, isize, Tick, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    hold_until_due(Some(state), with_intervals(events, logic)).as_collection()
}

/// [`intervals`] of a derived collection (see [`derived_contributions`]): not checkpointed.
pub fn derived_intervals<'s, E, D, I, F>(
    derived: VecCollection<'s, Tick, E>,
    logic: F,
) -> VecCollection<'s, Tick, D>
where
    E: ExchangeData,
    D: ExchangeData + Hash,
    I: IntoIterator<Item = (D, isize, Tick, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    hold_until_due(None, with_intervals(derived, logic)).as_collection()
}

/// Each update's contributions at the start of their interval (its tick at the earliest),
/// and their retractions at its end (not held). An update retracted later retracts the
/// same way, so a contribution follows its source even when the source goes first.
///
/// Contributions are summed per (record, time) over what one activation reads: a tick's
/// events that touch the same record (a popular document, a campaign's window) become one
/// update before anything sorts or arranges them.
fn with_intervals<'s, E, D, I, F>(
    events: VecCollection<'s, Tick, E>,
    logic: F,
) -> Stream<'s, Tick, Vec<(D, Tick, isize)>>
where
    E: ExchangeData,
    D: ExchangeData + Hash,
    I: IntoIterator<Item = (D, isize, Tick, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    type Sums<D> = FxHashMap<(D, Tick), isize>;
    events.inner.unary(Pipeline, "Contributions", move |_, _| {
        let mut ticks: PerTick<Sums<D>> = PerTick::default();
        // emptied maps, kept: growing a fresh one per activation rehashed it a dozen times
        // and faulted in new pages each time
        let mut spare: Vec<Sums<D>> = Vec::new();
        move |input, output| {
            input.for_each(|cap, data| {
                for (e, t, r) in data.drain(..) {
                    let sums = ticks.at_or(&cap, t, || spare.pop().unwrap_or_default());
                    for (d, w, from, until) in logic(&e) {
                        let start = from.max(t);
                        // a contribution that never ends waits for `NEVER`, which is never due
                        let end = until.unwrap_or(NEVER);
                        if end > start {
                            *sums.entry((d.clone(), end)).or_default() -= r * w;
                            *sums.entry((d, start)).or_default() += r * w;
                        }
                    }
                }
            });
            for (cap, mut sums) in ticks.drain() {
                output.session(&cap).give_iterator(
                    sums.drain()
                        .filter(|(_, r)| *r != 0)
                        .map(|((d, t), r)| (d, t, r)),
                );
                if spare.len() < 2 {
                    spare.push(sums);
                }
            }
        }
    })
}

/// Updates waiting for their time, summed per (due time, record).
type Pending<D> = BTreeMap<Tick, FxHashMap<D, isize>>;

/// Holds each update stamped later than its message until the input frontier passes its
/// time, summed per (record, due time): what waits is one count per record and due time.
/// (Releasing only past the frontier keeps a source paused at `T + 1` from releasing the
/// expiries of `T + 1` before the snapshot of `T`.)
///
/// Differential would accept the future retractions directly, but its batchers keep them
/// and sift them again at every tick: the cost of each tick would grow with every pending
/// expiry of every live window. Here a tick costs only what it releases.
///
/// With `state`, what is pending is checkpointed and restored.
pub fn hold_until_due<'s, D: ExchangeData + Hash>(
    state: Option<&State>,
    updates: Stream<'s, Tick, Vec<(D, Tick, isize)>>,
) -> Stream<'s, Tick, Vec<(D, Tick, isize)>> {
    let shared: Rc<RefCell<Pending<D>>> = Rc::default();
    let (restored, restore_at) = match state {
        Some(state) => (
            state.register("contributions", Split::ByWorker, shared.clone()),
            state.restore().map(|r| r.tick),
        ),
        None => (Vec::new(), None),
    };
    updates.unary_frontier(Pipeline, "HoldUntilDue", move |cap, _| {
        let mut held: Option<Capability<Tick>> = None;
        if let Some(at) = restore_at {
            // what is pending is what is live: insert it again at the checkpoint's tick
            let mut pending = shared.borrow_mut();
            for part in restored {
                for (due, bucket) in part {
                    for (d, r) in bucket {
                        *pending.entry(at).or_default().entry(d.clone()).or_insert(0) -= r;
                        *pending.entry(due).or_default().entry(d).or_insert(0) += r;
                    }
                }
            }
            held = Some(cap.delayed(&at));
        }
        move |(input, frontier), output| {
            let mut pending = shared.borrow_mut();
            input.for_each(|cap, data| {
                let Some(now) = cap.retain_least(0) else {
                    return;
                };
                let mut due = output.session(&now);
                for (d, t, r) in data.drain(..) {
                    if t <= *now.time() {
                        due.give((d, t, r));
                    } else {
                        *pending.entry(t).or_default().entry(d).or_insert(0) += r;
                    }
                }
                drop(due);
                if held.as_ref().is_none_or(|h| h.time() > now.time()) {
                    held = Some(now);
                }
            });
            let reached = frontier.frontier().iter().next().copied();
            while let Some(entry) = pending.first_entry() {
                let due = *entry.key();
                if due == NEVER || reached.is_some_and(|f| f <= due) {
                    break;
                }
                let (t, bucket) = entry.remove_entry();
                let cap = held
                    .as_ref()
                    .expect("a capability is held while updates are pending")
                    .delayed(&t);
                output.session(&cap).give_iterator(
                    bucket
                        .into_iter()
                        .filter(|(_, r)| *r != 0)
                        .map(|(d, r)| (d, t, r)),
                );
            }
            // input messages bring their own capabilities: hold one only for what is due some day
            match pending.keys().next().copied().filter(|l| *l != NEVER) {
                None => held = None,
                Some(l) => {
                    if let Some(h) = held.as_mut() {
                        if *h.time() < l {
                            h.downgrade(&l);
                        }
                    }
                }
            }
        }
    })
}
