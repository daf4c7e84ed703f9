//! Two inputs' updates gathered per tick, for operators that keep their own state: a tick
//! is handed over once both input frontiers have passed it, so it is complete.

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

use crate::contract::time::Tick;

/// One tick's updates of both inputs and the capability to emit at it.
pub struct Arrived<A, B> {
    pub cap: Capability<Tick>,
    pub left: Vec<(A, isize)>,
    pub right: Vec<(B, isize)>,
}

pub struct ByTick<A, B> {
    arrived: BTreeMap<Tick, Arrived<A, B>>,
}

impl<A, B> Default for ByTick<A, B> {
    fn default() -> Self {
        ByTick {
            arrived: BTreeMap::new(),
        }
    }
}

impl<A, B> ByTick<A, B> {
    fn at(&mut self, cap: &InputCapability<Tick>, t: Tick) -> &mut Arrived<A, B> {
        self.arrived.entry(t).or_insert_with(|| Arrived {
            cap: cap.delayed(&t, 0),
            left: Vec::new(),
            right: Vec::new(),
        })
    }
    pub fn left(&mut self, cap: &InputCapability<Tick>, data: &mut Vec<(A, Tick, isize)>) {
        for (a, t, r) in data.drain(..) {
            self.at(cap, t).left.push((a, r));
        }
    }
    pub fn right(&mut self, cap: &InputCapability<Tick>, data: &mut Vec<(B, Tick, isize)>) {
        for (b, t, r) in data.drain(..) {
            self.at(cap, t).right.push((b, r));
        }
    }
    /// The earliest tick both frontiers have passed, if any.
    pub fn next_complete(
        &mut self,
        left: &MutableAntichain<Tick>,
        right: &MutableAntichain<Tick>,
    ) -> Option<(Tick, Arrived<A, B>)> {
        let entry = self.arrived.first_entry()?;
        let t = *entry.key();
        let passed = |f: &MutableAntichain<Tick>| f.frontier().iter().all(|x| *x > t);
        (passed(left) && passed(right)).then(|| (t, entry.remove()))
    }
}

/// What one activation reads, summed per tick, with the capability to emit each sum.
pub struct PerTick<S> {
    ticks: Vec<(Capability<Tick>, S)>,
}

impl<S> Default for PerTick<S> {
    fn default() -> Self {
        PerTick { ticks: Vec::new() }
    }
}

impl<S: Default> PerTick<S> {
    /// The sum of tick `t`, read under `cap`.
    pub fn at(&mut self, cap: &InputCapability<Tick>, t: Tick) -> &mut S {
        self.at_or(cap, t, S::default)
    }
}

impl<S> PerTick<S> {
    /// The sum of tick `t`, read under `cap`, started with `empty()` if new (e.g. a map
    /// kept from an earlier activation, whose allocation is reused).
    pub fn at_or(
        &mut self,
        cap: &InputCapability<Tick>,
        t: Tick,
        empty: impl FnOnce() -> S,
    ) -> &mut S {
        let i = match self.ticks.iter().position(|(c, _)| *c.time() == t) {
            Some(i) => i,
            None => {
                self.ticks.push((cap.delayed(&t, 0), empty()));
                self.ticks.len() - 1
            }
        };
        &mut self.ticks[i].1
    }
    pub fn drain(&mut self) -> impl Iterator<Item = (Capability<Tick>, S)> + '_ {
        self.ticks.drain(..)
    }
}
