//! Configuration: TOML file < environment (`TIDEMARK_…`, `__` for nesting) < flags.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod archive;
pub mod feast;
mod quality;
pub use archive::{ArchiveConfig, S3Config};
pub use quality::{AlertConfig, QualityConfig};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names the job's keys (`tidemark:{job}:frontier`) and its default consumer group.
    pub job: String,
    /// The feature family to run.
    pub dataflow: String,
    /// Worker threads per process.
    pub workers: usize,
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    pub ingest: IngestConfig,
    pub checkpoint: CheckpointConfig,
    /// Address of the HTTP API (operations and reads), e.g. `127.0.0.1:8080`.
    pub http: Option<String>,
    pub serve: ServeConfig,
    pub health: HealthConfig,
    /// Per-family sections, `[dataflows.search]` etc.
    pub dataflows: BTreeMap<String, serde_json::Value>,
    /// Per topic, for `tidemark topics create`: `[topics."ad-events"]` etc.
    pub topics: BTreeMap<String, TopicConfig>,
    pub archive: ArchiveConfig,
    pub quality: QualityConfig,
    pub dlq: DlqConfig,
}

/// The dead-letter topic's records (its name is `kafka.dlq_topic`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    pub format: DlqFormat,
}

/// What a dead letter's value is; either way its key and headers are the original's, plus
/// Kafka Connect's error headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqFormat {
    /// A JSON envelope: the coordinates, the error, the payload (text, base64 or null).
    #[default]
    Envelope,
    /// The original bytes, as Kafka Connect's `errors.deadletterqueue` writes them (an
    /// envelope all the same when they do not fit the DLQ topic's limit).
    Connect,
}

/// How `tidemark topics create` makes a topic; unset fields take the defaults of
/// seed 002's table (or 6 partitions, 7 days, lz4 for a topic it does not list).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    pub partitions: Option<i32>,
    /// Default: min(3, brokers in the cluster).
    pub replication_factor: Option<i32>,
    pub retention_ms: Option<i64>,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: Option<String>,
    /// delete or compact.
    pub cleanup_policy: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Overrides the family's topics.
    pub topics: Option<Vec<String>>,
    pub group_id: Option<String>,
    /// Where a run without a checkpoint starts: earliest, latest, epoch ms or RFC 3339.
    pub from: StartFrom,
    pub dlq_topic: String,
    pub idle_timeout_ms: u64,
    /// Records per poll per worker.
    pub poll_batch: usize,
    /// The largest record the producers send (librdkafka's `message.max.bytes`): a DLQ
    /// envelope is cut to fit it and the DLQ topic's own limit.
    pub message_max_bytes: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Option<String>,
    /// Refreshes each written key's EXPIRE.
    pub ttl_secs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq-style connection string; secrets are hidden when logged.
    pub url: Option<String>,
    /// How often dimension tables are re-read.
    pub dimension_poll_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            dimension_poll_ms: 1_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_future_skew_ms: u64,
    pub dedup_horizon_ms: u64,
    /// A partition reads at most this much event time ahead of the slowest partition of its
    /// worker with records to come (0: no alignment). Keeps stream time — and so dedup,
    /// too-late events and window closes — independent of how partitions interleave.
    pub max_partition_skew_ms: u64,
    pub max_message_bytes: usize,
    /// An entity key (a `doc_id`, a `campaign_id`, …) longer than this is invalid: it would
    /// exceed what a Postgres index row holds (2,704 bytes) well before.
    pub max_key_bytes: usize,
    /// An event naming more items than this in one list (`doc_ids`, …) is invalid: each
    /// item becomes entities that live for the whole window.
    pub max_items_per_event: usize,
    /// Once caught up, how long a source waits before reading again: a tick gathers what
    /// arrived meanwhile, trading this much latency for fewer, larger ticks.
    pub poll_interval_ms: u64,
    /// A worker stops reading while this many records it read are not yet durable in every
    /// sink (a slow or absent sink then bounds memory instead of growing it).
    pub max_pending_records: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// How often the workers checkpoint their state with their offsets.
    pub interval_ms: u64,
    /// `dir` (files under `dir`) or `postgres` (table `tidemark_checkpoints` at postgres.url).
    pub backend: CheckpointBackend,
    pub dir: std::path::PathBuf,
}

