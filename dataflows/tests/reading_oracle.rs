//! The reading features, as the dataflow writes them, against a naive recomputation from
//! the definitions of DESIGN §5.2 (sessions, their state and timeouts, user, episode,
//! segment, experiment and quality views) and the time rules of DESIGN §3, on random
//! streams with duplicates, reordering, late, too-late and invalid records; 1 and 2 workers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{Offset, TimeZone, Timelike};
use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::features::Value;
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::Tick;

use common::{run_with_dimension, state_at, State};

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const BASE: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const NOW: u64 = BASE + 60 * DAY;
const TIMEOUT: u64 = 30 * MINUTE;

/// Per session: user, episode, country, tz (None: the country's zone), experiment arm.
const SESSIONS: [(&str, &str, &str, Option<&str>, Option<(&str, &str)>); 6] = [
    ("u0", "e0", "KR", None, Some(("x", "control"))),
    ("u0", "e1", "KR", Some("UTC"), Some(("x", "treatment"))),
    ("u1", "e2", "US", None, None),
    ("u1", "e3", "US", Some("Asia/Seoul"), Some(("x", "control"))),
    ("u2", "e0", "JP", None, Some(("y", "b"))),
    ("u2", "e2", "JP", None, Some(("y", "a"))),
];
/// episode_metadata rows; e3 is not listed (genre "unknown").
fn metadata() -> Vec<Vec<String>> {
    [
        ("e0", "t0", "romance"),
        ("e1", "t1", "action"),
        ("e2", "t0", "romance"),
    ]
    .iter()
    .map(|(e, t, g)| vec![e.to_string(), t.to_string(), g.to_string(), "1".into()])
    .collect()
}
fn genre(episode: &str) -> String {
    metadata()
        .into_iter()
        .find(|r| r[0] == episode)
        .map_or("unknown".into(), |r| r[2].clone())
}
fn title(episode: &str) -> String {
    metadata()
        .into_iter()
        .find(|r| r[0] == episode)
        .map_or(String::new(), |r| r[1].clone())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Enter,
    Scroll(u8),
    Complete,
    Exit,
}

#[derive(Clone, Debug)]
struct Ev {
    id: String,
    session: usize,
    act: Act,
    ts: u64,
}

impl Ev {
    fn payload(&self) -> Vec<u8> {
        let (user, episode, country, tz, arm) = SESSIONS[self.session];
        let mut v = json!({"event_id": self.id, "ts": self.ts, "user_id": user,
            "session_id": format!("s{}", self.session), "episode_id": episode,
            "country": country, "device": "phone", "platform": "ios"});
        let o = v.as_object_mut().unwrap();
        let t = match self.act {
            Act::Enter => "enter",
            Act::Scroll(p) => {
                o.insert("scroll_pct".into(), json!(p));
                "scroll"
            }
            Act::Complete => "complete",
            Act::Exit => "exit",
        };
        o.insert("event_type".into(), json!(t));
        if let Some(tz) = tz {
            o.insert("tz".into(), json!(tz));
        }
        if let Some((x, g)) = arm {
            o.insert("experiment_name".into(), json!(x));
            o.insert("experiment_group".into(), json!(g));
        }
        serde_json::to_vec(&v).unwrap()
    }
}

#[derive(Clone, Debug)]
enum Item {
    Event(Ev),
    /// A record the decoder rejects, with the kind of quality issue and the `ts` it carries.
    Bad(Vec<u8>, usize, Option<u64>),
}

const NULL: usize = 0;
const DUPLICATE: usize = 1;
const OUT_OF_ORDER: usize = 2;
const OUT_OF_RANGE: usize = 3;
const MALFORMED: usize = 4;

fn ceil(x: u64, r: u64) -> u64 {
    x.div_ceil(r) * r
}
fn expiry_days(ts: u64, days: u64) -> Tick {
    ceil(ts + days * DAY, MINUTE)
}
fn hour_of(ts: u64) -> u64 {
    ts - ts % HOUR
}

/// A rejected record (quality count) inserted at a tick.
#[derive(Clone, Debug)]
struct Rejected {
    kind: usize,
    ts: u64,
    tick: Tick,
}

