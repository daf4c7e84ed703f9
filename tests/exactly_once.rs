//! DESIGN §4 under faults, against the real services: processes killed at seeded random
//! points and at the crash points in between the steps of a tick's journey, duplicates
//! across partitions and restarts, a replay into fresh stores, a graceful stop under
//! load. Every time the stores must equal the recount of the generated events.

mod common;

use std::process::Child;
use std::time::Duration;

use common::search::*;
use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// A small deterministic generator for the kill schedule (splitmix64).
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = engine_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn tidemark")
}

/// Asserts both stores hold exactly the recount of `file`'s valid events at the job's
/// frontier. (A restart resumes one tick past its checkpoint, so the frontier may be a few
/// ms past the largest event time.)
fn assert_stores_match(what: &str, redis: &str, pg: &str, job: &str, file: &std::path::Path) {
    let events = valid_events(&std::fs::read_to_string(file).unwrap());
    let newest = events
        .iter()
        .map(|e| e["ts"].as_u64().unwrap())
        .max()
        .unwrap();
    let frontier: u64 = redis_get(redis, &format!("tidemark:{job}:frontier"))
        .expect("a frontier")
        .parse()
        .unwrap();
    assert!(
        (newest..newest + 1_000).contains(&frontier),
        "{what}: the frontier {frontier} is the newest event time {newest}, or just past it"
    );
    let want = recount(&events, frontier);
    let (r, p) = (redis_features(redis), postgres_hashes(pg));
    assert_matches(&format!("redis, {what}"), &r, &want);
    assert_matches(&format!("postgres, {what}"), &p, &want);
}

