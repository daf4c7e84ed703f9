//! Data-quality alerts (issue #22): a Slack-compatible JSON POST when an expectation's
//! hour fails once the hour is closed, and a "resolved" one when a late record turns it
//! back. Its own thread: a slow or failing receiver delays alerts, never the dataflow.
//!
//! An hour is closed once this process's stream time (the slowest worker's) is past its
//! end plus `quality.close_after_ms`. Each (expectation, hour) is told once per verdict:
//! what was told is kept in `{checkpoint.dir}/quality-alerts-{job}.json`, so a restart
//! does not tell it again.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use serde_json::json;
use tidemark_dataflows::contract::quality::ExpectSpec;
use tidemark_dataflows::Tick;

use crate::config::Config;
use crate::telemetry::quality::ReportRow;
use crate::telemetry::{Status, ALERTS};

/// One message to post.
#[derive(Clone, Debug)]
struct Alert {
    key: (String, String),
    passed: bool,
    body: serde_json::Value,
}

/// The verdict told per (hour, expectation).
type Told = BTreeMap<String, BTreeMap<String, bool>>;

/// Starts the alerter when `quality.alert.webhook` is set; it stops (after a last look
/// and at most 10 s of sending) once `stop` is set. `expectations` describe the messages.
pub fn start(
    cfg: &Config,
    status: Arc<Status>,
    expectations: Vec<ExpectSpec>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let url = cfg.quality.alert.webhook.clone()?;
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("quality-alerts".into())
        .spawn(move || {
            crate::archive::store::install_tls();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let mut alerter = Alerter::new(&cfg, url, expectations);
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                alerter.judge(&status);
                let deadline = stopping.then(|| Instant::now() + Duration::from_secs(10));
                runtime.block_on(alerter.send_due(deadline));
                if stopping {
                    if !alerter.queue.is_empty() {
                        tracing::warn!(
                            left = alerter.queue.len(),
                            "quality alerts not sent before the stop"
                        );
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .ok()
}

struct Alerter {
    url: String,
    job: String,
    dataflow: String,
    close_after_ms: u64,
    timeout: Duration,
    max_attempts: u32,
    max_queued: usize,
    expectations: BTreeMap<String, ExpectSpec>,
    told: Told,
    path: PathBuf,
    queue: VecDeque<(Alert, u32, Instant)>,
    client: reqwest::Client,
}

impl Alerter {
    fn new(cfg: &Config, url: String, expectations: Vec<ExpectSpec>) -> Self {
        let path =
            PathBuf::from(&cfg.checkpoint.dir).join(format!("quality-alerts-{}.json", cfg.job));
        let told = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let a = &cfg.quality.alert;
        Alerter {
            url,
            job: cfg.job.clone(),
            dataflow: cfg.dataflow.clone(),
            close_after_ms: cfg.quality.close_after_ms,
            timeout: Duration::from_millis(a.timeout_ms),
            max_attempts: a.max_attempts.max(1),
            max_queued: a.max_queued.max(1),
            expectations: expectations
                .into_iter()
                .map(|e| (e.name.clone(), e))
                .collect(),
            told,
            path,
            queue: VecDeque::new(),
            client: reqwest::Client::new(),
        }
    }

    /// Queues a message for each closed hour whose verdict differs from the one told (a
    /// first verdict only when it failed).
    fn judge(&mut self, status: &Status) {
        let Some(now) = stream_time(status) else {
            return;
        };
        for (hour, rows) in status.report.all() {
            let Some(start) = hour_ms(&hour) else {
                continue;
            };
            if start + 3_600_000 + self.close_after_ms > now {
                continue;
            }
            for (name, row) in rows {
                let told = self.told.get(&hour).and_then(|h| h.get(&name)).copied();
                let queued = self
                    .queue
                    .iter()
                    .rev()
                    .find(|(a, ..)| a.key == (hour.clone(), name.clone()));
                let last = queued.map(|(a, ..)| a.passed).or(told);
                if last == Some(row.passed) || (last.is_none() && row.passed) {
                    continue;
                }
                let body = self.message(&hour, &name, &row);
                let key = (hour.clone(), name.clone());
                let alert = Alert {
                    key,
                    passed: row.passed,
                    body,
                };
                self.queue.push_back((alert, 0, Instant::now()));
                if self.queue.len() > self.max_queued {
                    self.queue.pop_front();
                    counter!(ALERTS, "result" => "dropped").increment(1);
                }
            }
        }
    }

    /// Sends what is due, each message retried with backoff until it is delivered, refused
    /// for good, or out of tries; until `deadline` when stopping.
    async fn send_due(&mut self, deadline: Option<Instant>) {
        while let Some((alert, attempts, due)) = self.queue.front().cloned() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            if due > Instant::now() {
                if deadline.is_none() {
                    return; // its retry is not due: look again later
                }
                tokio::time::sleep_until(due.into()).await;
            }
            let sent = self
                .client
                .post(&self.url)
                .timeout(self.timeout)
                .json(&alert.body)
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => {
                    let code = r.status();
                    let again = code.is_server_error() || code.as_u16() == 429;
                    Err((format!("the webhook answered {code}"), again))
                }
                Err(e) => Err((e.without_url().to_string(), true)),
            };
            let front = self.queue.front_mut().expect("the message sent");
            match outcome {
                Ok(()) => {
                    counter!(ALERTS, "result" => "sent").increment(1);
                    self.queue.pop_front();
                    self.told
                        .entry(alert.key.0.clone())
                        .or_default()
                        .insert(alert.key.1.clone(), alert.passed);
                    self.save();
                }
                Err((why, again)) if again && attempts + 1 < self.max_attempts => {
                    counter!(ALERTS, "result" => "retried").increment(1);
                    tracing::warn!(
                        error = why,
                        attempt = attempts + 1,
                        "quality alert not delivered; retrying"
                    );
                    front.1 = attempts + 1;
                    front.2 = Instant::now() + Duration::from_secs(1 << attempts.min(6));
                }
                Err((why, _)) => {
                    counter!(ALERTS, "result" => "failed").increment(1);
                    tracing::error!(
                        error = why,
                        hour = alert.key.0,
                        expectation = alert.key.1,
                        "quality alert not delivered; given up"
                    );
                    self.queue.pop_front();
                    // told as far as this run goes: a later change of verdict is told again
                    self.told
                        .entry(alert.key.0.clone())
                        .or_default()
                        .insert(alert.key.1.clone(), alert.passed);
                }
            }
        }
    }

    fn save(&mut self) {
        // hours older than a week are not judged again
        while self.told.len() > 24 * 7 {
            self.told.pop_first();
        }
        let tmp = self.path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(self.path.parent().unwrap_or(&PathBuf::from(".")))
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec(&self.told).expect("json")))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.path.display(), "could not keep the alerts told");
        }
    }

    /// A Slack-compatible message: `text` for any receiver, `blocks` for Slack.
    fn message(&self, hour: &str, name: &str, row: &ReportRow) -> serde_json::Value {
        message(
            &self.job,
            &self.dataflow,
            self.expectations.get(name),
            hour,
            name,
            row,
        )
    }
}

