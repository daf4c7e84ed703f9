//! The views sessions contribute to: user, episode, segment (country × genre × local time
//! of day) and experiment sums over 7 and 30 days, and the rows they make.

use chrono::{Offset, TimeZone, Timelike};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Span, Tick, WINDOW_30D};

use super::*;

/// Local time of day of an instant in a zone (UTC when none is known): night 0–6, morning
/// 6–12, afternoon 12–18, evening 18–24.
pub fn time_of_day(ts: u64, tz: Option<&str>) -> &'static str {
    let zone: chrono_tz::Tz = tz.and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC);
    let utc = chrono::DateTime::from_timestamp_millis(ts as i64).unwrap_or_default();
    let offset = zone.offset_from_utc_datetime(&utc.naive_utc()).fix();
    match utc.with_timezone(&offset).hour() {
        0..6 => "night",
        6..12 => "morning",
        12..18 => "afternoon",
        _ => "evening",
    }
}

/// `YYYY-MM-DDTHH` (UTC) of the hour `ts` falls in.
pub fn hour_key(hour_start: u64) -> String {
    chrono::DateTime::from_timestamp_millis(hour_start as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H")
        .to_string()
}

/// The exit-depth decile of a depth: `d` holds `10d ≤ depth < 10d + 10`, 100 in the last.
pub fn exit_decile(depth: Depth) -> u8 {
    (depth.0 / 10_000).min(9) as u8
}

/// An episode's metadata row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpisodeMeta {
    pub title: String,
    pub genre: String,
}

/// The genre of an episode the metadata does not (yet) list.
pub const UNKNOWN_GENRE: &str = "unknown";

/// An entity of the user, episode, segment, experiment and quality views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Entity {
    User(UserId),
    Episode(EpisodeId),
    /// country, genre, local time of day
    Segment(CompactString, CompactString, CompactString),
    Experiment(CompactString),
    /// The start of an hour (UTC, epoch ms).
    Quality(u64),
}

/// What a contribution adds to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Sessions(Span),
    Finished(Span),
    Completed(Span),
    /// Exits (the `exit` event) below the early-exit depth.
    EarlyExits(Span),
    /// Exits and timeouts.
    Abandoned(Span),
    DepthSum(Span),
    DwellSum(Span),
    /// One per (window, episode) a user read: their number is `distinct_episodes`.
    Read(Span, EpisodeId),
    GenreSessions(CompactString),
    ExitDepthSum,
    ExitDecile(u8),
    Meta(EpisodeMeta),
    GroupFinished(CompactString),
    GroupCompleted(CompactString),
    Null,
    Duplicate,
    OutOfOrder,
    OutOfRange,
    Malformed,
    /// Events whose country has no known zone and that name none.
    Unzoned,
}

const SPANS: [Span; 2] = [Span::D7, Span::D30];

impl Reading {
    /// What one session (with its episode's genre) adds to which sums, until when.
    pub(super) fn session_contributions(
        &self,
        (s, genre): &(Session, String),
    ) -> Vec<((Entity, Measure), isize, Option<Tick>)> {
        use Measure::*;
        let mut out = Vec::new();
        let r = &s.reader;
        let user = Entity::User(r.user.clone());
        let episode = Entity::Episode(r.episode.clone());
        let tod = time_of_day(s.start, r.tz.as_deref());
        let segment = Entity::Segment(r.country.clone(), genre.as_str().into(), tod.into());
        let finished = s.state.finished() as isize;
        let completed = (s.state == SessionState::Completed) as isize;
        let abandoned = s.state.abandoned() as isize;
        let early_depth = Depth::from_pct(self.config.early_exit_pct as f64);
        let early = (s.state == SessionState::Exited && s.max_scroll < early_depth) as isize;
        let depth = s.max_scroll.0 as isize;
        for span in SPANS {
            let until = Some(span.window().expiry(s.start));
            let mut add = |e: &Entity, m: Measure, w: isize| {
                if w != 0 {
                    out.push(((e.clone(), m), w, until));
                }
            };
            add(&user, Sessions(span), 1);
            add(&user, Finished(span), finished);
            add(&user, Completed(span), completed);
            add(&user, EarlyExits(span), early);
            add(&user, Abandoned(span), abandoned);
            add(&user, DepthSum(span), finished * depth);
            add(&user, DwellSum(span), finished * s.dwell_ms as isize);
            add(&user, Read(span, r.episode.clone()), 1);
            add(&episode, Sessions(span), 1);
            add(&episode, Finished(span), finished);
            add(&episode, Completed(span), completed);
            add(&segment, Sessions(span), 1);
            add(&segment, Finished(span), finished);
            add(&segment, Completed(span), completed);
            if span == Span::D30 {
                add(&user, GenreSessions(genre.as_str().into()), 1);
                if abandoned == 1 {
                    add(&episode, Abandoned(span), 1);
                    add(&episode, ExitDepthSum, depth);
                    add(&episode, ExitDecile(exit_decile(s.max_scroll)), 1);
                }
                if let Some(arm) = &r.arm {
                    let e = Entity::Experiment(arm.experiment.clone());
                    add(&e, GroupFinished(arm.group.clone()), finished);
                    add(&e, GroupCompleted(arm.group.clone()), completed);
                }
            }
        }
        let quality = [(OutOfOrder, &s.out_of_order), (Unzoned, &s.unzoned)];
        for (m, hours) in quality {
            for (hour, n) in hours {
                out.push((
                    (Entity::Quality(*hour), m.clone()),
                    *n as isize,
                    Some(WINDOW_30D.expiry(*hour)),
                ));
            }
        }
        out
    }