/// Each entity's `_tick`.
fn ticks(h: &Hashes) -> std::collections::BTreeMap<String, u64> {
    h.iter()
        .filter_map(|(k, f)| Some((k.clone(), f.get("_tick")?.parse().ok()?)))
        .collect()
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn kill_nine_at_random_points_and_crash_points_loses_and_doubles_nothing() {
    let (topic, file) = generated_stream(
        "eo-kill",
        100_000,
        11,
        &["--duplicates", "0.05", "--disorder", "0.05"],
    );
    let redis = fresh_redis(5);
    let pg = fresh_pg("tm_eo_kill");
    let job = "eokill";
    let dlq = format!("{topic}-dlq");
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
        ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
        ("TIDEMARK_CHECKPOINT__INTERVAL_MS", "300"),
        // small polls: the stream takes several seconds, so the kills land inside it
        ("TIDEMARK_KAFKA__POLL_BATCH", "100"),
    ];
    let args = replay_args(&topic, job);
    // seeded kills at random moments (nine), and one crash at each point between the steps
    // of a tick, each run on 1 to 3 workers at random
    let mut rng = Seeded(0x71de_2026);
    let mut plan: Vec<(String, Option<(&str, u64)>)> = Vec::new();
    for point in [
        "redis-written",
        "checkpoint-saved",
        "postgres-written",
        "snapshot",
    ] {
        for _ in 0..2 {
            let ms = rng.between(400, 1_800);
            plan.push((format!("kill -9 after {ms} ms"), None));
        }
        plan.push((
            format!("crash at {point}"),
            Some((point, rng.between(2, 6))),
        ));
    }
    plan.push((
        format!("kill -9 after {} ms", rng.between(400, 1_800)),
        None,
    ));
    let mut seen: std::collections::BTreeMap<&str, std::collections::BTreeMap<String, u64>> =
        Default::default();
    // each restart on another number of workers: the state is redistributed
    let counts: Vec<&str> = plan
        .iter()
        .map(|_| ["1", "2", "3"][rng.between(0, 3) as usize])
        .collect();
    for ((what, crash), workers) in plan.iter().zip(counts) {
        let args = [&args[..], &["--workers", workers]].concat();
        let mut env = env.to_vec();
        let at;
        if let Some((point, n)) = crash {
            at = format!("{point}:{n}");
            env.push(("TIDEMARK_CRASH_AT", at.as_str()));
        }
        let mut child = spawn(&args, &env);
        if crash.is_none() {
            let ms: u64 = what
                .split_whitespace()
                .find_map(|w| w.parse().ok())
                .unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            let _ = child.kill(); // SIGKILL
        }
        let status = child.wait().unwrap();
        eprintln!("{what} on {workers} workers: {status}");
        // monotonic visibility: no entity's tick went back, in either store
        for (store, now) in [
            ("redis", ticks(&redis_features(&redis))),
            ("postgres", ticks(&postgres_hashes(&pg))),
        ] {
            let before = seen.entry(store).or_default();
            for (key, tick) in &now {
                if let Some(old) = before.get(key) {
                    assert!(
                        tick >= old,
                        "{store}: {key} went back from tick {old} to {tick}"
                    );
                }
            }
            *before = now;
        }
    }
    let args = [&args[..], &["--workers", "2"]].concat();
    let status = spawn(&args, &env).wait().unwrap();
    assert!(status.success(), "the last run completes: {status}");
    assert_stores_match("after kills", &redis, &pg, job, &file);
    // every poison record reached the DLQ, some more than once (at-least-once across crashes)
    let invalid = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| valid_event(l).is_none())
        .count();
    let letters: std::collections::BTreeSet<String> =
        dead_letters(&dlq).into_iter().map(|l| l.key).collect();
    assert!(invalid > 100, "the stream has poison records: {invalid}");
    assert_eq!(letters.len(), invalid, "each poison record is in the DLQ");
    assert_quality_counts_each_record_once(&pg, &file, invalid);

    // copies of events on every partition, after a restart: nothing changes
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .step_by(97)
        .map(str::to_string)
        .collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    for line in &lines {
        for partition in 0..4 {
            let record = BaseRecord::<(), str>::to(&topic)
                .payload(line.as_str())
                .partition(partition);
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let status = spawn(&args, &env).wait().unwrap();
    assert!(status.success());
    assert_stores_match(
        "after duplicates on every partition",
        &redis,
        &pg,
        job,
        &file,
    );

    // a replay from earliest with a new group into fresh stores gives the same features
    let (redis2, pg2) = (fresh_redis(6), fresh_pg("tm_eo_replay"));
    let group = format!("{topic}-replay");
    run_to_end(
        &topic,
        "eoreplay",
        &group,
        &["--from", "earliest"],
        &[
            ("TIDEMARK_REDIS", redis2.as_str()),
            ("TIDEMARK_PG", pg2.as_str()),
        ],
    );
    assert_eq!(
        comparable(&redis_features(&redis2), false),
        comparable(&redis_features(&redis), false),
        "a replay into fresh stores equals the killed and restarted run"
    );
    assert_eq!(
        comparable(&postgres_hashes(&pg2), false),
        comparable(&postgres_hashes(&pg), false),
        "the same in postgres"
    );
}

#[test]
fn sigterm_under_load_drains_and_a_restart_loses_nothing() {
    let (topic, file) = generated_stream(
        "eo-term",
        30_000,
        12,
        &["--duplicates", "0.05", "--disorder", "0.05"],
    );
    let redis = fresh_redis(7);
    let pg = fresh_pg("tm_eo_term");
    let job = "eoterm";
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
        ("TIDEMARK_KAFKA__POLL_BATCH", "300"),
        // this test keeps its checkpoints in Postgres
        ("TIDEMARK_CHECKPOINT__BACKEND", "postgres"),
    ];
    let base = ["run", "--topic", &topic, "--job", job, "--group-id", &topic];
    let mut child = spawn(&[&base[..], &["--workers", "2"]].concat(), &env);
    std::thread::sleep(Duration::from_millis(2_500));
    let (status, took) = terminate(&mut child);
    assert!(status.success(), "SIGTERM exits 0: {status}");
    assert!(took < Duration::from_secs(30), "and within 30 s: {took:?}");
    let partial = redis_features(&redis);
    assert!(
        !partial.is_empty(),
        "the stop came in the middle of the stream"
    );
    tidemark(&[&base[..], &["--exit-at-end"]].concat(), &env);
    assert_stores_match("after SIGTERM and a restart", &redis, &pg, job, &file);
}

