//! Webtoon reading: sessions with their completion/exit state, and features per session,
//! user, episode, segment (country × genre × local time of day), A/B experiment group and
//! data-quality hour (DESIGN §5.2, seed 001).
//!
//! A session is a function of its events, not of their arrival order: one `reduce` per
//! session id rebuilds it from the events it holds and from "alive" markers that expire
//! `session_timeout_ms` after each event, so a session without a `complete` or `exit`
//! turns `timed_out` when stream time passes its last event plus the timeout. Sessions
//! then contribute to windowed sums by their start time, like events do in `search`;
//! a changed session retracts its old contributions, so every sum stays exact.

mod decode;
pub mod generate;

use chrono::{Offset, TimeZone, Timelike};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::dimension::{DimRow, DimensionSpec};
use crate::features::{float, int, text, FeatureRow, SinkKind, TableSpec, Value};
use crate::ingest::{Rejected, Rejection, Timed};
use crate::record::{DecodeError, ErrorKind, RecordRef};
use crate::state::State;
use crate::time::{Span, Tick, Window, HOUR, MINUTE, WINDOW_30D};
use crate::windowed::{contributions, derived_contributions};
use crate::{Dataflow, GenerateSpec, Produced};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub String);
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub String);
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpisodeId(pub String);

/// What a reader did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Enter,
    /// Scroll depth in percent, 0..=100.
    Scroll(u8),
    Complete,
    Exit,
}

/// An A/B experiment and the group the reader is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Arm {
    pub experiment: String,
    pub group: String,
}

/// Who reads what, where: the same on every event of a session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reader {
    pub user: UserId,
    pub episode: EpisodeId,
    pub country: String,
    pub device: String,
    pub platform: String,
    /// IANA zone: the event's `tz`, else the country's main zone, else UTC.
    pub tz: String,
    pub arm: Option<Arm>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadingEvent {
    pub session: SessionId,
    pub action: Action,
    pub reader: Reader,
}

/// `[dataflows.reading]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadingConfig {
    pub topic: String,
    /// A session without events for this long (stream time) is `timed_out`.
    pub session_timeout_ms: u64,
    /// An exit (or timeout) below this depth is an early exit.
    pub early_exit_pct: u8,
    /// The Postgres table of episode metadata.
    pub metadata_table: String,
    /// The group others are compared with; when an experiment has none by this name, its
    /// first group by name.
    pub control_group: String,
}

impl Default for ReadingConfig {
    fn default() -> Self {
        ReadingConfig {
            topic: "reading-events".into(),
            session_timeout_ms: 30 * MINUTE,
            early_exit_pct: 90,
            metadata_table: "episode_metadata".into(),
            control_group: "control".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Reading {
    config: ReadingConfig,
}

/// Session events are kept this long after their event time: past the 30-day windows by
/// more than any session lasts, so a session leaves every window before it starts to fade.
pub const SESSION_RETENTION: Window = Window::days(31);

/// How long a session remembers that it had an event: once any event has left retention,
/// the session is gone (and does not come back with a later start), as long as its events
/// span less than this minus the retention.
pub const SESSION_MEMORY: Window = Window::days(62);

/// Table indices, in `tables()` order.
pub const SESSION: u8 = 0;
pub const USER: u8 = 1;
pub const EPISODE: u8 = 2;
pub const SEGMENT: u8 = 3;
pub const EXPERIMENT: u8 = 4;
pub const QUALITY: u8 = 5;

/// The state of a session (DESIGN §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SessionState {
    Active,
    Completed,
    Exited,
    TimedOut,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Completed => "completed",
            SessionState::Exited => "exited",
            SessionState::TimedOut => "timed_out",
        }
    }
    fn finished(self) -> bool {
        self != SessionState::Active
    }
    /// Ended without completing.
    fn abandoned(self) -> bool {
        matches!(self, SessionState::Exited | SessionState::TimedOut)
    }
}

/// What the session `reduce` reads: the session's events, its reader, and one alive
/// marker per event until the timeout after it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Piece {
    Event {
        ts: u64,
        action: Action,
    },
    Reader(Reader),
    Alive,
    /// One per event, outliving it: more of these than events means one has expired.
    Had,
}

