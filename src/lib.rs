//! Tidemark's runtime: sources, sinks, the engine that drives timely workers, the HTTP API.
//! The computation itself lives in the `tidemark-dataflows` crate.

pub mod bench;
pub mod bench_ads;
pub mod bench_reading;
pub mod bench_serve;
pub mod bench_state;
pub mod checkpoint;
pub mod config;
pub mod crash;
pub mod dlq;
pub mod engine;
pub mod http;
pub mod kafka;
pub mod permanent;
pub mod redact;
pub mod store;
pub mod telemetry;
pub mod topics;
