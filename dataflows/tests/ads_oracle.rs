//! The ads outputs, as the dataflow writes them, against a naive recomputation from the
//! definitions of DESIGN §5.3 (attribution, closed windows and defense values, the campaign
//! view, budgets with alerts and syncs, quality scores) and the time rules of DESIGN §3, on
//! random streams with duplicates, reordering, late, too-late and invalid records; 1 and 2
//! workers; and a budget raised while the stream runs.

mod common;

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::contract::event::EventId;
use tidemark_dataflows::contract::table::{TickChanges, Value};
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::Tick;

use common::ads_model::*;
use common::{on_topic, run_with_dimension, run_with_table_changes, state_at};

const BASE: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const NOW: u64 = BASE + 60 * DAY;
const QUALITY_TOPIC: &str = "quality-score-updates";
/// Hours (after BASE) around which events cluster: UTC and Seoul (15:00 UTC) midnights.
const SLOTS: [u64; 9] = [0, 1, 14, 15, 23, 24, 25, 39, 47];
const CATEGORIES: [&str; 3] = ["cat-a", "cat-a", "cat-b"];

fn budgets() -> Vec<BudgetRow> {
    vec![
        BudgetRow {
            campaign: "c0".into(),
            advertiser: "adv0".into(),
            daily: 3_000,
            zone: "UTC".into(),
        },
        BudgetRow {
            campaign: "c1".into(),
            advertiser: "adv1".into(),
            daily: 5_000,
            zone: "Asia/Seoul".into(),
        },
    ]
}

fn rows(budgets: &[BudgetRow]) -> Vec<Vec<String>> {
    budgets
        .iter()
        .map(|b| {
            vec![
                b.campaign.clone(),
                b.advertiser.clone(),
                b.daily.to_string(),
                b.zone.clone(),
            ]
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Ev {
    id: String,
    read: AdRead,
}

impl Ev {
    fn new(id: String, ts: u64, act: Act, device: usize, ad: usize, placement: &str) -> Self {
        Ev {
            read: AdRead {
                id: EventId::of(&id).0,
                ts,
                act,
                campaign: format!("c{ad}"),
                placement: placement.into(),
                category: CATEGORIES[ad].into(),
                device: format!("d{device}"),
                ad: format!("a{ad}"),
                // two per campaign: one without a budget shows its day's greatest
                advertiser: format!("adv{ad}-{}", device % 2),
            },
            id,
        }
    }

    fn payload_bytes(&self) -> Vec<u8> {
        let r = &self.read;
        if let Act::Quality {
            product,
            score,
            previous,
            category,
            reason,
            effective_from,
        } = &r.act
        {
            let v = json!({"event_id": self.id, "timestamp": iso(r.ts), "product_id": product,
                "category": category, "quality_score": score, "previous_score": previous,
                "update_reason": reason, "effective_from": iso(*effective_from)});
            return on_topic(QUALITY_TOPIC, &serde_json::to_vec(&v).unwrap());
        }
        let mut v = json!({"event_id": self.id, "timestamp": iso(r.ts), "device_id": r.device,
            "ad_id": r.ad, "campaign_id": r.campaign, "advertiser_id": r.advertiser,
            "product_id": "p", "placement": r.placement, "category": r.category, "bid_price": 1500});
        let o = v.as_object_mut().unwrap();
        let t = match r.act {
            Act::Impression => "IMPRESSION",
            Act::Click { price } => {
                o.insert("actual_price".into(), json!(price));
                "CLICK"
            }
            Act::Conversion { revenue } => {
                o.insert("revenue_amount".into(), json!(revenue));
                o.insert("order_id".into(), json!(format!("o-{}", self.id)));
                "CONVERSION"
            }
            Act::Quality { .. } => unreachable!(),
        };
        o.insert("event_type".into(), json!(t));
        on_topic("ad-events", &serde_json::to_vec(&v).unwrap())
    }
}

type Item = common::Item<Ev>;

/// Insertion ticks, too-late and dedup, simulated per worker as ingest does them.
fn accepted(batches: &[Vec<Item>]) -> Vec<(AdRead, Tick)> {
    let (mut s, mut closed_at) = (0u64, None::<Tick>);
    let mut at = [0u64; 2];
    let mut first: HashMap<String, Tick> = HashMap::new();
    let mut out = Vec::new();
    for batch in batches {
        let valid: Vec<&Ev> = batch
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) if e.read.ts <= NOW + MINUTE => Some(e),
                _ => None,
            })
            .collect();
        if valid.is_empty() {
            closed_at = Some(s);
            continue;
        }
        let max_ts = valid.iter().map(|e| e.read.ts).max().unwrap();
        let tick = s.max(max_ts).max(closed_at.map_or(0, |c| c + 1));
        s = tick;
        for e in valid {
            // too late by the stream time at the record: its topic's (partition's) largest
            // event time up to it
            let quality = matches!(e.read.act, Act::Quality { .. });
            let at = &mut at[usize::from(quality)];
            *at = (*at).max(e.read.ts);
            if too_late(e.read.ts, *at) || first.contains_key(&e.id) {
                continue;
            }
            first.insert(e.id.clone(), tick);
            out.push((e.read.clone(), tick));
        }
        closed_at = Some(s);
    }
    out
}

