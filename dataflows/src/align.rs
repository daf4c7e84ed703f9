//! Partition alignment: a partition may not run more than a skew of event time ahead of the
//! slowest partition that still has records to come (DESIGN §3).
//!
//! A worker's stream time is the largest event time it has read. Without alignment, the
//! order in which the broker hands out partitions decides how fast it moves: a small topic
//! read to its end first (quality-score updates, after a restart) moves it hours ahead, and
//! with it every decision made in stream time — the dedup horizon, too-late events, window
//! closes — so a restarted run and an uninterrupted one could disagree. Aligned, stream time
//! follows the slowest partition within the skew, whatever the interleaving.
//!
//! The slowest partition is never held back, so reading always goes on; a partition's own
//! jump (a gap in its event times) is not held back either once it is the slowest.

use crate::time::Tick;

/// One partition as the aligner sees it, or another worker.
#[derive(Debug)]
struct Lane {
    /// Another worker (`partition` is its index): its stream time holds this worker's
    /// partitions back like a partition of its own, but it gives no records here.
    peer: bool,
    topic: String,
    partition: i32,
    /// The largest event time taken from it; `None` until its first event.
    time: Option<Tick>,
    /// Records are still to come (a backlog, or read lately); only these hold others back.
    pending: bool,
}

/// Decides, record by record, whether a partition waits for the slowest one.
#[derive(Debug)]
pub struct Aligner {
    skew: Option<u64>,
    /// The time of a partition that has not yet given an event (the stream time at start).
    floor: Tick,
    lanes: Vec<Lane>,
    /// The lane a record came from last (records come in runs per partition).
    last: usize,
    /// The slowest pending lane and its time, while no lane changed since.
    slowest: Option<(usize, Tick)>,
}

impl Aligner {
    /// `skew` = `None` takes every record as it comes.
    pub fn new(skew: Option<u64>, floor: Tick) -> Self {
        Aligner {
            skew,
            floor,
            lanes: Vec::new(),
            last: 0,
            slowest: None,
        }
    }

    /// Starts a poll: the source marks the partitions with records to come next.
    pub fn unmark(&mut self) {
        for lane in &mut self.lanes {
            lane.pending = false;
        }
        self.slowest = None;
    }

    /// This partition has records to come (a backlog or a recent record).
    pub fn mark(&mut self, topic: &str, partition: i32) {
        let i = self.lane(false, topic, partition);
        self.lanes[i].pending = true;
        self.slowest = None;
    }

    /// Another worker has records to come and has reached stream time `at`.
    pub fn mark_peer(&mut self, worker: usize, at: Tick) {
        let i = self.lane(true, "", worker as i32);
        let lane = &mut self.lanes[i];
        lane.pending = true;
        lane.time = Some(lane.time.map_or(at, |t| t.max(at)));
        self.slowest = None;
    }

    /// Whether an event at `ts` from this partition may go in now; if so it is taken.
    /// Only the partitions marked pending hold it back.
    pub fn admit(&mut self, topic: &str, partition: i32, ts: Tick) -> bool {
        let Some(skew) = self.skew else {
            return true;
        };
        let i = self.lane(false, topic, partition);
        let slowest = self.slowest();
        if let Some((s, min)) = slowest {
            if ts > min.saturating_add(skew) && self.key(i) > self.key(s) {
                return false;
            }
        }
        let floor = self.floor;
        let lane = &mut self.lanes[i];
        let time = lane.time.unwrap_or(floor).max(ts);
        if lane.time != Some(time) {
            lane.time = Some(time);
            if slowest.is_some_and(|(s, _)| s == i) {
                self.slowest = None;
            }
        }
        true
    }

    /// The order of slowness: time, then partitions before workers, then topic and partition.
    fn key(&self, i: usize) -> (Tick, bool, &str, i32) {
        let l = &self.lanes[i];
        (l.time.unwrap_or(self.floor), l.peer, &l.topic, l.partition)
    }

    /// The slowest pending lane and its time.
    fn slowest(&mut self) -> Option<(usize, Tick)> {
        if self.slowest.is_none() {
            self.slowest = (0..self.lanes.len())
                .filter(|&i| self.lanes[i].pending)
                .min_by(|&a, &b| self.key(a).cmp(&self.key(b)))
                .map(|i| (i, self.key(i).0));
        }
        self.slowest
    }

    fn lane(&mut self, peer: bool, topic: &str, partition: i32) -> usize {
        let hit = |l: &Lane| l.partition == partition && l.peer == peer && l.topic == topic;
        if self.lanes.get(self.last).is_some_and(hit) {
            return self.last;
        }
        let i = match self.lanes.iter().position(hit) {
            Some(i) => i,
            None => {
                self.lanes.push(Lane {
                    peer,
                    topic: topic.to_string(),
                    partition,
                    time: None,
                    pending: false,
                });
                self.lanes.len() - 1
            }
        };
        self.last = i;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_partition_ahead_waits_for_the_slowest_and_the_slowest_never_waits() {
        let mut a = Aligner::new(Some(10), 0);
        a.mark("q", 0);
        a.mark("ads", 0);
        // both unknown (at the floor): `ads` is the slowest by name, `q` may not run ahead
        assert!(!a.admit("q", 0, 100));
        assert!(a.admit("q", 0, 5));
        assert!(a.admit("ads", 0, 95));
        // now `q` (5) is the slowest: it goes on even with a jump of its own
        assert!(a.admit("q", 0, 100));
        // and `ads` (95) holds it back in turn
        assert!(!a.admit("q", 0, 200));
        // a partition with nothing more to come does not hold the others back
        a.unmark();
        a.mark("q", 0);
        assert!(a.admit("q", 0, 200));
    }

    #[test]
    fn without_a_skew_every_record_goes_in() {
        let mut a = Aligner::new(None, 0);
        a.mark("a", 0);
        a.mark("b", 0);
        assert!(a.admit("b", 0, u64::MAX));
    }

    proptest! {
        /// Partitions read in any interleaving, held ones offered again every round: every
        /// record is taken in its partition's order (no deadlock), and a record is taken only
        /// from the slowest pending partition or within the skew of it.
        #[test]
        fn every_record_is_taken_and_none_runs_ahead(
            parts in prop::collection::vec(prop::collection::vec(0u64..500, 0..30), 1..5),
            picks in prop::collection::vec(0usize..5, 0..400),
            skew in 0u64..100,
        ) {
            let mut a = Aligner::new(Some(skew), 0);
            let mut next = vec![0usize; parts.len()];
            let mut picks = picks.into_iter();
            while next.iter().zip(&parts).any(|(n, p)| *n < p.len()) {
                a.unmark();
                for (p, recs) in parts.iter().enumerate() {
                    if next[p] < recs.len() {
                        a.mark("t", p as i32);
                    }
                }
                // the slowest partition with records to come: its time and index
                let slowest = parts
                    .iter()
                    .enumerate()
                    .filter(|(q, recs)| next[*q] < recs.len())
                    .map(|(q, recs)| (recs[..next[q]].iter().max().copied().unwrap_or(0), q))
                    .min()
                    .unwrap();
                // the picks interleave at random; once they run out, the slowest goes on
                let p = picks.next().map_or(slowest.1, |p| p % parts.len());
                let Some(&ts) = parts[p].get(next[p]) else { continue };
                if a.admit("t", p as i32, ts) {
                    prop_assert!(slowest.1 == p || ts <= slowest.0 + skew, "{ts} taken from {p}, slowest {slowest:?}");
                    next[p] += 1;
                } else {
                    prop_assert!(slowest.1 != p, "the slowest partition {p} was held");
                }
            }
        }
    }
}
