//! The ads family end to end: `generate --dataflow ads` (10 hours of event time across
//! Seoul's and Berlin's midnights, with `campaign_budgets` in Postgres) → real `ad-events` and
//! `quality-score-updates` topics → `run --exit-at-end` on 2 workers → the
//! `performance-metrics` and `budget-management` topics, Redis and Postgres equal the model
//! of `dataflows/tests/common/ads_model.rs`; a replay into fresh stores and topics
//! produces the same records under the same ids.

mod common;

use std::collections::BTreeMap;

use common::ads::model::{
    BUDGET, BUDGET_EVENTS, BUDGET_SPEND, CAMPAIGN, PERFORMANCE, PERFORMANCE_HISTORY, PRODUCT,
};
use common::ads::{
    assert_alert_versions, assert_same_rows, budgets, expected, model_input, pg_rows, redis_rows,
    topic_rows, without_ticks, without_versions, Rows,
};
use common::reading::assert_views;
use common::*;

const START: u64 = 1_767_276_000_000; // 2026-01-01T14:00:00Z

/// The key of a performance-metrics record and of a `performance_metrics` row.
const WINDOW_KEYS: [&str; 5] = [
    "campaign_id",
    "placement",
    "category",
    "window_start",
    "metric_type",
];

struct Outputs {
    redis: String,
    pg: String,
    metrics: String,
    budget: String,
}

impl Outputs {
    fn fresh(name: &str, db: u8) -> Self {
        Outputs {
            redis: fresh_redis(db),
            pg: fresh_pg(name),
            metrics: fresh_topic(&format!("{name}-metrics"), 3),
            budget: fresh_topic(&format!("{name}-budget"), 3),
        }
    }
}

/// `run --exit-at-end` of the ads job over `ads` and `quality` into `out`.
fn run_ads(ads: &str, quality: &str, job: &str, out: &Outputs, budgets_from: &str) {
    run_ads_on(ads, quality, job, out, budgets_from, 2)
}

