//! What an operator sees: Prometheus metrics, the `/status` document and readiness.
//!
//! Hot paths (sources, writers) record into `metrics` handles or into the engine's own
//! atomics; everything else is read from [`Status`] when `/metrics` or `/status` is asked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tidemark_dataflows::Tick;

use crate::clock::now_ms;

pub mod quality;

pub const CONSUMED: &str = "tidemark_events_consumed_total";
pub const FRESHNESS: &str = "tidemark_freshness_seconds";
pub const SINK_WRITE: &str = "tidemark_sink_write_duration_seconds";
pub const CHECKPOINT: &str = "tidemark_checkpoint_duration_seconds";
pub const DLQ: &str = "tidemark_dlq_records_total";
pub const ARCHIVE_BYTES: &str = "tidemark_archive_bytes_total";
pub const ARCHIVE_FILES: &str = "tidemark_archive_files_total";
pub const ARCHIVE_FLUSH: &str = "tidemark_archive_flush_duration_seconds";
pub const ARCHIVE_PENDING: &str = "tidemark_archive_pending_records";
pub const ARCHIVE_LAG: &str = "tidemark_archive_lag_seconds";
pub const ARCHIVE_FAILURES: &str = "tidemark_archive_write_failures_total";
pub const BUILD_INFO: &str = "tidemark_build_info";
/// The quality webhook's messages, per result.
pub const ALERTS: &str = "tidemark_quality_alerts_total";
/// The batch scheduler's failed passes.
pub const BATCH_FAILURES: &str = "tidemark_batch_failures_total";
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
        process().describe();
        gauge!(
            BUILD_INFO,
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => env!("TIDEMARK_COMMIT")
        )
        .set(1.0);
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

/// The standard `process_*` metrics (CPU seconds, resident and virtual memory, open and
/// maximum file descriptors, threads, start time), read from `/proc` at each scrape.
pub fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Every counter at 0 before anything happened, with the labels it will have (the
/// topics read, the expectations checked), so that a rule on it sees a series from the
/// first scrape; the sinks' and the invalid reasons' counters are set at each scrape.
pub fn zeros(topics: &[String], expectations: &[String]) {
    for topic in topics {
        counter!(CONSUMED, "topic" => topic.clone()).increment(0);
    }
    for name in expectations {
        counter!(quality::FAILURES, "expectation" => name.clone()).increment(0);
    }
    for result in ["sent", "retried", "failed", "dropped"] {
        counter!(ALERTS, "result" => result).increment(0);
    }
    for name in [
        DLQ,
        "tidemark_dlq_failed_total",
        "tidemark_dlq_refused_total",
        "tidemark_checkpoints_total",
        "tidemark_checkpoint_failures_total",
        ARCHIVE_BYTES,
        ARCHIVE_FILES,
        ARCHIVE_FAILURES,
        BATCH_FAILURES,
    ] {
        counter!(name).increment(0);
    }
}

/// Long: one declaration per metric, the list an operator reads.
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
        ARCHIVE_BYTES,
        Unit::Bytes,
        "Parquet bytes the archive wrote."
    );
    describe_counter!(ARCHIVE_FILES, "Parquet files the archive wrote.");
    describe_histogram!(
        ARCHIVE_FLUSH,
        Unit::Seconds,
        "Time to encode and store one flush of a worker's buffered records."
    );
    describe_gauge!(
        ARCHIVE_PENDING,
        "Records handed to the archive writers and not yet in a file."
    );
    describe_gauge!(
        ARCHIVE_LAG,
        Unit::Seconds,
        "Per worker, how long its oldest buffered record has waited to be handed to the writer."
    );
    describe_counter!(
        ARCHIVE_FAILURES,
        "Archive file writes that failed (each is retried; no checkpoint is saved past them)."
    );
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
    describe_counter!(
        quality::FAILURES,
        "Failed observations of each expectation (records, values, or failing hours of an aggregate check), as its hours' report rows grew."
    );
    describe_gauge!(
        quality::PASSED,
        "1 when the newest hour of each expectation passes, else 0."
    );
    describe_gauge!(
        "tidemark_ready",
        "1 when /readyz answers 200: sources assigned, sinks reachable, not draining."
    );
    describe_counter!(
        "tidemark_records_held_back_total",
        "Offers of a record that waited for the slowest partition (partition alignment)."
    );
    describe_counter!(
        ALERTS,
        "Data-quality webhook messages per result: sent, retried, failed (given up), dropped (queue full)."
    );
    describe_counter!(
        BATCH_FAILURES,
        "Scheduled batch passes that failed (the next one tries again)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1: the running binary's version and the commit it was built from."
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
    /// The expectations' hourly report (`[quality]`).
    pub report: quality::QualityReport,
    /// (when, records consumed): samples for the rate.
    rate: Mutex<VecDeque<(Instant, u64)>>,
    pub started_ms: AtomicU64,
    /// What start-up waits for (a service not reachable yet); `None` once started.
    pub starting: Mutex<Option<String>>,
    /// The DLQ producer's deliveries, once it exists.
    pub dlq: OnceLock<Arc<dyn DeliveryHealth>>,
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

    pub fn sample_rate(&self, consumed: u64) {
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

/// Resident set size of this process (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// How a Kafka producer's deliveries stand, as `/status` and `/readyz` report them.
pub trait DeliveryHealth: Send + Sync {
    /// Records whose delivery failed (the topic took none of them).
    fn failed(&self) -> u64;
    /// Records Kafka refused for good (too large, invalid).
    fn refused(&self) -> u64;
    /// Epoch ms of the first failed delivery not dealt with (0: none).
    fn failing_since(&self) -> u64;
}

/// Freshness samples: Kafka append time → the tick durable in every sink (ms).
#[derive(Default)]
pub struct Freshness {
    pub histogram: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Freshness {
    pub fn record(&self, samples: &[i64], now: i64) {
        let mut h = self.histogram.lock().expect("freshness lock");
        let h = h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds")
        });
        for a in samples {
            let _ = h.record((now - a).max(1) as u64);
        }
    }
}

/// An entity update a store can never take, whatever is retried (a key its encoding
/// refuses, a row over its size limit, a key of another type): reported and passed over.
#[derive(Clone, Debug, PartialEq)]
pub struct Unstorable {
    /// The entity as the store names it (`feat:doc:…`, `feat_doc(…)`, `topic|key`).
    pub entity: String,
    pub tick: Tick,
    pub error: String,
}

/// Counters of one sink, shared by the workers of a process.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub writes: AtomicU64,
    /// Entities written: an entity a pack of ticks changes more than once counts once.
    pub entity_updates: AtomicU64,
    pub failures: AtomicU64,
    /// Entity rows of writes that failed (and were retried).
    pub failed_updates: AtomicU64,
    /// When (epoch ms) and why the last write failed.
    pub last_error: Mutex<Option<(u64, String)>>,
    /// Epoch ms since which writes fail (0: the last write succeeded).
    pub failing_since: AtomicU64,
    /// Epoch ms the write in flight started (0: none is): a store that stopped answering
    /// shows here before any error does.
    pub writing_since: AtomicU64,
    /// Entity updates the store can never take, reported and passed over.
    pub rejected: AtomicU64,
    pub last_rejected: Mutex<Option<Unstorable>>,
    /// An error retrying cannot fix ([`crate::permanent`]): the writer stopped, and the
    /// workers end the run with it.
    pub fatal: Mutex<Option<String>>,
}
