//! Tidemark's dataflows: pure computation from events to feature collections.
//!
//! No network or database here: the runtime (`tidemark`) brings records in through a
//! [`contract::record::RecordSource`] and takes [`contract::table::SinkEvent`]s out.
//! The layers: a module uses its own layer and those below it, without cycles (see
//! ARCHITECTURE.md):
//! `contract` ← `ingest`, `operators`, `generate` ← `install` ← `families`, `quality`.

pub mod contract;
pub mod families;
pub mod generate;
pub mod ingest;
pub mod install;
pub mod operators;
pub mod quality;

pub use contract::dataflow::{Dataflow, GenerateSpec, Produced};
pub use contract::time::Tick;
pub use families::{family, REGISTRY};
pub use install::Family;
