//! The dimension operator (`operators::dimension`) and checkpoints: a table change read
//! while the sources are paused for a checkpoint at `T` goes in at `T + 1`, so the
//! snapshot of `T` holds the rows without it — a restore then puts it in again as a change
//! at the restart's first tick, and every dependent feature is written with it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use differential_dataflow::input::Input;
use tidemark_dataflows::contract::dimension::{DimRow, TableSource};
use tidemark_dataflows::contract::state::State;
use tidemark_dataflows::operators::dimension::dimension;
use tidemark_dataflows::Tick;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

/// A table whose rows the test sets; each change is read once.
struct Scripted(Rc<RefCell<Option<Vec<DimRow>>>>);

impl TableSource for Scripted {
    fn snapshot(&mut self) -> Option<Vec<DimRow>> {
        self.0.borrow_mut().take()
    }
}

fn row(product: &str, category: &str) -> DimRow {
    vec![product.into(), category.into()]
}

/// The dimension's checkpointed rows.
fn saved(state: &State) -> BTreeSet<DimRow> {
    let stages = state.snapshot().expect("a snapshot");
    let (_, bytes) = stages
        .iter()
        .find(|(name, _)| name.ends_with(":dimension"))
        .expect("the dimension registers its rows");
    bincode::deserialize(bytes).expect("rows")
}

#[test]
fn a_change_read_during_a_checkpoint_pause_is_not_in_that_checkpoint() {
    timely::execute_directly(|worker| {
        let state = State::none(0, 1);
        let table = Rc::new(RefCell::new(Some(vec![row("p1", "toys")])));
        let probe = ProbeHandle::new();
        let source = Box::new(Scripted(table.clone()));
        let mut events = worker.dataflow::<Tick, _, _>(|scope| {
            let (handle, events) = scope.new_collection::<u64, isize>();
            let poll = Duration::from_millis(1);
            dimension(&events.inner, Some(source), poll, &state, 0)
                .inner
                .probe_with(&probe);
            handle
        });
        // tick 5 goes through: the first rows are in, and saved
        events.advance_to(5);
        events.flush();
        worker.step_while(|| probe.less_than(&5));
        assert_eq!(saved(&state), BTreeSet::from([row("p1", "toys")]));
        // the sources pause for the checkpoint of tick 9 with their capability at 10
        events.advance_to(10);
        events.flush();
        worker.step_while(|| probe.less_than(&10));
        // the table changes now: the change goes in at 10
        *table.borrow_mut() = Some(vec![row("p1", "books")]);
        for _ in 0..50 {
            worker.step();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            table.borrow().is_none(),
            "the dimension read the change while paused"
        );
        // the snapshot of tick 9 holds the rows of tick 9
        assert_eq!(saved(&state), BTreeSet::from([row("p1", "toys")]));
        // once the frontier passes tick 10, the change is saved
        events.advance_to(11);
        events.flush();
        worker.step_while(|| probe.less_than(&11));
        assert_eq!(saved(&state), BTreeSet::from([row("p1", "books")]));
    });
}