/// The read API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Per feature view (`doc`, `qd`, …): a row whose last change is older than this is
    /// answered as OUTSIDE_MAX_AGE by `/get-online-features` (Feast's TTL).
    pub max_age_secs: BTreeMap<String, u64>,
    /// Feast feature services by name: `view:feature` references, or a bare `view` for
    /// all of its features. Each view also has a built-in `{view}_service` of all its
    /// features; `tidemark feast export` writes both kinds.
    pub feature_services: BTreeMap<String, Vec<String>>,
    /// Entity rows one `/get-online-features` request may ask for.
    pub max_entities: usize,
    /// Entity rows × features one `/get-online-features` request may ask for (each value
    /// answered costs ~40 bytes of response, and its share of the read).
    pub max_feature_values: usize,
    /// A request body larger than this is refused (413).
    pub max_request_bytes: usize,
    /// Connections served at once; more wait in the listen queue. Keeps the engine's own
    /// file descriptors (checkpoints, Kafka, the stores) out of reach of HTTP clients.
    pub max_connections: usize,
    /// A connection that sends no complete request head within this long is closed (an
    /// idle keep-alive connection too).
    pub header_timeout_ms: u64,
    /// A request that takes longer is answered 503.
    pub request_timeout_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_age_secs: BTreeMap::new(),
            feature_services: BTreeMap::new(),
            max_entities: 10_000,
            max_feature_values: 200_000,
            max_request_bytes: 2 << 20,
            max_connections: 256,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// Readiness (`/readyz`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Not ready once a sink's writes, the DLQ's deliveries or checkpoints have failed
    /// for this long.
    pub unready_after_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            unready_after_ms: 30_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointBackend {
    Dir,
    Postgres,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 10_000,
            backend: CheckpointBackend::Dir,
            dir: "tidemark-state".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            job: "tidemark".into(),
            dataflow: "search".into(),
            workers: 1,
            kafka: KafkaConfig::default(),
            redis: RedisConfig::default(),
            postgres: PostgresConfig::default(),
            ingest: IngestConfig::default(),
            checkpoint: CheckpointConfig::default(),
            http: None,
            serve: ServeConfig::default(),
            health: HealthConfig::default(),
            dataflows: BTreeMap::new(),
            topics: BTreeMap::new(),
            archive: ArchiveConfig::default(),
            quality: QualityConfig::default(),
            dlq: DlqConfig::default(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: None,
            group_id: None,
            from: StartFrom::Earliest,
            dlq_topic: "tidemark.dlq".into(),
            idle_timeout_ms: 10_000,
            poll_batch: 50_000,
            message_max_bytes: 1_000_000,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_future_skew_ms: 60_000,
            dedup_horizon_ms: 3_600_000,
            max_partition_skew_ms: 600_000,
            max_message_bytes: 1 << 20,
            max_key_bytes: 512,
            max_items_per_event: 1_000,
            poll_interval_ms: 5,
            max_pending_records: 2_000_000,
        }
    }
}

