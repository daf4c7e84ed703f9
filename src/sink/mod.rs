//! Where features go: the stores (Redis, Postgres, the embedded memory store, Kafka
//! topics), the writer threads that keep their I/O off the dataflow workers, the Kafka
//! producer and the DLQ.

pub mod dlq;
pub mod memory;
pub mod owners;
pub mod postgres;
pub mod producer;
pub mod redis;
pub mod topic;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use tidemark_dataflows::contract::table::{EntityChange, TableSpec, TickChanges};

use crate::sink::dlq::Dlq;
use crate::telemetry::{SinkStats, Unstorable};
use tidemark_dataflows::Tick;
use timely::scheduling::SyncActivator;

/// Where a worker's feature changes go.
pub trait Store: Send {
    fn name(&self) -> &'static str;
    /// Writes whole ticks in one transaction; with `progress`, also records that every tick
    /// before it is written by this worker. An error is retried (the store is down, or a
    /// transaction failed as a whole); the updates the store can never take are left out
    /// and returned, so one entity never holds the others back.
    fn write(
        &mut self,
        ticks: &[Arc<TickChanges>],
        progress: Option<Tick>,
    ) -> anyhow::Result<Vec<Unstorable>>;
    /// The last tick any worker of the job wrote here, if the store records progress.
    fn written(&mut self) -> anyhow::Result<Option<Tick>> {
        Ok(None)
    }
    /// A restart's first step: deletes every entity written at a tick in `(since, before)`,
    /// that is after the checkpoint at `since` by a run that did not get to its next one.
    /// Returns how many went.
    fn roll_back(&mut self, _since: Tick, _before: Tick) -> anyhow::Result<u64> {
        Ok(0)
    }
    /// A restart's second step: writes the restored checkpoint's `rows` at tick `at` over
    /// the entities written after `since` and those the first step deleted; the others
    /// hold these rows already. With `roll_back`, the store holds the checkpoint again,
    /// whatever the run before wrote after it: a replay's ticks and batches need not match
    /// that run's, so it may well not write those entities again.
    fn rewrite(
        &mut self,
        _rows: &TickChanges,
        _since: Tick,
        _at: Tick,
    ) -> anyhow::Result<Vec<Unstorable>> {
        Ok(Vec::new())
    }
}

/// The identity a store writes under.
#[derive(Clone, Debug)]
pub struct Writer {
    pub job: String,
    pub worker: usize,
    pub peers: usize,
    pub tables: Arc<Vec<TableSpec>>,
}

pub enum Msg {
    Changes(Arc<TickChanges>),
    /// Every tick before `upto` is complete. A store records it with the next changes, or
    /// at most once per idle interval while nothing changes; at once with `persist` (a
    /// checkpoint's pause, the end of the input).
    Progress {
        upto: Tick,
        persist: bool,
    },
    /// A restored checkpoint's rows, for `Store::rewrite`.
    Rewrite {
        rows: Arc<TickChanges>,
        since: Tick,
        at: Tick,
    },
}

/// The worker's end of a writer thread.
pub struct WriterHandle {
    pub name: &'static str,
    tx: Sender<Msg>,
    /// Every tick before this one is durably written.
    pub acked: Arc<AtomicU64>,
    /// The sink operator puts its activator here, so acks wake it.
    pub wake: Arc<Mutex<Option<SyncActivator>>>,
}

impl WriterHandle {
    pub fn send(&self, msg: Msg) {
        // a writer that died has logged why; the worker notices through `acked` not moving
        let _ = self.tx.send(msg);
    }
    pub fn acked(&self) -> Tick {
        self.acked.load(Ordering::Acquire)
    }
}

