//! A shopper's last day as one function of its events (DESIGN §5.4): the latest event's
//! context, the most recent products, and the patterns. One `reduce` per shopper reads the
//! events the shopper still holds, so each is a function of the events — a late purchase
//! clears a risk after its mark, a late view lands at its place in time — and never of
//! their arrival order or batching. Time reaches the `reduce` as pieces that appear and
//! leave on their own ticks: a cart's 10-minute mark is a piece starting at the mark, so
//! the risk is set when stream time passes it, in a quiet period too.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::event::{EventId, Timed};
use crate::contract::state::State;
use crate::contract::time::Tick;
use crate::operators::windowed::intervals;

use super::patterns::{patterns, Pattern};
use super::*;

/// An event of the shopper's last day, reduced to what the `reduce` reads.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seen {
    pub ts: u64,
    pub id: EventId,
    pub action: Action,
    pub product: Option<ProductId>,
    pub context: Context,
}

/// What the shopper `reduce` reads, each present for its own interval of stream time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Piece {
    /// An event, for a day after its event time (the family's horizon).
    Event(Seen),
    /// An `add_to_cart` whose 10-minute mark has passed: from the mark until the cart
    /// leaves the day.
    Marked {
        ts: u64,
        id: EventId,
        product: ProductId,
    },
    /// A view of the last 30 minutes and its product's category (none when the catalog
    /// has none): derived through the catalog, so a re-categorised product moves it.
    Viewed {
        ts: u64,
        id: EventId,
        product: ProductId,
        category: Option<Category>,
    },
    /// An `add_to_cart` of the last 30 minutes.
    Carted(ProductId),
}

/// A shopper's latest event of the last day: greatest `(timestamp, event id hash)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Latest {
    pub ts: u64,
    pub context: Context,
}

/// What the `reduce` shows of a shopper.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Shown {
    Latest(Latest),
    Pattern(Pattern),
    /// The most recent distinct products, newest first.
    Recent(Vec<ProductId>),
}

/// An interaction with a product in the last 30 minutes, keyed by the product so that it
/// meets the catalog.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Touch {
    pub user: UserId,
    pub ts: u64,
    pub id: EventId,
    pub action: Action,
}

/// Every interaction with a product, kept for its 30 minutes (checkpointed).
pub(super) fn touches<'s>(
    state: &State,
    events: VecCollection<'s, Tick, Timed<CommerceEvent>>,
) -> VecCollection<'s, Tick, (ProductId, Touch)> {
    intervals(state, events, |e: &Timed<CommerceEvent>| {
        let until = Some(THIRTY_MINUTES.expiry(e.ts));
        e.event.item.as_ref().map(|i| {
            let touch = Touch {
                user: e.event.user.clone(),
                ts: e.ts,
                id: e.id,
                action: e.event.action,
            };
            ((i.product.clone(), touch), 1, 0, until)
        })
    })
}

/// The day's events and their marks (checkpointed), and the 30-minute views and carts
/// through the catalog: every piece of every shopper.
fn pieces<'s>(
    state: &State,
    events: VecCollection<'s, Tick, Timed<CommerceEvent>>,
    touches: VecCollection<'s, Tick, (ProductId, Touch)>,
    touched: VecCollection<'s, Tick, (ProductId, Touch, Category)>,
) -> VecCollection<'s, Tick, (UserId, Piece)> {
    let day = intervals(state, events, |e: &Timed<CommerceEvent>| {
        let until = Some(ONE_DAY.expiry(e.ts));
        let user = || e.event.user.clone();
        let product = e.event.item.as_ref().map(|i| i.product.clone());
        let mut out = Vec::with_capacity(2);
        if let (Action::AddToCart, Some(product)) = (e.event.action, &product) {
            let mark = TEN_MINUTES.expiry(e.ts);
            let (ts, id, product) = (e.ts, e.id, product.clone());
            out.push(((user(), Piece::Marked { ts, id, product }), 1, mark, until));
        }
        let seen = Seen {
            ts: e.ts,
            id: e.id,
            action: e.event.action,
            product,
            context: e.event.context.clone(),
        };
        out.push(((user(), Piece::Event(seen)), 1, 0, until));
        out
    });
    let views = touches.clone().filter(|(_, t)| t.action == Action::View);
    let viewed = |t: &Touch, product: &ProductId, category: Option<&Category>| {
        let piece = Piece::Viewed {
            ts: t.ts,
            id: t.id,
            product: product.clone(),
            category: category.cloned(),
        };
        (t.user.clone(), piece)
    };
    // the catalog gives a product one category at most (its smallest): each view joins
    // once or not at all, so the uncategorised views are all views less the joined ones
    let joined = touched.filter(|(_, t, _)| t.action == Action::View);
    let categorised = joined
        .clone()
        .map(move |(p, t, c)| viewed(&t, &p, Some(&c)));
    let uncategorised = views
        .map(move |(p, t)| viewed(&t, &p, None))
        .concat(joined.map(move |(p, t, _)| viewed(&t, &p, None)).negate());
    let carted = touches
        .filter(|(_, t)| t.action == Action::AddToCart)
        .map(|(p, t)| (t.user, Piece::Carted(p)));
    day.concat(categorised).concat(uncategorised).concat(carted)
}

