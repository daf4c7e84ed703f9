//! A naive model of the watch family's tables (DESIGN §5.5, the README's watch section) at
//! a tick, from the events inserted by then: the oracle of the property tests. Every
//! feature is recounted from its definition by scanning all events.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;

use tidemark_dataflows::contract::table::Value;
pub use tidemark_dataflows::contract::time::{DAY, HOUR, MINUTE, SECOND};
use tidemark_dataflows::Tick;

/// Rows by (table, key).
pub type State = BTreeMap<(u8, Vec<String>), Vec<Value>>;

// table indices
pub const ITEM: u8 = 0;
pub const USER_HISTORY: u8 = 1;
pub const VIEWER: u8 = 2;
pub const CO_VISIT: u8 = 3;
pub const CO_VISITATION: u8 = 4;
pub const IMPRESSIONS: u8 = 5;
pub const WATCHES: u8 = 6;

/// The settings the model follows (the config's defaults unless a test sets them).
#[derive(Clone, Debug)]
pub struct Settings {
    pub history_size: usize,
    pub neighbours: usize,
    pub window: u64,
    pub alpha: f64,
    pub beta: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history_size: 20,
            neighbours: 20,
            window: 30 * DAY,
            alpha: 1.0,
            beta: 20.0,
        }
    }
}

/// An accepted event as the model reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: String,
    /// Its identity as the engine hashes it (ties of one millisecond are ordered by it).
    pub id: u128,
    pub ts: u64,
    pub user: String,
    pub kind: Kind,
    /// The source offset of the copy that was taken.
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// `(item_id, position)` of each shown item; request_id and surface.
    Impression(Vec<(String, u32)>, Option<String>, Option<String>),
    /// item, percent watched, seconds watched.
    Watch(String, f64, f64),
}

pub fn expiry(ts: u64, length: u64) -> Tick {
    let resolution = if length >= DAY { MINUTE } else { SECOND };
    (ts + length).div_ceil(resolution) * resolution
}

fn live(ts: u64, length: u64, at: Tick) -> bool {
    expiry(ts, length) > at
}

/// Seed 004's signal and weight.
pub fn signal(percent: f64, seconds: f64) -> (&'static str, i64) {
    if percent >= 80.0 || seconds >= 120.0 {
        ("strong", 10)
    } else if percent >= 40.0 || seconds >= 30.0 {
        ("medium", 3)
    } else {
        ("view", 1)
    }
}

