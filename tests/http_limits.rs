//! The read API under clients that take without giving: hundreds of idle connections, a
//! Feast request for millions of values. The engine serves at most
//! `serve.max_connections` at once (the rest wait in the listen queue, holding none of its
//! file descriptors), closes a connection that sends no request within
//! `serve.header_timeout_ms`, refuses an oversized request with a 413 and a JSON body —
//! and its checkpoints go on meanwhile.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn get(url: &str) -> Option<(u16, String)> {
    http_get(url, Duration::from_secs(30))
}

fn checkpoints_saved(base: &str) -> (u64, u64) {
    let (_, body) = get(&format!("{base}/status")).expect("/status answers");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        s["checkpoint"]["saved"].as_u64().unwrap_or(0),
        s["checkpoint"]["failures"].as_u64().unwrap_or(0),
    )
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn idle_connections_and_huge_requests_cannot_starve_the_engine() {
    let (topic, _) = generated_stream("http-limits", 2_000, 51, &[]);
    let redis = fresh_redis(3);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = common::services::KillOnDrop(
        engine_command()
            .args(live_args(&topic, "httplimits"))
            .args(["--http", &format!("127.0.0.1:{port}")])
            .env("TIDEMARK_REDIS", &redis)
            .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "300")
            .env("TIDEMARK_SERVE__MAX_CONNECTIONS", "16")
            .env("TIDEMARK_SERVE__HEADER_TIMEOUT_MS", "1500")
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while get(&format!("{base}/readyz")).is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < until, "ready within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = open_fds(child.0.id());
    let (saved_before, _) = checkpoints_saved(&base);

    // 200 connections that never send a byte (more than the listen queue holds)
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(child.0.id());
    assert!(
        during <= before + 16 + 8,
        "the engine holds {during} descriptors with 200 idle clients (before: {before})"
    );
    // the ones it took are closed after the header timeout
    let mut first = idle[0].try_clone().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    assert_eq!(first.read(&mut buf).unwrap_or(0), 0, "closed by the server");
    assert!(started.elapsed() < Duration::from_secs(5));
    // and the engine's work goes on: checkpoints are saved meanwhile
    std::thread::sleep(Duration::from_secs(2));
    drop(idle);
    let (saved, failures) = checkpoints_saved(&base);
    assert!(
        saved > saved_before + 3,
        "checkpoints went on: {saved_before} → {saved}"
    );
    assert_eq!(failures, 0, "no checkpoint failed");

    // 10,000 entities × 500 copies of a feature: refused, with a JSON reason
    let features: Vec<String> = (0..500).map(|_| "doc:clicks_7d".to_string()).collect();
    let ids: Vec<String> = (0..10_000).map(|i| format!("doc-{i}")).collect();
    let body = serde_json::json!({"features": features, "entities": {"doc_id": ids}});
    let r = common::http_client()
        .build()
        .unwrap()
        .post(format!("{base}/get-online-features"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let e: serde_json::Value = r.json().unwrap();
    let (class, message) = common::feast_detail(&e).expect("a Feast-shaped error");
    assert!(
        class == "FeastError" && message.contains("serve.max_feature_values"),
        "{e}"
    );
    // a body announced over serve.max_request_bytes is refused at once, before any of it
    // is sent (a client that goes on writing it may see the connection closed under it:
    // the server does not read what it refuses)
    use std::io::Write;
    let mut raw = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        raw,
        "POST /get-online-features HTTP/1.1\r\nHost: tidemark\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        3 << 20
    )
    .unwrap();
    let mut status = [0u8; 12];
    raw.read_exact(&mut status).unwrap();
    assert_eq!(
        &status,
        b"HTTP/1.1 413",
        "{}",
        String::from_utf8_lossy(&status)
    );
    let mut rest = String::new();
    let _ = raw.read_to_string(&mut rest);
    assert!(rest.contains("serve.max_request_bytes"), "{rest}");
    // killed when the test ends, also when it fails
    drop(child);
}