/// A reading session as its events define it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub reader: Reader,
    /// The `enter`'s event time, else the earliest event's.
    pub start: u64,
    pub dwell_ms: u64,
    pub max_scroll_pct: u8,
    pub scroll_events: u64,
    pub state: SessionState,
    /// Events before the `enter` or after the `complete`/`exit`: (hour, count).
    pub out_of_order: Vec<(u64, u64)>,
}

/// Local time of day of an instant in a zone: night 0–6, morning 6–12, afternoon 12–18,
/// evening 18–24.
pub fn time_of_day(ts: u64, tz: &str) -> &'static str {
    let zone: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::UTC);
    let utc = chrono::DateTime::from_timestamp_millis(ts as i64).unwrap_or_default();
    let offset = zone.offset_from_utc_datetime(&utc.naive_utc()).fix();
    match utc.with_timezone(&offset).hour() {
        0..6 => "night",
        6..12 => "morning",
        12..18 => "afternoon",
        _ => "evening",
    }
}

/// The main zone of a country (ISO 3166 alpha-2) when an event names none.
pub fn country_zone(country: &str) -> &'static str {
    match country {
        "KR" => "Asia/Seoul",
        "JP" => "Asia/Tokyo",
        "TW" => "Asia/Taipei",
        "TH" => "Asia/Bangkok",
        "ID" => "Asia/Jakarta",
        "VN" => "Asia/Ho_Chi_Minh",
        "PH" => "Asia/Manila",
        "CN" => "Asia/Shanghai",
        "IN" => "Asia/Kolkata",
        "US" => "America/New_York",
        "CA" => "America/Toronto",
        "MX" => "America/Mexico_City",
        "BR" => "America/Sao_Paulo",
        "GB" => "Europe/London",
        "FR" => "Europe/Paris",
        "DE" => "Europe/Berlin",
        "ES" => "Europe/Madrid",
        "IT" => "Europe/Rome",
        "AU" => "Australia/Sydney",
        _ => "UTC",
    }
}

