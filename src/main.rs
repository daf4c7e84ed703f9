#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tidemark::clock::now_ms;
use tidemark::config::Config;
use tidemark::engine::{self, timely_config, RunOptions, Shared, SourceKind};
use tidemark::sink::memory::MemoryState;
use tidemark::sink::producer::Sender;
use tidemark::{bench, http, topics};
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::GenerateSpec;

/// Tidemark: a real-time feature engine on timely/differential dataflow.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Built-in traffic → dataflow → embedded store, with the read API and a live summary.
    Demo(DemoArgs),
    /// Synthetic traffic for a dataflow, to a JSON-lines file or a Kafka topic; with
    /// TIDEMARK_PG set, also the dimension tables it refers to (e.g. episode_metadata).
    Generate(GenerateArgs),
    /// Consume Kafka, maintain features, write Redis and Postgres.
    Run(RunArgs),
    /// Configuration: `config check` prints the effective config (secrets hidden).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Kafka topics: `topics create` creates the dataflow's topics and the DLQ.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Hands back the feature views a retired job owns in the stores, so another job may
    /// write them (a job claims its views at start; see README "Jobs").
    Release(JobConfigArgs),
    /// Recomputes the features from the archive with the online dataflow, as of each
    /// `--every` boundary in (--from, --to], into Postgres `batch_{ns}` and Parquet
    /// `{archive.root}/features/{ns}/as_of=…/`. Exits 0 done, 1 failed, 2 the archive does
    /// not hold the range yet (retry later).
    Batch(BatchArgs),
    /// Point-in-time training rows: each label row (entity keys, `ts`, label columns) with
    /// the features as of its `ts`, computed from the archive. Exits like `batch`.
    TrainingSet(TrainingSetArgs),
    /// Data quality: `quality report --hour H` prints the expectations' verdicts for an
    /// hour from Postgres; exits 1 when one failed, 2 when the hour has no report.
    #[command(subcommand)]
    Quality(QualityCommand),
    /// The dead-letter topic: `dlq replay --to TOPIC` re-sends its letters as the records
    /// they were (original key, headers and bytes).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Feast: `feast export --out DIR` writes a Feast feature repo (the `remote` online
    /// store at this API, the views, types and feature services), ready for `feast apply`.
    #[command(subcommand)]
    Feast(FeastCommand),
    /// Benchmarks (see README).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum QualityCommand {
    /// Prints the expectations' verdicts for the hour holding `--hour`, from the report in
    /// Postgres; exits 1 when one failed, 2 when the hour has no report.
    Report(QualityReportArgs),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Re-sends the DLQ's letters (`kafka.dlq_topic`, from its start to its end now) to
    /// `--to` as the records they were: original key, headers and bytes. Letters cut to
    /// fit the DLQ are skipped and counted (the whole record is in its source topic).
    Replay(DlqReplayArgs),
}

#[derive(Args)]
struct DlqReplayArgs {
    #[command(flatten)]
    config: JobConfigArgs,
    /// The topic to send the records to (e.g. the source topic, once the cause is fixed).
    #[arg(long)]
    to: String,
    /// Only letters of this reason (json, missing_field, wrong_type, unknown_type, range,
    /// oversized, …); repeat for several. Default: every letter.
    #[arg(long = "reason")]
    reasons: Vec<String>,
}

#[derive(Subcommand)]
enum FeastCommand {
    /// Writes `feature_store.yaml` and the feature definitions into `--out`: then
    /// `feast apply` there, and Feast clients read Tidemark's features.
    Export(FeastExportArgs),
}

