//! Ads (CPC/RTB, seed 002): click→conversion attribution, closed 5-minute and 1-hour
//! performance windows with defense values, daily budgets with alerts and pauses, and
//! product quality scores (DESIGN §5.3).
//!
//! Every output is a function of the events and the `campaign_budgets` table, never of
//! arrival order or batch boundaries: a replay produces the same records with the same ids,
//! and a late event re-emits exactly the records it changes.

pub mod attribution;
mod budgets;
mod campaigns;
pub mod crossings;
pub mod decode;
mod events;
pub mod generate;
mod products;
mod split;
mod tables;
mod windows;

pub use budgets::*;
pub use campaigns::*;
pub use events::*;
pub use products::*;
pub use split::*;
pub use tables::*;
pub use windows::*;

use chrono::{DateTime, SecondsFormat, Utc};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::dataflow::{Dataflow, GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec};
use crate::contract::event::{Rejection, Timed};
use crate::contract::quality::{CheckName, ExpectSpec};
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window, DAY, HOUR, MINUTE, SECOND};

/// `[dataflows.ads]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdsConfig {
    /// `ad-events`: impressions, clicks and conversions.
    pub topic: String,
    /// `quality-score-updates`: product quality scores from the scoring system.
    pub quality_topic: String,
    /// Where closed windows' records go.
    pub metrics_topic: String,
    /// Where budget alerts, pauses and syncs go.
    pub budget_topic: String,
    /// The live table `campaign_budgets(campaign_id, advertiser_id, daily_budget, timezone)`.
    pub budgets_table: String,
    /// A conversion is attributed to the latest click of its device and ad this long before it.
    pub attribution_window_ms: u64,
    /// The tumbling CTR/CVR windows.
    pub metrics_window_ms: u64,
    /// The tumbling defense-value windows.
    pub defense_window_ms: u64,
    /// A window's record goes out once stream time passes its end plus this.
    pub allowed_lateness_ms: u64,
    /// Prior strength of the category rate in the defense values, in impressions.
    pub defense_prior_impressions: f64,
    /// The day of a campaign without a `campaign_budgets` row (or with a bad zone).
    pub default_timezone: String,
    /// Spend is synced to Postgres `budget_spend` on these boundaries of stream time.
    pub budget_sync_interval_ms: u64,
    /// An event this much older than stream time is too late to change anything.
    pub late_horizon_ms: u64,
    /// A product whose score was not updated for this long leaves the store.
    pub quality_retention_ms: u64,
    /// The fields that make an ad event's identity when it has no `event_id` (e.g.
    /// `["device_id", "ad_id", "event_type", "timestamp"]`, compared as parsed values, so
    /// a retry serialized differently is still a duplicate); empty: its bytes.
    pub identity_fields: Vec<String>,
}

