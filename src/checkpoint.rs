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

use sha2::{Digest, Sha256};

use crate::config::{CheckpointBackend, Config};
use crate::kafka::{self, Ledger};
use crate::telemetry::Status;

/// Where checkpoints are kept.
pub trait Backend: Send {
    fn save(&mut self, part: &WorkerSnapshot) -> anyhow::Result<()>;
    /// The newest checkpoint every one of whose workers saved its part.
    fn latest(&mut self) -> anyhow::Result<Option<Restore>>;
    /// Drops this worker's parts of checkpoints older than the two newest complete ones.
    fn prune(&mut self, worker: usize) -> anyhow::Result<()>;
    /// At start: removes what saves that never finished left behind.
    fn clean(&mut self) {}
    /// Moves a checkpoint that failed verification out of the way (kept for inspection),
    /// so it is never counted among the two that pruning keeps.
    fn set_aside(&mut self, _tick: Tick) -> anyhow::Result<()> {
        Ok(())
    }
    /// The checkpoints newer than the one [`Backend::latest`] found that failed
    /// verification.
    fn damaged(&self) -> Vec<Tick> {
        Vec::new()
    }
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

/// A part's framing: this magic, the payload's length (u64, little-endian) and its
/// SHA-256, then the payload (the bincode of a [`WorkerSnapshot`]).
const MAGIC: &[u8; 8] = b"TMCKPT02";
const HEADER: usize = 8 + 8 + 32;

fn encode(part: &WorkerSnapshot) -> anyhow::Result<Vec<u8>> {
    let payload = bincode::serialize(part).context("encoding a checkpoint")?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Where a part was found: the checkpoint's tick, and the peer count and worker its name
/// or row says. The part's checksummed content says the same, or it is refused (a part
/// copied or moved into another checkpoint).
struct Place {
    tick: Tick,
    peers: usize,
    worker: usize,
}

/// A part, verified: framing, length and checksum first, then its content, then that
/// it is the part its place says.
fn decode(bytes: &[u8], what: &dyn std::fmt::Display, at: Place) -> anyhow::Result<WorkerSnapshot> {
    let part = decode_framed(bytes, what)?;
    if (part.tick, part.peers, part.worker) != (at.tick, at.peers, at.worker) {
        bail!(
            "checkpoint part {what} holds the part of tick {}, worker {} of {} where its place says tick {}, worker {} of {}: it was moved or copied",
            part.tick, part.worker, part.peers, at.tick, at.worker, at.peers
        );
    }
    Ok(part)
}

fn decode_framed(bytes: &[u8], what: &dyn std::fmt::Display) -> anyhow::Result<WorkerSnapshot> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        bail!("checkpoint part {what} is not a checkpoint of this version (no {} header): it is corrupt, or written by another version", String::from_utf8_lossy(MAGIC));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        bail!(
            "checkpoint part {what} is truncated or padded: {} bytes where its header says {len}",
            payload.len()
        );
    }
    if Sha256::digest(payload)[..] != bytes[16..HEADER] {
        bail!("checkpoint part {what} is corrupt: its SHA-256 does not match its content");
    }
    let part: WorkerSnapshot =
        bincode::deserialize(payload).with_context(|| format!("reading checkpoint {what}"))?;
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
    damaged: Vec<Tick>,
}

impl Dir {
    pub fn open(dir: &Path, job: &str, group: &str) -> anyhow::Result<Self> {
        let root = dir.join(job).join(group);
        std::fs::create_dir_all(&root).with_context(|| {
            format!(
                "creating the checkpoint directory {} (checkpoint.dir): is it writable?",
                root.display()
            )
        })?;
        Ok(Dir {
            root,
            damaged: Vec::new(),
        })
    }

