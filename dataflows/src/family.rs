//! The contract between a feature family and the runtime.
//!
//! A family is one file: it decodes its topics, builds its features from a collection of
//! events, names its tables and makes synthetic traffic. The runtime only sees [`Family`],
//! the object-safe face every [`Dataflow`] gets for free, and the [`REGISTRY`].

use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::{Scope, Stream};

use std::time::Duration;

use crate::counters::Counters;
use crate::dimension::{dimension, DimRow, DimensionSpec, TableSource};
use crate::features::{FeatureRow, TableSpec};
use crate::ingest::{ingest, IngestOptions, Rejection, Timed};
use crate::record::{DecodeError, InvalidRecord, KeyLimits, RecordRef, RecordSource};
use crate::state::State;
use crate::time::{Tick, Window};

/// One record of synthetic traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Produced {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// The event time it carries (epoch ms).
    pub ts: u64,
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
    /// Share of events (0..1) sent twice, and of events delayed out of order.
    pub duplicate_share: f64,
    pub disorder_share: f64,
    /// Share of malformed records.
    pub invalid_share: f64,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        GenerateSpec {
            events: 10_000,
            seed: 1,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            rate: 1_000,
            duplicate_share: 0.01,
            disorder_share: 0.02,
            invalid_share: 0.0,
        }
    }
}

/// Copies of generated records sent again a little later: the duplicates a generator
/// makes on request (`GenerateSpec::duplicate_share`).
#[derive(Default)]
pub struct Echoes {
    /// Each copy with the number of records to wait before it goes.
    waiting: std::collections::VecDeque<(u32, Produced)>,
    /// Copies go after 0..`within` records.
    within: u32,
}

