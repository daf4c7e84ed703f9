//! One worker's side of checkpointing: asks for them, snapshots, saves, commits.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tidemark_dataflows::contract::state::{State, WorkerSnapshot};
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use super::*;
use crate::archive::Progress as ArchiveProgress;
use crate::config::Config;
use crate::sink::producer::Sender as Producer;
use crate::source::kafka::{Ledger, Position};
use crate::telemetry::Status;

/// One worker's side: asks for checkpoints, snapshots when the source is paused and the
/// dataflow drained, saves once durable, then hands the positions to the source to commit.
pub struct Checkpointer {
    state: State,
    family: String,
    ledger: Arc<Mutex<Ledger>>,
    interval: Duration,
    due: Instant,
    requested: bool,
    /// A snapshot waiting until every sink holds its tick.
    waiting: Option<WorkerSnapshot>,
    saving: Option<(Tick, Vec<Position>)>,
    to_saver: Sender<WorkerSnapshot>,
    from_saver: Receiver<anyhow::Result<Tick>>,
    saved: u64,
    /// Stopping: the snapshot taken last does not resume the source.
    pub draining: bool,
    drained_at: Option<Tick>,
    /// The last pause whose snapshot failed: not taken again.
    failed_at: Option<Tick>,
    status: Arc<Status>,
    /// When the checkpoint being taken was asked for.
    asked: Instant,
}

impl Checkpointer {
    pub fn new(
        cfg: &Config,
        state: State,
        family: &str,
        ledger: Arc<Mutex<Ledger>>,
        dlq: Option<Arc<Producer>>,
        archive: Option<Arc<ArchiveProgress>>,
        status: Arc<Status>,
    ) -> anyhow::Result<Self> {
        let mut backend = open(cfg)?;
        let (to_saver, jobs) = channel::<WorkerSnapshot>();
        let (done, from_saver) = channel();
        std::thread::Builder::new()
            .name(format!("checkpoint-{}", state.worker()))
            .spawn(move || {
                for part in jobs {
                    let result = (|| {
                        if let Some(dlq) = &dlq {
                            dlq.flush_within(Duration::from_secs(30))
                                .context("the DLQ has not got every invalid record: offsets are not committed")?;
                        }
                        if let Some(archive) = &archive {
                            archive
                                .wait_written(Duration::from_secs(30))
                                .context("the archive has not written every record: offsets are not committed")?;
                        }
                        backend.save(&part)?;
                        crate::crash::point("checkpoint-saved");
                        if let Err(e) = backend.prune(part.worker) {
                            tracing::warn!(error = %format!("{e:#}"), "pruning old checkpoints");
                        }
                        Ok(part.tick)
                    })();
                    if done.send(result).is_err() {
                        return;
                    }
                }
            })?;
        let interval = Duration::from_millis(cfg.checkpoint.interval_ms.max(1));
        Ok(Checkpointer {
            state,
            family: family.into(),
            ledger,
            interval,
            due: Instant::now() + interval,
            requested: false,
            waiting: None,
            saving: None,
            to_saver,
            from_saver,
            saved: 0,
            draining: false,
            drained_at: None,
            failed_at: None,
            status,
            asked: Instant::now(),
        })
    }

