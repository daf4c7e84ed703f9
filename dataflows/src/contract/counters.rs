//! Counters the dataflow keeps about its input, shared by all workers of a process.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::contract::record::ErrorKind;

#[derive(Debug, Default)]
pub struct Counters {
    pub consumed: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub too_late: AtomicU64,
    /// Records offered and held back because their partition ran ahead (each offer counts).
    pub held_back: AtomicU64,
    invalid: [AtomicU64; 6],
    /// Accepted and duplicate events per kind (`Dataflow::kind`: e.g. watch's impressions
    /// and watches), for a family's own status fields.
    accepted_by_kind: [AtomicU64; KINDS],
    duplicates_by_kind: [AtomicU64; KINDS],
}

/// How many kinds of event a family may count apart.
pub const KINDS: usize = 4;

impl Counters {
    pub fn invalid(&self, kind: &ErrorKind) -> &AtomicU64 {
        &self.invalid[Self::slot(kind)]
    }
    fn slot(kind: &ErrorKind) -> usize {
        match kind {
            ErrorKind::Json => 0,
            ErrorKind::MissingField => 1,
            ErrorKind::WrongType => 2,
            ErrorKind::Range => 3,
            ErrorKind::UnknownType => 4,
            ErrorKind::Oversized => 5,
        }
    }
    /// Invalid records per reason, named as in metrics and `/status`.
    pub fn invalid_by_reason(&self) -> [(&'static str, u64); 6] {
        use ErrorKind::*;
        [Json, MissingField, WrongType, Range, UnknownType, Oversized]
            .map(|k| (k.as_str(), self.invalid(&k).load(Relaxed)))
    }
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().map(|c| c.load(Relaxed)).sum()
    }
    /// Counts one accepted (`duplicate = false`) or duplicate event of `kind`.
    pub fn count_kind(&self, kind: usize, duplicate: bool) {
        let by = if duplicate {
            &self.duplicates_by_kind
        } else {
            &self.accepted_by_kind
        };
        by[kind.min(KINDS - 1)].fetch_add(1, Relaxed);
    }
    /// Accepted and duplicate events of `kind` so far.
    pub fn of_kind(&self, kind: usize) -> (u64, u64) {
        let k = kind.min(KINDS - 1);
        (
            self.accepted_by_kind[k].load(Relaxed),
            self.duplicates_by_kind[k].load(Relaxed),
        )
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}
