//! A shopper as a few compact parts (DESIGN §5.4) and what it shows at a tick: its
//! windowed counts, its latest event, its most recent products, its category of most
//! interactions in 30 minutes and its patterns.
//!
//! Everything a shopper shows is a function of its events alive at the tick (each for its
//! window after its event time), so it never depends on arrival order or batching. Only
//! what can still be shown is kept:
//!
//! * the latest event: the greatest `(timestamp, event id hash)`; every other event
//!   leaves the day no later than it does;
//! * at most `recent_products` distinct products, each at its latest event: a product cut
//!   from the list is older than every product on it, so it leaves the day first and
//!   could never come back into the list (events only arrive; none is retracted);
//! * the interactions with a product of the last 30 minutes (counts, category, views,
//!   carts);
//! * the day's carts, and per product the latest purchase or removal that clears them;
//! * the times of the day's purchases.

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::contract::event::{EventId, Timed};
use crate::contract::time::Tick;

use super::patterns::{patterns, Pattern};
use super::*;

/// A shopper's latest event of the last day: greatest `(timestamp, event id hash)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Latest {
    pub ts: u64,
    pub context: Context,
}

/// A shopper's windowed counts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Counts {
    pub views_10m: i64,
    /// The viewed prices of the last 10 minutes, in hundredths.
    pub view_cents_10m: i64,
    pub carts_30m: i64,
    pub purchases_24h: i64,
}

/// What a shopper shows at a tick.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Shown {
    Counts(Counts),
    Latest(Latest),
    /// The category with most interactions in 30 minutes; of a tie, the smallest name.
    Top(Category),
    Pattern(Pattern),
    /// The most recent distinct products, newest first, as a JSON array (what the list
    /// row holds: built once from the parts, no product copied).
    Recent(String),
}

/// An event at its place in time: ordered by (timestamp, event id hash). The hash is kept
/// in two halves, so an `At` is 24 bytes (a `u128` field would align it to 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct At {
    pub ts: u64,
    id: [u64; 2],
}

impl At {
    pub fn of(ts: u64, id: EventId) -> Self {
        At {
            ts,
            id: [(id.0 >> 64) as u64, id.0 as u64],
        }
    }
}

/// An interaction with a product in the last 30 minutes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    pub at: At,
    pub action: Action,
    pub product: ProductId,
    pub cents: i64,
}

/// The product categories in force (the catalog, one category per product).
pub type Catalog = FxHashMap<ProductId, Category>;

/// What a shopper keeps: see the module doc. Lists are in time order unless said.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shopper {
    latest: Option<(At, Context)>,
    /// Distinct products at their latest event, newest first.
    recent: Vec<(At, ProductId)>,
    touches: Vec<Touch>,
    /// The day's `add_to_cart`s.
    carts: Vec<(At, ProductId)>,
    /// Per product, the latest purchase or removal of the day.
    cleared: FxHashMap<ProductId, u64>,
    /// The times of the day's purchases.
    purchases: Vec<u64>,
}

fn day_live(ts: u64, t: Tick) -> bool {
    ONE_DAY.live_at(ts, t)
}

fn recent_live(ts: u64, t: Tick) -> bool {
    THIRTY_MINUTES.live_at(ts, t)
}

impl Shopper {
    /// Takes an event inserted at tick `now`; what has already left its window is not kept.
    pub fn insert(&mut self, e: &Timed<CommerceEvent>, now: Tick, length: usize) {
        if !day_live(e.ts, now) {
            return;
        }
        let at = At::of(e.ts, e.id);
        if self.latest.as_ref().is_none_or(|(l, _)| *l < at) {
            self.latest = Some((at, e.event.context.clone()));
        }
        let Some(item) = &e.event.item else {
            return;
        };
        let product = &item.product;
        self.remember(at, product, length);
        match e.event.action {
            Action::AddToCart => {
                let i = self.carts.partition_point(|(c, _)| *c < at);
                self.carts.insert(i, (at, product.clone()));
            }
            Action::Purchase | Action::RemoveFromCart => {
                if e.event.action == Action::Purchase {
                    let i = self.purchases.partition_point(|ts| *ts < e.ts);
                    self.purchases.insert(i, e.ts);
                }
                let until = self.cleared.entry(product.clone()).or_insert(e.ts);
                *until = (*until).max(e.ts);
            }
            _ => {}
        }
        if recent_live(e.ts, now) {
            let i = self.touches.partition_point(|t| t.at < at);
            let touch = Touch {
                at,
                action: e.event.action,
                product: product.clone(),
                cents: item.price.0,
            };
            self.touches.insert(i, touch);
        }
    }

