//! The archive (issue #21, item 1) against the real services: every consumed record —
//! valid, invalid, oversized, binary, with headers — in exactly one Parquet file of the Hive
//! layout, through crashes right after a file is written, a kill -9 at a random moment and
//! changing worker counts; on a local directory and on S3 (moto's server, started by
//! `scripts/services.sh`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tidemark::archive::file::{decode, ArchivedRecord};
use tidemark::archive::layout::{file_path, hour_of, parse_name};

/// What Kafka holds at (partition, offset): payload, key and headers.
type Truth = BTreeMap<(i32, i64), (Vec<u8>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>)>;

fn kafka_truth(topic: &str) -> Truth {
    use rdkafka::message::Message;
    let mut out = Truth::new();
    read_topic(topic, |m| {
        // rdkafka's own header iterator panics on a key that is not UTF-8
        let headers = tidemark::source::kafka::headers_of(m)
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.map(<[u8]>::to_vec)))
            .collect();
        let payload = m.payload().unwrap_or_default().to_vec();
        out.insert(
            (m.partition(), m.offset()),
            (payload, m.key().map(<[u8]>::to_vec), headers),
        );
    });
    out
}

/// Records a hostile producer sends besides the generated traffic: headers (one without a
/// value), a binary payload, a record over the ingest size limit, a valid event with a key.
fn produce_odd_records(topic: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "trace-id",
            value: Some("abc-123"),
        })
        .insert(Header::<&str> {
            key: "no-value",
            value: None,
        });
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5_000));
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x80];
    let event = br#"{"event_id":"odd-1","event_type":"click","ts":1767225600000,"user_id":"u","session_id":"s","query":"q","doc_id":"d","position":1}"#;
    for partition in 0..4 {
        let sends: [(&[u8], Option<&[u8]>); 3] = [
            (binary, None),
            (big.as_bytes(), Some(b"big")),
            (event, Some(b"k")),
        ];
        for (payload, key) in sends {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic)
                .payload(payload)
                .partition(partition)
                .headers(headers.clone());
            if let Some(k) = key {
                r = r.key(k);
            }
            producer.send(r).map_err(|(e, _)| e).unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    // a header key that is not UTF-8 (rdkafka's producer takes only `&str` keys: kcat)
    let mut kcat = std::process::Command::new("kcat")
        .args(["-P", "-b", &kafka(), "-t", topic, "-p", "0"])
        .arg("-H")
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfekey=v"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat (scripts/services.sh installs it)");
    use std::io::Write;
    kcat.stdin.take().unwrap().write_all(b"{}\n").unwrap();
    assert!(kcat.wait().unwrap().success());
}

/// Every archive file under a local root, with its records.
fn local_files(root: &Path) -> Vec<(String, Vec<ArchivedRecord>)> {
    files_under(root)
        .into_iter()
        // the checkpoints' marks of how far the files go (`batch` reads them)
        .filter(|p| !p.strip_prefix(root).unwrap().starts_with("_marks"))
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            assert!(
                rel.ends_with(".parquet"),
                "only Parquet files in the archive (a temporary file left behind?): {rel}"
            );
            let bytes = std::fs::read(&p).unwrap();
            (rel, decode(bytes.into()).unwrap())
        })
        .collect()
}

/// Every file's records, named by its path: each Kafka record in exactly one file, equal to
/// what Kafka holds, each file where the layout puts its records.
fn assert_exactly_once(truth: &Truth, topic: &str, files: &[(String, Vec<ArchivedRecord>)]) {
    let (invalid, with_headers) = assert_exactly_once_plain(truth, topic, files);
    assert!(
        invalid >= 12,
        "the invalid, binary and oversized records are archived: {invalid}"
    );
    assert_eq!(with_headers, 13);
    let lossy = files
        .iter()
        .flat_map(|(_, rs)| rs)
        .flat_map(|r| &r.headers)
        .any(|(k, v)| k == "\u{fffd}\u{fffd}key" && v.as_deref() == Some(&b"v"[..]));
    assert!(lossy, "a header key that is not UTF-8 is archived lossily");
}

