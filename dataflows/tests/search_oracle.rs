//! The search features, as the dataflow writes them, against a naive recount from the
//! definitions of DESIGN §5.1 and the time rules of DESIGN §3, on random streams with
//! duplicates, reordering, late, too-late and invalid records; on 1 and 2 workers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::families::search::DecayedSums;
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::Tick;

use common::search_model as model;
use common::{run, state_at, State};

const DAY: u64 = 86_400_000;
const BASE: u64 = 1_767_225_600_000; // 2026-01-01
const HALF_LIFE: u64 = 7 * DAY;
const DOCS: [&str; 5] = ["d0", "d1", "d2", "d3", "d:4"];
const QUERIES: [&str; 3] = ["New  York", "pizza", "Straße Café"];
const PREFIXES: [&str; 3] = ["ne", "piz", "str"];
const SESSIONS: [&str; 3] = ["s0", "s1", "s2"];

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Impression(Vec<usize>),
    Click,
    Dwell(u64),
    AcImpression,
    AcSelect,
    AddToCart,
    Purchase,
}

/// A test event: what the recount reads, and the JSON the dataflow reads.
#[derive(Clone, Debug)]
struct Ev {
    id: String,
    kind: Kind,
    doc: usize,
    query: usize,
    prefix: usize,
    session: usize,
    ts: u64,
}

impl Ev {
    /// The event as the model reads it.
    fn model(&self) -> model::Event {
        let kind = match &self.kind {
            Kind::Impression(docs) => {
                model::Kind::Impression(docs.iter().map(|d| DOCS[*d].to_string()).collect())
            }
            Kind::Click => model::Kind::Click,
            Kind::Dwell(ms) => model::Kind::Dwell(*ms),
            Kind::AcImpression => model::Kind::AcImpression,
            Kind::AcSelect => model::Kind::AcSelect,
            Kind::AddToCart => model::Kind::AddToCart,
            Kind::Purchase => model::Kind::Purchase,
        };
        model::Event {
            ts: self.ts,
            kind,
            doc: DOCS[self.doc].to_string(),
            query: QUERIES[self.query].to_string(),
            prefix: PREFIXES[self.prefix].to_string(),
            session: SESSIONS[self.session].to_string(),
        }
    }

    fn payload_bytes(&self) -> Vec<u8> {
        let mut v = json!({"event_id": self.id, "ts": self.ts, "user_id": "u", "session_id": SESSIONS[self.session]});
        let o = v.as_object_mut().unwrap();
        let (t, extra) = match &self.kind {
            Kind::Impression(docs) => (
                "search_impression",
                json!({"query": QUERIES[self.query], "doc_ids": docs.iter().map(|d| DOCS[*d]).collect::<Vec<_>>()}),
            ),
            Kind::Click => (
                "click",
                json!({"query": QUERIES[self.query], "doc_id": DOCS[self.doc]}),
            ),
            Kind::Dwell(ms) => (
                "dwell",
                json!({"query": QUERIES[self.query], "doc_id": DOCS[self.doc], "dwell_ms": ms}),
            ),
            Kind::AcImpression => (
                "ac_impression",
                json!({"prefix": PREFIXES[self.prefix], "candidates": ["a", "b"]}),
            ),
            Kind::AcSelect => (
                "ac_select",
                json!({"prefix": PREFIXES[self.prefix], "candidate": "a"}),
            ),
            Kind::AddToCart => ("add_to_cart", json!({"doc_id": DOCS[self.doc]})),
            Kind::Purchase => ("purchase", json!({"doc_id": DOCS[self.doc]})),
        };
        o.insert("event_type".into(), json!(t));
        for (k, x) in extra.as_object().unwrap() {
            o.insert(k.clone(), x.clone());
        }
        serde_json::to_vec(&v).unwrap()
    }
}

type Item = common::Item<Ev>;

fn expiry(ts: u64, days: u64) -> Tick {
    (ts + days * DAY).div_ceil(60_000) * 60_000
}

