//! A naive model of the reading views (DESIGN §5.2) at a tick, from the events inserted by
//! then: the oracle of the property tests and of the end-to-end tests (which include this
//! file by path). Sessions, windows and quality are recomputed from their definitions.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Offset, TimeZone, Timelike};
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::Tick;

pub type State = BTreeMap<(u8, Vec<String>), Vec<Value>>;

pub const SECOND: u64 = 1_000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;
pub const TIMEOUT: u64 = 30 * MINUTE;

/// Quality kinds, in `quality_hourly` field order.
pub const NULL: usize = 0;
pub const DUPLICATE: usize = 1;
pub const OUT_OF_ORDER: usize = 2;
pub const OUT_OF_RANGE: usize = 3;
pub const MALFORMED: usize = 4;
pub const UNZONED: usize = 5;

pub fn ceil(x: u64, r: u64) -> u64 {
    x.div_ceil(r) * r
}
pub fn expiry_days(ts: u64, days: u64) -> Tick {
    ceil(ts + days * DAY, MINUTE)
}
pub fn hour_of(ts: u64) -> u64 {
    ts - ts % HOUR
}

/// The zone of a country whose events name none (the countries the tests use; the
/// dataflow's table covers every country of the tz database); `None`: no zone known.
pub fn main_zone(country: &str) -> Option<&'static str> {
    Some(match country {
        "KR" => "Asia/Seoul",
        "JP" => "Asia/Tokyo",
        "TW" => "Asia/Taipei",
        "TH" => "Asia/Bangkok",
        "ID" => "Asia/Jakarta",
        "US" => "America/New_York",
        "BR" => "America/Sao_Paulo",
        "MX" => "America/Mexico_City",
        "FR" => "Europe/Paris",
        "DE" => "Europe/Berlin",
        "NZ" => "Pacific/Auckland",
        _ => return None,
    })
}

/// A read's zone: its own, else its country's.
pub fn zone_of(r: &Read) -> Option<String> {
    r.tz.clone()
        .or_else(|| main_zone(&r.country).map(String::from))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Act {
    Enter,
    /// Depth in thousandths of a percent: `scroll_pct` rounded to three decimals.
    Scroll(u32),
    Complete,
    Exit,
}

/// One valid reading event, as the model reads it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Read {
    pub session: String,
    pub user: String,
    pub episode: String,
    pub country: String,
    pub tz: Option<String>,
    pub arm: Option<(String, String)>,
    pub act: Act,
    pub ts: u64,
}

/// A rejected record (a quality count) and the tick it was read at.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub kind: usize,
    pub ts: u64,
    pub tick: Tick,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub reader: Read,
    pub start: u64,
    pub dwell: u64,
    /// Thousandths of a percent.
    pub max_scroll: u32,
    pub scrolls: u64,
    pub state: &'static str,
    /// The hour of each event that does not count for the session.
    pub out_of_order: Vec<u64>,
    /// The hour of each event read without a zone.
    pub unzoned: Vec<u64>,
}

