//! Partition alignment: a partition may not run more than a skew of event time ahead of the
//! slowest partition that still has records to come (DESIGN §3).
//!
//! A worker's stream time is the largest event time it has read. Without alignment, the
//! order in which the broker hands out partitions decides how fast it moves: a small topic
//! read to its end first (quality-score updates, after a restart), or a partition whose
//! records jump hours ahead (an unkeyed producer sends runs of records to one partition),
//! moves it hours past the other partitions, and with it every decision made in stream
//! time — the dedup horizon, too-late events, window closes — so a restarted run and an
//! uninterrupted one could disagree. Aligned, reading is a merge by event time with
//! `skew` of slack, whatever the interleaving.
//!
//! A partition's *position* is the event time of the record it holds back, else the largest
//! it gave. A record goes in when it is within the skew of every other pending partition's
//! position; otherwise it is held and its time becomes its partition's position. So the
//! partition with the lowest position always goes on: reading never stalls.

use crate::contract::time::Tick;

/// One partition as the aligner sees it, or another worker.
#[derive(Debug)]
struct Lane {
    /// Another worker (`partition` is its index): its position holds this worker's
    /// partitions back like a partition of its own, but it gives no records here.
    peer: bool,
    topic: String,
    partition: i32,
    /// The largest event time taken from it; `None` until its first event.
    time: Option<Tick>,
    /// The event time of the record held back, its next.
    head: Option<Tick>,
    /// Records are still to come (a backlog, or read lately); only these hold others back.
    pending: bool,
}

/// Decides, record by record, whether a partition waits for the slower ones.
#[derive(Debug)]
pub struct Aligner {
    skew: Option<u64>,
    /// The time of a partition that has not yet given an event (the stream time at start).
    floor: Tick,
    lanes: Vec<Lane>,
    /// The lane a record came from last (records come in runs per partition).
    last: usize,
    /// At most the lowest position of a pending lane: positions only grow, so a record
    /// within the skew of it goes in without a scan.
    low: Option<Tick>,
}

impl Aligner {
    /// `skew` = `None` takes every record as it comes.
    pub fn new(skew: Option<u64>, floor: Tick) -> Self {
        Aligner {
            skew,
            floor,
            lanes: Vec::new(),
            last: 0,
            low: None,
        }
    }

    /// Starts a poll: the source marks the partitions with records to come next.
    pub fn unmark(&mut self) {
        for lane in &mut self.lanes {
            lane.pending = false;
        }
        self.low = None;
    }

    /// This partition has records to come (a backlog or a recent record).
    pub fn mark(&mut self, topic: &str, partition: i32) {
        let i = self.lane(false, topic, partition);
        self.lanes[i].pending = true;
        self.low = None;
    }

    /// Another worker has records to come, the lowest of its partitions at `at`.
    pub fn mark_peer(&mut self, worker: usize, at: Tick) {
        let i = self.lane(true, "", worker as i32);
        let lane = &mut self.lanes[i];
        lane.pending = true;
        lane.time = Some(lane.time.map_or(at, |t| t.max(at)));
        self.low = None;
    }

    /// The lowest position of this worker's pending partitions (what it tells the others),
    /// `None` when none is pending.
    pub fn position(&self) -> Option<Tick> {
        self.lowest(|j| !self.lanes[j].peer)
    }

    /// Starts partitions at the stream times a checkpoint recorded for them.
    pub fn restore(&mut self, times: impl IntoIterator<Item = ((String, i32), Tick)>) {
        for ((topic, partition), t) in times {
            let i = self.lane(false, &topic, partition);
            let lane = &mut self.lanes[i];
            lane.time = Some(lane.time.map_or(t, |x| x.max(t)));
        }
    }

    /// Every partition's stream time: the largest event time taken from it.
    pub fn times(&self) -> Vec<((String, i32), Tick)> {
        self.lanes
            .iter()
            .filter(|l| !l.peer)
            .filter_map(|l| Some(((l.topic.clone(), l.partition), l.time?)))
            .collect()
    }

    /// Whether an event at `ts` from this partition may go in now: if so it is taken, and
    /// the answer is the partition's stream time once it is (the largest event time up to
    /// and including it: what dedup and too-late decide by); if not, it is the partition's
    /// next (offer it again later). Only the partitions marked pending hold it back.
    pub fn admit(&mut self, topic: &str, partition: i32, ts: Tick) -> Option<Tick> {
        let i = self.lane(false, topic, partition);
        let Some(skew) = self.skew else {
            return Some(self.take(i, ts));
        };
        let low = match self.low {
            Some(low) => low,
            None => {
                let low = self.lowest(|_| true).unwrap_or(Tick::MAX);
                self.low = Some(low);
                low
            }
        };
        if ts > low.saturating_add(skew) {
            // the exact test: the lowest position of the *other* pending partitions
            let others = self.lowest(|j| j != i);
            self.low = self.lowest(|_| true);
            if others.is_some_and(|o| ts > o.saturating_add(skew)) {
                self.lanes[i].head = Some(ts);
                return None;
            }
        }
        Some(self.take(i, ts))
    }

