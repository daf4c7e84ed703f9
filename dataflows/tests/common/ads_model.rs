//! A naive model of the ads outputs (DESIGN §5.3) at a tick, from the events inserted by
//! then: the oracle of the property tests and of the end-to-end tests (which include this
//! file by path). Every output is recomputed from its definition by scanning all events.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, TimeZone};
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::Tick;

pub type State = BTreeMap<(u8, Vec<String>), Vec<Value>>;
/// Counts (impressions, clicks, conversions) per (campaign, placement), per (category, start).
type Windows = BTreeMap<(String, u64), BTreeMap<(String, String), [i64; 3]>>;
/// Clicks (ts, id, price, advertiser) per (campaign, date).
type Days = BTreeMap<(String, String), Vec<(u64, u128, i64, String)>>;

pub const SECOND: u64 = 1_000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;

// the defaults of `[dataflows.ads]`
pub const ATTRIBUTION: u64 = DAY;
pub const METRICS: u64 = 5 * MINUTE;
pub const DEFENSE: u64 = HOUR;
pub const LATENESS: u64 = 5_000;
pub const PRIOR: f64 = 1_000.0;
pub const SYNC: u64 = 10 * MINUTE;
pub const HORIZON: u64 = DAY;
pub const QUALITY_RETENTION: u64 = 30 * DAY;

// table indices
pub const CAMPAIGN: u8 = 0;
pub const PERFORMANCE: u8 = 1;
pub const PERFORMANCE_HISTORY: u8 = 2;
pub const BUDGET: u8 = 3;
pub const BUDGET_EVENTS: u8 = 4;
pub const BUDGET_SPEND: u8 = 5;
pub const PRODUCT: u8 = 6;
pub const BUDGET_HISTORY: u8 = 7;

pub fn ceil(x: u64, r: u64) -> u64 {
    x.div_ceil(r) * r
}

/// Too late: its 24-hour horizon (minute resolution) has passed at insertion.
pub fn too_late(ts: u64, tick: Tick) -> bool {
    ceil(ts + HORIZON, MINUTE) <= tick
}

pub fn iso(ms: u64) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64).unwrap();
    if ms.is_multiple_of(1000) {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    Impression,
    Click {
        price: i64,
    },
    Conversion {
        revenue: i64,
    },
    Quality {
        product: String,
        score: f64,
        previous: Option<f64>,
        category: String,
        reason: String,
        effective_from: u64,
    },
}

/// An accepted event as the model reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct AdRead {
    /// The event's identity (`EventId.0`): ties between clicks at one instant go to the larger.
    pub id: u128,
    pub ts: u64,
    pub act: Act,
    pub campaign: String,
    pub placement: String,
    pub category: String,
    pub device: String,
    pub ad: String,
    /// `advertiser_id` (read from clicks: a campaign without a budget row shows it).
    pub advertiser: String,
}

/// A `campaign_budgets` row.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetRow {
    pub campaign: String,
    pub advertiser: String,
    pub daily: i64,
    pub zone: String,
}

fn rate(hits: i64, trials: i64) -> f64 {
    if trials > 0 {
        hits as f64 / trials as f64
    } else {
        0.0
    }
}

/// When a window's record shows, and when it leaves.
fn closes(start: u64, length: u64) -> Tick {
    start + length + LATENESS
}
fn retires(start: u64, length: u64) -> Tick {
    ceil(start + length + HORIZON, MINUTE)
}

/// Each visible conversion with the click it is attributed to at `at`: the latest click
/// (by time, then identity) of the same device and ad at most 24 h before it.
pub fn attributions(events: &[(AdRead, Tick)], at: Tick) -> Vec<(&AdRead, Option<&AdRead>)> {
    let seen = |t: &Tick| *t <= at;
    events
        .iter()
        .filter(|(e, t)| seen(t) && matches!(e.act, Act::Conversion { .. }))
        .map(|(c, _)| {
            let click = events
                .iter()
                .filter(|(k, t)| {
                    seen(t)
                        && matches!(k.act, Act::Click { .. })
                        && k.device == c.device
                        && k.ad == c.ad
                        && k.ts <= c.ts
                        && c.ts - k.ts <= ATTRIBUTION
                })
                .map(|(k, _)| k)
                .max_by_key(|k| (k.ts, k.id));
            (c, click)
        })
        .collect()
}

/// The local date (`yyyymmdd`) of `ts` in `zone` and when that day ends.
pub fn local_day(ts: u64, zone: &str) -> (String, u64) {
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let date = tz.timestamp_millis_opt(ts as i64).unwrap().date_naive();
    let next: NaiveDate = date.succ_opt().unwrap();
    let mut m = 0;
    let end = loop {
        let t = next.and_hms_opt(0, 0, 0).unwrap() + chrono::Duration::minutes(m);
        if let Some(x) = tz.from_local_datetime(&t).earliest() {
            break x.timestamp_millis() as u64;
        }
        m += 1;
    };
    (date.format("%Y%m%d").to_string(), end)
}

