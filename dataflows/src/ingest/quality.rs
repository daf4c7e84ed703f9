//! What each record adds to the hourly tallies of the expectations on records and their
//! fields (`contract::quality`): every record ingest takes, valid or not, once.

use rustc_hash::FxHashMap;

use crate::contract::quality::{hour_of, CheckName, Expectations, Seen, Tally, TallyKey, Target};
use crate::contract::record::{ErrorKind, RecordRef};
use crate::contract::time::Tick;

/// What ingest made of a record.
pub(super) enum Outcome {
    /// An event at `ts`, admitted at stream time `at` (its partition's frontier, ≥ `ts`
    /// when an earlier record of its partition was later: out of order).
    Valid { ts: Tick, at: Tick },
    /// An invalid record of `kind`, at the time its rejection is counted in.
    Invalid { ts: Tick, kind: ErrorKind },
}

/// The tallies of one batch, by expectation and hour.
pub(super) type Tallies = FxHashMap<TallyKey, Tally>;

/// Adds `rec` to the tallies of the expectations on its topic.
pub(super) fn observe(
    exps: &Expectations,
    rec: &RecordRef<'_>,
    outcome: Outcome,
    into: &mut Tallies,
) {
    let topic = exps.topics.iter().position(|t| t == rec.topic);
    let (ts, at, invalid) = match outcome {
        Outcome::Valid { ts, at } => (ts, at, None),
        Outcome::Invalid { ts, kind } => (ts, ts, Some(kind)),
    };
    let valid = invalid.is_none();
    let out_of_order = valid && ts < at;
    let hour = hour_of(ts);
    let mut json: Option<Option<serde_json::Value>> = None;
    let coordinate = || format!("{}/{}/{}", rec.topic, rec.partition, rec.offset);
    for (i, e) in exps.on_topic(topic) {
        let tally = into.entry((i, hour)).or_default();
        let failed = match (&e.target, e.spec.check) {
            (Target::Records(_), CheckName::Valid) => {
                tally.total += 1;
                invalid.as_ref().is_some_and(|k| e.spec.counts_reason(k))
            }
            (Target::Records(_), CheckName::RowsPerHour) => {
                tally.total += 1;
                false
            }
            // failures are the copies dedup drops
            (Target::Records(_), CheckName::Unique) => {
                tally.total += u64::from(valid);
                false
            }
            // failures are the events the family flags (`Dataflow::build_flagged`)
            (Target::Records(_), CheckName::NotFlagged) => {
                tally.total += u64::from(valid);
                false
            }
            (Target::Records(_), CheckName::NotOutOfOrder) => {
                tally.total += u64::from(valid);
                out_of_order
            }
            (Target::Records(_), CheckName::Freshness) => {
                tally.total += u64::from(valid);
                let age_ms = rec.append_ms.saturating_sub(at as i64);
                let max_ms = e.spec.max.unwrap_or(f64::INFINITY) * 1000.0;
                valid && age_ms as f64 > max_ms
            }
            (Target::EventField(_, path), _) => {
                let doc = json.get_or_insert_with(|| serde_json::from_slice(rec.payload).ok());
                let field = doc
                    .as_ref()
                    .and_then(|d| path.iter().try_fold(d, |v, p| v.get(p)));
                tally.observe(e, Seen::of_json(field)) == Some(false)
            }
            _ => unreachable!("compile admits no other check on records"),
        };
        if failed {
            tally.failures += i64::from(matches!(e.target, Target::Records(_)));
            tally.keep(&coordinate());
        }
    }
}
