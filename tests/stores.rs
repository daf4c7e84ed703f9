//! The stores on their own, against real Redis and Postgres: what a restart's rollback
//! sends when a worker's restored rows are all of tables a store does not hold.

mod common;

use std::sync::Arc;

use common::*;
use tidemark::sink::postgres::PostgresStore;
use tidemark::sink::redis::RedisStore;
use tidemark::sink::{Store, Writer};
use tidemark_dataflows::contract::table::{
    int, EntityChange, SinkKind, TableSpec, TickChanges, Value,
};

fn tables() -> Arc<Vec<TableSpec>> {
    Arc::new(vec![
        TableSpec {
            ns: "history_only",
            keys: vec!["k"],
            fields: vec![int("n")],
            version: 1,
            sink: SinkKind::PgTable,
        },
        TableSpec {
            ns: "redis_only",
            keys: vec!["k"],
            fields: vec![int("n")],
            version: 1,
            sink: SinkKind::RedisHash,
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
