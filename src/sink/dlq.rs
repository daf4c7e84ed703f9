//! The dead-letter topic (DESIGN §4): an envelope per invalid record, and per entity update
//! a store can never take. Every DLQ record fits the producer's and the topic's message
//! limit by construction: a payload too large for it is cut, and the envelope keeps its
//! size, its SHA-256 and its source coordinates (the whole bytes stay in the source topic).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::ClientConfig;
use sha2::{Digest, Sha256};
use tidemark_dataflows::contract::record::InvalidRecord;
use tidemark_dataflows::Tick;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::clock::now_ms;
use crate::config::Config;
use crate::sink::producer::Sender;
use crate::telemetry::Status;

/// A DLQ record is never smaller than this allowance (a topic that takes less is refused
/// at start: not even an envelope without payload would fit reliably).
pub const MIN_RECORD_BYTES: usize = 8 * 1024;
/// What a record costs besides its value and headers (batch and record framing).
const FRAMING_BYTES: usize = 512;
/// Free text in an envelope or a header (error messages, source keys) is cut here.
const TEXT_BYTES: usize = 1024;

/// The DLQ producer and what one of its records may hold.
pub struct Dlq {
    pub sender: Arc<Sender>,
    pub topic: String,
    /// The largest record the producer and the topic both take.
    pub max_record_bytes: usize,
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
        })
    }

    /// Sends an invalid record's envelope; one the producer refuses all the same is
    /// counted and logged with its coordinates, and the pipeline goes on.
    pub fn send_invalid(&self, r: &InvalidRecord) {
        let (key, payload, headers) = envelope(r, self.max_record_bytes);
        self.send(&key, &payload, headers);
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
        let headers = OwnedHeaders::new().insert(Header {
            key: "__connect.errors.exception.class.name",
            value: Some("unstorable".as_bytes()),
        });
        self.send(&key, &serde_json::to_vec(&value).expect("JSON"), headers);
    }

    fn send(&self, key: &str, payload: &[u8], headers: OwnedHeaders) {
        if let Err(e) = self
            .sender
            .send(&self.topic, Some(key.as_bytes()), payload, Some(headers))
        {
            // a refused record is counted by the producer; a topic that takes nothing
            // counts as a failed delivery and holds back every checkpoint
            tracing::error!(key, dlq = %self.topic, error = %e, "a DLQ record was not sent");
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

/// How many bytes `c` takes in a JSON string (as serde_json escapes it).
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `s` (on a character boundary) whose JSON-escaped form takes at
/// most `budget` bytes, and whether it is all of `s`.
fn cut(s: &str, budget: usize) -> (&str, bool) {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += escaped_len(c);
        if used > budget {
            return (&s[..i], false);
        }
    }
    (s, true)
}

/// The DLQ envelope (DESIGN §4) and Kafka Connect's error headers, in at most `max` bytes:
/// the payload goes whole when it fits, else its first bytes, with its size and SHA-256.
pub fn envelope(r: &InvalidRecord, max: usize) -> (String, Vec<u8>, OwnedHeaders) {
    let key = format!("{}/{}/{}", r.topic, r.partition, r.offset);
    let text = String::from_utf8_lossy(&r.payload);
    let source_key = r.key.as_ref().map(|k| String::from_utf8_lossy(k));
    let message = cut(&r.error.message, TEXT_BYTES).0;
    let mut envelope = serde_json::json!({
        "source_topic": r.topic,
        "source_partition": r.partition,
        "source_offset": r.offset,
        "source_timestamp_ms": r.append_ms,
        "source_key": source_key.as_deref().map(|k| cut(k, TEXT_BYTES).0),
        "error_type": r.error.kind.as_str(),
        "error_message": message,
        "payload": "",
        "payload_bytes": r.payload.len(),
        "payload_sha256": hex(&Sha256::digest(&r.payload)),
        "payload_truncated": false,
        "payload_utf8": matches!(text, std::borrow::Cow::Borrowed(_)),
        "failed_at_ms": now_ms(),
    });
    let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
    let headers = [
        ("__connect.errors.topic", r.topic.as_str()),
        ("__connect.errors.partition", partition.as_str()),
        ("__connect.errors.offset", offset.as_str()),
        (
            "__connect.errors.exception.class.name",
            r.error.kind.as_str(),
        ),
        ("__connect.errors.exception.message", message),
    ];
    let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let fixed = serde_json::to_vec(&envelope).expect("JSON").len();
    let budget = max.saturating_sub(FRAMING_BYTES + key.len() + header_bytes + fixed + 8);
    let (payload, whole) = cut(&text, budget);
    envelope["payload"] = payload.into();
    envelope["payload_truncated"] = (!whole).into();
    let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    });
    (key, serde_json::to_vec(&envelope).expect("JSON"), headers)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_dataflows::contract::record::{DecodeError, ErrorKind};

    fn record(payload: Vec<u8>) -> InvalidRecord {
        InvalidRecord {
            topic: "t".into(),
            partition: 3,
            offset: 42,
            append_ms: 1,
            key: Some(vec![b'k'; 5000]),
            payload,
            error: DecodeError::new(ErrorKind::Json, "x".repeat(5000)),
            claimed_ts: None,
        }
    }

    /// Control characters grow six-fold in JSON: the envelope is cut to fit anyway, and
    /// says how large the payload was and what its hash is.
    #[test]
    fn an_envelope_always_fits_its_limit() {
        for (payload, max) in [
            (vec![1u8; 300_000], 1_000_000),
            (vec![b'a'; 2_000_000], 1_000_000),
            (vec![0xff; 100_000], 64 * 1024),
            ("\"é\\".repeat(100_000).into_bytes(), MIN_RECORD_BYTES),
        ] {
            let (key, value, _) = envelope(&record(payload.clone()), max);
            // what the headers take is left out of the payload's budget, too
            assert!(
                value.len() + key.len() + FRAMING_BYTES <= max,
                "{} bytes for a limit of {max}",
                value.len()
            );
            let e: serde_json::Value = serde_json::from_slice(&value).unwrap();
            assert_eq!(e["payload_bytes"], payload.len());
            assert_eq!(e["payload_truncated"], true);
            assert_eq!(e["payload_sha256"], hex(&Sha256::digest(&payload)));
            let kept = e["payload"].as_str().unwrap();
            assert!(!kept.is_empty());
            assert!(String::from_utf8_lossy(&payload).starts_with(kept));
            assert_eq!(e["source_offset"], 42);
            assert!(e["error_message"].as_str().unwrap().len() <= TEXT_BYTES);
        }
    }

    #[test]
    fn a_small_payload_goes_whole() {
        let (_, value, _) = envelope(&record(b"{\"bad\": json".to_vec()), 1_000_000);
        let e: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(e["payload"], "{\"bad\": json");
        assert_eq!(e["payload_truncated"], false);
        assert_eq!(e["payload_utf8"], true);
    }
}
