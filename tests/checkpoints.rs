//! Checkpoints a restart cannot trust (DESIGN §4): a part with damaged bytes or cut short
//! is refused, naming the file; the restart falls back to the checkpoint before it (the
//! two newest complete ones are kept) and still ends with exactly the recount. When no
//! checkpoint is valid the run refuses to start and the stores are left as they were.

mod common;

use common::search::*;
use common::*;

fn parts(job: &str, group: &str) -> Vec<(u64, std::path::PathBuf)> {
    let root = std::path::Path::new(&state_dir()).join(job).join(group);
    let mut out = Vec::new();
    for tick in std::fs::read_dir(&root).unwrap().flatten() {
        let Ok(t) = tick.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        for f in std::fs::read_dir(tick.path()).unwrap().flatten() {
            out.push((t, f.path()));
        }
    }
    out.sort();
    out
}

fn assert_recount(what: &str, redis: &str, pg: &str, job: &str, lines: &str) {
    let events = valid_events(lines);
    let frontier: u64 = redis_get(redis, &format!("tidemark:{job}:frontier"))
        .expect("a frontier")
        .parse()
        .unwrap();
    let want = recount(&events, frontier);
    assert_matches(&format!("redis, {what}"), &redis_features(redis), &want);
    assert_matches(&format!("postgres, {what}"), &postgres_hashes(pg), &want);
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn a_damaged_checkpoint_is_refused_and_the_restart_falls_back_to_the_one_before() {
    let all = generated_lines("ckpt", 8_000, 21, &["--duplicates", "0.05"]);
    let lines: Vec<&str> = all.lines().collect();
    let third = lines.len() / 3;
    let (first, rest) = lines.split_at(third);
    let (second, last) = rest.split_at(third);
    let topic = fresh_topic("ckpt-damaged", 4);
    let (redis, pg) = (fresh_redis(15), fresh_pg("tm_ckpt_damaged"));
    let job = "ckptdamaged";
    let env = [
        ("TIDEMARK_REDIS", redis.as_str()),
        ("TIDEMARK_PG", pg.as_str()),
        ("TIDEMARK_CHECKPOINT__INTERVAL_MS", "200"),
        ("TIDEMARK_KAFKA__POLL_BATCH", "200"),
    ];
    let run = || {
        engine_command()
            .args(["run", "--topic", &topic, "--exit-at-end", "--job", job])
            .args(["--group-id", &topic, "--workers", "2"])
            .envs(env)
            .output()
            .unwrap()
    };
    // two runs, so two complete checkpoints at least (each run ends with one)
    for part in [first, second] {
        produce(&topic, part);
        let out = run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let saved = parts(job, &topic);
    let ticks: std::collections::BTreeSet<u64> = saved.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        ticks.len(),
        2,
        "the two newest complete checkpoints stay: {saved:?}"
    );
    // 16 bytes of 0xff in a part of the newest
    let newest = *ticks.iter().next_back().unwrap();
    let (_, victim) = saved.iter().find(|(t, _)| *t == newest).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at..at + 16].fill(0xff);
    std::fs::write(victim, &bytes).unwrap();

    produce(&topic, last);
    let out = run();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("damaged") && log.contains(&victim.display().to_string()),
        "the log names the damaged part: {log}"
    );
    assert_recount("after falling back", &redis, &pg, job, &all);
    // set aside for inspection, so it never counts among the two checkpoints kept
    let aside = std::path::Path::new(&state_dir())
        .join(job)
        .join(&topic)
        .join(format!("damaged-{newest}"));
    assert!(aside.is_dir(), "the damaged checkpoint is set aside: {log}");

    // every part cut short: nothing valid to resume from, so nothing is touched
    for (_, f) in parts(job, &topic) {
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 7]).unwrap();
    }
    let before = (redis_features(&redis), postgres_hashes(&pg));
    let out = run();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no valid checkpoint: {log}");
    assert!(
        log.contains("no checkpoint") && log.contains("truncated") && log.contains("--group-id"),
        "the error names the parts and the fix: {log}"
    );
    assert_eq!(
        (redis_features(&redis), postgres_hashes(&pg)),
        before,
        "the stores were not rolled back to a checkpoint that is not there"
    );
}