/// Insertion ticks, too-late and dedup, simulated per worker (as in the search oracle,
/// with the reading family's 31-day retention as the horizon); with the rejections.
fn accepted(batches: &[Vec<Item>], now: u64, horizon: u64) -> (Vec<(Ev, Tick)>, Vec<Rejected>) {
    let (mut s, mut closed_at) = (0u64, None::<Tick>);
    let mut first: HashMap<String, Tick> = HashMap::new();
    let (mut out, mut rejected) = (Vec::new(), Vec::new());
    for batch in batches {
        let tick_before = s.max(closed_at.map_or(0, |c| c + 1));
        let valid: Vec<&Ev> = batch
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) if e.ts <= now + MINUTE => Some(e),
                _ => None,
            })
            .collect();
        let mut bad: Vec<(usize, u64)> = batch
            .iter()
            .filter_map(|i| match i {
                Item::Bad(_, kind, ts) => Some((*kind, ts.unwrap_or(0))),
                Item::Event(e) if e.ts > now + MINUTE => Some((OUT_OF_RANGE, e.ts)),
                _ => None,
            })
            .collect();
        if valid.is_empty() {
            // invalid records go in at the source's current time
            for (kind, ts) in bad.drain(..) {
                rejected.push(Rejected {
                    kind,
                    ts,
                    tick: tick_before,
                });
            }
            closed_at = Some(s);
            continue;
        }
        let max_ts = valid.iter().map(|e| e.ts).max().unwrap();
        let tick = s.max(max_ts).max(closed_at.map_or(0, |c| c + 1));
        for (kind, ts) in bad.drain(..) {
            rejected.push(Rejected {
                kind,
                ts,
                tick: tick_before,
            });
        }
        s = tick;
        for e in valid {
            if expiry_days(e.ts, 31) <= tick {
                continue;
            }
            match first.get(&e.id) {
                Some(&t0) if tick - t0 <= horizon => rejected.push(Rejected {
                    kind: DUPLICATE,
                    ts: e.ts,
                    tick,
                }),
                _ => {
                    first.insert(e.id.clone(), tick);
                    out.push((e.clone(), tick));
                }
            }
        }
        closed_at = Some(s);
    }
    (out, rejected)
}

#[derive(Clone, Debug)]
struct Session {
    index: usize,
    start: u64,
    dwell: u64,
    max_scroll: u8,
    scrolls: u64,
    state: &'static str,
    out_of_order: Vec<u64>,
}

/// A session from its live events at `at` (DESIGN §5.2).
fn session(index: usize, events: &[&(Ev, Tick)], at: Tick) -> Option<Session> {
    let live: Vec<&Ev> = events
        .iter()
        .filter(|(e, t)| e.session == index && *t <= at && at < expiry_days(e.ts, 31))
        .map(|(e, _)| e)
        .collect();
    if live.is_empty() {
        return None;
    }
    let alive = events
        .iter()
        .any(|(e, t)| e.session == index && *t <= at && at < ceil(e.ts + TIMEOUT, SECOND));
    let enter = live
        .iter()
        .filter(|e| e.act == Act::Enter)
        .map(|e| e.ts)
        .min();
    let start = enter.unwrap_or_else(|| live.iter().map(|e| e.ts).min().unwrap());
    // the earliest complete or exit; complete first on a tie
    let terminal = live
        .iter()
        .filter(|e| matches!(e.act, Act::Complete | Act::Exit))
        .map(|e| (e.ts, e.act != Act::Complete, e.act))
        .min();
    let end = terminal.map_or_else(|| live.iter().map(|e| e.ts).max().unwrap(), |t| t.0);
    let state = match terminal {
        Some((_, _, Act::Complete)) => "completed",
        Some(_) => "exited",
        None if alive => "active",
        None => "timed_out",
    };
    let mut s = Session {
        index,
        start,
        dwell: end.saturating_sub(start),
        max_scroll: 0,
        scrolls: 0,
        state,
        out_of_order: Vec::new(),
    };
    let mut terminal_used = false;
    for e in &live {
        if !terminal_used && terminal.is_some_and(|(ts, _, act)| ts == e.ts && act == e.act) {
            terminal_used = true;
            continue;
        }
        let before = enter.is_some_and(|x| e.ts < x);
        let after =
            terminal.is_some() && (e.ts > end || matches!(e.act, Act::Complete | Act::Exit));
        if before || after {
            s.out_of_order.push(hour_of(e.ts));
        } else if let Act::Scroll(p) = e.act {
            s.max_scroll = s.max_scroll.max(p);
            s.scrolls += 1;
        }
    }
    Some(s)
}

