//! Every kind of poison message reaches the DLQ (DESIGN §4) with its envelope and Kafka
//! Connect's headers, once, while the valid events around it are counted exactly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::search::*;
use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

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
        assert_eq!(l.headers["tidemark.errors.reason"], *error);
        assert_eq!(
            l.headers["__connect.errors.exception.class.name"],
            "io.tidemark.InvalidRecordException"
        );
        assert!(l.headers["__connect.errors.exception.message"].starts_with(error));
        assert!(l
            .headers
            .contains_key("__connect.errors.exception.stacktrace"));
        assert_eq!(l.record_key, None, "produced without a key");
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

/// A record as produced: key, value (`None`: a tombstone), headers.
type Produced = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

/// Produces `records` in order to partition 0 of `topic`, headers and all.
fn produce_raw(topic: &str, records: &[Produced]) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    for (key, value, headers) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(0);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let h = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: v.as_deref(),
            })
        });
        block_on(producer.send(record.headers(h), Duration::from_secs(10)))
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Every record of `topic` as produced (key, value, headers), sorted.
fn records_of(topic: &str) -> Vec<Produced> {
    use rdkafka::message::{Headers, Message};
    let mut out: Vec<Produced> = Vec::new();
    read_topic(topic, |m| {
        let headers = (m.headers().into_iter().flat_map(|h| h.iter()))
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect();
        out.push((
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            headers,
        ));
    });
    out.sort();
    out
}

/// The headers a letter carries besides the original's.
fn without_error_headers(headers: &[(String, Option<Vec<u8>>)]) -> Vec<(String, Option<Vec<u8>>)> {
    (headers.iter())
        .filter(|(k, _)| !k.starts_with("__connect.errors.") && !k.starts_with("tidemark."))
        .cloned()
        .collect()
}

