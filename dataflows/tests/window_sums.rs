//! The windowed-sums mechanism (`operators::window_sums`) against a naive recount, on
//! streams spanning two months (every 7-day and 30-day contribution expires within the
//! run), with repeated events, disorder and events already out of their window; at every
//! tick the output changes, every insertion tick and around expiries; on 1 and 2 workers,
//! and across a checkpoint restored on another worker count.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;
use proptest::prelude::*;
use tidemark_dataflows::contract::state::{Restore, State, WorkerSnapshot, FORMAT};
use tidemark_dataflows::contract::table::{FeatureRow, Value};
use tidemark_dataflows::contract::time::{Window, DAY, MINUTE};
use tidemark_dataflows::operators::window_sums::window_rows;
use tidemark_dataflows::operators::windowed::with_expiries;
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};

const BASE: u64 = 1_767_225_600_000;
const KEYS: usize = 4;
/// Measure 0 counts for 7 days, 1 for 30 days, 2 for 10 minutes, 3 forever.
const MEASURES: u8 = 4;

fn window(m: u8) -> Option<Window> {
    match m {
        0 => Some(Window::days(7)),
        1 => Some(Window::days(30)),
        2 => Some(Window::minutes(10)),
        _ => None,
    }
}

/// A contribution of `weight` to `(key, measure)` by an event at `ts`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
struct Ev {
    key: String,
    measure: u8,
    weight: i64,
    ts: u64,
}

/// One row per key with a non-zero sum: the four sums.
fn row(key: &str, sums: &[(u8, isize)], out: &mut Vec<FeatureRow>) {
    if sums.is_empty() {
        return;
    }
    let sum = |m: u8| {
        sums.iter()
            .find(|(k, _)| *k == m)
            .map_or(0, |(_, n)| *n as i64)
    };
    out.push(FeatureRow {
        table: 0,
        key: vec![key.to_string()],
        values: (0..MEASURES).map(|m| Value::Int(sum(m))).collect(),
    });
}

/// What the sink would hold: each key's row, from updates up to a tick.
type Sunk = Vec<(FeatureRow, Tick, isize)>;

/// Runs `per_worker[w]` (batches, each inserted at its worker's stream time) through
/// `window_rows` on `per_worker.len()` workers, restoring `restore` first; returns every
/// update and, when `snapshot_at` is given, every worker's snapshot at that tick (taken
/// after the batches, with the input at `snapshot_at + 1`).
fn run(
    per_worker: Vec<Vec<Vec<Ev>>>,
    start: Tick,
    restore: Option<Arc<Restore>>,
    snapshot_at: Option<Tick>,
) -> (Sunk, Vec<WorkerSnapshot>) {
    let workers = per_worker.len();
    let out: Arc<Mutex<Sunk>> = Arc::default();
    let snaps: Arc<Mutex<Vec<WorkerSnapshot>>> = Arc::default();
    let input = Arc::new(per_worker);
    let (o, s) = (out.clone(), snaps.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let state = State::new(index, peers, restore.clone());
        let probe = ProbeHandle::new();
        let o = o.clone();
        let mut events = worker.dataflow::<Tick, _, _>(|scope| {
            let (handle, events) = scope.new_collection::<Ev, isize>();
            let durable = with_expiries(events.clone(), |e: &Ev| {
                let until = window(e.measure).map(|w| w.expiry(e.ts));
                Some(((e.key.clone(), e.measure), e.weight as isize, until))
            });
            let derived: VecCollection<'_, Tick, (String, u8)> =
                events.filter(|_| false).map(|_| unreachable!());
            window_rows(
                "sums",
                &state,
                durable,
                derived.inner,
                |k: &String, sums, out| row(k, sums, out),
            )
            .inner
            .inspect(move |u| o.lock().unwrap().push(u.clone()))
            .probe_with(&probe);
            handle
        });
        assert_eq!(state.error(), None);
        let mut tick = start;
        events.advance_to(tick);
        for batch in &input[index] {
            tick = batch_tick(batch, tick);
            events.advance_to(tick);
            batch.iter().for_each(|e| events.insert(e.clone()));
            events.flush();
        }
        if let Some(at) = snapshot_at {
            events.advance_to(at + 1);
            events.flush();
            worker.step_while(|| probe.less_equal(&at));
            s.lock().unwrap().push(WorkerSnapshot {
                format: FORMAT,
                family: "test".into(),
                tick: at,
                worker: index,
                peers,
                stages: state.snapshot().unwrap(),
                positions: Vec::new(),
            });
        }
    })
    .expect("timely runs")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    let out = std::mem::take(&mut *out.lock().unwrap());
    let snaps = std::mem::take(&mut *snaps.lock().unwrap());
    (out, snaps)
}

/// The rows after every update up to `at`; each row present exactly once.
fn state_at(sunk: &Sunk, at: Tick) -> Result<BTreeMap<String, Vec<Value>>, TestCaseError> {
    let mut counts: BTreeMap<FeatureRow, isize> = BTreeMap::new();
    for (row, t, r) in sunk.iter().filter(|(_, t, _)| *t <= at) {
        let _ = t;
        *counts.entry(row.clone()).or_default() += r;
    }
    let mut state = BTreeMap::new();
    for (row, n) in counts {
        match n {
            0 => {}
            1 => {
                let before = state.insert(row.key[0].clone(), row.values);
                prop_assert!(before.is_none(), "two rows of {:?} at {}", row.key, at);
            }
            n => prop_assert!(false, "row {:?} with multiplicity {} at {}", row, n, at),
        }
    }
    Ok(state)
}

