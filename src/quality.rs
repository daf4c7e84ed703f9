//! `tidemark quality report`: an hour of the expectations' report (issue #22), read from
//! the Postgres table `quality_{family}` the job writes in one transaction with its
//! features.

use anyhow::Context;
use tidemark_dataflows::contract::quality::hour_of;
use tidemark_dataflows::operators::hourly::hour_text;

use crate::batch::parse_instant;
use crate::config::Config;
use crate::telemetry::quality::ReportRow;

/// An hour's verdicts.
pub struct HourReport {
    pub hour: String,
    /// Each expectation's row.
    pub rows: Vec<(String, ReportRow)>,
    /// Whether the job's stream time is past the hour's end plus `quality.close_after_ms`
    /// on every worker (a later event may still re-open it).
    pub closed: bool,
}

impl HourReport {
    pub fn failed(&self) -> usize {
        self.rows.iter().filter(|(_, r)| !r.passed).count()
    }

    /// The report as a table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "quality report for {} ({})\n",
            self.hour,
            if self.closed {
                "closed"
            } else {
                "open: stream time has not passed it yet"
            }
        );
        let width = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(11);
        out += &format!(
            "{:<width$}  {:>12}  {:>10}  {:>10}  {:<6}  sample\n",
            "expectation", "observed", "failures", "total", "result"
        );
        for (name, r) in &self.rows {
            let observed = r.observed.map_or("-".to_string(), |o| format!("{o:.6}"));
            let result = if r.passed { "pass" } else { "FAIL" };
            out += &format!(
                "{name:<width$}  {observed:>12}  {:>10}  {:>10}  {result:<6}  {}\n",
                r.failures,
                r.total,
                r.sample.join(" ")
            );
        }
        out
    }
}

/// The report of the hour `at` falls in (epoch ms or RFC 3339).
pub fn report(cfg: &Config, at: &str) -> anyhow::Result<HourReport> {
    let hour = hour_of(parse_instant(at)?);
    let url = cfg.postgres.url.as_ref().context(
        "postgres.url is not set: the report is in Postgres; set postgres.url (TIDEMARK_PG)",
    )?;
    let family = crate::engine::family_of(cfg)?;
    let Some(table) = family
        .tables()
        .into_iter()
        .find(|t| t.ns.starts_with("quality_") && t.keys == ["hour", "expectation"])
    else {
        anyhow::bail!("[quality] checks nothing (builtin = false and no [[quality.expect]]): there is no report");
    };
    let mut c = postgres::Client::connect(url, postgres::NoTls)
        .context("connecting to postgres (postgres.url)")?;
    let text = hour_text(hour);
    let rows = c
        .query(
            &format!(
                "SELECT expectation, observed, failures, total, passed, sample FROM {} \
                 WHERE hour = $1 ORDER BY expectation",
                table.ns
            ),
            &[&text],
        )
        .with_context(|| format!("reading {} (has job '{}' run?)", table.ns, cfg.job))?;
    let rows = rows
        .iter()
        .map(|r| {
            let sample: Option<Vec<String>> = r.get(5);
            let row = ReportRow {
                observed: r.get(1),
                failures: r.get::<_, Option<i64>>(2).unwrap_or(0),
                total: r.get::<_, Option<i64>>(3).unwrap_or(0),
                passed: r.get::<_, Option<i64>>(4) == Some(1),
                sample: sample.unwrap_or_default(),
            };
            (r.get::<_, String>(0), row)
        })
        .collect();
    // the slowest worker's durable tick
    let low: Option<i64> = c
        .query_one(
            "SELECT min(tick) FROM tidemark_progress WHERE job = $1",
            &[&cfg.job],
        )
        .ok()
        .and_then(|r| r.get(0));
    let end = hour + 3_600_000 + cfg.quality.close_after_ms;
    Ok(HourReport {
        hour: text,
        rows,
        closed: low.is_some_and(|t| t as u64 >= end),
    })
}