impl Config {
    /// Merges the file (if any), the environment and the flags, in rising precedence.
    /// `TIDEMARK_KAFKA`, `TIDEMARK_REDIS` and `TIDEMARK_PG` are shorthands for the addresses.
    pub fn load(file: Option<&Path>, flags: serde_json::Value) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist (--config)", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        let env = Env::prefixed("TIDEMARK_")
            .split("__")
            .ignore(&["KAFKA", "REDIS", "PG", "S3", "CRASH_AT"]);
        // a variable that names no key (a Kubernetes service `tidemark` injects
        // TIDEMARK_PORT, TIDEMARK_SERVICE_HOST, …) is left out, with one warning
        let unknown: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| !names_a_key(k))
            .collect();
        if !unknown.is_empty() {
            let names: Vec<String> = unknown
                .iter()
                .map(|k| format!("TIDEMARK_{}", k.to_ascii_uppercase().replace('.', "__")))
                .collect();
            tracing::warn!(variables = %names.join(", "), "environment variables that name no config key are ignored (see README \"Configuration\")");
        }
        fig = fig.merge(env.filter(|k| names_a_key(k.as_str())));
        for (var, path) in [
            ("TIDEMARK_KAFKA", "kafka.brokers"),
            ("TIDEMARK_REDIS", "redis.url"),
            ("TIDEMARK_PG", "postgres.url"),
        ] {
            if let Ok(v) = std::env::var(var) {
                // `Serialized::default`, not a `(key, value)` pair: a pair is global and
                // would override the flags
                fig = fig.merge(Serialized::default(path, v));
            }
        }
        fig = fig.merge(Serialized::defaults(flags));
        let cfg: Config = fig.extract().map_err(explain)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types alone cannot; each error names the key and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.workers == 0 {
            bail!("workers = 0: set workers (TIDEMARK_WORKERS, --workers) to 1 or more");
        }
        if self.kafka.poll_batch == 0 {
            bail!("kafka.poll_batch = 0: set it to 1 or more (default 50000)");
        }
        if self.serve.max_connections == 0 {
            bail!("serve.max_connections = 0: set it to 1 or more (default 256)");
        }
        if self.checkpoint.interval_ms == 0 {
            bail!("checkpoint.interval_ms = 0: set it to 1 or more (default 10000)");
        }
        self.archive.validate()?;
        let ingest = &self.ingest;
        if ingest.max_partition_skew_ms > 0
            && ingest.max_partition_skew_ms >= ingest.dedup_horizon_ms
        {
            bail!(
                "ingest.max_partition_skew_ms = {} is not below ingest.dedup_horizon_ms = {}: a copy of an event read after a restart could fall outside the horizon; lower the skew (default 600000; 0 turns alignment off) or raise the horizon",
                ingest.max_partition_skew_ms,
                ingest.dedup_horizon_ms
            );
        }
        if self.checkpoint.backend == CheckpointBackend::Postgres && self.postgres.url.is_none() {
            bail!("checkpoint.backend = \"postgres\" needs postgres.url: set postgres.url (TIDEMARK_PG) or checkpoint.backend = \"dir\"");
        }
        if let Some(addr) = &self.http {
            let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                bail!("http = {addr:?} is not host:port: use e.g. \"127.0.0.1:8080\" (--http)");
            }
        }
        if let Some(url) = &self.redis.url {
            if let Err(e) = redis::Client::open(url.as_str()) {
                bail!(
                    "redis.url {:?}: {e}: use redis://host:port/db (TIDEMARK_REDIS)",
                    crate::redact::redact(url)
                );
            }
        }
        if let Some(url) = &self.postgres.url {
            if let Err(e) = url.parse::<postgres::Config>() {
                bail!("postgres.url: {e}: use \"host=… user=… password=… dbname=…\" or postgres://user:password@host/db (TIDEMARK_PG)");
            }
        }
        let family =
            tidemark_dataflows::family(&self.dataflow, self.dataflows.get(&self.dataflow).cloned())
                .map_err(|e| anyhow::anyhow!("dataflow = {:?}: {e}", self.dataflow))?;
        if self.quality.alert.webhook.is_some() && !self.quality.on() {
            bail!("quality.alert.webhook is set but [quality] checks nothing (builtin = false, no [[quality.expect]]): turn builtin on or add an expectation, or remove the webhook");
        }
        if let Some(url) = &self.quality.alert.webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("quality.alert.webhook is not an http(s) URL: use e.g. https://hooks.slack.com/services/…");
            }
        }
        if self.quality.on() {
            let section = self.dataflows.get(&self.dataflow).cloned();
            let plain =
                tidemark_dataflows::family(&self.dataflow, section).map_err(anyhow::Error::msg)?;
            let topics = self.kafka.topics.as_deref();
            let q = &self.quality;
            tidemark_dataflows::quality::Checked::new(plain, topics, &q.expect, q.builtin)
                .map_err(anyhow::Error::msg)?;
        }
        feast::Catalog::new(&*family, &self.serve.feature_services)?;
        let views: Vec<&str> = family.tables().iter().map(|t| t.ns).collect();
        for view in self.serve.max_age_secs.keys() {
            if !views.contains(&view.as_str()) {
                bail!(
                    "serve.max_age_secs.{view}: dataflow {} has no feature view '{view}': use one of {}",
                    self.dataflow,
                    views.join(", ")
                );
            }
        }
        for (name, t) in &self.topics {
            if let Some(c) = &t.compression {
                if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&c.as_str()) {
                    bail!("topics.{name}.compression = {c:?}: use none, gzip, snappy, lz4 or zstd");
                }
            }
            if let Some(c) = &t.cleanup_policy {
                if !["delete", "compact", "compact,delete"].contains(&c.as_str()) {
                    bail!("topics.{name}.cleanup_policy = {c:?}: use delete, compact or \"compact,delete\"");
                }
            }
            if t.partitions.is_some_and(|p| p < 1) || t.replication_factor.is_some_and(|r| r < 1) {
                bail!("topics.{name}: partitions and replication_factor must be 1 or more");
            }
        }
        Ok(())
    }

    /// The effective config as TOML, secrets hidden (`tidemark config check`).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        fn strip_nulls(v: &mut serde_json::Value) {
            if let serde_json::Value::Object(m) = v {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip_nulls);
            }
        }
        let mut v = self.redacted();
        strip_nulls(&mut v);
        Ok(toml::to_string(&v)?)
    }

    /// The effective config as JSON with every secret hidden, for the start-up log.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        crate::redact::redact_json(&mut v);
        v
    }
}