/// The naive recount: each event inserted at tick `t_in` adds its weight from `t_in` until
/// its expiry (for good when it has none); one already expired at `t_in` adds nothing.
fn recount(inserted: &[(Ev, Tick)], at: Tick) -> BTreeMap<String, Vec<Value>> {
    let mut sums: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (e, t_in) in inserted {
        let live = *t_in <= at && window(e.measure).is_none_or(|w| w.expiry(e.ts) > at);
        if live {
            sums.entry(e.key.clone())
                .or_insert_with(|| vec![0; MEASURES as usize])[e.measure as usize] += e.weight;
        }
    }
    sums.into_iter()
        .filter(|(_, v)| v.iter().any(|n| *n != 0))
        .map(|(k, v)| (k, v.into_iter().map(Value::Int).collect()))
        .collect()
}

/// The tick a batch goes in at after `previous`: its latest event time, and later than
/// `previous`.
fn batch_tick(batch: &[Ev], previous: Tick) -> Tick {
    batch
        .iter()
        .map(|e| e.ts)
        .max()
        .unwrap_or(previous)
        .max(previous + 1)
}

/// The insertion tick of each event, as `run` inserts them.
fn inserted(per_worker: &[Vec<Vec<Ev>>], start: Tick) -> Vec<(Ev, Tick)> {
    let mut out = Vec::new();
    for batches in per_worker {
        let mut tick = start;
        for batch in batches {
            tick = batch_tick(batch, tick);
            out.extend(batch.iter().map(|e| (e.clone(), tick)));
        }
    }
    out
}

/// Every tick worth comparing: each tick with updates, each insertion tick, and the
/// minutes around a sample of expiries.
fn ticks(sunk: &Sunk, inserted: &[(Ev, Tick)]) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = sunk.iter().map(|(_, t, _)| *t).collect();
    at.extend(inserted.iter().map(|(_, t)| *t));
    for (e, _) in inserted.iter().step_by(3) {
        if let Some(w) = window(e.measure) {
            at.extend([w.expiry(e.ts) - 1, w.expiry(e.ts), w.expiry(e.ts) + MINUTE]);
        }
    }
    at
}

fn check(sunk: &Sunk, inserted: &[(Ev, Tick)], from: Tick) -> Result<(), TestCaseError> {
    for at in ticks(sunk, inserted).into_iter().filter(|t| *t >= from) {
        prop_assert_eq!(state_at(sunk, at)?, recount(inserted, at), "at tick {}", at);
    }
    Ok(())
}

/// Events over 60 days in batches; a share arrives late (by minutes or by weeks, some past
/// their window), a share is repeated.
fn batches() -> impl Strategy<Value = Vec<Vec<Ev>>> {
    let event = (
        0..KEYS,
        0..MEASURES,
        prop_oneof![Just(1i64), -2i64..5],
        0u64..60 * DAY,
        prop_oneof![6 => Just(0u64), 2 => 1u64..20 * MINUTE, 1 => DAY..35 * DAY],
        prop::bool::weighted(0.1),
    );
    (
        prop::collection::vec(event, 1..60),
        prop::collection::vec(1usize..8, 30),
    )
        .prop_map(|(events, cuts)| {
            let mut timeline = Vec::new();
            for (key, measure, weight, at, late, repeat) in events {
                let e = Ev {
                    key: format!("k{key}"),
                    measure,
                    weight,
                    ts: BASE + at,
                };
                let arrival = e.ts + late;
                if repeat {
                    timeline.push((arrival + 2 * MINUTE, e.clone()));
                }
                timeline.push((arrival, e));
            }
            // arrival order, then in batches of the given sizes
            timeline.sort_by_key(|(arrival, _)| *arrival);
            let mut items = timeline.into_iter().map(|(_, e)| e);
            let mut out = Vec::new();
            for cut in cuts.iter().cycle() {
                let batch: Vec<Ev> = items.by_ref().take(*cut).collect();
                if batch.is_empty() {
                    break;
                }
                out.push(batch);
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(b in batches()) {
        let input = vec![b];
        let (sunk, _) = run(input.clone(), BASE, None, None);
        check(&sunk, &inserted(&input, BASE), 0)?;
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in batches(), b in batches()) {
        let input = vec![a, b];
        let (sunk, _) = run(input.clone(), BASE, None, None);
        check(&sunk, &inserted(&input, BASE), 0)?;
    }

    /// The first half on `before` workers, a checkpoint, the second half on `after`: from
    /// the checkpoint's tick on, the restored run shows exactly the recount of all events.
    #[test]
    fn a_checkpoint_restores_on_another_worker_count(
        a in batches(), b in batches(), before in 1usize..3, after in 1usize..3,
    ) {
        let halves = |x: Vec<Vec<Ev>>| {
            let mid = x.len() / 2;
            (x[..mid].to_vec(), x[mid..].to_vec())
        };
        let ((a1, a2), (b1, b2)) = (halves(a), halves(b));
        let mut first: Vec<Vec<Vec<Ev>>> = vec![a1];
        let mut second: Vec<Vec<Vec<Ev>>> = vec![a2];
        if before == 2 { first.push(b1) } else { first[0].extend(b1) }
        if after == 2 { second.push(b2) } else { second[0].extend(b2) }
        let ins1 = inserted(&first, BASE);
        let at = ins1.iter().map(|(_, t)| *t).max().unwrap_or(BASE) + 1;
        let (_, snaps) = run(first, BASE, None, Some(at));
        let restore = Arc::new(Restore { tick: at, parts: snaps });
        let (sunk, _) = run(second.clone(), at, Some(restore), None);
        let mut all = ins1;
        all.extend(inserted(&second, at));
        check(&sunk, &all, at)?;
    }
}
