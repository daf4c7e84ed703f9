//! Ads (CPC/RTB, seed 002): click→conversion attribution, closed 5-minute and 1-hour
//! performance windows with defense values, daily budgets with alerts and pauses, and
//! product quality scores (DESIGN §5.3).
//!
//! Every output is a function of the events and the `campaign_budgets` table, never of
//! arrival order or batch boundaries: a replay produces the same records with the same ids,
//! and a late event re-emits exactly the records it changes.

pub mod attribution;
pub mod crossings;
pub mod decode;
pub mod generate;

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use differential_dataflow::{AsCollection, VecCollection};
use ordered_float::OrderedFloat;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Map, Partition};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Exchange;
use timely::dataflow::Stream;

use attribution::OpenClick;
use crossings::Paid;

use crate::dimension::{DimRow, DimensionSpec};
use crate::family::{Dataflow, GenerateSpec, Produced};
use crate::features::{float, int, text, FeatureRow, FieldSpec, SinkKind, TableSpec, Value};
use crate::ingest::{EventId, Rejection, Timed};
use crate::record::{DecodeError, RecordRef};
use crate::state::State;
use crate::ticks::PerTick;
use crate::time::{ceil_to, Tick, Window, DAY, HOUR, MINUTE, SECOND};
use crate::windowed::{derived_intervals, intervals, Interval};

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
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ads {
    config: AdsConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductId(pub String);

/// Where on the site an ad was shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Placement {
    Home,
    Category,
    ProductDetail,
    Search,
}

impl Placement {
    pub const ALL: [Placement; 4] = [
        Placement::Home,
        Placement::Category,
        Placement::ProductDetail,
        Placement::Search,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Home => "HOME",
            Placement::Category => "CATEGORY",
            Placement::ProductDetail => "PRODUCT_DETAIL",
            Placement::Search => "SEARCH",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What the performance windows group by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub campaign: CampaignId,
    pub placement: Placement,
    pub category: String,
}

/// A device's view of one ad: the attribution join key, hashed so open clicks stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceAd {
    pub device: u64,
    pub ad: u64,
}

impl DeviceAd {
    pub fn of(device: &str, ad: &str) -> Self {
        DeviceAd {
            device: xxhash_rust::xxh3::xxh3_64(device.as_bytes()),
            ad: xxhash_rust::xxh3::xxh3_64(ad.as_bytes()),
        }
    }
}

/// A new quality score for a product, in force from `effective_from`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QualityUpdate {
    pub product: ProductId,
    pub effective_from: u64,
    pub score: OrderedFloat<f64>,
    /// As the scoring system reported it.
    pub previous: Option<OrderedFloat<f64>>,
    pub category: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AdEvent {
    Impression(Slot),
    Click {
        slot: Slot,
        pair: DeviceAd,
        price: i64,
    },
    Conversion {
        slot: Slot,
        pair: DeviceAd,
        revenue: i64,
    },
    Quality(QualityUpdate),
}

/// A click as attribution sees it: of several, the latest by `(ts, id)` wins (`id` is the
/// high half of its [`EventId`], which orders like the whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClickRef {
    pub ts: u64,
    pub id: u64,
    pub placement: Placement,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConversionRef {
    pub ts: u64,
    pub id: EventId,
    pub campaign: CampaignId,
    pub category: String,
    pub revenue: i64,
}

/// A conversion and the click it is attributed to, if any.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attribution {
    pub conversion: ConversionRef,
    pub click: Option<ClickRef>,
}

/// What a window counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Impression,
    Click,
    Conversion,
}

/// A tumbling window of one category: the defense values need the category's totals, so
/// all its campaigns' counts meet in one place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub category: String,
    pub start: u64,
    pub length: u64,
}

/// What one count in a window is: whose, where, and of what.
pub type Counted = (CampaignId, Placement, Kind);

/// The sliding windows of the campaign view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rolling {
    H1,
    H24,
}

impl Rolling {
    fn window(self) -> Window {
        match self {
            Rolling::H1 => Window { length_ms: HOUR },
            Rolling::H24 => Window { length_ms: DAY },
        }
    }
}

/// One sum of the campaign view (the weight is the count, or the amount for money).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CampaignMeasure {
    /// `Closed` counts are those of closed metrics windows, for the latest one.
    Closed {
        start: u64,
        kind: Kind,
    },
    Impressions(Rolling),
    Clicks(Rolling),
    Conversions(Rolling),
    Spend(Rolling),
    Revenue(Rolling),
    Unattributed,
}

/// What the events add up to, before their contributions to windows, the campaign view and
/// the budgets are computed: an impression or click counts, a click's price is spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Impressions,
    Clicks,
    Spend,
}

/// Impressions, clicks or spend of a slot at one class of event times (see [`class_of`]);
/// the update's weight is the count or the amount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tally {
    pub slot: Slot,
    pub measure: Measure,
    pub at: u64,
}

/// The representative of `ts`'s class in steps of `unit`: `ts` itself on a step, else the
/// step's first millisecond after it. Window starts (lengths are whole steps), expiries
/// rounded up to a step or coarser, local days and sync boundaries are the same for every
/// instant of a class, so events are summed per class before their contributions are
/// computed: a tick's thousands of impressions become a few hundred tallies.
pub fn class_of(ts: u64, unit: u64) -> u64 {
    if ts.is_multiple_of(unit) {
        ts
    } else {
        ts - ts % unit + 1
    }
}

