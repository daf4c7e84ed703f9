//! `bench batch`: `batch` over an archive of `--events` generated search events spread over
//! the longest `--span`, at least 100 days (batch computes search's 90-day popularity too:
//! every contribution of every window, that one's included, also leaves it within the
//! replay), against the online dataflow over the same events (the
//! generator on `--e2e-workers`, no stores); then a training set of `--entities` label rows.
//!
//! The archive is the one the online run writes with `[archive]` on (its generator files a
//! partition per worker). `batch` writes Parquet only, unless TIDEMARK_PG is set. With
//! `--kafka` the online run is a Kafka replay instead (`--e2e-events` in a 4-partition
//! topic, `run --exit-at-end`, no stores, the archive on): what `batch` replaces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_dataflows::GenerateSpec;

use super::BenchArgs;
use crate::clock::now_ms;
use crate::config::Config;
use crate::engine::{timely_config, RunOptions, Shared, SourceKind};

const DAY_MS: u64 = 86_400_000;
/// The longest window batch computes (search's batch-only `popularity_90d`), and a margin.
const LONGEST_WINDOW_DAYS: u64 = 100;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let span = a
        .span
        .iter()
        .max()
        .copied()
        .unwrap_or_default()
        .max(Duration::from_millis(LONGEST_WINDOW_DAYS * DAY_MS));
    let dir = std::env::temp_dir().join(format!("tidemark-bench-batch-{}", now_ms()));
    let mut cfg = Config::load(
        None,
        serde_json::json!({ "workers": a.e2e_workers, "job": "bench-batch" }),
    )?;
    cfg.redis.url = None;
    let pg = cfg.postgres.url.take();
    cfg.archive.root = dir.join("lake").to_string_lossy().into_owned();
    let spec = GenerateSpec {
        events: if a.kafka { a.e2e_events } else { a.events },
        span_ms: Some(span.as_millis() as u64),
        ..Default::default()
    };
    let (start, end) = (spec.start_ms, spec.start_ms + span.as_millis() as u64);
    println!(
        "bench batch: {} search events over {:?}, {} workers",
        a.events, span, a.e2e_workers
    );
    let baseline = if a.kafka {
        cfg.archive.enabled = true;
        let secs = replay(&mut cfg, &spec)?;
        println!(
            "run --exit-at-end from Kafka (no stores, archive on): {:>6.1} s  {:>9.0} events/s",
            secs,
            spec.events as f64 / secs
        );
        secs
    } else {
        let baseline = online(&cfg, &spec)?;
        println!(
            "online dataflow (generator, no stores):     {:>8.1} s  {:>9.0} events/s",
            baseline,
            a.events as f64 / baseline
        );
        cfg.archive.enabled = true;
        let archived = online(&cfg, &spec)?;
        println!(
            "online dataflow with the archive on:        {:>8.1} s  {:>9.0} events/s",
            archived,
            a.events as f64 / archived
        );
        baseline
    };
    cfg.archive.enabled = false;
    cfg.postgres.url = pg;
    let days = (end - start) / DAY_MS;
    match crate::batch::batch(&cfg, start, end, DAY_MS, true, None)? {
        crate::batch::Outcome::Done(r) => println!(
            "batch, {days} daily boundaries{}:   {:>8.1} s  {:>9.0} records/s  ({} rows, {:.2}x the online dataflow)",
            if cfg.postgres.url.is_some() { " (Postgres+Parquet)" } else { " (Parquet)" },
            r.seconds,
            r.records as f64 / r.seconds,
            r.rows,
            baseline / r.seconds
        ),
        crate::batch::Outcome::NotYet(why) => anyhow::bail!("{why}"),
    }
    let labels = dir.join("labels.csv");
    write_labels(&labels, a.entities, start, end)?;
    let out = dir.join("train.parquet");
    match crate::batch::training::training_set(&cfg, &labels, &out, true)? {
        Ok(r) => println!(
            "training set of {} label rows:          {:>8.1} s  ({:.0} label rows/s)",
            r.rows,
            r.seconds,
            r.rows as f64 / r.seconds
        ),
        Err(why) => anyhow::bail!("{why}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Seconds of an `--exit-at-end` run of the generator's traffic, without stores.
fn online(cfg: &Config, spec: &GenerateSpec) -> anyhow::Result<f64> {
    let opts = RunOptions {
        source: SourceKind::Generator {
            spec: spec.clone(),
            pace: None,
        },
        ..RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg.clone(), true)
    };
    let started = Instant::now();
    crate::engine::run(opts, Arc::new(Shared::default()))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Produces the traffic to a fresh 4-partition topic and replays it with `--exit-at-end`
/// (no stores): its seconds. `cfg` then reads that topic's archive.
fn replay(cfg: &mut Config, spec: &GenerateSpec) -> anyhow::Result<f64> {
    let topic = format!("bench-batch-{}", now_ms());
    super::create_topic(&cfg.kafka.brokers, &topic, 4)?;
    let family = crate::engine::family_of(cfg)?;
    eprintln!("producing {} events to {topic} …", spec.events);
    super::produce_generated(&cfg.kafka.brokers, &*family, spec, &topic)?;
    cfg.kafka.topics = Some(vec![topic.clone()]);
    cfg.kafka.group_id = Some(topic);
    cfg.checkpoint.dir = std::env::temp_dir().join("tidemark-bench-state");
    let opts = RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg.clone(), true);
    let started = Instant::now();
    crate::engine::run(opts, Arc::new(Shared::default()))?;
    Ok(started.elapsed().as_secs_f64())
}

/// `rows` label rows: documents of the generator's and times across the span.
fn write_labels(path: &std::path::Path, rows: u64, start: u64, end: u64) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["doc_id", "ts", "label"])?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let doc = format!("doc-{}", x % 2_000);
        let ts = start + (x >> 20) % (end - start);
        w.write_record([doc, ts.to_string(), (i % 2).to_string()])?;
    }
    w.flush()?;
    Ok(())
}
