//! The expectations' hourly report as this process's workers wrote it (issue #22): what
//! `/status` shows, what the metrics count and what the alerter judges.

use std::collections::BTreeMap;
use std::sync::Mutex;

use metrics::{counter, gauge};
use serde::Serialize;

pub const FAILURES: &str = "tidemark_quality_failures_total";
pub const PASSED: &str = "tidemark_quality_passed";

/// One expectation's hour.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportRow {
    /// The failing share, or the aggregate (rows, mean, deviation).
    pub observed: Option<f64>,
    pub failures: i64,
    pub total: i64,
    pub passed: bool,
    /// The smallest failing coordinates: `topic/partition/offset` or an entity's key.
    pub sample: Vec<String>,
}

/// Report rows by hour (`2026-01-01T13:00:00Z`) and expectation.
#[derive(Default)]
pub struct QualityReport {
    hours: Mutex<BTreeMap<String, BTreeMap<String, ReportRow>>>,
    /// The most failures counted of each (hour, expectation): failures a family takes
    /// back (`not_flagged`) and gives again are not counted twice.
    counted: Mutex<BTreeMap<(String, String), i64>>,
}

impl QualityReport {
    /// An hour's row changed (`None`: it left the dataflow); the failures it adds are
    /// counted, and the newest hour's verdict is the expectation's `passed` gauge.
    pub fn update(&self, hour: &str, expectation: &str, row: Option<ReportRow>) {
        let mut hours = self.hours.lock().expect("quality report");
        let Some(row) = row else {
            if let Some(h) = hours.get_mut(hour) {
                h.remove(expectation);
                if h.is_empty() {
                    hours.remove(hour);
                }
            }
            return;
        };
        let mut counted = self.counted.lock().expect("quality report");
        let top = (counted.entry((hour.to_string(), expectation.to_string()))).or_insert(0);
        if row.failures > *top {
            let added = (row.failures - *top) as u64;
            counter!(FAILURES, "expectation" => expectation.to_string()).increment(added);
            *top = row.failures;
        }
        let newest = hours
            .range(hour.to_string()..)
            .skip(1)
            .all(|(_, h)| !h.contains_key(expectation));
        if newest {
            gauge!(PASSED, "expectation" => expectation.to_string())
                .set(f64::from(u8::from(row.passed)));
        }
        hours
            .entry(hour.to_string())
            .or_default()
            .insert(expectation.to_string(), row);
        // the status keeps a week; the report's own store keeps everything
        if hours.len() > 24 * 7 {
            while hours.len() > 24 * 7 {
                hours.pop_first();
            }
            let oldest = hours.first_key_value().map(|(h, _)| h.clone());
            counted.retain(|(h, _), _| oldest.as_ref().is_none_or(|o| h >= o));
        }
    }

    /// The newest `n` hours, newest first.
    pub fn newest(&self, n: usize) -> Vec<(String, BTreeMap<String, ReportRow>)> {
        let hours = self.hours.lock().expect("quality report");
        hours
            .iter()
            .rev()
            .take(n)
            .map(|(h, r)| (h.clone(), r.clone()))
            .collect()
    }

    /// Every row, by hour.
    pub fn all(&self) -> BTreeMap<String, BTreeMap<String, ReportRow>> {
        self.hours.lock().expect("quality report").clone()
    }
}
