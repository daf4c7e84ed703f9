//! What the feature changes, dedup's copies and the events the family flags add to the
//! expectations' hourly tallies,
//! summed with ingest's on this worker and passed on at most once per `every` of
//! wall-clock time (and whenever the inputs end). The feature updates pass through as the
//! containers they came in (moved, not copied).
//!
//! Why one operator for all of it: a 40-day replay has a tick per expiry minute, and each
//! operator and exchange a tick passes costs progress tracking; tallies sent on each tick
//! to the workers that sum them cost 13 % of a search replay, the separate operators
//! (changes, copies, their concatenation) a few percent more. Here they cost one operator
//! per tick, and the exchange a batch per interval.
//!
//! The tallies waiting here are checkpointed (by expectation name, like the sums), so a
//! restart loses none; they are kept by index, so a call clones no name. (At a checkpoint
//! they are in practice none: a pause passes them on, and the paused sources send nothing
//! later; `exactly_once` restarts pass with their restore dropped. Kept so that a
//! snapshot stays whole if that changes.) Only the tick at which a report row changes
//! depends on the wall clock; every row's value depends on the events only.
//! Long: an operator is one closure holding its state and frontier logic (as
//! differential's `operators/count.rs`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::contract::dataflow::Flagged;
use crate::contract::event::{Rejected, Rejection};
use crate::contract::quality::{
    hour_of, CheckName, Expectation, Expectations, Hour, Seen, Tally, TallyBatch, TallyKey, Target,
};
use crate::contract::state::{Split, State};
use crate::contract::table::FeatureRow;
use crate::contract::time::Tick;

/// The tallies not passed on yet, by (expectation index, hour); checkpointed by
/// expectation name (as a map of (name, hour) to tally), so a restart with expectations
/// added or removed keeps the others'.
#[derive(Default)]
struct Waiting {
    names: Arc<[String]>,
    sums: FxHashMap<TallyKey, Tally>,
    /// What a checkpoint held, by name, until the names are known.
    restored: Vec<((String, Hour), Tally)>,
}

impl Serialize for Waiting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let named: BTreeMap<(&str, Hour), &Tally> = (self.sums.iter())
            .map(|((i, hour), t)| ((self.names[*i as usize].as_str(), *hour), t))
            .collect();
        s.collect_map(named)
    }
}

impl<'de> Deserialize<'de> for Waiting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let named = BTreeMap::<(String, Hour), Tally>::deserialize(d)?;
        Ok(Waiting {
            restored: named.into_iter().collect(),
            ..Waiting::default()
        })
    }
}

pub type Tallies<'s> = Stream<'s, Tick, TallyBatch>;

/// What `pick` makes of each expectation (by index), grouped by the table or flag it names.
fn grouped<V>(
    exps: &Expectations,
    pick: impl Fn(u16, &Expectation) -> Option<(u8, V)>,
) -> Vec<Vec<V>> {
    let mut by: Vec<Vec<V>> = Vec::new();
    for (i, e) in exps.list.iter().enumerate() {
        if let Some((at, v)) = pick(i as u16, e) {
            by.resize_with(by.len().max(at as usize + 1), Vec::new);
            by[at as usize].push(v);
        }
    }
    by
}

