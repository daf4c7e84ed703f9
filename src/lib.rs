//! Tidemark's runtime: sources, sinks, the engine that drives timely workers, the HTTP API.
//! The computation itself lives in the `tidemark-dataflows` crate.
//!
//! The layers: a module uses its own layer and those below it, without cycles (see
//! ARCHITECTURE.md; `tests/layers.rs` checks it): `clock`, `config`, `redact`,
//! `permanent`, `crash` ← `telemetry` ← `archive`, `source`, `sink`, `checkpoint` ← `engine` ←
//! `batch`, `http`, `quality`, `topics` ← `bench`.

pub mod archive;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod crash;
pub mod dlq_replay;
pub mod engine;
pub mod feast;
pub mod http;
pub mod permanent;
pub mod quality;
pub mod redact;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod topics;