/// A session from its live events at `at` (DESIGN §5.2).
pub fn session(events: &[&(Read, Tick)], at: Tick) -> Option<Session> {
    let live: Vec<&Read> = events
        .iter()
        .filter(|(e, t)| *t <= at && at < expiry_days(e.ts, 31))
        .map(|(e, _)| e)
        .collect();
    // a session whose events have started to leave retention is gone
    let had = events
        .iter()
        .filter(|(e, t)| *t <= at && at < expiry_days(e.ts, 62))
        .count();
    if live.is_empty() || live.len() < had {
        return None;
    }
    let alive = events
        .iter()
        .any(|(e, t)| *t <= at && at < ceil(e.ts + TIMEOUT, SECOND));
    let enter = live
        .iter()
        .filter(|e| e.act == Act::Enter)
        .map(|e| e.ts)
        .min();
    let start = enter.unwrap_or_else(|| live.iter().map(|e| e.ts).min().unwrap());
    // the session ends at the first silence of the timeout (to the second) after its start
    let mut times: Vec<u64> = live.iter().map(|e| e.ts).filter(|t| *t >= start).collect();
    times.sort();
    let mut last = start;
    let mut quiet = false;
    for t in times {
        if t >= ceil(last + TIMEOUT, SECOND) {
            quiet = true;
            break;
        }
        last = t;
    }
    let inside = |ts: u64| start <= ts && ts <= last;
    // the earliest complete or exit in it; complete first on a tie
    let terminal = live
        .iter()
        .filter(|e| matches!(e.act, Act::Complete | Act::Exit))
        .filter(|e| inside(e.ts))
        .map(|e| (e.ts, e.act != Act::Complete, e.act))
        .min();
    let end = terminal.map_or(last, |t| t.0);
    let state = match terminal {
        Some((_, _, Act::Complete)) => "completed",
        Some(_) => "exited",
        None if alive && !quiet => "active",
        None => "timed_out",
    };
    let reader = live
        .iter()
        .min_by_key(|e| (&e.user, &e.episode, &e.country, &e.tz, &e.arm))
        .map(|e| (*e).clone())
        .unwrap();
    let unzoned = zone_of(&reader).is_none();
    let mut s = Session {
        reader,
        start,
        dwell: end.saturating_sub(start),
        max_scroll: 0,
        scrolls: 0,
        state,
        out_of_order: Vec::new(),
        unzoned: Vec::new(),
    };
    let mut terminal_used = false;
    for e in &live {
        if unzoned {
            s.unzoned.push(hour_of(e.ts));
        }
        if !terminal_used && terminal.is_some_and(|(ts, _, act)| ts == e.ts && act == e.act) {
            terminal_used = true;
            continue;
        }
        let after =
            terminal.is_some() && (e.ts > end || matches!(e.act, Act::Complete | Act::Exit));
        if !inside(e.ts) || after {
            s.out_of_order.push(hour_of(e.ts));
        } else if let Act::Scroll(p) = e.act {
            s.max_scroll = s.max_scroll.max(p);
            s.scrolls += 1;
        }
    }
    Some(s)
}

/// Local hour bucket of the session's start in its zone.
pub fn tod(s: &Session) -> String {
    let tz: chrono_tz::Tz = zone_of(&s.reader).map_or(chrono_tz::UTC, |z| z.parse().unwrap());
    let utc = chrono::DateTime::from_timestamp_millis(s.start as i64).unwrap();
    let offset = tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
    let hour = utc.with_timezone(&offset).hour();
    match hour / 6 {
        0 => "night",
        1 => "morning",
        2 => "afternoon",
        _ => "evening",
    }
    .into()
}

pub fn ratio(a: f64, b: f64) -> Value {
    Value::float(if b > 0.0 { a / b } else { 0.0 })
}

/// A mean depth in percent from a sum of thousandths.
pub fn mean_depth(sum: u64, n: usize) -> Value {
    Value::float(if n > 0 {
        sum as f64 / n as f64 / 1000.0
    } else {
        0.0
    })
}

/// Wilson's score interval at z = Φ⁻¹(0.975).
pub fn wilson(c: i64, n: i64) -> (f64, f64) {
    let z: f64 = 1.959963984540054;
    let (n, p) = (n as f64, c as f64 / n as f64);
    let mid = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (mid - half, mid + half)
}

