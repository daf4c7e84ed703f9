//! Contributions of events to windowed sums.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::{AsCollection, Data, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Map;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::time::Tick;

/// Maps each event to weighted contributions. A contribution `(record, weight, expiry)` is
/// present from the event's insertion tick until `expiry` (forever when `None`): `+weight`
/// at the insertion tick and `-weight` at the expiry. One that has already expired
/// changes nothing.
///
/// The weight travels as the update's multiplicity, so downstream arrangements hold one
/// count per (record, expiry) rather than one entry per event: window state grows with
/// keys × live expiry buckets, not with traffic.
pub fn contributions<'s, E, D, I, F>(
    events: VecCollection<'s, Tick, E>,
    logic: F,
) -> VecCollection<'s, Tick, D>
where
    E: Data,
    D: Data + Hash,
    I: IntoIterator<Item = (D, isize, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    let updates = events.inner.flat_map(move |(e, t, r): (E, Tick, isize)| {
        logic(&e).into_iter().flat_map(move |(d, w, expiry)| {
            let live = expiry.is_none_or(|x| x > t);
            let retraction = expiry.filter(|x| *x > t).map(|x| (d.clone(), x, -r * w));
            live.then_some((d, t, r * w)).into_iter().chain(retraction)
        })
    });
    hold_until_due(updates).as_collection()
}

/// Holds each update stamped later than its message until the input frontier reaches its
/// time, summed per (record, due time): what waits is one count per record and due time.
///
/// Differential would accept the future retractions directly, but its batchers keep them
/// and sift them again at every tick: the cost of each tick would grow with every pending
/// expiry of every live window. Here a tick costs only what it releases.
pub fn hold_until_due<'s, D: Data + Hash>(
    updates: Stream<'s, Tick, Vec<(D, Tick, isize)>>,
) -> Stream<'s, Tick, Vec<(D, Tick, isize)>> {
    let mut pending: BTreeMap<Tick, HashMap<D, isize>> = BTreeMap::new();
    let mut held: Option<Capability<Tick>> = None;
    updates.unary_frontier(Pipeline, "HoldUntilDue", move |_, _| {
        move |(input, frontier), output| {
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
                if reached.is_some_and(|f| f < *entry.key()) {
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
            // input messages bring their own capabilities: hold one only for what is pending
            match pending.keys().next().copied() {
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
