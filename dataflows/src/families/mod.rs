//! The feature families (DESIGN §5), one folder each, and the registry the runtime looks
//! them up in.

pub mod ads;
pub mod commerce;
pub mod reading;
pub mod search;
pub mod watch;

use crate::contract::dataflow::Dataflow;
use crate::install::{construct, Constructor, Family};

/// Every family the engine knows: adding one is one line here.
pub const REGISTRY: &[(&str, Constructor)] = &[
    (search::Search::NAME, construct::<search::Search>),
    (reading::Reading::NAME, construct::<reading::Reading>),
    (ads::Ads::NAME, construct::<ads::Ads>),
    (commerce::Commerce::NAME, construct::<commerce::Commerce>),
    (watch::Watches::NAME, construct::<watch::Watches>),
];

/// Looks a family up by name.
pub fn family(name: &str, section: Option<serde_json::Value>) -> Result<Box<dyn Family>, String> {
    match REGISTRY.iter().find(|(n, _)| *n == name) {
        Some((_, make)) => make(section),
        None => Err(format!(
            "unknown dataflow '{name}': known dataflows are {}",
            REGISTRY
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
