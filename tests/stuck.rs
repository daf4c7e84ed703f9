//! A store that stops answering mid-run — the slowest client there is — behind a proxy the
//! test freezes: `/readyz` turns 503 naming it once its write has been in flight past
//! `health.unready_after_ms`, turns 200 again when it answers, and a SIGTERM while it is
//! frozen still ends the process within 30 s, with exit 1 and a message naming it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Forwards connections to `to` until `frozen`, when it holds every byte where it is.
fn proxy(to: String, frozen: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let frozen = frozen.clone();
                std::thread::spawn(move || {
                    from.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        if frozen.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        match from.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if into.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        }
    });
    port
}

fn readyz(port: u16) -> (u16, String) {
    http_get(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(2),
    )
    .unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < until, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_store_that_stops_answering_makes_the_engine_unready_and_a_stop_still_ends_in_time() {
    let (topic, file) = common::generated_stream("stuck", 3_000, 31, &[]);
    let newest = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts"].as_u64())
        .max()
        .unwrap();
    // new clicks after the generated stream: each round changes features to write
    let clicks = |round: u64| -> Vec<String> {
        (0..200)
            .map(|i| {
                format!(
                    r#"{{"event_id":"r{round}-{i}","event_type":"click","ts":{},"user_id":"u","session_id":"s","query":"q","doc_id":"d{i}"}}"#,
                    newest + round * 60_000 + i
                )
            })
            .collect()
    };
    let redis = fresh_redis(10);
    let frozen = Arc::new(AtomicBool::new(false));
    let real = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let port = proxy(real, frozen.clone());
    let through = format!("redis://127.0.0.1:{port}/10");
    let http = free_port();
    let mut child = engine_command()
        .args([
            "run",
            "--topic",
            &topic,
            "--job",
            "stuck",
            "--group-id",
            &topic,
        ])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .env("TIDEMARK_REDIS", &through)
        .env("TIDEMARK_HEALTH__UNREADY_AFTER_MS", "2000")
        .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "500")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("ready", 60, || readyz(http).0 == 200);

    frozen.store(true, Ordering::Relaxed);
    let round = clicks(1);
    produce(
        &topic,
        &round.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_for("not ready, naming the write in flight", 30, || {
        let (status, body) = readyz(http);
        status == 503 && body.contains("redis: a write has been in flight")
    });
    frozen.store(false, Ordering::Relaxed);
    wait_for("ready again", 30, || readyz(http).0 == 200);

    frozen.store(true, Ordering::Relaxed);
    let round = clicks(2);
    produce(
        &topic,
        &round.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let sent = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(took < Duration::from_secs(30), "the stop took {took:?}");
    assert_eq!(status.code(), Some(1), "a stop that cannot finish exits 1");
    assert!(
        stderr.contains("redis: a write has been in flight"),
        "the message names what was stuck: {}",
        stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}
