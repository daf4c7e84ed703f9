//! The search family recounted naively from its definition (DESIGN §5.1): the one model
//! both the oracle property test (`search_oracle.rs`) and the end-to-end tests
//! (`tests/common/search.rs`) compare the dataflow with. It knows nothing of the
//! dataflow's code: queries are hashed and normalised here as the spec says.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
/// ac_selects_7d, assist_rate, assist_click_rate) — of the events inserted by `at`. One
/// pass over the events (the end-to-end tests recount hundreds of thousands).
/// Long: the definition restated in one place on purpose (DESIGN §5.1), to be checked against the spec line by line.
pub fn features(events: &[&Event], at: u64) -> BTreeMap<(u8, Vec<String>), Vec<Value>> {
    #[derive(Default)]
    struct Doc {
        imp: [i64; 2],
        clk: [i64; 2],
        pop: [i64; 2],
        dwell: i64,
    }
    let live = |ts: u64, days: u64| ts <= at && at < expiry(ts, days);
    // in the 7-day and 30-day windows at `at`, each counted where the event is live
    let bump = |counts: &mut [i64; 2], ts: u64, by: i64| {
        for (i, days) in [7, 30].into_iter().enumerate() {
            if live(ts, days) {
                counts[i] += by;
            }
        }
    };
    // the live clicks of each session, for the assist join
    let mut clicks: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.kind == Kind::Click && live(e.ts, 7))
    {
        clicks.entry(e.session.as_str()).or_default().push(e.ts);
    }
    let mut docs: BTreeMap<&str, Doc> = BTreeMap::new();
    let mut qd: BTreeMap<(String, &str), [i64; 2]> = BTreeMap::new();
    let mut ac: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for e in events {
        let weight = match e.kind {
            Kind::Click => 1,
            Kind::Dwell(ms) if ms >= 30_000 => 2,
            Kind::AddToCart => 3,
            Kind::Purchase => 5,
            _ => 0,
        };
        match &e.kind {
            Kind::Impression(ds) => {
                let q = qhash(&e.query);
                // an impression lists a document once, however often it names it
                for d in ds.iter().map(String::as_str).collect::<BTreeSet<_>>() {
                    bump(&mut docs.entry(d).or_default().imp, e.ts, 1);
                    if live(e.ts, 7) {
                        qd.entry((q.clone(), d)).or_default()[0] += 1;
                    }
                }
            }
            Kind::AcImpression | Kind::AcSelect => {
                let counts = ac.entry(norm(&e.prefix)).or_default();
                if !live(e.ts, 7) {
                    continue;
                }
                if e.kind == Kind::AcImpression {
                    counts[0] += 1;
                    continue;
                }
                // assisted: a click of the session within 10 minutes after the select
                let assisted = clicks
                    .get(e.session.as_str())
                    .is_some_and(|ts| ts.iter().any(|c| *c >= e.ts && c - e.ts <= 600_000));
                counts[1] += 1;
                counts[2] += i64::from(assisted);
            }
            kind => {
                let doc = docs.entry(e.doc.as_str()).or_default();
                bump(&mut doc.pop, e.ts, weight);
                match kind {
                    Kind::Click => {
                        bump(&mut doc.clk, e.ts, 1);
                        if live(e.ts, 7) {
                            qd.entry((qhash(&e.query), e.doc.as_str())).or_default()[1] += 1;
                        }
                    }
                    Kind::Dwell(ms) if live(e.ts, 7) => doc.dwell += *ms as i64,
                    _ => {}
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (d, x) in docs {
        let counts = [
            x.imp[0], x.imp[1], x.clk[0], x.clk[1], x.pop[0], x.pop[1], x.dwell,
        ];
        if counts.iter().all(|n| *n == 0) {
            continue;
        }
        out.insert(
            (0, vec![d.to_string()]),
            vec![
                Value::Int(x.imp[0]),
                Value::Int(x.imp[1]),
                Value::Int(x.clk[0]),
                Value::Int(x.clk[1]),
                Value::float(smoothed(x.clk[0], x.imp[0])),
                Value::Int(x.pop[0]),
                Value::Int(x.pop[1]),
                Value::Int(x.dwell),
            ],
        );
    }
    for ((h, d), [imp, clk]) in qd {
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
    for (p, [imp, sel, assisted]) in ac {
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