    /// Moves `product` to its latest event in the list, which keeps `length` products.
    fn remember(&mut self, at: At, product: &ProductId, length: usize) {
        if let Some(i) = self.recent.iter().position(|(_, p)| p == product) {
            if self.recent[i].0 >= at {
                return;
            }
            self.recent.remove(i);
        }
        let i = self.recent.partition_point(|(a, _)| *a > at);
        if i < length {
            self.recent.insert(i, (at, product.clone()));
            self.recent.truncate(length);
        }
    }

    /// Keeps the `length` most recent products (a restore with a shorter list).
    pub fn cut(&mut self, length: usize) {
        self.recent.truncate(length);
    }

    /// Drops what has left its window by tick `t`.
    pub fn expire(&mut self, t: Tick) {
        if self
            .latest
            .as_ref()
            .is_some_and(|(At { ts, .. }, _)| !day_live(*ts, t))
        {
            self.latest = None;
        }
        self.recent.retain(|(At { ts, .. }, _)| day_live(*ts, t));
        self.touches.retain(|x| recent_live(x.at.ts, t));
        self.carts.retain(|(At { ts, .. }, _)| day_live(*ts, t));
        self.cleared.retain(|_, ts| day_live(*ts, t));
        self.purchases.retain(|ts| day_live(*ts, t));
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_none()
    }

    /// Whether a live interaction names one of `products` (a catalog change moves it).
    pub fn touches_any(&self, products: &FxHashSet<&ProductId>, t: Tick) -> bool {
        self.touches
            .iter()
            .any(|x| recent_live(x.at.ts, t) && products.contains(&x.product))
    }

    /// The next tick after `t` at which what the shopper shows can change with no event:
    /// a part leaving its window, a view leaving the 10 minutes, a cart's 10-minute mark.
    /// Call it after [`Shopper::expire`] of `t`: each list's first part is its next to go.
    pub fn next_change(&self, t: Tick) -> Option<Tick> {
        let day = |ts: u64| ONE_DAY.expiry(ts);
        let view_ends = self
            .touches
            .iter()
            .filter(|x| x.action == Action::View)
            .map(|x| TEN_MINUTES.expiry(x.at.ts))
            .find(|end| *end > t);
        let ends = [
            self.latest.as_ref().map(|(At { ts, .. }, _)| day(*ts)),
            self.recent.last().map(|(At { ts, .. }, _)| day(*ts)),
            self.touches.first().map(|x| THIRTY_MINUTES.expiry(x.at.ts)),
            view_ends,
            self.carts.first().map(|(At { ts, .. }, _)| day(*ts)),
            self.purchases.first().map(|ts| day(*ts)),
        ];
        let marks = self
            .carts
            .iter()
            .map(|(At { ts, .. }, _)| TEN_MINUTES.expiry(*ts))
            .filter(|m| *m > t);
        ends.into_iter()
            .flatten()
            .chain(marks)
            .filter(|x| *x > t)
            .min()
    }

    /// Everything the shopper shows at tick `t` (parts that left their window by then are
    /// skipped, kept or not); both sides of a comparison are built alike.
    pub fn shown(&self, t: Tick, catalog: &Catalog) -> Vec<Shown> {
        let mut out = Vec::new();
        if let Some((At { ts, .. }, context)) = self
            .latest
            .as_ref()
            .filter(|(At { ts, .. }, _)| day_live(*ts, t))
        {
            out.push(Shown::Latest(Latest {
                ts: *ts,
                context: context.clone(),
            }));
        }
        let touches: Vec<&Touch> = self
            .touches
            .iter()
            .filter(|x| recent_live(x.at.ts, t))
            .collect();
        let views = touches
            .iter()
            .filter(|x| x.action == Action::View && TEN_MINUTES.live_at(x.at.ts, t));
        let counts = Counts {
            views_10m: views.clone().count() as i64,
            view_cents_10m: views.map(|x| x.cents).sum(),
            carts_30m: touches
                .iter()
                .filter(|x| x.action == Action::AddToCart)
                .count() as i64,
            purchases_24h: self.purchases.iter().filter(|ts| day_live(**ts, t)).count() as i64,
        };
        if counts != Counts::default() {
            out.push(Shown::Counts(counts));
        }
        if let Some(top) = top_category(&touches, catalog) {
            out.push(Shown::Top(top.clone()));
        }
        let carts: Vec<&(At, ProductId)> = self
            .carts
            .iter()
            .filter(|(At { ts, .. }, _)| day_live(*ts, t))
            .collect();
        let cleared = |product: &ProductId| {
            self.cleared
                .get(product)
                .copied()
                .filter(|ts| day_live(*ts, t))
        };
        let found = patterns(t, &carts, cleared, &touches, catalog);
        out.extend(found.into_iter().map(Shown::Pattern));
        let recent: Vec<&str> = self
            .recent
            .iter()
            .filter(|(At { ts, .. }, _)| day_live(*ts, t))
            .map(|(_, p)| p.0.as_str())
            .collect();
        if !recent.is_empty() {
            let json = serde_json::to_string(&recent).expect("strings serialize");
            out.push(Shown::Recent(json));
        }
        out
    }
}

