//! What an operator sees: Prometheus metrics, the `/status` document and readiness.
//!
//! Hot paths (sources, writers) record into `metrics` handles or into the engine's own
//! atomics; everything else is read from [`Status`] when `/metrics` or `/status` is asked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{json, Value};
use tidemark_dataflows::Tick;

use crate::config::Config;
use crate::engine::Shared;
use crate::kafka::now_ms;

pub const CONSUMED: &str = "tidemark_events_consumed_total";
pub const FRESHNESS: &str = "tidemark_freshness_seconds";
pub const SINK_WRITE: &str = "tidemark_sink_write_duration_seconds";
pub const CHECKPOINT: &str = "tidemark_checkpoint_duration_seconds";
pub const DLQ: &str = "tidemark_dlq_records_total";
/// The feature view whose rows are data-quality counts per hour.
pub const QUALITY_TABLE: &str = "quality_hourly";

/// Seconds: 1 ms … 60 s, fine where freshness and writes usually fall.
const BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// The process's Prometheus recorder; the first call installs it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("non-empty buckets")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        let h = handle.clone();
        // histograms keep raw samples until upkeep folds them into buckets
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                h.run_upkeep();
            })
            .expect("spawn the metrics upkeep thread");
        handle
    })
}

fn describe() {
    describe_counter!(CONSUMED, "Records read from Kafka, per topic.");
    describe_counter!(
        "tidemark_events_accepted_total",
        "Valid, new, in-window events that entered the features."
    );
    describe_counter!(
        "tidemark_events_invalid_total",
        "Records that failed validation, per reason; each goes to the DLQ."
    );
    describe_counter!(
        "tidemark_events_duplicate_total",
        "Events dropped as duplicates of an event_id seen within the dedup horizon."
    );
    describe_counter!(
        "tidemark_events_late_total",
        "Events older than every window they could change (too late)."
    );
    describe_counter!(DLQ, "Records handed to the dead-letter topic.");
    describe_counter!(
        "tidemark_dlq_failed_total",
        "DLQ records not delivered (the topic takes none): no checkpoint is saved past them."
    );
    describe_counter!(
        "tidemark_dlq_refused_total",
        "DLQ records Kafka refused for good (too large): logged with their coordinates."
    );
    describe_gauge!(
        "tidemark_consumer_lag_records",
        "High watermark minus the group's committed offset, per partition."
    );
    describe_gauge!(
        "tidemark_consumer_read_lag_records",
        "High watermark minus the next offset the engine will read, per partition."
    );
    describe_gauge!(
        "tidemark_kafka_high_watermark",
        "The partition's high watermark (next offset to be appended)."
    );
    describe_gauge!(
        "tidemark_kafka_committed_offset",
        "The consumer group's committed offset (moves with each checkpoint)."
    );
    describe_gauge!(
        "tidemark_kafka_position",
        "The next offset the engine will read."
    );
    describe_counter!(
        "tidemark_feature_updates_total",
        "Entity rows written per sink; result=error counts rows of failed (retried) writes, result=rejected rows the store can never take (sent to the DLQ)."
    );
    describe_counter!(
        "tidemark_sink_writes_total",
        "Sink transactions per sink and result (error = retried)."
    );
    describe_histogram!(
        SINK_WRITE,
        Unit::Seconds,
        "Duration of one sink write (a batch of ticks), per sink."
    );
    describe_gauge!(
        "tidemark_sink_up",
        "1 when the sink answered its last health check, else 0."
    );
    describe_histogram!(
        FRESHNESS,
        Unit::Seconds,
        "Kafka append time to the tick being durable in every sink, per event."
    );
    describe_gauge!(
        "tidemark_stream_time_seconds",
        "Per worker: stream time the dataflow has fully processed (epoch s, the watermark)."
    );
    describe_gauge!(
        "tidemark_durable_time_seconds",
        "Per worker: stream time every sink has durably written (epoch s)."
    );
    describe_histogram!(
        CHECKPOINT,
        Unit::Seconds,
        "From asking for a checkpoint to its snapshot being saved, per worker."
    );
    describe_counter!(
        "tidemark_checkpoints_total",
        "Checkpoint parts saved (one per worker and checkpoint)."
    );
    describe_counter!(
        "tidemark_checkpoint_failures_total",
        "Checkpoints that could not be saved (offsets stay)."
    );
    describe_gauge!(
        "tidemark_events_per_second",
        "Records consumed per second over the last 10 s."
    );
    describe_gauge!(
        "tidemark_quality_events",
        "Data-quality issues per kind over the hours the quality view holds (30 days)."
    );
    describe_gauge!(
        "tidemark_ready",
        "1 when /readyz answers 200: sources assigned, sinks reachable, not draining."
    );
    describe_gauge!(
        "tidemark_process_resident_memory_bytes",
        "Resident set size of the process."
    );
}

