//! `tidemark bench watch`: memory per live co-visited pair, the watch dataflow alone
//! (pre-decoded impressions and watches, short and long span, 1 and N workers), and with
//! `--kafka` freshness from Kafka append to the Postgres commit (raw rows and features)
//! at a fixed rate.

use ordered_float::OrderedFloat;
use tidemark_dataflows::contract::event::Timed;
use tidemark_dataflows::families::watch::decode::watch_id;
use tidemark_dataflows::families::watch::{
    ItemId, Source, UserId, Watch, WatchConfig, WatchEvent, Watches,
};
use tidemark_dataflows::{Dataflow, GenerateSpec, Tick};

use crate::bench::{
    freshness, held_growth, live_config, report_freshness, report_spans, BenchArgs,
};
use crate::clock::now_ms;

/// Watches per viewer of the memory figure: a full history of 20 and one more, each of a
/// new item, so viewer `i` makes 0 + 1 + … + 20 = 210 pairs.
const WATCHES: u64 = 21;
const PAIRS_PER_VIEWER: u64 = WATCHES * (WATCHES - 1) / 2;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    // first, while nothing else has grown the heap (as the other memory figures)
    live_pairs(a.viewers)?;
    let watch = Watches::new(WatchConfig::default());
    report_spans(watch, a, |_| Vec::new())?;
    if a.kafka {
        let stamp = now_ms();
        let (impressions, watches) = (
            format!("bench-impressions-{stamp}"),
            format!("bench-watches-{stamp}"),
        );
        let cfg = live_config(
            "watch",
            stamp,
            a.e2e_workers,
            &[&impressions, &watches],
            // the family tells the topics apart by these names
            serde_json::json!({"impressions_topic": impressions, "watches_topic": watches}),
            &GenerateSpec::default(),
            &[(&impressions, 4), (&watches, 4)],
        )?;
        let rate = a.freshness_rate.unwrap_or(10_000);
        let h = freshness(cfg, rate, a.freshness_seconds, stamp)?;
        report_freshness(
            &h,
            rate,
            "Kafka append → Postgres COMMIT of raw rows and features",
        );
    }
    Ok(())
}

/// Resident memory per live co-visited pair: `n` viewers, each watching 21 items of their
/// own in 21 seconds (210 pairs each, every pair in both items' sums, the pair's and the
/// viewer's), on one worker; RSS growth over the pairs.
fn live_pairs(n: u64) -> anyhow::Result<()> {
    let viewers = |i: u64, tick: Tick| {
        (0..WATCHES)
            .map(|k| {
                let event_id = format!("w-{i}-{k}");
                let watch = Watch {
                    event_id: event_id.clone(),
                    user: UserId(format!("user_{i}").into()),
                    item: ItemId(format!("v{}", i * WATCHES + k).into()),
                    percent_watched: OrderedFloat(90.0),
                    watch_time_sec: OrderedFloat(300.0),
                    source: Source {
                        append_ms: tick as i64,
                        partition: 0,
                        offset: (i * WATCHES + k) as i64,
                    },
                };
                Timed {
                    id: watch_id(&event_id),
                    ts: tick - (WATCHES - k) * 1_000,
                    event: WatchEvent::Watch(Box::new(watch)),
                }
            })
            .collect()
    };
    let next = |_, tick: Tick| tick + 1;
    let watch = Watches::new(WatchConfig::default());
    let g = held_growth(watch, Vec::new(), 1_767_225_600_000, n, viewers, next)?;
    let pairs = n * PAIRS_PER_VIEWER;
    println!(
        "memory per live pair: {:.0} B ({n} viewers, {pairs} pairs, {} watches; RSS +{} MB, built in {:.1} s)",
        g.total as f64 / pairs as f64,
        n * WATCHES,
        g.total / 1_000_000,
        g.secs
    );
    Ok(())
}