fn smoothed(hits: i64, trials: i64, s: &Settings) -> f64 {
    (hits as f64 + s.alpha) / (trials as f64 + s.alpha + s.beta)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// Every table's rows at tick `at`, given the events inserted by then.
pub fn features(events: &[&Event], at: Tick, s: &Settings) -> State {
    let mut state = State::new();
    items(events, at, s, &mut state);
    viewers(events, at, s, &mut state);
    raw(events, &mut state);
    state
}

fn items(events: &[&Event], at: Tick, s: &Settings, state: &mut State) {
    // per item, per span (7 d, 30 d): popularity, watches, impressions, strong watches
    let mut sums: BTreeMap<&str, [[i64; 2]; 4]> = BTreeMap::new();
    for e in events {
        for (k, length) in [7 * DAY, 30 * DAY].into_iter().enumerate() {
            if !live(e.ts, length, at) {
                continue;
            }
            match &e.kind {
                Kind::Impression(shown, _, _) => {
                    let mut distinct: Vec<&str> = shown.iter().map(|(i, _)| i.as_str()).collect();
                    distinct.sort();
                    distinct.dedup();
                    for item in distinct {
                        sums.entry(item).or_default()[2][k] += 1;
                    }
                }
                Kind::Watch(item, percent, seconds) => {
                    let (signal, weight) = signal(*percent, *seconds);
                    let x = sums.entry(item).or_default();
                    x[0][k] += weight;
                    x[1][k] += 1;
                    x[3][k] += i64::from(signal == "strong");
                }
            }
        }
    }
    for (item, x) in sums {
        if x.iter().flatten().all(|n| *n == 0) {
            continue;
        }
        let mut values: Vec<Value> = x.iter().flatten().map(|n| Value::Int(*n)).collect();
        let [_, watches, impressions, strong] = x;
        for (w, i) in watches.iter().zip(impressions) {
            values.push(Value::float(smoothed(*w, i, s)));
        }
        for (st, w) in strong.iter().zip(watches) {
            let share = if w > 0 { *st as f64 / w as f64 } else { 0.0 };
            values.push(Value::float(share));
        }
        state.insert((ITEM, vec![item.to_string()]), values);
    }
}

fn viewers(events: &[&Event], at: Tick, s: &Settings, state: &mut State) {
    let mut by_user: BTreeMap<&str, Vec<(u64, u128, &str, i64)>> = BTreeMap::new();
    for e in events {
        if let Kind::Watch(item, percent, seconds) = &e.kind {
            if live(e.ts, s.window, at) {
                let weight = signal(*percent, *seconds).1;
                by_user
                    .entry(&e.user)
                    .or_default()
                    .push((e.ts, e.id, item, weight));
            }
        }
    }
    let mut scores: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (user, mut watches) in by_user {
        watches.sort();
        for (i, (ts, id, item, weight)) in watches.iter().enumerate() {
            // the distinct items most recently watched before it, newest first (strictly
            // before: a copy counted twice sees the same history as its first)
            let mut history: Vec<&str> = Vec::new();
            let before = watches[..i]
                .iter()
                .rev()
                .filter(|w| (w.0, w.1) != (*ts, *id));
            for (_, _, earlier, _) in before {
                if !history.contains(earlier) {
                    history.push(earlier);
                }
            }
            history.truncate(s.history_size);
            for earlier in history.into_iter().filter(|e| e != item) {
                let pair = if *item < earlier {
                    (item.to_string(), earlier.to_string())
                } else {
                    (earlier.to_string(), item.to_string())
                };
                *scores.entry(pair).or_default() += weight;
            }
        }
        let mut history: Vec<&str> = Vec::new();
        for (_, _, item, _) in watches.iter().rev() {
            if !history.contains(item) {
                history.push(item);
            }
        }
        history.truncate(s.history_size);
        let key = vec![user.to_string()];
        state.insert(
            (USER_HISTORY, key.clone()),
            vec![text(&serde_json::to_string(&history).unwrap())],
        );
        let last = watches.last().expect("a watch").0;
        state.insert(
            (VIEWER, key),
            vec![Value::Int(history.len() as i64), Value::Int(last as i64)],
        );
    }
    let mut neighbours: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for ((a, b), score) in &scores {
        state.insert(
            (CO_VISITATION, vec![a.clone(), b.clone()]),
            vec![Value::Int(*score)],
        );
        neighbours.entry(a).or_default().push((*score, b));
        neighbours.entry(b).or_default().push((*score, a));
    }
    for (item, mut list) in neighbours {
        list.sort_by(|(x, a), (y, b)| y.cmp(x).then(a.cmp(b)));
        list.truncate(s.neighbours);
        let list: Vec<String> = list.iter().map(|(n, i)| format!("{i}:{n}")).collect();
        state.insert(
            (CO_VISIT, vec![item.to_string()]),
            vec![text(&serde_json::to_string(&list).unwrap())],
        );
    }
}

fn raw(events: &[&Event], state: &mut State) {
    let opt = |v: &Option<String>| v.as_deref().map_or(Value::Null, text);
    for e in events {
        let source = [Value::Int(0), Value::Int(0), Value::Int(e.offset)];
        match &e.kind {
            Kind::Impression(shown, request, surface) => {
                for (item, position) in shown {
                    let mut values = vec![
                        text(&e.user),
                        text(item),
                        Value::Int(e.ts as i64),
                        opt(request),
                        opt(surface),
                    ];
                    values.extend(source.clone());
                    state.insert(
                        (IMPRESSIONS, vec![e.event_id.clone(), position.to_string()]),
                        values,
                    );
                }
            }
            Kind::Watch(item, percent, seconds) => {
                let (signal, weight) = signal(*percent, *seconds);
                let mut values = vec![
                    text(&e.user),
                    text(item),
                    Value::Int(e.ts as i64),
                    Value::float(*percent),
                    Value::float(*seconds),
                    text(signal),
                    Value::Int(weight),
                ];
                values.extend(source.clone());
                state.insert((WATCHES, vec![e.event_id.clone()]), values);
            }
        }
    }
}