/// One assigned Kafka partition.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionStatus {
    pub worker: usize,
    /// Next offset to read.
    pub position: i64,
    /// The group's committed offset, as the broker has it.
    pub committed: Option<i64>,
    pub low_watermark: Option<i64>,
    pub high_watermark: Option<i64>,
}

/// One worker's progress through stream time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerStatus {
    /// Every tick before this has been processed by the dataflow.
    pub processed: Option<Tick>,
    /// Every tick before this is durable in every sink.
    pub durable: Option<Tick>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckpointStatus {
    pub saved: u64,
    pub failures: u64,
    pub last_tick: Option<Tick>,
    pub last_saved_at_ms: Option<u64>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Epoch ms of the first failure since the last checkpoint saved.
    pub failing_since_ms: Option<u64>,
}

/// A sink's last health check.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub up: bool,
    pub checked_at_ms: u64,
    pub error: Option<String>,
}

/// Operating state, shared by the workers, the writers and the HTTP server of a process.
#[derive(Default)]
pub struct Status {
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionStatus>>,
    pub workers: Mutex<BTreeMap<usize, WorkerStatus>>,
    pub checkpoint: Mutex<CheckpointStatus>,
    pub health: Mutex<BTreeMap<&'static str, Health>>,
    /// Sources this process runs (one per worker) and how many have their partitions.
    pub sources: AtomicUsize,
    pub assigned: AtomicUsize,
    pub dlq_records: AtomicU64,
    /// Data-quality counts per hour (`YYYY-MM-DDTHH`) and kind, as this process's
    /// workers wrote them (a family with a `quality_hourly` view).
    pub quality: Mutex<BTreeMap<String, BTreeMap<&'static str, i64>>>,
    /// The kinds of quality count the view has (each gauge is set, to 0 when no hour holds it).
    pub quality_kinds: Mutex<Vec<&'static str>>,
    /// (when, records consumed): samples for the rate.
    rate: Mutex<VecDeque<(Instant, u64)>>,
    pub started_ms: AtomicU64,
    /// What start-up waits for (a service not reachable yet); `None` once started.
    pub starting: Mutex<Option<String>>,
    /// The DLQ producer's deliveries, once it exists.
    pub dlq: OnceLock<Arc<crate::kafka::Deliveries>>,
    /// `/readyz` is 503 once a sink, the DLQ or checkpoints have failed this long (ms);
    /// 0 = the default, 30 s.
    pub unready_after_ms: AtomicU64,
    /// Per worker, where its stop stands and when it said so (epoch ms).
    pub stopping: Mutex<BTreeMap<usize, (u64, String)>>,
}

impl Status {
    pub fn worker(&self, worker: usize, processed: Option<Tick>, durable: Option<Tick>) {
        gauge!("tidemark_stream_time_seconds", "worker" => worker.to_string())
            .set(processed.unwrap_or(0) as f64 / 1000.0);
        gauge!("tidemark_durable_time_seconds", "worker" => worker.to_string())
            .set(durable.unwrap_or(0) as f64 / 1000.0);
        self.workers
            .lock()
            .expect("status lock")
            .insert(worker, WorkerStatus { processed, durable });
    }

    pub fn checkpoint_saved(&self, tick: Tick, took: Duration) {
        metrics::histogram!(CHECKPOINT).record(took.as_secs_f64());
        counter!("tidemark_checkpoints_total").increment(1);
        let mut c = self.checkpoint.lock().expect("status lock");
        c.saved += 1;
        c.last_tick = Some(c.last_tick.map_or(tick, |t| t.max(tick)));
        c.last_saved_at_ms = Some(now_ms());
        c.last_duration_ms = Some(took.as_millis() as u64);
        c.failing_since_ms = None;
    }

