//! The watch family end to end: `generate --dataflow watch` (1 % invalid, duplicates,
//! disorder, nine days of event time) → real `impressions` and `watches` topics →
//! `run --exit-at-end` → real Redis and Postgres hold exactly the model's rows
//! (`dataflows/tests/common/watch_model.rs`): the item and viewer hashes, the pair table,
//! the `user_history` and `co_visit` lists (Redis lists, Postgres arrays) and the raw
//! `impressions` and `watches` tables, each row once; every invalid record is in the DLQ.
//! Once uninterrupted on 2 workers, and once crashed after a Postgres write, killed with
//! SIGKILL mid-stream, and run to the end on another worker count: the same stores.

mod common;

#[path = "../dataflows/tests/common/watch_model.rs"]
mod model;

use std::collections::{BTreeMap, HashSet};
use std::process::Child;
use std::time::Duration;

use common::*;
use tidemark_dataflows::contract::record::RecordRef;
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::families::watch::{decode::decode, WatchEvent};

type Rows = BTreeMap<String, BTreeMap<String, String>>;

const ITEM: [&str; 12] = [
    "item_popularity_7d",
    "item_popularity_30d",
    "watches_7d",
    "watches_30d",
    "impressions_7d",
    "impressions_30d",
    "strong_watches_7d",
    "strong_watches_30d",
    "watch_through_7d",
    "watch_through_30d",
    "strong_share_7d",
    "strong_share_30d",
];

/// A generated line as its topic's decoder reads it: an impression has `items`.
fn decoded(line: &str) -> Option<tidemark_dataflows::contract::event::Timed<WatchEvent>> {
    let watches = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .is_none_or(|v| v.get("items").is_none());
    let r = RecordRef {
        topic: "",
        partition: 0,
        offset: 0,
        append_ms: 0,
        key: None,
        payload: line.as_bytes(),
        read_ms: None,
        headers: None,
        tombstone: false,
    };
    decode(&r, watches).ok()
}

/// The model's input: the first copy of each valid event (the traffic is at most 15
/// minutes out of order, so none is too late; the runs' dedup horizon is a day, so every
/// copy is a duplicate), and the number of invalid lines.
fn model_input(text: &str) -> (Vec<model::Event>, usize) {
    let (mut events, mut invalid, mut seen) = (Vec::new(), 0, HashSet::new());
    for line in text.lines() {
        let Some(e) = decoded(line) else {
            invalid += 1;
            continue;
        };
        if !seen.insert(e.id) {
            continue;
        }
        let (event_id, user, kind) = match e.event {
            WatchEvent::Impression(i) => (
                i.event_id,
                i.user.0.to_string(),
                model::Kind::Impression(
                    i.items
                        .iter()
                        .map(|s| (s.item.0.to_string(), s.position))
                        .collect(),
                    i.request_id,
                    i.surface,
                ),
            ),
            WatchEvent::Watch(w) => (
                w.event_id,
                w.user.0.to_string(),
                model::Kind::Watch(
                    w.item.0.to_string(),
                    w.percent_watched.0,
                    w.watch_time_sec.0,
                ),
            ),
        };
        events.push(model::Event {
            event_id,
            id: e.id.0,
            ts: e.ts,
            user,
            kind,
            offset: 0,
        });
    }
    (events, invalid)
}

