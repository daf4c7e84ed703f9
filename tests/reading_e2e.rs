//! The reading family end to end: `generate --dataflow reading` (with its episode
//! metadata in Postgres) → a real 4-partition topic → `run --exit-at-end` on 2 workers →
//! real Redis and Postgres equal the model of `dataflows/tests/common/reading_model.rs`;
//! and a metadata row changed under a live engine moves every feature that depends on it.

mod common;

use std::time::Duration;

use common::reading::{assert_views, model, model_input, postgres_hashes, recount};
use common::services::*;
use common::*;

const DAY: u64 = 86_400_000;

/// Each key's fields, as the stores hold them.
type Hashes = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

fn metadata(pg: &str) -> Vec<Vec<String>> {
    let mut c = postgres::Client::connect(pg, postgres::NoTls).unwrap();
    c.query(
        "SELECT episode_id, title_id, genre, episode_no::text FROM episode_metadata",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (0..4).map(|i| r.get::<_, String>(i)).collect())
    .collect()
}

/// Generates reading traffic into a fresh topic and a JSON-lines file, and its catalog
/// into `pg`; returns the topic and the lines.
fn reading_stream(name: &str, events: u64, pg: &str, extra: &[&str]) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("tidemark-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let topic = fresh_topic(name, 4);
    let n = events.to_string();
    let gen = [
        "generate",
        "--dataflow",
        "reading",
        "--events",
        &n,
        "--seed",
        "3",
        "--rate",
        "10",
        "--invalid",
        "0.01",
    ];
    let gen = [&gen[..], extra].concat();
    tidemark(
        &[&gen[..], &["--out", file.to_str().unwrap()]].concat(),
        &[("TIDEMARK_PG", pg)],
    );
    tidemark(&[&gen[..], &["--topic", &topic]].concat(), &[]);
    (topic, std::fs::read_to_string(&file).unwrap())
}

