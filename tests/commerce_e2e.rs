//! The commerce family end to end: `generate --dataflow commerce` (1 % invalid, duplicates,
//! disorder, 83 minutes of event time) → a real 4-partition topic → `run --exit-at-end` →
//! real Redis and Postgres hold exactly the model's rows
//! (`dataflows/tests/common/commerce_model.rs`): the shopper hashes under seed 003's own
//! key template, the product hashes, the `user_recent` lists (Redis lists, Postgres
//! arrays) and the pattern topic's latest records; every invalid record is in the DLQ.
//! Once uninterrupted on 2 workers, and once stopped at a checkpoint half way and resumed
//! on 1 worker: the same stores.

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
        let c = e.event.context;
        events.push(model::Event {
            user: e.event.user.0.into(),
            action: e.event.action.as_str(),
            item: e.event.item.map(|i| (i.product.0.into(), i.price.0)),
            ts: e.ts,
            id: e.id.0,
            context: [c.device, c.referrer, c.utm_source],
        });
    }
    (events, invalid)
}

/// The model's rows of `table` as Redis-style hashes (`{prefix}:{key}`), nulls absent.
fn expected(state: &model::State, table: u8, prefix: &str, fields: &[&str]) -> Rows {
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
            (format!("{prefix}:{}", key.join(":")), row)
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
/// 30-minute and 1-hour windows expire within the run) as JSON lines.
fn commerce_lines() -> String {
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
        "--out",
        file.to_str().unwrap(),
    ];
    tidemark(&gen, &[]);
    std::fs::read_to_string(&file).unwrap()
}

/// Where one run writes.
struct Stores {
    redis: String,
    pg: String,
    patterns: String,
    dlq: String,
}

impl Stores {
    fn new(db: u8, pg: &str, topic: &str) -> Self {
        let stores = Stores {
            redis: fresh_redis(db),
            pg: fresh_pg(pg),
            patterns: format!("{topic}-patterns-{db}"),
            dlq: format!("{topic}-dlq-{db}"),
        };
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
            &[("TIDEMARK_PG", stores.pg.as_str())],
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("filled products"));
        stores
    }

    /// `run --exit-at-end` as `job` on `workers`, the shopper hashes under seed 003's key.
    fn run(&self, topic: &str, job: &str, workers: &str) {
        let env = [
            ("TIDEMARK_REDIS", self.redis.as_str()),
            ("TIDEMARK_PG", self.pg.as_str()),
            ("TIDEMARK_KAFKA__DLQ_TOPIC", self.dlq.as_str()),
            (
                "TIDEMARK_DATAFLOWS__COMMERCE__PATTERNS_TOPIC",
                self.patterns.as_str(),
            ),
            (
                "TIDEMARK_DATAFLOWS__COMMERCE__SHOPPER_KEY",
                "user_features:{user_id}",
            ),
        ];
        let extra = ["--dataflow", "commerce", "--workers", workers];
        run_to_end(topic, job, &format!("{topic}-{job}"), &extra, &env);
    }

    /// Every stored row: hashes, lists (as their JSON), Postgres rows and the pattern
    /// topic's latest record per key (tombstones remove).
    fn read(&self) -> (Rows, Rows, Rows) {
        let mut c = redis::Client::open(self.redis.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut redis_rows = without_bookkeeping(redis_features(&self.redis));
        let shoppers: Vec<String> = redis::cmd("KEYS")
            .arg("user_features:*")
            .query(&mut c)
            .unwrap();
        let lists: Vec<String> = redis::cmd("KEYS")
            .arg("user_recent:*")
            .query(&mut c)
            .unwrap();
        for key in shoppers {
            let h: BTreeMap<String, String> =
                redis::cmd("HGETALL").arg(&key).query(&mut c).unwrap();
            redis_rows.insert(
                key,
                h.into_iter().filter(|(n, _)| !n.starts_with('_')).collect(),
            );
        }
        for key in lists {
            let items: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(49)
                .query(&mut c)
                .unwrap();
            let json = serde_json::to_string(&items).unwrap();
            redis_rows.insert(key, BTreeMap::from([("product_ids".to_string(), json)]));
        }
        let mut pg_rows = pg_features(&self.pg, "shopper", &["user_id"]);
        pg_rows = pg_rows
            .into_iter()
            .map(|(k, v)| (k.replacen("feat:shopper:", "user_features:", 1), v))
            .collect();
        pg_rows.extend(pg_features(&self.pg, "product_stats", &["product_id"]));
        let mut pg = postgres::Client::connect(&self.pg, postgres::NoTls).unwrap();
        for row in pg
            .query("SELECT user_id, product_ids FROM feat_user_recent", &[])
            .unwrap()
        {
            let (user, items): (String, Vec<String>) = (row.get(0), row.get(1));
            let json = serde_json::to_string(&items).unwrap();
            pg_rows.insert(
                format!("user_recent:{user}"),
                BTreeMap::from([("product_ids".to_string(), json)]),
            );
        }
        let mut topic = Rows::new();
        for (key, value) in topic_records(&self.patterns) {
            match value {
                Some(serde_json::Value::Object(o)) => {
                    let fields = o
                        .into_iter()
                        .filter(|(k, v)| !k.starts_with('_') && !v.is_null())
                        .filter(|(k, _)| {
                            ["started_ts", "category", "product_ids"].contains(&k.as_str())
                        })
                        .map(|(k, v)| {
                            (
                                k,
                                match v {
                                    serde_json::Value::String(s) => s,
                                    other => other.to_string(),
                                },
                            )
                        })
                        .collect();
                    topic.insert(key, fields);
                }
                _ => {
                    topic.remove(&key);
                }
            }
        }
        (
            without_bookkeeping(redis_rows),
            without_bookkeeping(pg_rows),
            topic,
        )
    }
}

