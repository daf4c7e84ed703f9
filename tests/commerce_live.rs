//! A cart abandoned in a quiet stream: nothing arrives after the carts, stream time
//! follows the clock once the partition is idle, and each cart's 10-minute mark sets
//! `cart_abandonment_risk` in Redis and on the pattern topic when the clock passes it — not
//! before. A purchase of one product then clears its risk (a tombstone on the topic) and
//! leaves the other's. The read API serves the shopper's recent products as a list.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn event(id: &str, action: &str, product: &str, ts: u64) -> String {
    format!(
        r#"{{"event_id":"{id}","user_id":"quiet","session_id":"s1","event_type":"{action}","timestamp":{ts},"context":{{"device":{{"type":"mobile"}}}},"properties":{{"product_id":"{product}","price":19.9}}}}"#
    )
}

fn pattern_detected(redis: &str) -> Option<String> {
    let mut c = redis::Client::open(redis)
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HGET")
        .arg("feat:shopper:quiet")
        .arg("pattern_detected")
        .query(&mut c)
        .unwrap()
}

#[test]
fn a_cart_mark_passed_in_a_quiet_stream_sets_the_risk_and_a_purchase_clears_it() {
    let topic = fresh_topic("commerce-live", 1);
    let patterns = format!("{topic}-patterns");
    let redis = fresh_redis(14);
    let pg = fresh_pg("tm_commerce_live");
    // two carts whose marks come 20 s from now, once the engine is up (marks are whole
    // seconds)
    let cart_ts = now_ms() + 20_000 - 10 * 60_000;
    let mark = (cart_ts + 10 * 60_000).div_ceil(1_000) * 1_000;
    let lines = [
        event("v1", "view", "prod_1", cart_ts - 1_000),
        event("c1", "add_to_cart", "prod_1", cart_ts),
        event("c2", "add_to_cart", "prod_2", cart_ts),
    ];
    produce(
        &topic,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let http = free_port();
    let child = common::services::KillOnDrop(
        engine_command()
            .args(live_args(&topic, "commerce-live"))
            .args([
                "--dataflow",
                "commerce",
                "--http",
                &format!("127.0.0.1:{http}"),
            ])
            .env("TIDEMARK_REDIS", &redis)
            .env("TIDEMARK_PG", &pg)
            .env("TIDEMARK_KAFKA__IDLE_TIMEOUT_MS", "500")
            .env("TIDEMARK_DATAFLOWS__COMMERCE__PATTERNS_TOPIC", &patterns)
            .spawn()
            .unwrap(),
    );
    // before the mark: the carts are there, the risk is not
    let until_mark = Duration::from_millis(mark.saturating_sub(now_ms() + 1_000));
    std::thread::sleep(until_mark);
    let before = pattern_detected(&redis);
    assert!(now_ms() < mark, "checked before the mark");
    assert_eq!(before, None, "no risk before the mark");
    let started = Instant::now();
    while pattern_detected(&redis).is_none() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let late_by = now_ms().saturating_sub(mark);
    assert_eq!(
        pattern_detected(&redis).as_deref(),
        Some("cart_abandonment_risk"),
        "set once the clock passed the mark"
    );
    // stream time follows the clock once the partition has been idle for 500 ms
    assert!(late_by < 3_000, "shown {late_by} ms after its mark");
    let key = |product: &str| format!("quiet|cart_abandonment_risk|{product}|{mark}");
    // the purchase of one product clears its risk, not the other's
    produce(&topic, &[&event("b2", "purchase", "prod_2", now_ms())]);
    let cleared = Instant::now();
    let records = loop {
        let records = topic_records(&patterns);
        let tombstone = records
            .iter()
            .any(|(k, v)| *k == key("prod_2") && v.is_none());
        if tombstone || cleared.elapsed() > Duration::from_secs(20) {
            break records;
        }
    };
    let (recent, features) = (
        http_get(
            &format!("http://127.0.0.1:{http}/features/user_recent/quiet"),
            Duration::from_secs(5),
        ),
        http_get(
            &format!("http://127.0.0.1:{http}/features/shopper/quiet"),
            Duration::from_secs(5),
        ),
    );
    // killed when the test ends, also when it fails
    drop(child);
    let of = |k: String| {
        records
            .iter()
            .filter(|(x, _)| *x == k)
            .cloned()
            .collect::<Vec<_>>()
    };
    let p1 = of(key("prod_1"));
    assert_eq!(
        p1.len(),
        1,
        "one record for the risk that stays: {records:?}"
    );
    let record = p1[0].1.as_ref().unwrap();
    assert_eq!(record["product_ids"], serde_json::json!(["prod_1"]));
    assert_eq!(record["started_ts"], serde_json::json!(cart_ts));
    let p2 = of(key("prod_2"));
    assert!(
        p2.len() == 2 && p2[0].1.is_some() && p2[1].1.is_none(),
        "set, then a tombstone: {p2:?}"
    );
    assert_eq!(
        pattern_detected(&redis).as_deref(),
        Some("cart_abandonment_risk")
    );
    let (status, body) = recent.expect("the read API answers");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["features"]["product_ids"],
        serde_json::json!(["prod_2", "prod_1"]),
        "newest first: {body}"
    );
    let (status, body) = features.expect("the read API answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("cart_abandonment_risk"), "{body}");
}
