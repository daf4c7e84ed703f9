//! A naive model of the commerce views (DESIGN §5.4) at a tick, from the events inserted by
//! then: the oracle of the property tests. Every feature is recounted from its definition
//! by scanning all events.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::Tick;

/// Rows by (table, key).
pub type State = BTreeMap<(u8, Vec<String>), Vec<Value>>;

pub const SECOND: u64 = 1_000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;

// table indices
pub const SHOPPER: u8 = 0;
pub const PRODUCT_STATS: u8 = 1;

// the defaults of `[dataflows.commerce]`
pub const ALPHA: f64 = 1.0;
pub const BETA: f64 = 20.0;

/// An accepted event as the model reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub user: String,
    /// Seed 003's `event_type`.
    pub action: &'static str,
    /// The product and its price in hundredths.
    pub item: Option<(String, i64)>,
    pub ts: u64,
}

/// An event counts in a window of `length` until its time plus the length, rounded up to
/// the second (to the minute for a day or more).
pub fn expiry(ts: u64, length: u64) -> Tick {
    let resolution = if length >= DAY { MINUTE } else { SECOND };
    (ts + length).div_ceil(resolution) * resolution
}

fn live(ts: u64, length: u64, at: Tick) -> bool {
    expiry(ts, length) > at
}

fn smoothed(hits: i64, trials: i64) -> f64 {
    (hits as f64 + ALPHA) / (trials as f64 + ALPHA + BETA)
}

/// Every row at tick `at`, from the events inserted by then and the catalog
/// `(product_id, category)` in force.
pub fn features(events: &[&Event], catalog: &[(String, String)], at: Tick) -> State {
    let mut out = State::new();
    let count = |user: Option<&str>, product: Option<&str>, action: &str, length: u64| {
        events
            .iter()
            .filter(|e| e.action == action && live(e.ts, length, at))
            .filter(|e| user.is_none_or(|u| e.user == u))
            .filter(|e| {
                let p = e.item.as_ref().map(|(p, _)| p.as_str());
                product.is_none_or(|want| p == Some(want))
            })
            .filter(|e| e.item.is_some())
            .count() as i64
    };
    let users: BTreeSet<&str> = events.iter().map(|e| e.user.as_str()).collect();
    for user in users {
        let views = count(Some(user), None, "view", 10 * MINUTE);
        let cents: i64 = events
            .iter()
            .filter(|e| e.user == user && e.action == "view" && live(e.ts, 10 * MINUTE, at))
            .filter_map(|e| e.item.as_ref().map(|(_, c)| *c))
            .sum();
        let carts = count(Some(user), None, "add_to_cart", 30 * MINUTE);
        let purchases = count(Some(user), None, "purchase", DAY);
        // interactions (any event naming a product) per category in 30 minutes
        let mut categories: BTreeMap<&str, i64> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| e.user == user && live(e.ts, 30 * MINUTE, at))
        {
            let Some((product, _)) = &e.item else {
                continue;
            };
            if let Some((_, category)) = catalog.iter().find(|(p, _)| p == product) {
                *categories.entry(category).or_default() += 1;
            }
        }
        // the most; of a tie, the smallest name (the map is in name order)
        let top = categories
            .iter()
            .fold(None::<(&str, i64)>, |best, (c, n)| match best {
                Some((_, m)) if m >= *n => best,
                _ => Some((c, *n)),
            });
        if views + carts + purchases == 0 && top.is_none() {
            continue;
        }
        let avg = match views {
            0 => Value::Null,
            n => Value::float(cents as f64 / 100.0 / n as f64),
        };
        out.insert(
            (SHOPPER, vec![user.to_string()]),
            vec![
                Value::Int(views),
                avg,
                Value::Int(carts),
                Value::Int(purchases),
                top.map_or(Value::Null, |(c, _)| Value::Text(c.to_string())),
            ],
        );
    }
    let products: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.item.as_ref().map(|(p, _)| p.as_str()))
        .collect();
    for product in products {
        let mut values = Vec::new();
        let mut by_span: BTreeMap<u64, [i64; 3]> = BTreeMap::new();
        for length in [HOUR, DAY] {
            let counts =
                ["view", "add_to_cart", "purchase"].map(|a| count(None, Some(product), a, length));
            values.extend(counts.map(Value::Int));
            by_span.insert(length, counts);
        }
        let [views, carts, buys] = by_span[&DAY];
        if by_span.values().flatten().all(|n| *n == 0) {
            continue;
        }
        values.push(Value::float(smoothed(carts, views)));
        values.push(Value::float(smoothed(buys, carts)));
        out.insert((PRODUCT_STATS, vec![product.to_string()]), values);
    }
    out
}