/// The model's feature rows as the stores hold them (hashes by Redis key; lists as their
/// JSON), and its raw rows without their source columns.
fn model_rows(state: &model::State) -> (Rows, Rows) {
    let mut features = Rows::new();
    let mut raw = Rows::new();
    for ((table, key), values) in state {
        let (name, fields): (String, &[&str]) = match *table {
            model::ITEM => (format!("feat:item:{}", key[0]), &ITEM),
            model::VIEWER => (
                format!("feat:viewer:{}", key[0]),
                &["history_size", "last_watch_ts"],
            ),
            model::CO_VISITATION => (
                format!("feat:co_visitation:{}:{}", key[0], key[1]),
                &["score"],
            ),
            model::USER_HISTORY => (format!("user_history:{}", key[0]), &["item_ids"]),
            model::CO_VISIT => (format!("co_visit:{}", key[0]), &["neighbours"]),
            model::IMPRESSIONS => {
                let fields = ["user_id", "item_id", "ts", "request_id", "surface"];
                raw.insert(
                    format!("impressions:{}:{}", key[0], key[1]),
                    hash(&fields, values),
                );
                continue;
            }
            _ => {
                let fields = [
                    "user_id",
                    "item_id",
                    "ts",
                    "percent_watched",
                    "watch_time_sec",
                    "signal",
                    "weight",
                ];
                raw.insert(format!("watches:{}", key[0]), hash(&fields, values));
                continue;
            }
        };
        features.insert(name, hash(fields, values));
    }
    (features, raw)
}

