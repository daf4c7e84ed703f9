//! `bench archive`: the archive's own throughput (records buffered, encoded as zstd Parquet
//! and written to a local directory: per wall second and per CPU second of the process),
//! and with `--kafka` what it costs `run`: the same backlog replayed with the archive off
//! and on (no stores, so the archive's share is not hidden behind theirs).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_dataflows::GenerateSpec;

use super::{create_topic, BenchArgs};
use crate::archive::file::RecordIn;
use crate::archive::WorkerArchive;
use crate::clock::now_ms;
use crate::config::{ArchiveConfig, Config};
use crate::engine::{timely_config, RunOptions, Shared};

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    alone(a)?;
    if a.kafka {
        cost_to_run(a)?;
    }
    Ok(())
}

/// Traffic at 10,000 events/s of event time: a checkpoint's worth of it (100,000 records,
/// 10 s) falls mostly in one hour, as live traffic does. (Squeezing weeks of event time
/// into a million records would make a file per partition and hour at every cut, and
/// measure creating files.)
fn spec(events: u64) -> GenerateSpec {
    GenerateSpec {
        events,
        rate: 10_000,
        ..Default::default()
    }
}

/// `--events` generated search records through one worker's archive to a temporary
/// directory: taking them (the source thread's share) and writing them (the writer's).
fn alone(a: &BenchArgs) -> anyhow::Result<()> {
    let cfg = Config::load(None, serde_json::json!({}))?;
    let family = crate::engine::family_of(&cfg)?;
    let records: Vec<(Vec<u8>, i64)> = family
        .generate(&spec(a.events))
        .map(|p| {
            let ts = serde_json::from_slice::<serde_json::Value>(&p.payload)
                .ok()
                .and_then(|v| v["ts"].as_i64())
                .unwrap_or(0);
            (p.payload, ts)
        })
        .collect();
    let payload_bytes: usize = records.iter().map(|(p, _)| p.len()).sum();
    let dir = std::env::temp_dir().join(format!("tidemark-bench-archive-{}", now_ms()));
    let archive_cfg = ArchiveConfig {
        enabled: true,
        root: dir.to_string_lossy().into_owned(),
        ..cfg.archive.clone()
    };
    let root = crate::archive::open(&archive_cfg)?;
    let from: BTreeMap<(String, i32), i64> = (0..4).map(|p| (("bench".into(), p), 0)).collect();
    let mut archive = WorkerArchive::start(&archive_cfg, root, 0, from, None)?;
    let (cpu0, start) = (super::cpu_time(), Instant::now());
    for (offset, (payload, ts)) in records.iter().enumerate() {
        let partition = (offset % 4) as i32;
        let r = RecordIn {
            offset: offset as i64,
            timestamp_ms: *ts,
            event_ms: *ts,
            valid: true,
            key: None,
            payload,
            read_ms: *ts,
        };
        archive.take(
            partition as usize,
            "bench",
            partition,
            r,
            std::iter::empty(),
        );
        // a checkpoint every 100,000 records, as one every 10 s at 10,000 records/s
        if offset % 100_000 == 99_999 {
            archive.cut();
        }
    }
    archive.cut();
    let taken = start.elapsed();
    archive.progress().wait_written(Duration::from_secs(600))?;
    let (secs, cpu) = (
        start.elapsed().as_secs_f64(),
        (super::cpu_time() - cpu0).as_secs_f64(),
    );
    let (files, bytes) = dir_size(&dir);
    let n = records.len() as f64;
    println!(
        "archive, {} search records ({:.0} MB of JSON) to a local directory: {:.0} records/s ({:.0} per CPU second; taking them {:.0} records/s), {files} files, {:.1} MB ({:.1}× smaller)",
        records.len(),
        payload_bytes as f64 / 1e6,
        n / secs,
        n / cpu,
        n / taken.as_secs_f64(),
        bytes as f64 / 1e6,
        payload_bytes as f64 / bytes.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn dir_size(dir: &std::path::Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                let (f, b) = dir_size(&p);
                (files, bytes) = (files + f, bytes + b);
            } else {
                files += 1;
                bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    (files, bytes)
}

/// `--e2e-events` search events in a 4-partition topic, replayed by `--e2e-workers` with
/// `--exit-at-end` and no stores, archive off then on (each its own consumer group).
fn cost_to_run(a: &BenchArgs) -> anyhow::Result<()> {
    let stamp = now_ms();
    let topic = format!("bench-archive-{stamp}");
    let base = Config::load(None, serde_json::json!({}))?;
    create_topic(&base.kafka.brokers, &topic, 4)?;
    let family = crate::engine::family_of(&base)?;
    eprintln!("producing {} events to {topic} …", a.e2e_events);
    super::produce_generated(&base.kafka.brokers, &*family, &spec(a.e2e_events), &topic)?;
    let dir = std::env::temp_dir().join(format!("tidemark-bench-archive-run-{stamp}"));
    let mut rates = Vec::new();
    for archived in [false, true] {
        let job = format!("bench-archive-{stamp}-{archived}");
        let flags = serde_json::json!({"job": job, "workers": a.e2e_workers,
            "kafka": {"topics": [topic], "group_id": job},
            "archive": {"enabled": archived, "root": dir.to_string_lossy()}});
        let mut cfg = Config::load(None, flags)?;
        cfg.checkpoint.dir = std::env::temp_dir().join("tidemark-bench-state");
        (cfg.redis.url, cfg.postgres.url) = (None, None);
        let shared = Arc::new(Shared::default());
        let opts = RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg, true);
        let start = Instant::now();
        crate::engine::run(opts, shared.clone())?;
        let secs = start.elapsed().as_secs_f64();
        let consumed = shared.counters.consumed.load(Ordering::Relaxed) as f64;
        rates.push(consumed / secs);
        println!(
            "run --exit-at-end, Kafka → {} worker(s), no stores, archive {}: {:.0} events/s ({consumed} events in {secs:.1} s, including start-up)",
            a.e2e_workers,
            if archived { "on" } else { "off" },
            consumed / secs
        );
    }
    let (files, bytes) = dir_size(&dir);
    println!(
        "  the archive costs the run {:.1} % ({files} files, {:.1} MB)",
        (1.0 - rates[1] / rates[0]) * 100.0,
        bytes as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
