//! One timely worker's run: its source, stores and writers, the family's dataflow with the
//! durable sink and the DLQ at its end, the restart's rollback, then the loop that steps
//! the dataflow and its checkpoints until the input ends or a stop is asked for.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use tidemark_dataflows::contract::dimension::TableSource;
use tidemark_dataflows::contract::record::RecordSource;
use tidemark_dataflows::contract::state::State;
use tidemark_dataflows::contract::table::TableSpec;
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::{Family, Tick};
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};

use super::durable::{durable_sink, Quality, Restored};
use super::{health, open_stores, Resume, RunOptions, Shared, SourceKind, DRAIN_TIMEOUT};
use crate::checkpoint::Checkpointer;
use crate::clock::now_ms;
use crate::sink::dlq::Dlq;
use crate::sink::{spawn_writer, Writer, WriterHandle};
use crate::source::archive::ArchiveSource;
use crate::source::dimension::{FixedTable, PgTable};
use crate::source::generator::GeneratorSource;
use crate::source::kafka::{KafkaSource, Ledger, SourceStart};

/// What a worker's dataflow is watched through.
struct Probes {
    /// Every tick before its frontier has gone through the dataflow.
    processed: ProbeHandle<Tick>,
    /// Every tick before its frontier is durable in every store.
    durable: ProbeHandle<Tick>,
}

impl Probes {
    fn first(p: &ProbeHandle<Tick>) -> Option<Tick> {
        p.with_frontier(|f| f.first().copied())
    }
}

pub(super) fn run_worker(
    worker: &mut timely::worker::Worker,
    opts: &RunOptions,
    shared: &Shared,
    topics: &[String],
    tables: &Arc<Vec<TableSpec>>,
    dlq: Option<Arc<Dlq>>,
    resume: &Resume,
) -> anyhow::Result<Option<Tick>> {
    let family = opts.family()?;
    let (index, peers) = (worker.index(), worker.peers());
    let probes = Probes {
        processed: ProbeHandle::new(),
        durable: ProbeHandle::new(),
    };
    let state = State::new(index, peers, resume.restore.clone());
    let (source, checkpointer) = open_source(
        opts,
        shared,
        topics,
        &*family,
        &state,
        dlq.as_deref(),
        resume,
        &probes,
        index,
        peers,
    )?;
    let writer = Writer {
        job: opts.config.job.clone(),
        worker: index,
        peers,
        tables: tables.clone(),
    };
    // progress alone is recorded at most once per checkpoint interval (and at each pause)
    let idle = Duration::from_millis(opts.config.checkpoint.interval_ms);
    let writers: Vec<WriterHandle> = open_stores(opts, &writer, shared)?
        .into_iter()
        .map(|(s, stats)| spawn_writer(s, stats, dlq.clone(), idle))
        .collect();
    let quality = Quality::of(tables, shared.status.clone());
    let dimensions = dimension_tables(opts, &*family, index)?;
    let dlq_topic = opts.config.kafka.dlq_topic.clone();
    let counters = shared.counters.clone();
    let dataflow = worker.next_dataflow_index();
    let restored = resume.restore.as_ref().map(|r| Restored {
        tick: r.tick,
        start_at: resume.start_at,
        roll_back: resume.roll_back_to().is_some(),
    });
    let ingest = ingest_options(opts, resume);
    let final_tick = worker.dataflow::<Tick, _, _>(|scope| {
        let installed = family.install(scope, source, dimensions, ingest, counters, &state);
        let features = installed
            .features
            .inner
            .probe_with(&probes.processed)
            .as_collection();
        let (paused, finished) = (state.clone(), installed.final_tick.clone());
        let persist_now = move || paused.paused_at().is_some() || finished.get().is_some();
        durable_sink(features, writers, restored, quality, persist_now).probe_with(&probes.durable);
        crate::sink::dlq::dead_letters(
            installed.invalid.probe_with(&probes.processed),
            dlq,
            dlq_topic,
            shared.status.clone(),
        );
        installed.final_tick
    });
    if let Some(e) = state.error() {
        anyhow::bail!("{e}");
    }
    if index == 0 {
        roll_back(opts, &writer, shared, resume)?;
    }
    let outcome = drive(worker, shared, &probes, checkpointer, &final_tick, index);
    // where the worker ended, for what reads the status after it (the quality alerts'
    // last look)
    let (p, d) = (
        Probes::first(&probes.processed),
        Probes::first(&probes.durable),
    );
    shared.status.worker(index, p, d);
    // timely steps a worker until its dataflows are gone: drop it, or never return
    worker.drop_dataflow(dataflow);
    outcome.map(|()| final_tick.get())
}

