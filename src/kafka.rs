//! Kafka: the per-worker source (manually assigned partitions, offsets committed only
//! behind the durable frontier), the DLQ and the producer `generate` uses.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tidemark_dataflows::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::config::Config;
use crate::telemetry::Status;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a run without a checkpoint starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    /// The first record appended at or after this time (epoch ms).
    Time(u64),
}

impl std::str::FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            ms if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) => {
                ms.parse().map(StartFrom::Time).map_err(|e| format!("--from '{ms}': {e}"))
            }
            other => humantime::parse_rfc3339_weak(other)
                .map_err(|e| {
                    format!("--from '{other}': {e}; use earliest, latest, epoch ms or an RFC 3339 time such as 2026-01-01T00:00:00Z")
                })
                .map(|t| {
                    let ms = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    StartFrom::Time(ms)
                }),
        }
    }
}

impl std::fmt::Display for StartFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Time(ms) => write!(f, "{ms}"),
        }
    }
}

impl serde::Serialize for StartFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StartFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(StartFrom::Time(ms)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

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

/// Freshness samples: Kafka append time → the tick durable in every sink (ms).
#[derive(Default)]
pub struct Freshness {
    pub histogram: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Freshness {
    pub fn record(&self, samples: &[i64], now: i64) {
        let mut h = self.histogram.lock().expect("freshness lock");
        let h = h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds")
        });
        for a in samples {
            let _ = h.record((now - a).max(1) as u64);
        }
    }
}

type Partition = (String, i32);

/// Records a partition may hold back before its fetching stops.
const HELD_BEFORE_PAUSE: usize = 20_000;

/// A record the dataflow held back (its partition ran ahead), kept until it is taken.
struct HeldRecord {
    offset: i64,
    append_ms: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
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
    /// Records held back, oldest first.
    held: VecDeque<HeldRecord>,
    /// Fetching stopped: too many records are held back.
    paused: bool,
    /// Records taken in this poll, not yet added to the consumed counter.
    taken: u64,
    consumed: metrics::Counter,
}

impl Lane {
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }

    fn tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }
}

/// The assigned partitions, in (topic, partition) order, and what was taken from them.
struct Lanes {
    all: Vec<Lane>,
    /// The lane of the last record (records come in runs per partition).
    last: usize,
    /// The append times of the records taken since the last insert.
    appends: Vec<i64>,
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
}

pub struct KafkaSource {
    consumer: BaseConsumer,
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
        .set("fetch.min.bytes", "1");
    c
}

/// The consumer group a config reads with.
pub fn group_of(cfg: &Config) -> String {
    cfg.kafka
        .group_id
        .clone()
        .unwrap_or_else(|| format!("tidemark-{}", cfg.job))
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
    pub fn new(cfg: &Config, topics: &[String], start: SourceStart<'_>) -> anyhow::Result<Self> {
        let group = group_of(cfg);
        let consumer: BaseConsumer = consumer_config(cfg, &group)
            .create()
            .context("creating the kafka consumer")?;
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
                paused: false,
                taken: 0,
            })
            .collect();
        Ok(KafkaSource {
            consumer,
            lanes: Lanes {
                all,
                last: 0,
                appends: Vec::new(),
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

    /// Offers the held records again, oldest first per partition; a partition whose held
    /// records are all taken is resumed. Returns how many were taken.
    fn offer_held(&mut self, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit, now: Instant) -> usize {
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
                };
                if visit(record) == Visit::Held {
                    break;
                }
                let h = self.lanes.all[i].held.pop_front().expect("front exists");
                self.lanes.took(i, h.offset, h.append_ms, now);
                n += 1;
            }
            let lane = &mut self.lanes.all[i];
            if lane.held.is_empty() && std::mem::take(&mut lane.paused) {
                if let Err(e) = self.consumer.resume(&lane.tpl()) {
                    tracing::warn!(error = %e, "resuming a partition failed");
                }
            }
        }
        n
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
        if self.pending_records >= self.max_pending {
            // the sinks lag: hold off (time must not follow the clock meanwhile)
            return Poll::Caught { idle: false };
        }
        let now = Instant::now();
        let mut n = self.offer_held(visit, now);
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll error");
                    break;
                }
                Some(Ok(m)) => {
                    let i = self.lanes.find(m.topic(), m.partition());
                    let append_ms = m.timestamp().to_millis().unwrap_or(0);
                    let record = RecordRef {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                        append_ms,
                        key: m.key(),
                        payload: m.payload().unwrap_or(&[]),
                    };
                    // behind a held record, a record waits too
                    let lane = &mut self.lanes.all[i];
                    if lane.held.is_empty() && visit(record) == Visit::Taken {
                        n += 1;
                        self.lanes.took(i, m.offset(), append_ms, now);
                        continue;
                    }
                    // a resumed fetch takes the broker about a second: hold records here,
                    // and stop fetching only when many wait
                    if lane.held.len() >= HELD_BEFORE_PAUSE && !lane.paused {
                        lane.paused = true;
                        if let Err(e) = self.consumer.pause(&lane.tpl()) {
                            tracing::warn!(error = %e, "pausing a partition failed");
                        }
                    }
                    self.lanes.all[i].held.push_back(HeldRecord {
                        offset: m.offset(),
                        append_ms,
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or(&[]).to_vec(),
                    });
                }
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
        if n == max {
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
    }

    fn tend(&mut self) {
        self.follow_durable();
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
        now_ms()
    }
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