    /// Removes the temporary files a save that never finished left (a crash, a full
    /// disk). Only at start: no checkpoint of the job is being saved then.
    fn remove_unfinished(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(files) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if part_of(&path).is_some_and(|(_, _, whole)| !whole) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), "removed a checkpoint part a save left unfinished")
                        }
                        Err(e) => {
                            tracing::warn!(file = %path.display(), error = %e, "could not remove an unfinished checkpoint part")
                        }
                    }
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
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
    fn clean(&mut self) {
        self.remove_unfinished();
    }

    fn save(&mut self, part: &WorkerSnapshot) -> anyhow::Result<()> {
        let dir = self.root.join(part.tick.to_string());
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating {} (checkpoint.dir): is it writable?",
                dir.display()
            )
        })?;
        let path = dir.join(format!("{}-{}.bin", part.peers, part.worker));
        let tmp = path.with_extension("tmp");
        let bytes = encode(part)?;
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if let Err(e) = written {
            // a part half written (a full disk) is not left behind
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| {
                format!(
                    "saving checkpoint part {} ({} bytes): is the disk full or the directory not writable? (checkpoint.dir)",
                    path.display(),
                    bytes.len()
                )
            });
        }
        Ok(())
    }

    fn latest(&mut self) -> anyhow::Result<Option<Restore>> {
        let complete = self.complete()?;
        let ticks: Vec<Tick> = complete.iter().map(|(t, _)| *t).collect();
        self.damaged.clear();
        newest_valid(ticks, &self.root.display(), &mut self.damaged, |tick| {
            let (_, files) = complete.iter().find(|(t, _)| *t == tick).expect("listed");
            files
                .iter()
                .map(|f| {
                    let bytes =
                        std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                    let (peers, worker, _) = part_of(f).expect("listed as a part");
                    decode(
                        &bytes,
                        &f.display(),
                        Place {
                            tick,
                            peers,
                            worker,
                        },
                    )
                })
                .collect()
        })
    }

    fn set_aside(&mut self, tick: Tick) -> anyhow::Result<()> {
        let from = self.root.join(tick.to_string());
        let to = self.root.join(format!("damaged-{tick}"));
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        tracing::warn!(from = %from.display(), to = %to.display(), "a damaged checkpoint is set aside (remove it once inspected)");
        Ok(())
    }

    fn damaged(&self) -> Vec<Tick> {
        self.damaged.clone()
    }

    fn prune(&mut self, worker: usize) -> anyhow::Result<()> {
        // the two newest complete checkpoints stay: a restart falls back to the older
        // when a part of the newer is damaged
        let Some(&(newest, _)) = self.complete()?.get(1) else {
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
    damaged: Vec<Tick>,
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
            damaged: Vec::new(),
        })
    }

    /// The ticks of complete checkpoints, newest first.
    fn complete(&mut self) -> anyhow::Result<Vec<i64>> {
        let rows = self.client.query(
            "SELECT tick FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 \
             GROUP BY tick, peers HAVING count(*) = peers ORDER BY tick DESC",
            &[&self.job, &self.group],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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
        let ticks: Vec<Tick> = self.complete()?.into_iter().map(|t| t as Tick).collect();
        let (job, group) = (self.job.clone(), self.group.clone());
        let location = format!("table tidemark_checkpoints (job {job}, group {group})");
        let client = &mut self.client;
        self.damaged.clear();
        newest_valid(ticks, &location, &mut self.damaged, |tick| {
            let rows = client.query(
                "SELECT worker, peers, state FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 AND tick = $3 ORDER BY worker",
                &[&job, &group, &(tick as i64)],
            )?;
            rows.iter()
                .map(|r| {
                    let (worker, peers): (i32, i32) = (r.get(0), r.get(1));
                    let bytes: Vec<u8> = r.get(2);
                    let place = Place {
                        tick,
                        peers: peers as usize,
                        worker: worker as usize,
                    };
                    decode(
                        &bytes,
                        &format!("{tick} of worker {worker} in {location}"),
                        place,
                    )
                })
                .collect()
        })
    }

    fn set_aside(&mut self, tick: Tick) -> anyhow::Result<()> {
        // another group name keeps its rows (for inspection) out of this group's listing
        let moved = self.client.execute(
            "UPDATE tidemark_checkpoints SET grp = grp || '/damaged' WHERE job = $1 AND grp = $2 AND tick = $3",
            &[&self.job, &self.group, &(tick as i64)],
        )?;
        tracing::warn!(tick, rows = moved, job = %self.job, group = %format!("{}/damaged", self.group), "a damaged checkpoint is set aside in tidemark_checkpoints (delete it once inspected)");
        Ok(())
    }

    fn damaged(&self) -> Vec<Tick> {
        self.damaged.clone()
    }

    fn prune(&mut self, worker: usize) -> anyhow::Result<()> {
        // the two newest complete checkpoints stay (see `Dir::prune`)
        if let Some(&newest) = self.complete()?.get(1) {
            self.client.execute(
                "DELETE FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 AND worker = $3 AND tick < $4",
                &[&self.job, &self.group, &(worker as i32), &newest],
            )?;
        }
        Ok(())
    }
}

