//! The expectations' hourly tallies, summed per (expectation, hour) and turned into report
//! rows: one row per expectation and hour of event time, replaced each tick its tally
//! changes (a late record re-opens its hour and corrects the row).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use crate::contract::quality::{Expectations, Hour, Tally, TallyKey};
use crate::contract::state::{Split, State};
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Tick, HOUR};

/// The worker that sums an (expectation, hour).
fn route(name: &str, hour: Hour) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(name.as_bytes());
    h.update(&hour.to_le_bytes());
    h.digest()
}

/// Each (expectation name, hour)'s tally, with the tick a part last reached it at.
type Sums = BTreeMap<(String, Hour), (Tally, Tick)>;

/// A tally with nothing in it has no row.
fn shown(t: &Tally) -> bool {
    t.total > 0 || t.failures != 0
}

/// An hour as the report's key names it: `2026-01-01T13:00:00Z`.
pub fn hour_text(hour: Hour) -> String {
    chrono::DateTime::from_timestamp_millis(hour as i64)
        .map(|d| d.format("%Y-%m-%dT%H:00:00Z").to_string())
        .unwrap_or_else(|| hour.to_string())
}

/// The report row of one expectation's hour: `observed, failures, total, passed, sample`.
pub fn report_row(exps: &Expectations, table: u8, i: usize, hour: Hour, t: &Tally) -> FeatureRow {
    let e = &exps.list[i];
    let v = e.verdict(t);
    FeatureRow {
        table,
        key: vec![hour_text(hour), e.spec.name.clone()],
        values: vec![
            v.observed.map_or(Value::Null, Value::float),
            Value::Int(v.failures as i64),
            Value::Int(v.total as i64),
            Value::Int(i64::from(v.passed)),
            Value::Text(serde_json::to_string(&t.sample).expect("strings")),
        ],
    }
}

/// Sums `tallies` per expectation and hour into the rows of report table `table`, given
/// with `features` (which pass through); names every restored sum, of any worker, in
/// `restored_sums`. An hour
/// nothing reached for `keep_ms` of stream time leaves the state and the collection (the
/// report's table keeps its row); a record of it after that starts it again. By last touch,
/// not by the hour's age: invalid records may claim any hour, and each must count. The sums are checkpointed by expectation name, so a restart
/// with expectations added or removed keeps the others'.
/// Long: an operator is one closure holding its state and frontier logic (as differential's `operators/count.rs`).
pub fn hourly<'s>(
    state: &State,
    tallies: Stream<'s, Tick, Vec<(TallyKey, Tally)>>,
    features: VecCollection<'s, Tick, FeatureRow>,
    exps: Arc<Expectations>,
    table: u8,
    keep_ms: u64,
    restored_sums: &RefCell<BTreeSet<(String, Hour)>>,
) -> VecCollection<'s, Tick, FeatureRow> {
    // each sum with the last tick a part reached it
    let sums: Rc<RefCell<Sums>> = Rc::default();
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    for part in state.register("quality", Split::ByKey, sums.clone()) {
        let mut s = sums.borrow_mut();
        for ((name, hour), (t, touched)) in part {
            restored_sums.borrow_mut().insert((name.clone(), hour));
            let known = exps.list.iter().any(|e| e.spec.name == name);
            if known && route(&name, hour) % peers == me {
                let sum = s.entry((name, hour)).or_default();
                sum.0.add(&t);
                sum.1 = sum.1.max(touched);
            }
        }
    }
    let index: Rc<BTreeMap<String, usize>> = Rc::new(
        (exps.list.iter().enumerate())
            .map(|(i, e)| (e.spec.name.clone(), i))
            .collect(),
    );
    let restore_at = state.restore().map(|r| r.tick);
    let names: Vec<String> = exps.list.iter().map(|e| e.spec.name.clone()).collect();
    let by_key =
        Exchange::new(move |((i, hour), _): &(TallyKey, Tally)| route(&names[*i as usize], *hour));
    tallies
        .binary_frontier(
            features.inner,
            by_key,
            Pipeline,
            "QualityHourly",
            move |cap, _| {
                let mut arrived: BTreeMap<Tick, (_, Vec<(TallyKey, Tally)>)> = BTreeMap::new();
                let mut swept: Tick = 0;
                // the restored rows are the collection's again, at the checkpoint's tick
                let mut restored = restore_at.map(|at| cap.delayed(&at));
                move |(input, frontier), (rows, _), output| {
                    // the features pass through (moved: no concatenation operator per tick)
                    rows.for_each(|cap, data| output.session(&cap).give_container(data));
                    if let Some(cap) = restored.take() {
                        let sums = sums.borrow();
                        let mut session = output.session(&cap);
                        for ((name, hour), (sum, _)) in sums.iter() {
                            if let Some(&e) = index.get(name).filter(|_| shown(sum)) {
                                let row = report_row(&exps, table, e, *hour, sum);
                                session.give((row, *cap.time(), 1isize));
                            }
                        }
                    }
                    input.for_each(|cap, data| {
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let at = arrived.entry(*cap.time()).or_insert_with(|| (cap, vec![]));
                        at.1.append(data);
                    });
                    while let Some(entry) = arrived.first_entry() {
                        let t = *entry.key();
                        if frontier.frontier().iter().any(|f| *f <= t) {
                            break;
                        }
                        let (cap, mut parts) = entry.remove();
                        parts.sort_unstable_by_key(|(k, _)| *k);
                        let mut sums = sums.borrow_mut();
                        let mut session = output.session(&cap);
                        let mut i = 0;
                        while i < parts.len() {
                            let (e, hour) = parts[i].0;
                            let key = (exps.list[e as usize].spec.name.clone(), hour);
                            let (sum, touched) = sums.entry(key).or_default();
                            *touched = t;
                            let before =
                                shown(sum).then(|| report_row(&exps, table, e as usize, hour, sum));
                            while i < parts.len() && parts[i].0 == (e, hour) {
                                sum.add(&parts[i].1);
                                i += 1;
                            }
                            let after =
                                shown(sum).then(|| report_row(&exps, table, e as usize, hour, sum));
                            if before != after {
                                if let Some(b) = before {
                                    session.give((b, t, -1isize));
                                }
                                if let Some(a) = after {
                                    session.give((a, t, 1));
                                }
                            }
                        }
                        // hours nothing reached for `keep_ms` leave, looked for once an hour
                        if t >= swept + HOUR {
                            swept = t - t % HOUR;
                            // by stream time, never by the hours tallies name (an invalid
                            // record's append time may be months past the events'); a sum
                            // reached only at tick 0, before stream time began, stays
                            let old: Vec<(String, Hour)> = (sums.iter())
                                .filter(|(_, (_, touched))| *touched > 0 && touched + keep_ms < t)
                                .map(|(k, _)| k.clone())
                                .collect();
                            for key in old {
                                let (sum, _) = sums.remove(&key).expect("listed");
                                if let Some(&e) = index.get(&key.0) {
                                    if shown(&sum) {
                                        session.give((
                                            report_row(&exps, table, e, key.1, &sum),
                                            t,
                                            -1,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}
