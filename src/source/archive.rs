//! The archive as a record source: `batch` and `training-set` feed the archived records
//! through the same decode and dataflow as `run`.
//!
//! Each partition's records are read in offset order, merging its files of every hour (a
//! file holds one hour's records of an offset range; ranges of different hours interleave).
//! A worker reads every `peers`-th partition and merges its partitions by their *stream time
//! at the record* — the largest event time in the partition up to and including it — which
//! is the order partition alignment reads them in, without its slack. So what goes in by a
//! time `B` is fixed by the events alone: every record whose partition's stream time is at
//! most `B`. A poll never crosses a boundary of `ArchivePlan::boundaries`, so the dataflow's
//! state at a boundary (every tick up to it) is exactly that.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tidemark_dataflows::contract::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::Tick;

use crate::archive::file::{columns, Columns};
use crate::archive::Root;

/// One archive file: where it is, its partition and offsets (from its name).
#[derive(Clone, Debug)]
pub struct ArchiveFile {
    pub path: Path,
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// What a replay of the archive reads, shared by its workers.
pub struct ArchivePlan {
    pub root: Root,
    /// Every file of the family's topics.
    pub files: Vec<ArchiveFile>,
    /// Nothing is read past this stream time, and the input ends at it.
    pub to: Tick,
    /// Sorted: no poll hands out records on both sides of one of these.
    pub boundaries: Vec<Tick>,
    /// What went wrong with files that were skipped, each naming its file.
    pub skipped: Mutex<Vec<String>>,
    /// Records read, and records found twice (in two files) and read once.
    pub read: std::sync::atomic::AtomicU64,
    pub doubled: std::sync::atomic::AtomicU64,
}

impl ArchivePlan {
    /// Lists the files of `topics` under `root`.
    pub fn list(
        root: Root,
        topics: &[String],
        to: Tick,
        boundaries: Vec<Tick>,
    ) -> anyhow::Result<Self> {
        let rt = runtime()?;
        let mut files = Vec::new();
        for t in topics {
            for (path, partition, first, last) in
                rt.block_on(crate::archive::store::files_of(&root, t))?
            {
                files.push(ArchiveFile {
                    path,
                    topic: t.clone(),
                    partition,
                    first,
                    last,
                });
            }
        }
        Ok(ArchivePlan {
            root,
            files,
            to,
            boundaries,
            skipped: Mutex::default(),
            read: Default::default(),
            doubled: Default::default(),
        })
    }

    /// The partitions archived, sorted: worker `w` of `peers` reads every `peers`-th.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        let mut p: Vec<_> = self
            .files
            .iter()
            .map(|f| (f.topic.clone(), f.partition))
            .collect();
        p.sort();
        p.dedup();
        p
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the archive reader's runtime")
}

/// An open file and its next record.
struct Cursor {
    columns: Columns,
    next: usize,
}

impl Cursor {
    fn offset(&self) -> Option<i64> {
        (self.next < self.columns.len()).then(|| self.columns.offset.value(self.next))
    }
}

/// One partition: its files not opened yet, those open, and the record to go next.
struct Lane {
    topic: String,
    partition: i32,
    /// By first offset.
    files: VecDeque<ArchiveFile>,
    open: Vec<Cursor>,
    /// The last offset handed out: a record found again in another file is skipped.
    last: Option<i64>,
    /// The partition's stream time: the largest event time handed out.
    time: Option<Tick>,
    /// The open file whose next record goes next.
    head: Option<usize>,
    /// Its stream time would pass `to`: nothing more is read from it.
    done: bool,
}

impl Lane {
    /// The stream time at the head record: what the merge orders partitions by.
    fn key(&self) -> Option<Tick> {
        let c = &self.open[self.head?];
        let own = c
            .columns
            .valid
            .value(c.next)
            .then(|| c.columns.event.value(c.next).max(0) as Tick);
        Some(self.time.max(own).unwrap_or(0))
    }
}

/// One worker's reader of its share of the archive.
pub struct ArchiveSource {
    plan: Arc<ArchivePlan>,
    rt: tokio::runtime::Runtime,
    lanes: Vec<Lane>,
    /// The index of the first boundary no poll has crossed yet.
    next_boundary: usize,
}

impl ArchiveSource {
    pub fn new(plan: Arc<ArchivePlan>, worker: usize, peers: usize) -> anyhow::Result<Self> {
        let lanes = plan
            .partitions()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % peers == worker)
            .map(|(_, (topic, partition))| {
                let mut files: Vec<ArchiveFile> = plan
                    .files
                    .iter()
                    .filter(|f| f.topic == topic && f.partition == partition)
                    .cloned()
                    .collect();
                files.sort_by_key(|f| (f.first, f.last));
                Lane {
                    topic,
                    partition,
                    files: files.into(),
                    open: Vec::new(),
                    last: None,
                    time: None,
                    head: None,
                    done: false,
                }
            })
            .collect();
        Ok(ArchiveSource {
            plan,
            rt: runtime()?,
            lanes,
            next_boundary: 0,
        })
    }

