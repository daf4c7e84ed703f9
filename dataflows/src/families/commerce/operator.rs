//! The shopper operator: each worker keeps the shoppers it owns as compact [`Shopper`]s
//! and emits the differences of their rows (the shopper's hash, its `user_recent` list,
//! its pattern records), tick by tick.
//!
//! A differential `reduce` over a shopper's day would hold every event in its
//! arrangements and re-read all of them at each tick that changes the shopper (each event,
//! each expiry, each mark). Here a shopper is woken only when what it shows can change —
//! an event or a catalog change at the tick, or the next tick [`Shopper::next_change`]
//! names — and what it showed just before is recomputed from its parts rather than stored,
//! so the state per shopper is its parts alone. Every tick is still its own: a tick's
//! output is exactly what the shopper shows at it less what it showed before.
//!
//! The catalog is broadcast: every worker resolves the categories of its own shoppers'
//! interactions. A catalog change wakes each shopper with a live interaction with a
//! changed product (a scan of the worker's shoppers; catalog changes are rare).
//!
//! Checkpoints hold the shoppers by user: a restore on any worker count keeps the users
//! each worker owns and shows them again at the checkpoint's tick.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;

use crate::contract::event::Timed;
use crate::contract::state::{Split, State};
use crate::contract::table::FeatureRow;
use crate::contract::time::Tick;

use super::shoppers::{Catalog, Shopper, Shown};
use super::*;

/// The worker that owns a user's shopper, as the exchange routes it (and a restore keeps it).
fn route(user: &UserId) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    user.hash(&mut h);
    h.finish() >> 32
}

/// A worker's shoppers: what a checkpoint holds, by user, with the list length they keep.
#[derive(Default, Serialize, Deserialize)]
struct Shoppers {
    length: usize,
    by_user: FxHashMap<UserId, Kept>,
}

/// A shopper and the tick it is to be woken at (its one live wake-up).
#[derive(Default, Serialize, Deserialize)]
struct Kept {
    shopper: Shopper,
    wake: Option<Tick>,
}

/// One tick's input: its capability, events and catalog updates.
struct Arrived {
    cap: Capability<Tick>,
    events: Vec<Timed<CommerceEvent>>,
    catalog: Vec<((ProductId, Category), isize)>,
}

/// The rows of what a shopper shows.
pub(super) type RowsOf = Box<dyn Fn(&UserId, Vec<Shown>) -> Vec<FeatureRow>>;

/// Every shopper's rows, as a collection: see the module doc.
/// Long: an operator is one closure holding its state and frontier logic (as differential's `operators/count.rs`).
pub(super) fn shoppers<'s>(
    state: &State,
    events: VecCollection<'s, Tick, Timed<CommerceEvent>>,
    catalog: VecCollection<'s, Tick, (ProductId, Category)>,
    length: usize,
    rows: RowsOf,
) -> VecCollection<'s, Tick, FeatureRow> {
    let kept = Rc::new(RefCell::new(Shoppers {
        length,
        ..Shoppers::default()
    }));
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    let restored = state.register("shoppers", Split::ByKey, kept.clone());
    let restore_at = state.restore().map(|r| r.tick);
    // a list kept shorter than asked cannot be lengthened: its products are gone
    if let Some(old) = restored.iter().map(|p| p.length).find(|old| *old < length) {
        state.refuse(format!(
            "dataflows.commerce.recent_products is {length}, but the checkpoint kept {old} \
             products per list: restart with recent_products = {old}, or start over with a \
             new group (--group-id) to fill the longer lists"
        ));
    }
    let by_user =
        Exchange::new(|(e, _, _): &(Timed<CommerceEvent>, Tick, isize)| route(&e.event.user));
    events
        .inner
        .binary_frontier(
            catalog.inner.broadcast(),
            by_user,
            Pipeline,
            "Shoppers",
            move |cap, _| {
                // users to wake per tick (an entry whose tick is not the user's `wake` is stale)
                let mut wakes: BTreeMap<Tick, Vec<UserId>> = BTreeMap::new();
                let mut held: Option<Capability<Tick>> = None;
                // the shoppers restored, taken in at the checkpoint's tick and shown in full
                // there (the catalog's restored rows come in before it, at tick 0)
                let mut restoring: Option<(Tick, Vec<(UserId, Kept)>)> = None;
                if let Some(at) = restore_at {
                    let mine = restored
                        .into_iter()
                        .flat_map(|part| part.by_user)
                        .filter(|(user, _)| route(user) % peers == me)
                        .map(|(user, mut k)| {
                            // a shorter list than the checkpoint's is its start
                            k.shopper.cut(length);
                            (user, k)
                        })
                        .collect();
                    restoring = Some((at, mine));
                    wakes.insert(at, Vec::new());
                    held = Some(cap.delayed(&at));
                }
                let mut fresh: BTreeSet<UserId> = BTreeSet::new();
                let mut arrived: BTreeMap<Tick, Arrived> = BTreeMap::new();
                let mut categories = Catalog::default();
                move |(input1, frontier1), (input2, frontier2), output| {
                    input1.for_each(|cap, data| {
                        for (e, t, r) in data.drain(..) {
                            let a = arrived.entry(t).or_insert_with(|| Arrived {
                                cap: cap.delayed(&t, 0),
                                events: Vec::new(),
                                catalog: Vec::new(),
                            });
                            // ingest only inserts events: a retraction is a bug upstream
                            assert!(r > 0, "a retracted event reached the shopper operator");
                            for _ in 1..r {
                                a.events.push(e.clone());
                            }
                            a.events.push(e);
                        }
                    });
                    input2.for_each(|cap, data| {
                        for (row, t, r) in data.drain(..) {
                            let a = arrived.entry(t).or_insert_with(|| Arrived {
                                cap: cap.delayed(&t, 0),
                                events: Vec::new(),
                                catalog: Vec::new(),
                            });
                            a.catalog.push((row, r));
                        }
                    });
                    let passed = |t: Tick| {
                        frontier1.frontier().iter().all(|f| *f > t)
                            && frontier2.frontier().iter().all(|f| *f > t)
                    };
                    let mut kept = kept.borrow_mut();
                    loop {
                        let next = [arrived.keys().next(), wakes.keys().next()]
                            .into_iter()
                            .flatten()
                            .min()
                            .copied();
                        let Some(t) = next.filter(|t| passed(*t)) else {
                            break;
                        };
                        if restoring.as_ref().is_some_and(|(at, _)| t >= *at) {
                            let (at, mine) = restoring.take().expect("checked");
                            for (user, k) in mine {
                                wakes.entry(at).or_default().push(user.clone());
                                fresh.insert(user.clone());
                                let wake = Some(at);
                                kept.by_user.insert(user, Kept { wake, ..k });
                            }
                        }
                        let input = arrived.remove(&t);
                        let users = wakes.remove(&t).unwrap_or_default();
                        let cap = match &input {
                            Some(a) => a.cap.clone(),
                            None => held
                                .as_ref()
                                .expect("a capability is held while wake-ups are pending")
                                .delayed(&t),
                        };
                        let mut tick = OneTick {
                            t,
                            kept: &mut kept,
                            catalog: &mut categories,
                            wakes: &mut wakes,
                            fresh: &mut fresh,
                            length,
                            rows: &rows,
                        };
                        let changes = tick.run(input, users);
                        output.session(&cap).give_iterator(changes.into_iter());
                        if held.as_ref().is_none_or(|h| *h.time() > t) {
                            held = Some(cap);
                        }
                    }
                    // hold a capability only for the earliest wake-up
                    match wakes.keys().next().copied() {
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
            },
        )
        .as_collection()
}

/// One tick of the operator.
struct OneTick<'a> {
    t: Tick,
    kept: &'a mut Shoppers,
    catalog: &'a mut Catalog,
    wakes: &'a mut BTreeMap<Tick, Vec<UserId>>,
    fresh: &'a mut BTreeSet<UserId>,
    length: usize,
    rows: &'a RowsOf,
}

