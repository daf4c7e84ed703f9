//! Crash points for the fault-injection tests: with `TIDEMARK_CRASH_AT=<point>:<n>` the
//! process aborts (no destructor, no flush: as good as `kill -9`) the n-th time it passes
//! `<point>`. Points: `redis-written` and `postgres-written` (a write committed, not yet
//! acknowledged: the other store may not have the tick), `checkpoint-saved` (saved, the
//! offsets not yet committed), `snapshot` (taken, not yet saved).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub fn point(name: &str) {
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("TIDEMARK_CRASH_AT").ok()?;
        let (p, n) = v.rsplit_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    });
    if let Some((p, n)) = at {
        if p == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("crash point {name} reached: aborting");
            std::process::abort();
        }
    }
}
