//! Checkpointed state (DESIGN §4): what a worker needs to resume, and the pause that
//! makes a snapshot agree with the source's offsets.
//!
//! A stateful operator registers its state here while the dataflow is built. To take a
//! checkpoint the runtime asks the sources to pause: every worker's source proposes the
//! tick it has reached, all adopt the largest, `T`, and stop inserting with their
//! capability at `T + 1`. Once everything up to `T` has gone through the dataflow, every
//! registered state holds exactly the effect of the records read so far, and the runtime
//! serializes it with the source's positions, then lets the sources go on.
//!
//! A restore loads the snapshots of tick `T` and each operator re-inserts its state at `T`;
//! the runtime does not write tick `T` again (the stores hold it already).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::contract::time::Tick;

/// Bumped whenever the layout of a snapshot changes; an older checkpoint is refused.
pub const FORMAT: u32 = 6;

/// One worker's part of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub format: u32,
    pub family: String,
    pub tick: Tick,
    pub worker: usize,
    pub peers: usize,
    /// Each registered state, in the order the dataflow registered it: (name, bincode).
    pub stages: Vec<(String, Vec<u8>)>,
    /// The source's next offset per (topic, partition), after everything inserted by `tick`.
    pub positions: Vec<(String, i32, i64)>,
}

/// How a state is shared out when a checkpoint is restored on a different number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Any worker may hold any part: old worker `w`'s part goes to new worker `w % peers`.
    ByWorker,
    /// The state is partitioned by key: every new worker reads every part and keeps its keys.
    ByKey,
}

/// The checkpoint a worker resumes from: every old worker's snapshot of one tick.
#[derive(Clone, Debug)]
pub struct Restore {
    pub tick: Tick,
    pub parts: Vec<WorkerSnapshot>,
}

type Snapshotter = Box<dyn Fn() -> Result<Vec<u8>, String>>;

/// A worker's registry of checkpointed state and its side of the pause protocol.
#[derive(Clone)]
pub struct State {
    inner: Rc<Inner>,
}

struct Inner {
    worker: usize,
    peers: usize,
    restore: Option<Arc<Restore>>,
    stages: RefCell<Vec<(String, Snapshotter)>>,
    error: RefCell<Option<String>>,
    /// Set by the runtime: pause for a checkpoint as soon as possible.
    wanted: Cell<bool>,
    /// Set by the runtime when it stops: the next pause is the last one.
    wanted_last: Cell<bool>,
    /// The agreed tick the source is paused at, until the runtime resumes it.
    paused_at: Cell<Option<Tick>>,
    /// Whether the agreed pause is the last one: some worker is stopping, so every worker
    /// takes this snapshot as its last and its source stays paused.
    paused_last: Cell<bool>,
    resume: Cell<bool>,
}

impl State {
    pub fn new(worker: usize, peers: usize, restore: Option<Arc<Restore>>) -> Self {
        State {
            inner: Rc::new(Inner {
                worker,
                peers,
                restore,
                stages: RefCell::default(),
                error: RefCell::default(),
                wanted: Cell::new(false),
                wanted_last: Cell::new(false),
                paused_at: Cell::new(None),
                paused_last: Cell::new(false),
                resume: Cell::new(false),
            }),
        }
    }

    /// A worker without checkpoints (tests, benchmarks, the demo).
    pub fn none(worker: usize, peers: usize) -> Self {
        State::new(worker, peers, None)
    }

    pub fn worker(&self) -> usize {
        self.inner.worker
    }
    pub fn peers(&self) -> usize {
        self.inner.peers
    }
    pub fn restore(&self) -> Option<&Restore> {
        self.inner.restore.as_deref()
    }

    /// Registers `state` under `name` and returns the parts of it this worker restores.
    pub fn register<S>(&self, name: &str, split: Split, state: Rc<RefCell<S>>) -> Vec<S>
    where
        S: Serialize + DeserializeOwned + 'static,
    {
        let mut stages = self.inner.stages.borrow_mut();
        let index = stages.len();
        let id = format!("{index}:{name}");
        let mut parts = Vec::new();
        if let Some(restore) = &self.inner.restore {
            for part in &restore.parts {
                if split == Split::ByWorker && part.worker % self.inner.peers != self.inner.worker {
                    continue;
                }
                match part.stages.get(index) {
                    Some((n, bytes)) if *n == id => match bincode::deserialize::<S>(bytes) {
                        Ok(s) => parts.push(s),
                        Err(e) => self.fail(format!("state {id} of worker {}: {e}", part.worker)),
                    },
                    other => self.fail(format!(
                        "the checkpoint at tick {} holds {:?} where this dataflow has state {id}: \
                         it was written by another version of the dataflow; \
                         use a new group (--group-id) or remove the checkpoints to start over",
                        restore.tick,
                        other.map(|(n, _)| n)
                    )),
                }
            }
        }
        stages.push((
            id,
            Box::new(move || bincode::serialize(&*state.borrow()).map_err(|e| e.to_string())),
        ));
        parts
    }

    fn fail(&self, message: String) {
        self.inner.error.borrow_mut().get_or_insert(message);
    }

    /// Refuses the restore with `message`: a registered state that cannot be used as it
    /// was restored (a setting it depends on changed since the checkpoint).
    pub fn refuse(&self, message: String) {
        self.fail(message);
    }

    /// Why the checkpoint could not be restored, if it could not.
    pub fn error(&self) -> Option<String> {
        let stages = self.inner.stages.borrow().len();
        if let Some(restore) = &self.inner.restore {
            if let Some(p) = restore.parts.iter().find(|p| p.stages.len() != stages) {
                return Some(format!(
                    "the checkpoint at tick {} has {} states where this dataflow has {stages}: \
                     it was written by another version of the dataflow; \
                     use a new group (--group-id) or remove the checkpoints to start over",
                    restore.tick,
                    p.stages.len()
                ));
            }
        }
        self.inner.error.borrow().clone()
    }

    /// Serializes every registered state. Call only while paused and drained.
    pub fn snapshot(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.inner
            .stages
            .borrow()
            .iter()
            .map(|(name, snap)| Ok((name.clone(), snap()?)))
            .collect()
    }

    /// The runtime asks for a checkpoint.
    pub fn request(&self) {
        self.inner.wanted.set(true);
    }
    /// The runtime stops: it asks for a checkpoint after which the sources stay paused.
    pub fn request_last(&self) {
        self.inner.wanted_last.set(true);
        self.inner.wanted.set(true);
    }
    /// The tick the source is paused at, once the workers agreed on one.
    pub fn paused_at(&self) -> Option<Tick> {
        self.inner.paused_at.get()
    }
    /// Whether the agreed pause is the last: some worker asked for it with `request_last`
    /// (all workers agree on this, as on the tick).
    pub fn paused_last(&self) -> bool {
        self.inner.paused_last.get()
    }
    /// The snapshot is taken: the source goes on.
    pub fn resume(&self) {
        self.inner.paused_at.set(None);
        self.inner.resume.set(true);
    }

    // The source's side.
    pub(crate) fn take_wanted(&self) -> bool {
        self.inner.wanted.replace(false)
    }
    pub(crate) fn wants_last(&self) -> bool {
        self.inner.wanted_last.get()
    }
    pub(crate) fn set_paused(&self, at: Tick, last: bool) {
        self.inner.paused_at.set(Some(at));
        self.inner.paused_last.set(last);
    }
    pub(crate) fn take_resume(&self) -> bool {
        self.inner.resume.replace(false)
    }
}
