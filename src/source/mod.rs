//! Where records come from: Kafka (one source per worker), the built-in generator (demo,
//! benchmarks), and the Postgres tables a family reads as dimensions.

pub mod dimension;
pub mod generator;
pub mod kafka;
