//! Duplicates, decided per record by the stream time at it (DESIGN §4).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use super::peers::Heard;
use crate::contract::counters::Counters;
use crate::contract::event::{EventId, Rejected, Rejection, Timed};
use crate::contract::state::{Split, State};
use crate::contract::time::Tick;

/// Per event id, the least stream time any copy of it was read at, oldest first in
/// `order`; and the watermark applied so far (see [`dedup`]).
#[derive(Default, Serialize, Deserialize)]
struct Seen {
    first: rustc_hash::FxHashMap<EventId, Tick>,
    order: VecDeque<(Tick, EventId)>,
    floor: Tick,
}

/// Drops the copies of an event (DESIGN §4), decided per record by its identity and the
/// stream time at it — its partition's largest event time up to and including it — never
/// by the tick its batch went in at, the worker count or where a restart resumed:
///
/// of the copies of an id, the one read at the least stream time (the *first*) counts, and
/// every other copy read within `horizon` of it is a duplicate; a copy read later than
/// that counts again (dedup does not look further back). Copies of a late event are caught
/// like any others: they are read at nearby stream times, whatever their event time.
///
/// Copies arrive in any order across partitions: a copy read at an earlier stream time
/// than the one counted takes its place (the same event, so nothing changes but the
/// count of duplicates). When copies under one `event_id` differ, the first to arrive
/// counts.
///
/// An id is kept while a copy within the horizon may still come: until the watermark —
/// every worker's slowest partition with records to come, as its source told it — passes
/// its first copy's stream time by the horizon. A record's stream time is taken as at
/// least the watermark applied (`floor`), so a copy arriving after its id was forgotten is
/// outside the horizon by the same rule; in a replay every partition with records left
/// holds the watermark back, so the floor never moves a decision. The ids, their stream
/// times and the floor are checkpointed; a restore keeps this worker's ids and the highest
/// floor.
/// Long: an operator is one closure holding its state and frontier logic (as differential's `operators/count.rs`).
#[allow(clippy::type_complexity)]
pub(super) fn dedup<'s, E>(
    state: &State,
    events: Stream<'s, Tick, Vec<((Timed<E>, Tick), Tick, isize)>>,
    horizon: u64,
    heard: Rc<RefCell<Heard>>,
    counters: Arc<Counters>,
    kind: impl Fn(&E) -> usize + 'static,
) -> (
    Stream<'s, Tick, Vec<(Timed<E>, Tick, isize)>>,
    Stream<'s, Tick, Vec<(Rejection, Tick, isize)>>,
)
where
    E: timely::ExchangeData,
{
    let route = |id: &EventId| id.0 as u64;
    let shared: Rc<RefCell<Seen>> = Rc::default();
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    for part in state.register("dedup", Split::ByKey, shared.clone()) {
        let mut seen = shared.borrow_mut();
        seen.floor = seen.floor.max(part.floor);
        for (at, id) in part.order {
            if route(&id) % peers == me && part.first.get(&id) == Some(&at) {
                seen.first.insert(id, at);
                seen.order.push_back((at, id));
            }
        }
    }
    shared.borrow_mut().order.make_contiguous().sort();
    let pact = Exchange::new(move |((e, _), _, _): &((Timed<E>, Tick), Tick, isize)| route(&e.id));
    type KeptOrDup<E> = Result<(Timed<E>, Tick, isize), (Rejection, Tick, isize)>;
    let kept_or_dup = events
        .unary_frontier::<CapacityContainerBuilder<Vec<KeptOrDup<E>>>, _, _, _>(
            pact,
            "Dedup",
            move |_, _| {
                move |(input, frontier), output| {
                    let mut guard = shared.borrow_mut();
                    let Seen {
                        first,
                        order,
                        floor,
                    } = &mut *guard;
                    input.for_each(|cap, data| {
                        let (mut dups, mut kept) = (0, 0);
                        let mut session = output.session(&cap);
                        for ((ev, at), t, r) in data.drain(..) {
                            let at = at.max(*floor);
                            let duplicate = match first.get_mut(&ev.id) {
                                None => {
                                    first.insert(ev.id, at);
                                    order.push_back((at, ev.id));
                                    false
                                }
                                // read earlier than the copy counted: it takes its place
                                Some(s) if at < *s => {
                                    let within = *s <= at.saturating_add(horizon);
                                    *s = at;
                                    order.push_back((at, ev.id));
                                    within
                                }
                                Some(s) => at <= s.saturating_add(horizon),
                            };
                            counters.count_kind(kind(&ev.event), duplicate);
                            if duplicate {
                                dups += 1;
                                let reason = Rejected::Duplicate;
                                session.give(Err((Rejection { reason, ts: ev.ts }, t, r)));
                            } else {
                                kept += 1;
                                session.give(Ok((ev, t, r)));
                            }
                        }
                        Counters::add(&counters.duplicates, dups);
                        Counters::add(&counters.accepted, kept);
                    });
                    let complete = frontier
                        .frontier()
                        .iter()
                        .next()
                        .copied()
                        .unwrap_or(Tick::MAX);
                    if let Some(w) = heard.borrow_mut().watermark(complete, peers as usize) {
                        *floor = (*floor).max(w);
                    }
                    while let Some(&(at, id)) = order.front() {
                        if at.saturating_add(horizon) >= *floor {
                            break;
                        }
                        order.pop_front();
                        if first.get(&id) == Some(&at) {
                            first.remove(&id);
                        }
                    }
                }
            },
        );
    kept_or_dup.ok_err(|x| x)
}