/// Every output row the dataflow holds at stream time `at`.
/// Long: the definition restated in one place on purpose (DESIGN §5.3), to be checked against the spec line by line.
pub fn recount(events: &[(AdRead, Tick)], budgets: &[BudgetRow], at: Tick) -> State {
    let mut out = State::new();
    let seen: Vec<&(AdRead, Tick)> = events.iter().filter(|(_, t)| *t <= at).collect();
    let attributed = attributions(events, at);

    // what counts in windows: (campaign, placement, category, ts, kind 0/1/2)
    let mut counted: Vec<(String, String, String, u64, usize)> = Vec::new();
    for (e, _) in &seen {
        match e.act {
            Act::Impression => counted.push((
                e.campaign.clone(),
                e.placement.clone(),
                e.category.clone(),
                e.ts,
                0,
            )),
            Act::Click { .. } => counted.push((
                e.campaign.clone(),
                e.placement.clone(),
                e.category.clone(),
                e.ts,
                1,
            )),
            _ => {}
        }
    }
    for (c, click) in &attributed {
        if let Some(k) = click {
            counted.push((
                c.campaign.clone(),
                k.placement.clone(),
                c.category.clone(),
                c.ts,
                2,
            ));
        }
    }

    // performance windows
    for length in [METRICS, DEFENSE] {
        let mut windows = Windows::new();
        for (campaign, placement, category, ts, kind) in &counted {
            let start = ts - ts % length;
            if closes(start, length) <= at && at < retires(start, length) {
                windows
                    .entry((category.clone(), start))
                    .or_default()
                    .entry((campaign.clone(), placement.clone()))
                    .or_default()[*kind] += 1;
            }
        }
        for ((category, start), slots) in windows {
            let mut total = [0i64; 3];
            for c in slots.values() {
                for i in 0..3 {
                    total[i] += c[i];
                }
            }
            let ctr_c = rate(total[1], total[0]);
            let cvr_c = rate(total[2], total[1]);
            for ((campaign, placement), [imp, clk, conv]) in slots {
                let prior_clicks = PRIOR * ctr_c;
                let defense_ctr = (clk as f64 + prior_clicks) / (imp as f64 + PRIOR);
                let defense_cvr = if clk as f64 + prior_clicks > 0.0 {
                    (conv as f64 + prior_clicks * cvr_c) / (clk as f64 + prior_clicks)
                } else {
                    0.0
                };
                let end = iso(start + length);
                let values = vec![
                    Value::Text(end.clone()),
                    Value::Text(end),
                    Value::Int(imp),
                    Value::Int(clk),
                    Value::Int(conv),
                    Value::float(rate(clk, imp)),
                    Value::float(rate(conv, clk)),
                    Value::float(defense_ctr),
                    Value::float(defense_cvr),
                    Value::Text(
                        if imp as f64 >= PRIOR {
                            "SUFFICIENT"
                        } else {
                            "INSUFFICIENT"
                        }
                        .into(),
                    ),
                ];
                let kind = if length == DEFENSE {
                    "DEFENSE_VALUE"
                } else {
                    "CTR"
                };
                let key = vec![
                    campaign,
                    placement,
                    category.clone(),
                    iso(start),
                    kind.to_string(),
                ];
                out.insert((PERFORMANCE, key.clone()), values.clone());
                out.insert((PERFORMANCE_HISTORY, key), values);
            }
        }
    }

    // the campaign view
    let campaigns: BTreeSet<String> = seen
        .iter()
        .map(|(e, _)| e.campaign.clone())
        .filter(|c| !c.is_empty())
        .collect();
    for campaign in campaigns {
        let mut present = false;
        // the latest closed 5-minute window, shown for an hour after it closes
        let mut closed: BTreeMap<u64, [i64; 3]> = BTreeMap::new();
        for (c, _, _, ts, kind) in &counted {
            let start = ts - ts % METRICS;
            let shown = closes(start, METRICS);
            if *c == campaign && shown <= at && at < shown + HOUR {
                closed.entry(start).or_default()[*kind] += 1;
            }
        }
        let mut values = match closed.iter().next_back() {
            Some((start, [i, c, v])) => {
                present = true;
                vec![
                    Value::Text(iso(*start)),
                    Value::Int(*i),
                    Value::Int(*c),
                    Value::Int(*v),
                    Value::float(rate(*c, *i)),
                    Value::float(rate(*v, *c)),
                ]
            }
            None => vec![Value::Null; 6],
        };
        for (length, resolution) in [(HOUR, SECOND), (DAY, MINUTE)] {
            let live = |ts: u64| at < ceil(ts + length, resolution);
            let (mut imp, mut clk, mut conv, mut spend, mut revenue) = (0, 0, 0, 0, 0);
            for (e, _) in &seen {
                if e.campaign != campaign || !live(e.ts) {
                    continue;
                }
                match e.act {
                    Act::Impression => imp += 1,
                    Act::Click { price } => {
                        clk += 1;
                        spend += price;
                    }
                    _ => {}
                }
            }
            for (c, click) in &attributed {
                if c.campaign == campaign && click.is_some() && live(c.ts) {
                    conv += 1;
                    if let Act::Conversion { revenue: r } = c.act {
                        revenue += r;
                    }
                }
            }
            present |= imp + clk + conv > 0;
            values.extend([
                Value::Int(imp),
                Value::Int(clk),
                Value::Int(conv),
                Value::float(rate(clk, imp)),
                Value::float(rate(conv, clk)),
                Value::Int(spend),
                Value::Int(revenue),
            ]);
        }
        let unattributed = attributed
            .iter()
            .filter(|(c, click)| {
                c.campaign == campaign && click.is_none() && at < ceil(c.ts + DAY, MINUTE)
            })
            .count() as i64;
        present |= unattributed > 0;
        values.push(Value::Int(unattributed));
        if present {
            out.insert((CAMPAIGN, vec![campaign]), values);
        }
    }

    // budgets per campaign-day in the campaign's zone
    let mut days = Days::new();
    for (e, _) in &seen {
        let Act::Click { price } = e.act else {
            continue;
        };
        let row = budgets.iter().find(|b| b.campaign == e.campaign);
        let zone = row.map_or("UTC", |b| b.zone.as_str());
        let (date, end) = local_day(e.ts, zone);
        if at < end + DAY {
            days.entry((e.campaign.clone(), date)).or_default().push((
                e.ts,
                e.id,
                price,
                e.advertiser.clone(),
            ));
        }
    }
    for ((campaign, date), mut clicks) in days {
        clicks.sort();
        let row = budgets.iter().find(|b| b.campaign == campaign);
        // no budget row: no budget (null), and the advertiser its clicks carry (of several,
        // the greatest)
        let advertiser = row.map_or_else(
            || clicks.iter().map(|c| c.3.clone()).max().unwrap_or_default(),
            |b| b.advertiser.clone(),
        );
        let daily = row.map(|b| b.daily);
        let budget = || daily.map_or(Value::Null, Value::Int);
        let remaining = |spent: i64| daily.map_or(Value::Null, |d| Value::Int((d - spent).max(0)));
        let spent: i64 = clicks.iter().map(|c| c.2).sum();
        let key = vec![campaign.clone(), date.clone()];
        out.insert(
            (BUDGET, key.clone()),
            vec![
                Value::Text(advertiser.clone()),
                budget(),
                Value::Int(spent),
                remaining(spent),
                daily.map_or(Value::Null, |d| Value::float(rate(spent, d))),
                Value::Int(clicks.len() as i64),
                Value::Int(daily.is_some_and(|d| d > 0 && spent >= d) as i64),
            ],
        );
        let record =
            |kind: &str, event_type: &str, ts: u64, amount: i64, alert: &str, action: &str| {
                (
                    (
                        BUDGET_EVENTS,
                        vec![campaign.clone(), date.clone(), kind.to_string()],
                    ),
                    vec![
                        Value::Text(event_type.into()),
                        Value::Text(iso(ts)),
                        Value::Text(advertiser.clone()),
                        budget(),
                        Value::Int(amount),
                        remaining(amount),
                        Value::Text(alert.into()),
                        // seed 002's enum: the spend is the Redis budget counter's
                        Value::Text("REDIS_COUNTER".into()),
                        Value::Text(action.into()),
                        // `version`, `previous_timestamp`: an alert's are stamped by
                        // `Versions` from the records before it; a sync has none
                        Value::Null,
                        Value::Null,
                    ],
                )
            };
        if let Some(daily) = daily.filter(|d| *d > 0) {
            for (pct, alert, event_type, action) in [
                (90, "90_PERCENT", "BUDGET_ALERT", "NOTIFY"),
                (95, "95_PERCENT", "BUDGET_ALERT", "NOTIFY"),
                (100, "EXHAUSTED", "CAMPAIGN_PAUSE", "PAUSE_CAMPAIGN"),
            ] {
                // clicks of one millisecond count together
                let mut cumulative = 0;
                for (i, (ts, _, price, _)) in clicks.iter().enumerate() {
                    cumulative += price;
                    let instant_ends = clicks.get(i + 1).is_none_or(|next| next.0 != *ts);
                    if instant_ends && cumulative * 100 >= daily * pct {
                        let (k, v) = record(alert, event_type, *ts, cumulative, alert, action);
                        // the topic's record, and the same in the Postgres history
                        out.insert((BUDGET_HISTORY, k.1.clone()), v.clone());
                        out.insert(k, v);
                        break;
                    }
                }
            }
        }
        // synced on the 10-minute boundaries of stream time
        let synced: Vec<(u64, i64)> = clicks
            .iter()
            .map(|(ts, _, price, _)| (ceil(ts + 1, SYNC), *price))
            .filter(|(boundary, _)| *boundary <= at)
            .collect();
        if let Some(last) = synced.iter().map(|s| s.0).max() {
            let amount: i64 = synced.iter().map(|s| s.1).sum();
            let (k, v) = record("SYNC", "BUDGET_SYNC", last, amount, "", "");
            out.insert((BUDGET_HISTORY, k.1.clone()), v.clone());
            out.insert(k, v);
            out.insert(
                (BUDGET_SPEND, vec![campaign.clone(), date.clone()]),
                vec![
                    Value::Text(advertiser.clone()),
                    budget(),
                    Value::Int(amount),
                    Value::Text(iso(last)),
                    Value::Int(last as i64),
                ],
            );
        }
    }

    // quality scores in force
    let mut products: BTreeMap<String, Vec<(u64, u64, u128, &Act)>> = BTreeMap::new();
    for (e, t) in &seen {
        if let Act::Quality {
            product,
            effective_from,
            ..
        } = &e.act
        {
            let shown = (*effective_from).max(*t);
            let until = ceil((*effective_from).max(e.ts) + QUALITY_RETENTION, MINUTE);
            if shown <= at && at < until {
                products.entry(product.clone()).or_default().push((
                    *effective_from,
                    e.ts,
                    e.id,
                    &e.act,
                ));
            }
        }
    }
    for (product, mut updates) in products {
        // by effective time, then event time, then identity
        updates.sort_by_key(|u| (u.0, u.1, u.2));
        let n = updates.len();
        let Act::Quality {
            score,
            previous,
            category,
            reason,
            effective_from,
            ..
        } = updates[n - 1].3
        else {
            unreachable!()
        };
        let before = (n > 1).then(|| match updates[n - 2].3 {
            Act::Quality { score, .. } => *score,
            _ => unreachable!(),
        });
        out.insert(
            (PRODUCT, vec![product]),
            vec![
                Value::float(*score),
                Value::float(previous.or(before).unwrap_or(*score)),
                Value::Text(category.clone()),
                Value::Text(reason.clone()),
                Value::Text(iso(*effective_from)),
                Value::Int(*effective_from as i64),
                Value::Text(iso(updates[n - 1].1)),
            ],
        );
    }
    out
}