/// What one pass over the events hands each consumer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Part {
    Tally(Tally),
    Click(OpenClick),
    Paid(Paid),
    Conversion(DeviceAd, ConversionRef),
    Quality(Timed<QualityUpdate>),
}

/// One tick's events, summed where they can be.
#[derive(Default)]
struct Sums {
    tallies: FxHashMap<Tally, isize>,
    paid: FxHashMap<Paid, isize>,
    passed: Vec<(Part, isize)>,
}

impl Sums {
    fn add(&mut self, e: Timed<AdEvent>, r: isize) {
        let at = class_of(e.ts, SECOND);
        let mut tally = |slot, measure, n| {
            *self.tallies.entry(Tally { slot, measure, at }).or_default() += n;
        };
        match e.event {
            AdEvent::Impression(slot) => tally(slot, Measure::Impressions, r),
            AdEvent::Click { slot, pair, price } => {
                let click = ClickRef {
                    ts: e.ts,
                    id: (e.id.0 >> 64) as u64,
                    placement: slot.placement,
                };
                let paid = Paid {
                    campaign: CampaignKey::of(&slot.campaign),
                    ts: e.ts,
                };
                tally(slot.clone(), Measure::Spend, r * price as isize);
                tally(slot, Measure::Clicks, r);
                *self.paid.entry(paid).or_default() += r * price as isize;
                self.passed
                    .push((Part::Click(OpenClick::new(pair, click)), r));
            }
            AdEvent::Conversion {
                slot,
                pair,
                revenue,
            } => {
                let conversion = ConversionRef {
                    ts: e.ts,
                    id: e.id,
                    campaign: slot.campaign,
                    category: slot.category,
                    revenue,
                };
                self.passed.push((Part::Conversion(pair, conversion), r));
            }
            AdEvent::Quality(q) => {
                let update = Timed {
                    id: e.id,
                    ts: e.ts,
                    event: q,
                };
                self.passed.push((Part::Quality(update), r));
            }
        }
    }

    fn drain(self) -> impl Iterator<Item = (Part, isize)> {
        let tallies = self.tallies.into_iter().map(|(t, n)| (Part::Tally(t), n));
        let paid = self.paid.into_iter().map(|(p, n)| (Part::Paid(p), n));
        tallies
            .chain(paid)
            .filter(|(_, n)| *n != 0)
            .chain(self.passed)
    }
}

/// The events split by consumer.
struct Parts<'s> {
    tallies: VecCollection<'s, Tick, Tally>,
    clicks: Stream<'s, Tick, Vec<(OpenClick, Tick, isize)>>,
    paid: Stream<'s, Tick, Vec<(Paid, Tick, isize)>>,
    conversions: VecCollection<'s, Tick, (DeviceAd, ConversionRef)>,
    quality: VecCollection<'s, Tick, Timed<QualityUpdate>>,
}

/// A campaign id hashed, so the clicks the budget path holds carry no strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignKey(pub u64);

impl CampaignKey {
    pub fn of(campaign: &CampaignId) -> Self {
        CampaignKey(xxhash_rust::xxh3::xxh3_64(campaign.0.as_bytes()))
    }
}

/// A campaign's day in the campaign's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignDay {
    pub campaign: CampaignKey,
    /// `yyyymmdd`.
    pub date: u32,
}

/// A `campaign_budgets` row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Budget {
    pub advertiser: String,
    pub daily: i64,
    pub timezone: String,
}

/// What a campaign-day's budget state is computed from. Clicks come summed per minute,
/// so the day's scan for threshold crossings is over its minutes, not over every click of
/// the day at each click; the crossing instant is then found in its minute
/// ([`crossings`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BudgetPiece {
    /// The campaign's name and budget, if it has one.
    Campaign {
        name: CampaignId,
        budget: Option<Budget>,
    },
    /// Spend in a minute (`ts / MINUTE`; the weight is the amount). Sorts by minute.
    SpentIn(u64),
    /// Clicks in a minute (the weight is the count).
    ClicksIn(u64),
    /// Spend synced at a boundary (the weight is the amount).
    Synced,
    /// A sync boundary at which a click of the day was synced.
    SyncedAt(u64),
}

/// A minute of a campaign-day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DayMinute {
    pub day: CampaignDay,
    pub minute: u64,
}

/// A budget threshold crossed in a minute: what the alert needs besides the crossing click.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Crossing {
    /// Index into [`THRESHOLDS`].
    pub threshold: usize,
    /// The day's spend before the minute.
    pub spent_before: i64,
    pub daily: i64,
    pub name: CampaignId,
    pub advertiser: String,
}

/// The day `reduce`'s output: rows, and the minutes where thresholds were crossed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum DayOutput {
    Row(FeatureRow),
    Crossed(DayMinute, Crossing),
}

/// A quality update as the products `reduce` sorts it: by effective time, then event time,
/// then identity — the last one is in force.
pub type Update = (u64, u64, EventId, QualityUpdate);

/// Budget thresholds: percent, `alert_type`, `event_type`, `action`.
pub const THRESHOLDS: [(i64, &str, &str, &str); 3] = [
    (90, "90_PERCENT", "BUDGET_ALERT", "NOTIFY"),
    (95, "95_PERCENT", "BUDGET_ALERT", "NOTIFY"),
    (100, "EXHAUSTED", "CAMPAIGN_PAUSE", "PAUSE_CAMPAIGN"),
];

/// Table indices, in `tables()` order.
pub mod table {
    pub const CAMPAIGN: u8 = 0;
    pub const PERFORMANCE: u8 = 1;
    pub const PERFORMANCE_HISTORY: u8 = 2;
    pub const BUDGET: u8 = 3;
    pub const BUDGET_EVENTS: u8 = 4;
    pub const BUDGET_SPEND: u8 = 5;
    pub const PRODUCT: u8 = 6;
}

