//! Checkpoints as files: `{dir}/{job}/{group}/{tick}/{peers}-{worker}.bin`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tidemark_dataflows::contract::state::{Restore, WorkerSnapshot};
use tidemark_dataflows::Tick;

use super::*;

/// Files `{dir}/{job}/{group}/{tick}/{peers}-{worker}.bin`, each written whole (temporary
/// file, fsync, rename).
pub struct Dir {
    pub(super) root: PathBuf,
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
    pub(super) fn complete(&self) -> anyhow::Result<Vec<(Tick, Vec<PathBuf>)>> {
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
