//! Whether the archive holds every record a batch up to `to` needs.
//!
//! At each checkpoint's pause, a `run` worker with `[archive]` on writes
//! `_marks/{job}/worker-{w}.json` after every file of what it read before the pause:
//! `{tick, worker, peers, ended}`. The archive is complete to the least tick of one set of
//! marks (all workers of one worker count). A partition still being read is at most
//! `ingest.max_partition_skew_ms` behind the others (alignment), so its records of
//! stream time up to `to` are all in once that tick is past `to` plus the skew; an `--exit-at-end`
//! run that read its topics to the end (`ended`) completes everything up to its last tick.
//!
//! Not covered: a partition that fell idle and later receives a record with an old event
//! time (it no longer holds the others back, online either); `--assume-complete` skips the
//! check (an archive copied from elsewhere, or written by `demo`, has no marks).

use std::collections::BTreeMap;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Deserialize;
use tidemark_dataflows::Tick;

use crate::config::Config;

#[derive(Clone, Debug, Deserialize)]
struct Mark {
    tick: Tick,
    worker: usize,
    peers: usize,
    ended: bool,
    written_ms: u64,
}

/// `Ok(Ok(()))` when the archive covers `to`, `Ok(Err(why))` when not yet.
pub fn covers(cfg: &Config, to: Tick) -> anyhow::Result<Result<(), String>> {
    Ok(judge(&marks(cfg)?, to, cfg.ingest.max_partition_skew_ms))
}

/// The last instant the archive covers, if its marks tell one.
pub fn covered(cfg: &Config) -> anyhow::Result<Option<Tick>> {
    Ok(reach(&marks(cfg)?, cfg.ingest.max_partition_skew_ms)
        .ok()
        .map(|(t, _, _)| t))
}

fn marks(cfg: &Config) -> anyhow::Result<Vec<Mark>> {
    let root = crate::archive::open(&cfg.archive)?;
    let dir = root.prefix.clone().join("_marks").join(cfg.job.as_str());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listed: Vec<_> = root.store.list(Some(&dir)).try_collect().await?;
        let mut marks = Vec::new();
        for m in listed {
            let body = root.store.get(&m.location).await?.bytes().await?;
            match serde_json::from_slice::<Mark>(&body) {
                Ok(mark) => marks.push(mark),
                Err(e) => tracing::warn!(mark = %m.location, error = %e, "an unreadable archive mark is ignored"),
            }
        }
        anyhow::Ok(marks)
    })
    .with_context(|| format!("reading {dir} in archive.root = {:?}", cfg.archive.root))
}

/// How far the newest whole set of marks covers: (instant, its checkpoint's tick, ended).
fn reach(marks: &[Mark], skew: u64) -> Result<(Tick, Tick, bool), String> {
    let mut sets: BTreeMap<usize, Vec<&Mark>> = BTreeMap::new();
    for m in marks.iter().filter(|m| m.worker < m.peers) {
        sets.entry(m.peers).or_default().push(m);
    }
    let newest = sets
        .into_iter()
        .filter(|(peers, ms)| ms.len() == *peers)
        .max_by_key(|(_, ms)| ms.iter().map(|m| m.written_ms).min());
    let Some((_, set)) = newest else {
        return Err("the archive holds no marks of this job (archive.root, job): no `run` with [archive] on has checkpointed into it; --assume-complete reads it as it is".into());
    };
    let tick = set.iter().map(|m| m.tick).min().unwrap_or(0);
    let ended = set.iter().all(|m| m.ended);
    // a partition still being read may yet give a record at exactly `tick - skew`
    let covered = if ended {
        tick
    } else {
        tick.saturating_sub(skew + 1)
    };
    Ok((covered, tick, ended))
}

/// Whether the marks cover `to`, else why not.
fn judge(marks: &[Mark], to: Tick, skew: u64) -> Result<(), String> {
    let (covered, tick, ended) = reach(marks, skew)?;
    if to <= covered {
        return Ok(());
    }
    Err(match ended {
        true => format!("the archive ends at {tick} (an --exit-at-end run read its topics to the end there), before --to {to}"),
        false => format!("the archive is complete to {covered} (its last checkpoint at {tick}, less ingest.max_partition_skew_ms = {skew}), before --to {to}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(worker: usize, peers: usize, tick: Tick, ended: bool, written_ms: u64) -> Mark {
        Mark {
            tick,
            worker,
            peers,
            ended,
            written_ms,
        }
    }

    #[test]
    fn the_newest_whole_set_of_marks_decides() {
        assert!(judge(&[], 10, 0).is_err());
        // two workers, one a checkpoint behind: the least tick counts
        let two = [mark(0, 2, 1_000, false, 5), mark(1, 2, 900, false, 5)];
        assert!(judge(&two, 799, 100).is_ok());
        assert!(judge(&two, 800, 100).is_err());
        // a set missing a worker is not whole
        assert!(judge(&two[..1], 100, 0).is_err());
        // an ended run covers up to its last tick, not past it
        let ended = [mark(0, 1, 1_000, true, 9)];
        assert!(judge(&ended, 1_000, 100).is_ok());
        assert!(judge(&ended, 1_001, 100).is_err());
        // a later run on one worker replaces the set of two
        let both = [two[0].clone(), two[1].clone(), mark(0, 1, 500, false, 20)];
        assert!(judge(&both, 399, 100).is_ok());
        assert!(judge(&both, 400, 100).is_err());
    }
}
