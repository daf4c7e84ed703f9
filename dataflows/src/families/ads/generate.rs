//! Synthetic ad traffic (seed 002): devices see impressions of sixteen campaigns' ads on
//! four placements, click a few percent of them seconds later and convert some clicks
//! minutes to hours later (a few only after more than 24 h, a few without any click).
//! The scoring system sends quality-score updates, some effective later. Campaign budgets
//! are sized from the traffic itself, so some campaigns cross 90 %, 95 % or 100 %.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::RngExt;
use serde_json::json;

use super::{iso, AdsConfig, Placement};
use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::contract::dimension::DimRow;
use crate::contract::time::{HOUR, MINUTE, SECOND};
use crate::generate::{Base, Records, Traffic};

pub const CAMPAIGNS: usize = 16;
const ADS_PER_CAMPAIGN: usize = 3;
const DEVICES: u64 = 20_000;
const PRODUCTS: u64 = 200;
pub const CATEGORIES: [&str; 6] = [
    "전자제품/컴퓨터",
    "fashion",
    "beauty",
    "home",
    "sports",
    "books",
];
pub const ZONES: [&str; 4] = ["UTC", "Asia/Seoul", "America/New_York", "Europe/Berlin"];
/// Budget = spend × factor: 200 %, 93 %, 97 %, 66 %, 102 %, 33 % of budget spent.
const BUDGET_FACTORS: [f64; 6] = [0.5, 1.075, 1.03, 1.5, 0.98, 3.0];

pub struct Campaign {
    pub id: String,
    pub advertiser: String,
    pub category: &'static str,
    pub zone: &'static str,
    /// Click-through and conversion rates.
    ctr: f64,
    cvr: f64,
    weight: u32,
}

pub fn campaigns() -> Vec<Campaign> {
    (0..CAMPAIGNS)
        .map(|i| Campaign {
            id: format!("campaign_{}", 100 + i),
            advertiser: format!("advertiser_{}", 50 + i % 5),
            category: CATEGORIES[i % CATEGORIES.len()],
            zone: ZONES[i % ZONES.len()],
            ctr: 0.02 + 0.005 * (i % 7) as f64,
            cvr: 0.08 + 0.02 * (i % 4) as f64,
            weight: 1 + (i % 5) as u32,
        })
        .collect()
}

/// `campaign_budgets` rows for the traffic of `spec`: each campaign's daily budget is its
/// generated spend per day times a factor.
pub fn campaign_budgets(spec: &GenerateSpec) -> Vec<DimRow> {
    let mut spend: BTreeMap<(String, u32), i64> = BTreeMap::new();
    let config = AdsConfig::default();
    let list = campaigns();
    // sized from (at most) the first 500,000 records: `demo` generates without end
    let sample = GenerateSpec {
        events: spec.events.min(500_000),
        ..spec.clone()
    };
    for p in AdTraffic::new(&config, sample) {
        if let Ok(e) = super::decode::decode(&p.payload, &[]) {
            if let super::AdEvent::Click { slot, price, .. } = e.event {
                let c = list
                    .iter()
                    .find(|c| c.id == slot.campaign.0)
                    .expect("known");
                let zone = c.zone.parse().expect("zone");
                *spend
                    .entry((slot.campaign.0, super::local_day(e.ts, zone).0))
                    .or_default() += price;
            }
        }
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let most = spend
                .iter()
                .filter(|((id, _), _)| *id == c.id)
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0);
            let budget =
                ((most as f64 * BUDGET_FACTORS[i % BUDGET_FACTORS.len()]) as i64).max(1_000);
            vec![
                c.id.clone(),
                c.advertiser.clone(),
                budget.to_string(),
                c.zone.to_string(),
            ]
        })
        .collect()
}

/// An event scheduled for later: a click after its impression, a conversion after its click.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Later {
    ts: u64,
    serial: u64,
    kind: &'static str,
    campaign: usize,
    ad: usize,
    device: u64,
    placement: Placement,
}

pub struct AdTraffic {
    topic: String,
    quality_topic: String,
    base: Base,
    campaigns: Vec<Campaign>,
    total_weight: u32,
    serial: u64,
    clock_ms: f64,
    later: BinaryHeap<Reverse<Later>>,
}

impl AdTraffic {
    pub fn new(config: &AdsConfig, spec: GenerateSpec) -> Traffic<Self> {
        let campaigns = campaigns();
        Traffic(AdTraffic {
            topic: config.topic.clone(),
            quality_topic: config.quality_topic.clone(),
            total_weight: campaigns.iter().map(|c| c.weight).sum(),
            campaigns,
            serial: 0,
            clock_ms: spec.start_ms as f64,
            later: BinaryHeap::new(),
            base: Base::new(spec, 200),
        })
    }