/// `2024-01-15T10:30:00Z` (milliseconds only when there are some).
pub fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .expect("a time in chrono's range")
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The date (`yyyymmdd`) of `ts` in `tz` and when that day ends (epoch ms).
pub fn local_day(ts: u64, tz: chrono_tz::Tz) -> (u32, u64) {
    let local = tz
        .timestamp_millis_opt(ts as i64)
        .single()
        .expect("a UTC instant has one local time");
    let date = local.date_naive();
    let next: NaiveDate = date.succ_opt().expect("a next day");
    let midnight = next.and_hms_opt(0, 0, 0).expect("midnight");
    // a zone whose clocks skip midnight starts the day at the first minute that exists
    let end = (0..=24 * 60)
        .find_map(|m| {
            tz.from_local_datetime(&(midnight + chrono::Duration::minutes(m)))
                .earliest()
        })
        .expect("some minute of the day exists");
    use chrono::Datelike;
    (
        date.year() as u32 * 10_000 + date.month() * 100 + date.day(),
        end.timestamp_millis() as u64,
    )
}

/// A `budget_events` row of a campaign-day.
fn budget_event(name: &CampaignId, date: &str, kind: &str, values: Vec<Value>) -> FeatureRow {
    FeatureRow {
        table: table::BUDGET_EVENTS,
        key: vec![name.0.clone(), date.to_string(), kind.to_string()],
        values,
    }
}

/// Whether `spent` is at least `percent` % of `daily` (in `i128`: budgets and prices come
/// from outside and may be huge).
pub fn reaches(spent: i64, daily: i64, percent: i64) -> bool {
    spent as i128 * 100 >= daily as i128 * percent as i128
}

/// `hits / trials`, 0 without trials.
pub fn rate(hits: i64, trials: i64) -> f64 {
    if trials > 0 {
        hits as f64 / trials as f64
    } else {
        0.0
    }
}

/// Defense values (DESIGN §5.3): the campaign's rates smoothed toward its category's with a
/// prior of `m` impressions behaving like the category — `m·ctr_c` clicks and
/// `m·ctr_c·cvr_c` conversions.
pub fn defense(own: [i64; 3], category: [i64; 3], m: f64) -> (f64, f64) {
    let [impressions, clicks, conversions] = own;
    let ctr_c = rate(category[1], category[0]);
    let cvr_c = rate(category[2], category[1]);
    let prior_clicks = m * ctr_c;
    let ctr = (clicks as f64 + prior_clicks) / (impressions as f64 + m);
    let denominator = clicks as f64 + prior_clicks;
    let cvr = if denominator > 0.0 {
        (conversions as f64 + prior_clicks * cvr_c) / denominator
    } else {
        0.0
    };
    (ctr, cvr)
}

impl Ads {
    fn horizon_window(&self) -> Window {
        Window {
            length_ms: self.config.late_horizon_ms,
        }
    }
    /// When a window's record may first show: its end plus the allowed lateness.
    fn closes(&self, start: u64, length: u64) -> Tick {
        start + length + self.config.allowed_lateness_ms
    }
    /// A window leaves the dataflow once no event that is not too late can change it.
    fn window_retires(&self, start: u64, length: u64) -> Tick {
        self.horizon_window().expiry(start + length)
    }
    /// A conversion is kept while a window or rolling sum it counts in may still change.
    fn conversion_kept(&self, ts: u64) -> Tick {
        // each window's, not only the longest's: a 7-minute window can end after the hour
        self.windows()
            .into_iter()
            .map(|length| self.window_retires(ts - ts % length, length))
            .fold(Rolling::H24.window().expiry(ts), Tick::max)
    }
    /// A click is kept for attribution while a conversion it may win is kept.
    fn click_kept(&self, ts: u64) -> Tick {
        self.conversion_kept(ts + self.config.attribution_window_ms)
    }
    /// A click is kept for its budget day while the day's state is: the day ends at most 26 h
    /// after it (a DST day; Antarctica/Troll moves its clocks by two hours), and the day's
    /// rows live one more day.
    fn spend_kept(&self, ts: u64) -> Tick {
        ceil_to(ts + 26 * HOUR + self.budget_day_retention(), MINUTE)
    }
    fn budget_day_retention(&self) -> u64 {
        self.config.late_horizon_ms.max(DAY)
    }
    fn default_zone(&self) -> chrono_tz::Tz {
        self.config
            .default_timezone
            .parse()
            .unwrap_or(chrono_tz::UTC)
    }
    fn windows(&self) -> [u64; 2] {
        [self.config.metrics_window_ms, self.config.defense_window_ms]
    }

    /// A window contribution of `slot` for an event at `ts`: one per window length.
    fn window_counts(
        &self,
        slot: &Slot,
        kind: Kind,
        ts: u64,
    ) -> impl Iterator<Item = Interval<(WindowKey, Counted)>> {
        let this = self.clone();
        let slot = slot.clone();
        self.windows().into_iter().map(move |length| {
            let start = ts - ts % length;
            (
                (
                    WindowKey {
                        category: slot.category.clone(),
                        start,
                        length,
                    },
                    (slot.campaign.clone(), slot.placement, kind),
                ),
                1,
                this.closes(start, length),
                Some(this.window_retires(start, length)),
            )
        })
    }