/// Whether a dotted path (`kafka.dlq_topic`, from `TIDEMARK_KAFKA__DLQ_TOPIC`) names a key
/// of [`Config`]: a field of each nested section, any key inside a map section
/// (`dataflows`, `topics`, `serve.max_age_secs`, `serve.feature_services`), which checks
/// its own keys.
fn names_a_key(path: &str) -> bool {
    const MAPS: [&str; 4] = [
        "dataflows",
        "topics",
        "serve.max_age_secs",
        "serve.feature_services",
    ];
    let schema = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut at = &schema;
    let mut walked = String::new();
    for part in path.to_ascii_lowercase().split('.') {
        if MAPS.contains(&walked.as_str()) {
            return true;
        }
        let Some(next) = at.as_object().and_then(|o| o.get(part)) else {
            return false;
        };
        at = next;
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
    }
    true
}

/// Turns figment's errors into one line each that names the key, where it was set and
/// what would fix it.
fn explain(err: figment::Error) -> anyhow::Error {
    use figment::error::Kind;
    let lines: Vec<String> = err
        .into_iter()
        .map(|e| {
            let path = &e.path;
            let key = path.join(".");
            let source = match &e.metadata {
                Some(m) if m.name.contains("environment") => format!(
                    "environment variable TIDEMARK_{}",
                    path.iter()
                        .map(|p| p.to_ascii_uppercase())
                        .collect::<Vec<_>>()
                        .join("__")
                ),
                Some(m) => match &m.source {
                    Some(figment::Source::File(f)) => format!("file {}", f.display()),
                    _ => "flags or TIDEMARK_KAFKA/REDIS/PG".to_string(),
                },
                None => "the configuration".to_string(),
            };
            match &e.kind {
                Kind::UnknownField(_, expected) => format!(
                    "{key}: unknown key (in {source}): remove it, or use one of: {}",
                    expected.join(", ")
                ),
                Kind::UnknownVariant(v, expected) => format!(
                    "{key} = {v:?} (in {source}): use one of: {}",
                    expected.join(", ")
                ),
                Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                    let want = match expected.as_str() {
                        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number ≥ 0",
                        "i64" | "i32" => "a whole number",
                        "f64" => "a number",
                        _ => expected.as_str(),
                    };
                    format!("{key}: found {actual} (in {source}): give {want}")
                }
                Kind::Message(m) => format!("{key}: {m} (in {source})"),
                Kind::MissingField(f) => format!("{key}.{f}: missing (in {source}): set it"),
                other => format!(
                    "{key}: {other} (in {source}): see README \"Configuration\" for every key and its default"
                ),
            }
        })
        .collect();
    anyhow::anyhow!("invalid configuration: {}", lines.join("; "))
}