    /// Fills lane `i`'s head with its next record in offset order, opening the files that
    /// may hold it; a file that cannot be read is skipped and named.
    fn refill(&mut self, i: usize) {
        let lane = &mut self.lanes[i];
        while lane.head.is_none() && !lane.done {
            lane.open.retain(|c| c.offset().is_some());
            let low = lane
                .open
                .iter()
                .enumerate()
                .filter_map(|(c, f)| Some((f.offset()?, c)))
                .min();
            if let Some(f) = lane.files.front() {
                if low.is_none_or(|(o, _)| f.first <= o) {
                    let f = lane.files.pop_front().expect("a front");
                    match read_file(&self.rt, &self.plan.root, &f) {
                        Ok(columns) => lane.open.push(Cursor { columns, next: 0 }),
                        Err(e) => {
                            let e = format!("{e:#}");
                            tracing::error!(file = %f.path, error = %e, "skipping an archive file that cannot be read: the batch goes on without its records");
                            self.plan.skipped.lock().expect("skipped").push(e);
                        }
                    }
                    continue;
                }
            }
            let Some((offset, c)) = low else {
                lane.done = true;
                break;
            };
            if lane.last.is_some_and(|l| offset <= l) {
                lane.open[c].next += 1;
                self.plan
                    .doubled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            lane.head = Some(c);
            if lane.key().is_some_and(|k| k > self.plan.to) {
                lane.done = true;
                lane.head = None;
            }
        }
    }

    /// The lane whose head goes next: the least stream time, then the least partition.
    fn lowest(&mut self, skip: &[bool]) -> Option<(usize, Tick)> {
        let mut best: Option<(usize, Tick)> = None;
        for (i, skipped) in skip.iter().enumerate() {
            if *skipped {
                continue;
            }
            self.refill(i);
            if let Some(k) = self.lanes[i].key() {
                if best.is_none_or(|(_, b)| k < b) {
                    best = Some((i, k));
                }
            }
        }
        best
    }
}

fn read_file(
    rt: &tokio::runtime::Runtime,
    root: &Root,
    f: &ArchiveFile,
) -> anyhow::Result<Columns> {
    let bytes = rt
        .block_on(async { root.store.get(&f.path).await?.bytes().await })
        .with_context(|| format!("reading {}", f.path))?;
    let c = columns(bytes).with_context(|| format!("{} is not a readable archive file", f.path))?;
    let foreign = (0..c.len()).find(|&i| {
        let o = c.offset.value(i);
        c.partition.value(i) != f.partition
            || c.topic.value(i) != f.topic
            || o < f.first
            || o > f.last
            || (i > 0 && o <= c.offset.value(i - 1))
    });
    if let Some(i) = foreign {
        anyhow::bail!(
            "{} holds {}/{} offset {} out of order or not covered by its name",
            f.path,
            c.topic.value(i),
            c.partition.value(i),
            c.offset.value(i)
        );
    }
    Ok(c)
}

impl RecordSource for ArchiveSource {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        let mut held = vec![false; self.lanes.len()];
        let mut handed = 0;
        while handed < max {
            let Some((i, key)) = self.lowest(&held) else {
                break;
            };
            // a boundary between this record and those handed in this poll: the poll ends;
            // and while a record is held back (a peer is behind), the boundary waits for it
            if let Some(&b) = self.plan.boundaries.get(self.next_boundary) {
                if key > b {
                    if handed > 0 {
                        return Poll::Busy;
                    }
                    if held.iter().any(|h| *h) {
                        return Poll::Held;
                    }
                    while self
                        .plan
                        .boundaries
                        .get(self.next_boundary)
                        .is_some_and(|b| key > *b)
                    {
                        self.next_boundary += 1;
                    }
                }
            }
            let lane = &mut self.lanes[i];
            let c = lane.head.expect("a head");
            let (cols, row) = (&lane.open[c].columns, lane.open[c].next);
            let offset = cols.offset.value(row);
            let record = RecordRef {
                topic: &lane.topic,
                partition: lane.partition,
                offset,
                append_ms: cols.timestamp.value(row),
                key: cols.key(row),
                payload: cols.payload.value(row),
                // a file of the first format did not keep it: its append time is nearer
                // the first read than the replay's clock (as the restart's rewrite keeps it)
                read_ms: Some(match &cols.read {
                    Some(r) => r.value(row),
                    None => cols.timestamp.value(row),
                })
                .map(|t| t.max(0) as u64),
                // a replay of the archive dead-letters nothing (it counts)
                headers: None,
                tombstone: false,
            };
            match visit(record) {
                Visit::Taken(event) => {
                    lane.time = lane.time.max(event);
                    lane.last = Some(offset);
                    lane.open[c].next += 1;
                    lane.head = None;
                    handed += 1;
                    self.plan
                        .read
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Visit::Held => held[i] = true,
            }
        }
        if handed == max {
            Poll::Busy
        } else if held.iter().any(|h| *h) {
            Poll::Held
        } else if handed > 0 {
            Poll::Busy
        } else {
            Poll::Finished
        }
    }

    /// The partition whose record goes next (the least stream time), and those not read
    /// yet: the merge already orders this worker's partitions, so only the peers hold its
    /// records back (its other partitions' positions, the last times they gave, lag their
    /// next records' and would hold back records the merge rightly hands out).
    fn pending(&self, mark: &mut dyn FnMut(&str, i32)) {
        let next = self.lanes.iter().filter_map(Lane::key).min();
        for l in &self.lanes {
            let first = l.head.is_none() && !l.done;
            if first || (l.head.is_some() && l.key() == next) {
                mark(&l.topic, l.partition);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }

    fn end_at(&self) -> Option<Tick> {
        Some(self.plan.to)
    }
}
