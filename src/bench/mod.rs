//! `tidemark bench`: throughput of the dataflow alone and of decoding.

pub mod ads;
pub mod archive;
pub mod batch;
pub mod commerce;
pub mod quality;
pub mod reading;
pub mod search;
pub mod serve;
pub mod state;
pub mod watch;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use differential_dataflow::input::{Input, InputSession};
use tidemark_dataflows::contract::dimension::DimRow;
use tidemark_dataflows::contract::event::{Rejection, Timed};
use tidemark_dataflows::{Dataflow, GenerateSpec, Tick};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::clock::now_ms;
use crate::config::Config;
use crate::engine::{timely_config, RunOptions, Shared};
use crate::sink::producer::Sender;

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure: a family's throughput, freshness and memory (search, reading, ads,
    /// commerce, watch), the archive's writes (archive), batch recomputation (batch),
    /// checkpoints (state) or the read API over Redis (serve)
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(BENCHES.iter().map(|(n, _)| *n)))]
    pub dataflow: String,
    /// `bench reading`: open sessions built for the memory figure (`bench commerce`:
    /// active shoppers).
    #[arg(long, default_value_t = 200_000)]
    pub sessions: u64,
    /// `bench watch`: viewers built for the memory figure (210 co-visited pairs each).
    #[arg(long, default_value_t = 5_000)]
    pub viewers: u64,
    /// `bench ads`: open clicks built for the memory figure.
    #[arg(long, default_value_t = 2_000_000)]
    pub clicks: u64,
    /// `bench serve`: entities written to Redis and read at random.
    #[arg(long, default_value_t = 100_000)]
    pub entities: u64,
    /// `bench serve`: seconds per load shape.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// `bench state`: live keys to build.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Event time the generated traffic covers, one dataflow run per span, side by side:
    /// the short one measures insertion, a long one (≥ 35 d) the steady state, where every
    /// contribution also leaves its 7 d and 30 d windows within the run.
    #[arg(long, value_delimiter = ',', default_value = "50s,40d", value_parser = humantime::parse_duration)]
    pub span: Vec<Duration>,
    /// Events per batch (one tick each).
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Worker counts to run the dataflow with.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Also measure Kafka → Redis end to end (brokers and Redis from TIDEMARK_KAFKA/TIDEMARK_REDIS).
    #[arg(long)]
    pub kafka: bool,
    /// Events produced for the end-to-end throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    pub e2e_events: u64,
    /// Events/s for the freshness run (default: half the measured end-to-end throughput).
    #[arg(long)]
    pub freshness_rate: Option<u64>,
    #[arg(long, default_value_t = 20)]
    pub freshness_seconds: u64,
    /// Workers of the end-to-end runs.
    #[arg(long, default_value_t = 2)]
    pub e2e_workers: usize,
    /// `bench search`/`bench reading`: only the cost of the built-in data quality
    /// expectations — an in-process replay of `--e2e-events` of generated traffic over the
    /// longest `--span` (a Kafka backlog with `--kafka`), without and with them, `--repeat`
    /// times.
    #[arg(long)]
    pub quality_cost: bool,
    /// Replays per setting of `--quality-cost` (the medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Resident memory once the allocator has returned what it keeps for reuse: the memory
/// figures count what the dataflow holds, not freed pages mimalloc has not purged yet
/// (e.g. after an arrangement's merge). Call it on the thread that allocated.
pub fn held_bytes() -> u64 {
    // SAFETY: `mi_collect` only frees and purges the allocator's own unused memory
    unsafe { libmimalloc_sys::mi_collect(true) };
    crate::telemetry::resident_bytes().unwrap_or(0)
}

