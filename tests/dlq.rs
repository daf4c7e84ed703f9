//! Every kind of poison message reaches the DLQ (DESIGN §4) with its envelope and Kafka
//! Connect's headers, once, while the valid events around it are counted exactly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::search::*;
use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn every_kind_of_poison_message_reaches_the_dlq_once_and_the_rest_counts() {
    let topic = fresh_topic("dlq-src", 2);
    let dlq = format!("{topic}-dlq");
    let ts = 1_767_225_600_000u64;
    let future = tidemark::clock::now_ms() + 86_400_000;
    let ev = |id: &str, body: &str| {
        format!(r#"{{"event_id":"{id}","ts":{ts},"user_id":"u","session_id":"s",{body}}}"#)
    };
    let big = format!(r#""query":"{}","doc_ids":["d1"]"#, "q".repeat(5_000));
    // (payload, the error type the DLQ must name; None = valid)
    let records: Vec<(String, Option<&str>)> = vec![
        (ev("v1", r#""event_type":"search_impression","query":"a","doc_ids":["d1","d2"]"#), None),
        (r#"{"event_id":"x1","ts":"#.to_string(), Some("json")),
        ("[1,2,3]".to_string(), Some("json")),
        (ev("x2", r#""event_type":"click","query":"a""#), Some("missing_field")),
        (ev("x3", r#""event_type":"click","query":"a","doc_id":null"#), Some("missing_field")),
        (r#"{"event_id":"x4","ts":"yesterday","user_id":"u","session_id":"s","event_type":"click","query":"a","doc_id":"d1"}"#.to_string(), Some("wrong_type")),
        (ev("x5", r#""event_type":"dwell","query":"a","doc_id":"d1","dwell_ms":NaN"#), Some("json")),
        (ev("x6", r#""event_type":"dwell","query":"a","doc_id":"d1","dwell_ms":1e999"#), Some("json")),
        (ev("x7", r#""event_type":"teleport""#), Some("unknown_type")),
        (format!(r#"{{"event_id":"x8","ts":{future},"user_id":"u","session_id":"s","event_type":"click","query":"a","doc_id":"d1"}}"#), Some("range")),
        (ev("x9", &format!(r#""event_type":"search_impression",{big}"#)), Some("oversized")),
        (ev("v2", r#""event_type":"click","query":"a","doc_id":"d1""#), None),
        (ev("v1", r#""event_type":"search_impression","query":"a","doc_ids":["d1","d2"]"#), None),
    ];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let mut want: BTreeMap<String, (&str, String)> = BTreeMap::new();
    for (i, (payload, error)) in records.iter().enumerate() {
        let record = FutureRecord::<(), str>::to(&topic)
            .payload(payload)
            .partition(i as i32 % 2);
        let delivery = block_on(producer.send(record, Duration::from_secs(10)))
            .map_err(|(e, _)| e)
            .unwrap();
        if let Some(e) = error {
            let key = format!("{topic}/{}/{}", delivery.partition, delivery.offset);
            want.insert(key, (e, payload.clone()));
        }
    }
    let redis = fresh_redis(8);
    run_to_end(
        &topic,
        "dlq",
        &topic,
        &[],
        &[
            ("TIDEMARK_REDIS", redis.as_str()),
            ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
            ("TIDEMARK_INGEST__MAX_MESSAGE_BYTES", "2000"),
        ],
    );
    let letters = dead_letters(&dlq);
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for l in &letters {
        *got.entry(l.key.clone()).or_default() += 1;
        let Some((error, payload)) = want.get(&l.key) else {
            panic!("a DLQ record for a record that is not poison: {}", l.key);
        };
        let e = &l.envelope;
        let (t, p, o) = (
            e["source_topic"].as_str().unwrap(),
            e["source_partition"].as_i64().unwrap(),
            e["source_offset"].as_i64().unwrap(),
        );
        assert_eq!(
            format!("{t}/{p}/{o}"),
            l.key,
            "the key is the source coordinates"
        );
        assert_eq!(e["error_type"], *error, "{}: {}", l.key, e["error_message"]);
        assert!(!e["error_message"].as_str().unwrap().is_empty());
        assert_eq!(
            e["payload"].as_str().unwrap(),
            payload,
            "the payload travels whole"
        );
        assert!(e["source_timestamp_ms"].as_i64().unwrap() > 0);
        assert!(e["failed_at_ms"].as_u64().unwrap() > 0);
        assert_eq!(l.headers["__connect.errors.topic"], t);
        assert_eq!(l.headers["__connect.errors.partition"], p.to_string());
        assert_eq!(l.headers["__connect.errors.offset"], o.to_string());
        assert_eq!(l.headers["__connect.errors.exception.class.name"], *error);
        assert!(l.headers.contains_key("__connect.errors.exception.message"));
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "every poison record is in the DLQ"
    );
    assert!(got.values().all(|n| *n == 1), "each once: {got:?}");

    let lines: String = records
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(p, _)| format!("{p}\n"))
        .collect();
    let valid = valid_events(&lines);
    assert_eq!(valid.len(), 2, "the duplicate of v1 is one event");
    let want = recount(&valid, ts);
    assert_matches("redis", &redis_features(&redis), &want);
}

#[test]
fn a_failed_dlq_write_stops_offset_commits() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let (topic, _) = generated_stream("dlq-fail", 2_000, 3, &[]);
    let redis = fresh_redis(9);
    // a topic name the broker refuses: every DLQ delivery fails
    let out = engine_command()
        .args([
            "run",
            "--topic",
            &topic,
            "--exit-at-end",
            "--job",
            "dlqfail",
            "--group-id",
            &topic,
        ])
        .env("TIDEMARK_REDIS", &redis)
        .env("TIDEMARK_KAFKA__DLQ_TOPIC", "no such topic!")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the run cannot finish cleanly");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be delivered"), "{stderr}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", &topic)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for e in committed.elements() {
        assert!(
            !matches!(e.offset(), Offset::Offset(_)),
            "no offset is committed past a record the DLQ lacks: {e:?}"
        );
    }
    let saved = std::path::Path::new(&state_dir())
        .join("dlqfail")
        .join(&topic);
    let parts = std::fs::read_dir(&saved).map_or(0, |d| d.count());
    assert_eq!(parts, 0, "and no checkpoint was saved");
}

/// While the DLQ takes nothing, `/readyz` says so (and that checkpoints fail because of
/// it) once `health.unready_after_ms` has passed, so an orchestrator sees it.
#[test]
fn a_dlq_that_keeps_failing_makes_the_engine_unready() {
    let (topic, _) = generated_stream("dlq-unready", 2_000, 5, &[]);
    let http = common::free_port();
    let mut engine = common::services::KillOnDrop(
        engine_command()
            .args(["run", "--topic", &topic, "--job", "dlqunready"])
            .args(["--group-id", &topic, "--http", &format!("127.0.0.1:{http}")])
            .env("TIDEMARK_KAFKA__DLQ_TOPIC", "no such topic!")
            .env("TIDEMARK_HEALTH__UNREADY_AFTER_MS", "1000")
            .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "300")
            .spawn()
            .unwrap(),
    );
    let mut last = (0, String::new());
    let until = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < until {
        last = common::http_get(
            &format!("http://127.0.0.1:{http}/readyz"),
            Duration::from_secs(2),
        )
        .unwrap_or_default();
        if last.0 == 503
            && last.1.contains("DLQ deliveries failing")
            && last.1.contains("checkpoints failing")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(
        last.1.contains("DLQ deliveries failing") && last.1.contains("checkpoints failing"),
        "{}",
        last.1
    );
    assert!(
        engine.0.try_wait().unwrap().is_none(),
        "the engine stays up"
    );
}
