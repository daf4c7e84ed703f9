//! Data quality (DESIGN §5.6, issue #22): declarative expectations on a family's events
//! and feature views, what one hour of observations adds up to ([`Tally`]), and its
//! verdict. The dataflow tallies; the runtime reports and alerts.
//!
//! An expectation names its target with `on`:
//! * `events` — every record of the family's topics (`valid`, `unique`, `not_out_of_order`,
//!   `freshness`, `rows_per_hour`);
//! * `event:{topic}` — that topic's records (`valid`, `not_out_of_order`, `freshness`,
//!   `rows_per_hour`);
//! * `event:{topic}.{field}` — a field of its records' JSON, `a.b` for a nested one
//!   (`not_null`, `between`, `in_set`, `matches`, `mean_between`, `stddev_between`);
//! * `feature:{view}.{field}` — every new value of a feature (the same field checks);
//! * `feature:{view}` — its changes (`rows_per_hour`).
//!
//! An hour is an hour of event time: a record's own time, a feature change's tick.
//! `compile` checks a config against the family (`compile.rs`).

mod compile;

use serde::{Deserialize, Serialize};

use crate::contract::record::ErrorKind;
use crate::contract::table::Value;
use crate::contract::time::{Tick, HOUR};

/// One hour of event time, by its first millisecond.
pub type Hour = u64;

/// The hour `ts` falls in.
pub fn hour_of(ts: Tick) -> Hour {
    ts - ts % HOUR
}

/// What a tally is kept under: the expectation's index and the hour.
pub type TallyKey = (u16, Hour);

/// Tallies as they travel: parts to add up.
pub type TallyBatch = Vec<(TallyKey, Tally)>;

/// How many failing coordinates a report row names.
pub const SAMPLE: usize = 5;

/// An expectation as configured (`[[quality.expect]]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    pub name: String,
    pub on: String,
    pub check: CheckName,
    /// `between`, `rows_per_hour`, `mean_between`, `stddev_between`: the bounds (either
    /// may be left open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// `in_set`: the allowed values, as text (a number matches its JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// `matches`: a regular expression a text value must match (anywhere; anchor with ^$).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `valid`: only invalid records of these reasons fail (`json`, `missing_field`,
    /// `wrong_type`, `range`, `unknown_type`, `oversized`); all do when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// `not_flagged`: the family's judgement of its events that fails (reading:
    /// `out_of_order`, `unzoned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// The largest share of an hour's observations that may fail (checks of single
    /// values: `valid`, `unique`, `not_out_of_order`, `not_null`, `between`, `in_set`,
    /// `matches`).
    #[serde(default)]
    pub max_failure_share: f64,
}

impl ExpectSpec {
    /// A check of single values on `on`, none may fail.
    pub fn new(name: &str, on: &str, check: CheckName) -> Self {
        ExpectSpec {
            name: name.to_string(),
            on: on.to_string(),
            check,
            min: None,
            max: None,
            values: None,
            pattern: None,
            reasons: None,
            flag: None,
            max_failure_share: 0.0,
        }
    }
    /// `valid` failing only for invalid records of `reasons`.
    pub fn reasons(mut self, reasons: &[ErrorKind]) -> Self {
        self.reasons = Some(reasons.iter().map(|r| r.as_str().to_string()).collect());
        self
    }
    /// `not_flagged` failing for the events the family flags `flag`.
    pub fn flag(mut self, flag: &str) -> Self {
        self.flag = Some(flag.to_string());
        self
    }
    /// Whether an invalid record of `kind` fails this expectation (`valid`'s `reasons`).
    pub fn counts_reason(&self, kind: &ErrorKind) -> bool {
        (self.reasons.as_ref()).is_none_or(|rs| rs.iter().any(|r| r == kind.as_str()))
    }
    pub fn bounds(mut self, min: Option<f64>, max: Option<f64>) -> Self {
        (self.min, self.max) = (min, max);
        self
    }
    pub fn share(mut self, share: f64) -> Self {
        self.max_failure_share = share;
        self
    }
    /// Whether an hour passes on an aggregate rather than a share of failures.
    pub fn check_is_aggregate(&self) -> bool {
        self.check.aggregate()
    }
    pub fn values(mut self, values: &[&str]) -> Self {
        self.values = Some(values.iter().map(|v| v.to_string()).collect());
        self
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    Valid,
    Unique,
    NotOutOfOrder,
    RowsPerHour,
    NotNull,
    Between,
    InSet,
    Matches,
    MeanBetween,
    StddevBetween,
    /// The stream's age when a record arrives: its broker append time minus the stream
    /// time of its partition once it is in (the frontier), at most `max` seconds. An
    /// arrival, not a wall clock: the verdict depends on the records only.
    Freshness,
    /// Valid events the family flags (`flag`): a judgement it makes from other events
    /// (reading: a scroll after its session's exit), which a later event may revise.
    NotFlagged,
}

impl CheckName {
    fn on_records(self) -> bool {
        matches!(
            self,
            CheckName::Valid
                | CheckName::Unique
                | CheckName::NotOutOfOrder
                | CheckName::RowsPerHour
                | CheckName::Freshness
                | CheckName::NotFlagged
        )
    }
    /// An hour passes on an aggregate (count, mean, deviation), not a share of failures.
    pub fn aggregate(self) -> bool {
        matches!(
            self,
            CheckName::RowsPerHour | CheckName::MeanBetween | CheckName::StddevBetween
        )
    }
}

/// What an expectation looks at.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Records of one topic (index into the family's topics), or of all (`None`).
    Records(Option<usize>),
    /// A field of a topic's JSON records: its path.
    EventField(usize, Vec<String>),
    /// A feature view's changes (`table`), or one field's new values.
    Feature(u8, Option<usize>),
}