    fn pick_campaign(&mut self) -> usize {
        let mut pick = self.base.rng.random_range(0..self.total_weight);
        self.campaigns
            .iter()
            .position(|c| {
                let hit = pick < c.weight;
                pick -= pick.min(c.weight);
                hit
            })
            .expect("weights cover the range")
    }

    fn schedule(&mut self, l: Later) {
        self.later.push(Reverse(l));
    }

    fn ad_event(&mut self, l: Later) -> Produced {
        let c = &self.campaigns[l.campaign];
        let mut ts = l.ts;
        if self.base.rng.random_bool(self.base.spec.disorder_share) {
            // mostly seconds late; now and then hours late, and some of those beyond the
            // 24-hour horizon (never within six hours of it, so which ones are too late
            // does not depend on how far one partition is read ahead of another)
            ts = if self.base.rng.random_bool(0.1) {
                let late = if self.base.rng.random_bool(0.8) {
                    self.base.rng.random_range(HOUR..12 * HOUR)
                } else {
                    self.base.rng.random_range(30 * HOUR..36 * HOUR)
                };
                ts.saturating_sub(late)
            } else {
                ts.saturating_sub(self.base.rng.random_range(1..60 * SECOND))
            };
        }
        let device = format!("device_{}", l.device);
        let mut v = json!({
            "event_type": l.kind,
            "timestamp": iso(ts),
            "device_id": device,
            "session_id": format!("session_{}_{}", l.device, ts / HOUR),
            "ad_id": format!("ad_{:03}", l.campaign * ADS_PER_CAMPAIGN + l.ad),
            "campaign_id": c.id,
            "advertiser_id": c.advertiser,
            "product_id": format!("product_{}", (l.campaign * 7 + l.ad) as u64 % PRODUCTS),
            "placement": l.placement.as_str(),
            "bid_price": 1500,
            "actual_price": null,
            "experiment_key": "mobile_ui",
            "experiment_var": if l.device.is_multiple_of(2) { "A" } else { "B" },
            "search_term": if l.placement == Placement::Search { json!("노트북") } else { json!(null) },
            "category": c.category,
            "revenue_amount": null,
            "order_id": null,
        });
        match l.kind {
            "CLICK" => {
                v["actual_price"] = json!(self.base.rng.random_range(1..=30) * 50);
                if self.base.rng.random_bool(c.cvr) {
                    // most convert within hours; one in twenty only after a day
                    let delay = if self.base.rng.random_bool(0.05) {
                        self.base.rng.random_range(24 * HOUR..30 * HOUR)
                    } else {
                        self.base.rng.random_range(MINUTE..6 * HOUR)
                    };
                    self.serial += 1;
                    self.schedule(Later {
                        ts: l.ts + delay,
                        serial: self.serial,
                        kind: "CONVERSION",
                        ..l
                    });
                }
            }
            "CONVERSION" => {
                v["revenue_amount"] = json!(self.base.rng.random_range(1..=200) * 1_000);
                v["order_id"] = json!(format!("order_{}_{}", self.base.spec.seed, l.serial));
            }
            _ => {}
        }
        Produced {
            topic: self.topic.clone(),
            key: Some(device),
            payload: serde_json::to_vec(&v).expect("JSON"),
            ts,
        }
    }

    /// A fresh impression now (and perhaps its click, scheduled), or a conversion without a click.
    fn fresh(&mut self, now: u64) -> Produced {
        let campaign = self.pick_campaign();
        let ad = self.base.rng.random_range(0..ADS_PER_CAMPAIGN);
        let device = self.base.rng.random_range(0..DEVICES);
        let placement = Placement::ALL[self.base.rng.random_range(0..4)];
        self.serial += 1;
        let l = Later {
            ts: now,
            serial: self.serial,
            kind: "IMPRESSION",
            campaign,
            ad,
            device,
            placement,
        };
        if self.base.rng.random_bool(0.002) {
            return self.ad_event(Later {
                kind: "CONVERSION",
                ..l
            });
        }
        if self.base.rng.random_bool(self.campaigns[campaign].ctr) {
            self.serial += 1;
            let delay = self.base.rng.random_range(SECOND..30 * SECOND);
            self.schedule(Later {
                ts: now + delay,
                serial: self.serial,
                kind: "CLICK",
                ..l
            });
        }
        self.ad_event(l)
    }

