//! From records to events: decode, validate, stream time, too-late and dedup (DESIGN §3, §4).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::{source, Operator};
use timely::dataflow::{Scope, Stream};

use crate::align::Aligner;
use crate::counters::Counters;
use crate::record::{
    holds_nul, DecodeError, ErrorKind, InvalidRecord, Poll, RecordRef, RecordSource, Visit,
};
use crate::state::{Split, State};
use crate::time::{Tick, Window};

/// An event's identity: a 128-bit hash of its `event_id`, so dedup state is fixed-size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub u128);

impl EventId {
    pub fn of(event_id: &str) -> Self {
        EventId(xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()))
    }
}

/// A decoded event with its identity and event time (epoch ms).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timed<E> {
    pub id: EventId,
    pub ts: u64,
    pub event: E,
}

/// Why ingest turned a record away, for the families' data-quality counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rejected {
    Invalid(ErrorKind),
    Duplicate,
}

/// A record ingest turned away and its time: the event time of a duplicate; for an
/// invalid record the integer `ts` it carries (unless it is ahead of the clock's
/// allowance), else its Kafka append time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: Rejected,
    pub ts: u64,
}

#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Events further ahead of the wall clock are invalid (range).
    pub max_future_skew_ms: u64,
    /// A repeated `event_id` within this much stream time changes nothing.
    pub dedup_horizon_ms: u64,
    /// A partition may run at most this much event time ahead of the slowest one with
    /// records to come (`None`: not aligned).
    pub max_partition_skew_ms: Option<u64>,
    /// Records per poll before the worker goes on with the dataflow.
    pub batch_max: usize,
    /// How long to wait before polling again once caught up.
    pub poll_interval: Duration,
    /// Time comes from the data alone; on `Poll::Finished` the workers agree on a final tick.
    pub exit_at_end: bool,
    /// Messages larger than this are invalid (oversized).
    pub max_message_bytes: usize,
    /// Entity keys longer than this are invalid (oversized).
    pub max_key_bytes: usize,
    /// Events naming more items in one list are invalid (oversized).
    pub max_items_per_event: usize,
    /// Stream time starts here (after a restart: past every tick the stores hold, and past
    /// the restored checkpoint's tick).
    pub start_at: Tick,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            max_future_skew_ms: 60_000,
            dedup_horizon_ms: 3_600_000,
            max_partition_skew_ms: Some(600_000),
            batch_max: 50_000,
            poll_interval: Duration::from_millis(1),
            exit_at_end: false,
            max_message_bytes: 1 << 20,
            max_key_bytes: 512,
            max_items_per_event: 1_000,
            start_at: 0,
        }
    }
}

/// Each partition's stream time, as a checkpoint records it.
type PartitionTimes = Vec<((String, i32), Tick)>;

/// What the ingest source emits, before it is split.
#[derive(Clone, Debug)]
enum Ingest<E> {
    /// An event, the tick it goes in at, and its partition's stream time once it is read.
    Event(Timed<E>, Tick, Tick),
    Invalid(Box<InvalidRecord>),
    /// News for worker `to`'s source.
    Peer {
        to: usize,
        news: News,
    },
}

