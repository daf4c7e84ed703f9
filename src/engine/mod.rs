//! Runs a family on timely workers: a source per worker, the family's dataflow, and sinks
//! whose durability holds back the frontier that offsets are committed behind.

mod durable;
pub mod health;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use tidemark_dataflows::contract::counters::Counters;
use tidemark_dataflows::contract::state::Restore;
use tidemark_dataflows::contract::table::TableSpec;
use tidemark_dataflows::quality::Checked;
use tidemark_dataflows::{family, Family, GenerateSpec, Tick};

use crate::checkpoint::{self};
use crate::config::Config;
use crate::sink::dlq::Dlq;
use crate::sink::memory::{MemoryStore, Shared as MemoryShared};
use crate::sink::postgres::PostgresStore;
use crate::sink::redis::RedisStore;
use crate::sink::topic::TopicStore;
use crate::sink::{Store, Writer};
use crate::source::archive::ArchivePlan;
use crate::source::kafka::{self};
use crate::telemetry::Freshness;
use crate::telemetry::{self, SinkStats, Status};

/// Where records come from.
#[derive(Clone)]
pub enum SourceKind {
    Kafka,
    /// The family's generator, split over the workers; paced to `rate` records/s of wall
    /// time when given.
    Generator {
        spec: GenerateSpec,
        pace: Option<u64>,
    },
    /// The archive's records (`batch`, `training-set`), read to the plan's end.
    Archive(Arc<ArchivePlan>),
}

/// What a run shares with the process that started it.
#[derive(Default)]
pub struct Shared {
    pub counters: Arc<Counters>,
    /// Per sink kind, shared by all workers of the process.
    pub sinks: Mutex<std::collections::BTreeMap<&'static str, Arc<SinkStats>>>,
    pub freshness: Arc<Freshness>,
    /// Stop now, without a checkpoint (benchmarks).
    pub stop: AtomicBool,
    /// Stop gracefully (SIGTERM): stop reading, drain, checkpoint, commit, exit.
    pub drain: Arc<AtomicBool>,
    /// Records left before the end offsets (`--exit-at-end`), for progress reports.
    pub backlog: Arc<std::sync::atomic::AtomicI64>,
    /// What `/status`, `/readyz` and `/metrics` report.
    pub status: Arc<Status>,
}

pub struct RunOptions {
    pub config: Config,
    pub exit_at_end: bool,
    pub timely: timely::Config,
    pub source: SourceKind,
    /// Write to the embedded store (demo) instead of, or besides, Redis/Postgres.
    pub memory: Option<MemoryShared>,
    pub measure_freshness: bool,
    /// Runs this family instead of the registry's `config.dataflow` (tests, embedding).
    pub family: Option<Arc<MakeFamily>>,
    /// Writes to these stores instead of the configured ones (`batch`): the run then
    /// neither claims the feature views nor touches the online stores.
    pub stores: Option<Arc<MakeStores>>,
}

pub type MakeFamily = dyn Fn() -> Box<dyn Family> + Send + Sync;
/// A worker's own stores, made from its identity.
pub type MakeStores = dyn Fn(&Writer) -> anyhow::Result<Vec<Box<dyn Store>>> + Send + Sync;

impl RunOptions {
    /// Reads Kafka and writes the stores of `config`.
    pub fn kafka(timely: timely::Config, config: Config, exit_at_end: bool) -> Self {
        RunOptions {
            config,
            exit_at_end,
            timely,
            source: SourceKind::Kafka,
            memory: None,
            measure_freshness: false,
            family: None,
            stores: None,
        }
    }

    fn family(&self) -> anyhow::Result<Box<dyn Family>> {
        match &self.family {
            Some(make) => Ok(make()),
            None => family_of(&self.config),
        }
    }
}

/// The configured family, with its expectations checked (`[quality]`) unless none are on.
pub fn family_of(cfg: &Config) -> anyhow::Result<Box<dyn Family>> {
    let plain = plain_family_of(cfg)?;
    if !cfg.quality.on() {
        return Ok(plain);
    }
    let q = &cfg.quality;
    let checked = Checked::new(plain, cfg.kafka.topics.as_deref(), &q.expect, q.builtin);
    Ok(Box::new(checked.map_err(anyhow::Error::msg)?))
}

/// The configured family alone (`batch` recomputes features, not their quality).
pub fn plain_family_of(cfg: &Config) -> anyhow::Result<Box<dyn Family>> {
    family(&cfg.dataflow, cfg.dataflows.get(&cfg.dataflow).cloned()).map_err(|e| anyhow::anyhow!(e))
}

