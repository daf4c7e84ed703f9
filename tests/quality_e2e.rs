//! Data quality end to end (issue #22): search traffic with injected nulls, unknown values
//! and drift through a real Kafka topic into Postgres; the report rows and the webhook's
//! messages (a local HTTP receiver) are exactly what the injections call for, a late event
//! corrects its hour and resolves it after a restart, and a receiver that is down, slow or
//! failing never holds the job up.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const HOUR: u64 = 3_600_000;
const BASE: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// How the receiver answers.
#[derive(Clone, Copy)]
struct Mode {
    status: u16,
    delay: Duration,
}

/// A local HTTP receiver: records each POST's JSON body and answers per its mode.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break buf[end + 4..end + 4 + length].to_vec();
                        }
                    };
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    std::thread::sleep(mode.delay);
                    let reply = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        mode.status
                    );
                    let _ = s.write_all(reply.as_bytes());
                });
            }
        });
        Receiver { url, bodies }
    }
    fn texts(&self) -> Vec<String> {
        let mut t: Vec<String> = (self.bodies.lock().unwrap().iter())
            .map(|b| b["text"].as_str().unwrap_or_default().to_string())
            .collect();
        t.sort();
        t
    }
}

fn event(id: &str, ts: u64, dwell: Option<u64>, device: Value) -> String {
    let mut e = json!({"event_id": id, "ts": ts, "user_id": "u1", "session_id": format!("s{id}"),
                       "query": "q", "doc_id": format!("doc-{}", ts % 7), "device": device});
    match dwell {
        Some(ms) => {
            e["event_type"] = json!("dwell");
            e["dwell_ms"] = json!(ms);
        }
        None => e["event_type"] = json!("click"),
    }
    e.to_string()
}

/// An autocomplete impression (device `ios`): it changes no doc.
fn ac_impression(id: &str, ts: u64) -> String {
    json!({"event_id": id, "ts": ts, "user_id": "u1", "session_id": format!("s{id}"),
           "event_type": "ac_impression", "prefix": "q", "candidates": ["q1", "q2"],
           "device": "ios"})
    .to_string()
}

/// The "ctr in range" rows: hour → (failures, total, passed).
fn ctr_rows(
    rows: &std::collections::BTreeMap<(String, String), (i64, i64, i64)>,
) -> Vec<(String, (i64, i64, i64))> {
    (rows.iter())
        .filter(|((_, e), _)| e == "ctr in range")
        .map(|((h, _), v)| (h.clone(), *v))
        .collect()
}

/// Four hours of 20 events each (10 clicks, 10 dwells of 2-4 s), with hour 1's first four
/// devices null, three of hour 2's unknown, and hour 3's dwells drifted to 30 s; and one
/// event at 4:30 that closes hours 0-3.
fn traffic() -> Vec<String> {
    let mut out = Vec::new();
    for h in 0..4u64 {
        for i in 0..20u64 {
            let ts = BASE + h * HOUR + i * 60_000;
            let device = match (h, i) {
                (1, 0..4) => Value::Null,
                (2, 5..8) => json!("tv"),
                _ => json!(["ios", "android", "web"][i as usize % 3]),
            };
            let dwell = (i % 2 == 1).then_some(if h == 3 { 30_000 } else { 2_000 + i * 100 });
            out.push(event(&format!("h{h}-{i}"), ts, dwell, device));
        }
    }
    out.push(event(
        "close",
        BASE + 4 * HOUR + 30 * 60_000,
        None,
        json!("web"),
    ));
    out
}

