//! The 24-hour click→conversion join, with the open clicks held compactly.
//!
//! A differential join would hold every click in an arrangement (and its expiry in a
//! pending retraction): ~300 B per click. Clicks are most of what the ads family holds,
//! so they live here in sorted runs of 32-byte [`OpenClick`]s instead, merged
//! geometrically like an arrangement's batches but without times or diffs. Conversions
//! stay a collection: each one is (re-)attributed whenever its device-ad's clicks change,
//! and the operator emits the differences of [`Attribution`]s, so downstream it is an
//! ordinary collection.
//!
//! A click needs no retraction of its own: nothing changes when it expires (every
//! conversion that could still match it is younger than it by less than the window, so it
//! expires first). The runs therefore drop clicks lazily, at merges and at an hourly
//! sweep, once no conversion that is not too late can match them.

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use super::{Attribution, ClickRef, ConversionRef, DeviceAd, Placement, Rolling};
use crate::contract::state::{Split, State};
use crate::contract::time::{Tick, HOUR};
use crate::operators::ticks::{Arrived, ByTick};
use crate::operators::windowed::intervals;

/// A click held for attribution: its device-ad, time, placement and the high half of
/// its id (the tie-break between clicks of one instant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpenClick {
    pub pair: DeviceAd,
    /// `ts << 2 | placement`.
    stamp: u64,
    id: u64,
}

impl OpenClick {
    pub fn new(pair: DeviceAd, click: ClickRef) -> Self {
        OpenClick {
            pair,
            stamp: click.ts << 2 | click.placement as u64,
            id: click.id,
        }
    }
    pub fn ts(&self) -> u64 {
        self.stamp >> 2
    }
    pub fn click(&self) -> ClickRef {
        ClickRef {
            ts: self.ts(),
            id: self.id,
            placement: Placement::ALL[(self.stamp & 3) as usize],
        }
    }
}

impl DeviceAd {
    /// Which worker holds the pair's clicks and conversions.
    pub fn route(&self) -> u64 {
        self.device ^ self.ad.rotate_left(29)
    }
}

/// Sorted runs of open clicks, the largest first; each at most half the one before it.
#[derive(Default, Serialize, Deserialize)]
pub struct OpenClicks {
    runs: Vec<Vec<OpenClick>>,
}

impl OpenClicks {
    pub fn len(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a tick's clicks; `kept(ts)` says whether a click may still be matched.
    fn insert(&mut self, mut batch: Vec<OpenClick>, kept: impl Fn(u64) -> bool) {
        if batch.is_empty() {
            return;
        }
        batch.sort_unstable();
        self.runs.push(batch);
        while self.runs.len() > 1 {
            let n = self.runs.len();
            if self.runs[n - 2].len() > 2 * self.runs[n - 1].len() {
                break;
            }
            let (b, a) = (self.runs.pop().unwrap(), self.runs.pop().unwrap());
            let mut merged = Vec::with_capacity(a.len() + b.len());
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                if a[i] <= b[j] {
                    merged.push(a[i]);
                    i += 1;
                } else {
                    merged.push(b[j]);
                    j += 1;
                }
            }
            merged.extend_from_slice(&a[i..]);
            merged.extend_from_slice(&b[j..]);
            merged.retain(|c| kept(c.ts()));
            merged.shrink_to_fit();
            self.runs.push(merged);
        }
    }

    /// Removes one copy of `click` (a retracted click: only tests send them).
    fn remove(&mut self, click: &OpenClick) -> bool {
        for run in &mut self.runs {
            if let Ok(i) = run.binary_search(click) {
                run.remove(i);
                return true;
            }
        }
        false
    }

    /// Drops the clicks no conversion can match any more.
    fn sweep(&mut self, kept: impl Fn(u64) -> bool) {
        for run in &mut self.runs {
            run.retain(|c| kept(c.ts()));
            run.shrink_to_fit();
        }
        self.runs.retain(|r| !r.is_empty());
        self.runs.sort_by_key(|r| std::cmp::Reverse(r.len()));
    }

