//! `tidemark bench search`: decoding and the search dataflow alone (pre-decoded events over
//! each `--span`, 1 and N workers), and with `--kafka` end to end from Kafka into Redis and
//! Postgres over the longest span, then the freshness at a fixed rate.

use std::sync::Arc;
use std::time::Instant;

use tidemark_dataflows::families::search::{Search, SearchConfig};
use tidemark_dataflows::{Dataflow, GenerateSpec};

use super::*;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if a.quality_cost {
        return super::quality::cost("search", a, false);
    }
    let search = Search::new(SearchConfig::default());
    // the decode figure needs no more than a million records held at once
    let spec = GenerateSpec {
        events: a.events.min(1_000_000),
        duplicate_share: 0.0,
        ..Default::default()
    };
    let payloads: Vec<Vec<u8>> = search.generate(&spec).map(|p| p.payload).collect();
    let start = Instant::now();
    let ok = payloads
        .iter()
        .filter(|p| search.decode(&record(p)).is_ok())
        .count();
    let decode_rate = payloads.len() as f64 / start.elapsed().as_secs_f64();
    println!(
        "decode: {:.0} events/s on one core ({ok} valid of {})",
        decode_rate,
        payloads.len()
    );
    drop(payloads);
    report_spans(search, a, |_| Vec::new())?;
    if a.kafka {
        end_to_end(a)?;
    }
    Ok(())
}

fn bench_config(topic: &str, job: &str, workers: usize) -> anyhow::Result<Config> {
    let flags = serde_json::json!({"job": job, "workers": workers, "kafka": {"topics": [topic], "group_id": job}});
    let mut cfg = Config::load(None, flags)?;
    cfg.checkpoint.dir = std::env::temp_dir().join("tidemark-bench-state");
    if cfg.redis.url.is_none() || cfg.postgres.url.is_none() {
        anyhow::bail!(
            "bench --kafka needs TIDEMARK_REDIS and TIDEMARK_PG (scripts/services.sh env)"
        );
    }
    Ok(cfg)
}

/// Kafka (4 partitions) → 2 workers → Redis + Postgres: throughput of a backlog covering
/// the longest `--span` with `--exit-at-end` (and the entities written per event), then
/// freshness (Kafka append → tick durable in both stores) at half that rate.
fn end_to_end(a: &BenchArgs) -> anyhow::Result<()> {
    let stamp = now_ms();
    let throughput_topic = format!("bench-search-{stamp}");
    let cfg = bench_config(&throughput_topic, &format!("bench-{stamp}"), a.e2e_workers)?;
    let brokers = cfg.kafka.brokers.clone();
    create_topic(&brokers, &throughput_topic, 4)?;
    let family = crate::engine::family_of(&cfg)?;
    let span = a.span.iter().max().copied().unwrap_or_default();
    eprintln!(
        "producing {} events over {} to {throughput_topic} …",
        a.e2e_events,
        span_label(span)
    );
    let spec = GenerateSpec {
        events: a.e2e_events,
        span_ms: Some(span.as_millis() as u64),
        ..Default::default()
    };
    super::produce_generated(&brokers, &*family, &spec, &throughput_topic)?;
    let shared = Arc::new(Shared::default());
    let cfg_of_throughput = cfg.clone();
    let opts = RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg, true);
    let start = Instant::now();
    let ran = crate::engine::run(opts, shared.clone());
    let secs = start.elapsed().as_secs_f64();
    // the live run below is another job on the same stores: hand this one's views back
    // first (also when the run failed, so the next bench run finds them free)
    let released = crate::sink::owners::release(&cfg_of_throughput);
    ran?;
    released?;
    let consumed = shared.counters.consumed.load(Ordering::Relaxed) as f64;
    let throughput = consumed / secs;
    println!("end to end, span {}, Kafka → {} worker(s) → Redis + Postgres: {throughput:.0} events/s ({consumed} events in {secs:.1} s, including start-up)", span_label(span), a.e2e_workers);
    for (sink, s) in shared.sinks.lock().expect("sink stats").iter() {
        let entities = s.entity_updates.load(Ordering::Relaxed) as f64;
        let writes = s.writes.load(Ordering::Relaxed);
        println!(
            "  {sink}: {entities} entities written in {writes} writes, {:.2} per event",
            entities / consumed.max(1.0)
        );
    }

    let rate = a.freshness_rate.unwrap_or((throughput / 2.0) as u64).max(1);
    let live_topic = format!("bench-live-{stamp}");
    create_topic(&brokers, &live_topic, 4)?;
    let cfg = bench_config(&live_topic, &format!("bench-live-{stamp}"), a.e2e_workers)?;
    let h = freshness(cfg, rate, a.freshness_seconds, stamp)?;
    report_freshness(
        &h,
        rate,
        "Kafka append → tick durable in Redis and Postgres",
    );
    Ok(())
}