    pub fn checkpoint_failed(&self, error: String) {
        counter!("tidemark_checkpoint_failures_total").increment(1);
        let mut c = self.checkpoint.lock().expect("status lock");
        c.failures += 1;
        c.last_error = Some(error);
        c.failing_since_ms.get_or_insert_with(now_ms);
    }

    fn sample_rate(&self, consumed: u64) {
        let mut samples = self.rate.lock().expect("status lock");
        let now = Instant::now();
        samples.push_back((now, consumed));
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10))
        {
            samples.pop_front();
        }
    }

    /// Records consumed per second over the last 10 s.
    pub fn rate(&self) -> f64 {
        let samples = self.rate.lock().expect("status lock");
        match (samples.front(), samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Why the process is not ready; empty when it is.
pub fn not_ready(shared: &Shared) -> Vec<String> {
    let s = &shared.status;
    let mut why = Vec::new();
    if shared.drain.load(Relaxed) {
        why.push("draining: stopping on SIGTERM".to_string());
    }
    if let Some(waiting) = s.starting.lock().expect("status lock").as_ref() {
        why.push(format!("starting: {waiting}"));
    }
    let grace = match s.unready_after_ms.load(Relaxed) {
        0 => 30_000,
        ms => ms,
    };
    let now = now_ms();
    let failing = |since: u64| since > 0 && now.saturating_sub(since) >= grace;
    for (sink, st) in shared.sinks.lock().expect("sink stats").iter() {
        let writing = st.writing_since.load(Relaxed);
        if failing(writing) {
            why.push(format!(
                "{sink}: a write has been in flight for {} s",
                (now - writing) / 1000
            ));
        }
        let since = st.failing_since.load(Relaxed);
        if failing(since) {
            let error = st.last_error.lock().expect("sink stats").clone();
            why.push(format!(
                "{sink} writes failing for {} s: {}",
                (now - since) / 1000,
                error.map(|(_, e)| e).unwrap_or_default()
            ));
        }
    }
    if let Some(d) = s.dlq.get() {
        let since = d.failing_since.load(Relaxed);
        if failing(since) {
            why.push(format!(
                "DLQ deliveries failing for {} s ({} failed): no checkpoint is saved past them",
                (now - since) / 1000,
                d.failed.load(Relaxed)
            ));
        }
    }
    {
        let c = s.checkpoint.lock().expect("status lock");
        if let Some(since) = c.failing_since_ms.filter(|t| failing(*t)) {
            why.push(format!(
                "checkpoints failing for {} s: {}",
                (now - since) / 1000,
                c.last_error.clone().unwrap_or_default()
            ));
        }
    }
    let (assigned, sources) = (s.assigned.load(Relaxed), s.sources.load(Relaxed));
    if sources == 0 || assigned < sources {
        why.push(format!("sources assigned: {assigned} of {sources} workers"));
    }
    for (sink, h) in s.health.lock().expect("status lock").iter() {
        if !h.up {
            why.push(format!(
                "{sink} unreachable: {}",
                h.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    why
}

/// What a stop that overran its deadline was waiting for: the reasons it is not ready,
/// each worker's last word on its stop, and every sink whose writes fail.
pub fn stuck(shared: &Shared) -> String {
    let mut parts: Vec<String> = not_ready(shared)
        .into_iter()
        .filter(|r| !r.starts_with("draining"))
        .collect();
    let now = now_ms();
    for (w, (at, stage)) in shared.status.stopping.lock().expect("status lock").iter() {
        parts.push(format!(
            "worker {w} (said {} ms ago): {stage}",
            now.saturating_sub(*at)
        ));
    }
    for (sink, st) in shared.sinks.lock().expect("sink stats").iter() {
        let writing = st.writing_since.load(Relaxed);
        if writing > 0 && now.saturating_sub(writing) > 1_000 {
            parts.push(format!(
                "{sink}: a write has been in flight for {} ms",
                now - writing
            ));
        }
        if st.failing_since.load(Relaxed) > 0 {
            let error = st.last_error.lock().expect("sink stats").clone();
            parts.push(format!(
                "{sink} writes failing: {}",
                error.map(|(_, e)| e).unwrap_or_default()
            ));
        }
    }
    if let Some(e) = shared
        .status
        .checkpoint
        .lock()
        .expect("status lock")
        .last_error
        .clone()
    {
        parts.push(format!("the last checkpoint error: {e}"));
    }
    if parts.is_empty() {
        parts.push("no worker reported its stop".into());
    }
    parts.join("; ")
}

/// Updates the mirrored metrics and renders the Prometheus text.
pub fn render(shared: &Shared) -> String {
    let c = &shared.counters;
    counter!("tidemark_events_accepted_total").absolute(c.accepted.load(Relaxed));
    counter!("tidemark_events_duplicate_total").absolute(c.duplicates.load(Relaxed));
    counter!("tidemark_events_late_total").absolute(c.too_late.load(Relaxed));
    counter!("tidemark_records_held_back_total").absolute(c.held_back.load(Relaxed));
    for (reason, n) in c.invalid_by_reason() {
        counter!("tidemark_events_invalid_total", "reason" => reason).absolute(n);
    }
    counter!(DLQ).absolute(shared.status.dlq_records.load(Relaxed));
    if let Some(d) = shared.status.dlq.get() {
        counter!("tidemark_dlq_failed_total").absolute(d.failed.load(Relaxed));
        counter!("tidemark_dlq_refused_total").absolute(d.refused.load(Relaxed));
    }
    for (sink, s) in shared.sinks.lock().expect("sink stats").iter() {
        let sink = *sink;
        counter!("tidemark_sink_writes_total", "sink" => sink, "result" => "ok")
            .absolute(s.writes.load(Relaxed));
        counter!("tidemark_sink_writes_total", "sink" => sink, "result" => "error")
            .absolute(s.failures.load(Relaxed));
        counter!("tidemark_feature_updates_total", "sink" => sink, "result" => "ok")
            .absolute(s.entity_updates.load(Relaxed));
        counter!("tidemark_feature_updates_total", "sink" => sink, "result" => "error")
            .absolute(s.failed_updates.load(Relaxed));
        counter!("tidemark_feature_updates_total", "sink" => sink, "result" => "rejected")
            .absolute(s.rejected.load(Relaxed));
    }
    for ((topic, partition), p) in shared.status.partitions.lock().expect("status").iter() {
        let labels = [
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        gauge!("tidemark_kafka_position", &labels).set(p.position as f64);
        if let Some(hw) = p.high_watermark {
            gauge!("tidemark_kafka_high_watermark", &labels).set(hw as f64);
            gauge!("tidemark_consumer_read_lag_records", &labels)
                .set((hw - p.position).max(0) as f64);
            let committed = p.committed.or(p.low_watermark).unwrap_or(0);
            gauge!("tidemark_consumer_lag_records", &labels).set((hw - committed).max(0) as f64);
        }
        if let Some(o) = p.committed {
            gauge!("tidemark_kafka_committed_offset", &labels).set(o as f64);
        }
    }
    for (sink, h) in shared.status.health.lock().expect("status").iter() {
        gauge!("tidemark_sink_up", "sink" => *sink).set(if h.up { 1.0 } else { 0.0 });
    }
    gauge!("tidemark_ready").set(if not_ready(shared).is_empty() {
        1.0
    } else {
        0.0
    });
    gauge!("tidemark_events_per_second").set(shared.status.rate());
    let mut kinds: BTreeMap<&'static str, i64> = shared
        .status
        .quality_kinds
        .lock()
        .expect("status")
        .iter()
        .map(|k| (*k, 0))
        .collect();
    for counts in shared.status.quality.lock().expect("status").values() {
        for (kind, n) in counts {
            *kinds.entry(kind).or_default() += n;
        }
    }
    for (kind, n) in kinds {
        gauge!("tidemark_quality_events", "kind" => kind).set(n as f64);
    }
    if let Some(rss) = resident_bytes() {
        gauge!("tidemark_process_resident_memory_bytes").set(rss as f64);
    }
    prometheus().render()
}

/// Resident set size of this process (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The `/status` document.
pub fn status(shared: &Shared, cfg: &Config, family: &str) -> Value {
    let c = &shared.counters;
    let s = &shared.status;
    let partitions: Vec<Value> = s
        .partitions
        .lock()
        .expect("status")
        .iter()
        .map(|((topic, partition), p)| {
            json!({
                "topic": topic,
                "partition": partition,
                "worker": p.worker,
                "position": p.position,
                "committed": p.committed,
                "low_watermark": p.low_watermark,
                "high_watermark": p.high_watermark,
                "lag": p.high_watermark.map(|hw| (hw - p.committed.or(p.low_watermark).unwrap_or(0)).max(0)),
                "read_lag": p.high_watermark.map(|hw| (hw - p.position).max(0)),
            })
        })
        .collect();
    let workers: Vec<Value> = s
        .workers
        .lock()
        .expect("status")
        .iter()
        .map(|(w, st)| json!({"worker": w, "processed": st.processed, "durable": st.durable}))
        .collect();
    let health = s.health.lock().expect("status").clone();
    let sinks: serde_json::Map<String, Value> = shared
        .sinks
        .lock()
        .expect("sink stats")
        .iter()
        .map(|(name, st)| {
            let h = health.get(name);
            (
                name.to_string(),
                json!({
                    "writes": st.writes.load(Relaxed),
                    "entity_updates": st.entity_updates.load(Relaxed),
                    "failures": st.failures.load(Relaxed),
                    "rejected": st.rejected.load(Relaxed),
                    "last_rejected": st.last_rejected.lock().expect("sink stats").clone()
                        .map(|u| json!({"entity": u.entity, "tick": u.tick, "error": u.error})),
                    "failing_since_ms": Some(st.failing_since.load(Relaxed)).filter(|t| *t > 0),
                    "last_error": st.last_error.lock().expect("sink stats").clone()
                        .map(|(at, e)| json!({"at_ms": at, "error": e})),
                    "reachable": h.map(|h| h.up),
                    "checked_at_ms": h.map(|h| h.checked_at_ms),
                }),
            )
        })
        .collect();
    let invalid: serde_json::Map<String, Value> = c
        .invalid_by_reason()
        .iter()
        .map(|(r, n)| (r.to_string(), (*n).into()))
        .collect();
    let frontier = s
        .workers
        .lock()
        .expect("status")
        .values()
        .map(|w| w.durable)
        .min()
        .flatten();
    let why = not_ready(shared);
    json!({
        "job": cfg.job,
        "group": crate::kafka::group_of(cfg),
        "dataflow": family,
        "ready": why.is_empty(),
        "not_ready": why,
        "draining": shared.drain.load(Relaxed),
        "uptime_ms": now_ms().saturating_sub(s.started_ms.load(Relaxed)),
        "sources": partitions,
        "dataflows": {
            family: {
                "consumed": c.consumed.load(Relaxed),
                "accepted": c.accepted.load(Relaxed),
                "duplicates": c.duplicates.load(Relaxed),
                "too_late": c.too_late.load(Relaxed),
                "held_back": c.held_back.load(Relaxed),
                "invalid": invalid,
                "dlq_records": s.dlq_records.load(Relaxed),
                "dlq_failed": s.dlq.get().map(|d| d.failed.load(Relaxed)),
                "dlq_refused": s.dlq.get().map(|d| d.refused.load(Relaxed)),
                "events_per_second": s.rate(),
            }
        },
        "workers": workers,
        "frontier": frontier,
        "sinks": sinks,
        "health": health,
        "checkpoint": s.checkpoint.lock().expect("status").clone(),
        // the newest 48 hours
        "quality_hourly": s.quality.lock().expect("status").iter().rev().take(48)
            .map(|(h, c)| (h.clone(), json!(c))).collect::<serde_json::Map<String, Value>>(),
    })
}

/// Checks the sinks and the group's offsets once a second, until `stop` is set.
pub fn watch(cfg: Config, shared: Arc<Shared>, stop: Arc<std::sync::atomic::AtomicBool>) {
    shared.status.started_ms.store(now_ms(), Relaxed);
    let _ = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let mut redis: Option<redis::Connection> = None;
            let mut pg: Option<postgres::Client> = None;
            let kafka = lag_client(&cfg);
            while !stop.load(Relaxed) {
                let started = Instant::now();
                shared
                    .status
                    .sample_rate(shared.counters.consumed.load(Relaxed));
                if let Some(url) = &cfg.redis.url {
                    let r = ping_redis(url, &mut redis);
                    report(&shared, "redis", r);
                }
                if let Some(url) = &cfg.postgres.url {
                    let r = ping_postgres(url, &mut pg);
                    report(&shared, "postgres", r);
                }
                if let Some(k) = &kafka {
                    offsets(k, &shared);
                }
                let spent = started.elapsed();
                std::thread::sleep(Duration::from_secs(1).saturating_sub(spent));
            }
        });
}

fn report(shared: &Shared, sink: &'static str, r: anyhow::Result<()>) {
    let h = Health {
        up: r.is_ok(),
        checked_at_ms: now_ms(),
        error: r.err().map(|e| format!("{e:#}")),
    };
    shared.status.health.lock().expect("status").insert(sink, h);
}

fn ping_redis(url: &str, conn: &mut Option<redis::Connection>) -> anyhow::Result<()> {
    if conn.is_none() {
        let client = redis::Client::open(url)?;
        *conn = Some(client.get_connection_with_timeout(Duration::from_millis(500))?);
    }
    let c = conn.as_mut().expect("connected");
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let r: redis::RedisResult<String> = redis::cmd("PING").query(c);
    if let Err(e) = r {
        *conn = None;
        return Err(e.into());
    }
    Ok(())
}

fn ping_postgres(url: &str, client: &mut Option<postgres::Client>) -> anyhow::Result<()> {
    if client.is_none() {
        let mut config: postgres::Config = url.parse()?;
        config.connect_timeout(Duration::from_millis(500));
        *client = Some(config.connect(postgres::NoTls)?);
    }
    let c = client.as_mut().expect("connected");
    if let Err(e) = c.simple_query("SELECT 1") {
        *client = None;
        return Err(e.into());
    }
    Ok(())
}

fn lag_client(cfg: &Config) -> Option<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", crate::kafka::group_of(cfg))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| tracing::warn!(error = %e, "no kafka client for consumer lag"))
        .ok()
}

/// Fills in the watermarks and the group's committed offsets of the assigned partitions.
fn offsets(consumer: &BaseConsumer, shared: &Shared) {
    let assigned: Vec<(String, i32)> = shared
        .status
        .partitions
        .lock()
        .expect("status")
        .keys()
        .cloned()
        .collect();
    if assigned.is_empty() {
        return;
    }
    let timeout = Duration::from_secs(2);
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &assigned {
        tpl.add_partition(t, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).ok();
    let mut found = Vec::new();
    for (t, p) in &assigned {
        let marks = consumer.fetch_watermarks(t, *p, timeout).ok();
        let c = committed
            .as_ref()
            .and_then(|tpl| tpl.find_partition(t, *p))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        found.push(((t.clone(), *p), marks, c));
    }
    let mut partitions = shared.status.partitions.lock().expect("status");
    for (key, marks, c) in found {
        if let Some(p) = partitions.get_mut(&key) {
            if let Some((low, high)) = marks {
                p.low_watermark = Some(low);
                p.high_watermark = Some(high);
            }
            if c.is_some() {
                p.committed = c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_every_source_is_assigned_and_again_while_draining() {
        let shared = Shared::default();
        shared.status.sources.store(2, Relaxed);
        shared.status.assigned.store(1, Relaxed);
        assert_eq!(not_ready(&shared), ["sources assigned: 1 of 2 workers"]);
        shared.status.assigned.store(2, Relaxed);
        assert!(not_ready(&shared).is_empty());
        shared.status.health.lock().unwrap().insert(
            "postgres",
            Health {
                up: false,
                checked_at_ms: 0,
                error: Some("connection refused".into()),
            },
        );
        assert_eq!(
            not_ready(&shared),
            ["postgres unreachable: connection refused"]
        );
        shared.status.health.lock().unwrap().clear();
        shared.drain.store(true, Relaxed);
        assert_eq!(not_ready(&shared), ["draining: stopping on SIGTERM"]);
    }
}
