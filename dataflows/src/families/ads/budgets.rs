//! Daily budgets per campaign: spend, the thresholds' alerts and pauses, and the periodic
//! sync (DESIGN §5.3).

use chrono::{NaiveDate, TimeZone};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;

use crate::contract::dimension::DimRow;
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{ceil_to, Tick, DAY, HOUR, MINUTE};
use crate::operators::versions::versions;
use crate::operators::windowed::{derived_intervals, intervals};

use super::crossings::Paid;
use super::*;

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
    /// An `advertiser_id` the day's clicks carry: a campaign without a budget row shows
    /// it (of several, the greatest).
    Advertiser(String),
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
pub(super) enum DayOutput {
    Row(FeatureRow),
    Crossed(DayMinute, Crossing),
}

/// The index of `timestamp` among a `budget-management` record's fields.
const TIMESTAMP: usize = 1;

/// `sync_source` of every `budget-management` record: seed 002's one value (the spend is
/// the Redis `budget:` counter's).
pub const SYNC_SOURCE: &str = "REDIS_COUNTER";

/// Budget thresholds: percent, `alert_type`, `event_type`, `action`.
pub const THRESHOLDS: [(i64, &str, &str, &str); 3] = [
    (90, "90_PERCENT", "BUDGET_ALERT", "NOTIFY"),
    (95, "95_PERCENT", "BUDGET_ALERT", "NOTIFY"),
    (100, "EXHAUSTED", "CAMPAIGN_PAUSE", "PAUSE_CAMPAIGN"),
];

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