fn run_ads_on(
    ads: &str,
    quality: &str,
    job: &str,
    out: &Outputs,
    budgets_from: &str,
    workers: usize,
) {
    let dlq = format!("{ads}-dlq-{job}");
    let env = [
        ("TIDEMARK_REDIS", out.redis.as_str()),
        ("TIDEMARK_PG", out.pg.as_str()),
        ("TIDEMARK_KAFKA__DLQ_TOPIC", dlq.as_str()),
        ("TIDEMARK_DATAFLOWS__ADS__QUALITY_TOPIC", quality),
        (
            "TIDEMARK_DATAFLOWS__ADS__METRICS_TOPIC",
            out.metrics.as_str(),
        ),
        ("TIDEMARK_DATAFLOWS__ADS__BUDGET_TOPIC", out.budget.as_str()),
    ];
    // the budgets table lives with the stores: copy it there
    if budgets_from != out.pg {
        let rows = budgets(budgets_from);
        let mut c = postgres::Client::connect(&out.pg, postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE IF NOT EXISTS campaign_budgets (campaign_id text PRIMARY KEY, advertiser_id text NOT NULL, daily_budget bigint NOT NULL, timezone text NOT NULL)").unwrap();
        for b in rows {
            c.execute(
                "INSERT INTO campaign_budgets VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&b.campaign, &b.advertiser, &b.daily, &b.zone],
            )
            .unwrap();
        }
    }
    let group = format!("{ads}-{job}");
    tidemark(
        &[
            "run",
            "--dataflow",
            "ads",
            "--topic",
            ads,
            "--topic",
            quality,
            "--exit-at-end",
            "--job",
            job,
            "--group-id",
            &group,
            "--workers",
            &workers.to_string(),
        ],
        &env,
    );
}

/// Ten hours of generated ads traffic (1 % invalid, duplicates, late events) in fresh
/// `{name}` and `{name}-quality` topics, its budgets in the database `pg`, and the same
/// records as JSON lines.
fn ads_stream(name: &str, pg: &str) -> (String, String, String) {
    let (ads, quality) = (
        fresh_topic(name, 4),
        fresh_topic(&format!("{name}-quality"), 2),
    );
    let file = std::env::temp_dir().join(format!("tidemark-{name}-{}.jsonl", std::process::id()));
    let start = START.to_string();
    let gen = [
        "generate",
        "--dataflow",
        "ads",
        "--events",
        "36000",
        "--seed",
        "5",
        "--rate",
        "1",
        "--start-ms",
        &start,
        "--invalid",
        "0.01",
    ];
    tidemark(
        &[&gen[..], &["--out", file.to_str().unwrap()]].concat(),
        &[("TIDEMARK_PG", pg)],
    );
    tidemark(
        &[&gen[..], &["--topic", &ads, "--topic", &quality]].concat(),
        &[],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    (ads, quality, text)
}

/// Two runs wrote the same records to the output topics and the same Postgres rows.
fn assert_same_outputs(what: &str, got: &Outputs, want: &Outputs) {
    for (topic, g, w) in [
        ("performance-metrics", &got.metrics, &want.metrics),
        ("budget-management", &got.budget, &want.budget),
    ] {
        let rows = |t: &str| without_versions(&without_ticks(&topic_rows(t).0));
        assert_same_rows(&format!("{topic} {what}"), &rows(g), &rows(w));
    }
    for (table, keys) in [
        ("performance_metrics", &WINDOW_KEYS[..]),
        ("budget_spend", &["campaign_id", "date"][..]),
        ("feat_campaign", &["campaign_id"][..]),
    ] {
        let rows = |pg: &str| without_ticks(&pg_rows(pg, table, keys));
        assert_same_rows(&format!("{table} {what}"), &rows(&got.pg), &rows(&want.pg));
    }
}

/// The store holds exactly the model's rows, each with the model's values.
fn assert_rows(store: &str, got: &Rows, want: Option<&Rows>) {
    let empty = Rows::new();
    let want = want.unwrap_or(&empty);
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, _)| !got.contains_key(*k))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{store}: {} rows, the model {}; missing {missing:?}; extra {extra:?}",
        got.len(),
        want.len()
    );
    assert_views(store, got, want, |_| true);
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn kafka_to_topics_redis_and_postgres_matches_the_model_and_a_replay_repeats_it() {
    let first = Outputs::fresh("tm_ads", 15);
    let (ads, quality, text) = ads_stream("e2e-ads", &first.pg);

    run_ads(&ads, &quality, "ads1", &first, &first.pg);
    let at: u64 = redis_get(&first.redis, "tidemark:ads1:frontier")
        .unwrap()
        .parse()
        .unwrap();
    // Which events are too late is decided by each worker's stream time, which runs ahead
    // when it reads a small partition (quality updates) to its end first. The traffic is
    // 10 hours long and its late events are at most 12 hours late (or 30 and more, too
    // late everywhere), so no event's fate depends on how partitions interleave.
    let (events, invalid) = model_input(&text);
    // stream time ends at the newest event (or a few ticks after it: a batch after a
    // checkpoint goes in at a later tick than the checkpoint's)
    let newest = events.iter().map(|(e, _)| e.ts).max().unwrap();
    assert!(
        (newest..newest + 100).contains(&at),
        "stream time {at}, newest event {newest}"
    );
    let budget_rows = budgets(&first.pg);
    let want = expected(&events, &budget_rows, at);

    // the stream is meaningful
    let count = |t: u8, f: &dyn Fn(&BTreeMap<String, String>) -> bool| {
        want.get(&t)
            .map_or(0, |rows| rows.values().filter(|r| f(r)).count())
    };
    assert!(count(PERFORMANCE, &|_| true) > 1_000, "window records");
    assert!(
        count(PERFORMANCE, &|r| r["conversions"] != "0") > 20,
        "attributed conversions"
    );
    assert!(count(CAMPAIGN, &|r| r["unattributed_conversions_24h"] != "0") > 0);
    for alert in ["90_PERCENT", "95_PERCENT", "EXHAUSTED"] {
        assert!(
            count(BUDGET_EVENTS, &|r| r["alert_type"] == alert) > 0,
            "{alert} alerts"
        );
    }
    assert!(count(BUDGET_EVENTS, &|r| r["event_type"] == "BUDGET_SYNC") > 16);
    assert!(count(BUDGET, &|r| r["paused"] == "1") > 0);
    assert!(count(PRODUCT, &|_| true) > 100);
    // campaigns in Seoul and Berlin had two days
    let dates: std::collections::BTreeSet<&str> = want[&BUDGET]
        .keys()
        .map(|k| k.split('|').nth(1).unwrap())
        .collect();
    assert!(dates.len() >= 2, "{dates:?}");

    // Redis
    assert_rows(
        "redis campaign",
        &redis_rows(&first.redis, "feat:campaign:"),
        want.get(&CAMPAIGN),
    );
    assert_rows(
        "redis product",
        &redis_rows(&first.redis, "feat:product:"),
        want.get(&PRODUCT),
    );
    assert_rows(
        "redis budget",
        &redis_rows(&first.redis, "budget:"),
        want.get(&BUDGET),
    );
    // Postgres
    assert_rows(
        "postgres campaign",
        &pg_rows(&first.pg, "feat_campaign", &["campaign_id"]),
        want.get(&CAMPAIGN),
    );
    assert_rows(
        "postgres product",
        &pg_rows(&first.pg, "feat_product", &["product_id"]),
        want.get(&PRODUCT),
    );
    assert_rows(
        "postgres performance_metrics",
        &pg_rows(&first.pg, "performance_metrics", &WINDOW_KEYS),
        want.get(&PERFORMANCE_HISTORY),
    );
    assert_rows(
        "postgres budget_spend",
        &pg_rows(&first.pg, "budget_spend", &["campaign_id", "date"]),
        want.get(&BUDGET_SPEND),
    );
    // Kafka: what a compacted topic keeps is the model's records
    let (metrics, sent) = topic_rows(&first.metrics);
    assert_rows("performance-metrics", &metrics, want.get(&PERFORMANCE));
    assert!(
        sent.values().any(|n| *n > 1),
        "a late event re-emitted a closed window"
    );
    let (budget, _) = topic_rows(&first.budget);
    let budget = without_versions(&budget);
    assert_rows("budget-management", &budget, want.get(&BUDGET_EVENTS));
    // each alert once, a correction as the next version naming what it corrects (late
    // clicks, hours late, move some crossings)
    let corrected = assert_alert_versions(&first.budget);
    assert!(corrected > 0, "no alert was corrected");
    // every invalid record is in the DLQ
    assert_eq!(dead_letters(&format!("{ads}-dlq-ads1")).len(), invalid);

    // a replay into fresh stores and topics: the same records under the same ids
    let second = Outputs::fresh("tm_ads_replay", 4);
    run_ads(&ads, &quality, "ads2", &second, &first.pg);
    assert_same_outputs("replayed", &second, &first);
    assert_eq!(
        without_ticks(&redis_rows(&second.redis, "budget:")),
        without_ticks(&redis_rows(&first.redis, "budget:")),
    );
}

