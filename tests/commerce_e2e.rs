//! The commerce family end to end: `generate --dataflow commerce` (1 % invalid, duplicates,
//! disorder, 83 minutes of event time) → a real 4-partition topic → `run --exit-at-end` on
//! 2 workers → real Redis and
//! Postgres hold exactly the model's rows (`dataflows/tests/common/commerce_model.rs`),
//! and every invalid record is in the DLQ.

mod common;

#[path = "../dataflows/tests/common/commerce_model.rs"]
mod model;

use std::collections::{BTreeMap, HashSet};

use common::*;
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::families::commerce::decode::decode;
use tidemark_dataflows::families::commerce::generate;

type Rows = BTreeMap<String, BTreeMap<String, String>>;

/// The model's input from the generated lines: the first copy of each valid event (the
/// traffic is at most 15 minutes out of order, so none is too late), and the number of
/// invalid lines.
fn model_input(text: &str) -> (Vec<model::Event>, usize) {
    let (mut events, mut invalid, mut seen) = (Vec::new(), 0, HashSet::new());
    for line in text.lines() {
        let Ok(e) = decode(line.as_bytes()) else {
            invalid += 1;
            continue;
        };
        if !seen.insert(e.id) {
            continue;
        }
        events.push(model::Event {
            user: e.event.user.0,
            action: e.event.action.as_str(),
            item: e.event.item.map(|i| (i.product.0, i.price.0)),
            ts: e.ts,
        });
    }
    (events, invalid)
}

/// The model's rows of `table` as Redis-style hashes (`feat:{ns}:{key}`), nulls absent.
fn expected(state: &model::State, table: u8, ns: &str, fields: &[&str]) -> Rows {
    state
        .iter()
        .filter(|((t, _), _)| *t == table)
        .map(|((_, key), values)| {
            let row = fields
                .iter()
                .zip(values)
                .filter(|(_, v)| **v != Value::Null)
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect();
            (format!("feat:{ns}:{}", key.join(":")), row)
        })
        .collect()
}

fn without_bookkeeping(rows: Rows) -> Rows {
    rows.into_iter()
        .map(|(k, f)| {
            (
                k,
                f.into_iter().filter(|(n, _)| !n.starts_with('_')).collect(),
            )
        })
        .collect()
}

/// 20,000 generated records at 4 per second of event time (83 minutes: the 10-minute,
/// 30-minute and 1-hour windows expire within the run) in a fresh 4-partition topic, and
/// the same records as JSON lines.
fn commerce_stream() -> (String, String) {
    let topic = fresh_topic("e2e-commerce", 4);
    let file = std::env::temp_dir().join(format!("tidemark-commerce-{}.jsonl", std::process::id()));
    let gen = [
        "generate",
        "--dataflow",
        "commerce",
        "--events",
        "20000",
        "--seed",
        "11",
        "--rate",
        "4",
        "--invalid",
        "0.01",
    ];
    tidemark(
        &[&gen[..], &["--out", file.to_str().unwrap()]].concat(),
        &[],
    );
    tidemark(&[&gen[..], &["--topic", &topic]].concat(), &[]);
    (topic, std::fs::read_to_string(&file).unwrap())
}

#[test]
fn kafka_to_redis_and_postgres_matches_the_model() {
    let (topic, text) = commerce_stream();
    let (events, invalid) = model_input(&text);
    let span =
        events.iter().map(|e| e.ts).max().unwrap() - events.iter().map(|e| e.ts).min().unwrap();
    assert!(
        span > 65 * 60_000,
        "the traffic spans more than an hour: {span} ms"
    );
    let (redis, pg) = (fresh_redis(12), fresh_pg("tm_commerce"));
    // the catalog, as `generate` fills it
    let out = tidemark(
        &[
            "generate",
            "--dataflow",
            "commerce",
            "--events",
            "0",
            "--out",
            "/dev/null",
        ],
        &[("TIDEMARK_PG", pg.as_str())],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("filled products"));
    let catalog: Vec<(String, String)> = generate::catalog()
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let dlq = format!("{topic}-dlq");
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
        ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
    ];
    let group = format!("{topic}-g");
    let extra = ["--dataflow", "commerce", "--workers", "2"];
    run_to_end(&topic, "commerce1", &group, &extra, &env);
    let at: u64 = redis_get(&redis, "tidemark:commerce1:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let newest = events.iter().map(|e| e.ts).max().unwrap();
    assert!(
        (newest..newest + 100).contains(&at),
        "stream time {at}, newest {newest}"
    );
    let inserted: Vec<&model::Event> = events.iter().collect();
    let state = model::features(&inserted, &catalog, at);
    let shopper = [
        "views_10m",
        "avg_view_price_10m",
        "carts_30m",
        "purchases_24h",
        "top_category_30m",
    ];
    let product = [
        "views_1h",
        "carts_1h",
        "purchases_1h",
        "views_24h",
        "carts_24h",
        "purchases_24h",
        "view_to_cart_24h",
        "cart_to_purchase_24h",
    ];
    let mut want = expected(&state, model::SHOPPER, "shopper", &shopper);
    want.extend(expected(
        &state,
        model::PRODUCT_STATS,
        "product_stats",
        &product,
    ));
    assert!(
        want.len() > 200,
        "a meaningful number of rows: {}",
        want.len()
    );
    assert!(
        want.values().any(|r| !r.contains_key("avg_view_price_10m")),
        "a shopper without views in 10 minutes"
    );
    assert!(
        want.values().any(|r| r.contains_key("top_category_30m")),
        "shoppers with a top category"
    );
    let got = without_bookkeeping(redis_features(&redis));
    assert_eq!(got.len(), want.len(), "redis rows");
    assert_eq!(got, want, "redis");
    let mut pg_rows = pg_features(&pg, "shopper", &["user_id"]);
    pg_rows.extend(pg_features(&pg, "product_stats", &["product_id"]));
    assert_eq!(without_bookkeeping(pg_rows), want, "postgres");
    assert_eq!(
        dead_letters(&dlq).len(),
        invalid,
        "every invalid record in the DLQ"
    );
}
