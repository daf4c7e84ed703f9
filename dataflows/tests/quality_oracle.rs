//! The oracle of data quality (issue #22): every check's hourly report, as the dataflow
//! writes it, against a naive evaluation of the same records and feature changes, on
//! random streams with duplicates, disorder, invalid records and missing fields, on 1 and
//! 2 workers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::contract::quality::{CheckName, ExpectSpec};
use tidemark_dataflows::contract::record::ErrorKind;
use tidemark_dataflows::contract::table::{TickChanges, Value};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::quality::Checked;
use tidemark_dataflows::Family;

use common::run_family;

const HOUR: u64 = 3_600_000;
const BASE: u64 = 1_767_225_600_000; // 2026-01-01
const NOW: u64 = BASE + 10 * 24 * HOUR;
const DOCS: [&str; 4] = ["doc-1", "doc-2", "doc-33", "DOC-4"];

/// One record a worker reads.
#[derive(Clone, Debug)]
enum Rec {
    Click {
        id: u32,
        ts: u64,
        doc: usize,
    },
    Dwell {
        id: u32,
        ts: u64,
        doc: usize,
        ms: u64,
    },
    /// A click without its `doc_id`: invalid (missing field), at its own time.
    NoDoc {
        id: u32,
        ts: u64,
    },
    /// Not JSON: invalid, at its append time (0).
    Junk,
}

impl Rec {
    fn payload(&self) -> Vec<u8> {
        let base = |id: &u32, ts: &u64, t: &str| {
            json!({"event_id": format!("e{id}"), "ts": ts, "user_id": "u", "session_id": "s",
                   "query": "q", "event_type": t})
        };
        let v = match self {
            Rec::Click { id, ts, doc } => {
                let mut v = base(id, ts, "click");
                v["doc_id"] = json!(DOCS[*doc]);
                v
            }
            Rec::Dwell { id, ts, doc, ms } => {
                let mut v = base(id, ts, "dwell");
                v["doc_id"] = json!(DOCS[*doc]);
                v["dwell_ms"] = json!(ms);
                v
            }
            Rec::NoDoc { id, ts } => base(id, ts, "click"),
            Rec::Junk => return b"{\"event_id\": \"junk\"".to_vec(),
        };
        serde_json::to_vec(&v).unwrap()
    }
    fn valid(&self) -> bool {
        matches!(self, Rec::Click { .. } | Rec::Dwell { .. })
    }
    fn ts(&self) -> u64 {
        match self {
            Rec::Click { ts, .. } | Rec::Dwell { ts, .. } | Rec::NoDoc { ts, .. } => *ts,
            Rec::Junk => 0,
        }
    }
    /// When the broker appended it: a valid record 0–120 minutes after its event (by its
    /// id), the others at 0.
    fn append_ms(&self) -> u64 {
        match self {
            Rec::Click { id, ts, .. } | Rec::Dwell { id, ts, .. } => {
                ts + (*id as u64 % 7) * 20 * 60_000
            }
            _ => 0,
        }
    }
    fn id(&self) -> Option<u32> {
        match self {
            Rec::Click { id, .. } | Rec::Dwell { id, .. } => Some(*id),
            _ => None,
        }
    }
}

fn expectations() -> Vec<ExpectSpec> {
    let e = ExpectSpec::new;
    vec![
        e("valid", "events", CheckName::Valid).share(0.05),
        e("no doc", "events", CheckName::Valid)
            .reasons(&[ErrorKind::MissingField])
            .share(0.05),
        e("unique", "events", CheckName::Unique),
        e("in order", "event:search-events", CheckName::NotOutOfOrder).share(0.2),
        e("rows", "events", CheckName::RowsPerHour).bounds(Some(3.0), None),
        e("fresh", "events", CheckName::Freshness)
            .bounds(None, Some(3600.0))
            .share(0.3),
        e(
            "dwell set",
            "event:search-events.dwell_ms",
            CheckName::NotNull,
        )
        .share(0.5),
        e(
            "dwell short",
            "event:search-events.dwell_ms",
            CheckName::Between,
        )
        .bounds(Some(0.0), Some(5000.0)),
        e("type", "event:search-events.event_type", CheckName::InSet)
            .values(&["click"])
            .share(0.5),
        e("doc id", "event:search-events.doc_id", CheckName::Matches)
            .share(0.1)
            .pattern("^doc-[0-9]$"),
        e(
            "dwell mean",
            "event:search-events.dwell_ms",
            CheckName::MeanBetween,
        )
        .bounds(Some(1000.0), Some(4000.0)),
        e(
            "dwell spread",
            "event:search-events.dwell_ms",
            CheckName::StddevBetween,
        )
        .bounds(None, Some(2500.0)),
        e("ctr low", "feature:doc.ctr_doc", CheckName::Between).bounds(Some(0.0), Some(0.3)),
        e("doc changes", "feature:doc", CheckName::RowsPerHour).bounds(None, Some(6.0)),
    ]
}

