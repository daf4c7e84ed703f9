//! Runs a family on timely workers: a source per worker, the family's dataflow, and sinks
//! whose durability holds back the frontier that offsets are committed behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use tidemark_dataflows::counters::Counters;
use tidemark_dataflows::dimension::TableSource;
use tidemark_dataflows::features::{ChangeBuffer, FeatureRow, TableSpec};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::state::{Restore, State};
use tidemark_dataflows::{family, Family, GenerateSpec, Produced, Tick};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::Stream;

use crate::checkpoint::{self, Checkpointer};
use crate::config::Config;
use crate::dlq::Dlq;
use crate::kafka::{self, Freshness, KafkaSource, Ledger};
use crate::store::dimension::PgTable;
use crate::store::memory::{MemoryStore, Shared as MemoryShared};
use crate::store::postgres::PostgresStore;
use crate::store::redis::RedisStore;
use crate::store::topic::TopicStore;
use crate::store::{spawn_writer, Msg, SinkStats, Store, Writer, WriterHandle};
use crate::telemetry::{self, Status};

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
}

pub type MakeFamily = dyn Fn() -> Box<dyn Family> + Send + Sync;

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
        }
    }

    fn family(&self) -> anyhow::Result<Box<dyn Family>> {
        match &self.family {
            Some(make) => Ok(make()),
            None => family_of(&self.config),
        }
    }
}

pub fn family_of(cfg: &Config) -> anyhow::Result<Box<dyn Family>> {
    family(&cfg.dataflow, cfg.dataflows.get(&cfg.dataflow).cloned()).map_err(|e| anyhow::anyhow!(e))
}

