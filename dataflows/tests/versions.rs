//! The versions operator (`operators::versions`) on its own: a record keeps its version
//! while its content does, a change is the next version naming what it replaces, a record
//! back after it was gone is the next version too, and a checkpoint restored on another
//! worker count shows the same records again rather than new versions.

use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use tidemark_dataflows::contract::state::{Restore, State, WorkerSnapshot, FORMAT};
use tidemark_dataflows::contract::table::{FeatureRow, Value};
use tidemark_dataflows::operators::versions::versions;
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};

type Sunk = Vec<(FeatureRow, Tick, isize)>;
/// Per tick, the updates of `(key, ts)` contents.
type Steps = Vec<(Tick, Vec<((&'static str, i64), isize)>)>;

fn content(key: &str, ts: i64) -> FeatureRow {
    FeatureRow {
        table: 0,
        key: vec![key.into(), "20260101".into()],
        values: vec![Value::Int(ts)],
    }
}

/// `content` stamped as the operator should: version and the replaced content's value.
fn record(key: &str, ts: i64, version: i64, replaced: Option<i64>) -> FeatureRow {
    let mut r = content(key, ts);
    r.values.push(Value::Int(version));
    r.values.push(replaced.map_or(Value::Null, Value::Int));
    r
}

/// Runs `steps` on `workers`, restoring
/// `restore`; returns every output update, and every worker's snapshot at `snapshot_at`.
fn run(
    workers: usize,
    steps: Steps,
    restore: Option<Arc<Restore>>,
    snapshot_at: Option<Tick>,
) -> (Sunk, Vec<WorkerSnapshot>) {
    let out: Arc<Mutex<Sunk>> = Arc::default();
    let snaps: Arc<Mutex<Vec<WorkerSnapshot>>> = Arc::default();
    let (o, s) = (out.clone(), snaps.clone());
    let steps = Arc::new(steps);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let state = State::new(index, peers, restore.clone());
        let probe = ProbeHandle::new();
        let o = o.clone();
        let mut input = worker.dataflow::<Tick, _, _>(|scope| {
            let (handle, rows) = scope.new_collection::<(FeatureRow, Tick), isize>();
            let stamp = |c: &FeatureRow, v: u32, replaced: Option<&FeatureRow>| {
                let mut r = c.clone();
                r.values.push(Value::Int(v.into()));
                r.values
                    .push(replaced.map_or(Value::Null, |p| p.values[0].clone()));
                r
            };
            versions(&state, "versions", rows, stamp)
                .inner
                .inspect(move |u| o.lock().unwrap().push(u.clone()))
                .probe_with(&probe);
            handle
        });
        for (tick, updates) in steps.iter() {
            input.advance_to(*tick);
            if index == 0 {
                for ((key, ts), r) in updates {
                    input.update((content(key, *ts), Tick::MAX), *r);
                }
            }
            input.flush();
            if snapshot_at == Some(*tick) {
                input.advance_to(tick + 1);
                input.flush();
                worker.step_while(|| probe.less_equal(tick));
                s.lock().unwrap().push(WorkerSnapshot {
                    format: FORMAT,
                    family: "test".into(),
                    tick: *tick,
                    worker: index,
                    peers,
                    stages: state.snapshot().unwrap(),
                    positions: Vec::new(),
                });
            }
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

fn sorted(mut sunk: Sunk) -> Sunk {
    sunk.sort_by(|a, b| (a.1, &a.0, a.2).cmp(&(b.1, &b.0, b.2)));
    sunk
}

#[test]
fn a_version_moves_with_the_content_and_after_a_tombstone() {
    let steps = vec![
        (1, vec![(("a", 10), 1), (("b", 5), 1)]),
        // the same content again (retracted and inserted in one tick): nothing
        (2, vec![(("a", 10), -1), (("a", 10), 1)]),
        (3, vec![(("a", 10), -1), (("a", 7), 1)]),
        (4, vec![(("a", 7), -1)]),
        (5, vec![(("a", 7), 1)]),
    ];
    for workers in [1, 2] {
        let (out, _) = run(workers, steps.clone(), None, None);
        assert_eq!(
            sorted(out),
            vec![
                (record("a", 10, 1, None), 1, 1),
                (record("b", 5, 1, None), 1, 1),
                (record("a", 7, 2, Some(10)), 3, 1),
                (record("a", 10, 1, None), 3, -1),
                (record("a", 7, 2, Some(10)), 4, -1),
                // back after its tombstone, the same content: the next version
                (record("a", 7, 3, Some(7)), 5, 1),
            ]
        );
    }
}

#[test]
fn a_restore_on_another_worker_count_shows_the_same_records() {
    let before = vec![
        (1, vec![(("a", 10), 1), (("b", 5), 1), (("c", 1), 1)]),
        (2, vec![(("a", 10), -1), (("a", 7), 1)]),
    ];
    let (_, snaps) = run(1, before, None, Some(2));
    let restore = Arc::new(Restore {
        tick: 2,
        parts: snaps,
    });
    // the upstream shows its restored rows again at the checkpoint's tick, then goes on
    let after = vec![
        (2, vec![(("a", 7), 1), (("b", 5), 1), (("c", 1), 1)]),
        (3, vec![(("b", 5), -1), (("b", 6), 1)]),
    ];
    let (out, _) = run(2, after, Some(restore), None);
    assert_eq!(
        sorted(out),
        vec![
            (record("a", 7, 2, Some(10)), 2, 1),
            (record("b", 5, 1, None), 2, 1),
            (record("c", 1, 1, None), 2, 1),
            (record("b", 5, 1, None), 3, -1),
            (record("b", 6, 2, Some(5)), 3, 1),
        ]
    );
}
