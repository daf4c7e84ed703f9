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
    /// The directory of a local root.
    pub local: Option<std::path::PathBuf>,
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
            local: None,
        });
    }
    std::fs::create_dir_all(&cfg.root)
        .with_context(|| format!("creating archive.root = {name:?}"))?;
    // fsynced as the checkpoints are: a checkpoint that survives a power loss must not
    // cover files that did not
    let store = LocalFileSystem::new_with_prefix(&cfg.root)
        .with_context(|| format!("archive.root = {name:?}"))?
        .with_fsync(true);
    Ok(Root {
        store: Arc::new(store),
        prefix: Path::default(),
        name,
        local: Some(cfg.root.clone().into()),
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
        if let Some(dir) = &root.local {
            deleted += sweep_partial(&dir.join(format!("topic={topic}")), from, topic)?;
        }
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

/// Deletes the half-written files (`part-….parquet#N`: a local put writes one and renames
/// it) of the partitions in `from` that a killed run left under `dir`: the store's listing
/// does not show them, a Hive reader would read them.
fn sweep_partial(
    dir: &std::path::Path,
    from: &BTreeMap<(String, i32), i64>,
    topic: &str,
) -> anyhow::Result<usize> {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            n += sweep_partial(&path, from, topic)?;
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((done, _)) = name.split_once('#') else {
            continue;
        };
        if parse_name(done).is_some_and(|(p, ..)| from.contains_key(&(topic.to_string(), p))) {
            std::fs::remove_file(&path)
                .with_context(|| format!("deleting a half-written {}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Rewrites the file at `path` with only its records before offset `next`, named by the
/// offsets it keeps (the same name every time: a crash before the old one is deleted
/// leaves a file the next clean-up keeps and one it cuts again).
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
                read_ms: r.read_ms.unwrap_or(r.timestamp_ms),
            },
            headers,
        );
    }
    if !chunk.is_empty() {
        let (first, last) = chunk.offsets();
        let name = format!("part-{}-{first}-{last}.parquet", chunk.partition);
        let mut parts: Vec<_> = path.parts().collect();
        parts.pop();
        let kept = Path::from_iter(parts).join(name);
        root.store.put(&kept, chunk.encode(level)?.into()).await?;
    }
    root.store.delete(path).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::layout::file_path;

    fn chunk(partition: i32, offsets: std::ops::Range<i64>) -> Chunk {
        let mut c = Chunk::new("t".into(), partition, 0);
        for o in offsets {
            let r = RecordIn {
                offset: o,
                timestamp_ms: o,
                event_ms: o,
                valid: true,
                key: None,
                payload: b"{}",
                read_ms: o,
            };
            c.push(r, std::iter::empty());
        }
        c
    }

    #[test]
    fn a_restart_deletes_files_past_its_positions_cuts_straddling_ones_and_sweeps_partial_ones() {
        let dir = std::env::temp_dir().join(format!("tidemark-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ArchiveConfig {
            enabled: true,
            root: dir.to_string_lossy().into_owned(),
            ..ArchiveConfig::default()
        };
        let root = open(&cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for (p, range) in [(0, 0..10), (0, 10..20), (0, 20..30), (1, 0..30)] {
                let c = chunk(p, range.clone());
                let path = file_path(&root.prefix, "t", 0, p, range.start, range.end - 1);
                root.store
                    .put(&path, c.encode(1).unwrap().into())
                    .await
                    .unwrap();
            }
            // a put a kill interrupted, and one of a partition this worker does not read
            let folder = dir.join("topic=t/dt=1970-01-01/hour=00");
            std::fs::write(folder.join("part-0-30-39.parquet#7"), b"half").unwrap();
            std::fs::write(folder.join("part-5-30-39.parquet#7"), b"half").unwrap();
            // partition 0 resumes at 15, partition 1 is not this worker's
            let from = BTreeMap::from([(("t".to_string(), 0), 15)]);
            let (deleted, cut) = resume(&root, &from, 1).await.unwrap();
            assert_eq!((deleted, cut), (2, 1));
            let mut files: Vec<(i32, i64, i64)> = files_of(&root, "t")
                .await
                .unwrap()
                .into_iter()
                .map(|(_, p, a, b)| (p, a, b))
                .collect();
            files.sort();
            assert_eq!(files, vec![(0, 0, 9), (0, 10, 14), (1, 0, 29)]);
            let kept = file_path(&root.prefix, "t", 0, 0, 10, 14);
            let bytes = root.store.get(&kept).await.unwrap().bytes().await.unwrap();
            let offsets: Vec<i64> = decode(bytes).unwrap().iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (10..15).collect::<Vec<_>>());
            assert!(!folder.join("part-0-30-39.parquet#7").exists());
            assert!(folder.join("part-5-30-39.parquet#7").exists());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
