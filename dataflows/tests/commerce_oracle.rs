//! The commerce views, as the dataflow writes them, against a naive recount from the
//! definitions (DESIGN §5.4, the README's commerce section) and the time rules of DESIGN
//! §3, on random streams with duplicates, disorder, late, too-late and invalid records;
//! on 1 and 2 workers.

mod common;

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use serde_json::json;
use tidemark_dataflows::contract::event::EventId;
use tidemark_dataflows::ingest::IngestOptions;
use tidemark_dataflows::Tick;

use common::commerce_model::{self as model, expiry, DAY, HOUR, MINUTE};
use common::{run_with_dimension, run_with_table_changes, state_at};

const BASE: u64 = 1_767_225_600_000; // 2026-01-01
const NOW: u64 = BASE + 10 * DAY;
const USERS: [&str; 3] = ["u0", "u1", "u:2"];
const PRODUCTS: [&str; 4] = ["p0", "p1", "p2", "p3"];
const ACTIONS: [&str; 6] = [
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "click",
    "search",
];
/// Prices as written (the model reads them in hundredths, rounded half up).
const PRICES: [(&str, i64); 4] = [
    ("19.995", 2_000),
    ("0", 0),
    ("89000", 8_900_000),
    ("4.5", 450),
];

/// The catalog: two categories, a tie possible, `p1` in two rows (a table without its key:
/// the smallest category counts) and `p3` in a row without a category (in none).
const CATALOG: [(&str, &str); 5] = [
    ("p0", "shoes"),
    ("p1", "toys"),
    ("p2", "shoes"),
    ("p1", "books"),
    ("p3", ""),
];

fn catalog(rows: &[(&str, &str)]) -> Vec<(String, String)> {
    rows.iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

fn table(rows: &[(&str, &str)]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|(p, c)| vec![p.to_string(), c.to_string()])
        .collect()
}

fn run(batches: Vec<Vec<Vec<Vec<u8>>>>) -> Vec<tidemark_dataflows::contract::table::TickChanges> {
    run_with_dimension("commerce", batches, NOW, options(), Some(table(&CATALOG))).0
}

const ORACLE: common::Oracle = common::Oracle {
    base: BASE,
    tolerance: 1e-12,
};

#[derive(Clone, Debug)]
struct Ev {
    id: String,
    read: model::Event,
    /// The price as written; none on some clicks and searches that name a product.
    price: Option<&'static str>,
}

impl common::Payload for Ev {
    fn payload(&self) -> Vec<u8> {
        let r = &self.read;
        let [device, referrer, utm] = &r.context;
        let mut v = json!({"event_id": self.id, "user_id": r.user, "session_id": "s",
            "event_type": r.action, "timestamp": r.ts,
            "context": {"device": {"type": device}, "user": {"login_status": true},
                "page": {"referrer": referrer}}});
        if let Some(utm) = utm {
            v["context"]["campaign"] = json!({"utm_source": utm});
        }
        if let Some((product, _)) = &r.item {
            let text = match self.price {
                Some(price) => format!(r#"{{"product_id":"{product}","price":{price}}}"#),
                None => format!(r#"{{"product_id":"{product}"}}"#),
            };
            v["properties"] = serde_json::from_str(&text).unwrap();
        }
        serde_json::to_vec(&v).unwrap()
    }
}

type Item = common::Item<Ev>;

/// Insertion ticks, too-late and dedup, simulated per worker (one partition each), as in
/// the search oracle: decided by the stream time at the record.
fn accepted(batches: &[Vec<Item>]) -> Vec<(model::Event, Tick)> {
    let (mut s, mut closed_at) = (0u64, None::<Tick>);
    let mut at = 0u64;
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
            at = at.max(e.read.ts);
            // too late once its longest window (a day) has passed
            if expiry(e.read.ts, DAY) <= at || first.contains_key(&e.id) {
                continue;
            }
            first.insert(e.id.clone(), at);
            out.push((e.read.clone(), tick));
        }
        closed_at = Some(s);
    }
    out
}

/// Every insertion tick, the ticks at and before each expiry, and after all expired.
fn checkpoints(events: &[(model::Event, Tick)]) -> BTreeSet<Tick> {
    let mut at: BTreeSet<Tick> = events.iter().map(|(_, t)| *t).collect();
    for (e, _) in events {
        // every expiry, and the 10-minute mark of a cart
        for length in [10 * MINUTE, 30 * MINUTE, HOUR, DAY] {
            at.insert(expiry(e.ts, length));
            at.insert(expiry(e.ts, length) - 1);
        }
    }
    if let Some(last) = at.iter().next_back().copied() {
        at.insert(last + 2 * DAY);
    }
    at
}

