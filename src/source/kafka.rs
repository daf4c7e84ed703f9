//! The Kafka source: one per worker, over manually assigned partitions, with offsets
//! committed only behind the durable frontier.
//!
//! Each partition is read from its own librdkafka queue (`split_partition_queue`), so a
//! partition that runs ahead of the others (partition alignment) is simply not read: its
//! records wait in its fetch queue, which librdkafka bounds per partition
//! (`queued.max.messages.kbytes`) by no longer fetching it, and refills as soon as it is
//! read again. The source keeps at most the one record the dataflow refused per partition.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tidemark_dataflows::contract::record::{Poll, RecordHeaders, RecordRef, RecordSource, Visit};
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::archive::file::{Header, RecordIn};
use crate::archive::{Progress, WorkerArchive};
use crate::clock::now_ms;
use crate::config::{group_of, Config, StartFrom};
use crate::telemetry::{Freshness, Status};

/// A source position: the next offset to read of (topic, partition).
pub type Position = (String, i32, i64);

/// What a worker's Kafka source and its checkpointer tell each other.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The positions when the source paused for the checkpoint of this tick.
    pub paused: Option<(Tick, Vec<Position>)>,
    /// The positions of the newest saved checkpoint, numbered: the source commits them.
    pub to_commit: Option<(u64, Vec<Position>)>,
    /// The number of the last `to_commit` handed to the group coordinator.
    pub committed: u64,
    /// Commit synchronously (the last commit before a graceful stop).
    pub sync: bool,
}

type Partition = (String, i32);

/// A partition's own fetch queue (see the module doc).
type PartitionQueue = rdkafka::consumer::base_consumer::PartitionQueue<DefaultConsumerContext>;

/// A record the dataflow held back (its partition ran ahead), kept until it is taken.
struct HeldRecord {
    offset: i64,
    append_ms: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// For the archive, and the DLQ should it be invalid.
    headers: Vec<Header>,
    tombstone: bool,
}

/// One assigned partition.
struct Lane {
    topic: String,
    partition: i32,
    /// The next offset to hand out.
    next: i64,
    /// The end offset seen at start (with `--exit-at-end`, reading stops there).
    end: i64,
    /// When it last handed out a record.
    read_at: Option<Instant>,
    /// Records held back, oldest first: the one the dataflow refused (and, in principle,
    /// records the consumer's main queue delivered before the partition's queue was split).
    held: VecDeque<HeldRecord>,
    /// Records taken in this poll, not yet added to the consumed counter.
    taken: u64,
    consumed: metrics::Counter,
}

impl Lane {
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

/// The assigned partitions, in (topic, partition) order, and what was taken from them.
struct Lanes {
    all: Vec<Lane>,
    /// The lane of the last record (records come in runs per partition).
    last: usize,
    /// The append times of the records taken since the last insert.
    appends: Vec<i64>,
    /// Where taken records are archived, when `[archive]` is on.
    archive: Option<WorkerArchive>,
    /// The clock the dataflow judges this poll's records by (the last `now_ms`): archived
    /// with each record, so a replay judges it the same.
    clock: std::cell::Cell<u64>,
}

impl Lanes {
    /// The index of the lane of (topic, partition).
    fn find(&mut self, topic: &str, partition: i32) -> usize {
        if !self
            .all
            .get(self.last)
            .is_some_and(|l| l.is(topic, partition))
        {
            self.last = self
                .all
                .iter()
                .position(|l| l.is(topic, partition))
                .expect("records come from assigned partitions");
        }
        self.last
    }

    /// Books a record the dataflow took.
    fn took(&mut self, i: usize, offset: i64, append_ms: i64, now: Instant) {
        let lane = &mut self.all[i];
        lane.next = offset + 1;
        lane.read_at = Some(now);
        lane.taken += 1;
        self.appends.push(append_ms);
    }

    /// Archives a record the dataflow took, filed under its event time (`None`: invalid).
    fn archive<'h>(
        &mut self,
        i: usize,
        event: Option<Tick>,
        record: &RecordRef<'_>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let Some(archive) = &mut self.archive else {
            return;
        };
        archive.take(
            i,
            record.topic,
            record.partition,
            RecordIn::taken(record, event, self.clock.get()),
            headers,
        );
    }
}

