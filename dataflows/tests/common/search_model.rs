//! The search family recounted naively from its definition (DESIGN §5.1): the one model
//! both the oracle property test (`search_oracle.rs`) and the end-to-end tests
//! (`tests/common/search.rs`) compare the dataflow with. It knows nothing of the
//! dataflow's code: queries are hashed and normalised here as the spec says.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use tidemark_dataflows::contract::table::Value;

pub const DAY: u64 = 86_400_000;
/// Smoothed CTR's prior: `(clicks + α) / (impressions + α + β)`.
const ALPHA: f64 = 1.0;
const BETA: f64 = 20.0;

/// What an event is, with what it names.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// The documents listed (an impression of each).
    Impression(Vec<String>),
    Click,
    Dwell(u64),
    AcImpression,
    AcSelect,
    AddToCart,
    Purchase,
}

/// An accepted event (the first copy of its id, valid, not too late).
#[derive(Clone, Debug)]
pub struct Event {
    pub ts: u64,
    pub kind: Kind,
    pub doc: String,
    pub query: String,
    pub prefix: String,
    pub session: String,
}

impl Event {
    /// An event as the wire format carries it (`None` for an event type it does not know).
    pub fn from_json(o: &serde_json::Map<String, serde_json::Value>) -> Option<Event> {
        let s = |k: &str| {
            o.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let kind = match o.get("event_type")?.as_str()? {
            "search_impression" => {
                let docs = o.get("doc_ids")?.as_array()?;
                Kind::Impression(
                    docs.iter()
                        .filter_map(|d| Some(d.as_str()?.to_string()))
                        .collect(),
                )
            }
            "click" => Kind::Click,
            "dwell" => Kind::Dwell(o.get("dwell_ms")?.as_u64()?),
            "ac_impression" => Kind::AcImpression,
            "ac_select" => Kind::AcSelect,
            "add_to_cart" => Kind::AddToCart,
            "purchase" => Kind::Purchase,
            _ => return None,
        };
        Some(Event {
            ts: o.get("ts")?.as_u64()?,
            kind,
            doc: s("doc_id"),
            query: s("query"),
            prefix: s("prefix"),
            session: s("session_id"),
        })
    }
}

/// The first tick an event is out of a window of `days` days (minute resolution).
pub fn expiry(ts: u64, days: u64) -> u64 {
    (ts + days * DAY).div_ceil(60_000) * 60_000
}

/// Lower-cased, inner whitespace collapsed, trimmed.
pub fn norm(q: &str) -> String {
    q.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first 16 hex digits of SHA-256 of the normalised query.
pub fn qhash(q: &str) -> String {
    Sha256::digest(norm(q).as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn smoothed(hits: i64, trials: i64) -> f64 {
    (hits as f64 + ALPHA) / (trials as f64 + ALPHA + BETA)
}

/// Each entity's windowed features at tick `at` — (view index, key) → values in the
/// view's field order (doc: impressions 7d/30d, clicks 7d/30d, ctr_doc, popularity
/// 7d/30d, dwell_sum_7d; qd: impressions_7d, clicks_7d, ctr_qd; ac: ac_impressions_7d,
/// ac_selects_7d, assist_rate, assist_click_rate) — of the events inserted by `at`.
/// Long: the definition restated in one place on purpose (DESIGN §5.1), to be checked against the spec line by line.
pub fn features(events: &[&Event], at: u64) -> BTreeMap<(u8, Vec<String>), Vec<Value>> {
    let live = |e: &Event, days: u64| e.ts <= at && at < expiry(e.ts, days);
    let mut out = BTreeMap::new();
    let shows =
        |e: &Event, d: &str| matches!(&e.kind, Kind::Impression(ds) if ds.iter().any(|x| x == d));
    let about = |e: &Event, d: &str| {
        e.doc == d
            && !matches!(
                e.kind,
                Kind::Impression(_) | Kind::AcImpression | Kind::AcSelect
            )
    };
    let weight = |e: &Event| match e.kind {
        Kind::Click => 1,
        Kind::Dwell(ms) if ms >= 30_000 => 2,
        Kind::AddToCart => 3,
        Kind::Purchase => 5,
        _ => 0,
    };
    let docs: BTreeSet<&str> = events
        .iter()
        .flat_map(|e| match &e.kind {
            Kind::Impression(ds) => ds.iter().map(String::as_str).collect(),
            Kind::AcImpression | Kind::AcSelect => Vec::new(),
            _ => vec![e.doc.as_str()],
        })
        .collect();
    for d in &docs {
        let count = |f: &dyn Fn(&Event) -> bool, days| {
            events.iter().filter(|e| f(e) && live(e, days)).count() as i64
        };
        let shown = |e: &Event| shows(e, d);
        let clicked = |e: &Event| about(e, d) && e.kind == Kind::Click;
        let (imp, clk) = (
            [count(&shown, 7), count(&shown, 30)],
            [count(&clicked, 7), count(&clicked, 30)],
        );
        let popularity = |days| {
            events
                .iter()
                .filter(|e| about(e, d) && live(e, days))
                .map(|e| weight(e))
                .sum::<i64>()
        };
        let dwell: i64 = events
            .iter()
            .filter(|e| about(e, d) && live(e, 7))
            .map(|e| {
                if let Kind::Dwell(ms) = e.kind {
                    ms as i64
                } else {
                    0
                }
            })
            .sum();
        let (p7, p30) = (popularity(7), popularity(30));
        if [imp[0], imp[1], clk[0], clk[1], p7, p30, dwell]
            .iter()
            .all(|x| *x == 0)
        {
            continue;
        }
        out.insert(
            (0, vec![d.to_string()]),
            vec![
                Value::Int(imp[0]),
                Value::Int(imp[1]),
                Value::Int(clk[0]),
                Value::Int(clk[1]),
                Value::float(smoothed(clk[0], imp[0])),
                Value::Int(p7),
                Value::Int(p30),
                Value::Int(dwell),
            ],
        );
    }
    let pairs: BTreeSet<(&str, &str)> = events
        .iter()
        .flat_map(|e| match &e.kind {
            Kind::Impression(ds) => ds.iter().map(|d| (e.query.as_str(), d.as_str())).collect(),
            Kind::Click => vec![(e.query.as_str(), e.doc.as_str())],
            _ => Vec::new(),
        })
        .collect();
    let by_hash: BTreeSet<(String, &str)> = pairs.iter().map(|(q, d)| (qhash(q), *d)).collect();
    for (h, d) in by_hash {
        let imp = events
            .iter()
            .filter(|e| qhash(&e.query) == h && live(e, 7) && shows(e, d))
            .count() as i64;
        let clk = events
            .iter()
            .filter(|e| qhash(&e.query) == h && e.doc == d && e.kind == Kind::Click && live(e, 7))
            .count() as i64;
        if imp + clk > 0 {
            out.insert(
                (1, vec![h, d.to_string()]),
                vec![
                    Value::Int(imp),
                    Value::Int(clk),
                    Value::float(smoothed(clk, imp)),
                ],
            );
        }
    }
    let prefixes: BTreeSet<String> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::AcImpression | Kind::AcSelect))
        .map(|e| norm(&e.prefix))
        .collect();
    for p in prefixes {
        let of = |e: &&&Event, k: Kind| norm(&e.prefix) == p && e.kind == k && live(e, 7);
        let imp = events.iter().filter(|e| of(e, Kind::AcImpression)).count() as i64;
        let selects: Vec<&&Event> = events.iter().filter(|e| of(e, Kind::AcSelect)).collect();
        // a select is assisted by a click of its session within 10 minutes after it
        let assisted = selects
            .iter()
            .filter(|s| {
                events.iter().any(|c| {
                    c.kind == Kind::Click
                        && c.session == s.session
                        && c.ts >= s.ts
                        && c.ts - s.ts <= 600_000
                        && live(c, 7)
                })
            })
            .count();
        let sel = selects.len() as i64;
        if imp + sel > 0 {
            let rate = if sel > 0 {
                assisted as f64 / sel as f64
            } else {
                0.0
            };
            out.insert(
                (2, vec![p]),
                vec![
                    Value::Int(imp),
                    Value::Int(sel),
                    Value::float(smoothed(sel, imp)),
                    Value::float(rate),
                ],
            );
        }
    }
    out
}

/// Each document's click-through rate with forward decay (half-life `half_life` ms) at
/// `at`, smoothed like the windowed one: what the read API computes from `ctr_decay`'s sums.
pub fn decayed_ctr(events: &[&Event], at: u64, half_life: u64) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.ts <= at) {
        let w = (-((at - e.ts) as f64) / half_life as f64).exp2();
        match &e.kind {
            Kind::Impression(ds) => {
                for d in ds.iter().collect::<BTreeSet<_>>() {
                    sums.entry(d.clone()).or_default().1 += w;
                }
            }
            Kind::Click => sums.entry(e.doc.clone()).or_default().0 += w,
            Kind::AcImpression | Kind::AcSelect => {}
            // a document with other events has a CTR too: the prior's
            _ => {
                sums.entry(e.doc.clone()).or_default();
            }
        }
    }
    sums.into_iter()
        .map(|(d, (c, i))| (d, (c + ALPHA) / (i + ALPHA + BETA)))
        .collect()
}