    /// What one count adds to its campaign's view: both rolling windows and the closed
    /// metrics window (shown for an hour after it closes).
    fn campaign_counts(
        &self,
        campaign: &CampaignId,
        kind: Kind,
        ts: u64,
        amount: Option<i64>,
    ) -> Vec<Interval<(CampaignId, CampaignMeasure)>> {
        let length = self.config.metrics_window_ms;
        let start = ts - ts % length;
        let closes = self.closes(start, length);
        let mut out = vec![(
            (campaign.clone(), CampaignMeasure::Closed { start, kind }),
            1,
            closes,
            Some(closes + HOUR),
        )];
        for rolling in [Rolling::H1, Rolling::H24] {
            let until = Some(rolling.window().expiry(ts));
            let count = match kind {
                Kind::Impression => CampaignMeasure::Impressions(rolling),
                Kind::Click => CampaignMeasure::Clicks(rolling),
                Kind::Conversion => CampaignMeasure::Conversions(rolling),
            };
            out.push(((campaign.clone(), count), 1, 0, until));
        }
        if let Some(amount) = amount.filter(|a| *a != 0) {
            out.extend(self.campaign_money(campaign, kind, ts, amount));
        }
        out
    }

    /// What an amount adds to its campaign's rolling spend (clicks) or revenue.
    fn campaign_money(
        &self,
        campaign: &CampaignId,
        kind: Kind,
        ts: u64,
        amount: i64,
    ) -> impl Iterator<Item = Interval<(CampaignId, CampaignMeasure)>> {
        let campaign = campaign.clone();
        [Rolling::H1, Rolling::H24].into_iter().map(move |rolling| {
            let money = match kind {
                Kind::Click => CampaignMeasure::Spend(rolling),
                _ => CampaignMeasure::Revenue(rolling),
            };
            let until = Some(rolling.window().expiry(ts));
            ((campaign.clone(), money), amount as isize, 0, until)
        })
    }

    /// The record of one window of one campaign and placement.
    fn performance_values(&self, key: &WindowKey, own: [i64; 3], category: [i64; 3]) -> Vec<Value> {
        let [impressions, clicks, conversions] = own;
        let (defense_ctr, defense_cvr) =
            defense(own, category, self.config.defense_prior_impressions);
        let end = iso(key.start + key.length);
        let sufficient = impressions as f64 >= self.config.defense_prior_impressions;
        vec![
            Value::Text(end.clone()),
            Value::Text(end),
            Value::Int(impressions),
            Value::Int(clicks),
            Value::Int(conversions),
            Value::float(rate(clicks, impressions)),
            Value::float(rate(conversions, clicks)),
            Value::float(defense_ctr),
            Value::float(defense_cvr),
            Value::Text(
                if sufficient {
                    "SUFFICIENT"
                } else {
                    "INSUFFICIENT"
                }
                .into(),
            ),
        ]
    }