#[test]
/// Long: one scenario — both formats, the replay, Kafka's own console consumer — its
/// checks where each step happens.
fn letters_keep_the_records_key_headers_and_bytes_and_replay_as_them() {
    let topic = fresh_topic("dlq-orig", 1);
    let ts = 1_767_225_600_000u64;
    let h = |pairs: &[(&str, Option<&[u8]>)]| -> Vec<(String, Option<Vec<u8>>)> {
        (pairs.iter())
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect()
    };
    let valid = format!(
        r#"{{"event_id":"ok","ts":{ts},"user_id":"u","session_id":"s","event_type":"click","query":"a","doc_id":"d1"}}"#
    );
    let missing = format!(
        r#"{{"event_id":"m","ts":{ts},"user_id":"u","session_id":"s","event_type":"click","query":"a"}}"#
    );
    let binary = vec![0xff, 0x00, 0xfe, b'g', b'a', b'r', b'b', 0xc3];
    let poison: Vec<Produced> = vec![
        (
            Some(b"k-binary".to_vec()),
            Some(binary.clone()),
            h(&[("trace", Some(b"t-1")), ("empty", None)]),
        ),
        (
            Some(b"k-tomb".to_vec()),
            None,
            h(&[("trace", Some(b"t-2"))]),
        ),
        (
            Some(b"k-json".to_vec()),
            Some(br#"{"event_id":"x","ts":"#.to_vec()),
            Vec::new(),
        ),
        (None, Some(missing.into_bytes()), h(&[("h", Some(b"v"))])),
    ];
    let mut all = poison.clone();
    all.insert(
        2,
        (Some(b"k-ok".to_vec()), Some(valid.into_bytes()), Vec::new()),
    );
    produce_raw(&topic, &all);
    let mut want = poison.clone();
    want.sort();

    // the envelope format (the default): key and headers as they were, payload as text,
    // base64 or null
    let dlq = format!("{topic}-dlq");
    let (redis, pg) = (fresh_redis(8), fresh_pg("tm_dlq_orig"));
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
        ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
    ];
    run_to_end(&topic, "dlqorig", &format!("{topic}-a"), &[], &env);
    let letters = dead_letters(&dlq);
    assert_eq!(letters.len(), poison.len(), "every poison record once");
    for l in &letters {
        let (key, value, headers) = poison.iter().find(|(k, ..)| *k == l.record_key).unwrap();
        assert_eq!(&l.record_key, key, "the letter's key is the record's");
        assert_eq!(&without_error_headers(&l.raw_headers), headers, "{}", l.key);
        assert_eq!(l.headers["tidemark.dlq.format"], "envelope");
        let e = &l.envelope;
        match value {
            None => {
                assert_eq!(e["payload"], Value::Null, "a tombstone is null: {e}");
                assert!(e.get("payload_base64").is_none());
            }
            Some(v) if v == &binary => {
                assert_eq!(e["payload"], Value::Null);
                let b64 = e["payload_base64"].as_str().unwrap();
                assert_eq!(
                    BASE64.decode(b64).unwrap(),
                    binary,
                    "bytes whole, in base64"
                );
            }
            Some(v) => assert_eq!(e["payload"].as_str().unwrap().as_bytes(), &v[..]),
        }
        assert_eq!(e["payload_truncated"], false);
    }

    // replayed: the records exactly as they were produced
    let again = fresh_topic("dlq-replayed", 1);
    let out = tidemark(&["dlq", "replay", "--to", &again], &env);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("replayed {} records", poison.len())),
        "{said}"
    );
    assert_eq!(
        records_of(&again),
        want,
        "the replay re-sends the originals"
    );
    let only = fresh_topic("dlq-filtered", 1);
    tidemark(
        &["dlq", "replay", "--to", &only, "--reason", "missing_field"],
        &env,
    );
    let filtered = records_of(&only);
    assert_eq!(filtered.len(), 1, "one missing_field letter");
    assert_eq!(filtered[0].0, None);

    // the connect format: the value is the record's own bytes (a tombstone stays one)
    let dlq2 = format!("{topic}-dlq-connect");
    let (redis2, pg2) = (fresh_redis(9), fresh_pg("tm_dlq_orig2"));
    let env2 = [
        ("TIDEMARK_REDIS", redis2.as_str()),
        ("TIDEMARK_PG", pg2.as_str()),
        ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq2.as_str()),
        ("TIDEMARK_DLQ__FORMAT", "connect"),
    ];
    run_to_end(&topic, "dlqorig2", &format!("{topic}-b"), &[], &env2);
    let mut got: Vec<Produced> = dead_letters(&dlq2)
        .into_iter()
        .map(|l| (l.record_key, l.value, without_error_headers(&l.raw_headers)))
        .collect();
    got.sort();
    assert_eq!(got, want, "connect letters carry the originals");
    let again2 = fresh_topic("dlq-replayed-connect", 1);
    tidemark(&["dlq", "replay", "--to", &again2], &env2);
    assert_eq!(records_of(&again2), want);

    // Kafka's own console consumer reads the letters, headers and all
    let libs = std::env::var("KAFKA_LIBS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/tidemark/services/kafka-4.1.1/libs",
            std::env::var("HOME").unwrap()
        )
    });
    let out = std::process::Command::new("java")
        .args([
            "-cp",
            &format!("{libs}/*"),
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
        ])
        .args([
            "--bootstrap-server",
            &kafka(),
            "--topic",
            &dlq2,
            "--from-beginning",
        ])
        .args([
            "--timeout-ms",
            "10000",
            "--max-messages",
            &poison.len().to_string(),
        ])
        .args([
            "--property",
            "print.headers=true",
            "--property",
            "print.key=true",
        ])
        .output()
        .expect("java (scripts/services.sh fetches Kafka's tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    // a record per letter (the stack trace header spans two lines, as Connect's do)
    assert!(
        err.contains(&format!("Processed a total of {} messages", poison.len())),
        "{err}"
    );
    assert_eq!(
        text.matches("tidemark.dlq.format:connect\t").count(),
        poison.len(),
        "{text}"
    );
    assert!(
        text.contains("__connect.errors.exception.class.name:io.tidemark.InvalidRecordException"),
        "{text}"
    );
    assert!(
        text.contains("trace:t-1,empty:null,__connect.errors.topic:"),
        "the original headers first: {text}"
    );
    let json_line = text
        .lines()
        .find(|l| l.contains("\tk-json\t"))
        .unwrap_or_else(|| panic!("{text}"));
    for part in ["tidemark.errors.reason:json", r#"{"event_id":"x","ts":"#] {
        assert!(json_line.contains(part), "{part} in {json_line}");
    }
}