/// Insertion ticks and dedup, simulated per worker (one partition each): an event is
/// accepted at the tick of its batch unless it is from the future, already out of its
/// 30-day window, or a repeat of an id read within the horizon of its first copy — all
/// decided by the stream time at the record (the largest event time up to it), not by the
/// batch's tick.
fn accepted(batches: &[Vec<Item>], now: u64, skew: u64, horizon: u64) -> Vec<(Ev, Tick)> {
    let (mut s, mut closed_at) = (0u64, None::<Tick>);
    let mut at = 0u64;
    let mut first: HashMap<String, Tick> = HashMap::new();
    let mut out = Vec::new();
    for batch in batches {
        let valid: Vec<&Ev> = batch
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) if e.ts <= now + skew => Some(e),
                _ => None,
            })
            .collect();
        if valid.is_empty() {
            closed_at = Some(s);
            continue;
        }
        let max_ts = valid.iter().map(|e| e.ts).max().unwrap();
        let tick = s.max(max_ts).max(closed_at.map_or(0, |c| c + 1));
        s = tick;
        for e in valid {
            at = at.max(e.ts);
            if expiry(e.ts, 30) <= at {
                continue;
            }
            match first.get(&e.id) {
                Some(&s0) if at <= s0 + horizon => {}
                Some(_) => out.push((e.clone(), tick)),
                None => {
                    first.insert(e.id.clone(), at);
                    out.push((e.clone(), tick));
                }
            }
        }
        closed_at = Some(s);
    }
    out
}

/// The features at tick `at`, recounted from the definitions.
fn recount(events: &[(Ev, Tick)], at: Tick) -> (State, BTreeMap<String, f64>) {
    let inserted: Vec<model::Event> = events
        .iter()
        .filter(|(_, t)| *t <= at)
        .map(|(e, _)| e.model())
        .collect();
    let inserted: Vec<&model::Event> = inserted.iter().collect();
    (
        model::features(&inserted, at),
        model::decayed_ctr(&inserted, at, HALF_LIFE),
    )
}

/// Compares the written state with the recount: exact for counts and rates, within
/// fixed-point rounding for the decayed CTR (computed as the read API does).
fn check(
    written: &State,
    expected: &(State, BTreeMap<String, f64>),
    at: Tick,
) -> Result<(), TestCaseError> {
    let (expected, decayed) = expected;
    let keys = |s: &State| s.keys().cloned().collect::<BTreeSet<_>>();
    prop_assert_eq!(keys(written), keys(expected), "entities at tick {}", at);
    for (k, want) in expected {
        let got = &written[k];
        prop_assert_eq!(&got[..want.len()], &want[..], "{:?} at tick {}", k, at);
        if k.0 == 0 {
            let f = |i: usize| got[i].as_f64().unwrap();
            let sums = DecayedSums {
                clicks: f(8),
                impressions: f(9),
                landmark_ms: f(10) as u64,
            };
            let ctr = sums.ctr_at(at, HALF_LIFE, 1.0, 20.0);
            let want = decayed[&k.1[0]];
            prop_assert!(
                (ctr - want).abs() <= 1e-6 * want,
                "ctr_decay of {:?} at {}: {} vs {}",
                k,
                at,
                ctr,
                want
            );
        }
    }
    Ok(())
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => prop::collection::vec(0..DOCS.len(), 0..4).prop_map(Kind::Impression),
        3 => Just(Kind::Click),
        1 => prop_oneof![0u64..30_000, 30_000u64..200_000].prop_map(Kind::Dwell),
        2 => Just(Kind::AcImpression),
        2 => Just(Kind::AcSelect),
        1 => Just(Kind::AddToCart),
        1 => Just(Kind::Purchase),
    ]
}

/// Events clustered in bursts (so sessions' selects and clicks meet within minutes),
/// spread over 45 days (so windows expire), each possibly late by up to 40 days.
fn event(worker: usize) -> impl Strategy<Value = (Ev, u64, bool)> {
    (
        kind(),
        0..DOCS.len(),
        0..QUERIES.len(),
        0..PREFIXES.len(),
        0..SESSIONS.len(),
        0u64..45,
        0u64..900_000,
    )
        .prop_flat_map(move |(k, doc, query, prefix, session, day, ms)| {
            let ev = Ev {
                id: String::new(),
                kind: k,
                doc,
                query,
                prefix,
                session,
                ts: BASE + day * DAY + ms,
            };
            let _ = worker;
            (
                Just(ev),
                prop_oneof![8 => Just(0u64), 1 => 1u64..3_600_000, 1 => DAY..40 * DAY],
                prop::bool::weighted(0.15),
            )
        })
}

