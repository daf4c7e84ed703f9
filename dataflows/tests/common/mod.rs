//! Running a family's dataflow on in-memory batches, on one or more workers.

#![allow(dead_code)]

pub mod ads_model;
pub mod commerce_model;
pub mod reading_model;
pub mod search_model;
pub mod watch_model;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tidemark_dataflows::contract::counters::Counters;
use tidemark_dataflows::contract::dimension::{DimRow, TableSource};
use tidemark_dataflows::contract::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::contract::table::{apply_changes, SinkEvent, TickChanges, Value};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::operators::changes::feature_changes;
use tidemark_dataflows::{Family, Tick};

/// Hands out one batch per poll, then reports being caught up; finished when empty. With
/// a gate, the last batch waits until the gate opens.
pub struct VecSource {
    pub batches: VecDeque<Vec<Vec<u8>>>,
    pub now_ms: u64,
    pub offset: i64,
    pub gate: Option<Arc<AtomicBool>>,
}

impl RecordSource for VecSource {
    fn poll(&mut self, _max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        if self.batches.len() == 1 && self.gate.as_ref().is_some_and(|g| !g.load(SeqCst)) {
            return Poll::Caught { idle: false };
        }
        let Some(batch) = self.batches.pop_front() else {
            return Poll::Finished;
        };
        for record in &batch {
            self.offset += 1;
            let (append_ms, record) = split_append(record);
            let (topic, payload) = split_topic(record);
            visit(RecordRef {
                topic,
                partition: 0,
                offset: self.offset,
                append_ms,
                key: None,
                payload,
                read_ms: None,
                headers: None,
                tombstone: false,
            });
        }
        Poll::Caught { idle: false }
    }
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

pub type State = BTreeMap<(u8, Vec<String>), Vec<Value>>;

/// Draws below `n` from `seed` (a linear congruential generator): the strategies' own
/// choices, reproducible from the seed proptest draws.
pub fn draws(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed;
    move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n.max(1)
    }
}

/// What a test record is on the wire.
pub trait Payload {
    fn payload(&self) -> Vec<u8>;
}

/// A record of a random stream: an event, or bytes the decoder must turn away.
#[derive(Clone, Debug)]
pub enum Item<E> {
    Event(E),
    Bad(Vec<u8>),
}

impl<E: Payload> Payload for Item<E> {
    fn payload(&self) -> Vec<u8> {
        match self {
            Item::Event(e) => e.payload(),
            Item::Bad(bytes) => bytes.clone(),
        }
    }
}

/// Each batch's records as the bytes the source hands out.
pub fn payloads<I: Payload>(batches: &[Vec<I>]) -> Vec<Vec<Vec<u8>>> {
    batches
        .iter()
        .map(|b| b.iter().map(Payload::payload).collect())
        .collect()
}

/// How an oracle test compares the written state with its model's.
pub struct Oracle {
    /// Event times are printed relative to this.
    pub base: u64,
    /// Relative tolerance of float comparisons.
    pub tolerance: f64,
}

impl Oracle {
    pub fn agrees(&self, got: &State, want: &State) -> bool {
        agrees(got, want, self.tolerance)
    }
    pub fn check(
        &self,
        got: &State,
        want: &State,
        at: Tick,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        check(got, want, at, self.base, self.tolerance)
    }
}

/// Floats equal within a relative `tolerance`, everything else exactly.
pub fn close(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= tolerance * (1.0 + x.abs().max(y.abs())),
        _ => a == b,
    }
}

/// The same entities, each with close values.
pub fn agrees(got: &State, want: &State, tolerance: f64) -> bool {
    got.len() == want.len()
        && got.iter().all(|(k, g)| {
            want.get(k).is_some_and(|w| {
                g.len() == w.len() && g.iter().zip(w).all(|(a, b)| close(a, b, tolerance))
            })
        })
}

/// `agrees`, failing the property case with the first entity that differs.
pub fn check(
    got: &State,
    want: &State,
    at: Tick,
    base: u64,
    tolerance: f64,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    for k in keys {
        match (got.get(k), want.get(k)) {
            (Some(g), Some(w))
                if g.len() == w.len() && g.iter().zip(w).all(|(a, b)| close(a, b, tolerance)) => {}
            (g, w) => {
                return Err(proptest::test_runner::TestCaseError::fail(format!(
                    "at {at} ({} ms after the base), {k:?}: dataflow {g:?}, recount {w:?}",
                    at.saturating_sub(base)
                )))
            }
        }
    }
    Ok(())
}

/// Items in arrival order, cut into batches of the sizes `cuts` gives in turn.
pub fn in_batches<T>(mut timeline: Vec<(u64, T)>, cuts: &[usize]) -> Vec<Vec<T>> {
    timeline.sort_by_key(|(arrival, _)| *arrival);
    let mut batches = Vec::new();
    let mut items = timeline.into_iter().map(|(_, i)| i);
    for cut in cuts.iter().cycle() {
        let batch: Vec<T> = items.by_ref().take(*cut).collect();
        if batch.is_empty() {
            break;
        }
        batches.push(batch);
    }
    batches
}

/// A record for `topic` (records without one are on topic `t`).
pub fn on_topic(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![0];
    r.extend_from_slice(topic.as_bytes());
    r.push(0);
    r.extend_from_slice(payload);
    r
}

/// `record` (framed or not) with a broker append time: byte 1, then the time as 8 bytes
/// little-endian. Unframed records are appended at 0.
pub fn appended(append_ms: u64, record: &[u8]) -> Vec<u8> {
    let mut r = vec![1];
    r.extend_from_slice(&append_ms.to_le_bytes());
    r.extend_from_slice(record);
    r
}

