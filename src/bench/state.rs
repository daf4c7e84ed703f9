//! `tidemark bench state`: what checkpointed state costs (issue #4's figures) — memory per
//! live key and per window bucket, snapshot size and time, the time to rebuild a worker
//! from a checkpoint, and the throughput cost of checkpointing every second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_dataflows::contract::counters::Counters;
use tidemark_dataflows::contract::state::{Restore, State, WorkerSnapshot, FORMAT};
use tidemark_dataflows::families::search::{Search, SearchConfig};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::{Dataflow, Family, GenerateSpec, Produced, Tick};
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::Inspect;

use crate::clock::now_ms;
use crate::source::generator::GeneratorSource;

/// What one drive of the search dataflow over a source measured.
struct Drive {
    seconds: f64,
    rss_growth: u64,
    entities: u64,
    snapshots: u32,
    /// The longest snapshot (serializing the state while the sources wait).
    longest_snapshot: Duration,
    last: Option<WorkerSnapshot>,
    /// From the start until the restored checkpoint's tick had gone through.
    restored_after: Option<Duration>,
}

fn rss_bytes() -> u64 {
    crate::telemetry::resident_bytes().unwrap_or(0)
}

/// Runs the search family on one worker over `records` until they are all through,
/// checkpointing every `every` and once at the end when `keep_last`.
/// Long: one benchmark worker: build, feed, snapshot and restore in sequence.
fn drive(
    records: Box<dyn Iterator<Item = Produced> + Send>,
    restore: Option<Arc<Restore>>,
    every: Option<Duration>,
    keep_last: bool,
) -> Drive {
    let records = std::sync::Mutex::new(Some(records));
    timely::execute_directly(move |worker| {
        let records = records.lock().expect("records").take().expect("one worker");
        let family: Box<dyn Family> = Box::new(Search::new(SearchConfig::default()));
        let restored_tick = restore.as_ref().map(|r| r.tick);
        let state = State::new(0, 1, restore);
        let processed: ProbeHandle<Tick> = ProbeHandle::new();
        let entities: Arc<std::sync::atomic::AtomicI64> = Arc::default();
        let opts = IngestOptions {
            exit_at_end: true,
            start_at: restored_tick.map_or(0, |t| t + 1),
            ..Default::default()
        };
        let rss_before = rss_bytes();
        let started = Instant::now();
        let source = GeneratorSource::new(records, 0, 1, None);
        let counted = entities.clone();
        let dataflow = worker.next_dataflow_index();
        let final_tick = worker.dataflow::<Tick, _, _>(|scope| {
            let installed = family.install(
                scope,
                Box::new(source),
                Vec::new(),
                opts,
                Arc::new(Counters::default()),
                &state,
            );
            installed
                .features
                .inner
                .inspect(move |(_, _, r)| {
                    counted.fetch_add(*r as i64, std::sync::atomic::Ordering::Relaxed);
                })
                .probe_with(&processed);
            installed.invalid.probe_with(&processed);
            installed.final_tick
        });
        let mut next = every.map(|e| Instant::now() + e);
        let (mut snapshots, mut last, mut restored_after, mut ending) = (0, None, None, false);
        let mut longest_snapshot = Duration::ZERO;
        loop {
            worker.step();
            if let (Some(t), None) = (restored_tick, restored_after) {
                if !processed.less_equal(&t) {
                    restored_after = Some(started.elapsed());
                }
            }
            let done = final_tick.get().is_some_and(|t| !processed.less_equal(&t));
            if next.is_some_and(|n| Instant::now() >= n) || (done && keep_last && !ending) {
                state.request();
                next = every.map(|e| Instant::now() + e);
                ending |= done;
            }
            if let Some(at) = state.paused_at() {
                if !processed.less_equal(&at) {
                    let taking = Instant::now();
                    let stages = state.snapshot().expect("a snapshot");
                    longest_snapshot = longest_snapshot.max(taking.elapsed());
                    snapshots += 1;
                    last = Some(WorkerSnapshot {
                        format: FORMAT,
                        family: "search".into(),
                        tick: at,
                        worker: 0,
                        peers: 1,
                        stages,
                        positions: Vec::new(),
                    });
                    state.resume();
                    if ending {
                        break;
                    }
                }
            }
            if done && !keep_last {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        // the source holds its time open: drop the dataflow, or timely steps it forever
        worker.drop_dataflow(dataflow);
        Drive {
            seconds,
            rss_growth: rss_bytes().saturating_sub(rss_before),
            entities: entities.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64,
            snapshots,
            longest_snapshot,
            last,
            restored_after,
        }
    })
}

/// Impressions of `docs` distinct documents, 10 per event, each seen `buckets` times a
/// minute apart: `docs` doc entities, `docs` (query, doc) entities, a few prefixes.
fn many_keys(docs: u64, buckets: u64) -> Box<dyn Iterator<Item = Produced> + Send> {
    let start = now_ms() - 3_600_000;
    let per_round = docs / 10;
    Box::new((0..buckets).flat_map(move |round| {
        (0..per_round).map(move |i| {
            let ids: Vec<String> = (0..10).map(|j| format!("\"d{}\"", i * 10 + j)).collect();
            let ts = start + round * 60_000 + i * 60_000 / per_round.max(1);
            let payload = format!(
                r#"{{"event_id":"e{round}-{i}","ts":{ts},"user_id":"u{i}","session_id":"s{i}","event_type":"search_impression","query":"q{i}","doc_ids":[{}]}}"#,
                ids.join(",")
            );
            Produced {
                topic: "bench".into(),
                key: None,
                payload: payload.into_bytes(),
                ts,
            }
        })
    }))
}

pub fn run(keys: u64, events: u64) -> anyhow::Result<()> {
    let docs = keys / 2;
    eprintln!("building state of {keys} live keys …");
    let one = drive(many_keys(docs, 1), None, None, true);
    let snap = one.last.expect("a final snapshot");
    let bytes: usize = snap.stages.iter().map(|(_, b)| b.len()).sum();
    let started = Instant::now();
    let encoded = bincode::serialize(&snap)?;
    let decoded: WorkerSnapshot = bincode::deserialize(&encoded)?;
    let codec = started.elapsed();
    println!(
        "state: {} live keys in {:.1} s; memory {:.0} B per live key (RSS growth, whole dataflow)",
        one.entities,
        one.seconds,
        one.rss_growth as f64 / one.entities.max(1) as f64
    );
    println!(
        "checkpoint: {:.1} MB ({:.0} B per live key); snapshot {:.0} ms (the sources wait meanwhile); encode + decode {:.2} s",
        bytes as f64 / 1e6,
        bytes as f64 / one.entities.max(1) as f64,
        one.longest_snapshot.as_secs_f64() * 1e3,
        codec.as_secs_f64()
    );
    let restore = Arc::new(Restore {
        tick: decoded.tick,
        parts: vec![decoded],
    });
    let rebuilt = drive(Box::new(std::iter::empty()), Some(restore), None, false);
    println!(
        "restore: {} live keys rebuilt from the checkpoint in {:.2} s (plus reading it: see encode + decode)",
        rebuilt.entities,
        rebuilt.restored_after.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    // the same keys, each in 10 one-minute buckets of every window: the extra memory is
    // what a bucket costs
    let ten = drive(many_keys(docs, 10), None, None, false);
    // each document adds 9 buckets to three windowed sums: its impressions over 7 and 30
    // days, and its (query, doc) impressions over 7 days
    let buckets = (docs * 3 * 9) as f64;
    println!(
        "buckets: {:.0} B per extra (key, bucket) (10 buckets per key instead of 1)",
        (ten.rss_growth as f64 - one.rss_growth as f64) / buckets
    );

    let spec = GenerateSpec {
        events,
        rate: 20_000,
        start_ms: now_ms() - 86_400_000,
        ..Default::default()
    };
    let search = Search::new(SearchConfig::default());
    let plain = drive(Dataflow::generate(&search, &spec), None, None, false);
    let every = drive(
        Dataflow::generate(&search, &spec),
        None,
        Some(Duration::from_secs(1)),
        false,
    );
    let (a, b) = (events as f64 / plain.seconds, events as f64 / every.seconds);
    println!(
        "checkpoint cost: {a:.0} ev/s without, {b:.0} ev/s with a checkpoint every second ({} taken): {:.1} % slower",
        every.snapshots,
        (1.0 - b / a) * 100.0
    );
    Ok(())
}