    /// Call between worker steps. `processed` passes a tick once the dataflow has taken in
    /// all of it; `durable` once every sink wrote it.
    pub fn step(&mut self, processed: &ProbeHandle<Tick>, durable: &ProbeHandle<Tick>) {
        let idle = self.waiting.is_none() && self.saving.is_none();
        let want = self.draining || Instant::now() >= self.due;
        if want && idle && !self.requested && self.drained_at.is_none() {
            if self.draining {
                self.state.request_last();
            } else {
                self.state.request();
            }
            self.requested = true;
            self.asked = Instant::now();
        }
        let taken = self.drained_at.is_some() || self.failed_at.is_some();
        if let Some(at) = self.state.paused_at().filter(|_| !taken) {
            if !processed.less_equal(&at) {
                self.snapshot(at);
            }
        }
        if let Some(part) = self.waiting.take_if(|p| !durable.less_equal(&p.tick)) {
            if self.saving.is_none() {
                self.saving = Some((part.tick, part.positions.clone()));
                let _ = self.to_saver.send(part);
            } else {
                self.waiting = Some(part);
            }
        }
        match self.from_saver.try_recv() {
            Ok(Ok(tick)) => {
                let (_, positions) = self.saving.take().expect("a checkpoint was being saved");
                self.saved += 1;
                self.status.checkpoint_saved(tick, self.asked.elapsed());
                let mut ledger = self.ledger.lock().expect("ledger");
                ledger.to_commit = Some((self.saved, positions));
                ledger.sync |= self.draining;
                tracing::debug!(worker = self.state.worker(), tick, "checkpoint saved");
            }
            Ok(Err(e)) => {
                self.saving = None;
                self.status.checkpoint_failed(format!("{e:#}"));
                tracing::error!(error = %format!("{e:#}"), "checkpoint not saved; offsets stay where they are");
            }
            Err(_) => {}
        }
    }

    fn snapshot(&mut self, at: Tick) {
        let started = Instant::now();
        let stages = match self.state.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed");
                self.status
                    .checkpoint_failed(format!("snapshot of tick {at}: {e}"));
                self.requested = false;
                self.due = Instant::now() + self.interval;
                if self.state.paused_last() {
                    // every peer took this pause as its last and stays paused, so this
                    // source may not go on alone (it would wait for their snapshots): the
                    // worker stops without its last checkpoint, which the drain deadline
                    // reports, and a restart resumes from the checkpoint before
                    self.draining = true;
                    self.failed_at = Some(at);
                } else {
                    self.state.resume();
                }
                return;
            }
        };
        crate::crash::point("snapshot");
        let positions = match self.ledger.lock().expect("ledger").paused.take() {
            Some((t, p)) if t == at => p,
            _ => Vec::new(),
        };
        // a newer snapshot replaces one still waiting for the sinks
        self.waiting = Some(WorkerSnapshot {
            format: FORMAT,
            family: self.family.clone(),
            tick: at,
            worker: self.state.worker(),
            peers: self.state.peers(),
            stages,
            positions,
        });
        self.requested = false;
        self.due = Instant::now() + self.interval;
        // whether this is the last is agreed with the tick: a worker that decided on its
        // own would stay paused while a peer resumed and asked for another pause
        if self.state.paused_last() {
            self.draining = true;
            self.drained_at = Some(at);
        } else {
            self.state.resume();
        }
        tracing::debug!(
            worker = self.state.worker(),
            tick = at,
            ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
    }

    /// Where the checkpoint being taken stands: what the error says when the last one is
    /// not saved in time.
    pub fn stage(&self) -> String {
        let ledger = self.ledger.lock().expect("ledger");
        format!(
            "requested {}, source paused at {:?}, snapshot of {:?}, waiting for the sinks: {:?}, \
             being saved: {:?}, saved {} (to commit {:?}, committed {})",
            self.requested,
            self.state.paused_at(),
            self.drained_at,
            self.waiting.as_ref().map(|w| w.tick),
            self.saving.as_ref().map(|s| s.0),
            self.saved,
            ledger.to_commit.as_ref().map(|(n, _)| *n),
            ledger.committed
        )
    }

    /// Stopping, a checkpoint taken after the stop began is saved and committed.
    pub fn drained(&self) -> bool {
        let ledger = self.ledger.lock().expect("ledger");
        self.drained_at.is_some()
            && self.waiting.is_none()
            && self.saving.is_none()
            && ledger
                .to_commit
                .as_ref()
                .is_some_and(|(n, _)| *n == self.saved)
            && ledger.committed == self.saved
    }
}
