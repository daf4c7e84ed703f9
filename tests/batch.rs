//! `batch` and `training-set` (issue #21, items 3–5, 7) against the real services: for every
//! family, the online store at the end of an `--exit-at-end` run equals `batch` as of that
//! instant, row for row (on another worker count, and again on a rerun); on S3 (moto) too;
//! a training set against a naive as-of recount from the JSON lines; a corrupt archive
//! file skipped and named; an archive that does not hold the range yet exits 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use tidemark_dataflows::contract::table::{SinkKind, TableSpec};

use search::model as search_model;

fn tables_of(family: &str) -> (Vec<String>, Vec<TableSpec>) {
    let f = tidemark_dataflows::family(family, None).unwrap();
    (f.topics(), f.tables())
}

/// Where a run archives, and what a run and a batch of it share.
struct Lake {
    family: String,
    topics: Vec<String>,
    pg: String,
    root: String,
    env: Vec<(String, String)>,
    job: String,
}

impl Lake {
    /// Generated traffic of `family` (2 h of event time, 1 % invalid, duplicates, late
    /// events) in fresh topics, its dimension tables in a fresh database, archived by an
    /// `--exit-at-end` run on 2 workers.
    fn run(name: &str, family: &str, events: u64, root: &str, extra_env: &[(&str, &str)]) -> Lake {
        Lake::run_with(name, family, events, root, extra_env, &[])
    }

