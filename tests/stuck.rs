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

/// What an ended child wrote to its piped stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < until, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn a_store_that_stops_answering_makes_the_engine_unready_and_a_stop_still_ends_in_time() {
    let (topic, file) = common::generated_stream("stuck", 3_000, 31, &[]);
    let newest = newest_ts(&file);
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
        .args(live_args(&topic, "stuck"))
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
    let (status, took) = terminate(&mut child);
    let stderr = stderr_of(&mut child);
    assert!(took < Duration::from_secs(30), "the stop took {took:?}");
    assert_eq!(status.code(), Some(1), "a stop that cannot finish exits 1");
    assert!(
        stderr.contains("redis: a write has been in flight"),
        "the message names what was stuck: {}",
        stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}

/// A store error that retrying cannot fix — here the feature table dropped while the
/// engine runs — is not retried forever: the run ends with exit 1 naming the error, and
/// no offset is committed past the tick it could not write.
#[test]
fn a_store_error_retrying_cannot_fix_ends_the_run_naming_it() {
    let (topic, file) = common::generated_stream("unfixable", 2_000, 33, &[]);
    let newest = newest_ts(&file);
    let pg = fresh_pg("tm_unfixable");
    let http = free_port();
    let mut child = engine_command()
        .args(["run", "--topic", &topic, "--job", "unfixable"])
        .args(["--group-id", &topic, "--http", &format!("127.0.0.1:{http}")])
        .env("TIDEMARK_PG", &pg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("ready", 60, || readyz(http).0 == 200);
    let mut client = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    wait_for("the first features written", 30, || {
        client
            .query_one("SELECT count(*) FROM feat_doc", &[])
            .is_ok_and(|r| r.get::<_, i64>(0) > 0)
    });
    client.batch_execute("DROP TABLE feat_doc").unwrap();
    let click = format!(
        r#"{{"event_id":"after-drop","event_type":"click","ts":{},"user_id":"u","session_id":"s","query":"q","doc_id":"d-after"}}"#,
        newest + 1
    );
    produce(&topic, &[&click]);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the run went on retrying an error that cannot pass");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("feat_doc") && stderr.contains("retrying cannot fix"),
        "the error names the table and why the run ended: {stderr}"
    );
}

/// A bug that panics one dataflow worker (a crash point that panics instead of aborting,
/// on worker thread or checkpointer) ends the process, non-zero and naming the thread,
/// instead of leaving the other workers waiting for it forever (a `run --exit-at-end`
/// once spun for an hour that way).
#[test]
fn a_worker_that_panics_ends_the_process() {
    let (topic, _) = generated_stream("stuck-panic", 20_000, 3, &[]);
    let mut cmd = engine_command();
    cmd.args(replay_args(&topic, "panics"))
        .args(["--workers", "2"])
        .env("TIDEMARK_CRASH_AT", "snapshot:1:panic")
        .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "200")
        .env("TIDEMARK_KAFKA__POLL_BATCH", "100");
    let out = output_within(&mut cmd, Duration::from_secs(90));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run failed: {}", out.status);
    assert!(
        log.contains("crash point snapshot reached: panicking") && log.contains("aborting"),
        "the panic and the abort are in the log: {log}"
    );
}
