//! `[archive]`: every consumed record to Parquet, on a local directory or S3.

use serde::{Deserialize, Serialize};

/// Where and how the archive writes (README "Archive").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Off by default (on in `demo`).
    pub enabled: bool,
    /// A local directory, or `s3://bucket[/prefix]`. One job's archive: a restart deletes
    /// the files of its partitions past the offsets it resumes from.
    pub root: String,
    pub s3: S3Config,
    /// A worker writes its buffered records once they take this much memory; files are
    /// also cut at every checkpoint (they are part of it), like Flink's bulk-format sinks.
    /// A worker whose writer is behind by more than twice this stops reading.
    pub max_buffer_bytes: usize,
    /// …or once the oldest buffered record has waited this long.
    pub max_buffer_age_ms: u64,
    /// zstd level, 1 (fastest) to 22. Level 3 made files no smaller than 1 on JSON events
    /// (`bench archive`) and cost 8 % more time.
    pub zstd_level: i32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: false,
            root: "tidemark-archive".into(),
            s3: S3Config::default(),
            max_buffer_bytes: 64 << 20,
            max_buffer_age_ms: 60_000,
            zstd_level: 1,
        }
    }
}

/// An S3 root's connection; unset values come from the `AWS_*` environment variables.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// E.g. `http://127.0.0.1:9000` for an S3-compatible server; AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    /// Hidden when the config is printed.
    pub secret_access_key: Option<String>,
    /// Virtual-hosted-style requests (`bucket.host/key`); off by default: path style
    /// (`host/bucket/key`), which S3-compatible servers take.
    pub virtual_hosted: bool,
}

impl ArchiveConfig {
    /// Checks what types alone cannot; each error names the key and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if !self.enabled {
            return Ok(());
        }
        if self.root.trim().is_empty() {
            bail!("archive.root is empty: set a directory or s3://bucket/prefix (TIDEMARK_ARCHIVE__ROOT)");
        }
        if let Some(rest) = self.root.strip_prefix("s3://") {
            if rest.split('/').next().unwrap_or("").is_empty() {
                bail!(
                    "archive.root = {:?} names no bucket: use s3://bucket or s3://bucket/prefix",
                    self.root
                );
            }
        } else if self.root.contains("://") {
            bail!(
                "archive.root = {:?}: only a local directory or s3://bucket/prefix is supported",
                self.root
            );
        }
        if let Some(e) = &self.s3.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("archive.s3.endpoint = {e:?} is not an http:// or https:// URL");
            }
        }
        if self.max_buffer_bytes == 0 || self.max_buffer_bytes > 1 << 30 {
            bail!(
                "archive.max_buffer_bytes = {}: set it between 1 and 1073741824 (default 67108864; a file's columns hold at most 2 GiB)",
                self.max_buffer_bytes
            );
        }
        if self.max_buffer_age_ms == 0 {
            bail!("archive.max_buffer_age_ms = 0: set it to 1 or more (default 60000)");
        }
        if !(1..=22).contains(&self.zstd_level) {
            bail!(
                "archive.zstd_level = {}: set it between 1 and 22 (default 1)",
                self.zstd_level
            );
        }
        Ok(())
    }
}