#[derive(Args)]
struct FeastExportArgs {
    #[command(flatten)]
    config: JobConfigArgs,
    /// The repo's directory (created if missing; its files are overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Tidemark's read API as Feast clients reach it (default: http://{http}, or
    /// http://127.0.0.1:8080 when `http` is not set).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Args)]
struct QualityReportArgs {
    #[command(flatten)]
    config: JobConfigArgs,
    /// A time in the hour: epoch ms or RFC 3339 (e.g. 2026-01-01T13:00:00Z).
    #[arg(long)]
    hour: String,
}

#[derive(Args)]
struct BatchArgs {
    #[command(flatten)]
    config: ReplayConfigArgs,
    /// The range's start (excluded): epoch ms or RFC 3339.
    #[arg(long)]
    from: String,
    /// The range's end (included).
    #[arg(long)]
    to: String,
    /// The boundaries: the multiples of this (epoch-aligned) in the range.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    every: Duration,
    /// Read the archive as it is, without checking that it holds the range.
    #[arg(long)]
    assume_complete: bool,
}

#[derive(Args)]
struct TrainingSetArgs {
    #[command(flatten)]
    config: ReplayConfigArgs,
    /// The label rows: CSV with a header, or Parquet (`.parquet`).
    #[arg(long)]
    labels: PathBuf,
    /// Where the training set goes (Parquet).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    assume_complete: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, default_value = "search")]
    dataflow: String,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Events per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    seconds: Option<u64>,
    /// Where the demo archives its records as Parquet (default: `tidemark-demo-archive`
    /// in the temporary directory; a run replaces the files of the run before).
    #[arg(long)]
    archive: Option<std::path::PathBuf>,
    /// Do not archive.
    #[arg(long)]
    no_archive: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long, default_value = "search")]
    dataflow: String,
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Events per second of event time.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Event time the events cover instead (e.g. `40d`, `5h`): sets the spacing, not `--rate`.
    #[arg(long, value_parser = humantime::parse_duration)]
    span: Option<Duration>,
    /// Event time of the first event, epoch ms (default 2026-01-01T00:00:00Z).
    #[arg(long)]
    start_ms: Option<u64>,
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    #[arg(long, default_value_t = 0.02)]
    disorder: f64,
    #[arg(long, default_value_t = 0.0)]
    invalid: f64,
    /// Write JSON lines here (every topic's records in one file)…
    #[arg(long, conflicts_with = "topics", required_unless_present = "topics")]
    out: Option<PathBuf>,
    /// …or produce to Kafka (brokers from TIDEMARK_KAFKA): the dataflow's topics in order
    /// (e.g. ads: `--topic ad-events --topic quality-score-updates`); a topic not named
    /// keeps the dataflow's name.
    #[arg(long = "topic")]
    topics: Vec<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Merges file, environment and flags as `run` does, validates, and prints the result
    /// as TOML with secrets hidden; exits 1 naming the field and the fix when invalid.
    Check(ConfigArgs),
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Creates the topics the dataflow reads and writes, and the DLQ, with partitions,
    /// retention and compression from `[topics.<name>]` (defaults: seed 002's table).
    /// Topics that exist are left as they are and reported.
    Create(TopicsArgs),
}

// `topics create`'s flags: the job's, and the topics to read instead of the dataflow's.
#[derive(Args)]
struct TopicsArgs {
    #[command(flatten)]
    job: JobConfigArgs,
    /// Topic(s) to read instead of the dataflow's own (created with the dataflow's outputs).
    #[arg(long = "topic")]
    topics: Vec<String>,
}