fn recount(
    events: &[(model::Event, Tick)],
    catalog: &[(String, String)],
    at: Tick,
) -> common::State {
    let inserted: Vec<&model::Event> = events
        .iter()
        .filter(|(_, t)| *t <= at)
        .map(|(e, _)| e)
        .collect();
    model::features(&inserted, catalog, at)
}

/// Events in bursts over three days (so every window opens and expires), each possibly
/// late by minutes, hours or more than a day (too late), some repeated; invalid records
/// of each kind and one from the future.
fn stream(worker: usize) -> impl Strategy<Value = Vec<Vec<Item>>> {
    // views and carts most often, so runs of views, carts and their marks are common
    let event = (
        prop::sample::select(vec![0usize, 0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 5]),
        (0..USERS.len(), 0..PRODUCTS.len(), 0..PRICES.len()),
        (0u64..3, 0u64..6, 0u64..2_400_000),
        (0..8u8, any::<bool>()),
    );
    // a comparison's makings: views of shoes (and one of books or of an uncategorised
    // product, which may break the run) and two carts, by one shopper, in minutes
    let comparing = (
        0..USERS.len(),
        (0u64..3, 0u64..6, 0u64..2_000_000),
        0..4usize,
        0..8u8,
    );
    (
        prop::collection::vec(event, 1..45),
        prop::collection::vec(0..5usize, 0..4),
        prop::collection::vec(1..6usize, 1..6),
        prop::collection::vec(comparing, 0..3),
    )
        .prop_map(move |(mut events, bad, cuts, comparing)| {
            for (user, (day, burst, ms), odd, late) in comparing {
                // view, view, (odd one,) view, cart, cart: actions of `ACTIONS`
                let mut script = vec![(0, 0), (0, 2)];
                if odd > 1 {
                    script.push((0, odd - 1));
                }
                script.extend([(0, 0), (1, 0), (1, 2)]);
                for (k, (action, product)) in script.into_iter().enumerate() {
                    let ms = ms + k as u64 * 40_000;
                    events.push((action, (user, product, 3), (day, burst, ms), (late, false)));
                }
            }
            let mut timeline: Vec<(u64, Item)> = Vec::new();
            for (i, (action, (user, product, price), (day, burst, ms), (late, dup))) in
                events.into_iter().enumerate()
            {
                let ts = BASE + day * DAY + burst * 4 * HOUR + ms;
                let action = ACTIONS[action];
                let optional = matches!(action, "click" | "search");
                let names_product = i % 5 != 0 || !optional;
                // a click or search naming a product without a price interacts with it
                let priced = !optional || i % 3 != 0;
                let cents = if priced { PRICES[price].1 } else { 0 };
                let item = names_product.then(|| (PRODUCTS[product].to_string(), cents));
                let id = format!("w{worker}-{i}");
                let context = [
                    ["mobile", "desktop"].get(i % 3).map(|d| d.to_string()),
                    (i % 4 != 0).then(|| format!("ref{}.com", i % 2)),
                    (i % 2 == 0).then(|| "instagram".to_string()),
                ];
                let read = model::Event {
                    user: USERS[user].into(), action, item, ts,
                    id: EventId::of(&id).0, context,
                };
                let ev = Ev { id, read, price: priced.then_some(PRICES[price].0) };
                let arrival = match late {
                    0 => ts + 20 * MINUTE,
                    1 => ts + 5 * HOUR,
                    2 => ts + 30 * HOUR,
                    _ => ts,
                };
                if dup {
                    timeline.push((arrival + (i as u64 % 3) * HOUR, Item::Event(ev.clone())));
                }
                timeline.push((arrival, Item::Event(ev)));
            }
            for (j, kind) in bad.into_iter().enumerate() {
                let ts = BASE + j as u64 * DAY;
                let head = format!(r#""event_id":"bad-{worker}-{j}","user_id":"u0","session_id":"s","timestamp":{ts}"#);
                let payload = match kind {
                    0 => format!(r#"{{{head},"event_type":"wishlist"}}"#),
                    1 => format!(r#"{{{head},"event_type":"view","properties":{{"product_id":"p0","price":-1}}}}"#),
                    2 => format!(r#"{{{head},"event_type":"purchase"}}"#),
                    3 => format!(r#"{{{head},"event_type":"search","context":{{"user":{{"login_status":"yes"}}}}}}"#),
                    _ => format!(r#"{{{head},"event_type":"view","properties":{{"#),
                };
                timeline.push((ts, Item::Bad(payload.into_bytes())));
            }
            let id = format!("w{worker}-future");
            let future = Ev {
                read: model::Event {
                    user: "u0".into(), action: "view", item: Some(("p0".into(), 450)),
                    ts: NOW + 2 * MINUTE, id: EventId::of(&id).0, context: Default::default(),
                },
                id,
                price: Some("4.5"),
            };
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_the_recount_at_every_tick(batches in stream(0)) {
        let (changes, counters) = run_with_dimension("commerce", vec![common::payloads(&batches)], NOW, options(), Some(table(&CATALOG)));
        let events = accepted(&batches);
        for at in checkpoints(&events) {
            ORACLE.check(&state_at(&changes, at), &recount(&events, &catalog(&CATALOG), at), at)?;
        }
        prop_assert!(counters.invalid_total() >= 1, "the future-dated event is invalid");
    }

    #[test]
    fn two_workers_match_the_recount_at_every_tick(a in stream(0), b in stream(1)) {
        let changes = run(vec![common::payloads(&a), common::payloads(&b)]);
        let mut events = accepted(&a);
        events.extend(accepted(&b));
        for at in checkpoints(&events) {
            ORACLE.check(&state_at(&changes, at), &recount(&events, &catalog(&CATALOG), at), at)?;
        }
    }

    /// A product re-categorised (and one added) while the stream runs: at every tick the
    /// views agree with the old catalog or the new one, once new always new, and new from
    /// the last batch on.
    #[test]
    fn a_recategorised_product_moves_its_interactions_at_once(batches in stream(0)) {
        let new = [("p0", "shoes"), ("p1", "shoes"), ("p2", "shoes"), ("p3", "audio")];
        let (changes, _) = run_with_table_changes(
            "commerce", vec![common::payloads(&batches)], NOW, options(),
            Some(vec![table(&CATALOG), table(&new)]),
        );
        let events = accepted(&batches);
        let last_ids: BTreeSet<String> = batches.last().into_iter().flatten().filter_map(|i| match i {
            Item::Event(e) => Some(e.id.clone()),
            _ => None,
        }).collect();
        let last_batch = batches.last().and_then(|b| b.iter().find_map(|i| match i {
            Item::Event(e) if last_ids.contains(&e.id) => events.iter().find(|(x, _)| x == &e.read).map(|(_, t)| *t),
            _ => None,
        }));
        let mut switched = false;
        for at in checkpoints(&events) {
            let got = state_at(&changes, at);
            let (was, now) = (recount(&events, &catalog(&CATALOG), at), recount(&events, &catalog(&new), at));
            let (is_old, is_new) = (ORACLE.agrees(&got, &was), ORACLE.agrees(&got, &now));
            prop_assert!(is_old || is_new, "at {}: neither catalog: {:?}", at, got);
            if switched || last_batch.is_some_and(|t| at >= t) {
                prop_assert!(is_new, "at {}: the new catalog holds", at);
            }
            switched |= is_new && !is_old;
        }
    }
}

fn ev(id: &str, user: &str, action: &'static str, product: &str, ts: u64) -> Item {
    let read = model::Event {
        user: user.into(),
        action,
        item: Some((product.into(), 450)),
        ts,
        id: EventId::of(id).0,
        context: [Some("tablet".into()), None, Some(format!("utm-{id}"))],
    };
    Item::Event(Ev {
        id: id.into(),
        read,
        price: Some("4.5"),
    })
}

/// A comparison (three shoe views, two of them carted), a cart whose 10-minute mark
/// passes while no event of its shopper arrives (only time moves), and a purchase that
/// arrives after the mark with an event time before it and clears the risk: the topic's
/// record goes (a tombstone) and `pattern_detected` follows, at every tick as the model.
#[test]
fn a_risk_set_at_its_mark_is_cleared_by_a_late_purchase_and_a_comparison_is_seen() {
    let t = BASE + DAY + 7 * HOUR;
    let batches = vec![
        vec![
            ev("a", "u0", "view", "p0", t),
            ev("b", "u0", "view", "p2", t + MINUTE),
            ev("c", "u0", "view", "p0", t + 2 * MINUTE),
            ev("d", "u0", "add_to_cart", "p0", t + 3 * MINUTE),
            ev("e", "u0", "add_to_cart", "p2", t + 4 * MINUTE),
            ev("f", "u0", "add_to_cart", "p1", t + 5 * MINUTE),
            ev("g", "u0", "purchase", "p0", t + 6 * MINUTE),
            ev("h", "u0", "remove_from_cart", "p2", t + 7 * MINUTE),
        ],
        vec![ev("i", "u1", "view", "p3", t + 20 * MINUTE)],
        vec![ev("j", "u0", "purchase", "p1", t + 12 * MINUTE)],
    ];
    let (changes, _) = run_with_dimension(
        "commerce",
        vec![common::payloads(&batches)],
        NOW,
        options(),
        Some(table(&CATALOG)),
    );
    let events = accepted(&batches);
    assert_eq!(events.len(), 10);
    for at in checkpoints(&events) {
        ORACLE
            .check(
                &state_at(&changes, at),
                &recount(&events, &catalog(&CATALOG), at),
                at,
            )
            .unwrap();
    }
    let shopper = |at: Tick| state_at(&changes, at)[&(model::SHOPPER, vec!["u0".into()])].clone();
    // the tick of the last batch (later ones only expire)
    let last = events.iter().map(|(_, t)| *t).max().unwrap();
    let risk_key = |at: Tick| {
        let mark = (t + 15 * MINUTE).to_string();
        let key = vec![
            "u0".into(),
            "cart_abandonment_risk".into(),
            "p1".into(),
            mark,
        ];
        state_at(&changes, at).get(&(model::PATTERNS, key)).cloned()
    };
    let detected = |at: Tick| shopper(at)[9].clone();
    let text = |s: &str| tidemark_dataflows::contract::table::Value::Text(s.into());
    assert_eq!(detected(t + 7 * MINUTE), text("comparing_products"));
    assert_eq!(risk_key(t + 15 * MINUTE - 1), None, "not before its mark");
    assert!(
        risk_key(t + 15 * MINUTE).is_some(),
        "set at its mark, by time alone"
    );
    assert_eq!(
        detected(t + 15 * MINUTE),
        text("cart_abandonment_risk,comparing_products")
    );
    assert_eq!(risk_key(last), None, "the late purchase cleared it");
    assert_eq!(detected(last), text("comparing_products"));
    let comparison = vec![
        "u0".into(),
        "comparing_products".into(),
        "p0".into(),
        t.to_string(),
    ];
    let record = &state_at(&changes, last)[&(model::PATTERNS, comparison)];
    assert_eq!(record[1], text("shoes"));
    assert_eq!(record[2], text(r#"["p0","p2"]"#));
    assert_eq!(
        shopper(last)[5],
        tidemark_dataflows::contract::table::Value::Int((t + 12 * MINUTE) as i64)
    );
    assert_eq!(
        shopper(last)[8],
        text("utm-j"),
        "the latest event's utm_source"
    );
    let recent = &state_at(&changes, last)[&(model::USER_RECENT, vec!["u0".into()])];
    assert_eq!(recent[0], text(r#"["p1","p2","p0"]"#));
}

/// The random streams do show what the definitions are about: risks set and cleared
/// after their mark, comparisons, recent lists of several products.
#[test]
fn the_random_streams_reach_every_pattern() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut risks, mut cleared_late, mut comparisons, mut long_lists) = (0, 0, 0, 0);
    for _ in 0..48 {
        let batches = stream(0).new_tree(&mut runner).unwrap().current();
        let events = accepted(&batches);
        let mut risky = BTreeSet::new();
        for at in checkpoints(&events) {
            let state = recount(&events, &catalog(&CATALOG), at);
            for ((table, key), values) in &state {
                match (*table, key.get(1).map(String::as_str)) {
                    (model::PATTERNS, Some("cart_abandonment_risk")) => {
                        risks += 1;
                        risky.insert(key.clone());
                    }
                    (model::PATTERNS, _) => comparisons += 1,
                    (model::USER_RECENT, _) if values[0].to_string().matches(',').count() >= 2 => {
                        long_lists += 1
                    }
                    _ => {}
                }
            }
            // a risk gone before its cart left the day: a purchase or removal cleared it
            risky.retain(|key: &Vec<String>| {
                let mark: u64 = key[3].parse().unwrap();
                let gone = !state.contains_key(&(model::PATTERNS, key.clone()));
                if gone && at < mark - 10 * MINUTE + DAY {
                    cleared_late += 1;
                }
                !gone
            });
        }
    }
    assert!(risks > 0 && cleared_late > 0 && comparisons > 0 && long_lists > 0,
        "risks {risks}, cleared after the mark {cleared_late}, comparisons {comparisons}, lists {long_lists}");
}
