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
use crate::operators::window_sums::window_diff;
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
        window_diff("viewers", state, seen, none, move |user, old, new, give| {
            this.viewer_diff(user, old, new, give)
        })
    }

    /// What changed in a viewer's rows and pairs from their watches `old` to `new` (each
    /// in event-time order). The two are walked together; where they differ, each side's
    /// history is found by looking back to its last `history_size` distinct items, and the
    /// pairs of each watch are compared until both histories agree again at a watch both
    /// hold. So the pairs built and compared for a watch at the end, or one leaving at the
    /// start, are about the history's size; the walk itself still compares the viewer's
    /// watches once (as `window_sums` copies them), which a viewer with thousands of
    /// watches in the window pays at each tick that changes them.
    fn viewer_diff(
        &self,
        user: &UserId,
        old: &[(Seen, isize)],
        new: &[(Seen, isize)],
        give: &mut dyn FnMut(ViewerOut, isize),
    ) {
        use std::cmp::Ordering::*;
        let size = self.config.history_size;
        let (old, new) = (positive(old), positive(new));
        let (mut i, mut j, mut synced) = (0, 0, true);
        let (mut was, mut now): (Vec<&ItemId>, Vec<&ItemId>) = (Vec::new(), Vec::new());
        while i < old.len() || j < new.len() {
            let order = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => a.0.cmp(b.0),
                (Some(_), None) => Less,
                _ => Greater,
            };
            if synced && order == Equal && old[i].1 == new[j].1 {
                (i, j) = (i + 1, j + 1);
                continue;
            }
            if synced {
                was = history_before(&old, i, size);
                now = history_before(&new, j, size);
                synced = false;
            }
            match order {
                Less => {
                    let (w, n) = old[i];
                    pairs(w, n, was.iter().copied(), -1, give);
                    remember(&mut was, &w.item, size);
                    i += 1;
                }
                Greater => {
                    let (w, n) = new[j];
                    pairs(w, n, now.iter().copied(), 1, give);
                    remember(&mut now, &w.item, size);
                    j += 1;
                }
                Equal => {
                    let (w, (a, b)) = (old[i].0, (old[i].1, new[j].1));
                    if a != b {
                        pairs(w, a, was.iter().copied(), -1, give);
                        pairs(w, b, now.iter().copied(), 1, give);
                    } else {
                        let gone = was.iter().copied().filter(|e| !now.contains(e));
                        pairs(w, a, gone, -1, give);
                        let came = now.iter().copied().filter(|e| !was.contains(e));
                        pairs(w, b, came, 1, give);
                    }
                    remember(&mut was, &w.item, size);
                    remember(&mut now, &w.item, size);
                    (i, j) = (i + 1, j + 1);
                    synced = was == now;
                }
            }
        }
        // in step at the end: the same last watch and history, so the same rows
        if !synced {
            rows_of(user, &was, old.last().map(|(w, _)| *w), -1, give);
            rows_of(user, &now, new.last().map(|(w, _)| *w), 1, give);
        }
    }
}

/// The watches counted at least once.
fn positive(s: &[(Seen, isize)]) -> Vec<(&Seen, isize)> {
    s.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(w, n)| (w, *n))
        .collect()
}

/// The distinct items of the watches before `at`, newest first, at most `size`: the
/// history of the watch at `at`.
fn history_before<'a>(seq: &[(&'a Seen, isize)], at: usize, size: usize) -> Vec<&'a ItemId> {
    let mut out: Vec<&ItemId> = Vec::with_capacity(size + 1);
    for (w, _) in seq[..at].iter().rev() {
        if out.len() == size {
            break;
        }
        if !out.contains(&&w.item) {
            out.push(&w.item);
        }
    }
    out
}

/// The history after watching `item`.
fn remember<'a>(recent: &mut Vec<&'a ItemId>, item: &'a ItemId, size: usize) {
    recent.retain(|e| *e != item);
    recent.insert(0, item);
    recent.truncate(size);
}

/// The pairs watch `w` (counted `n` times) makes with the `earlier` items, given with `sign`.
fn pairs<'a>(
    w: &Seen,
    n: isize,
    earlier: impl Iterator<Item = &'a ItemId>,
    sign: isize,
    give: &mut dyn FnMut(ViewerOut, isize),
) {
    for e in earlier.filter(|e| **e != w.item) {
        let pair = ViewerOut::Pair {
            ts: w.ts,
            id: w.id,
            item: w.item.clone(),
            earlier: e.clone(),
            weight: w.weight as isize * n,
        };
        give(pair, sign);
    }
}

/// A viewer's `user_history` and `viewer` rows, given with `sign`; none without a watch.
fn rows_of(
    user: &UserId,
    recent: &[&ItemId],
    last: Option<&Seen>,
    sign: isize,
    give: &mut dyn FnMut(ViewerOut, isize),
) {
    let Some(last) = last else {
        return;
    };
    let ids: Vec<&str> = recent.iter().map(|i| i.0.as_str()).collect();
    let key = vec![user.0.to_string()];
    let history = FeatureRow {
        table: USER_HISTORY,
        key: key.clone(),
        values: vec![Value::Text(
            serde_json::to_string(&ids).expect("strings serialise"),
        )],
    };
    give(ViewerOut::Row(history), sign);
    let viewer = FeatureRow {
        table: VIEWER,
        key,
        values: vec![Value::Int(recent.len() as i64), Value::Int(last.ts as i64)],
    };
    give(ViewerOut::Row(viewer), sign);
}
