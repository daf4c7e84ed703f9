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
}

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
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}
