//! Tidemark's dataflows: pure computation from events to feature collections.
//!
//! No network or database here: the runtime (`tidemark`) brings records in through a
//! [`record::RecordSource`] and takes [`features::SinkEvent`]s out.

pub mod ads;
pub mod align;
pub mod counters;
pub mod dimension;
pub mod family;
pub mod features;
pub mod ingest;
pub mod reading;
pub mod record;
pub mod search;
pub mod state;
pub mod ticks;
pub mod time;
pub mod windowed;

pub use family::{family, Dataflow, Family, GenerateSpec, Produced, REGISTRY};
pub use time::Tick;
