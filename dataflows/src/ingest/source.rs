//! The source operator that reads a worker's records into the dataflow: stream time,
//! the checkpoint pause, partition alignment, and what it tells the other workers.
//!
//! Each activation is one [`Reader::step`]: a paused source waits to be resumed; one that
//! is agreeing on a checkpoint waits for every proposal; else it tells its clock, polls a
//! batch, and emits the batch's events at the stream time after it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilderSession;
use timely::dataflow::operators::Capability;
use timely::scheduling::Activator;

use super::align::Aligner;
use super::peers::{Heard, News};
use super::quality::{observe, Outcome, Tallies};
use super::validate::{invalid, validate};
use super::{IngestOptions, PartitionTimes};
use crate::contract::counters::Counters;
use crate::contract::event::Timed;
use crate::contract::quality::{Tally, TallyKey};
use crate::contract::record::{DecodeError, InvalidRecord, Poll, RecordRef, RecordSource, Visit};
use crate::contract::state::State;
use crate::contract::time::{Tick, Window};

/// What the ingest source emits, before it is split.
#[derive(Clone, Debug)]
pub(super) enum Ingest<E> {
    /// An event, the tick it goes in at, and its partition's stream time once it is read.
    Event(Timed<E>, Tick, Tick),
    /// What a batch's records add to the expectations' hourly tallies.
    Tallies(Vec<(TallyKey, Tally)>),
    Invalid(Box<InvalidRecord>),
    /// News for worker `to`'s source.
    Peer {
        to: usize,
        news: News,
    },
}

impl<E> Ingest<E> {
    /// The same news for every worker.
    fn to_all(peers: usize, news: News) -> impl Iterator<Item = Self> {
        (0..peers).map(move |to| Ingest::Peer {
            to,
            news: news.clone(),
        })
    }
}

type Output<'a, E> = OutputBuilderSession<'a, Tick, CapacityContainerBuilder<Vec<Ingest<E>>>>;

/// What the source is told from outside it.
pub(super) struct Wiring {
    pub records: Box<dyn RecordSource>,
    pub opts: IngestOptions,
    pub counters: Arc<Counters>,
    /// The runtime's checkpoint requests and resumes.
    pub control: State,
    pub heard: Rc<RefCell<Heard>>,
    /// The family's longest window: an event already out of it is too late.
    pub horizon: Window,
    pub final_tick: Rc<Cell<Option<Tick>>>,
    /// Where the snapshot finds each partition's stream time.
    pub recorded_times: Rc<RefCell<PartitionTimes>>,
    pub me: usize,
    pub peers: usize,
    /// Where a peer not heard from yet stands.
    pub restored_low: Tick,
}

/// One worker's source and the state it keeps between activations.
pub(super) struct Reader<E, D> {
    w: Wiring,
    activator: Activator,
    decode: D,
    cap: Option<Capability<Tick>>,
    /// The largest event time read so far (or the clock's, when idle and live).
    stream_time: Tick,
    aligner: Aligner,
    /// The clock last told to the peers.
    told: Option<(Tick, bool)>,
    finished: bool,
    /// Each event with its partition's stream time once it is read.
    events: Vec<(Timed<E>, Tick)>,
    invalid: Vec<InvalidRecord>,
    /// What the batch's records add to the expectations' hourly tallies.
    tallies: Tallies,
    /// Checkpoints taken, and the one being agreed on.
    epoch: u64,
    pausing: Option<u64>,
    paused: bool,
    /// The peers were told this source's snapshot of the pause is taken.
    snapshot_told: bool,
}