trait Pattern {
    fn pattern(self, p: &str) -> Self;
}
impl Pattern for ExpectSpec {
    fn pattern(mut self, p: &str) -> Self {
        self.pattern = Some(p.to_string());
        self
    }
}

/// The naive tally of one expectation's hour.
#[derive(Clone, Debug, Default)]
struct Naive {
    total: u64,
    failures: u64,
    values: Vec<f64>,
    failing: BTreeSet<String>,
}

fn hour(ts: u64) -> u64 {
    ts - ts % HOUR
}

fn hour_text(h: u64) -> String {
    chrono::DateTime::from_timestamp_millis(h as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string()
}

/// Every expectation's hours, recounted from the records each worker read and the
/// feature changes the sinks were given.
fn recount(
    per_worker: &[Vec<Vec<Rec>>],
    changes: &[TickChanges],
    ctr: usize,
) -> BTreeMap<(String, u64), Naive> {
    let mut out: BTreeMap<(String, u64), Naive> = BTreeMap::new();
    fn at<'a>(out: &'a mut BTreeMap<(String, u64), Naive>, name: &str, h: u64) -> &'a mut Naive {
        out.entry((name.to_string(), h)).or_default()
    }
    let mut seen_ids: BTreeMap<u64, (u64, HashSet<u32>)> = BTreeMap::new();
    for batches in per_worker {
        let (mut offset, mut high) = (0i64, None::<u64>);
        for r in batches.iter().flatten() {
            offset += 1;
            let coordinate = format!("search-events/0/{offset}");
            let h = hour(r.ts());
            let n = at(&mut out, "valid", h);
            n.total += 1;
            if !r.valid() {
                n.failures += 1;
                n.failing.insert(coordinate.clone());
            }
            // only the records missing their doc_id (not the ones that are not JSON)
            let n = at(&mut out, "no doc", h);
            n.total += 1;
            if matches!(r, Rec::NoDoc { .. }) {
                n.failures += 1;
                n.failing.insert(coordinate.clone());
            }
            at(&mut out, "rows", h).total += 1;
            if let Some(id) = r.id() {
                let s = seen_ids.entry(h).or_default();
                s.0 += 1;
                s.1.insert(id);
                let n = at(&mut out, "in order", h);
                n.total += 1;
                if high.is_some_and(|m| r.ts() < m) {
                    n.failures += 1;
                    n.failing.insert(coordinate.clone());
                }
                high = Some(high.map_or(r.ts(), |m| m.max(r.ts())));
                // the stream's age at its arrival: append time − its partition's frontier
                let n = at(&mut out, "fresh", h);
                n.total += 1;
                if r.append_ms() as i64 - high.unwrap() as i64 > 3_600_000 {
                    n.failures += 1;
                    n.failing.insert(coordinate.clone());
                }
            }
            let doc: Option<serde_json::Value> = serde_json::from_slice(&r.payload()).ok();
            let field = |f: &str| {
                doc.as_ref()
                    .and_then(|d| d.get(f))
                    .filter(|v| !v.is_null())
                    .cloned()
            };
            let dwell = field("dwell_ms").and_then(|v| v.as_f64());
            let n = at(&mut out, "dwell set", h);
            n.total += 1;
            if dwell.is_none() {
                n.failures += 1;
                n.failing.insert(coordinate.clone());
            }
            if let Some(ms) = dwell {
                let n = at(&mut out, "dwell short", h);
                n.total += 1;
                if ms > 5000.0 {
                    n.failures += 1;
                    n.failing.insert(coordinate.clone());
                }
                at(&mut out, "dwell mean", h).values.push(ms);
                at(&mut out, "dwell spread", h).values.push(ms);
            }
            if let Some(t) = field("event_type") {
                let n = at(&mut out, "type", h);
                n.total += 1;
                if t != json!("click") {
                    n.failures += 1;
                    n.failing.insert(coordinate.clone());
                }
            }
            if let Some(d) = field("doc_id") {
                let n = at(&mut out, "doc id", h);
                n.total += 1;
                let d = d.as_str().unwrap();
                let ok = d.len() == 5 && d.starts_with("doc-") && d.as_bytes()[4].is_ascii_digit();
                if !ok {
                    n.failures += 1;
                    n.failing.insert(coordinate.clone());
                }
            }
        }
    }
    for (h, (n, ids)) in seen_ids {
        let u = at(&mut out, "unique", h);
        u.total += n;
        u.failures += n - ids.len() as u64;
    }
    for t in changes {
        for c in t.changes.iter().filter(|c| c.table == 0) {
            let Some(after) = &c.after else { continue };
            at(&mut out, "doc changes", hour(t.tick)).total += 1;
            if let Value::Float(x) = &after[ctr] {
                let n = at(&mut out, "ctr low", hour(t.tick));
                n.total += 1;
                if !(0.0..=0.3).contains(&x.0) {
                    n.failures += 1;
                    n.failing.insert(c.key.join("|"));
                }
            }
        }
    }
    out
}