/// Batches for one worker: reordered by a random delay, some copies repeated later,
/// garbage and future-dated records mixed in.
fn stream(worker: usize, now: u64) -> impl Strategy<Value = Vec<Vec<Item>>> {
    (
        prop::collection::vec(event(worker), 1..40),
        prop::collection::vec(1usize..6, 40),
        0usize..3,
    )
        .prop_map(move |(events, cuts, garbage)| {
            let mut timeline: Vec<(u64, Item)> = Vec::new();
            for (i, (mut ev, delay, dup)) in events.into_iter().enumerate() {
                ev.id = format!("w{worker}-e{i}");
                timeline.push((ev.ts + delay, Item::Event(ev.clone())));
                if dup {
                    timeline.push((
                        ev.ts + delay + 1 + (i as u64 % 5) * DAY / 10,
                        Item::Event(ev),
                    ));
                }
            }
            for g in 0..garbage {
                let junk = format!("{{\"event_id\": \"junk{g}\", \"event_type\": \"click\"");
                timeline.push((BASE + g as u64 * DAY, Item::Bad(junk.into_bytes())));
            }
            let future = Ev {
                id: format!("w{worker}-future"),
                kind: Kind::Click,
                doc: 0,
                query: 0,
                prefix: 0,
                session: 0,
                ts: now + 120_000,
            };
            timeline.push((BASE + 3 * DAY, Item::Event(future)));
            common::in_batches(timeline, &cuts)
        })
}

const NOW: u64 = BASE + 50 * DAY;

fn options(horizon: u64) -> IngestOptions {
    IngestOptions {
        dedup_horizon_ms: horizon,
        ..IngestOptions::default()
    }
}

