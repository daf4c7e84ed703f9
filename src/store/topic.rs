//! Kafka topic outputs: a table whose sink is `SinkKind::Topic` is produced as a changelog.

use std::sync::Arc;

use tidemark_dataflows::features::{SinkKind, TickChanges};
use tidemark_dataflows::Tick;

use super::{Store, Writer};
use crate::kafka::Sender;

pub struct TopicStore {
    sender: Sender,
    writer: Writer,
}

impl TopicStore {
    pub fn open(brokers: &str, writer: Writer) -> anyhow::Result<Self> {
        Ok(TopicStore {
            sender: Sender::new(brokers)?,
            writer,
        })
    }
}

impl Store for TopicStore {
    fn name(&self) -> &'static str {
        "kafka"
    }

    /// Produces every change of the ticks and waits for the broker to acknowledge them all.
    fn write(&mut self, ticks: &[Arc<TickChanges>], _progress: Option<Tick>) -> anyhow::Result<()> {
        let mut produced = false;
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
                        o.insert(f.name.to_string(), v.to_json());
                    }
                    o.insert("_tick".into(), t.tick.into());
                    serde_json::to_vec(&o).expect("JSON")
                });
                self.sender
                    .send_optional(topic, Some(key.as_bytes()), payload.as_deref(), None);
                produced = true;
            }
        }
        if produced {
            self.sender.flush()?;
        }
        Ok(())
    }
}
