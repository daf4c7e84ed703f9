//! The dataflow's end: each completed tick's changes handed to the writers, its output
//! frontier held at the least tick not yet durable in every store, and the data-quality
//! counts the status reports.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use tidemark_dataflows::contract::table::{FeatureRow, TableSpec, Value};
use tidemark_dataflows::operators::changes::ChangeBuffer;
use tidemark_dataflows::Tick;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::sink::{Msg, WriterHandle};
use crate::telemetry::quality::ReportRow;
use crate::telemetry::{self, Status};

/// A run resumed from the checkpoint at `tick`; its stream time starts at `start_at`,
/// past every tick the stores hold.
#[derive(Clone, Copy)]
pub(super) struct Restored {
    pub tick: Tick,
    pub start_at: Tick,
    /// Whether the stores are rolled back to the checkpoint (see [`Resume::roll_back_to`]).
    pub roll_back: bool,
}

/// Hands each completed tick's changes to the writers and holds its output frontier at
/// the least tick not yet durable in every store: a probe on it tells when offsets may
/// be committed and when `--exit-at-end` may stop.
///
/// The restored checkpoint's rows (its tick's) are written over what a run wrote after it.
///
/// Progress goes to the stores with the next changes; `persist_now` says when it must be
/// recorded at once (a checkpoint's pause, the end of the input).
pub(super) fn durable_sink<'s>(
    rows: VecCollection<'s, Tick, FeatureRow>,
    writers: Vec<WriterHandle>,
    restored: Option<Restored>,
    mut quality: Option<Quality>,
    persist_now: impl Fn() -> bool + 'static,
) -> Stream<'s, Tick, Vec<()>> {
    let scope = rows.inner.scope();
    rows.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "DurableSink",
            move |cap, info| {
                let activator = scope.worker().sync_activator_for(info.address.to_vec());
                for w in &writers {
                    *w.wake.lock().expect("wake slot") = Some(activator.clone());
                }
                let mut cap = Some(cap);
                let mut buffer = ChangeBuffer::default();
                let mut sent: Tick = 0;
                move |(input, frontier), _output| {
                    input.for_each(|_, updates| buffer.push(updates));
                    let upto = frontier.frontier().iter().next().copied();
                    for tick in buffer.complete(upto) {
                        if let Some(q) = quality.as_mut() {
                            q.observe(&tick);
                        }
                        let tick = Arc::new(tick);
                        for w in &writers {
                            w.send(match restored {
                                // the embedded store starts empty
                                Some(r) if r.tick == tick.tick && w.name != "memory" => {
                                    if !r.roll_back {
                                        continue; // the stores hold exactly these rows
                                    }
                                    Msg::Rewrite {
                                        rows: tick.clone(),
                                        since: r.tick,
                                        at: r.start_at,
                                    }
                                }
                                _ => Msg::Changes(tick.clone()),
                            });
                        }
                    }
                    let f = upto.unwrap_or(Tick::MAX);
                    if f > sent {
                        sent = f;
                        let persist = persist_now();
                        for w in &writers {
                            w.send(Msg::Progress { upto: f, persist });
                        }
                    }
                    let durable = writers.iter().map(|w| w.acked()).min().unwrap_or(f).min(f);
                    if durable == Tick::MAX {
                        cap = None;
                    } else if let Some(c) = cap.as_mut() {
                        if *c.time() < durable {
                            c.downgrade(&durable);
                        }
                    }
                }
            },
        )
}

/// Follows a family's `quality_hourly` rows and the expectations' report rows
/// (`quality_{family}`) into `/status` and the metrics.
pub(super) struct Quality {
    table: Option<u8>,
    fields: Vec<&'static str>,
    /// The report table's index.
    report: Option<u8>,
    status: Arc<Status>,
}

impl Quality {
    pub(super) fn of(tables: &[TableSpec], status: Arc<Status>) -> Option<Quality> {
        let table = tables.iter().position(|t| t.ns == telemetry::QUALITY_TABLE);
        let report = tables
            .iter()
            .position(|t| t.ns.starts_with("quality_") && t.keys == ["hour", "expectation"]);
        let mut fields = Vec::new();
        if let Some(t) = table {
            fields = tables[t].fields.iter().map(|f| f.name).collect();
            *status.quality_kinds.lock().expect("status") = fields.clone();
        }
        (table.is_some() || report.is_some()).then_some(Quality {
            table: table.map(|t| t as u8),
            fields,
            report: report.map(|t| t as u8),
            status,
        })
    }
    fn observe(&mut self, tick: &tidemark_dataflows::contract::table::TickChanges) {
        if let Some(report) = self.report {
            for c in tick.changes.iter().filter(|c| c.table == report) {
                let row = c.after.as_ref().map(|v| report_row(v));
                self.status.report.update(&c.key[0], &c.key[1], row);
            }
        }
        let Some(table) = self.table else {
            return;
        };
        let mut hours = self.status.quality.lock().expect("status");
        for c in tick.changes.iter().filter(|c| c.table == table) {
            let hour = c.key.join(":");
            match &c.after {
                None => {
                    hours.remove(&hour);
                }
                Some(values) => {
                    let counts = self
                        .fields
                        .iter()
                        .zip(values)
                        .map(|(f, v)| (*f, v.as_f64().unwrap_or(0.0) as i64))
                        .collect();
                    hours.insert(hour, counts);
                }
            }
        }
    }
}

/// A report row's values (`observed, failures, total, passed, sample`).
fn report_row(v: &[Value]) -> ReportRow {
    let int = |i: usize| v.get(i).and_then(Value::as_f64).unwrap_or(0.0) as i64;
    ReportRow {
        observed: v.first().and_then(Value::as_f64),
        failures: int(1),
        total: int(2),
        passed: int(3) == 1,
        sample: match v.get(4) {
            Some(Value::Text(t)) => serde_json::from_str(t).unwrap_or_default(),
            _ => Vec::new(),
        },
    }
}
