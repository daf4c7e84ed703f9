//! The search family's features recounted from the JSON lines `generate` writes: the
//! independent oracle the end-to-end tests compare the stores with.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;

use super::pg_features;

#[path = "../../dataflows/tests/common/search_model.rs"]
pub mod model;

#[allow(unused_imports)]
pub use model::{expiry, norm, qhash, DAY};

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

/// The windowed features at tick `at`, as the hashes the stores should hold (decay fields
/// aside): the family's model (`dataflows/tests/common/search_model.rs`) on the events.
pub fn recount(events: &[serde_json::Map<String, Value>], at: u64) -> Hashes {
    let events: Vec<model::Event> = events.iter().filter_map(model::Event::from_json).collect();
    let events: Vec<&model::Event> = events.iter().collect();
    use tidemark_dataflows::Dataflow;
    let tables = tidemark_dataflows::families::search::Search::new(Default::default()).tables();
    super::labelled(&tables, model::features(&events, at))
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