impl Commerce {
    /// What each shopper shows: its latest event, its recent products and its patterns.
    pub(super) fn shoppers<'s>(
        &self,
        state: &State,
        events: VecCollection<'s, Tick, Timed<CommerceEvent>>,
        touches: VecCollection<'s, Tick, (ProductId, Touch)>,
        touched: VecCollection<'s, Tick, (ProductId, Touch, Category)>,
    ) -> VecCollection<'s, Tick, (UserId, Shown)> {
        let length = self.config.recent_products;
        pieces(state, events, touches, touched).reduce_named("Shoppers", move |_, input, out| {
            let pieces: Vec<&Piece> = input
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(p, _)| *p)
                .collect();
            out.extend(shown(&pieces, length).into_iter().map(|s| (s, 1)));
        })
    }
}

/// Everything a shopper shows, from the pieces it holds (in piece order: events by time).
pub fn shown(pieces: &[&Piece], length: usize) -> Vec<Shown> {
    let events: Vec<&Seen> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Event(seen) => Some(seen),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    if let Some(last) = events.iter().max_by_key(|s| (s.ts, s.id)) {
        out.push(Shown::Latest(Latest {
            ts: last.ts,
            context: last.context.clone(),
        }));
    }
    let recent = recent(&events, length);
    if !recent.is_empty() {
        out.push(Shown::Recent(recent));
    }
    out.extend(patterns(pieces, &events).into_iter().map(Shown::Pattern));
    out
}

/// The `length` most recent distinct products, newest first: each at its latest
/// `(timestamp, event id hash)`.
fn recent(events: &[&Seen], length: usize) -> Vec<ProductId> {
    let mut newest: std::collections::BTreeMap<&ProductId, (u64, EventId)> = Default::default();
    for s in events {
        if let Some(p) = &s.product {
            let at = newest.entry(p).or_insert((s.ts, s.id));
            *at = (*at).max((s.ts, s.id));
        }
    }
    let mut order: Vec<((u64, EventId), &ProductId)> =
        newest.into_iter().map(|(p, at)| (at, p)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order
        .into_iter()
        .take(length)
        .map(|(_, p)| p.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ts: u64, id: &str, product: &str) -> Piece {
        Piece::Event(Seen {
            ts,
            id: EventId::of(id),
            action: Action::View,
            product: Some(ProductId(product.into())),
            context: Context::default(),
        })
    }

    fn recent_of(pieces: &[Piece], length: usize) -> Vec<String> {
        let refs: Vec<&Piece> = pieces.iter().collect();
        shown(&refs, length)
            .into_iter()
            .find_map(|s| match s {
                Shown::Recent(list) => Some(list.into_iter().map(|p| p.0).collect()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_list_is_cut_and_a_late_event_lands_at_its_place() {
        let mut pieces: Vec<Piece> = (0..5)
            .map(|i| seen(1_000 * i, &format!("e{i}"), &format!("p{i}")))
            .collect();
        assert_eq!(recent_of(&pieces, 3), ["p4", "p3", "p2"]);
        // late: older than the cut, it changes nothing; between, it takes its place
        pieces.push(seen(500, "late-old", "p9"));
        assert_eq!(recent_of(&pieces, 3), ["p4", "p3", "p2"]);
        pieces.push(seen(3_500, "late", "p8"));
        assert_eq!(recent_of(&pieces, 3), ["p4", "p8", "p3"]);
        // a product seen again moves to its newest time, once
        pieces.push(seen(2_500, "again", "p0"));
        assert_eq!(recent_of(&pieces, 4), ["p4", "p8", "p3", "p0"]);
    }
}