impl TopicsArgs {
    fn load(self) -> anyhow::Result<Config> {
        ReplayConfigArgs {
            job: self.job,
            topics: self.topics,
            workers: None,
        }
        .load()
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Consume up to the end offsets seen at start, write everything, checkpoint and exit.
    #[arg(long)]
    exit_at_end: bool,
    /// Timely cluster: number of processes…
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// …this process's index…
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// …and a file of `host:port` lines, one per process (default 127.0.0.1:2101+i).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// The built-in batch scheduler: writes the features as of each multiple of this
    /// (e.g. `1h`) once the archive holds it (needs `[archive]`; process 0 of a cluster).
    #[arg(long, value_parser = humantime::parse_duration)]
    batch_every: Option<Duration>,
}

// The flags that override the config file and the environment.
#[derive(Args)]
struct ConfigArgs {
    #[command(flatten)]
    common: ReplayConfigArgs,
    #[arg(long)]
    group_id: Option<String>,
    /// Where a run without a checkpoint starts: earliest, latest, epoch ms or an RFC 3339
    /// time (e.g. 2026-01-01T00:00:00Z). A checkpoint of the job and group wins.
    #[arg(long)]
    from: Option<String>,
    /// Address of the HTTP API (`/metrics`, `/status`, `/readyz`, feature reads).
    #[arg(long)]
    http: Option<String>,
}

// Plain comments on the flattened flag sets: clap takes a doc comment as the command's
// description.
// The config flags every command takes: which file, dataflow and job.
#[derive(Args)]
struct JobConfigArgs {
    /// TOML config file (lowest precedence; then TIDEMARK_… env; then these flags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dataflow (family): search, reading, ads, commerce or watch.
    #[arg(long)]
    dataflow: Option<String>,
    /// The job: its checkpoints, feature views and archive marks.
    #[arg(long)]
    job: Option<String>,
}

impl JobConfigArgs {
    fn load(self) -> anyhow::Result<Config> {
        ReplayConfigArgs {
            job: self,
            topics: Vec::new(),
            workers: None,
        }
        .load()
    }
}

// The flags of a replay of the archive (it reads no Kafka, and its `--from` is the
// range's): the job's, what to read and on how many workers.
#[derive(Args)]
struct ReplayConfigArgs {
    #[command(flatten)]
    job: JobConfigArgs,
    /// Topic(s) to read instead of the dataflow's own (a replay: of the archive).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Worker threads per process.
    #[arg(long, short = 'w')]
    workers: Option<usize>,
}

impl ReplayConfigArgs {
    fn load(self) -> anyhow::Result<Config> {
        ConfigArgs {
            common: self,
            group_id: None,
            from: None,
            http: None,
        }
        .load()
    }
}

impl ConfigArgs {
    /// File < environment < these flags.
    fn load(self) -> anyhow::Result<Config> {
        let c = self.common;
        let mut flags = serde_json::Map::new();
        let mut kafka = serde_json::Map::new();
        if let Some(d) = c.job.dataflow {
            flags.insert("dataflow".into(), d.into());
        }
        if let Some(j) = c.job.job {
            flags.insert("job".into(), j.into());
        }
        if let Some(w) = c.workers {
            flags.insert("workers".into(), w.into());
        }
        if let Some(h) = self.http {
            flags.insert("http".into(), h.into());
        }
        if !c.topics.is_empty() {
            kafka.insert("topics".into(), c.topics.into());
        }
        if let Some(g) = self.group_id {
            kafka.insert("group_id".into(), g.into());
        }
        if let Some(f) = self.from {
            kafka.insert("from".into(), f.into());
        }
        if !kafka.is_empty() {
            flags.insert("kafka".into(), kafka.into());
        }
        Config::load(c.job.config.as_deref(), flags.into())
    }
}

/// `mi_option_purge_delay` (mimalloc's option 15 in v2 and v3; the crate names no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Windows expiring free as much as they allocate: with mimalloc's 10 ms default the
    // freed pages went back to the OS and were faulted in again, zeroed, a moment later
    // (a fifth of the dataflow's time in `bench search --span 40d`). A second keeps them.
    // SAFETY: sets a process-wide option before any thread is started
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1_000) };
    tidemark::archive::install_tls();
    let cli = Cli::parse();
    tidemark::crash::abort_on_pipeline_panics();
    http::raise_fd_limit();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,postgres=warn,tokio_postgres=warn".into());
    // colour only for a person at a terminal, and not when NO_COLOR is set (no-color.org)
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let json = cli.log_format == "json";
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Demo(a) => demo(a),
        Command::Generate(a) => generate(a),
        Command::Run(a) => run(a),
        Command::Config(ConfigCommand::Check(a)) => a.load().and_then(|c| {
            print!("{}", c.to_toml()?);
            Ok(())
        }),
        Command::Topics(TopicsCommand::Create(a)) => a.load().and_then(|c| topics::create(&c)),
        Command::Release(a) => a.load().and_then(|c| {
            let released = tidemark::sink::owners::release(&c)?;
            if released.is_empty() {
                println!(
                    "job '{}' owns no feature view in the configured stores",
                    c.job
                );
            }
            for r in released {
                println!("released {r} (job '{}')", c.job);
            }
            Ok(())
        }),
        Command::Bench(a) => bench::bench(a),
        Command::Batch(a) => batch(a),
        Command::TrainingSet(a) => training_set(a),
        Command::Quality(QualityCommand::Report(a)) => quality_report(a),
        Command::Feast(FeastCommand::Export(a)) => feast_export(a),
        Command::Dlq(DlqCommand::Replay(a)) => dlq_replay(a),
    };
    if let Err(e) = result {
        // an error may quote a URL or DSN with its password
        let error = tidemark::redact::redact(&format!("{e:#}"));
        if json {
            // a JSON line like every other, so a reader (jq, a log shipper) takes it too
            tracing::error!(error, "stopped with an error");
        } else {
            eprintln!("error: {error}");
        }
        std::process::exit(1);
    }
}

