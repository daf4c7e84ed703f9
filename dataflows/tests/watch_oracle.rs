//! The watch family's tables, as the dataflow writes them, against a naive recount from
//! the definitions (DESIGN §5.5, the README's watch section) and the time rules of DESIGN
//! §3, on random streams over weeks (so 7- and 30-day windows and co-visited pairs expire
//! within the run) with duplicates, disorder, late, too-late and invalid records; on 1 and
//! 2 workers.

mod common;

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::families::watch::decode::{impression_id, watch_id};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::Tick;

use common::watch_model::{self as model, expiry, Kind, Settings, DAY, HOUR, MINUTE};
use common::{on_topic, run_configured, state_at};

const BASE: u64 = 1_767_225_600_000; // 2026-01-01
const NOW: u64 = BASE + 60 * DAY;
const USERS: [&str; 3] = ["u0", "u1", "u:2"];
const ITEMS: [&str; 6] = ["v0", "v1", "v2", "v3", "v4", "v:5"];
/// Days the events fall on: close enough for histories, far enough for every window to
/// expire within the run.
const DAYS: [u64; 7] = [0, 1, 2, 8, 20, 31, 38];
/// Percent watched and seconds: each side of every threshold.
const PERCENTS: [f64; 5] = [0.0, 39.9, 40.0, 80.0, 100.0];
const SECONDS: [f64; 6] = [0.0, 29.0, 30.0, 119.5, 120.0, 3600.0];

const ORACLE: common::Oracle = common::Oracle {
    base: BASE,
    tolerance: 1e-12,
};

#[derive(Clone, Debug)]
struct Ev(model::Event);