/// Adds the new rows of `data` (`+1`s) of the views with checks to `fresh`.
///
/// In two passes: first the values, each a load from its row's own allocation that no
/// other waits for, in a loop small enough that many are in flight at once; then the
/// tallies. In one loop a row's value was a cache miss that the hashing and checking
/// around it kept from overlapping the next row's (3 % of a 1-worker search replay).
fn check_rows(
    data: &[(FeatureRow, Tick, isize)],
    by_table: &[Vec<(u16, Option<usize>)>],
    exps: &Expectations,
    fresh: &mut FxHashMap<TallyKey, Tally>,
) {
    // (expectation, hour, value, row)
    let mut looked: Vec<(u16, Hour, Seen<'_>, usize)> = Vec::with_capacity(data.len());
    for (n, (row, t, r)) in data.iter().enumerate() {
        let checks = by_table.get(row.table as usize).filter(|_| *r > 0);
        for &(i, field) in checks.into_iter().flatten() {
            let value = field.map_or(Seen::Missing, |f| Seen::of_value(&row.values[f]));
            looked.push((i, hour_of(*t), value, n));
        }
    }
    // the few (expectation, hour)s of a container, summed here and added to `fresh` once
    let mut local: Vec<(TallyKey, Tally)> = Vec::new();
    for &(i, hour, value, n) in &looked {
        let at = match local.iter().position(|(k, _)| *k == (i, hour)) {
            Some(at) => at,
            None => {
                local.push(((i, hour), Tally::default()));
                local.len() - 1
            }
        };
        let tally = &mut local[at].1;
        if tally.observe(&exps.list[i as usize], value) == Some(false) {
            tally.keep(&data[n].0.key.join("|"));
        }
    }
    for (key, t) in local {
        fresh.entry(key).or_default().add(&t);
    }
}

/// What a family's tallies are made of.
pub struct Observed<'s> {
    /// The feature changes (passed through).
    pub features: VecCollection<'s, Tick, FeatureRow>,
    /// Ingest's tallies of the records.
    pub ingested: Tallies<'s>,
    /// The records ingest turned away: its copies fail `unique`.
    pub rejected: VecCollection<'s, Tick, Rejection>,
    /// The events the family flags (`not_flagged`).
    pub flagged: Option<Flagged<'s>>,
}

