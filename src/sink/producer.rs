//! The Kafka producer every Kafka output shares (the DLQ, topic outputs, `generate`):
//! keyed records, each delivery tracked, records Kafka refuses for good told apart from a
//! topic that takes nothing.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

use crate::clock::now_ms;

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
    /// Kept for [`Sender::take_refused`] only when its owner takes them
    /// ([`Sender::keeping_refused`]); else counted and logged alone, so nothing grows.
    keep_refused: std::sync::atomic::AtomicBool,
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
                if self.keep_refused.load(AtomicOrdering::Relaxed) {
                    self.refused_records.lock().expect("deliveries").push(r);
                }
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
                        // settled at once: counted as sent and refused
                        self.deliveries.sent.fetch_add(1, AtomicOrdering::Relaxed);
                        self.deliveries
                            .refused
                            .fetch_add(1, AtomicOrdering::Relaxed);
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

    /// Keeps the records the broker refuses after delivery, for [`Sender::take_refused`].
    pub fn keeping_refused(self) -> Self {
        self.deliveries
            .keep_refused
            .store(true, AtomicOrdering::Relaxed);
        self
    }

    /// The records the broker refused for good since the last call (with
    /// [`Sender::keeping_refused`]).
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

impl crate::telemetry::DeliveryHealth for Deliveries {
    fn failed(&self) -> u64 {
        self.failed.load(AtomicOrdering::Relaxed)
    }
    fn refused(&self) -> u64 {
        self.refused.load(AtomicOrdering::Relaxed)
    }
    fn failing_since(&self) -> u64 {
        self.failing_since.load(AtomicOrdering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Refused {
        Refused {
            topic: "t".into(),
            key: None,
            error: "too large".into(),
        }
    }

    #[test]
    fn refused_records_are_counted_and_kept_only_for_an_owner_that_takes_them() {
        let dlq = Deliveries::default();
        for _ in 0..3 {
            dlq.report(Err(refused()), true);
        }
        assert_eq!(dlq.refused.load(AtomicOrdering::Relaxed), 3);
        assert!(
            dlq.refused_records.lock().unwrap().is_empty(),
            "nothing grows"
        );
        let output = Deliveries::default();
        output.keep_refused.store(true, AtomicOrdering::Relaxed);
        output.report(Err(refused()), true);
        assert_eq!(output.refused_records.lock().unwrap().len(), 1);
        // a failure of the topic is not a refusal
        output.report(Err(refused()), false);
        assert_eq!(output.failed.load(AtomicOrdering::Relaxed), 1);
        assert_eq!(output.settled(), 2);
    }
}
