//! `assist_click_rate`: the share of autocomplete selects followed by a click in the same
//! session within 10 minutes (a join of selects and clicks).

use differential_dataflow::VecCollection;

use crate::contract::event::Timed;
use crate::contract::state::State;
use crate::contract::time::{Tick, WINDOW_7D};
use crate::operators::windowed::contributions;

use super::*;

impl Search {
    /// Selects followed by a click of the same session within `assist_window_ms`.
    ///
    /// Both sides live for the select's 7-day window (a click lives as long as any select it
    /// can assist), so the joined pair holds exactly while the select counts.
    pub(super) fn assisted_selects<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<SearchEvent>>,
        state: &State,
    ) -> VecCollection<'s, Tick, (Entity, Measure)> {
        let selects = contributions(state, events.clone(), |e: &Timed<SearchEvent>| {
            match &e.event {
                SearchEvent::AcSelect { session, prefix } => Some((
                    (session.clone(), (e.ts, prefix.clone())),
                    1,
                    Some(WINDOW_7D.expiry(e.ts)),
                )),
                _ => None,
            }
        });
        let clicks = contributions(state, events, |e: &Timed<SearchEvent>| match &e.event {
            SearchEvent::Click { session, .. } => {
                Some(((session.clone(), e.ts), 1, Some(WINDOW_7D.expiry(e.ts))))
            }
            _ => None,
        })
        .distinct();
        let within = self.config.assist_window_ms;
        let matched = selects
            .clone()
            .join(clicks)
            .filter(move |(_, ((select_ts, _), click_ts))| {
                *click_ts >= *select_ts && *click_ts - *select_ts <= within
            })
            .map(|(session, ((select_ts, prefix), _))| ((session, select_ts, prefix), ()))
            .distinct()
            .map(|(select, ())| select);
        selects
            .map(|(session, (ts, prefix))| ((session, ts, prefix), ()))
            .semijoin(matched)
            .map(|((_, _, prefix), ())| (Entity::Prefix(prefix), Measure::AssistedSelects))
    }
}
