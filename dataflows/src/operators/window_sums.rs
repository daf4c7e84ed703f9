//! Windowed sums per entity, kept by one operator: the mechanism behind every windowed
//! feature view (DESIGN §3).
//!
//! A view is a set of sums per (entity, measure), each a total of event contributions
//! that enter at their tick and leave at their expiry, and a function from an entity's
//! sums to its rows. A `reduce` over the contributions would keep every update in an
//! arrangement and, at each time an entity changes — each insertion and each expiry
//! minute — replay its history; a batch whose stream time jumps by hours passes hundreds
//! of expiry minutes, and the reduce did that work at each. Here each worker keeps, for
//! the entities it owns, the current sums and the pending updates in buckets per due
//! tick: an insertion and an expiry each cost one update of a sum, found by a slot index,
//! and a tick costs what it brings due. The rows of the entities a tick touched are built
//! twice (before and after) and leave only when they differ.
//!
//! Keys are interned: a pending update names its entity by a 4-byte slot, and the key is
//! kept once per entity and compared on every lookup, so a hash collision never merges two
//! entities. Every due tick is still applied at its own tick, so every tick shows exactly
//! the features of DESIGN §3 at that tick.
//!
//! Checkpoints hold the pending updates of durable contributions (not those derived from
//! other checkpointed state, which a restore rebuilds), by key: a restore on any worker
//! count keeps the keys each worker owns and rebuilds the sums from them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use hashbrown::HashTable;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::contract::state::{Split, State};
use crate::contract::table::FeatureRow;
use crate::contract::time::Tick;

/// Updates of `(key, measure)` sums at their time: a time later than the message's is an
/// update scheduled for then (an expiry).
pub type Updates<K, M> = Vec<((K, M), Tick, isize)>;

/// The due time of what is never due: a contribution that never expires keeps its
/// retraction here, so a checkpoint holds it.
pub const NEVER: Tick = Tick::MAX;

/// The worker that owns `key`, as the exchange routes it (and a restore keeps it).
fn route<K: Hash>(key: &K) -> u64 {
    hash_of(key) >> 32
}

fn hash_of<K: Hash>(key: &K) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// Sums a view's updates per entity and turns each changed entity into its rows: see the
/// module doc. `durable` updates are checkpointed (pending ones), `derived` ones are not.
/// `rows` appends an entity's rows given its non-zero sums, sorted by measure.
pub fn window_rows<'s, K, M, F>(
    name: &str,
    state: &State,
    durable: Stream<'s, Tick, Updates<K, M>>,
    derived: Stream<'s, Tick, Updates<K, M>>,
    rows: F,
) -> VecCollection<'s, Tick, FeatureRow>
where
    K: ExchangeData + Hash,
    M: ExchangeData,
    F: FnMut(&K, &[(M, isize)], &mut Vec<FeatureRow>) + 'static,
{
    window_map(name, state, durable, derived, rows)
}

/// [`window_rows`] for any record an entity's sums make, not only feature rows: e.g. the
/// reading family's sessions, each a function of its pieces (events, markers) while they
/// are kept.
pub fn window_map<'s, K, M, D, F>(
    name: &str,
    state: &State,
    durable: Stream<'s, Tick, Updates<K, M>>,
    derived: Stream<'s, Tick, Updates<K, M>>,
    mut rows: F,
) -> VecCollection<'s, Tick, D>
where
    K: ExchangeData + Hash,
    M: ExchangeData,
    D: Clone + Ord + 'static,
    F: FnMut(&K, &[(M, isize)], &mut Vec<D>) + 'static,
{
    let (mut before, mut after): (Vec<D>, Vec<D>) = Default::default();
    window_diff(name, state, durable, derived, move |key, old, new, give| {
        before.clear();
        after.clear();
        rows(key, old, &mut before);
        rows(key, new, &mut after);
        if before != after {
            differences(&mut before, &mut after, &mut *give);
        }
    })
}