    /// The latest click of `pair` at most `within` before `ts` (one at `ts` counts).
    fn latest(&self, pair: &DeviceAd, ts: u64, within: u64) -> Option<ClickRef> {
        let mut best: Option<ClickRef> = None;
        for run in &self.runs {
            let from = run.partition_point(|c| c.pair < *pair);
            for c in run[from..].iter().take_while(|c| c.pair == *pair) {
                let click = c.click();
                if click.ts <= ts
                    && ts - click.ts <= within
                    && best.is_none_or(|b| (b.ts, b.id) < (click.ts, click.id))
                {
                    best = Some(click);
                }
            }
        }
        best
    }
}

/// A conversion as attributed so far: its multiplicity now, and the attribution and
/// multiplicity last emitted.
struct Held {
    conversion: ConversionRef,
    count: isize,
    shown: isize,
    click: Option<ClickRef>,
}

/// Each conversion with the latest click of its device-ad at most `within` before it, or
/// none. `clicks` carries each click once (+1 at insertion), `conversions` is a collection
/// (a conversion leaves when it retires). A click is dropped once `kept(ts)` is false.
/// Long: an operator is one closure holding its state and frontier logic (as differential's `operators/count.rs`).
pub fn attribute<'s>(
    state: &State,
    clicks: Stream<'s, Tick, Vec<(OpenClick, Tick, isize)>>,
    conversions: VecCollection<'s, Tick, (DeviceAd, ConversionRef)>,
    within: u64,
    kept: impl Fn(u64, Tick) -> bool + 'static,
) -> VecCollection<'s, Tick, Attribution> {
    let store: Rc<RefCell<OpenClicks>> = Rc::default();
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    for part in state.register("open clicks", Split::ByKey, store.clone()) {
        let mine: Vec<OpenClick> = part
            .runs
            .into_iter()
            .flatten()
            .filter(|c| c.pair.route() % peers == me)
            .collect();
        store.borrow_mut().insert(mine, |_| true);
    }
    let by_click = Exchange::new(|(c, _, _): &(OpenClick, Tick, isize)| c.pair.route());
    let by_conversion =
        Exchange::new(|((pair, _), _, _): &((DeviceAd, ConversionRef), Tick, isize)| pair.route());
    clicks
        .binary_frontier(
            conversions.inner,
            by_click,
            by_conversion,
            "Attribution",
            move |_, _| {
                let mut arrived = ByTick::default();
                let mut held: FxHashMap<DeviceAd, Vec<Held>> = FxHashMap::default();
                let mut next_sweep: Tick = 0;
                move |(clicks, clicks_frontier), (conversions, conversions_frontier), output| {
                    clicks.for_each(|cap, data| arrived.left(&cap, data));
                    conversions.for_each(|cap, data| arrived.right(&cap, data));
                    let mut store = store.borrow_mut();
                    while let Some((t, tick)) =
                        arrived.next_complete(clicks_frontier, conversions_frontier)
                    {
                        let Arrived {
                            cap,
                            left: clicks,
                            right: conversions,
                        } = tick;
                        let keep = |ts: u64| kept(ts, t);
                        if t >= next_sweep {
                            store.sweep(keep);
                            next_sweep = t.saturating_add(HOUR);
                        }
                        // the tick's clicks first: its conversions see them
                        let mut dirty: Vec<DeviceAd> = Vec::new();
                        let mut added = Vec::with_capacity(clicks.len());
                        for (click, r) in clicks {
                            if held.contains_key(&click.pair) {
                                dirty.push(click.pair);
                            }
                            if r > 0 {
                                added.extend(std::iter::repeat_n(click, r as usize));
                            } else {
                                for _ in 0..-r {
                                    if let Some(i) = added.iter().position(|c| *c == click) {
                                        added.swap_remove(i);
                                    } else {
                                        store.remove(&click);
                                    }
                                }
                            }
                        }
                        store.insert(added, keep);
                        for ((pair, conversion), r) in conversions {
                            let list = held.entry(pair).or_default();
                            match list.iter_mut().find(|h| h.conversion == conversion) {
                                Some(h) => h.count += r,
                                None => list.push(Held {
                                    conversion,
                                    count: r,
                                    shown: 0,
                                    click: None,
                                }),
                            }
                            dirty.push(pair);
                        }
                        dirty.sort_unstable();
                        dirty.dedup();
                        let mut session = output.session(&cap);
                        for pair in dirty {
                            let Some(list) = held.get_mut(&pair) else {
                                continue;
                            };
                            for h in list.iter_mut() {
                                let click = if h.count != 0 {
                                    store.latest(&pair, h.conversion.ts, within)
                                } else {
                                    None
                                };
                                if (click, h.count) == (h.click, h.shown) {
                                    continue;
                                }
                                let of = |click| Attribution {
                                    conversion: h.conversion.clone(),
                                    click,
                                };
                                if h.shown != 0 {
                                    session.give((of(h.click), t, -h.shown));
                                }
                                if h.count != 0 {
                                    session.give((of(click), t, h.count));
                                }
                                (h.click, h.shown) = (click, h.count);
                            }
                            list.retain(|h| h.count != 0 || h.shown != 0);
                            if list.is_empty() {
                                held.remove(&pair);
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

impl super::Ads {
    /// A conversion is kept while a window or rolling sum it counts in may still change.
    pub(super) fn conversion_kept(&self, ts: u64) -> Tick {
        // each window's, not only the longest's: a 7-minute window can end after the hour
        self.windows()
            .into_iter()
            .map(|length| self.window_retires(ts - ts % length, length))
            .fold(Rolling::H24.window().expiry(ts), Tick::max)
    }

    /// A click is kept for attribution while a conversion it may win is kept.
    pub(super) fn click_kept(&self, ts: u64) -> Tick {
        self.conversion_kept(ts + self.config.attribution_window_ms)
    }

    /// Each conversion with the latest click of its device and ad at most
    /// `attribution_window_ms` before it (a click at the same instant counts), or none.
    pub(super) fn attribution<'s>(
        &self,
        clicks: Stream<'s, Tick, Vec<(OpenClick, Tick, isize)>>,
        conversions: VecCollection<'s, Tick, (DeviceAd, ConversionRef)>,
        state: &State,
    ) -> VecCollection<'s, Tick, Attribution> {
        let this = self.clone();
        let conversions = intervals(
            state,
            conversions,
            move |(pair, c): &(DeviceAd, ConversionRef)| {
                Some(((*pair, c.clone()), 1, 0, Some(this.conversion_kept(c.ts))))
            },
        );
        let this = self.clone();
        attribute(
            state,
            clicks,
            conversions,
            self.config.attribution_window_ms,
            move |ts, now| this.click_kept(ts) > now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(device: u64, ts: u64, id: u64) -> OpenClick {
        OpenClick::new(
            DeviceAd { device, ad: 1 },
            ClickRef {
                ts,
                id,
                placement: Placement::Search,
            },
        )
    }

    #[test]
    fn runs_find_the_latest_click_and_drop_expired_ones() {
        let mut store = OpenClicks::default();
        for batch in 0..20u64 {
            let clicks = (0..100).map(|i| click(i % 7, batch * 100 + i, i)).collect();
            store.insert(clicks, |_| true);
        }
        assert_eq!(store.len(), 2000);
        assert!(store.runs.len() <= 12, "{} runs", store.runs.len());
        let pair = DeviceAd { device: 3, ad: 1 };
        // device 3 clicks at i % 7 == 3: the last one by 1000 is 994
        let latest = store.latest(&pair, 1000, 5000).unwrap();
        assert_eq!((latest.ts, latest.id), (994, 94));
        assert_eq!(latest.placement, Placement::Search);
        assert_eq!(store.latest(&pair, 1000, 5), None);
        assert!(store.remove(&click(3, 994, 94)));
        assert_eq!(store.latest(&pair, 1000, 5000).unwrap().ts, 987);
        store.sweep(|ts| ts >= 1000);
        assert_eq!(store.len(), 1000);
        assert_eq!(store.latest(&pair, 1000, 5000), None);
    }
}