/// The newest of the `complete` checkpoints (their ticks, newest first) whose every part
/// `read` finds whole and valid. A damaged one is skipped with an error naming it;
/// when there are complete checkpoints but none is valid, start-up fails with the fix.
/// The ticks of the damaged ones newer than it go in `skipped`.
fn newest_valid(
    complete: Vec<Tick>,
    location: &dyn std::fmt::Display,
    skipped: &mut Vec<Tick>,
    mut read: impl FnMut(Tick) -> anyhow::Result<Vec<WorkerSnapshot>>,
) -> anyhow::Result<Option<Restore>> {
    let mut damaged: Vec<String> = Vec::new();
    for tick in complete {
        match read(tick) {
            Ok(mut parts) => {
                if !damaged.is_empty() {
                    tracing::warn!(tick, skipped = %damaged.join("; "), "resuming from an older checkpoint: the newer one cannot be read");
                }
                parts.sort_by_key(|p| p.worker);
                return Ok(Some(Restore { tick, parts }));
            }
            Err(e) => {
                tracing::error!(tick, error = %format!("{e:#}"), "a checkpoint cannot be read (damaged, or of another version): it is skipped; the restart falls back to the one before");
                damaged.push(format!("{e:#}"));
                skipped.push(tick);
            }
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    bail!(
        "no checkpoint in {location} is valid ({}): restore the files from a backup, or start over with a new group (--group-id) or after removing the checkpoints (the stores then hold features a replay from kafka.from rewrites)",
        damaged.join("; ")
    )
}

/// Loads the checkpoint to resume from, refusing one of another dataflow.
pub fn load(cfg: &Config, family: &str) -> anyhow::Result<Option<Restore>> {
    let mut backend = open(cfg)?;
    backend.clean();
    let Some(restore) = backend.latest()? else {
        return Ok(None);
    };
    // the damaged ones newer than the checkpoint resumed from go out of the way: once
    // newer checkpoints are saved, pruning must keep two valid ones, not count these
    for tick in backend.damaged() {
        if let Err(e) = backend.set_aside(tick) {
            tracing::warn!(tick, error = %format!("{e:#}"), "could not set a damaged checkpoint aside");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(tick: Tick, worker: usize, peers: usize) -> WorkerSnapshot {
        WorkerSnapshot {
            format: FORMAT,
            family: "search".into(),
            tick,
            worker,
            peers,
            stages: vec![("0:dedup".into(), vec![7; 1000])],
            positions: vec![("t".into(), 0, 42)],
        }
    }

    fn scratch(name: &str) -> Dir {
        let root =
            std::env::temp_dir().join(format!("tidemark-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Dir::open(&root, "job", "group").unwrap()
    }

    #[test]
    fn a_part_is_verified_before_it_is_read() {
        let at = || Place {
            tick: 5,
            peers: 1,
            worker: 0,
        };
        let bytes = encode(&part(5, 0, 1)).unwrap();
        assert_eq!(decode(&bytes, &"p", at()).unwrap().tick, 5);
        let mut flipped = bytes.clone();
        flipped[HEADER + 100..HEADER + 116].fill(0xff);
        let e = decode(&flipped, &"p", at()).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        let e = decode(&bytes[..bytes.len() - 10], &"p", at())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = decode(b"not a checkpoint at all, not at all", &"p", at())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a checkpoint"), "{e}");
        // a whole, valid part in another checkpoint's place
        let moved = Place {
            tick: 6,
            peers: 1,
            worker: 0,
        };
        let e = decode(&bytes, &"p", moved).unwrap_err().to_string();
        assert!(e.contains("moved or copied"), "{e}");
    }

    #[test]
    fn a_damaged_checkpoint_is_set_aside_so_pruning_keeps_two_valid_ones() {
        let mut dir = scratch("aside");
        for tick in [10, 20] {
            dir.save(&part(tick, 0, 1)).unwrap();
        }
        // the newest part is a copy of the older one: whole, but not its checkpoint's
        std::fs::copy(dir.root.join("10/1-0.bin"), dir.root.join("20/1-0.bin")).unwrap();
        assert_eq!(dir.latest().unwrap().unwrap().tick, 10);
        assert_eq!(dir.damaged(), [20]);
        dir.set_aside(20).unwrap();
        assert!(dir.root.join("damaged-20/1-0.bin").exists());
        // two new checkpoints: the valid one at 10 is pruned only once two newer are kept
        dir.save(&part(30, 0, 1)).unwrap();
        dir.prune(0).unwrap();
        assert_eq!(dir.latest().unwrap().unwrap().tick, 30);
        assert!(
            dir.root.join("10/1-0.bin").exists(),
            "10 is one of the two valid ones"
        );
        dir.save(&part(40, 0, 1)).unwrap();
        dir.prune(0).unwrap();
        let ticks: Vec<Tick> = dir.complete().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(ticks, [40, 30]);
        assert!(
            dir.root.join("damaged-20/1-0.bin").exists(),
            "kept for inspection"
        );
    }

    #[test]
    fn a_damaged_checkpoint_falls_back_to_the_one_before_and_two_are_kept() {
        let mut dir = scratch("fallback");
        for tick in [10, 20, 30] {
            for w in 0..2 {
                dir.save(&part(tick, w, 2)).unwrap();
            }
            dir.prune(0).unwrap();
            dir.prune(1).unwrap();
        }
        let ticks: Vec<Tick> = dir.complete().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(ticks, [30, 20], "the two newest complete checkpoints stay");
        assert_eq!(dir.latest().unwrap().unwrap().tick, 30);
        let newest = dir.root.join("30").join("2-1.bin");
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes[200..216].fill(0xff);
        std::fs::write(&newest, &bytes).unwrap();
        let restore = dir.latest().unwrap().unwrap();
        assert_eq!((restore.tick, restore.parts.len()), (20, 2));
        // both damaged: an error naming the file and the fix, no silent fresh start
        let older = dir.root.join("20").join("2-0.bin");
        let bytes = std::fs::read(&older).unwrap();
        std::fs::write(&older, &bytes[..bytes.len() / 2]).unwrap();
        let e = format!("{:#}", dir.latest().unwrap_err());
        assert!(e.contains("2-1.bin") && e.contains("2-0.bin"), "{e}");
        assert!(e.contains("--group-id"), "{e}");
    }

    #[test]
    fn a_full_disk_names_the_part_and_leaves_no_temporary_file() {
        let mut dir = scratch("full");
        let at = dir.root.join("5");
        std::fs::create_dir_all(&at).unwrap();
        // writes to /dev/full fail with ENOSPC, as on a full disk
        std::os::unix::fs::symlink("/dev/full", at.join("1-0.tmp")).unwrap();
        let e = format!("{:#}", dir.save(&part(5, 0, 1)).unwrap_err());
        assert!(e.contains("1-0.bin") && e.contains("disk full"), "{e}");
        assert!(!at.join("1-0.tmp").exists() && !at.join("1-0.bin").exists());
        // a save that never finished is cleaned at the next start
        std::fs::write(at.join("1-0.tmp"), b"half").unwrap();
        dir.clean();
        assert!(!at.join("1-0.tmp").exists());
        assert!(dir.latest().unwrap().is_none());
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_named() {
        let file = std::env::temp_dir().join(format!("tidemark-ckpt-file-{}", std::process::id()));
        std::fs::write(&file, b"a file, not a directory").unwrap();
        let e = format!("{:#}", Dir::open(&file, "job", "group").err().unwrap());
        assert!(
            e.contains(&file.display().to_string()) && e.contains("checkpoint.dir"),
            "{e}"
        );
    }
}
