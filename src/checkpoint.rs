//! Checkpoints (DESIGN §4): every `checkpoint.interval_ms` each worker pauses its source,
//! snapshots its dataflow's state with the source's positions, and saves it once every
//! sink durably holds the snapshot's tick and the DLQ has every record before it. Only
//! then are the positions committed to the consumer group.
//!
//! A checkpoint is complete when all its workers saved their part; a restart resumes from
//! the newest complete one, on any number of workers (the state is redistributed).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tidemark_dataflows::state::{Restore, State, WorkerSnapshot, FORMAT};
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::config::{CheckpointBackend, Config};
use crate::kafka::{self, Ledger};
use crate::telemetry::Status;

/// Where checkpoints are kept.
pub trait Backend: Send {
    fn save(&mut self, part: &WorkerSnapshot) -> anyhow::Result<()>;
    /// The newest checkpoint every one of whose workers saved its part.
    fn latest(&mut self) -> anyhow::Result<Option<Restore>>;
    /// Drops this worker's parts of checkpoints older than the newest complete one.
    fn prune(&mut self, worker: usize) -> anyhow::Result<()>;
}

/// The checkpoint store of `cfg`'s job and consumer group.
pub fn open(cfg: &Config) -> anyhow::Result<Box<dyn Backend>> {
    let group = kafka::group_of(cfg);
    Ok(match cfg.checkpoint.backend {
        CheckpointBackend::Dir => Box::new(Dir::open(&cfg.checkpoint.dir, &cfg.job, &group)?),
        CheckpointBackend::Postgres => {
            let Some(url) = &cfg.postgres.url else {
                bail!("checkpoint.backend = \"postgres\" needs postgres.url (TIDEMARK_PG)");
            };
            Box::new(Table::open(url, &cfg.job, &group)?)
        }
    })
}

fn encode(part: &WorkerSnapshot) -> anyhow::Result<Vec<u8>> {
    bincode::serialize(part).context("encoding a checkpoint")
}

fn decode(bytes: &[u8], what: &dyn std::fmt::Display) -> anyhow::Result<WorkerSnapshot> {
    let part: WorkerSnapshot =
        bincode::deserialize(bytes).with_context(|| format!("reading checkpoint {what}"))?;
    if part.format != FORMAT {
        bail!(
            "checkpoint {what} has format {} where this version reads {FORMAT}: \
             use a new group (--group-id) or remove the checkpoints to start over",
            part.format
        );
    }
    Ok(part)
}

/// Files `{dir}/{job}/{group}/{tick}/{peers}-{worker}.bin`, each written whole (temporary
/// file, fsync, rename).
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    pub fn open(dir: &Path, job: &str, group: &str) -> anyhow::Result<Self> {
        let root = dir.join(job).join(group);
        std::fs::create_dir_all(&root).with_context(|| {
            format!(
                "creating the checkpoint directory {} (checkpoint.dir)",
                root.display()
            )
        })?;
        Ok(Dir { root })
    }

    /// Complete checkpoints, newest first: (tick, their files).
    fn complete(&self) -> anyhow::Result<Vec<(Tick, Vec<PathBuf>)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(tick) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Tick>().ok())
            else {
                continue;
            };
            let mut by_peers: std::collections::BTreeMap<usize, Vec<PathBuf>> = Default::default();
            // a pruned checkpoint's directory may go meanwhile
            let Ok(files) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for f in files {
                let path = f?.path();
                if let Some((peers, _, true)) = part_of(&path) {
                    by_peers.entry(peers).or_default().push(path);
                }
            }
            if let Some((_, files)) = by_peers.into_iter().find(|(p, f)| f.len() == *p) {
                out.push((tick, files));
            }
        }
        out.sort_by_key(|(tick, _)| std::cmp::Reverse(*tick));
        Ok(out)
    }
}

/// A part's file `{peers}-{worker}.bin`, or `.tmp` while it is written: (peers, worker,
/// whether it is whole).
fn part_of(path: &Path) -> Option<(usize, usize, bool)> {
    let name = path.file_name()?.to_str()?;
    let (stem, whole) = match name.strip_suffix(".bin") {
        Some(stem) => (stem, true),
        None => (name.strip_suffix(".tmp")?, false),
    };
    let (peers, worker) = stem.split_once('-')?;
    Some((peers.parse().ok()?, worker.parse().ok()?, whole))
}

