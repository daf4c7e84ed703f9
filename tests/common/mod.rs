//! Helpers for tests against the real services that `scripts/services.sh up` starts.

#![allow(dead_code)]

pub mod ads;
pub mod reading;
pub mod search;
pub mod services;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

pub const BIN: &str = env!("CARGO_BIN_EXE_tidemark");

/// Decodes `{"event_id", "ts", "user_id"}`: the events of the small families the tests define.
pub fn decode_user_event(
    r: &tidemark_dataflows::contract::record::RecordRef<'_>,
) -> Result<
    tidemark_dataflows::contract::event::Timed<String>,
    tidemark_dataflows::contract::record::DecodeError,
> {
    use tidemark_dataflows::contract::record::{DecodeError, ErrorKind};
    let v: serde_json::Value = serde_json::from_slice(r.payload)
        .map_err(|e| DecodeError::new(ErrorKind::Json, e.to_string()))?;
    let field = |k: &str| {
        v.get(k)
            .ok_or_else(|| DecodeError::new(ErrorKind::MissingField, k))
    };
    Ok(tidemark_dataflows::contract::event::Timed {
        id: tidemark_dataflows::contract::event::EventId::of(
            field("event_id")?.as_str().unwrap_or_default(),
        ),
        ts: field("ts")?.as_u64().unwrap_or_default(),
        event: field("user_id")?.as_str().unwrap_or_default().to_string(),
    })
}

pub fn kafka() -> String {
    std::env::var("TIDEMARK_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_base() -> String {
    std::env::var("TIDEMARK_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A model's rows — (view index, key) → values in the view's field order — as the hashes
/// the stores hold: `feat:{ns}:{key…}` → field → value.
pub fn labelled(
    tables: &[tidemark_dataflows::contract::table::TableSpec],
    rows: impl IntoIterator<
        Item = (
            (u8, Vec<String>),
            Vec<tidemark_dataflows::contract::table::Value>,
        ),
    >,
) -> BTreeMap<String, BTreeMap<String, String>> {
    rows.into_iter()
        .map(|((t, key), values)| {
            let spec = &tables[t as usize];
            let fields = spec
                .fields
                .iter()
                .zip(values)
                .map(|(f, v)| (f.name.to_string(), v.to_string()))
                .collect();
            (format!("feat:{}:{}", spec.ns, key.join(":")), fields)
        })
        .collect()
}

/// A Redis URL on database `db`, emptied.
pub fn fresh_redis(db: u8) -> String {
    let base = redis_base();
    let host = base
        .split("://")
        .nth(1)
        .unwrap_or("127.0.0.1:6379")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let url = format!("redis://{host}/{db}");
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .expect("redis is up (scripts/services.sh up)");
    redis::cmd("FLUSHDB").query::<()>(&mut c).unwrap();
    url
}

pub fn pg_base() -> String {
    std::env::var("TIDEMARK_PG").unwrap_or_else(|_| {
        "host=127.0.0.1 port=5432 user=tidemark password=tidemark dbname=tidemark".into()
    })
}

/// A connection string to an empty database `name`.
pub fn fresh_pg(name: &str) -> String {
    let mut admin = postgres::Client::connect(&pg_base(), postgres::NoTls)
        .expect("postgres is up (scripts/services.sh up)");
    admin
        .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
        .unwrap();
    admin
        .execute(&format!("CREATE DATABASE {name}"), &[])
        .unwrap();
    let base = pg_base();
    let parts: Vec<&str> = base
        .split(' ')
        .filter(|p| !p.starts_with("dbname="))
        .collect();
    format!("{} dbname={name}", parts.join(" "))
}

/// A topic with a unique name and `partitions` partitions.
pub fn fresh_topic(prefix: &str, partitions: i32) -> String {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(delete_old_test_topics);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    create_topic(&name, partitions, &[]);
    name
}

/// Runs a future to its end on a runtime of its own (the Kafka admin client's calls).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Creates topic `name` with `partitions` partitions and the topic configs `settings`.
pub fn create_topic(name: &str, partitions: i32, settings: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    for r in block_on(admin.create_topics([&topic], &options)).unwrap() {
        r.expect("topic created");
    }
}

/// A live `run` of `topic` as `job`, in consumer group `topic`.
pub fn live_args<'a>(topic: &'a str, job: &'a str) -> [&'a str; 7] {
    ["run", "--topic", topic, "--job", job, "--group-id", topic]
}

/// Sends SIGTERM to `child` and waits for it: its exit status and how long the stop took.
pub fn terminate(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    let sent = std::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    (status, sent.elapsed())
}

/// `run --exit-at-end` of `topic` as `job`, in consumer group `topic`.
pub fn replay_args<'a>(topic: &'a str, job: &'a str) -> [&'a str; 8] {
    let args = ["run", "--topic", topic, "--exit-at-end", "--job", job];
    [
        args[0],
        args[1],
        args[2],
        args[3],
        args[4],
        args[5],
        "--group-id",
        topic,
    ]
}

/// When a test run made `topic` (`…-{pid}-{unix nanos}…`, as `fresh_topic` names them and
/// the topics derived from those), if it did.
fn made_at_nanos(topic: &str) -> Option<u128> {
    let parts: Vec<&str> = topic.split('-').collect();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    parts
        .windows(2)
        .find(|w| digits(w[0]) && digits(w[1]) && w[1].len() == 19)
        .and_then(|w| w[1].parse().ok())
}

/// Deletes the topics earlier test runs left on the local broker (made over an hour ago):
/// a broker holding hundreds of them answers metadata requests slowly enough to make the
/// drain-time tests flaky.
fn delete_old_test_topics() {
    use rdkafka::client::Client;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let client: &Client<DefaultClientContext> = admin.inner();
    let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(10)) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let old: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| made_at_nanos(t).is_some_and(|at| at + 3_600_000_000_000 < now))
        .collect();
    for chunk in old.chunks(100) {
        let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let _ = block_on(admin.delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ));
    }
}

