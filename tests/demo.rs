//! `demo`, the README's first command, on every family: it runs on the embedded store
//! with no services, prints its summary and stops cleanly when its time is up.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_demo_of_every_family_runs_and_stops() {
    for family in ["search", "reading", "ads", "commerce", "watch"] {
        let archive =
            std::env::temp_dir().join(format!("tidemark-demo-{family}-{}", std::process::id()));
        let mut cmd = engine_command();
        cmd.args(["demo", "--dataflow", family, "--seconds", "3"])
            .args(["--http", "127.0.0.1:0", "--rate", "2000"])
            .arg("--archive")
            .arg(&archive);
        let out = output_within(&mut cmd, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "demo --dataflow {family}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout
            .lines()
            .find(|l| l.contains("consumed"))
            .unwrap_or("");
        let consumed: u64 = summary
            .split_whitespace()
            .skip_while(|w| *w != "consumed")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            consumed > 0,
            "demo --dataflow {family} consumed nothing: {stdout}"
        );
        // a read of a real entity of this family, and the durable time as a person reads it
        let hint = stdout.lines().find(|l| l.starts_with("try: curl http://"));
        assert!(
            hint.is_some_and(|h| h.contains("/features/")),
            "demo --dataflow {family} names no entity to read: {stdout}"
        );
        assert!(
            summary.contains("durable up to 20") || summary.contains("nothing durable yet"),
            "{summary}"
        );
        // the demo archives what it consumed, at the latest when it stops
        let archived = archived_records(&archive);
        assert!(
            archived >= consumed,
            "demo --dataflow {family} archived {archived} of more than {consumed} records"
        );
        let _ = std::fs::remove_dir_all(&archive);
    }
}

/// The records of every Parquet file under `dir`.
fn archived_records(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                archived_records(&p)
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let records = tidemark::archive::file::decode(bytes.into()).unwrap();
                records.len() as u64
            }
        })
        .sum()
}

/// Seed 004's worker status: `GET /stream/worker` answers `/status`'s document, whose
/// watch dataflow carries `feature_loop` with the watches that updated features, the
/// duplicate watches and the history's size.
#[test]
fn the_watch_demo_reports_seed_004s_feature_loop() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = demo_server("watch", &addr, 20, 3000);
    let started = std::time::Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(60) {
        let got = http_get(
            &format!("http://{addr}/stream/worker"),
            Duration::from_secs(2),
        );
        if let Some((200, body)) = got {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let fl = v["dataflows"]["watch"]["feature_loop"].clone();
            if fl["watch_feature_updates"].as_u64().unwrap_or(0) > 100
                && fl["watch_duplicates"].as_u64().unwrap_or(0) > 0
            {
                seen = Some(fl);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, status) = http_get(&format!("http://{addr}/status"), Duration::from_secs(2))
        .expect("/status answers");
    let worker = http_get(
        &format!("http://{addr}/stream/worker"),
        Duration::from_secs(2),
    );
    let _ = child.kill();
    let _ = child.wait();
    let fl = seen.expect("watches and duplicate watches counted within a minute");
    assert_eq!(fl["history_size"], 20, "{fl}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let (_, worker) = worker.expect("/stream/worker answers");
    let worker: serde_json::Value = serde_json::from_str(&worker).unwrap();
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    assert_eq!(keys(&status), keys(&worker), "the same document");
    assert_eq!(status["job"], worker["job"]);
    assert!(
        status["dataflows"]["watch"]["feature_loop"]["watch_feature_updates"]
            .as_u64()
            .unwrap()
            >= fl["watch_feature_updates"].as_u64().unwrap(),
        "/status carries the same, moving on"
    );
}

/// The demo exports what `run` exports (its records counted per topic like Kafka's, the
/// counters nothing moved yet at 0, `process_*`, the build), and Prometheus's linter
/// takes it: each family's scrape, as a person trying it first would point a scraper at.
#[test]
fn the_demo_exports_the_runs_metrics_and_promtool_takes_them() {
    for (family, topic) in [("search", "search-events"), ("reading", "reading-events")] {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = demo_server(family, &addr, 30, 2000);
        let topic_label = format!("topic=\"{topic}\"");
        let started = std::time::Instant::now();
        let mut text = String::new();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some((200, body)) =
                http_get(&format!("http://{addr}/metrics"), Duration::from_secs(2))
            {
                text = body;
                if metric(&text, "tidemark_events_consumed_total", &[&topic_label])
                    .is_some_and(|n| n > 0.0)
                {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        let m = |name: &str| metric(&text, name, &[]);
        assert!(
            metric(&text, "tidemark_events_consumed_total", &[&topic_label]) > Some(0.0),
            "{family}: records counted per topic\n{text}"
        );
        for zero in [
            "tidemark_checkpoint_failures_total",
            "tidemark_dlq_failed_total",
            "tidemark_archive_write_failures_total",
            "tidemark_batch_failures_total",
        ] {
            assert_eq!(m(zero), Some(0.0), "{family}: {zero} at 0 from the start");
        }
        for name in [
            "tidemark_events_accepted_total",
            "tidemark_checkpoints_total",
            "tidemark_quality_alerts_total",
            "process_cpu_seconds_total",
            "process_open_fds",
            "tidemark_build_info",
        ] {
            assert!(m(name).is_some(), "{family}: {name} exported");
        }
        promtool_clean(&text);
    }
}
