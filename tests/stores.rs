//! The stores on their own, against real Redis and Postgres: what a restart's rollback
//! sends when a worker's restored rows are all of tables a store does not hold, a
//! column an older version created with another type, and a value that becomes null.

mod common;

use std::sync::Arc;

use common::*;
use tidemark::sink::postgres::PostgresStore;
use tidemark::sink::redis::RedisStore;
use tidemark::sink::{Store, Writer};
use tidemark_dataflows::contract::table::{
    int, EntityChange, SinkKind, TableSpec, TickChanges, Value,
};
use tidemark_dataflows::Tick;

fn tables() -> Arc<Vec<TableSpec>> {
    Arc::new(vec![
        TableSpec {
            ns: "history_only",
            keys: vec!["k"],
            fields: vec![int("n")],
            version: 1,
            sink: SinkKind::PgTable,
            redis_prefix: None,
        },
        TableSpec {
            ns: "redis_only",
            keys: vec!["k"],
            fields: vec![int("n")],
            version: 1,
            sink: SinkKind::RedisHash,
            redis_prefix: None,
        },
    ])
}

fn rows(table: u8, n: usize) -> TickChanges {
    TickChanges {
        tick: 100,
        changes: (0..n)
            .map(|i| EntityChange {
                table,
                key: vec![format!("k{i}")],
                after: Some(vec![Value::Int(i as i64)]),
                changed: vec![0],
            })
            .collect(),
    }
}

/// ads' `performance_metrics` is a Postgres-only table: a worker whose restored rows are
/// all of it used to send Redis an empty pipeline, a client error retried every 5 s
/// forever. Nothing is sent now, and the same goes the other way round.
#[test]
fn a_rewrite_of_rows_a_store_does_not_hold_sends_it_nothing() {
    let writer = Writer {
        job: "stores".into(),
        worker: 0,
        peers: 1,
        tables: tables(),
    };
    let redis = fresh_redis(14);
    let pg = fresh_pg("tm_stores");
    let mut r = RedisStore::open(&redis, writer.clone(), None).unwrap();
    let refused = r.rewrite(&rows(0, 7_000), 10, 200).unwrap();
    assert!(refused.is_empty());
    let mut p = PostgresStore::open(&pg, writer).unwrap();
    let refused = p.rewrite(&rows(1, 3), 10, 200).unwrap();
    assert!(refused.is_empty());
    // and what each holds is written
    assert!(r.rewrite(&rows(1, 3), 10, 200).unwrap().is_empty());
    assert_eq!(redis_get_hash(&redis, "redis_only:k2")["n"], "2");
    assert!(p.rewrite(&rows(0, 3), 10, 200).unwrap().is_empty());
}

fn redis_get_hash(url: &str, key: &str) -> std::collections::BTreeMap<String, String> {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("HGETALL").arg(key).query(&mut c).unwrap()
}

/// A feature that was a whole number and became a fraction (reading's `max_scroll_pct`)
/// finds its column as `bigint` in a table an older version created: the store widens it
/// to `double precision` in place, keeping every value, and writes fractions into it.
#[test]
fn a_bigint_column_of_a_float_feature_is_widened_in_place() {
    let pg = fresh_pg("tm_widen");
    let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    c.batch_execute(
        "CREATE TABLE feat_widened (k text NOT NULL, _tick bigint NOT NULL, _v int NOT NULL, \
         depth bigint, PRIMARY KEY (k)); INSERT INTO feat_widened VALUES ('old', 1, 1, 42);",
    )
    .unwrap();
    let tables = Arc::new(vec![TableSpec {
        ns: "widened",
        keys: vec!["k"],
        fields: vec![tidemark_dataflows::contract::table::float("depth")],
        version: 2,
        sink: SinkKind::Store,
        redis_prefix: None,
    }]);
    let writer = Writer {
        job: "widen".into(),
        worker: 0,
        peers: 1,
        tables,
    };
    let mut p = PostgresStore::open(&pg, writer).unwrap();
    let ty: String = c
        .query_one(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'feat_widened' \
             AND column_name = 'depth'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ty, "double precision");
    let fraction = TickChanges {
        tick: 5,
        changes: vec![EntityChange {
            table: 0,
            key: vec!["new".into()],
            after: Some(vec![Value::float(89.75)]),
            changed: vec![0],
        }],
    };
    assert!(p.write(&[Arc::new(fraction)], Some(6)).unwrap().is_empty());
    let mut depth = |k: &str| -> f64 {
        c.query_one("SELECT depth FROM feat_widened WHERE k = $1", &[&k])
            .unwrap()
            .get(0)
    };
    let (old, new) = (depth("old"), depth("new"));
    assert_eq!((old, new), (42.0, 89.75));
}