/// `family`'s dataflow alone in `worker`, with the dimension rows in place (worker 0's)
/// and no rejections; its output is probed by `probe`. Returns the events' input.
fn alone<D: Dataflow>(
    worker: &mut timely::worker::Worker,
    family: &D,
    dimensions: &[Vec<DimRow>],
    probe: &ProbeHandle<Tick>,
) -> InputSession<Tick, Timed<D::Event>, isize> {
    let (index, peers) = (worker.index(), worker.peers());
    let state = tidemark_dataflows::contract::state::State::none(index, peers);
    let (input, mut tables) = worker.dataflow::<Tick, _, _>(|scope| {
        let (input, events) = scope.new_collection::<Timed<D::Event>, isize>();
        let (tables, dims): (Vec<_>, Vec<_>) = dimensions
            .iter()
            .map(|_| scope.new_collection::<DimRow, isize>())
            .unzip();
        // no rejections: the input handle goes at once, leaving the collection empty
        let (_, rejected) = scope.new_collection::<Rejection, isize>();
        family
            .build(events, dims, rejected, &state)
            .probe_with(probe);
        (input, tables)
    });
    for (table, rows) in tables.iter_mut().zip(dimensions) {
        if index == 0 {
            rows.iter().for_each(|r| table.insert(r.clone()));
        }
    }
    // the tables stay as they are: close them
    tables.clear();
    input
}

/// What [`held_growth`] measured.
pub struct Growth {
    /// RSS growth (after `mi_collect`) over all items.
    pub total: u64,
    /// The items of the second half, and the growth they alone caused.
    pub second_half: (u64, u64),
    pub secs: f64,
}

/// Resident memory one worker holds for `n` items: the events `events(i, tick)` of each
/// item go through `family`'s dataflow in chunks of 10,000 items, with the dimension rows
/// in place; chunk by chunk, time moves to `next_tick(last item, tick)`. The dataflow is
/// dropped without running anything out.
pub fn held_growth<D, E, T>(
    family: D,
    dimensions: Vec<Vec<DimRow>>,
    start: Tick,
    n: u64,
    events: E,
    next_tick: T,
) -> anyhow::Result<Growth>
where
    D: Dataflow + Clone,
    E: Fn(u64, Tick) -> Vec<Timed<D::Event>> + Send + Sync + 'static,
    T: Fn(u64, Tick) -> Tick + Send + Sync + 'static,
{
    let before = held_bytes();
    let started = Instant::now();
    let guards = timely::execute(timely_config(1, 1, 0, None)?, move |worker| {
        let probe = ProbeHandle::new();
        let dataflow = worker.next_dataflow_index();
        let mut input = alone(worker, &family, &dimensions, &probe);
        let (mut tick, mut half) = (start, None);
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            if half.is_none() && chunk[0] >= n / 2 {
                half = Some((chunk[0], held_bytes()));
            }
            input.advance_to(tick);
            for &i in chunk {
                events(i, tick).into_iter().for_each(|e| input.insert(e));
            }
            input.flush();
            worker.step_while(|| probe.less_than(&tick));
            tick = next_tick(chunk[chunk.len() - 1], tick).max(tick + 1);
        }
        input.advance_to(tick);
        input.flush();
        worker.step_while(|| probe.less_than(&tick));
        let after = held_bytes();
        let (at_half, rss_half) = half.unwrap_or((0, before));
        worker.drop_dataflow(dataflow);
        Growth {
            total: after.saturating_sub(before),
            second_half: (n - at_half, after.saturating_sub(rss_half)),
            secs: started.elapsed().as_secs_f64(),
        }
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut grown = guards.join();
    grown
        .pop()
        .expect("one worker")
        .map_err(|e| anyhow::anyhow!(e))
}

/// `events` of `family`'s synthetic traffic over `span` of event time, without copies or
/// disorder, decoded (each record with its own topic).
pub fn pre_decoded<D: Dataflow>(
    family: &D,
    events: u64,
    span: Duration,
) -> (GenerateSpec, Arc<Vec<Timed<D::Event>>>) {
    eprintln!(
        "generating {events} {} events over {} …",
        D::NAME,
        span_label(span)
    );
    let spec = GenerateSpec {
        events,
        span_ms: Some(span.as_millis() as u64),
        duplicate_share: 0.0,
        disorder_share: 0.0,
        ..Default::default()
    };
    let decoded = family
        .generate(&spec)
        .filter_map(|p| {
            let mut r = record(&p.payload);
            r.topic = &p.topic;
            family.decode(&r).ok()
        })
        .collect();
    (spec, Arc::new(decoded))
}

pub fn record(payload: &[u8]) -> tidemark_dataflows::contract::record::RecordRef<'_> {
    tidemark_dataflows::contract::record::RecordRef {
        topic: "b",
        partition: 0,
        offset: 0,
        append_ms: 0,
        key: None,
        payload,
        read_ms: None,
        headers: None,
        tombstone: false,
    }
}