/// [`assert_exactly_once`] without the odd records: how many invalid records and records
/// with headers the files hold.
fn assert_exactly_once_plain(
    truth: &Truth,
    topic: &str,
    files: &[(String, Vec<ArchivedRecord>)],
) -> (usize, usize) {
    let mut seen: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    let (mut invalid, mut with_headers) = (0, 0);
    for (path, records) in files {
        assert!(!records.is_empty(), "{path} is empty");
        let name = path.rsplit('/').next().unwrap();
        let (partition, first, last) = parse_name(name).unwrap();
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{path}: offsets out of order"
        );
        assert_eq!(
            (first, last),
            (offsets[0], *offsets.last().unwrap()),
            "{path}"
        );
        for r in records {
            assert_eq!(
                (r.topic.as_str(), r.partition),
                (topic, partition),
                "{path}"
            );
            let expected = file_path(
                &object_store::path::Path::default(),
                topic,
                hour_of(r.event_ms),
                partition,
                first,
                last,
            );
            assert!(
                path.ends_with(expected.as_ref()),
                "{path} holds a record of {expected}"
            );
            if let Some(other) = seen.insert((r.partition, r.offset), path) {
                panic!(
                    "{topic}/{}@{} is in two files: {other} and {path}",
                    r.partition, r.offset
                );
            }
            let (payload, key, headers) = truth
                .get(&(r.partition, r.offset))
                .unwrap_or_else(|| panic!("{path} holds a record Kafka does not: {r:?}"));
            assert_eq!(&r.payload, payload, "{path} @{}", r.offset);
            assert_eq!(&r.key, key, "{path} @{}", r.offset);
            assert_eq!(&r.headers, headers, "{path} @{}", r.offset);
            if !r.valid {
                invalid += 1;
                assert_eq!(
                    r.event_ms, r.timestamp_ms,
                    "an invalid record is filed by its append time"
                );
            }
            with_headers += usize::from(!r.headers.is_empty());
        }
    }
    let missing: Vec<_> = truth
        .keys()
        .filter(|k| !seen.contains_key(k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "records in no file, e.g. {missing:?}");
    assert_eq!(seen.len(), truth.len());
    (invalid, with_headers)
}

/// Runs the job to its end, crashing or killed on the way as the schedule says.
fn run_with_faults(topic: &str, job: &str, env: &[(&str, &str)]) {
    let args = replay_args(topic, job);
    // (workers, crash point or a kill after ms): the crashes well past the first
    // checkpoints, so a restart resumes mid-stream and cleans up past its positions
    let schedule: [(&str, Option<&str>, u64); 4] = [
        ("2", Some("archive-written:250"), 0),
        ("1", Some("archive-written:150"), 0),
        ("2", None, 700),
        ("1", None, 0),
    ];
    for (workers, crash, kill_after) in schedule {
        let mut cmd = engine_command();
        cmd.args(args).args(["--workers", workers]);
        cmd.envs(env.iter().copied());
        if let Some(at) = crash {
            cmd.env("TIDEMARK_CRASH_AT", at);
        }
        let mut child = cmd.spawn().unwrap();
        if kill_after > 0 {
            std::thread::sleep(Duration::from_millis(kill_after));
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        eprintln!("{workers} workers, crash {crash:?}, kill after {kill_after} ms: {status}");
        if crash.is_some() {
            assert!(!status.success(), "the crash point was reached");
        }
    }
    // the last run ended the job
    run_to_its_end(args, env);
}

/// One more run, which must end the job.
fn run_to_its_end(args: [&str; 8], env: &[(&str, &str)]) {
    let mut cmd = engine_command();
    cmd.args(args).envs(env.iter().copied());
    let out = output_within(&mut cmd, Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
}

fn archive_env<'a>(root: &'a str, state: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TIDEMARK_ARCHIVE__ENABLED", "true"),
        ("TIDEMARK_ARCHIVE__ROOT", root),
        // files cut by size too, often
        ("TIDEMARK_ARCHIVE__MAX_BUFFER_BYTES", "40000"),
        ("TIDEMARK_CHECKPOINT__INTERVAL_MS", "100"),
        ("TIDEMARK_CHECKPOINT__DIR", state),
        ("TIDEMARK_INGEST__MAX_MESSAGE_BYTES", "2000"),
    ]
}