/// The message for an hour's verdict on expectation `name`.
pub fn message(
    job: &str,
    dataflow: &str,
    spec: Option<&ExpectSpec>,
    hour: &str,
    name: &str,
    row: &ReportRow,
) -> serde_json::Value {
    let verdict = if row.passed { "resolved" } else { "failed" };
    let observed = row.observed.map_or("-".to_string(), |o| format!("{o:.6}"));
    let what = spec.map_or(String::new(), |s| {
        let mut w = format!(
            "{} on {}",
            serde_json::to_value(s.check)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            s.on
        );
        if s.min.is_some() || s.max.is_some() {
            w += &format!(
                " [{}, {}]",
                s.min.map_or("-".into(), |m| m.to_string()),
                s.max.map_or("-".into(), |m| m.to_string())
            );
        }
        if !s.check_is_aggregate() {
            w += &format!(", max failure share {}", s.max_failure_share);
        }
        w
    });
    let text = format!(
        "{} Tidemark data quality {verdict}: \"{name}\" for {hour} (job {job}): observed {observed}, {} failures of {}",
        if row.passed { "✅" } else { "❌" },
        row.failures,
        row.total
    );
    let sample = match row.sample.is_empty() {
        true => "none".to_string(),
        false => row
            .sample
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": format!("Data quality {verdict}: {name}")}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Expectation*\n{name}")},
                {"type": "mrkdwn", "text": format!("*Hour*\n{hour}")},
                {"type": "mrkdwn", "text": format!("*Observed*\n{observed}")},
                {"type": "mrkdwn", "text": format!("*Failures*\n{} of {}", row.failures, row.total)},
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*Sample of failing keys or records*\n{sample}")}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("job {job} · dataflow {dataflow} · {what}")},
            ]},
        ],
    })
}

/// The slowest worker's processed stream time in this process.
fn stream_time(status: &Status) -> Option<Tick> {
    let workers = status.workers.lock().expect("status");
    let mut low: Option<Tick> = None;
    for w in workers.values() {
        let p = w.processed?;
        low = Some(low.map_or(p, |l| l.min(p)));
    }
    low
}

/// `2026-01-01T13:00:00Z` as epoch ms.
fn hour_ms(hour: &str) -> Option<Tick> {
    let t = humantime::parse_rfc3339(hour).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as Tick)
}