/// Events/s through a family's dataflow alone, on pre-decoded events, with its dimension
/// tables' rows in place from the start.
pub fn dataflow_throughput<D>(
    family: D,
    events: &Arc<Vec<Timed<D::Event>>>,
    dimensions: Arc<Vec<Vec<DimRow>>>,
    workers: usize,
    batch: usize,
) -> anyhow::Result<f64>
where
    D: Dataflow + Clone,
    D::Event: Sync,
{
    let events = events.clone();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let last = events.iter().map(|e| e.ts).max().unwrap_or(0) + events.len() as u64;
    let start = Instant::now();
    let guards = timely::execute(timely_config(workers, 1, 0, None)?, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let dataflow = worker.next_dataflow_index();
        let mut input = alone(worker, &family, &dimensions, &probe);
        let mine: Vec<&Timed<D::Event>> = events.iter().skip(index).step_by(peers).collect();
        let mut tick = 0;
        for chunk in mine.chunks(batch / peers.max(1)) {
            tick = chunk
                .iter()
                .map(|e| e.ts)
                .max()
                .unwrap_or(tick)
                .max(tick + 1);
            input.advance_to(tick);
            for e in chunk {
                input.insert((*e).clone());
            }
            input.flush();
            worker.step_while(|| probe.less_than(&tick.saturating_sub(5_000)));
        }
        // every worker ends at the same tick, past every worker's events
        let last = last.max(tick);
        input.advance_to(last + 1);
        input.flush();
        worker.step_while(|| probe.less_equal(&last));
        let secs = start.elapsed().as_secs_f64();
        // the windows still open stay open: closing the input would run out every pending
        // expiry, work a stream that goes on never does. Every worker drops the dataflow
        // once all are done with it.
        done.fetch_add(1, Ordering::SeqCst);
        while done.load(Ordering::SeqCst) < peers {
            worker.step();
        }
        worker.drop_dataflow(dataflow);
        secs
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    let secs = guards
        .join()
        .into_iter()
        .map(|r| r.map_err(|e| anyhow::anyhow!(e)));
    secs.collect::<anyhow::Result<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::max)
        .ok_or_else(|| anyhow::anyhow!("no worker ran"))
}

/// Runs the dataflow alone on `events` (covering `span` of event time) with each worker
/// count and prints events/s in total and per worker; returns the per-worker figure of the
/// first worker count.
pub fn report_throughput<D>(
    family: D,
    events: &Arc<Vec<Timed<D::Event>>>,
    span: Duration,
    dimensions: Arc<Vec<Vec<DimRow>>>,
    workers: &[usize],
    batch: usize,
) -> anyhow::Result<f64>
where
    D: Dataflow + Clone,
    D::Event: Sync,
{
    let mut one = None;
    for w in workers {
        let secs = dataflow_throughput(family.clone(), events, dimensions.clone(), *w, batch)?;
        let total = events.len() as f64 / secs;
        let scale = one
            .map(|o: f64| format!(", {:.2}x of 1 worker", total / o))
            .unwrap_or_default();
        one.get_or_insert(total);
        println!(
            "dataflow, span {}, {w} worker(s): {total:.0} events/s total, {:.0} per worker{scale} ({} events, batch {batch})",
            span_label(span),
            total / *w as f64,
            events.len(),
        );
    }
    Ok(one.unwrap_or_default() / workers.first().copied().unwrap_or(1) as f64)
}