    fn quality(&mut self, now: u64) -> Produced {
        let product = self.base.rng.random_range(0..PRODUCTS);
        let score = self.base.rng.random_range(10..=100) as f64 / 10.0;
        let effective = if self.base.rng.random_bool(0.5) {
            now
        } else {
            now + self.base.rng.random_range(MINUTE..30 * MINUTE)
        };
        let v = json!({
            "timestamp": iso(now),
            "product_id": format!("product_{product}"),
            "category": CATEGORIES[product as usize % CATEGORIES.len()],
            "quality_score": score,
            "previous_score": (score - 0.5).max(0.0),
            "score_factors": {"click_rate": score, "conversion_rate": score, "user_satisfaction": score},
            "update_reason": if self.base.rng.random_bool(0.8) { "PERFORMANCE_IMPROVEMENT" } else { "MANUAL_ADJUSTMENT" },
            "effective_from": iso(effective),
        });
        Produced {
            topic: self.quality_topic.clone(),
            key: Some(format!("product_{product}")),
            payload: serde_json::to_vec(&v).expect("JSON"),
            ts: now,
        }
    }
}

impl Records for AdTraffic {
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
    fn advance(&mut self) {
        let mean_gap = self.base.spec.mean_gap_ms();
        self.clock_ms += -mean_gap * (1.0 - self.base.rng.random::<f64>()).ln();
    }
    fn valid(&mut self) -> Produced {
        let now = self.clock_ms as u64;
        if self.later.peek().is_some_and(|Reverse(l)| l.ts <= now) {
            let Reverse(l) = self.later.pop().expect("peeked");
            self.ad_event(l)
        } else if self.base.rng.random_bool(0.01) {
            self.quality(now)
        } else {
            self.fresh(now)
        }
    }
    fn malformed(&mut self) -> Produced {
        let ts = self.clock_ms as u64;
        let at = iso(ts);
        let common = format!(
            r#""timestamp":"{at}","device_id":"device_bad","ad_id":"ad_000","campaign_id":"campaign_100","advertiser_id":"advertiser_50","category":"books""#
        );
        let payload = match self.base.rng.random_range(0..6) {
            0 => r#"{"event_type": "CLICK", "timestamp": "#.to_string(),
            1 => format!(r#"{{{common},"event_type":"IMPRESSION","placement":null}}"#),
            2 => format!(
                r#"{{{common},"event_type":"CLICK","placement":"HOME","actual_price":-100}}"#
            ),
            3 => format!(r#"{{{common},"event_type":"IMPRESSION","placement":"SIDEBAR"}}"#),
            4 => format!(
                r#"{{"event_type":"IMPRESSION","timestamp":"{}","campaign_id":"c","advertiser_id":"a","placement":"HOME","category":"x"}}"#,
                ts / 1000
            ),
            _ => format!(r#"{{{common},"event_type":"VIEW","placement":"HOME"}}"#),
        };
        Produced::new(&self.topic, payload, ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::ads::{decode, AdEvent};

    #[test]
    fn traffic_decodes_clicks_convert_and_budgets_are_crossed() {
        let spec = GenerateSpec {
            events: 50_000,
            rate: 20,
            invalid_share: 0.01,
            ..GenerateSpec::default()
        };
        let config = AdsConfig::default();
        let (mut kinds, mut invalid) = (BTreeMap::<&str, u32>::new(), 0);
        // sized from (at most) the first 500,000 records: `demo` generates without end
        let sample = GenerateSpec {
            events: spec.events.min(500_000),
            ..spec.clone()
        };
        for p in AdTraffic::new(&config, sample) {
            let decoded = if p.topic == config.quality_topic {
                decode::decode_quality(&p.payload)
            } else {
                decode::decode(&p.payload, &[])
            };
            match decoded.map(|e| e.event) {
                Ok(AdEvent::Impression(_)) => *kinds.entry("impression").or_default() += 1,
                Ok(AdEvent::Click { .. }) => *kinds.entry("click").or_default() += 1,
                Ok(AdEvent::Conversion { .. }) => *kinds.entry("conversion").or_default() += 1,
                Ok(AdEvent::Quality(_)) => *kinds.entry("quality").or_default() += 1,
                Err(_) => invalid += 1,
            }
        }
        assert!(invalid > 300 && invalid < 800, "{invalid}");
        assert!(
            kinds["click"] > 800 && kinds["conversion"] > 50,
            "{kinds:?}"
        );
        assert!(kinds["quality"] > 300, "{kinds:?}");
        let budgets = campaign_budgets(&spec);
        assert_eq!(budgets.len(), CAMPAIGNS);
        assert!(budgets
            .iter()
            .all(|b| b[2].parse::<i64>().unwrap() >= 1_000));
    }
}