    /// [`Lake::run`] with `run_extra` flags for the run.
    fn run_with(
        name: &str,
        family: &str,
        events: u64,
        root: &str,
        extra_env: &[(&str, &str)],
        run_extra: &[&str],
    ) -> Lake {
        let (own, _) = tables_of(family);
        let db = format!("batch_{name}_{family}_{}", std::process::id());
        let pg = fresh_pg(&db);
        let topics: Vec<String> = own
            .iter()
            .map(|t| fresh_topic(&format!("batch-{family}-{t}"), 4))
            .collect();
        let job = format!("batch-{name}-{family}");
        let state = std::env::temp_dir().join(format!(
            "tidemark-batch-state-{name}-{family}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&state);
        let mut env: Vec<(String, String)> = vec![
            ("TIDEMARK_PG".into(), pg.clone()),
            ("TIDEMARK_ARCHIVE__ENABLED".into(), "true".into()),
            ("TIDEMARK_ARCHIVE__ROOT".into(), root.into()),
            ("TIDEMARK_ARCHIVE__MAX_BUFFER_BYTES".into(), "100000".into()),
            (
                "TIDEMARK_CHECKPOINT__DIR".into(),
                state.to_string_lossy().into_owned(),
            ),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let lake = Lake {
            family: family.into(),
            topics,
            pg,
            root: root.into(),
            env,
            job,
        };
        let n = events.to_string();
        let mut gen = vec![
            "generate",
            "--dataflow",
            family,
            "--events",
            &n,
            "--seed",
            "7",
            "--span",
            "2h",
            "--invalid",
            "0.01",
        ];
        for t in &lake.topics {
            gen.extend(["--topic", t]);
        }
        tidemark(&gen, &lake.env());
        let mut run = vec![
            "run",
            "--dataflow",
            family,
            "--exit-at-end",
            "--workers",
            "2",
        ];
        run.extend(["--job", &lake.job, "--group-id", &lake.topics[0]]);
        for t in &lake.topics {
            run.extend(["--topic", t]);
        }
        run.extend_from_slice(run_extra);
        tidemark(&run, &lake.env());
        lake
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `args` after `batch`/`training-set` with the lake's family, topics and job.
    fn command(&self, sub: &str, args: &[&str]) -> Output {
        let mut all = vec![sub, "--dataflow", &self.family, "--job", &self.job];
        for t in &self.topics {
            all.extend(["--topic", t]);
        }
        all.extend_from_slice(args);
        let mut cmd = engine_command();
        cmd.args(&all).envs(self.env());
        output_within(&mut cmd, std::time::Duration::from_secs(300))
    }

    /// The last tick of the run: where its archive marks end.
    fn final_tick(&self) -> u64 {
        let cfg = self.archive_config();
        let root = tidemark::archive::open(&cfg).unwrap();
        let path = tidemark::archive::layout::mark_path(&root.prefix, &self.job, 0);
        let body = block_on(async {
            use object_store::ObjectStoreExt;
            root.store.get(&path).await.unwrap().bytes().await.unwrap()
        });
        let mark: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(mark["ended"], true, "the run read its topics to the end");
        mark["tick"].as_u64().unwrap()
    }

    fn archive_config(&self) -> tidemark::config::ArchiveConfig {
        let var = |k: &str| {
            self.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        tidemark::config::ArchiveConfig {
            enabled: true,
            root: self.root.clone(),
            s3: tidemark::config::S3Config {
                endpoint: var("TIDEMARK_ARCHIVE__S3__ENDPOINT"),
                region: var("TIDEMARK_ARCHIVE__S3__REGION"),
                access_key_id: var("AWS_ACCESS_KEY_ID"),
                secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// `batch` as of `at` alone, on `workers`.
    fn batch_at(&self, at: u64, workers: &str) -> Output {
        let (from, to) = ((at - 1).to_string(), at.to_string());
        let out = self.command(
            "batch",
            &[
                "--from",
                &from,
                "--to",
                &to,
                "--every",
                "1ms",
                "--workers",
                workers,
            ],
        );
        assert!(
            out.status.success(),
            "batch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // every row it reports is in Postgres once it has exited (its last boundary is
        // written after the dataflow is done with it)
        let said = String::from_utf8_lossy(&out.stdout);
        let reported: i64 = said
            .split(", ")
            .find_map(|p| p.strip_suffix(" rows written as of 1 boundaries"))
            .unwrap_or_else(|| panic!("a summary: {said}"))
            .parse()
            .unwrap();
        let mut c = postgres::Client::connect(&self.pg, postgres::NoTls).unwrap();
        // every batch table, the batch-only views' too
        let names: Vec<String> = c
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name LIKE 'batch\\_%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let held: i64 = names
            .iter()
            .map(|t| {
                let sql = format!("SELECT count(*) FROM {t} WHERE as_of = {at}");
                c.query_one(&sql, &[]).unwrap().get::<_, i64>(0)
            })
            .sum();
        assert_eq!(held, reported, "{}: rows in Postgres", self.family);
        out
    }
}

impl Lake {
    /// Search on `topic` archived under `root` by an `--exit-at-end` run of job `job`
    /// (writing to Postgres `pg` when given).
    fn archived_search(job: &str, topic: &str, root: &str, pg: Option<String>) -> Lake {
        let state = PathBuf::from(root).with_extension("state");
        let mut env: Vec<(String, String)> = vec![
            ("TIDEMARK_ARCHIVE__ENABLED".into(), "true".into()),
            ("TIDEMARK_ARCHIVE__ROOT".into(), root.into()),
            (
                "TIDEMARK_CHECKPOINT__DIR".into(),
                state.to_string_lossy().into_owned(),
            ),
        ];
        if let Some(pg) = &pg {
            env.push(("TIDEMARK_PG".into(), pg.clone()));
        }
        let lake = Lake {
            family: "search".into(),
            topics: vec![topic.into()],
            pg: pg.unwrap_or_default(),
            root: root.into(),
            env,
            job: job.into(),
        };
        run_to_end(topic, job, topic, &[], &lake.env());
        lake
    }
}

/// A raw row's coordinates of the copy read first (watch's `impressions`, `watches`): of
/// a duplicate sent to two partitions, that is the order of reading, which a replay may
/// settle otherwise (the rows agree on everything else).
const COPY_FIELDS: [&str; 3] = ["server_received_ts_ms", "source_partition", "source_offset"];

/// The columns a view's online table and its batch table share: keys and features.
fn columns(spec: &TableSpec) -> String {
    let mut c: Vec<&str> = spec.keys.clone();
    c.extend(
        spec.fields
            .iter()
            .map(|f| f.name)
            .filter(|f| !COPY_FIELDS.contains(f)),
    );
    c.join(", ")
}

/// For each view in Postgres: (online rows, batch rows as of `at`, rows in one and not the other).
fn compare(pg: &str, family: &str, at: u64) -> Vec<(String, i64, i64, i64)> {
    let mut c = postgres::Client::connect(pg, postgres::NoTls).unwrap();
    let (_, tables) = tables_of(family);
    let mut out = Vec::new();
    for spec in tables.iter().filter(|t| t.sink.in_postgres()) {
        let online = match spec.sink {
            SinkKind::PgTable => spec.ns.to_string(),
            _ => format!("feat_{}", spec.ns),
        };
        let cols = columns(spec);
        let batch = format!("(SELECT * FROM batch_{} WHERE as_of = {at}) b", spec.ns);
        let count =
            |c: &mut postgres::Client, sql: &str| -> i64 { c.query_one(sql, &[]).unwrap().get(0) };
        let n_online = count(&mut c, &format!("SELECT count(*) FROM {online}"));
        let n_batch = count(&mut c, &format!("SELECT count(*) FROM {batch}"));
        let differ = count(
            &mut c,
            &format!(
                "SELECT count(*) FROM ((SELECT {cols} FROM {online} EXCEPT SELECT {cols} FROM {batch}) \
                 UNION ALL (SELECT {cols} FROM {batch} EXCEPT SELECT {cols} FROM {online})) d"
            ),
        );
        out.push((spec.ns.to_string(), n_online, n_batch, differ));
    }
    out
}

fn assert_parity(lake: &Lake, at: u64) {
    let views = compare(&lake.pg, &lake.family, at);
    eprintln!("{}: {views:?}", lake.family);
    assert!(
        views.iter().map(|v| v.1).sum::<i64>() > 0,
        "{}: the online store holds rows",
        lake.family
    );
    for (ns, online, batch, differ) in views {
        assert_eq!(
            (online, differ),
            (batch, 0),
            "{}: view {ns}: online {online} rows, batch {batch}, {differ} differ",
            lake.family
        );
    }
}

fn local_root(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tidemark-batch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.to_string_lossy().into_owned()
}

#[test]
fn batch_equals_the_online_store_at_the_end_of_a_run_for_every_family() {
    for family in ["search", "reading", "ads", "commerce", "watch"] {
        let lake = Lake::run("parity", family, 3_000, &local_root(family), &[]);
        let at = lake.final_tick();
        // another worker count than the run's, then a rerun on two: the same rows
        lake.batch_at(at, "1");
        assert_parity(&lake, at);
        lake.batch_at(at, "2");
        assert_parity(&lake, at);
        // the Parquet copy holds the same rows
        let (_, tables) = tables_of(family);
        let parquet_rows: usize = tables
            .iter()
            .filter(|t| t.sink.in_postgres())
            .map(|t| {
                parquet_rows(&Path::new(&lake.root).join(format!("features/{}/as_of={at}", t.ns)))
            })
            .sum();
        let pg_rows: i64 = compare(&lake.pg, family, at).iter().map(|v| v.2).sum();
        assert_eq!(parquet_rows as i64, pg_rows, "{family}: Parquet rows");
    }
}

fn parquet_rows(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let f = std::fs::File::open(e.path()).unwrap();
            let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
            use parquet::file::reader::FileReader;
            r.metadata().file_metadata().num_rows() as usize
        })
        .sum()
}

#[test]
fn batch_reads_and_writes_s3() {
    let endpoint = std::env::var("TIDEMARK_S3").unwrap_or("http://127.0.0.1:9400".into());
    let bucket = format!("batch-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let root = format!("s3://{bucket}/lake");
    let env = [
        ("TIDEMARK_ARCHIVE__S3__ENDPOINT", endpoint.as_str()),
        ("TIDEMARK_ARCHIVE__S3__REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let lake = Lake::run("s3", "search", 3_000, &root, &env);
    let at = lake.final_tick();
    lake.batch_at(at, "2");
    assert_parity(&lake, at);
    // the features' files are on S3
    let root = tidemark::archive::open(&lake.archive_config()).unwrap();
    let dir = root
        .prefix
        .clone()
        .join("features")
        .join("doc")
        .join(format!("as_of={at}"));
    let files: Vec<_> = block_on(async {
        use futures_util::TryStreamExt;
        root.store
            .list(Some(&dir))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    });
    assert!(!files.is_empty(), "features/doc/as_of={at}/ on S3");
}

#[test]
fn a_training_set_equals_a_naive_as_of_recount() {
    // in order within each partition (no late events): a record's partition stream time is
    // its own event time, so the naive rule is "every valid first copy with ts <= the label's"
    let root = local_root("training");
    let lake = Lake::run_ordered(&root);
    let lines = std::fs::read_to_string(&lake.1).unwrap();
    let lake = lake.0;
    let events = search::valid_events(&lines);
    let model: Vec<search_model::Event> = events
        .iter()
        .filter_map(search_model::Event::from_json)
        .collect();
    let model: Vec<&search_model::Event> = model.iter().collect();
    let docs: Vec<String> = events
        .iter()
        .filter_map(|e| e.get("doc_id")?.as_str().map(String::from))
        .collect();
    let (lo, hi) = (
        model.iter().map(|e| e.ts).min().unwrap(),
        model.iter().map(|e| e.ts).max().unwrap(),
    );
    // labels: known docs at times across the span (some before the doc's first event), one
    // unknown doc; an extra label column that must come through
    let mut rng = 12345u64;
    let mut next = |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut labels = String::from("doc_id,ts,label\n");
    let mut rows = Vec::new();
    for i in 0..60 {
        let doc = match i {
            0 => "no-such-doc".to_string(),
            _ => docs[next(docs.len() as u64) as usize].clone(),
        };
        let ts = lo + next(hi - lo + 1);
        labels += &format!("{doc},{ts},{}\n", i % 2);
        rows.push((doc, ts));
    }
    let dir = PathBuf::from(&root).join("labels");
    std::fs::create_dir_all(&dir).unwrap();
    let (file, out) = (dir.join("labels.csv"), dir.join("train.parquet"));
    std::fs::write(&file, labels).unwrap();
    let o = lake.command(
        "training-set",
        &[
            "--labels",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--workers",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = read_training(&out);
    assert_eq!(got.len(), 60);
    // the same labels as Parquet, `ts` a timestamp as pandas writes it: the same rows
    let parquet = dir.join("labels.parquet");
    write_parquet_labels(&parquet, &rows);
    let out2 = dir.join("train2.parquet");
    let o = lake.command(
        "training-set",
        &[
            "--labels",
            parquet.to_str().unwrap(),
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = read_training(&out2);
    for (a, b) in got.iter().zip(&again) {
        let features = |r: &serde_json::Map<String, serde_json::Value>| -> Vec<serde_json::Value> {
            r.iter()
                .filter(|(k, _)| k.contains("__"))
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(features(a), features(b));
    }
    let (_, tables) = tables_of("search");
    let doc = tables.iter().position(|t| t.ns == "doc").unwrap();
    let mut with_features = 0;
    for (i, (d, ts)) in rows.iter().enumerate() {
        let want = search_model::features(&model, *ts).remove(&(doc as u8, vec![d.clone()]));
        let row = &got[i];
        assert_eq!(
            (row["doc_id"].as_str(), row["label"].as_str()),
            (Some(d.as_str()), Some(&*(i % 2).to_string()))
        );
        match want {
            None => assert!(
                row["doc__impressions_7d"].is_null(),
                "row {i}: {d} has no features at {ts}: {row:?}"
            ),
            Some(values) => {
                with_features += 1;
                for (f, v) in tables[doc].fields.iter().zip(values) {
                    if f.name.starts_with("decay_") {
                        continue; // forward decay: the model has no decay
                    }
                    let col = format!("doc__{}", f.name);
                    let (g, w) = (row[&col].as_f64(), v.as_f64());
                    assert_eq!(g, w, "row {i}: {d} at {ts}: {col}");
                }
            }
        }
    }
    assert!(
        with_features > 30,
        "{with_features} label rows have features"
    );
}

/// The training set's rows as JSON objects (text and numbers; lists left out).
fn read_training(path: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_array::Array;
    use arrow_schema::DataType;
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for i in 0..batch.num_rows() {
            let mut o = serde_json::Map::new();
            for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
                let v = if c.is_null(i) {
                    serde_json::Value::Null
                } else {
                    match f.data_type() {
                        DataType::Utf8 => c.as_string::<i32>().value(i).into(),
                        DataType::Int64 => c.as_primitive::<Int64Type>().value(i).into(),
                        DataType::Float64 => c.as_primitive::<Float64Type>().value(i).into(),
                        _ => continue,
                    }
                };
                o.insert(f.name().clone(), v);
            }
            rows.push(o);
        }
    }
    rows
}

impl Lake {
    /// Search traffic without late events, archived by a run; the JSON lines' file.
    fn run_ordered(root: &str) -> (Lake, PathBuf) {
        let dir = PathBuf::from(root).with_extension("lines");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("events.jsonl");
        let gen = [
            "generate",
            "--events",
            "4000",
            "--seed",
            "9",
            "--span",
            "3h",
            "--disorder",
            "0",
            "--out",
            file.to_str().unwrap(),
        ];
        tidemark(&gen, &[]);
        let topic = fresh_topic("batch-training", 4);
        produce(
            &topic,
            &std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .collect::<Vec<_>>(),
        );
        let pg = fresh_pg(&format!("batch_training_{}", std::process::id()));
        let lake = Lake::archived_search("batch-training", &topic, root, Some(pg.clone()));
        (lake, file)
    }
}

#[test]
fn a_corrupt_file_is_skipped_and_named_and_an_incomplete_archive_exits_2() {
    let root = local_root("corrupt");
    let lake = Lake::run("corrupt", "search", 2_000, &root, &[]);
    let at = lake.final_tick();
    // past the archive's end: not yet (exit 2), nothing written
    let (from, past) = ((at - 1).to_string(), (at + 1).to_string());
    let o = lake.command("batch", &["--from", &from, "--to", &past, "--every", "1ms"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not yet"));
    // a file overwritten with garbage: skipped with its name, exit 1, the rest written
    let mut files = files_under(&Path::new(&root).join(format!("topic={}", lake.topics[0])));
    files.sort();
    let victim = &files[files.len() / 2];
    std::fs::write(victim, b"PAR1 this is not parquet").unwrap();
    let to = at.to_string();
    let o = lake.command("batch", &["--from", &from, "--to", &to, "--every", "1ms"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "the error names {name}: {err}");
    let views = compare(&lake.pg, "search", at);
    assert!(
        views.iter().map(|v| v.2).sum::<i64>() > 0,
        "rows written without the file: {views:?}"
    );
}

#[test]
fn the_built_in_scheduler_writes_each_boundary_once_the_archive_holds_it() {
    let root = local_root("scheduled");
    let lake = Lake::run_with(
        "scheduled",
        "search",
        3_000,
        &root,
        &[],
        &["--batch-every", "30m"],
    );
    let at = lake.final_tick();
    let every = 30 * 60_000;
    let mut c = postgres::Client::connect(&lake.pg, postgres::NoTls).unwrap();
    let as_of: Vec<i64> = c
        .query("SELECT DISTINCT as_of FROM batch_doc ORDER BY as_of", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // 2 h of events from the first hour on: every half hour up to the run's end (3)
    let last = (at / every * every) as i64;
    assert_eq!(as_of.last(), Some(&last), "{as_of:?}");
    assert!(as_of.len() >= 3, "{as_of:?}");
    assert!(
        as_of.windows(2).all(|w| w[1] - w[0] == every as i64),
        "{as_of:?}"
    );
    let done: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(&root).join(format!("_batches/{}.json", lake.job))).unwrap(),
    )
    .unwrap();
    assert_eq!(done["to"], last);
    // a boundary the scheduler wrote is what `batch` writes for it
    let sum = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), sum(impressions_7d)::bigint FROM batch_doc WHERE as_of = {}",
                    as_of[1]
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let scheduled = sum(&mut c);
    assert!(scheduled.0 > 0);
    lake.batch_at(as_of[1] as u64, "1");
    assert_eq!(sum(&mut c), scheduled);
}

/// Label rows as Parquet: `doc_id` text, `ts` a millisecond timestamp.
fn write_parquet_labels(path: &Path, rows: &[(String, u64)]) {
    use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
    let docs: ArrayRef =
        std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0)));
    let ts: ArrayRef = std::sync::Arc::new(TimestampMillisecondArray::from_iter_values(
        rows.iter().map(|r| r.1 as i64),
    ));
    let batch = RecordBatch::try_from_iter([("doc_id", docs), ("ts", ts)]).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A partition whose records jump further than the alignment skew (10 min) past a label's
/// time, while another partition still has a record before it: the record goes in by the
/// label's time, as the as-of rule says (the alignment's stale view of the jumping
/// partition held it back past the boundary, before the source marked only its next
/// partition as pending).
#[test]
fn a_record_held_back_by_alignment_still_goes_in_before_its_boundary() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let t0: u64 = 1_767_261_600_000; // 2026-01-01T10:00:00Z
    let min = 60_000;
    let topic = fresh_topic("batch-gap", 2);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let event = |id: &str, prefix: &str, ts: u64| {
        format!(
            r#"{{"candidates":["a"],"event_id":"{id}","event_type":"ac_impression","prefix":"{prefix}","session_id":"s","ts":{ts},"user_id":"u"}}"#
        )
    };
    let records = [
        (0, event("a", "far", t0)),
        (0, event("b", "far", t0 + 15 * min)),
        (1, event("c", "gap", t0 + 5 * min)),
        (1, event("d", "gap", t0 + 11 * min)),
    ];
    for (partition, payload) in &records {
        producer
            .send(
                BaseRecord::<(), str>::to(&topic)
                    .payload(payload)
                    .partition(*partition),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(std::time::Duration::from_secs(10)).unwrap();
    let root = local_root("gap");
    let lake = Lake::archived_search("batch-gap", &topic, &root, None);
    let dir = PathBuf::from(&root).join("labels");
    std::fs::create_dir_all(&dir).unwrap();
    let (labels, out) = (dir.join("labels.csv"), dir.join("train.parquet"));
    let at = |m: u64| (t0 + m * min).to_string();
    std::fs::write(
        &labels,
        format!(
            "prefix,ts\ngap,{}\ngap,{}\nfar,{}\nfar,{}\n",
            at(8),
            at(12),
            at(12),
            at(15)
        ),
    )
    .unwrap();
    // on 1 worker (both partitions merged) and on 2 (one each)
    for workers in ["1", "2"] {
        let o = lake.command(
            "training-set",
            &[
                "--labels",
                labels.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--workers",
                workers,
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: Vec<Option<i64>> = read_training(&out)
            .iter()
            .map(|r| r["ac__ac_impressions_7d"].as_i64())
            .collect();
        assert_eq!(
            got,
            vec![Some(1), Some(2), Some(1), Some(2)],
            "{workers} worker(s)"
        );
    }
}

/// Search's batch-only window: `popularity_90d` (view `doc_long`) counts what the 30-day
/// popularity has let go, and lets go after 90 days; `run` has no such view.
#[test]
fn search_declares_a_90_day_popularity_only_batch_computes() {
    let day = 86_400_000u64;
    let t0: u64 = 1_767_225_600_000; // 2026-01-01
    let topic = fresh_topic("batch-long", 1);
    let click = |id: &str, doc: &str, ts: u64| {
        format!(
            r#"{{"event_id":"{id}","event_type":"click","ts":{ts},"user_id":"u","session_id":"s","query":"q","doc_id":"{doc}","position":1}}"#
        )
    };
    let lines = [
        click("a", "old", t0),
        click("b", "old", t0 + 35 * day),
        click("c", "other", t0 + 95 * day),
    ];
    produce(
        &topic,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let root = local_root("long");
    let pg = fresh_pg(&format!("batch_long_{}", std::process::id()));
    let lake = Lake::archived_search("batch-long", &topic, &root, Some(pg.clone()));
    let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    let online: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '%doc_long%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(online, 0, "run makes no batch-only view");
    let dir = PathBuf::from(&root).join("labels");
    std::fs::create_dir_all(&dir).unwrap();
    let (labels, out) = (dir.join("labels.csv"), dir.join("train.parquet"));
    let at = |d: u64| (t0 + d * day).to_string();
    std::fs::write(
        &labels,
        format!(
            "doc_id,ts\nold,{}\nold,{}\nold,{}\n",
            at(36),
            at(91),
            at(130)
        ),
    )
    .unwrap();
    // past the archive's last record: read as it is
    let o = lake.command(
        "training-set",
        &[
            "--labels",
            labels.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--assume-complete",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<(Option<i64>, Option<i64>)> = read_training(&out)
        .iter()
        .map(|r| {
            (
                r["doc__popularity_30d"].as_i64(),
                r["doc_long__popularity_90d"].as_i64(),
            )
        })
        .collect();
    assert_eq!(got, vec![(Some(1), Some(2)), (None, Some(1)), (None, None)]);
    // and `batch` writes the view
    let (from, to) = (at(35), at(36));
    let o = lake.command(
        "batch",
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--every",
            "1d",
            "--assume-complete",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let row = c
        .query_one(
            "SELECT popularity_90d FROM batch_doc_long WHERE doc_id = 'old'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
}