/// A span as `--span` takes it, in its largest whole unit (`40d`, `5h`, `50s`).
pub fn span_label(span: Duration) -> String {
    let s = span.as_secs();
    match s {
        _ if s >= 86_400 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s >= 3_600 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{}s", span.as_secs_f64()),
    }
}

/// [`report_throughput`] for each of `a.span`, on `a.events` pre-decoded events of each,
/// then the longest span's per-worker figure as a share of the shortest's.
pub fn report_spans<D>(
    family: D,
    a: &BenchArgs,
    dimensions: impl Fn(&GenerateSpec) -> Vec<Vec<DimRow>>,
) -> anyhow::Result<()>
where
    D: Dataflow + Clone,
    D::Event: Sync,
{
    let mut spans = a.span.clone();
    spans.sort();
    let mut figures = Vec::new();
    for span in &spans {
        let (spec, events) = pre_decoded(&family, a.events, *span);
        let dims = Arc::new(dimensions(&spec));
        figures.push(report_throughput(
            family.clone(),
            &events,
            *span,
            dims,
            &a.workers,
            a.batch,
        )?);
    }
    if let (Some(short), Some(long)) = (figures.first(), figures.last()) {
        if figures.len() > 1 {
            println!(
                "long span / short span, per worker: {:.0} %",
                100.0 * long / short
            );
        }
    }
    Ok(())
}

/// Every benchmark, by the name `tidemark bench NAME` takes: adding one is one line here.
type Bench = fn(&BenchArgs) -> anyhow::Result<()>;
const BENCHES: &[(&str, Bench)] = &[
    ("search", search::run),
    ("reading", reading::run),
    ("ads", ads::run),
    ("commerce", commerce::run),
    ("watch", watch::run),
    ("archive", archive::run),
    ("batch", batch::run),
    ("state", |a| state::run(a.keys, a.events)),
    ("serve", |a| serve::run(a.entities, a.seconds)),
];

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    match BENCHES.iter().find(|(name, _)| *name == a.dataflow) {
        Some((_, run)) => run(&a),
        None => {
            let names: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
            anyhow::bail!("bench '{}': use {}", a.dataflow, names.join(", "))
        }
    }
}

/// The config of a live freshness run of `dataflow` (with its `[dataflows.{dataflow}]`
/// `section`) reading `inputs`: Postgres the only store besides topics (Redis off: the
/// figure ends at the outputs' acks and the Postgres commit), its dimension tables filled
/// for `spec`, and `topics` created with their partitions.
pub fn live_config(
    dataflow: &str,
    stamp: u64,
    workers: usize,
    inputs: &[&str],
    section: serde_json::Value,
    spec: &GenerateSpec,
    topics: &[(&str, i32)],
) -> anyhow::Result<Config> {
    let flags = serde_json::json!({"dataflow": dataflow, "job": format!("bench-{dataflow}-{stamp}"),
        "workers": workers, "kafka": {"topics": inputs, "group_id": inputs[0]},
        "dataflows": {dataflow: section}});
    let mut cfg = Config::load(None, flags)?;
    cfg.checkpoint.dir = std::env::temp_dir().join("tidemark-bench-state");
    cfg.redis.url = None;
    let Some(pg) = cfg.postgres.url.clone() else {
        anyhow::bail!("bench {dataflow} --kafka needs TIDEMARK_PG (scripts/services.sh env)");
    };
    let family = crate::engine::family_of(&cfg)?;
    for (table, rows) in family.dimension_rows(spec) {
        crate::source::dimension::fill(&pg, &table, &rows)?;
    }
    for (topic, partitions) in topics {
        create_topic(&cfg.kafka.brokers, topic, *partitions)?;
    }
    Ok(cfg)
}