impl<E, D> Reader<E, D>
where
    E: Clone + 'static,
    D: Fn(&RecordRef<'_>) -> Result<Timed<E>, DecodeError>,
{
    pub fn new(
        w: Wiring,
        activator: Activator,
        decode: D,
        mut cap: Capability<Tick>,
        restored_times: std::collections::BTreeMap<(String, i32), Tick>,
    ) -> Self {
        let start_at = w.opts.start_at;
        let mut stream_time = 0;
        if start_at > 0 {
            stream_time = start_at;
            cap.downgrade(&start_at);
        }
        let mut aligner = Aligner::new(w.opts.max_partition_skew_ms, 0);
        aligner.restore(restored_times);
        Reader {
            w,
            activator,
            decode,
            cap: Some(cap),
            stream_time,
            aligner,
            told: None,
            finished: false,
            events: Vec::new(),
            invalid: Vec::new(),
            tallies: Tallies::default(),
            epoch: 0,
            pausing: None,
            paused: false,
            snapshot_told: false,
        }
    }

    /// One activation.
    pub fn step(&mut self, output: &mut Output<'_, E>) {
        if self.cap.is_none() {
            return;
        }
        self.w.records.tend();
        if self.paused {
            if !self.resume_agreed(output) {
                self.activator.activate_after(Duration::from_millis(1));
                return;
            }
            self.paused = false;
        }
        if self.pausing.is_some() {
            self.agree_on_pause();
            self.activator.activate_after(Duration::from_millis(1));
            return;
        }
        if self.pause_asked() {
            self.propose_pause(output);
            self.activator.activate_after(Duration::from_millis(1));
            return;
        }
        if self.finished {
            // hold time just past the agreed final tick: closing would expire every window
            if let Some(t) = self.w.final_tick.get() {
                let held = self.cap.as_mut().expect("held");
                if *held.time() <= t {
                    held.downgrade(&(t + 1));
                }
            }
            self.activator.activate_after(Duration::from_millis(2));
            return;
        }
        let now = self.w.records.now_ms();
        let pending = self.mark_pending();
        self.tell_clock(output, pending);
        let poll = self.read(now);
        self.emit(output);
        // the peers learn the new position now, not at the next activation
        let pending = self.mark_pending();
        self.tell_clock(output, pending);
        self.after(poll, now, output);
    }

    /// Once every worker proposed a tick for the pause being agreed on: time moves past
    /// the largest, the snapshot learns each partition's position, and the source waits.
    fn agree_on_pause(&mut self) {
        let Some(k) = self.pausing else { return };
        let peers = self.w.peers;
        let agreed = self
            .w
            .heard
            .borrow()
            .proposals
            .get(&k)
            .filter(|p| p.len() == peers)
            .map(|p| {
                let at = p.iter().map(|(t, _)| *t).max().unwrap_or(0);
                (at, p.iter().any(|(_, last)| *last))
            });
        let Some((at, last)) = agreed else { return };
        self.w.heard.borrow_mut().proposals.remove(&k);
        let held = self.cap.as_mut().expect("held");
        if *held.time() <= at {
            held.downgrade(&(at + 1));
        }
        self.stream_time = self.stream_time.max(at);
        (self.epoch, self.pausing, self.paused) = (k, None, true);
        // the snapshot keeps where each partition is
        *self.w.recorded_times.borrow_mut() = self.aligner.times();
        self.w.records.paused(at);
        self.w.control.set_paused(at, last);
    }

    /// Whether the paused source may read again: once its own snapshot is taken it tells
    /// the peers, and it goes on only when every worker has taken its snapshot — a record
    /// read earlier could reach a worker still to take its own, and be counted in that
    /// worker's part of the checkpoint while this one's positions read it again.
    fn resume_agreed(&mut self, output: &mut Output<'_, E>) -> bool {
        if !self.snapshot_told && self.w.control.take_resume() {
            let news = News::Snapshotted { epoch: self.epoch };
            let held = self.cap.as_ref().expect("held");
            output
                .session(held)
                .give_iterator(Ingest::to_all(self.w.peers, news));
            self.snapshot_told = true;
        }
        if !self.snapshot_told {
            return false;
        }
        let mut heard = self.w.heard.borrow_mut();
        if heard.snapshotted.get(&self.epoch).copied().unwrap_or(0) < self.w.peers {
            return false;
        }
        heard.snapshotted.remove(&self.epoch);
        self.snapshot_told = false;
        true
    }

    /// Whether the runtime or a peer asked for a checkpoint this source has not joined.
    fn pause_asked(&self) -> bool {
        let peer_asked = self
            .w
            .heard
            .borrow()
            .proposals
            .keys()
            .next_back()
            .is_some_and(|k| *k > self.epoch);
        self.w.control.take_wanted() || peer_asked
    }

    /// Proposes the stream time: everything inserted so far went in at or before it.
    fn propose_pause(&mut self, output: &mut Output<'_, E>) {
        let k = self.epoch + 1;
        let news = News::Pause {
            epoch: k,
            at: self.stream_time,
            last: self.w.control.wants_last(),
        };
        let held = self.cap.as_ref().expect("held");
        output
            .session(held)
            .give_iterator(Ingest::to_all(self.w.peers, news));
        self.pausing = Some(k);
    }

    /// Marks the partitions with records to come, and the peers that hold them back;
    /// whether this source has any.
    fn mark_pending(&mut self) -> bool {
        self.aligner.unmark();
        let mut pending = false;
        let aligner = &mut self.aligner;
        self.w.records.pending(&mut |topic, partition| {
            pending = true;
            aligner.mark(topic, partition);
        });
        // a peer not heard from yet is at the start; a source that names no partition
        // cannot hold a record back, so peers do not hold it either
        let clocks = &self.w.heard.borrow().clocks;
        for worker in (0..self.w.peers).filter(|w| pending && *w != self.w.me) {
            match clocks.get(&worker) {
                Some(&(at, true)) => self.aligner.mark_peer(worker, at),
                Some(_) => {}
                None => self.aligner.mark_peer(worker, self.w.restored_low),
            }
        }
        pending
    }

    /// Tells the peers how far this source's slowest partition is (to the second: the
    /// skew is minutes); also on one worker, as the dedup watermark follows this news.
    fn tell_clock(&mut self, output: &mut Output<'_, E>, pending: bool) {
        let position = self.aligner.position().unwrap_or(self.stream_time);
        if self
            .told
            .is_none_or(|(at, more)| more != pending || position >= at + 1000)
        {
            self.told = Some((position, pending));
            let news = News::Clock {
                from: self.w.me,
                at: position,
                pending,
            };
            let held = self.cap.as_ref().expect("held");
            output
                .session(held)
                .give_iterator(Ingest::to_all(self.w.peers, news));
        }
    }

    /// Polls a batch: valid events the aligner admits, invalid records; a record of a
    /// partition too far ahead is held back in the source.
    fn read(&mut self, now: u64) -> Poll {
        let (mut consumed, mut held_back) = (0u64, 0u64);
        let Reader {
            w,
            decode,
            aligner,
            events,
            invalid: invalids,
            tallies,
            ..
        } = self;
        let (opts, counters) = (&w.opts, &w.counters);
        let poll = w.records.poll(opts.batch_max, &mut |rec| {
            let event_time = match validate(&rec, &*decode, opts, now) {
                Ok(ev) => match aligner.admit(rec.topic, rec.partition, ev.ts) {
                    Some(at) => {
                        let ts = ev.ts;
                        events.push((ev, at));
                        if let Some(exps) = &opts.quality {
                            observe(exps, &rec, Outcome::Valid { ts, at }, tallies);
                        }
                        Some(ts)
                    }
                    None => {
                        held_back += 1;
                        return Visit::Held;
                    }
                },
                Err(e) => {
                    Counters::add(counters.invalid(&e.kind), 1);
                    let r = invalid(&rec, e, opts, now);
                    if let Some(exps) = &opts.quality {
                        let ts = r.claimed_ts.unwrap_or(r.append_ms.max(0) as u64);
                        let kind = r.error.kind.clone();
                        observe(exps, &rec, Outcome::Invalid { ts, kind }, tallies);
                    }
                    invalids.push(r);
                    None
                }
            };
            consumed += 1;
            Visit::Taken(event_time)
        });
        Counters::add(&w.counters.consumed, consumed);
        Counters::add(&w.counters.held_back, held_back);
        poll
    }

    /// The batch's invalid records, and its events at the stream time after the batch;
    /// an event already out of the longest window at its record's stream time is too late.
    fn emit(&mut self, output: &mut Output<'_, E>) {
        let held = self.cap.as_mut().expect("held");
        if !self.invalid.is_empty() {
            output
                .session(&*held)
                .give_iterator(self.invalid.drain(..).map(|r| Ingest::Invalid(Box::new(r))));
        }
        if self.events.is_empty() {
            self.emit_tallies(output);
            return;
        }
        let max_ts = self.events.iter().map(|(e, _)| e.ts).max().unwrap_or(0);
        let tick = self.stream_time.max(max_ts).max(*held.time());
        self.stream_time = tick;
        held.downgrade(&tick);
        let mut too_late = 0;
        let horizon = self.w.horizon;
        // too late by the stream time at the record, not the batch's tick
        output.session(&*held).give_iterator(
            self.events
                .drain(..)
                .filter(|(e, at)| {
                    let live = horizon.live_at(e.ts, *at);
                    too_late += u64::from(!live);
                    live
                })
                .map(|(e, at)| Ingest::Event(e, tick, at)),
        );
        Counters::add(&self.w.counters.too_late, too_late);
        self.w.records.inserted(tick);
        self.emit_tallies(output);
    }

    /// The batch's quality tallies, at the batch's tick.
    fn emit_tallies(&mut self, output: &mut Output<'_, E>) {
        if !self.tallies.is_empty() {
            let tallies: Vec<_> = self.tallies.drain().collect();
            let held = self.cap.as_ref().expect("held");
            output.session(held).give(Ingest::Tallies(tallies));
        }
    }

    /// What the poll's outcome means for time and the next activation.
    fn after(&mut self, poll: Poll, now: u64, output: &mut Output<'_, E>) {
        let opts = &self.w.opts;
        let held = self.cap.as_mut().expect("held");
        match poll {
            Poll::Busy => self.activator.activate(),
            Poll::Held => {
                // a peer's clock news wakes it sooner (see `Heard::wake`)
                self.w.heard.borrow_mut().waiting = true;
                self.activator.activate_after(opts.poll_interval)
            }
            Poll::Caught { idle } => {
                if idle && !opts.exit_at_end {
                    self.stream_time = self.stream_time.max(now);
                }
                if *held.time() <= self.stream_time {
                    held.downgrade(&(self.stream_time + 1));
                }
                self.activator.activate_after(opts.poll_interval);
            }
            Poll::Finished if opts.exit_at_end => {
                self.finished = true;
                if let Some(end) = self.w.records.end_at().filter(|e| *e > self.stream_time) {
                    self.stream_time = end;
                    held.downgrade(&end);
                }
                let ended = [
                    News::End(self.stream_time),
                    News::Clock {
                        from: self.w.me,
                        at: self.stream_time,
                        pending: false,
                    },
                ];
                let peers = self.w.peers;
                output.session(&*held).give_iterator(
                    ended
                        .into_iter()
                        .flat_map(move |n| Ingest::to_all(peers, n)),
                );
                self.activator.activate_after(Duration::from_millis(1));
            }
            Poll::Finished => self.cap = None,
        }
    }
}
