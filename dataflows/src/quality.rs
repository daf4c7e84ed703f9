//! Data quality on any family (issue #22): [`Checked`] wraps a family so that its records
//! and feature changes are tallied against the expectations (`contract::quality`) and an
//! hourly report view `quality_{family}` joins its feature views.

use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Concat;
use timely::dataflow::{Scope, Stream};

use crate::contract::counters::Counters;
use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec, TableSource};
use crate::contract::event::{Rejected, Rejection};
use crate::contract::quality::{
    hour_of, CheckName, ExpectSpec, Expectations, Seen, Tally, TallyKey, Target,
};
use crate::contract::record::RecordSource;
use crate::contract::state::State;
use crate::contract::table::{float, int, list, FeatureRow, SinkKind, TableSpec};
use crate::contract::time::{Tick, Window};
use crate::ingest::IngestOptions;
use crate::install::{Family, Installed};
use crate::operators::hourly::hourly;

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
        let exps = Expectations::compile(&all, &topics, &own, &inner.tables())?;
        let report = report_table(inner.name());
        Ok(Checked {
            inner,
            exps: Arc::new(exps),
            report,
        })
    }
}

/// A feature update passed on, or a tally it made.
#[derive(Clone)]
enum Passed {
    Row((FeatureRow, Tick, isize)),
    Tally((TallyKey, Tally)),
}

/// The features as they were, and what each change adds to the tallies of the
/// expectations on its view. The updates pass through (moved, not copied: a second
/// reader of the features would copy every update).
fn change_tallies<'s>(
    features: VecCollection<'s, Tick, FeatureRow>,
    exps: Arc<Expectations>,
) -> (
    VecCollection<'s, Tick, FeatureRow>,
    Stream<'s, Tick, Vec<(TallyKey, Tally)>>,
) {
    let mut by_table: Vec<Vec<(u16, Option<usize>)>> = Vec::new();
    for (i, e) in exps.list.iter().enumerate() {
        if let Target::Feature(t, f) = e.target {
            by_table.resize_with(by_table.len().max(t as usize + 1), Vec::new);
            by_table[t as usize].push((i as u16, f));
        }
    }
    let both = features
        .inner
        .unary::<CapacityContainerBuilder<Vec<Passed>>, _, _, _>(
            Pipeline,
            "QualityChanges",
            move |_, _| {
                let mut tallies: FxHashMap<TallyKey, Tally> = FxHashMap::default();
                move |input, output| {
                    input.for_each(|cap, data| {
                        for (row, t, r) in data.iter() {
                            let checks = by_table.get(row.table as usize).filter(|_| *r > 0);
                            for &(i, field) in checks.into_iter().flatten() {
                                let e = &exps.list[i as usize];
                                let tally = tallies.entry((i, hour_of(*t))).or_default();
                                let seen =
                                    field.map_or(Seen::Missing, |f| Seen::of_value(&row.values[f]));
                                if tally.observe(e, seen) == Some(false) {
                                    tally.keep(&row.key.join("|"));
                                }
                            }
                        }
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let mut session = output.session(&cap);
                        session.give_iterator(data.drain(..).map(Passed::Row));
                        session.give_iterator(tallies.drain().map(Passed::Tally));
                    });
                }
            },
        );
    let (rows, tallies) = both.ok_err(|p| match p {
        Passed::Row(r) => Ok(r),
        Passed::Tally(t) => Err(t),
    });
    (rows.as_collection(), tallies)
}

/// The copies dedup dropped, as failures of `unique`.
fn duplicate_tallies<'s>(
    rejected: &VecCollection<'s, Tick, Rejection>,
    exps: Arc<Expectations>,
) -> Stream<'s, Tick, Vec<(TallyKey, Tally)>> {
    let unique: Vec<u16> = (exps.list.iter().enumerate())
        .filter(|(_, e)| e.spec.check == CheckName::Unique)
        .map(|(i, _)| i as u16)
        .collect();
    rejected
        .inner
        .clone()
        .unary(Pipeline, "QualityCopies", move |_, _| {
            let mut tallies: FxHashMap<TallyKey, Tally> = FxHashMap::default();
            move |input, output| {
                input.for_each(|cap, data| {
                    for (r, _, diff) in data.iter() {
                        if r.reason != Rejected::Duplicate || *diff <= 0 {
                            continue;
                        }
                        for &i in &unique {
                            tallies.entry((i, hour_of(r.ts))).or_default().failures += *diff as u64;
                        }
                    }
                    if let Some(cap) = cap.retain_least(0).filter(|_| !tallies.is_empty()) {
                        output.session(&cap).give_iterator(tallies.drain());
                    }
                });
            }
        })
}

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
        let (features, changes) = change_tallies(installed.features, self.exps.clone());
        let tallies = (installed.tallies.clone())
            .concat(changes)
            .concat(duplicate_tallies(&installed.rejected, self.exps.clone()));
        let keep = self.inner.horizon().length_ms;
        let report = hourly(state, tallies, self.exps.clone(), table, keep);
        Installed {
            features: features.concat(report),
            invalid: installed.invalid,
            rejected: installed.rejected,
            tallies: installed.tallies,
            final_tick: installed.final_tick,
        }
    }
}
