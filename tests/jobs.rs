//! Jobs sharing one Redis and one Postgres stay out of each other's way: a job claims its
//! feature views at start, a second job on the same views is refused with the fix, and
//! a restart's rollback of one job (killed after its checkpoint, its progress left ahead)
//! leaves every row of the other as it was, though their ticks overlap.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::search::*;
use common::*;

const SEARCH_VIEWS: [&str; 3] = ["feat:doc:", "feat:qd:", "feat:ac:"];

/// The Redis hashes of the search family's views.
fn search_rows(redis: &str) -> Hashes {
    let mut r = redis_features(redis);
    r.retain(|k, _| SEARCH_VIEWS.iter().any(|p| k.starts_with(p)));
    r
}

/// `run --exit-at-end` of the search family on `topic`.
fn search_run(topic: &str, job: &str, group: &str, env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = engine_command();
    cmd.args(["run", "--topic", topic, "--exit-at-end", "--job", job])
        .args(["--group-id", group])
        .envs(env.iter().copied());
    cmd
}

/// Every Redis hash outside the search family's views, and the reading tables in Postgres.
fn reading_rows(redis: &str, pg: &str) -> (Hashes, Hashes) {
    let mut r = redis_features(redis);
    r.retain(|k, _| !SEARCH_VIEWS.iter().any(|p| k.starts_with(p)));
    let mut p = BTreeMap::new();
    for (ns, keys) in [
        ("session", &["session_id"][..]),
        ("user", &["user_id"][..]),
        ("episode", &["episode_id"][..]),
        ("segment", &["country", "genre", "tod"][..]),
    ] {
        p.extend(pg_features(pg, ns, keys));
    }
    (r, p)
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn a_job_on_another_jobs_views_is_refused_and_a_rollback_touches_only_its_own_rows() {
    let redis = fresh_redis(2);
    let pg = fresh_pg("tm_jobs");
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
    ];
    // the reading job, run to its end
    let reading = fresh_topic("jobs-reading", 2);
    tidemark(
        &[
            "generate",
            "--dataflow",
            "reading",
            "--events",
            "3000",
            "--seed",
            "61",
            "--rate",
            "20",
            "--topic",
            &reading,
        ],
        &[("TIDEMARK_PG", pg.as_str())],
    );
    run_to_end(
        &reading,
        "readjob",
        &reading,
        &["--dataflow", "reading"],
        &env,
    );
    let before = reading_rows(&redis, &pg);
    assert!(!before.0.is_empty() && !before.1.is_empty());

    // the search job, run to its end, then left as a run killed after its checkpoint
    // leaves it: its progress ahead of the checkpoint, so the restart rolls back
    let all = generated_lines("jobs-search", 8_000, 62, &["--duplicates", "0.05"]);
    let lines: Vec<&str> = all.lines().collect();
    let (first, more) = lines.split_at(lines.len() / 2);
    let search = fresh_topic("jobs-search", 4);
    produce(&search, first);
    run_to_end(&search, "searchjob", &search, &["--workers", "2"], &env);
    let frontier: u64 = redis_get(&redis, "tidemark:searchjob:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let mut r = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("tidemark:searchjob:progress")
        .arg(0)
        // past the reading job's ticks: a rollback by tick alone would take its rows
        .arg(frontier + 200_000)
        .query(&mut r)
        .unwrap();
    let out = search_run(&search, "searchjob", &search, &env)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let events = valid_events(&first.join("\n"));
    // the restart's ticks are past the progress a reader saw
    let frontier: u64 = redis_get(&redis, "tidemark:searchjob:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let want = recount(&events, frontier);
    let searched = search_rows(&redis);
    assert_matches("redis, the search job", &searched, &want);
    assert_eq!(
        reading_rows(&redis, &pg),
        before,
        "the search job's rollback left the reading job's rows alone"
    );

    // and a real crash (an abort as good as kill -9: the first checkpoint of the run is
    // saved, its offsets not committed, whatever the writers had written by then), then
    // a restart: the reading job's rows stay as they were. (Counting Redis writes instead
    // was not sure to crash: a writer that is behind packs many ticks into one write.)
    produce(&search, more);
    let crashed = search_run(&search, "searchjob", &search, &env)
        .args(["--workers", "2"])
        .env("TIDEMARK_CHECKPOINT__INTERVAL_MS", "100")
        .env("TIDEMARK_KAFKA__POLL_BATCH", "50")
        .env("TIDEMARK_CRASH_AT", "checkpoint-saved:1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        !crashed.status.success() && log.contains("crash point"),
        "the run was aborted: {log}"
    );
    run_to_end(&search, "searchjob", &search, &["--workers", "2"], &env);
    let events = valid_events(&all);
    let frontier: u64 = redis_get(&redis, "tidemark:searchjob:frontier")
        .unwrap()
        .parse()
        .unwrap();
    let searched = search_rows(&redis);
    assert_matches(
        "redis, the search job after a crash",
        &searched,
        &recount(&events, frontier),
    );
    assert_eq!(
        reading_rows(&redis, &pg),
        before,
        "the crashed search job's restart left the reading job's rows alone"
    );

    // a second search job on the same stores is refused, naming the owner and the fix
    let group = format!("{search}-intruder");
    let out = search_run(&search, "intruder", &group, &env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("'searchjob'") && err.contains("feat:doc") && err.contains("tidemark release"),
        "{err}"
    );
    // once the owner is retired and its views released, the other job may write them
    let out = tidemark(&["release", "--job", "searchjob"], &env);
    assert!(String::from_utf8_lossy(&out.stdout).contains("released redis feat:doc"));
    let out = output_within(
        &mut search_run(&search, "intruder", &group, &env),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
