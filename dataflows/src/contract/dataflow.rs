//! The contract between a feature family and the runtime.
//!
//! A family is one folder: it decodes its topics, builds its features from a collection of
//! events, names its tables and makes synthetic traffic. The runtime only sees
//! `install::Family`, the object-safe face every [`Dataflow`] gets for free, and
//! `families::REGISTRY`.

use differential_dataflow::VecCollection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::contract::dimension::{DimRow, DimensionSpec};
use crate::contract::event::{Rejection, Timed};
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window};

/// Events a family flags: `(flag, the event's hour)` (`Dataflow::build_flagged`).
pub type Flagged<'s> = VecCollection<'s, Tick, (u8, Tick)>;

/// One record of synthetic traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Produced {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// The event time it carries (epoch ms).
    pub ts: u64,
}

impl Produced {
    /// An unkeyed record of `topic`.
    pub fn new(topic: &str, payload: impl Into<Vec<u8>>, ts: u64) -> Self {
        Produced {
            topic: topic.to_string(),
            key: None,
            payload: payload.into(),
            ts,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateSpec {
    pub events: u64,
    pub seed: u64,
    /// Event time of the first event (epoch ms).
    pub start_ms: u64,
    /// Events per second of event time.
    pub rate: u64,
    /// Event time the traffic covers (ms): when set, it decides the spacing instead of
    /// `rate` (a 35-day span lets every 7 d and 30 d contribution expire within the run).
    pub span_ms: Option<u64>,
    /// Share of events (0..1) sent twice, and of events delayed out of order.
    pub duplicate_share: f64,
    pub disorder_share: f64,
    /// Share of malformed records.
    pub invalid_share: f64,
}

impl GenerateSpec {
    /// Mean event-time gap between two events (ms).
    pub fn mean_gap_ms(&self) -> f64 {
        match self.span_ms {
            Some(span) => span as f64 / self.events.max(1) as f64,
            None => 1_000.0 / self.rate.max(1) as f64,
        }
    }
    /// Events per second of event time, rounded (at least 1).
    pub fn events_per_s(&self) -> u64 {
        ((1_000.0 / self.mean_gap_ms()).round() as u64).max(1)
    }
}

impl Default for GenerateSpec {
    fn default() -> Self {
        GenerateSpec {
            events: 10_000,
            seed: 1,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            rate: 1_000,
            span_ms: None,
            duplicate_share: 0.01,
            disorder_share: 0.02,
            invalid_share: 0.0,
        }
    }
}

/// A feature family (DESIGN §5): pure computation from events to feature rows.
pub trait Dataflow: Send + Sync + 'static {
    type Event: timely::ExchangeData + differential_dataflow::ExchangeData + std::hash::Hash;
    /// The family's config section (`[dataflows.NAME]`); unknown keys must be rejected.
    type Config: DeserializeOwned + Serialize + Default;

    const NAME: &'static str;

    fn new(config: Self::Config) -> Self;
    fn config(&self) -> &Self::Config;
    /// What the config's types alone cannot check; the error names the key and the fix.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    /// Kafka topics it reads.
    fn topics(&self) -> Vec<String>;
    /// Its feature views; `FeatureRow::table` indexes this list.
    fn tables(&self) -> Vec<TableSpec>;
    /// The longest window: an event whose expiry in it has passed changes nothing.
    fn horizon(&self) -> Window;
    /// `batch` and `training-set` call this before `tables` and `build`: a family may add
    /// long windows there that `run` skips (months of state held online for a feature
    /// only training reads), in views of their own. They do not widen `horizon`: an event
    /// too late for the online windows is too late for them as well.
    fn with_batch_windows(&mut self) {}
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<Self::Event>, DecodeError>;
    /// The entity keys an event names, `(field, value)`, one per item of a list field:
    /// ingest turns an event away whose keys exceed `max_key_bytes` or whose lists exceed
    /// `max_items_per_event` (DLQ, oversized).
    fn keys(&self, _event: &Self::Event, _visit: &mut dyn FnMut(&'static str, &str)) {}
    /// Which kind of event this is (below `counters::KINDS`), when a family counts its
    /// kinds apart in [`Dataflow::feature_loop`] (watch: impressions 0, watches 1).
    fn kind(&self, _event: &Self::Event) -> usize {
        0
    }
    /// The family's own fields of `/status` (its `dataflows.{name}.feature_loop`), e.g.
    /// seed 004's watch counts; `None` for none.
    fn feature_loop(
        &self,
        _counters: &crate::contract::counters::Counters,
    ) -> Option<serde_json::Value> {
        None
    }
    /// Tables read as live inputs; `build` gets one collection per spec, in this order.
    fn dimensions(&self) -> Vec<DimensionSpec> {
        Vec::new()
    }
    /// The rows of every table, one per entity, partitioned by entity (e.g. `reduce` output).
    /// `rejected` holds the records ingest turned away (invalid, duplicate), for
    /// data-quality features.
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<Self::Event>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow>;
    /// What the family flags events with, for `not_flagged` expectations: a judgement it
    /// makes from other events (reading: a scroll after its session's exit).
    fn flags(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// `build`, and the events it flags as `(flag, the event's hour)`: the flag's index in
    /// `flags`, with the diffs of their count (a later event may take a flag back). What
    /// it gives at a restore's tick sets the restored state up again and is not counted
    /// (the restored sums hold it).
    fn build_flagged<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<Self::Event>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> (VecCollection<'s, Tick, FeatureRow>, Option<Flagged<'s>>) {
        (self.build(events, dimensions, rejected, state), None)
    }
    /// Realistic synthetic traffic, deterministic per seed.
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send>;
    /// Adds the features a reader computes at read time (e.g. decayed values at `now_ms`)
    /// to an entity's stored fields.
    fn at_read(
        &self,
        _table: &str,
        _fields: &mut serde_json::Map<String, serde_json::Value>,
        _now_ms: u64,
    ) {
    }
    /// The names of the features `at_read` adds to a table's entities.
    fn read_time_features(&self, _table: &str) -> Vec<&'static str> {
        Vec::new()
    }
    /// The family's built-in expectations (its ranges and enums), checked unless
    /// `quality.builtin = false`.
    fn expectations(&self) -> Vec<crate::contract::quality::ExpectSpec> {
        Vec::new()
    }
    /// Dimension rows that go with the synthetic traffic (`generate` fills the tables).
    fn dimension_rows(&self, _spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        Vec::new()
    }
}