/// The worker's record source, and with Kafka the checkpointer that commits its offsets.
#[allow(clippy::too_many_arguments)]
fn open_source(
    opts: &RunOptions,
    shared: &Shared,
    topics: &[String],
    family: &dyn Family,
    state: &State,
    dlq: Option<&Dlq>,
    resume: &Resume,
    probes: &Probes,
    index: usize,
    peers: usize,
) -> anyhow::Result<(Box<dyn RecordSource>, Option<Checkpointer>)> {
    match &opts.source {
        SourceKind::Kafka => {
            let ledger: Arc<Mutex<Ledger>> = Arc::default();
            let start = SourceStart {
                worker: index,
                peers,
                exit_at_end: opts.exit_at_end,
                restored: resume.restore.as_ref().map(|_| &resume.positions),
                ledger: ledger.clone(),
                durable: probes.durable.clone(),
                freshness: opts.measure_freshness.then(|| shared.freshness.clone()),
                backlog: Some(shared.backlog.clone()),
                status: shared.status.clone(),
            };
            let source = KafkaSource::new(&opts.config, topics, start)?;
            let checkpointer = Checkpointer::new(
                &opts.config,
                state.clone(),
                family.name(),
                ledger,
                dlq.map(|d| d.sender.clone()),
                source.archive_progress(),
                shared.status.clone(),
            )?;
            Ok((Box::new(source), Some(checkpointer)))
        }
        SourceKind::Generator { spec, pace } => {
            shared.status.assigned.fetch_add(1, Ordering::Relaxed);
            let mut source = GeneratorSource::new(family.generate(spec), index, peers, *pace);
            let cfg = &opts.config.archive;
            if cfg.enabled {
                // one partition per worker, read from offset 0: a run replaces the files of
                // the run before
                let topics = family.topics();
                let from = topics
                    .iter()
                    .map(|t| ((t.clone(), index as i32), 0))
                    .collect();
                let root = crate::archive::open(cfg)?;
                let archive = crate::archive::WorkerArchive::start(cfg, root, index, from, None)?;
                source = source.archived(archive, topics);
            }
            Ok((Box::new(source), None))
        }
        SourceKind::Archive(plan) => {
            shared.status.assigned.fetch_add(1, Ordering::Relaxed);
            let source = ArchiveSource::new(plan.clone(), index, peers)?;
            Ok((Box::new(source), None))
        }
    }
}

fn ingest_options(opts: &RunOptions, resume: &Resume) -> IngestOptions {
    let ingest = &opts.config.ingest;
    IngestOptions {
        max_future_skew_ms: ingest.max_future_skew_ms,
        dedup_horizon_ms: ingest.dedup_horizon_ms,
        max_partition_skew_ms: Some(ingest.max_partition_skew_ms).filter(|&s| s > 0),
        max_message_bytes: ingest.max_message_bytes,
        max_key_bytes: ingest.max_key_bytes,
        max_items_per_event: ingest.max_items_per_event,
        batch_max: opts.config.kafka.poll_batch,
        exit_at_end: opts.exit_at_end,
        poll_interval: Duration::from_millis(ingest.poll_interval_ms),
        start_at: resume.start_at,
        // set by `quality::Checked` when the family is checked
        quality: None,
    }
}

/// One source per dimension the family reads: worker 0 reads the tables, the others none.
fn dimension_tables(
    opts: &RunOptions,
    family: &dyn Family,
    index: usize,
) -> anyhow::Result<Vec<Option<Box<dyn TableSource>>>> {
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
                tables.push(Some(Box::new(FixedTable(Some(rows)))));
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
    Ok(tables)
}

