//! `tidemark topics create`: the topics a dataflow reads and writes, and the DLQ, created
//! with partitions, retention and compression from config. Running it again changes
//! nothing; a topic that exists is reported with what differs, never altered (adding
//! partitions would move keys to other partitions).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::{Config, TopicConfig};
use tidemark_dataflows::Family;

const DAY_MS: i64 = 86_400_000;

/// The settings a topic gets when its config leaves them out.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: i64,
    pub compression: String,
    pub cleanup_policy: String,
}

/// Seed 002's table (topic, partitions, retention in days), lz4 throughout.
const SEED_002: [(&str, i32, i64); 4] = [
    ("ad-events", 12, 7),
    ("performance-metrics", 6, 3),
    ("budget-management", 3, 30),
    ("quality-score-updates", 3, 7),
];

/// What `topics create` would make of each topic of the config's dataflow.
///
/// A topic's defaults follow its role, not its name: the same dataflow with its default
/// config names each role's topic (`ad-events`, `budget-management`, …), so a budget topic
/// renamed in `[dataflows.ads]` or an input renamed with `kafka.topics` keeps seed 002's
/// partitions and retention for that role. A role without a row there falls back to the
/// topic's name.
pub fn plan(cfg: &Config, brokers: i32) -> anyhow::Result<Vec<TopicSpec>> {
    let family = crate::engine::family_of(cfg)?;
    let roles = {
        let mut plain = cfg.clone();
        plain.dataflows = Default::default();
        crate::engine::family_of(&plain)?
    };
    let table_topics = |f: &dyn Family| -> Vec<String> {
        f.tables()
            .iter()
            .filter_map(|t| t.sink.topic().map(str::to_string))
            .collect()
    };
    let inputs = cfg.kafka.topics.clone().unwrap_or_else(|| family.topics());
    // (name, role, cleanup): inputs in the dataflow's order, then its changelogs
    let mut names: Vec<(String, String, &str)> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let role = roles.topics().get(i).cloned().unwrap_or_else(|| t.clone());
            (t, role, "delete")
        })
        .collect();
    // a changelog keyed by entity: compaction keeps the latest record per key
    for (name, role) in table_topics(&*family)
        .into_iter()
        .zip(table_topics(&*roles))
    {
        names.push((name, role, "compact"));
    }
    let dlq = cfg.kafka.dlq_topic.clone();
    names.push((dlq.clone(), dlq, "delete"));
    let mut seen = std::collections::BTreeSet::new();
    Ok(names
        .into_iter()
        .filter(|(n, _, _)| seen.insert(n.clone()))
        .map(|(name, role, cleanup)| {
            // the role's row, else the name's (a topic named like a seed topic)
            let row = |n: &str| SEED_002.iter().find(|(r, _, _)| *r == n);
            let (partitions, days) = row(&role)
                .or_else(|| row(&name))
                .map(|(_, p, d)| (*p, *d))
                .unwrap_or(if name == cfg.kafka.dlq_topic {
                    (3, 30)
                } else {
                    (6, 7)
                });
            let c = cfg.topics.get(&name).cloned().unwrap_or_default();
            let TopicConfig {
                partitions: p,
                replication_factor: r,
                retention_ms: ret,
                compression,
                cleanup_policy,
            } = c;
            TopicSpec {
                partitions: p.unwrap_or(partitions),
                replication_factor: r.unwrap_or(brokers.clamp(1, 3)),
                retention_ms: ret.unwrap_or(days * DAY_MS),
                compression: compression.unwrap_or_else(|| "lz4".into()),
                cleanup_policy: cleanup_policy.unwrap_or_else(|| cleanup.into()),
                name,
            }
        })
        .collect())
}

/// Creates what is missing and reports every topic.
pub fn create(cfg: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create()
        .context("creating a kafka admin client (kafka.brokers)")?;
    let timeout = Duration::from_secs(10);
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .with_context(|| format!("reaching kafka at {} (kafka.brokers)", cfg.kafka.brokers))?;
    let existing: BTreeMap<String, usize> = md
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    let specs = plan(cfg, md.brokers().len() as i32)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    // NewTopic borrows its settings
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .filter(|(s, _)| !existing.contains_key(&s.name))
        .map(|(s, ret)| {
            NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication_factor),
            )
            .set("retention.ms", ret)
            .set("compression.type", &s.compression)
            .set("cleanup.policy", &s.cleanup_policy)
        })
        .collect();
    let mut created = std::collections::BTreeSet::new();
    if !new.is_empty() {
        for r in rt.block_on(admin.create_topics(&new, &opts))? {
            match r {
                Ok(name) => {
                    created.insert(name);
                }
                // created by someone else meanwhile: reported below like any existing one
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
            }
        }
    }
    for s in &specs {
        let wanted = format!(
            "partitions={} replication={} retention.ms={} compression.type={} cleanup.policy={}",
            s.partitions, s.replication_factor, s.retention_ms, s.compression, s.cleanup_policy
        );
        if created.contains(&s.name) {
            println!("created {} {wanted}", s.name);
            continue;
        }
        let differs = differences(&admin, &rt, &opts, s, existing.get(&s.name).copied())?;
        if differs.is_empty() {
            println!("exists  {} {wanted}", s.name);
        } else {
            println!(
                "exists  {} (not changed; differs from config: {})",
                s.name,
                differs.join(", ")
            );
        }
    }
    Ok(())
}