    /// The rows of one entity from its sums; none when every windowed sum is zero.
    /// Long: one arm per view, each reading its sums.
    pub fn rows(&self, entity: &Entity, sums: &[(Measure, isize)]) -> Vec<FeatureRow> {
        use Measure::*;
        let sum = |m: &Measure| {
            sums.iter()
                .find(|(k, _)| k == m)
                .map_or(0, |(_, n)| *n as i64)
        };
        let ratio = |a: i64, b: i64| Value::float(if b > 0 { a as f64 / b as f64 } else { 0.0 });
        // a mean of depths, kept in thousandths of a percent
        let depth = |a: i64, b: i64| {
            Value::float(if b > 0 {
                a as f64 / b as f64 / 1000.0
            } else {
                0.0
            })
        };
        let windowed = sums.iter().any(|(m, n)| *n != 0 && !matches!(m, Meta(_)));
        if !windowed {
            return Vec::new();
        }
        match entity {
            Entity::User(user) => {
                let mut values = Vec::new();
                for span in SPANS {
                    let finished = sum(&Finished(span));
                    let distinct = sums
                        .iter()
                        .filter(|(m, n)| matches!(m, Read(s, _) if *s == span) && *n > 0)
                        .count();
                    values.extend([
                        Value::Int(sum(&Sessions(span))),
                        ratio(sum(&Completed(span)), finished),
                        ratio(sum(&EarlyExits(span)), finished),
                        ratio(sum(&Abandoned(span)), finished),
                        depth(sum(&DepthSum(span)), finished),
                        ratio(sum(&DwellSum(span)), finished),
                        Value::Int(distinct as i64),
                    ]);
                }
                // the genre read most in 30 days; the first by name on a tie
                let top = sums
                    .iter()
                    .filter_map(|(m, n)| match m {
                        GenreSessions(g) if *n > 0 => Some((std::cmp::Reverse(*n), g)),
                        _ => None,
                    })
                    .min()
                    .map_or(String::new(), |(_, g)| g.to_string());
                values.push(Value::Text(top));
                vec![FeatureRow {
                    table: USER,
                    key: vec![user.0.to_string()],
                    values,
                }]
            }
            Entity::Episode(episode) => {
                let meta = sums.iter().find_map(|(m, n)| match m {
                    Meta(meta) if *n > 0 => Some(meta.clone()),
                    _ => None,
                });
                let (title, genre) = meta.map_or((String::new(), UNKNOWN_GENRE.to_string()), |m| {
                    (m.title, m.genre)
                });
                let mut values = vec![Value::Text(genre), Value::Text(title)];
                for span in SPANS {
                    values.push(Value::Int(sum(&Sessions(span))));
                    values.push(ratio(sum(&Completed(span)), sum(&Finished(span))));
                }
                values.push(depth(sum(&ExitDepthSum), sum(&Abandoned(Span::D30))));
                values.extend((0..10).map(|d| Value::Int(sum(&ExitDecile(d)))));
                vec![FeatureRow {
                    table: EPISODE,
                    key: vec![episode.0.to_string()],
                    values,
                }]
            }
            Entity::Segment(country, genre, tod) => {
                let mut values = Vec::new();
                for span in SPANS {
                    values.push(Value::Int(sum(&Sessions(span))));
                    values.push(ratio(sum(&Completed(span)), sum(&Finished(span))));
                }
                vec![FeatureRow {
                    table: SEGMENT,
                    key: vec![country.to_string(), genre.to_string(), tod.to_string()],
                    values,
                }]
            }
            Entity::Experiment(name) => self.experiment_rows(name, sums),
            Entity::Quality(hour) => vec![FeatureRow {
                table: QUALITY,
                key: vec![hour_key(*hour)],
                values: [Null, Duplicate, OutOfOrder, OutOfRange, Malformed, Unzoned]
                    .iter()
                    .map(|m| Value::Int(sum(m)))
                    .collect(),
            }],
        }
    }

    /// Per group: finished sessions, completions, the rate, and against the control group
    /// the difference of rates with Newcombe's 95 % interval (see [`AbTest::of`]).
    pub(super) fn experiment_rows(&self, name: &str, sums: &[(Measure, isize)]) -> Vec<FeatureRow> {
        let mut groups: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
        for (m, n) in sums {
            match m {
                Measure::GroupFinished(g) => groups.entry(g).or_default().0 += *n as i64,
                Measure::GroupCompleted(g) => groups.entry(g).or_default().1 += *n as i64,
                _ => {}
            }
        }
        groups.retain(|_, (finished, _)| *finished > 0);
        let control = if groups.contains_key(self.config.control_group.as_str()) {
            self.config.control_group.as_str()
        } else {
            match groups.keys().next() {
                Some(g) => g,
                None => return Vec::new(),
            }
        };
        let (n0, c0) = groups[control];
        groups
            .iter()
            .map(|(group, (n, c))| {
                let ab = if *group == control {
                    AbTest::control((*c, *n))
                } else {
                    AbTest::of((*c, *n), (c0, n0))
                };
                FeatureRow {
                    table: EXPERIMENT,
                    key: vec![name.to_string(), group.to_string()],
                    values: vec![
                        Value::Int(*n),
                        Value::Int(*c),
                        Value::float(ab.rate),
                        Value::Text(control.to_string()),
                        Value::float(ab.diff),
                        Value::float(ab.ci_low),
                        Value::float(ab.ci_high),
                        Value::Int(ab.significant() as i64),
                    ],
                }
            })
            .collect()
    }
}