    fn metric_type(&self, length: u64) -> &'static str {
        if length == self.config.defense_window_ms {
            "DEFENSE_VALUE"
        } else {
            "CTR"
        }
    }

    /// The window records of one category's window: one per campaign and placement.
    fn window_rows(&self, key: &WindowKey, counts: &[(&Counted, isize)]) -> Vec<FeatureRow> {
        let idx = |k: Kind| k as usize;
        let mut category = [0i64; 3];
        let mut by_slot: Vec<((&CampaignId, Placement), [i64; 3])> = Vec::new();
        for ((campaign, placement, kind), n) in counts {
            category[idx(*kind)] += *n as i64;
            match by_slot.last_mut() {
                Some((s, c)) if *s == (campaign, *placement) => c[idx(*kind)] += *n as i64,
                _ => {
                    let mut c = [0; 3];
                    c[idx(*kind)] = *n as i64;
                    by_slot.push(((campaign, *placement), c));
                }
            }
        }
        let mut rows = Vec::with_capacity(2 * by_slot.len());
        for ((campaign, placement), own) in by_slot {
            let key_parts = vec![
                campaign.0.clone(),
                placement.as_str().to_string(),
                key.category.clone(),
                iso(key.start),
                self.metric_type(key.length).to_string(),
            ];
            let values = self.performance_values(key, own, category);
            for table in [table::PERFORMANCE, table::PERFORMANCE_HISTORY] {
                rows.push(FeatureRow {
                    table,
                    key: key_parts.clone(),
                    values: values.clone(),
                });
            }
        }
        rows
    }

    /// A campaign's view: the latest closed window and the rolling sums.
    fn campaign_row(
        &self,
        campaign: &CampaignId,
        measures: &[(&CampaignMeasure, isize)],
    ) -> FeatureRow {
        let mut latest: Option<u64> = None;
        let mut closed = [0i64; 3];
        let mut sums = [[0i64; 5]; 2]; // per rolling window: impressions, clicks, conversions, spend, revenue
        let mut unattributed = 0;
        for (m, n) in measures {
            let n = *n as i64;
            match m {
                CampaignMeasure::Closed { start, kind } => {
                    if latest != Some(*start) {
                        // `Closed` measures sort by start: a later one replaces the counts
                        latest = Some(*start);
                        closed = [0; 3];
                    }
                    closed[*kind as usize] += n;
                }
                CampaignMeasure::Impressions(r) => sums[*r as usize][0] += n,
                CampaignMeasure::Clicks(r) => sums[*r as usize][1] += n,
                CampaignMeasure::Conversions(r) => sums[*r as usize][2] += n,
                CampaignMeasure::Spend(r) => sums[*r as usize][3] += n,
                CampaignMeasure::Revenue(r) => sums[*r as usize][4] += n,
                CampaignMeasure::Unattributed => unattributed += n,
            }
        }
        let mut values = vec![
            Value::Text(latest.map(iso).unwrap_or_default()),
            Value::Int(closed[0]),
            Value::Int(closed[1]),
            Value::Int(closed[2]),
            Value::float(rate(closed[1], closed[0])),
            Value::float(rate(closed[2], closed[1])),
        ];
        for s in sums {
            values.extend([
                Value::Int(s[0]),
                Value::Int(s[1]),
                Value::Int(s[2]),
                Value::float(rate(s[1], s[0])),
                Value::float(rate(s[2], s[1])),
                Value::Int(s[3]),
                Value::Int(s[4]),
            ]);
        }
        values.push(Value::Int(unattributed));
        FeatureRow {
            table: table::CAMPAIGN,
            key: vec![campaign.0.clone()],
            values,
        }
    }

    /// A campaign-day's budget hash and its last sync, and the minutes where its
    /// thresholds were crossed.
    fn budget_rows(&self, day: &CampaignDay, pieces: &[(&BudgetPiece, isize)]) -> Vec<DayOutput> {
        let mut name: Option<&CampaignId> = None;
        let mut budget: Option<&Budget> = None;
        let (mut spent, mut clicks, mut synced, mut synced_at) = (0i64, 0i64, 0i64, None);
        let mut crossed: Vec<(DayMinute, usize, i64)> = Vec::new();
        for (piece, n) in pieces {
            let n = *n as i64;
            match piece {
                BudgetPiece::Campaign { name: n, budget: b } => {
                    name = Some(n);
                    budget = b.as_ref();
                }
                BudgetPiece::SpentIn(minute) => {
                    let before = spent;
                    spent = spent.saturating_add(n);
                    let Some(b) = budget.filter(|b| b.daily > 0) else {
                        continue;
                    };
                    while crossed.len() < THRESHOLDS.len()
                        && reaches(spent, b.daily, THRESHOLDS[crossed.len()].0)
                    {
                        let at = DayMinute {
                            day: *day,
                            minute: *minute,
                        };
                        crossed.push((at, crossed.len(), before));
                    }
                }
                BudgetPiece::ClicksIn(_) => clicks += n,
                BudgetPiece::Synced => synced += n,
                BudgetPiece::SyncedAt(at) => synced_at = Some(*at),
            }
        }
        let Some(name) = name else {
            // the campaign's name comes with its first click
            return Vec::new();
        };
        let (advertiser, daily) = budget.map_or(("", 0), |b| (b.advertiser.as_str(), b.daily));
        let date = day.date.to_string();
        let key = vec![name.0.clone(), date.clone()];
        let mut out: Vec<DayOutput> = crossed
            .into_iter()
            .map(|(at, threshold, spent_before)| {
                DayOutput::Crossed(
                    at,
                    Crossing {
                        threshold,
                        spent_before,
                        daily,
                        name: name.clone(),
                        advertiser: advertiser.to_string(),
                    },
                )
            })
            .collect();
        if clicks > 0 {
            let exhausted = daily > 0 && spent >= daily;
            out.push(DayOutput::Row(FeatureRow {
                table: table::BUDGET,
                key: key.clone(),
                values: vec![
                    Value::Text(advertiser.to_string()),
                    Value::Int(daily),
                    Value::Int(spent),
                    Value::Int((daily - spent).max(0)),
                    Value::float(rate(spent, daily)),
                    Value::Int(clicks),
                    Value::Int(exhausted as i64),
                ],
            }));
        }
        if let Some(at) = synced_at {
            out.push(DayOutput::Row(budget_event(
                name,
                &date,
                "SYNC",
                vec![
                    Value::Text("BUDGET_SYNC".into()),
                    Value::Text(iso(at)),
                    Value::Text(advertiser.to_string()),
                    Value::Int(daily),
                    Value::Int(synced),
                    Value::Int((daily - synced).max(0)),
                    Value::Text(String::new()),
                    Value::Text("STREAM".into()),
                    Value::Text("SYNC".into()),
                ],
            )));
            out.push(DayOutput::Row(FeatureRow {
                table: table::BUDGET_SPEND,
                key,
                values: vec![
                    Value::Text(advertiser.to_string()),
                    Value::Int(daily),
                    Value::Int(synced),
                    Value::Text(iso(at)),
                    Value::Int(at as i64),
                ],
            }));
        }
        out
    }

    /// The alert of a threshold crossed at `ts`, when the day's spend became `spent`.
    fn alert_row(&self, at: &DayMinute, c: &Crossing, ts: u64, spent: i64) -> FeatureRow {
        let (_, alert, event_type, action) = THRESHOLDS[c.threshold];
        budget_event(
            &c.name,
            &at.day.date.to_string(),
            alert,
            vec![
                Value::Text(event_type.into()),
                Value::Text(iso(ts)),
                Value::Text(c.advertiser.clone()),
                Value::Int(c.daily),
                Value::Int(spent),
                Value::Int((c.daily - spent).max(0)),
                Value::Text(alert.into()),
                Value::Text("STREAM".into()),
                Value::Text(action.into()),
            ],
        )
    }

    /// A product's score in force: the latest update whose `effective_from` has come.
    fn product_row(&self, product: &ProductId, updates: &[(&Update, isize)]) -> Option<FeatureRow> {
        let n = updates.len();
        let ((_, ts, _, last), _) = updates.last()?;
        let previous = last
            .previous
            .map(|p| p.0)
            .or_else(|| (n > 1).then(|| updates[n - 2].0 .3.score.0))
            .unwrap_or(last.score.0);
        Some(FeatureRow {
            table: table::PRODUCT,
            key: vec![product.0.clone()],
            values: vec![
                Value::float(last.score.0),
                Value::float(previous),
                Value::Text(last.category.clone()),
                Value::Text(last.reason.clone()),
                Value::Text(iso(last.effective_from)),
                Value::Int(last.effective_from as i64),
                Value::Text(iso(*ts)),
            ],
        })
    }
}

