//! The search family's features recounted from the JSON lines `generate` writes: the
//! independent oracle the end-to-end tests compare the stores with.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pg_features;

pub const DAY: u64 = 86_400_000;

pub fn expiry(ts: u64, days: u64) -> u64 {
    (ts + days * DAY).div_ceil(60_000) * 60_000
}

pub fn norm(q: &str) -> String {
    q.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn qhash(q: &str) -> String {
    Sha256::digest(norm(q).as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A line as the search family's decoder must accept it, else `None`.
pub fn valid_event(line: &str) -> Option<serde_json::Map<String, Value>> {
    let known = [
        "search_impression",
        "click",
        "dwell",
        "ac_impression",
        "ac_select",
        "add_to_cart",
        "purchase",
    ];
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let ok = o.get("ts").is_some_and(|t| t.is_u64())
        && o.get("session_id").is_some_and(|s| s.is_string())
        && o.get("event_type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| known.contains(&t))
        && (o["event_type"] != "dwell" || o.get("dwell_ms").is_some_and(|d| d.is_u64()));
    ok.then_some(o)
}

/// The valid, first-seen events of a JSON-lines file, as JSON objects.
pub fn valid_events(lines: &str) -> Vec<serde_json::Map<String, Value>> {
    let mut seen = HashSet::new();
    lines
        .lines()
        .filter_map(valid_event)
        .filter(|o| seen.insert(o["event_id"].as_str().unwrap().to_string()))
        .collect()
}

pub type Hashes = BTreeMap<String, BTreeMap<String, String>>;

/// The windowed features at tick `at`, as the hashes the stores should hold (decay fields aside).
pub fn recount(events: &[serde_json::Map<String, Value>], at: u64) -> Hashes {
    #[derive(Default)]
    struct Doc {
        imp: [i64; 2],
        clk: [i64; 2],
        pop: [i64; 2],
        dwell: i64,
    }
    let mut docs: BTreeMap<String, Doc> = BTreeMap::new();
    let mut qd: BTreeMap<(String, String), [i64; 2]> = BTreeMap::new();
    let mut ac: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    let s = |e: &serde_json::Map<String, Value>, k: &str| e[k].as_str().unwrap().to_string();
    let live = |ts: u64, days: u64| at < expiry(ts, days);
    for e in events {
        let ts = e["ts"].as_u64().unwrap();
        let windows = [live(ts, 7), live(ts, 30)];
        let bump = |arr: &mut [i64; 2], w: i64| {
            for (i, l) in windows.iter().enumerate() {
                if *l {
                    arr[i] += w;
                }
            }
        };
        match e["event_type"].as_str().unwrap() {
            "search_impression" => {
                let ids: BTreeSet<String> = e["doc_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_string())
                    .collect();
                for d in ids {
                    if windows[1] {
                        bump(&mut docs.entry(d.clone()).or_default().imp, 1);
                    }
                    if windows[0] {
                        qd.entry((qhash(&s(e, "query")), d)).or_default()[0] += 1;
                    }
                }
            }
            "click" => {
                let d = s(e, "doc_id");
                if windows[1] {
                    let doc = docs.entry(d.clone()).or_default();
                    bump(&mut doc.clk, 1);
                    bump(&mut doc.pop, 1);
                }
                if windows[0] {
                    qd.entry((qhash(&s(e, "query")), d)).or_default()[1] += 1;
                }
            }
            "dwell" => {
                let ms = e["dwell_ms"].as_u64().unwrap() as i64;
                if windows[1] {
                    let doc = docs.entry(s(e, "doc_id")).or_default();
                    if windows[0] {
                        doc.dwell += ms;
                    }
                    if ms >= 30_000 {
                        bump(&mut doc.pop, 2);
                    }
                }
            }
            t @ ("add_to_cart" | "purchase") if windows[1] => {
                bump(
                    &mut docs.entry(s(e, "doc_id")).or_default().pop,
                    if t == "purchase" { 5 } else { 3 },
                );
            }
            "ac_impression" if windows[0] => ac.entry(norm(&s(e, "prefix"))).or_default()[0] += 1,
            "ac_select" if windows[0] => {
                let session = s(e, "session_id");
                let assisted = events.iter().any(|c| {
                    let cts = c["ts"].as_u64().unwrap();
                    c["event_type"] == "click"
                        && c["session_id"] == session.as_str()
                        && cts >= ts
                        && cts - ts <= 600_000
                });
                let a = ac.entry(norm(&s(e, "prefix"))).or_default();
                a[1] += 1;
                a[2] += assisted as i64;
            }
            _ => {}
        }
    }
    let ctr = |c: i64, i: i64| ((c as f64 + 1.0) / (i as f64 + 21.0)).to_string();
    let mut out = Hashes::new();
    for (d, x) in docs {
        if [x.imp, x.clk, x.pop].iter().flatten().all(|n| *n == 0) && x.dwell == 0 {
            continue;
        }
        let h = [
            ("impressions_7d", x.imp[0].to_string()),
            ("impressions_30d", x.imp[1].to_string()),
            ("clicks_7d", x.clk[0].to_string()),
            ("clicks_30d", x.clk[1].to_string()),
            ("ctr_doc", ctr(x.clk[0], x.imp[0])),
            ("popularity_7d", x.pop[0].to_string()),
            ("popularity_30d", x.pop[1].to_string()),
            ("dwell_sum_7d", x.dwell.to_string()),
        ];
        out.insert(
            format!("feat:doc:{d}"),
            h.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        );
    }
    for ((q, d), [i, c]) in qd {
        let h = [
            ("impressions_7d", i.to_string()),
            ("clicks_7d", c.to_string()),
            ("ctr_qd", ctr(c, i)),
        ];
        out.insert(
            format!("feat:qd:{q}:{d}"),
            h.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        );
    }
    for (p, [i, sel, assisted]) in ac {
        let rate = if sel > 0 {
            assisted as f64 / sel as f64
        } else {
            0.0
        };
        let h = [
            ("ac_impressions_7d", i.to_string()),
            ("ac_selects_7d", sel.to_string()),
            ("assist_rate", ctr(sel, i)),
            ("assist_click_rate", rate.to_string()),
        ];
        out.insert(
            format!("feat:ac:{p}"),
            h.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        );
    }
    out
}

/// Numbers compare as numbers (Postgres prints `1.0` where Redis holds `1`).
pub fn same(a: &str, b: &str) -> bool {
    a == b || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
}

/// Every expected field equals the stored one, and the stores hold exactly the expected entities.
pub fn assert_matches(store: &str, got: &Hashes, want: &Hashes) {
    let (g, w): (BTreeSet<_>, BTreeSet<_>) = (got.keys().collect(), want.keys().collect());
    assert_eq!(
        g.len(),
        w.len(),
        "{store}: entity counts; missing {:?}, extra {:?}",
        w.difference(&g).take(5).collect::<Vec<_>>(),
        g.difference(&w).take(5).collect::<Vec<_>>()
    );
    assert_eq!(g, w, "{store}: entities");
    for (k, fields) in want {
        for (f, v) in fields {
            let stored = got[k]
                .get(f)
                .unwrap_or_else(|| panic!("{store}: {k} lacks {f}"));
            assert!(
                same(stored, v),
                "{store}: {k}.{f} = {stored}, recount says {v}"
            );
        }
    }
}

pub fn postgres_hashes(url: &str) -> Hashes {
    let mut all = pg_features(url, "doc", &["doc_id"]);
    all.extend(pg_features(url, "qd", &["query_hash", "doc_id"]));
    all.extend(pg_features(url, "ac", &["prefix"]));
    all
}

/// Drops the bookkeeping fields and keeps what must agree between runs.
pub fn comparable(h: &Hashes, with_decay: bool) -> Hashes {
    h.iter()
        .map(|(k, f)| {
            let kept = f
                .iter()
                .filter(|(n, _)| !n.starts_with('_') && (with_decay || !n.starts_with("decay_")))
                .map(|(n, v)| {
                    (
                        n.clone(),
                        v.parse::<f64>().map(|x| x.to_string()).unwrap_or(v.clone()),
                    )
                })
                .collect();
            (k.clone(), kept)
        })
        .collect()
}