/// What a killed run wrote after its last checkpoint is rolled back on restart, even where
/// the replay changes nothing: a replay's ticks and batches need not match the killed
/// run's, so its net change to an entity can be none where the killed run wrote one.
/// Here the leftovers are written by hand, as such a run would have left them: a newer
/// value of an entity the checkpoint has, an entity the checkpoint does not have, and the
/// progress that went with them.
#[test]
fn a_restart_rolls_back_what_was_written_after_the_checkpoint() {
    let (topic, file) = generated_stream("eo-rollback", 5_000, 13, &["--duplicates", "0.05"]);
    let redis = fresh_redis(4);
    let pg = fresh_pg("tm_eo_rollback");
    let job = "eorollback";
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
    ];
    let run = || run_to_end(&topic, job, &topic, &["--workers", "2"], &env);
    run();
    assert_stores_match("before", &redis, &pg, job, &file);

    let frontier: u64 = redis_get(&redis, &format!("tidemark:{job}:frontier"))
        .unwrap()
        .parse()
        .unwrap();
    let later = frontier + 500;
    let features = redis_features(&redis);
    let (key, fields) = features
        .iter()
        .find(|(k, _)| k.starts_with("feat:ac:"))
        .expect("an autocomplete entity");
    let prefix = key.strip_prefix("feat:ac:").unwrap().to_string();
    let field = fields
        .keys()
        .find(|f| !f.starts_with('_'))
        .expect("a feature")
        .clone();
    let mut r = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut p = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("_tick")
        .arg(later)
        .arg(&field)
        .arg("999")
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("feat:ac:zz-not-in-the-checkpoint")
        .arg("_tick")
        .arg(later)
        .arg("_v")
        .arg(1)
        .arg(&field)
        .arg("1")
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("tidemark:{job}:progress"))
        .arg(0)
        .arg(later)
        .query(&mut r)
        .unwrap();
    p.batch_execute(&format!(
        "UPDATE feat_ac SET _tick = {later}, {field} = 999 WHERE prefix = '{prefix}';
         INSERT INTO feat_ac (prefix, _tick, _v, {field}) VALUES ('zz-not-in-the-checkpoint', {later}, 1, 1);
         UPDATE tidemark_progress SET tick = {later} WHERE job = '{job}' AND worker = 0;"
    ))
    .unwrap();
    assert!(panics(|| assert_stores_match(
        "left over",
        &redis,
        &pg,
        job,
        &file
    )));

    run();
    assert_stores_match("after a restart", &redis, &pg, job, &file);
    let tick: u64 = redis_features(&redis)[key]["_tick"].parse().unwrap();
    assert!(tick >= later, "{key} went back from tick {later} to {tick}");
}

/// Whether `f` panics (quietly).
fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let panicked = std::panic::catch_unwind(f).is_err();
    std::panic::set_hook(hook);
    panicked
}

/// The built-in `events valid` expectation's report (`quality_search`, written with the
/// features and restored from each checkpoint on 1 to 3 workers) counted every record of
/// the stream once: per hour of event time the valid ones, and every invalid one.
fn assert_quality_counts_each_record_once(pg: &str, file: &std::path::Path, invalid: usize) {
    let mut want: std::collections::BTreeMap<String, i64> = Default::default();
    let text = std::fs::read_to_string(file).unwrap();
    for o in text.lines().filter_map(valid_event) {
        let ts = o["ts"].as_u64().unwrap() as i64;
        let hour = chrono::DateTime::from_timestamp_millis(ts - ts % 3_600_000)
            .unwrap()
            .format("%Y-%m-%dT%H:00:00Z")
            .to_string();
        *want.entry(hour).or_default() += 1;
    }
    let mut c = postgres::Client::connect(pg, postgres::NoTls).unwrap();
    let rows = c
        .query(
            "SELECT hour, failures, total FROM quality_search WHERE expectation = 'events valid'",
            &[],
        )
        .unwrap();
    let got: std::collections::BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(2) - r.get::<_, i64>(1),
            )
        })
        .filter(|(_, valid)| *valid > 0)
        .collect();
    assert_eq!(got, want, "valid records per hour in the quality report");
    let failures: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    assert_eq!(
        failures as usize, invalid,
        "invalid records in the quality report"
    );
}