/// Prints, once an entity is stored, a read of a real one of the family's first feature
/// view that has one (`try: curl …/features/doc/doc-0`); whether it did.
fn demo_hint(
    state: &tidemark::sink::memory::MemoryState,
    tables: &[tidemark_dataflows::contract::table::TableSpec],
    bound: &std::net::SocketAddr,
) -> bool {
    // the first view read by key that holds an entity yet (a window view fills later)
    let stored = |t: usize| (state.entities.keys().filter(|(x, _)| *x as usize == t)).min();
    let first = (tables.iter().enumerate())
        .filter(|(_, spec)| spec.sink == tidemark_dataflows::contract::table::SinkKind::Store)
        .find_map(|(t, _)| stored(t).map(|(_, key)| (t, key)));
    let Some((t, key)) = first else {
        return false;
    };
    println!(
        "try: curl http://{bound}/features/{}/{}",
        tables[t].ns,
        key.join(":")
    );
    true
}

/// The demo's durable stream time as a person reads it, with how far behind now it is.
fn frontier_text(frontier: Option<tidemark_dataflows::Tick>) -> String {
    let Some(t) = frontier else {
        return "nothing durable yet".into();
    };
    let at = chrono::DateTime::from_timestamp_millis(t as i64).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    );
    let behind = now_ms().saturating_sub(t) as f64 / 1000.0;
    format!("durable up to {at} ({behind:.1} s ago)")
}

fn dlq_replay(a: DlqReplayArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    let r = tidemark::dlq_replay::replay(&config, &a.to, &a.reasons)?;
    println!(
        "replayed {} records from {} to {}; skipped: {} of other reasons, {} cut to fit the DLQ (whole in their source topics), {} entity updates (not records), {} damaged (older letters of binary payloads)",
        r.sent, config.kafka.dlq_topic, a.to, r.filtered, r.truncated, r.not_records, r.damaged
    );
    Ok(())
}

/// `feast export`: the repo, and what to do next.
fn feast_export(a: FeastExportArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    println!("{}", tidemark::feast::export_job(&config, a.url, &a.out)?);
    Ok(())
}

/// Exit status 1 when an expectation failed, 2 when the hour has no report.
fn quality_report(a: QualityReportArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    let report = tidemark::quality::report(&config, &a.hour)?;
    if report.rows.is_empty() {
        eprintln!(
            "no report for {}: job '{}' has read no record of that hour (or its hour left the report)",
            report.hour, config.job
        );
        std::process::exit(2);
    }
    print!("{}", report.render());
    if report.failed() > 0 {
        eprintln!("{} expectation(s) failed", report.failed());
        std::process::exit(1);
    }
    Ok(())
}

/// Exit status 2: the archive does not hold the range yet.
fn not_yet(why: &str) -> ! {
    eprintln!("not yet: {why}");
    std::process::exit(2);
}

fn print_report(r: &tidemark::batch::Report, what: &str) -> anyhow::Result<()> {
    println!(
        "{} records read from the archive, {what}, in {:.1} s ({:.0} records/s)",
        r.records,
        r.seconds,
        r.records as f64 / r.seconds.max(1e-9)
    );
    if r.doubled > 0 {
        println!("{} records found in two files were read once", r.doubled);
    }
    if !r.skipped.is_empty() {
        for s in &r.skipped {
            eprintln!("skipped: {s}");
        }
        anyhow::bail!(
            "{} archive file(s) could not be read and were skipped (named above): the rows are written without their records",
            r.skipped.len()
        );
    }
    Ok(())
}