/// Every view at tick `at`, recomputed from the definitions.
/// Long: the definition restated in one place on purpose (DESIGN §5.2), to be checked against the spec line by line.
pub fn recount(
    events: &[(Read, Tick)],
    rejected: &[Rejected],
    metadata: &[Vec<String>],
    at: Tick,
) -> State {
    let mut by_session: BTreeMap<&str, Vec<&(Read, Tick)>> = BTreeMap::new();
    for e in events {
        by_session.entry(e.0.session.as_str()).or_default().push(e);
    }
    let sessions: Vec<Session> = by_session
        .values()
        .filter_map(|evs| session(evs, at))
        .collect();
    let genre = |episode: &str| -> String {
        metadata
            .iter()
            .find(|r| r[0] == episode)
            .map_or("unknown".into(), |r| r[2].clone())
    };
    let title = |episode: &str| -> String {
        metadata
            .iter()
            .find(|r| r[0] == episode)
            .map_or(String::new(), |r| r[1].clone())
    };
    let mut state = State::new();
    let finished = |s: &Session| s.state != "active";
    let completed = |s: &Session| s.state == "completed";
    let abandoned = |s: &Session| s.state == "exited" || s.state == "timed_out";
    // DESIGN: an early exit is an exit below 90 % depth
    let early = |s: &Session| s.state == "exited" && s.max_scroll < 90_000;
    for s in &sessions {
        let (user, episode) = (s.reader.user.as_str(), s.reader.episode.as_str());
        state.insert(
            (0, vec![s.reader.session.clone()]),
            vec![
                Value::Text(user.into()),
                Value::Text(episode.into()),
                Value::Text(s.state.into()),
                Value::Int(s.start as i64),
                Value::Int(s.dwell as i64),
                Value::float(s.max_scroll as f64 / 1000.0),
                Value::Int(s.scrolls as i64),
            ],
        );
    }
    let within = |s: &Session, days: u64| at < expiry_days(s.start, days);
    // user
    let users: BTreeSet<&str> = sessions.iter().map(|s| s.reader.user.as_str()).collect();
    for u in users {
        let mine: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.reader.user.as_str() == u)
            .collect();
        let mut values = Vec::new();
        for days in [7, 30] {
            let w: Vec<&&Session> = mine.iter().filter(|s| within(s, days)).collect();
            let fin: Vec<&&&Session> = w.iter().filter(|s| finished(s)).collect();
            let n = fin.len() as f64;
            let episodes: BTreeSet<&str> = w.iter().map(|s| s.reader.episode.as_str()).collect();
            values.extend([
                Value::Int(w.len() as i64),
                ratio(fin.iter().filter(|s| completed(s)).count() as f64, n),
                ratio(fin.iter().filter(|s| early(s)).count() as f64, n),
                ratio(fin.iter().filter(|s| abandoned(s)).count() as f64, n),
                mean_depth(fin.iter().map(|s| s.max_scroll as u64).sum(), fin.len()),
                ratio(fin.iter().map(|s| s.dwell as f64).sum(), n),
                Value::Int(episodes.len() as i64),
            ]);
        }
        let mut genres: BTreeMap<String, i64> = BTreeMap::new();
        for s in mine.iter().filter(|s| within(s, 30)) {
            *genres.entry(genre(s.reader.episode.as_str())).or_default() += 1;
        }
        if genres.is_empty() {
            continue;
        }
        let best = genres.values().max().unwrap();
        let top = genres.iter().find(|(_, n)| *n == best).unwrap().0.clone();
        values.push(Value::Text(top));
        state.insert((1, vec![u.to_string()]), values);
    }
    // episode
    let episodes: BTreeSet<&str> = sessions.iter().map(|s| s.reader.episode.as_str()).collect();
    for ep in episodes {
        let mine: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.reader.episode.as_str() == ep)
            .collect();
        if !mine.iter().any(|s| within(s, 30)) {
            continue;
        }
        let mut values = vec![Value::Text(genre(ep)), Value::Text(title(ep))];
        for days in [7, 30] {
            let w: Vec<&&Session> = mine.iter().filter(|s| within(s, days)).collect();
            let fin = w.iter().filter(|s| finished(s)).count() as f64;
            values.push(Value::Int(w.len() as i64));
            values.push(ratio(w.iter().filter(|s| completed(s)).count() as f64, fin));
        }
        let gone: Vec<&&Session> = mine
            .iter()
            .filter(|s| within(s, 30) && abandoned(s))
            .collect();
        values.push(mean_depth(
            gone.iter().map(|s| s.max_scroll as u64).sum(),
            gone.len(),
        ));
        for d in 0..10u32 {
            let n = gone
                .iter()
                .filter(|s| (s.max_scroll / 10_000).min(9) == d)
                .count();
            values.push(Value::Int(n as i64));
        }
        state.insert((2, vec![ep.to_string()]), values);
    }
    // segment
    let mut segments: BTreeMap<Vec<String>, Vec<&Session>> = BTreeMap::new();
    for s in &sessions {
        let (ep, country) = (s.reader.episode.as_str(), s.reader.country.as_str());
        segments
            .entry(vec![country.to_string(), genre(ep), tod(s)])
            .or_default()
            .push(s);
    }
    for (key, mine) in segments {
        if !mine.iter().any(|s| within(s, 30)) {
            continue;
        }
        let mut values = Vec::new();
        for days in [7, 30] {
            let w: Vec<&&Session> = mine.iter().filter(|s| within(s, days)).collect();
            let fin = w.iter().filter(|s| finished(s)).count() as f64;
            values.push(Value::Int(w.len() as i64));
            values.push(ratio(w.iter().filter(|s| completed(s)).count() as f64, fin));
        }
        state.insert((3, key), values);
    }
    // experiment: finished sessions of the last 30 days per group, against the control
    let mut arms: BTreeMap<&str, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
    for s in sessions.iter().filter(|s| within(s, 30) && finished(s)) {
        if let Some((x, g)) = &s.reader.arm {
            let e = arms
                .entry(x.as_str())
                .or_default()
                .entry(g.as_str())
                .or_default();
            e.0 += 1;
            e.1 += completed(s) as i64;
        }
    }
    for (x, groups) in arms {
        let control = if groups.contains_key("control") {
            "control"
        } else {
            groups.keys().next().unwrap()
        };
        let (n0, c0) = groups[control];
        let p0 = c0 as f64 / n0 as f64;
        for (g, (n, c)) in &groups {
            let p = *c as f64 / *n as f64;
            let (diff, lo, hi) = if *g == control {
                (0.0, 0.0, 0.0)
            } else {
                // Newcombe's hybrid score interval of the difference
                let ((l1, u1), (l0, u0)) = (wilson(*c, *n), wilson(c0, n0));
                let d = p - p0;
                let below = ((p - l1).powi(2) + (u0 - p0).powi(2)).sqrt();
                let above = ((u1 - p).powi(2) + (p0 - l0).powi(2)).sqrt();
                (d, d - below, d + above)
            };
            state.insert(
                (4, vec![x.to_string(), g.to_string()]),
                vec![
                    Value::Int(*n),
                    Value::Int(*c),
                    Value::float(p),
                    Value::Text(control.into()),
                    Value::float(diff),
                    Value::float(lo),
                    Value::float(hi),
                    Value::Int((lo > 0.0 || hi < 0.0) as i64),
                ],
            );
        }
    }
    // quality per hour: rejections and out-of-order events, each for 30 days after its hour
    let mut hours: BTreeMap<u64, [i64; 6]> = BTreeMap::new();
    for r in rejected {
        let h = hour_of(r.ts);
        if r.tick <= at && at < expiry_days(h, 30) && expiry_days(h, 30) > r.tick {
            hours.entry(h).or_default()[r.kind] += 1;
        }
    }
    for s in &sessions {
        for (kind, hs) in [(OUT_OF_ORDER, &s.out_of_order), (UNZONED, &s.unzoned)] {
            for h in hs {
                if at < expiry_days(*h, 30) {
                    hours.entry(*h).or_default()[kind] += 1;
                }
            }
        }
    }
    for (h, counts) in hours {
        if counts.iter().all(|n| *n == 0) {
            continue;
        }
        let key = chrono::DateTime::from_timestamp_millis(h as i64)
            .unwrap()
            .format("%Y-%m-%dT%H")
            .to_string();
        state.insert(
            (5, vec![key]),
            counts.iter().map(|n| Value::Int(*n)).collect(),
        );
    }
    state
}
