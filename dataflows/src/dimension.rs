//! Dimension tables (episode metadata, products, budgets) as live differential inputs: a
//! changed row retracts the old one and inserts the new, and every dependent feature follows.

use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::Scope;

use crate::time::Tick;

/// A table the family reads, with the columns it needs (key columns first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimensionSpec {
    pub table: String,
    pub columns: Vec<String>,
    /// `CREATE TABLE IF NOT EXISTS …`: the runtime creates a missing table empty.
    pub create: Option<String>,
}

/// One row, its columns as text in `DimensionSpec::columns` order (NULL as "").
pub type DimRow = Vec<String>;

/// Where a dimension's rows come from (the runtime reads Postgres).
pub trait TableSource {
    /// The current rows: the first call must return them; later calls return `None` when
    /// nothing new was read.
    fn snapshot(&mut self) -> Option<Vec<DimRow>>;
}

/// A dimension as a collection. Only a worker handed a `TableSource` reads the table; the
/// initial rows go in at time 0, later changes at the time the events have reached
/// (`events`' frontier), so the dimension never holds the dataflow back.
pub fn dimension<'s>(
    scope: Scope<'s, Tick>,
    table: Option<Box<dyn TableSource>>,
    events: ProbeHandle<Tick>,
    poll: Duration,
) -> VecCollection<'s, Tick, DimRow> {
    source::<_, CapacityContainerBuilder<Vec<(DimRow, Tick, isize)>>, _, _>(
        scope,
        "Dimension",
        move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut table = table;
            let mut current: std::collections::BTreeSet<DimRow> = Default::default();
            let mut cap = table.is_some().then_some(cap);
            move |output| {
                let (Some(held), Some(table)) = (cap.as_mut(), table.as_mut()) else {
                    return;
                };
                if let Some(rows) = table.snapshot() {
                    let next: std::collections::BTreeSet<DimRow> = rows.into_iter().collect();
                    let t = *held.time();
                    let mut session = output.session(&*held);
                    for gone in current.difference(&next) {
                        session.give((gone.clone(), t, -1));
                    }
                    for new in next.difference(&current) {
                        session.give((new.clone(), t, 1));
                    }
                    current = next;
                }
                match events.with_frontier(|f| f.iter().next().copied()) {
                    None => cap = None,
                    Some(f) if f > *held.time() => held.downgrade(&f),
                    Some(_) => {}
                }
                activator.activate_after(poll);
            }
        },
    )
    .as_collection()
}
