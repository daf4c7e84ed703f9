//! The embedded store: what `demo` serves without any service running.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tidemark_dataflows::contract::table::{TickChanges, Value};
use tidemark_dataflows::Tick;

use super::{Store, Writer};
use crate::telemetry::Unstorable;

/// Entities by `(table, key)`: values and the tick of their last change.
#[derive(Default)]
pub struct MemoryState {
    pub entities: HashMap<(u8, Vec<String>), (Vec<Value>, Tick)>,
    /// Per worker: every tick before it is written.
    pub progress: HashMap<usize, Tick>,
}

impl MemoryState {
    /// The last tick every worker has fully written.
    pub fn frontier(&self, peers: usize) -> Option<Tick> {
        if self.progress.len() < peers {
            return None;
        }
        self.progress.values().min().map(|t| t.saturating_sub(1))
    }
}

pub type Shared = Arc<RwLock<MemoryState>>;

pub struct MemoryStore {
    pub state: Shared,
    pub writer: Writer,
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn write(
        &mut self,
        ticks: &[Arc<TickChanges>],
        progress: Option<Tick>,
    ) -> anyhow::Result<Vec<Unstorable>> {
        let mut state = self.state.write().expect("memory store lock");
        for t in ticks {
            for c in &t.changes {
                let key = (c.table, c.key.clone());
                match &c.after {
                    Some(v) => {
                        state.entities.insert(key, (v.clone(), t.tick));
                    }
                    None => {
                        state.entities.remove(&key);
                    }
                }
            }
        }
        if let Some(p) = progress {
            state.progress.insert(self.writer.worker, p);
        }
        Ok(Vec::new())
    }
}
