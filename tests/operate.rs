//! Operating Tidemark (DESIGN §6): `/metrics`, `/status`, `/livez`, `/readyz`, the read API
//! and its Feast-shaped twin, JSON logs, `config check` and `topics create`, against a live
//! engine on real Kafka, Redis and Postgres.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::services::*;
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client() -> reqwest::blocking::Client {
    common::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// (status, body); status 0 when nothing answers.
fn get(url: &str) -> (u16, String) {
    match client().get(url).send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn spawn_engine(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Option<&std::path::Path>,
) -> KillOnDrop {
    let mut cmd = engine_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(path) = stderr {
        cmd.stderr(Stdio::from(std::fs::File::create(path).unwrap()));
    }
    KillOnDrop(cmd.spawn().unwrap())
}

fn stop(mut engine: KillOnDrop) -> std::process::ExitStatus {
    std::process::Command::new("kill")
        .args(["-TERM", &engine.0.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..300 {
        if let Some(s) = engine.0.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the engine did not stop within 30 s of SIGTERM");
}

/// A stored string as the read API answers it.
fn as_json(v: &str) -> Value {
    v.parse::<i64>()
        .map(Value::from)
        .or_else(|_| v.parse::<f64>().map(Value::from))
        .unwrap_or(Value::String(v.into()))
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn a_live_run_reports_metrics_status_and_serves_reads_in_feast_shape() {
    let start = (tidemark::clock::now_ms() - 900_000).to_string();
    let (topic, file) = generated_stream("ops-live", 20_000, 11, &["--start-ms", &start]);
    let records = std::fs::read_to_string(&file).unwrap().lines().count() as f64;
    let redis = fresh_redis(10);
    let pg = fresh_pg("tm_ops");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = file.parent().unwrap().join("engine.log");
    let group = format!("{topic}-ops");
    let engine = spawn_engine(
        &[
            "--log-format",
            "json",
            "run",
            "--topic",
            &topic,
            "--job",
            "ops",
            "--group-id",
            &group,
            "--workers",
            "2",
            "--http",
            &format!("127.0.0.1:{port}"),
        ],
        &[
            ("TIDEMARK_REDIS", redis.as_str()),
            ("TIDEMARK_PG", pg.as_str()),
            ("TIDEMARK_CHECKPOINT__INTERVAL_MS", "1000"),
            ("TIDEMARK_SERVE__MAX_AGE_SECS__QD", "1"),
            ("RUST_LOG", "info"),
        ],
        Some(&log),
    );
    wait_until("/readyz answers 200", 60, || {
        get(&format!("{base}/readyz")).0 == 200
    });
    assert_eq!(get(&format!("{base}/livez")), (200, "ok".to_string()));

    // metrics move as the events flow: every record consumed, the group's lag at 0, one
    // freshness sample per record
    let t = format!("topic=\"{topic}\"");
    let mut text = String::new();
    wait_until("all records consumed, committed and fresh", 120, || {
        text = get(&format!("{base}/metrics")).1;
        metric(&text, "tidemark_events_consumed_total", &[&t]) == Some(records)
            && metric(&text, "tidemark_consumer_lag_records", &[&t]) == Some(0.0)
            && metric(&text, "tidemark_consumer_read_lag_records", &[&t]) == Some(0.0)
            && metric(&text, "tidemark_freshness_seconds_count", &[]) == Some(records)
    });
    let m = |name: &str, labels: &[&str]| metric(&text, name, labels).unwrap_or(-1.0);
    // Prometheus's own linter takes the scrape; counters nothing moved yet are there at 0
    promtool_clean(&text);
    assert_eq!(m("tidemark_checkpoint_failures_total", &[]), 0.0);
    assert_eq!(m("tidemark_dlq_refused_total", &[]), 0.0);
    assert!(m("process_cpu_seconds_total", &[]) >= 0.0);
    assert!(m("process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(m("tidemark_build_info", &["version=\"", "commit=\""]), 1.0);
    let invalid = m("tidemark_events_invalid_total", &[]);
    assert!(invalid > 0.0, "the stream has invalid records");
    assert_eq!(m("tidemark_dlq_records_total", &[]), invalid);
    assert_eq!(
        m("tidemark_events_accepted_total", &[])
            + m("tidemark_events_duplicate_total", &[])
            + m("tidemark_events_late_total", &[])
            + invalid,
        records,
        "every record is accepted, a duplicate, too late or invalid"
    );
    for sink in ["redis", "postgres"] {
        let s = format!("sink=\"{sink}\"");
        assert!(m("tidemark_feature_updates_total", &[&s, "result=\"ok\""]) > 0.0);
        assert!(m("tidemark_sink_write_duration_seconds_count", &[&s]) > 0.0);
        assert_eq!(m("tidemark_sink_up", &[&s]), 1.0);
    }
    assert!(m("tidemark_checkpoint_duration_seconds_count", &[]) > 0.0);
    assert_eq!(m("tidemark_ready", &[]), 1.0);
    for w in ["worker=\"0\"", "worker=\"1\""] {
        assert!(m("tidemark_stream_time_seconds", &[w]) * 1000.0 >= start.parse::<f64>().unwrap());
    }
    assert!(
        !text.contains("doc_id=") && !text.contains("query_hash="),
        "no per-entity labels"
    );

    let status: Value = serde_json::from_str(&get(&format!("{base}/status")).1).unwrap();
    let sources = status["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 4, "{status}");
    for s in sources {
        assert_eq!(s["lag"], 0, "{s}");
        assert_eq!(s["committed"], s["high_watermark"], "{s}");
    }
    assert_eq!(status["dataflows"]["search"]["consumed"], records as u64);
    assert_eq!(status["sinks"]["redis"]["reachable"], true);
    assert!(status["sinks"]["postgres"]["writes"].as_u64().unwrap() > 0);
    assert!(status["checkpoint"]["saved"].as_u64().unwrap() > 0);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);
    assert_eq!(status["ready"], true);

    // the read API answers what Redis holds
    let hashes = redis_features(&redis);
    let docs: Vec<(&String, &BTreeMap<String, String>)> = hashes
        .iter()
        .filter(|(k, _)| k.starts_with("feat:doc:"))
        .take(50)
        .collect();
    assert_eq!(docs.len(), 50);
    for (key, fields) in &docs {
        let id = key.strip_prefix("feat:doc:").unwrap();
        let (code, body) = get(&format!("{base}/features/doc/{id}"));
        assert_eq!(code, 200);
        let got: Value = serde_json::from_str(&body).unwrap();
        for (f, v) in *fields {
            assert_eq!(got["features"][f], as_json(v), "{key} {f}");
        }
        assert!(got["features"]["ctr_decay"].is_f64(), "read-time feature");
    }
    assert_eq!(get(&format!("{base}/features/doc/no-such-doc")).0, 404);
    assert_eq!(get(&format!("{base}/features/nope/x")).0, 404);

    // Feast's request and response shape, 1,000 entity rows in one call
    let some_field = docs[0]
        .1
        .keys()
        .find(|f| !f.starts_with('_'))
        .unwrap()
        .clone();
    let mut ids: Vec<String> = docs
        .iter()
        .map(|(k, _)| k.strip_prefix("feat:doc:").unwrap().to_string())
        .collect();
    ids.extend((ids.len()..1000).map(|i| format!("missing-{i}")));
    let (code, answer) = post(
        &format!("{base}/get-online-features"),
        &json!({
            "features": [format!("doc:{some_field}"), "doc:ctr_decay"],
            "entities": {"doc_id": ids},
        }),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["metadata"]["feature_names"],
        json!(["doc_id", some_field, "ctr_decay"])
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["values"], json!(ids));
    assert!(results[0]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s == "PRESENT"));
    for (i, id) in ids.iter().enumerate() {
        let col = &results[1];
        match hashes.get(&format!("feat:doc:{id}")) {
            Some(fields) => {
                assert_eq!(col["statuses"][i], "PRESENT");
                assert_eq!(col["values"][i], as_json(&fields[&some_field]));
                let tick: u64 = fields["_tick"].parse().unwrap();
                assert_eq!(col["event_timestamps"][i], rfc3339(tick));
                assert_eq!(results[2]["statuses"][i], "PRESENT");
            }
            None => {
                assert_eq!(col["statuses"][i], "NOT_FOUND");
                assert_eq!(col["values"][i], Value::Null);
                assert_eq!(col["event_timestamps"][i], "1970-01-01T00:00:00Z");
                assert_eq!(results[2]["statuses"][i], "NOT_FOUND");
            }
        }
    }
    // `qd` rows are older than its max age (1 s): OUTSIDE_MAX_AGE, no value
    let (qkey, qfields) = hashes
        .iter()
        .find(|(k, _)| k.starts_with("feat:qd:"))
        .unwrap();
    let mut parts = qkey.strip_prefix("feat:qd:").unwrap().splitn(2, ':');
    let (qh, doc) = (parts.next().unwrap(), parts.next().unwrap());
    let qfield = qfields.keys().find(|f| !f.starts_with('_')).unwrap();
    let (code, answer) = post(
        &format!("{base}/get-online-features"),
        &json!({
            "features": [format!("qd:{qfield}")],
            "entities": {"query_hash": [qh, "nope"], "doc_id": [doc, doc]},
            "full_feature_names": true,
        }),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["metadata"]["feature_names"],
        json!(["doc_id", "query_hash", format!("qd__{qfield}")])
    );
    assert_eq!(
        answer["results"][2]["statuses"],
        json!(["OUTSIDE_MAX_AGE", "NOT_FOUND"])
    );
    assert_eq!(answer["results"][2]["values"], json!([null, null]));
    for (bad, status) in [
        (
            json!({"features": ["nope:x"], "entities": {"doc_id": ["a"]}}),
            404,
        ),
        (
            json!({"features": ["doc:nope"], "entities": {"doc_id": ["a"]}}),
            400,
        ),
        (
            json!({"features": ["qd:ctr_qd"], "entities": {"doc_id": ["a"]}}),
            400,
        ),
        (
            json!({"features": ["doc:ctr_decay"], "entities": {"doc_id": ["a"], "x": []}}),
            400,
        ),
    ] {
        let (code, answer) = post(&format!("{base}/get-online-features"), &bad);
        assert_eq!(code, status, "{bad} → {answer}");
        assert!(common::feast_detail(&answer).is_some(), "{answer}");
    }

    assert!(stop(engine).success(), "SIGTERM: exit 0");
    // JSON lines, and an invalid record's log line carries its coordinates
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let invalid = lines
        .iter()
        .find(|l| l["fields"]["message"] == "invalid record")
        .expect("an invalid record is logged");
    for f in ["topic", "partition", "offset", "reason"] {
        assert!(!invalid["fields"][f].is_null(), "{f} in {invalid}");
    }
    assert_eq!(invalid["level"], "WARN");
}

#[test]
fn readyz_goes_503_while_redis_is_down_and_back_to_200() {
    let dir = std::env::temp_dir().join(format!("tidemark-readyz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let own = OwnRedis::start(6393, &dir.join("redis"));
    let topic = fresh_topic("ops-readyz", 1);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let group = format!("{topic}-g");
    let url = own.url();
    let engine = spawn_engine(
        &[
            "run",
            "--topic",
            &topic,
            "--job",
            "readyz",
            "--group-id",
            &group,
            "--http",
            &format!("127.0.0.1:{port}"),
        ],
        &[("TIDEMARK_REDIS", url.as_str())],
        None,
    );
    wait_until("/readyz 200", 60, || {
        get(&format!("{base}/readyz")).0 == 200
    });
    own.down();
    let mut body = String::new();
    wait_until("/readyz 503 with redis down", 15, || {
        let (code, b) = get(&format!("{base}/readyz"));
        body = b;
        code == 503
    });
    assert!(body.contains("redis unreachable"), "{body}");
    let text = get(&format!("{base}/metrics")).1;
    assert_eq!(
        metric(&text, "tidemark_sink_up", &["sink=\"redis\""]),
        Some(0.0)
    );
    assert_eq!(metric(&text, "tidemark_ready", &[]), Some(0.0));
    assert_eq!(get(&format!("{base}/livez")).0, 200, "alive all the same");
    own.up();
    wait_until("/readyz 200 again", 15, || {
        get(&format!("{base}/readyz")).0 == 200
    });
    assert!(stop(engine).success());
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn topics_create_makes_the_topics_once_with_their_settings() {
    let n = std::process::id();
    let input = format!("ops-topics-in-{n}");
    let dlq = format!("ops-topics-dlq-{n}");
    let dir = std::env::temp_dir().join(format!("tidemark-topics-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tidemark.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\ntopics = [\"{input}\"]\ndlq_topic = \"{dlq}\"\n\n[topics.\"{input}\"]\npartitions = 5\nretention_ms = 3600000\ncompression = \"zstd\"\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let first =
        String::from_utf8(tidemark(&["topics", "create", "--config", cfg], &[]).stdout).unwrap();
    assert!(
        first.contains(&format!("created {input} partitions=5")),
        "{first}"
    );
    assert!(
        first.contains(&format!("created {dlq} partitions=3")),
        "{first}"
    );
    let again =
        String::from_utf8(tidemark(&["topics", "create", "--config", cfg], &[]).stdout).unwrap();
    assert!(
        again.contains(&format!("exists  {input} partitions=5")),
        "{again}"
    );
    assert!(!again.contains("differs"), "{again}");

    // what the broker says
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(&input), Duration::from_secs(10))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 5);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let described = rt
        .block_on(admin.describe_configs(
            &[
                ResourceSpecifier::Topic(&input),
                ResourceSpecifier::Topic(&dlq),
            ],
            &AdminOptions::new(),
        ))
        .unwrap();
    let value = |i: usize, key: &str| {
        described[i]
            .as_ref()
            .unwrap()
            .get(key)
            .unwrap()
            .value
            .clone()
            .unwrap()
    };
    assert_eq!(value(0, "retention.ms"), "3600000");
    assert_eq!(value(0, "compression.type"), "zstd");
    assert_eq!(value(1, "retention.ms"), (30 * 86_400_000u64).to_string());
    assert_eq!(value(1, "compression.type"), "lz4");

    // config that no longer matches an existing topic is reported, not applied
    std::fs::write(
        &config,
        format!("[kafka]\ntopics = [\"{input}\"]\ndlq_topic = \"{dlq}\"\n"),
    )
    .unwrap();
    let differs =
        String::from_utf8(tidemark(&["topics", "create", "--config", cfg], &[]).stdout).unwrap();
    assert!(
        differs.contains("partitions=5 (config: 6)")
            && differs.contains("compression.type=zstd (config: lz4)"),
        "{differs}"
    );
    assert_eq!(
        consumer
            .fetch_metadata(Some(&input), Duration::from_secs(10))
            .unwrap()
            .topics()[0]
            .partitions()
            .len(),
        5
    );
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn config_check_merges_file_env_and_flags_hides_secrets_and_names_bad_keys() {
    let dir = std::env::temp_dir().join(format!("tidemark-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.toml");
    std::fs::write(
        &file,
        "job = \"file-job\"\nworkers = 3\n[postgres]\nurl = \"host=db user=u password=hunter2 dbname=x\"\n[kafka]\npoll_batch = 7\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = engine_command()
        .args(["config", "check", "--config", f, "--job", "flag-job"])
        .env("TIDEMARK_WORKERS", "4")
        .env("TIDEMARK_REDIS", "redis://:s3cret@127.0.0.1:6379/0")
        .env("TIDEMARK_ARCHIVE__S3__SECRET_ACCESS_KEY", "aws-s3cret-key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg: toml::Table = text.parse().unwrap();
    assert_eq!(cfg["job"].as_str(), Some("flag-job"), "flags win");
    assert_eq!(cfg["workers"].as_integer(), Some(4), "env beats the file");
    assert_eq!(
        cfg["kafka"]["poll_batch"].as_integer(),
        Some(7),
        "the file beats defaults"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(
        cfg["archive"]["s3"]["secret_access_key"].as_str(),
        Some("***"),
        "a value under a secret's key is hidden whatever it holds"
    );
    assert!(text.contains("password=***"), "{text}");

    let fails = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = engine_command();
        cmd.args(args).env_remove("TIDEMARK_PG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    };
    std::fs::write(&file, "[kafka]\nbrokerz = \"x\"\n").unwrap();
    let e = fails(&["config", "check", "--config", f], &[]);
    assert!(
        e.contains("kafka.brokerz: unknown key") && e.contains(f) && e.contains("brokers"),
        "{e}"
    );
    let e = fails(
        &["config", "check"],
        &[("TIDEMARK_INGEST__DEDUP_HORIZON_MS", "soon")],
    );
    assert!(
        e.contains("ingest.dedup_horizon_ms")
            && e.contains("TIDEMARK_INGEST__DEDUP_HORIZON_MS")
            && e.contains("whole number"),
        "{e}"
    );
    let e = fails(
        &["config", "check"],
        &[("TIDEMARK_INGEST__MAX_PARTITION_SKEW_MS", "3600000")],
    );
    assert!(
        e.contains("ingest.max_partition_skew_ms = 3600000")
            && e.contains("ingest.dedup_horizon_ms = 3600000")
            && e.contains("lower the skew"),
        "{e}"
    );
    let e = fails(
        &["config", "check"],
        &[("TIDEMARK_CHECKPOINT__BACKEND", "s3")],
    );
    assert!(
        e.contains("checkpoint.backend = \"s3\"") && e.contains("dir, postgres"),
        "{e}"
    );
    let e = fails(&["config", "check", "--from", "yesterday"], &[]);
    assert!(
        e.contains("kafka.from") && e.contains("earliest, latest"),
        "{e}"
    );
    let e = fails(
        &["config", "check"],
        &[("TIDEMARK_CHECKPOINT__BACKEND", "postgres")],
    );
    assert!(
        e.contains("needs postgres.url") && e.contains("TIDEMARK_PG"),
        "{e}"
    );
    let e = fails(&["config", "check", "--dataflow", "nope"], &[]);
    assert!(
        e.contains("dataflow = \"nope\"") && e.contains("search"),
        "{e}"
    );
}
