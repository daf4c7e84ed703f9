//! Data quality on any family (issue #22): [`Checked`] wraps a family so that its records
//! and feature changes are tallied against the expectations (`contract::quality`) and an
//! hourly report view `quality_{family}` joins its feature views.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::Scope;

use crate::contract::counters::Counters;
use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec, TableSource};
use crate::contract::quality::{CheckName, ExpectSpec, Expectations, Hour};
use crate::contract::record::RecordSource;
use crate::contract::state::State;
use crate::contract::table::{float, int, list, SinkKind, TableSpec};
use crate::contract::time::{Tick, Window};
use crate::ingest::IngestOptions;
use crate::install::{Family, Installed};
use crate::operators::hourly::hourly;
use crate::operators::tally::{tally, Observed};

/// The expectations every family has (switched off with `quality.builtin = false`): its
/// records decode, and copies of an event are rare.
pub fn common_expectations() -> Vec<ExpectSpec> {
    vec![
        ExpectSpec::new("events valid", "events", CheckName::Valid).share(0.01),
        ExpectSpec::new("events unique", "events", CheckName::Unique).share(0.05),
    ]
}

/// The report view: one row per expectation and hour.
pub fn report_table(family: &str) -> TableSpec {
    TableSpec {
        ns: Box::leak(format!("quality_{family}").into_boxed_str()),
        keys: vec!["hour", "expectation"],
        fields: vec![
            float("observed"),
            int("failures"),
            int("total"),
            int("passed"),
            list("sample"),
        ],
        version: 1,
        sink: SinkKind::PgTable,
        redis_prefix: None,
    }
}

/// A family whose records and features are checked against expectations.
pub struct Checked {
    inner: Box<dyn Family>,
    exps: Arc<Expectations>,
    report: TableSpec,
}

impl Checked {
    /// `specs` and, with `builtin`, the family's own and the common ones, on the topics
    /// the job reads (`None`: the family's own); the error names the expectation and the fix.
    pub fn new(
        inner: Box<dyn Family>,
        topics: Option<&[String]>,
        specs: &[ExpectSpec],
        builtin: bool,
    ) -> Result<Self, String> {
        let mut all: Vec<ExpectSpec> = Vec::new();
        if builtin {
            all.extend(common_expectations());
            all.extend(inner.expectations());
        }
        for s in specs {
            // a configured expectation of a built-in's name replaces it
            all.retain(|b| b.name != s.name);
            all.push(s.clone());
        }
        let own = inner.topics();
        let topics = topics.map_or_else(|| own.clone(), <[String]>::to_vec);
        let exps = Expectations::compile(&all, &topics, &own, &inner.tables(), &inner.flags())?;
        let report = report_table(inner.name());
        Ok(Checked {
            inner,
            exps: Arc::new(exps),
            report,
        })
    }
}

/// How often a worker passes its tallies on to the workers that sum them: the report
/// rows are at most this late, and a replay pays for one exchange per interval.
const GATHER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Family for Checked {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn topics(&self) -> Vec<String> {
        self.inner.topics()
    }
    fn tables(&self) -> Vec<TableSpec> {
        let mut t = self.inner.tables();
        t.push(self.report.clone());
        t
    }
    fn horizon(&self) -> Window {
        self.inner.horizon()
    }
    fn with_batch_windows(&mut self) {
        self.inner.with_batch_windows()
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        self.inner.dimensions()
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        self.inner.generate(spec)
    }
    fn at_read(
        &self,
        table: &str,
        fields: &mut serde_json::Map<String, serde_json::Value>,
        now_ms: u64,
    ) {
        self.inner.at_read(table, fields, now_ms)
    }
    fn read_time_features(&self, table: &str) -> Vec<&'static str> {
        self.inner.read_time_features(table)
    }
    fn feature_loop(&self, counters: &Counters) -> Option<serde_json::Value> {
        self.inner.feature_loop(counters)
    }
    fn dimension_rows(&self, spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        self.inner.dimension_rows(spec)
    }
    fn expectations(&self) -> Vec<ExpectSpec> {
        self.exps.list.iter().map(|e| e.spec.clone()).collect()
    }
    fn flags(&self) -> Vec<&'static str> {
        self.inner.flags()
    }
    fn install<'s>(
        &self,
        scope: Scope<'s, Tick>,
        source: Box<dyn RecordSource>,
        tables: Vec<Option<Box<dyn TableSource>>>,
        mut opts: IngestOptions,
        counters: Arc<Counters>,
        state: &State,
    ) -> Installed<'s> {
        opts.quality = Some(self.exps.clone());
        let installed = self
            .inner
            .install(scope, source, tables, opts, counters, state);
        let table = self.inner.tables().len() as u8;
        let observed = Observed {
            features: installed.features,
            ingested: installed.tallies.clone(),
            rejected: installed.rejected.clone(),
            flagged: installed.flagged,
        };
        let restored_sums: Rc<RefCell<BTreeSet<(String, Hour)>>> = Rc::default();
        let (features, tallies) = tally(
            state,
            observed,
            self.exps.clone(),
            restored_sums.clone(),
            GATHER_EVERY,
            installed.final_tick.clone(),
        );
        let keep = self.inner.horizon().length_ms;
        let exps = self.exps.clone();
        let features = hourly(state, tallies, features, exps, table, keep, &restored_sums);
        Installed {
            features,
            invalid: installed.invalid,
            rejected: installed.rejected,
            tallies: installed.tallies,
            flagged: None,
            final_tick: installed.final_tick,
        }
    }
}