pub struct KafkaSource {
    consumer: Arc<BaseConsumer>,
    /// Each lane's own fetch queue, by lane index.
    queues: Vec<PartitionQueue>,
    lanes: Lanes,
    exit_at_end: bool,
    /// Records read per inserted tick, until the tick is durable: reading stops while
    /// more than `max_pending` wait.
    pending: VecDeque<(Tick, u64)>,
    pending_records: u64,
    max_pending: u64,
    read_since_insert: u64,
    ledger: Arc<Mutex<Ledger>>,
    durable: ProbeHandle<Tick>,
    last_message: Instant,
    idle_timeout: Duration,
    freshness: Option<Arc<Freshness>>,
    appends_by_tick: VecDeque<(Tick, Vec<i64>)>,
    /// Shared with the process: records still to read before the end offsets.
    backlog: Option<Arc<std::sync::atomic::AtomicI64>>,
    status: Arc<Status>,
    worker: usize,
    published: Instant,
    fresh: metrics::Histogram,
}

fn consumer_config(cfg: &Config, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "5")
        .set("queued.min.messages", "200000")
        // per partition, as each has its own queue: a partition ahead of the others waits
        // in it, at most this much, and fetching resumes soon after it is read again
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "20")
        .set("fetch.min.bytes", "1");
    c
}

/// Checks that the brokers answer and every topic exists with partitions (start-up waits
/// until they do).
pub fn reachable(cfg: &Config, topics: &[String]) -> anyhow::Result<()> {
    let consumer: BaseConsumer = consumer_config(cfg, &group_of(cfg))
        .create()
        .context("creating the kafka consumer")?;
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .with_context(|| {
                format!(
                    "fetching metadata of topic '{topic}' from {} (kafka.brokers)",
                    cfg.kafka.brokers
                )
            })?;
        if md.topics().iter().all(|t| t.partitions().is_empty()) {
            bail!("topic '{topic}' has no partitions (does it exist? create it with `tidemark topics create` or with the partitions you want)");
        }
    }
    Ok(())
}

/// Everything a worker's source starts from.
pub struct SourceStart<'a> {
    pub worker: usize,
    pub peers: usize,
    pub exit_at_end: bool,
    /// The restored checkpoint's positions (of all partitions); else `kafka.from`.
    pub restored: Option<&'a BTreeMap<Partition, i64>>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub durable: ProbeHandle<Tick>,
    pub freshness: Option<Arc<Freshness>>,
    pub backlog: Option<Arc<std::sync::atomic::AtomicI64>>,
    pub status: Arc<Status>,
}