/// A run stopped half way and restarted from its checkpoint (on another number of workers)
/// gives the uninterrupted run's records. The halves are produced without keys, so copies of an event land on any
/// partition and worker, and after the restart the small quality topic could be read to its
/// end first: both used to move a worker's stream time hours ahead and let a copy past the
/// dedup horizon (partition alignment, `ingest.max_partition_skew_ms`, prevents it).
#[test]
fn a_restart_from_a_checkpoint_gives_the_same_records() {
    let first = Outputs::fresh("tm_ads_once", 15);
    let (ads, quality, text) = ads_stream("e2e-ads-once", &first.pg);
    run_ads(&ads, &quality, "once", &first, &first.pg);
    // a run stopped half way and restarted from its checkpoint: the same outputs (the
    // restored state neither loses nor doubles a click, a window or an alert)
    let third = Outputs::fresh("tm_ads_restart", 14);
    let (ads3, quality3) = (fresh_topic("e2e-ads-r", 4), fresh_topic("e2e-ads-rq", 2));
    let lines: Vec<&str> = text.lines().collect();
    let is_quality = |l: &&&str| l.contains("\"quality_score\"") && !l.contains("\"event_type\"");
    // the second half on 3 workers: state keyed by device-ad or campaign moves between
    // workers on a restore
    for (half, workers) in lines.chunks(lines.len() / 2 + 1).zip([2, 3]) {
        let (q, a): (Vec<&str>, Vec<&str>) = half.iter().partition(is_quality);
        produce(&ads3, &a);
        produce(&quality3, &q);
        run_ads_on(&ads3, &quality3, "ads3", &third, &first.pg, workers);
    }
    assert_same_outputs("after a restart", &third, &first);
    // the restart re-sent no alert as a new version
    assert_alert_versions(&third.budget);
}