impl common::Payload for Ev {
    fn payload(&self) -> Vec<u8> {
        let e = &self.0;
        match &e.kind {
            Kind::Impression(shown, request, surface) => {
                let items: Vec<_> = shown
                    .iter()
                    .map(|(i, p)| json!({"item_id": i, "position": p}))
                    .collect();
                let mut v =
                    json!({"event_id": e.event_id, "ts": e.ts, "user_id": e.user, "items": items});
                if let Some(r) = request {
                    v["request_id"] = json!(r);
                }
                if let Some(s) = surface {
                    v["surface"] = json!(s);
                }
                on_topic("impressions", &serde_json::to_vec(&v).unwrap())
            }
            Kind::Watch(item, percent, seconds) => {
                let v = json!({"event_id": e.event_id, "ts": e.ts, "user_id": e.user,
                    "item_id": item, "percent_watched": percent, "watch_time_sec": seconds});
                on_topic("watches", &serde_json::to_vec(&v).unwrap())
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Item {
    Event(Ev),
    Bad(Vec<u8>),
}

impl common::Payload for Item {
    fn payload(&self) -> Vec<u8> {
        match self {
            Item::Event(e) => e.payload(),
            Item::Bad(b) => b.clone(),
        }
    }
}

fn options() -> IngestOptions {
    IngestOptions {
        dedup_horizon_ms: u64::MAX / 4,
        ..IngestOptions::default()
    }
}

/// Small lists, so histories and neighbour lists are cut in the random streams.
fn settings() -> (Settings, serde_json::Value) {
    let s = Settings {
        history_size: 3,
        neighbours: 2,
        ..Settings::default()
    };
    let section = json!({"history_size": s.history_size, "neighbours": s.neighbours});
    (s, section)
}

fn run(
    per_worker: Vec<Vec<Vec<Item>>>,
    section: Option<serde_json::Value>,
) -> Vec<tidemark_dataflows::contract::table::TickChanges> {
    let payloads = per_worker.iter().map(|b| common::payloads(b)).collect();
    run_configured("watch", section, payloads, NOW, options(), None).0
}

/// Insertion ticks, too-late and dedup, simulated per worker (one partition of each topic),
/// as in the other oracles: decided by the stream time at the record, which is its
/// partition's (a watch is too late by the watches read before it, not by impressions).
/// Each event with the offset of the copy taken.
fn accepted(batches: &[Vec<Item>], horizon: u64) -> Vec<(model::Event, Tick)> {
    let (mut s, mut closed_at) = (0u64, None::<Tick>);
    let (mut at, mut offset) = (HashMap::<bool, u64>::new(), 0i64);
    let mut first: HashMap<String, Tick> = HashMap::new();
    let mut out = Vec::new();
    for batch in batches {
        let mut valid: Vec<model::Event> = Vec::new();
        for item in batch {
            offset += 1;
            if let Item::Event(Ev(e)) = item {
                if e.ts <= NOW + MINUTE {
                    valid.push(model::Event {
                        offset,
                        ..e.clone()
                    });
                }
            }
        }
        if valid.is_empty() {
            closed_at = Some(s);
            continue;
        }
        let max_ts = valid.iter().map(|e| e.ts).max().unwrap();
        let tick = s.max(max_ts).max(closed_at.map_or(0, |c| c + 1));
        s = tick;
        for e in valid {
            let kind = matches!(e.kind, Kind::Watch(..));
            let at = at.entry(kind).or_default();
            *at = (*at).max(e.ts);
            let key = format!("{kind}/{}", e.event_id);
            if expiry(e.ts, horizon) <= *at || first.contains_key(&key) {
                continue;
            }
            first.insert(key, *at);
            out.push((e, tick));
        }
        closed_at = Some(s);
    }
    out
}

/// Every insertion tick, the ticks at and before each expiry, and after all expired.
fn checkpoints(events: &[(model::Event, Tick)], s: &Settings) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = events.iter().map(|(_, t)| *t).collect();
    for (e, _) in events {
        for length in [7 * DAY, 30 * DAY, s.window] {
            at.insert(expiry(e.ts, length));
            at.insert(expiry(e.ts, length) - 1);
        }
    }
    if let Some(last) = at.iter().next_back().copied() {
        at.insert(last + s.window + DAY);
    }
    at
}

fn recount(events: &[(model::Event, Tick)], at: Tick, s: &Settings) -> common::State {
    let inserted: Vec<&model::Event> = events
        .iter()
        .filter(|(_, t)| *t <= at)
        .map(|(e, _)| e)
        .collect();
    model::features(&inserted, at, s)
}

/// Watches and impressions over six weeks by three viewers of six items, each possibly
/// late by minutes, hours, days or more than the horizon (too late), some repeated; ties
/// of one millisecond; invalid records of each kind and one from the future.
fn stream(worker: usize) -> impl Strategy<Value = Vec<Vec<Item>>> {
    let event = (
        prop::sample::select(vec![true, true, true, false]),
        (
            0..USERS.len(),
            0..ITEMS.len(),
            prop::collection::vec(0..ITEMS.len(), 1..5),
        ),
        (0..DAYS.len(), 0u64..4, 0u64..3),
        (0..PERCENTS.len(), 0..SECONDS.len()),
        (0..10u8, any::<bool>()),
    );
    (
        prop::collection::vec(event, 1..50),
        prop::collection::vec(0..4usize, 0..4),
        prop::collection::vec(1..8usize, 1..6),
    )
        .prop_map(move |(events, bad, cuts)| {
            let mut timeline: Vec<(u64, Item)> = Vec::new();
            for (i, (watch, (user, item, slate), (day, hour, ms), (p, sec), (late, dup))) in
                events.into_iter().enumerate()
            {
                // a few distinct milliseconds an hour apart: ties happen
                let ts = BASE + DAYS[day] * DAY + hour * HOUR + ms;
                let event_id = format!("w{worker}-{i}");
                let kind = if watch {
                    Kind::Watch(ITEMS[item].to_string(), PERCENTS[p], SECONDS[sec])
                } else {
                    // positions need not start at 0; an item may be shown twice
                    let shown = slate
                        .iter()
                        .enumerate()
                        .map(|(k, x)| (ITEMS[*x].to_string(), (k * 2 + i % 2) as u32))
                        .collect();
                    let request = (i % 3 != 0).then(|| format!("req-{i}"));
                    let surface = (i % 2 == 0).then(|| "home".to_string());
                    Kind::Impression(shown, request, surface)
                };
                let id = if watch { watch_id(&event_id) } else { impression_id(&event_id) };
                let e = model::Event {
                    event_id, id: id.0, ts, user: USERS[user].to_string(), kind, offset: 0,
                };
                let arrival = match late {
                    0 => ts + 20 * MINUTE,
                    1 => ts + 5 * HOUR,
                    2 => ts + 3 * DAY,
                    3 => ts + 31 * DAY,
                    _ => ts,
                };
                if dup {
                    timeline.push((arrival + (i as u64 % 3) * HOUR, Item::Event(Ev(e.clone()))));
                }
                timeline.push((arrival, Item::Event(Ev(e))));
            }
            for (j, kind) in bad.into_iter().enumerate() {
                let ts = BASE + j as u64 * DAY;
                let head = format!(r#""event_id":"bad-{worker}-{j}","user_id":"u0","ts":{ts}"#);
                let record = match kind {
                    0 => on_topic("watches", format!(r#"{{{head},"item_id":"v0","percent_watched":101,"watch_time_sec":1}}"#).as_bytes()),
                    1 => on_topic("watches", format!(r#"{{{head},"percent_watched":50,"watch_time_sec":1}}"#).as_bytes()),
                    2 => on_topic("impressions", format!(r#"{{{head},"items":[{{"item_id":"v0","position":1}},{{"item_id":"v1","position":1}}]}}"#).as_bytes()),
                    _ => on_topic("impressions", b"{\"event_id\":"),
                };
                timeline.push((ts, Item::Bad(record)));
            }
            let event_id = format!("w{worker}-future");
            let future = model::Event {
                id: watch_id(&event_id).0, event_id, ts: NOW + 2 * MINUTE, user: "u0".into(),
                kind: Kind::Watch("v0".into(), 100.0, 1.0), offset: 0,
            };
            timeline.push((BASE + DAY, Item::Event(Ev(future))));
            common::in_batches(timeline, &cuts)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(batches in stream(0)) {
        let (s, section) = settings();
        let changes = run(vec![batches.clone()], Some(section));
        let events = accepted(&batches, 30 * DAY);
        for at in checkpoints(&events, &s) {
            ORACLE.check(&state_at(&changes, at), &recount(&events, at, &s), at)?;
        }
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in stream(0), b in stream(1)) {
        let (s, section) = settings();
        let changes = run(vec![a.clone(), b.clone()], Some(section));
        let mut events = accepted(&a, 30 * DAY);
        events.extend(accepted(&b, 30 * DAY));
        for at in checkpoints(&events, &s) {
            ORACLE.check(&state_at(&changes, at), &recount(&events, at, &s), at)?;
        }
    }
}

fn watch(id: &str, user: &str, item: &str, ts: u64, percent: f64) -> Item {
    Item::Event(Ev(model::Event {
        event_id: id.into(),
        id: watch_id(id).0,
        ts,
        user: user.into(),
        kind: Kind::Watch(item.into(), percent, 0.0),
        offset: 0,
    }))
}

/// A late watch lands in the middle of a viewer's history: the later watches' pairs change
/// with it (by event time, not by arrival), a duplicate changes nothing, and the history
/// and pairs leave with the window (the defaults: history 20, 30 days).
#[test]
fn a_late_watch_takes_its_place_in_the_history_by_event_time() {
    let t = BASE + 2 * DAY;
    let batches = vec![
        vec![
            watch("a", "u0", "v1", t, 100.0),
            watch("c", "u0", "v3", t + 2 * HOUR, 50.0),
        ],
        vec![
            watch("b", "u0", "v2", t + HOUR, 10.0),
            watch("a", "u0", "v1", t, 100.0),
        ],
    ];
    let changes = run(vec![batches.clone()], None);
    let events = accepted(&batches, 30 * DAY);
    assert_eq!(events.len(), 3, "the copy of a is a duplicate");
    let s = Settings::default();
    for at in checkpoints(&events, &s) {
        ORACLE
            .check(&state_at(&changes, at), &recount(&events, at, &s), at)
            .unwrap();
    }
    let last = events.iter().map(|(_, t)| *t).max().unwrap();
    let state = state_at(&changes, last);
    let text = |s: &str| tidemark_dataflows::contract::table::Value::Text(s.into());
    let int = tidemark_dataflows::contract::table::Value::Int;
    assert_eq!(
        state[&(model::USER_HISTORY, vec!["u0".into()])][0],
        text(r#"["v3","v2","v1"]"#)
    );
    // b (weight 1) pairs with v1; c (medium, 3) with v2 and v1
    let score =
        |a: &str, b: &str| state[&(model::CO_VISITATION, vec![a.into(), b.into()])][0].clone();
    assert_eq!(score("v1", "v2"), int(1));
    assert_eq!(score("v1", "v3"), int(3));
    assert_eq!(score("v2", "v3"), int(3));
    assert_eq!(
        state[&(model::CO_VISIT, vec!["v3".into()])][0],
        text(r#"["v1:3","v2:3"]"#)
    );
    let after = state_at(&changes, expiry(t + 2 * HOUR, 30 * DAY));
    assert!(
        after.keys().all(|(table, _)| *table >= model::IMPRESSIONS),
        "only raw rows are left: {after:?}"
    );
    assert_eq!(after.len(), 3, "one raw row per watch");
}

/// A copy read more than the dedup horizon (stream time) after its first: DESIGN §3 counts
/// it again — it pairs with the history before it once more, as its first did, not with
/// its first — and when both copies fall in one tick the raw table still gets one row of
/// the event (the run does not stop on it).
#[test]
fn a_copy_beyond_the_dedup_horizon_counts_again_and_stores_one_raw_row() {
    let t = BASE + 2 * DAY;
    let batches = vec![vec![
        watch("c", "u0", "v0", t - HOUR, 10.0),
        watch("a", "u0", "v1", t, 100.0),
        watch("b", "u1", "v2", t + 2 * HOUR, 10.0),
        watch("a", "u0", "v1", t, 100.0),
    ]];
    let opts = IngestOptions {
        dedup_horizon_ms: HOUR,
        ..IngestOptions::default()
    };
    let payloads = vec![common::payloads(&batches)];
    let changes = run_configured("watch", None, payloads, NOW, opts, None).0;
    // every copy taken, each with its offset, all at the batch's tick
    let tick = t + 2 * HOUR;
    let events: Vec<(model::Event, Tick)> = batches[0]
        .iter()
        .enumerate()
        .map(|(k, item)| match item {
            Item::Event(Ev(e)) => (
                model::Event {
                    offset: k as i64 + 1,
                    ..e.clone()
                },
                tick,
            ),
            Item::Bad(_) => unreachable!("all valid"),
        })
        .collect();
    let s = Settings::default();
    for at in checkpoints(&events, &s) {
        ORACLE
            .check(&state_at(&changes, at), &recount(&events, at, &s), at)
            .unwrap();
    }
    let state = state_at(&changes, tick);
    let int = tidemark_dataflows::contract::table::Value::Int;
    assert_eq!(
        state[&(model::ITEM, vec!["v1".into()])][2],
        int(2),
        "a counts twice"
    );
    let pair = &state[&(model::CO_VISITATION, vec!["v0".into(), "v1".into()])];
    assert_eq!(
        pair[0],
        int(20),
        "both copies pair with v0 (weight 10 each)"
    );
    let raw: Vec<_> = state.keys().filter(|(t, _)| *t == model::WATCHES).collect();
    assert_eq!(raw.len(), 3, "one raw row per event id: {raw:?}");
}

/// The random streams do show what the definitions are about: histories and neighbour
/// lists longer than their size (so cut), pairs that expire, watches inserted after a
/// later watch of the same viewer (late ones, which change later watches' pairs).
#[test]
fn the_random_streams_reach_every_case() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (s, _) = settings();
    let (mut cut_histories, mut cut_lists, mut pairs_gone, mut late) = (0, 0, 0, 0);
    for _ in 0..48 {
        let batches = stream(0).new_tree(&mut runner).unwrap().current();
        let events = accepted(&batches, 30 * DAY);
        for (e, tick) in &events {
            let later_first = events.iter().any(|(o, t)| {
                o.user == e.user
                    && matches!(o.kind, Kind::Watch(..))
                    && matches!(e.kind, Kind::Watch(..))
                    && o.ts > e.ts
                    && t < tick
            });
            late += usize::from(later_first);
        }
        let mut pairs_before = 0;
        for at in checkpoints(&events, &s) {
            // distinct items per viewer in the window, co-visited items per item
            let mut items: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
            for (e, t) in events.iter().filter(|(_, t)| *t <= at) {
                if let Kind::Watch(item, ..) = &e.kind {
                    if expiry(e.ts, s.window) > at && *t <= at {
                        items.entry(&e.user).or_default().insert(item);
                    }
                }
            }
            cut_histories += items.values().filter(|i| i.len() > s.history_size).count();
            let state = recount(&events, at, &s);
            let mut neighbours: std::collections::BTreeMap<&str, usize> = Default::default();
            let mut pairs = 0;
            for (table, key) in state.keys() {
                if *table == model::CO_VISITATION {
                    pairs += 1;
                    *neighbours.entry(&key[0]).or_default() += 1;
                    *neighbours.entry(&key[1]).or_default() += 1;
                }
            }
            cut_lists += neighbours.values().filter(|n| **n > s.neighbours).count();
            if pairs < pairs_before {
                pairs_gone += 1;
            }
            pairs_before = pairs;
        }
    }
    assert!(
        cut_histories > 0 && cut_lists > 0 && pairs_gone > 0 && late > 0,
        "cut histories {cut_histories}, cut neighbour lists {cut_lists}, pairs gone {pairs_gone}, late watches {late}"
    );
}
