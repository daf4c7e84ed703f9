//! `tidemark bench ads`: the ads dataflow alone (pre-decoded events, 1 and N workers),
//! memory per open click of the 24-hour attribution join, and with `--kafka` freshness
//! from Kafka append to the budget-management record (every sink durable) at a fixed rate.

use tidemark_dataflows::contract::event::{EventId, Timed};
use tidemark_dataflows::families::ads::{
    generate, AdEvent, Ads, AdsConfig, AdvertiserId, CampaignId, DeviceAd, Placement, Slot,
};
use tidemark_dataflows::{Dataflow, GenerateSpec};

use crate::bench::{
    freshness, held_growth, live_config, report_freshness, report_spans, BenchArgs,
};
use crate::clock::now_ms;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    // first, while nothing else has grown the heap (see `bench reading`)
    open_clicks(a.clicks)?;
    let ads = Ads::new(AdsConfig::default());
    report_spans(ads.clone(), a, |spec| {
        vec![generate::campaign_budgets(spec)]
    })?;
    if a.kafka {
        let stamp = now_ms();
        let [input, quality, metrics, budget] =
            ["ads", "quality", "metrics", "budget"].map(|t| format!("bench-{t}-{stamp}"));
        let rate = a.freshness_rate.unwrap_or(20_000);
        let spec = GenerateSpec {
            events: rate * a.freshness_seconds,
            rate,
            ..Default::default()
        };
        let section = serde_json::json!({"quality_topic": &quality, "metrics_topic": &metrics,
            "budget_topic": &budget});
        let topics = [(&*input, 4), (&*quality, 3), (&*metrics, 3), (&*budget, 3)];
        let cfg = live_config(
            "ads",
            stamp,
            a.e2e_workers,
            &[&input, &quality],
            section,
            &spec,
            &topics,
        )?;
        let h = freshness(cfg, rate, a.freshness_seconds, stamp)?;
        report_freshness(
            &h,
            rate,
            "Kafka append → Kafka acks of budget-management/performance-metrics and Postgres COMMIT",
        );
    }
    Ok(())
}

/// Resident memory per open click: `n` clicks of distinct devices, spread over 16
/// campaigns and one hour, held by the attribution join (and the budget day) on one
/// worker; RSS after minus RSS before, over `n`, and the growth over the second half alone
/// (what one more click costs, without the per-campaign and per-second sums the first
/// clicks of an hour create).
fn open_clicks(n: u64) -> anyhow::Result<()> {
    let spec = GenerateSpec::default();
    let base = spec.start_ms;
    let campaigns: Vec<CampaignId> = generate::campaigns()
        .into_iter()
        .map(|c| CampaignId(c.id))
        .collect();
    let clicks = move |i: u64, _| {
        let c = (i % campaigns.len() as u64) as usize;
        vec![Timed {
            id: EventId::of(&format!("click-{i}")),
            ts: base + i * 3_600_000 / n.max(1),
            event: AdEvent::Click {
                slot: Slot {
                    campaign: campaigns[c].clone(),
                    placement: Placement::ALL[(i % 4) as usize],
                    category: generate::CATEGORIES[c % generate::CATEGORIES.len()].to_string(),
                },
                pair: DeviceAd::of(&format!("device_{i}"), &format!("ad_{c}")),
                price: 100,
                advertiser: AdvertiserId(format!("advertiser_{c}")),
            },
        }]
    };
    let next = move |last: u64, _| base + (last + 1) * 3_600_000 / n.max(1);
    let budgets = vec![generate::campaign_budgets(&spec)];
    let g = held_growth(
        Ads::new(AdsConfig::default()),
        budgets,
        base,
        n,
        clicks,
        next,
    )?;
    let (last, grown_last) = g.second_half;
    println!(
        "memory per open click: {:.0} B ({n} clicks held for attribution and their budget day, RSS +{} MB, built in {:.1} s); the last {last} clicks: {:.0} B each",
        g.total as f64 / n as f64,
        g.total / 1_000_000,
        g.secs,
        grown_last as f64 / last.max(1) as f64,
    );
    Ok(())
}
