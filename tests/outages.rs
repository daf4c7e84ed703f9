//! Sink and broker outages (DESIGN §4): Redis, Postgres or the Kafka broker goes away for
//! a while in the middle of a live stream. The engine retries, holds its offset commits and
//! converges: when the stream is done the stores equal the recount.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::search::*;
use common::services::*;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn services(args: &[&str]) {
    let ok = Command::new("scripts/services.sh")
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "scripts/services.sh {args:?}");
}

/// The group's committed offset per partition (-1: none). Retries while the group
/// coordinator is moving or loading (right after a broker restart).
fn committed(topic: &str, group: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(topic, p);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("committed offsets: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("committed offsets of {topic}: {e}"),
        }
    };
    c.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// Each partition's end offset.
fn end_offsets(topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .unwrap()
                .1
        })
        .collect()
}

/// Runs a live engine over a stream produced in three parts; `outage` stops a service
/// after the first part and `recover` brings it back 10 s later, the second part having
/// been produced meanwhile.
/// Long: one scenario, its steps in order with each check where it happens.
fn survives(name: &str, outage: impl Fn(&OwnRedis), recover: impl Fn(&OwnRedis)) {
    let dir = std::env::temp_dir().join(format!("tidemark-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let own = OwnRedis::start(6391, &dir.join("redis"));
    let redis = own.url();
    let pg = fresh_pg(&format!("tm_{}", name.replace('-', "_")));
    let file = dir.join("events.jsonl");
    let start = (tidemark::clock::now_ms() - 900_000).to_string();
    tidemark(
        &[
            "generate",
            "--events",
            "15000",
            "--seed",
            "5",
            "--rate",
            "100",
            "--start-ms",
            &start,
            "--out",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let third = lines.len() / 3;
    let topic = fresh_topic(name, 4);
    let job = name.replace('-', "");
    produce(&topic, &lines[..third]);
    let mut engine = KillOnDrop(
        engine_command()
            .args(live_args(&topic, &job))
            .args(["--workers", "2"])
            .env("TIDEMARK_REDIS", &redis)
            .env("TIDEMARK_PG", &pg)
            .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "500")
            // stream time comes from the data alone: the recount needs no clock
            .env("TIDEMARK_KAFKA__IDLE_TIMEOUT_MS", "3600000")
            .spawn()
            .unwrap(),
    );
    let frontier = |url: &str| -> u64 {
        redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("GET")
                    .arg(format!("tidemark:{job}:frontier"))
                    .query::<Option<u64>>(&mut c)
            })
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    wait_until("the first part is written", 60, || frontier(&redis) > 0);
    std::thread::sleep(Duration::from_secs(1));

    let broker = name == "kafka-restart";
    outage(&own);
    let down = Instant::now();
    if broker {
        std::thread::sleep(Duration::from_secs(10));
        recover(&own);
        produce(&topic, &lines[third..2 * third]);
    } else {
        produce(&topic, &lines[third..2 * third]);
        std::thread::sleep(Duration::from_secs(2));
        let held = committed(&topic, &topic);
        std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
        let still = committed(&topic, &topic);
        recover(&own);
        assert_eq!(held, still, "no offset is committed while a sink is down");
    }
    produce(&topic, &lines[2 * third..]);

    let events = valid_events(&text);
    let newest = events
        .iter()
        .map(|e| e["ts"].as_u64().unwrap())
        .max()
        .unwrap();
    // everything read, written and checkpointed: the group has committed the end offsets
    let ends = end_offsets(&topic);
    wait_until("every record is read and written", 120, || {
        committed(&topic, &topic) == ends
    });
    assert!(frontier(&redis) >= newest);
    Command::new("kill")
        .args(["-TERM", &engine.0.id().to_string()])
        .status()
        .unwrap();
    let status = engine.0.wait().unwrap();
    assert!(
        status.success(),
        "a graceful stop after the outage: {status}"
    );
    let at = frontier(&redis);
    let want = recount(&events, at);
    assert_matches(
        &format!("redis after {name}"),
        &redis_features(&redis),
        &want,
    );
    assert_matches(
        &format!("postgres after {name}"),
        &postgres_hashes(&pg),
        &want,
    );
    let after: Vec<i64> = committed(&topic, &topic);
    assert!(
        after.iter().all(|o| *o >= 0),
        "offsets are committed at the end: {after:?}"
    );
}

#[test]
fn a_redis_outage_holds_commits_and_converges() {
    survives("redis-down", |r| r.down(), |r| r.up());
}

#[test]
fn a_postgres_outage_holds_commits_and_converges() {
    survives(
        "postgres-down",
        |_| services(&["stop", "postgres"]),
        |_| services(&["up"]),
    );
}

#[test]
fn a_kafka_broker_restart_converges() {
    survives(
        "kafka-restart",
        |_| services(&["stop", "kafka"]),
        |_| services(&["up"]),
    );
}