/// Starts a thread that writes what the worker sends, retrying with backoff on failure
/// (nothing is acknowledged until it is written).
///
/// The updates the store can never take are counted, logged and, with a DLQ, sent there.
///
/// Progress without changes is acknowledged at once (nothing needs writing for those
/// ticks to be durable) and recorded in the store at most once per `idle`: an idle
/// engine writes nothing else.
pub fn spawn_writer(
    mut store: Box<dyn Store>,
    stats: Arc<SinkStats>,
    dlq: Option<Arc<Dlq>>,
    idle: Duration,
) -> WriterHandle {
    let (tx, rx) = channel::<Msg>();
    let acked = Arc::new(AtomicU64::new(0));
    let wake: Arc<Mutex<Option<SyncActivator>>> = Arc::default();
    let name = store.name();
    let (a, w) = (acked.clone(), wake.clone());
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            let mut w = WriteLoop {
                store: &mut *store,
                acked: &a,
                wake: &w,
                stats: &stats,
                dlq: dlq.as_deref(),
                idle,
                recorded: 0,
                recorded_at: std::time::Instant::now(),
                wrote_at: std::time::Instant::now(),
            };
            if let Err(e) = w.run(rx) {
                tracing::error!(sink = name, error = %e, "a sink write failed with an error retrying cannot fix: the run ends (nothing is committed past it)");
                *stats.fatal.lock().expect("sink stats") = Some(e);
            }
        })
        .expect("spawn a writer thread");
    WriterHandle {
        name,
        tx,
        acked,
        wake,
    }
}

/// A writer thread's state.
struct WriteLoop<'a> {
    store: &'a mut dyn Store,
    acked: &'a AtomicU64,
    wake: &'a Mutex<Option<SyncActivator>>,
    stats: &'a SinkStats,
    dlq: Option<&'a Dlq>,
    /// Progress alone is recorded at most this often.
    idle: Duration,
    /// The progress the store holds (every tick before it is written), and since when.
    recorded: Tick,
    recorded_at: std::time::Instant,
    /// When the last write ended.
    wrote_at: std::time::Instant,
}

/// A writer whose ticks are this far behind the clock is catching up (a replay, a restart
/// after an outage): nobody waits for each tick, and ticks come a minute of event time
/// apart (each window's expiries), so it gathers them for up to [`CATCH_UP_PACK`] after
/// its last write and writes each entity once for all of them. Live ticks (seconds behind
/// the clock at most) are written at once, and a pack that a checkpoint or the end of the
/// input waits for goes without waiting.
const CATCH_UP_LAG: Duration = Duration::from_secs(60);
/// See [`CATCH_UP_LAG`].
const CATCH_UP_PACK: Duration = Duration::from_millis(200);

