//! `batch` and `training-set`: the family's own decode and dataflow over the archive, its
//! features taken as of given instants.
//!
//! The as-of rule: the features **as of `B`** are the dataflow's state once every record
//! whose partition's stream time (the largest event time in its partition up to and
//! including it) is at most `B` has gone in, and nothing after; with every window and timer
//! due by `B`. That is what the online store shows at `B` when its sources are caught up,
//! fixed by the events alone (not by how Kafka batched them, nor the worker count). See
//! `source/archive.rs` for how the archive is read in that order.

pub mod complete;
pub mod output;
pub mod schedule;
pub mod store;
pub mod training;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tidemark_dataflows::Tick;

use crate::config::Config;
use crate::engine::{self, timely_config, MakeFamily, MakeStores, RunOptions, Shared, SourceKind};
use crate::sink::Store;
use crate::source::archive::ArchivePlan;
use store::{BatchStore, OnBoundary};
use tidemark_dataflows::Family;

/// An instant on the command line: epoch ms or an RFC 3339 time.
pub fn parse_instant(s: &str) -> anyhow::Result<Tick> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("{s:?} is neither epoch ms nor an RFC 3339 time (e.g. 2026-01-01T00:00:00Z)")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as Tick)
}

/// At most this many boundaries in one batch.
pub const MAX_BOUNDARIES: u64 = 1_000_000;

/// The boundaries of `(from, to]`: the multiples of `every` (epoch-aligned) in it.
pub fn boundaries(from: Tick, to: Tick, every: Tick) -> anyhow::Result<Vec<Tick>> {
    if every == 0 {
        bail!("--every must be at least 1ms");
    }
    if from >= to {
        bail!("--from ({from}) must be before --to ({to})");
    }
    let first = (from / every)
        .checked_add(1)
        .and_then(|k| k.checked_mul(every))
        .unwrap_or(Tick::MAX);
    let count = if first > to {
        0
    } else {
        (to - first) / every + 1
    };
    if count > MAX_BOUNDARIES {
        bail!("(--from, --to] holds {count} multiples of --every: at most {MAX_BOUNDARIES} (each writes every entity); lengthen --every or split the range");
    }
    let out: Vec<Tick> = (0..count).map(|k| first + k * every).collect();
    if out.is_empty() {
        bail!("no multiple of --every ({every} ms) lies in (--from, --to]: widen the range or shorten --every");
    }
    Ok(out)
}

/// The configured family with its batch-only windows (see `Dataflow::with_batch_windows`),
/// without its expectations: quality is reported once, by `run`.
pub fn batch_family(cfg: &Config) -> anyhow::Result<Box<dyn Family>> {
    let mut family = engine::plain_family_of(cfg)?;
    family.with_batch_windows();
    Ok(family)
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    /// Records found in two files, read once.
    pub doubled: u64,
    /// Files skipped, each error naming its file.
    pub skipped: Vec<String>,
    pub rows: u64,
    pub seconds: f64,
}

/// How long a replay waits for its stores once the dataflow is done (a store retrying
/// meanwhile): past it, the batch fails rather than hang a cron job.
const STORES_DEADLINE: Duration = Duration::from_secs(600);