/// Every tick where the written state can be compared: each insertion tick, the ticks
/// just before and at some expiries, and after everything has expired.
fn checkpoints(events: &[(Ev, Tick)]) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = events.iter().map(|(_, t)| *t).collect();
    for (e, _) in events.iter().step_by(3) {
        for days in [7, 30] {
            at.insert(expiry(e.ts, days));
            at.insert(expiry(e.ts, days) - 1);
        }
    }
    if let Some(last) = at.iter().next_back().copied() {
        at.insert(last + 31 * DAY);
    }
    at
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(batches in stream(0, NOW)) {
        let horizon = 3_600_000;
        let (changes, counters) = run("search", vec![common::payloads(&batches)], NOW, options(horizon));
        let events = accepted(&batches, NOW, 60_000, horizon);
        for at in checkpoints(&events) {
            check(&state_at(&changes, at), &recount(&events, at), at)?;
        }
        let total: usize = batches.iter().map(|b| b.len()).sum();
        prop_assert_eq!(counters.consumed.load(std::sync::atomic::Ordering::Relaxed) as usize, total);
        prop_assert!(counters.invalid_total() >= 1, "the future-dated event is invalid");
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in stream(0, NOW), b in stream(1, NOW)) {
        let horizon = 3_600_000;
        let (changes, _) = run("search", vec![common::payloads(&a), common::payloads(&b)], NOW, options(horizon));
        let mut events = accepted(&a, NOW, 60_000, horizon);
        events.extend(accepted(&b, NOW, 60_000, horizon));
        for at in checkpoints(&events) {
            check(&state_at(&changes, at), &recount(&events, at), at)?;
        }
    }

    /// The same records in the same order, cut into batches two ways: once every record is
    /// in, the two states are the same — dedup and too-late are decided per record (by the
    /// stream time at it), not by the tick its batch went in at.
    #[test]
    fn the_state_does_not_depend_on_how_the_records_were_batched(a in stream(0, NOW), cuts in prop::collection::vec(1usize..9, 40)) {
        let horizon = 3_600_000;
        let flat: Vec<(u64, Item)> = a.iter().flatten().cloned().enumerate().map(|(i, x)| (i as u64, x)).collect();
        let b = common::in_batches(flat, &cuts);
        let (ca, _) = run("search", vec![common::payloads(&a)], NOW, options(horizon));
        let (cb, _) = run("search", vec![common::payloads(&b)], NOW, options(horizon));
        let last = |batches: &[Vec<Item>]| accepted(batches, NOW, 60_000, horizon).iter().map(|(_, t)| *t).max().unwrap_or(0);
        let at = last(&a).max(last(&b));
        for t in [at, at + 8 * DAY] {
            let (sa, sb) = (state_at(&ca, t), state_at(&cb, t));
            // the decayed sums are rebased to the landmark of the row's last change: compare
            // the windowed features
            let windowed = |s: &State| s.iter().map(|(k, v)| (k.clone(), v[..v.len().min(8)].to_vec())).collect::<State>();
            prop_assert_eq!(windowed(&sa), windowed(&sb), "at {} ({} ms after the base)", t, t - BASE);
        }
    }

    /// A copy of an event read by the other worker is dropped whichever copy wins, so the
    /// state once every record is in does not depend on the race.
    #[test]
    fn duplicates_across_workers_count_once(a in stream(0, NOW), copies in prop::collection::vec(any::<prop::sample::Index>(), 1..6)) {
        let horizon = u64::MAX / 4;
        let originals: Vec<Ev> = a.iter().flatten().filter_map(|i| match i { Item::Event(e) => Some(e.clone()), _ => None }).collect();
        let b: Vec<Vec<Item>> = copies.iter().map(|ix| vec![Item::Event(originals[ix.index(originals.len())].clone())]).collect();
        let (changes, _) = run("search", vec![common::payloads(&a), common::payloads(&b)], NOW, options(horizon));
        let mut events = accepted(&a, NOW, 60_000, horizon);
        let last = events.iter().map(|(_, t)| *t).chain(accepted(&b, NOW, 60_000, horizon).iter().map(|(_, t)| *t)).max().unwrap_or(0);
        for (e, t) in accepted(&b, NOW, 60_000, horizon) {
            if !events.iter().any(|(x, _)| x.id == e.id) {
                events.push((e, t));
            }
        }
        for at in [last, last + 8 * DAY, last + 31 * DAY] {
            check(&state_at(&changes, at), &recount(&events, at), at)?;
        }
    }
}

#[test]
fn unchanged_features_are_not_rewritten() {
    let ev = |id: &str, kind: Kind, doc: usize, ts: u64| Ev {
        id: id.into(),
        kind,
        doc,
        query: 0,
        prefix: 0,
        session: 0,
        ts,
    };
    let batches = vec![
        vec![Item::Event(ev("a", Kind::Impression(vec![0, 1]), 0, BASE))],
        vec![Item::Event(ev("b", Kind::Dwell(1_000), 1, BASE + 1_000))],
        vec![Item::Event(ev("c", Kind::Click, 0, BASE + 2_000))],
    ];
    let (changes, _) = run(
        "search",
        vec![common::payloads(&batches)],
        NOW,
        options(3_600_000),
    );
    let at = |t: u64| {
        changes
            .iter()
            .find(|c| c.tick == t)
            .unwrap_or_else(|| panic!("no changes at {t}: {changes:?}"))
    };
    // the dwell on d1 changes its dwell sum and nothing else, and leaves d0 alone
    let second = at(BASE + 1_000);
    assert_eq!(second.changes.len(), 1, "{second:?}");
    assert_eq!(second.changes[0].key, vec!["d1".to_string()]);
    assert_eq!(second.changes[0].changed, vec![7], "only dwell_sum_7d");
    // the click on d0 touches d0 and its query×doc row, never d1
    let third = at(BASE + 2_000);
    assert!(
        third.changes.iter().all(|c| c.key.last().unwrap() == "d0"),
        "{third:?}"
    );
}

impl common::Payload for Ev {
    fn payload(&self) -> Vec<u8> {
        self.payload_bytes()
    }
}
