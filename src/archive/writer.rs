//! A worker's archive writer thread: encodes the chunks it is handed and puts them in the
//! store, in order, and tells the checkpointer how far it got.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use object_store::ObjectStoreExt;

use super::file::Chunk;
use super::layout::file_path;
use super::store::{resume, Root};
use crate::telemetry::{ARCHIVE_BYTES, ARCHIVE_FILES, ARCHIVE_FLUSH, ARCHIVE_PENDING};

/// How far a writer got: the checkpoint is saved only once every chunk handed to it
/// before is in the store (its offsets are then safe to commit).
#[derive(Debug, Default)]
pub struct Progress {
    /// (jobs handed over, jobs written)
    counts: Mutex<(u64, u64)>,
    moved: Condvar,
    /// The last failed put, until a put succeeds again.
    pub error: Mutex<Option<String>>,
    /// Bytes handed over and not yet written: the source stops reading past a bound.
    pub queued_bytes: std::sync::atomic::AtomicUsize,
}

impl Progress {
    /// Waits until every job handed over so far is written.
    pub fn wait_written(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut counts = self.counts.lock().expect("archive progress");
        let target = counts.0;
        while counts.1 < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let error = self.error.lock().expect("archive error").clone();
                bail!(
                    "{} of {} archive flushes written after {:?}{}",
                    counts.1,
                    target,
                    within,
                    error
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                );
            }
            counts = self
                .moved
                .wait_timeout(counts, left)
                .expect("archive progress")
                .0;
        }
        Ok(())
    }
}

enum Job {
    /// Delete the mark (if any), clean up past these positions, then answer.
    Resume(
        Option<object_store::path::Path>,
        BTreeMap<(String, i32), i64>,
        Sender<anyhow::Result<()>>,
    ),
    Write(Vec<Chunk>),
    /// A small file written after every job before it (`complete`'s marks).
    Mark(object_store::path::Path, bytes::Bytes),
}

/// The worker's side of its writer thread.
pub struct Writer {
    to: Sender<Job>,
    pub progress: Arc<Progress>,
}

impl Writer {
    pub fn spawn(root: Root, level: i32, worker: usize) -> anyhow::Result<Writer> {
        let (to, jobs) = channel::<Job>();
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        std::thread::Builder::new()
            .name(format!("archive-{worker}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the archive writer");
                for job in jobs {
                    match job {
                        Job::Resume(unmark, from, answer) => {
                            let done = rt.block_on(async {
                                if let Some(mark) = &unmark {
                                    match root.store.delete(mark).await {
                                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                                        Err(e) => return Err(e.into()),
                                    }
                                }
                                resume(&root, &from, level).await
                            });
                            if let Some((deleted, cut)) =
                                done.as_ref().ok().filter(|(d, c)| d + c > 0)
                            {
                                tracing::info!(
                                    worker,
                                    deleted,
                                    cut,
                                    "archive files past the resumed positions cleaned up"
                                );
                            }
                            let _ = answer.send(done.map(|_| ()));
                        }
                        Job::Mark(path, body) => {
                            put_retrying(&rt, &root, &path, body, &p);
                            let mut counts = p.counts.lock().expect("archive progress");
                            counts.1 += 1;
                            p.moved.notify_all();
                        }
                        Job::Write(chunks) => {
                            write(&rt, &root, level, chunks, &p);
                            let mut counts = p.counts.lock().expect("archive progress");
                            counts.1 += 1;
                            p.moved.notify_all();
                        }
                    }
                }
            })
            .context("starting the archive writer")?;
        Ok(Writer { to, progress })
    }

    /// Cleans up the files past `from` before the source reads from there.
    /// A restart first deletes its mark (`unmark`): the files past its positions that go
    /// next may be ones the mark counted (written after a checkpoint that was not saved).
    pub fn resume(
        &self,
        unmark: Option<object_store::path::Path>,
        from: BTreeMap<(String, i32), i64>,
    ) -> anyhow::Result<()> {
        let (answer, answered) = channel();
        self.to
            .send(Job::Resume(unmark, from, answer))
            .context("the archive writer stopped")?;
        answered.recv().context("the archive writer stopped")?
    }

    /// Hands over a mark, written once every chunk handed over before is.
    pub fn mark(&self, path: object_store::path::Path, body: Vec<u8>) {
        self.progress.counts.lock().expect("archive progress").0 += 1;
        let _ = self.to.send(Job::Mark(path, body.into()));
    }

    /// Hands over chunks to write; the checkpointer waits for them.
    pub fn write(&self, chunks: Vec<Chunk>) {
        if chunks.is_empty() {
            return;
        }
        let bytes: usize = chunks.iter().map(|c| c.bytes).sum();
        self.progress
            .queued_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.progress.counts.lock().expect("archive progress").0 += 1;
        // the thread ends only with the process (a panic there ends the process)
        let _ = self.to.send(Job::Write(chunks));
    }
}

/// Writes each chunk as one file, retrying a failed put until it succeeds: a record the
/// archive lost could not be read again once its offsets are committed, and the
/// checkpoint that would commit them waits for this (it fails, and is retried, meanwhile).
fn write(
    rt: &tokio::runtime::Runtime,
    root: &Root,
    level: i32,
    chunks: Vec<Chunk>,
    progress: &Progress,
) {
    let started = Instant::now();
    for chunk in chunks {
        let (first, last) = chunk.offsets();
        let path = file_path(
            &root.prefix,
            &chunk.topic,
            chunk.hour_ms,
            chunk.partition,
            first,
            last,
        );
        let (records, held) = (chunk.len(), chunk.bytes);
        let bytes = bytes::Bytes::from(chunk.encode(level).expect("an archive chunk encodes"));
        let size = bytes.len();
        put_retrying(rt, root, &path, bytes, progress);
        metrics::counter!(ARCHIVE_BYTES).increment(size as u64);
        metrics::counter!(ARCHIVE_FILES).increment(1);
        metrics::gauge!(ARCHIVE_PENDING).decrement(records as f64);
        progress.queued_bytes.fetch_sub(held, Ordering::Relaxed);
        crate::crash::point("archive-written");
    }
    metrics::histogram!(ARCHIVE_FLUSH).record(started.elapsed().as_secs_f64());
}

/// Puts `bytes` at `path`, retrying with backoff until the store takes it.
fn put_retrying(
    rt: &tokio::runtime::Runtime,
    root: &Root,
    path: &object_store::path::Path,
    bytes: bytes::Bytes,
    progress: &Progress,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match rt.block_on(root.store.put(path, bytes.clone().into())) {
            Ok(_) => break,
            Err(e) => {
                let e = format!("writing {path} to archive.root = {:?}: {e}", root.name);
                tracing::warn!(error = %e, "archive write failed; retrying");
                metrics::counter!(crate::telemetry::ARCHIVE_FAILURES).increment(1);
                *progress.error.lock().expect("archive error") = Some(e);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    *progress.error.lock().expect("archive error") = None;
}