impl Echoes {
    pub fn within(records: u32) -> Self {
        Echoes {
            waiting: Default::default(),
            within: records.max(1),
        }
    }
    /// The next copy once the generator is done.
    pub fn rest(&mut self) -> Option<Produced> {
        self.waiting.pop_front().map(|(_, p)| p)
    }
    /// A copy due now, if any (one more record has gone by).
    pub fn due(&mut self) -> Option<Produced> {
        let (wait, _) = self.waiting.front_mut()?;
        if *wait == 0 {
            return self.rest();
        }
        *wait -= 1;
        None
    }
    /// Sends `record` again later with probability `share`.
    pub fn maybe_repeat(&mut self, rng: &mut impl rand::RngExt, share: f64, record: &Produced) {
        if rng.random_bool(share) {
            let wait = rng.random_range(0..self.within);
            self.waiting.push_back((wait, record.clone()));
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
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<Self::Event>, DecodeError>;
    /// The entity keys an event names, `(field, value)`, one per item of a list field:
    /// ingest turns an event away whose keys exceed `max_key_bytes` or whose lists exceed
    /// `max_items_per_event` (DLQ, oversized).
    fn keys(&self, _event: &Self::Event, _visit: &mut dyn FnMut(&'static str, &str)) {}
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
    /// Dimension rows that go with the synthetic traffic (`generate` fills the tables).
    fn dimension_rows(&self, _spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        Vec::new()
    }
}

/// What a family installed in one worker's dataflow.
pub struct Installed<'s> {
    pub features: VecCollection<'s, Tick, FeatureRow>,
    pub invalid: Stream<'s, Tick, Vec<InvalidRecord>>,
    pub final_tick: Rc<std::cell::Cell<Option<Tick>>>,
}

/// The object-safe face of a [`Dataflow`], which the runtime drives.
pub trait Family: Send + Sync {
    fn name(&self) -> &'static str;
    fn topics(&self) -> Vec<String>;
    fn tables(&self) -> Vec<TableSpec>;
    fn horizon(&self) -> Window;
    fn dimensions(&self) -> Vec<DimensionSpec>;
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send>;
    fn at_read(
        &self,
        table: &str,
        fields: &mut serde_json::Map<String, serde_json::Value>,
        now_ms: u64,
    );
    fn read_time_features(&self, table: &str) -> Vec<&'static str>;
    fn dimension_rows(&self, spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)>;
    /// `tables` holds one entry per dimension: a source on the worker that reads it.
    fn install<'s>(
        &self,
        scope: Scope<'s, Tick>,
        source: Box<dyn RecordSource>,
        tables: Vec<Option<Box<dyn TableSource>>>,
        opts: IngestOptions,
        counters: Arc<Counters>,
        state: &State,
    ) -> Installed<'s>;
}

impl<D: Dataflow + Clone> Family for D {
    fn name(&self) -> &'static str {
        D::NAME
    }
    fn topics(&self) -> Vec<String> {
        Dataflow::topics(self)
    }
    fn tables(&self) -> Vec<TableSpec> {
        Dataflow::tables(self)
    }
    fn horizon(&self) -> Window {
        Dataflow::horizon(self)
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Dataflow::generate(self, spec)
    }
    fn at_read(
        &self,
        table: &str,
        fields: &mut serde_json::Map<String, serde_json::Value>,
        now_ms: u64,
    ) {
        Dataflow::at_read(self, table, fields, now_ms)
    }
    fn read_time_features(&self, table: &str) -> Vec<&'static str> {
        Dataflow::read_time_features(self, table)
    }
    fn dimension_rows(&self, spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        Dataflow::dimension_rows(self, spec)
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        Dataflow::dimensions(self)
    }
    fn install<'s>(
        &self,
        scope: Scope<'s, Tick>,
        source: Box<dyn RecordSource>,
        tables: Vec<Option<Box<dyn TableSource>>>,
        opts: IngestOptions,
        counters: Arc<Counters>,
        state: &State,
    ) -> Installed<'s> {
        let this = self.clone();
        let start_at = opts.start_at;
        let limits = KeyLimits {
            max_key_bytes: opts.max_key_bytes,
            max_items_per_event: opts.max_items_per_event,
        };
        let decode = move |r: &RecordRef<'_>| {
            let event = this.decode(r)?;
            limits.check(|visit| this.keys(&event.event, visit))?;
            Ok(event)
        };
        let ingested = ingest(
            scope,
            state,
            source,
            decode,
            Dataflow::horizon(self),
            opts,
            counters,
        );
        // the invalid records' stream moves with the events' frontier and carries little
        let dimensions = tables
            .into_iter()
            .map(|t| {
                dimension(
                    &ingested.invalid,
                    t,
                    Duration::from_millis(100),
                    state,
                    start_at,
                )
            })
            .collect();
        Installed {
            features: self.build(ingested.events, dimensions, ingested.rejected, state),
            invalid: ingested.invalid,
            final_tick: ingested.final_tick,
        }
    }
}

/// Builds a family from its config section (`None` = defaults).
pub type Constructor = fn(Option<serde_json::Value>) -> Result<Box<dyn Family>, String>;

fn construct<D: Dataflow + Clone>(
    section: Option<serde_json::Value>,
) -> Result<Box<dyn Family>, String> {
    let config = match section {
        None => D::Config::default(),
        Some(v) => {
            serde_json::from_value(v).map_err(|e| format!("[dataflows.{}]: {e}", D::NAME))?
        }
    };
    let family = D::new(config);
    family
        .check()
        .map_err(|e| format!("[dataflows.{}]: {e}", D::NAME))?;
    Ok(Box::new(family))
}

/// Every family the engine knows: adding one is one line here.
pub const REGISTRY: &[(&str, Constructor)] = &[
    (
        crate::search::Search::NAME,
        construct::<crate::search::Search>,
    ),
    (
        crate::reading::Reading::NAME,
        construct::<crate::reading::Reading>,
    ),
    (crate::ads::Ads::NAME, construct::<crate::ads::Ads>),
];

/// Looks a family up by name.
pub fn family(name: &str, section: Option<serde_json::Value>) -> Result<Box<dyn Family>, String> {
    match REGISTRY.iter().find(|(n, _)| *n == name) {
        Some((_, make)) => make(section),
        None => Err(format!(
            "unknown dataflow '{name}': known dataflows are {}",
            REGISTRY
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