/// How an existing topic differs from its spec.
fn differences(
    admin: &AdminClient<DefaultClientContext>,
    rt: &tokio::runtime::Runtime,
    opts: &AdminOptions,
    s: &TopicSpec,
    partitions: Option<usize>,
) -> anyhow::Result<Vec<String>> {
    let mut differs = Vec::new();
    let partitions = match partitions {
        Some(p) => p,
        None => admin
            .inner()
            .fetch_metadata(Some(&s.name), Duration::from_secs(10))?
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len()),
    };
    if partitions as i32 != s.partitions {
        differs.push(format!(
            "partitions={partitions} (config: {})",
            s.partitions
        ));
    }
    let described =
        rt.block_on(admin.describe_configs(&[ResourceSpecifier::Topic(&s.name)], opts))?;
    if let Some(Ok(resource)) = described.first() {
        let retention = s.retention_ms.to_string();
        for (key, want) in [
            ("retention.ms", retention.as_str()),
            ("compression.type", s.compression.as_str()),
            ("cleanup.policy", s.cleanup_policy.as_str()),
        ] {
            let have = resource.get(key).and_then(|e| e.value.clone());
            if have.as_deref() != Some(want) {
                differs.push(format!(
                    "{key}={} (config: {want})",
                    have.unwrap_or_default()
                ));
            }
        }
    }
    Ok(differs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_seed_002_and_config_overrides_them() {
        let mut cfg = Config {
            kafka: crate::config::KafkaConfig {
                topics: Some(vec!["ad-events".into(), "clicks".into()]),
                ..Default::default()
            },
            ..Config::default()
        };
        cfg.topics.insert(
            "clicks".into(),
            TopicConfig {
                partitions: Some(2),
                compression: Some("zstd".into()),
                ..Default::default()
            },
        );
        let plan = plan(&cfg, 5).unwrap();
        let names: Vec<&str> = plan.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ad-events", "clicks", "tidemark.dlq"]);
        assert_eq!(
            (
                plan[0].partitions,
                plan[0].retention_ms,
                plan[0].compression.as_str()
            ),
            (12, 7 * DAY_MS, "lz4")
        );
        assert_eq!(
            (plan[1].partitions, plan[1].compression.as_str()),
            (2, "zstd")
        );
        assert_eq!(plan[1].retention_ms, 7 * DAY_MS);
        assert!(plan.iter().all(|s| s.replication_factor == 3));
        assert_eq!((plan[2].partitions, plan[2].retention_ms), (3, 30 * DAY_MS));
        assert_eq!(super::plan(&cfg, 1).unwrap()[0].replication_factor, 1);
    }

    /// Renamed topics keep their role's defaults: the budget topic 3 partitions and 30
    /// days, the metrics 6 and 3, the renamed input 12 and 7.
    #[test]
    fn defaults_follow_the_role_not_the_name() {
        let flags = serde_json::json!({
            "dataflow": "ads",
            "kafka": {"topics": ["shop-ads", "scores"]},
            "dataflows": {"ads": {"budget_topic": "alerts", "metrics_topic": "perf"}},
        });
        let cfg = Config::load(None, flags).unwrap();
        let plan = plan(&cfg, 1).unwrap();
        let of = |n: &str| {
            let s = plan.iter().find(|s| s.name == n).unwrap();
            (
                s.partitions,
                s.retention_ms / DAY_MS,
                s.cleanup_policy.as_str(),
            )
        };
        assert_eq!(of("shop-ads"), (12, 7, "delete"));
        assert_eq!(of("scores"), (3, 7, "delete"));
        assert_eq!(of("alerts"), (3, 30, "compact"));
        assert_eq!(of("perf"), (6, 3, "compact"));
    }
}