fn config(dir: &std::path::Path, webhook: &str, attempts: u32) -> std::path::PathBuf {
    let path = dir.join("quality.toml");
    let toml = format!(
        r#"
[quality]
builtin = false
[quality.alert]
webhook = "{webhook}"
timeout_ms = 500
max_attempts = {attempts}
[[quality.expect]]
name = "device set"
on = "event:search-events.device"
check = "not_null"
[[quality.expect]]
name = "device known"
on = "event:search-events.device"
check = "in_set"
values = ["ios", "android", "web"]
max_failure_share = 0.1
[[quality.expect]]
name = "dwell drift"
on = "event:search-events.dwell_ms"
check = "mean_between"
min = 1000
max = 5000
[[quality.expect]]
name = "dwell range"
on = "event:search-events.dwell_ms"
check = "between"
min = 0
max = 60000
[[quality.expect]]
name = "ctr in range"
on = "feature:doc.ctr_doc"
check = "between"
min = 0.0
max = 1.0
"#
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// A job of its own on `topic` (read as the family's topic) with `cfg`, into `pg`.
fn run_job(topic: &str, job: &str, cfg: &std::path::Path, pg: &str) -> std::process::Output {
    let mut cmd = engine_command();
    cmd.args([
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--topic",
        topic,
        "--exit-at-end",
    ])
    .args(["--job", job, "--group-id", job])
    .env("TIDEMARK_PG", pg)
    .env("RUST_LOG", "warn,tidemark::sink::webhook=info");
    let out = output_within(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every report row: (hour, expectation) → (failures, total, passed).
fn report(pg: &str) -> std::collections::BTreeMap<(String, String), (i64, i64, i64)> {
    let mut c = postgres::Client::connect(pg, postgres::NoTls).unwrap();
    c.query(
        "SELECT hour, expectation, failures, total, passed FROM quality_report",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
    .collect()
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tidemark-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn reports_and_alerts_what_was_injected_and_a_late_event_resolves_its_hour() {
    let receiver = Receiver::start(Mode {
        status: 200,
        delay: Duration::ZERO,
    });
    let (d, topic) = (dir("quality-e2e"), fresh_topic("quality", 2));
    let pg = fresh_pg("quality_e2e");
    let cfg = config(&d, &receiver.url, 3);
    let lines = traffic();
    produce(
        &topic,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    run_job(&topic, &topic, &cfg, &pg);

    // the injected faults, each in its hour, and nothing else
    let rows = report(&pg);
    let h = |i: u64| format!("2026-01-01T0{i}:00:00Z");
    let row = |i: u64, name: &str| rows[&(h(i), name.to_string())];
    assert_eq!(row(1, "device set"), (4, 20, 0));
    assert_eq!(row(2, "device known"), (3, 20, 0));
    assert_eq!(row(3, "dwell drift"), (1, 10, 0));
    let failed: Vec<_> = rows
        .iter()
        .filter(|(_, v)| v.2 == 0)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(failed.len(), 3, "only the injected hours fail: {failed:?}");
    for i in 0..4 {
        assert_eq!(row(i, "dwell range"), (0, 10, 1));
    }
    // the doc changes were checked (the replay reads the topic in one batch: one tick)
    let ctr: i64 = ctr_rows(&rows).iter().map(|(_, v)| v.1).sum();
    assert!(ctr >= 7, "every doc's change is checked: {ctr}");
    // one message per failed (expectation, hour), none for what passed or is open
    let texts = receiver.texts();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    for (i, name) in [(1, "device set"), (2, "device known"), (3, "dwell drift")] {
        assert!(
            texts
                .iter()
                .any(|t| t.contains("failed") && t.contains(name) && t.contains(&h(i))),
            "{name} at hour {i}: {texts:#?}"
        );
    }
    let first = receiver.bodies.lock().unwrap()[0].clone();
    assert_eq!(first["blocks"][0]["type"], "header", "{first}");

    // `quality report` prints the hour, exit 1 when one failed, 0 when none did
    let q = |hour: &str| {
        let mut cmd = engine_command();
        cmd.args([
            "quality",
            "report",
            "--config",
            cfg.to_str().unwrap(),
            "--hour",
            hour,
        ])
        .args(["--job", &topic])
        .env("TIDEMARK_PG", &pg);
        output_within(&mut cmd, Duration::from_secs(30))
    };
    let out = q("2026-01-01T01:20:00Z");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("device set") && text.contains("FAIL") && text.contains("(closed)"),
        "{text}"
    );
    assert_eq!(q("2026-01-01T00:00:00Z").status.code(), Some(0));
    assert_eq!(
        q("2025-01-01T00:00:00Z").status.code(),
        Some(2),
        "no report for an hour nothing reached"
    );

    // a late batch of good events for hour 2, read after a restart: its row is corrected
    // from the checkpointed tallies, the hour is told resolved, and nothing else is told
    // again. They are autocomplete impressions, which change no doc: the doc rows the
    // restore sets up again are not changes, so "ctr in range" stays as it was.
    let ctr_before = ctr_rows(&rows);
    let late: Vec<String> = (0..20)
        .map(|i| ac_impression(&format!("late-{i}"), BASE + 2 * HOUR + i * 1000))
        .chain([ac_impression("close2", BASE + 5 * HOUR + 30 * 60_000)])
        .collect();
    produce(&topic, &late.iter().map(String::as_str).collect::<Vec<_>>());
    run_job(&topic, &topic, &cfg, &pg);
    let rows = report(&pg);
    assert_eq!(
        ctr_rows(&rows),
        ctr_before,
        "a restore's rows are not changes"
    );
    assert_eq!(rows[&(h(2), "device known".to_string())], (3, 40, 1));
    assert_eq!(
        rows[&(h(1), "device set".to_string())],
        (4, 20, 0),
        "restored, not recounted"
    );
    let texts = receiver.texts();
    assert_eq!(texts.len(), 4, "{texts:#?}");
    assert!(texts
        .iter()
        .any(|t| t.contains("resolved") && t.contains("device known") && t.contains(&h(2))));
}

#[test]
fn a_receiver_down_slow_or_failing_never_holds_the_job_up() {
    let lines = traffic();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let failing = Receiver::start(Mode {
        status: 500,
        delay: Duration::ZERO,
    });
    let refusing = Receiver::start(Mode {
        status: 404,
        delay: Duration::ZERO,
    });
    let slow = Receiver::start(Mode {
        status: 200,
        delay: Duration::from_secs(3),
    });
    for (name, url, want) in [
        ("down", down.as_str(), None),
        // retried up to max_attempts (2), with backoff
        ("failing", failing.url.as_str(), Some((&failing, 6))),
        // a 4xx would fail again: not retried
        ("refusing", refusing.url.as_str(), Some((&refusing, 3))),
        // each POST times out after 500 ms and is tried twice
        ("slow", slow.url.as_str(), Some((&slow, 6))),
    ] {
        let (d, topic) = (
            dir(&format!("quality-{name}")),
            fresh_topic(&format!("quality-{name}"), 1),
        );
        let pg = fresh_pg(&format!("quality_{name}"));
        let cfg = config(&d, url, 2);
        produce(&topic, &lines);
        let started = Instant::now();
        let out = run_job(&topic, &topic, &cfg, &pg);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(40),
            "{name}: the job took {took:?}"
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("not delivered"),
            "{name}: the failures are logged: {log}"
        );
        assert!(
            !log.contains(url),
            "{name}: the webhook's URL (its secret) is not logged"
        );
        // the report is whole whatever the receiver did
        assert_eq!(
            report(&pg).values().filter(|v| v.2 == 0).count(),
            3,
            "{name}"
        );
        if let Some((r, requests)) = want {
            assert_eq!(r.bodies.lock().unwrap().len(), requests, "{name}: requests");
        }
    }
}