pub fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for r in rt.block_on(admin.create_topics(
        [&NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Produces `family`'s generated traffic of `spec` to `topic`, as fast as the broker takes
/// it (a backlog for an `--exit-at-end` replay).
pub fn produce_generated(
    brokers: &str,
    family: &dyn tidemark_dataflows::Family,
    spec: &GenerateSpec,
    topic: &str,
) -> anyhow::Result<()> {
    let sender = Sender::new(brokers)?;
    for p in family.generate(spec) {
        sender.send(topic, p.key.as_deref().map(str::as_bytes), &p.payload, None)?;
    }
    sender.flush()
}

/// Runs the engine of `cfg` live on `topic` while producing its family's traffic at `rate`
/// events/s for `seconds`; returns the freshness samples (Kafka append → tick durable in
/// every sink of `cfg`).
/// Produces `rate` generated events per second for `seconds` to the engine's input topics
/// (`cfg.kafka.topics`, in the dataflow's topic order) and returns the freshness histogram.
pub fn freshness(
    cfg: Config,
    rate: u64,
    seconds: u64,
    seed: u64,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let family = crate::engine::family_of(&cfg)?;
    let own = family.topics();
    let given = cfg.kafka.topics.clone().unwrap_or_else(|| own.clone());
    let route = move |t: &str| -> String {
        let i = own.iter().position(|o| o == t).unwrap_or(0);
        given.get(i).unwrap_or(&given[0]).clone()
    };
    let topic = given_first(&cfg);
    let sender = Sender::new(&cfg.kafka.brokers)?;
    let shared = Arc::new(Shared::default());
    let opts = RunOptions {
        measure_freshness: true,
        ..RunOptions::kafka(timely_config(cfg.workers, 1, 0, None)?, cfg, false)
    };
    let s = shared.clone();
    let live = opts.config.clone();
    let engine = std::thread::spawn(move || crate::engine::run(opts, s));
    std::thread::sleep(Duration::from_secs(2));
    let produced = produce_paced(&*family, &sender, &route, &topic, rate, seconds, seed);
    shared.stop.store(true, Ordering::Relaxed);
    let ran = engine
        .join()
        .map_err(|_| anyhow::anyhow!("engine panicked"));
    // the live job hands its views back, so the next bench run finds them free (also
    // when producing or the run failed; the run's own error is the one reported)
    let released = if live.redis.url.is_some() || live.postgres.url.is_some() {
        crate::sink::owners::release(&live).map(drop)
    } else {
        Ok(())
    };
    ran??;
    produced?;
    released?;
    let h = shared.freshness.histogram.lock().expect("lock").take();
    h.ok_or_else(|| anyhow::anyhow!("freshness: no samples"))
}

/// Produces `rate` generated events per second for `seconds` through `route`, then waits
/// two seconds for the engine to take the last ones.
fn produce_paced(
    family: &dyn tidemark_dataflows::Family,
    sender: &Sender,
    route: &dyn Fn(&str) -> String,
    topic: &str,
    rate: u64,
    seconds: u64,
    seed: u64,
) -> anyhow::Result<()> {
    eprintln!("producing {rate} events/s for {seconds} s to {topic} …");
    let spec = GenerateSpec {
        events: rate * seconds,
        rate,
        start_ms: now_ms(),
        seed,
        ..Default::default()
    };
    let begin = Instant::now();
    for (i, p) in family.generate(&spec).enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        // sleep in steps of at least 2 ms, so pacing does not take a core
        if let Some(wait) = due
            .checked_sub(begin.elapsed())
            .filter(|w| *w >= Duration::from_millis(2))
        {
            std::thread::sleep(wait);
        }
        sender.send(
            &route(&p.topic),
            p.key.as_deref().map(str::as_bytes),
            &p.payload,
            None,
        )?;
    }
    sender.flush()?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

fn given_first(cfg: &Config) -> String {
    cfg.kafka
        .topics
        .as_ref()
        .and_then(|t| t.first().cloned())
        .unwrap_or_default()
}

pub fn report_freshness(h: &hdrhistogram::Histogram<u64>, rate: u64, what: &str) {
    println!(
        "freshness at {rate} events/s ({what}): p50 {} ms, p99 {} ms, max {} ms over {} events",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        h.len()
    );
}

/// User + system CPU time of the process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}