/// What a worker's source tells the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum News {
    /// It finished at this stream time.
    End(Tick),
    /// It paused for checkpoint `epoch` having inserted nothing after `at`; `last` if its
    /// runtime is stopping (then the checkpoint is every worker's last).
    Pause { epoch: u64, at: Tick, last: bool },
    /// The position of worker `from`'s slowest partition, and whether it has records to
    /// come: a partition of another worker may not run ahead of it by more than the skew.
    Clock {
        from: usize,
        at: Tick,
        pending: bool,
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

/// What a worker heard from the sources of all workers (itself included).
#[derive(Default)]
struct Heard {
    /// Per checkpoint epoch, the ticks proposed and whether each proposer is stopping.
    proposals: BTreeMap<u64, Vec<(Tick, bool)>>,
    /// The stream times at which the sources finished (`exit_at_end`).
    ends: Vec<Tick>,
    /// Per worker, its slowest partition's position and whether it has records to come.
    clocks: BTreeMap<usize, (Tick, bool)>,
    /// The same news with the tick it was told at, until the dedup frontier passes it.
    told: BTreeMap<usize, VecDeque<(Tick, Tick, bool)>>,
    /// Per worker, the latest clock the dedup frontier has passed.
    passed: BTreeMap<usize, (Tick, bool)>,
}

impl Heard {
    /// The dedup watermark once the input frontier is at `frontier`: the least position of
    /// every worker's slowest partition with records to come, as told at a tick the
    /// frontier has passed. Every record still to arrive comes from such a partition at or
    /// after its position, so its stream time is at least this; `None` until every worker
    /// was heard from, or while none has records to come.
    fn watermark(&mut self, frontier: Tick, peers: usize) -> Option<Tick> {
        for (worker, log) in self.told.iter_mut() {
            while let Some(&(_, position, pending)) = log.front().filter(|(at, ..)| *at < frontier)
            {
                self.passed.insert(*worker, (position, pending));
                log.pop_front();
            }
        }
        if self.passed.len() < peers {
            return None;
        }
        self.passed
            .values()
            .filter(|(_, pending)| *pending)
            .map(|(position, _)| *position)
            .min()
    }
}

/// The result of ingesting one worker's source.
pub struct Ingested<'s, E: Clone + 'static> {
    /// Valid, not too late, first copies only.
    pub events: VecCollection<'s, Tick, Timed<E>>,
    pub invalid: Stream<'s, Tick, Vec<InvalidRecord>>,
    /// Invalid records and duplicates, at the tick they were read.
    pub rejected: VecCollection<'s, Tick, Rejection>,
    /// Once every worker's source finished (`exit_at_end`): the largest stream time reached.
    pub final_tick: Rc<Cell<Option<Tick>>>,
}

/// The `ts` an invalid record carries, when it has a readable one.
fn claimed_ts(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Ts {
        ts: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Ts>(payload).ok()?.ts?.as_u64()
}

/// Reads a worker's source into the dataflow.
///
/// Stream time `S` is the largest event time read so far. A batch goes in at `S` after
/// the batch; once the source has caught up, the tick closes (the capability moves to
/// `S + 1`), so a later batch that does not raise `S` goes in at `S + 1`. When every
/// partition is idle, `S` follows the wall clock (not with `exit_at_end`). A partition more
/// than `max_partition_skew_ms` ahead of the slowest one with records to come waits for it
/// ([`Aligner`]), so `S` does not depend on the order the source interleaves partitions in.
///
/// For a checkpoint (see [`crate::state`]) the sources pause: each proposes the tick it
/// reached, all move to one past the largest and wait until the runtime resumes them.
pub fn ingest<'s, E, D>(
    scope: Scope<'s, Tick>,
    state: &State,
    mut records: Box<dyn RecordSource>,
    decode: D,
    horizon: Window,
    opts: IngestOptions,
    counters: Arc<Counters>,
) -> Ingested<'s, E>
where
    E: timely::ExchangeData + differential_dataflow::Data,
    D: Fn(&RecordRef<'_>) -> Result<Timed<E>, DecodeError> + 'static,
{
    let final_tick: Rc<Cell<Option<Tick>>> = Rc::new(Cell::new(None));
    let final_seen = final_tick.clone();
    let peers = scope.peers();
    let ingest_opts = opts.clone();
    let ingest_counters = counters.clone();
    let heard: Rc<RefCell<Heard>> = Rc::default();
    let hearing = heard.clone();
    let me = scope.index();
    let control = state.clone();
    let start_at = opts.start_at;
    // each partition's stream time, as the newest checkpoint recorded it: decisions after
    // a restart go on from there (not from the restart's first tick)
    let partition_times: Rc<RefCell<PartitionTimes>> = Rc::default();
    let mut restored_times: BTreeMap<(String, i32), Tick> = BTreeMap::new();
    for part in state.register(
        "partition_times",
        crate::state::Split::ByKey,
        partition_times.clone(),
    ) {
        for (p, t) in part {
            let e = restored_times.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let recorded_times = partition_times.clone();
    // where a peer not heard from yet stands
    let restored_low = restored_times.values().copied().min().unwrap_or(0);
    assert!(
        state.restore().is_none_or(|r| r.tick < start_at),
        "a restored checkpoint's tick is in the past"
    );
    let stream = source::<_, CapacityContainerBuilder<Vec<Ingest<E>>>, _, _>(
        scope,
        "Ingest",
        move |cap, info| {
            let opts = ingest_opts;
            let counters = ingest_counters;
            let activator = scope.activator_for(info.address.clone());
            let mut cap = Some(cap);
            let mut stream_time: Tick = 0;
            if let Some(c) = cap.as_mut().filter(|_| start_at > 0) {
                stream_time = start_at;
                c.downgrade(&start_at);
            }
            let mut aligner = Aligner::new(opts.max_partition_skew_ms, 0);
            aligner.restore(std::mem::take(&mut restored_times));
            // the clock last told to the peers
            let mut told: Option<(Tick, bool)> = None;
            let mut finished = false;
            // each event with its partition's stream time once it is read
            let mut events: Vec<(Timed<E>, Tick)> = Vec::new();
            let mut invalid: Vec<InvalidRecord> = Vec::new();
            // checkpoints taken, and the one being agreed on
            let mut epoch: u64 = 0;
            let mut pausing: Option<u64> = None;
            let mut paused = false;
            move |output| {
                let Some(held) = cap.as_mut() else { return };
                records.tend();
                if paused {
                    if !control.take_resume() {
                        activator.activate_after(Duration::from_millis(1));
                        return;
                    }
                    paused = false;
                }
                if let Some(k) = pausing {
                    let agreed = heard
                        .borrow()
                        .proposals
                        .get(&k)
                        .filter(|p| p.len() == peers)
                        .map(|p| {
                            let at = p.iter().map(|(t, _)| *t).max().unwrap_or(0);
                            (at, p.iter().any(|(_, last)| *last))
                        });
                    if let Some((at, last)) = agreed {
                        heard.borrow_mut().proposals.remove(&k);
                        if *held.time() <= at {
                            held.downgrade(&(at + 1));
                        }
                        stream_time = stream_time.max(at);
                        (epoch, pausing, paused) = (k, None, true);
                        // the snapshot keeps where each partition is
                        *recorded_times.borrow_mut() = aligner.times();
                        records.paused(at);
                        control.set_paused(at, last);
                    }
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                let peer_asked = heard
                    .borrow()
                    .proposals
                    .keys()
                    .next_back()
                    .is_some_and(|k| *k > epoch);
                if control.take_wanted() || peer_asked {
                    // everything inserted so far went in at or before the stream time
                    let k = epoch + 1;
                    let at = stream_time;
                    output.session(&*held).give_iterator(Ingest::to_all(
                        peers,
                        News::Pause {
                            epoch: k,
                            at,
                            last: control.wants_last(),
                        },
                    ));
                    pausing = Some(k);
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                if finished {
                    // hold time just past the agreed final tick: closing would expire every window
                    if let Some(t) = final_seen.get() {
                        if *held.time() <= t {
                            held.downgrade(&(t + 1));
                        }
                    }
                    activator.activate_after(Duration::from_millis(2));
                    return;
                }
                let now = records.now_ms();
                let (mut consumed, mut held_back) = (0u64, 0u64);
                aligner.unmark();
                let mut pending = false;
                records.pending(&mut |topic, partition| {
                    pending = true;
                    aligner.mark(topic, partition);
                });
                // a peer not heard from yet is at the start; a source that names no
                // partition cannot hold a record back, so peers do not hold it either
                let clocks = &heard.borrow().clocks;
                for worker in (0..peers).filter(|w| pending && *w != me) {
                    match clocks.get(&worker) {
                        Some(&(at, true)) => aligner.mark_peer(worker, at),
                        Some(_) => {}
                        None => aligner.mark_peer(worker, restored_low),
                    }
                }
                // tell the peers how far this source's slowest partition is (to the second:
                // the skew is minutes)
                // (also on one worker: the dedup watermark follows this news)
                let position = aligner.position().unwrap_or(stream_time);
                if told.is_none_or(|(at, more)| more != pending || position >= at + 1000) {
                    told = Some((position, pending));
                    let news = News::Clock {
                        from: me,
                        at: position,
                        pending,
                    };
                    output
                        .session(&*held)
                        .give_iterator(Ingest::to_all(peers, news));
                }
                let poll = records.poll(opts.batch_max, &mut |rec| {
                let decoded = if rec.payload.len() > opts.max_message_bytes {
                    Err(DecodeError::new(
                        ErrorKind::Oversized,
                        format!("{} bytes exceed max_message_bytes = {}", rec.payload.len(), opts.max_message_bytes),
                    ))
                } else if holds_nul(rec.payload) {
                    Err(DecodeError::new(
                        ErrorKind::Range,
                        "the record holds a NUL character (\\u0000), which no store takes in text",
                    ))
                } else {
                    decode(&rec).and_then(|ev| {
                        if ev.ts > now + opts.max_future_skew_ms {
                            Err(DecodeError::new(
                                ErrorKind::Range,
                                format!("ts {} is more than max_future_skew_ms = {} ahead of the clock ({now})", ev.ts, opts.max_future_skew_ms),
                            ))
                        } else {
                            Ok(ev)
                        }
                    })
                };
                match decoded {
                    Ok(ev) => match aligner.admit(rec.topic, rec.partition, ev.ts) {
                        Some(at) => events.push((ev, at)),
                        None => {
                            held_back += 1;
                            return Visit::Held;
                        }
                    },
                    Err(e) => {
                        Counters::add(counters.invalid(&e.kind), 1);
                        let mut r = InvalidRecord::new(&rec, e);
                        r.claimed_ts = claimed_ts(rec.payload)
                            .filter(|ts| *ts <= now.saturating_add(opts.max_future_skew_ms));
                        invalid.push(r);
                    }
                }
                consumed += 1;
                Visit::Taken
            });
                Counters::add(&counters.consumed, consumed);
                Counters::add(&counters.held_back, held_back);
                if !invalid.is_empty() {
                    output
                        .session(&*held)
                        .give_iterator(invalid.drain(..).map(|r| Ingest::Invalid(Box::new(r))));
                }
                if !events.is_empty() {
                    let max_ts = events.iter().map(|(e, _)| e.ts).max().unwrap_or(0);
                    let tick = stream_time.max(max_ts).max(*held.time());
                    stream_time = tick;
                    held.downgrade(&tick);
                    let mut too_late = 0;
                    // too late by the stream time at the record, not the batch's tick
                    output.session(&*held).give_iterator(
                        events
                            .drain(..)
                            .filter(|(e, at)| {
                                let live = horizon.live_at(e.ts, *at);
                                too_late += u64::from(!live);
                                live
                            })
                            .map(|(e, at)| Ingest::Event(e, tick, at)),
                    );
                    Counters::add(&counters.too_late, too_late);
                    records.inserted(tick);
                }
                match poll {
                    Poll::Busy => activator.activate(),
                    Poll::Held => activator.activate_after(opts.poll_interval),
                    Poll::Caught { idle } => {
                        if idle && !opts.exit_at_end {
                            stream_time = stream_time.max(now);
                        }
                        if *held.time() <= stream_time {
                            held.downgrade(&(stream_time + 1));
                        }
                        activator.activate_after(opts.poll_interval);
                    }
                    Poll::Finished => {
                        if opts.exit_at_end {
                            finished = true;
                            let ended = [
                                News::End(stream_time),
                                News::Clock {
                                    from: me,
                                    at: stream_time,
                                    pending: false,
                                },
                            ];
                            output.session(&*held).give_iterator(
                                ended.into_iter().flat_map(|n| Ingest::to_all(peers, n)),
                            );
                            activator.activate_after(Duration::from_millis(1));
                        } else {
                            cap = None;
                        }
                    }
                }
            }
        },
    );

    type Split<'s, D> = Stream<'s, Tick, Vec<D>>;
    type Update<E> = ((Timed<E>, Tick), Tick, isize);
    let (events, rest): (Split<Update<E>>, Split<Ingest<E>>) = stream.ok_err(|x| match x {
        Ingest::Event(e, t, at) => Ok(((e, at), t, 1isize)),
        other => Err(other),
    });
    let (invalid, news): (Split<InvalidRecord>, Split<(usize, News)>) = rest.ok_err(|x| match x {
        Ingest::Invalid(r) => Ok(*r),
        Ingest::Peer { to, news } => Err((to, news)),
        Ingest::Event(..) => unreachable!("events were split off"),
    });
    hear_peers(news, peers, hearing.clone(), final_tick.clone());
    let (events, duplicates) = dedup(state, events, opts.dedup_horizon_ms, hearing, counters);
    let rejected = invalid
        .clone()
        .unary::<CapacityContainerBuilder<Vec<(Rejection, Tick, isize)>>, _, _, _>(
            Pipeline,
            "RejectedInvalid",
            |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let t = *cap.time();
                        output.session(&cap).give_iterator(data.iter().map(|r| {
                            let reason = Rejected::Invalid(r.error.kind.clone());
                            let ts = r.claimed_ts.unwrap_or(r.append_ms.max(0) as u64);
                            (Rejection { reason, ts }, t, 1)
                        }));
                    });
                }
            },
        )
        .as_collection()
        .concat(duplicates.as_collection());
    Ingested {
        events: events.as_collection(),
        invalid,
        rejected,
        final_tick,
    }
}

/// Per event id, the least stream time any copy of it was read at, oldest first in
/// `order`; and the watermark applied so far (see [`dedup`]).
#[derive(Default, Serialize, Deserialize)]
struct Seen {
    first: rustc_hash::FxHashMap<EventId, Tick>,
    order: VecDeque<(Tick, EventId)>,
    floor: Tick,
}

/// Collects what the sources tell each other. Once every worker's source finished, the
/// final tick is the largest stream time reached.
fn hear_peers<'s>(
    news: Stream<'s, Tick, Vec<(usize, News)>>,
    peers: usize,
    heard: Rc<RefCell<Heard>>,
    final_tick: Rc<Cell<Option<Tick>>>,
) {
    news.sink(
        Exchange::new(|(to, _): &(usize, News)| *to as u64),
        "HearPeers",
        move |(input, _)| {
            let mut heard = heard.borrow_mut();
            input.for_each(|cap, data| {
                let told_at = cap.least().copied().unwrap_or(0);
                for (_, news) in data.drain(..) {
                    match news {
                        News::End(at) => heard.ends.push(at),
                        News::Pause { epoch, at, last } => {
                            heard.proposals.entry(epoch).or_default().push((at, last))
                        }
                        News::Clock { from, at, pending } => {
                            heard.clocks.insert(from, (at, pending));
                            heard
                                .told
                                .entry(from)
                                .or_default()
                                .push_back((told_at, at, pending));
                        }
                    }
                }
            });
            if heard.ends.len() == peers && final_tick.get().is_none() {
                final_tick.set(heard.ends.iter().copied().max());
            }
        },
    );
}

/// Drops the copies of an event (DESIGN §4), decided per record by its identity and the
/// stream time at it — its partition's largest event time up to and including it — never
/// by the tick its batch went in at, the worker count or where a restart resumed:
///
/// of the copies of an id, the one read at the least stream time (the *first*) counts, and
/// every other copy read within `horizon` of it is a duplicate; a copy read later than
/// that counts again (dedup does not look further back). Copies of a late event are caught
/// like any others: they are read at nearby stream times, whatever their event time.
///
/// Copies arrive in any order across partitions: a copy read at an earlier stream time
/// than the one counted takes its place (the same event, so nothing changes but the
/// count of duplicates). When copies under one `event_id` differ, the first to arrive
/// counts.
///
/// An id is kept while a copy within the horizon may still come: until the watermark —
/// every worker's slowest partition with records to come, as its source told it — passes
/// its first copy's stream time by the horizon. A record's stream time is taken as at
/// least the watermark applied (`floor`), so a copy arriving after its id was forgotten is
/// outside the horizon by the same rule; in a replay every partition with records left
/// holds the watermark back, so the floor never moves a decision. The ids, their stream
/// times and the floor are checkpointed; a restore keeps this worker's ids and the highest
/// floor.
#[allow(clippy::type_complexity)]
fn dedup<'s, E>(
    state: &State,
    events: Stream<'s, Tick, Vec<((Timed<E>, Tick), Tick, isize)>>,
    horizon: u64,
    heard: Rc<RefCell<Heard>>,
    counters: Arc<Counters>,
) -> (
    Stream<'s, Tick, Vec<(Timed<E>, Tick, isize)>>,
    Stream<'s, Tick, Vec<(Rejection, Tick, isize)>>,
)
where
    E: timely::ExchangeData,
{
    let route = |id: &EventId| id.0 as u64;
    let shared: Rc<RefCell<Seen>> = Rc::default();
    let (me, peers) = (state.worker() as u64, state.peers() as u64);
    for part in state.register("dedup", Split::ByKey, shared.clone()) {
        let mut seen = shared.borrow_mut();
        seen.floor = seen.floor.max(part.floor);
        for (at, id) in part.order {
            if route(&id) % peers == me && part.first.get(&id) == Some(&at) {
                seen.first.insert(id, at);
                seen.order.push_back((at, id));
            }
        }
    }
    shared.borrow_mut().order.make_contiguous().sort();
    let pact = Exchange::new(move |((e, _), _, _): &((Timed<E>, Tick), Tick, isize)| route(&e.id));
    type KeptOrDup<E> = Result<(Timed<E>, Tick, isize), (Rejection, Tick, isize)>;
    let kept_or_dup = events
        .unary_frontier::<CapacityContainerBuilder<Vec<KeptOrDup<E>>>, _, _, _>(
            pact,
            "Dedup",
            move |_, _| {
                move |(input, frontier), output| {
                    let mut guard = shared.borrow_mut();
                    let Seen {
                        first,
                        order,
                        floor,
                    } = &mut *guard;
                    input.for_each(|cap, data| {
                        let (mut dups, mut kept) = (0, 0);
                        let mut session = output.session(&cap);
                        for ((ev, at), t, r) in data.drain(..) {
                            let at = at.max(*floor);
                            let duplicate = match first.get_mut(&ev.id) {
                                None => {
                                    first.insert(ev.id, at);
                                    order.push_back((at, ev.id));
                                    false
                                }
                                // read earlier than the copy counted: it takes its place
                                Some(s) if at < *s => {
                                    let within = *s <= at.saturating_add(horizon);
                                    *s = at;
                                    order.push_back((at, ev.id));
                                    within
                                }
                                Some(s) => at <= s.saturating_add(horizon),
                            };
                            if duplicate {
                                dups += 1;
                                let reason = Rejected::Duplicate;
                                session.give(Err((Rejection { reason, ts: ev.ts }, t, r)));
                            } else {
                                kept += 1;
                                session.give(Ok((ev, t, r)));
                            }
                        }
                        Counters::add(&counters.duplicates, dups);
                        Counters::add(&counters.accepted, kept);
                    });
                    let complete = frontier
                        .frontier()
                        .iter()
                        .next()
                        .copied()
                        .unwrap_or(Tick::MAX);
                    if let Some(w) = heard.borrow_mut().watermark(complete, peers as usize) {
                        *floor = (*floor).max(w);
                    }
                    while let Some(&(at, id)) = order.front() {
                        if at.saturating_add(horizon) >= *floor {
                            break;
                        }
                        order.pop_front();
                        if first.get(&id) == Some(&at) {
                            first.remove(&id);
                        }
                    }
                }
            },
        );
    kept_or_dup.ok_err(|x| x)
}
