//! Idle means idle: once an engine has read everything, stream time follows the clock and
//! its frontier moves every millisecond, but nothing changed, so the stores are written
//! at most once per checkpoint interval (with the pause's progress), not at every tick.

mod common;

use std::time::Duration;

use common::*;

/// Transactions Redis executed so far (MULTI/EXEC), server-wide.
fn redis_execs(url: &str) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_exec:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Transactions committed in database `db` so far.
fn pg_commits(url: &str, db: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    c.query_one(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
        &[&db],
    )
    .unwrap()
    .get(0)
}

#[test]
fn an_idle_engine_writes_nothing_but_its_progress_once_per_checkpoint() {
    let (topic, _) = generated_stream("idle", 2_000, 41, &[]);
    let redis = fresh_redis(11);
    let pg = fresh_pg("tm_idle");
    let child = common::services::KillOnDrop(
        engine_command()
            .args(live_args(&topic, "idle"))
            .args(["--workers", "2"])
            .env("TIDEMARK_REDIS", &redis)
            .env("TIDEMARK_PG", &pg)
            .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "3000")
            .env("TIDEMARK_KAFKA__IDLE_TIMEOUT_MS", "500")
            .spawn()
            .unwrap(),
    );
    // read everything, then idle (stream time follows the clock)
    std::thread::sleep(Duration::from_secs(8));
    let (execs, commits) = (redis_execs(&redis), pg_commits(&pg, "tm_idle"));
    std::thread::sleep(Duration::from_secs(9));
    let (execs, commits) = (
        redis_execs(&redis) - execs,
        pg_commits(&pg, "tm_idle") - commits,
    );
    // killed when the test ends, also when it fails
    drop(child);
    // 9 s hold three checkpoint pauses at most: one progress write per worker each, in
    // Redis and in Postgres (where the health check's SELECT 1 commits once a second too)
    assert!(execs <= 8, "{execs} Redis transactions in 9 idle seconds");
    assert!(
        commits <= 9 + 8 + 4,
        "{commits} Postgres transactions in 9 idle seconds"
    );
    assert!(
        execs >= 1,
        "progress is still recorded with the checkpoints"
    );
}
