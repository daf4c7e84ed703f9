//! The dead-letter topic (DESIGN §4): a letter per invalid record ([`letter`]: the original
//! key and headers, Kafka Connect's error headers, an envelope or the original bytes), and
//! per entity update a store can never take.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::ClientConfig;
use tidemark_dataflows::contract::record::InvalidRecord;
use tidemark_dataflows::Tick;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::clock::now_ms;
use crate::config::{Config, DlqFormat};
use crate::sink::producer::Sender;
use crate::telemetry::Status;

/// A DLQ record is never smaller than this allowance (a topic that takes less is refused
/// at start: not even an envelope without payload would fit reliably).
pub const MIN_RECORD_BYTES: usize = 8 * 1024;
pub mod letter;

use letter::{cut, Letter, Writer, TEXT_BYTES};

/// The DLQ producer and what one of its records may hold.
pub struct Dlq {
    pub sender: Arc<Sender>,
    pub topic: String,
    /// The largest record the producer and the topic both take.
    pub max_record_bytes: usize,
    /// The letters' value (`dlq.format`).
    pub format: DlqFormat,
    /// Connect's `connector.name`: the job.
    pub job: String,
    /// The family whose decoder refused the records.
    pub family: String,
}

impl Dlq {
    /// The producer of `cfg`, with the largest record both it (`kafka.message_max_bytes`)
    /// and the DLQ topic (`max.message.bytes`, else the broker's `message.max.bytes`) take.
    pub fn open(cfg: &Config) -> anyhow::Result<Self> {
        let broker = broker_limit(cfg)?;
        let max = cfg
            .kafka
            .message_max_bytes
            .min(broker.unwrap_or(usize::MAX));
        if max < MIN_RECORD_BYTES {
            return Err(crate::permanent::Permanent(format!(
                "the DLQ topic {} takes records of at most {max} bytes (kafka.message_max_bytes, or the topic's max.message.bytes): raise it to {MIN_RECORD_BYTES} or more",
                cfg.kafka.dlq_topic
            ))
            .into());
        }
        if broker.is_some_and(|b| b < cfg.kafka.message_max_bytes) {
            tracing::info!(topic = %cfg.kafka.dlq_topic, max_record_bytes = max, "the DLQ topic takes less than kafka.message_max_bytes: envelopes are kept under its limit");
        }
        Ok(Dlq {
            sender: Arc::new(Sender::with_limit(&cfg.kafka.brokers, max)?),
            topic: cfg.kafka.dlq_topic.clone(),
            max_record_bytes: max,
            format: cfg.dlq.format,
            job: cfg.job.clone(),
            family: cfg.dataflow.clone(),
        })
    }

    /// Sends an invalid record's envelope; one the producer refuses all the same is
    /// counted and logged with its coordinates, and the pipeline goes on.
    pub fn send_invalid(&self, r: &InvalidRecord) {
        let writer = Writer {
            job: &self.job,
            family: &self.family,
        };
        let l = letter::letter(r, &writer, self.format, self.max_record_bytes);
        self.send(l);
    }

    /// Sends the record of an entity update `sink` can never store.
    pub fn send_unstorable(&self, sink: &str, u: &crate::telemetry::Unstorable) {
        let key = format!("{sink}/{}", cut(&u.entity, TEXT_BYTES).0);
        let value = serde_json::json!({
            "error_type": "unstorable",
            "sink": sink,
            "entity": cut(&u.entity, TEXT_BYTES).0,
            "entity_bytes": u.entity.len(),
            "tick": u.tick,
            "error_message": cut(&u.error, TEXT_BYTES).0,
            "failed_at_ms": now_ms(),
        });
        let headers = [
            (
                "__connect.errors.exception.class.name",
                "io.tidemark.UnstorableException",
            ),
            (letter::REASON_HEADER, "unstorable"),
            (letter::FORMAT_HEADER, "envelope"),
        ];
        self.send(Letter {
            key: Some(key.into_bytes()),
            value: Some(serde_json::to_vec(&value).expect("JSON")),
            headers: (headers.iter())
                .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
        });
    }

    fn send(&self, l: Letter) {
        let headers = l
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            });
        let sent = (self.sender).send_optional(
            &self.topic,
            l.key.as_deref(),
            l.value.as_deref(),
            Some(headers),
        );
        if let Err(e) = sent {
            // a refused record is counted by the producer; a topic that takes nothing
            // counts as a failed delivery and holds back every checkpoint
            let key = l.key.as_deref().map(String::from_utf8_lossy);
            tracing::error!(key = ?key, dlq = %self.topic, error = %e, "a DLQ record was not sent");
        }
    }
}

/// The DLQ topic's `max.message.bytes`, else the broker's `message.max.bytes` (a topic that
/// does not exist yet is created with it), if the cluster says.
fn broker_limit(cfg: &Config) -> anyhow::Result<Option<usize>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create()
        .context("creating a kafka admin client (kafka.brokers)")?;
    let timeout = Duration::from_secs(10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let value = |spec: ResourceSpecifier<'_>, key: &str| -> Option<usize> {
        let described = rt.block_on(admin.describe_configs(&[spec], &opts)).ok()?;
        let resource = described.into_iter().next()?.ok()?;
        resource.get(key)?.value.as_deref()?.parse().ok()
    };
    if let Some(v) = value(
        ResourceSpecifier::Topic(&cfg.kafka.dlq_topic),
        "max.message.bytes",
    ) {
        return Ok(Some(v));
    }
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .with_context(|| format!("reaching kafka at {} (kafka.brokers)", cfg.kafka.brokers))?;
    Ok(md
        .brokers()
        .first()
        .and_then(|b| value(ResourceSpecifier::Broker(b.id()), "message.max.bytes")))
}

/// Sends invalid records to the DLQ topic (or logs them when there is no Kafka).
pub fn dead_letters<'s>(
    invalid: Stream<'s, Tick, Vec<InvalidRecord>>,
    dlq: Option<Arc<Dlq>>,
    topic: String,
    status: Arc<Status>,
) {
    // a flood of bad records must not flood the log: the first few per 10 s are logged
    let mut logged = (Instant::now(), 0u32);
    invalid.sink(Pipeline, "DeadLetters", move |(input, _)| {
        input.for_each(|_, records| {
            status
                .dlq_records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            for r in records.drain(..) {
                if logged.0.elapsed() > Duration::from_secs(10) {
                    if logged.1 > 10 {
                        tracing::warn!(
                            unlogged = logged.1 - 10,
                            "more invalid records, not logged one by one"
                        );
                    }
                    logged = (Instant::now(), 0);
                }
                logged.1 += 1;
                if logged.1 <= 10 {
                    let error = cut(&r.error.message, TEXT_BYTES).0;
                    match &dlq {
                        Some(_) => tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, reason = r.error.kind.as_str(), error, dlq = %topic, "invalid record"),
                        // a replay of the archive, or the demo: counted, not dead-lettered
                        None => tracing::debug!(topic = %r.topic, partition = r.partition, offset = r.offset, reason = r.error.kind.as_str(), error, "invalid record"),
                    }
                }
                if let Some(d) = &dlq {
                    d.send_invalid(&r);
                }
            }
        });
    });
}