/// The model's rows as the stores hold them: (hashes and lists, pattern records).
fn model_rows(events: &[model::Event], catalog: &[(String, String)], at: u64) -> (Rows, Rows) {
    let inserted: Vec<&model::Event> = events.iter().collect();
    let state = model::features(&inserted, catalog, at);
    let shopper = [
        "views_10m",
        "avg_view_price_10m",
        "carts_30m",
        "purchases_24h",
        "top_category_30m",
        "last_event_ts",
        "device_type",
        "last_referrer",
        "utm_source",
        "pattern_detected",
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
    let mut want = expected(&state, model::SHOPPER, "user_features", &shopper);
    want.extend(expected(
        &state,
        model::PRODUCT_STATS,
        "feat:product_stats",
        &product,
    ));
    want.extend(expected(
        &state,
        model::USER_RECENT,
        "user_recent",
        &["product_ids"],
    ));
    let patterns = state
        .iter()
        .filter(|((t, _), _)| *t == model::PATTERNS)
        .map(|((_, key), values)| {
            let fields = ["started_ts", "category", "product_ids"]
                .iter()
                .zip(values)
                .filter(|(_, v)| **v != Value::Null)
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect();
            (key.join("|"), fields)
        })
        .collect();
    (want, patterns)
}

#[test]
fn kafka_to_redis_and_postgres_matches_the_model_through_a_restart_on_another_worker_count() {
    let text = commerce_lines();
    let (events, invalid) = model_input(&text);
    let span =
        events.iter().map(|e| e.ts).max().unwrap() - events.iter().map(|e| e.ts).min().unwrap();
    assert!(
        span > 65 * 60_000,
        "the traffic spans more than an hour: {span} ms"
    );
    let catalog: Vec<(String, String)> = generate::catalog()
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let topic = fresh_topic("e2e-commerce", 4);
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    // resumed: half the records on 2 workers, a checkpoint at the end, the rest on 1
    let resumed = Stores::new(13, "tm_commerce_r", &topic);
    produce(&topic, first);
    resumed.run(&topic, "commerce2", "2");
    let (_, _, patterns_at_restart) = resumed.read();
    produce(&topic, second);
    resumed.run(&topic, "commerce2", "1");
    // uninterrupted, on 2 workers
    let whole = Stores::new(12, "tm_commerce", &topic);
    whole.run(&topic, "commerce1", "2");

    let at: u64 = redis_get(&whole.redis, "tidemark:commerce1:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let newest = events.iter().map(|e| e.ts).max().unwrap();
    assert!(
        (newest..newest + 100).contains(&at),
        "stream time {at}, newest {newest}"
    );
    let (want, want_patterns) = model_rows(&events, &catalog, at);
    assert!(
        want.len() > 200,
        "a meaningful number of rows: {}",
        want.len()
    );
    let shows = |field: &str, has: &str| {
        want.values()
            .any(|r| r.get(field).is_some_and(|v| v.contains(has)))
    };
    assert!(
        want.values()
            .any(|r| r.contains_key("views_10m") && !r.contains_key("avg_view_price_10m")),
        "a shopper without views in 10 minutes"
    );
    assert!(
        shows("top_category_30m", ""),
        "shoppers with a top category"
    );
    assert!(
        shows("pattern_detected", "cart_abandonment_risk"),
        "abandonment"
    );
    assert!(
        shows("pattern_detected", "comparing_products"),
        "comparisons"
    );
    assert!(
        want.iter()
            .any(|(k, r)| k.starts_with("user_recent:")
                && r["product_ids"].matches(',').count() >= 4),
        "lists of several products"
    );
    for (name, stores) in [("uninterrupted", &whole), ("resumed", &resumed)] {
        let (redis_rows, pg_rows, topic_rows) = stores.read();
        assert_eq!(redis_rows.len(), want.len(), "{name}: redis rows");
        assert_eq!(redis_rows, want, "{name}: redis");
        assert_eq!(pg_rows, want, "{name}: postgres");
        assert_eq!(topic_rows, want_patterns, "{name}: the pattern topic");
        assert_eq!(
            dead_letters(&stores.dlq).len(),
            invalid,
            "{name}: every invalid record in the DLQ"
        );
    }
    // a pattern the topic held at the restart and the second half cleared: the resumed
    // topic equals the model above, so its key was removed, by a tombstone. (Whether a
    // pattern set and cleared within one run leaves one depends on how the ticks were
    // cut and the writes batched, so that is not asserted: a loaded CI once wrote none.)
    let cleared: Vec<&String> = (patterns_at_restart.keys())
        .filter(|k| !want_patterns.contains_key(*k))
        .collect();
    assert!(
        !cleared.is_empty(),
        "the second half clears patterns the first left ({} at the restart)",
        patterns_at_restart.len()
    );
    let records = topic_records(&resumed.patterns);
    for key in cleared {
        let last = records.iter().rev().find(|(k, _)| k == key);
        assert!(
            last.is_some_and(|(_, v)| v.is_none()),
            "{key}: its last record is a tombstone"
        );
    }
}