/// Runs until the source ends (`--exit-at-end`, or a finite generator) or `shared.stop`.
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
    if let Some(url) = &opts.config.postgres.url {
        let up = until_up(&shared, "postgres", || {
            let mut c = postgres::Client::connect(url, postgres::NoTls)
                .context("connecting to postgres (postgres.url)")?;
            crate::store::postgres::migrate(&mut c, &tables)
        })?;
        if up.is_none() {
            return Ok(None);
        }
    }
    if let Some(url) = &opts.config.redis.url {
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
    crate::store::owners::claim(&opts.config, &tables)?;
    let resume = match opts.source {
        SourceKind::Kafka => Resume::find(&opts.config, &tables, family.name())?,
        SourceKind::Generator { .. } => Resume::default(),
    };
    telemetry::prometheus();
    shared
        .status
        .sources
        .store(opts.config.workers, Ordering::Relaxed);
    let watching = Arc::new(AtomicBool::new(false));
    telemetry::watch(opts.config.clone(), shared.clone(), watching.clone());
    // the watcher stops when this run returns, however it returns
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _watching = StopOnDrop(watching);
    let opts = Arc::new(opts);
    let resume = Arc::new(resume);
    let (o, s, d) = (opts.clone(), shared.clone(), dlq.clone());
    let guards = timely::execute(opts.timely.clone(), move |worker| {
        run_worker(worker, &o, &s, &topics, &tables, d.clone(), &resume)
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
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// A store and the counters it reports to.
type OpenStore = (Box<dyn Store>, Arc<SinkStats>);

fn open_stores(
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

fn run_worker(
    worker: &mut timely::worker::Worker,
    opts: &RunOptions,
    shared: &Shared,
    topics: &[String],
    tables: &Arc<Vec<tidemark_dataflows::features::TableSpec>>,
    dlq: Option<Arc<Dlq>>,
    resume: &Resume,
) -> anyhow::Result<Option<Tick>> {
    let family = opts.family()?;
    let (index, peers) = (worker.index(), worker.peers());
    let durable: ProbeHandle<Tick> = ProbeHandle::new();
    let processed: ProbeHandle<Tick> = ProbeHandle::new();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let state = State::new(index, peers, resume.restore.clone());
    let mut checkpointer = None;
    let source: Box<dyn RecordSource> = match &opts.source {
        SourceKind::Kafka => {
            checkpointer = Some(Checkpointer::new(
                &opts.config,
                state.clone(),
                family.name(),
                ledger.clone(),
                dlq.as_ref().map(|d| d.sender.clone()),
                shared.status.clone(),
            )?);
            let start = kafka::SourceStart {
                worker: index,
                peers,
                exit_at_end: opts.exit_at_end,
                restored: resume.restore.as_ref().map(|_| &resume.positions),
                ledger: ledger.clone(),
                durable: durable.clone(),
                freshness: opts.measure_freshness.then(|| shared.freshness.clone()),
                backlog: Some(shared.backlog.clone()),
                status: shared.status.clone(),
            };
            Box::new(KafkaSource::new(&opts.config, topics, start)?)
        }
        SourceKind::Generator { spec, pace } => {
            shared.status.assigned.fetch_add(1, Ordering::Relaxed);
            Box::new(GeneratorSource::new(
                family.generate(spec),
                index,
                peers,
                *pace,
            ))
        }
    };
    let writer = Writer {
        job: opts.config.job.clone(),
        worker: index,
        peers,
        tables: tables.clone(),
    };
    let stores = open_stores(opts, &writer, shared)?;
    // progress alone is recorded at most once per checkpoint interval (and at each pause)
    let idle = Duration::from_millis(opts.config.checkpoint.interval_ms);
    let writers: Vec<WriterHandle> = stores
        .into_iter()
        .map(|(s, stats)| spawn_writer(s, stats, dlq.clone(), idle))
        .collect();
    let ingest = IngestOptions {
        max_future_skew_ms: opts.config.ingest.max_future_skew_ms,
        dedup_horizon_ms: opts.config.ingest.dedup_horizon_ms,
        max_partition_skew_ms: Some(opts.config.ingest.max_partition_skew_ms).filter(|&s| s > 0),
        max_message_bytes: opts.config.ingest.max_message_bytes,
        max_key_bytes: opts.config.ingest.max_key_bytes,
        max_items_per_event: opts.config.ingest.max_items_per_event,
        batch_max: opts.config.kafka.poll_batch,
        exit_at_end: opts.exit_at_end,
        poll_interval: Duration::from_millis(opts.config.ingest.poll_interval_ms),
        start_at: resume.start_at,
    };
    // worker 0 reads the dimension tables
    let quality = Quality::of(tables, shared.status.clone());
    let mut tables: Vec<Option<Box<dyn TableSource>>> = Vec::new();
    for spec in family.dimensions() {
        if index != 0 {
            tables.push(None);
            continue;
        }
        let Some(url) = &opts.config.postgres.url else {
            if let SourceKind::Generator { spec: traffic, .. } = &opts.source {
                // without Postgres the synthetic traffic's own rows stand in for the table
                let rows = family
                    .dimension_rows(traffic)
                    .into_iter()
                    .find(|(d, _)| d.table == spec.table)
                    .map(|(_, rows)| rows)
                    .unwrap_or_default();
                tables.push(Some(Box::new(crate::store::dimension::FixedTable(Some(
                    rows,
                )))));
                continue;
            }
            anyhow::bail!(
                "dataflow '{}' reads table {}: set postgres.url (TIDEMARK_PG)",
                family.name(),
                spec.table
            );
        };
        let poll = Duration::from_millis(opts.config.postgres.dimension_poll_ms);
        tables.push(Some(Box::new(PgTable::open(url, spec, poll)?)));
    }
    let dlq_topic = opts.config.kafka.dlq_topic.clone();
    let counters = shared.counters.clone();
    let dataflow = worker.next_dataflow_index();
    let restored = resume.restore.as_ref().map(|r| Restored {
        tick: r.tick,
        start_at: resume.start_at,
        roll_back: resume.roll_back_to().is_some(),
    });
    let final_tick = worker.dataflow::<Tick, _, _>(|scope| {
        let installed = family.install(scope, source, tables, ingest, counters, &state);
        let features = installed
            .features
            .inner
            .probe_with(&processed)
            .as_collection();
        let (paused, finished) = (state.clone(), installed.final_tick.clone());
        let persist_now = move || paused.paused_at().is_some() || finished.get().is_some();
        durable_sink(features, writers, restored, quality, persist_now).probe_with(&durable);
        crate::dlq::dead_letters(
            installed.invalid.probe_with(&processed),
            dlq,
            dlq_topic,
            shared.status.clone(),
        );
        installed.final_tick
    });
    if let Some(e) = state.error() {
        anyhow::bail!("{e}");
    }
    if let (0, Some(restore)) = (index, resume.roll_back_to()) {
        // the checkpoint is known to be valid (every state restored from it); nothing of
        // this run is written before worker 0's first step, so before this
        for (mut store, _) in open_stores(opts, &writer, shared)? {
            let started = Instant::now();
            let deleted = store.roll_back(restore.tick, resume.start_at)?;
            tracing::info!(
                sink = store.name(),
                deleted,
                checkpoint = restore.tick,
                ms = started.elapsed().as_millis() as u64,
                "deleted the entities written after the checkpoint"
            );
        }
    }
    let mut finished_at: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut reported = Instant::now();
    let mut reported_stop = Instant::now();
    loop {
        let stepped = Instant::now();
        worker.step_or_park(Some(Duration::from_millis(1)));
        if reported.elapsed() > Duration::from_millis(100) {
            reported = Instant::now();
            let first = |p: &ProbeHandle<Tick>| p.with_frontier(|f| f.first().copied());
            shared
                .status
                .worker(index, first(&processed), first(&durable));
        }
        if stepped.elapsed() > Duration::from_millis(200) {
            tracing::debug!(
                worker = index,
                ms = stepped.elapsed().as_millis() as u64,
                "slow step"
            );
        }
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(e) = fatal_sink_error(shared) {
            // timely steps a worker until its dataflows are gone: drop it, or never return
            worker.drop_dataflow(dataflow);
            anyhow::bail!(
                "{e}: retrying cannot fix this; nothing was committed past the last checkpoint, \
                 so once it is fixed a restart loses nothing"
            );
        }
        if let Some(t) = final_tick.get() {
            if finished_at.is_none() && !durable.less_equal(&t) {
                finished_at = Some(Instant::now());
            }
        }
        if durable.done() && finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        let Some(c) = checkpointer.as_mut() else {
            // linger, so peers hear our last progress
            if finished_at.is_some_and(|at| at.elapsed() > Duration::from_millis(300)) {
                break;
            }
            continue;
        };
        // at the end of the input, or asked to stop: a last checkpoint, then exit
        if !c.draining && (finished_at.is_some() || shared.drain.load(Ordering::Relaxed)) {
            c.draining = true;
            drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            tracing::info!(worker = index, "stopping: draining, then a last checkpoint");
        }
        c.step(&processed, &durable);
        if c.draining && reported_stop.elapsed() > Duration::from_millis(200) {
            reported_stop = Instant::now();
            let stage = format!(
                "{}; processed to {:?}, durable to {:?}",
                c.stage(),
                processed.with_frontier(|f| f.first().copied()),
                durable.with_frontier(|f| f.first().copied())
            );
            shared
                .status
                .stopping
                .lock()
                .expect("status")
                .insert(index, (kafka::now_ms(), stage));
        }
        if c.drained() {
            // linger, so peers hear our last progress
            let lingered = *finished_at.get_or_insert_with(Instant::now);
            if lingered.elapsed() > Duration::from_millis(300) {
                break;
            }
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            // timely steps a worker until its dataflows are gone: drop it, or never return
            worker.drop_dataflow(dataflow);
            let frontier = |p: &ProbeHandle<Tick>| p.with_frontier(|f| f.iter().next().copied());
            anyhow::bail!(
                "worker {index}: the last checkpoint was not saved within {} s: {}; \
                 a restart resumes from the previous checkpoint ({}; processed to {:?}, durable to {:?})",
                DRAIN_TIMEOUT.as_secs(),
                telemetry::stuck(shared),
                c.stage(),
                frontier(&processed),
                frontier(&durable)
            );
        }
    }
    worker.drop_dataflow(dataflow);
    Ok(final_tick.get())
}

/// The error a sink's writer stopped on, if one did (see [`crate::permanent`]).
fn fatal_sink_error(shared: &Shared) -> Option<String> {
    let sinks = shared.sinks.lock().expect("sinks");
    sinks
        .values()
        .find_map(|s| s.fatal.lock().expect("sink stats").clone())
}

/// A run resumed from the checkpoint at `tick`; its stream time starts at `start_at`,
/// past every tick the stores hold.
#[derive(Clone, Copy)]
struct Restored {
    tick: Tick,
    start_at: Tick,
    /// Whether the stores are rolled back to the checkpoint (see [`Resume::roll_back_to`]).
    roll_back: bool,
}

/// Hands each completed tick's changes to the writers and holds its output frontier at
/// the least tick not yet durable in every store: a probe on it tells when offsets may
/// be committed and when `--exit-at-end` may stop.
///
/// The restored checkpoint's rows (its tick's) are written over what a run wrote after it.
///
/// Progress goes to the stores with the next changes; `persist_now` says when it must be
/// recorded at once (a checkpoint's pause, the end of the input).
fn durable_sink<'s>(
    rows: VecCollection<'s, Tick, FeatureRow>,
    writers: Vec<WriterHandle>,
    restored: Option<Restored>,
    mut quality: Option<Quality>,
    persist_now: impl Fn() -> bool + 'static,
) -> Stream<'s, Tick, Vec<()>> {
    let scope = rows.inner.scope();
    rows.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "DurableSink",
            move |cap, info| {
                let activator = scope.worker().sync_activator_for(info.address.to_vec());
                for w in &writers {
                    *w.wake.lock().expect("wake slot") = Some(activator.clone());
                }
                let mut cap = Some(cap);
                let mut buffer = ChangeBuffer::default();
                let mut sent: Tick = 0;
                move |(input, frontier), _output| {
                    input.for_each(|_, updates| buffer.push(updates));
                    let upto = frontier.frontier().iter().next().copied();
                    for tick in buffer.complete(upto) {
                        if let Some(q) = quality.as_mut() {
                            q.observe(&tick);
                        }
                        let tick = Arc::new(tick);
                        for w in &writers {
                            w.send(match restored {
                                // the embedded store starts empty
                                Some(r) if r.tick == tick.tick && w.name != "memory" => {
                                    if !r.roll_back {
                                        continue; // the stores hold exactly these rows
                                    }
                                    Msg::Rewrite {
                                        rows: tick.clone(),
                                        since: r.tick,
                                        at: r.start_at,
                                    }
                                }
                                _ => Msg::Changes(tick.clone()),
                            });
                        }
                    }
                    let f = upto.unwrap_or(Tick::MAX);
                    if f > sent {
                        sent = f;
                        let persist = persist_now();
                        for w in &writers {
                            w.send(Msg::Progress { upto: f, persist });
                        }
                    }
                    let durable = writers.iter().map(|w| w.acked()).min().unwrap_or(f).min(f);
                    if durable == Tick::MAX {
                        cap = None;
                    } else if let Some(c) = cap.as_mut() {
                        if *c.time() < durable {
                            c.downgrade(&durable);
                        }
                    }
                }
            },
        )
}

/// Follows a family's `quality_hourly` rows into `/status` and the metrics.
struct Quality {
    table: u8,
    fields: Vec<&'static str>,
    status: Arc<Status>,
}

impl Quality {
    fn of(tables: &[TableSpec], status: Arc<Status>) -> Option<Quality> {
        let t = tables
            .iter()
            .position(|t| t.ns == telemetry::QUALITY_TABLE)?;
        let fields: Vec<&'static str> = tables[t].fields.iter().map(|f| f.name).collect();
        *status.quality_kinds.lock().expect("status") = fields.clone();
        Some(Quality {
            table: t as u8,
            fields,
            status,
        })
    }
    fn observe(&mut self, tick: &tidemark_dataflows::features::TickChanges) {
        let mut hours = self.status.quality.lock().expect("status");
        for c in tick.changes.iter().filter(|c| c.table == self.table) {
            let hour = c.key.join(":");
            match &c.after {
                None => {
                    hours.remove(&hour);
                }
                Some(values) => {
                    let counts = self
                        .fields
                        .iter()
                        .zip(values)
                        .map(|(f, v)| (*f, v.as_f64().unwrap_or(0.0) as i64))
                        .collect();
                    hours.insert(hour, counts);
                }
            }
        }
    }
}

/// The family's synthetic traffic as a source: worker `w` of `n` takes records `w, w+n, …`.
pub struct GeneratorSource {
    records: Box<dyn Iterator<Item = Produced> + Send>,
    worker: usize,
    peers: usize,
    next: u64,
    pace: Option<(Instant, u64)>,
    done: bool,
}

impl GeneratorSource {
    pub fn new(
        records: Box<dyn Iterator<Item = Produced> + Send>,
        worker: usize,
        peers: usize,
        pace: Option<u64>,
    ) -> Self {
        GeneratorSource {
            records,
            worker,
            peers,
            next: 0,
            pace: pace.map(|r| (Instant::now(), r.max(1))),
            done: false,
        }
    }
}

impl RecordSource for GeneratorSource {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        let mut n = 0;
        while n < max && !self.done {
            if let Some((start, rate)) = self.pace {
                if self.next as f64 / rate as f64 > start.elapsed().as_secs_f64() {
                    return Poll::Caught { idle: false };
                }
            }
            let Some(p) = self.records.next() else {
                self.done = true;
                break;
            };
            let i = self.next;
            self.next += 1;
            if i as usize % self.peers != self.worker {
                continue;
            }
            n += 1;
            let key = p.key.as_deref().map(str::as_bytes);
            visit(RecordRef {
                topic: &p.topic,
                partition: self.worker as i32,
                offset: i as i64,
                append_ms: kafka::now_ms() as i64,
                key,
                payload: &p.payload,
            });
        }
        if self.done {
            Poll::Finished
        } else if n == max {
            Poll::Busy
        } else {
            Poll::Caught { idle: false }
        }
    }
    fn now_ms(&self) -> u64 {
        kafka::now_ms()
    }
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
