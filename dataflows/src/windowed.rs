//! Contributions of events to windowed sums.

use differential_dataflow::{AsCollection, Data, VecCollection};
use timely::dataflow::operators::core::Map;

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
        .as_collection()
}