/// Where the tests' engines keep checkpoints (each job and group has its own directory).
pub fn state_dir() -> String {
    std::env::temp_dir()
        .join("tidemark-test-state")
        .to_string_lossy()
        .into_owned()
}

/// The engine binary with the tests' Kafka and checkpoint directory. Redis and Postgres
/// only when a test names its own database (`fresh_redis`, `fresh_pg`): the feature views
/// of a store belong to one job, and the tests' jobs are many.
pub fn engine_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("TIDEMARK_PG")
        .env_remove("TIDEMARK_REDIS")
        .env("TIDEMARK_KAFKA", kafka())
        .env("TIDEMARK_CHECKPOINT__DIR", state_dir())
        .env("RUST_LOG", "warn");
    cmd
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client builder (reqwest is built without a TLS provider of its own: the
/// engine installs ring's, and so must a test before it makes a client).
pub fn http_client() -> reqwest::blocking::ClientBuilder {
    tidemark::archive::install_tls();
    reqwest::blocking::Client::builder()
}

/// The sum of a metric's samples whose labels include every `label="value"` given.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let bare = series.split('{').next().unwrap();
        if bare == name && labels.iter().all(|l| series.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

/// `promtool check metrics` (Prometheus's linter: HELP on every metric, names and types
/// by its conventions) passes a scrape and says nothing.
pub fn promtool_clean(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool on PATH (scripts/services.sh up installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

/// `GET url`: the status and the body, or `None` when nothing answered in time.
pub fn http_get(url: &str, timeout: Duration) -> Option<(u16, String)> {
    let client = http_client().timeout(timeout).build().unwrap();
    let r = client.get(url).send().ok()?;
    Some((r.status().as_u16(), r.text().unwrap_or_default()))
}

/// Runs `cmd` to its end, capturing its output; killed, and the test failed with the end
/// of its log, when it does not end within `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tidemark");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!("{cmd:?} did not end within {limit:?}: {}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

pub fn tidemark(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = engine_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tidemark");
    assert!(
        out.status.success(),
        "tidemark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `run --exit-at-end` of `topic` as `job` in consumer group `group`, with `extra` flags.
pub fn run_to_end(topic: &str, job: &str, group: &str, extra: &[&str], env: &[(&str, &str)]) {
    let args = [
        "run",
        "--topic",
        topic,
        "--exit-at-end",
        "--job",
        job,
        "--group-id",
        group,
    ];
    tidemark(&[&args[..], extra].concat(), env);
}

/// Every `feat:*` hash in the database, by key.
pub fn redis_features(url: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("feat:*").query(&mut c).unwrap();
    keys.into_iter()
        .map(|k| {
            let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
            (k, h)
        })
        .collect()
}

pub fn redis_get(url: &str, key: &str) -> Option<String> {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("GET").arg(key).query(&mut c).unwrap()
}

/// A Postgres feature table as Redis-style hashes: `feat:{ns}:{keys}` → column → text.
pub fn pg_features(
    url: &str,
    ns: &str,
    keys: &[&str],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let rows = c
        .query(
            &format!("SELECT row_to_json(t)::text FROM feat_{ns} t"),
            &[],
        )
        .unwrap();
    rows.into_iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
            let o = v.as_object().unwrap();
            let key: Vec<String> = keys
                .iter()
                .map(|k| o[*k].as_str().unwrap().to_string())
                .collect();
            let fields = o
                .iter()
                .filter(|(k, v)| !keys.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect();
            (format!("feat:{ns}:{}", key.join(":")), fields)
        })
        .collect()
}

/// Generates `events` search events (1 % invalid, plus `extra` flags) into a fresh
/// 4-partition topic and, the same records, a JSON-lines file.
/// Generated search traffic (`generate … --rate 200` with `extra`) as JSON lines in a
/// file of its own: the file's text.
pub fn generated_lines(name: &str, events: u64, seed: u64, extra: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("tidemark-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let (events, seed) = (events.to_string(), seed.to_string());
    let gen = [
        "generate", "--events", &events, "--seed", &seed, "--rate", "200",
    ];
    let out = ["--out", file.to_str().unwrap()];
    tidemark(&[&gen[..], extra, &out[..]].concat(), &[]);
    std::fs::read_to_string(&file).unwrap()
}

/// The largest `ts` of the JSON lines in `file`.
pub fn newest_ts(file: &std::path::Path) -> u64 {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts"].as_u64())
        .max()
        .unwrap()
}

pub fn generated_stream(
    name: &str,
    events: u64,
    seed: u64,
    extra: &[&str],
) -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tidemark-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let topic = fresh_topic(name, 4);
    let (events, seed) = (events.to_string(), seed.to_string());
    let mut gen = vec![
        "generate",
        "--events",
        &events,
        "--seed",
        &seed,
        "--rate",
        "200",
        "--invalid",
        "0.01",
    ];
    gen.extend_from_slice(extra);
    tidemark(
        &[&gen[..], &["--out", file.to_str().unwrap()]].concat(),
        &[],
    );
    tidemark(&[&gen[..], &["--topic", &topic]].concat(), &[]);
    (topic, file)
}

/// A record read back from the DLQ.
pub struct DeadLetter {
    /// `{topic}/{partition}/{offset}` of the dead record (Connect's headers), else (an
    /// entity update a store refused) the letter's key.
    pub key: String,
    /// The letter's own key: the dead record's key.
    pub record_key: Option<Vec<u8>>,
    /// The JSON envelope; `Null` for a letter in the `connect` format.
    pub envelope: serde_json::Value,
    /// The letter's value as it is (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers, values read lossily as text (a header without a value as "").
    pub headers: BTreeMap<String, String>,
    /// Headers as they are, in order.
    pub raw_headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Every record of `topic`, read from the start until nothing new came for 3 s.
pub fn dead_letters(topic: &str) -> Vec<DeadLetter> {
    use rdkafka::message::{Headers, Message};
    let mut out = Vec::new();
    read_topic(topic, |m| {
        let mut headers = BTreeMap::new();
        let mut raw_headers = Vec::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(h.key.to_string(), v.unwrap_or_default());
                raw_headers.push((h.key.to_string(), h.value.map(<[u8]>::to_vec)));
            }
        }
        let record_key = m.key().map(<[u8]>::to_vec);
        let coordinates = ["topic", "partition", "offset"]
            .map(|c| headers.get(&format!("__connect.errors.{c}")).cloned());
        let key = match coordinates {
            [Some(t), Some(p), Some(o)] => format!("{t}/{p}/{o}"),
            _ => String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        };
        let connect = headers
            .get("tidemark.dlq.format")
            .is_some_and(|f| f == "connect");
        let envelope = match (connect, m.payload()) {
            (false, Some(p)) => serde_json::from_slice(p).unwrap(),
            _ => serde_json::Value::Null,
        };
        out.push(DeadLetter {
            key,
            record_key,
            envelope,
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            raw_headers,
        });
    });
    out
}

/// Every record of `topic` in order per partition, as (key, JSON value or `None` for a
/// tombstone), read from the start until nothing new came for 3 s.
pub fn topic_records(topic: &str) -> Vec<(String, Option<serde_json::Value>)> {
    use rdkafka::message::Message;
    let mut out = Vec::new();
    read_topic(topic, |m| {
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().map(|p| serde_json::from_slice(p).unwrap()),
        ))
    });
    out
}

/// Hands every record of `topic` to `visit`, from the start until nothing new came for 3 s.
pub fn read_topic(topic: &str, mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", format!("reader-{topic}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    // every partition from its start up to its end offset now (a quiet spell alone once
    // ended the read while a partition's records were still being fetched, on a busy CI)
    let timeout = Duration::from_secs(10);
    let mut ends = BTreeMap::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    if let Ok(md) = consumer.fetch_metadata(Some(topic), timeout) {
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            // a topic just made may have no leader yet (NotLeaderForPartition): asked again
            let mut tries = 0;
            let (_, high) = loop {
                match consumer.fetch_watermarks(topic, p.id(), timeout) {
                    Ok(w) => break w,
                    Err(e) if tries < 20 => {
                        tries += 1;
                        eprintln!("watermarks of {topic}/{}: {e}; again", p.id());
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => panic!("watermarks of {topic}/{}: {e}", p.id()),
                }
            };
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let started = std::time::Instant::now();
    let mut last = started;
    // and on past those ends until 3 s pass with nothing new
    while ends.iter().any(|(p, e)| next[p] < *e) || last.elapsed() < Duration::from_secs(3) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading {topic}: at {next:?} of {ends:?} after 120 s"
        );
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        use rdkafka::Message;
        next.insert(m.partition(), m.offset() + 1);
        last = std::time::Instant::now();
        visit(&m);
    }
}

/// Produces `lines` to `topic`, waiting until every one is acknowledged.
pub fn produce(topic: &str, lines: &[&str]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    for line in lines {
        loop {
            match producer.send(BaseRecord::<(), str>::to(topic).payload(*line)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Creates `bucket` on the S3 server (moto takes unsigned requests).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let r = http_client()
        .build()
        .unwrap()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .unwrap();
    assert!(
        r.status().is_success(),
        "creating bucket {bucket}: {}",
        r.status()
    );
}

/// Every file under `dir`, in its subfolders too.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        match e.path().is_dir() {
            true => out.extend(files_under(&e.path())),
            false => out.push(e.path()),
        }
    }
    out
}

/// A `demo` of `family` serving on `addr` for at most `seconds`, output discarded; the
/// caller kills it when done.
pub fn demo_server(family: &str, addr: &str, seconds: u64, rate: u64) -> std::process::Child {
    engine_command()
        .args([
            "demo",
            "--dataflow",
            family,
            "--seconds",
            &seconds.to_string(),
        ])
        .args(["--http", addr, "--rate", &rate.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the demo")
}

/// A demo of search on a free port (killed when dropped), once `doc-0` is stored; its
/// base URL.
pub fn search_demo(seconds: u64, rate: u64) -> (services::KillOnDrop, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = services::KillOnDrop(demo_server("search", &addr, seconds, rate));
    let base = format!("http://{addr}");
    let started = std::time::Instant::now();
    let doc = format!("{base}/features/doc/doc-0");
    while http_get(&doc, Duration::from_secs(2)).is_none_or(|(s, _)| s != 200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "doc-0 within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, base)
}

/// A Feast-shaped error body (a JSON string holding `{"module", "class", "message"}`, as
/// Feast's server writes it): its class and message.
pub fn feast_detail(body: &serde_json::Value) -> Option<(String, String)> {
    let detail: serde_json::Value = serde_json::from_str(body.as_str()?).ok()?;
    if detail["module"] != "feast.errors" {
        return None;
    }
    Some((
        detail["class"].as_str()?.to_string(),
        detail["message"].as_str()?.to_string(),
    ))
}