/// The features, and the tallies of what is `observed`, summed on this worker and passed
/// on at most once per `every`.
///
/// The operator holds a capability at its inputs' frontier while it holds tallies (never
/// behind it, so it delays nothing downstream) and passes them on at that time. An input
/// that ends (`final_tick`, with `exit_at_end`) has them passed on at its last tick. When the
/// sources pause for a checkpoint at tick `T` it stops following the frontier and passes
/// what it holds on at its time (≤ `T`), so the checkpoint waits for those rows and the
/// stores hold every sum the snapshot does; past `T`, nothing is passed on while paused
/// (it would be on its way to an operator whose unprocessed input the snapshot misses).
///
/// `restored_sums` names the (expectation, hour) sums the checkpoint held; `hourly` fills
/// it as it restores them, before this operator first runs.
pub fn tally<'s>(
    state: &State,
    observed: Observed<'s>,
    exps: Arc<Expectations>,
    restored_sums: Rc<RefCell<BTreeSet<(String, Hour)>>>,
    every: Duration,
    final_tick: Rc<Cell<Option<Tick>>>,
) -> (VecCollection<'s, Tick, FeatureRow>, Tallies<'s>) {
    let names: Arc<[String]> = exps.list.iter().map(|e| e.spec.name.clone()).collect();
    let index: BTreeMap<&str, u16> = (names.iter().enumerate())
        .map(|(i, n)| (n.as_str(), i as u16))
        .collect();
    let waiting = Rc::new(RefCell::new(Waiting {
        names: names.clone(),
        ..Waiting::default()
    }));
    for part in state.register("quality-waiting", Split::ByWorker, waiting.clone()) {
        let mut w = waiting.borrow_mut();
        for ((name, hour), t) in part.restored {
            if let Some(&i) = index.get(name.as_str()) {
                w.sums.entry((i, hour)).or_default().add(&t);
            }
        }
    }
    // the checks on each feature view: (expectation, field)
    let by_table = grouped(&exps, |i, e| match e.target {
        Target::Feature(t, f) => Some((t, (i, f))),
        _ => None,
    });
    // the `not_flagged` expectations on each of the family's flags
    let by_flag = grouped(&exps, |i, e| e.flag.map(|f| (f, i)));
    // a restore sets the family's state up again at its tick: its rows there are not
    // changes (the stores hold them), and its flags there are counted by the restored
    // sums of their (expectation, hour), when the checkpoint had one
    let restored_at = state.restore().map(|r| r.tick);
    let unique: Vec<u16> = (exps.list.iter().enumerate())
        .filter(|(_, e)| e.spec.check == CheckName::Unique)
        .map(|(i, _)| i as u16)
        .collect();

    let Observed {
        features,
        ingested,
        rejected,
        flagged,
    } = observed;
    let scope = features.inner.scope();
    let mut builder = OperatorBuilder::new("QualityTally".to_owned(), scope);
    let info = builder.operator_info();
    let mut rows_in = builder.new_input(features.inner, Pipeline);
    let mut tallies_in = builder.new_input(ingested, Pipeline);
    let mut copies_in = builder.new_input(rejected.inner, Pipeline);
    let flagged = flagged.map_or_else(|| empty(scope), |f| f.inner);
    let mut flagged_in = builder.new_input(flagged, Pipeline);
    let (rows_out, rows) = builder.new_output();
    let (tallies_out, tallies) = builder.new_output();
    let mut rows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(rows_out);
    let mut tallies_out =
        OutputBuilder::<_, CapacityContainerBuilder<TallyBatch>>::from(tallies_out);
    let activator = scope.activator_for(info.address.clone());
    let state = state.clone();
    builder.build(move |mut caps| {
        let restored = !waiting.borrow().sums.is_empty();
        let mut held: Option<Capability<Tick>> = restored.then(|| caps.swap_remove(1));
        drop(caps);
        let mut last = Instant::now();
        // a wake-up is asked for once per interval, not on each call
        let mut woken_at: Option<Instant> = None;
        move |frontiers| {
            let mut w = waiting.borrow_mut();
            let fresh = &mut w.sums;
            let mut rows_handle = rows_out.activate();
            let mut tallies_handle = tallies_out.activate();
            let mut hold = |now: Option<Capability<Tick>>| {
                if let Some(now) = now {
                    if held.as_ref().is_none_or(|h| now.time() < h.time()) {
                        held = Some(now);
                    }
                }
            };
            rows_in.for_each(|cap, data: &mut Vec<(FeatureRow, Tick, isize)>| {
                if restored_at.is_none() || restored_at != cap.least().copied() {
                    check_rows(data, &by_table, &exps, fresh);
                }
                if !fresh.is_empty() {
                    hold(cap.retain_least(1));
                }
                rows_handle.session(&cap).give_container(data);
            });
            tallies_in.for_each(|cap, data| {
                for (key, t) in data.drain(..) {
                    fresh.entry(key).or_default().add(&t);
                }
                hold(cap.retain_least(1));
            });
            copies_in.for_each(|cap, data| {
                for (r, _, diff) in data.iter() {
                    if r.reason == Rejected::Duplicate && *diff > 0 {
                        for &i in &unique {
                            fresh.entry((i, hour_of(r.ts))).or_default().failures += *diff as i64;
                        }
                    }
                }
                if !fresh.is_empty() {
                    hold(cap.retain_least(1));
                }
            });
            flagged_in.for_each(|cap, data| {
                let restoring = restored_at.is_some() && restored_at == cap.least().copied();
                for ((flag, ts), _, diff) in data.iter() {
                    for &i in by_flag.get(*flag as usize).into_iter().flatten() {
                        let key = || (names[i as usize].clone(), hour_of(*ts));
                        if restoring && restored_sums.borrow().contains(&key()) {
                            continue;
                        }
                        fresh.entry((i, hour_of(*ts))).or_default().failures += *diff as i64;
                    }
                }
                if !fresh.is_empty() {
                    hold(cap.retain_least(1));
                }
            });
            let Some(h) = held.as_mut() else {
                return;
            };
            if w.sums.is_empty() {
                held = None;
                return;
            }
            let least = frontiers
                .iter()
                .flat_map(|f| f.frontier().first().copied())
                .min();
            // a checkpoint at `p` waits for what is held at or before `p` (so the store
            // has every row the snapshot counts, and a last checkpoint leaves none behind)
            let pause = state.paused_at();
            let done = final_tick.get();
            let due = match (least, pause) {
                (None, _) => true,
                // the input ended (`exit_at_end`): passed on at or before its last tick,
                // which the job waits for before it stops
                (Some(least), _) if done.is_some_and(|f| least > f) => true,
                (_, Some(p)) => *h.time() <= p,
                (Some(least), None) => {
                    let least = done.map_or(least, |f| least.min(f));
                    if *h.time() < least {
                        h.downgrade(&least);
                    }
                    last.elapsed() >= every
                }
            };
            if due {
                (tallies_handle.session(&*h)).give_iterator(w.sums.drain());
                held = None;
                last = Instant::now();
            } else if woken_at.is_none_or(|at| at <= Instant::now()) {
                let at = (last + every).max(Instant::now() + Duration::from_millis(1));
                activator.activate_after(at - Instant::now());
                woken_at = Some(at);
            }
        }
    });
    (rows.as_collection(), tallies)
}
