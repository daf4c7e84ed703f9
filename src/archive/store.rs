//! The archive's object store (a local directory or S3) and the clean-up a restart does.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::file::{decode, Chunk, RecordIn};
use super::layout::{parse_name, topic_dir};
use crate::config::ArchiveConfig;

/// Where the files go: a store and the prefix within it.
#[derive(Clone, Debug)]
pub struct Root {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// As configured, for messages.
    pub name: String,
}

/// Makes ring the process's TLS provider (for the S3 client and any other HTTPS client):
/// reqwest is built without one of its own, and panics when a client is made before.
pub fn install_tls() {
    // deprecated only for lacking post-quantum key exchange; aws-lc-rs, which has it, would
    // compile a C library with cmake in every build
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens `archive.root`: a local directory (created if missing) or `s3://bucket/prefix`.
pub fn open(cfg: &ArchiveConfig) -> anyhow::Result<Root> {
    let name = cfg.root.clone();
    install_tls();
    if let Some(rest) = cfg.root.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(cfg.s3.virtual_hosted);
        let s3 = &cfg.s3;
        if let Some(e) = &s3.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let Some(r) = &s3.region {
            b = b.with_region(r);
        }
        if let Some(k) = &s3.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s3.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b
            .build()
            .with_context(|| format!("archive.root = {name:?}: the S3 client (archive.s3.*)"))?;
        return Ok(Root {
            store: Arc::new(store),
            prefix: Path::from(prefix.trim_matches('/')),
            name,
        });
    }
    std::fs::create_dir_all(&cfg.root)
        .with_context(|| format!("creating archive.root = {name:?}"))?;
    let store = LocalFileSystem::new_with_prefix(&cfg.root)
        .with_context(|| format!("archive.root = {name:?}"))?;
    Ok(Root {
        store: Arc::new(store),
        prefix: Path::default(),
        name,
    })
}

/// Every archive file of `topic`: its path, partition and offset range.
pub async fn files_of(root: &Root, topic: &str) -> anyhow::Result<Vec<(Path, i32, i64, i64)>> {
    let dir = topic_dir(&root.prefix, topic);
    let listed: Vec<_> = root
        .store
        .list(Some(&dir))
        .try_collect()
        .await
        .with_context(|| format!("listing {dir} in archive.root = {:?}", root.name))?;
    Ok(listed
        .into_iter()
        .filter_map(|m| {
            let (p, first, last) = parse_name(m.location.filename()?)?;
            Some((m.location, p, first, last))
        })
        .collect())
}

/// Before a worker reads its partitions again from `from` (topic, partition → the next
/// offset): a file wholly past its partition's position is deleted, one that straddles it
/// keeps only the records before it. Those records are read again and filed again, so each
/// record ends up in exactly one file. Files of partitions not named are not touched.
pub async fn resume(
    root: &Root,
    from: &BTreeMap<(String, i32), i64>,
    level: i32,
) -> anyhow::Result<(usize, usize)> {
    let (mut deleted, mut cut) = (0, 0);
    let topics: std::collections::BTreeSet<&String> = from.keys().map(|(t, _)| t).collect();
    for topic in topics {
        for (path, partition, first, last) in files_of(root, topic).await? {
            let Some(&next) = from.get(&(topic.clone(), partition)) else {
                continue;
            };
            if first >= next {
                root.store
                    .delete(&path)
                    .await
                    .with_context(|| format!("deleting {path} (past offset {next})"))?;
                deleted += 1;
            } else if last >= next {
                rewrite_before(root, &path, next, level).await?;
                cut += 1;
            }
        }
    }
    Ok((deleted, cut))
}

/// Rewrites the file at `path` with only its records before offset `next`, under the same
/// name (its range names the offsets it may hold, not the ones it holds).
async fn rewrite_before(root: &Root, path: &Path, next: i64, level: i32) -> anyhow::Result<()> {
    let bytes = root.store.get(path).await?.bytes().await?;
    let records = decode(bytes).with_context(|| format!("reading {path} to cut it at {next}"))?;
    let Some(first) = records.first() else {
        return Ok(());
    };
    let mut chunk = Chunk::new(first.topic.as_str().into(), first.partition, 0);
    for r in records.iter().filter(|r| r.offset < next) {
        let headers = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        chunk.push(
            RecordIn {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                event_ms: r.event_ms,
                valid: r.valid,
                key: r.key.as_deref(),
                payload: &r.payload,
            },
            headers,
        );
    }
    if chunk.is_empty() {
        root.store.delete(path).await?;
    } else {
        root.store.put(path, chunk.encode(level)?.into()).await?;
    }
    Ok(())
}
