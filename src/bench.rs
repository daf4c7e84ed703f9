//! `tidemark bench`: throughput of the dataflow alone and of decoding.

use std::time::Instant;

use clap::Args;
use differential_dataflow::input::Input;
use tidemark_dataflows::ingest::Timed;
use tidemark_dataflows::search::{Search, SearchConfig, SearchEvent};
use tidemark_dataflows::{Dataflow, GenerateSpec, Tick};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::engine::timely_config;

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure: search
    pub dataflow: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per batch (one tick each).
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Worker counts to run the dataflow with.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
}

fn traffic(events: u64) -> Vec<Timed<SearchEvent>> {
    let search = Search::new(SearchConfig::default());
    let spec = GenerateSpec {
        events,
        rate: 20_000,
        duplicate_share: 0.0,
        ..Default::default()
    };
    search
        .generate(&spec)
        .filter_map(|p| search.decode(&record(&p.payload)).ok())
        .collect()
}

fn record(payload: &[u8]) -> tidemark_dataflows::record::RecordRef<'_> {
    tidemark_dataflows::record::RecordRef {
        topic: "b",
        partition: 0,
        offset: 0,
        append_ms: 0,
        key: None,
        payload,
    }
}

/// Events/s through the search dataflow alone, on pre-decoded events.
fn dataflow_throughput(
    events: &std::sync::Arc<Vec<Timed<SearchEvent>>>,
    workers: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let events = events.clone();
    let start = Instant::now();
    let guards = timely::execute(timely_config(workers, 1, 0, None)?, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let mut input = worker.dataflow::<Tick, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Timed<SearchEvent>, isize>();
            Search::new(SearchConfig::default())
                .build(events)
                .probe_with(&probe);
            input
        });
        let mine: Vec<&Timed<SearchEvent>> = events.iter().skip(index).step_by(peers).collect();
        let mut tick = 0;
        for chunk in mine.chunks(batch / peers.max(1)) {
            tick = chunk
                .iter()
                .map(|e| e.ts)
                .max()
                .unwrap_or(tick)
                .max(tick + 1);
            input.advance_to(tick);
            for e in chunk {
                input.insert((*e).clone());
            }
            input.flush();
            worker.step_while(|| probe.less_than(&tick.saturating_sub(5_000)));
        }
        input.advance_to(tick + 1);
        input.flush();
        worker.step_while(|| probe.less_equal(&tick));
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    drop(guards);
    Ok(start.elapsed().as_secs_f64())
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if a.dataflow != "search" {
        anyhow::bail!(
            "bench '{}': only 'search' is benchmarked so far",
            a.dataflow
        );
    }
    eprintln!("generating {} events …", a.events);
    let search = Search::new(SearchConfig::default());
    let spec = GenerateSpec {
        events: a.events,
        rate: 20_000,
        duplicate_share: 0.0,
        ..Default::default()
    };
    let payloads: Vec<Vec<u8>> = search.generate(&spec).map(|p| p.payload).collect();
    let start = Instant::now();
    let mut ok = 0usize;
    for p in &payloads {
        ok += search.decode(&record(p)).is_ok() as usize;
    }
    let decode_rate = payloads.len() as f64 / start.elapsed().as_secs_f64();
    println!(
        "decode: {:.0} events/s on one core ({ok} valid of {})",
        decode_rate,
        payloads.len()
    );
    let events = std::sync::Arc::new(traffic(a.events));
    let mut one = None;
    for w in &a.workers {
        let secs = dataflow_throughput(&events, *w, a.batch)?;
        let total = events.len() as f64 / secs;
        let per = total / *w as f64;
        let scale = one
            .map(|o: f64| format!(", {:.2}x of 1 worker", total / o))
            .unwrap_or_default();
        one.get_or_insert(total);
        println!("dataflow, {w} worker(s): {:.0} events/s total, {:.0} per worker{scale} ({} events, batch {})", total, per, events.len(), a.batch);
    }
    Ok(())
}