impl WriteLoop<'_> {
    /// Writes until the worker hangs up; an error retrying cannot fix ends it.
    fn run(&mut self, rx: Receiver<Msg>) -> Result<(), String> {
        // a writer that is behind packs what is queued into one write (each entity once, see
        // `newest_per_entity`): expiry-only ticks come a minute of event time apart, so a
        // replay queues thousands, and a bigger pack writes a hot entity once for all of them
        const MAX_TICKS_PER_WRITE: usize = 16_384;
        let mut carried: Option<Msg> = None;
        loop {
            let first = match carried.take() {
                Some(m) => m,
                None => match rx.recv_timeout(self.idle) {
                    Ok(m) => m,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        self.record_progress()?;
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                },
            };
            if let Msg::Rewrite { rows, since, at } = first {
                self.rewrite(&rows, since, at)?;
                continue;
            }
            let (mut ticks, mut progress, mut persist) = (Vec::new(), None, false);
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Msg::Changes(t) => ticks.push(t),
                    Msg::Progress { upto, persist: now } => {
                        progress = Some(upto);
                        persist |= now;
                    }
                    rewrite @ Msg::Rewrite { .. } => {
                        carried = Some(rewrite);
                        break;
                    }
                }
                if ticks.len() < MAX_TICKS_PER_WRITE {
                    next = rx.try_recv().ok();
                    if next.is_none() && !persist && self.catching_up(&ticks) {
                        next = rx.recv_timeout(self.pack_left()).ok();
                    }
                }
            }
            if ticks.is_empty() {
                // nothing to write for these ticks to be durable: acknowledged now, and
                // recorded in the store when it must be or once the idle interval is up
                if let Some(p) = progress {
                    self.ack(p);
                    if persist || self.recorded_at.elapsed() >= self.idle {
                        self.record_progress()?;
                    }
                }
                continue;
            }
            // writing a tick means every earlier tick is written: record it even when the
            // progress message has not arrived yet, so the stores never hold ticks past it
            let last = ticks.last().map_or(0, |t| t.tick + 1);
            let progress = progress.map_or(last, |p| p.max(last));
            self.write(&ticks, progress)?;
        }
    }

    /// Whether the pack's newest tick is far behind the clock (a replay, a catch-up).
    fn catching_up(&self, ticks: &[Arc<TickChanges>]) -> bool {
        ticks.last().is_some_and(|t| {
            crate::clock::now_ms().saturating_sub(t.tick) > CATCH_UP_LAG.as_millis() as u64
        })
    }

    /// How long a pack being caught up may still gather ticks: until [`CATCH_UP_PACK`] has
    /// passed since the last write ended.
    fn pack_left(&self) -> Duration {
        CATCH_UP_PACK.saturating_sub(self.wrote_at.elapsed())
    }

    fn ack(&self, p: Tick) {
        if p > self.acked.load(Ordering::Acquire) {
            self.acked.store(p, Ordering::Release);
            if let Some(a) = self.wake.lock().expect("wake slot").as_ref() {
                let _ = a.activate();
            }
        }
    }

    /// Records the acknowledged progress, if the store does not hold it yet.
    fn record_progress(&mut self) -> Result<(), String> {
        let p = self.acked.load(Ordering::Acquire);
        if p > self.recorded {
            self.write(&[], p)?;
        }
        Ok(())
    }

    fn write(&mut self, ticks: &[Arc<TickChanges>], progress: Tick) -> Result<(), String> {
        let started = std::time::Instant::now();
        let updates: usize = ticks.iter().map(|t| t.changes.len()).sum();
        let (store, stats) = (&mut *self.store, self.stats);
        let rejected = retrying(store, stats, updates, |s| s.write(ticks, Some(progress)))?;
        report(store.name(), stats, self.dlq, rejected);
        crate::crash::point(match store.name() {
            "redis" => "redis-written",
            "postgres" => "postgres-written",
            _ => "",
        });
        if started.elapsed() > Duration::from_millis(200) {
            tracing::debug!(
                sink = store.name(),
                ms = started.elapsed().as_millis() as u64,
                ticks = ticks.len(),
                "slow write"
            );
        }
        stats.writes.fetch_add(1, Ordering::Relaxed);
        stats
            .entity_updates
            .fetch_add(entities_written(ticks) as u64, Ordering::Relaxed);
        self.recorded = self.recorded.max(progress);
        self.recorded_at = std::time::Instant::now();
        self.wrote_at = self.recorded_at;
        self.ack(progress);
        Ok(())
    }

    fn rewrite(&mut self, rows: &TickChanges, since: Tick, at: Tick) -> Result<(), String> {
        let started = std::time::Instant::now();
        let (store, stats) = (&mut *self.store, self.stats);
        let rejected = retrying(store, stats, rows.changes.len(), |s| {
            s.rewrite(rows, since, at)
        })?;
        report(store.name(), stats, self.dlq, rejected);
        tracing::info!(
            sink = store.name(),
            rows = rows.changes.len(),
            since,
            at,
            ms = started.elapsed().as_millis() as u64,
            "the restored checkpoint is written over what came after it"
        );
        Ok(())
    }
}

/// Counts, logs and hands to the DLQ the updates a store can never take.
fn report(sink: &'static str, stats: &SinkStats, dlq: Option<&Dlq>, rejected: Vec<Unstorable>) {
    if rejected.is_empty() {
        return;
    }
    stats
        .rejected
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    for u in &rejected {
        tracing::error!(sink, entity = %u.entity, tick = u.tick, error = %u.error, dlq = dlq.map(|d| d.topic.as_str()), "an entity update the store can never take is passed over");
        if let Some(d) = dlq {
            d.send_unstorable(sink, u);
        }
    }
    *stats.last_rejected.lock().expect("sink stats") = rejected.last().cloned();
}