/// A budget row from `campaign_budgets`; `None` (and a warning-free fallback to no budget)
/// when `daily_budget` is not an integer.
fn budget_of(row: &DimRow, default_zone: &str) -> Option<(CampaignId, Budget)> {
    let daily = row.get(2)?.trim().parse::<f64>().ok()?;
    let zone = row.get(3).map(|z| z.trim()).filter(|z| !z.is_empty());
    let zone = match zone {
        Some(z) if z.parse::<chrono_tz::Tz>().is_ok() => z.to_string(),
        _ => default_zone.to_string(),
    };
    Some((
        CampaignId(row[0].clone()),
        Budget {
            advertiser: row.get(1).cloned().unwrap_or_default(),
            daily: daily.round() as i64,
            timezone: zone,
        },
    ))
}

fn performance_fields() -> Vec<FieldSpec> {
    vec![
        text("timestamp"),
        text("window_end"),
        int("impressions"),
        int("clicks"),
        int("conversions"),
        float("ctr"),
        float("cvr"),
        float("defense_ctr"),
        float("defense_cvr"),
        text("sample_size"),
    ]
}

impl Dataflow for Ads {
    type Event = AdEvent;
    type Config = AdsConfig;
    const NAME: &'static str = "ads";

    fn new(config: AdsConfig) -> Self {
        Ads { config }
    }
    fn config(&self) -> &AdsConfig {
        &self.config
    }
    fn check(&self) -> Result<(), String> {
        // events are summed per second (per minute for budgets) before their
        // contributions are computed: see `class_of`
        let c = &self.config;
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
    fn tables(&self) -> Vec<TableSpec> {
        let spec = |ns, keys, fields, sink| TableSpec {
            ns,
            keys,
            fields,
            version: 1,
            sink,
        };
        let mut campaign = vec![
            text("window_start"),
            int("window_impressions"),
            int("window_clicks"),
            int("window_conversions"),
            float("window_ctr"),
            float("window_cvr"),
        ];
        for [i, c, v, ctr, cvr, s, r] in [
            [
                "impressions_1h",
                "clicks_1h",
                "conversions_1h",
                "ctr_1h",
                "cvr_1h",
                "spend_1h",
                "revenue_1h",
            ],
            [
                "impressions_24h",
                "clicks_24h",
                "conversions_24h",
                "ctr_24h",
                "cvr_24h",
                "spend_24h",
                "revenue_24h",
            ],
        ] {
            campaign.extend([
                int(i),
                int(c),
                int(v),
                float(ctr),
                float(cvr),
                int(s),
                int(r),
            ]);
        }
        campaign.push(int("unattributed_conversions_24h"));
        let window_keys = vec![
            "campaign_id",
            "placement",
            "category",
            "window_start",
            "metric_type",
        ];
        let budget_event_fields = vec![
            text("event_type"),
            text("timestamp"),
            text("advertiser_id"),
            int("daily_budget"),
            int("spent_amount"),
            int("remaining_budget"),
            text("alert_type"),
            text("sync_source"),
            text("action"),
        ];
        vec![
            spec("campaign", vec!["campaign_id"], campaign, SinkKind::Store),
            spec(
                "performance",
                window_keys.clone(),
                performance_fields(),
                SinkKind::Records(self.config.metrics_topic.clone()),
            ),
            spec(
                "performance_metrics",
                window_keys,
                performance_fields(),
                SinkKind::PgTable,
            ),
            spec(
                "budget",
                vec!["campaign_id", "date"],
                vec![
                    text("advertiser_id"),
                    int("daily_budget"),
                    int("spent_amount"),
                    int("remaining_budget"),
                    float("spent_ratio"),
                    int("clicks"),
                    int("paused"),
                ],
                SinkKind::RedisHash,
            ),
            spec(
                "budget_events",
                vec!["campaign_id", "date", "kind"],
                budget_event_fields,
                SinkKind::Topic(self.config.budget_topic.clone()),
            ),
            spec(
                "budget_spend",
                vec!["campaign_id", "date"],
                vec![
                    text("advertiser_id"),
                    int("daily_budget"),
                    int("spent_amount"),
                    text("synced_at"),
                    int("synced_at_ms"),
                ],
                SinkKind::PgTable,
            ),
            spec(
                "product",
                vec!["product_id"],
                vec![
                    float("quality_score"),
                    float("previous_score"),
                    text("category"),
                    text("update_reason"),
                    text("effective_from"),
                    int("effective_from_ms"),
                    text("updated_at"),
                ],
                SinkKind::Store,
            ),
        ]
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
            decode::decode(record.payload)
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

        // closed tumbling windows, per category so the defense values see its totals
        let this = self.clone();
        let counted = intervals(state, parts.tallies.clone(), move |t: &Tally| {
            let kind = match t.measure {
                Measure::Impressions => Kind::Impression,
                Measure::Clicks => Kind::Click,
                Measure::Spend => return Vec::new(),
            };
            this.window_counts(&t.slot, kind, t.at).collect()
        });
        let this = self.clone();
        let converted = derived_intervals(attribution.clone(), move |a: &Attribution| {
            let Some(click) = &a.click else {
                return Vec::new();
            };
            let c = &a.conversion;
            let slot = Slot {
                campaign: c.campaign.clone(),
                placement: click.placement,
                category: c.category.clone(),
            };
            this.window_counts(&slot, Kind::Conversion, c.ts).collect()
        });
        let this = self.clone();
        let windows = counted
            .concat(converted)
            .consolidate_stream()
            .reduce_named("PerformanceWindows", move |key, counts, out| {
                for row in this.window_rows(key, counts) {
                    out.push((row, 1));
                }
            })
            .map(|(_, row)| row);

        // the campaign view
        let this = self.clone();
        let campaign_events = intervals(state, parts.tallies.clone(), move |t: &Tally| {
            let campaign = &t.slot.campaign;
            match t.measure {
                Measure::Impressions => {
                    this.campaign_counts(campaign, Kind::Impression, t.at, None)
                }
                Measure::Clicks => this.campaign_counts(campaign, Kind::Click, t.at, None),
                Measure::Spend => this
                    .campaign_money(campaign, Kind::Click, t.at, 1)
                    .collect(),
            }
        });
        let this = self.clone();
        let campaign_conversions = derived_intervals(attribution, move |a: &Attribution| {
            let c = &a.conversion;
            match a.click {
                Some(_) => {
                    this.campaign_counts(&c.campaign, Kind::Conversion, c.ts, Some(c.revenue))
                }
                None => vec![(
                    (c.campaign.clone(), CampaignMeasure::Unattributed),
                    1,
                    0,
                    Some(Rolling::H24.window().expiry(c.ts)),
                )],
            }
        });
        let this = self.clone();
        let campaigns = campaign_events
            .concat(campaign_conversions)
            .consolidate_stream()
            .reduce_named("Campaigns", move |campaign, measures, out| {
                out.push((this.campaign_row(campaign, measures), 1));
            })
            .map(|(_, row)| row);

        let budgets = self.budgets(parts.tallies, parts.paid, dimensions[0].clone(), state);
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

impl Ads {
    /// One pass over the events: impressions and clicks summed into [`Tally`]s and spend
    /// instants per tick, clicks, conversions and quality updates passed on, each to its
    /// own consumer (a collection read by many would be copied to each of them).
    fn split<'s>(&self, events: VecCollection<'s, Tick, Timed<AdEvent>>) -> Parts<'s> {
        type Out = Vec<(Part, Tick, isize)>;
        let split = events
            .inner
            .unary::<CapacityContainerBuilder<Out>, _, _, _>(Pipeline, "SplitAdEvents", |_, _| {
                let mut ticks: PerTick<Sums> = PerTick::default();
                move |input, output| {
                    input.for_each(|cap, data| {
                        for (e, t, r) in data.drain(..) {
                            ticks.at(&cap, t).add(e, r);
                        }
                    });
                    for (cap, sums) in ticks.drain() {
                        let t = *cap.time();
                        output
                            .session(&cap)
                            .give_iterator(sums.drain().map(|(p, r)| (p, t, r)));
                    }
                }
            });
        let route = |(p, t, r): (Part, Tick, isize)| {
            let i = match p {
                Part::Tally(_) => 0,
                Part::Click(_) => 1,
                Part::Paid(_) => 2,
                Part::Conversion(..) => 3,
                Part::Quality(_) => 4,
            };
            (i, (p, t, r))
        };
        let mut parts = split
            .partition::<CapacityContainerBuilder<Out>, _, _>(5, route)
            .into_iter();
        let mut next = || parts.next().expect("five parts");
        macro_rules! part {
            ($variant:pat => $value:expr) => {
                next().flat_map(|(p, t, r)| match p {
                    $variant => Some(($value, t, r)),
                    _ => None,
                })
            };
        }
        Parts {
            tallies: part!(Part::Tally(x) => x).as_collection(),
            clicks: part!(Part::Click(x) => x),
            paid: part!(Part::Paid(x) => x),
            conversions: part!(Part::Conversion(pair, c) => (pair, c)).as_collection(),
            quality: part!(Part::Quality(q) => q).as_collection(),
        }
    }

    /// Each conversion with the latest click of its device and ad at most
    /// `attribution_window_ms` before it (a click at the same instant counts), or none.
    fn attribution<'s>(
        &self,
        clicks: Stream<'s, Tick, Vec<(OpenClick, Tick, isize)>>,
        conversions: VecCollection<'s, Tick, (DeviceAd, ConversionRef)>,
        state: &State,
    ) -> VecCollection<'s, Tick, Attribution> {
        let this = self.clone();
        let conversions = intervals(
            state,
            conversions,
            move |(pair, c): &(DeviceAd, ConversionRef)| {
                Some(((*pair, c.clone()), 1, 0, Some(this.conversion_kept(c.ts))))
            },
        );
        let this = self.clone();
        attribution::attribute(
            state,
            clicks,
            conversions,
            self.config.attribution_window_ms,
            move |ts, now| this.click_kept(ts) > now,
        )
    }

    /// Spend per campaign-day in the campaign's zone, threshold crossings and syncs.
    fn budgets<'s>(
        &self,
        tallies: VecCollection<'s, Tick, Tally>,
        paid: Stream<'s, Tick, Vec<(Paid, Tick, isize)>>,
        table: VecCollection<'s, Tick, DimRow>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let default = self.config.default_timezone.clone();
        let budgets = table
            .flat_map(move |row| budget_of(&row, &default))
            .map(|(c, b)| (CampaignKey::of(&c), b));
        // clicks and spend per campaign and minute class: what a day needs of them
        let this = self.clone();
        let spend = intervals(state, tallies.clone(), move |t: &Tally| {
            let at = class_of(t.at, MINUTE);
            let campaign = CampaignKey::of(&t.slot.campaign);
            (t.measure != Measure::Impressions)
                .then(|| ((campaign, (t.measure, at)), 1, 0, Some(this.spend_kept(at))))
        });
        // the clicked campaigns' names (kept as long as their clicks) with their budgets,
        // and their zones (the budget's, or the default)
        let this = self.clone();
        let names = intervals(state, tallies, move |t: &Tally| {
            let at = class_of(t.at, MINUTE);
            let name = (CampaignKey::of(&t.slot.campaign), t.slot.campaign.clone());
            (t.measure == Measure::Clicks).then(|| (name, 1, 0, Some(this.spend_kept(at))))
        })
        .distinct();
        let budgeted = budgets.clone().map(|(k, _)| k).distinct();
        let campaigns = names
            .clone()
            .join_map(budgets, |k, name, b| (*k, (name.clone(), Some(b.clone()))))
            .concat(names.antijoin(budgeted).map(|(k, name)| (k, (name, None))));
        let default_zone = self.config.default_timezone.clone();
        let zone_of = campaigns
            .clone()
            .map(move |(k, (_, b))| (k, b.map_or_else(|| default_zone.clone(), |b| b.timezone)));
        let zoned = spend.join_map(zone_of, |k, (measure, at), zone| {
            (*k, *measure, *at, zone.clone())
        });
        let this = self.clone();
        let sync = self.config.budget_sync_interval_ms;
        let retention = self.budget_day_retention();
        let days = derived_intervals(zoned, move |(campaign, measure, ts, zone)| {
            let zone = zone.parse().unwrap_or_else(|_| this.default_zone());
            let (date, end) = local_day(*ts, zone);
            let day = CampaignDay {
                campaign: *campaign,
                date,
            };
            let until = Some(end + retention);
            let synced = ceil_to(ts + 1, sync);
            let minute = ts / MINUTE;
            let (sum, at_sync) = match measure {
                Measure::Spend => (BudgetPiece::SpentIn(minute), BudgetPiece::Synced),
                _ => (BudgetPiece::ClicksIn(minute), BudgetPiece::SyncedAt(synced)),
            };
            [
                ((day, sum), 1, 0, until),
                ((day, at_sync), 1, synced, until),
            ]
        });
        let day_budgets = days
            .clone()
            .map(|(day, _)| (day.campaign, day.date))
            .distinct()
            .join_map(campaigns, |campaign, date, (name, budget)| {
                (
                    CampaignDay {
                        campaign: *campaign,
                        date: *date,
                    },
                    BudgetPiece::Campaign {
                        name: name.clone(),
                        budget: budget.clone(),
                    },
                )
            });
        let this = self.clone();
        let day_outputs = days
            .concat(day_budgets)
            .consolidate_stream()
            .reduce_named("Budgets", move |day, pieces, out| {
                for o in this.budget_rows(day, pieces) {
                    out.push((o, 1));
                }
            })
            .map(|(_, o)| o);
        let crossed = day_outputs.clone().flat_map(|o| match o {
            DayOutput::Crossed(at, c) => Some((at, c)),
            DayOutput::Row(_) => None,
        });
        let (this, that) = (self.clone(), self.clone());
        let alerts = crossings::alerts(
            state,
            paid,
            crossed,
            move |ts, now| this.spend_kept(ts) > now,
            move |at, c, ts, spent| that.alert_row(at, c, ts, spent),
        )
        // a crossing that moves to another minute may move to another worker: the row's
        // retraction and its new value must reach the sink of one worker
        .inner
        .exchange(|(row, _, _): &(FeatureRow, Tick, isize)| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for part in &row.key {
                h.update(part.as_bytes());
                h.update(&[0]);
            }
            h.digest()
        })
        .as_collection();
        day_outputs
            .flat_map(|o| match o {
                DayOutput::Row(row) => Some(row),
                DayOutput::Crossed(..) => None,
            })
            .concat(alerts)
    }

    /// Quality scores in force from their `effective_from`.
    fn products<'s>(
        &self,
        updates: VecCollection<'s, Tick, Timed<QualityUpdate>>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let retention = self.config.quality_retention_ms;
        let updates = intervals(state, updates, move |e: &Timed<QualityUpdate>| {
            let q = &e.event;
            Some((
                (q.product.clone(), (q.effective_from, e.ts, e.id, q.clone())),
                1,
                q.effective_from,
                Some(ceil_to(q.effective_from.max(e.ts) + retention, MINUTE)),
            ))
        });
        let this = self.clone();
        updates
            .reduce_named("Products", move |product, updates, out| {
                if let Some(row) = this.product_row(product, updates) {
                    out.push((row, 1));
                }
            })
            .map(|(_, row)| row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = crate::family::family("ads", Some(bad)).err().unwrap();
        assert!(err.contains("metrics_window_ms = 1500") && err.contains("multiple of 1000"));
        let bad = serde_json::json!({"budget_sync_interval_ms": 90_000});
        let err = crate::family::family("ads", Some(bad)).err().unwrap();
        assert!(err.contains("budget_sync_interval_ms"), "{err}");
        let good =
            serde_json::json!({"metrics_window_ms": 60_000, "budget_sync_interval_ms": 120_000});
        assert!(crate::family::family("ads", Some(good)).is_ok());
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
