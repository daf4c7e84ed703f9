//! Versions of the records a consumer acts on (a budget alert notifies someone): each key's
//! record carries a version that moves only when its content changes, so a consumer can
//! tell a re-send (the same version, the same bytes) from a correction (a larger version,
//! naming what it replaces).
//!
//! What was last sent for each key is checkpointed: after a restart the records the
//! restored state shows again are the ones sent before, with their versions, and a replay
//! of the same events sends nothing new. A key that leaves (a retracted alert: a
//! tombstone) keeps its memory until `until`; if it comes back, even with the same
//! content, that is the next version (the tombstone told consumers it was gone).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use crate::contract::state::{Split, State};
use crate::contract::table::{EntityKey, FeatureRow};
use crate::contract::time::{Tick, HOUR};

/// The worker a key's records go to: its parts hashed, each with its length.
pub fn key_hash(key: &[String]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in key {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.digest()
}

/// What was last sent for a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sent {
    /// The record without its version.
    content: FeatureRow,
    /// As it was sent.
    stamped: FeatureRow,
    version: u32,
    /// Until when the memory is kept once the key has left.
    until: Tick,
    /// Whether the record is shown (false once the key left).
    live: bool,
}

/// Every key's last sent record: the checkpointed state.
#[derive(Default, Serialize, Deserialize)]
pub struct Memory {
    sent: FxHashMap<EntityKey, Sent>,
}

/// Stamps one content with its version and the content it replaces, if any.
pub trait Stamp: Fn(&FeatureRow, u32, Option<&FeatureRow>) -> FeatureRow + 'static {}
impl<F: Fn(&FeatureRow, u32, Option<&FeatureRow>) -> FeatureRow + 'static> Stamp for F {}

impl Memory {
    /// The record to show for `content` (one row per key): the one shown before if its
    /// content is the same, else the next version.
    fn stamped(&mut self, content: &FeatureRow, until: Tick, stamp: &impl Stamp) -> FeatureRow {
        let key = (content.table, content.key.clone());
        let sent = self.sent.get_mut(&key);
        if let Some(s) = sent.as_ref().filter(|s| s.live && s.content == *content) {
            return s.stamped.clone();
        }
        let (version, stamped) = match sent {
            Some(s) => (
                s.version + 1,
                stamp(content, s.version + 1, Some(&s.content)),
            ),
            None => (1, stamp(content, 1, None)),
        };
        let new = Sent {
            content: content.clone(),
            stamped: stamped.clone(),
            version,
            until,
            live: true,
        };
        self.sent.insert(key, new);
        stamped
    }

    /// `key`'s record is no longer shown.
    fn left(&mut self, key: &EntityKey) {
        if let Some(s) = self.sent.get_mut(key) {
            s.live = false;
        }
    }
}

/// One tick's updates and the capability to emit at it.
type Arrived = (Capability<Tick>, Vec<((FeatureRow, Tick), isize)>);