/// Where a run without a checkpoint starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    /// The first record appended at or after this time (epoch ms).
    Time(u64),
}

impl std::str::FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            ms if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) => {
                ms.parse().map(StartFrom::Time).map_err(|e| format!("--from '{ms}': {e}"))
            }
            other => humantime::parse_rfc3339_weak(other)
                .map_err(|e| {
                    format!("--from '{other}': {e}; use earliest, latest, epoch ms or an RFC 3339 time such as 2026-01-01T00:00:00Z")
                })
                .map(|t| {
                    let ms = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    StartFrom::Time(ms)
                }),
        }
    }
}

impl std::fmt::Display for StartFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Time(ms) => write!(f, "{ms}"),
        }
    }
}

impl serde::Serialize for StartFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StartFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(StartFrom::Time(ms)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The consumer group a config reads with.
pub fn group_of(cfg: &Config) -> String {
    cfg.kafka
        .group_id
        .clone()
        .unwrap_or_else(|| format!("tidemark-{}", cfg.job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("tidemark-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.toml");
        std::fs::write(
            &file,
            "job = \"from-file\"\nworkers = 3\n[redis]\nurl = \"redis://file/\"\n",
        )
        .unwrap();
        std::env::set_var("TIDEMARK_REDIS", "redis://env/");
        std::env::set_var("TIDEMARK_WORKERS", "5");
        let cfg = Config::load(Some(&file), serde_json::json!({"job": "from-flags"})).unwrap();
        assert_eq!((cfg.job.as_str(), cfg.workers), ("from-flags", 5));
        assert_eq!(cfg.redis.url.as_deref(), Some("redis://env/"));
        let cfg = Config::load(
            Some(&file),
            serde_json::json!({"redis": {"url": "redis://flag/"}}),
        )
        .unwrap();
        assert_eq!(cfg.redis.url.as_deref(), Some("redis://flag/"));
        std::env::remove_var("TIDEMARK_REDIS");
        std::env::remove_var("TIDEMARK_WORKERS");
        let cfg = Config::load(Some(&file), serde_json::json!({})).unwrap();
        assert_eq!(
            (cfg.job.as_str(), cfg.workers, cfg.redis.url.as_deref()),
            ("from-file", 3, Some("redis://file/"))
        );
        // a variable that names no key is left out; one that names a key is checked
        std::env::set_var("TIDEMARK_PORT", "tcp://10.0.0.1:8080");
        std::env::set_var("TIDEMARK_KAFKA__BROKERZ", "x");
        std::env::set_var("TIDEMARK_DATAFLOWS__SEARCH__ALPHA", "2");
        let cfg = Config::load(Some(&file), serde_json::json!({})).unwrap();
        assert_eq!(cfg.dataflows["search"]["alpha"].as_f64(), Some(2.0));
        std::env::set_var("TIDEMARK_INGEST__MAX_KEY_BYTES", "many");
        let err = Config::load(Some(&file), serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIDEMARK_INGEST__MAX_KEY_BYTES"), "{err}");
        for v in [
            "TIDEMARK_PORT",
            "TIDEMARK_KAFKA__BROKERZ",
            "TIDEMARK_DATAFLOWS__SEARCH__ALPHA",
            "TIDEMARK_INGEST__MAX_KEY_BYTES",
        ] {
            std::env::remove_var(v);
        }
        assert!(names_a_key("serve.max_age_secs.doc") && names_a_key("postgres.url"));
        assert!(!names_a_key("port") && !names_a_key("kafka.brokers.x"));
        std::fs::write(&file, "[kafka]\nbrokerz = \"x\"\n").unwrap();
        let err = Config::load(Some(&file), serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokerz") && err.contains("kafka"), "{err}");
    }
}
