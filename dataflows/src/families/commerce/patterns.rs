//! A shopper's behaviour patterns (DESIGN §5.4), from the parts it keeps:
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

use super::shoppers::{At, Catalog, Touch};
use super::*;
use crate::contract::time::Tick;

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

/// Every pattern a shopper shows at tick `t`, one per key, from its live carts of the day
/// and interactions of the last 30 minutes (both in time order); `cleared(product)` is
/// the time of the product's latest live purchase or removal.
pub fn patterns(
    t: Tick,
    carts: &[&(At, ProductId)],
    cleared: impl Fn(&ProductId) -> Option<u64>,
    touches: &[&Touch],
    catalog: &Catalog,
) -> Vec<Pattern> {
    let mut found: BTreeMap<(PatternKind, ProductId, u64), Pattern> = BTreeMap::new();
    let mut add = |p: Pattern| {
        let key = (p.kind, p.product.clone(), p.mark);
        // carts of one product in one second share a mark: the earliest names it
        found.entry(key).or_insert(p);
    };
    for (At { ts, .. }, product) in carts {
        let mark = TEN_MINUTES.expiry(*ts);
        if mark <= t && cleared(product).is_none_or(|until| until < *ts) {
            add(Pattern {
                kind: PatternKind::CartAbandonmentRisk,
                product: product.clone(),
                mark,
                started: *ts,
                category: None,
                products: vec![product.clone()],
            });
        }
    }
    for p in comparisons(touches, catalog) {
        add(p);
    }
    found.into_values().collect()
}

/// The runs of ≥ 3 consecutive views in one category with ≥ 2 of their products carted.
fn comparisons(touches: &[&Touch], catalog: &Catalog) -> Vec<Pattern> {
    let carted: BTreeSet<&ProductId> = touches
        .iter()
        .filter(|x| x.action == Action::AddToCart)
        .map(|x| &x.product)
        .collect();
    let views: Vec<(&Touch, Option<&Category>)> = touches
        .iter()
        .filter(|x| x.action == Action::View)
        .map(|x| (*x, catalog.get(&x.product)))
        .collect();
    let mut out = Vec::new();
    for run in views.chunk_by(|a, b| a.1.is_some() && a.1 == b.1) {
        let Some(category) = run[0].1 else { continue };
        if run.len() < 3 {
            continue;
        }
        let products: BTreeSet<&ProductId> = run
            .iter()
            .map(|(x, _)| &x.product)
            .filter(|p| carted.contains(p))
            .collect();
        if products.len() >= 2 {
            let first = run[0].0;
            out.push(Pattern {
                kind: PatternKind::ComparingProducts,
                product: first.product.clone(),
                mark: first.at.ts,
                started: first.at.ts,
                category: Some(category.clone()),
                products: products.into_iter().cloned().collect(),
            });
        }
    }
    out
}
