//! The instant a budget threshold was crossed, found within its minute.
//!
//! The day's budget `reduce` finds the minute where a threshold is crossed from per-minute
//! sums; the alert needs the instant within it, so each campaign's spend is also held per
//! millisecond — 16 bytes per instant with spend, in one sorted vector per campaign-minute,
//! rather than a click per arrangement entry and pending retraction. Clicks of one
//! millisecond count together: their order within it is unknown.

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::Data;
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use super::{CampaignKey, Crossing, DayMinute};
use crate::contract::state::{Split, State};
use crate::contract::time::{Tick, HOUR, MINUTE};
use crate::operators::ticks::{Arrived, ByTick};

/// Spend of a campaign at an instant (the update's weight is the amount).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Paid {
    pub campaign: CampaignKey,
    pub ts: u64,
}

/// A campaign's minute (`ts / MINUTE`).
type Minute = (CampaignKey, u64);

/// Spend per instant, sorted by time, per campaign-minute.
#[derive(Default, Serialize, Deserialize)]
pub struct Spend {
    minutes: FxHashMap<Minute, Vec<(u64, i64)>>,
}

impl Spend {
    fn add(&mut self, paid: Paid, amount: i64) {
        let points = self
            .minutes
            .entry((paid.campaign, paid.ts / MINUTE))
            .or_default();
        match points.binary_search_by_key(&paid.ts, |p| p.0) {
            Ok(i) => {
                points[i].1 += amount;
                if points[i].1 == 0 {
                    points.remove(i);
                }
            }
            Err(i) => {
                // grow by an eighth: a minute's vector is mostly appended to, and doubling
                // would leave up to half of it unused
                if points.len() == points.capacity() {
                    points.reserve_exact(points.len() / 8 + 4);
                }
                points.insert(i, (paid.ts, amount))
            }
        }
        if points.is_empty() {
            self.minutes.remove(&(paid.campaign, paid.ts / MINUTE));
        }
    }

    /// The first instant of `minute` at which the spend, from `before`, reaches `percent` %
    /// of `daily`, and the spend then.
    fn crossing(
        &self,
        minute: &Minute,
        before: i64,
        daily: i64,
        percent: i64,
    ) -> Option<(u64, i64)> {
        let mut spent = before;
        self.minutes.get(minute)?.iter().find_map(|(ts, amount)| {
            spent = spent.saturating_add(*amount);
            super::reaches(spent, daily, percent).then_some((*ts, spent))
        })
    }
}

/// What is known of a campaign-minute's crossings, and the alerts last emitted for it.
struct Crossed<D> {
    crossings: Vec<((DayMinute, Crossing), isize)>,
    shown: Vec<D>,
}

impl<D> Default for Crossed<D> {
    fn default() -> Self {
        Crossed {
            crossings: Vec::new(),
            shown: Vec::new(),
        }
    }
}

