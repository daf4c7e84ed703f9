//! Checkpoints (DESIGN §4): every `checkpoint.interval_ms` each worker pauses its source,
//! snapshots its dataflow's state with the source's positions, and saves it once every
//! sink durably holds the snapshot's tick and the DLQ has every record before it. Only
//! then are the positions committed to the consumer group.
//!
//! A checkpoint is complete when all its workers saved their part; a restart resumes from
//! the newest complete one, on any number of workers (the state is redistributed).

mod checkpointer;
mod dir;
mod table;

pub use checkpointer::Checkpointer;
pub use dir::Dir;
pub use table::Table;

use anyhow::{bail, Context};
use tidemark_dataflows::contract::state::{Restore, WorkerSnapshot, FORMAT};
use tidemark_dataflows::Tick;

use sha2::{Digest, Sha256};

use crate::config::group_of;
use crate::config::{CheckpointBackend, Config};

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
    let group = group_of(cfg);
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