/// An expectation, checked against the family.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub spec: ExpectSpec,
    pub target: Target,
    /// `matches`' pattern, compiled.
    pub pattern: Option<regex::Regex>,
    /// `not_flagged`'s flag: its index in the family's flags.
    pub flag: Option<u8>,
}

/// A family's expectations, compiled.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    pub list: Vec<Expectation>,
    pub topics: Vec<String>,
}

/// What one value is, for a check.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    Missing,
    Num(f64),
    Text(&'a str),
    /// A JSON object, array or boolean.
    Other,
}

impl<'a> Seen<'a> {
    pub fn of_json(v: Option<&'a serde_json::Value>) -> Self {
        match v {
            None | Some(serde_json::Value::Null) => Seen::Missing,
            Some(serde_json::Value::Number(n)) => n.as_f64().map_or(Seen::Other, Seen::Num),
            Some(serde_json::Value::String(s)) => Seen::Text(s),
            Some(_) => Seen::Other,
        }
    }
    pub fn of_value(v: &'a Value) -> Self {
        match v {
            Value::Null => Seen::Missing,
            Value::Int(i) => Seen::Num(*i as f64),
            Value::Float(f) if f.0.is_nan() => Seen::Missing,
            Value::Float(f) => Seen::Num(f.0),
            Value::Text(t) => Seen::Text(t),
        }
    }
}

/// Fixed-point scale of the sums: sums of integers add up the same in any order.
const SCALE: f64 = 1e6;

/// One hour's observations of one expectation, or a part of them: parts add up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Observations (records, values, changes).
    pub total: u64,
    /// Signed: a family's flag may be taken back (`not_flagged`); an hour's sum never is
    /// below zero.
    pub failures: i64,
    /// Numeric values seen, their sum and sum of squares (fixed point, `SCALE`).
    pub count: u64,
    pub sum: i128,
    pub sum_sq: i128,
    /// The smallest failing coordinates (record `topic/partition/offset`, entity key).
    pub sample: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.total += other.total;
        self.failures += other.failures;
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.sum_sq = self.sum_sq.saturating_add(other.sum_sq);
        for s in &other.sample {
            self.keep(s);
        }
    }
    /// Keeps `coordinate` if it is among the `SAMPLE` smallest.
    pub fn keep(&mut self, coordinate: &str) {
        if self.sample.len() >= SAMPLE
            && self.sample.last().is_some_and(|l| l.as_str() <= coordinate)
        {
            return;
        }
        if let Err(at) = self.sample.binary_search_by(|s| s.as_str().cmp(coordinate)) {
            self.sample.insert(at, coordinate.to_string());
            self.sample.truncate(SAMPLE);
        }
    }
    /// Records one observation of a value by `e`'s check: whether it passed, `None` when
    /// the check does not look at it (a missing value for all but `not_null`).
    pub fn observe(&mut self, e: &Expectation, seen: Seen<'_>) -> Option<bool> {
        let spec = &e.spec;
        let set = || spec.values.iter().flatten();
        let ok = match (spec.check, seen) {
            (CheckName::NotNull, seen) => !matches!(seen, Seen::Missing),
            (CheckName::RowsPerHour, _) => true,
            (_, Seen::Missing) => return None,
            (CheckName::Between, Seen::Num(x)) => {
                spec.min.is_none_or(|m| x >= m) && spec.max.is_none_or(|m| x <= m)
            }
            (CheckName::InSet, Seen::Num(x)) => set().any(|v| v.parse::<f64>() == Ok(x)),
            (CheckName::InSet, Seen::Text(t)) => set().any(|v| v == t),
            (CheckName::Matches, Seen::Text(t)) => {
                e.pattern.as_ref().is_some_and(|p| p.is_match(t))
            }
            (CheckName::Matches, Seen::Num(x)) => e
                .pattern
                .as_ref()
                .is_some_and(|p| p.is_match(&x.to_string())),
            (CheckName::MeanBetween | CheckName::StddevBetween, Seen::Num(x)) => {
                let scaled = (x * SCALE).round() as i128;
                self.count += 1;
                self.sum = self.sum.saturating_add(scaled);
                self.sum_sq = self.sum_sq.saturating_add(scaled.saturating_mul(scaled));
                true
            }
            (CheckName::MeanBetween | CheckName::StddevBetween, _) => return None,
            (
                CheckName::Valid
                | CheckName::Unique
                | CheckName::NotOutOfOrder
                | CheckName::Freshness
                | CheckName::NotFlagged,
                _,
            ) => {
                unreachable!("record checks are counted by ingest")
            }
            // a value of another kind than the check reads
            _ => false,
        };
        self.total += 1;
        self.failures += i64::from(!ok);
        Some(ok)
    }
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / SCALE / self.count as f64)
    }
    /// The population standard deviation of the numeric values.
    pub fn stddev(&self) -> Option<f64> {
        let mean = self.mean()?;
        let sq = self.sum_sq as f64 / (SCALE * SCALE) / self.count as f64;
        Some((sq - mean * mean).max(0.0).sqrt())
    }
}