/// A record Kafka refused for good: retrying it can never succeed (too large, invalid).
#[derive(Clone, Debug)]
pub struct Refused {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub error: String,
}

/// Why a record could not be handed to the producer.
#[derive(Debug)]
pub enum SendError {
    /// This record can never be sent (larger than `message.max.bytes`, invalid): the
    /// caller records it and goes on.
    Record(String),
    /// The topic takes no record (unknown, invalid name, not authorized): counted as a
    /// failed delivery, so whoever depends on it (the DLQ) does not commit past it.
    Topic(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Record(e) => write!(f, "the record can never be sent: {e}"),
            SendError::Topic(e) => write!(f, "the topic takes no records: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// Whether a produce error is about this one record (it can never succeed, whatever is
/// retried) rather than the topic, the broker or the queue.
fn refuses_the_record(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidRecord
    )
}

/// What became of the records a [`Sender`] produced.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Records handed to the producer.
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    /// A failed delivery is never retried here: whoever depends on it (the DLQ) must not
    /// commit past it.
    pub failed: AtomicU64,
    /// Records the broker refused for good (see [`refuses_the_record`]): not a failure
    /// of the topic; [`Sender::take_refused`] hands them to whoever records them.
    pub refused: AtomicU64,
    refused_records: Mutex<Vec<Refused>>,
    /// Failures up to this count were dealt with ([`Sender::forget_failures`]).
    forgotten: AtomicU64,
    /// Epoch ms of the first failed delivery (none since the start).
    pub failing_since: AtomicU64,
    /// Notified at each delivery report, so a flush wakes at once.
    reported: (Mutex<()>, std::sync::Condvar),
}

impl Deliveries {
    fn report(&self, result: Result<(), Refused>, permanent: bool) {
        match result {
            Ok(()) => {
                self.delivered.fetch_add(1, AtomicOrdering::Relaxed);
            }
            Err(r) if permanent => {
                self.refused_records.lock().expect("deliveries").push(r);
                self.refused.fetch_add(1, AtomicOrdering::Relaxed);
            }
            Err(_) => self.fail(),
        }
        let _guard = self.reported.0.lock().expect("deliveries");
        self.reported.1.notify_all();
    }

    fn fail(&self) {
        self.failed.fetch_add(1, AtomicOrdering::Relaxed);
        let _ = self.failing_since.compare_exchange(
            0,
            now_ms(),
            AtomicOrdering::Relaxed,
            AtomicOrdering::Relaxed,
        );
    }

    fn settled(&self) -> u64 {
        self.delivered.load(AtomicOrdering::Relaxed)
            + self.failed.load(AtomicOrdering::Relaxed)
            + self.refused.load(AtomicOrdering::Relaxed)
    }
}

pub struct Tracking(Arc<Deliveries>);

impl ClientContext for Tracking {}

impl ProducerContext for Tracking {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.report(Ok(()), false),
            Err((e, m)) => {
                let permanent = e.rdkafka_error_code().is_some_and(refuses_the_record);
                tracing::error!(error = %e, topic = m.topic(), key = %String::from_utf8_lossy(m.key().unwrap_or_default()), permanent, "a record could not be delivered to kafka");
                let refused = Refused {
                    topic: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    error: e.to_string(),
                };
                self.0.report(Err(refused), permanent);
            }
        }
    }
}