/// The category with most interactions through the catalog; of a tie, the smallest name.
fn top_category<'c>(touches: &[&Touch], catalog: &'c Catalog) -> Option<&'c Category> {
    let mut counts: FxHashMap<&Category, usize> = FxHashMap::default();
    for x in touches {
        if let Some(c) = catalog.get(&x.product) {
            *counts.entry(c).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|(a, m), (b, n)| m.cmp(n).then_with(|| b.cmp(a)))
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::time::{DAY, MINUTE};

    fn event(ts: u64, id: &str, action: Action, product: &str) -> Timed<CommerceEvent> {
        Timed {
            id: EventId::of(id),
            ts,
            event: CommerceEvent {
                user: UserId("u".into()),
                action,
                item: Some(Item {
                    product: ProductId(product.into()),
                    price: Cents(100),
                }),
                context: Context::default(),
            },
        }
    }

    fn recent_of(s: &Shopper, t: Tick) -> Vec<String> {
        s.shown(t, &Catalog::default())
            .into_iter()
            .find_map(|s| match s {
                Shown::Recent(json) => Some(serde_json::from_str(&json).unwrap()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_list_is_cut_and_a_late_event_lands_at_its_place() {
        let mut s = Shopper::default();
        let now = 10_000;
        for i in 0..5 {
            s.insert(
                &event(1_000 * i, &format!("e{i}"), Action::View, &format!("p{i}")),
                now,
                3,
            );
        }
        assert_eq!(recent_of(&s, now), ["p4", "p3", "p2"]);
        // late: older than the cut, it changes nothing; between, it takes its place
        s.insert(&event(500, "late-old", Action::View, "p9"), now, 3);
        assert_eq!(recent_of(&s, now), ["p4", "p3", "p2"]);
        s.insert(&event(3_500, "late", Action::View, "p8"), now, 3);
        assert_eq!(recent_of(&s, now), ["p4", "p8", "p3"]);
        // a product seen again moves to its newest time, once
        s.insert(&event(4_500, "again", Action::View, "p3"), now, 3);
        assert_eq!(recent_of(&s, now), ["p3", "p4", "p8"]);
        // the list leaves with the day (all of these at the end of its first minute)
        assert_eq!(recent_of(&s, DAY + MINUTE - 1), ["p3", "p4", "p8"]);
        assert_eq!(recent_of(&s, DAY + MINUTE), Vec::<String>::new());
    }

    #[test]
    fn at_orders_by_time_then_the_whole_hash_in_24_bytes() {
        assert!(At::of(5, EventId(1 << 64)) > At::of(5, EventId(u64::MAX as u128)));
        assert!(At::of(4, EventId(u128::MAX)) < At::of(5, EventId(0)));
        assert_eq!(std::mem::size_of::<At>(), 24);
    }

    #[test]
    fn changes_come_at_marks_and_window_ends() {
        let mut s = Shopper::default();
        s.insert(&event(1_000, "c", Action::AddToCart, "p"), 1_000, 50);
        // the 30-minute touch, the 10-minute mark, the day's end, in turn
        assert_eq!(s.next_change(1_000), Some(601_000));
        assert_eq!(s.next_change(601_000), Some(1_801_000));
        assert_eq!(s.next_change(1_801_000), Some(DAY + MINUTE));
        s.expire(DAY + MINUTE);
        assert!(s.is_empty());
        assert_eq!(s.next_change(DAY + MINUTE), None);
    }
}
