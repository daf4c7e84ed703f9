//! A session as a function of its events: its pieces, their retention, and the state
//! they add up to.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::event::Timed;
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::{Tick, Window, HOUR};
use crate::operators::window_sums::window_map;
use crate::operators::windowed::with_expiries;
use timely::dataflow::operators::generic::operator::empty;

use super::*;

/// Session events are kept this long after their event time: past the 30-day windows by
/// more than any session lasts, so a session leaves every window before it starts to fade.
pub const SESSION_RETENTION: Window = Window::days(31);

/// How long a session remembers that it had an event: once any event has left retention,
/// the session is gone (and does not come back with a later start), as long as its events
/// span less than this minus the retention.
pub const SESSION_MEMORY: Window = Window::days(62);

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
    pub(super) fn finished(self) -> bool {
        self != SessionState::Active
    }
    /// Ended without completing.
    pub(super) fn abandoned(self) -> bool {
        matches!(self, SessionState::Exited | SessionState::TimedOut)
    }
}

/// What the session `reduce` reads: the session's events, its reader, and one alive
/// marker per event until the timeout after it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(super) enum Piece {
    Event {
        ts: u64,
        action: Action,
    },
    /// Boxed: every piece of every pending update is as large as the largest variant, and
    /// the buckets' merges move them (a reader inline made each piece ~240 bytes).
    Reader(Box<Reader>),
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
    pub max_scroll: Depth,
    pub scroll_events: u64,
    pub state: SessionState,
    /// Events before the `enter`, after the `complete`/`exit`, or after the session went
    /// quiet for the timeout: (hour, count).
    pub out_of_order: Vec<(u64, u64)>,
    /// Events of a reader whose country has no known zone and that name none: (hour, count).
    pub unzoned: Vec<(u64, u64)>,
}

/// Adds `n` to `hour`'s count.
fn count_in(hours: &mut Vec<(u64, u64)>, ts: u64, n: u64) {
    let hour = ts - ts % HOUR;
    match hours.iter_mut().find(|(h, _)| *h == hour) {
        Some((_, c)) => *c += n,
        None => hours.push((hour, n)),
    }
}

impl Session {
    /// The session its pieces define, or `None` when no event is left. `timeout` ends it:
    /// an event at or after the previous one's timeout (by event time) is not part of it.
    /// Long: the definition of DESIGN §5.2 in one place (start, span, terminal, state, counts).
    pub(super) fn of(
        id: &SessionId,
        pieces: &[(Piece, isize)],
        timeout: Window,
    ) -> Option<Session> {
        let mut events: Vec<(u64, Action, u64)> = Vec::new();
        let (mut alive, mut reader, mut had) = (false, None::<&Reader>, 0);
        for (piece, n) in pieces {
            match piece {
                Piece::Event { ts, action } if *n > 0 => events.push((*ts, *action, *n as u64)),
                Piece::Had => had += *n,
                // a session's events agree on their reader; if not, the least one wins
                Piece::Reader(r) if *n > 0 => reader = Some(reader.map_or(&**r, |x| x.min(&**r))),
                Piece::Alive if *n > 0 => alive = true,
                _ => {}
            }
        }
        let held: u64 = events.iter().map(|(_, _, n)| n).sum();
        if (held as isize) < had {
            return None;
        }
        let reader = reader?.clone();
        events.sort();
        let enter = events
            .iter()
            .filter(|(_, a, _)| *a == Action::Enter)
            .map(|(ts, _, _)| *ts)
            .min();
        let start = enter.or_else(|| events.first().map(|(ts, _, _)| *ts))?;
        // the session's events run from the start to the first silence of the timeout
        let mut last = start;
        let mut quiet = false;
        for &(ts, _, _) in events.iter().filter(|(ts, _, _)| *ts >= start) {
            if ts >= timeout.expiry(last) {
                quiet = true;
                break;
            }
            last = ts;
        }
        let within = |ts: u64| ts >= start && ts <= last;
        // the first terminal event in it ends the session; complete wins a tie
        let terminal = events
            .iter()
            .filter(|(ts, _, _)| within(*ts))
            .filter_map(|(ts, a, _)| match a {
                Action::Complete => Some((*ts, 0, *a)),
                Action::Exit => Some((*ts, 1, *a)),
                _ => None,
            })
            .min()
            .map(|(ts, _, a)| (ts, a));
        let end = terminal.map_or(last, |(ts, _)| ts);
        let state = match terminal {
            Some((_, Action::Complete)) => SessionState::Completed,
            Some(_) => SessionState::Exited,
            None if alive && !quiet => SessionState::Active,
            None => SessionState::TimedOut,
        };
        let mut session = Session {
            id: id.clone(),
            reader,
            start,
            dwell_ms: end.saturating_sub(start),
            max_scroll: Depth::default(),
            scroll_events: 0,
            state,
            out_of_order: Vec::new(),
            unzoned: Vec::new(),
        };
        for &(ts, action, n) in &events {
            if session.reader.tz.is_none() {
                count_in(&mut session.unzoned, ts, n);
            }
            // the terminal event itself (one copy) is the session's end
            let copies = n - u64::from(terminal == Some((ts, action)));
            if copies == 0 {
                continue;
            }
            let ends = matches!(action, Action::Complete | Action::Exit);
            let after = terminal.is_some() && (ts > end || ends);
            if !within(ts) || after {
                count_in(&mut session.out_of_order, ts, copies);
            } else if let Action::Scroll(depth) = action {
                session.max_scroll = session.max_scroll.max(depth);
                session.scroll_events += copies;
            }
        }
        session.out_of_order.sort();
        session.unzoned.sort();
        Some(session)
    }