impl KafkaSource {
    /// Assigns this worker its share of the topics' partitions (round robin over all
    /// workers of all processes) and seeks to the checkpoint's positions, else to `from`.
    /// Long: the consumer's set-up in order (assignment, start positions from the checkpoint or `kafka.from`, lanes), each step depending on the one before.
    pub fn new(cfg: &Config, topics: &[String], start: SourceStart<'_>) -> anyhow::Result<Self> {
        let group = group_of(cfg);
        let consumer: Arc<BaseConsumer> = Arc::new(
            consumer_config(cfg, &group)
                .create()
                .context("creating the kafka consumer")?,
        );
        let timeout = Duration::from_secs(10);
        let mut all: Vec<Partition> = Vec::new();
        for topic in topics {
            let md = consumer
                .fetch_metadata(Some(topic), timeout)
                .with_context(|| {
                    format!(
                        "fetching metadata of topic '{topic}' from {}",
                        cfg.kafka.brokers
                    )
                })?;
            for t in md.topics() {
                if t.partitions().is_empty() {
                    bail!("topic '{topic}' has no partitions (does it exist? create it with `tidemark topics create` or with the partitions you want)");
                }
                all.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
            }
        }
        all.sort();
        let mine: Vec<Partition> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % start.peers == start.worker)
            .map(|(_, p)| p)
            .collect();
        let mut positions = BTreeMap::new();
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for (topic, partition) in &mine {
            let (low, high) = consumer.fetch_watermarks(topic, *partition, timeout)?;
            let key = (topic.clone(), *partition);
            let from = match start.restored.and_then(|r| r.get(&key)) {
                Some(&o) if o < low => {
                    tracing::error!(topic, partition, checkpoint = o, earliest = low, "records after the checkpoint were deleted by retention: they are lost to the features");
                    low
                }
                Some(&o) => o,
                None => match cfg.kafka.from {
                    StartFrom::Earliest => low,
                    StartFrom::Latest => high,
                    StartFrom::Time(ms) => offset_at(&consumer, topic, *partition, ms, high)?,
                },
            };
            positions.insert(key.clone(), from);
            ends.insert(key, high);
            assignment.add_partition_offset(topic, *partition, Offset::Offset(from))?;
        }
        consumer.assign(&assignment)?;
        let archive = if cfg.archive.enabled {
            let root = crate::archive::open(&cfg.archive)?;
            Some(WorkerArchive::start(
                &cfg.archive,
                root,
                start.worker,
                positions.clone(),
                Some((&cfg.job, start.peers)),
            )?)
        } else {
            None
        };
        if let Some(b) = &start.backlog {
            let left: i64 = ends.iter().map(|(p, e)| e - positions[p]).sum();
            b.fetch_add(left, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(worker = start.worker, partitions = ?mine, group = %group, from = ?positions, "kafka source assigned");
        {
            let mut status = start.status.partitions.lock().expect("status");
            for (key, &position) in &positions {
                let p = status.entry(key.clone()).or_default();
                p.worker = start.worker;
                p.position = position;
            }
        }
        start.status.assigned.fetch_add(1, AtomicOrdering::Relaxed);
        let now = Instant::now();
        let all = positions
            .into_iter()
            .map(|((topic, partition), next)| Lane {
                end: ends[&(topic.clone(), partition)],
                consumed: metrics::counter!(crate::telemetry::CONSUMED, "topic" => topic.clone()),
                topic,
                partition,
                next,
                read_at: None,
                held: VecDeque::new(),
                taken: 0,
            })
            .collect::<Vec<Lane>>();
        // before the first poll, so no record of a lane comes through the main queue
        let queues = all
            .iter()
            .map(|l| {
                consumer
                    .split_partition_queue(&l.topic, l.partition)
                    .with_context(|| format!("a fetch queue of {}/{}", l.topic, l.partition))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(KafkaSource {
            consumer,
            queues,
            lanes: Lanes {
                all,
                last: 0,
                appends: Vec::new(),
                archive,
                clock: std::cell::Cell::new(now_ms()),
            },
            exit_at_end: start.exit_at_end,
            pending: VecDeque::new(),
            pending_records: 0,
            max_pending: cfg.ingest.max_pending_records,
            read_since_insert: 0,
            ledger: start.ledger,
            durable: start.durable,
            last_message: now,
            idle_timeout: Duration::from_millis(cfg.kafka.idle_timeout_ms),
            freshness: start.freshness,
            appends_by_tick: VecDeque::new(),
            backlog: start.backlog,
            status: start.status,
            worker: start.worker,
            published: now,
            fresh: metrics::histogram!(crate::telemetry::FRESHNESS),
        })
    }

    /// What a checkpoint waits for before it is saved, when `[archive]` is on.
    pub fn archive_progress(&self) -> Option<Arc<Progress>> {
        self.lanes.archive.as_ref().map(WorkerArchive::progress)
    }

    /// Tells `/status` where this worker's partitions are, a few times a second.
    fn publish_positions(&mut self) {
        if self.published.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.published = Instant::now();
        let mut status = self.status.partitions.lock().expect("status");
        for lane in &self.lanes.all {
            let p = status
                .entry((lane.topic.clone(), lane.partition))
                .or_default();
            p.worker = self.worker;
            p.position = lane.next;
        }
    }

    fn at_end(&self) -> bool {
        self.exit_at_end && self.lanes.all.iter().all(|l| l.next >= l.end)
    }

    /// Offers the held records again, oldest first per partition, until a pass takes none
    /// (a partition taking records lets the others run further ahead: one pass would move
    /// them a skew per poll). Returns how many were taken.
    fn offer_held(&mut self, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit, now: Instant) -> usize {
        let mut n = 0;
        loop {
            let taken = self.offer_held_once(visit, now);
            n += taken;
            if taken == 0 {
                return n;
            }
        }
    }

    /// One pass of [`Self::offer_held`] over the partitions.
    fn offer_held_once(
        &mut self,
        visit: &mut dyn FnMut(RecordRef<'_>) -> Visit,
        now: Instant,
    ) -> usize {
        let mut n = 0;
        for i in 0..self.lanes.all.len() {
            if self.lanes.all[i].held.is_empty() {
                continue;
            }
            while let Some(h) = self.lanes.all[i].held.front() {
                let lane = &self.lanes.all[i];
                let record = RecordRef {
                    topic: &lane.topic,
                    partition: lane.partition,
                    offset: h.offset,
                    append_ms: h.append_ms,
                    key: h.key.as_deref(),
                    payload: &h.payload,
                    read_ms: None,
                    headers: Some(&h.headers as &dyn RecordHeaders),
                    tombstone: h.tombstone,
                };
                let Visit::Taken(event) = visit(record) else {
                    break;
                };
                let h = self.lanes.all[i].held.pop_front().expect("front exists");
                if self.lanes.archive.is_some() {
                    let lane = &self.lanes.all[i];
                    let (topic, partition) = (lane.topic.clone(), lane.partition);
                    let record = RecordRef {
                        topic: &topic,
                        partition,
                        offset: h.offset,
                        append_ms: h.append_ms,
                        key: h.key.as_deref(),
                        payload: &h.payload,
                        read_ms: None,
                        headers: None,
                        tombstone: h.tombstone,
                    };
                    let headers = h.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
                    self.lanes.archive(i, event, &record, headers);
                }
                self.lanes.took(i, h.offset, h.append_ms, now);
                n += 1;
            }
        }
        n
    }

    /// Offers a fresh record of lane `i`: taken, or held (also when a record of its lane
    /// is held already: records of a partition go in in order). Returns whether it was taken.
    fn offer(
        lanes: &mut Lanes,
        i: usize,
        m: &BorrowedMessage<'_>,
        visit: &mut dyn FnMut(RecordRef<'_>) -> Visit,
        now: Instant,
    ) -> bool {
        let append_ms = m.timestamp().to_millis().unwrap_or(0);
        let dlq_headers = MessageHeaders(m);
        let record = RecordRef {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            append_ms,
            key: m.key(),
            payload: m.payload().unwrap_or(&[]),
            read_ms: None,
            headers: m
                .headers()
                .is_some()
                .then_some(&dlq_headers as &dyn RecordHeaders),
            tombstone: m.payload().is_none(),
        };
        let visited = if lanes.all[i].held.is_empty() {
            visit(record)
        } else {
            Visit::Held
        };
        let archived = lanes.archive.is_some();
        let taken = matches!(visited, Visit::Taken(_));
        // a held record keeps its headers for the DLQ too
        let headers = if archived || !taken {
            headers_of(m)
        } else {
            Vec::new()
        };
        if let Visit::Taken(event) = visited {
            if archived {
                lanes.archive(i, event, &record, headers.iter().map(|(k, v)| (&**k, *v)));
            }
            lanes.took(i, m.offset(), append_ms, now);
            return true;
        }
        lanes.all[i].held.push_back(HeldRecord {
            offset: m.offset(),
            append_ms,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or(&[]).to_vec(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
            tombstone: m.payload().is_none(),
        });
        false
    }

    /// Reads lane `i`'s own queue while the dataflow takes its records and fewer than `max`
    /// were taken in all (`n` so far); a refused record stays held and ends the lane's turn.
    fn read_lane(
        &mut self,
        i: usize,
        n: &mut usize,
        max: usize,
        visit: &mut dyn FnMut(RecordRef<'_>) -> Visit,
        now: Instant,
    ) {
        while *n < max && self.lanes.all[i].held.is_empty() {
            match self.queues[i].poll(Duration::ZERO) {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll error");
                    return;
                }
                Some(Ok(m)) => {
                    if Self::offer(&mut self.lanes, i, &m, visit, now) {
                        *n += 1;
                    }
                }
            }
        }
    }

    /// Forgets what is durable, records freshness, and commits the newest checkpoint's
    /// positions to the group.
    fn follow_durable(&mut self) {
        while let Some(&(tick, n)) = self.pending.front() {
            if self.durable.less_equal(&tick) {
                break;
            }
            self.pending.pop_front();
            self.pending_records -= n;
        }
        let now = now_ms() as i64;
        while let Some((tick, _)) = self.appends_by_tick.front() {
            if self.durable.less_equal(tick) {
                break;
            }
            let (tick, samples) = self.appends_by_tick.pop_front().expect("front exists");
            if let Some(first) = samples.first() {
                tracing::debug!(
                    tick,
                    lag_ms = now - first,
                    n = samples.len(),
                    "tick durable"
                );
            }
            for a in &samples {
                self.fresh.record((now - a).max(0) as f64 / 1000.0);
            }
            if let Some(f) = &self.freshness {
                f.record(&samples, now);
            }
        }
        let commit = {
            let ledger = self.ledger.lock().expect("ledger");
            match &ledger.to_commit {
                Some((n, p)) if *n > ledger.committed => Some((*n, p.clone())),
                _ => None,
            }
        };
        if let Some((n, positions)) = commit {
            let mut tpl = TopicPartitionList::new();
            for (t, p, o) in &positions {
                if self.lanes.all.iter().any(|l| l.is(t, *p)) {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
                }
            }
            let result = if tpl.count() == 0 {
                Ok(())
            } else {
                let sync = self.ledger.lock().expect("ledger").sync;
                let mode = if sync {
                    CommitMode::Sync
                } else {
                    CommitMode::Async
                };
                self.consumer.commit(&tpl, mode)
            };
            match result {
                Ok(()) => self.ledger.lock().expect("ledger").committed = n,
                Err(e) => tracing::warn!(error = %e, "offset commit failed; it is retried"),
            }
        }
    }
}

impl RecordSource for KafkaSource {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        self.follow_durable();
        self.publish_positions();
        let archive_behind = self
            .lanes
            .archive
            .as_ref()
            .is_some_and(WorkerArchive::behind);
        if self.pending_records >= self.max_pending || archive_behind {
            // the sinks or the archive lag: hold off (time must not follow the clock meanwhile)
            return Poll::Caught { idle: false };
        }
        let now = Instant::now();
        // the main queue serves callbacks and errors; records of assigned partitions come
        // through their own queues (any fetched before the split are offered here)
        let mut n = 0;
        while let Some(polled) = self.consumer.poll(Duration::ZERO) {
            match polled {
                Err(e) => tracing::warn!(error = %e, "kafka poll error"),
                Ok(m) => {
                    let i = self.lanes.find(m.topic(), m.partition());
                    if Self::offer(&mut self.lanes, i, &m, visit, now) {
                        n += 1;
                    }
                }
            }
        }
        // each partition in turn, as long as one moves: a partition that takes records
        // lets the others run further ahead
        loop {
            let before = n;
            n += self.offer_held(visit, now);
            for i in 0..self.lanes.all.len() {
                self.read_lane(i, &mut n, max, visit, now);
            }
            if n == before || n >= max {
                break;
            }
        }
        for lane in &mut self.lanes.all {
            lane.consumed.increment(std::mem::take(&mut lane.taken));
        }
        if n > 0 {
            self.last_message = Instant::now();
            self.read_since_insert += n as u64;
            if let Some(b) = &self.backlog {
                b.fetch_sub(n as i64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        // held records offered again may alone pass `max`
        if n >= max {
            Poll::Busy
        } else if self.at_end() {
            Poll::Finished
        } else if self.lanes.all.iter().any(|l| !l.held.is_empty()) {
            Poll::Held
        } else {
            Poll::Caught {
                idle: self.last_message.elapsed() >= self.idle_timeout,
            }
        }
    }

    fn inserted(&mut self, tick: Tick) {
        if self.read_since_insert > 0 {
            let n = std::mem::take(&mut self.read_since_insert);
            self.pending_records += n;
            match self.pending.back_mut() {
                Some((t, m)) if *t == tick => *m += n,
                _ => self.pending.push_back((tick, n)),
            }
            if !self.lanes.appends.is_empty() {
                self.appends_by_tick
                    .push_back((tick, std::mem::take(&mut self.lanes.appends)));
            }
        }
    }

    fn paused(&mut self, tick: Tick) {
        let positions = self
            .lanes
            .all
            .iter()
            .map(|l| (l.topic.clone(), l.partition, l.next))
            .collect();
        self.ledger.lock().expect("ledger").paused = Some((tick, positions));
        // the checkpoint of this pause is saved once these are in files
        let ended = self.at_end();
        if let Some(a) = &mut self.lanes.archive {
            a.mark(tick, ended);
        }
    }

    fn tend(&mut self) {
        self.follow_durable();
        if let Some(a) = &mut self.lanes.archive {
            a.tend();
        }
    }

    fn pending(&self, mark: &mut dyn FnMut(&str, i32)) {
        for l in &self.lanes.all {
            // a backlog from the start, or a record within the idle timeout
            let more = l.next < l.end
                || (!self.exit_at_end
                    && l.read_at.is_some_and(|at| at.elapsed() < self.idle_timeout));
            if more || !l.held.is_empty() {
                mark(&l.topic, l.partition);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        let now = now_ms();
        self.lanes.clock.set(now);
        now
    }
}

/// A fresh message's headers, copied only when the dataflow dead-letters it.
struct MessageHeaders<'a, 'm>(&'a BorrowedMessage<'m>);

impl std::fmt::Debug for MessageHeaders<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageHeaders")
    }
}

impl RecordHeaders for MessageHeaders<'_, '_> {
    fn owned(&self) -> Vec<Header> {
        (headers_of(self.0).into_iter())
            .map(|(k, v)| (k.into_owned(), v.map(<[u8]>::to_vec)))
            .collect()
    }
}

/// A record's headers (a key that is not UTF-8 read lossily), read with librdkafka itself:
/// rdkafka's `Headers::iter` panics on such a key, and a hostile producer's header would
/// abort the run — and every restart, which reads it again.
pub fn headers_of<'a>(
    m: &'a BorrowedMessage<'_>,
) -> Vec<(std::borrow::Cow<'a, str>, Option<&'a [u8]>)> {
    use rdkafka::bindings as rd;
    let Some(headers) = m.headers() else {
        return Vec::new();
    };
    // a `&BorrowedHeaders` is librdkafka's headers pointer (rdkafka casts it so)
    let native = headers as *const _ as *const rd::rd_kafka_headers_t;
    // SAFETY: `native` lives as long as the message, which `'a` borrows; librdkafka
    // hands out pointers into the message's own header list
    let count = unsafe { rd::rd_kafka_header_cnt(native) };
    (0..count)
        .filter_map(|i| {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: as above; the out-pointers are valid locals
            let err =
                unsafe { rd::rd_kafka_header_get_all(native, i, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            // SAFETY: a NUL-terminated name and `size` value bytes, both in the message
            let key = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy();
            let value = (!value.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) });
            Some((key, value))
        })
        .collect()
}

/// The offset of the first record appended at or after `ms` (the end when there is none).
fn offset_at(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    ms: u64,
    end: i64,
) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(ms as i64))?;
    let found = consumer
        .offsets_for_times(tpl, Duration::from_secs(10))
        .with_context(|| format!("finding the offset of time {ms} in {topic}/{partition}"))?;
    Ok(
        match found.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => end,
        },
    )
}
