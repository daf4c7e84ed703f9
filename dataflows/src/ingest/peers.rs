//! What the workers' sources tell each other, and what each worker heard: checkpoint
//! proposals, the end of the input, and every worker's slowest partition (for partition
//! alignment and the dedup watermark).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::contract::time::Tick;

/// What a worker's source tells the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum News {
    /// It finished at this stream time.
    End(Tick),
    /// It paused for checkpoint `epoch` having inserted nothing after `at`; `last` if its
    /// runtime is stopping (then the checkpoint is every worker's last).
    Pause { epoch: u64, at: Tick, last: bool },
    /// It took its snapshot of checkpoint `epoch`: no source reads past the pause before
    /// every worker has (a record read after it could reach a worker still to snapshot,
    /// and be in that worker's part of the checkpoint but not in the reader's positions).
    Snapshotted { epoch: u64 },
    /// The position of worker `from`'s slowest partition, and whether it has records to
    /// come: a partition of another worker may not run ahead of it by more than the skew.
    Clock {
        from: usize,
        at: Tick,
        pending: bool,
    },
}

/// What a worker heard from the sources of all workers (itself included).
#[derive(Default)]
pub(super) struct Heard {
    /// Per checkpoint epoch, the ticks proposed and whether each proposer is stopping.
    pub proposals: BTreeMap<u64, Vec<(Tick, bool)>>,
    /// Per checkpoint epoch, how many workers have taken their snapshot of it.
    pub snapshotted: BTreeMap<u64, usize>,
    /// The stream times at which the sources finished (`exit_at_end`).
    pub ends: Vec<Tick>,
    /// Per worker, its slowest partition's position and whether it has records to come.
    pub clocks: BTreeMap<usize, (Tick, bool)>,
    /// The same news with the tick it was told at, until the dedup frontier passes it.
    pub told: BTreeMap<usize, VecDeque<(Tick, Tick, bool)>>,
    /// Per worker, the latest clock the dedup frontier has passed.
    pub passed: BTreeMap<usize, (Tick, bool)>,
    /// The source, woken by a peer's clock while it holds records back for a peer: a
    /// replay then moves by a skew of event time per exchange, not per poll interval.
    pub wake: Option<timely::scheduling::Activator>,
    /// Whether the source holds records back and waits for news.
    pub waiting: bool,
}

impl Heard {
    /// The dedup watermark once the input frontier is at `frontier`: the least position of
    /// every worker's slowest partition with records to come, as told at a tick the
    /// frontier has passed. Every record still to arrive comes from such a partition at or
    /// after its position, so its stream time is at least this; `None` until every worker
    /// was heard from, or while none has records to come.
    pub fn watermark(&mut self, frontier: Tick, peers: usize) -> Option<Tick> {
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

/// Collects what the sources tell each other. Once every worker's source finished, the
/// final tick is the largest stream time reached.
pub(super) fn hear_peers<'s>(
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
                        News::Snapshotted { epoch } => {
                            *heard.snapshotted.entry(epoch).or_default() += 1
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
            if heard.waiting {
                heard.waiting = false;
                if let Some(wake) = &heard.wake {
                    wake.activate();
                }
            }
            if heard.ends.len() == peers && final_tick.get().is_none() {
                final_tick.set(heard.ends.iter().copied().max());
            }
        },
    );
}
