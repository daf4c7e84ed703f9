//! Crash points for the fault-injection tests: with `TIDEMARK_CRASH_AT=<point>:<n>` the
//! process aborts (no destructor, no flush: as good as `kill -9`) the n-th time it passes
//! `<point>`. Points: `redis-written` and `postgres-written` (a write committed, not yet
//! acknowledged: the other store may not have the tick), `checkpoint-saved` (saved, the
//! offsets not yet committed), `snapshot` (taken, not yet saved), `archive-written` (an
//! archive file stored, the checkpoint that covers it perhaps not yet saved). With
//! `TIDEMARK_CRASH_AT=<point>:<n>:panic` the thread panics there instead (a bug in a
//! worker, as the panic hook must turn into the end of the process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub fn point(name: &str) {
    static AT: OnceLock<Option<(String, u64, bool)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("TIDEMARK_CRASH_AT").ok()?;
        let (v, panics) = match v.strip_suffix(":panic") {
            Some(rest) => (rest.to_string(), true),
            None => (v, false),
        };
        let (p, n) = v.rsplit_once(':')?;
        Some((p.to_string(), n.parse().ok()?, panics))
    });
    if let Some((p, n, panics)) = at {
        if p == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            if *panics {
                panic!("crash point {name} reached: panicking");
            }
            eprintln!("crash point {name} reached: aborting");
            std::process::abort();
        }
    }
}

/// Ends the process when a thread the pipeline depends on panics (a dataflow worker, a
/// sink's writer, the checkpointer): its peers would otherwise wait for it forever, a
/// process that neither works nor exits (seen: a `run --exit-at-end` worker spinning for
/// an hour after the other had panicked). The message is printed first; the exit is an
/// abort, as at a crash point, so a supervisor restarts the job from its checkpoint.
/// Panics elsewhere (a read API request) keep the default behaviour.
pub fn abort_on_pipeline_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        let pipeline = ["timely:work-", "sink-", "checkpoint-", "archive-"]
            .iter()
            .any(|p| name.starts_with(p));
        if pipeline {
            tracing::error!(
                thread = name,
                "a pipeline thread panicked: aborting the process"
            );
            eprintln!("tidemark: thread {name} panicked; aborting (a restart resumes from the last checkpoint)");
            std::process::abort();
        }
    }));
}