/// Produces records to Kafka, keyed, and tracks every delivery.
pub struct Sender {
    producer: ThreadedProducer<Tracking>,
    pub deliveries: Arc<Deliveries>,
    /// The producer's `message.max.bytes`: a larger record is refused at once.
    pub max_message_bytes: usize,
}

impl Sender {
    /// A producer with librdkafka's default message limit (1,000,000 bytes).
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        Self::with_limit(brokers, 1_000_000)
    }

    /// A producer refusing records over `max_message_bytes` (`kafka.message_max_bytes`).
    pub fn with_limit(brokers: &str, max_message_bytes: usize) -> anyhow::Result<Self> {
        let deliveries: Arc<Deliveries> = Arc::default();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // a writer sends a tick's records and then waits for their acks: lingering
            // would only add to that wait (a tick's records still share requests)
            .set("linger.ms", "0")
            .set("compression.type", "lz4")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.max.bytes", max_message_bytes.to_string())
            .create_with_context(Tracking(deliveries.clone()))
            .context("creating the kafka producer (kafka.message_max_bytes)")?;
        Ok(Sender {
            producer,
            deliveries,
            max_message_bytes,
        })
    }

    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), SendError> {
        self.send_optional(topic, key, Some(payload), headers)
    }

    /// As `send`; without a payload the record is a tombstone. Waits while the producer's
    /// queue is full (it drains as deliveries complete); any other error is returned at
    /// once, never retried.
    pub fn send_optional(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), SendError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.deliveries.sent.fetch_add(1, AtomicOrdering::Relaxed);
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    let permanent = e.rdkafka_error_code().is_some_and(refuses_the_record);
                    tracing::error!(error = %e, topic, permanent, "produce failed");
                    if permanent {
                        return Err(SendError::Record(e.to_string()));
                    }
                    // counted as a failed delivery: a flush reports it
                    self.deliveries.sent.fetch_add(1, AtomicOrdering::Relaxed);
                    self.deliveries.fail();
                    return Err(SendError::Topic(e.to_string()));
                }
            }
        }
    }

    /// The records the broker refused for good since the last call.
    pub fn take_refused(&self) -> Vec<Refused> {
        std::mem::take(&mut *self.deliveries.refused_records.lock().expect("deliveries"))
    }

    /// Waits until every record sent so far is delivered; an error if one failed, ever.
    /// Records refused for good do not fail it (see [`Sender::take_refused`]).
    pub fn flush(&self) -> anyhow::Result<()> {
        self.flush_within(Duration::from_secs(60))
    }

    /// Waits on the delivery reports rather than with `Producer::flush`: the producer's
    /// own thread polls the same reports, and a flush that polls after it took one sleeps
    /// 100 ms — every write of a topic output did, which was most of the ads family's
    /// freshness.
    pub fn flush_within(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let target = self.deliveries.sent.load(AtomicOrdering::Relaxed);
        let (lock, reported) = &self.deliveries.reported;
        let mut guard = lock.lock().expect("deliveries");
        while self.deliveries.settled() < target {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "flushing the kafka producer: {} of {target} records not acknowledged within {timeout:?}",
                    target - self.deliveries.settled()
                );
            }
            guard = reported
                .wait_timeout(guard, (deadline - now).min(Duration::from_millis(10)))
                .expect("deliveries")
                .0;
        }
        drop(guard);
        let failed = self.deliveries.failed.load(AtomicOrdering::Relaxed);
        match failed - self.deliveries.forgotten.load(AtomicOrdering::Relaxed) {
            0 => Ok(()),
            n => bail!("{n} records could not be delivered to kafka"),
        }
    }

    /// The failed deliveries so far are dealt with (their writer sends them again), so
    /// a later flush fails only for new ones.
    pub fn forget_failures(&self) {
        let failed = self.deliveries.failed.load(AtomicOrdering::Relaxed);
        self.deliveries
            .forgotten
            .store(failed, AtomicOrdering::Relaxed);
        self.deliveries
            .failing_since
            .store(0, AtomicOrdering::Relaxed);
    }
}