/// Local hour bucket of the session's start in its zone.
fn tod(s: &Session) -> String {
    let (_, _, country, tz, _) = SESSIONS[s.index];
    let zone = tz.unwrap_or(match country {
        "KR" => "Asia/Seoul",
        "JP" => "Asia/Tokyo",
        "US" => "America/New_York",
        _ => "UTC",
    });
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let utc = chrono::DateTime::from_timestamp_millis(s.start as i64).unwrap();
    let offset = tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
    let hour = utc.with_timezone(&offset).hour();
    match hour / 6 {
        0 => "night",
        1 => "morning",
        2 => "afternoon",
        _ => "evening",
    }
    .into()
}

fn ratio(a: f64, b: f64) -> Value {
    Value::float(if b > 0.0 { a / b } else { 0.0 })
}

/// Every view at tick `at`, recomputed from the definitions.
fn recount(events: &[(Ev, Tick)], rejected: &[Rejected], at: Tick) -> State {
    let all: Vec<&(Ev, Tick)> = events.iter().collect();
    let sessions: Vec<Session> = (0..SESSIONS.len())
        .filter_map(|i| session(i, &all, at))
        .collect();
    let mut state = State::new();
    let finished = |s: &Session| s.state != "active";
    let completed = |s: &Session| s.state == "completed";
    let abandoned = |s: &Session| s.state == "exited" || s.state == "timed_out";
    for s in &sessions {
        let (user, episode, ..) = SESSIONS[s.index];
        state.insert(
            (0, vec![format!("s{}", s.index)]),
            vec![
                Value::Text(user.into()),
                Value::Text(episode.into()),
                Value::Text(s.state.into()),
                Value::Int(s.start as i64),
                Value::Int(s.dwell as i64),
                Value::Int(s.max_scroll as i64),
                Value::Int(s.scrolls as i64),
            ],
        );
    }
    let within = |s: &Session, days: u64| at < expiry_days(s.start, days);
    // user
    let users: BTreeSet<&str> = sessions.iter().map(|s| SESSIONS[s.index].0).collect();
    for u in users {
        let mine: Vec<&Session> = sessions
            .iter()
            .filter(|s| SESSIONS[s.index].0 == u)
            .collect();
        let mut values = Vec::new();
        for days in [7, 30] {
            let w: Vec<&&Session> = mine.iter().filter(|s| within(s, days)).collect();
            let fin: Vec<&&&Session> = w.iter().filter(|s| finished(s)).collect();
            let n = fin.len() as f64;
            let episodes: BTreeSet<&str> = w.iter().map(|s| SESSIONS[s.index].1).collect();
            values.extend([
                Value::Int(w.len() as i64),
                ratio(fin.iter().filter(|s| completed(s)).count() as f64, n),
                ratio(
                    fin.iter()
                        .filter(|s| abandoned(s) && s.max_scroll < 90)
                        .count() as f64,
                    n,
                ),
                ratio(fin.iter().map(|s| s.max_scroll as f64).sum(), n),
                ratio(fin.iter().map(|s| s.dwell as f64).sum(), n),
                Value::Int(episodes.len() as i64),
            ]);
        }
        let mut genres: BTreeMap<String, i64> = BTreeMap::new();
        for s in mine.iter().filter(|s| within(s, 30)) {
            *genres.entry(genre(SESSIONS[s.index].1)).or_default() += 1;
        }
        if genres.is_empty() {
            continue;
        }
        let best = genres.values().max().unwrap();
        let top = genres.iter().find(|(_, n)| *n == best).unwrap().0.clone();
        values.push(Value::Text(top));
        state.insert((1, vec![u.to_string()]), values);
    }
    // episode
    let episodes: BTreeSet<&str> = sessions.iter().map(|s| SESSIONS[s.index].1).collect();
    for ep in episodes {
        let mine: Vec<&Session> = sessions
            .iter()
            .filter(|s| SESSIONS[s.index].1 == ep)
            .collect();
        if !mine.iter().any(|s| within(s, 30)) {
            continue;
        }
        let mut values = vec![Value::Text(genre(ep)), Value::Text(title(ep))];
        for days in [7, 30] {
            let w: Vec<&&Session> = mine.iter().filter(|s| within(s, days)).collect();
            let fin = w.iter().filter(|s| finished(s)).count() as f64;
            values.push(Value::Int(w.len() as i64));
            values.push(ratio(w.iter().filter(|s| completed(s)).count() as f64, fin));
        }
        let gone: Vec<&&Session> = mine
            .iter()
            .filter(|s| within(s, 30) && abandoned(s))
            .collect();
        values.push(ratio(
            gone.iter().map(|s| s.max_scroll as f64).sum(),
            gone.len() as f64,
        ));
        for d in 0..10u8 {
            let n = gone
                .iter()
                .filter(|s| (s.max_scroll / 10).min(9) == d)
                .count();
            values.push(Value::Int(n as i64));
        }
        state.insert((2, vec![ep.to_string()]), values);
    }
    // segment
    let mut segments: BTreeMap<Vec<String>, Vec<&Session>> = BTreeMap::new();
    for s in &sessions {
        let (_, ep, country, ..) = SESSIONS[s.index];
        segments
            .entry(vec![country.to_string(), genre(ep), tod(s)])
            .or_default()
            .push(s);
    }
    for (key, mine) in segments {
        if !mine.iter().any(|s| within(s, 30)) {
            continue;
        }
        let mut values = Vec::new();
        for days in [7, 30] {
            let w: Vec<&&Session> = mine.iter().filter(|s| within(s, days)).collect();
            let fin = w.iter().filter(|s| finished(s)).count() as f64;
            values.push(Value::Int(w.len() as i64));
            values.push(ratio(w.iter().filter(|s| completed(s)).count() as f64, fin));
        }
        state.insert((3, key), values);
    }
    // experiment: finished sessions of the last 30 days per group, against the control
    let mut arms: BTreeMap<&str, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
    for s in sessions.iter().filter(|s| within(s, 30) && finished(s)) {
        if let Some((x, g)) = SESSIONS[s.index].4 {
            let e = arms.entry(x).or_default().entry(g).or_default();
            e.0 += 1;
            e.1 += completed(s) as i64;
        }
    }
    for (x, groups) in arms {
        let control = if groups.contains_key("control") {
            "control"
        } else {
            groups.keys().next().unwrap()
        };
        let (n0, c0) = groups[control];
        let p0 = c0 as f64 / n0 as f64;
        for (g, (n, c)) in &groups {
            let p = *c as f64 / *n as f64;
            let (diff, lo, hi) = if *g == control {
                (0.0, 0.0, 0.0)
            } else {
                let se = (p * (1.0 - p) / *n as f64 + p0 * (1.0 - p0) / n0 as f64).sqrt();
                (p - p0, p - p0 - 1.959964 * se, p - p0 + 1.959964 * se)
            };
            state.insert(
                (4, vec![x.to_string(), g.to_string()]),
                vec![
                    Value::Int(*n),
                    Value::Int(*c),
                    Value::float(p),
                    Value::Text(control.into()),
                    Value::float(diff),
                    Value::float(lo),
                    Value::float(hi),
                    Value::Int((lo > 0.0 || hi < 0.0) as i64),
                ],
            );
        }
    }
    // quality per hour: rejections and out-of-order events, each for 30 days after its hour
    let mut hours: BTreeMap<u64, [i64; 5]> = BTreeMap::new();
    for r in rejected {
        let h = hour_of(r.ts);
        if r.tick <= at && at < expiry_days(h, 30) && expiry_days(h, 30) > r.tick {
            hours.entry(h).or_default()[r.kind] += 1;
        }
    }
    for s in &sessions {
        for h in &s.out_of_order {
            if at < expiry_days(*h, 30) {
                hours.entry(*h).or_default()[OUT_OF_ORDER] += 1;
            }
        }
    }
    for (h, counts) in hours {
        if counts.iter().all(|n| *n == 0) {
            continue;
        }
        let key = chrono::DateTime::from_timestamp_millis(h as i64)
            .unwrap()
            .format("%Y-%m-%dT%H")
            .to_string();
        state.insert(
            (5, vec![key]),
            counts.iter().map(|n| Value::Int(*n)).collect(),
        );
    }
    state
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs())),
        _ => a == b,
    }
}