fn hash(fields: &[&str], values: &[Value]) -> BTreeMap<String, String> {
    fields
        .iter()
        .zip(values)
        .filter(|(_, v)| **v != Value::Null)
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

fn without_bookkeeping(rows: Rows) -> Rows {
    rows.into_iter()
        .map(|(k, f)| {
            let f = f.into_iter().filter(|(n, _)| !n.starts_with('_')).collect();
            (k, f)
        })
        .collect()
}

/// Where one run writes.
struct Stores {
    redis: String,
    pg: String,
    dlq: String,
}

impl Stores {
    fn new(db: u8, pg: &str, topic: &str) -> Self {
        Stores {
            redis: fresh_redis(db),
            pg: fresh_pg(pg),
            dlq: format!("{topic}-dlq-{db}"),
        }
    }

    fn env(&self, topics: &(String, String)) -> Vec<(&'static str, String)> {
        vec![
            ("TIDEMARK_REDIS", self.redis.clone()),
            ("TIDEMARK_PG", self.pg.clone()),
            ("TIDEMARK_KAFKA__DLQ_TOPIC", self.dlq.clone()),
            (
                "TIDEMARK_DATAFLOWS__WATCH__IMPRESSIONS_TOPIC",
                topics.0.clone(),
            ),
            ("TIDEMARK_DATAFLOWS__WATCH__WATCHES_TOPIC", topics.1.clone()),
            ("TIDEMARK_CHECKPOINT__INTERVAL_MS", "300".into()),
            // every copy the generator makes (up to about 75 minutes of stream time later,
            // over nine days) is a duplicate, as the model takes it
            ("TIDEMARK_INGEST__DEDUP_HORIZON_MS", "86400000".into()),
            // small polls: the stream takes a few seconds, so a kill lands inside it
            ("TIDEMARK_KAFKA__POLL_BATCH", "200".into()),
        ]
    }

    fn args<'a>(
        topics: &'a (String, String),
        job: &'a str,
        group: &'a str,
        workers: &'a str,
    ) -> Vec<&'a str> {
        vec![
            "run",
            "--dataflow",
            "watch",
            "--topic",
            &topics.0,
            "--topic",
            &topics.1,
            "--exit-at-end",
            "--job",
            job,
            "--group-id",
            group,
            "--workers",
            workers,
        ]
    }

    fn spawn(
        &self,
        topics: &(String, String),
        job: &str,
        workers: &str,
        crash: Option<&str>,
    ) -> Child {
        let group = format!("{}-{job}", topics.0);
        let mut cmd = engine_command();
        cmd.args(Self::args(topics, job, &group, workers));
        for (k, v) in self.env(topics) {
            cmd.env(k, v);
        }
        if let Some(at) = crash {
            cmd.env("TIDEMARK_CRASH_AT", at);
        }
        cmd.spawn().expect("spawn tidemark")
    }

    fn run(&self, topics: &(String, String), job: &str, workers: &str) {
        let status = self.spawn(topics, job, workers, None).wait().unwrap();
        assert!(status.success(), "run {job} on {workers} workers: {status}");
    }

    /// Every stored feature (Redis, Postgres) and raw row (Postgres, without its source
    /// columns), and the raw rows' source columns.
    fn read(&self) -> (Rows, Rows, Rows, Vec<(i64, i32, i64)>) {
        let mut c = redis::Client::open(self.redis.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut redis_rows = without_bookkeeping(redis_features(&self.redis));
        for pattern in ["user_history:*", "co_visit:*"] {
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
            let field = if pattern.starts_with("user") {
                "item_ids"
            } else {
                "neighbours"
            };
            for key in keys {
                let items: Vec<String> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut c)
                    .unwrap();
                let json = serde_json::to_string(&items).unwrap();
                redis_rows.insert(key, BTreeMap::from([(field.to_string(), json)]));
            }
        }
        let mut pg_rows = pg_features(&self.pg, "item", &["item_id"]);
        pg_rows.extend(pg_features(&self.pg, "viewer", &["user_id"]));
        pg_rows.extend(pg_features(
            &self.pg,
            "co_visitation",
            &["item_a", "item_b"],
        ));
        for (ns, key) in [("user_history", "user_id"), ("co_visit", "item_id")] {
            for (k, v) in pg_features(&self.pg, ns, &[key]) {
                pg_rows.insert(k.replacen("feat:", "", 1), v);
            }
        }
        let mut pg = postgres::Client::connect(&self.pg, postgres::NoTls).unwrap();
        let mut raw = Rows::new();
        let mut sources = Vec::new();
        let text = |r: &postgres::Row, i: usize| r.get::<_, Option<String>>(i);
        for r in pg
            .query(
                "SELECT event_id, position, user_id, item_id, ts, request_id, surface, \
                 server_received_ts_ms, source_partition, source_offset FROM impressions",
                &[],
            )
            .unwrap()
        {
            let mut h = BTreeMap::new();
            for (i, f) in [
                (2, "user_id"),
                (3, "item_id"),
                (5, "request_id"),
                (6, "surface"),
            ] {
                if let Some(v) = text(&r, i) {
                    h.insert(f.to_string(), v);
                }
            }
            h.insert("ts".into(), r.get::<_, i64>(4).to_string());
            let key = format!(
                "impressions:{}:{}",
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            );
            assert!(raw.insert(key, h).is_none(), "a raw row twice");
            sources.push((r.get(7), r.get::<_, i64>(8) as i32, r.get(9)));
        }
        for r in pg
            .query(
                "SELECT event_id, user_id, item_id, ts, percent_watched, watch_time_sec, signal, \
                 weight, server_received_ts_ms, source_partition, source_offset FROM watches",
                &[],
            )
            .unwrap()
        {
            let mut h = BTreeMap::new();
            for (i, f) in [(1, "user_id"), (2, "item_id"), (6, "signal")] {
                h.insert(f.to_string(), r.get::<_, String>(i));
            }
            h.insert("ts".into(), r.get::<_, i64>(3).to_string());
            h.insert("weight".into(), r.get::<_, i64>(7).to_string());
            for (i, f) in [(4, "percent_watched"), (5, "watch_time_sec")] {
                h.insert(f.to_string(), Value::float(r.get::<_, f64>(i)).to_string());
            }
            assert!(raw
                .insert(format!("watches:{}", r.get::<_, String>(0)), h)
                .is_none());
            sources.push((r.get(8), r.get::<_, i64>(9) as i32, r.get(10)));
        }
        (
            without_bookkeeping(redis_rows),
            without_bookkeeping(pg_rows),
            raw,
            sources,
        )
    }
}