impl OneTick<'_> {
    /// Applies the tick's catalog updates and events and returns the changes of what the
    /// woken shoppers show.
    fn run(
        &mut self,
        input: Option<Arrived>,
        woken: Vec<UserId>,
    ) -> Vec<(FeatureRow, Tick, isize)> {
        let t = self.t;
        let (events, catalog) = input.map_or((Vec::new(), Vec::new()), |a| (a.events, a.catalog));
        // who may change: woken (and still due now), given events, or touching a product
        // the catalog moves
        let mut users: Vec<UserId> = woken
            .into_iter()
            .filter(|u| self.kept.by_user.get(u).is_some_and(|k| k.wake == Some(t)))
            .collect();
        users.extend(events.iter().map(|e| e.event.user.clone()));
        if !catalog.is_empty() {
            let moved: FxHashSet<&ProductId> = catalog.iter().map(|((p, _), _)| p).collect();
            let touching = self
                .kept
                .by_user
                .iter()
                .filter(|(_, k)| k.shopper.touches_any(&moved, t.saturating_sub(1)))
                .map(|(u, _)| u.clone());
            users.extend(touching.collect::<Vec<_>>());
        }
        users.sort_unstable();
        users.dedup();
        let before: Vec<(&UserId, Vec<Shown>)> = users
            .iter()
            .map(|u| {
                let shown = match self.kept.by_user.get(u) {
                    Some(k) if !self.fresh.contains(u) => {
                        k.shopper.shown(t.saturating_sub(1), self.catalog)
                    }
                    _ => Vec::new(),
                };
                (u, shown)
            })
            .collect();
        // retractions first: a product moving category retracts its old row
        let mut updates = catalog;
        updates.sort_by_key(|(_, r)| *r);
        for ((product, category), r) in updates {
            if r < 0 {
                if self.catalog.get(&product) == Some(&category) {
                    self.catalog.remove(&product);
                }
            } else {
                self.catalog.insert(product, category);
            }
        }
        for e in &events {
            let k = self.kept.by_user.entry(e.event.user.clone()).or_default();
            k.shopper.insert(e, t, self.length);
        }
        let mut out = Vec::new();
        for (user, old) in before {
            let Some(k) = self.kept.by_user.get_mut(user) else {
                continue;
            };
            k.shopper.expire(t);
            let new = k.shopper.shown(t, self.catalog);
            if new != old {
                differences((self.rows)(user, old), (self.rows)(user, new), t, &mut out);
            }
            let next = k.shopper.next_change(t);
            if k.shopper.is_empty() {
                self.kept.by_user.remove(user);
            } else if next != k.wake || k.wake == Some(t) {
                k.wake = next;
                if let Some(n) = next {
                    self.wakes.entry(n).or_default().push(user.clone());
                }
            }
        }
        self.fresh.clear();
        out
    }
}

/// `new` less `old`, as updates at `t`.
fn differences(
    mut old: Vec<FeatureRow>,
    mut new: Vec<FeatureRow>,
    t: Tick,
    out: &mut Vec<(FeatureRow, Tick, isize)>,
) {
    old.sort();
    new.sort();
    let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return,
        };
        match order {
            std::cmp::Ordering::Equal => {
                old.next();
                new.next();
            }
            std::cmp::Ordering::Less => out.extend(old.next().map(|r| (r, t, -1))),
            std::cmp::Ordering::Greater => out.extend(new.next().map(|r| (r, t, 1))),
        }
    }
}
