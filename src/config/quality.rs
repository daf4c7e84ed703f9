//! `[quality]`: the expectations checked on the family's records and features (issue #22).

use serde::{Deserialize, Serialize};
use tidemark_dataflows::contract::quality::ExpectSpec;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// The family's built-in expectations (its ranges, valid and unique records).
    pub builtin: bool,
    /// `[[quality.expect]]`: expectations of one's own (one of a built-in's name replaces it).
    pub expect: Vec<ExpectSpec>,
    /// An hour's verdict is final (alerted, `quality report` without "open") once stream
    /// time is this far past the hour's end; a later event re-opens it.
    pub close_after_ms: u64,
    pub alert: AlertConfig,
}

/// `[quality.alert]`: where a failed (and a resolved) hour is posted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// A Slack incoming webhook, or any URL taking a Slack-compatible JSON POST.
    pub webhook: Option<String>,
    /// Each POST's timeout.
    pub timeout_ms: u64,
    /// Tries per message, with backoff doubling from 1 s (a 4xx other than 429 is not
    /// retried: it would fail again).
    pub max_attempts: u32,
    /// Messages waiting beyond this are dropped (and counted), oldest first.
    pub max_queued: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook: None,
            timeout_ms: 5_000,
            max_attempts: 6,
            max_queued: 1_000,
        }
    }
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            builtin: true,
            expect: Vec::new(),
            close_after_ms: 600_000,
            alert: AlertConfig::default(),
        }
    }
}

impl QualityConfig {
    /// Whether anything is checked at all.
    pub fn on(&self) -> bool {
        self.builtin || !self.expect.is_empty()
    }
}