/// `records` (at most one row per key, each with the tick until which its memory is kept
/// once it leaves), each stamped by `stamp` with its version: 1 for a key's first content,
/// one more for each content that differs from the last one sent; the same record again
/// when the content is the same. The output is partitioned by key, as a sink needs it.
/// Long: an operator is one closure holding its state and frontier logic (as differential's `operators/count.rs`).
pub fn versions<'s>(
    state: &State,
    name: &str,
    records: VecCollection<'s, Tick, (FeatureRow, Tick)>,
    stamp: impl Stamp,
) -> VecCollection<'s, Tick, FeatureRow> {
    let memory: Rc<RefCell<Memory>> = Rc::default();
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    for part in state.register(name, Split::ByKey, memory.clone()) {
        let mut m = memory.borrow_mut();
        for (key, sent) in part.sent {
            if key_hash(&key.1) % peers == me {
                m.sent.insert(key, sent);
            }
        }
    }
    let by_key =
        Exchange::new(|((row, _), _, _): &((FeatureRow, Tick), Tick, isize)| key_hash(&row.key));
    records
        .inner
        .unary_frontier(by_key, "Versions", move |_, _| {
            let mut arrived: BTreeMap<Tick, Arrived> = BTreeMap::new();
            // the input's row per key, and the record shown for it
            let mut current: FxHashMap<EntityKey, (FeatureRow, Tick)> = FxHashMap::default();
            let mut shown: FxHashMap<EntityKey, FeatureRow> = FxHashMap::default();
            let mut next_sweep: Tick = 0;
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (x, t, r) in data.drain(..) {
                        let at = arrived
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 0), vec![]));
                        at.1.push((x, r));
                    }
                });
                while let Some(entry) = arrived.first_entry() {
                    let t = *entry.key();
                    if frontier.frontier().iter().any(|f| *f <= t) {
                        break;
                    }
                    let (cap, mut updates) = entry.remove();
                    differential_dataflow::consolidation::consolidate(&mut updates);
                    // a key's old row goes before its new one comes
                    updates.sort_by_key(|(_, r)| *r > 0);
                    let mut touched: Vec<EntityKey> = Vec::new();
                    for ((row, until), r) in updates {
                        let key = (row.table, row.key.clone());
                        if r > 0 {
                            current.insert(key.clone(), (row, until));
                        } else if current.get(&key).is_some_and(|(c, _)| *c == row) {
                            current.remove(&key);
                        }
                        touched.push(key);
                    }
                    touched.sort_unstable();
                    touched.dedup();
                    let mut memory = memory.borrow_mut();
                    let mut session = output.session(&cap);
                    for key in touched {
                        let now = (current.get(&key))
                            .map(|(content, until)| memory.stamped(content, *until, &stamp));
                        if now.is_none() {
                            memory.left(&key);
                        }
                        let before = shown.remove(&key);
                        if before != now {
                            if let Some(b) = before {
                                session.give((b, t, -1));
                            }
                            if let Some(n) = &now {
                                session.give((n.clone(), t, 1));
                            }
                        }
                        if let Some(n) = now {
                            shown.insert(key, n);
                        }
                    }
                    if t >= next_sweep {
                        (memory.sent).retain(|k, s| current.contains_key(k) || s.until > t);
                        next_sweep = t.saturating_add(HOUR);
                    }
                }
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::table::Value;

    fn row(ts: i64) -> FeatureRow {
        FeatureRow {
            table: 0,
            key: vec!["c".into(), "20260101".into()],
            values: vec![Value::Int(ts)],
        }
    }

    fn stamp(c: &FeatureRow, v: u32, previous: Option<&FeatureRow>) -> FeatureRow {
        let mut s = c.clone();
        s.values.push(Value::Int(v as i64));
        s.values
            .push(previous.map_or(Value::Null, |p| p.values[0].clone()));
        s
    }

    #[test]
    fn the_same_content_keeps_its_version_and_a_change_names_what_it_replaces() {
        let mut m = Memory::default();
        let first = m.stamped(&row(10), 100, &stamp);
        assert_eq!(
            first.values,
            vec![Value::Int(10), Value::Int(1), Value::Null]
        );
        // shown again (the state a restart restores): the very same record
        assert_eq!(m.stamped(&row(10), 100, &stamp), first);
        let moved = m.stamped(&row(7), 100, &stamp);
        assert_eq!(
            moved.values,
            vec![Value::Int(7), Value::Int(2), Value::Int(10)]
        );
        // back to the first content is a change too
        let back = m.stamped(&row(10), 100, &stamp);
        assert_eq!(
            back.values,
            vec![Value::Int(10), Value::Int(3), Value::Int(7)]
        );
        // gone (a tombstone), then back with the same content: the next version
        m.left(&(0, row(10).key));
        let again = m.stamped(&row(10), 100, &stamp);
        assert_eq!(
            again.values,
            vec![Value::Int(10), Value::Int(4), Value::Int(10)]
        );
    }

    #[test]
    fn keys_hash_with_their_lengths() {
        let a = key_hash(&["ab".into(), "c".into()]);
        let b = key_hash(&["a".into(), "bc".into()]);
        assert_ne!(a, b);
    }
}