fn batch(a: BatchArgs) -> anyhow::Result<()> {
    use tidemark::batch::{self, Outcome};
    let config = a.config.load()?;
    let (from, to) = (batch::parse_instant(&a.from)?, batch::parse_instant(&a.to)?);
    let every = a.every.as_millis() as u64;
    match batch::batch(&config, from, to, every, a.assume_complete, None)? {
        Outcome::NotYet(why) => not_yet(&why),
        Outcome::Done(r) => print_report(
            &r,
            &format!(
                "{} rows written as of {} boundaries",
                r.rows,
                batch::boundaries(from, to, every)?.len()
            ),
        ),
    }
}

fn training_set(a: TrainingSetArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    match tidemark::batch::training::training_set(&config, &a.labels, &a.out, a.assume_complete)? {
        Err(why) => not_yet(&why),
        Ok(r) => print_report(
            &r,
            &format!("{} label rows written to {}", r.rows, a.out.display()),
        ),
    }
}

/// `--batch-every`'s scheduler thread, on process 0: (every, its stop flag, the thread).
type Scheduler = (
    u64,
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

fn scheduler(
    batch_every: Option<Duration>,
    process: usize,
    config: &Config,
    drain: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<Scheduler>> {
    let Some(every) = batch_every.filter(|_| process == 0) else {
        return Ok(None);
    };
    if !config.archive.enabled {
        anyhow::bail!("--batch-every reads the archive: set archive.enabled = true (TIDEMARK_ARCHIVE__ENABLED=true) and archive.root");
    }
    let every = (every.as_millis() as u64).max(1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = tidemark::batch::schedule::spawn(config.clone(), every, stop.clone(), drain)?;
    Ok(Some((every, stop, thread)))
}

/// How long a stop may take once SIGTERM came (DESIGN §6 allows 30 s).
const STOP_DEADLINE: Duration = Duration::from_secs(29);

/// Whatever is stuck (a sink, the DLQ, an operator), a stop ends the process within
/// [`STOP_DEADLINE`]: past it, this exits 1 naming what the stop was waiting for.
fn stop_deadline(shared: Arc<Shared>) {
    std::thread::spawn(move || {
        while !shared.drain.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(STOP_DEADLINE);
        let stuck = tidemark::engine::health::stuck(&shared);
        tracing::error!(stuck = %stuck, "the stop did not end within {} s: exiting 1 (the previous checkpoint stands)", STOP_DEADLINE.as_secs());
        eprintln!(
            "error: the stop did not end within {} s; stuck on: {stuck}",
            STOP_DEADLINE.as_secs()
        );
        std::process::exit(1);
    });
}

/// Reports how much of the backlog is read: a progress bar on a terminal, else a log line
/// every 10 s while there is a backlog.
fn report_progress(shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    use std::io::IsTerminal;
    std::thread::spawn(move || {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} records [{bar:40}] {per_sec} eta {eta}",
                )
                .expect("a valid template"),
            );
            bar
        });
        let mut last_log = std::time::Instant::now();
        while !shared.stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let consumed = shared.counters.consumed.load(Relaxed);
            let left = shared.backlog.load(Relaxed).max(0) as u64;
            if let Some(bar) = &bar {
                bar.set_length(consumed + left);
                bar.set_position(consumed);
            } else if left > 0 && last_log.elapsed() >= Duration::from_secs(10) {
                last_log = std::time::Instant::now();
                tracing::info!(consumed, left, "reading the backlog");
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    })
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    tracing::info!(config = %config.redacted(), "effective configuration");
    let timely = timely_config(config.workers, a.processes, a.process, a.hostfile.as_ref())?;
    let shared = Arc::new(Shared::default());
    if let Some(addr) = &config.http {
        let backend = match &config.redis.url {
            Some(url) => Some(http::Backend::Redis(redis::Client::open(url.as_str())?)),
            None => None,
        };
        let family = engine::family_of(&config)?;
        let bound = http::serve(addr, family, backend, shared.clone(), config.clone())?;
        tracing::info!(%bound, "HTTP API listening");
    }
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // a second signal ends the process at once
        signal_hook::flag::register_conditional_shutdown(signal, 1, shared.drain.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, shared.drain.clone())
            .context("installing the signal handler")?;
    }
    stop_deadline(shared.clone());
    let reporter = report_progress(shared.clone());
    let scheduled = scheduler(a.batch_every, a.process, &config, shared.drain.clone())?;
    let opts = RunOptions::kafka(timely, config.clone(), a.exit_at_end);
    let final_tick = engine::run(opts, shared.clone());
    shared.stop.store(true, Relaxed);
    let _ = reporter.join();
    if let Some((every, stop, thread)) = scheduled {
        stop.store(true, Relaxed);
        let _ = thread.join();
        // the end of the input, not a SIGTERM (whose stop has a deadline): a last pass
        if a.exit_at_end && final_tick.is_ok() && !shared.drain.load(Relaxed) {
            tidemark::batch::schedule::logged_pass(&config, every, None);
        }
    }
    let final_tick = final_tick?;
    let c = &shared.counters;
    tracing::info!(
        final_tick,
        consumed = c.consumed.load(Relaxed),
        accepted = c.accepted.load(Relaxed),
        duplicates = c.duplicates.load(Relaxed),
        too_late = c.too_late.load(Relaxed),
        held_back = c.held_back.load(Relaxed),
        invalid = c.invalid_total(),
        "stopped"
    );
    for (sink, s) in shared.sinks.lock().expect("sink stats").iter() {
        tracing::info!(
            sink,
            writes = s.writes.load(Relaxed),
            entity_updates = s.entity_updates.load(Relaxed),
            failures = s.failures.load(Relaxed),
            "sink totals"
        );
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let family = tidemark_dataflows::family(&a.dataflow, None).map_err(|e| anyhow::anyhow!(e))?;
    let spec = GenerateSpec {
        events: a.events,
        seed: a.seed,
        start_ms: a.start_ms.unwrap_or(GenerateSpec::default().start_ms),
        rate: a.rate,
        span_ms: a.span.map(|d| d.as_millis() as u64),
        duplicate_share: a.duplicates,
        disorder_share: a.disorder,
        invalid_share: a.invalid,
    };
    if let Ok(url) = std::env::var("TIDEMARK_PG") {
        for (table, rows) in family.dimension_rows(&spec) {
            tidemark::source::dimension::fill(&url, &table, &rows)?;
            eprintln!("filled {} with {} rows", table.table, rows.len());
        }
    }
    let mut n = 0u64;
    if let Some(path) = a.out {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for p in family.generate(&spec) {
            out.write_all(&p.payload)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        out.flush()?;
    } else {
        let brokers = std::env::var("TIDEMARK_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let sender = Sender::new(&brokers)?;
        let own = family.topics();
        let target = |t: &str| -> String {
            own.iter()
                .position(|o| o == t)
                .and_then(|i| a.topics.get(i))
                .cloned()
                .unwrap_or_else(|| t.to_string())
        };
        for p in family.generate(&spec) {
            sender.send(
                &target(&p.topic),
                p.key.as_deref().map(str::as_bytes),
                &p.payload,
                None,
            )?;
            n += 1;
        }
        sender.flush()?;
    }
    eprintln!("generated {n} records");
    Ok(())
}

/// Long: the demo in the order it starts (traffic, engine, read API, live summary), each step a few lines.
fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let archive_dir = a
        .archive
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tidemark-demo-archive"));
    let config = Config {
        dataflow: a.dataflow.clone(),
        workers: a.workers,
        archive: tidemark::config::ArchiveConfig {
            enabled: !a.no_archive,
            root: archive_dir.to_string_lossy().into_owned(),
            // files every few seconds, to look at while it runs
            max_buffer_age_ms: 5_000,
            ..Default::default()
        },
        ..Config::default()
    };
    let family = engine::family_of(&config)?;
    let memory = Arc::new(std::sync::RwLock::new(MemoryState::default()));
    let shared = Arc::new(Shared::default());
    let bound = http::serve(
        &a.http,
        engine::family_of(&config)?,
        Some(http::Backend::Memory(memory.clone())),
        shared.clone(),
        config.clone(),
    )?;
    let tables = family.tables();
    let spec = GenerateSpec {
        events: u64::MAX,
        start_ms: now_ms(),
        rate: a.rate,
        seed: now_ms(),
        invalid_share: 0.001,
        ..Default::default()
    };
    let opts = RunOptions {
        config,
        exit_at_end: false,
        timely: timely_config(a.workers, 1, 0, None)?,
        source: SourceKind::Generator {
            spec,
            pace: Some(a.rate),
        },
        memory: Some(memory.clone()),
        measure_freshness: false,
        family: None,
        stores: None,
    };
    println!(
        "Tidemark demo: {} dataflow, {} workers, {} events/s, embedded store",
        a.dataflow, a.workers, a.rate
    );
    tracing::info!(dataflow = %a.dataflow, workers = a.workers, rate = a.rate, http = %bound, "demo started");
    // the family's first feature view, e.g. /features/doc/<doc_id>
    let view = tables
        .iter()
        .find(|t| t.sink == tidemark_dataflows::contract::table::SinkKind::Store)
        .map_or("doc/<doc_id>".to_string(), |t| {
            format!("{}/<{}>", t.ns, t.keys.join(":"))
        });
    println!("read API: curl http://{bound}/features/{view} · status: http://{bound}/status · metrics: http://{bound}/metrics   (Ctrl-C to stop)");
    if !a.no_archive {
        println!(
            "archive: every record as Parquet under {}",
            archive_dir.display()
        );
    }
    let s = shared.clone();
    let runner = std::thread::spawn(move || engine::run(opts, s));
    let started = std::time::Instant::now();
    let mut hinted = false;
    let mut consumed_before = 0;
    let mut last = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        // the rate over the interval measured, not the nominal 2 s
        let interval = last.elapsed().as_secs_f64().max(1e-3);
        last = std::time::Instant::now();
        let c = &shared.counters;
        let state = memory.read().expect("memory store lock");
        if !hinted {
            hinted = demo_hint(&state, &tables, &bound);
        }
        let mut top: Vec<(&Vec<String>, i64, f64)> = state
            .entities
            .iter()
            // search's documents: clicks_7d and ctr (another family's first table has
            // other fields)
            .filter(|((t, _), _)| *t == 0 && a.dataflow == "search")
            .filter_map(|((_, k), (v, _))| match (v.get(2), v.get(4)) {
                (Some(Value::Int(clicks)), Some(ctr)) => {
                    Some((k, *clicks, ctr.as_f64().unwrap_or(0.0)))
                }
                _ => None,
            })
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let per_table: Vec<String> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "{}={}",
                    t.ns,
                    state
                        .entities
                        .keys()
                        .filter(|(x, _)| *x as usize == i)
                        .count()
                )
            })
            .collect();
        let consumed = c.consumed.load(Relaxed);
        println!(
            "[{:>4}s] consumed {consumed} ({:.0}/s) accepted {} duplicates {} too-late {} invalid {} | entities {} | {}",
            started.elapsed().as_secs(),
            (consumed - consumed_before) as f64 / interval,
            c.accepted.load(Relaxed),
            c.duplicates.load(Relaxed),
            c.too_late.load(Relaxed),
            c.invalid_total(),
            per_table.join(" "),
            frontier_text(state.frontier(a.workers)),
        );
        consumed_before = consumed;
        if a.dataflow == "search" {
            let line: Vec<String> = top
                .iter()
                .take(3)
                .map(|(k, clicks, ctr)| format!("{} clicks_7d={clicks} ctr_doc={ctr:.3}", k[0]))
                .collect();
            println!("        top docs: {}", line.join(" | "));
        }
        drop(state);
        if a.seconds.is_some_and(|s| started.elapsed().as_secs() >= s) || runner.is_finished() {
            shared.stop.store(true, Relaxed);
            break;
        }
    }
    runner
        .join()
        .map_err(|_| anyhow::anyhow!("the engine panicked"))??;
    Ok(())
}