/// The fields an alert's version adds to its record: `version`, `previous_timestamp`.
pub const VERSION_FIELDS: usize = 2;

/// The versions of the alert records (#18), stamped on the recounts of successive ticks:
/// an alert's first content is version 1; each tick at which its content differs from the
/// last one stamped, or at which it is back after being gone (a tombstone), is one more,
/// naming the `timestamp` it replaces; the same content keeps its version. Call `stamp`
/// on every tick at which an output may change, in order.
#[derive(Default)]
pub struct Versions {
    last: BTreeMap<(u8, Vec<String>), Stamped>,
}

/// An alert row's content last stamped, its version, what it replaced, and whether it was
/// there at the last tick.
type Stamped = (Vec<Value>, i64, Value, bool);

impl Versions {
    pub fn stamp(&mut self, state: &mut State) {
        for (key, last) in self.last.iter_mut() {
            last.3 = state.contains_key(key);
        }
        for ((table, key), values) in state.iter_mut() {
            if !matches!(*table, BUDGET_EVENTS | BUDGET_HISTORY) || key[2] == "SYNC" {
                continue;
            }
            let n = values.len() - VERSION_FIELDS;
            let content = values[..n].to_vec();
            let last = self
                .last
                .entry((*table, key.clone()))
                .or_insert_with(|| (content.clone(), 0, Value::Null, false));
            if last.1 == 0 {
                *last = (content, 1, Value::Null, true);
            } else if last.0 != content || !last.3 {
                let previous = last.0[1].clone();
                *last = (content, last.1 + 1, previous, true);
            }
            values[n] = Value::Int(last.1);
            values[n + 1] = last.2.clone();
        }
    }
}
