//! Kafka: the per-worker source (manually assigned partitions, offsets committed only
//! behind the durable frontier), the DLQ and the producer `generate` uses.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tidemark_dataflows::record::{InvalidRecord, Poll, RecordRef, RecordSource};
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::config::Config;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a new group starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

impl std::str::FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            other => Err(format!("--from '{other}': use earliest or latest")),
        }
    }
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

pub struct KafkaSource {
    consumer: BaseConsumer,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<Partition, i64>,
    /// With `--exit-at-end`: the end offsets seen at start.
    ends: Option<BTreeMap<Partition, i64>>,
    /// Positions as of each inserted tick, waiting for that tick to become durable.
    inserted: VecDeque<(Tick, BTreeMap<Partition, i64>)>,
    read_since_insert: bool,
    committed: BTreeMap<Partition, i64>,
    last_commit: Instant,
    durable: ProbeHandle<Tick>,
    last_message: Instant,
    idle_timeout: Duration,
    freshness: Option<Arc<Freshness>>,
    appends: Vec<i64>,
    appends_by_tick: VecDeque<(Tick, Vec<i64>)>,
    /// With `--exit-at-end`: everything read is durable and committed synchronously.
    final_commit_done: bool,
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

impl KafkaSource {
    /// Assigns this worker its share of the topics' partitions (round robin over all
    /// workers of all processes) and seeks to the committed offsets, else to `from`.
    pub fn new(
        cfg: &Config,
        topics: &[String],
        worker: usize,
        peers: usize,
        exit_at_end: bool,
        durable: ProbeHandle<Tick>,
        freshness: Option<Arc<Freshness>>,
    ) -> anyhow::Result<Self> {
        let group = cfg
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("tidemark-{}", cfg.job));
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
                    bail!("topic '{topic}' has no partitions (does it exist? create it with the partitions you want)");
                }
                all.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
            }
        }
        all.sort();
        let mine: Vec<Partition> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % peers == worker)
            .map(|(_, p)| p)
            .collect();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &mine {
            tpl.add_partition(t, *p);
        }
        let committed = if mine.is_empty() {
            TopicPartitionList::new()
        } else {
            committed_offsets(&consumer, &tpl)?
        };
        let mut positions = BTreeMap::new();
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for e in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
            let start = match e.offset() {
                Offset::Offset(o) if o >= low => o,
                _ => match cfg.kafka.from {
                    StartFrom::Earliest => low,
                    StartFrom::Latest => high,
                },
            };
            let key = (e.topic().to_string(), e.partition());
            positions.insert(key.clone(), start);
            ends.insert(key, high);
            assignment.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
        }
        consumer.assign(&assignment)?;
        tracing::info!(worker, partitions = ?mine, group = %group, "kafka source assigned");
        Ok(KafkaSource {
            consumer,
            committed: positions.clone(),
            positions,
            ends: exit_at_end.then_some(ends),
            inserted: VecDeque::new(),
            read_since_insert: false,
            last_commit: Instant::now(),
            durable,
            last_message: Instant::now(),
            idle_timeout: Duration::from_millis(cfg.kafka.idle_timeout_ms),
            freshness,
            appends: Vec::new(),
            appends_by_tick: VecDeque::new(),
            final_commit_done: false,
        })
    }

    fn at_end(&self) -> bool {
        self.ends.as_ref().is_some_and(|ends| {
            ends.iter()
                .all(|(p, end)| self.positions.get(p).is_some_and(|o| o >= end))
        })
    }

    /// Commits the positions of every tick that every sink has durably written.
    fn commit_durable(&mut self, force: bool) {
        let mut newest = None;
        while let Some((tick, _)) = self.inserted.front() {
            if self.durable.less_equal(tick) {
                break;
            }
            newest = self.inserted.pop_front().map(|(_, p)| p);
        }
        if let Some(f) = &self.freshness {
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
                f.record(&samples, now);
            }
        }
        if let Some(p) = newest {
            self.committed = p;
        }
        if !force && self.last_commit.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_commit = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &self.committed {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        if tpl.count() > 0 {
            let mode = if force {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            if let Err(e) = self.consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, "offset commit failed; it is retried with the next durable tick");
            }
        }
    }
}

