//! Operators the families build on, one per file: windowed contributions and their
//! expiries, the windowed sums per entity that feature views are rows of, two inputs'
//! updates per tick, dimension inputs, raw rows once per key and tick, versions of
//! records a consumer acts on, and the per-tick changes at the dataflow's end.

pub mod changes;
pub mod dimension;
pub mod hourly;
pub mod once_per_key;
pub mod tally;
pub mod ticks;
pub mod versions;
pub mod window_sums;
pub mod windowed;