impl Backend for Dir {
    fn save(&mut self, part: &WorkerSnapshot) -> anyhow::Result<()> {
        let dir = self.root.join(part.tick.to_string());
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{}.bin", part.peers, part.worker));
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&encode(part)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    fn latest(&mut self) -> anyhow::Result<Option<Restore>> {
        let Some((tick, files)) = self.complete()?.into_iter().next() else {
            return Ok(None);
        };
        let mut parts = Vec::new();
        for f in files {
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            parts.push(decode(&bytes, &f.display())?);
        }
        parts.sort_by_key(|p| p.worker);
        Ok(Some(Restore { tick, parts }))
    }

    fn prune(&mut self, worker: usize) -> anyhow::Result<()> {
        let Some(&(newest, _)) = self.complete()?.first() else {
            return Ok(());
        };
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let older = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Tick>().ok())
                .is_some_and(|t| t < newest);
            if !older {
                continue;
            }
            // another worker may have removed it meanwhile
            let Ok(files) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for f in files {
                let path = f?.path();
                if part_of(&path).is_some_and(|(_, w, _)| w == worker) {
                    let _ = std::fs::remove_file(&path);
                }
            }
            // the last worker out removes the directory
            let _ = std::fs::remove_dir(entry.path());
        }
        Ok(())
    }
}

/// Rows of `tidemark_checkpoints (job, grp, tick, worker, peers, state)`.
pub struct Table {
    client: postgres::Client,
    job: String,
    group: String,
}

impl Table {
    pub fn open(url: &str, job: &str, group: &str) -> anyhow::Result<Self> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .context("connecting to postgres for checkpoints (postgres.url)")?;
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS tidemark_checkpoints (job text NOT NULL, grp text NOT NULL, \
             tick bigint NOT NULL, worker int NOT NULL, peers int NOT NULL, state bytea NOT NULL, \
             saved_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (job, grp, tick, worker))",
        )?;
        Ok(Table {
            client,
            job: job.into(),
            group: group.into(),
        })
    }

    fn newest_complete(&mut self) -> anyhow::Result<Option<i64>> {
        let row = self.client.query_opt(
            "SELECT tick FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 \
             GROUP BY tick, peers HAVING count(*) = peers ORDER BY tick DESC LIMIT 1",
            &[&self.job, &self.group],
        )?;
        Ok(row.map(|r| r.get(0)))
    }
}

impl Backend for Table {
    fn save(&mut self, part: &WorkerSnapshot) -> anyhow::Result<()> {
        let bytes = encode(part)?;
        self.client.execute(
            "INSERT INTO tidemark_checkpoints (job, grp, tick, worker, peers, state) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job, grp, tick, worker) \
             DO UPDATE SET peers = excluded.peers, state = excluded.state, saved_at = now()",
            &[
                &self.job,
                &self.group,
                &(part.tick as i64),
                &(part.worker as i32),
                &(part.peers as i32),
                &bytes,
            ],
        )?;
        Ok(())
    }

    fn latest(&mut self) -> anyhow::Result<Option<Restore>> {
        let Some(tick) = self.newest_complete()? else {
            return Ok(None);
        };
        let rows = self.client.query(
            "SELECT worker, state FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 AND tick = $3 ORDER BY worker",
            &[&self.job, &self.group, &tick],
        )?;
        let mut parts = Vec::new();
        for r in rows {
            let worker: i32 = r.get(0);
            let bytes: Vec<u8> = r.get(1);
            parts.push(decode(&bytes, &format!("{tick} of worker {worker}"))?);
        }
        Ok(Some(Restore {
            tick: tick as Tick,
            parts,
        }))
    }

    fn prune(&mut self, worker: usize) -> anyhow::Result<()> {
        if let Some(newest) = self.newest_complete()? {
            self.client.execute(
                "DELETE FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 AND worker = $3 AND tick < $4",
                &[&self.job, &self.group, &(worker as i32), &newest],
            )?;
        }
        Ok(())
    }
}

/// Loads the checkpoint to resume from, refusing one of another dataflow.
pub fn load(cfg: &Config, family: &str) -> anyhow::Result<Option<Restore>> {
    let Some(restore) = open(cfg)?.latest()? else {
        return Ok(None);
    };
    if let Some(p) = restore.parts.iter().find(|p| p.family != family) {
        bail!(
            "the checkpoint at tick {} is of dataflow '{}', not '{family}': \
             use another job name or group (--group-id)",
            restore.tick,
            p.family
        );
    }
    Ok(Some(restore))
}

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
    saving: Option<(Tick, Vec<kafka::Position>)>,
    to_saver: Sender<WorkerSnapshot>,
    from_saver: Receiver<anyhow::Result<Tick>>,
    saved: u64,
    /// Stopping: the snapshot taken last does not resume the source.
    pub draining: bool,
    drained_at: Option<Tick>,
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
        dlq: Option<Arc<kafka::Sender>>,
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
        if let Some(at) = self.state.paused_at().filter(|_| self.drained_at.is_none()) {
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
                self.state.resume();
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