/// Runs the configured family over the archive up to `plan.to`; each worker's store hands
/// its entities to `on_boundary(worker)` at each of the plan's boundaries. `interrupt`
/// stops it (the online run's SIGTERM, for the scheduler's replay).
pub fn replay(
    cfg: &Config,
    plan: ArchivePlan,
    on_boundary: Arc<dyn Fn(usize) -> anyhow::Result<OnBoundary> + Send + Sync>,
    interrupt: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let plan = Arc::new(plan);
    let boundaries = Arc::new(plan.boundaries.clone());
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    let make: Arc<MakeStores> = Arc::new(move |w| {
        let on = on_boundary(w.worker)?;
        let store = BatchStore::new(w.tables.clone(), boundaries.clone(), on, f.clone());
        Ok(vec![Box::new(store) as Box<dyn Store>])
    });
    let config = cfg.clone();
    let workers = config.workers;
    batch_family(&config)?;
    let c = config.clone();
    let family: Arc<MakeFamily> =
        Arc::new(move || batch_family(&c).expect("the family was made once already"));
    let opts = RunOptions {
        source: SourceKind::Archive(plan.clone()),
        stores: Some(make),
        family: Some(family),
        ..RunOptions::kafka(timely_config(workers, 1, 0, None)?, config, true)
    };
    let shared = Arc::new(Shared::default());
    let watcher = interrupt.map(|stop| {
        let shared = shared.clone();
        std::thread::spawn(move || {
            while !shared.stop.load(Relaxed) {
                if stop.load(Relaxed) {
                    shared.stop.store(true, Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let ran = engine::run(opts, shared.clone());
    let interrupted = shared.stop.swap(true, Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    ran?;
    if interrupted {
        bail!("the batch was interrupted");
    }
    // every worker's store hands on its last boundary after the run is done with it
    let deadline = Instant::now() + STORES_DEADLINE;
    while finished.load(Relaxed) < workers {
        let errors: Vec<String> = shared
            .sinks
            .lock()
            .expect("sinks")
            .values()
            .filter_map(|s| s.last_error.lock().expect("sink stats").clone())
            .map(|(_, e)| e)
            .collect();
        if Instant::now() > deadline {
            bail!(
                "the batch's rows were not all written within {} s: {}",
                STORES_DEADLINE.as_secs(),
                errors.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let skipped = plan.skipped.lock().expect("skipped").clone();
    Ok(Report {
        records: plan.read.load(Relaxed),
        doubled: plan.doubled.load(Relaxed),
        skipped,
        rows: 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The archive's files of the family's topics, read up to `to`.
pub fn plan(cfg: &Config, to: Tick, boundaries: Vec<Tick>) -> anyhow::Result<ArchivePlan> {
    if cfg.archive.root.is_empty() {
        bail!(
            "archive.root is not set: set it (TIDEMARK_ARCHIVE__ROOT) to the archive `run` writes"
        );
    }
    let family = engine::family_of(cfg)?;
    let topics = cfg.kafka.topics.clone().unwrap_or_else(|| family.topics());
    let root = crate::archive::open(&cfg.archive)?;
    let plan = ArchivePlan::list(root, &topics, to, boundaries)?;
    if plan.files.is_empty() {
        bail!(
            "archive.root = {:?} holds no file of the topics {topics:?}",
            cfg.archive.root
        );
    }
    Ok(plan)
}

/// How `batch` ended, for cron and Airflow: 0 done, 1 failed, 2 the archive does not
/// hold the range yet.
pub enum Outcome {
    Done(Report),
    NotYet(String),
}

/// `tidemark batch`: the features as of each boundary of `(from, to]` to `batch_{ns}` and
/// `features/{ns}/as_of=…/`.
pub fn batch(
    cfg: &Config,
    from: Tick,
    to: Tick,
    every: Tick,
    assume_complete: bool,
    interrupt: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Outcome> {
    let bounds = boundaries(from, to, every)?;
    if !assume_complete {
        if let Err(why) = complete::covers(cfg, to)? {
            return Ok(Outcome::NotYet(why));
        }
    }
    let plan = plan(cfg, to, bounds.clone())?;
    let family = batch_family(cfg)?;
    let tables = Arc::new(family.tables());
    let pg = cfg.postgres.url.clone();
    output::clear(pg.as_deref(), &plan.root, &tables, &bounds)?;
    let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (root, r) = (plan.root.clone(), rows.clone());
    let on_boundary = Arc::new(move |worker: usize| -> anyhow::Result<OnBoundary> {
        let mut out =
            output::WorkerOutput::new(pg.clone(), root.clone(), tables.clone(), worker, r.clone())?;
        Ok(
            Box::new(move |b: Tick, entities: &store::Entities| out.write(b, entities))
                as OnBoundary,
        )
    });
    let mut report = replay(cfg, plan, on_boundary, interrupt)?;
    report.rows = rows.load(Relaxed);
    Ok(Outcome::Done(report))
}
