//! Where records come from: Kafka (one source per worker), the built-in generator (demo,
//! benchmarks), the archive (`batch`), and the Postgres tables a family reads as dimensions.

pub mod archive;
pub mod dimension;
pub mod generator;
pub mod kafka;
