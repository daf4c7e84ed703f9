//! The reading views recomputed from generated JSON lines with the model the property
//! tests use (`dataflows/tests/common/reading_model.rs`), as Redis-style hashes.

#[path = "../../dataflows/tests/common/reading_model.rs"]
pub mod model;

use std::collections::{BTreeMap, BTreeSet};

use model::{Act, Read, Rejected, DUPLICATE, MALFORMED, NULL, OUT_OF_RANGE};
use serde_json::Value as Json;
use tidemark_dataflows::Dataflow;

use super::search::Hashes;

/// What a generated line is to the model: a valid event, or a rejection of some kind with
/// the `ts` it carries (none when it has no readable one).
fn classify(line: &str) -> Result<Read, (usize, Option<u64>)> {
    let Ok(Json::Object(o)) = serde_json::from_str::<Json>(line) else {
        return Err((MALFORMED, None));
    };
    let ts = o.get("ts").and_then(Json::as_u64);
    let text = |k: &str| match o.get(k) {
        None | Some(Json::Null) => Err((NULL, ts)),
        Some(Json::String(s)) if s.is_empty() => Err((NULL, ts)),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => Err((MALFORMED, ts)),
    };
    let ts_value = ts.ok_or((
        if o.get("ts").is_none_or(Json::is_null) {
            NULL
        } else {
            MALFORMED
        },
        None,
    ))?;
    let act = match text("event_type")?.as_str() {
        "enter" => Act::Enter,
        "complete" => Act::Complete,
        "exit" => Act::Exit,
        "scroll" => match o.get("scroll_pct") {
            None | Some(Json::Null) => return Err((NULL, ts)),
            Some(Json::Number(n)) => {
                let p = n.as_f64().unwrap();
                if !(0.0..=100.0).contains(&p) {
                    return Err((OUT_OF_RANGE, ts));
                }
                Act::Scroll((p * 1000.0).round() as u32)
            }
            Some(_) => return Err((MALFORMED, ts)),
        },
        _ => return Err((MALFORMED, ts)),
    };
    let tz = match o.get("tz") {
        Some(Json::String(z)) => {
            if z.parse::<chrono_tz::Tz>().is_err() {
                return Err((OUT_OF_RANGE, ts));
            }
            Some(z.clone())
        }
        _ => None,
    };
    let arm = match (o.get("experiment_name"), o.get("experiment_group")) {
        (None, None) => None,
        _ => Some((text("experiment_name")?, text("experiment_group")?)),
    };
    text("event_id")?;
    text("device")?;
    text("platform")?;
    Ok(Read {
        session: text("session_id")?,
        user: text("user_id")?,
        episode: text("episode_id")?,
        country: text("country")?,
        tz,
        arm,
        act,
        ts: ts_value,
    })
}

/// The model's input from generated lines read in order: first copies of valid events,
/// rejections (duplicates, invalid records), and the malformed records without a `ts`.
pub fn model_input(text: &str) -> (Vec<(Read, u64)>, Vec<Rejected>, usize) {
    let (mut events, mut rejected, mut untimed) = (Vec::new(), Vec::new(), 0);
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let id = serde_json::from_str::<Json>(line)
            .ok()
            .and_then(|v| v.get("event_id").and_then(|i| i.as_str().map(String::from)));
        match classify(line) {
            Ok(read) => {
                if seen.insert(id.unwrap()) {
                    events.push((read, 0));
                } else {
                    rejected.push(Rejected {
                        kind: DUPLICATE,
                        ts: read.ts,
                        tick: 0,
                    });
                }
            }
            Err((kind, Some(ts))) => rejected.push(Rejected { kind, ts, tick: 0 }),
            Err((_, None)) => untimed += 1,
        }
    }
    (events, rejected, untimed)
}

/// The model's views at `at` as Redis-style hashes `feat:{ns}:{key}` → field → value.
pub fn recount(text: &str, metadata: &[Vec<String>], at: u64) -> Hashes {
    let (events, rejected, _) = model_input(text);
    let tables = tidemark_dataflows::families::reading::Reading::new(Default::default()).tables();
    super::labelled(&tables, model::recount(&events, &rejected, metadata, at))
}

/// Every reading view in Postgres, as hashes.
pub fn postgres_hashes(url: &str) -> Hashes {
    let tables = tidemark_dataflows::families::reading::Reading::new(Default::default()).tables();
    let mut all = BTreeMap::new();
    for t in &tables {
        all.extend(super::pg_features(url, t.ns, &t.keys));
    }
    all
}

fn close(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs())),
        _ => a == b,
    }
}

/// The store holds exactly the expected entities (those `keep` selects), each with the
/// expected values.
pub fn assert_views(store: &str, got: &Hashes, want: &Hashes, keep: impl Fn(&str) -> bool) {
    let g: BTreeSet<&String> = got.keys().filter(|k| keep(k)).collect();
    let w: BTreeSet<&String> = want.keys().filter(|k| keep(k)).collect();
    assert_eq!(
        g,
        w,
        "{store}: missing {:?}, extra {:?}",
        w.difference(&g).take(5).collect::<Vec<_>>(),
        g.difference(&w).take(5).collect::<Vec<_>>()
    );
    for k in w {
        for (f, v) in &want[k] {
            let stored = got[k]
                .get(f)
                .unwrap_or_else(|| panic!("{store}: {k} lacks {f}"));
            assert!(
                close(stored, v),
                "{store}: {k}.{f} = {stored}, the model says {v}"
            );
        }
    }
}
