//! A worker's side of a replay: every entity the dataflow holds, and what is done with
//! them at each boundary once every tick up to it is complete.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use tidemark_dataflows::contract::table::{SinkKind, TableSpec, TickChanges, Value};
use tidemark_dataflows::Tick;

use crate::sink::Store;
use crate::telemetry::Unstorable;

/// A worker's entities as a reader of its stores sees them, per view: hashed by key (a
/// batch applies every change of the replay; ordered keys of strings cost a fifth of its
/// time) and updated in place (no key is copied for an entity that exists).
#[derive(Default)]
pub struct Entities {
    views: Vec<FxHashMap<Vec<String>, Vec<Value>>>,
}

impl Entities {
    fn view(&mut self, table: u8) -> &mut FxHashMap<Vec<String>, Vec<Value>> {
        let t = table as usize;
        if self.views.len() <= t {
            self.views.resize_with(t + 1, FxHashMap::default);
        }
        &mut self.views[t]
    }

    /// The features of view `table`'s entity `key`, if it has any.
    pub fn get(&self, table: u8, key: &[String]) -> Option<&Vec<Value>> {
        self.views.get(table as usize)?.get(key)
    }

    /// Every entity: (view, key, features).
    pub fn iter(&self) -> impl Iterator<Item = (u8, &Vec<String>, &Vec<Value>)> {
        self.views
            .iter()
            .enumerate()
            .flat_map(|(t, v)| v.iter().map(move |(k, f)| (t as u8, k, f)))
    }
}

/// What is done with the entities as of a boundary: written (`batch`) or looked up
/// (`training-set`). An error is retried with the write that reached the boundary.
pub type OnBoundary = Box<dyn FnMut(Tick, &Entities) -> anyhow::Result<()> + Send>;

pub struct BatchStore {
    tables: Arc<Vec<TableSpec>>,
    entities: Entities,
    /// Sorted; those before `next` are done.
    boundaries: Arc<Vec<Tick>>,
    next: usize,
    on_boundary: OnBoundary,
    /// Counts the stores that handed on their last boundary: the run's end does not wait
    /// for that (a writer acknowledges progress before it records it).
    finished: Arc<std::sync::atomic::AtomicUsize>,
}

impl BatchStore {
    pub fn new(
        tables: Arc<Vec<TableSpec>>,
        boundaries: Arc<Vec<Tick>>,
        on_boundary: OnBoundary,
        finished: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        BatchStore {
            tables,
            entities: Entities::default(),
            boundaries,
            next: 0,
            on_boundary,
            finished,
        }
    }

    /// Every boundary at or before `upto` (whose ticks are all applied) is handed on.
    ///
    /// A retried write applies its ticks again, in order, from the first: a boundary not
    /// done yet is past every tick applied before, so the state it sees is right again.
    fn reach(&mut self, upto: Tick) -> anyhow::Result<()> {
        while let Some(&b) = self.boundaries.get(self.next).filter(|b| **b <= upto) {
            (self.on_boundary)(b, &self.entities)?;
            self.next += 1;
            if self.next == self.boundaries.len() {
                self.finished
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Ok(())
    }

    fn apply(&mut self, tick: &TickChanges) {
        for c in &tick.changes {
            let keeps = keeps_rows(&self.tables[c.table as usize].sink);
            let view = self.entities.view(c.table);
            match &c.after {
                Some(v) => match view.get_mut(&c.key[..]) {
                    Some(held) => held.clone_from(v),
                    None => {
                        view.insert(c.key.clone(), v.clone());
                    }
                },
                // history tables and records keep their last row, as their stores do
                None if keeps => {}
                None => {
                    view.remove(&c.key[..]);
                }
            }
        }
    }
}

/// Whether a table's store keeps a row that left the dataflow.
fn keeps_rows(sink: &SinkKind) -> bool {
    matches!(sink, SinkKind::PgTable | SinkKind::Records(_))
}

impl Store for BatchStore {
    fn name(&self) -> &'static str {
        "batch"
    }

    fn write(
        &mut self,
        ticks: &[Arc<TickChanges>],
        progress: Option<Tick>,
    ) -> anyhow::Result<Vec<Unstorable>> {
        for t in ticks {
            self.reach(t.tick.saturating_sub(1))?;
            self.apply(t);
        }
        if let Some(p) = progress {
            self.reach(p.saturating_sub(1))?;
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_dataflows::contract::table::{int, EntityChange};

    fn tick(tick: Tick, key: &str, v: Option<i64>) -> Arc<TickChanges> {
        Arc::new(TickChanges {
            tick,
            changes: vec![EntityChange {
                table: 0,
                key: vec![key.into()],
                after: v.map(|v| vec![Value::Int(v)]),
                changed: vec![0],
            }],
        })
    }

    #[test]
    fn each_boundary_sees_every_tick_up_to_it_and_none_after() {
        let tables = Arc::new(vec![TableSpec {
            ns: "t",
            keys: vec!["k"],
            fields: vec![int("n")],
            version: 1,
            sink: SinkKind::Store,
            redis_prefix: None,
        }]);
        type Seen = Vec<(Tick, Vec<(String, i64)>)>;
        let seen: Arc<std::sync::Mutex<Seen>> = Arc::default();
        let s = seen.clone();
        let mut fail_once = true;
        let on: OnBoundary = Box::new(move |b, e| {
            if b == 20 && std::mem::take(&mut fail_once) {
                anyhow::bail!("the store is down");
            }
            let mut rows: Vec<(String, i64)> = e
                .iter()
                .map(|(_, k, v)| (k[0].clone(), v[0].as_f64().unwrap() as i64))
                .collect();
            rows.sort();
            s.lock().unwrap().push((b, rows));
            Ok(())
        });
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut store =
            BatchStore::new(tables, Arc::new(vec![5, 10, 20, 30]), on, finished.clone());
        let ticks = [
            tick(10, "a", Some(1)),
            tick(15, "a", Some(2)),
            tick(25, "a", None),
        ];
        // the boundary at 20 fails once: the write is retried whole
        assert!(store.write(&ticks, None).is_err());
        store.write(&ticks, None).unwrap();
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 0);
        store.write(&[tick(31, "b", Some(7))], Some(32)).unwrap();
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 1);
        let seen = seen.lock().unwrap();
        let a = |n| vec![("a".to_string(), n)];
        assert_eq!(
            *seen,
            vec![(5, vec![]), (10, a(1)), (20, a(2)), (30, vec![])]
        );
    }
}
