//! `tidemark bench search`: decoding and the search dataflow alone (pre-decoded events, 1
//! and N workers), and with `--kafka` end to end from Kafka into Redis and the freshness
//! at a fixed rate.

use std::sync::Arc;
use std::time::Instant;

use tidemark_dataflows::contract::event::Timed;
use tidemark_dataflows::families::search::{Search, SearchConfig, SearchEvent};
use tidemark_dataflows::{Dataflow, GenerateSpec};

use super::*;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
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
    let decoded: Vec<Timed<SearchEvent>> = payloads
        .iter()
        .filter_map(|p| search.decode(&record(p)).ok())
        .collect();
    let decode_rate = payloads.len() as f64 / start.elapsed().as_secs_f64();
    let ok = decoded.len();
    println!(
        "decode: {:.0} events/s on one core ({ok} valid of {})",
        decode_rate,
        payloads.len()
    );
    let events = std::sync::Arc::new(decoded);
    report_throughput(search, &events, Arc::default(), &a.workers, a.batch)?;
    if a.kafka {
        end_to_end(a)?;
    }
    Ok(())
}

fn bench_config(topic: &str, job: &str, workers: usize) -> anyhow::Result<Config> {
    let flags = serde_json::json!({"job": job, "workers": workers, "kafka": {"topics": [topic], "group_id": job}});
    let mut cfg = Config::load(None, flags)?;
    cfg.checkpoint.dir = std::env::temp_dir().join("tidemark-bench-state");
    if cfg.redis.url.is_none() {
        anyhow::bail!("bench --kafka needs TIDEMARK_REDIS (scripts/services.sh env)");
    }
    cfg.postgres.url = None;
    Ok(cfg)
}

/// Kafka (4 partitions) → 2 workers → Redis: throughput of a backlog with `--exit-at-end`,
/// then freshness (Kafka append → tick durable in Redis) at a fixed rate.
fn end_to_end(a: &BenchArgs) -> anyhow::Result<()> {
    let stamp = now_ms();
    let throughput_topic = format!("bench-search-{stamp}");
    let cfg = bench_config(&throughput_topic, &format!("bench-{stamp}"), a.e2e_workers)?;
    let brokers = cfg.kafka.brokers.clone();
    create_topic(&brokers, &throughput_topic, 4)?;
    let family = crate::engine::family_of(&cfg)?;
    eprintln!("producing {} events to {throughput_topic} …", a.e2e_events);
    let sender = Sender::new(&brokers)?;
    let spec = GenerateSpec {
        events: a.e2e_events,
        rate: 20_000,
        ..Default::default()
    };
    for p in family.generate(&spec) {
        sender.send(
            &throughput_topic,
            p.key.as_deref().map(str::as_bytes),
            &p.payload,
            None,
        )?;
    }
    sender.flush()?;
    let shared = Arc::new(Shared::default());
    let opts = RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg, true);
    let start = Instant::now();
    crate::engine::run(opts, shared.clone())?;
    let secs = start.elapsed().as_secs_f64();
    let consumed = shared.counters.consumed.load(Ordering::Relaxed) as f64;
    let throughput = consumed / secs;
    println!("end to end, Kafka → {} worker(s) → Redis: {throughput:.0} events/s ({consumed} events in {secs:.1} s, including start-up)", a.e2e_workers);

    let rate = a.freshness_rate.unwrap_or((throughput / 2.0) as u64).max(1);
    let live_topic = format!("bench-live-{stamp}");
    create_topic(&brokers, &live_topic, 4)?;
    let cfg = bench_config(&live_topic, &format!("bench-live-{stamp}"), a.e2e_workers)?;
    let h = freshness(cfg, rate, a.freshness_seconds, stamp)?;
    report_freshness(&h, rate, "Kafka append → Redis EXEC acknowledged");
    Ok(())
}
