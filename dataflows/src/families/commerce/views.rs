//! The rows: each event's contributions to its product's windowed sums and the row they
//! make, and the rows of what a shopper shows.

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

/// The span of a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Span {
    H1,
    H24,
}

impl Span {
    pub fn window(self) -> Window {
        match self {
            Span::H1 => ONE_HOUR,
            Span::H24 => ONE_DAY,
        }
    }
}

/// What a contribution to a product adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Views(Span),
    Carts(Span),
    Purchases(Span),
}

/// `(hits + alpha) / (trials + alpha + beta)`, as the search family smooths its CTR.
pub fn smoothed(hits: i64, trials: i64, alpha: f64, beta: f64) -> f64 {
    (hits as f64 + alpha) / (trials as f64 + alpha + beta)
}

type Contribution = ((ProductId, Measure), isize, Option<Tick>);

impl Commerce {
    /// What one event adds to its product's sums, for how long.
    pub(super) fn contributions_of(&self, e: &Timed<CommerceEvent>) -> Vec<Contribution> {
        let Some(item) = &e.event.item else {
            return Vec::new();
        };
        let measure: fn(Span) -> Measure = match e.event.action {
            Action::View => Measure::Views,
            Action::AddToCart => Measure::Carts,
            Action::Purchase => Measure::Purchases,
            Action::RemoveFromCart | Action::Click | Action::Search => return Vec::new(),
        };
        [Span::H1, Span::H24]
            .map(|s| {
                let until = Some(s.window().expiry(e.ts));
                ((item.product.clone(), measure(s)), 1, until)
            })
            .to_vec()
    }

    /// The row of one product from its non-zero sums; `None` when there are none.
    pub fn product_row(
        &self,
        product: &ProductId,
        sums: &[(Measure, isize)],
    ) -> Option<FeatureRow> {
        if sums.is_empty() {
            return None;
        }
        let sum = |m: Measure| {
            sums.iter()
                .find(|(x, _)| *x == m)
                .map_or(0, |(_, n)| *n as i64)
        };
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
        Some(FeatureRow {
            table: table::PRODUCT_STATS,
            key: vec![product.0.to_string()],
            values,
        })
    }
}

/// The rows of what a shopper shows: its hash (while it has an event of the day), its
/// `user_recent` list and its pattern records.
pub fn shopper_rows(user: &UserId, shown: Vec<Shown>) -> Vec<FeatureRow> {
    let list = |products: &[ProductId]| {
        let names: Vec<&str> = products.iter().map(|p| p.0.as_str()).collect();
        Value::Text(serde_json::to_string(&names).expect("strings serialize"))
    };
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    let mut counts = Counts::default();
    let mut top = Value::Null;
    let mut latest = None;
    let mut kinds = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for s in shown {
        match s {
            Shown::Counts(c) => counts = c,
            Shown::Top(c) => top = Value::Text(c.0.into()),
            Shown::Latest(l) => latest = Some(l),
            Shown::Recent(json) => out.push(FeatureRow {
                table: table::USER_RECENT,
                key: vec![user.0.to_string()],
                values: vec![Value::Text(json)],
            }),
            Shown::Pattern(p) => {
                kinds.insert(p.kind);
                out.push(FeatureRow {
                    table: table::PATTERNS,
                    key: vec![
                        user.0.to_string(),
                        p.kind.as_str().to_string(),
                        p.product.0.to_string(),
                        p.mark.to_string(),
                    ],
                    values: vec![
                        Value::Int(p.started as i64),
                        p.category.map_or(Value::Null, |c| Value::Text(c.0.into())),
                        list(&p.products),
                    ],
                });
            }
        }
    }
    let Some(latest) = latest else {
        return out;
    };
    let avg = match counts.views_10m {
        0 => Value::Null,
        n => Value::float(counts.view_cents_10m as f64 / 100.0 / n as f64),
    };
    // the patterns shown, each once, in `PatternKind` order
    let names: Vec<&str> = kinds.into_iter().map(PatternKind::as_str).collect();
    let patterns = match names.is_empty() {
        true => Value::Null,
        false => Value::Text(names.join(",")),
    };
    let c = &latest.context;
    out.push(FeatureRow {
        table: table::SHOPPER,
        key: vec![user.0.to_string()],
        values: vec![
            Value::Int(counts.views_10m),
            avg,
            Value::Int(counts.carts_30m),
            Value::Int(counts.purchases_24h),
            top,
            Value::Int(latest.ts as i64),
            text(&c.device),
            text(&c.referrer),
            text(&c.utm_source),
            patterns,
        ],
    });
    out
}