/// An hour's verdict on one expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The failing share, or the aggregate (rows, mean, deviation); `None` when there is
    /// nothing to aggregate.
    pub observed: Option<f64>,
    pub failures: u64,
    pub total: u64,
    pub passed: bool,
}

impl Expectation {
    pub fn verdict(&self, t: &Tally) -> Verdict {
        let spec = &self.spec;
        let within = |x: f64| spec.min.is_none_or(|m| x >= m) && spec.max.is_none_or(|m| x <= m);
        let aggregate = match self.spec.check {
            CheckName::RowsPerHour => Some(Some(t.total as f64)),
            CheckName::MeanBetween => Some(t.mean()),
            CheckName::StddevBetween => Some(t.stddev()),
            _ => None,
        };
        match aggregate {
            Some(observed) => {
                let passed = observed.is_none_or(within);
                Verdict {
                    observed,
                    failures: u64::from(!passed),
                    total: t.total,
                    passed,
                }
            }
            None => {
                let failures = t.failures.max(0) as u64;
                let share = match t.total {
                    0 => 0.0,
                    n => failures as f64 / n as f64,
                };
                Verdict {
                    observed: Some(share),
                    failures,
                    total: t.total,
                    passed: share <= spec.max_failure_share,
                }
            }
        }
    }
}

impl Expectations {
    /// The expectations on records of topic `topic` (by index; `None`: a topic the
    /// family does not name), with their index.
    pub fn on_topic(&self, topic: Option<usize>) -> impl Iterator<Item = (u16, &Expectation)> {
        self.list
            .iter()
            .enumerate()
            .filter_map(move |(i, e)| match e.target {
                Target::Records(None) => Some((i as u16, e)),
                Target::Records(Some(t)) | Target::EventField(t, _) if Some(t) == topic => {
                    Some((i as u16, e))
                }
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_up_in_any_order() {
        let spec = ExpectSpec::new("m", "x", CheckName::MeanBetween).bounds(Some(0.0), None);
        let e = Expectation {
            spec,
            target: Target::Records(None),
            pattern: None,
            flag: None,
        };
        let (mut a, mut b, mut all) = (Tally::default(), Tally::default(), Tally::default());
        for (i, x) in [0.1, 0.2, 0.7, 1e3].into_iter().enumerate() {
            let part = if i % 2 == 0 { &mut a } else { &mut b };
            part.observe(&e, Seen::Num(x));
            all.observe(&e, Seen::Num(x));
        }
        b.add(&a);
        assert_eq!(b, all);
        assert!((all.mean().unwrap() - 250.25).abs() < 1e-9);
        let mut s = Tally::default();
        for c in ["k9", "k1", "k5", "k3", "k7", "k2", "k1"] {
            s.keep(c);
        }
        assert_eq!(s.sample, ["k1", "k2", "k3", "k5", "k7"]);
    }
}
