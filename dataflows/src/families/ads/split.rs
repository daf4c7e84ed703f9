//! One pass over the events: impressions and clicks summed per tick into tallies of
//! (slot, measure, second class), clicks, spend instants, conversions and quality updates
//! each handed to the one consumer that needs it.

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Map, Partition};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::contract::event::Timed;
use crate::contract::time::{Tick, MINUTE, SECOND};
use crate::operators::ticks::PerTick;

use super::attribution::OpenClick;
use super::crossings::Paid;
use super::*;

/// What the events add up to, before their contributions to windows, the campaign view and
/// the budgets are computed: an impression or click counts, a click's price is spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Impressions,
    Clicks,
    Spend,
}

/// Impressions, clicks or spend of a slot at one class of event times (see [`class_of`]);
/// the update's weight is the count or the amount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tally {
    pub slot: Slot,
    pub measure: Measure,
    pub at: u64,
}

/// Clicks of a campaign carrying `advertiser` in a minute class (the weight counts them):
/// a campaign without a budget row is shown with its clicks' advertiser.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Advertised {
    pub campaign: CampaignId,
    pub advertiser: AdvertiserId,
    pub at: u64,
}

/// The representative of `ts`'s class in steps of `unit`: `ts` itself on a step, else the
/// step's first millisecond after it. Window starts (lengths are whole steps), expiries
/// rounded up to a step or coarser, local days and sync boundaries are the same for every
/// instant of a class, so events are summed per class before their contributions are
/// computed: a tick's thousands of impressions become a few hundred tallies.
pub fn class_of(ts: u64, unit: u64) -> u64 {
    if ts.is_multiple_of(unit) {
        ts
    } else {
        ts - ts % unit + 1
    }
}

/// What one pass over the events hands each consumer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Part {
    Tally(Tally),
    Click(OpenClick),
    Paid(Paid),
    Advertised(Advertised),
    Conversion(DeviceAd, ConversionRef),
    Quality(Timed<QualityUpdate>),
}

/// One tick's events, summed where they can be.
#[derive(Default)]
struct Sums {
    tallies: FxHashMap<Tally, isize>,
    paid: FxHashMap<Paid, isize>,
    advertised: FxHashMap<Advertised, isize>,
    passed: Vec<(Part, isize)>,
}

impl Sums {
    fn add(&mut self, e: Timed<AdEvent>, r: isize) {
        let at = class_of(e.ts, SECOND);
        let mut tally = |slot, measure, n| {
            *self.tallies.entry(Tally { slot, measure, at }).or_default() += n;
        };
        match e.event {
            AdEvent::Impression(slot) => tally(slot, Measure::Impressions, r),
            AdEvent::Click {
                slot,
                pair,
                price,
                advertiser,
            } => {
                let advertised = Advertised {
                    campaign: slot.campaign.clone(),
                    advertiser,
                    at: class_of(e.ts, MINUTE),
                };
                *self.advertised.entry(advertised).or_default() += r;
                let click = ClickRef {
                    ts: e.ts,
                    id: (e.id.0 >> 64) as u64,
                    placement: slot.placement,
                };
                let paid = Paid {
                    campaign: CampaignKey::of(&slot.campaign),
                    ts: e.ts,
                };
                tally(slot.clone(), Measure::Spend, r * price as isize);
                tally(slot, Measure::Clicks, r);
                *self.paid.entry(paid).or_default() += r * price as isize;
                self.passed
                    .push((Part::Click(OpenClick::new(pair, click)), r));
            }
            AdEvent::Conversion {
                slot,
                pair,
                revenue,
            } => {
                let conversion = ConversionRef {
                    ts: e.ts,
                    id: e.id,
                    campaign: slot.campaign,
                    category: slot.category,
                    revenue,
                };
                self.passed.push((Part::Conversion(pair, conversion), r));
            }
            AdEvent::Quality(q) => {
                let update = Timed {
                    id: e.id,
                    ts: e.ts,
                    event: q,
                };
                self.passed.push((Part::Quality(update), r));
            }
        }
    }

    fn drain(self) -> impl Iterator<Item = (Part, isize)> {
        let tallies = self.tallies.into_iter().map(|(t, n)| (Part::Tally(t), n));
        let paid = self.paid.into_iter().map(|(p, n)| (Part::Paid(p), n));
        let advertised = (self.advertised.into_iter()).map(|(a, n)| (Part::Advertised(a), n));
        tallies
            .chain(paid)
            .chain(advertised)
            .filter(|(_, n)| *n != 0)
            .chain(self.passed)
    }
}

/// The events split by consumer.
pub(super) struct Parts<'s> {
    pub tallies: VecCollection<'s, Tick, Tally>,
    pub clicks: Stream<'s, Tick, Vec<(OpenClick, Tick, isize)>>,
    pub paid: Stream<'s, Tick, Vec<(Paid, Tick, isize)>>,
    pub advertised: VecCollection<'s, Tick, Advertised>,
    pub conversions: VecCollection<'s, Tick, (DeviceAd, ConversionRef)>,
    pub quality: VecCollection<'s, Tick, Timed<QualityUpdate>>,
}

impl Ads {
    /// One pass over the events: impressions and clicks summed into [`Tally`]s and spend
    /// instants per tick, clicks, conversions and quality updates passed on, each to its
    /// own consumer (a collection read by many would be copied to each of them).
    pub(super) fn split<'s>(&self, events: VecCollection<'s, Tick, Timed<AdEvent>>) -> Parts<'s> {
        type Out = Vec<(Part, Tick, isize)>;
        let split = events
            .inner
            .unary::<CapacityContainerBuilder<Out>, _, _, _>(Pipeline, "SplitAdEvents", |_, _| {
                let mut ticks: PerTick<Sums> = PerTick::default();
                move |input, output| {
                    input.for_each(|cap, data| {
                        for (e, t, r) in data.drain(..) {
                            ticks.at(&cap, t).add(e, r);
                        }
                    });
                    for (cap, sums) in ticks.drain() {
                        let t = *cap.time();
                        output
                            .session(&cap)
                            .give_iterator(sums.drain().map(|(p, r)| (p, t, r)));
                    }
                }
            });
        let route = |(p, t, r): (Part, Tick, isize)| {
            let i = match p {
                Part::Tally(_) => 0,
                Part::Click(_) => 1,
                Part::Paid(_) => 2,
                Part::Advertised(_) => 3,
                Part::Conversion(..) => 4,
                Part::Quality(_) => 5,
            };
            (i, (p, t, r))
        };
        let mut parts = split
            .partition::<CapacityContainerBuilder<Out>, _, _>(6, route)
            .into_iter();
        let mut next = || parts.next().expect("six parts");
        macro_rules! part {
            ($variant:pat => $value:expr) => {
                next().flat_map(|(p, t, r)| match p {
                    $variant => Some(($value, t, r)),
                    _ => None,
                })
            };
        }
        Parts {
            tallies: part!(Part::Tally(x) => x).as_collection(),
            clicks: part!(Part::Click(x) => x),
            paid: part!(Part::Paid(x) => x),
            advertised: part!(Part::Advertised(x) => x).as_collection(),
            conversions: part!(Part::Conversion(pair, c) => (pair, c)).as_collection(),
            quality: part!(Part::Quality(q) => q).as_collection(),
        }
    }
}
