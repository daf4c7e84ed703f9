//! What a family and the runtime agree on: records in, events, feature tables and their
//! changes out, dimension tables, time, counters, and the checkpoint registry (`state`) a
//! family registers its state in. Depends on nothing else in the crate.

pub mod counters;
pub mod dataflow;
pub mod dimension;
pub mod event;
pub mod quality;
pub mod record;
pub mod state;
pub mod table;
pub mod time;