/// [`window_map`] for an entity whose function finds its own difference:
/// `diff(key, sums before, sums after, give)` calls `give(record, -1)` for each record that
/// leaves and `give(record, 1)` for each that enters. An entity with many records, each
/// depending on a few of its pieces (a viewer's co-visited pairs), changes few of them at
/// a tick, and building them all twice would cost what the entity holds.
pub fn window_diff<'s, K, M, D, F>(
    name: &str,
    state: &State,
    durable: Stream<'s, Tick, Updates<K, M>>,
    derived: Stream<'s, Tick, Updates<K, M>>,
    mut diff: F,
) -> VecCollection<'s, Tick, D>
where
    K: ExchangeData + Hash,
    M: ExchangeData,
    D: Clone + 'static,
    F: FnMut(&K, &[(M, isize)], &[(M, isize)], &mut dyn FnMut(D, isize)) + 'static,
{
    let core: Rc<RefCell<Core<K, M>>> = Rc::default();
    let restored = state.register(name, Split::ByKey, core.clone());
    let restore_at = state.restore().map(|r| r.tick);
    let (worker, peers) = (state.worker() as u64, state.peers() as u64);
    let by_key = |((k, _), _, _): &((K, M), Tick, isize)| route(k);
    durable
        .binary_frontier(
            derived,
            Exchange::new(by_key),
            Exchange::new(by_key),
            name,
            move |cap, _| {
                let mut held: Option<Capability<Tick>> = None;
                if let Some(at) = restore_at {
                    // what is pending is what is live: insert it again at the checkpoint's tick
                    let mut core = core.borrow_mut();
                    for part in restored {
                        for (due, key, m, r) in part.restored {
                            if route(&key) % peers == worker {
                                let slot = core.intern(key);
                                core.schedule(Kind::Durable, at, slot, m.clone(), -r);
                                core.schedule(Kind::Durable, due, slot, m, r);
                            }
                        }
                    }
                    held = Some(cap.delayed(&at));
                }
                move |(input1, frontier1), (input2, frontier2), output| {
                    let mut core = core.borrow_mut();
                    let core = &mut *core;
                    for (kind, input) in [(Kind::Durable, input1), (Kind::Derived, input2)] {
                        input.for_each(|cap, data| {
                            let Some(now) = cap.retain_least(0) else {
                                return;
                            };
                            for ((k, m), t, r) in data.drain(..) {
                                let slot = core.intern(k);
                                core.schedule(kind, t, slot, m, r);
                            }
                            if held.as_ref().is_none_or(|h| h.time() > now.time()) {
                                held = Some(now);
                            }
                        });
                    }
                    let passed = |t: Tick| {
                        t != NEVER
                            && frontier1.frontier().iter().all(|f| *f > t)
                            && frontier2.frontier().iter().all(|f| *f > t)
                    };
                    while let Some(t) = core.next_due().filter(|t| passed(*t)) {
                        let cap = held
                            .as_ref()
                            .expect("a capability is held while updates are pending")
                            .delayed(&t);
                        let mut session = output.session(&cap);
                        core.apply_due(t, |key, old, new| {
                            diff(key, old, new, &mut |r, d| session.give((r, t, d)))
                        });
                    }
                    // input messages bring their own capabilities: hold one only for what is due
                    match core.next_due() {
                        None => held = None,
                        Some(l) => {
                            if let Some(h) = held.as_mut() {
                                if *h.time() < l {
                                    h.downgrade(&l);
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// What leaves for an entity whose records went from `before` to `after`: only the records
/// that differ (an entity with many records, e.g. a viewer's co-visited pairs, changes few
/// of them at a tick). Both are drained.
fn differences<D: Ord>(before: &mut Vec<D>, after: &mut Vec<D>, mut give: impl FnMut(D, isize)) {
    if before.len() <= 1 && after.len() <= 1 {
        before.drain(..).for_each(|r| give(r, -1));
        after.drain(..).for_each(|r| give(r, 1));
        return;
    }
    before.sort_unstable();
    after.sort_unstable();
    let (mut old, mut new) = (before.drain(..).peekable(), after.drain(..).peekable());
    loop {
        match (old.peek(), new.peek()) {
            (Some(a), Some(b)) => match a.cmp(b) {
                std::cmp::Ordering::Less => give(old.next().expect("peeked"), -1),
                std::cmp::Ordering::Greater => give(new.next().expect("peeked"), 1),
                std::cmp::Ordering::Equal => {
                    old.next();
                    new.next();
                }
            },
            (Some(_), None) => give(old.next().expect("peeked"), -1),
            (None, Some(_)) => give(new.next().expect("peeked"), 1),
            (None, None) => return,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Durable,
    Derived,
}

/// One entity: its key (kept once), its non-zero sums, and how many pending updates name it.
struct Slot<K, M> {
    key: K,
    sums: Vec<(M, isize)>,
    pending: u32,
}

/// Pending updates due at one tick: `(slot, measure, weight)`, merged per (slot, measure)
/// whenever the bucket has doubled since it was last merged, so a hot entity holds about
/// one update per measure and due tick.
struct Bucket<M> {
    updates: Vec<(u32, M, isize)>,
    merged_len: usize,
}

impl<M> Default for Bucket<M> {
    fn default() -> Self {
        Bucket {
            updates: Vec::new(),
            merged_len: 0,
        }
    }
}

/// A worker's state of one view.
pub struct Core<K, M> {
    slots: Vec<Option<Slot<K, M>>>,
    free: Vec<u32>,
    /// Slot by key hash; the key itself is compared in `slots`.
    table: HashTable<u32>,
    durable: BTreeMap<Tick, Bucket<M>>,
    derived: BTreeMap<Tick, Bucket<M>>,
    /// What a checkpoint held: `(due, key, measure, weight)`, until the operator takes it.
    restored: Vec<(Tick, K, M, isize)>,
    /// The slot [`Core::intern`] found last (its key is compared before it is reused).
    last: u32,
}

impl<K, M> Default for Core<K, M> {
    fn default() -> Self {
        Core {
            slots: Vec::new(),
            free: Vec::new(),
            table: HashTable::new(),
            durable: BTreeMap::new(),
            derived: BTreeMap::new(),
            restored: Vec::new(),
            last: u32::MAX,
        }
    }
}

impl<K: Hash + Eq, M: Ord + Clone> Core<K, M> {
    fn slot(&self, i: u32) -> &Slot<K, M> {
        self.slots[i as usize].as_ref().expect("a live slot")
    }
    fn slot_mut(&mut self, i: u32) -> &mut Slot<K, M> {
        self.slots[i as usize].as_mut().expect("a live slot")
    }

    /// The slot of `key`, made if new. A family's updates come grouped by entity (one
    /// event's measures of one document), so the last slot is tried before any hashing.
    fn intern(&mut self, key: K) -> u32 {
        if let Some(Some(s)) = self.slots.get(self.last as usize) {
            if s.key == key {
                return self.last;
            }
        }
        let i = self.lookup(key);
        self.last = i;
        i
    }

    fn lookup(&mut self, key: K) -> u32 {
        let hash = hash_of(&key);
        let slots = &self.slots;
        let same = |i: &u32| slots[*i as usize].as_ref().is_some_and(|s| s.key == key);
        if let Some(i) = self.table.find(hash, same) {
            return *i;
        }
        let slot = Some(Slot {
            key,
            sums: Vec::new(),
            pending: 0,
        });
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 entities per worker")
            }
        };
        let slots = &self.slots;
        self.table.insert_unique(hash, i, |j| {
            hash_of(&slots[*j as usize].as_ref().expect("a live slot").key)
        });
        i
    }

    /// Frees `slot` once nothing is summed or pending for it.
    fn release_if_unused(&mut self, i: u32) {
        let s = self.slot(i);
        if s.pending > 0 || !s.sums.is_empty() {
            return;
        }
        let hash = hash_of(&s.key);
        if let Ok(entry) = self.table.find_entry(hash, |j| *j == i) {
            entry.remove();
        }
        self.slots[i as usize] = None;
        self.free.push(i);
    }

    fn schedule(&mut self, kind: Kind, t: Tick, slot: u32, m: M, r: isize) {
        if r == 0 {
            self.release_if_unused(slot);
            return;
        }
        self.slot_mut(slot).pending += 1;
        let buckets = match kind {
            Kind::Durable => &mut self.durable,
            Kind::Derived => &mut self.derived,
        };
        let bucket = buckets.entry(t).or_default();
        bucket.updates.push((slot, m, r));
        if bucket.updates.len() >= 64 && bucket.updates.len() >= 2 * bucket.merged_len {
            let before = bucket.updates.len();
            let mut freed = Vec::new();
            merge(&mut bucket.updates, &mut freed);
            bucket.merged_len = bucket.updates.len();
            debug_assert_eq!(before - bucket.updates.len(), freed.len());
            for i in freed {
                self.slot_mut(i).pending -= 1;
                self.release_if_unused(i);
            }
        }
    }

    /// The earliest tick with pending updates (`NEVER` when only never-due ones wait).
    fn next_due(&self) -> Option<Tick> {
        let first = |b: &BTreeMap<Tick, Bucket<M>>| b.keys().next().copied();
        match (first(&self.durable), first(&self.derived)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .filter(|t| *t != NEVER)
    }

    /// Applies every update due at `t`; `changed(key, sums before, sums after)` for each
    /// entity they touched.
    fn apply_due(&mut self, t: Tick, mut changed: impl FnMut(&K, &[(M, isize)], &[(M, isize)])) {
        let mut updates = self
            .durable
            .remove(&t)
            .map(|b| b.updates)
            .unwrap_or_default();
        if let Some(b) = self.derived.remove(&t) {
            updates.extend(b.updates);
        }
        // by slot, so each entity's sums before the tick are read once
        updates.sort_unstable_by_key(|(slot, _, _)| *slot);
        let mut rest = &updates[..];
        let mut old: Vec<(M, isize)> = Vec::new();
        while let Some((slot, _, _)) = rest.first() {
            let slot = *slot;
            let n = rest.iter().take_while(|(s, _, _)| *s == slot).count();
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            let s = self.slot_mut(slot);
            old.clear();
            old.extend_from_slice(&s.sums);
            for (_, m, r) in mine {
                add(&mut s.sums, m, *r);
            }
            s.pending -= n as u32;
            if s.sums != old {
                changed(&s.key, &old, &s.sums);
            }
            self.release_if_unused(slot);
        }
    }
}

/// Adds `r` to the sum of `m`, dropping it at zero.
fn add<M: Ord + Clone>(sums: &mut Vec<(M, isize)>, m: &M, r: isize) {
    match sums.binary_search_by(|(k, _)| k.cmp(m)) {
        Ok(i) => {
            sums[i].1 += r;
            if sums[i].1 == 0 {
                sums.remove(i);
            }
        }
        Err(i) => sums.insert(i, (m.clone(), r)),
    }
}

/// Merges the updates of one (slot, measure); every update merged away or summed to zero
/// names its slot in `freed`.
fn merge<M: Ord>(updates: &mut Vec<(u32, M, isize)>, freed: &mut Vec<u32>) {
    // stable: the part merged last is one sorted run, which the stable sort finds and
    // merges with the new part instead of sorting it all again
    updates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out: Vec<(u32, M, isize)> = Vec::with_capacity(updates.len());
    for (slot, m, r) in updates.drain(..) {
        match out.last_mut() {
            Some(last) if last.0 == slot && last.1 == m => {
                last.2 += r;
                freed.push(slot);
            }
            _ => out.push((slot, m, r)),
        }
    }
    out.retain(|(slot, _, r)| {
        if *r == 0 {
            freed.push(*slot);
        }
        *r != 0
    });
    *updates = out;
}

/// A checkpoint holds the durable pending updates by key: `(due, key, measure, weight)`.
impl<K: Serialize, M: Serialize> Serialize for Core<K, M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let n = self.durable.values().map(|b| b.updates.len()).sum();
        let mut seq = serializer.serialize_seq(Some(n))?;
        for (due, bucket) in &self.durable {
            for (slot, m, r) in &bucket.updates {
                let key = &self.slots[*slot as usize]
                    .as_ref()
                    .expect("a live slot")
                    .key;
                seq.serialize_element(&(due, key, m, r))?;
            }
        }
        seq.end()
    }
}

impl<'de, K: DeserializeOwned, M: DeserializeOwned> Deserialize<'de> for Core<K, M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let restored = Vec::<(Tick, K, M, isize)>::deserialize(deserializer)?;
        Ok(Core {
            restored,
            ..Core::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_collision_keeps_two_entities_apart() {
        /// A key whose hash is always the same.
        #[derive(PartialEq, Eq, Clone, Debug)]
        struct Colliding(&'static str);
        impl Hash for Colliding {
            fn hash<H: Hasher>(&self, h: &mut H) {
                0u8.hash(h)
            }
        }
        let mut core: Core<Colliding, u8> = Core::default();
        let a = core.intern(Colliding("a"));
        let b = core.intern(Colliding("b"));
        assert_ne!(a, b);
        assert_eq!(core.intern(Colliding("a")), a);
        core.schedule(Kind::Durable, 5, a, 0, 2);
        core.schedule(Kind::Durable, 5, b, 0, 3);
        let mut seen = Vec::new();
        core.apply_due(5, |k, _, new| seen.push((k.0, new.to_vec())));
        seen.sort();
        assert_eq!(seen, vec![("a", vec![(0, 2)]), ("b", vec![(0, 3)])]);
    }

    #[test]
    fn a_hot_bucket_holds_one_update_per_entity_and_measure() {
        let mut core: Core<String, u8> = Core::default();
        let hot = core.intern("hot".to_string());
        for _ in 0..1_000 {
            core.schedule(Kind::Durable, 9, hot, 1, -1);
        }
        let held = core.durable[&9].updates.len();
        assert!(held < 64, "{held} updates held for one (entity, measure)");
        assert_eq!(core.slot(hot).pending as usize, held);
        let mut seen = Vec::new();
        core.apply_due(9, |_, _, new| seen.push(new.to_vec()));
        assert_eq!(seen, vec![vec![(1, -1_000)]]);
    }

    #[test]
    fn an_entity_whose_sums_and_pending_updates_are_gone_is_freed() {
        let mut core: Core<String, u8> = Core::default();
        let k = core.intern("k".to_string());
        core.schedule(Kind::Durable, 1, k, 0, 1);
        core.schedule(Kind::Durable, 2, k, 0, -1);
        core.apply_due(1, |_, _, _| {});
        assert!(core.slots[k as usize].is_some());
        core.apply_due(2, |_, _, _| {});
        assert!(core.slots[k as usize].is_none());
        assert_eq!(core.table.len(), 0);
        // the slot is reused
        assert_eq!(core.intern("other".to_string()), k);
    }

    #[test]
    fn only_the_records_that_differ_leave() {
        let mut got = Vec::new();
        differences(&mut vec![3, 1, 2, 2], &mut vec![2, 4, 1, 3], |r, d| {
            got.push((r, d))
        });
        got.sort();
        assert_eq!(got, vec![(2, -1), (4, 1)]);
        let mut got = Vec::new();
        differences(&mut vec![5], &mut vec![], |r, d| got.push((r, d)));
        assert_eq!(got, vec![(5, -1)]);
    }

    #[test]
    fn a_checkpoint_holds_the_durable_updates_by_key() {
        let mut core: Core<String, u8> = Core::default();
        let k = core.intern("k".to_string());
        core.schedule(Kind::Durable, 7, k, 3, -1);
        core.schedule(Kind::Derived, 7, k, 4, -1);
        let bytes = bincode::serialize(&core).unwrap();
        let back: Core<String, u8> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back.restored, vec![(7, "k".to_string(), 3, -1)]);
    }
}
