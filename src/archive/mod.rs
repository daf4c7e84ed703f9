//! The archive: every record a worker consumes (valid or not) to Parquet files, laid out by
//! topic and event hour (`layout.rs`), on a local directory or S3 (`store.rs`).
//!
//! **Exactly once.** A worker buffers its records per partition and hour (`file.rs`) and
//! hands them to its writer thread (`writer.rs`) when the buffer is full or old, and at
//! every checkpoint pause: the checkpoint is saved only once they are written, so every
//! record before the offsets a checkpoint commits is in a file. Files never straddle a
//! checkpoint. A restart resumes from a checkpoint's offsets and first deletes the files of
//! its partitions past them (written after that checkpoint by a run that did not save the
//! next one), so the records it reads again are filed once.

pub mod file;
pub mod layout;
pub mod store;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::config::ArchiveConfig;
use crate::telemetry::{ARCHIVE_LAG, ARCHIVE_PENDING};
use file::{Chunk, RecordIn};
pub use store::{install_tls, open, Root};
use tidemark_dataflows::Tick;
pub use writer::{Progress, Writer};

/// One worker's buffered records and its writer.
pub struct WorkerArchive {
    /// By (the source's partition index, event hour).
    chunks: FxHashMap<(usize, i64), Chunk>,
    bytes: usize,
    records: u64,
    /// When the oldest buffered record was taken.
    oldest: Option<Instant>,
    max_bytes: usize,
    max_age: Duration,
    writer: Writer,
    lag: metrics::Gauge,
    prefix: object_store::path::Path,
    /// (job, worker, peers) when it marks its checkpoints' pauses.
    marks: Option<(String, usize, usize)>,
}

impl WorkerArchive {
    /// Starts the worker's writer and cleans up past `from` (the positions it reads from).
    /// With `marks` (job, peers) it marks each checkpoint's pause (see `batch::complete`),
    /// and first deletes its mark of the run before.
    pub fn start(
        cfg: &ArchiveConfig,
        root: Root,
        worker: usize,
        from: BTreeMap<(String, i32), i64>,
        marks: Option<(&str, usize)>,
    ) -> anyhow::Result<Self> {
        let prefix = root.prefix.clone();
        let writer = Writer::spawn(root, cfg.zstd_level, worker)?;
        let unmark = marks.map(|(job, _)| layout::mark_path(&prefix, job, worker));
        writer.resume(unmark, from)?;
        Ok(WorkerArchive {
            chunks: FxHashMap::default(),
            bytes: 0,
            records: 0,
            oldest: None,
            max_bytes: cfg.max_buffer_bytes,
            max_age: Duration::from_millis(cfg.max_buffer_age_ms),
            writer,
            lag: metrics::gauge!(ARCHIVE_LAG, "worker" => worker.to_string()),
            prefix,
            marks: marks.map(|(job, peers)| (job.to_string(), worker, peers)),
        })
    }

    /// What the checkpointer waits on.
    pub fn progress(&self) -> Arc<Progress> {
        self.writer.progress.clone()
    }

    /// Buffers a record the dataflow took from partition `lane` (`topic`/`partition`).
    pub fn take<'h>(
        &mut self,
        lane: usize,
        topic: &str,
        partition: i32,
        r: RecordIn<'_>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let hour = layout::hour_of(r.event_ms);
        let chunk = self
            .chunks
            .entry((lane, hour))
            .or_insert_with(|| Chunk::new(topic.into(), partition, hour));
        let before = chunk.bytes;
        chunk.push(r, headers);
        self.bytes += chunk.bytes - before;
        self.records += 1;
        self.oldest.get_or_insert_with(Instant::now);
        if self.bytes >= self.max_bytes {
            self.cut();
        }
    }

    /// Hands every buffered record to the writer (a checkpoint pause, a full or old buffer).
    pub fn cut(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        metrics::gauge!(ARCHIVE_PENDING).increment(self.records as f64);
        let mut chunks: Vec<Chunk> = self.chunks.drain().map(|(_, c)| c).collect();
        chunks.sort_by_key(|c| (c.topic.clone(), c.partition, c.hour_ms));
        self.writer.write(chunks);
        (self.bytes, self.records, self.oldest) = (0, 0, None);
    }

    /// Cuts the buffers and then marks that everything this worker read before a
    /// checkpoint's pause at `tick` is archived (see `batch::complete`).
    pub fn mark(&mut self, tick: Tick, ended: bool) {
        self.cut();
        let Some((job, worker, peers)) = &self.marks else {
            return;
        };
        let (worker, peers) = (*worker, *peers);
        let path = layout::mark_path(&self.prefix, job, worker);
        let body = serde_json::json!({
            "tick": tick,
            "worker": worker,
            "peers": peers,
            "ended": ended,
            "written_ms": crate::clock::now_ms(),
        });
        self.writer.mark(path, body.to_string().into_bytes());
    }

    /// Whether the writer is behind by more than two buffers: the source stops reading
    /// until it catches up (a slow or refusing store then bounds memory instead of
    /// growing it).
    pub fn behind(&self) -> bool {
        let queued = self
            .writer
            .progress
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        queued > 2 * self.max_bytes
    }

    /// Cuts an old buffer; publishes how long the oldest record has waited.
    pub fn tend(&mut self) {
        let age = self.oldest.map_or(Duration::ZERO, |t| t.elapsed());
        self.lag.set(age.as_secs_f64());
        if age >= self.max_age {
            self.cut();
        }
    }
}

/// A source stopping writes what it still holds (the demo's last records; after a Kafka
/// run's last checkpoint nothing is left, and what a failed run leaves is cleaned up by the
/// restart).
impl Drop for WorkerArchive {
    fn drop(&mut self) {
        self.cut();
        if let Err(e) = self.writer.progress.wait_written(Duration::from_secs(10)) {
            tracing::warn!(error = %format!("{e:#}"), "the archive's last records are not written");
        }
    }
}