/// The same rows, or the first few that differ.
fn assert_same(what: &str, got: &Rows, want: &Rows) {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .take(5)
        .map(|k| format!("{k}: stored {:?}, model {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(differ.is_empty(), "{what}:\n{}", differ.join("\n"));
}

#[test]
/// Long: one scenario, its runs and then its checks in order.
fn kafka_to_redis_and_postgres_matches_the_model_through_a_crash_and_a_kill() {
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let name = "e2e-watch";
    let topics = (
        fresh_topic(&format!("{name}-impressions"), 4),
        fresh_topic(&format!("{name}-watches"), 4),
    );
    let file = std::env::temp_dir().join(format!("tidemark-{name}-{}.jsonl", std::process::id()));
    let gen = [
        "generate",
        "--dataflow",
        "watch",
        "--events",
        "20000",
        "--seed",
        "17",
        "--span",
        "9d",
        "--invalid",
        "0.01",
    ];
    tidemark(
        &[&gen[..], &["--out", file.to_str().unwrap()]].concat(),
        &[],
    );
    tidemark(
        &[&gen[..], &["--topic", &topics.0, "--topic", &topics.1]].concat(),
        &[],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let (events, invalid) = model_input(&text);

    let whole = Stores::new(14, "tm_watch", &topics.0);
    whole.run(&topics, "watch1", "2");
    // crashed after its fourth Postgres write, killed mid-stream, then run to the end on 1
    let crashed = Stores::new(15, "tm_watch_crashed", &topics.0);
    let status = crashed
        .spawn(&topics, "watch2", "2", Some("postgres-written:4"))
        .wait()
        .unwrap();
    assert!(!status.success(), "the crash point was reached: {status}");
    let mut child = crashed.spawn(&topics, "watch2", "3", None);
    std::thread::sleep(Duration::from_millis(1_500));
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();
    crashed.run(&topics, "watch2", "1");

    let at: u64 = redis_get(&whole.redis, "tidemark:watch1:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let all: Vec<&model::Event> = events.iter().collect();
    let state = model::features(&all, at, &model::Settings::default());
    let (want, want_raw) = model_rows(&state);
    let count = |prefix: &str| want.keys().filter(|k| k.starts_with(prefix)).count();
    assert!(
        count("feat:item:") > 500 && count("co_visit:") > 100 && count("user_history:") > 500,
        "a meaningful number of rows: {} items, {} neighbour lists, {} histories",
        count("feat:item:"),
        count("co_visit:"),
        count("user_history:")
    );
    assert!(
        want.iter().any(|(k, r)| k.starts_with("user_history:") && r["item_ids"].matches(',').count() >= 5),
        "histories of several items"
    );
    assert!(
        want.values()
            .any(|r| r.get("watches_7d") != r.get("watches_30d")),
        "some watches have left the 7-day window"
    );
    assert_eq!(
        dead_letters(&whole.dlq).len(),
        invalid,
        "uninterrupted: each invalid record in the DLQ once"
    );
    for (name, stores) in [("uninterrupted", &whole), ("crashed and killed", &crashed)] {
        let (redis_rows, pg_rows, raw, sources) = stores.read();
        assert_eq!(redis_rows.len(), want.len(), "{name}: redis rows");
        assert_same(&format!("{name}: redis"), &redis_rows, &want);
        assert_same(&format!("{name}: postgres"), &pg_rows, &want);
        assert_eq!(raw.len(), want_raw.len(), "{name}: raw rows, each once");
        assert_same(&format!("{name}: raw rows"), &raw, &want_raw);
        assert!(
            sources
                .iter()
                .all(|(append, partition, offset)| *append >= started_ms - 60_000
                    && (0..4).contains(partition)
                    && *offset >= 0),
            "{name}: every raw row names its Kafka append time and position"
        );
        // at least once across a crash: a record may be there twice, under one key
        let letters: HashSet<String> = dead_letters(&stores.dlq)
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(
            letters.len(),
            invalid,
            "{name}: every invalid record in the DLQ"
        );
    }
}