/// The alert rows of the crossings: `alert(at, crossing, ts, spent)` at the first instant
/// of the crossing minute whose spend reaches the threshold. `paid` carries each click's
/// price once; an instant is dropped once `kept(ts, now)` is false.
/// Long: an operator is one closure holding its state and frontier logic (as differential's `operators/count.rs`).
pub fn alerts<'s, D: Data>(
    state: &State,
    paid: Stream<'s, Tick, Vec<(Paid, Tick, isize)>>,
    crossings: VecCollection<'s, Tick, (DayMinute, Crossing)>,
    kept: impl Fn(u64, Tick) -> bool + 'static,
    alert: impl Fn(&DayMinute, &Crossing, u64, i64) -> D + 'static,
) -> VecCollection<'s, Tick, D> {
    let store: Rc<RefCell<Spend>> = Rc::default();
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    for part in state.register("spend instants", Split::ByKey, store.clone()) {
        let mut spend = store.borrow_mut();
        for ((campaign, _), points) in part.minutes {
            if campaign.0 % peers == me {
                for (ts, amount) in points {
                    spend.add(Paid { campaign, ts }, amount);
                }
            }
        }
    }
    let by_paid = Exchange::new(|(p, _, _): &(Paid, Tick, isize)| p.campaign.0);
    let by_crossing =
        Exchange::new(|((at, _), _, _): &((DayMinute, Crossing), Tick, isize)| at.day.campaign.0);
    paid.binary_frontier(
        crossings.inner,
        by_paid,
        by_crossing,
        "BudgetAlerts",
        move |_, _| {
            let mut arrived = ByTick::default();
            let mut crossed: FxHashMap<Minute, Crossed<D>> = FxHashMap::default();
            let mut next_sweep: Tick = 0;
            move |(paid, paid_frontier), (crossings, crossings_frontier), output| {
                paid.for_each(|cap, data| arrived.left(&cap, data));
                crossings.for_each(|cap, data| arrived.right(&cap, data));
                let mut spend = store.borrow_mut();
                while let Some((t, tick)) = arrived.next_complete(paid_frontier, crossings_frontier)
                {
                    let Arrived {
                        cap,
                        left: paid,
                        right: changed,
                    } = tick;
                    if t >= next_sweep {
                        spend
                            .minutes
                            .retain(|(_, minute), _| kept((minute + 1) * MINUTE - 1, t));
                        next_sweep = t.saturating_add(HOUR);
                    }
                    let mut dirty: Vec<Minute> = Vec::new();
                    for (p, amount) in paid {
                        spend.add(p, amount as i64);
                        // only a minute with a crossing has alerts to move
                        let minute = (p.campaign, p.ts / MINUTE);
                        if crossed.contains_key(&minute) {
                            dirty.push(minute);
                        }
                    }
                    for ((at, crossing), r) in changed {
                        let minute = (at.day.campaign, at.minute);
                        let entry = crossed.entry(minute).or_default();
                        let key = (at, crossing);
                        match entry.crossings.iter_mut().find(|(c, _)| *c == key) {
                            Some((_, n)) => *n += r,
                            None => entry.crossings.push((key, r)),
                        }
                        entry.crossings.retain(|(_, n)| *n != 0);
                        dirty.push(minute);
                    }
                    dirty.sort_unstable();
                    dirty.dedup();
                    let mut session = output.session(&cap);
                    for minute in dirty {
                        let Some(entry) = crossed.get_mut(&minute) else {
                            continue;
                        };
                        let mut rows: Vec<D> = entry
                            .crossings
                            .iter()
                            .filter_map(|((at, c), _)| {
                                let percent = super::THRESHOLDS[c.threshold].0;
                                // the minute's spend and its sum change together: a
                                // crossing has its instant
                                let (ts, spent) =
                                    spend.crossing(&minute, c.spent_before, c.daily, percent)?;
                                Some(alert(at, c, ts, spent))
                            })
                            .collect();
                        rows.sort();
                        if rows != entry.shown {
                            for row in entry.shown.drain(..) {
                                session.give((row, t, -1));
                            }
                            for row in &rows {
                                session.give((row.clone(), t, 1));
                            }
                            entry.shown = rows;
                        }
                        if entry.crossings.is_empty() && entry.shown.is_empty() {
                            crossed.remove(&minute);
                        }
                    }
                }
            }
        },
    )
    .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_add_up_and_the_crossing_is_the_first_to_reach_the_target() {
        let mut spend = Spend::default();
        let campaign = CampaignKey(7);
        let base = 1_000 * MINUTE;
        for (ts, amount) in [
            (base + 500, 30),
            (base + 100, 10),
            (base + 500, 20),
            (base + 900, 5),
        ] {
            spend.add(Paid { campaign, ts }, amount);
        }
        let minute = (campaign, 1_000);
        // 80 before; +10 at 100 → 90; +50 at 500 → 140
        assert_eq!(
            spend.crossing(&minute, 80, 100, 100),
            Some((base + 500, 140))
        );
        assert_eq!(spend.crossing(&minute, 80, 100, 90), Some((base + 100, 90)));
        assert_eq!(spend.crossing(&minute, 0, 100, 100), None);
        spend.add(
            Paid {
                campaign,
                ts: base + 100,
            },
            -10,
        );
        assert_eq!(spend.minutes[&minute].len(), 2);
        assert_eq!(
            spend.crossing(&minute, 80, 100, 90),
            Some((base + 500, 130))
        );
    }
}