    /// What the windowed views read of a session. A scroll in an active session changes
    /// nothing here, so it costs the views nothing: only a new or a finished session does
    /// (and, for the quality view, an event out of order or without a zone).
    pub(super) fn summary(&self) -> Session {
        let finished = self.state.finished();
        Session {
            id: SessionId(Default::default()),
            dwell_ms: if finished { self.dwell_ms } else { 0 },
            max_scroll: if finished {
                self.max_scroll
            } else {
                Depth::default()
            },
            scroll_events: 0,
            ..self.clone()
        }
    }

    pub(super) fn row(&self) -> FeatureRow {
        FeatureRow {
            table: SESSION,
            key: vec![self.id.0.to_string()],
            values: vec![
                Value::Text(self.reader.user.0.to_string()),
                Value::Text(self.reader.episode.0.to_string()),
                Value::Text(self.state.as_str().into()),
                Value::Int(self.start as i64),
                Value::Int(self.dwell_ms as i64),
                Value::float(self.max_scroll.pct()),
                Value::Int(self.scroll_events as i64),
            ],
        }
    }
}

impl Reading {
    /// Each session as a function of the pieces its events leave while they are kept:
    /// the pieces are summed per session by [`window_map`] (a slot per session, updates
    /// in buckets per due tick), and a session is rebuilt only at a tick that changes one
    /// of its pieces, from its few summed pieces rather than from its history.
    pub(super) fn sessions<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<ReadingEvent>>,
        state: &State,
    ) -> VecCollection<'s, Tick, (SessionId, Session)> {
        let timeout = Window {
            length_ms: self.config.session_timeout_ms,
        };
        let pieces = with_expiries(events, move |e: &Timed<ReadingEvent>| {
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
                (
                    (s.clone(), Piece::Reader(Box::new(e.event.reader.clone()))),
                    1,
                    kept,
                ),
                ((s.clone(), Piece::Alive), 1, Some(timeout.expiry(e.ts))),
                (
                    (s.clone(), Piece::Had),
                    1,
                    Some(SESSION_MEMORY.expiry(e.ts)),
                ),
            ]
        });
        // sessions have no pieces derived from other state
        let none = empty(pieces.scope());
        window_map("sessions", state, pieces, none, move |id, pieces, out| {
            if let Some(s) = Session::of(id, pieces, timeout) {
                out.push((id.clone(), s));
            }
        })
    }
}