/// A list field is a Postgres `text[]` in its order (items with commas, quotes and
/// braces kept whole), and a text column an older version made for it becomes one, its
/// JSON read as the array.
#[test]
fn a_list_is_a_postgres_array_in_order_and_a_text_column_becomes_one() {
    let pg = fresh_pg("tm_lists");
    let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    c.batch_execute(
        "CREATE TABLE feat_recent (k text NOT NULL, _tick bigint NOT NULL, _v int NOT NULL, \
         items text, PRIMARY KEY (k)); INSERT INTO feat_recent VALUES ('old', 1, 1, '[\"b\",\"a\"]');",
    )
    .unwrap();
    let tables = Arc::new(vec![TableSpec {
        ns: "recent",
        keys: vec!["k"],
        fields: vec![tidemark_dataflows::contract::table::list("items")],
        version: 1,
        sink: SinkKind::List,
        redis_prefix: None,
    }]);
    let writer = Writer {
        job: "lists".into(),
        worker: 0,
        peers: 1,
        tables,
    };
    let mut p = PostgresStore::open(&pg, writer).unwrap();
    let items = r#"["z","a,b","q\"uote","{brace}","m"]"#;
    let list = TickChanges {
        tick: 5,
        changes: vec![EntityChange {
            table: 0,
            key: vec!["new".into()],
            after: Some(vec![Value::Text(items.into())]),
            changed: vec![0],
        }],
    };
    assert!(p.write(&[Arc::new(list)], Some(6)).unwrap().is_empty());
    let mut read = |k: &str| -> Vec<String> {
        c.query_one("SELECT items FROM feat_recent WHERE k = $1", &[&k])
            .unwrap()
            .get(0)
    };
    assert_eq!(read("old"), ["b", "a"]);
    assert_eq!(read("new"), ["z", "a,b", "q\"uote", "{brace}", "m"]);
}

/// A field that becomes null (ads' campaign view once its latest window is no longer
/// shown; a campaign without a budget) leaves the Redis hash and is `NULL` in Postgres,
/// whether written as a change or as a restart's rewrite; it comes back with a value.
#[test]
fn a_null_value_is_absent_from_redis_and_null_in_postgres() {
    let tables = Arc::new(vec![TableSpec {
        ns: "nullable",
        keys: vec!["k"],
        fields: vec![
            int("n"),
            tidemark_dataflows::contract::table::text("window_start"),
        ],
        version: 1,
        sink: SinkKind::Store,
        redis_prefix: None,
    }]);
    let writer = Writer {
        job: "nulls".into(),
        worker: 0,
        peers: 1,
        tables,
    };
    let (redis, pg) = (fresh_redis(13), fresh_pg("tm_nulls"));
    let mut r = RedisStore::open(&redis, writer.clone(), None).unwrap();
    let mut p = PostgresStore::open(&pg, writer).unwrap();
    let change = |tick: Tick, k: &str, start: Value, changed: Vec<usize>| {
        Arc::new(TickChanges {
            tick,
            changes: vec![EntityChange {
                table: 0,
                key: vec![k.into()],
                after: Some(vec![Value::Int(tick as i64), start]),
                changed,
            }],
        })
    };
    let shown = change(
        5,
        "a",
        Value::Text("2026-01-01T00:00:00Z".into()),
        vec![0, 1],
    );
    let hidden = change(6, "a", Value::Null, vec![0, 1]);
    let born_null = change(6, "b", Value::Null, vec![0, 1]);
    for (tick, write) in [(5, vec![shown.clone()]), (6, vec![hidden, born_null])] {
        assert!(r.write(&write, Some(tick + 1)).unwrap().is_empty());
        assert!(p.write(&write, Some(tick + 1)).unwrap().is_empty());
    }
    let hash = redis_get_hash(&redis, "feat:nullable:a");
    assert_eq!(hash.get("n").map(String::as_str), Some("6"));
    assert_eq!(hash.get("window_start"), None, "{hash:?}");
    assert!(!redis_get_hash(&redis, "feat:nullable:b").contains_key("window_start"));
    let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    let mut start = |k: &str| -> Option<String> {
        c.query_one("SELECT window_start FROM feat_nullable WHERE k = $1", &[&k])
            .unwrap()
            .get(0)
    };
    assert_eq!((start("a"), start("b")), (None, None));
    // a restart's rewrite of an entity written after the checkpoint (tick 5) with a null
    // restores it without the field, and a value comes back
    let c = change(
        7,
        "c",
        Value::Text("2026-01-01T00:00:00Z".into()),
        vec![0, 1],
    );
    assert!(r.write(&[c], Some(8)).unwrap().is_empty());
    assert!(redis_get_hash(&redis, "feat:nullable:c").contains_key("window_start"));
    let restored = change(5, "c", Value::Null, vec![0, 1]);
    assert!(r.rewrite(&restored, 5, 9).unwrap().is_empty());
    let c = redis_get_hash(&redis, "feat:nullable:c");
    assert_eq!(
        (c.get("n"), c.get("window_start")),
        (Some(&"5".to_string()), None)
    );
    let back = change(
        9,
        "a",
        Value::Text("2026-01-02T00:00:00Z".into()),
        vec![0, 1],
    );
    assert!(r
        .write(std::slice::from_ref(&back), Some(10))
        .unwrap()
        .is_empty());
    assert!(p.write(&[back], Some(10)).unwrap().is_empty());
    assert_eq!(
        redis_get_hash(&redis, "feat:nullable:a")["window_start"],
        "2026-01-02T00:00:00Z"
    );
    assert_eq!(start("a").as_deref(), Some("2026-01-02T00:00:00Z"));
}
