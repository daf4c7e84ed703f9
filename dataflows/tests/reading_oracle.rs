//! The reading features, as the dataflow writes them, against a naive recomputation from
//! the definitions of DESIGN §5.2 (sessions, their state and timeouts, user, episode,
//! segment, experiment and quality views) and the time rules of DESIGN §3, on random
//! streams with duplicates, reordering, late, too-late and invalid records; 1 and 2 workers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::contract::table::{TickChanges, Value};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::quality::Checked;
use tidemark_dataflows::Family;
use tidemark_dataflows::Tick;

use common::reading_model::*;
use common::{run_family, run_with_dimension, run_with_table_changes, state_at, MakeFamily};

const BASE: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const NOW: u64 = BASE + 60 * DAY;

/// A test session: user, episode, country, tz (None: the country's zone), experiment arm.
type SessionSpec = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<(&'static str, &'static str)>,
);

/// Per session: user, episode, country, tz (None: the country's zone), experiment arm.
const SESSIONS: [SessionSpec; 6] = [
    ("u0", "e0", "KR", None, Some(("x", "control"))),
    ("u0", "e1", "KR", Some("UTC"), Some(("x", "treatment"))),
    ("u1", "e2", "NZ", None, None),
    ("u1", "e3", "US", Some("Asia/Seoul"), Some(("x", "control"))),
    ("u2", "e0", "JP", None, Some(("y", "b"))),
    // a country with no known zone: local time in UTC, its events counted as unzoned
    ("u2", "e2", "XX", None, Some(("y", "a"))),
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
#[derive(Clone, Debug)]
struct Ev {
    id: String,
    session: usize,
    act: Act,
    ts: u64,
}

impl Ev {
    /// As the model reads it.
    fn read(&self) -> Read {
        let (user, episode, country, tz, arm) = SESSIONS[self.session];
        Read {
            session: format!("s{}", self.session),
            user: user.into(),
            episode: episode.into(),
            country: country.into(),
            tz: tz.map(String::from),
            arm: arm.map(|(x, g)| (x.into(), g.into())),
            act: self.act,
            ts: self.ts,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let (user, episode, country, tz, arm) = SESSIONS[self.session];
        let mut v = json!({"event_id": self.id, "ts": self.ts, "user_id": user,
            "session_id": format!("s{}", self.session), "episode_id": episode,
            "country": country, "device": "phone", "platform": "ios"});
        let o = v.as_object_mut().unwrap();
        let t = match self.act {
            Act::Enter => "enter",
            Act::Scroll(p) => {
                o.insert("scroll_pct".into(), json!(p as f64 / 1000.0));
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

/// Insertion ticks, too-late and dedup, simulated per worker (as in the search oracle,
/// with the reading family's 31-day retention as the horizon); with the rejections.
fn accepted(batches: &[Vec<Item>], now: u64, horizon: u64) -> (Vec<(Ev, Tick)>, Vec<Rejected>) {
    let (mut s, mut closed_at) = (0u64, None::<Tick>);
    let mut at = 0u64;
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
                // a ts ahead of the clock is not believed: counted at the append time
                Item::Event(e) if e.ts > now + MINUTE => Some((OUT_OF_RANGE, 0)),
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
            // too late and dedup by the stream time at the record (its largest event time)
            at = at.max(e.ts);
            if expiry_days(e.ts, 31) <= at {
                continue;
            }
            match first.get(&e.id) {
                Some(&s0) if at <= s0 + horizon => rejected.push(Rejected {
                    kind: DUPLICATE,
                    ts: e.ts,
                    tick,
                }),
                Some(_) => out.push((e.clone(), tick)),
                None => {
                    first.insert(e.id.clone(), at);
                    out.push((e.clone(), tick));
                }
            }
        }
        closed_at = Some(s);
    }
    (out, rejected)
}

/// The model's views at `at`, from the events as the model reads them.
fn model(events: &[(Ev, Tick)], rejected: &[Rejected], at: Tick) -> State {
    model_with(events, rejected, &metadata(), at)
}

fn model_with(
    events: &[(Ev, Tick)],
    rejected: &[Rejected],
    metadata: &[Vec<String>],
    at: Tick,
) -> State {
    let reads: Vec<(Read, Tick)> = events.iter().map(|(e, t)| (e.read(), *t)).collect();
    recount(&reads, rejected, metadata, at)
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        2 => Just(Act::Enter),
        // whole percents (the 90 % boundary included) and fractions
        3 => (0..=100u32).prop_map(|p| Act::Scroll(p * 1000)),
        2 => (0..=100_000u32).prop_map(Act::Scroll),
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
            let mut next = common::draws(seed);
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
            common::in_batches(timeline, &cuts)
        })
}

impl common::Payload for Item {
    fn payload(&self) -> Vec<u8> {
        match self {
            Item::Event(e) => e.payload(),
            Item::Bad(p, _, _) => p.clone(),
        }
    }
}

fn options() -> IngestOptions {
    IngestOptions {
        dedup_horizon_ms: u64::MAX / 4,
        ..IngestOptions::default()
    }
}

/// Insertion ticks, and the ticks just before and at each timeout, window end and
/// retention end, and after everything has gone.
const ORACLE: common::Oracle = common::Oracle {
    base: BASE,
    tolerance: 1e-6,
};

fn checkpoints(events: &[(Ev, Tick)]) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = events.iter().map(|(_, t)| *t).collect();
    for (e, _) in events {
        for x in [
            ceil(e.ts + TIMEOUT, SECOND),
            expiry_days(e.ts, 7),
            expiry_days(e.ts, 30),
            expiry_days(e.ts, 31),
            expiry_days(e.ts, 62),
        ] {
            at.insert(x);
            at.insert(x - 1);
        }
    }
    if let Some(last) = at.iter().next_back().copied() {
        at.insert(last + 63 * DAY);
    }
    at
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(batches in stream(0)) {
        let (changes, _) = run_with_dimension("reading", vec![common::payloads(&batches)], NOW, options(), Some(metadata()));
        let (events, rejected) = accepted(&batches, NOW, u64::MAX / 4);
        for at in checkpoints(&events) {
            ORACLE.check(&state_at(&changes, at), &model(&events, &rejected, at), at)?;
        }
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in stream(0), b in stream(1)) {
        let (changes, _) = run_with_dimension("reading", vec![common::payloads(&a), common::payloads(&b)], NOW, options(), Some(metadata()));
        let (mut events, mut rejected) = accepted(&a, NOW, u64::MAX / 4);
        let (e2, r2) = accepted(&b, NOW, u64::MAX / 4);
        events.extend(e2);
        rejected.extend(r2);
        for at in checkpoints(&events) {
            ORACLE.check(&state_at(&changes, at), &model(&events, &rejected, at), at)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// An episode re-genred (or dropped from the catalog) while the stream runs: at every
    /// tick every view agrees with the model under the old catalog or under the new one,
    /// never a mix, once new always new, and new from the last batch on.
    #[test]
    fn a_metadata_change_moves_every_view_at_once(batches in stream(0), row in 0..3usize, drop_it in any::<bool>()) {
        let old = metadata();
        let mut new = old.clone();
        if drop_it {
            new.remove(row);
        } else {
            new[row][2] = "mystery".into();
        }
        let (changes, _) = run_with_table_changes(
            "reading", vec![common::payloads(&batches)], NOW, options(), Some(vec![old.clone(), new.clone()]),
        );
        let (events, rejected) = accepted(&batches, NOW, u64::MAX / 4);
        let last_ids: BTreeSet<&str> = batches.last().into_iter().flatten().filter_map(|i| match i {
            Item::Event(e) => Some(e.id.as_str()),
            _ => None,
        }).collect();
        let last_batch = events.iter().find(|(e, _)| last_ids.contains(e.id.as_str())).map(|(_, t)| *t);
        let mut switched = false;
        for at in checkpoints(&events) {
            let got = state_at(&changes, at);
            let (was, now) = (model_with(&events, &rejected, &old, at), model_with(&events, &rejected, &new, at));
            let (is_old, is_new) = (ORACLE.agrees(&got, &was), ORACLE.agrees(&got, &now));
            prop_assert!(is_old || is_new, "at {at}: neither catalog: {got:?}");
            if switched || last_batch.is_some_and(|t| at >= t) {
                prop_assert!(is_new, "at {at}: the new catalog holds");
            }
            switched |= is_new && !is_old;
        }
    }
}

/// The views' changes from these batches on one worker, with the test catalog.
fn run_one(batches: &[Vec<Item>]) -> Vec<tidemark_dataflows::contract::table::TickChanges> {
    run_with_dimension(
        "reading",
        vec![common::payloads(batches)],
        NOW,
        options(),
        Some(metadata()),
    )
    .0
}

/// An event of session 2.
fn session_2(id: &str, act: Act, ts: u64) -> Item {
    Item::Event(Ev {
        id: id.into(),
        session: 2,
        act,
        ts,
    })
}

/// A session with no complete or exit times out once stream time passes its last event
/// plus the timeout, and not a millisecond before.
#[test]
fn a_session_times_out_exactly_at_its_last_event_plus_the_timeout() {
    let ev = session_2;
    let batches = vec![
        vec![ev("a", Act::Enter, BASE)],
        vec![ev("b", Act::Scroll(40_000), BASE + 10 * SECOND)],
        // another session moves stream time past the timeout
        vec![Item::Event(Ev {
            id: "c".into(),
            session: 0,
            act: Act::Enter,
            ts: BASE + HOUR,
        })],
    ];
    let changes = run_one(&batches);
    let state = |at| state_at(&changes, at)[&(0, vec!["s2".to_string()])][2].clone();
    let deadline = BASE + 10 * SECOND + TIMEOUT;
    assert_eq!(state(BASE + 10 * SECOND), Value::Text("active".into()));
    assert_eq!(state(deadline - 1), Value::Text("active".into()));
    assert_eq!(state(deadline), Value::Text("timed_out".into()));
    // a timeout is abandoned, not an early exit (DESIGN: an exit below 90 %)
    let user = state_at(&changes, deadline)[&(1, vec!["u1".to_string()])].clone();
    assert_eq!(user[2], Value::float(0.0), "early_exit_rate_7d: {user:?}");
    assert_eq!(user[3], Value::float(1.0), "abandon_rate_7d: {user:?}");
}

/// Depths are kept as given (to 0.001), and an event after the session went quiet for the
/// timeout does not revive it, whatever order the events arrive in.
#[test]
fn depth_is_fractional_and_a_late_event_does_not_revive_a_quiet_session() {
    let ev = session_2;
    let events = [
        ev("a", Act::Enter, BASE),
        ev("b", Act::Scroll(52_250), BASE + 50 * SECOND),
        ev("c", Act::Scroll(89_750), BASE + 100 * SECOND),
        // two hours later: after the timeout
        ev("d", Act::Exit, BASE + 2 * HOUR),
    ];
    for order in [[0, 1, 2, 3], [3, 2, 1, 0]] {
        let batches: Vec<Vec<Item>> = order.iter().map(|&i| vec![events[i].clone()]).collect();
        let changes = run_one(&batches);
        let at = BASE + 3 * HOUR;
        let all = state_at(&changes, at);
        let session = &all[&(0, vec!["s2".to_string()])];
        assert_eq!(session[2], Value::Text("timed_out".into()), "{order:?}");
        assert_eq!(
            session[4],
            Value::Int(100_000),
            "dwell up to the last event before the gap"
        );
        assert_eq!(session[5], Value::float(89.75), "max_scroll_pct");
        let user = &all[&(1, vec!["u1".to_string()])];
        assert_eq!(
            user[4],
            Value::float(89.75),
            "avg_scroll_depth_7d: {user:?}"
        );
        // the exit after the gap counts as out of order in its hour
        let hour = chrono::DateTime::from_timestamp_millis((BASE + 2 * HOUR) as i64)
            .unwrap()
            .format("%Y-%m-%dT%H")
            .to_string();
        assert_eq!(
            all[&(5, vec![hour])][2],
            Value::Int(1),
            "out_of_order_events"
        );
    }
}

/// The reading family checked for data quality with its built-in expectations.
fn checked_reading() -> Box<dyn Family> {
    let plain = tidemark_dataflows::family("reading", None).expect("registered");
    Box::new(Checked::new(plain, None, &[], true).expect("built-in expectations compile"))
}

/// A count per (hour, column or expectation name).
type Counts<K> = BTreeMap<(String, K), i64>;

/// Per (hour, column or expectation), the count the last `quality_hourly` row showed
/// before its 30 days ended (a session-made count may go down as well as up, and a row
/// whose counts all went to zero is gone: none) and the failures of the last report row.
fn quality_counts(changes: &[TickChanges]) -> (Counts<usize>, Counts<String>) {
    let tables = checked_reading().tables();
    let view = tables
        .iter()
        .position(|t| t.ns == "quality_hourly")
        .unwrap() as u8;
    let report = (tables.len() - 1) as u8;
    let (mut shown, mut reported) = (BTreeMap::new(), BTreeMap::new());
    let ends = |hour: &str| {
        let start = chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00"), "%Y-%m-%dT%H:%M")
            .expect("an hour");
        start.and_utc().timestamp_millis() as Tick + 30 * 24 * 3_600_000
    };
    for (tick, c) in changes
        .iter()
        .flat_map(|t| t.changes.iter().map(|c| (t.tick, c)))
    {
        // a row gone before its 30 days end: every count of it went to zero
        if c.table == view && c.after.is_none() && tick < ends(&c.key[0]) {
            shown.retain(|(h, _), _| *h != c.key[0]);
        }
        let Some(after) = &c.after else { continue };
        let int = |v: &Value| match v {
            Value::Int(n) => *n,
            other => panic!("a count, not {other:?}"),
        };
        if c.table == view {
            for (i, v) in after.iter().enumerate() {
                shown.insert((c.key[0].clone(), i), int(v));
            }
        } else if c.table == report {
            let hour = c.key[0].trim_end_matches(":00:00Z").to_string();
            reported.insert((hour, c.key[1].clone()), int(&after[1]));
        }
    }
    (shown, reported)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Issue #22: `quality_hourly`'s counts are expectations of the data-quality
    /// mechanism — per hour, the failures of `null events`, `out-of-range events`,
    /// `malformed events` and `duplicate events` (record kinds), `out-of-order events` and
    /// `unzoned events` (flags its sessions revise) equal the view's counts (the last
    /// before the row's 30 days end), on 1 and 2 workers. The future event is left
    /// out (it moves stream time 60 days on, so the view's rows of earlier hours end while
    /// the report keeps them), and so are hours before 2026 (a record with no readable `ts`
    /// counts at its append time, epoch 0 here, whose view row has ended already).
    #[test]
    fn quality_hourly_kinds_are_the_expectations_failures(a in stream(0), b in stream(1)) {
        let present = |batches: &[Vec<Item>]| -> Vec<Vec<Item>> {
            let keep = |i: &&Item| !matches!(i, Item::Event(e) if e.id.ends_with("-future"));
            batches.iter().map(|b| b.iter().filter(keep).cloned().collect()).collect()
        };
        let (a, b) = (present(&a), present(&b));
        for per_worker in [vec![common::payloads(&a)], vec![common::payloads(&a), common::payloads(&b)]] {
            let make: MakeFamily = Arc::new(checked_reading);
            let (changes, _) = run_family(make, per_worker, NOW, options(), Some(vec![metadata()]));
            let (shown, reported) = quality_counts(&changes);
            let columns = [
                (0, "null events"),
                (1, "duplicate events"),
                (2, "out-of-order events"),
                (3, "out-of-range events"),
                (4, "malformed events"),
                (5, "unzoned events"),
            ];
            let hours: BTreeSet<String> = (shown.keys().map(|(h, _)| h.clone()))
                .chain(reported.keys().map(|(h, _)| h.clone()))
                .filter(|h| h.as_str() >= "2026")
                .collect();
            for h in &hours {
                for (column, name) in columns {
                    let view = shown.get(&(h.clone(), column)).copied().unwrap_or(0);
                    let report = reported.get(&(h.clone(), name.to_string())).copied().unwrap_or(0);
                    prop_assert_eq!(view, report, "hour {}, {}", h, name);
                }
            }
        }
    }
}