/// Every tick at which some output may change, and the tick before it.
const ORACLE: common::Oracle = common::Oracle {
    base: BASE,
    tolerance: 1e-9,
};

fn checkpoints(events: &[(AdRead, Tick)]) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = events.iter().map(|(_, t)| *t).collect();
    for (e, _) in events {
        let ts = e.ts;
        let mut due = vec![
            ceil(ts + HOUR, SECOND),
            ceil(ts + DAY, MINUTE),
            ceil(ts + 1, SYNC),
        ];
        for length in [METRICS, DEFENSE] {
            let start = ts - ts % length;
            due.push(start + length + LATENESS);
            due.push(start + length + LATENESS + HOUR);
            due.push(ceil(start + length + HORIZON, MINUTE));
        }
        for zone in ["UTC", "Asia/Seoul"] {
            due.push(local_day(ts, zone).1 + DAY);
        }
        if let Act::Quality { effective_from, .. } = &e.act {
            due.push(*effective_from);
            due.push(ceil((*effective_from).max(ts) + QUALITY_RETENTION, MINUTE));
        }
        for x in due {
            at.insert(x);
            at.insert(x - 1);
        }
    }
    if let Some(last) = at.iter().next_back().copied() {
        at.insert(last + 40 * DAY);
    }
    at
}

/// The model's state at every checkpoint, in order, its alerts stamped with their versions.
fn recounts(events: &[(AdRead, Tick)]) -> Vec<(Tick, common::ads_model::State)> {
    let mut versions = Versions::default();
    let ticks = checkpoints(events);
    ticks
        .into_iter()
        .map(|at| {
            let mut want = recount(events, &budgets(), at);
            versions.stamp(&mut want);
            (at, want)
        })
        .collect()
}

fn placement() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["HOME", "CATEGORY", "PRODUCT_DETAIL", "SEARCH"])
}