fn check(got: &State, want: &State, at: Tick) -> Result<(), TestCaseError> {
    let keys: BTreeSet<_> = got.keys().chain(want.keys()).collect();
    for k in keys {
        match (got.get(k), want.get(k)) {
            (Some(g), Some(w))
                if g.len() == w.len() && g.iter().zip(w).all(|(a, b)| close(a, b)) => {}
            (g, w) => prop_assert!(
                false,
                "at {at} ({} after BASE), {k:?}: dataflow {g:?}, recount {w:?}",
                at.saturating_sub(BASE)
            ),
        }
    }
    Ok(())
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        2 => Just(Act::Enter),
        5 => (0..=100u8).prop_map(Act::Scroll),
        1 => Just(Act::Complete),
        1 => Just(Act::Exit),
    ]
}

/// Sessions' events over three days (some sessions hours apart, so timeouts fire),
/// arriving shuffled in batches, with duplicates, events far in the past (some past every
/// window), invalid records of each quality kind and one from the future.
fn stream(worker: usize) -> impl Strategy<Value = Vec<Vec<Item>>> {
    let event = (0..SESSIONS.len(), act(), 0..3 * DAY, 0..4u8);
    (
        prop::collection::vec(event, 1..40),
        prop::collection::vec(0..5usize, 0..4),
        prop::collection::vec(1..6usize, 1..6),
        any::<u64>(),
    )
        .prop_map(move |(events, bad, cuts, seed)| {
            let mut rng = seed;
            let mut next = move |n: u64| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (rng >> 33) % n.max(1)
            };
            let mut timeline: Vec<(u64, Item)> = Vec::new();
            for (i, (session, act, offset, lateness)) in events.into_iter().enumerate() {
                // sessions cluster in time, so most have several events within the timeout
                let ts = BASE + (session as u64 * 7 * HOUR + offset / 20) % (3 * DAY);
                let ev = Ev { id: format!("w{worker}-{i}"), session, act, ts };
                let arrival = match lateness {
                    0 => ts + 40 * DAY,
                    1 => ts + next(10) * HOUR,
                    _ => ts,
                };
                if next(5) == 0 {
                    timeline.push((arrival + next(3) * HOUR, Item::Event(ev.clone())));
                }
                timeline.push((arrival, Item::Event(ev)));
            }
            for (j, kind) in bad.into_iter().enumerate() {
                let ts = BASE + next(3 * DAY);
                let head = format!(r#""event_id":"bad-{worker}-{j}","ts":{ts},"user_id":"u0","session_id":"s0","episode_id":"e0","device":"d","platform":"p""#);
                let (payload, kind, claimed) = match kind {
                    0 => (format!(r#"{{{head},"event_type":"enter","country":null}}"#), NULL, Some(ts)),
                    1 => (format!(r#"{{{head},"event_type":"scroll","country":"KR","scroll_pct":101}}"#), OUT_OF_RANGE, Some(ts)),
                    2 => (format!(r#"{{{head},"event_type":"wink","country":"KR"}}"#), MALFORMED, Some(ts)),
                    3 => (format!(r#"{{{head},"event_type":"enter","country":"KR","tz":"Nowhere/City"}}"#), OUT_OF_RANGE, Some(ts)),
                    // not JSON: no readable ts, counted at the append time (epoch 0): expired
                    _ => ("{\"ts\":".to_string(), MALFORMED, None),
                };
                timeline.push((ts, Item::Bad(payload.into_bytes(), kind, claimed)));
            }
            let future = Ev { id: format!("w{worker}-future"), session: 0, act: Act::Enter, ts: NOW + 120_000 };
            timeline.push((BASE + 2 * DAY, Item::Event(future)));
            timeline.sort_by_key(|(arrival, _)| *arrival);
            let mut batches = Vec::new();
            let mut items = timeline.into_iter().map(|(_, i)| i).peekable();
            for cut in cuts.iter().cycle() {
                let batch: Vec<Item> = items.by_ref().take(*cut).collect();
                if batch.is_empty() {
                    break;
                }
                batches.push(batch);
            }
            batches
        })
}

fn payloads(batches: &[Vec<Item>]) -> Vec<Vec<Vec<u8>>> {
    batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|i| match i {
                    Item::Event(e) => e.payload(),
                    Item::Bad(p, _, _) => p.clone(),
                })
                .collect()
        })
        .collect()
}

fn options() -> IngestOptions {
    IngestOptions {
        dedup_horizon_ms: u64::MAX / 4,
        ..IngestOptions::default()
    }
}

/// Insertion ticks, and the ticks just before and at each timeout, window end and
/// retention end, and after everything has gone.
fn checkpoints(events: &[(Ev, Tick)]) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = events.iter().map(|(_, t)| *t).collect();
    for (e, _) in events {
        for x in [
            ceil(e.ts + TIMEOUT, SECOND),
            expiry_days(e.ts, 7),
            expiry_days(e.ts, 30),
            expiry_days(e.ts, 31),
        ] {
            at.insert(x);
            at.insert(x - 1);
        }
    }
    if let Some(last) = at.iter().next_back().copied() {
        at.insert(last + 32 * DAY);
    }
    at
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(batches in stream(0)) {
        let (changes, _) = run_with_dimension("reading", vec![payloads(&batches)], NOW, options(), Some(metadata()));
        let (events, rejected) = accepted(&batches, NOW, u64::MAX / 4);
        for at in checkpoints(&events) {
            check(&state_at(&changes, at), &recount(&events, &rejected, at), at)?;
        }
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in stream(0), b in stream(1)) {
        let (changes, _) = run_with_dimension("reading", vec![payloads(&a), payloads(&b)], NOW, options(), Some(metadata()));
        let (mut events, mut rejected) = accepted(&a, NOW, u64::MAX / 4);
        let (e2, r2) = accepted(&b, NOW, u64::MAX / 4);
        events.extend(e2);
        rejected.extend(r2);
        for at in checkpoints(&events) {
            check(&state_at(&changes, at), &recount(&events, &rejected, at), at)?;
        }
    }
}

/// A session with no complete or exit times out once stream time passes its last event
/// plus the timeout, and not a millisecond before.
#[test]
fn a_session_times_out_exactly_at_its_last_event_plus_the_timeout() {
    let ev = |id: &str, act, ts| {
        Item::Event(Ev {
            id: id.into(),
            session: 2,
            act,
            ts,
        })
    };
    let batches = vec![
        vec![ev("a", Act::Enter, BASE)],
        vec![ev("b", Act::Scroll(40), BASE + 10 * SECOND)],
        // another session moves stream time past the timeout
        vec![Item::Event(Ev {
            id: "c".into(),
            session: 0,
            act: Act::Enter,
            ts: BASE + HOUR,
        })],
    ];
    let (changes, _) = run_with_dimension(
        "reading",
        vec![payloads(&batches)],
        NOW,
        options(),
        Some(metadata()),
    );
    let state = |at| state_at(&changes, at)[&(0, vec!["s2".to_string()])][2].clone();
    let deadline = BASE + 10 * SECOND + TIMEOUT;
    assert_eq!(state(BASE + 10 * SECOND), Value::Text("active".into()));
    assert_eq!(state(deadline - 1), Value::Text("active".into()));
    assert_eq!(state(deadline), Value::Text("timed_out".into()));
    // and its early exit (40 % < 90 %) counts for the user from then on
    let user = state_at(&changes, deadline)[&(1, vec!["u1".to_string()])].clone();
    assert_eq!(user[2], Value::float(1.0), "early_exit_rate_7d: {user:?}");
}
