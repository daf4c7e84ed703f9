//! Contributions of events to windowed sums.

use std::collections::BTreeMap;

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
    D: Data,
    I: IntoIterator<Item = (D, isize, Option<Tick>)>,
    F: Fn(&E) -> I + 'static,
{
    let mut out = Vec::new();
    events
        .inner
        .flat_map(move |(e, t, r): (E, Tick, isize)| {
            out.clear();
            for (d, w, expiry) in logic(&e) {
                match expiry {
                    None => out.push((d, t, r * w)),
                    Some(x) if x > t => {
                        out.push((d.clone(), t, r * w));
                        out.push((d, x, -r * w));
                    }
                    Some(_) => {}
                }
            }
            std::mem::take(&mut out)
        })
        .container::<Vec<(D, Tick, isize)>>()
        .pipe(hold_until_due)
        .as_collection()
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}

/// Holds each update stamped later than its message until the input frontier reaches its
/// time, consolidated per time.
///
/// Differential would accept the future retractions directly, but its batchers keep them
/// and sift them again at every tick: the cost of each tick would grow with every pending
/// expiry of every live window. Here a tick costs only what it releases.
pub fn hold_until_due<'s, D: Data>(
    updates: Stream<'s, Tick, Vec<(D, Tick, isize)>>,
) -> Stream<'s, Tick, Vec<(D, Tick, isize)>> {
    // per due time: the updates, and the length at which to consolidate them next
    let mut pending: BTreeMap<Tick, (Vec<(D, isize)>, usize)> = BTreeMap::new();
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
                        let (bucket, next) = pending.entry(t).or_insert_with(|| (Vec::new(), 1024));
                        bucket.push((d, r));
                        if bucket.len() >= *next {
                            differential_dataflow::consolidation::consolidate(bucket);
                            *next = (2 * bucket.len()).max(1024);
                        }
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
                let (t, (mut bucket, _)) = entry.remove_entry();
                differential_dataflow::consolidation::consolidate(&mut bucket);
                let cap = held
                    .as_ref()
                    .expect("a capability is held while updates are pending")
                    .delayed(&t);
                output
                    .session(&cap)
                    .give_iterator(bucket.into_iter().map(|(d, r)| (d, t, r)));
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
