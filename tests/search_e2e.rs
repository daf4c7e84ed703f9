//! `generate` → real Kafka (4 partitions) → `run --exit-at-end` → real Redis and Postgres,
//! on 1 worker, 2 workers and 2 processes, against a recount from DESIGN §5.1 made from the
//! generated JSON lines alone.

mod common;

use common::search::*;
use common::*;

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn kafka_to_redis_and_postgres_matches_the_recount_on_1_and_2_workers_and_2_processes() {
    let (topic, file) = generated_stream("e2e-search", 30_000, 7, &[]);
    let dir = file.parent().unwrap().to_path_buf();
    let events = valid_events(&std::fs::read_to_string(&file).unwrap());
    let final_tick = events
        .iter()
        .map(|e| e["ts"].as_u64().unwrap())
        .max()
        .unwrap();
    let want = recount(&events, final_tick);
    assert!(
        want.len() > 1_000,
        "a meaningful number of entities: {}",
        want.len()
    );

    let hostfile = dir.join("hosts.txt");
    let base_port = 21_000 + (std::process::id() % 1_000) as u16 * 2;
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", base_port, base_port + 1),
    )
    .unwrap();
    let mut snapshots = Vec::new();
    for (i, layout) in ["1 worker", "2 workers", "2 processes"].iter().enumerate() {
        let redis = fresh_redis(1 + i as u8);
        let pg = fresh_pg(&format!("tm_e2e_{i}"));
        let job = format!("e2e{i}");
        let group = format!("{topic}-{i}");
        let env = [
            ("TIDEMARK_REDIS", redis.as_str()),
            ("TIDEMARK_PG", pg.as_str()),
        ];
        let args = [
            "run",
            "--topic",
            &topic,
            "--exit-at-end",
            "--job",
            &job,
            "--group-id",
            &group,
        ];
        match *layout {
            "1 worker" => drop(tidemark(&[&args[..], &["--workers", "1"]].concat(), &env)),
            "2 workers" => drop(tidemark(&[&args[..], &["--workers", "2"]].concat(), &env)),
            _ => {
                let hf = hostfile.to_str().unwrap().to_string();
                let spawn = |p: &str| {
                    let mut cmd = engine_command();
                    cmd.args(args).args([
                        "--processes",
                        "2",
                        "--process",
                        p,
                        "--hostfile",
                        &hf,
                        "--workers",
                        "1",
                    ]);
                    for (k, v) in env {
                        cmd.env(k, v);
                    }
                    cmd.spawn().expect("spawn a cluster process")
                };
                // a process that fails leaves its peer waiting for it: both are killed
                // at the deadline (KillOnDrop) rather than the test hanging
                let mut both = [spawn("0"), spawn("1")].map(common::services::KillOnDrop);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
                let mut codes = [None, None];
                while codes.iter().any(Option::is_none) {
                    for (p, code) in both.iter_mut().zip(codes.iter_mut()) {
                        if code.is_none() {
                            *code = p.0.try_wait().unwrap();
                        }
                    }
                    let failed = codes.iter().flatten().any(|c| !c.success());
                    assert!(
                        !failed && std::time::Instant::now() < deadline,
                        "both processes exit 0 in time: {codes:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
        let frontier = redis_get(&redis, &format!("tidemark:{job}:frontier"));
        assert_eq!(
            frontier,
            Some(final_tick.to_string()),
            "{layout}: the frontier is the largest stream time"
        );
        let (r, p) = (redis_features(&redis), postgres_hashes(&pg));
        assert_matches(&format!("redis, {layout}"), &r, &want);
        assert_matches(&format!("postgres, {layout}"), &p, &want);
        assert_eq!(
            comparable(&r, true),
            comparable(&p, true),
            "{layout}: Redis and Postgres hold the same features"
        );
        snapshots.push(comparable(&r, false));
    }
    assert_eq!(snapshots[0], snapshots[1], "1 worker and 2 workers agree");
    assert_eq!(
        snapshots[0], snapshots[2],
        "1 process and 2 processes agree"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