/// What the report row of a naive tally says: observed, failures, total, passed, sample.
fn verdict(spec: &ExpectSpec, n: &Naive) -> (Option<f64>, i64, i64, bool, Vec<String>) {
    let within = |x: f64| spec.min.is_none_or(|m| x >= m) && spec.max.is_none_or(|m| x <= m);
    let values = &n.values;
    let mean = (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    let aggregate = match spec.check {
        CheckName::RowsPerHour => Some(Some(n.total as f64)),
        CheckName::MeanBetween => Some(mean),
        CheckName::StddevBetween => Some(mean.map(|m| {
            (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64).sqrt()
        })),
        _ => None,
    };
    let total = match spec.check {
        CheckName::MeanBetween | CheckName::StddevBetween => values.len() as u64,
        _ => n.total,
    };
    let sample: Vec<String> = n.failing.iter().take(5).cloned().collect();
    match aggregate {
        Some(observed) => {
            let passed = observed.is_none_or(within);
            (observed, i64::from(!passed), total as i64, passed, sample)
        }
        None => {
            let share = if total == 0 {
                0.0
            } else {
                n.failures as f64 / total as f64
            };
            (
                Some(share),
                n.failures as i64,
                total as i64,
                share <= spec.max_failure_share,
                sample,
            )
        }
    }
}

fn rec(i: u32) -> impl Strategy<Value = Rec> {
    let ts = 0u64..6 * HOUR;
    prop_oneof![
        6 => (ts.clone(), 0..DOCS.len()).prop_map(move |(t, doc)| Rec::Click { id: i, ts: BASE + t, doc }),
        4 => (ts.clone(), 0..DOCS.len(), 0u64..10_000).prop_map(move |(t, doc, ms)| Rec::Dwell { id: i, ts: BASE + t, doc, ms }),
        1 => ts.prop_map(move |t| Rec::NoDoc { id: i, ts: BASE + t }),
        1 => Just(Rec::Junk),
    ]
}

/// One worker's batches: records in random time order, some read twice (a copy later on).
fn stream(worker: u32) -> impl Strategy<Value = Vec<Vec<Rec>>> {
    (
        prop::collection::vec((0u32..1, prop::bool::weighted(0.2)), 1..60),
        prop::collection::vec(1usize..8, 60),
        any::<u64>(),
    )
        .prop_flat_map(move |(n, cuts, seed)| {
            let recs: Vec<_> = (0..n.len() as u32)
                .map(|i| rec(worker * 1000 + i))
                .collect();
            (recs, Just(n), Just(cuts), Just(seed))
        })
        .prop_map(|(recs, n, cuts, seed)| {
            let mut timeline: Vec<(u64, Rec)> = Vec::new();
            let mut draw = common::draws(seed);
            for (i, (r, (_, twice))) in recs.into_iter().zip(n).enumerate() {
                timeline.push((i as u64 * 10, r.clone()));
                if twice {
                    timeline.push((i as u64 * 10 + 1 + draw(200), r));
                }
            }
            common::in_batches(timeline, &cuts)
        })
}

fn options() -> IngestOptions {
    IngestOptions {
        // every copy is within the horizon, and no partition waits for another
        dedup_horizon_ms: 7 * 24 * HOUR,
        max_partition_skew_ms: None,
        ..IngestOptions::default()
    }
}

fn checked() -> Box<dyn Family> {
    let plain = tidemark_dataflows::family("search", None).unwrap();
    Box::new(Checked::new(plain, None, &expectations(), false).unwrap())
}

fn agrees(per_worker: Vec<Vec<Vec<Rec>>>) -> Result<(), TestCaseError> {
    let payloads = per_worker
        .iter()
        .map(|w| {
            w.iter()
                .map(|b| {
                    b.iter()
                        .map(|r| {
                            let framed = common::on_topic("search-events", &r.payload());
                            match r.append_ms() {
                                0 => framed,
                                at => common::appended(at, &framed),
                            }
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let (changes, counters) = run_family(Arc::new(checked), payloads, NOW, options(), None);
    let total: usize = per_worker.iter().flatten().map(|b| b.len()).sum();
    prop_assert_eq!(
        counters.consumed.load(std::sync::atomic::Ordering::Relaxed) as usize,
        total
    );
    let tables = checked().tables();
    let report = (tables.len() - 1) as u8;
    let ctr = tables[0]
        .fields
        .iter()
        .position(|f| f.name == "ctr_doc")
        .unwrap();
    // the report's table keeps a row once its hour leaves the dataflow (30 days on)
    let mut got: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for c in changes
        .iter()
        .flat_map(|t| &t.changes)
        .filter(|c| c.table == report)
    {
        if let Some(v) = &c.after {
            got.insert((c.key[0].clone(), c.key[1].clone()), v.clone());
        }
    }
    let specs: BTreeMap<String, ExpectSpec> = expectations()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    let want = recount(&per_worker, &changes, ctr);
    let mut wanted = 0;
    for ((name, h), n) in &want {
        let (observed, failures, total, passed, sample) = verdict(&specs[name], n);
        if total == 0 && failures == 0 {
            continue; // an hour with nothing observed has no row
        }
        wanted += 1;
        let key = (hour_text(*h), name.clone());
        let row = got.get(&key);
        prop_assert!(
            row.is_some(),
            "no row for {:?}; rows: {:?}",
            key,
            got.keys().collect::<Vec<_>>()
        );
        let row = row.unwrap();
        let observed_got = match &row[0] {
            Value::Float(f) => Some(f.0),
            _ => None,
        };
        let close = match (observed, observed_got) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            (a, b) => a == b,
        };
        prop_assert!(
            close,
            "{:?}: observed {:?}, want {:?}; row {:?}, want {} of {}",
            key,
            observed_got,
            observed,
            row,
            failures,
            total
        );
        prop_assert_eq!(&row[1], &Value::Int(failures), "{:?} failures", key);
        prop_assert_eq!(&row[2], &Value::Int(total), "{:?} total", key);
        prop_assert_eq!(&row[3], &Value::Int(i64::from(passed)), "{:?} passed", key);
        let sample_got: Vec<String> = match &row[4] {
            Value::Text(t) => serde_json::from_str(t).unwrap(),
            _ => vec![],
        };
        if name != "unique" {
            prop_assert_eq!(&sample_got, &sample, "{:?} sample", key);
        }
    }
    prop_assert_eq!(
        got.len(),
        wanted,
        "rows nobody expected: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_reports_what_a_recount_says(a in stream(0)) {
        agrees(vec![a])?;
    }

    #[test]
    fn two_workers_report_what_a_recount_says(a in stream(0), b in stream(1)) {
        agrees(vec![a, b])?;
    }
}