/// A restart's first step, on worker 0: the entities written after the checkpoint go.
/// The checkpoint is known to be valid (every state restored from it), and nothing of
/// this run is written before worker 0's first step, so before this.
fn roll_back(
    opts: &RunOptions,
    writer: &Writer,
    shared: &Shared,
    resume: &Resume,
) -> anyhow::Result<()> {
    let Some(restore) = resume.roll_back_to() else {
        return Ok(());
    };
    for (mut store, _) in open_stores(opts, writer, shared)? {
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
    Ok(())
}

/// Steps the dataflow until the input ends (and, with Kafka, its last checkpoint is
/// saved) or a stop is asked for; an error when a store failed for good or the last
/// checkpoint overran its deadline.
/// Long: one loop whose checks run in this order at every step (stop, fatal store, end of input, checkpoint, drain deadline).
fn drive(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    probes: &Probes,
    mut checkpointer: Option<Checkpointer>,
    final_tick: &std::cell::Cell<Option<Tick>>,
    index: usize,
) -> anyhow::Result<()> {
    let (processed, durable) = (&probes.processed, &probes.durable);
    let mut finished_at: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut reported = Instant::now();
    let mut reported_stop = Instant::now();
    loop {
        let stepped = Instant::now();
        worker.step_or_park(Some(Duration::from_millis(1)));
        if reported.elapsed() > Duration::from_millis(100) {
            reported = Instant::now();
            let (p, d) = (Probes::first(processed), Probes::first(durable));
            shared.status.worker(index, p, d);
        }
        if stepped.elapsed() > Duration::from_millis(200) {
            let ms = stepped.elapsed().as_millis() as u64;
            tracing::debug!(worker = index, ms, "slow step");
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(e) = fatal_sink_error(shared) {
            anyhow::bail!(
                "{e}: retrying cannot fix this; nothing was committed past the last checkpoint, \
                 so once it is fixed a restart loses nothing"
            );
        }
        let ended = final_tick.get().is_some_and(|t| !durable.less_equal(&t));
        if finished_at.is_none() && (ended || durable.done()) {
            finished_at = Some(Instant::now());
        }
        let Some(c) = checkpointer.as_mut() else {
            // linger, so peers hear our last progress
            if finished_at.is_some_and(|at| at.elapsed() > Duration::from_millis(300)) {
                return Ok(());
            }
            continue;
        };
        // at the end of the input, or asked to stop: a last checkpoint, then exit
        if !c.draining && (finished_at.is_some() || shared.drain.load(Ordering::Relaxed)) {
            c.draining = true;
            drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            tracing::info!(worker = index, "stopping: draining, then a last checkpoint");
        }
        c.step(processed, durable);
        if c.draining && reported_stop.elapsed() > Duration::from_millis(200) {
            reported_stop = Instant::now();
            let stage = format!(
                "{}; processed to {:?}, durable to {:?}",
                c.stage(),
                Probes::first(processed),
                Probes::first(durable)
            );
            let mut stopping = shared.status.stopping.lock().expect("status");
            stopping.insert(index, (now_ms(), stage));
        }
        if c.drained() {
            // linger, so peers hear our last progress
            let lingered = *finished_at.get_or_insert_with(Instant::now);
            if lingered.elapsed() > Duration::from_millis(300) {
                return Ok(());
            }
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            anyhow::bail!(
                "worker {index}: the last checkpoint was not saved within {} s: {}; \
                 a restart resumes from the previous checkpoint ({}; processed to {:?}, durable to {:?})",
                DRAIN_TIMEOUT.as_secs(),
                health::stuck(shared),
                c.stage(),
                Probes::first(processed),
                Probes::first(durable)
            );
        }
    }
}

/// The error a sink's writer stopped on, if one did (see [`crate::permanent`]).
fn fatal_sink_error(shared: &Shared) -> Option<String> {
    let sinks = shared.sinks.lock().expect("sinks");
    sinks
        .values()
        .find_map(|s| s.fatal.lock().expect("sink stats").clone())
}
