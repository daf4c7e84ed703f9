//! Records a hostile producer sends (DESIGN §4, "no single record can stall the pipeline"):
//! ones whose DLQ envelope would exceed the producer's message limit, binary bytes, lists
//! of thousands of items, keys with NUL or thousands of characters; and valid records
//! whose entity a store can never take. Every run must end, count the valid events around
//! them exactly, and account for each hostile record.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use common::search::*;
use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sha2::{Digest, Sha256};

/// A one-partition topic that takes records of up to 3 MB.
fn roomy_topic(prefix: &str) -> String {
    let name = format!("{}-roomy", fresh_topic(prefix, 1));
    create_topic(&name, 1, &[("max.message.bytes", "3000000")]);
    name
}

/// Produces `records` in order to partition 0; returns each one's offset.
fn produce_all(topic: &str, records: &[Vec<u8>]) -> Vec<i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("message.max.bytes", "3000000")
        .create()
        .unwrap();
    records
        .iter()
        .map(|payload| {
            let record = FutureRecord::<(), [u8]>::to(topic)
                .payload(payload)
                .partition(0);
            block_on(producer.send(record, Duration::from_secs(30)))
                .map_err(|(e, _)| e)
                .unwrap()
                .offset
        })
        .collect()
}

/// `tidemark args…`, killed and failed if it does not end within `limit`.
fn run_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    output_within(engine_command().args(args).envs(env.iter().copied()), limit)
}