impl Default for AdsConfig {
    fn default() -> Self {
        AdsConfig {
            topic: "ad-events".into(),
            quality_topic: "quality-score-updates".into(),
            metrics_topic: "performance-metrics".into(),
            budget_topic: "budget-management".into(),
            budgets_table: "campaign_budgets".into(),
            attribution_window_ms: DAY,
            metrics_window_ms: 5 * MINUTE,
            defense_window_ms: HOUR,
            allowed_lateness_ms: 5_000,
            defense_prior_impressions: 1_000.0,
            default_timezone: "UTC".into(),
            budget_sync_interval_ms: 10 * MINUTE,
            late_horizon_ms: DAY,
            quality_retention_ms: 30 * DAY,
            identity_fields: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ads {
    config: AdsConfig,
    /// `identity_fields`, parsed (unknown names are left out; `check` names them).
    identity: Vec<decode::IdField>,
}

/// `2024-01-15T10:30:00Z` (milliseconds only when there are some).
pub fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .expect("a time in chrono's range")
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl Ads {
    fn horizon_window(&self) -> Window {
        Window {
            length_ms: self.config.late_horizon_ms,
        }
    }
}

impl Dataflow for Ads {
    type Event = AdEvent;
    type Config = AdsConfig;
    const NAME: &'static str = "ads";

    fn new(config: AdsConfig) -> Self {
        let identity = config
            .identity_fields
            .iter()
            .filter_map(|f| decode::IdField::parse(f))
            .collect();
        Ads { config, identity }
    }
    fn config(&self) -> &AdsConfig {
        &self.config
    }
    fn check(&self) -> Result<(), String> {
        // events are summed per second (per minute for budgets) before their
        // contributions are computed: see `class_of`
        let c = &self.config;
        if let Some(f) = c
            .identity_fields
            .iter()
            .find(|f| decode::IdField::parse(f).is_none())
        {
            return Err(format!(
                "identity_fields names '{f}', not a field of an ad event: use some of {}",
                decode::IdField::names().collect::<Vec<_>>().join(", ")
            ));
        }
        for (key, value, unit, name) in [
            ("metrics_window_ms", c.metrics_window_ms, SECOND, "second"),
            ("defense_window_ms", c.defense_window_ms, SECOND, "second"),
            (
                "budget_sync_interval_ms",
                c.budget_sync_interval_ms,
                MINUTE,
                "minute",
            ),
            ("late_horizon_ms", c.late_horizon_ms, MINUTE, "minute"),
        ] {
            if value == 0 || !value.is_multiple_of(unit) {
                return Err(format!(
                    "{key} = {value} is not a whole number of {name}s: use a multiple of {unit}"
                ));
            }
        }
        Ok(())
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone(), self.config.quality_topic.clone()]
    }
    /// Its ranges, checked on every change (`[quality]`, issue #22).
    fn expectations(&self) -> Vec<ExpectSpec> {
        vec![ExpectSpec::new(
            "window_ctr in [0, 1]",
            "feature:campaign.window_ctr",
            CheckName::Between,
        )
        .bounds(Some(0.0), Some(1.0))]
    }
    fn tables(&self) -> Vec<TableSpec> {
        self.table_specs()
    }
    fn horizon(&self) -> Window {
        self.horizon_window()
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        vec![DimensionSpec {
            table: self.config.budgets_table.clone(),
            columns: ["campaign_id", "advertiser_id", "daily_budget", "timezone"]
                .map(String::from)
                .into(),
            create: Some(format!(
                "CREATE TABLE IF NOT EXISTS {} (campaign_id text PRIMARY KEY, advertiser_id text NOT NULL, daily_budget bigint NOT NULL, timezone text NOT NULL DEFAULT 'UTC')",
                self.config.budgets_table
            )),
        }]
    }
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<AdEvent>, DecodeError> {
        if record.topic == self.config.quality_topic {
            decode::decode_quality(record.payload)
        } else {
            decode::decode(record.payload, &self.identity)
        }
    }
    fn keys(&self, event: &AdEvent, visit: &mut dyn FnMut(&'static str, &str)) {
        match event {
            AdEvent::Impression(slot)
            | AdEvent::Click { slot, .. }
            | AdEvent::Conversion { slot, .. } => {
                visit("campaign_id", &slot.campaign.0);
                visit("category", &slot.category);
            }
            AdEvent::Quality(q) => {
                visit("product_id", &q.product.0);
                visit("category", &q.category);
            }
        }
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<AdEvent>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        _rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let parts = self.split(events);
        let attribution = self.attribution(parts.clicks, parts.conversions, state);
        let windows = self.performance_windows(parts.tallies.clone(), attribution.clone(), state);
        let campaigns = self.campaigns(parts.tallies.clone(), attribution, state);
        let budgets = self.budgets(
            parts.tallies,
            parts.paid,
            parts.advertised,
            dimensions[0].clone(),
            state,
        );
        let products = self.products(parts.quality, state);
        windows.concat(campaigns).concat(budgets).concat(products)
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::AdTraffic::new(&self.config, spec.clone()))
    }
    fn dimension_rows(&self, spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        vec![(
            self.dimensions().remove(0),
            generate::campaign_budgets(spec),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::time::ceil_to;

    #[test]
    fn local_days_follow_the_zone() {
        let seoul: chrono_tz::Tz = "Asia/Seoul".parse().unwrap();
        // 2026-01-01T15:00:00Z is 2026-01-02 00:00 in Seoul
        let ts = 1_767_279_600_000;
        assert_eq!(local_day(ts - 1, seoul).0, 20260101);
        assert_eq!(local_day(ts - 1, seoul).1, ts);
        assert_eq!(local_day(ts, seoul).0, 20260102);
        assert_eq!(local_day(ts, chrono_tz::UTC).0, 20260101);
        // a 25-hour day: New York, 2026-11-01
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
        let start = 1_793_505_600_000; // 2026-11-01T04:00:00Z = midnight EDT
        let (date, end) = local_day(start, ny);
        assert_eq!(date, 20261101);
        assert_eq!(end - start, 25 * HOUR);
    }

    #[test]
    fn window_lengths_must_be_whole_seconds() {
        let bad = serde_json::json!({"metrics_window_ms": 1_500});
        let err = crate::families::family("ads", Some(bad)).err().unwrap();
        assert!(err.contains("metrics_window_ms = 1500") && err.contains("multiple of 1000"));
        let bad = serde_json::json!({"budget_sync_interval_ms": 90_000});
        let err = crate::families::family("ads", Some(bad)).err().unwrap();
        assert!(err.contains("budget_sync_interval_ms"), "{err}");
        let good =
            serde_json::json!({"metrics_window_ms": 60_000, "budget_sync_interval_ms": 120_000});
        assert!(crate::families::family("ads", Some(good)).is_ok());
    }

    #[test]
    fn identity_fields_must_be_fields_of_an_ad_event() {
        let bad = serde_json::json!({"identity_fields": ["device_id", "colour"]});
        let err = crate::families::family("ads", Some(bad)).err().unwrap();
        assert!(
            err.contains("'colour'") && err.contains("device_id, ad_id"),
            "{err}"
        );
        let good = serde_json::json!({"identity_fields": ["device_id", "ad_id", "timestamp"]});
        assert!(crate::families::family("ads", Some(good)).is_ok());
    }

    #[test]
    fn a_conversion_stays_while_any_of_its_windows_can_change() {
        // a 7-minute window that starts before an hour boundary ends after it
        let ads = Ads::new(AdsConfig {
            metrics_window_ms: 7 * MINUTE,
            ..AdsConfig::default()
        });
        let hour = 1_767_225_600_000 + 5 * HOUR;
        let ts = hour - 30 * SECOND;
        let start = ts - ts % (7 * MINUTE);
        assert!(start + 7 * MINUTE > hour);
        assert!(ads.conversion_kept(ts) >= ads.window_retires(start, 7 * MINUTE));
        assert!(reaches(i64::MAX, i64::MAX, 100) && !reaches(i64::MAX - 1, i64::MAX, 100));
    }

    #[test]
    fn a_class_stands_for_every_instant_in_it() {
        assert_eq!(class_of(5_000, SECOND), 5_000);
        assert_eq!(class_of(5_001, SECOND), 5_001);
        assert_eq!(class_of(5_999, SECOND), 5_001);
        // what the contributions use agrees over the class
        let ads = Ads::new(AdsConfig::default());
        for ts in [
            1_767_225_600_000u64,
            1_767_225_659_999,
            1_767_225_600_001,
            1_767_225_899_999,
        ] {
            let rep = class_of(ts, SECOND);
            for length in ads.windows() {
                assert_eq!(ts - ts % length, rep - rep % length);
            }
            assert_eq!(
                Rolling::H1.window().expiry(ts),
                Rolling::H1.window().expiry(rep)
            );
            assert_eq!(
                Rolling::H24.window().expiry(ts),
                Rolling::H24.window().expiry(rep)
            );
            let m = class_of(rep, MINUTE);
            assert_eq!(ts / MINUTE, m / MINUTE);
            assert_eq!(ads.spend_kept(ts), ads.spend_kept(m));
            let sync = ads.config.budget_sync_interval_ms;
            assert_eq!(ceil_to(ts + 1, sync), ceil_to(m + 1, sync));
        }
    }

    #[test]
    fn defense_values_shrink_toward_the_category() {
        // no traffic of its own: the category's rates
        let (ctr, cvr) = defense([0, 0, 0], [10_000, 200, 20], 1000.0);
        assert!((ctr - 0.02).abs() < 1e-12 && (cvr - 0.1).abs() < 1e-12);
        // 1000 impressions with 50 clicks and 10 conversions, against 2 % and 10 %
        let (ctr, cvr) = defense([1000, 50, 10], [10_000, 200, 20], 1000.0);
        assert!((ctr - 70.0 / 2000.0).abs() < 1e-12);
        assert!((cvr - 12.0 / 70.0).abs() < 1e-12);
        assert_eq!(iso(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(iso(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
    }
}
