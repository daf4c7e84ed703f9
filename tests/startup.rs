//! Starting before the services (a Kubernetes pod whose Redis comes up later): the process
//! stays up and not ready, `/readyz` saying what it waits for, retries with backoff, and
//! turns ready once the service answers; a stop during the wait ends it. A variable a
//! Kubernetes service named `tidemark` injects (`TIDEMARK_PORT=tcp://…`) is ignored.

mod common;

use std::time::{Duration, Instant};

use common::services::*;
use common::*;

fn readyz(port: u16) -> (u16, String) {
    http_get(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(5),
    )
    .unwrap_or_default()
}

#[test]
fn a_missing_store_at_start_up_keeps_the_process_up_and_not_ready_until_it_comes() {
    let topic = fresh_topic("startup", 1);
    produce(
        &topic,
        &[
            r#"{"event_id":"a","event_type":"click","ts":1767225600000,"user_id":"u","session_id":"s","query":"q","doc_id":"d"}"#,
        ],
    );
    let redis_port = 6394;
    let http = free_port();
    let mut engine = KillOnDrop(
        engine_command()
            .args(live_args(&topic, "startup"))
            .args(["--http", &format!("127.0.0.1:{http}")])
            .env("TIDEMARK_REDIS", format!("redis://127.0.0.1:{redis_port}/"))
            .env("TIDEMARK_PORT", "tcp://10.96.0.12:8080")
            .env("TIDEMARK_SERVICE_HOST", "10.96.0.12")
            .spawn()
            .unwrap(),
    );
    wait_until("/readyz 503 waiting for redis", 30, || {
        let (code, body) = readyz(http);
        code == 503 && body.contains("waiting for redis")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        engine.0.try_wait().unwrap().is_none(),
        "the process stays up while redis is missing"
    );
    let dir = std::env::temp_dir().join(format!("tidemark-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let redis = OwnRedis::start(redis_port, &dir);
    wait_until("ready once redis answers", 60, || readyz(http).0 == 200);
    wait_until("the click written", 30, || {
        redis_get_field(&redis.url(), "feat:doc:d", "clicks_7d").as_deref() == Some("1")
    });
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &engine.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let started = Instant::now();
    while engine.0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "stops in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stop while start-up waits for Kafka ends the process at once.
#[test]
fn a_stop_while_waiting_for_kafka_ends_the_wait() {
    let http = free_port();
    let mut engine = KillOnDrop(
        engine_command()
            .args(["run", "--topic", "nowhere", "--job", "nokafka"])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .env("TIDEMARK_KAFKA", "127.0.0.1:9")
            .spawn()
            .unwrap(),
    );
    wait_until("/readyz 503 waiting for kafka", 60, || {
        let (code, body) = readyz(http);
        code == 503 && body.contains("waiting for kafka")
    });
    std::process::Command::new("kill")
        .args(["-TERM", &engine.0.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = engine.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the wait ends on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}

/// Postgres not answering is waited for (not ready); a Postgres that answers but refuses
/// the configured role can never accept it by retrying: the start ends at once, naming
/// the key to correct, with the password hidden. The unknown variable is warned of once.
#[test]
fn a_missing_postgres_is_waited_for_and_one_refusing_the_config_ends_the_start() {
    let topic = fresh_topic("startup-pg", 1);
    let http = free_port();
    let closed = free_port();
    let mut engine = KillOnDrop(
        engine_command()
            .args(["run", "--topic", &topic, "--job", "startpg"])
            .args(["--group-id", &topic, "--http", &format!("127.0.0.1:{http}")])
            .env(
                "TIDEMARK_PG",
                format!("host=127.0.0.1 port={closed} user=tidemark dbname=tidemark"),
            )
            .spawn()
            .unwrap(),
    );
    wait_until("/readyz 503 waiting for postgres", 30, || {
        let (code, body) = readyz(http);
        code == 503 && body.contains("waiting for postgres")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        engine.0.try_wait().unwrap().is_none(),
        "the process stays up while postgres is missing"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &engine.0.id().to_string()])
        .status()
        .unwrap();
    wait_until("the wait ends on SIGTERM", 15, || {
        engine.0.try_wait().unwrap().is_some()
    });

    let base = pg_base();
    let user = base
        .split(' ')
        .find(|p| p.starts_with("user="))
        .unwrap_or("user=tidemark");
    let wrong = base.replace(user, "user=no_such_role") + " password=hunter2-secret";
    let out = output_within(
        engine_command()
            .args(["run", "--topic", &topic, "--job", "startpg"])
            .args(["--group-id", &topic])
            .env("TIDEMARK_PG", &wrong)
            .env("TIDEMARK_PORT", "tcp://10.96.0.12:8080"),
        Duration::from_secs(20),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a role postgres refuses ends the start: {log}"
    );
    assert!(
        log.contains("postgres.url") && log.contains("correct the config"),
        "the error names the key and the fix: {log}"
    );
    assert!(!log.contains("hunter2"), "the password is hidden: {log}");
    assert_eq!(
        log.matches("name no config key").count(),
        1,
        "one warning for the unknown variable: {log}"
    );
}

fn redis_get_field(url: &str, key: &str, field: &str) -> Option<String> {
    let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
    redis::cmd("HGET").arg(key).arg(field).query(&mut c).ok()?
}