fn event(id: &str, ts: u64, body: &str) -> Vec<u8> {
    format!(r#"{{"event_id":"{id}","ts":{ts},"user_id":"u","session_id":"s",{body}}}"#).into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn records_that_cannot_fit_the_dlq_or_the_stores_are_passed_over_and_the_rest_counts() {
    let topic = roomy_topic("hostile");
    let dlq = format!("{topic}-dlq");
    let ts = 1_767_225_600_000u64;
    let click = |id: &str, doc: &str| {
        event(
            id,
            ts,
            &format!(r#""event_type":"click","query":"q","doc_id":"{doc}""#),
        )
    };
    let many_docs: Vec<String> = (0..2_000).map(|i| format!("\"d{i}\"")).collect();
    let mut huge = br#"{"event_id":"big","ts":1,"pad":""#.to_vec();
    huge.resize(1_048_577 - 2, b'x');
    huge.extend_from_slice(b"\"}");
    // (payload, the DLQ's error type; None = valid)
    let records: Vec<(Vec<u8>, Option<&str>)> = vec![
        (click("a", "doc-a"), None),
        // JSON escapes control characters six-fold: 1.8 MB in an envelope
        (vec![1u8; 300_000], Some("json")),
        (huge.clone(), Some("oversized")),
        (
            event(
                "many",
                ts,
                &format!(
                    r#""event_type":"search_impression","query":"q","doc_ids":[{}]"#,
                    many_docs.join(",")
                ),
            ),
            Some("oversized"),
        ),
        (click("nul", "doc\\u0000x"), Some("range")),
        (click("long", &"k".repeat(3_000)), Some("oversized")),
        (click("b", "doc-b"), None),
    ];
    let payloads: Vec<Vec<u8>> = records.iter().map(|(p, _)| p.clone()).collect();
    let offsets = produce_all(&topic, &payloads);
    let redis = fresh_redis(12);
    let pg = fresh_pg("tm_hostile");
    let out = run_within(
        &replay_args(&topic, "hostile"),
        &[
            ("TIDEMARK_REDIS", redis.as_str()),
            ("TIDEMARK_PG", pg.as_str()),
            ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
        ],
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the valid events on either side count, in both stores
    let valid: String = records
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(p, _)| format!("{}\n", String::from_utf8_lossy(p)))
        .collect();
    let want = recount(&valid_events(&valid), ts);
    assert_matches("redis", &redis_features(&redis), &want);
    assert_matches("postgres", &postgres_hashes(&pg), &want);
    // each hostile record is in the DLQ once, cut to fit, with its size and hash
    let letters = dead_letters(&dlq);
    let mut by_key: BTreeMap<String, &DeadLetter> = BTreeMap::new();
    for l in &letters {
        assert!(
            by_key.insert(l.key.clone(), l).is_none(),
            "{} twice in the DLQ",
            l.key
        );
    }
    for ((payload, error), offset) in records.iter().zip(&offsets) {
        let key = format!("{topic}/0/{offset}");
        let Some(error) = error else {
            assert!(!by_key.contains_key(&key), "a valid record in the DLQ");
            continue;
        };
        let l = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("{key} ({error}) is not in the DLQ"));
        let e = &l.envelope;
        assert_eq!(e["error_type"], *error, "{key}: {}", e["error_message"]);
        assert_eq!(e["payload_bytes"], payload.len());
        assert_eq!(e["payload_sha256"], hex(&Sha256::digest(payload)));
        let kept = e["payload"].as_str().unwrap();
        assert!(String::from_utf8_lossy(payload).starts_with(kept));
        assert_eq!(
            e["payload_truncated"],
            kept.len() < payload.len(),
            "{key}: whether the payload was cut"
        );
    }
    assert_eq!(by_key.len(), 5);
    for key in [
        format!("{topic}/0/{}", offsets[1]),
        format!("{topic}/0/{}", offsets[2]),
    ] {
        assert_eq!(
            by_key[&key].envelope["payload_truncated"], true,
            "{key} could not go whole"
        );
    }
}

/// Keys a decoder lets through (the key limit raised) that a store refuses for good: a
/// 3,000-character `doc_id` is over Postgres' index row size, and a Redis key another
/// program made a string is of the wrong type. Each such entity update is reported once
/// (DLQ, `unstorable`) and the rest of the stream is written, in both stores.
#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn an_entity_a_store_can_never_take_is_reported_and_the_others_are_written() {
    let topic = fresh_topic("unstorable", 1);
    let dlq = format!("{topic}-dlq");
    let ts = 1_767_225_600_000u64;
    // incompressible, so Postgres cannot fit it in an index row by compressing it
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let long: String = (0..3_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize])
        })
        .collect();
    let click = |id: &str, doc: &str| {
        event(
            id,
            ts,
            &format!(r#""event_type":"click","query":"q","doc_id":"{doc}""#),
        )
    };
    let records = vec![
        click("a", "doc-a"),
        click("long", &long),
        click("w", "wrong-type"),
        click("b", "doc-b"),
    ];
    produce_all(&topic, &records);
    let redis = fresh_redis(13);
    let pg = fresh_pg("tm_unstorable");
    let mut r = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("feat:doc:wrong-type")
        .arg("another program's")
        .query(&mut r)
        .unwrap();
    let out = run_within(
        &replay_args(&topic, "unstorable"),
        &[
            ("TIDEMARK_REDIS", redis.as_str()),
            ("TIDEMARK_PG", pg.as_str()),
            ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
            ("TIDEMARK_INGEST__MAX_KEY_BYTES", "10000"),
        ],
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: String = records
        .iter()
        .map(|p| format!("{}\n", String::from_utf8_lossy(p)))
        .collect();
    let want = recount(&valid_events(&lines), ts);
    let without = |skip: &str| -> Hashes {
        let mut w = want.clone();
        w.retain(|k, _| !(k.starts_with("feat:doc:") && k.ends_with(skip)));
        w
    };
    // another program's string is as it was, and Redis holds the long key
    let theirs: String = redis::cmd("GET")
        .arg("feat:doc:wrong-type")
        .query(&mut r)
        .unwrap();
    assert_eq!(theirs, "another program's");
    let _: () = redis::cmd("DEL")
        .arg("feat:doc:wrong-type")
        .query(&mut r)
        .unwrap();
    assert_matches("redis", &redis_features(&redis), &without("wrong-type"));
    // Postgres holds neither row of the long key (its index cannot), nor its qd entity
    let mut no_long = without(&long);
    no_long.retain(|k, _| !k.ends_with(&long));
    assert_matches("postgres", &postgres_hashes(&pg), &no_long);
    let letters = dead_letters(&dlq);
    let reported: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l.envelope["error_type"], "unstorable", "{}", l.envelope);
            (
                l.envelope["sink"].as_str().unwrap().to_string(),
                l.envelope["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        reported.contains(&("redis".into(), "feat:doc:wrong-type".into())),
        "{reported:?}"
    );
    assert!(
        reported.iter().any(|(sink, e)| sink == "postgres"
            && e.starts_with("feat_doc:")
            && long.starts_with(&e[9..e.len().min(100)])),
        "{reported:?}"
    );
    // the qd entity of the long doc is refused by postgres too
    assert!(reported.len() >= 2, "{reported:?}");
}
