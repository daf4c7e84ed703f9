//! `tidemark dlq replay --to TOPIC [--reason R]…`: re-sends the dead letters as the records
//! they were — original key, headers and bytes, a tombstone as a tombstone — to a topic
//! (the source, once its producer or Tidemark's decoder is fixed), the way Kafka Connect's
//! DLQ is replayed. It reads the DLQ from its start up to the end it had when the replay
//! began. A letter whose payload, key or headers were cut to fit the DLQ is skipped and
//! counted: the whole record is in its source topic, at the coordinates the letter names.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::sink::dlq::letter::{original, NotReplayable, REASON_HEADER};
use crate::sink::producer::Sender;
use crate::source::kafka::headers_of;

/// What a replay did with the letters it read.
#[derive(Debug, Default)]
pub struct Replayed {
    pub sent: u64,
    /// Not of the `--reason`s asked for.
    pub filtered: u64,
    /// Cut to fit the DLQ: the whole record is in its source topic.
    pub truncated: u64,
    /// Entity updates a store refused (no source record to replay).
    pub not_records: u64,
    /// Letters of an older format that kept a binary payload lossily.
    pub damaged: u64,
}

/// Gives up when the DLQ sends nothing for this long before its end offsets.
const STALL: Duration = Duration::from_secs(30);

/// Replays `config`'s DLQ (`kafka.dlq_topic`) to `to`; only letters of `reasons` when some
/// are given (`json`, `missing_field`, …: the `tidemark.errors.reason` header).
pub fn replay(config: &Config, to: &str, reasons: &[String]) -> anyhow::Result<Replayed> {
    let dlq = &config.kafka.dlq_topic;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("tidemark-dlq-replay-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a kafka consumer (kafka.brokers)")?;
    let timeout = Duration::from_secs(10);
    let md = (consumer.fetch_metadata(Some(dlq), timeout))
        .with_context(|| format!("reading the DLQ topic {dlq} (kafka.dlq_topic)"))?;
    let partitions: Vec<i32> = (md.topics().iter())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(dlq, p, timeout)?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(dlq, p, Offset::Offset(low))?;
        }
    }
    let mut done = Replayed::default();
    if ends.is_empty() {
        return Ok(done);
    }
    consumer.assign(&tpl)?;
    let producer = Sender::new(&config.kafka.brokers)?;
    let mut last = Instant::now();
    while !ends.is_empty() {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            anyhow::ensure!(
                last.elapsed() < STALL,
                "the DLQ {dlq} sent nothing for {} s before its end ({} partitions left)",
                STALL.as_secs(),
                ends.len()
            );
            continue;
        };
        let m = m.with_context(|| format!("reading the DLQ {dlq}"))?;
        last = Instant::now();
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
        let headers: Vec<_> = (headers_of(&m).into_iter())
            .map(|(k, v)| (k.into_owned(), v.map(<[u8]>::to_vec)))
            .collect();
        // older letters named the reason in Connect's exception class header
        let named = |name: &str| headers.iter().find(|(k, _)| k == name);
        let reason = (named(REASON_HEADER)
            .or_else(|| named("__connect.errors.exception.class.name")))
        .and_then(|(_, v)| v.as_deref())
        .map(String::from_utf8_lossy);
        if !reasons.is_empty() && !reason.is_some_and(|r| reasons.iter().any(|x| *x == r)) {
            done.filtered += 1;
            continue;
        }
        match original(m.key(), m.payload(), &headers) {
            Ok((key, value, originals)) => {
                let headers = originals
                    .iter()
                    .fold(OwnedHeaders::new(), |h, (key, value)| {
                        h.insert(Header {
                            key,
                            value: value.as_deref(),
                        })
                    });
                (producer.send_optional(to, key.as_deref(), value.as_deref(), Some(headers)))
                    .map_err(|e| anyhow::anyhow!("sending to {to}: {e}"))?;
                done.sent += 1;
            }
            Err(NotReplayable::Truncated) => done.truncated += 1,
            Err(NotReplayable::NotARecord) => done.not_records += 1,
            Err(NotReplayable::Damaged) => done.damaged += 1,
        }
    }
    producer
        .flush()
        .with_context(|| format!("delivering the replayed records to {to}"))?;
    Ok(done)
}