/// Runs `write` until it succeeds, with backoff (nothing is acknowledged until written);
/// an error retrying cannot fix ([`crate::permanent`]) is returned instead, redacted.
fn retrying<T>(
    store: &mut dyn Store,
    stats: &SinkStats,
    updates: usize,
    mut write: impl FnMut(&mut dyn Store) -> anyhow::Result<T>,
) -> Result<T, String> {
    let mut backoff = Duration::from_millis(20);
    let duration = metrics::histogram!(crate::telemetry::SINK_WRITE, "sink" => store.name());
    loop {
        let attempt = std::time::Instant::now();
        stats
            .writing_since
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        let result = write(store);
        stats.writing_since.store(0, Ordering::Relaxed);
        duration.record(attempt.elapsed().as_secs_f64());
        let e = match result {
            Ok(t) => {
                stats.failing_since.store(0, Ordering::Relaxed);
                return Ok(t);
            }
            Err(e) if crate::permanent::is_permanent(&e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                return Err(crate::redact::redact(&format!("{}: {e:#}", store.name())));
            }
            Err(e) => e,
        };
        let _ = stats.failing_since.compare_exchange(
            0,
            crate::clock::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let error = format!("{e:#}");
        stats.failures.fetch_add(1, Ordering::Relaxed);
        stats
            .failed_updates
            .fetch_add(updates as u64, Ordering::Relaxed);
        tracing::warn!(sink = store.name(), error = %error, retry_in_ms = backoff.as_millis() as u64, "sink write failed");
        *stats.last_error.lock().expect("sink stats") = Some((crate::clock::now_ms(), error));
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One entity of a pack, once (see [`newest_per_entity`]).
#[derive(Debug, PartialEq)]
pub struct Newest<'a> {
    /// The newest tick it changed at.
    pub tick: Tick,
    /// Its newest change: the table, the key and the values after it.
    pub change: &'a EntityChange,
    /// Every field changed since it last went (all of them when it came back in the pack).
    pub changed: Cow<'a, [usize]>,
}

/// A pack of ticks' changes with each entity once: its newest state, at the newest tick
/// it changed, naming every field changed since it last went (all of them when it came
/// back within the pack). A writer that packs ticks into one transaction writes this: a
/// reader sees whole packs only, so the versions in between are invisible anyway.
/// Borrowed, not copied: a pack holds hundreds of thousands of changes.
pub fn newest_per_entity(ticks: &[Arc<TickChanges>]) -> Vec<Newest<'_>> {
    let mut at: FxHashMap<(u8, &[String]), usize> = FxHashMap::default();
    let mut out: Vec<Newest<'_>> = Vec::new();
    for t in ticks {
        for c in &t.changes {
            let Some(&i) = at.get(&(c.table, c.key.as_slice())) else {
                at.insert((c.table, c.key.as_slice()), out.len());
                out.push(Newest {
                    tick: t.tick,
                    change: c,
                    changed: Cow::Borrowed(&c.changed),
                });
                continue;
            };
            let merged = &mut out[i];
            merged.changed = if merged.change.after.is_some() && c.after.is_some() {
                let mut changed: Vec<usize> = merged.changed.iter().copied().collect();
                changed.extend(c.changed.iter().copied());
                changed.sort_unstable();
                changed.dedup();
                Cow::Owned(changed)
            } else {
                Cow::Borrowed(&c.changed)
            };
            merged.tick = t.tick;
            merged.change = c;
        }
    }
    out
}

/// How many entities a pack of `ticks` writes: each once (see [`newest_per_entity`]).
fn entities_written(ticks: &[Arc<TickChanges>]) -> usize {
    match ticks {
        [one] => one.changes.len(),
        _ => ticks
            .iter()
            .flat_map(|t| &t.changes)
            .map(|c| (c.table, c.key.as_slice()))
            .collect::<rustc_hash::FxHashSet<_>>()
            .len(),
    }
}

/// `feat:{ns}:{key parts joined by ':'}` (`{ns}:…` for a plain Redis hash or a list;
/// `{redis_prefix}:…` when the view's key is configured).
pub fn entity_key(spec: &TableSpec, key: &[String]) -> String {
    use tidemark_dataflows::contract::table::SinkKind;
    let prefix = spec.redis_prefix.as_deref().unwrap_or(spec.ns);
    let mut k =
        String::with_capacity(8 + prefix.len() + key.iter().map(|p| p.len() + 1).sum::<usize>());
    if spec.redis_prefix.is_none() && !matches!(spec.sink, SinkKind::RedisHash | SinkKind::List) {
        k.push_str("feat:");
    }
    k.push_str(prefix);
    for part in key {
        k.push(':');
        k.push_str(part);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_dataflows::contract::table::Value;

    fn change(key: &str, after: Option<&[i64]>, changed: &[usize]) -> EntityChange {
        EntityChange {
            table: 0,
            key: vec![key.into()],
            after: after.map(|v| v.iter().map(|x| Value::Int(*x)).collect()),
            changed: changed.to_vec(),
        }
    }

    fn tick(tick: Tick, changes: Vec<EntityChange>) -> Arc<TickChanges> {
        Arc::new(TickChanges { tick, changes })
    }

    #[test]
    fn a_pack_writes_each_entity_once_with_its_newest_values() {
        let pack = [
            tick(
                1,
                vec![
                    change("a", Some(&[1, 0]), &[0, 1]),
                    change("b", Some(&[5, 5]), &[0, 1]),
                ],
            ),
            tick(
                2,
                vec![change("a", Some(&[1, 7]), &[1]), change("b", None, &[])],
            ),
            tick(
                3,
                vec![
                    change("a", Some(&[2, 7]), &[0]),
                    change("c", Some(&[1, 1]), &[0, 1]),
                ],
            ),
            tick(
                4,
                vec![change("c", None, &[]), change("b", Some(&[6, 5]), &[0, 1])],
            ),
        ];
        let merged: Vec<(Tick, EntityChange)> = newest_per_entity(&pack)
            .into_iter()
            .map(|n| {
                let mut c = n.change.clone();
                c.changed = n.changed.into_owned();
                (n.tick, c)
            })
            .collect();
        assert_eq!(
            merged,
            vec![
                // every field changed since the pack began, newest values, newest tick
                (3, change("a", Some(&[2, 7]), &[0, 1])),
                // gone, then back: written whole
                (4, change("b", Some(&[6, 5]), &[0, 1])),
                // came and went within the pack: gone
                (4, change("c", None, &[])),
            ]
        );
        let updates: usize = pack.iter().map(|t| t.changes.len()).sum();
        assert_eq!((updates, merged.len()), (8, 3));
    }

    /// A store that records the ticks of each write.
    struct Recording(Arc<Mutex<Vec<Vec<Tick>>>>);

    impl Store for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn write(
            &mut self,
            ticks: &[Arc<TickChanges>],
            _progress: Option<Tick>,
        ) -> anyhow::Result<Vec<Unstorable>> {
            if !ticks.is_empty() {
                self.0
                    .lock()
                    .unwrap()
                    .push(ticks.iter().map(|t| t.tick).collect());
            }
            Ok(Vec::new())
        }
    }

    /// The writes of ticks `first + i · step` (i < 5), sent 20 ms apart.
    fn writes_of_ticks_sent_apart(first: Tick, step: Tick) -> Vec<Vec<Tick>> {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let store = Box::new(Recording(writes.clone()));
        let handle = spawn_writer(store, Arc::default(), None, Duration::from_secs(60));
        for i in 0..5 {
            handle.send(Msg::Changes(tick(
                first + i * step,
                vec![change("hot", Some(&[i as i64]), &[0])],
            )));
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(handle);
        // the writer ends once it has written what it was sent
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while writes.lock().unwrap().iter().flatten().count() < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "not all ticks written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let w = writes.lock().unwrap().clone();
        w
    }

    #[test]
    fn a_writer_catching_up_gathers_ticks_into_one_pack_and_a_live_one_writes_each() {
        // a replay: ticks a minute of event time apart, hours behind the clock
        let old = crate::clock::now_ms() - 10 * 3_600_000;
        assert_eq!(
            writes_of_ticks_sent_apart(old, 60_000),
            vec![(0..5).map(|i| old + i * 60_000).collect::<Vec<_>>()],
            "ticks 20 ms apart go in one pack while catching up"
        );
        // live: each tick goes at once
        let now = crate::clock::now_ms();
        let live = writes_of_ticks_sent_apart(now, 1);
        assert_eq!(live.len(), 5, "{live:?}");
    }
}
