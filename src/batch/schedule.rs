//! `run --batch-every D`: the built-in scheduler. Once a minute, and once more when an
//! `--exit-at-end` run reaches the end of its input, it writes the features as of every multiple of `D` the archive now covers and no
//! batch of this job wrote yet — all of them in one replay — and records how far it got in
//! `{archive root}/_batches/{job}.json`. The first pass starts at the archive's first hour.
//!
//! A failed pass is logged and counted (`tidemark_batch_failures_total`) and tried again at
//! the next; the online run goes on either way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use object_store::ObjectStoreExt;
use tidemark_dataflows::Tick;

use super::{batch, complete, Outcome, Report};
use crate::archive::layout::hour_of_path;
use crate::config::Config;
use crate::source::archive::ArchivePlan;
use crate::telemetry::BATCH_FAILURES;

fn done_path(cfg: &Config, root: &crate::archive::Root) -> object_store::path::Path {
    root.prefix
        .clone()
        .join("_batches")
        .join(format!("{}.json", cfg.job))
}

/// One pass: `Some((from, to, report))` when it wrote boundaries in `(from, to]`.
pub fn pass(
    cfg: &Config,
    every: Tick,
    interrupt: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Option<(Tick, Tick, Report)>> {
    let Some(covered) = complete::covered(cfg)? else {
        return Ok(None);
    };
    let to = covered / every * every;
    let root = crate::archive::open(&cfg.archive)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = done_path(cfg, &root);
    let done: Option<Tick> = match rt.block_on(root.store.get(&path)) {
        Ok(got) => {
            let body = rt.block_on(got.bytes())?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).with_context(|| format!("reading {path}"))?;
            v["to"].as_u64()
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    let from = match done {
        Some(d) => d,
        None => {
            let family = crate::engine::family_of(cfg)?;
            let topics = cfg.kafka.topics.clone().unwrap_or_else(|| family.topics());
            let plan = ArchivePlan::list(root.clone(), &topics, 0, Vec::new())?;
            let Some(first) = plan
                .files
                .iter()
                .filter_map(|f| hour_of_path(&f.path))
                .min()
            else {
                return Ok(None);
            };
            (first.max(0) as Tick) / every * every
        }
    };
    if to <= from {
        return Ok(None);
    }
    let report = match batch(cfg, from, to, every, true, interrupt)? {
        Outcome::Done(r) => r,
        Outcome::NotYet(why) => anyhow::bail!("{why}"),
    };
    if !report.skipped.is_empty() {
        anyhow::bail!(
            "archive files could not be read: {}; the batch is tried again at the next pass",
            report.skipped.join("; ")
        );
    }
    let body = serde_json::json!({ "to": to, "written_ms": crate::clock::now_ms() });
    rt.block_on(root.store.put(&path, body.to_string().into_bytes().into()))
        .with_context(|| format!("writing {path}"))?;
    Ok(Some((from, to, report)))
}

/// One pass, logged; whether it failed.
pub fn logged_pass(cfg: &Config, every: Tick, interrupt: Option<Arc<AtomicBool>>) -> bool {
    match pass(cfg, every, interrupt) {
        Ok(Some((from, to, r))) => tracing::info!(
            from,
            to,
            rows = r.rows,
            records = r.records,
            seconds = r.seconds,
            "batch: features written as of each boundary"
        ),
        Ok(None) => {}
        Err(e) => {
            metrics::counter!(BATCH_FAILURES).increment(1);
            tracing::error!(error = %format!("{e:#}"), "batch failed; tried again later");
            return true;
        }
    }
    false
}

/// Runs a pass once a minute until `stop` (the run's last pass is its caller's: not
/// after a SIGTERM, whose stop has a deadline); after a failed pass it waits twice as
/// long, up to an hour (a corrupt file fails every pass until it is fixed). `drain` (a
/// SIGTERM) interrupts a pass.
pub fn spawn(
    cfg: Config,
    every: Tick,
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("batch-scheduler".into())
        .spawn(move || {
            let mut last = Instant::now();
            let mut wait = PASS_INTERVAL;
            while !stop.load(Ordering::Relaxed) && !drain.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= wait {
                    wait = match logged_pass(&cfg, every, Some(drain.clone())) {
                        true => (wait * 2).min(MAX_PASS_INTERVAL),
                        false => PASS_INTERVAL,
                    };
                    last = Instant::now();
                }
            }
        })
        .context("starting the batch scheduler")
}

const PASS_INTERVAL: Duration = Duration::from_secs(60);
const MAX_PASS_INTERVAL: Duration = Duration::from_secs(3600);