fn split_append(record: &[u8]) -> (i64, &[u8]) {
    match record.strip_prefix(&[1]) {
        Some(rest) => (
            u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as i64,
            &rest[8..],
        ),
        None => (0, record),
    }
}

fn split_topic(record: &[u8]) -> (&str, &[u8]) {
    match record.strip_prefix(&[0]) {
        Some(rest) => {
            let end = rest.iter().position(|b| *b == 0).expect("topic ends");
            (
                std::str::from_utf8(&rest[..end]).expect("topic"),
                &rest[end + 1..],
            )
        }
        None => ("t", record),
    }
}

/// Runs family `name` with worker `w` reading `per_worker[w]`; returns every tick's changes
/// (all workers) in tick order, and the counters.
pub fn run(
    name: &'static str,
    per_worker: Vec<Vec<Vec<Vec<u8>>>>,
    now_ms: u64,
    opts: IngestOptions,
) -> (Vec<TickChanges>, Arc<Counters>) {
    run_with_dimension(name, per_worker, now_ms, opts, None)
}

/// A dimension table whose contents are `snapshots`, one per read (the first at time 0);
/// `done` opens once the last is handed out.
struct ScriptedTable {
    snapshots: VecDeque<Vec<DimRow>>,
    done: Arc<AtomicBool>,
}

impl TableSource for ScriptedTable {
    fn snapshot(&mut self) -> Option<Vec<DimRow>> {
        let next = self.snapshots.pop_front();
        if self.snapshots.is_empty() {
            self.done.store(true, SeqCst);
        }
        next
    }
}

/// `run`, with the rows of the family's (only) dimension table.
pub fn run_with_dimension(
    name: &'static str,
    per_worker: Vec<Vec<Vec<Vec<u8>>>>,
    now_ms: u64,
    opts: IngestOptions,
    dimension: Option<Vec<DimRow>>,
) -> (Vec<TickChanges>, Arc<Counters>) {
    run_with_table_changes(name, per_worker, now_ms, opts, dimension.map(|d| vec![d]))
}

/// `run`, with a dimension table that reads as `snapshots` one after the other; the last
/// batch of each worker waits until the table has shown its last snapshot, so the change
/// lands while the stream runs.
pub fn run_with_table_changes(
    name: &'static str,
    per_worker: Vec<Vec<Vec<Vec<u8>>>>,
    now_ms: u64,
    opts: IngestOptions,
    snapshots: Option<Vec<Vec<DimRow>>>,
) -> (Vec<TickChanges>, Arc<Counters>) {
    run_configured(name, None, per_worker, now_ms, opts, snapshots)
}

/// `run_with_table_changes` with the family's config section (`None`: the defaults).
pub fn run_configured(
    name: &'static str,
    section: Option<serde_json::Value>,
    per_worker: Vec<Vec<Vec<Vec<u8>>>>,
    now_ms: u64,
    opts: IngestOptions,
    snapshots: Option<Vec<Vec<DimRow>>>,
) -> (Vec<TickChanges>, Arc<Counters>) {
    let make =
        move || tidemark_dataflows::family(name, section.clone()).expect("a registered family");
    run_family(Arc::new(make), per_worker, now_ms, opts, snapshots)
}

/// Makes a worker's family.
pub type MakeFamily = Arc<dyn Fn() -> Box<dyn Family> + Send + Sync>;

/// `run_configured` with the family `make` makes (e.g. one checked for data quality).
pub fn run_family(
    make: MakeFamily,
    per_worker: Vec<Vec<Vec<Vec<u8>>>>,
    now_ms: u64,
    opts: IngestOptions,
    snapshots: Option<Vec<Vec<DimRow>>>,
) -> (Vec<TickChanges>, Arc<Counters>) {
    let done = Arc::new(AtomicBool::new(false));
    let gated = snapshots.as_ref().is_some_and(|s| s.len() > 1);
    let workers = per_worker.len();
    let seen: Arc<Mutex<Vec<TickChanges>>> = Arc::default();
    let counters: Arc<Counters> = Arc::default();
    let input = Arc::new(per_worker);
    let (out, c) = (seen.clone(), counters.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let family = make();
        let source = VecSource {
            batches: input[worker.index()].clone().into(),
            now_ms,
            offset: 0,
            gate: gated.then(|| done.clone()),
        };
        let out = out.clone();
        let state =
            tidemark_dataflows::contract::state::State::none(worker.index(), worker.peers());
        let tables: Vec<Option<Box<dyn TableSource>>> = match &snapshots {
            Some(rows) if worker.index() == 0 => vec![Some(Box::new(ScriptedTable {
                snapshots: rows.clone().into(),
                done: done.clone(),
            }))],
            Some(_) => vec![None],
            None => Vec::new(),
        };
        worker.dataflow::<Tick, _, _>(|scope| {
            let installed = family.install(
                scope,
                Box::new(source),
                tables,
                opts.clone(),
                c.clone(),
                &state,
            );
            feature_changes(installed.features, move |e| {
                if let SinkEvent::Changes(t) = e {
                    out.lock().unwrap().push(t);
                }
            });
        });
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    let mut all = std::mem::take(&mut *seen.lock().unwrap());
    all.sort_by_key(|t| t.tick);
    (all, counters)
}

/// The sink's view after applying every change up to and including `tick`.
pub fn state_at(changes: &[TickChanges], tick: Tick) -> State {
    let mut state = State::new();
    for t in changes.iter().filter(|t| t.tick <= tick) {
        apply_changes(&mut state, t);
    }
    state
}
