//! The object-safe face of a [`Dataflow`] that the runtime drives: ingest, the dimension
//! inputs and the family's `build` wired into one worker's dataflow.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::VecCollection;
use timely::dataflow::{Scope, Stream};

use crate::contract::counters::Counters;
use crate::contract::dataflow::{Dataflow, Flagged, GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec, TableSource};
use crate::contract::event::Rejection;
use crate::contract::quality::{ExpectSpec, Tally, TallyKey};
use crate::contract::record::{InvalidRecord, KeyLimits, RecordRef, RecordSource};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window};
use crate::ingest::{ingest, IngestOptions};
use crate::operators::dimension::dimension;

/// What a family installed in one worker's dataflow.
pub struct Installed<'s> {
    pub features: VecCollection<'s, Tick, FeatureRow>,
    pub invalid: Stream<'s, Tick, Vec<InvalidRecord>>,
    /// Invalid records and duplicates (for data quality).
    pub rejected: VecCollection<'s, Tick, Rejection>,
    /// What the records add to the expectations' tallies (`IngestOptions::quality`).
    pub tallies: Stream<'s, Tick, Vec<(TallyKey, Tally)>>,
    /// The events the family flags ([`Dataflow::build_flagged`]).
    pub flagged: Option<Flagged<'s>>,
    pub final_tick: Rc<std::cell::Cell<Option<Tick>>>,
}

/// The object-safe face of a [`Dataflow`], which the runtime drives.
pub trait Family: Send + Sync {
    fn name(&self) -> &'static str;
    fn topics(&self) -> Vec<String>;
    fn tables(&self) -> Vec<TableSpec>;
    fn horizon(&self) -> Window;
    /// See [`Dataflow::with_batch_windows`].
    fn with_batch_windows(&mut self);
    fn dimensions(&self) -> Vec<DimensionSpec>;
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send>;
    fn at_read(
        &self,
        table: &str,
        fields: &mut serde_json::Map<String, serde_json::Value>,
        now_ms: u64,
    );
    fn read_time_features(&self, table: &str) -> Vec<&'static str>;
    /// See [`Dataflow::feature_loop`].
    fn feature_loop(&self, counters: &Counters) -> Option<serde_json::Value>;
    fn dimension_rows(&self, spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)>;
    /// See [`Dataflow::expectations`].
    fn expectations(&self) -> Vec<ExpectSpec>;
    /// See [`Dataflow::flags`].
    fn flags(&self) -> Vec<&'static str>;
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
    fn with_batch_windows(&mut self) {
        Dataflow::with_batch_windows(self)
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
    fn feature_loop(&self, counters: &Counters) -> Option<serde_json::Value> {
        Dataflow::feature_loop(self, counters)
    }
    fn expectations(&self) -> Vec<ExpectSpec> {
        Dataflow::expectations(self)
    }
    fn flags(&self) -> Vec<&'static str> {
        Dataflow::flags(self)
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
        // the flagged events are made only for the expectations that read them
        let checked = opts.quality.is_some();
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
            {
                let this = self.clone();
                move |e: &D::Event| this.kind(e)
            },
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
        let (events, rejected) = (ingested.events, ingested.rejected.clone());
        let (features, flagged) = if checked {
            self.build_flagged(events, dimensions, rejected, state)
        } else {
            (self.build(events, dimensions, rejected, state), None)
        };
        Installed {
            features,
            flagged,
            invalid: ingested.invalid,
            rejected: ingested.rejected,
            tallies: ingested.tallies,
            final_tick: ingested.final_tick,
        }
    }
}

/// Builds a family from its config section (`None` = defaults).
pub type Constructor = fn(Option<serde_json::Value>) -> Result<Box<dyn Family>, String>;

pub fn construct<D: Dataflow + Clone>(
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
