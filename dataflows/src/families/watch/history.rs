//! A viewer as a function of their watches in the co-visitation window: the history
//! (`user_history`, `viewer`) and each watch's co-visited pairs.
//!
//! A watch's history is the viewer's distinct items most recently watched before it, by
//! event time (ties by event id), newest first, at most `history_size`, among the watches
//! still in the window; the watch adds its weight to the pair of its item and each other
//! item of that history. So a late watch sees the history its event time had — the
//! watches before it, wherever they arrived — and the watches after it see it in theirs:
//! the pairs depend on the events alone, never on their arrival order. A pair counts while
//! both of its watches are in the window (the earlier one leaves first).

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::operator::empty;

use crate::contract::event::{EventId, Timed};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, Value};
use crate::contract::time::Tick;
use crate::operators::window_sums::window_map;
use crate::operators::windowed::with_expiries;

use super::table::{USER_HISTORY, VIEWER};
use super::*;

/// One watch as the viewer keeps it, in event-time order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seen {
    pub ts: u64,
    pub id: EventId,
    pub item: ItemId,
    pub weight: u32,
}

/// What a viewer makes: their rows, and one record per (watch, earlier item) pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViewerOut {
    Row(FeatureRow),
    Pair {
        ts: u64,
        id: EventId,
        /// The watch's item.
        item: ItemId,
        /// An item of its history.
        earlier: ItemId,
        weight: isize,
    },
}

impl Watches {
    /// Each viewer's rows and pairs, rebuilt by [`window_map`] at every tick that changes
    /// the viewer's watches in the window.
    pub(super) fn viewers<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<WatchEvent>>,
        state: &State,
    ) -> VecCollection<'s, Tick, ViewerOut> {
        let window = self.co_visitation_window();
        let this = self.clone();
        let seen = with_expiries(events, move |e: &Timed<WatchEvent>| match &e.event {
            WatchEvent::Watch(w) => Some((
                (
                    w.user.clone(),
                    Seen {
                        ts: e.ts,
                        id: e.id,
                        item: w.item.clone(),
                        weight: this.signal(w).1,
                    },
                ),
                1,
                Some(window.expiry(e.ts)),
            )),
            WatchEvent::Impression(_) => None,
        });
        let this = self.clone();
        // viewers have no pieces derived from other state
        let none = empty(seen.scope());
        window_map("viewers", state, seen, none, move |user, seen, out| {
            this.viewer(user, seen, out)
        })
    }

    /// A viewer's rows and pairs from their watches in the window, in event-time order.
    fn viewer(&self, user: &UserId, seen: &[(Seen, isize)], out: &mut Vec<ViewerOut>) {
        let size = self.config.history_size;
        let mut recent: Vec<&ItemId> = Vec::with_capacity(size + 1);
        let mut last_ts = None;
        for (watch, n) in seen.iter().filter(|(_, n)| *n > 0) {
            let Seen { ts, id, item, .. } = watch;
            let weight = watch.weight as isize * *n;
            for earlier in recent.iter().filter(|e| **e != item) {
                out.push(ViewerOut::Pair {
                    ts: *ts,
                    id: *id,
                    item: item.clone(),
                    earlier: (*earlier).clone(),
                    weight,
                });
            }
            recent.retain(|e| *e != item);
            recent.insert(0, item);
            recent.truncate(size);
            last_ts = Some(*ts);
        }
        let Some(last_ts) = last_ts else {
            return;
        };
        let ids: Vec<&str> = recent.iter().map(|i| i.0.as_str()).collect();
        let key = vec![user.0.to_string()];
        out.push(ViewerOut::Row(FeatureRow {
            table: USER_HISTORY,
            key: key.clone(),
            values: vec![Value::Text(
                serde_json::to_string(&ids).expect("strings serialise"),
            )],
        }));
        out.push(ViewerOut::Row(FeatureRow {
            table: VIEWER,
            key,
            values: vec![Value::Int(recent.len() as i64), Value::Int(last_ts as i64)],
        }));
    }
}