/// A `budget-management` record and, the same, its row of the Postgres `budget_events`
/// history: the topic forgets a day once it retires (a tombstone per record, so
/// compaction can drop the day), the table keeps every alert, pause and sync.
fn with_history(row: FeatureRow) -> Vec<FeatureRow> {
    if row.table != table::BUDGET_EVENTS {
        return vec![row];
    }
    let history = FeatureRow {
        table: table::BUDGET_HISTORY,
        ..row.clone()
    };
    vec![row, history]
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

impl Ads {
    /// A click is kept for its budget day while the day's state is: the day ends at most 26 h
    /// after it (a DST day; Antarctica/Troll moves its clocks by two hours), and the day's
    /// rows live one more day.
    pub(super) fn spend_kept(&self, ts: u64) -> Tick {
        ceil_to(ts + 26 * HOUR + self.budget_day_retention(), MINUTE)
    }

    pub(super) fn budget_day_retention(&self) -> u64 {
        self.config.late_horizon_ms.max(DAY)
    }

    pub(super) fn default_zone(&self) -> chrono_tz::Tz {
        self.config
            .default_timezone
            .parse()
            .unwrap_or(chrono_tz::UTC)
    }

    /// A campaign-day's budget hash and its last sync, and the minutes where its
    /// thresholds were crossed.
    /// Long: one campaign-day's state from its pieces: spend, the thresholds crossed, the sync rows; they share the day's sums.
    pub(super) fn budget_rows(
        &self,
        day: &CampaignDay,
        pieces: &[(&BudgetPiece, isize)],
    ) -> Vec<DayOutput> {
        let mut name: Option<&CampaignId> = None;
        let mut budget: Option<&Budget> = None;
        let mut advertised: Option<&str> = None;
        let (mut spent, mut clicks, mut synced, mut synced_at) = (0i64, 0i64, 0i64, None);
        let mut crossed: Vec<(DayMinute, usize, i64)> = Vec::new();
        for (piece, n) in pieces {
            let n = *n as i64;
            match piece {
                BudgetPiece::Campaign { name: n, budget: b } => {
                    name = Some(n);
                    budget = b.as_ref();
                }
                // pieces come sorted: the last is the greatest
                BudgetPiece::Advertiser(a) => advertised = Some(a),
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
        // a campaign without a budget row has no budget (null), not a budget of 0, and the
        // advertiser of its clicks
        let advertiser = budget.map_or(advertised.unwrap_or_default(), |b| &b.advertiser);
        let daily = budget.map(|b| b.daily);
        let remaining = |spent: i64| daily.map_or(Value::Null, |d| Value::Int((d - spent).max(0)));
        let daily_value = daily.map_or(Value::Null, Value::Int);
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
                        daily: daily.unwrap_or_default(),
                        name: name.clone(),
                        advertiser: advertiser.to_string(),
                    },
                )
            })
            .collect();
        if clicks > 0 {
            let exhausted = daily.is_some_and(|d| d > 0 && spent >= d);
            out.push(DayOutput::Row(FeatureRow {
                table: table::BUDGET,
                key: key.clone(),
                values: vec![
                    Value::Text(advertiser.to_string()),
                    daily_value.clone(),
                    Value::Int(spent),
                    remaining(spent),
                    daily.map_or(Value::Null, |d| Value::float(rate(spent, d))),
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
                    daily_value.clone(),
                    Value::Int(synced),
                    remaining(synced),
                    Value::Text(String::new()),
                    // seed 002's enums: the spend is the Redis budget counter's; a sync
                    // asks for no action (its `action` is one of NOTIFY, PAUSE_CAMPAIGN)
                    Value::Text(SYNC_SOURCE.into()),
                    Value::Text(String::new()),
                    // a sync is state, not a notification: no version
                    Value::Null,
                    Value::Null,
                ],
            )));
            out.push(DayOutput::Row(FeatureRow {
                table: table::BUDGET_SPEND,
                key,
                values: vec![
                    Value::Text(advertiser.to_string()),
                    daily_value,
                    Value::Int(synced),
                    Value::Text(iso(at)),
                    Value::Int(at as i64),
                ],
            }));
        }
        out
    }

    /// The alert of a threshold crossed at `ts`, when the day's spend became `spent`.
    pub(super) fn alert_row(
        &self,
        at: &DayMinute,
        c: &Crossing,
        ts: u64,
        spent: i64,
    ) -> FeatureRow {
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
                Value::Text(SYNC_SOURCE.into()),
                Value::Text(action.into()),
            ],
        )
    }

    /// Spend per campaign-day in the campaign's zone, threshold crossings and syncs.
    /// Long: the budget path's wiring (clicks per minute, budgets, the day `reduce`, the crossing operator, alerts exchanged by row key).
    pub(super) fn budgets<'s>(
        &self,
        tallies: VecCollection<'s, Tick, Tally>,
        paid: Stream<'s, Tick, Vec<(Paid, Tick, isize)>>,
        advertised: VecCollection<'s, Tick, Advertised>,
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
        // the clicked campaigns' names and their clicks' advertisers per minute (kept as long
        // as their clicks) with their budgets, and their zones (the budget's, or the default)
        let this = self.clone();
        let advertised = intervals(state, advertised, move |a: &Advertised| {
            let clicks = (a.campaign.clone(), a.advertiser.0.clone(), a.at);
            let until = Some(this.spend_kept(a.at));
            [((CampaignKey::of(&a.campaign), clicks), 1, 0, until)]
        });
        let names = (advertised.clone())
            .map(|(k, (name, _, _))| (k, name))
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
        let zoned = spend.join_map(zone_of.clone(), |k, (measure, at), zone| {
            (*k, *measure, *at, zone.clone())
        });
        // each day's advertisers, in the campaign's zone
        let this = self.clone();
        let retention = self.budget_day_retention();
        let day_advertisers = derived_intervals(
            (advertised.map(|(k, (_, advertiser, at))| (k, (advertiser, at))))
                .distinct()
                .join_map(zone_of, |k, (advertiser, at), zone| {
                    (*k, advertiser.clone(), *at, zone.clone())
                }),
            move |(campaign, advertiser, ts, zone)| {
                let zone = zone.parse().unwrap_or_else(|_| this.default_zone());
                let (date, end) = local_day(*ts, zone);
                let day = CampaignDay {
                    campaign: *campaign,
                    date,
                };
                let piece = BudgetPiece::Advertiser(advertiser.clone());
                [((day, piece), 1, 0, Some(end + retention))]
            },
        )
        .distinct();
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
            .concat(day_advertisers)
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
            // an alert's version is remembered as long as its day can change, with two days
            // to spare for a budget row moved to a zone whose day ends later
            move |at, c, ts, spent| {
                let until = that.spend_kept(ts) + 2 * DAY;
                (that.alert_row(at, c, ts, spent), until)
            },
        );
        let alerts = versions(
            state,
            "alert versions",
            alerts,
            |content, version, replaced| {
                let mut record = content.clone();
                record.values.push(Value::Int(version.into()));
                record
                    .values
                    .push(replaced.map_or(Value::Null, |r| r.values[TIMESTAMP].clone()));
                record
            },
        );
        day_outputs
            .flat_map(|o| match o {
                DayOutput::Row(row) => Some(row),
                DayOutput::Crossed(..) => None,
            })
            .concat(alerts)
            .flat_map(with_history)
    }
}
