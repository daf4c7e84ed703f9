//! A live `run` against real Kafka and Redis: only the fields that changed are written.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tidemark::clock::now_ms;

fn produce(producer: &BaseProducer, topic: &str, json: String) {
    producer
        .send(BaseRecord::<(), String>::to(topic).payload(&json))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn field(url: &str, key: &str, f: &str) -> Option<String> {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("HGET").arg(key).arg(f).query(&mut c).unwrap()
}

fn wait_for(url: &str, key: &str, f: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while field(url, key, f).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{key}.{f} never became {want} (is {:?})",
            field(url, key, f)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the engine when the test ends, whatever happens.
struct Engine(std::process::Child);
impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn an_unchanged_feature_is_not_rewritten() {
    let topic = fresh_topic("live-search", 1);
    let redis = fresh_redis(9);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let event = |id: &str, body: &str| {
        format!(
            r#"{{"event_id":"{id}","ts":{},"user_id":"u","session_id":"s",{body}}}"#,
            now_ms()
        )
    };
    produce(
        &producer,
        &topic,
        event(
            "a",
            r#""event_type":"search_impression","query":"q","doc_ids":["x","y"]"#,
        ),
    );
    produce(
        &producer,
        &topic,
        event("b", r#""event_type":"click","query":"q","doc_id":"x""#),
    );
    let _engine = Engine(
        engine_command()
            .args([
                "run",
                "--topic",
                &topic,
                "--job",
                "live",
                "--group-id",
                &topic,
                "--workers",
                "1",
            ])
            .env("TIDEMARK_REDIS", &redis)
            .spawn()
            .unwrap(),
    );
    wait_for(&redis, "feat:doc:x", "clicks_7d", "1");
    assert_eq!(
        field(&redis, "feat:doc:x", "popularity_30d").as_deref(),
        Some("1")
    );

    // a value no write of the engine would produce: it stays until popularity changes
    let mut c = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HSET")
        .arg("feat:doc:x")
        .arg("popularity_30d")
        .arg("sentinel")
        .query::<()>(&mut c)
        .unwrap();
    let tick_before = field(&redis, "feat:doc:x", "_tick").unwrap();
    let y_tick = field(&redis, "feat:doc:y", "_tick").unwrap();

    // a short dwell changes dwell_sum_7d only
    produce(
        &producer,
        &topic,
        event(
            "c",
            r#""event_type":"dwell","query":"q","doc_id":"x","dwell_ms":1500"#,
        ),
    );
    wait_for(&redis, "feat:doc:x", "dwell_sum_7d", "1500");
    assert_eq!(
        field(&redis, "feat:doc:x", "popularity_30d").as_deref(),
        Some("sentinel"),
        "popularity was rewritten"
    );
    assert_ne!(
        field(&redis, "feat:doc:x", "_tick").unwrap(),
        tick_before,
        "the change carries its tick"
    );
    // doc y saw no event: its hash is untouched
    assert_eq!(field(&redis, "feat:doc:y", "_tick"), Some(y_tick));

    // a click changes popularity, so it is written again
    produce(
        &producer,
        &topic,
        event("d", r#""event_type":"click","query":"q","doc_id":"x""#),
    );
    wait_for(&redis, "feat:doc:x", "popularity_30d", "2");
}