#[test]
fn every_record_is_in_exactly_one_file_through_crashes_and_kills() {
    let (topic, _) = generated_stream("archive", 20_000, 21, &["--span", "2d"]);
    produce_odd_records(&topic);
    let dir = std::env::temp_dir().join(format!("tidemark-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (root, state) = (dir.join("lake"), dir.join("state"));
    let (root_s, state_s) = (root.to_str().unwrap(), state.to_str().unwrap());
    run_with_faults(&topic, "archive", &archive_env(root_s, state_s));
    let files = local_files(&root);
    eprintln!("{} files", files.len());
    assert!(
        files.len() > 8,
        "cut by size, checkpoints and hours: {}",
        files.len()
    );
    assert_exactly_once(&kafka_truth(&topic), &topic, &files);
}

#[test]
fn the_archive_on_s3_holds_every_record_once() {
    let endpoint = std::env::var("TIDEMARK_S3").unwrap_or("http://127.0.0.1:9400".into());
    let (topic, _) = generated_stream("archive-s3", 5_000, 22, &[]);
    produce_odd_records(&topic);
    let bucket = format!("lake-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let root = format!("s3://{bucket}/raw");
    let state = std::env::temp_dir().join(format!("tidemark-archive-s3-{}", std::process::id()));
    let state_s = state.to_str().unwrap();
    let mut env = archive_env(&root, state_s);
    env.extend([
        ("TIDEMARK_ARCHIVE__S3__ENDPOINT", endpoint.as_str()),
        ("TIDEMARK_ARCHIVE__S3__REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]);
    let args = replay_args(&topic, "archive-s3");
    let mut cmd = engine_command();
    cmd.args(args)
        .args(["--workers", "2"])
        .envs(env.iter().copied())
        .env("TIDEMARK_CRASH_AT", "archive-written:4");
    assert!(
        !cmd.status().unwrap().success(),
        "the crash point was reached"
    );
    run_to_its_end(args, &env);

    // read back over S3
    let cfg = tidemark::config::ArchiveConfig {
        enabled: true,
        root: root.clone(),
        s3: tidemark::config::S3Config {
            endpoint: Some(endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            virtual_hosted: false,
        },
        ..Default::default()
    };
    let root = tidemark::archive::open(&cfg).unwrap();
    let files = block_on(async {
        use object_store::ObjectStoreExt;
        let mut out = Vec::new();
        for (path, ..) in tidemark::archive::store::files_of(&root, &topic)
            .await
            .unwrap()
        {
            let bytes = root.store.get(&path).await.unwrap().bytes().await.unwrap();
            out.push((path.to_string(), decode(bytes).unwrap()));
        }
        out
    });
    assert!(
        files.iter().all(|(p, _)| p.starts_with("raw/topic=")),
        "under the root's prefix"
    );
    assert_exactly_once(&kafka_truth(&topic), &topic, &files);
}

/// A store that refuses writes (here a file stands where a day's folder goes) holds the
/// checkpoints back: the offsets are not committed past records not yet in a file, so a
/// kill while it refuses loses none of them, and once it takes writes again each record
/// is archived once.
#[test]
fn an_archive_that_cannot_write_holds_back_the_checkpoints() {
    let (topic, _) = generated_stream("archive-blocked", 5_000, 23, &["--span", "2d"]);
    let dir = std::env::temp_dir().join(format!("tidemark-archive-b-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (root, state) = (dir.join("lake"), dir.join("state"));
    let blocker = root.join(format!("topic={topic}")).join("dt=2026-01-01");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a folder").unwrap();
    let (root_s, state_s) = (root.to_str().unwrap(), state.to_str().unwrap());
    let env = archive_env(root_s, state_s);
    let args = replay_args(&topic, "archive-blocked");
    let http = format!("127.0.0.1:{}", free_port());
    let mut cmd = engine_command();
    cmd.args(args)
        .args(["--workers", "2", "--http", &http])
        .envs(env.iter().copied())
        // small polls, so the bound on what waits for the writer shows within this stream
        .env("TIDEMARK_KAFKA__POLL_BATCH", "100");
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run cannot end while the archive cannot write"
    );
    // a writer behind by more than two buffers (2 × 40,000 bytes) stops its source
    let (_, metrics) = http_get(&format!("http://{http}/metrics"), Duration::from_secs(5))
        .expect("/metrics answers");
    let consumed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tidemark_events_consumed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        consumed > 0.0 && consumed < 2_500.0,
        "the sources stop reading while the archive is behind: {consumed} of 5,000 read"
    );
    let _ = child.kill();
    child.wait().unwrap();
    std::fs::remove_file(&blocker).unwrap();
    run_to_its_end(args, &env);
    assert_exactly_once_plain(&kafka_truth(&topic), &topic, &local_files(&root));
}
