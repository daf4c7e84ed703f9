//! A shopper's behaviour patterns (DESIGN §5.4), from the pieces it holds:
//!
//! * `cart_abandonment_risk`: an `add_to_cart` whose 10-minute mark stream time has
//!   passed, with no `purchase` or `remove_from_cart` of that product by the shopper at or
//!   after the cart's time — one pattern per such cart, until the purchase or removal
//!   arrives (late ones too) or the cart leaves the day;
//! * `comparing_products`: among the shopper's views of the last 30 minutes in event-time
//!   order, a run of ≥ 3 consecutive views of products of one category (a product the
//!   catalog does not categorise breaks a run), of whose products ≥ 2 were added to cart
//!   in the last 30 minutes — one pattern per such run.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::shoppers::{Piece, Seen};
use super::*;

/// The patterns, in the order `pattern_detected` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternKind {
    CartAbandonmentRisk,
    ComparingProducts,
}

impl PatternKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PatternKind::CartAbandonmentRisk => "cart_abandonment_risk",
            PatternKind::ComparingProducts => "comparing_products",
        }
    }
}

/// One detected pattern: a record of the pattern topic, keyed by
/// `user|pattern|product|mark`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pattern {
    pub kind: PatternKind,
    /// The cart's product; of a comparison, the run's first viewed product.
    pub product: ProductId,
    /// The tick the pattern is about: a cart's 10-minute mark; a comparison's first view.
    pub mark: u64,
    /// The event time it started at: the cart's; the first view's.
    pub started: u64,
    /// A comparison's category.
    pub category: Option<Category>,
    /// The cart's product; the products of the run that were added to cart (by name).
    pub products: Vec<ProductId>,
}

/// Every pattern a shopper's pieces show, one per key; `events` are its `Piece::Event`s.
pub fn patterns(pieces: &[&Piece], events: &[&Seen]) -> Vec<Pattern> {
    let mut found: BTreeMap<(PatternKind, ProductId, u64), Pattern> = BTreeMap::new();
    let mut add = |p: Pattern| {
        let key = (p.kind, p.product.clone(), p.mark);
        // carts of one product in one second share a mark: the earliest names it
        found.entry(key).or_insert(p);
    };
    // each product's latest purchase or removal: a cart at or before it is cleared
    let mut cleared_until: BTreeMap<&ProductId, u64> = BTreeMap::new();
    for s in events {
        if let (Action::Purchase | Action::RemoveFromCart, Some(p)) = (s.action, &s.product) {
            let until = cleared_until.entry(p).or_insert(s.ts);
            *until = (*until).max(s.ts);
        }
    }
    for piece in pieces {
        let Piece::Marked { ts, product, .. } = piece else {
            continue;
        };
        if cleared_until.get(product).is_none_or(|until| until < ts) {
            add(Pattern {
                kind: PatternKind::CartAbandonmentRisk,
                product: product.clone(),
                mark: TEN_MINUTES.expiry(*ts),
                started: *ts,
                category: None,
                products: vec![product.clone()],
            });
        }
    }
    for p in comparisons(pieces) {
        add(p);
    }
    found.into_values().collect()
}

/// The runs of ≥ 3 consecutive views in one category with ≥ 2 of their products carted.
fn comparisons(pieces: &[&Piece]) -> Vec<Pattern> {
    let carted: BTreeSet<&ProductId> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Carted(product) => Some(product),
            _ => None,
        })
        .collect();
    let mut views: Vec<(u64, EventIdOrd, &ProductId, Option<&Category>)> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Viewed {
                ts,
                id,
                product,
                category,
            } => Some((*ts, id.0, product, category.as_ref())),
            _ => None,
        })
        .collect();
    views.sort();
    let mut out = Vec::new();
    for run in views.chunk_by(|a, b| a.3.is_some() && a.3 == b.3) {
        let Some(category) = run[0].3 else { continue };
        if run.len() < 3 {
            continue;
        }
        let products: BTreeSet<&ProductId> = run
            .iter()
            .map(|v| v.2)
            .filter(|p| carted.contains(p))
            .collect();
        if products.len() >= 2 {
            out.push(Pattern {
                kind: PatternKind::ComparingProducts,
                product: run[0].2.clone(),
                mark: run[0].0,
                started: run[0].0,
                category: Some(category.clone()),
                products: products.into_iter().cloned().collect(),
            });
        }
    }
    out
}

/// An event id's hash, which orders views of one millisecond.
type EventIdOrd = u128;
