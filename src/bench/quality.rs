//! `tidemark bench search --quality-cost` (and `bench reading`): what the built-in data
//! quality expectations cost. The family's generated traffic, `--e2e-events` over the
//! longest `--span`, replayed in-process through ingest (validation, decoding, dedup) and
//! the dataflow on `--e2e-workers` workers with `quality.builtin` off and on, in
//! alternating order, `--repeat` times; the medians and the pairs' ratios. With `--kafka`,
//! the same traffic is a Kafka backlog (4 partitions) read with `--exit-at-end` instead:
//! the broker then shares the machine's cores, and on two cores its noise is larger than
//! the cost. Redis is off, so the dataflow's share is the largest a real run has; Postgres
//! is on only for a family that reads a dimension table from it (reading's episodes), and
//! then it is also the store. Checkpoints are taken at the end only (see `replay`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tidemark_dataflows::GenerateSpec;

use super::{create_topic, produce_generated, span_label, BenchArgs};
use crate::clock::now_ms;
use crate::config::Config;
use crate::engine::{timely_config, RunOptions, Shared, SourceKind};

/// What a replay reads.
enum Traffic {
    /// The family's generator, in-process.
    Generated(GenerateSpec),
    /// A Kafka topic holding the same traffic.
    Kafka(String),
}

/// Seconds, CPU seconds (user + system, every thread) and records consumed of one
/// replay of `traffic` by `dataflow`.
fn replay(
    dataflow: &str,
    traffic: &Traffic,
    job: &str,
    a: &BenchArgs,
    builtin: bool,
    postgres: bool,
) -> anyhow::Result<(f64, f64, u64)> {
    let mut flags = serde_json::json!({"dataflow": dataflow, "job": job,
        "workers": a.e2e_workers, "kafka": {"group_id": job}, "quality": {"builtin": builtin}});
    if let Traffic::Kafka(topic) = traffic {
        flags["kafka"]["topics"] = serde_json::json!([topic]);
    }
    let mut cfg = Config::load(None, flags)?;
    cfg.checkpoint.dir = std::env::temp_dir().join(format!("tidemark-bench-quality-{job}"));
    // only the last checkpoint: one costs the same with and without the expectations
    // (their state is a few thousand sums), and whether a replay crosses one more interval
    // boundary moved a pair of runs by a second
    cfg.checkpoint.interval_ms = 3_600_000;
    cfg.redis.url = None;
    if !postgres {
        cfg.postgres.url = None;
    }
    let shared = Arc::new(Shared::default());
    let released = cfg.clone();
    let mut opts = RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg, true);
    if let Traffic::Generated(spec) = traffic {
        opts.source = SourceKind::Generator {
            spec: spec.clone(),
            pace: None,
        };
    }
    let (start, cpu) = (Instant::now(), super::cpu_time());
    let ran = crate::engine::run(opts, shared.clone());
    let secs = start.elapsed().as_secs_f64();
    let cpu = (super::cpu_time() - cpu).as_secs_f64();
    if postgres {
        crate::sink::owners::release(&released)?;
    }
    ran?;
    let _ =
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("tidemark-bench-quality-{job}")));
    Ok((secs, cpu, shared.counters.consumed.load(Ordering::Relaxed)))
}

/// The middle value; of an even count, the mean of the two middle ones.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// The built-in expectations' cost on `dataflow`'s replay (see the module's comment).
pub fn cost(dataflow: &str, a: &BenchArgs, postgres: bool) -> anyhow::Result<()> {
    let stamp = now_ms();
    let topic = format!("bench-quality-{dataflow}-{stamp}");
    let mut base = Config::load(None, serde_json::json!({"dataflow": dataflow}))?;
    if postgres && base.postgres.url.is_none() {
        anyhow::bail!(
            "bench {dataflow} --quality-cost needs TIDEMARK_PG (scripts/services.sh env)"
        );
    }
    base.quality.builtin = false;
    let family = crate::engine::family_of(&base)?;
    let span = a.span.iter().max().copied().unwrap_or_default();
    let spec = GenerateSpec {
        events: a.e2e_events,
        span_ms: Some(span.as_millis() as u64),
        ..Default::default()
    };
    if postgres {
        let pg = base.postgres.url.clone().expect("checked");
        for (table, rows) in family.dimension_rows(&spec) {
            crate::source::dimension::fill(&pg, &table, &rows)?;
        }
    }
    let traffic = if a.kafka {
        create_topic(&base.kafka.brokers, &topic, 4)?;
        eprintln!(
            "producing {} {dataflow} events over {} to {topic} …",
            a.e2e_events,
            span_label(span)
        );
        produce_generated(&base.kafka.brokers, &*family, &spec, &topic)?;
        Traffic::Kafka(topic)
    } else {
        Traffic::Generated(spec)
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut cpu_off, mut cpu_on) = (Vec::new(), Vec::new());
    for r in 0..a.repeat.max(1) {
        // the order alternates (off, on, then on, off), so a run's place in its pair (a
        // warmer page cache, a broker's fetch session) favours neither setting
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for builtin in order {
            let job = format!("bench-quality-{stamp}-{r}-{builtin}");
            let (secs, cpu, consumed) = replay(dataflow, &traffic, &job, a, builtin, postgres)?;
            eprintln!(
                "  builtin expectations {}: {secs:.2} s, {cpu:.2} CPU s ({consumed} records)",
                if builtin { "on" } else { "off" }
            );
            if builtin {
                on.push(secs);
                cpu_on.push(cpu);
            } else {
                off.push(secs);
                cpu_off.push(cpu);
            }
        }
    }
    // the machine's speed drifts over minutes: each pair (one run each way, back to back,
    // in alternating order) is compared, and the median of those ratios is the figure
    // that drift moves least
    let paired = |on: &[f64], off: &[f64]| {
        median(
            on.iter()
                .zip(off)
                .map(|(a, b)| 100.0 * (a / b - 1.0))
                .collect(),
        )
    };
    let (pair, cpu_pair) = (paired(&on, &off), paired(&cpu_on, &cpu_off));
    let (off, on) = (median(off), median(on));
    let (cpu_off, cpu_on) = (median(cpu_off), median(cpu_on));
    let store = if postgres { "Postgres" } else { "no sink" };
    println!(
        "quality cost, {dataflow}, span {}, {} → {} worker(s) → {store}: {off:.2} s without the built-in expectations, {on:.2} s with them (medians of {}): {:+.1} %",
        span_label(span),
        if a.kafka { "Kafka" } else { "generator" },
        a.e2e_workers,
        a.repeat.max(1),
        100.0 * (on / off - 1.0)
    );
    println!(
        "  CPU (user + system, all threads): {cpu_off:.2} s without, {cpu_on:.2} s with: {:+.1} %",
        100.0 * (cpu_on / cpu_off - 1.0)
    );
    println!(
        "  median of the {} pairs' ratios (back to back, in alternating order): {pair:+.1} % wall, {cpu_pair:+.1} % CPU",
        a.repeat.max(1)
    );
    Ok(())
}
