//! The checkpoint pause across workers: a source that has taken its snapshot reads nothing
//! more until every worker has taken its own. (Before, it went on at once: a record it
//! read could reach a worker still to take its snapshot — dedup ids, window sums — and be
//! in that worker's part of the checkpoint while the reader's positions read it again, so
//! a restore counted it on one side and dropped it as a duplicate on the other: whole
//! entities went missing after a crash, `tests/jobs.rs` about once in twenty runs.)

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_dataflows::contract::counters::Counters;
use tidemark_dataflows::contract::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::contract::state::State;
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::{GenerateSpec, Tick};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

use common::VecSource;

const BASE: u64 = 1_767_225_600_000; // 2026-01-01

/// [`VecSource`]'s batches, counting those worker `me` was handed.
struct Counted {
    inner: VecSource,
    handed: Arc<[AtomicUsize; 2]>,
    me: usize,
}

impl RecordSource for Counted {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        if !self.inner.batches.is_empty() {
            self.handed[self.me].fetch_add(1, SeqCst);
        }
        self.inner.poll(max, visit)
    }
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
}

#[test]
fn no_source_reads_past_a_pause_before_every_worker_took_its_snapshot() {
    let family = tidemark_dataflows::family("search", None).expect("search");
    let spec = GenerateSpec {
        events: 4_000,
        rate: 100,
        start_ms: BASE,
        ..Default::default()
    };
    let payloads: Vec<Vec<u8>> = family
        .generate(&spec)
        .map(|p| common::on_topic(&p.topic, &p.payload))
        .collect();
    // each worker's source: batches of 20 records, many more than read before the pause
    let per_worker: Vec<Vec<Vec<Vec<u8>>>> = (0..2)
        .map(|w| {
            let mine: Vec<Vec<u8>> = payloads.iter().skip(w).step_by(2).cloned().collect();
            mine.chunks(20).map(<[_]>::to_vec).collect()
        })
        .collect();
    let handed: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    // worker 1's batches when it took its snapshot, and when worker 0 took its own
    let at_own: Arc<AtomicUsize> = Arc::default();
    let at_peers: Arc<AtomicUsize> = Arc::default();
    let (h, own, peers) = (handed.clone(), at_own.clone(), at_peers.clone());
    timely::execute(timely::Config::process(2), move |worker| {
        let me = worker.index();
        let family = tidemark_dataflows::family("search", None).expect("search");
        let state = State::none(me, 2);
        let handed = h.clone();
        let source = Counted {
            inner: VecSource {
                batches: per_worker[me].clone().into(),
                now_ms: BASE + 3_600_000,
                offset: 0,
                gate: None,
            },
            handed: handed.clone(),
            me,
        };
        let probe = ProbeHandle::new();
        worker.dataflow::<Tick, _, _>(|scope| {
            let installed = family.install(
                scope,
                Box::new(source),
                Vec::new(),
                IngestOptions {
                    poll_interval: Duration::from_millis(1),
                    ..IngestOptions::default()
                },
                Arc::new(Counters::default()),
                &state,
            );
            installed.features.inner.probe_with(&probe);
        });
        let mut asked = false;
        let mut paused_since: Option<Instant> = None;
        let mut done = false;
        while worker.step() {
            if !asked && me == 0 && handed[0].load(SeqCst) >= 5 {
                state.request();
                asked = true;
            }
            let Some(at) = state.paused_at().filter(|_| !done) else {
                continue;
            };
            if probe.less_equal(&at) {
                continue;
            }
            let since = *paused_since.get_or_insert_with(Instant::now);
            if me == 1 {
                own.store(handed[1].load(SeqCst), SeqCst);
            } else if since.elapsed() < Duration::from_millis(300) {
                // worker 0 takes its time: worker 1 must wait for it
                std::thread::sleep(Duration::from_millis(1));
                continue;
            } else {
                peers.store(handed[1].load(SeqCst), SeqCst);
            }
            state.snapshot().expect("a snapshot");
            state.resume();
            done = true;
        }
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    let (own, peers) = (at_own.load(SeqCst), at_peers.load(SeqCst));
    assert!(own > 0, "worker 1 took its snapshot after reading");
    assert_eq!(
        peers,
        own,
        "worker 1 read {} batches more while worker 0 was still to take its snapshot",
        peers - own
    );
    assert!(handed[1].load(SeqCst) > own, "and went on afterwards");
}
