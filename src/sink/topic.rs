//! Kafka topic outputs: a table whose sink is `SinkKind::Topic` is produced as a changelog.

use std::sync::Arc;

use tidemark_dataflows::contract::table::{SinkKind, TickChanges};
use tidemark_dataflows::Tick;

use super::{Store, Writer};
use crate::sink::producer::{SendError, Sender};
use crate::telemetry::Unstorable;

pub struct TopicStore {
    sender: Sender,
    writer: Writer,
}

impl TopicStore {
    pub fn open(brokers: &str, max_message_bytes: usize, writer: Writer) -> anyhow::Result<Self> {
        Ok(TopicStore {
            sender: Sender::with_limit(brokers, max_message_bytes)?.keeping_refused(),
            writer,
        })
    }
}

impl Store for TopicStore {
    fn name(&self) -> &'static str {
        "kafka"
    }

    /// Produces every change of the ticks and waits for the broker to acknowledge them all.
    /// A record the producer or the broker refuses for good (over the message limit) is
    /// left out and reported; a topic that takes nothing fails the write (it is retried).
    fn write(
        &mut self,
        ticks: &[Arc<TickChanges>],
        _progress: Option<Tick>,
    ) -> anyhow::Result<Vec<Unstorable>> {
        // what failed before is written again now
        self.sender.forget_failures();
        let mut produced = false;
        let mut refused = Vec::new();
        let entity = |topic: &str, key: &[u8]| format!("{topic}|{}", String::from_utf8_lossy(key));
        for t in ticks {
            for c in &t.changes {
                let spec = &self.writer.tables[c.table as usize];
                let Some(topic) = spec.sink.topic() else {
                    continue;
                };
                if c.after.is_none() && matches!(spec.sink, SinkKind::Records(_)) {
                    continue;
                }
                let key = c.key.join("|");
                let payload = c.after.as_ref().map(|values| {
                    let mut o = serde_json::Map::new();
                    for (name, k) in spec.keys.iter().zip(&c.key) {
                        o.insert(name.to_string(), k.clone().into());
                    }
                    for (f, v) in spec.fields.iter().zip(values) {
                        o.insert(f.name.to_string(), f.json(v));
                    }
                    o.insert("_tick".into(), t.tick.into());
                    serde_json::to_vec(&o).expect("JSON")
                });
                match self.sender.send_optional(
                    topic,
                    Some(key.as_bytes()),
                    payload.as_deref(),
                    None,
                ) {
                    Ok(()) => produced = true,
                    Err(SendError::Record(error)) => refused.push(Unstorable {
                        entity: entity(topic, key.as_bytes()),
                        tick: t.tick,
                        error,
                    }),
                    Err(SendError::Topic(e)) => anyhow::bail!("producing to {topic}: {e}"),
                }
            }
        }
        if produced {
            self.sender.flush()?;
        }
        refused.extend(self.sender.take_refused().into_iter().map(|r| Unstorable {
            entity: entity(&r.topic, r.key.as_deref().unwrap_or_default()),
            tick: ticks.last().map_or(0, |t| t.tick),
            error: r.error,
        }));
        Ok(refused)
    }
}
