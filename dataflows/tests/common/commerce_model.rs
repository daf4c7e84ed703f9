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
pub const USER_RECENT: u8 = 2;
pub const PATTERNS: u8 = 3;

/// `recent_products`' default: seed 003's list of 50.
pub const RECENT: usize = 50;

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
    /// The hash of its `event_id` (`EventId`), which orders events of one millisecond.
    pub id: u128,
    /// `context.device.type`, `context.page.referrer`, `context.campaign.utm_source`.
    pub context: [Option<String>; 3],
}

impl Event {
    fn product(&self) -> Option<&str> {
        self.item.as_ref().map(|(p, _)| p.as_str())
    }
    fn order(&self) -> (u64, u128) {
        (self.ts, self.id)
    }
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
            if let Some(category) = category_of(catalog, product) {
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
        // the shopper's events of the day: it shows while it has one
        let mut day: Vec<&Event> = events
            .iter()
            .copied()
            .filter(|e| e.user == user && live(e.ts, DAY, at))
            .collect();
        day.sort_by_key(|e| e.order());
        let Some(last) = day.last() else {
            continue;
        };
        let patterns = patterns(&day, catalog, at);
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
                Value::Int(last.ts as i64),
                text(&last.context[0]),
                text(&last.context[1]),
                text(&last.context[2]),
                pattern_detected(&patterns),
            ],
        );
        let recent = recent(&day);
        if !recent.is_empty() {
            out.insert((USER_RECENT, vec![user.to_string()]), vec![json(&recent)]);
        }
        for ((kind, product, mark), (started, category, products)) in patterns {
            let key = vec![user.to_string(), kind.into(), product, mark.to_string()];
            let category = text(&category);
            let values = vec![Value::Int(started as i64), category, json(&products)];
            out.insert((PATTERNS, key), values);
        }
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

fn text(v: &Option<String>) -> Value {
    v.clone().map_or(Value::Null, Value::Text)
}

fn json(products: &[String]) -> Value {
    Value::Text(serde_json::to_string(products).unwrap())
}

/// The 50 most recent distinct products of the day's events, newest first (each at its
/// latest (timestamp, event id)).
fn recent(day: &[&Event]) -> Vec<String> {
    let mut newest: BTreeMap<&str, (u64, u128)> = BTreeMap::new();
    for e in day {
        if let Some(p) = e.product() {
            let at = newest.entry(p).or_insert(e.order());
            *at = (*at).max(e.order());
        }
    }
    let mut order: Vec<((u64, u128), &str)> = newest.into_iter().map(|(p, o)| (o, p)).collect();
    order.sort_by(|a, b| b.cmp(a));
    order
        .into_iter()
        .take(RECENT)
        .map(|(_, p)| p.to_string())
        .collect()
}

/// A pattern's key (name, product, mark) and its fields (started, category, products).
type Patterns = BTreeMap<(&'static str, String, u64), (u64, Option<String>, Vec<String>)>;

/// The patterns of a shopper from its events of the day (in time order), as the README
/// defines them.
fn patterns(day: &[&Event], catalog: &[(String, String)], at: Tick) -> Patterns {
    let mut out = Patterns::new();
    // a cart whose 10-minute mark has passed, not bought or removed at or after its time
    for cart in day.iter().filter(|e| e.action == "add_to_cart") {
        let mark = expiry(cart.ts, 10 * MINUTE);
        let product = cart.product().unwrap();
        let cleared = day.iter().any(|e| {
            matches!(e.action, "purchase" | "remove_from_cart")
                && e.product() == Some(product)
                && e.ts >= cart.ts
        });
        if mark <= at && !cleared {
            let key = ("cart_abandonment_risk", product.to_string(), mark);
            out.entry(key)
                .or_insert((cart.ts, None, vec![product.to_string()]));
        }
    }
    // ≥ 3 consecutive views of the last 30 minutes in one category, ≥ 2 of their
    // products carted in the last 30 minutes
    let recent = |e: &&&Event| live(e.ts, 30 * MINUTE, at);
    let carted: BTreeSet<&str> = day
        .iter()
        .filter(recent)
        .filter(|e| e.action == "add_to_cart")
        .filter_map(|e| e.product())
        .collect();
    let category = |p: &str| category_of(catalog, p).map(str::to_string);
    let views: Vec<(&Event, Option<String>)> = day
        .iter()
        .filter(recent)
        .filter(|e| e.action == "view")
        .map(|e| (*e, category(e.product().unwrap())))
        .collect();
    let mut i = 0;
    while i < views.len() {
        let mut j = i + 1;
        while views[i].1.is_some() && j < views.len() && views[j].1 == views[i].1 {
            j += 1;
        }
        let run = &views[i..j];
        let products: BTreeSet<&str> = run
            .iter()
            .filter_map(|(e, _)| e.product())
            .filter(|p| carted.contains(p))
            .collect();
        if run.len() >= 3 && run[0].1.is_some() && products.len() >= 2 {
            let first = run[0].0;
            let key = (
                "comparing_products",
                first.product().unwrap().to_string(),
                first.ts,
            );
            let products = products.into_iter().map(str::to_string).collect();
            out.entry(key)
                .or_insert((first.ts, run[0].1.clone(), products));
        }
        i = j;
    }
    out
}

/// The pattern names shown, each once, cart abandonment first; null when none.
fn pattern_detected(patterns: &Patterns) -> Value {
    let kinds: BTreeSet<&str> = patterns.keys().map(|(k, _, _)| *k).collect();
    if kinds.is_empty() {
        return Value::Null;
    }
    Value::Text(kinds.into_iter().collect::<Vec<_>>().join(","))
}

/// A product's category: of the catalog's rows for it with a category (an empty one is
/// none), the smallest.
fn category_of<'c>(catalog: &'c [(String, String)], product: &str) -> Option<&'c str> {
    catalog
        .iter()
        .filter(|(p, c)| p == product && !c.is_empty())
        .map(|(_, c)| c.as_str())
        .min()
}