/// `YYYY-MM-DDTHH` (UTC) of the hour `ts` falls in.
pub fn hour_key(hour_start: u64) -> String {
    chrono::DateTime::from_timestamp_millis(hour_start as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H")
        .to_string()
}

impl Session {
    /// The session its pieces define, or `None` when no event is left.
    fn of(id: &SessionId, pieces: &[(&Piece, isize)]) -> Option<Session> {
        let mut events: Vec<(u64, Action, u64)> = Vec::new();
        let (mut alive, mut reader, mut had) = (false, None::<&Reader>, 0);
        for (piece, n) in pieces {
            match piece {
                Piece::Event { ts, action } if *n > 0 => events.push((*ts, *action, *n as u64)),
                Piece::Had => had += *n,
                // a session's events agree on their reader; if not, the least one wins
                Piece::Reader(r) if *n > 0 => reader = Some(reader.map_or(r, |x| x.min(r))),
                Piece::Alive if *n > 0 => alive = true,
                _ => {}
            }
        }
        let held: u64 = events.iter().map(|(_, _, n)| n).sum();
        if (held as isize) < had {
            return None;
        }
        let reader = reader?.clone();
        let enter = events
            .iter()
            .filter(|(_, a, _)| *a == Action::Enter)
            .map(|(ts, _, _)| *ts)
            .min();
        let start = enter.or_else(|| events.iter().map(|(ts, _, _)| *ts).min())?;
        // the first terminal event at or after the enter ends the session; complete wins
        // a tie
        let terminal = events
            .iter()
            .filter(|(ts, _, _)| enter.is_none_or(|e| *ts >= e))
            .filter_map(|(ts, a, _)| match a {
                Action::Complete => Some((*ts, 0, *a)),
                Action::Exit => Some((*ts, 1, *a)),
                _ => None,
            })
            .min()
            .map(|(ts, _, a)| (ts, a));
        let end = match terminal {
            Some((ts, _)) => ts,
            None => events.iter().map(|(ts, _, _)| *ts).max().unwrap_or(start),
        };
        let state = match terminal {
            Some((_, Action::Complete)) => SessionState::Completed,
            Some(_) => SessionState::Exited,
            None if alive => SessionState::Active,
            None => SessionState::TimedOut,
        };
        let mut session = Session {
            id: id.clone(),
            reader,
            start,
            dwell_ms: end.saturating_sub(start),
            max_scroll_pct: 0,
            scroll_events: 0,
            state,
            out_of_order: Vec::new(),
        };
        for &(ts, action, n) in &events {
            // the terminal event itself (one copy) is the session's end
            let copies = n - u64::from(terminal == Some((ts, action)));
            if copies == 0 {
                continue;
            }
            let ends = matches!(action, Action::Complete | Action::Exit);
            let before = enter.is_some_and(|e| ts < e);
            let after = terminal.is_some() && (ts > end || ends);
            if before || after {
                let hour = ts - ts % HOUR;
                match session.out_of_order.iter_mut().find(|(h, _)| *h == hour) {
                    Some((_, c)) => *c += copies,
                    None => session.out_of_order.push((hour, copies)),
                }
            } else if let Action::Scroll(pct) = action {
                session.max_scroll_pct = session.max_scroll_pct.max(pct);
                session.scroll_events += copies;
            }
        }
        session.out_of_order.sort();
        Some(session)
    }

    /// What the windowed views read of a session. A scroll in an active session changes
    /// nothing here, so it costs the views nothing: only a new or a finished session does.
    fn summary(&self) -> Session {
        let finished = self.state.finished();
        Session {
            id: SessionId(String::new()),
            dwell_ms: if finished { self.dwell_ms } else { 0 },
            max_scroll_pct: if finished { self.max_scroll_pct } else { 0 },
            scroll_events: 0,
            ..self.clone()
        }
    }

    fn row(&self) -> FeatureRow {
        FeatureRow {
            table: SESSION,
            key: vec![self.id.0.clone()],
            values: vec![
                Value::Text(self.reader.user.0.clone()),
                Value::Text(self.reader.episode.0.clone()),
                Value::Text(self.state.as_str().into()),
                Value::Int(self.start as i64),
                Value::Int(self.dwell_ms as i64),
                Value::Int(self.max_scroll_pct as i64),
                Value::Int(self.scroll_events as i64),
            ],
        }
    }
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
    Segment(String, String, String),
    Experiment(String),
    /// The start of an hour (UTC, epoch ms).
    Quality(u64),
}

/// What a contribution adds to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    Sessions(Span),
    Finished(Span),
    Completed(Span),
    EarlyExits(Span),
    DepthSum(Span),
    DwellSum(Span),
    /// One per (window, episode) a user read: their number is `distinct_episodes`.
    Read(Span, EpisodeId),
    GenreSessions(String),
    Abandoned,
    ExitDepthSum,
    ExitDecile(u8),
    Meta(EpisodeMeta),
    GroupFinished(String),
    GroupCompleted(String),
    Null,
    Duplicate,
    OutOfOrder,
    OutOfRange,
    Malformed,
}

const SPANS: [Span; 2] = [Span::D7, Span::D30];