impl RecordSource for KafkaSource {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>)) -> Poll {
        self.commit_durable(false);
        let mut n = 0;
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll error");
                    break;
                }
                Some(Ok(m)) => {
                    n += 1;
                    let append_ms = m.timestamp().to_millis().unwrap_or(0);
                    visit(RecordRef {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                        append_ms,
                        key: m.key(),
                        payload: m.payload().unwrap_or(&[]),
                    });
                    if self.freshness.is_some() {
                        self.appends.push(append_ms);
                    }
                    // a worker has few partitions: a scan beats allocating a key per message
                    let (topic, partition) = (m.topic(), m.partition());
                    if let Some((_, pos)) = self
                        .positions
                        .iter_mut()
                        .find(|((t, p), _)| *p == partition && t == topic)
                    {
                        *pos = m.offset() + 1;
                    }
                }
            }
        }
        if n > 0 {
            self.last_message = Instant::now();
            self.read_since_insert = true;
        }
        if n == max {
            Poll::Busy
        } else if self.at_end() {
            Poll::Finished
        } else {
            Poll::Caught {
                idle: self.last_message.elapsed() >= self.idle_timeout,
            }
        }
    }

    fn inserted(&mut self, tick: Tick) {
        if self.read_since_insert {
            self.read_since_insert = false;
            match self.inserted.back_mut() {
                Some((t, p)) if *t == tick => *p = self.positions.clone(),
                _ => self.inserted.push_back((tick, self.positions.clone())),
            }
            if !self.appends.is_empty() {
                self.appends_by_tick
                    .push_back((tick, std::mem::take(&mut self.appends)));
            }
        }
    }

    fn tend(&mut self) {
        let all_durable = self.at_end() && self.inserted.is_empty();
        self.commit_durable(all_durable && !self.final_commit_done);
        self.final_commit_done |= all_durable;
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// The group's committed offsets, waiting out a coordinator that is still loading (a new
/// broker creates `__consumer_offsets` on the first request).
fn committed_offsets(
    consumer: &BaseConsumer,
    tpl: &TopicPartitionList,
) -> anyhow::Result<TopicPartitionList> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for the group coordinator");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).context("reading the group's committed offsets"),
        }
    }
}

/// Produces records to Kafka, keyed, and waits until every one is acknowledged.
pub struct Sender {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Sender {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("creating the kafka producer")?;
        Ok(Sender { producer })
    }

    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) {
        self.send_optional(topic, key, Some(payload), headers)
    }

    /// As `send`; without a payload the record is a tombstone.
    pub fn send_optional(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) {
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
                Ok(()) => return,
                Err((e, r)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        tracing::error!(error = %e, topic, "produce failed");
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .context("flushing the kafka producer")
    }
}

/// The DLQ envelope (DESIGN §4) and Kafka Connect's error headers.
pub fn dlq_record(r: &InvalidRecord) -> (String, Vec<u8>, OwnedHeaders) {
    let key = format!("{}/{}/{}", r.topic, r.partition, r.offset);
    let payload = match std::str::from_utf8(&r.payload) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&r.payload).into_owned()),
    };
    let envelope = serde_json::json!({
        "source_topic": r.topic,
        "source_partition": r.partition,
        "source_offset": r.offset,
        "source_timestamp_ms": r.append_ms,
        "source_key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "error_type": r.error.kind.as_str(),
        "error_message": r.error.message,
        "payload": payload,
        "failed_at_ms": now_ms(),
    });
    let partition = r.partition.to_string();
    let offset = r.offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "__connect.errors.topic",
            value: Some(r.topic.as_bytes()),
        })
        .insert(Header {
            key: "__connect.errors.partition",
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: "__connect.errors.offset",
            value: Some(offset.as_bytes()),
        })
        .insert(Header {
            key: "__connect.errors.exception.class.name",
            value: Some(r.error.kind.as_str().as_bytes()),
        })
        .insert(Header {
            key: "__connect.errors.exception.message",
            value: Some(r.error.message.as_bytes()),
        });
    (key, serde_json::to_vec(&envelope).expect("JSON"), headers)
}