fn hour_key_ms(key: &str) -> u64 {
    let hour = key.rsplit(':').next().unwrap();
    chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp_millis() as u64
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn kafka_to_redis_and_postgres_matches_the_model_on_2_workers() {
    let pg = fresh_pg("tm_reading");
    let redis = fresh_redis(12);
    let (topic, text) = reading_stream("e2e-reading", 30_000, &pg, &[]);
    let group = format!("{topic}-g");
    let dlq = format!("{topic}-dlq");
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
        ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
    ];
    run_to_end(
        &topic,
        "rd",
        &group,
        &["--dataflow", "reading", "--workers", "2"],
        &env,
    );
    let at: u64 = redis_get(&redis, "tidemark:rd:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let (events, rejected, untimed) = model_input(&text);
    assert_eq!(
        at,
        events.iter().map(|(e, _)| e.ts).max().unwrap(),
        "stream time = newest event"
    );

    let want = recount(&text, &metadata(&pg), at);
    let count = |prefix: &str, field: &str, value: &str| {
        want.iter()
            .filter(|(k, f)| k.starts_with(prefix) && f.get(field).is_some_and(|v| v == value))
            .count()
    };
    // the stream is meaningful: every state occurs, the experiment has both groups
    for state in ["active", "completed", "exited", "timed_out"] {
        assert!(
            count("feat:session:", "state", state) > 20,
            "{state} sessions"
        );
    }
    assert!(want.contains_key("feat:experiment:reader-v2:treatment"));
    assert!(
        want.keys()
            .filter(|k| k.starts_with("feat:segment:"))
            .count()
            > 30
    );
    assert!(want.keys().filter(|k| k.starts_with("feat:user:")).count() > 1_000);

    // quality rows of records without a readable ts sit at their append hour (today)
    let timed = |k: &str| !k.starts_with("feat:quality_hourly:") || hour_key_ms(k) <= at + DAY;
    let stored = redis_features(&redis);
    assert_views("redis", &stored, &want, timed);
    assert_views("postgres", &postgres_hashes(&pg), &want, timed);
    let malformed = |h: &common::search::Hashes| -> i64 {
        h.iter()
            .filter(|(k, _)| k.starts_with("feat:quality_hourly:"))
            .map(|(_, f)| f["malformed_events"].parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!(malformed(&stored), malformed(&want) + untimed as i64);
    // every malformed record is in the DLQ, once
    let invalid = rejected
        .iter()
        .filter(|r| r.kind != model::DUPLICATE)
        .count()
        + untimed;
    let keys: std::collections::BTreeSet<String> =
        dead_letters(&dlq).into_iter().map(|d| d.key).collect();
    assert_eq!(keys.len(), invalid, "DLQ records");
    // the treatment's lift shows, with an interval that says whether it is significant
    let t = &stored["feat:experiment:reader-v2:treatment"];
    let diff: f64 = t["diff_vs_control"].parse().unwrap();
    let (lo, hi): (f64, f64) = (
        t["ci95_low"].parse().unwrap(),
        t["ci95_high"].parse().unwrap(),
    );
    assert!(lo < diff && diff < hi && diff > 0.0, "{t:?}");
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn a_changed_metadata_row_moves_every_feature_that_depends_on_it() {
    let pg = fresh_pg("tm_reading_meta");
    let redis = fresh_redis(13);
    // events of the last quarter hour: a quiet stream's time follows the clock (the
    // metadata change needs time to move), and no window or timeout ends meanwhile
    let start = (tidemark::clock::now_ms() - 900_000).to_string();
    let (topic, text) = reading_stream("e2e-reading-meta", 6_000, &pg, &["--start-ms", &start]);
    let group = format!("{topic}-g");
    let newest = model_input(&text)
        .0
        .iter()
        .map(|(e, _)| e.ts)
        .max()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let _engine = KillOnDrop(
        engine_command()
            .args([
                "run",
                "--dataflow",
                "reading",
                "--topic",
                &topic,
                "--job",
                "rdm",
            ])
            .args(["--group-id", &group, "--workers", "2", "--http", &http])
            .env("TIDEMARK_REDIS", &redis)
            .env("TIDEMARK_PG", &pg)
            .env("TIDEMARK_POSTGRES__DIMENSION_POLL_MS", "200")
            .env("TIDEMARK_KAFKA__IDLE_TIMEOUT_MS", "2000")
            .spawn()
            .unwrap(),
    );
    let frontier =
        || -> u64 { redis_get(&redis, "tidemark:rdm:frontier").map_or(0, |f| f.parse().unwrap()) };
    wait_until("every event is written", 120, || frontier() >= newest);

    // quality counts reach /status and the metrics
    let get = |path: &str| {
        common::http_client()
            .build()
            .unwrap()
            .get(format!("http://{http}{path}"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let status: serde_json::Value = serde_json::from_str(&get("/status")).unwrap();
    let hours = status["quality_hourly"].as_object().unwrap();
    let duplicates: i64 = hours
        .values()
        .map(|h| h["duplicate_events"].as_i64().unwrap())
        .sum();
    assert!(duplicates > 0, "{hours:?}");
    let metrics = get("/metrics");
    assert!(
        metrics.contains(&format!(
            "tidemark_quality_events{{kind=\"duplicate_events\"}} {duplicates}"
        )),
        "{metrics}"
    );
    // the most read episode changes genre
    let before = redis_features(&redis);
    let (episode, fields) = before
        .iter()
        .filter(|(k, _)| k.starts_with("feat:episode:"))
        .max_by_key(|(_, f)| f["views_30d"].parse::<i64>().unwrap())
        .unwrap();
    let episode = episode.strip_prefix("feat:episode:").unwrap().to_string();
    assert_ne!(fields["genre"], "mystery");
    let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    c.execute(
        "UPDATE episode_metadata SET genre = 'mystery' WHERE episode_id = $1",
        &[&episode],
    )
    .unwrap();
    let key = format!("feat:episode:{episode}");
    wait_until("the episode's genre follows", 60, || {
        redis_features(&redis)
            .get(&key)
            .is_some_and(|f| f["genre"] == "mystery")
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = redis_features(&redis);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("feat:segment:") && k.contains(":mystery:")),
        "segments of the new genre"
    );
    // everything agrees with the model under the new metadata (quality rows aside: the
    // append hours of untimed records are this hour too)
    let want = recount(&text, &metadata(&pg), frontier());
    let views = |k: &str| !k.starts_with("feat:quality_hourly:");
    assert_views("redis after the change", &after, &want, views);
}

/// A run that stops at a checkpoint and a second run that restores it count every session
/// once: the views equal the model of all records (sessions are rebuilt from their restored
/// events; their contributions are not restored a second time).
#[test]
fn a_restart_from_a_checkpoint_counts_every_session_once() {
    let pg = fresh_pg("tm_reading_restart");
    let redis = fresh_redis(14);
    let dir = std::env::temp_dir().join(format!("tidemark-reading-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let gen = [
        "generate",
        "--dataflow",
        "reading",
        "--events",
        "12000",
        "--seed",
        "5",
        "--rate",
        "5",
        "--invalid",
        "0.01",
        "--out",
        file.to_str().unwrap(),
    ];
    tidemark(&gen, &[("TIDEMARK_PG", pg.as_str())]);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let topic = fresh_topic("e2e-reading-restart", 4);
    let group = format!("{topic}-g");
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
    ];
    let half = lines.len() / 2;
    produce(&topic, &lines[..half]);
    run_to_end(
        &topic,
        "rdr",
        &group,
        &["--dataflow", "reading", "--workers", "2"],
        &env,
    );
    produce(&topic, &lines[half..]);
    run_to_end(
        &topic,
        "rdr",
        &group,
        &["--dataflow", "reading", "--workers", "1"],
        &env,
    );
    let at: u64 = redis_get(&redis, "tidemark:rdr:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let want = recount(&text, &metadata(&pg), at);
    assert!(want.keys().filter(|k| k.starts_with("feat:user:")).count() > 500);
    let timed = |k: &str| !k.starts_with("feat:quality_hourly:") || hour_key_ms(k) <= at + DAY;
    assert_views(
        "redis after a restart",
        &redis_features(&redis),
        &want,
        timed,
    );
    assert_views(
        "postgres after a restart",
        &postgres_hashes(&pg),
        &want,
        timed,
    );
    assert_flags_are_the_views_counts(&pg, &want, at);
}

/// The report's `out-of-order events` and `unzoned events` (flags the sessions make,
/// restored and rebuilt once, not counted again at the restore) equal `quality_hourly`'s
/// counts per hour, as the model makes them.
fn assert_flags_are_the_views_counts(pg: &str, want: &Hashes, at: u64) {
    let mut c = postgres::Client::connect(pg, postgres::NoTls).unwrap();
    for (name, field) in [
        ("out-of-order events", "out_of_order_events"),
        ("unzoned events", "unzoned_events"),
    ] {
        let rows = c
            .query(
                "SELECT hour, failures FROM quality_reading WHERE expectation = $1",
                &[&name],
            )
            .unwrap();
        let got: std::collections::BTreeMap<String, i64> = (rows.iter())
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .filter(|(_, n)| *n != 0)
            .map(|(h, n)| (h.trim_end_matches(":00:00Z").to_string(), n))
            .collect();
        let shown: std::collections::BTreeMap<String, i64> = (want.iter())
            .filter_map(|(k, fields)| Some((k.strip_prefix("feat:quality_hourly:")?, fields)))
            .filter(|(h, _)| hour_key_ms(&format!("feat:quality_hourly:{h}")) <= at + DAY)
            .map(|(h, fields)| (h.to_string(), fields[field].parse::<f64>().unwrap() as i64))
            .filter(|(_, n)| *n != 0)
            .collect();
        // the generator's readers all have a zone: no unzoned events to compare
        assert!(
            !shown.is_empty() || field == "unzoned_events",
            "the stream has {field}"
        );
        assert_eq!(
            got, shown,
            "{name} in quality_reading and {field} in quality_hourly"
        );
    }
}
