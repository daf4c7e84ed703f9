//! From records to events: decode, validate, stream time, too-late and dedup (DESIGN §3, §4).
//!
//! The stages, one file each: [`source`] reads a worker's records (stream time, the
//! checkpoint pause, partition alignment from [`align`], news for the peers), [`validate`]
//! checks each record, [`peers`] collects what the sources tell each other, and [`dedup`]
//! drops the copies of an event. [`ingest`] wires them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::{source as source_operator, Operator};
use timely::dataflow::{Scope, Stream};

use crate::contract::counters::Counters;
use crate::contract::event::{Rejected, Rejection, Timed};
use crate::contract::quality::{Expectations, Tally, TallyBatch, TallyKey};
use crate::contract::record::{DecodeError, InvalidRecord, RecordRef, RecordSource};
use crate::contract::state::{Split, State};
use crate::contract::time::{Tick, Window};
use peers::{hear_peers, Heard, News};
use source::{Ingest, Reader, Wiring};

pub mod align;
mod dedup;
mod peers;
mod quality;
mod source;
mod validate;

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
    /// The expectations on records, tallied as they are read (`None`: none).
    pub quality: Option<Arc<Expectations>>,
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
            quality: None,
        }
    }
}

/// Each partition's stream time, as a checkpoint records it.
type PartitionTimes = Vec<((String, i32), Tick)>;

/// The result of ingesting one worker's source.
pub struct Ingested<'s, E: Clone + 'static> {
    /// Valid, not too late, first copies only.
    pub events: VecCollection<'s, Tick, Timed<E>>,
    pub invalid: Stream<'s, Tick, Vec<InvalidRecord>>,
    /// Invalid records and duplicates, at the tick they were read.
    pub rejected: VecCollection<'s, Tick, Rejection>,
    /// What the records add to the expectations' hourly tallies (`IngestOptions::quality`).
    pub tallies: Stream<'s, Tick, Vec<(TallyKey, Tally)>>,
    /// Once every worker's source finished (`exit_at_end`): the largest stream time reached.
    pub final_tick: Rc<Cell<Option<Tick>>>,
}

/// Reads a worker's source into the dataflow.
///
/// Stream time `S` is the largest event time read so far. A batch goes in at `S` after
/// the batch; once the source has caught up, the tick closes (the capability moves to
/// `S + 1`), so a later batch that does not raise `S` goes in at `S + 1`. When every
/// partition is idle, `S` follows the wall clock (not with `exit_at_end`). A partition more
/// than `max_partition_skew_ms` ahead of the slowest one with records to come waits for it
/// ([`align::Aligner`]), so `S` does not depend on the order the source interleaves partitions in.
///
/// For a checkpoint (see [`crate::contract::state`]) the sources pause: each proposes the tick it
/// reached, all move to one past the largest and wait until the runtime resumes them.
/// Long: the stages' wiring (restore, source, split, peers, dedup, rejections) in one place, each a few lines.
/// Eight arguments: what a family gives (decode, horizon, kind) and what the runtime gives
/// (scope, state, records, options, counters), none of which belong together.
#[allow(clippy::too_many_arguments)]
pub fn ingest<'s, E, D>(
    scope: Scope<'s, Tick>,
    state: &State,
    records: Box<dyn RecordSource>,
    decode: D,
    horizon: Window,
    opts: IngestOptions,
    counters: Arc<Counters>,
    kind: impl Fn(&E) -> usize + 'static,
) -> Ingested<'s, E>
where
    E: timely::ExchangeData + differential_dataflow::Data,
    D: Fn(&RecordRef<'_>) -> Result<Timed<E>, DecodeError> + 'static,
{
    let final_tick: Rc<Cell<Option<Tick>>> = Rc::new(Cell::new(None));
    let peers = scope.peers();
    let heard: Rc<RefCell<Heard>> = Rc::default();
    // each partition's stream time, as the newest checkpoint recorded it: decisions after
    // a restart go on from there (not from the restart's first tick)
    let partition_times: Rc<RefCell<PartitionTimes>> = Rc::default();
    let mut restored_times: BTreeMap<(String, i32), Tick> = BTreeMap::new();
    for part in state.register("partition_times", Split::ByKey, partition_times.clone()) {
        for (p, t) in part {
            let e = restored_times.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
    }
    assert!(
        state.restore().is_none_or(|r| r.tick < opts.start_at),
        "a restored checkpoint's tick is in the past"
    );
    let wiring = Wiring {
        records,
        opts: opts.clone(),
        counters: counters.clone(),
        control: state.clone(),
        heard: heard.clone(),
        horizon,
        final_tick: final_tick.clone(),
        recorded_times: partition_times,
        me: scope.index(),
        peers,
        restored_low: restored_times.values().copied().min().unwrap_or(0),
    };
    let wake = heard.clone();
    let stream = source_operator::<_, CapacityContainerBuilder<Vec<Ingest<E>>>, _, _>(
        scope,
        "Ingest",
        move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            wake.borrow_mut().wake = Some(activator.clone());
            let mut reader = Reader::new(wiring, activator, decode, cap, restored_times);
            move |output| reader.step(output)
        },
    );

    type Parts<'s, D> = Stream<'s, Tick, Vec<D>>;
    type Update<E> = ((Timed<E>, Tick), Tick, isize);
    let (events, rest): (Parts<Update<E>>, Parts<Ingest<E>>) = stream.ok_err(|x| match x {
        Ingest::Event(e, t, at) => Ok(((e, at), t, 1isize)),
        other => Err(other),
    });
    let (tallies, rest): (Parts<TallyBatch>, Parts<Ingest<E>>) = rest.ok_err(|x| match x {
        Ingest::Tallies(t) => Ok(t),
        other => Err(other),
    });
    let tallies = tallies.unary::<CapacityContainerBuilder<Vec<(TallyKey, Tally)>>, _, _, _>(
        Pipeline,
        "Tallies",
        |_, _| {
            |input, output| {
                input.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(0) {
                        output.session(&cap).give_iterator(data.drain(..).flatten());
                    }
                })
            }
        },
    );
    let (invalid, news): (Parts<InvalidRecord>, Parts<(usize, News)>) = rest.ok_err(|x| match x {
        Ingest::Invalid(r) => Ok(*r),
        Ingest::Peer { to, news } => Err((to, news)),
        Ingest::Event(..) | Ingest::Tallies(_) => unreachable!("split off"),
    });
    hear_peers(news, peers, heard.clone(), final_tick.clone());
    let (events, duplicates) =
        dedup::dedup(state, events, opts.dedup_horizon_ms, heard, counters, kind);
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
        tallies,
        final_tick,
    }
}