/// Events clustered around day boundaries over two days, arriving shuffled in batches:
/// on time, hours late (re-emitting closed windows), 30 h late (mostly too late),
/// duplicated; conversions exactly 24 h after a click; invalid records and one from the future.
fn stream(worker: usize) -> impl Strategy<Value = Vec<Vec<Item>>> {
    let event = (
        0..10u8,
        0..SLOTS.len(),
        0..1_200u64,
        (0..3usize, 0..3usize, placement()),
        (1..20i64, 0..3u8, 0..3usize),
    );
    (
        prop::collection::vec(event, 1..45),
        prop::collection::vec(0..4usize, 0..3),
        prop::collection::vec(1..6usize, 1..6),
        any::<u64>(),
    )
        .prop_map(move |(events, bad, cuts, seed)| {
            let mut next = common::draws(seed);
            let mut timeline: Vec<(u64, Item)> = Vec::new();
            let mut clicks: Vec<(u64, usize, usize)> = Vec::new();
            for (i, (kind, slot, jitter_s, (device, ad, place), (amount, lateness, product))) in
                events.into_iter().enumerate()
            {
                let id = format!("w{worker}-{i}");
                // on whole 5-minute boundaries now and then
                let jitter = if jitter_s % 7 == 0 { (jitter_s % 4) * METRICS } else { jitter_s * SECOND + i as u64 };
                let mut ts = BASE + SLOTS[slot] * HOUR + jitter;
                let act = match kind {
                    0..=3 => Act::Impression,
                    4..=6 => {
                        clicks.push((ts, device, ad));
                        Act::Click { price: amount * 100 }
                    }
                    7 | 8 => {
                        if kind == 8 && !clicks.is_empty() {
                            // exactly 24 h after an earlier click, or a millisecond more
                            let (t, d, a) = clicks[next(clicks.len() as u64) as usize];
                            ts = t + DAY + next(2);
                            let ev = Ev::new(id, ts, Act::Conversion { revenue: amount * 1_000 }, d, a, place);
                            timeline.push((ts, Item::Event(ev)));
                            continue;
                        }
                        Act::Conversion { revenue: amount * 1_000 }
                    }
                    _ => Act::Quality {
                        product: format!("p{product}"),
                        score: amount as f64 / 2.0,
                        previous: (amount % 3 != 0).then(|| amount as f64 / 4.0),
                        category: "cat-a".into(),
                        reason: "PERFORMANCE_IMPROVEMENT".into(),
                        effective_from: ts + [0, 10 * MINUTE, 2 * HOUR][product],
                    },
                };
                let ev = Ev::new(id, ts, act, device, ad, place);
                let arrival = match lateness {
                    0 => ts + next(8) * HOUR,
                    1 => ts + 30 * HOUR,
                    _ => ts,
                };
                if next(6) == 0 {
                    timeline.push((arrival + next(3) * HOUR, Item::Event(ev.clone())));
                }
                timeline.push((arrival, Item::Event(ev)));
            }
            for (j, kind) in bad.into_iter().enumerate() {
                let ts = BASE + next(2 * DAY);
                let head = format!(r#""event_id":"bad-{worker}-{j}","timestamp":"{}","device_id":"d0","ad_id":"a0","campaign_id":"c0","advertiser_id":"adv","category":"cat-a""#, iso(ts));
                let payload = match kind {
                    0 => format!(r#"{{{head},"event_type":"CLICK","placement":"HOME","actual_price":-1}}"#),
                    1 => format!(r#"{{{head},"event_type":"IMPRESSION","placement":"SIDEBAR"}}"#),
                    2 => format!(r#"{{{head},"event_type":"VIEW","placement":"HOME"}}"#),
                    _ => "{\"timestamp\":".to_string(),
                };
                timeline.push((ts, Item::Bad(on_topic("ad-events", payload.as_bytes()))));
            }
            let future = Ev::new(format!("w{worker}-future"), NOW + 120_000, Act::Impression, 0, 0, "HOME");
            timeline.push((BASE + DAY, Item::Event(future)));
            common::in_batches(timeline, &cuts)
        })
}

fn options() -> IngestOptions {
    IngestOptions {
        dedup_horizon_ms: u64::MAX / 4,
        ..IngestOptions::default()
    }
}

fn run(batches: Vec<Vec<Vec<Vec<u8>>>>) -> Vec<TickChanges> {
    run_with_dimension("ads", batches, NOW, options(), Some(rows(&budgets()))).0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(batches in stream(0)) {
        let changes = run(vec![common::payloads(&batches)]);
        let events = accepted(&batches);
        for (at, want) in recounts(&events) {
            ORACLE.check(&state_at(&changes, at), &want, at)?;
        }
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in stream(0), b in stream(1)) {
        let changes = run(vec![common::payloads(&a), common::payloads(&b)]);
        let mut events = accepted(&a);
        events.extend(accepted(&b));
        for (at, want) in recounts(&events) {
            ORACLE.check(&state_at(&changes, at), &want, at)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A budget raised (or its zone moved) while the stream runs: at every tick every
    /// output agrees with the old table or the new one, once new always new, and new from
    /// the last batch on; a raise above the spend lifts the pause.
    #[test]
    fn a_budget_change_moves_the_budget_outputs_at_once(batches in stream(0), raise in 1..4i64, move_zone in any::<bool>()) {
        let old = budgets();
        let mut new = old.clone();
        new[0].daily *= raise * 10;
        if move_zone {
            new[0].zone = "America/New_York".into();
        }
        let (changes, _) = run_with_table_changes(
            "ads", vec![common::payloads(&batches)], NOW, options(), Some(vec![rows(&old), rows(&new)]),
        );
        let events = accepted(&batches);
        let last_ids: BTreeSet<u128> = batches.last().into_iter().flatten().filter_map(|i| match i {
            Item::Event(e) => Some(e.read.id),
            _ => None,
        }).collect();
        let last_batch = events.iter().find(|(e, _)| last_ids.contains(&e.id)).map(|(_, t)| *t);
        let mut switched = false;
        for at in checkpoints(&events) {
            // which tick the new table reached decides which versions the alerts went out
            // with: the contents are compared here, the versions by the tests above
            let got = unversioned(state_at(&changes, at));
            let (was, now) = (recount(&events, &old, at), recount(&events, &new, at));
            let (is_old, is_new) = (ORACLE.agrees(&got, &was), ORACLE.agrees(&got, &now));
            prop_assert!(is_old || is_new, "at {at}: neither budget table: {got:?}\nold {was:?}\nnew {now:?}");
            if switched || last_batch.is_some_and(|t| at >= t) {
                prop_assert!(is_new, "at {at}: the new budget table holds");
            }
            switched |= is_new && !is_old;
        }
    }
}

/// `state` with the alerts' versions taken off, as `recount` leaves them.
fn unversioned(mut state: common::ads_model::State) -> common::ads_model::State {
    for ((table, _), values) in state.iter_mut() {
        if matches!(*table, BUDGET_EVENTS | BUDGET_HISTORY) {
            let n = values.len() - VERSION_FIELDS;
            values[n..].fill(Value::Null);
        }
    }
    state
}

fn click(id: &str, ts: u64, device: usize, ad: usize, placement: &str, price: i64) -> Item {
    Item::Event(Ev::new(
        id.into(),
        ts,
        Act::Click { price },
        device,
        ad,
        placement,
    ))
}
fn conversion(id: &str, ts: u64, device: usize, ad: usize) -> Item {
    Item::Event(Ev::new(
        id.into(),
        ts,
        Act::Conversion { revenue: 9_000 },
        device,
        ad,
        "HOME",
    ))
}

/// The rows of table `t` at `at`.
fn table(changes: &[TickChanges], t: u8, at: Tick) -> Vec<(Vec<String>, Vec<Value>)> {
    state_at(changes, at)
        .into_iter()
        .filter(|((table, _), _)| *table == t)
        .map(|((_, k), v)| (k, v))
        .collect()
}

/// Attribution's edges, spelled out: the latest click wins, a click exactly 24 h before
/// counts and one a millisecond earlier does not, a click after the conversion does not,
/// and a late click re-attributes a conversion whose window had closed, re-emitting the
/// window's record with the same key and corrected counts.
#[test]
fn attribution_edges_and_a_late_click_re_emits_the_window() {
    let t0 = BASE + 2 * HOUR; // a 5-minute window start
    let batches = vec![
        vec![
            click("k1", t0 - DAY, 0, 0, "HOME", 100), // exactly 24 h before c1
            click("k2", t0 - DAY - 1, 1, 0, "SEARCH", 100), // 24 h + 1 ms before c2
            click("k3", t0 - HOUR, 2, 0, "SEARCH", 100), // older click of d2
            click("k4", t0 - MINUTE, 2, 0, "CATEGORY", 100), // latest click of d2 wins
        ],
        vec![
            conversion("c1", t0, 0, 0),
            conversion("c2", t0 + 1, 1, 0),
            conversion("c3", t0 + 2, 2, 0),
            conversion("c4", t0 + 3, 0, 1), // its click comes after it
            click("k5", t0 + 4, 0, 1, "HOME", 100),
        ],
        // stream time passes the window's close
        vec![Item::Event(Ev::new(
            "i1".into(),
            t0 + HOUR,
            Act::Impression,
            0,
            2,
            "HOME",
        ))],
        // a late click makes c2 attributable, after its window's record went out
        vec![click("k6", t0 - HOUR, 1, 0, "HOME", 100)],
    ];
    let changes = run(vec![common::payloads(&batches)]);
    let events = accepted(&batches);
    let last = events.iter().map(|(_, t)| *t).max().unwrap();
    // the model agrees at every tick
    for (at, want) in recounts(&events) {
        let got = state_at(&changes, at);
        assert!(ORACLE.agrees(&got, &want), "at {at}: {got:?} vs {want:?}");
    }
    let window = |placement: &str, at: Tick| {
        table(&changes, PERFORMANCE, at)
            .into_iter()
            .find(|(k, _)| k[0] == "c0" && k[1] == placement && k[4] == "CTR" && k[3] == iso(t0))
            .map(|(_, v)| v[4].clone())
    };
    let before_late_click = last - 1;
    // c1 → k1 (HOME), c3 → k4 (CATEGORY); c2 unattributed; c4 unattributed
    assert_eq!(window("HOME", before_late_click), Some(Value::Int(1)));
    assert_eq!(window("CATEGORY", before_late_click), Some(Value::Int(1)));
    assert_eq!(window("SEARCH", before_late_click), None);
    let campaign = |at: Tick| {
        table(&changes, CAMPAIGN, at)
            .into_iter()
            .find(|(k, _)| k[0] == "c0")
            .unwrap()
            .1
    };
    assert_eq!(campaign(before_late_click).last(), Some(&Value::Int(1))); // c2 unattributed
                                                                          // then c2 → k6 (HOME): the same record again, corrected
    assert_eq!(window("HOME", last), Some(Value::Int(2)));
    assert_eq!(campaign(last).last(), Some(&Value::Int(0)));
    let emitted_again = changes.iter().filter(|t| t.tick == last).any(|t| {
        t.changes
            .iter()
            .any(|c| c.table == PERFORMANCE && c.key[1] == "HOME" && c.key[3] == iso(t0))
    });
    assert!(
        emitted_again,
        "the window's record goes out again at the late click's tick"
    );
}

/// Thresholds are crossed once per campaign-day, at the click that crosses them, and a
/// day is the campaign's day: c1 (Asia/Seoul) starts a new day at 15:00 UTC.
#[test]
fn budget_thresholds_cross_once_per_campaign_day_in_its_zone() {
    let seoul_midnight = BASE + 15 * HOUR;
    let mut batches = Vec::new();
    // c1's budget is 5,000: 9 clicks of 500 before Seoul's midnight (4,500 = 90 %)
    for i in 0..9 {
        batches.push(vec![click(
            &format!("a{i}"),
            seoul_midnight - HOUR + i * MINUTE,
            0,
            1,
            "HOME",
            500,
        )]);
    }
    // the next day starts from zero: 2 clicks
    for i in 0..2 {
        batches.push(vec![click(
            &format!("b{i}"),
            seoul_midnight + i * MINUTE,
            0,
            1,
            "HOME",
            3_000,
        )]);
    }
    let changes = run(vec![common::payloads(&batches)]);
    let events = accepted(&batches);
    for (at, want) in recounts(&events) {
        let got = state_at(&changes, at);
        assert!(ORACLE.agrees(&got, &want), "at {at}: {got:?} vs {want:?}");
    }
    let end = events.iter().map(|(_, t)| *t).max().unwrap();
    let records: Vec<Vec<String>> = table(&changes, BUDGET_EVENTS, end)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let alerts: Vec<&Vec<String>> = records.iter().filter(|k| k[2] != "SYNC").collect();
    assert_eq!(
        alerts,
        vec![
            &vec!["c1".to_string(), "20260101".into(), "90_PERCENT".into()],
            &vec!["c1".to_string(), "20260102".into(), "90_PERCENT".into()],
            &vec!["c1".to_string(), "20260102".into(), "95_PERCENT".into()],
            &vec!["c1".to_string(), "20260102".into(), "EXHAUSTED".into()],
        ]
    );
    // every alert went out once: one insertion per key over the whole run
    let mut emitted: HashMap<Vec<String>, usize> = HashMap::new();
    for t in &changes {
        for c in t
            .changes
            .iter()
            .filter(|c| c.table == BUDGET_EVENTS && c.key[2] != "SYNC" && c.after.is_some())
        {
            *emitted.entry(c.key.clone()).or_default() += 1;
        }
    }
    assert!(emitted.values().all(|n| *n == 1), "{emitted:?}");
}

/// An alert goes out once; a late click that moves its crossing sends version 2, naming
/// the `timestamp` it corrects; a late click after the crossing, and the same clicks
/// delivered again, send nothing. A campaign without a budget row shows no budget.
#[test]
fn an_alert_is_sent_once_and_a_correction_says_what_it_corrects() {
    let t = BASE + 2 * HOUR;
    let batches = vec![
        // c0's budget is 3,000: crossed (all three thresholds) by k2
        vec![
            click("k1", t + 10 * MINUTE, 0, 0, "HOME", 1_500),
            click("k2", t + 20 * MINUTE, 0, 0, "HOME", 1_500),
        ],
        vec![Item::Event(Ev::new(
            "i1".into(),
            t + HOUR,
            Act::Impression,
            0,
            0,
            "HOME",
        ))],
        // late, before the crossing: it moves to k1
        vec![click("k0", t + 5 * MINUTE, 1, 0, "HOME", 1_500)],
        // late, after the crossing: the crossing stays
        vec![click("k3", t + 30 * MINUTE, 1, 0, "HOME", 100)],
        // the same clicks again
        vec![
            click("k0", t + 5 * MINUTE, 1, 0, "HOME", 1_500),
            click("k1", t + 10 * MINUTE, 0, 0, "HOME", 1_500),
        ],
        // c2 has no budget row
        vec![click("n1", t + 2 * HOUR, 2, 2, "HOME", 700)],
    ];
    let changes = run(vec![common::payloads(&batches)]);
    let events = accepted(&batches);
    for (at, want) in recounts(&events) {
        let got = state_at(&changes, at);
        assert!(ORACLE.agrees(&got, &want), "at {at}: {got:?} vs {want:?}");
    }
    let sent: Vec<Vec<Value>> = changes
        .iter()
        .flat_map(|t| &t.changes)
        .filter(|c| c.table == BUDGET_EVENTS && c.key[2] == "EXHAUSTED")
        .filter_map(|c| c.after.clone())
        .collect();
    let fields = |v: &Vec<Value>| (v[1].clone(), v[9].clone(), v[10].clone());
    let text = |ms: u64| Value::Text(iso(ms));
    assert_eq!(
        sent.iter().map(fields).collect::<Vec<_>>(),
        vec![
            (text(t + 20 * MINUTE), Value::Int(1), Value::Null),
            (text(t + 10 * MINUTE), Value::Int(2), text(t + 20 * MINUTE)),
        ]
    );
    let end = events.iter().map(|(_, t)| *t).max().unwrap();
    let budget = table(&changes, BUDGET, end);
    let (_, unbudgeted) = budget.iter().find(|(k, _)| k[0] == "c2").unwrap();
    // advertiser, daily_budget, spent_amount, remaining_budget, spent_ratio, clicks, paused
    assert_eq!(
        unbudgeted,
        &vec![
            Value::Text("adv2-0".into()),
            Value::Null,
            Value::Int(700),
            Value::Null,
            Value::Null,
            Value::Int(1),
            Value::Int(0),
        ]
    );
}

impl common::Payload for Ev {
    fn payload(&self) -> Vec<u8> {
        self.payload_bytes()
    }
}