/// Runs until the source ends (`--exit-at-end`, or a finite generator) or `shared.stop`.
/// Long: start-up in its order (services, ownership, resume, telemetry, workers), each step a few lines.
pub fn run(opts: RunOptions, shared: Arc<Shared>) -> anyhow::Result<Option<Tick>> {
    let family = opts.family()?;
    let topics = opts
        .config
        .kafka
        .topics
        .clone()
        .unwrap_or_else(|| family.topics());
    let tables = Arc::new(family.tables());
    shared
        .status
        .unready_after_ms
        .store(opts.config.health.unready_after_ms, Ordering::Relaxed);
    // a service not reachable yet is waited for, with backoff, not ready meanwhile: a
    // stop (SIGTERM) ends the wait
    let kafka = matches!(opts.source, SourceKind::Kafka);
    let dlq = match kafka {
        true => match until_up(&shared, "kafka", || {
            kafka::reachable(&opts.config, &topics)?;
            Dlq::open(&opts.config)
        })? {
            Some(d) => Some(Arc::new(d)),
            None => return Ok(None),
        },
        false => None,
    };
    if let Some(d) = &dlq {
        let _ = shared.status.dlq.set(d.sender.deliveries.clone());
    }
    let online = opts.stores.is_none();
    if let Some(url) = opts.config.postgres.url.as_ref().filter(|_| online) {
        let up = until_up(&shared, "postgres", || {
            let mut c = postgres::Client::connect(url, postgres::NoTls)
                .context("connecting to postgres (postgres.url)")?;
            crate::sink::postgres::migrate(&mut c, &tables)?;
            crate::sink::postgres::quality_view(&mut c)
        })?;
        if up.is_none() {
            return Ok(None);
        }
    }
    if let Some(url) = opts.config.redis.url.as_ref().filter(|_| online) {
        let up = until_up(&shared, "redis", || {
            redis::Client::open(url.as_str())?
                .get_connection_with_timeout(Duration::from_secs(2))
                .context("connecting to redis (redis.url)")
        })?;
        if up.is_none() {
            return Ok(None);
        }
    }
    *shared.status.starting.lock().expect("status") = None;
    // one job per feature view and store: another job's entities are never overwritten
    // nor rolled back
    if online {
        crate::sink::owners::claim(&opts.config, &tables)?;
    }
    let resume = match opts.source {
        SourceKind::Kafka => Resume::find(&opts.config, &tables, family.name())?,
        SourceKind::Generator { .. } | SourceKind::Archive(_) => Resume::default(),
    };
    telemetry::prometheus();
    let expectations: Vec<String> = (family.expectations().into_iter())
        .map(|e| e.name)
        .collect();
    telemetry::zeros(&topics, &expectations);
    shared
        .status
        .sources
        .store(opts.config.workers, Ordering::Relaxed);
    let watching = Arc::new(AtomicBool::new(false));
    health::watch(opts.config.clone(), shared.clone(), watching.clone());
    // the watcher stops when this run returns, however it returns
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _watching = StopOnDrop(watching);
    // alerts go on to the end of the run, then have a last look
    let alerting = Arc::new(AtomicBool::new(false));
    let alerter = match online {
        true => crate::sink::webhook::start(
            &opts.config,
            shared.status.clone(),
            family.expectations(),
            alerting.clone(),
        ),
        false => None,
    };
    let _alerting = StopOnDrop(alerting.clone());
    let opts = Arc::new(opts);
    let resume = Arc::new(resume);
    let (o, s, d) = (opts.clone(), shared.clone(), dlq.clone());
    let guards = timely::execute(opts.timely.clone(), move |worker| {
        worker::run_worker(worker, &o, &s, &topics, &tables, d.clone(), &resume)
            .map_err(|e| format!("{e:#}"))
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    let mut final_tick = None;
    for r in guards.join() {
        let r = r.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
        final_tick = final_tick.max(r.map_err(|e| anyhow::anyhow!(e))?);
    }
    if let Some(d) = &dlq {
        d.sender.flush()?;
    }
    alerting.store(true, Ordering::Relaxed);
    if let Some(a) = alerter {
        let _ = a.join();
    }
    Ok(final_tick)
}

/// Runs `connect` until it succeeds, with backoff (0.5 s doubling to 30 s), while
/// `/readyz` says what start-up waits for; `None` when a stop was asked for meanwhile.
/// An error retrying cannot fix (a wrong password, a database that does not exist) ends
/// the start at once.
fn until_up<T>(
    shared: &Shared,
    what: &str,
    mut connect: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match connect() {
            Ok(t) => return Ok(Some(t)),
            Err(e) if crate::permanent::is_permanent(&e) => {
                return Err(e.context(format!(
                    "{what} refuses the start for a reason waiting cannot fix: correct the config and start again"
                )))
            }
            Err(e) => {
                let error = crate::redact::redact(&format!("{e:#}"));
                tracing::warn!(service = what, error = %error, retry_in_ms = backoff.as_millis() as u64, "not reachable at start-up: waiting for it (not ready meanwhile)");
                *shared.status.starting.lock().expect("status") =
                    Some(format!("waiting for {what}: {error}"));
            }
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if shared.drain.load(Ordering::Relaxed) || shared.stop.load(Ordering::Relaxed) {
                tracing::info!(service = what, "stopped while waiting for it at start-up");
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Where a run resumes: the newest complete checkpoint, and the first tick past
/// everything the stores hold.
#[derive(Default)]
pub struct Resume {
    pub restore: Option<Arc<Restore>>,
    pub positions: BTreeMap<(String, i32), i64>,
    /// Stream time starts here, so nothing replayed is written at a tick older than what
    /// a reader has seen (monotonic visibility).
    pub start_at: Tick,
}

impl Resume {
    /// The checkpoint the stores must be rolled back to: one after which something was
    /// written (the stores' progress is past its tick). After a graceful stop the last
    /// checkpoint is the last tick written, and the stores hold exactly its rows.
    fn roll_back_to(&self) -> Option<&Restore> {
        self.restore
            .as_deref()
            .filter(|r| self.start_at > r.tick + 1)
    }

    fn find(cfg: &Config, tables: &Arc<Vec<TableSpec>>, family: &str) -> anyhow::Result<Self> {
        let writer = Writer {
            job: cfg.job.clone(),
            worker: 0,
            peers: 1,
            tables: tables.clone(),
        };
        let mut written: Option<Tick> = None;
        if let Some(url) = &cfg.redis.url {
            written = written.max(RedisStore::open(url, writer.clone(), None)?.written()?);
        }
        if let Some(url) = &cfg.postgres.url {
            written = written.max(PostgresStore::open(url, writer)?.written()?);
        }
        let restore = checkpoint::load(cfg, family)?;
        let mut start_at = written.map_or(0, |t| t + 1);
        let mut positions = BTreeMap::new();
        if let Some(r) = &restore {
            start_at = start_at.max(r.tick + 1);
            for part in &r.parts {
                for (t, p, o) in &part.positions {
                    positions.insert((t.clone(), *p), *o);
                }
            }
            tracing::info!(
                tick = r.tick,
                workers = r.parts.len(),
                start_at,
                "resuming from checkpoint"
            );
        } else {
            tracing::info!(from = %cfg.kafka.from, start_at, "no checkpoint for this job and group: starting from kafka.from");
        }
        Ok(Resume {
            restore: restore.map(Arc::new),
            positions,
            start_at,
        })
    }
}

/// How long a graceful stop may take before the worker gives up on its last checkpoint.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// A store and the counters it reports to.
type OpenStore = (Box<dyn Store>, Arc<SinkStats>);

pub(super) fn open_stores(
    opts: &RunOptions,
    writer: &Writer,
    shared: &Shared,
) -> anyhow::Result<Vec<OpenStore>> {
    let stats = |name: &'static str| {
        shared
            .sinks
            .lock()
            .expect("sink stats")
            .entry(name)
            .or_default()
            .clone()
    };
    let mut stores: Vec<OpenStore> = Vec::new();
    if let Some(make) = &opts.stores {
        for s in make(writer)? {
            let name = s.name();
            stores.push((s, stats(name)));
        }
        return Ok(stores);
    }
    if let Some(state) = &opts.memory {
        stores.push((
            Box::new(MemoryStore {
                state: state.clone(),
                writer: writer.clone(),
            }),
            stats("memory"),
        ));
    }
    if let Some(url) = &opts.config.redis.url {
        stores.push((
            Box::new(RedisStore::open(
                url,
                writer.clone(),
                opts.config.redis.ttl_secs,
            )?),
            stats("redis"),
        ));
    }
    if let Some(url) = &opts.config.postgres.url {
        stores.push((
            Box::new(PostgresStore::open(url, writer.clone())?),
            stats("postgres"),
        ));
    }
    // `demo` runs without services: its embedded store keeps the topic tables' rows too
    if opts.memory.is_none() && writer.tables.iter().any(|t| t.sink.topic().is_some()) {
        let store = TopicStore::open(
            &opts.config.kafka.brokers,
            opts.config.kafka.message_max_bytes,
            writer.clone(),
        )?;
        stores.push((Box::new(store), stats("kafka")));
    }
    Ok(stores)
}

/// The timely communication config for `--workers/--processes/--process/--hostfile`.
pub fn timely_config(
    workers: usize,
    processes: usize,
    process: usize,
    hostfile: Option<&PathBuf>,
) -> anyhow::Result<timely::Config> {
    let communication = if processes > 1 {
        let addresses: Vec<String> = match hostfile {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("reading --hostfile {}", f.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            None => (0..processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect(),
        };
        if addresses.len() != processes {
            anyhow::bail!("--hostfile has {} addresses for --processes {processes}: give one host:port per process", addresses.len());
        }
        if process >= processes {
            anyhow::bail!("--process {process} is not below --processes {processes}");
        }
        timely::CommunicationConfig::Cluster {
            threads: workers,
            process,
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if workers > 1 {
        timely::CommunicationConfig::Process(workers)
    } else {
        timely::CommunicationConfig::Thread
    };
    // no idle merge effort: it would re-merge whole arrangements between small live ticks
    Ok(timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    })
}