impl Reading {
    /// What one session (with its episode's genre) adds to which sums, until when.
    fn session_contributions(
        &self,
        (s, genre): &(Session, String),
    ) -> Vec<((Entity, Measure), isize, Option<Tick>)> {
        use Measure::*;
        let mut out = Vec::new();
        let r = &s.reader;
        let user = Entity::User(r.user.clone());
        let episode = Entity::Episode(r.episode.clone());
        let tod = time_of_day(s.start, &r.tz);
        let segment = Entity::Segment(r.country.clone(), genre.clone(), tod.to_string());
        let finished = s.state.finished() as isize;
        let completed = (s.state == SessionState::Completed) as isize;
        let abandoned = s.state.abandoned();
        let early = (abandoned && s.max_scroll_pct < self.config.early_exit_pct) as isize;
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
            add(&user, DepthSum(span), finished * s.max_scroll_pct as isize);
            add(&user, DwellSum(span), finished * s.dwell_ms as isize);
            add(&user, Read(span, r.episode.clone()), 1);
            add(&episode, Sessions(span), 1);
            add(&episode, Finished(span), finished);
            add(&episode, Completed(span), completed);
            add(&segment, Sessions(span), 1);
            add(&segment, Finished(span), finished);
            add(&segment, Completed(span), completed);
            if span == Span::D30 {
                add(&user, GenreSessions(genre.clone()), 1);
                if abandoned {
                    let depth = s.max_scroll_pct;
                    add(&episode, Abandoned, 1);
                    add(&episode, ExitDepthSum, depth as isize);
                    add(&episode, ExitDecile((depth / 10).min(9)), 1);
                }
                if let Some(arm) = &r.arm {
                    let e = Entity::Experiment(arm.experiment.clone());
                    add(&e, GroupFinished(arm.group.clone()), finished);
                    add(&e, GroupCompleted(arm.group.clone()), completed);
                }
            }
        }
        for (hour, n) in &s.out_of_order {
            out.push((
                (Entity::Quality(*hour), OutOfOrder),
                *n as isize,
                Some(WINDOW_30D.expiry(*hour)),
            ));
        }
        out
    }

    /// The rows of one entity from its sums; none when every windowed sum is zero.
    pub fn rows(&self, entity: &Entity, sums: &[(&Measure, isize)]) -> Vec<FeatureRow> {
        use Measure::*;
        let sum = |m: &Measure| {
            sums.iter()
                .find(|(k, _)| *k == m)
                .map_or(0, |(_, n)| *n as i64)
        };
        let ratio = |a: i64, b: i64| Value::float(if b > 0 { a as f64 / b as f64 } else { 0.0 });
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
                        ratio(sum(&DepthSum(span)), finished),
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
                    .map_or(String::new(), |(_, g)| g.clone());
                values.push(Value::Text(top));
                vec![FeatureRow {
                    table: USER,
                    key: vec![user.0.clone()],
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
                values.push(ratio(sum(&ExitDepthSum), sum(&Abandoned)));
                values.extend((0..10).map(|d| Value::Int(sum(&ExitDecile(d)))));
                vec![FeatureRow {
                    table: EPISODE,
                    key: vec![episode.0.clone()],
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
                    key: vec![country.clone(), genre.clone(), tod.clone()],
                    values,
                }]
            }
            Entity::Experiment(name) => self.experiment_rows(name, sums),
            Entity::Quality(hour) => vec![FeatureRow {
                table: QUALITY,
                key: vec![hour_key(*hour)],
                values: [Null, Duplicate, OutOfOrder, OutOfRange, Malformed]
                    .iter()
                    .map(|m| Value::Int(sum(m)))
                    .collect(),
            }],
        }
    }

    /// Per group: finished sessions, completions, the rate, and against the control group
    /// the difference of rates with its 95 % confidence interval (unpooled two-proportion
    /// z: `d ± 1.96 · sqrt(p1(1−p1)/n1 + p0(1−p0)/n0)`).
    fn experiment_rows(&self, name: &str, sums: &[(&Measure, isize)]) -> Vec<FeatureRow> {
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

/// A group's completion rate against the control's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbTest {
    pub rate: f64,
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The 97.5 % quantile of the standard normal distribution.
pub const Z_95: f64 = 1.959963984540054;

impl AbTest {
    /// `(completions, sessions)` of a group and of the control.
    pub fn of((c1, n1): (i64, i64), (c0, n0): (i64, i64)) -> Self {
        let p = |c: i64, n: i64| if n > 0 { c as f64 / n as f64 } else { 0.0 };
        let (p1, p0) = (p(c1, n1), p(c0, n0));
        let var = |p: f64, n: i64| if n > 0 { p * (1.0 - p) / n as f64 } else { 0.0 };
        let diff = p1 - p0;
        let half = Z_95 * (var(p1, n1) + var(p0, n0)).sqrt();
        AbTest {
            rate: p1,
            diff,
            ci_low: diff - half,
            ci_high: diff + half,
        }
    }
    /// The control against itself: no difference, no interval.
    pub fn control((c, n): (i64, i64)) -> Self {
        AbTest {
            rate: if n > 0 { c as f64 / n as f64 } else { 0.0 },
            diff: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
        }
    }
    /// The interval leaves out zero.
    pub fn significant(&self) -> bool {
        self.ci_low > 0.0 || self.ci_high < 0.0
    }
}

/// What a rejected record adds to its hour's quality counts.
fn quality_of(r: &Rejection) -> ((Entity, Measure), isize, Option<Tick>) {
    let measure = match &r.reason {
        Rejected::Duplicate => Measure::Duplicate,
        Rejected::Invalid(ErrorKind::MissingField) => Measure::Null,
        Rejected::Invalid(ErrorKind::Range) => Measure::OutOfRange,
        Rejected::Invalid(_) => Measure::Malformed,
    };
    let hour = r.ts - r.ts % HOUR;
    (
        (Entity::Quality(hour), measure),
        1,
        Some(WINDOW_30D.expiry(hour)),
    )
}

impl Dataflow for Reading {
    type Event = ReadingEvent;
    type Config = ReadingConfig;
    const NAME: &'static str = "reading";

    fn new(config: ReadingConfig) -> Self {
        Reading { config }
    }
    fn config(&self) -> &ReadingConfig {
        &self.config
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone()]
    }
    fn tables(&self) -> Vec<TableSpec> {
        let store = |ns, keys, fields| TableSpec {
            ns,
            keys,
            fields,
            version: 1,
            sink: SinkKind::Store,
        };
        let mut user = vec![
            int("sessions_7d"),
            float("completion_rate_7d"),
            float("early_exit_rate_7d"),
            float("avg_scroll_depth_7d"),
            float("avg_dwell_ms_7d"),
            int("distinct_episodes_7d"),
            int("sessions_30d"),
            float("completion_rate_30d"),
            float("early_exit_rate_30d"),
            float("avg_scroll_depth_30d"),
            float("avg_dwell_ms_30d"),
            int("distinct_episodes_30d"),
        ];
        user.push(text("top_genre_30d"));
        let mut episode = vec![
            text("genre"),
            text("title_id"),
            int("views_7d"),
            float("completion_rate_7d"),
            int("views_30d"),
            float("completion_rate_30d"),
            float("avg_exit_depth_30d"),
        ];
        episode.extend(
            [
                "exit_depth_0",
                "exit_depth_1",
                "exit_depth_2",
                "exit_depth_3",
                "exit_depth_4",
                "exit_depth_5",
                "exit_depth_6",
                "exit_depth_7",
                "exit_depth_8",
                "exit_depth_9",
            ]
            .map(int),
        );
        let segment = vec![
            int("sessions_7d"),
            float("completion_rate_7d"),
            int("sessions_30d"),
            float("completion_rate_30d"),
        ];
        vec![
            store(
                "session",
                vec!["session_id"],
                vec![
                    text("user_id"),
                    text("episode_id"),
                    text("state"),
                    int("started_at_ms"),
                    int("dwell_ms"),
                    int("max_scroll_pct"),
                    int("scroll_events"),
                ],
            ),
            store("user", vec!["user_id"], user),
            store("episode", vec!["episode_id"], episode),
            store("segment", vec!["country", "genre", "tod"], segment),
            store(
                "experiment",
                vec!["experiment_name", "experiment_group"],
                vec![
                    int("sessions_30d"),
                    int("completions_30d"),
                    float("completion_rate_30d"),
                    text("control_group"),
                    float("diff_vs_control"),
                    float("ci95_low"),
                    float("ci95_high"),
                    int("significant"),
                ],
            ),
            store(
                "quality_hourly",
                vec!["hour"],
                vec![
                    int("null_events"),
                    int("duplicate_events"),
                    int("out_of_order_events"),
                    int("out_of_range_events"),
                    int("malformed_events"),
                ],
            ),
        ]
    }
    fn horizon(&self) -> Window {
        SESSION_RETENTION
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        vec![DimensionSpec {
            table: self.config.metadata_table.clone(),
            columns: ["episode_id", "title_id", "genre", "episode_no"].map(String::from).into(),
            create: Some(format!(
                "CREATE TABLE IF NOT EXISTS {} (episode_id text PRIMARY KEY, title_id text NOT NULL, genre text NOT NULL, episode_no integer NOT NULL)",
                self.config.metadata_table
            )),
        }]
    }
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<ReadingEvent>, DecodeError> {
        decode::decode(record.payload)
    }
    fn keys(&self, event: &ReadingEvent, visit: &mut dyn FnMut(&'static str, &str)) {
        let r = &event.reader;
        visit("session_id", &event.session.0);
        visit("user_id", &r.user.0);
        visit("episode_id", &r.episode.0);
        visit("country", &r.country);
        if let Some(arm) = &r.arm {
            visit("experiment_name", &arm.experiment);
            visit("experiment_group", &arm.group);
        }
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<ReadingEvent>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let timeout = Window {
            length_ms: self.config.session_timeout_ms,
        };
        let pieces = contributions(state, events, move |e: &Timed<ReadingEvent>| {
            let (s, kept) = (&e.event.session, Some(SESSION_RETENTION.expiry(e.ts)));
            [
                (
                    (
                        s.clone(),
                        Piece::Event {
                            ts: e.ts,
                            action: e.event.action,
                        },
                    ),
                    1,
                    kept,
                ),
                ((s.clone(), Piece::Reader(e.event.reader.clone())), 1, kept),
                ((s.clone(), Piece::Alive), 1, Some(timeout.expiry(e.ts))),
                (
                    (s.clone(), Piece::Had),
                    1,
                    Some(SESSION_MEMORY.expiry(e.ts)),
                ),
            ]
        });
        let sessions = pieces.reduce_named("Sessions", move |id, pieces, out| {
            if let Some(s) = Session::of(id, pieces) {
                out.push((s, 1));
            }
        });
        let session_rows = sessions.clone().map(|(_, s)| s.row());

        let metadata = dimensions[0].clone().map(|row| {
            let meta = EpisodeMeta {
                title: row[1].clone(),
                genre: row[2].clone(),
            };
            (EpisodeId(row[0].clone()), meta)
        });
        let by_episode = sessions.map(|(_, s)| (s.reader.episode.clone(), s.summary()));
        let known = by_episode.clone().join_map(metadata.clone(), |_, s, meta| {
            (s.clone(), meta.genre.clone())
        });
        let unknown = by_episode
            .antijoin(metadata.clone().map(|(e, _)| e).distinct())
            .map(|(_, s)| (s, UNKNOWN_GENRE.to_string()));
        let this = self.clone();
        // sessions are rebuilt from their restored events: their contributions are not
        // checkpointed themselves
        let sums = derived_contributions(known.concat(unknown), move |s| {
            this.session_contributions(s)
        })
        .concat(metadata.map(|(e, meta)| (Entity::Episode(e), Measure::Meta(meta))))
        .concat(contributions(state, rejected, |r| Some(quality_of(r))))
        .consolidate_stream();
        let this = self.clone();
        sums.reduce_named("ReadingFeatures", move |entity, measures, out| {
            for row in this.rows(entity, measures) {
                out.push((row, 1));
            }
        })
        .map(|(_, row)| row)
        .concat(session_rows)
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::ReadingTraffic::new(
            self.config.topic.clone(),
            spec.clone(),
        ))
    }
    fn dimension_rows(&self, _spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        vec![(self.dimensions().remove(0), generate::episode_metadata())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_follows_the_zone() {
        // 2026-01-01T00:30:00Z: 09:30 in Seoul, 19:30 the day before in New York
        let ts = 1_767_227_400_000;
        assert_eq!(time_of_day(ts, "Asia/Seoul"), "morning");
        assert_eq!(time_of_day(ts, "America/New_York"), "evening");
        assert_eq!(time_of_day(ts, "UTC"), "night");
        assert_eq!(time_of_day(ts + 12 * HOUR, "UTC"), "afternoon");
        assert_eq!(hour_key(ts - ts % HOUR), "2026-01-01T00");
    }

    #[test]
    fn the_interval_matches_a_textbook_computation() {
        // 520 of 1000 against 470 of 1000: d = 0.05, se = sqrt(.52·.48/1000 + .47·.53/1000)
        let ab = AbTest::of((520, 1000), (470, 1000));
        let se = ((0.52 * 0.48 + 0.47 * 0.53) / 1000.0f64).sqrt();
        assert!((ab.diff - 0.05).abs() < 1e-12);
        assert!((ab.ci_low - (0.05 - 1.96 * se)).abs() < 1e-4);
        assert!((ab.ci_high - (0.05 + 1.96 * se)).abs() < 1e-4);
        assert!((se - 0.022_330).abs() < 1e-5, "{se}");
        assert!(ab.significant());
        assert!(!AbTest::of((48, 100), (47, 100)).significant());
    }
}