    /// Takes a record at `ts` from lane `i`; its stream time after it.
    fn take(&mut self, i: usize, ts: Tick) -> Tick {
        let lane = &mut self.lanes[i];
        lane.head = None;
        let t = lane.time.map_or(ts, |t| t.max(ts));
        lane.time = Some(t);
        t
    }

    /// The event time a lane has reached: the largest it gave or holds (so it only grows).
    fn position_of(&self, i: usize) -> Tick {
        let l = &self.lanes[i];
        l.head.max(l.time).unwrap_or(self.floor)
    }

    /// The lowest position of the pending lanes that `keep`.
    fn lowest(&self, keep: impl Fn(usize) -> bool) -> Option<Tick> {
        (0..self.lanes.len())
            .filter(|&i| self.lanes[i].pending && keep(i))
            .map(|i| self.position_of(i))
            .min()
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
                    head: None,
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
    fn a_partition_ahead_waits_and_the_lowest_position_goes_on() {
        let mut a = Aligner::new(Some(10), 0);
        a.mark("q", 0);
        a.mark("ads", 0);
        // both at the floor: `q` may not run ahead of `ads`
        assert!(a.admit("q", 0, 100).is_none());
        // `ads` goes on up to the skew past `q`'s held record (position 100)
        assert_eq!(a.admit("ads", 0, 95), Some(95));
        assert!(a.admit("ads", 0, 120).is_none());
        // both hold a record: the lower one goes in, the other once it is within the skew
        assert_eq!(a.admit("q", 0, 100), Some(100));
        assert!(a.admit("ads", 0, 120).is_none());
        assert_eq!(a.admit("q", 0, 115), Some(115));
        assert_eq!(a.admit("ads", 0, 120), Some(120));
        // a jump of `q`'s own waits for `ads`
        assert!(a.admit("q", 0, 500).is_none());
        // a partition with nothing more to come holds nobody back
        a.unmark();
        a.mark("q", 0);
        assert_eq!(a.admit("q", 0, 500), Some(500));
        assert_eq!(a.position(), Some(500));
        // an older record: the partition's stream time stays at its largest
        assert_eq!(a.admit("q", 0, 200), Some(500));
        assert_eq!(
            a.times(),
            [(("q".to_string(), 0), 500), (("ads".to_string(), 0), 120)]
        );
    }

    #[test]
    fn another_worker_holds_back_like_a_partition() {
        let mut a = Aligner::new(Some(10), 0);
        a.mark("t", 0);
        a.mark_peer(1, 50);
        assert!(a.admit("t", 0, 60).is_some());
        assert!(a.admit("t", 0, 61).is_none());
        assert_eq!(a.position(), Some(61));
    }

    #[test]
    fn without_a_skew_every_record_goes_in() {
        let mut a = Aligner::new(None, 0);
        a.mark("a", 0);
        a.mark("b", 0);
        assert_eq!(a.admit("b", 0, u64::MAX), Some(u64::MAX));
        // a restored partition starts at its checkpoint's stream time
        a.restore([(("c".to_string(), 1), 70)]);
        assert_eq!(a.admit("c", 1, 50), Some(70));
    }

    proptest! {
        /// Partitions read in any interleaving, held records offered again: every record is
        /// taken in its partition's order (reading never stalls), and a record is taken only
        /// within the skew of every other pending partition's position.
        #[test]
        fn every_record_is_taken_and_none_runs_ahead(
            parts in prop::collection::vec(prop::collection::vec(0u64..500, 0..30), 1..5),
            picks in prop::collection::vec(0usize..5, 0..400),
            skew in 0u64..100,
        ) {
            let mut a = Aligner::new(Some(skew), 0);
            let mut next = vec![0usize; parts.len()];
            let (mut time, mut head) = (vec![0u64; parts.len()], vec![None::<u64>; parts.len()]);
            let mut picks = picks.into_iter();
            let total: usize = parts.iter().map(Vec::len).sum();
            let mut steps = 0;
            while next.iter().zip(&parts).any(|(n, p)| *n < p.len()) {
                steps += 1;
                prop_assert!(steps <= 400 + total * (parts.len() + 1), "reading stalled at {next:?}");
                a.unmark();
                let pending: Vec<usize> = (0..parts.len()).filter(|&p| next[p] < parts[p].len()).collect();
                for &p in &pending {
                    a.mark("t", p as i32);
                }
                let position = |p: usize| head[p].map_or(time[p], |h| h.max(time[p]));
                // the picks interleave at random; once they run out, the lowest position goes
                let lowest = *pending.iter().min_by_key(|&&p| (position(p), p)).unwrap();
                let p = picks.next().map_or(lowest, |p| p % parts.len());
                let Some(&ts) = parts[p].get(next[p]) else { continue };
                let others = pending.iter().filter(|&&q| q != p).map(|&q| position(q)).min();
                if let Some(stream_time) = a.admit("t", p as i32, ts) {
                    prop_assert!(others.is_none_or(|o| ts <= o + skew), "{ts} from {p}, others at {others:?}");
                    next[p] += 1;
                    time[p] = time[p].max(ts);
                    prop_assert_eq!(stream_time, time[p], "the partition's stream time");
                    head[p] = None;
                } else {
                    prop_assert!(head[p].is_none() || p != lowest, "the lowest position {p} was held twice");
                    head[p] = Some(ts);
                }
            }
        }
    }
}
