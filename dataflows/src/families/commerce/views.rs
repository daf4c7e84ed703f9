//! The windowed views: each event's contributions to its shopper's and its product's
//! sums, and the row an entity's sums make.

use serde::{Deserialize, Serialize};

use crate::contract::event::Timed;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Tick, Window};

use super::*;

/// The windows of the commerce views.
pub const TEN_MINUTES: Window = Window::minutes(10);
pub const THIRTY_MINUTES: Window = Window::minutes(30);
pub const ONE_HOUR: Window = Window::minutes(60);
pub const ONE_DAY: Window = Window::days(1);

/// An entity of one of the views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entity {
    Shopper(UserId),
    Product(ProductId),
}

/// The span of a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Span {
    M10,
    M30,
    H1,
    H24,
}

impl Span {
    pub fn window(self) -> Window {
        match self {
            Span::M10 => TEN_MINUTES,
            Span::M30 => THIRTY_MINUTES,
            Span::H1 => ONE_HOUR,
            Span::H24 => ONE_DAY,
        }
    }
}

/// What a contribution adds to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Views(Span),
    /// The viewed prices, in hundredths (10 minutes).
    ViewCents,
    Carts(Span),
    Purchases(Span),
    /// Interactions with products of a category in the last 30 minutes, through the
    /// catalog (derived: a re-categorised product moves them).
    Category(Category),
    /// The latest event of the day (derived from the shopper `reduce`).
    Latest(Latest),
    /// A pattern the shopper shows, once per record of it (derived).
    Pattern(PatternKind),
}

/// `(hits + alpha) / (trials + alpha + beta)`, as the search family smooths its CTR.
pub fn smoothed(hits: i64, trials: i64, alpha: f64, beta: f64) -> f64 {
    (hits as f64 + alpha) / (trials as f64 + alpha + beta)
}

type Contribution = ((Entity, Measure), isize, Option<Tick>);

impl Commerce {
    /// What one event adds to which sums, for how long.
    pub(super) fn contributions_of(&self, e: &Timed<CommerceEvent>) -> Vec<Contribution> {
        let Some(item) = &e.event.item else {
            return Vec::new();
        };
        let shopper = || Entity::Shopper(e.event.user.clone());
        let product = || Entity::Product(item.product.clone());
        let until = |span: Span| Some(span.window().expiry(e.ts));
        let per_product = |m: fn(Span) -> Measure| {
            [Span::H1, Span::H24].map(|s| ((product(), m(s)), 1, until(s)))
        };
        let mut out = Vec::new();
        match e.event.action {
            Action::View => {
                out.push(((shopper(), Measure::Views(Span::M10)), 1, until(Span::M10)));
                if item.price.0 > 0 {
                    let cents = item.price.0 as isize;
                    out.push(((shopper(), Measure::ViewCents), cents, until(Span::M10)));
                }
                out.extend(per_product(Measure::Views));
            }
            Action::AddToCart => {
                out.push(((shopper(), Measure::Carts(Span::M30)), 1, until(Span::M30)));
                out.extend(per_product(Measure::Carts));
            }
            Action::Purchase => {
                let day = until(Span::H24);
                out.push(((shopper(), Measure::Purchases(Span::H24)), 1, day));
                out.extend(per_product(Measure::Purchases));
            }
            Action::RemoveFromCart | Action::Click | Action::Search => {}
        }
        out
    }

    /// The row of one entity from its non-zero sums; `None` when there are none.
    pub fn row(&self, entity: &Entity, sums: &[(Measure, isize)]) -> Option<FeatureRow> {
        if sums.is_empty() {
            return None;
        }
        let sum = |m: Measure| {
            sums.iter()
                .find(|(x, _)| *x == m)
                .map_or(0, |(_, n)| *n as i64)
        };
        // the most interactions; of a tie, the smallest name
        let top = sums
            .iter()
            .filter_map(|(m, n)| match m {
                Measure::Category(c) if *n > 0 => Some((*n, std::cmp::Reverse(c))),
                _ => None,
            })
            .max()
            .map_or(Value::Null, |(_, c)| Value::Text(c.0 .0.clone()));
        let (table, key, values) = match entity {
            Entity::Shopper(user) => {
                let views = sum(Measure::Views(Span::M10));
                let avg = match views {
                    0 => Value::Null,
                    n => Value::float(sum(Measure::ViewCents) as f64 / 100.0 / n as f64),
                };
                let mut values = vec![
                    Value::Int(views),
                    avg,
                    Value::Int(sum(Measure::Carts(Span::M30))),
                    Value::Int(sum(Measure::Purchases(Span::H24))),
                    top,
                ];
                values.extend(latest_fields(sums));
                values.push(pattern_detected(sums));
                (table::SHOPPER, &user.0, values)
            }
            Entity::Product(product) => {
                let (a, b) = (self.config.alpha, self.config.beta);
                let mut values = Vec::new();
                for span in [Span::H1, Span::H24] {
                    values.extend([
                        Value::Int(sum(Measure::Views(span))),
                        Value::Int(sum(Measure::Carts(span))),
                        Value::Int(sum(Measure::Purchases(span))),
                    ]);
                }
                let (views, carts, buys) = (
                    sum(Measure::Views(Span::H24)),
                    sum(Measure::Carts(Span::H24)),
                    sum(Measure::Purchases(Span::H24)),
                );
                values.push(Value::float(smoothed(carts, views, a, b)));
                values.push(Value::float(smoothed(buys, carts, a, b)));
                (table::PRODUCT_STATS, &product.0, values)
            }
        };
        Some(FeatureRow {
            table,
            key: vec![key.clone()],
            values,
        })
    }
}

/// `last_event_ts`, `device_type`, `last_referrer`, `utm_source` of the latest event.
fn latest_fields(sums: &[(Measure, isize)]) -> [Value; 4] {
    let latest = sums.iter().find_map(|(m, n)| match m {
        Measure::Latest(l) if *n > 0 => Some(l),
        _ => None,
    });
    let Some(l) = latest else {
        return [Value::Null, Value::Null, Value::Null, Value::Null];
    };
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    [
        Value::Int(l.ts as i64),
        text(&l.context.device),
        text(&l.context.referrer),
        text(&l.context.utm_source),
    ]
}

/// The patterns shown, each once, in [`PatternKind`] order, joined by commas; null when
/// there are none.
fn pattern_detected(sums: &[(Measure, isize)]) -> Value {
    let kinds: std::collections::BTreeSet<PatternKind> = sums
        .iter()
        .filter_map(|(m, n)| match m {
            Measure::Pattern(k) if *n > 0 => Some(*k),
            _ => None,
        })
        .collect();
    if kinds.is_empty() {
        return Value::Null;
    }
    let names: Vec<&str> = kinds.into_iter().map(PatternKind::as_str).collect();
    Value::Text(names.join(","))
}
